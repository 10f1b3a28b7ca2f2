"""profile(): resumable, failure-tolerant, commits per sample; survives SIGKILL mid-run."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from latpred.cli import main
from latpred.errors import DeviceError, SpaceError
from latpred.profiling.devices import FakeDevice
from latpred.profiling.runner import profile
from latpred.profiling.space import ParameterSpace
from latpred.profiling.store import ProfileStore

SPACE = {
    "name": "tiny", "seed": 1, "samples": 8,
    "runtime": {"batch_size": [1, 2], "utilization": [0.0, 0.5], "threads": 1},
    "ops": {"linear": {"in_features": {"range": [8, 64]}, "out_features": {"range": [8, 64]}},
            "activation": {"fn": ["relu", "gelu"], "channels": {"range": [4, 32]}, "h": [4, 8]}},
}


def tiny() -> ParameterSpace:
    return ParameterSpace.from_dict(SPACE)


def test_profile_stores_everything_and_resume_skips(tmp_path):
    db = tmp_path / "p.sqlite"
    with ProfileStore(db) as store:
        r1 = profile(tiny(), FakeDevice(), store, limit=10, passes=2, progress=False)
        assert (r1.measured, r1.already_done, r1.status, r1.measurements) == (10, 0, "done", 20)
        r2 = profile(tiny(), FakeDevice(), store, passes=2, progress=False)
        assert (r2.measured, r2.already_done) == (6, 10)
        assert store.count(status="ok") == 16
        r3 = profile(tiny(), FakeDevice(), store, passes=2, progress=False)
        assert r3.measured == 0 and r3.already_done == 16
        got = {s.spec for s in store.samples()}
    assert got == set(tiny().specs())


def test_failures_are_stored_and_the_run_goes_on(tmp_path):
    def fail(spec):
        return "OutOfMemoryError: fake" if spec.op == "activation" and spec.params["fn"] == "gelu" else None

    with ProfileStore(tmp_path / "p.sqlite") as store:
        r = profile(tiny(), FakeDevice(fail=fail), store, passes=2, progress=False)
        n_fail = sum(1 for s in tiny().specs() if fail(s))
        assert n_fail > 0 and r.failed == n_fail and r.measured == 16 - n_fail
        failed = store.samples(status="failed")
        assert all("OutOfMemoryError" in s.error for s in failed)
        r2 = profile(tiny(), FakeDevice(), store, passes=2, progress=False, retry_failed=True)
        assert r2.measured == n_fail and store.count(status="failed") == 0


def test_measurements_are_grouped_by_utilization(tmp_path):
    seen = []
    with ProfileStore(tmp_path / "p.sqlite") as store:
        profile(tiny(), FakeDevice(), store, progress=False, passes=2,
                on_sample=lambda s, _: seen.append(s.utilization))
    first, second = seen[:16], seen[16:]  # two passes, each grouped by utilization
    assert len(second) == 16 and first == sorted(first) and second == sorted(second) and set(seen) == {0.0, 0.5}


def test_passes_pool_windows_and_reduce_with_the_device_statistic(tmp_path):
    with ProfileStore(tmp_path / "p.sqlite") as store:
        r = profile(tiny(), FakeDevice(noise=0.2), store, passes=3, progress=False)
        assert r.measurements == 48 and r.measured == 16
        for s in store.samples():
            assert s.passes == 3 and len(s.timings_ms) == 15 and len(s.pass_latency_ms) == 3
            assert s.latency_ms == pytest.approx(sorted(s.timings_ms)[7])  # FakeDevice reduces with the median
        again = profile(tiny(), FakeDevice(), store, passes=3, progress=False)
        assert again.measurements == 0 and again.already_done == 16
        more = profile(tiny(), FakeDevice(), store, passes=4, progress=False)
        assert more.measurements == 16 and all(s.passes == 4 for s in store.samples())
    with pytest.raises(SpaceError, match="passes"):
        profile(tiny(), FakeDevice(), ProfileStore(tmp_path / "q.sqlite"), passes=0)


def test_interrupt_marks_run_and_keeps_samples(tmp_path):
    calls = []

    def stop_after_three(spec, _):
        calls.append(spec)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with ProfileStore(tmp_path / "p.sqlite") as store:
        with pytest.raises(KeyboardInterrupt):
            profile(tiny(), FakeDevice(), store, progress=False, passes=1, on_sample=stop_after_three)
        assert store.count() == 3 and store.runs()[0]["status"] == "interrupted"


SCRIPT = textwrap.dedent("""
    import sys
    from latpred.profiling.devices import FakeDevice
    from latpred.profiling.runner import profile
    from latpred.profiling.space import ParameterSpace
    from latpred.profiling.store import ProfileStore
    import json
    space = ParameterSpace.from_dict(json.loads(sys.argv[2]))
    with ProfileStore(sys.argv[1]) as store:
        profile(space, FakeDevice(delay_s=0.02), store, progress=False, passes=2,
                on_sample=lambda s, o: print(s.key, flush=True))
""")


def test_sigkill_mid_run_loses_nothing_committed_and_resume_completes(tmp_path):
    import json

    db = tmp_path / "p.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(db), json.dumps(SPACE)], stdout=subprocess.PIPE,
                            text=True)
    printed = []
    deadline = time.time() + 60
    while len(printed) < 21 and time.time() < deadline:  # all of pass 1 and 5 of pass 2
        printed.append(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(printed) == 21
    with ProfileStore(db) as store:
        samples = {s.spec.key: s for s in store.samples()}
        assert set(printed) == set(samples)  # all 16 specs were printed after their first pass
        twice = [k for k in samples if printed.count(k) == 2]
        assert len(twice) == 5 and all(samples[k].passes == 2 for k in twice)
        assert sum(s.passes for s in samples.values()) in (21, 22)  # at most the pass in flight extra
        assert store.runs()[0]["status"] == "running"  # killed: never finished
        r = profile(tiny(), FakeDevice(), store, progress=False, passes=2)
        assert r.measured == 0 and r.measurements == 32 - sum(s.passes for s in samples.values())
        final = store.samples()
    keys = [s.spec.key for s in final]
    assert len(keys) == len(set(keys)) == 16 and all(s.passes == 2 for s in final)


def test_cli_profile_and_db_commands(tmp_path, capsys):
    toml = tmp_path / "s.toml"
    toml.write_text('samples = 2\n[runtime]\nthreads = 1\n[ops.linear]\nin_features = [8, 16]\nout_features = [4, 8]\n')
    db = tmp_path / "cli.sqlite"
    assert main(["profile", "--space", str(toml), "--db", str(db), "--no-progress"]) == 0
    assert "2 new specs measured" in capsys.readouterr().out
    assert main(["db", "info", str(db), "--json"]) == 0
    assert '"linear"' in capsys.readouterr().out
    assert main(["db", "info", str(db)]) == 0
    assert "unloaded latencies normalised to reference" in capsys.readouterr().out  # the store's unit
    csv = tmp_path / "o.csv"
    assert main(["db", "export", str(db), "--csv", str(csv)]) == 0
    assert len(csv.read_text().splitlines()) == 3
    assert main(["profile", "--space", str(toml), "--db", str(db), "--ops", "conv2d", "--no-progress"]) == 2
    assert "not in space" in capsys.readouterr().err
    assert main(["profile", "--space", str(toml), "--db", str(db), "--utilization", "50"]) == 2
    assert main(["db", "info", str(tmp_path / "missing.sqlite")]) == 1


class _IsaDevice(FakeDevice):
    """A fake device that reports the vector ISA of its CPU (same fingerprint whatever the ISA)."""

    def __init__(self, isa: str, **kw) -> None:
        super().__init__(**kw)
        self.isa = isa

    def metadata(self):
        return {**super().metadata(), "cpu_isa": self.isa}


def test_profile_refuses_a_store_of_another_cpu_with_the_same_fingerprint(tmp_path):
    db = tmp_path / "p.sqlite"
    with ProfileStore(db) as store:
        profile(tiny(), _IsaDevice("AVX512"), store, limit=4, passes=1, progress=False)
        runs, samples = len(store.runs()), store.count(status="ok")
        with pytest.raises(DeviceError, match=r"cpu_isa: AVX512 -> AVX2.*new store"):
            profile(tiny(), _IsaDevice("AVX2"), store, passes=1, progress=False)
        # nothing was written: no run started, every earlier sample still there
        assert (len(store.runs()), store.count(status="ok")) == (runs, samples)
        profile(tiny(), _IsaDevice("AVX512"), store, limit=6, passes=1, progress=False)  # the same machine goes on
        assert store.count(status="ok") == 6
