"""Accuracy metrics and the noise floor a store's own passes give."""

import numpy as np
import pytest

from latpred.metrics import accuracy_report, pass_agreement, pass_noise_floor


def test_pass_noise_floor_counts_pairs_of_passes_per_op_and_overall():
    floor = pass_noise_floor({"conv2d": [(10.0, 10.4, 11.2), (5.0,)], "linear": [(2.0, 2.5)], "empty": [(1.0,)]})
    conv = floor["per_op"]["conv2d"]  # pairs 10/10.4, 10/11.2, 10.4/11.2; the one-pass spec adds none
    assert conv["n_specs"] == 1 and conv["n_pairs"] == 3
    assert conv["within5"] == pytest.approx(1 / 3) and conv["within10"] == pytest.approx(2 / 3)
    assert conv["within15"] == 1.0
    assert conv["mape"] == pytest.approx(100 * np.mean([0.4 / 10.4, 1.2 / 11.2, 0.8 / 11.2]))
    assert floor["per_op"]["linear"]["within15"] == 0.0 and "empty" not in floor["per_op"]
    assert floor["overall"]["n_pairs"] == 4 and floor["overall"]["n_specs"] == 2
    assert floor["overall"]["within10"] == pytest.approx(0.5)
    assert pass_noise_floor({"conv2d": [(1.0,)]}) is None and pass_noise_floor({}) is None
    assert pass_agreement([(10.0, 10.4, 11.2)]) == pytest.approx(2 / 3) and pass_agreement([(1.0,)]) is None


def test_accuracy_report_reads_relative_errors():
    r = accuracy_report(np.array([1.0, 1.08, 1.3]), np.array([1.0, 1.0, 1.0]))
    assert r["acc5"] == pytest.approx(1 / 3) and r["acc10"] == pytest.approx(2 / 3) and r["acc15"] == pytest.approx(2 / 3)
    assert r["mape"] == pytest.approx(100 * 0.38 / 3)
    with pytest.raises(ValueError, match="equal, non-empty"):
        accuracy_report(np.array([1.0]), np.array([1.0, 2.0]))
