"""ProfileStore: the embedded SQLite store of profiling samples.

One file holds the devices that were profiled, the profiling runs, and one row per measured spec
(``UNIQUE(device_id, spec_key)``), so an interrupted run resumes without measuring a spec twice.
Every sample is committed in its own transaction (WAL journal, ``synchronous=FULL``): a sample whose
``add_sample`` call returned survives ``kill -9`` of the profiling process.

One process writes at a time; readers may open the same file concurrently (``readonly=True``).
A file that is not a latpred store (not SQLite, foreign tables, unknown schema version) is refused
with :class:`~latpred.errors.StoreError` and never modified.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
import statistics
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..spec import ModuleSpec
from .reference import CONSTANT_SCHEME, normalised_windows, parse_nominal
from .result import Measurement

__all__ = ["ProfileStore", "Sample", "SCHEMA_VERSION", "RUN_STATUSES", "SAMPLE_STATUSES", "EXPORT_COLUMNS"]

#: Version of the table layout written by this code; a store with another version is refused.
SCHEMA_VERSION = 1
RUN_STATUSES = ("running", "done", "interrupted", "failed")
SAMPLE_STATUSES = ("ok", "failed")

_SQLITE_MAGIC = b"SQLite format 3\x00"
_TABLES = ("meta", "devices", "runs", "samples")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    id          INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    metadata    TEXT NOT NULL,
    first_seen  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id            INTEGER PRIMARY KEY,
    device_id     INTEGER NOT NULL REFERENCES devices(id),
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    status        TEXT NOT NULL CHECK (status IN ('running', 'done', 'interrupted', 'failed')),
    space_name    TEXT NOT NULL,
    space_json    TEXT NOT NULL,
    settings_json TEXT NOT NULL,
    n_planned     INTEGER NOT NULL,
    n_measured    INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS samples (
    id               INTEGER PRIMARY KEY,
    run_id           INTEGER NOT NULL REFERENCES runs(id),
    device_id        INTEGER NOT NULL REFERENCES devices(id),
    spec_key         TEXT NOT NULL,
    op               TEXT NOT NULL,
    spec_json        TEXT NOT NULL,
    batch_size       INTEGER NOT NULL,
    dtype            TEXT NOT NULL,
    utilization      REAL NOT NULL,
    threads          INTEGER,
    status           TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error            TEXT,
    latency_ms       REAL,
    timings_json     TEXT,
    calls_per_window INTEGER,
    util_observed    REAL,
    system_util      REAL,
    extra_json       TEXT,
    measured_at      TEXT NOT NULL,
    passes           INTEGER NOT NULL DEFAULT 1,
    pass_latency_json TEXT,
    UNIQUE (device_id, spec_key),
    CHECK ((status = 'ok' AND latency_ms IS NOT NULL AND error IS NULL)
        OR (status = 'failed' AND error IS NOT NULL AND latency_ms IS NULL))
);
CREATE INDEX IF NOT EXISTS samples_device_op ON samples (device_id, op);
CREATE INDEX IF NOT EXISTS samples_run ON samples (run_id);
"""

#: Fixed leading columns of :meth:`ProfileStore.export_csv` / :meth:`ProfileStore.to_pandas`.
EXPORT_COLUMNS = (
    "id", "device_id", "run_id", "op", "status", "error", "latency_ms", "batch_size", "dtype", "utilization",
    "threads", "util_observed", "system_util", "calls_per_window", "measured_at", "spec_json", "timings_json",
)  # fmt: skip


@dataclass(frozen=True)
class Sample:
    """One stored measurement (``status == 'ok'``) or failure (``status == 'failed'``, ``error`` set)."""

    id: int
    run_id: int
    device_id: int
    spec: ModuleSpec
    status: str
    error: str | None
    latency_ms: float | None
    timings_ms: tuple[float, ...]
    calls_per_window: int | None
    util_observed: float | None
    system_util: float | None
    extra: dict[str, Any] = field(hash=False)
    measured_at: str
    passes: int = 1
    pass_latency_ms: tuple[float, ...] = ()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("latpred")
    except PackageNotFoundError:
        return "unknown"


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


class ProfileStore:
    """SQLite store of profiling samples; see the module docstring.

    Args:
        path: the store file; created (with parent directories) unless ``readonly``.
        readonly: open for reading only; a missing file is an error.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = None
        exists = self.path.exists()
        if exists and not self.path.is_file():
            raise StoreError(f"profile store {self.path}: not a regular file")
        if not exists and readonly:
            raise StoreError(f"profile store {self.path} does not exist (opened read-only)")
        is_new = not exists or self._inspect()
        if is_new and readonly:
            raise StoreError(f"profile store {self.path} is empty: not a latpred profile store")
        if not exists:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"profile store {self.path}: cannot create its directory: {e}") from e
        self._conn = self._connect(create=is_new)

    # -- opening ----------------------------------------------------------------------------
    def _inspect(self) -> bool:
        """Check an existing file without writing to it; True when it is an empty database."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except OSError as e:
            raise StoreError(f"profile store {self.path}: cannot read: {e}") from e
        if not head:
            return True  # zero-byte file: SQLite treats it as a new, empty database
        if head != _SQLITE_MAGIC:
            raise StoreError(f"profile store {self.path} is not an SQLite database (refusing to touch it)")
        try:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        except sqlite3.Error as e:
            raise StoreError(f"profile store {self.path}: cannot open: {e}") from e
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                return True
            if "meta" not in tables:
                raise StoreError(
                    f"profile store {self.path} is an SQLite database but not a latpred profile store "
                    f"(no 'meta' table; tables: {', '.join(sorted(tables))})"
                )
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            self._check_version(None if row is None else row[0])
            missing = [t for t in _TABLES if t not in tables]
            if missing:
                raise StoreError(f"profile store {self.path} is damaged: missing table(s) {', '.join(missing)}")
            return False
        except sqlite3.Error as e:
            raise StoreError(f"profile store {self.path} cannot be read as a latpred store: {e}") from e
        finally:
            conn.close()

    def _check_version(self, raw: object) -> None:
        try:
            version = int(str(raw))
        except ValueError:
            raise StoreError(f"profile store {self.path} has an unknown schema version {raw!r}") from None
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"profile store {self.path} has schema version {version}, newer than this latpred supports "
                f"({SCHEMA_VERSION}); upgrade latpred to read it"
            )
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"profile store {self.path} has an unknown schema version {version} (expected {SCHEMA_VERSION})"
            )

    def _connect(self, *, create: bool) -> sqlite3.Connection:
        try:
            if self.readonly:
                conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
            else:
                conn = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"profile store {self.path}: cannot open: {e}") from e
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA foreign_keys = ON")
            if not self.readonly:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"profile store {self.path}: cannot enable WAL journal (got {mode!r})")
                conn.execute("PRAGMA synchronous = FULL")
                if create:
                    self._create_schema(conn)
        except sqlite3.Error as e:
            conn.close()
            raise StoreError(f"profile store {self.path}: cannot open: {e}") from e
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                [("schema_version", str(SCHEMA_VERSION)), ("created_with", _version()), ("created_at", _now())],
            )
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            self._check_version(row[0])  # another process may have created the file meanwhile
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"profile store {self.path} is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed (and synced) on success, rolled back on any error."""
        if self.readonly:
            raise StoreError(f"profile store {self.path} was opened read-only")
        conn = self._db
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StoreError(f"profile store {self.path}: cannot start a write: {e}") from e
        try:
            yield conn
        except BaseException as e:
            conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise StoreError(f"profile store {self.path}: write failed: {e}") from e
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise StoreError(f"profile store {self.path}: commit failed: {e}") from e

    def _query(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[dict[str, Any]]:
        conn = self._db
        try:
            cur = conn.execute(sql, params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        except sqlite3.Error as e:
            raise StoreError(f"profile store {self.path}: read failed: {e}") from e

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def __enter__(self) -> ProfileStore:
        if self._conn is None:
            raise StoreError(f"profile store {self.path} is closed")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else "read-write"
        state = "closed" if self._conn is None else mode
        return f"ProfileStore({str(self.path)!r}, {state})"

    # -- devices ----------------------------------------------------------------------------
    def register_device(self, metadata: Mapping[str, Any]) -> int:
        """Record a device (``metadata`` needs ``fingerprint`` and ``kind``); returns its id.

        A fingerprint already in the store returns the existing id; its metadata is kept as first seen.
        """
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
        for name in ("fingerprint", "kind"):
            value = metadata.get(name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"device metadata needs a non-empty string {name!r}, got {value!r}")
        try:
            meta_json = json.dumps(dict(metadata), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"device metadata must be JSON-serialisable: {e}") from e
        with self._write() as conn:
            conn.execute(
                "INSERT INTO devices (fingerprint, kind, metadata, first_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (fingerprint) DO NOTHING",
                (metadata["fingerprint"], metadata["kind"], meta_json, _now()),
            )
            row = conn.execute("SELECT id FROM devices WHERE fingerprint = ?", (metadata["fingerprint"],)).fetchone()
        return int(row[0])

    @staticmethod
    def _device_row(row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "id": row["id"],
            "fingerprint": row["fingerprint"],
            "kind": row["kind"],
            "metadata": json.loads(row["metadata"]),
            "first_seen": row["first_seen"],
        }

    def device(self, device_id: int) -> dict[str, Any]:
        """One device: ``id``, ``fingerprint``, ``kind``, ``metadata`` (dict), ``first_seen``."""
        rows = self._query("SELECT * FROM devices WHERE id = ?", (device_id,))
        if not rows:
            raise StoreError(f"profile store {self.path} has no device with id {device_id}")
        return self._device_row(rows[0])

    def devices(self) -> list[dict[str, Any]]:
        """Every device, by id."""
        return [self._device_row(r) for r in self._query("SELECT * FROM devices ORDER BY id")]

    # -- runs -------------------------------------------------------------------------------
    def start_run(
        self, device_id: int, space_name: str, space_json: str, settings: Mapping[str, Any], n_planned: int
    ) -> int:
        """Open a run (status ``running``) and return its id."""
        if not isinstance(space_name, str) or not isinstance(space_json, str):
            raise TypeError("space_name and space_json must be strings")
        if isinstance(n_planned, bool) or not isinstance(n_planned, int) or n_planned < 0:
            raise ValueError(f"n_planned must be a non-negative integer, got {n_planned!r}")
        try:
            settings_json = json.dumps(dict(settings), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"run settings must be JSON-serialisable: {e}") from e
        self.device(device_id)
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO runs (device_id, started_at, status, space_name, space_json, settings_json, n_planned) "
                "VALUES (?, ?, 'running', ?, ?, ?, ?)",
                (device_id, _now(), space_name, space_json, settings_json, n_planned),
            )
            return int(cur.lastrowid)  # type: ignore[arg-type]

    def finish_run(self, run_id: int, status: str) -> None:
        """Close a run with ``status`` in ``done``, ``interrupted``, ``failed`` (``running`` reopens it)."""
        if status not in RUN_STATUSES:
            raise StoreError(f"unknown run status {status!r}; expected one of {list(RUN_STATUSES)}")
        finished = None if status == "running" else _now()
        with self._write() as conn:
            cur = conn.execute("UPDATE runs SET status = ?, finished_at = ? WHERE id = ?", (status, finished, run_id))
            if cur.rowcount != 1:
                raise StoreError(f"profile store {self.path} has no run with id {run_id}")

    def runs(self, device_id: int | None = None) -> list[dict[str, Any]]:
        """Runs (optionally of one device), by id; ``settings`` is decoded, ``space_json`` kept as text."""
        sql, params = "SELECT * FROM runs", []
        if device_id is not None:
            sql, params = sql + " WHERE device_id = ?", [device_id]
        out = []
        for r in self._query(sql + " ORDER BY id", params):
            r = dict(r)
            r["settings"] = json.loads(r.pop("settings_json"))
            out.append(r)
        return out

    # -- samples ----------------------------------------------------------------------------
    def done_keys(self, device_id: int) -> set[str]:
        """Spec keys already stored for the device (ok or failed): the specs a resumed run skips."""
        return {r["spec_key"] for r in self._query("SELECT spec_key FROM samples WHERE device_id = ?", (device_id,))}

    def add_sample(
        self,
        run_id: int,
        device_id: int,
        spec: ModuleSpec,
        measurement: Measurement | None = None,
        error: str | None = None,
    ) -> bool:
        """Store one measurement or one failure (exactly one of ``measurement``/``error``) and commit.

        Returns False, storing nothing, when the device already has a sample for ``spec.key``.
        """
        if not isinstance(spec, ModuleSpec):
            raise TypeError(f"spec must be a ModuleSpec, got {type(spec).__name__}")
        if (measurement is None) == (error is None):
            raise TypeError("add_sample() needs exactly one of measurement= or error=")
        values: dict[str, Any] = {
            "status": "ok",
            "error": None,
            "latency_ms": None,
            "timings_json": None,
            "calls_per_window": None,
            "util_observed": None,
            "system_util": None,
            "extra_json": None,
            "pass_latency_json": None,
        }
        if measurement is not None:
            if not isinstance(measurement, Measurement):
                raise TypeError(f"measurement must be a Measurement, got {type(measurement).__name__}")
            latency = measurement.latency_ms
            if isinstance(latency, bool) or not isinstance(latency, (int, float)) or not math.isfinite(latency):
                raise ValueError(f"measurement.latency_ms must be a finite number, got {latency!r}")
            try:
                timings_json = json.dumps([float(t) for t in measurement.timings_ms], allow_nan=False)
                extra_json = json.dumps(dict(measurement.extra), sort_keys=True, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise ValueError(f"measurement timings/extra must be finite JSON values: {e}") from e
            values.update(
                latency_ms=float(latency),
                timings_json=timings_json,
                calls_per_window=measurement.calls_per_window,
                util_observed=measurement.util_observed,
                system_util=measurement.system_util,
                extra_json=extra_json,
                pass_latency_json=json.dumps([float(latency)]),
            )
        else:
            if not isinstance(error, str):
                raise TypeError(f"error must be a string, got {type(error).__name__}")
            values.update(status="failed", error=error or "unknown error")
        with self._write() as conn:
            run = conn.execute("SELECT device_id FROM runs WHERE id = ?", (run_id,)).fetchone()
            if run is None:
                raise StoreError(f"profile store {self.path} has no run with id {run_id}")
            if run[0] != device_id:
                raise StoreError(f"run {run_id} belongs to device {run[0]}, not device {device_id}")
            cur = conn.execute(
                "INSERT INTO samples (run_id, device_id, spec_key, op, spec_json, batch_size, dtype, utilization, "
                "threads, status, error, latency_ms, timings_json, calls_per_window, util_observed, system_util, "
                "extra_json, measured_at, pass_latency_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (device_id, spec_key) DO NOTHING",
                (
                    run_id, device_id, spec.key, spec.op, json.dumps(spec.to_dict(), sort_keys=True),
                    spec.batch_size, spec.dtype, spec.utilization, spec.threads, values["status"], values["error"],
                    values["latency_ms"], values["timings_json"], values["calls_per_window"],
                    values["util_observed"], values["system_util"], values["extra_json"], _now(),
                    values["pass_latency_json"],
                ),
            )  # fmt: skip
            inserted = cur.rowcount == 1
            if inserted:
                conn.execute("UPDATE runs SET n_measured = n_measured + 1 WHERE id = ?", (run_id,))
        return inserted

    def replace_sample(self, sample_id: int, run_id: int, measurement: Measurement) -> None:
        """Replace a successful sample's measurement with ``measurement`` (one pass, belonging to ``run_id``) and
        commit; its old latency, passes, windows, run and time are appended to ``extra["replaced"]``, so nothing
        measured is lost. Further passes pool onto it with :meth:`add_pass` (``expected_passes=1``)."""
        if not isinstance(measurement, Measurement):
            raise TypeError(f"measurement must be a Measurement, got {type(measurement).__name__}")
        latency = measurement.latency_ms
        if isinstance(latency, bool) or not isinstance(latency, (int, float)) or not math.isfinite(latency):
            raise ValueError(f"measurement.latency_ms must be a finite number, got {latency!r}")
        with self._write() as conn:
            row = conn.execute("SELECT device_id, run_id, latency_ms, timings_json, passes, pass_latency_json, extra_json, "
                               "measured_at, status FROM samples WHERE id = ?", (sample_id,)).fetchone()
            if row is None or row[8] != "ok":
                raise StoreError(f"profile store {self.path} has no successful sample with id {sample_id}")
            run = conn.execute("SELECT device_id FROM runs WHERE id = ?", (run_id,)).fetchone()
            if run is None or run[0] != row[0]:
                raise StoreError(f"run {run_id} is not a run of device {row[0]} in {self.path}")
            old_extra = json.loads(row[6] or "{}")
            history = list(old_extra.pop("replaced", []))
            history.append({"latency_ms": row[2], "run_id": row[1], "passes": row[4], "measured_at": row[7],
                            "pass_latency_ms": json.loads(row[5] or "[]"), "timings_ms": json.loads(row[3] or "[]"),
                            "extra": old_extra})
            extra = {**dict(measurement.extra), "replaced": history}
            try:
                extra_json = json.dumps(extra, sort_keys=True, allow_nan=False)
                timings_json = json.dumps([float(t) for t in measurement.timings_ms], allow_nan=False)
            except (TypeError, ValueError) as e:
                raise ValueError(f"measurement timings/extra must be finite JSON values: {e}") from e
            conn.execute(
                "UPDATE samples SET run_id = ?, latency_ms = ?, timings_json = ?, calls_per_window = ?, util_observed = ?, "
                "system_util = ?, extra_json = ?, measured_at = ?, passes = 1, pass_latency_json = ? WHERE id = ?",
                (run_id, float(latency), timings_json, measurement.calls_per_window, measurement.util_observed,
                 measurement.system_util, extra_json, _now(), json.dumps([float(latency)]), sample_id))
            conn.execute("UPDATE runs SET n_measured = n_measured + 1 WHERE id = ?", (run_id,))

    def pass_counts(self, device_id: int) -> dict[str, int]:
        """Measurement passes stored per spec key for the device's successful samples."""
        rows = self._query("SELECT spec_key, passes FROM samples WHERE device_id = ? AND status = 'ok'", (device_id,))
        return {r["spec_key"]: int(r["passes"]) for r in rows}

    def add_pass(self, device_id: int, spec: ModuleSpec, measurement: Measurement,
                 reduce: Callable[[tuple[float, ...]], float], expected_passes: int) -> bool:
        """Append one more measurement pass to a stored sample and commit.

        The pass's windows are appended to the sample's timings, ``latency_ms`` becomes
        ``reduce(all windows)``, ``util_observed``/``system_util`` become the mean over passes.
        Only applies when the sample has exactly ``expected_passes`` passes (so a resumed run never
        adds a pass twice); returns whether it did.
        """
        if not isinstance(measurement, Measurement):
            raise TypeError(f"measurement must be a Measurement, got {type(measurement).__name__}")
        with self._write() as conn:
            row = conn.execute(
                "SELECT id, timings_json, passes, pass_latency_json, util_observed, system_util, extra_json FROM samples "
                "WHERE device_id = ? AND spec_key = ? AND status = 'ok'", (device_id, spec.key)).fetchone()
            if row is None or int(row[2]) != expected_passes:
                return False
            sid, timings, passes, pass_lat, util, system, extra_json = row
            extra, scale = _merge_pass_extra(json.loads(extra_json or "{}"), dict(measurement.extra))
            pooled = tuple(json.loads(timings or "[]")) + tuple(float(t) * scale for t in measurement.timings_ms)
            latency = float(reduce(pooled))
            if not math.isfinite(latency):
                raise ValueError(f"reduced latency must be finite, got {latency!r}")

            def mean(old: float | None, new: float | None) -> float | None:
                if old is None or new is None:
                    return new if old is None else old
                return (old * passes + new) / (passes + 1)

            conn.execute(
                "UPDATE samples SET timings_json = ?, latency_ms = ?, passes = ?, pass_latency_json = ?, "
                "util_observed = ?, system_util = ?, extra_json = ? WHERE id = ?",
                (json.dumps(pooled), latency, passes + 1,
                 json.dumps([*json.loads(pass_lat or "[]"), float(measurement.latency_ms) * scale]),
                 mean(util, measurement.util_observed), mean(system, measurement.system_util),
                 json.dumps(extra, sort_keys=True, allow_nan=False), sid))
        return True

    # -- reference normalisation ------------------------------------------------------------------
    def reference_nominal(self, device_id: int) -> dict[int, float]:
        """The device's reference nominal per thread count (``{}`` when none was recorded)."""
        self.device(device_id)
        rows = self._query("SELECT value FROM meta WHERE key = ?", (_nominal_key(device_id),))
        return parse_nominal(json.loads(rows[0]["value"]), f"store {self.path} reference nominal") if rows else {}

    def raw_unloaded_samples(self, device_id: int) -> int:
        """Successful unloaded samples of the device measured without reference normalisation."""
        rows = self._query("SELECT COUNT(*) AS n FROM samples WHERE device_id = ? AND status = 'ok' AND utilization = 0 "
                           "AND (extra_json IS NULL OR extra_json NOT LIKE '%reference_nominal_ms%')", (device_id,))
        return int(rows[0]["n"])

    def reference_scheme(self, device_id: int) -> str | None:
        """The normalisation scheme of the device's normalised samples (``"constant"`` for samples that do not
        record one); None without normalised samples. A store whose samples disagree raises :class:`StoreError`."""
        self.device(device_id)
        rows = self._query("SELECT DISTINCT json_extract(extra_json, '$.reference_scheme') AS scheme FROM samples "
                           "WHERE device_id = ? AND status = 'ok' AND extra_json LIKE '%reference_nominal_ms%'", (device_id,))
        schemes = {r["scheme"] or CONSTANT_SCHEME for r in rows}
        if len(schemes) > 1:
            raise StoreError(f"profile store {self.path} mixes reference normalisation schemes {sorted(schemes)} for "
                             f"device {device_id}; convert it with `latpred db renormalise`")
        return schemes.pop() if schemes else None

    def _scheme_or_mixed(self, device_id: int) -> str | None:
        try:
            return self.reference_scheme(device_id)
        except StoreError:
            return "mixed"

    def renormalise(self, device_id: int, scheme: str, exponent_of: Callable[[ModuleSpec], float],
                    reduce: Callable[[list[float]], float]) -> int:
        """Re-express every normalised sample of the device under ``scheme``, from its raw windows, in one transaction.

        Each sample's windows become ``raw * (nominal / reference) ** exponent_of(spec)``, its latency
        ``reduce(windows)``, its pass latencies ``reduce`` of each pass's windows (passes hold equal
        numbers of windows; otherwise they are scaled like the latency). Raw windows and reference
        readings are kept, so converting back is exact. Returns the number of samples rewritten.
        """
        self.device(device_id)
        changed = 0
        with self._write() as conn:
            rows = conn.execute("SELECT id, spec_json, latency_ms, passes, pass_latency_json, extra_json FROM samples "
                                "WHERE device_id = ? AND status = 'ok' AND extra_json LIKE '%reference_nominal_ms%'",
                                (device_id,)).fetchall()
            for sid, spec_json, latency, passes, pass_lat, extra_json in rows:
                extra = json.loads(extra_json)
                raw, ref, nominal = extra.get("raw_timings_ms"), extra.get("reference_ms"), extra.get("reference_nominal_ms")
                if not isinstance(raw, list) or not isinstance(ref, list) or len(raw) != len(ref) or not raw:
                    raise StoreError(f"profile store {self.path}: sample {sid} has no raw windows with reference readings "
                                     "to renormalise from; nothing was changed")
                beta = float(exponent_of(ModuleSpec.from_dict(json.loads(spec_json))))
                windows = normalised_windows(raw, ref, nominal, beta)
                new_latency = float(reduce(windows))
                n = int(passes or 1)
                if len(windows) % n == 0:
                    k = len(windows) // n
                    new_pass = [float(reduce(windows[i * k:(i + 1) * k])) for i in range(n)]
                else:
                    new_pass = [float(t) * new_latency / latency for t in json.loads(pass_lat or "[]")]
                extra.update(reference_scheme=scheme, reference_exponent=beta)
                conn.execute("UPDATE samples SET latency_ms = ?, timings_json = ?, pass_latency_json = ?, extra_json = ? "
                             "WHERE id = ?", (new_latency, json.dumps(windows), json.dumps(new_pass),
                                              json.dumps(extra, sort_keys=True), sid))
                changed += 1
        return changed

    def set_reference_nominal(self, device_id: int, nominal: Mapping[Any, Any]) -> int:
        """Record the device's nominals and rescale every normalised sample to them, in one transaction.

        A sample normalised with nominal ``a`` for its thread count and exponent ``beta`` (its extra's
        ``reference_exponent``, 1 when absent) is expressed at nominal ``b`` by multiplying its windows
        and latency by ``(b / a) ** beta`` (exact: normalised windows are proportional to the nominal
        to that power); raw windows and reference readings are kept as measured. Thread counts not
        in ``nominal`` keep their recorded value. Returns the number of samples rescaled.
        """
        new = {**self.reference_nominal(device_id), **parse_nominal(nominal)}
        changed = 0
        with self._write() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                         (_nominal_key(device_id), json.dumps({str(k): v for k, v in sorted(new.items())})))
            rows = conn.execute("SELECT id, latency_ms, timings_json, pass_latency_json, extra_json FROM samples "
                                "WHERE device_id = ? AND status = 'ok' AND extra_json LIKE '%reference_nominal_ms%'",
                                (device_id,)).fetchall()
            for sid, latency, timings, pass_lat, extra_json in rows:
                extra = json.loads(extra_json)
                old, threads = extra.get("reference_nominal_ms"), extra.get("threads")
                if not isinstance(old, (int, float)) or threads not in new or old == new[threads]:
                    continue
                f = (new[threads] / old) ** float(extra.get("reference_exponent", 1.0))
                extra["reference_nominal_ms"] = new[threads]
                conn.execute("UPDATE samples SET latency_ms = ?, timings_json = ?, pass_latency_json = ?, extra_json = ? "
                             "WHERE id = ?", (latency * f, json.dumps([t * f for t in json.loads(timings or "[]")]),
                                              json.dumps([t * f for t in json.loads(pass_lat or "[]")]),
                                              json.dumps(extra, sort_keys=True), sid))
                changed += 1
        return changed

    def delete_failed(self, device_id: int) -> int:
        """Delete the device's failed samples so a later run retries them; returns how many.

        ``runs.n_measured`` is history and is not decremented.
        """
        with self._write() as conn:
            cur = conn.execute("DELETE FROM samples WHERE device_id = ? AND status = 'failed'", (device_id,))
            return int(cur.rowcount)

    @staticmethod
    def _where(op: str | None, device_id: int | None, status: str | None) -> tuple[str, list[Any]]:
        if status is not None and status not in SAMPLE_STATUSES:
            raise StoreError(f"unknown sample status {status!r}; expected one of {list(SAMPLE_STATUSES)} or None")
        clauses, params = [], []
        for column, value in (("op", op), ("device_id", device_id), ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def samples(self, op: str | None = None, device_id: int | None = None, status: str | None = "ok") -> list[Sample]:
        """Stored samples (default: successful ones only; ``status=None`` for all), in insertion order."""
        where, params = self._where(op, device_id, status)
        return [self._sample(r) for r in self._query(f"SELECT * FROM samples{where} ORDER BY id", params)]

    @staticmethod
    def _sample(r: Mapping[str, Any]) -> Sample:
        return Sample(
            id=r["id"],
            run_id=r["run_id"],
            device_id=r["device_id"],
            spec=ModuleSpec.from_dict(json.loads(r["spec_json"])),
            status=r["status"],
            error=r["error"],
            latency_ms=r["latency_ms"],
            timings_ms=tuple(json.loads(r["timings_json"])) if r["timings_json"] else (),
            calls_per_window=r["calls_per_window"],
            util_observed=r["util_observed"],
            system_util=r["system_util"],
            extra=json.loads(r["extra_json"]) if r["extra_json"] else {},
            measured_at=r["measured_at"],
            passes=int(r["passes"]),
            pass_latency_ms=tuple(json.loads(r["pass_latency_json"])) if r["pass_latency_json"] else (),
        )

    def sample(self, sample_id: int) -> Sample:
        """One stored sample by id (any status)."""
        rows = self._query("SELECT * FROM samples WHERE id = ?", (sample_id,))
        if not rows:
            raise StoreError(f"profile store {self.path} has no sample with id {sample_id}")
        return self._sample(rows[0])

    def count(self, device_id: int | None = None, status: str | None = None, op: str | None = None) -> int:
        """Number of samples matching every given filter."""
        where, params = self._where(op, device_id, status)
        return int(self._query(f"SELECT COUNT(*) AS n FROM samples{where}", params)[0]["n"])

    # -- reporting --------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """What the store holds, per device: op counts, median latencies, conditions seen, runs and rates."""
        meta = {r["key"]: r["value"] for r in self._query("SELECT key, value FROM meta")}
        devices = []
        for dev in self.devices():
            did = dev["id"]
            ops: dict[str, dict[str, Any]] = {}
            for r in self._query(
                "SELECT op, status, COUNT(*) AS n FROM samples WHERE device_id = ? GROUP BY op, status", (did,)
            ):
                ops.setdefault(r["op"], {"ok": 0, "failed": 0, "median_latency_ms": None})[r["status"]] = r["n"]
            for op, entry in ops.items():
                lat = self._query(
                    "SELECT latency_ms FROM samples WHERE device_id = ? AND op = ? AND status = 'ok'", (did, op)
                )
                if lat:
                    entry["median_latency_ms"] = statistics.median(r["latency_ms"] for r in lat)
            span = self._query(
                "SELECT MIN(measured_at) AS first, MAX(measured_at) AS last FROM samples WHERE device_id = ?", (did,)
            )[0]
            runs = []
            for run in self.runs(did):
                t = self._query(
                    "SELECT COUNT(*) AS n, MIN(measured_at) AS first, MAX(measured_at) AS last "
                    "FROM samples WHERE run_id = ?",
                    (run["id"],),
                )[0]
                runs.append(
                    {
                        "id": run["id"],
                        "status": run["status"],
                        "space_name": run["space_name"],
                        "started_at": run["started_at"],
                        "finished_at": run["finished_at"],
                        "n_planned": run["n_planned"],
                        "n_measured": run["n_measured"],
                        "samples_per_s": _rate(t["n"], t["first"], t["last"]),
                        "state_check": (run.get("settings") or {}).get("state_check"),
                    }
                )
            devices.append(
                {
                    "id": did,
                    "fingerprint": dev["fingerprint"],
                    "kind": dev["kind"],
                    "n_ok": sum(e["ok"] for e in ops.values()),
                    "n_failed": sum(e["failed"] for e in ops.values()),
                    "ops": dict(sorted(ops.items())),
                    "utilizations": [
                        r["utilization"]
                        for r in self._query(
                            "SELECT DISTINCT utilization FROM samples WHERE device_id = ? ORDER BY utilization", (did,)
                        )
                    ],
                    "batch_sizes": [
                        r["batch_size"]
                        for r in self._query(
                            "SELECT DISTINCT batch_size FROM samples WHERE device_id = ? ORDER BY batch_size", (did,)
                        )
                    ],
                    "first_measured_at": span["first"],
                    "last_measured_at": span["last"],
                    "reference_nominal_ms": {str(k): v for k, v in sorted(self.reference_nominal(did).items())},
                    "reference_scheme": self._scheme_or_mixed(did),
                    "runs": runs,
                }
            )
        return {
            "path": str(self.path),
            "schema_version": int(meta.get("schema_version", SCHEMA_VERSION)),
            "created_with": meta.get("created_with"),
            "n_samples": self.count(),
            "devices": devices,
        }

    def _export_rows(self, device_id: int | None, status: str | None) -> tuple[list[str], list[dict[str, Any]]]:
        where, params = self._where(None, device_id, status)
        rows = self._query(f"SELECT * FROM samples{where} ORDER BY id", params)
        param_names: set[str] = set()
        out = []
        for r in rows:
            row = {c: r[c] for c in EXPORT_COLUMNS}
            for name, value in json.loads(r["spec_json"]).get("params", {}).items():
                param_names.add(name)
                row[f"p_{name}"] = value
            out.append(row)
        return list(EXPORT_COLUMNS) + [f"p_{n}" for n in sorted(param_names)], out

    def export_csv(self, path: str | os.PathLike[str], device_id: int | None = None, status: str | None = None) -> int:
        """Write samples to a CSV file (one ``p_<name>`` column per op parameter); returns rows written."""
        columns, rows = self._export_rows(device_id, status)
        try:
            with open(path, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=columns, restval="")
                writer.writeheader()
                for row in rows:
                    writer.writerow({k: "" if v is None else v for k, v in row.items()})
        except OSError as e:
            raise StoreError(f"cannot write CSV export {path}: {e}") from e
        return len(rows)

    def to_pandas(self, device_id: int | None = None, status: str | None = None) -> Any:
        """The rows of :meth:`export_csv` as a ``pandas.DataFrame`` (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise StoreError("pandas is not installed; use export_csv") from None
        columns, rows = self._export_rows(device_id, status)
        return pd.DataFrame.from_records(rows, columns=columns)


def _nominal_key(device_id: int) -> str:
    return f"reference_nominal_ms/device/{int(device_id)}"


def _merge_pass_extra(stored: dict[str, Any], new: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """A sample's extra after one more pass, and the factor that brings the pass's windows to the stored nominal.

    Per-window lists (raw timings, reference readings) are appended; a pass normalised with another
    nominal than the stored passes is rescaled to theirs (normally they agree: the profiler adopts
    the store's nominal).
    """
    scale = 1.0
    old_nom, new_nom = stored.get("reference_nominal_ms"), new.get("reference_nominal_ms")
    if isinstance(old_nom, (int, float)) and isinstance(new_nom, (int, float)) and new_nom > 0:
        scale = (old_nom / new_nom) ** float(new.get("reference_exponent", 1.0))
    out = dict(stored)
    for key in ("raw_timings_ms", "reference_ms"):
        if isinstance(new.get(key), list):
            out[key] = [*(stored.get(key) or []), *new[key]]
    for key, value in new.items():
        out.setdefault(key, value)
    return out, scale


def _rate(n: int, first: str | None, last: str | None) -> float | None:
    """Samples per second between the first and last sample of a run (None with fewer than 2)."""
    t0, t1 = _parse_time(first), _parse_time(last)
    if n < 2 or t0 is None or t1 is None:
        return None
    seconds = (t1 - t0).total_seconds()
    return (n - 1) / seconds if seconds > 0 else None
