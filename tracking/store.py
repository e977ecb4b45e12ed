"""The local sqlite tracking store: created, migrated or repaired by one process at a time.

MLflow creates and migrates a sqlite store in whichever process opens it first, without a lock.
Several processes doing that at once on a fresh ``mlflow.db`` (three ``make run`` started
together) run the same Alembic migrations concurrently. SQLite migrations rebuild a table through
an ``_alembic_tmp_<table>`` copy, so they collide ("table _alembic_tmp_tags already exists",
"duplicate column name") and can leave such a copy behind with the schema between two
revisions, which breaks every later run. ``ensure_store`` does that work under an exclusive
``flock`` on ``<db>.lock``: the first process creates or migrates the store, the others wait and
find it ready. A store left half-migrated is repaired the same way, after a copy of it is saved:
a leftover ``_alembic_tmp_<table>`` whose ``<table>`` still exists is only a partial copy (the
original is dropped only after the copy is complete), so it is dropped and the migration re-run.
"""

from __future__ import annotations

import fcntl
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote

from tracking.errors import TrackingError

TMP_PREFIX = "_alembic_tmp_"  # Alembic's batch-migration copy of a table on SQLite
INIT_COMMAND = "python -m pipelines init-store"
_DONE: dict[str, str] = {}  # uri -> what ensure_store did, once per process


class StoreError(TrackingError):
    """The sqlite store cannot be made usable here (one line, names the way out)."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for servers, other databases and in-memory sqlite."""
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(uri[len("sqlite:///") :].split("?", 1)[0])
    return Path(path) if path and path != ":memory:" else None


@contextmanager
def store_lock(db: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``<db>.lock``, beside the store so every process using it sees the same lock.

    A separate file, never the database itself: closing another descriptor of the database would
    drop SQLite's own locks in this process. The lock goes with the descriptor, also when the
    process is killed.
    """
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def ensure_store(uri: str) -> str:
    """Make the store at ``uri`` usable, once per process: ``ready``, ``created``, ``upgraded`` or ``repaired``.

    Only sqlite stores are touched, under the lock; a server or another database is ``ready``.
    Raises StoreError (one line) when the store cannot be used or safely repaired.
    """
    db = sqlite_path(uri)
    if db is None:
        return "ready"
    if uri not in _DONE:
        with store_lock(db):
            _DONE[uri] = _ensure(uri, db)
    return _DONE[uri]


def _ensure(uri: str, db: Path) -> str:
    import sqlalchemy
    from alembic.script import ScriptDirectory

    # MLflow's own steps (``mlflow db upgrade`` and the store's first open call these), run under our lock.
    from mlflow.store.db import utils as db_utils
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    def open_store() -> None:  # creates the tables and the Default experiment, verifies the schema
        SqlAlchemyStore(uri, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)

    engine = sqlalchemy.create_engine(uri)
    try:
        tables = set(sqlalchemy.inspect(engine).get_table_names())
        leftovers = sorted(t for t in tables if t.startswith(TMP_PREFIX))
        revision = db_utils._get_schema_version(engine) if "alembic_version" in tables else None
        head = db_utils._get_latest_schema_revision()
        complete = db_utils._all_tables_exist(engine)
        if complete and revision == head and not leftovers:
            return "ready"
        if not tables - {"alembic_version"}:  # new, or only Alembic's bookkeeping: nothing to lose
            open_store()
            return "created"
        known = {s.revision for s in ScriptDirectory.from_config(db_utils._get_alembic_config(uri)).walk_revisions()}
        if revision is not None and revision not in known:
            import mlflow

            raise StoreError(
                f"{uri} has schema revision {revision}, unknown to MLflow {mlflow.__version__} "
                "(a newer MLflow wrote it): use that MLflow version, or another store"
            )
        state = (
            f"table {leftovers[0]} left by an interrupted upgrade"
            if leftovers
            else f"schema revision {revision}, not {head}"
        )
        orphans = [t for t in leftovers if t[len(TMP_PREFIX) :] not in tables]
        if orphans:  # the original was dropped: this copy may hold the only data, never drop it
            raise StoreError(
                f"{uri} is half-migrated ({orphans[0]} is the only copy of table {orphans[0][len(TMP_PREFIX) :]}): "
                f"restore a backup of {db}, or delete it"
            )
        backup = _backup(db)
        try:
            with engine.begin() as con:
                for table in leftovers:
                    con.exec_driver_sql(f'DROP TABLE "{table}"')
            if not db_utils._all_tables_exist(engine):
                db_utils._initialize_tables(engine)  # creates the missing tables, then upgrades
            elif db_utils._get_schema_version(engine) != head:
                db_utils._upgrade_db(engine)
            open_store()
        except Exception as e:  # noqa: BLE001 - any failure here means: not repairable in place
            cause = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            raise StoreError(
                f"{uri} is half-migrated ({state}) and the repair failed ({cause}): "
                f"delete {db} and run `{INIT_COMMAND}` (a copy of it is in {backup})"
            ) from None
        done = "repaired" if leftovers or not complete else "upgraded"
        print(f"note: {uri} {done} ({state}); the store as it was is in {backup}", file=sys.stderr)
        return done
    finally:
        engine.dispose()


def _backup(db: Path) -> Path:
    """A consistent copy of the store (sqlite's backup API) beside it, before it is changed."""
    dst = db.with_name(f"{db.name}.{time.strftime('%Y%m%d-%H%M%S')}.bak")
    src, out = sqlite3.connect(db), sqlite3.connect(dst)
    try:
        src.backup(out)
    finally:
        src.close()
        out.close()
    return dst
