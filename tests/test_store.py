"""The default sqlite store under concurrent first use, and a store an interrupted upgrade left half-migrated.

MLflow creates and migrates a fresh sqlite store in whichever process opens it first, without a
lock: runs started together on a fresh clone broke ``mlflow.db`` for good. ``make run`` and every
command of ours do that once under a file lock (``tracking.store``) and repair what such a race left.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

VENV = Path(sys.executable).parent.parent  # the venv running the tests (not resolved: it may link the system python)
PROJECT_FILES = ("MLproject", "Makefile", "python_env.yaml", "conda.yaml")
BEFORE_TAGS_REBUILD = "df50e92ffc5e"  # the revision before 7ac759974ad8, which rebuilds `tags` via _alembic_tmp_tags


def _env(**extra: str) -> dict[str, str]:
    """No MLFLOW_TRACKING_URI unless given: MLflow's and our default, sqlite:///mlflow.db in the cwd."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    env.update(PYTHONPATH=str(ROOT), PATH=f"{VENV / 'bin'}{os.pathsep}{env['PATH']}", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def _cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def _tables(db: Path) -> set[str]:
    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        con.close()


def _revision(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    finally:
        con.close()


def _head() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def _assert_intact(db: Path) -> MlflowClient:
    """At MLflow's head revision, no migration leftovers, and a later run can be made and ended."""
    assert not {t for t in _tables(db) if t.startswith("_alembic_tmp_")}
    assert _revision(db) == _head()
    client = MlflowClient(f"sqlite:///{db}")
    later = client.create_run("0")
    client.set_terminated(later.info.run_id, "FINISHED")
    assert client.get_run(later.info.run_id).info.status == "FINISHED"
    return client


@pytest.mark.slow
def test_concurrent_first_runs_on_a_fresh_clone_all_finish_and_leave_the_store_intact(tmp_path):
    """Four first uses at once, two through `make run` (`mlflow run` opens the store itself) and
    two through the CLI, on the default store of a fresh clone: all FINISHED, the store intact."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in PROJECT_FILES:
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, clone / name)
    make_run = ["make", "-s", "run", f"VENV={VENV}", "ARGS=-e prep -P dataset=digits"]
    cli_prep = [sys.executable, "-m", "pipelines", "prep", "--dataset", "digits"]
    procs = []
    for i, cmd in enumerate([make_run, cli_prep, make_run, cli_prep]):
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=clone,
                env=_env(),
                stdin=subprocess.DEVNULL,
                stdout=open(tmp_path / f"{i}.out", "w"),  # noqa: SIM115 - closed with the process
                stderr=open(tmp_path / f"{i}.err", "w"),  # noqa: SIM115
            )
        )
    codes = [p.wait(600) for p in procs]
    errors = {i: (tmp_path / f"{i}.err").read_text()[-2000:] for i, c in enumerate(codes) if c != 0}
    assert codes == [0] * len(procs), errors

    client = _assert_intact(clone / "mlflow.db")
    runs = client.search_runs(["0"], "tags.step = 'prep'")
    assert len(runs) == len(procs) and all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.params["data_dir"] == "''" and r.data.params["classes"] == "default" for r in runs)


def _store_at(db: Path, revision: str) -> None:
    """A store that MLflow migrated up to ``revision`` only (what an interrupted upgrade leaves)."""
    import sqlalchemy
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    uri = f"sqlite:///{db}"
    engine = sqlalchemy.create_engine(uri)
    InitialBase.metadata.create_all(engine)
    config = _get_alembic_config(uri)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.exec_driver_sql(
            "INSERT INTO experiments (name, artifact_location, lifecycle_stage) VALUES ('kept', 'kept', 'active')"
        )
    engine.dispose()


def test_a_store_left_half_migrated_is_repaired_and_keeps_its_data(tmp_path):
    db = tmp_path / "mlflow.db"
    _store_at(db, BEFORE_TAGS_REBUILD)
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE _alembic_tmp_tags AS SELECT * FROM tags")  # the copy a colliding upgrade left
    con.commit()
    con.close()

    # What every later run met: MLflow's own open of the store tries the upgrade again and stops.
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with pytest.raises(Exception, match="table _alembic_tmp_tags already exists"):
        SqlAlchemyStore(f"sqlite:///{db}", str(tmp_path / "mlruns"))

    done = _cli(["init-store"], tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{db}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"tracking store sqlite:///{db}: repaired"
    assert "repaired (table _alembic_tmp_tags left by an interrupted upgrade)" in done.stderr
    (backup,) = tmp_path.glob("mlflow.db.*.bak")
    assert "_alembic_tmp_tags" in _tables(backup) and _revision(backup) == BEFORE_TAGS_REBUILD  # as it was

    client = _assert_intact(db)
    assert client.get_experiment_by_name("kept") is not None
    from tracking.store import ensure_store

    assert ensure_store(f"sqlite:///{db}") == "ready" and len(list(tmp_path.glob("mlflow.db.*.bak"))) == 1


def test_a_copy_that_holds_the_only_data_is_never_dropped(tmp_path):
    """An upgrade stopped between dropping `tags` and renaming its copy: refused with one line, nothing changed."""
    db = tmp_path / "mlflow.db"
    _store_at(db, BEFORE_TAGS_REBUILD)
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE tags RENAME TO _alembic_tmp_tags")
    con.commit()
    con.close()
    before = db.read_bytes()

    done = _cli(["init-store"], tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{db}")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: sqlite:///{db} is half-migrated (_alembic_tmp_tags is the only copy of table tags): "
        f"restore a backup of {db}, or delete it"
    )
    assert db.read_bytes() == before and not list(tmp_path.glob("mlflow.db.*.bak"))
