"""A tracking server with ``--app-name basic-auth`` (for shared servers).

A run works with ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` from the environment
and is refused without them (or with a wrong password): one line, exit 2, no run created.
Needs ``mlflow[auth]`` (Flask-WTF).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from pipelines.cli import cli
from tests.conftest import ROOT

pytest.importorskip("flask_wtf", reason='needs `pip install "mlflow[auth]"`')
pytestmark = [
    pytest.mark.slow,  # an extra server start (~10-60 s)
    pytest.mark.filterwarnings("ignore:starlette.middleware.wsgi is deprecated"),  # mlflow.server's own import
]

TINY = ["--dataset", "digits", "--model", "simple_cnn", "--epochs", "1", "--batch-size", "256"]
TINY += ["--device", "cpu", "--precision", "fp32"]


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """An auth-enabled server; admin password from an auth config file, a plain user 'alice' created by admin."""
    from mlflow.server.auth.client import AuthServiceClient

    from tracking.server import start_server, stop_server

    root = tmp_path_factory.mktemp("auth-server")
    admin_password = secrets.token_urlsafe(16)
    config = root / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{root}/basic_auth.db\n"
        "admin_username = admin\n"
        f"admin_password = {admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n"  # a password hash check per request is slow; cache it a minute
    )
    env = {"MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16), "MLFLOW_AUTH_CONFIG_PATH": str(config)}
    proc, url = start_server(
        f"sqlite:///{root}/mlflow.db",
        root / "artifacts",
        extra_args=("--app-name", "basic-auth"),
        env=env,
        log_path=root / "server.log",
        timeout_s=300,
    )
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    alice = secrets.token_urlsafe(16)
    try:
        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=admin_password)
        AuthServiceClient(url).create_user("alice", alice)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield url, {"admin": admin_password, "alice": alice}
    stop_server(proc)


@pytest.fixture
def uri_restored():
    previous = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(previous)


def _runs_as_admin(url: str, passwords: dict, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", passwords["admin"])
    client = MlflowClient(url)
    exps = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_id: r.info.status for r in client.search_runs(exps)}


def test_run_with_credentials_from_env_works(auth_server, monkeypatch, uri_restored):
    url, passwords = auth_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", passwords["alice"])
    result = CliRunner().invoke(cli, ["train", *TINY, "--experiment", "auth"])
    assert result.exit_code == 0, (result.stderr, result.exception)
    rid = result.stdout.split("train run ")[1].split(":")[0]
    run = MlflowClient(url).get_run(rid)
    assert run.info.status == "FINISHED" and run.info.user_id == "alice"
    assert [m.step for m in MlflowClient(url).get_metric_history(rid, "test_acc")] == [1]


@pytest.mark.parametrize("user", [None, "alice-wrong-password"])
def test_refused_without_valid_credentials_one_line_no_run(auth_server, monkeypatch, uri_restored, user):
    url, passwords = auth_server
    before = _runs_as_admin(url, passwords, monkeypatch)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": url}
    env.pop("MLFLOW_TRACKING_USERNAME", None)
    env.pop("MLFLOW_TRACKING_PASSWORD", None)
    if user:
        env.update(MLFLOW_TRACKING_USERNAME="alice", MLFLOW_TRACKING_PASSWORD="not-" + passwords["alice"])
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", "train", *TINY, "--experiment", "auth-refused"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: tracking server {url} refused the request (UNAUTHENTICATED): "
        "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD for a user allowed to use it"
    )
    assert _runs_as_admin(url, passwords, monkeypatch) == before  # refused before any run existed
