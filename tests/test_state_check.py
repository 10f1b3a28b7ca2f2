"""State check: before adding to a store, re-measure a few stored specs and say whether the machine changed."""

import json

import pytest

from latpred.cli import main
from latpred.profiling.devices import CpuDevice, FakeDevice, TimingProtocol
from latpred.profiling.runner import profile
from latpred.profiling.space import ParameterSpace
from latpred.profiling.state_check import check_state
from latpred.profiling.store import ProfileStore

SPACE = {
    "name": "tiny", "seed": 1, "samples": 12,
    "runtime": {"batch_size": [1, 2], "utilization": [0.0, 0.5], "threads": 1},
    "ops": {"linear": {"in_features": {"range": [8, 64]}, "out_features": {"range": [8, 64]}},
            "activation": {"fn": ["relu", "gelu"], "channels": {"range": [4, 32]}, "h": [4, 8]}},
}


def tiny(seed: int = 1) -> ParameterSpace:
    return ParameterSpace.from_dict({**SPACE, "seed": seed})


def test_same_machine_reads_the_same_and_a_changed_one_is_named(tmp_path):
    with ProfileStore(tmp_path / "s.sqlite") as store:
        profile(tiny(), FakeDevice(), store, passes=1, progress=False)
        did = store.devices()[0]["id"]
        same = check_state(FakeDevice(), store, did, n=10)
        assert same.n == 10 and same.changed == [] and same.median_ratio == pytest.approx(1.0)
        assert set(same.groups) == {"unloaded", "loaded"}  # drawn across both
        # the load now slows everything 2.5/1.5 = 1.67x more; unloaded specs are unchanged
        loaded = check_state(FakeDevice(slowdown=3.0), store, did, n=10)
        assert loaded.changed == ["loaded"] and loaded.groups["loaded"]["median_ratio"] == pytest.approx(2.5 / 1.5, rel=0.01)
        assert loaded.groups["unloaded"]["within10"] == 1.0
        # half the compute speed: every group changed, and the summary warns
        slow = check_state(FakeDevice(gflops=1.0, gbps=0.5, overhead_us=0.5), store, did, n=10)
        assert set(slow.changed) == {"unloaded", "loaded"} and "warning" in slow.summary()
        with pytest.raises(ValueError, match="state check size"):
            check_state(FakeDevice(), store, did, n=0)
    with ProfileStore(tmp_path / "empty.sqlite") as empty:
        did = empty.register_device(FakeDevice().metadata())
        assert check_state(FakeDevice(), empty, did) is None  # nothing to compare


def test_profile_runs_the_check_only_when_adding_to_a_store(tmp_path):
    seen = []
    with ProfileStore(tmp_path / "s.sqlite") as store:
        first = profile(tiny(), FakeDevice(), store, passes=1, progress=False, check_state_n=6, on_state_check=seen.append)
        assert first.state_check is None and seen == []  # an empty store: nothing to check against
        more = profile(tiny(seed=2), FakeDevice(slowdown=3.0), store, passes=1, progress=False, check_state_n=6,
                       on_state_check=seen.append)
        assert more.state_check["n"] == 6 and more.state_check["changed"] == ["loaded"]
        assert len(seen) == 1 and "warning" in seen[0] and "state check" in more.summary()
        settings = store.runs()[-1]["settings"]
        assert settings["state_check"]["changed"] == ["loaded"]  # kept with the run
        n_before = store.count(status="ok")
        again = profile(tiny(seed=2), FakeDevice(), store, passes=1, progress=False, check_state_n=6)
        assert again.state_check is None and store.count(status="ok") == n_before  # nothing to measure: no check
        assert all(s.passes == 1 for s in store.samples())  # the check's measurements are not stored


def test_cli_check_on_the_real_cpu(tmp_path, capsys):
    """Real CPU: the second profile of a store re-measures stored specs, prints the check, and db info shows it."""
    db = str(tmp_path / "cpu.sqlite")
    space = tmp_path / "s.toml"
    space.write_text('name = "t"\nseed = 1\nsamples = 4\n[runtime]\nbatch_size = 1\nthreads = 1\n'
                     '[ops.linear]\nin_features = { range = [16, 256] }\nout_features = { range = [16, 256] }\n')
    args = ["profile", "--space", str(space), "--db", db, "--passes", "1", "--no-progress"]
    assert main(args + ["--check-state", "3"]) == 0
    assert "state check" not in capsys.readouterr().out
    assert main(args + ["--seed", "2", "--check-state", "3"]) == 0
    out = capsys.readouterr().out
    assert "state check: 3 stored specs re-measured once" in out and "unloaded x" in out
    assert out.count("state check:") == 1  # printed as it comes, not again in the summary
    assert main(["db", "info", db]) == 0
    assert "state check: 3 stored specs" in capsys.readouterr().out
    assert main(["db", "info", db, "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["devices"][0]["runs"]
    assert runs[0]["state_check"] is None and runs[1]["state_check"]["groups"]["unloaded"]["n"] == 3
    with pytest.raises(SystemExit):
        main(args + ["--check-state", "-1"])
    assert "non-negative integer" in capsys.readouterr().err


def test_check_on_the_real_cpu_reads_about_one(tmp_path):
    """Re-measuring specs just profiled on this CPU gives ratios near 1 (a loose bound: the CPU is shared)."""
    dev = CpuDevice(protocol=TimingProtocol(repeats=3, min_repeats=3, window_ms=5.0, warmup_ms=5.0))
    try:
        with ProfileStore(tmp_path / "c.sqlite") as store:
            space = ParameterSpace.from_dict({"name": "c", "seed": 0, "samples": 4, "runtime": {"batch_size": 8, "threads": 1},
                                              "ops": {"linear": {"in_features": [256], "out_features": [256, 512]}}})
            profile(space, dev, store, passes=1, progress=False)
            check = check_state(dev, store, store.devices()[0]["id"], n=2)
            assert check.n == 2 and 0.5 < check.median_ratio < 2.0
    finally:
        dev.close()
