"""profile(): resumable, failure-tolerant, commits per sample; survives SIGKILL mid-run."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from latpred.cli import main
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
        r1 = profile(tiny(), FakeDevice(), store, limit=10, progress=False)
        assert (r1.measured, r1.already_done, r1.status) == (10, 0, "done")
        r2 = profile(tiny(), FakeDevice(), store, progress=False)
        assert (r2.measured, r2.already_done) == (6, 10)
        assert store.count(status="ok") == 16
        r3 = profile(tiny(), FakeDevice(), store, progress=False)
        assert r3.measured == 0 and r3.already_done == 16
        got = {s.spec for s in store.samples()}
    assert got == set(tiny().specs())


def test_failures_are_stored_and_the_run_goes_on(tmp_path):
    def fail(spec):
        return "OutOfMemoryError: fake" if spec.op == "activation" and spec.params["fn"] == "gelu" else None

    with ProfileStore(tmp_path / "p.sqlite") as store:
        r = profile(tiny(), FakeDevice(fail=fail), store, progress=False)
        n_fail = sum(1 for s in tiny().specs() if fail(s))
        assert n_fail > 0 and r.failed == n_fail and r.measured == 16 - n_fail
        failed = store.samples(status="failed")
        assert all("OutOfMemoryError" in s.error for s in failed)
        r2 = profile(tiny(), FakeDevice(), store, progress=False, retry_failed=True)
        assert r2.measured == n_fail and store.count(status="failed") == 0


def test_measurements_are_grouped_by_utilization(tmp_path):
    seen = []
    with ProfileStore(tmp_path / "p.sqlite") as store:
        profile(tiny(), FakeDevice(), store, progress=False, on_sample=lambda s, _: seen.append(s.utilization))
    assert seen == sorted(seen) and set(seen) == {0.0, 0.5}


def test_interrupt_marks_run_and_keeps_samples(tmp_path):
    calls = []

    def stop_after_three(spec, _):
        calls.append(spec)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with ProfileStore(tmp_path / "p.sqlite") as store:
        with pytest.raises(KeyboardInterrupt):
            profile(tiny(), FakeDevice(), store, progress=False, on_sample=stop_after_three)
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
        profile(space, FakeDevice(delay_s=0.03), store, progress=False,
                on_sample=lambda s, o: print(s.key, flush=True))
""")


def test_sigkill_mid_run_loses_nothing_committed_and_resume_completes(tmp_path):
    import json

    db = tmp_path / "p.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(db), json.dumps(SPACE)], stdout=subprocess.PIPE,
                            text=True)
    printed = []
    deadline = time.time() + 60
    while len(printed) < 5 and time.time() < deadline:
        printed.append(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(printed) == 5
    with ProfileStore(db) as store:
        stored = {s.spec.key for s in store.samples()}
        assert set(printed) <= stored and len(stored) <= len(printed) + 1
        assert store.runs()[0]["status"] == "running"  # killed: never finished
        r = profile(tiny(), FakeDevice(), store, progress=False)
        assert r.already_done == len(stored) and r.measured == 16 - len(stored)
        keys = [s.spec.key for s in store.samples()]
    assert len(keys) == len(set(keys)) == 16


def test_cli_profile_and_db_commands(tmp_path, capsys):
    toml = tmp_path / "s.toml"
    toml.write_text('samples = 2\n[runtime]\nthreads = 1\n[ops.linear]\nin_features = [8, 16]\nout_features = [4, 8]\n')
    db = tmp_path / "cli.sqlite"
    assert main(["profile", "--space", str(toml), "--db", str(db), "--no-progress"]) == 0
    assert "2 measured" in capsys.readouterr().out
    assert main(["db", "info", str(db), "--json"]) == 0
    assert '"linear"' in capsys.readouterr().out
    csv = tmp_path / "o.csv"
    assert main(["db", "export", str(db), "--csv", str(csv)]) == 0
    assert len(csv.read_text().splitlines()) == 3
    assert main(["profile", "--space", str(toml), "--db", str(db), "--ops", "conv2d", "--no-progress"]) == 2
    assert "not in space" in capsys.readouterr().err
    assert main(["profile", "--space", str(toml), "--db", str(db), "--utilization", "50"]) == 2
    assert main(["db", "info", str(tmp_path / "missing.sqlite")]) == 1
