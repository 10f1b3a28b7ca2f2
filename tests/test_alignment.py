"""Channel-alignment features, and predictors trained before a feature column was added."""

import json

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from latpred.features import MAX_ALIGN_LOG2, alignment, feature_names, featurize, featurize_many
from latpred.ops import resolve_spec
from latpred.predictor import Predictor, PredictorFormatError
from latpred.spec import ModuleSpec


def _conv(cin: int, cout: int) -> ModuleSpec:
    return resolve_spec(ModuleSpec("conv2d", {"in_channels": cin, "out_channels": cout, "kernel_size": 3, "h": 14}))


def test_alignment_counts_factors_of_two_up_to_the_cap():
    assert [alignment(v) for v in (1, 2, 3, 8, 24, 48, 96, 120, 128, 4096, 0, -8)] == [0, 1, 0, 3, 3, 4, 4, 3, 4, 4, 0, 0]
    assert MAX_ALIGN_LOG2 == 4


def test_conv_features_carry_channel_alignment():
    names = feature_names("conv2d")
    i, o = names.index("in_channels.align"), names.index("out_channels.align")
    assert names[i - 1] == "in_channels" and names[o - 1] == "out_channels"
    x = featurize(_conv(120, 128))
    assert x[i] == 3 and x[o] == 4
    assert x[i - 1] == pytest.approx(np.log1p(120))
    # 120 and 128 channels differ in alignment by far more than in their log channel count
    a, b = featurize_many([_conv(120, 64), _conv(128, 64)])
    assert b[i] - a[i] == 1 and b[i - 1] - a[i - 1] < 0.07
    assert "in_features.align" not in feature_names("linear")


def _old_schema_predictor(tmp_path):
    """A conv2d ridge model trained on the columns a predictor had before the alignment columns existed."""
    full = feature_names("conv2d")
    old = [n for n in full if not n.endswith(".align")]
    cols = [full.index(n) for n in old]
    rng = np.random.default_rng(0)
    specs = [_conv(int(c), int(d)) for c, d in rng.integers(8, 200, size=(40, 2))]
    X = featurize_many(specs)
    y = X[:, full.index("log_flops")] * 0.8 - 9.0 + rng.normal(0, 0.01, len(X))
    model = Ridge(alpha=1e-3).fit(X[:, cols], y)
    p = Predictor({"conv2d": "ridge"}, {"conv2d": model}, schemas={"conv2d": old})
    return p, specs, model.predict(X[:, cols]), p.save(tmp_path / "old")


def test_predictor_on_an_older_schema_loads_and_reads_its_own_columns(tmp_path):
    p, specs, expected, d = _old_schema_predictor(tmp_path)
    np.testing.assert_allclose(np.log(p.predict(specs)), expected, rtol=1e-12)
    doc = json.loads((d / "predictor.json").read_text())
    assert not any(n.endswith(".align") for n in doc["ops"]["conv2d"]["feature_names"])
    q = Predictor.load(d)
    assert q.feature_names("conv2d") == doc["ops"]["conv2d"]["feature_names"]
    np.testing.assert_allclose(np.log(q.predict(specs)), expected, rtol=1e-12)
    # the whole-graph path (prepared feature rows of the full schema) reads the same columns
    np.testing.assert_allclose(q.predict_log("conv2d", featurize_many(specs)), expected, rtol=1e-12)


def test_a_schema_with_columns_this_latpred_lacks_fails_clearly(tmp_path):
    _, _, _, d = _old_schema_predictor(tmp_path)
    doc = json.loads((d / "predictor.json").read_text())
    doc["ops"]["conv2d"]["feature_names"] = [*doc["ops"]["conv2d"]["feature_names"], "winograd_tiles"]
    (d / "predictor.json").write_text(json.dumps(doc))
    with pytest.raises(PredictorFormatError, match=r"feature schema of 'conv2d' differs.*winograd_tiles.*retrain"):
        Predictor.load(d)
    doc["ops"]["conv2d"]["feature_names"] = "in_channels"
    (d / "predictor.json").write_text(json.dumps(doc))
    with pytest.raises(PredictorFormatError, match="feature schema of 'conv2d' differs"):
        Predictor.load(d)
