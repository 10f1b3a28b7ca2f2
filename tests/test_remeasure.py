"""latpred db remeasure: a group of samples measured in a bad state is measured again; nothing is lost."""

import json
import sqlite3

import pytest

from latpred.cli import main
from latpred.errors import SpaceError, StoreError
from latpred.profiling.devices import CpuDevice, FakeDevice
from latpred.profiling.remeasure import remeasure, select_samples
from latpred.profiling.runner import profile
from latpred.profiling.store import ProfileStore
from tests.test_runner import tiny


@pytest.fixture()
def store_with_a_bad_group(tmp_path):
    """A profiled store whose GELU samples on batch 2 read 2x (as if one run met a slow state)."""
    db = tmp_path / "p.sqlite"
    with ProfileStore(db) as store:
        profile(tiny(), FakeDevice(), store, passes=2, progress=False)
        good = {s.id: s.latency_ms for s in store.samples()}
    bad = [s.id for s in ProfileStore(db, readonly=True).samples(op="activation")
           if s.spec.params["fn"] == "gelu" and s.spec.batch_size == 2]
    assert bad
    with sqlite3.connect(db) as conn:
        conn.executemany("UPDATE samples SET latency_ms = latency_ms * 2 WHERE id = ?", [(i,) for i in bad])
    return db, good, bad


def test_remeasure_restores_the_group_and_keeps_the_old_values(store_with_a_bad_group):
    db, good, bad = store_with_a_bad_group
    with ProfileStore(db) as store:
        chosen = select_samples(store, op="activation", where={"fn": "gelu", "batch_size": 2})
        assert sorted(s.id for s in chosen) == sorted(bad)
        report = remeasure(FakeDevice(), store, chosen, passes=2, progress=False)
        assert report.status == "done" and report.median_ratio == pytest.approx(0.5, rel=1e-9)
        after = {s.id: s for s in store.samples()}
        run = [r for r in store.runs() if r["id"] == report.run_id][0]
    assert run["space_name"] == "remeasure" and run["status"] == "done" and run["n_measured"] == len(bad)
    for i, s in after.items():
        if i in bad:
            assert s.latency_ms == pytest.approx(good[i], rel=1e-9) and s.passes == 2 and s.run_id == report.run_id
            (old,) = s.extra["replaced"]
            assert old["latency_ms"] == pytest.approx(2 * good[i]) and old["passes"] == 2 and old["run_id"] != report.run_id
            assert len(old["timings_ms"]) == 10 and len(s.timings_ms) == 10  # FakeDevice: 5 windows a pass
        else:
            assert s.latency_ms == good[i] and "replaced" not in s.extra
    # a second re-measurement stacks the history
    with ProfileStore(db) as store:
        remeasure(FakeDevice(), store, select_samples(store, op="activation", run=report.run_id), passes=1, progress=False)
        assert [len(s.extra["replaced"]) for s in store.samples() if s.id in bad] == [2] * len(bad)


def test_remeasure_cli_dry_run_measures_nothing_and_the_real_run_reports(store_with_a_bad_group, capsys):
    db, good, bad = store_with_a_bad_group
    assert main(["db", "remeasure", str(db), "--op", "activation", "--where", "fn=gelu", "--where", "batch_size=2",
                 "--dry-run"]) == 0
    assert f"{len(bad)} sample" in capsys.readouterr().out
    assert all(s.latency_ms == pytest.approx(2 * good[s.id]) for s in ProfileStore(db, readonly=True).samples() if s.id in bad)
    assert main(["db", "remeasure", str(db), "--op", "activation", "--where", "fn=gelu", "--where", "batch_size=2",
                 "--device", "fake", "--passes", "1", "--no-progress", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["median_ratio"] == pytest.approx(0.5, rel=1e-9) and len(doc["changes"]) == len(bad)


def test_bad_selections_and_devices_are_clear_errors_and_change_nothing(store_with_a_bad_group, capsys):
    db, good, bad = store_with_a_bad_group
    with ProfileStore(db) as store:
        before = {s.id: s.latency_ms for s in store.samples()}
        with pytest.raises(SpaceError, match="parameter 'fnn'"):
            select_samples(store, op="activation", where={"fnn": "gelu"})
        with pytest.raises(SpaceError, match="no stored sample matches"):
            select_samples(store, op="activation", where={"fn": "silu"})
        chosen = select_samples(store, op="activation", where={"fn": "gelu"})
        with pytest.raises(StoreError, match="machine that profiled them"):
            remeasure(FakeDevice(name="another"), store, chosen, progress=False)
        with pytest.raises(SpaceError, match="passes"):
            remeasure(FakeDevice(), store, chosen, passes=0, progress=False)

        def fail(spec):
            return "out of memory" if spec.params.get("fn") == "gelu" else None

        report = remeasure(FakeDevice(fail=fail), store, chosen, progress=False)  # failures keep the old values
        assert all(new is None for _, _, new in report.changes)
        assert {s.id: s.latency_ms for s in store.samples()} == before
    assert main(["db", "remeasure", str(db), "--op", "activation", "--where", "fn"]) == 2
    assert "PARAM=VALUE" in capsys.readouterr().err


def test_remeasure_on_the_cpu_keeps_the_stores_reference_units(tmp_path):
    """On the real CPU the re-measured sample is normalised with the store's nominal and scheme, so it lands
    on the same scale as the samples around it (a tiny ReLU: the same spec measured twice agrees loosely)."""
    db = tmp_path / "cpu.sqlite"
    space = tiny().restricted(ops=["activation"], utilization=[0.0], batch_sizes=[1], samples=2)
    with ProfileStore(db) as store:
        profile(space, CpuDevice(threads=1), store, passes=1, progress=False)
        nominal = store.reference_nominal(1)
        (s, *_) = store.samples()
        device = CpuDevice(threads=1)
        try:
            report = remeasure(device, store, [s], passes=1, progress=False)
        finally:
            device.close()
        again = store.sample(s.id)
        after = store.reference_nominal(1)
        neighbour = next(x for x in store.samples() if x.id != s.id)
    assert report.status == "done" and again.extra["reference_scheme"] == s.extra["reference_scheme"]
    # the store's units: its nominal, or the lower one the run ends on when its probe read faster (every
    # stored sample is rescaled to it, the re-measured one with them)
    assert after[1] <= nominal[1] * (1 + 1e-9)
    assert again.extra["reference_nominal_ms"] == pytest.approx(after[1])
    assert neighbour.extra["reference_nominal_ms"] == pytest.approx(after[1])
    assert 0.2 < again.latency_ms / s.latency_ms * nominal[1] / after[1] < 5


def test_a_parameter_a_stored_spec_predates_reads_as_its_default(store_with_a_bad_group):
    db, good, bad = store_with_a_bad_group
    with sqlite3.connect(db) as conn:  # as stored before activations had an `inplace` parameter
        sid, spec_json = conn.execute("SELECT id, spec_json FROM samples WHERE op = 'activation' LIMIT 1").fetchone()
        doc = json.loads(spec_json)
        params = doc.get("params", doc)
        params.pop("inplace", None)
        conn.execute("UPDATE samples SET spec_json = ? WHERE id = ?", (json.dumps(doc), sid))
    with ProfileStore(db, readonly=True) as store:
        assert "inplace" not in store.sample(sid).spec.params
        chosen = select_samples(store, op="activation", where={"inplace": "false"})
        assert sid in {s.id for s in chosen} and len(chosen) == store.count(op="activation", status="ok")


def test_min_mib_selects_the_samples_whose_call_moves_that_much(store_with_a_bad_group, capsys):
    """``min_mib`` (CLI ``--min-mib``) keeps the samples whose op cost model moves at least that many MiB."""
    from latpred.ops import get_op

    db, good, bad = store_with_a_bad_group
    with ProfileStore(db, readonly=True) as store:
        every = select_samples(store)
        mib = {s.id: get_op(s.spec.op).costs(s.spec).bytes_moved(s.spec.dtype) / 2**20 for s in every}
        cut = sorted(mib.values())[len(mib) // 2]
        chosen = select_samples(store, min_mib=cut)
        assert {s.id for s in chosen} == {i for i, m in mib.items() if m >= cut} and 0 < len(chosen) < len(every)
        with pytest.raises(SpaceError, match="min_mib"):
            select_samples(store, min_mib=-1)
        with pytest.raises(SpaceError, match="no stored sample matches.*min_mib"):
            select_samples(store, min_mib=1e9)
    assert main(["db", "remeasure", str(db), "--min-mib", str(cut), "--dry-run", "--json"]) == 0
    assert sorted(json.loads(capsys.readouterr().out)["samples"]) == sorted(s.id for s in chosen)
