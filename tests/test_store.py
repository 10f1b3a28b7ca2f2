"""ProfileStore: round trips, resumability, refusal of foreign files, durability under kill -9."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from latpred.errors import StoreError
from latpred.profiling.result import Measurement
from latpred.profiling.store import SCHEMA_VERSION, ProfileStore, Sample
from latpred.spec import ModuleSpec

REPO = Path(__file__).resolve().parents[1]


def conv(c: int = 3, **cond: object) -> ModuleSpec:
    return ModuleSpec("conv2d", {"in_channels": c, "out_channels": 16, "kernel_size": 3, "h": 32, "w": 32}, **cond)


def linear(n: int = 64, **cond: object) -> ModuleSpec:
    return ModuleSpec("linear", {"in_features": n, "out_features": 10, "bias": True}, **cond)


def meas(latency: float, n: int = 3, **kw: object) -> Measurement:
    return Measurement(latency, tuple(latency + 0.01 * i for i in range(n)), calls_per_window=4, **kw)


@pytest.fixture
def store(tmp_path: Path):
    with ProfileStore(tmp_path / "sub" / "dir" / "profile.sqlite") as s:
        yield s


@pytest.fixture
def dev(store: ProfileStore) -> int:
    return store.register_device({"fingerprint": "cpu-abc", "kind": "cpu", "cores": 2})


@pytest.fixture
def run(store: ProfileStore, dev: int) -> int:
    return store.start_run(dev, "tiny", '{"ops": ["conv2d"]}', {"repeats": 5, "warmup": 2}, n_planned=10)


# -- creation and pragmas ----------------------------------------------------------------------
def test_creates_parent_dirs_schema_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "p.sqlite"
    with ProfileStore(path):
        pass
    assert path.is_file()
    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"meta", "devices", "runs", "samples"} <= tables
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        assert int(meta["schema_version"]) == SCHEMA_VERSION == 1
        assert meta["created_with"]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        indexes = [r[0] for r in conn.execute("SELECT sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")]
        assert any("(device_id, op)" in sql for sql in indexes)
    finally:
        conn.close()


def test_store_connection_uses_full_sync(store: ProfileStore) -> None:
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"


def test_closed_store_refuses_use(tmp_path: Path) -> None:
    s = ProfileStore(tmp_path / "p.sqlite")
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.devices()


# -- devices and runs --------------------------------------------------------------------------
def test_register_device_is_idempotent_by_fingerprint(store: ProfileStore) -> None:
    a = store.register_device({"fingerprint": "gpu-1", "kind": "cuda", "name": "H100"})
    b = store.register_device({"fingerprint": "gpu-1", "kind": "cuda", "name": "changed"})
    c = store.register_device({"fingerprint": "gpu-2", "kind": "cuda"})
    assert a == b != c
    d = store.device(a)
    assert d["fingerprint"] == "gpu-1" and d["kind"] == "cuda" and d["metadata"]["name"] == "H100"
    assert [x["id"] for x in store.devices()] == [a, c]
    with pytest.raises(StoreError, match="no device"):
        store.device(999)
    with pytest.raises(ValueError, match="fingerprint"):
        store.register_device({"kind": "cpu"})
    with pytest.raises(ValueError, match="kind"):
        store.register_device({"fingerprint": "x"})


def test_runs_lifecycle(store: ProfileStore, dev: int, run: int) -> None:
    (r,) = store.runs(dev)
    assert r["id"] == run and r["status"] == "running" and r["finished_at"] is None
    assert r["settings"] == {"repeats": 5, "warmup": 2} and json.loads(r["space_json"]) == {"ops": ["conv2d"]}
    assert r["n_planned"] == 10 and r["n_measured"] == 0
    store.finish_run(run, "interrupted")
    (r,) = store.runs()
    assert r["status"] == "interrupted" and r["finished_at"] is not None
    with pytest.raises(StoreError, match="unknown run status"):
        store.finish_run(run, "exploded")
    with pytest.raises(StoreError, match="no run"):
        store.finish_run(12345, "done")
    with pytest.raises(StoreError, match="no device"):
        store.start_run(999, "x", "{}", {}, 1)
    assert store.runs(device_id=999) == []


# -- samples -----------------------------------------------------------------------------------
def test_sample_round_trip(store: ProfileStore, dev: int, run: int) -> None:
    specs = [
        conv(3),
        conv(8, batch_size=4, dtype="float16", utilization=0.5, threads=2, extra={"cudnn_benchmark": True}),
        linear(128, utilization=0.25),
    ]
    ms = [
        meas(1.5),
        Measurement(2.25, (2.2, 2.25, 2.3, 2.31), 8, util_observed=0.48, system_util=0.9, extra={"kernel_ms": 0.7}),
        meas(0.125, n=5),
    ]
    for s, m in zip(specs, ms, strict=True):
        assert store.add_sample(run, dev, s, m) is True
    got = store.samples()
    assert all(isinstance(x, Sample) for x in got)
    assert [x.spec for x in got] == specs
    assert [x.spec.key for x in got] == [s.key for s in specs]
    for x, m in zip(got, ms, strict=True):
        assert x.status == "ok" and x.error is None
        assert x.latency_ms == m.latency_ms
        assert x.timings_ms == m.timings_ms
        assert x.calls_per_window == m.calls_per_window
        assert x.util_observed == m.util_observed and x.system_util == m.system_util
        assert x.extra == m.extra
        assert x.run_id == run and x.device_id == dev
        assert x.measured_at.endswith("+00:00")
    assert got[1].spec.threads == 2 and got[1].spec.extra == {"cudnn_benchmark": True}
    assert [x.spec for x in store.samples(op="linear")] == [specs[2]]
    assert store.samples(device_id=dev + 1) == []
    assert store.count() == 3 and store.count(op="conv2d") == 2 and store.count(device_id=dev, status="ok") == 3
    assert store.runs()[0]["n_measured"] == 3


def test_duplicates_refused_and_done_keys(store: ProfileStore, dev: int, run: int) -> None:
    a, b = conv(3), conv(4)
    assert store.add_sample(run, dev, a, meas(1.0))
    assert store.add_sample(run, dev, a, meas(9.0)) is False
    # an equal spec built separately is the same key
    assert store.add_sample(run, dev, conv(3), error="should not replace") is False
    assert store.add_sample(run, dev, b, error="CUDA out of memory")
    assert store.count() == 2
    assert store.samples()[0].latency_ms == 1.0
    assert store.done_keys(dev) == {a.key, b.key}
    assert store.runs()[0]["n_measured"] == 2  # refused duplicates are not counted
    # the same spec on another device is a different sample
    other = store.register_device({"fingerprint": "cpu-other", "kind": "cpu"})
    run2 = store.start_run(other, "tiny", "{}", {}, 1)
    assert store.add_sample(run2, other, a, meas(2.0))
    assert store.done_keys(other) == {a.key}
    # a run of one device cannot record samples for another
    with pytest.raises(StoreError, match="belongs to device"):
        store.add_sample(run2, dev, conv(99), meas(1.0))
    with pytest.raises(StoreError, match="no run"):
        store.add_sample(4242, dev, conv(98), meas(1.0))
    assert store.count() == 3


def test_failed_samples_and_delete_failed(store: ProfileStore, dev: int, run: int) -> None:
    ok, bad1, bad2 = conv(3), conv(5), linear(7)
    store.add_sample(run, dev, ok, meas(1.0))
    store.add_sample(run, dev, bad1, error="RuntimeError: out of memory")
    store.add_sample(run, dev, bad2, error="unsupported dtype")
    assert [s.spec for s in store.samples()] == [ok]  # default: ok only
    failed = store.samples(status="failed")
    assert [(s.spec, s.error) for s in failed] == [(bad1, "RuntimeError: out of memory"), (bad2, "unsupported dtype")]
    assert all(s.latency_ms is None and s.timings_ms == () and s.status == "failed" for s in failed)
    assert len(store.samples(status=None)) == 3
    assert store.count(status="failed") == 2 and store.count(status="ok") == 1
    assert bad1.key in store.done_keys(dev)  # failed specs are not retried on plain resume...
    assert store.delete_failed(dev) == 2  # ...unless deleted
    assert store.done_keys(dev) == {ok.key}
    assert store.delete_failed(dev) == 0
    assert store.add_sample(run, dev, bad1, meas(3.0)) is True
    with pytest.raises(StoreError, match="unknown sample status"):
        store.samples(status="weird")


def test_add_sample_argument_misuse(store: ProfileStore, dev: int, run: int) -> None:
    with pytest.raises(TypeError, match="exactly one"):
        store.add_sample(run, dev, conv())
    with pytest.raises(TypeError, match="exactly one"):
        store.add_sample(run, dev, conv(), meas(1.0), error="x")
    with pytest.raises(TypeError, match="ModuleSpec"):
        store.add_sample(run, dev, conv().to_dict(), meas(1.0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Measurement"):
        store.add_sample(run, dev, conv(), 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        store.add_sample(run, dev, conv(), Measurement(float("nan"), (1.0,), 1))
    assert store.count() == 0 and store.runs()[0]["n_measured"] == 0


def test_summary(store: ProfileStore, dev: int, run: int) -> None:
    for i, lat in enumerate([1.0, 3.0, 2.0]):
        store.add_sample(run, dev, conv(i + 1, batch_size=2**i, utilization=0.5 * (i % 2)), meas(lat))
        time.sleep(0.002)
    store.add_sample(run, dev, conv(50), error="oom")
    store.add_sample(run, dev, linear(8), meas(0.5))
    store.finish_run(run, "done")
    s = store.summary()
    assert s["schema_version"] == SCHEMA_VERSION and s["n_samples"] == 5
    (d,) = s["devices"]
    assert d["fingerprint"] == "cpu-abc" and d["kind"] == "cpu"
    assert d["n_ok"] == 4 and d["n_failed"] == 1
    assert d["ops"]["conv2d"] == {"ok": 3, "failed": 1, "median_latency_ms": 2.0}
    assert d["ops"]["linear"] == {"ok": 1, "failed": 0, "median_latency_ms": 0.5}
    assert d["utilizations"] == [0.0, 0.5]
    assert d["batch_sizes"] == [1, 2, 4]
    assert d["first_measured_at"] <= d["last_measured_at"]
    (r,) = d["runs"]
    assert r["status"] == "done" and r["n_measured"] == 5 and r["n_planned"] == 10
    assert r["samples_per_s"] is not None and r["samples_per_s"] > 0


def test_export_csv(store: ProfileStore, dev: int, run: int, tmp_path: Path) -> None:
    a, b, c = conv(3, threads=2), linear(64), conv(9)
    store.add_sample(run, dev, a, Measurement(1.5, (1.4, 1.6), 4, util_observed=0.1))
    store.add_sample(run, dev, b, meas(0.25))
    store.add_sample(run, dev, c, error="bad, with comma\nand newline")
    out = tmp_path / "all.csv"
    assert store.export_csv(out) == 3
    with open(out, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames
    assert header is not None
    assert header[:17] == [
        "id", "device_id", "run_id", "op", "status", "error", "latency_ms", "batch_size", "dtype", "utilization",
        "threads", "util_observed", "system_util", "calls_per_window", "measured_at", "spec_json", "timings_json",
    ]  # fmt: skip
    assert sorted(header[17:]) == sorted(
        ["p_in_channels", "p_out_channels", "p_kernel_size", "p_h", "p_w", "p_in_features", "p_out_features", "p_bias"]
    )
    r0, r1, r2 = rows
    assert r0["op"] == "conv2d" and r0["status"] == "ok" and float(r0["latency_ms"]) == 1.5
    assert r0["threads"] == "2" and float(r0["util_observed"]) == 0.1 and r0["system_util"] == ""
    assert json.loads(r0["timings_json"]) == [1.4, 1.6]
    assert ModuleSpec.from_dict(json.loads(r0["spec_json"])) == a
    assert r0["p_in_channels"] == "3" and r0["p_in_features"] == ""
    assert r1["op"] == "linear" and r1["p_in_features"] == "64" and r1["p_in_channels"] == ""
    assert r2["status"] == "failed" and r2["error"] == "bad, with comma\nand newline" and r2["latency_ms"] == ""
    assert store.export_csv(tmp_path / "ok.csv", status="ok") == 2
    assert store.export_csv(tmp_path / "none.csv", device_id=dev + 100) == 0
    with open(tmp_path / "none.csv", newline="") as f:
        assert next(csv.reader(f))[0] == "id"


def test_to_pandas_without_pandas(store: ProfileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` raise ImportError
    with pytest.raises(StoreError, match="pandas is not installed; use export_csv"):
        store.to_pandas()


def test_to_pandas_with_pandas(store: ProfileStore, dev: int, run: int) -> None:
    pytest.importorskip("pandas")
    store.add_sample(run, dev, conv(3), meas(1.5))
    store.add_sample(run, dev, linear(16), error="x")
    df = store.to_pandas()
    assert len(df) == 2 and list(df["op"]) == ["conv2d", "linear"]
    assert "p_in_channels" in df.columns and "p_in_features" in df.columns
    assert len(store.to_pandas(status="ok")) == 1


# -- read-only and concurrent readers ----------------------------------------------------------
def test_readonly_missing_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "p.sqlite"
    with pytest.raises(StoreError, match=str(path.name)):
        ProfileStore(path, readonly=True)
    assert not path.exists() and not path.parent.exists()


def test_readonly_reader_alongside_writer(store: ProfileStore, dev: int, run: int) -> None:
    store.add_sample(run, dev, conv(3), meas(1.0))
    with ProfileStore(store.path, readonly=True) as reader:
        assert reader.count() == 1
        store.add_sample(run, dev, conv(4), meas(2.0))
        assert reader.count() == 2  # sees the writer's commits
        assert reader.done_keys(dev) == {conv(3).key, conv(4).key}
        with pytest.raises(StoreError, match="read-only"):
            reader.add_sample(run, dev, conv(5), meas(1.0))
        with pytest.raises(StoreError, match="read-only"):
            reader.register_device({"fingerprint": "z", "kind": "cpu"})
    assert store.count() == 2


# -- refusing foreign files --------------------------------------------------------------------
def _snapshot(path: Path) -> bytes:
    return path.read_bytes()


@pytest.mark.parametrize("readonly", [False, True])
def test_non_sqlite_file_refused_and_untouched(tmp_path: Path, readonly: bool) -> None:
    path = tmp_path / "notes.sqlite"
    garbage = b"this is not a database\x00\x01\x02" + bytes(range(256)) * 20
    path.write_bytes(garbage)
    with pytest.raises(StoreError, match="not an SQLite database") as info:
        ProfileStore(path, readonly=readonly)
    assert str(path) in str(info.value)
    assert path.read_bytes() == garbage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.sqlite"]  # no -wal/-shm left behind


def test_foreign_sqlite_database_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.commit()
    conn.close()
    before = _snapshot(path)
    with pytest.raises(StoreError, match="not a latpred profile store") as info:
        ProfileStore(path)
    assert str(path) in str(info.value) and "customers" in str(info.value)
    assert _snapshot(path) == before


def test_newer_schema_version_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite"
    with ProfileStore(path) as s:
        d = s.register_device({"fingerprint": "f", "kind": "cpu"})
        s.add_sample(s.start_run(d, "x", "{}", {}, 1), d, conv(), meas(1.0))
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    before = _snapshot(path)
    for readonly in (False, True):
        with pytest.raises(StoreError, match="schema version 999") as info:
            ProfileStore(path, readonly=readonly)
        assert str(path) in str(info.value)
    assert _snapshot(path) == before


def test_missing_tables_refused(tmp_path: Path) -> None:
    path = tmp_path / "damaged.sqlite"
    ProfileStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE samples")
    conn.commit()
    conn.close()
    before = _snapshot(path)
    with pytest.raises(StoreError, match="missing table"):
        ProfileStore(path)
    assert _snapshot(path) == before


def test_empty_files_are_initialised_but_not_read_only(tmp_path: Path) -> None:
    empty = tmp_path / "zero.sqlite"
    empty.write_bytes(b"")
    with pytest.raises(StoreError, match="empty"):
        ProfileStore(empty, readonly=True)
    assert empty.read_bytes() == b""
    with ProfileStore(empty) as s:
        assert s.count() == 0 and s.devices() == []
    blank_db = tmp_path / "blank.sqlite"
    conn = sqlite3.connect(blank_db)
    conn.execute("PRAGMA user_version = 7")
    conn.commit()
    conn.close()
    assert blank_db.read_bytes().startswith(b"SQLite format 3")  # a real, table-less database
    with ProfileStore(blank_db) as s:
        assert s.register_device({"fingerprint": "f", "kind": "cpu"}) == 1


def test_reopen_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    with ProfileStore(path) as s:
        d = s.register_device({"fingerprint": "f", "kind": "cpu"})
        r = s.start_run(d, "x", "{}", {}, 2)
        s.add_sample(r, d, conv(1), meas(1.0))
    with ProfileStore(path) as s:
        assert s.register_device({"fingerprint": "f", "kind": "cpu"}) == d
        assert s.add_sample(r, d, conv(1), meas(1.0)) is False
        assert s.add_sample(r, d, conv(2), meas(2.0)) is True
        assert [x.spec for x in s.samples()] == [conv(1), conv(2)]


# -- durability --------------------------------------------------------------------------------
_WRITER = textwrap.dedent(
    """
    import sys
    from latpred.profiling.result import Measurement
    from latpred.profiling.store import ProfileStore
    from latpred.spec import ModuleSpec

    store = ProfileStore(sys.argv[1])
    dev = store.register_device({"fingerprint": "kill-test", "kind": "cpu"})
    run = store.start_run(dev, "kill", "{}", {}, 100000)
    for i in range(100000):
        spec = ModuleSpec("conv2d", {"in_channels": i, "out_channels": 8, "kernel_size": 3})
        store.add_sample(run, dev, spec, Measurement(float(i) + 0.5, (float(i), float(i) + 1.0), 2))
        print(i, flush=True)
    """
)


@pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")
def test_committed_samples_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "kill.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    printed: list[int] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while len(printed) < 5:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"writer exited early (rc={proc.wait()}): {proc.stderr.read() if proc.stderr else ''}")
            printed.append(int(line))
            assert time.monotonic() < deadline, "writer too slow"
        proc.kill()  # SIGKILL on POSIX: no cleanup, no close(), no atexit
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -9
    printed += [int(x) for x in rest.split()]
    assert printed == list(range(len(printed)))

    with ProfileStore(path, readonly=True) as reader:  # a reader can open the crashed store
        assert reader.count() >= len(printed)

    with ProfileStore(path) as s:
        (d,) = s.devices()
        samples = s.samples(status=None)
        stored = [x.spec.params["in_channels"] for x in samples]
        assert len(stored) == len(set(stored)), "duplicate samples"
        assert set(printed) <= set(stored), "a committed sample was lost"
        assert stored == list(range(len(stored)))  # at most the one in flight beyond the last print
        assert len(stored) - len(printed) <= 1
        for x in samples:
            i = x.spec.params["in_channels"]
            assert x.latency_ms == i + 0.5 and x.timings_ms == (float(i), float(i) + 1.0)
        (run,) = s.runs()
        assert run["status"] == "running" and run["n_measured"] == len(stored)
        s.finish_run(run["id"], "interrupted")
        # the store still accepts writes: a resumed run skips stored specs and adds new ones
        run2 = s.start_run(d["id"], "kill", "{}", {}, 2)
        first = ModuleSpec("conv2d", {"in_channels": 0, "out_channels": 8, "kernel_size": 3})
        assert first.key in s.done_keys(d["id"])
        assert s.add_sample(run2, d["id"], first, meas(1.0)) is False
        assert s.add_sample(run2, d["id"], conv(12345), meas(1.0)) is True
        assert s.count() == len(stored) + 1
        assert s._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
