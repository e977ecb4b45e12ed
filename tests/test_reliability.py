"""Bad input, crashes and kills, a dead server, safe loading and downloads.

Every user error is one line, exit 2, no traceback and no run; every run ends FINISHED, FAILED or
KILLED (never RUNNING); an interrupted run resumes into the same run id and ends with the weights
of an uninterrupted one; a tracking server that dies mid-run costs nothing but a re-sync.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from pipelines.cli import cli
from tests.conftest import ROOT, crash_after_epoch

# Small and deterministic: sklearn's digits (offline), a small CNN, CPU fp32, one thread.
TINY = [
    "--dataset",
    "digits",
    "--model",
    "simple_cnn",
    "--batch-size",
    "128",
    "--lr",
    "0.05",
    "--device",
    "cpu",
    "--precision",
    "fp32",
]
CLASSIFIER = "reliability-brightness"  # registered by the `classifier` fixture


# ---------------------------------------------------------------- helpers


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def _popen(args: list[str], log_dir: Path, **env: str) -> subprocess.Popen:
    log_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines", *args],
        cwd=ROOT,
        env=_env(**env),
        stdin=subprocess.DEVNULL,
        stdout=open(log_dir / "stdout", "w"),  # noqa: SIM115 - closed with the process
        stderr=open(log_dir / "stderr", "w"),  # noqa: SIM115
    )


def _logs(log_dir: Path) -> tuple[str, str]:
    return (log_dir / "stdout").read_text(), (log_dir / "stderr").read_text()


def _wait_for_epoch(root: Path, epoch: int, proc: subprocess.Popen, log_dir: Path, timeout_s: float = 300) -> str:
    """Run id of the first run whose local metrics.jsonl holds ``epoch`` epochs (training is under way)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for f in root.glob("*/metrics.jsonl"):
            if len(f.read_text().splitlines()) >= epoch:
                return f.parent.name
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {_logs(log_dir)[1][-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"epoch {epoch} not logged within {timeout_s} s")


def _run_ids(client: MlflowClient) -> set[str]:
    exps = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_id for r in client.search_runs(exps, max_results=50000)}


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"  # experiments of this test only, on a shared server


def _checkpoints() -> Path:
    return Path(os.environ["PIPELINE_CHECKPOINT_DIR"])


def _assert_same_weights(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=0, atol=atol, msg=k)


def _reference(epochs: int, augment: str = "false", experiment: str = "reference"):
    """The same training, never interrupted, in this process on one thread."""
    from pipelines import train
    from pipelines.config import data_config, train_config

    cfg = train_config(
        model="simple_cnn",
        epochs=epochs,
        batch_size=128,
        lr=0.05,
        augment=augment,
        device="cpu",
        precision="fp32",
        checkpoint_every=100,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train.run(data_config("digits", "", "default"), cfg, experiment=experiment)
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- 1. bad input


@pytest.fixture(scope="module")
def classifier(mlflow_server) -> str:
    """A registered ONNX classifier of 8x8 grey images: class 0 'bright', 1 'dark', 2 'grey' (mean brightness).

    Its class names come from the model card in the file (``classify`` reads no registry tag).
    """
    from onnx import TensorProto, helper, numpy_helper

    from pipelines.modelcard import ModelCard, embed
    from tracking import experiment_id_for, tracked_run

    mlflow.set_tracking_uri(mlflow_server)
    w = np.zeros((64, 3), np.float32)
    w[:, 0], w[:, 1] = 1 / 64, -1 / 64  # logits: [mean, 255 - mean, 127.5]
    b = np.array([0, 255, 127.5], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["mm"]),
            helper.make_node("Add", ["mm", "B"], ["output"]),
        ],
        "brightness",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 8, 8, 1])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 3])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 10
    card = ModelCard(
        model="brightness",
        dataset="test",
        class_ids=[0, 1, 2],
        class_names=["bright", "dark", "grey"],
        input_shape=[8, 8, 1],
        dataset_fingerprint="0" * 64,
        test_fingerprint="0" * 64,
        test_split="none",
        train_run_id="none",
        test_accuracy=0.9,
    )
    embed(proto, card)
    with tracked_run("classifier", experiment_id_for("reliability-classifier")):
        info = mlflow.onnx.log_model(
            proto,
            name="model",
            registered_model_name=CLASSIFIER,
            pip_requirements=["onnxruntime"],  # stated: inferring them costs seconds
            save_as_external_data=False,
        )
    MlflowClient().set_registered_model_alias(CLASSIFIER, "champion", str(info.registered_model_version))
    return f"models:/{CLASSIFIER}@champion"


@pytest.fixture(scope="module")
def table_runs(mlflow_server) -> SimpleNamespace:
    """Runs the table points at by id: a finished and a killed (model-less) train run, a prep run."""
    from tracking import experiment_id_for

    mlflow.set_tracking_uri(mlflow_server)
    client = MlflowClient()
    exp = experiment_id_for("reliability-table")

    def run(step: str, status: str) -> str:
        rid = client.create_run(exp, tags={"step": step}).info.run_id
        client.set_terminated(rid, status)
        return rid

    finished, killed, prep = run("train", "FINISHED"), run("train", "KILLED"), run("prep", "FINISHED")
    return SimpleNamespace(finished=finished, killed=killed, prep=prep)


@pytest.fixture
def inputs(tmp_path, cifar_dir, classifier, table_runs) -> SimpleNamespace:
    """Files for the bad-input table: broken CIFAR folders, images, a non-image."""
    from PIL import Image

    def cifar(damage) -> str:
        d = tmp_path / f"cifar-{damage.__name__}"
        shutil.copytree(cifar_dir, d)
        damage(d / "cifar-100-python" / "train")
        return str(d)

    img = tmp_path / "img"
    img.mkdir()
    Image.new("L", (32, 32), 255).save(img / "big.png")
    (img / "notes.txt").write_text("this is not an image\n")
    Image.new("L", (8, 8), 0).save(img / "black.png")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(img / "noise.png")
    data = (img / "noise.png").read_bytes()
    (img / "cut.png").write_bytes(data[: len(data) * 2 // 3])  # header intact, pixel data cut short
    (tmp_path / "a-file").write_text("x")
    return SimpleNamespace(tmp=tmp_path, cifar=cifar, img=img, model=classifier, runs=table_runs)


def truncated(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:2000])


def corrupt(p: Path) -> None:
    p.write_bytes(b"\x80\x02}q\x00(X\x04\x00\x00\x00data" + bytes(range(256)) * 4)


def png_instead(p: Path) -> None:  # wrong format: an image where the pickle should be
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)


def list_instead(p: Path) -> None:  # a valid pickle of the wrong structure
    import pickle

    p.write_bytes(pickle.dumps([1, 2, 3], protocol=2))


def removed(p: Path) -> None:  # a folder without the data set
    shutil.rmtree(p.parent)


# (id, args built from `inputs`, what the one line must contain)
BAD_INPUT = [
    ("unknown-dataset", lambda c: ["train", "--dataset", "imagenet"], "dataset must be one of"),
    ("unknown-model-main", lambda c: ["main", "--model", "resnet9000"], "model must be one of"),
    ("unknown-pooling-main", lambda c: ["main", "--pooling", "median"], "pooling must be one of stride, max, avg"),
    ("unknown-study", lambda c: ["study", "nosuchstudy"], "study must be one of"),
    ("epochs-0", lambda c: ["train", "--epochs", "0"], "epochs must be an integer >= 1, got '0'"),
    ("epochs-negative-main", lambda c: ["main", "--epochs", "-2"], "epochs must be an integer >= 1, got '-2'"),
    ("epochs-float", lambda c: ["train", "--epochs", "1.5"], "epochs must be an integer >= 1, got '1.5'"),
    ("batch-size-0", lambda c: ["train", "--batch-size", "0"], "batch_size must be an integer >= 1, got '0'"),
    ("batch-size-text", lambda c: ["train", "--batch-size", "big"], "batch_size must be an integer >= 1"),
    ("lr-0", lambda c: ["train", "--lr", "0"], "lr must be > 0, got '0'"),
    ("lr-negative-main", lambda c: ["main", "--lr", "-0.1"], "lr must be > 0, got '-0.1'"),
    ("classes-repeated", lambda c: ["prep", "--classes", "0,33,33"], "classes must not repeat an id"),
    ("classes-out-of-range", lambda c: ["train", "--dataset", "digits", "--classes", "3,10"], "ids in 0..9 for digits"),
    ("classes-negative", lambda c: ["prep", "--classes", "-1,4"], "classes must be ids in 0..99 for cifar100"),
    ("data-dir-missing", lambda c: ["train", "--data-dir", str(c.tmp / "nope")], "nope does not exist"),
    (
        "data-dir-is-a-file",
        lambda c: ["prep", "--data-dir", str(c.tmp / "a-file")],
        "does not exist or is not a folder",
    ),
    ("data-dir-empty", lambda c: ["train", "--data-dir", c.cifar(removed)], "no CIFAR-100 found in"),
    ("data-truncated", lambda c: ["train", "--data-dir", c.cifar(truncated)], "train: not a readable CIFAR pickle"),
    ("data-corrupt", lambda c: ["main", "--data-dir", c.cifar(corrupt)], "train: not a readable CIFAR pickle"),
    ("data-wrong-format", lambda c: ["prep", "--data-dir", c.cifar(png_instead)], "train: not a readable CIFAR pickle"),
    ("data-wrong-structure", lambda c: ["train", "--data-dir", c.cifar(list_instead)], "expected a dict, found list"),
    ("digits-with-data-dir", lambda c: ["train", "--dataset", "digits", "--data-dir", str(c.tmp)], "takes no data_dir"),
    ("evaluate-missing-run", lambda c: ["evaluate", "--train-run-id", "0123456789abcdef"], "no run '0123456789abcdef'"),
    ("export-missing-run", lambda c: ["export_onnx", "--train-run-id", "deadbeef"], "no run 'deadbeef'"),
    ("resume-missing-run", lambda c: ["train", "--resume", "deadbeef"], "no run 'deadbeef'"),
    ("resync-missing-run", lambda c: ["resync", "deadbeef"], "no run 'deadbeef'"),
    ("evaluate-a-prep-run", lambda c: ["evaluate", "--train-run-id", c.runs.prep], "is a prep run, not a train"),
    ("evaluate-model-less-run", lambda c: ["evaluate", "--train-run-id", c.runs.killed], "has no trained model"),
    ("export-model-less-run", lambda c: ["export_onnx", "--train-run-id", c.runs.killed], "has no trained model"),
    ("resume-finished-run", lambda c: ["train", "--resume", c.runs.finished], "is FINISHED: nothing to resume"),
    ("resume-run-without-params", lambda c: ["train", "--resume", c.runs.killed], "has no train parameters"),
    (
        "model-uri-missing",
        lambda c: ["classify", "--model-uri", "models:/no-such-model@champion", str(c.img / "big.png")],
        "no registered model models:/no-such-model@champion",
    ),
    (
        "model-uri-missing-alias",
        lambda c: ["classify", "--model-uri", f"models:/{CLASSIFIER}@nosuchalias", str(c.img / "big.png")],
        f"no registered model models:/{CLASSIFIER}@nosuchalias",
    ),
    (
        "model-uri-not-models",
        lambda c: ["classify", "--model-uri", "runs:/abc/model", str(c.img / "big.png")],
        "model URI must be models:/<name>@<alias>",
    ),
    (
        "classify-not-an-image",
        lambda c: ["classify", "--model-uri", c.model, str(c.img / "notes.txt")],
        "notes.txt: not an image file",
    ),
    (
        "classify-truncated-image",
        lambda c: ["classify", "--model-uri", c.model, str(c.img / "cut.png")],
        "cut.png: corrupt image",
    ),
    (
        "classify-wrong-size-no-resize",
        lambda c: ["classify", "--no-resize", "--model-uri", c.model, str(c.img / "big.png")],
        "big.png: image is 32x32, the model takes 8x8",
    ),
    (
        "classify-missing-file",
        lambda c: ["classify", "--model-uri", c.model, str(c.img / "nope.png")],
        "nope.png: no such file",
    ),
    ("classify-a-folder", lambda c: ["classify", "--model-uri", c.model, str(c.img)], "img: not a file"),
    ("classify-no-images", lambda c: ["classify", "--model-uri", c.model], "no image files given"),
    (
        "classify-top-k-0",
        lambda c: ["classify", "--top-k", "0", "--model-uri", c.model, str(c.img / "black.png")],
        "top_k must be an integer >= 1",
    ),
]


@pytest.mark.parametrize(("args", "message"), [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_line_and_creates_no_run(tracking, inputs, args, message):
    argv = args(inputs)
    if argv[0] not in cli.commands:
        pytest.skip(f"no `{argv[0]}` command in this tree")
    client = MlflowClient()
    before = _run_ids(client)
    result = CliRunner().invoke(cli, argv)
    err = result.stderr.strip()
    assert result.exit_code == 2, (result.exit_code, err, result.exception)
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err  # one line, no traceback
    assert message in err, err
    assert _run_ids(client) == before  # checked before any run was created: none exists, none is RUNNING


def test_user_errors_in_a_real_process_print_no_traceback(tracking, inputs):
    cmd = [sys.executable, "-m", "pipelines", "train", "--data-dir", inputs.cifar(truncated)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "train: not a readable CIFAR pickle" in proc.stderr


def test_classify_prints_top_k_and_creates_no_run(tracking, classifier, tmp_path):
    from PIL import Image

    Image.new("L", (8, 8), 250).save(tmp_path / "white.png")
    Image.new("L", (8, 8), 5).save(tmp_path / "black.png")
    Image.new("RGB", (40, 24), (255, 255, 255)).save(tmp_path / "wide.jpg")  # other size, RGB: converted, resized
    client = MlflowClient()
    before = _run_ids(client)
    files = [str(tmp_path / n) for n in ("white.png", "black.png", "wide.jpg")]
    result = CliRunner().invoke(cli, ["classify", "--model-uri", classifier, "--top-k", "2", *files])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{files[0]}: bright (0) 1.000, grey (2) 0.000")
    assert lines[1].startswith(f"{files[1]}: dark (1) 1.000")
    assert lines[2].startswith(f"{files[2]}: bright (0)")
    assert result.stderr.strip() == f"note: {files[2]} is 40x24, centre-cropped and area-averaged to the model's input"
    assert _run_ids(client) == before


def test_sigterm_outside_training_is_one_line_exit_143():
    import click

    from pipelines.cli import entry_point
    from tracking import RunKilled

    @click.command()
    @entry_point
    def step():
        raise RunKilled("received signal SIGTERM")  # what configure()'s handler raises outside the epoch loop

    previous = mlflow.get_tracking_uri()
    try:
        result = CliRunner().invoke(step, env={"MLFLOW_TRACKING_URI": "sqlite:///:memory:"})
    finally:
        mlflow.set_tracking_uri(previous)
    assert result.exit_code == 143 and result.stderr == "killed: received signal SIGTERM\n"


# ---------------------------------------------------------------- 2. crash and kill


def test_exception_mid_training_fails_run_and_parent_then_resumes_exactly(tracking, monkeypatch):
    import pipelines.runner as runner
    import pipelines.train as train_mod
    from pipelines import main
    from pipelines.config import data_config, export_config, train_config

    real_fit = runner.fit
    monkeypatch.setattr(runner, "fit", crash_after_epoch(real_fit, 2, "disk on fire at epoch 2"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same thread count for every part that is compared
    name = _unique("crash")
    data_cfg = data_config("digits", "", "default")
    cfg = train_config(
        model="simple_cnn", epochs=4, batch_size=128, lr=0.05, device="cpu", precision="fp32", checkpoint_every=1
    )
    try:
        with pytest.raises(RuntimeError, match="disk on fire"):
            main.run(data_cfg, cfg, export_config("none", "1e-4"), experiment=name)
    except BaseException:
        torch.set_num_threads(threads)
        raise

    client = MlflowClient()
    exp = client.get_experiment_by_name(name).experiment_id
    (parent,) = client.search_runs([exp], "tags.step = 'main'")
    (child,) = client.search_runs([exp], "tags.step = 'train'")
    (prep,) = client.search_runs([exp], "tags.step = 'prep'")
    assert (parent.info.status, child.info.status, prep.info.status) == ("FAILED", "FAILED", "FINISHED")
    for run in (parent, child):
        assert run.data.tags["error"] == "RuntimeError: disk on fire at epoch 2"
        traceback_text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/error.txt")
        assert "Traceback" in traceback_text and "disk on fire" in traceback_text
    rid = child.info.run_id
    assert _steps(client, rid, "train_loss") == [1, 2]  # flushed on the way out
    assert torch.load(_checkpoints() / rid / "last.pt", weights_only=True)["epoch"] == 1  # epoch 2 never finished

    monkeypatch.setattr(runner, "fit", real_fit)
    try:
        resumed = train_mod.run(data_cfg, cfg, resume_run_id=rid)  # re-runs epoch 2 from the epoch-1 checkpoint
        reference = train_mod.run(data_cfg, cfg, experiment=f"{name}-reference")
    finally:
        torch.set_num_threads(threads)
    assert resumed.run_id == rid and client.get_run(rid).info.status == "FINISHED"
    for key in ("train_loss", "test_acc", "lr"):
        assert _steps(client, rid, key) == [1, 2, 3, 4], key  # continues at the right step, none twice
    assert client.get_run(rid).data.tags["previous_error"] == "RuntimeError: disk on fire at epoch 2"
    assert "error" not in client.get_run(rid).data.tags
    _assert_same_weights(resumed.model.state_dict(), reference.model.state_dict())


def test_sigterm_mid_run_ends_killed_after_checkpoint_and_resume_equals_uninterrupted(tracking, tmp_path):
    from pipelines.trained import load_trained

    epochs = 8
    args = ["train", *TINY, "--epochs", str(epochs), "--augment", "true", "--checkpoint-every", "100"]
    proc = _popen([*args, "--experiment", _unique("kill-resume")], tmp_path / "killed")
    rid = _wait_for_epoch(_checkpoints(), 2, proc, tmp_path / "killed")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(300) == 130
    err = _logs(tmp_path / "killed")[1]
    assert "checkpoint saved" in err and "Traceback" not in err

    client = MlflowClient()
    run = client.get_run(rid)
    done = torch.load(_checkpoints() / rid / "last.pt", weights_only=True)["epoch"]
    assert run.info.status == "KILLED" and 2 <= done < epochs
    assert run.data.tags["error"] == f"interrupted: SIGTERM after epoch {done}; checkpoint saved"
    assert _steps(client, rid, "train_loss") == list(range(1, done + 1))
    assert "checkpoints/last.pt" in [f.path for f in client.list_artifacts(rid, "checkpoints")]

    resume = subprocess.run(
        [sys.executable, "-m", "pipelines", "train", "--resume", rid],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert f"train run {rid}: {epochs} epochs" in resume.stdout  # the same run id
    run = client.get_run(rid)
    assert run.info.status == "FINISHED" and run.data.metrics["epochs_done"] == epochs
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert _steps(client, rid, key) == list(range(1, epochs + 1)), key  # no gap, no duplicate

    reference = _reference(epochs, augment="true", experiment=_unique("kill-resume-reference"))
    resumed, _ = load_trained(rid)
    _assert_same_weights(resumed.state_dict(), reference.model.state_dict())
    ref_loss = [h["test_loss"] for h in reference.state.history]
    got_loss = [m.value for m in sorted(client.get_metric_history(rid, "test_loss"), key=lambda m: m.step)]
    np.testing.assert_allclose(got_loss, ref_loss, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_sigint_on_main_kills_parent_and_train_child_after_checkpoint(tracking, tmp_path):
    args = ["main", *TINY, "--epochs", "40", "--checkpoint-every", "100", "--registered-model-name", "none"]
    proc = _popen([*args, "--experiment", _unique("kill-main")], tmp_path / "main")
    rid = _wait_for_epoch(_checkpoints(), 2, proc, tmp_path / "main")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(300) == 130
    assert "Traceback" not in _logs(tmp_path / "main")[1]
    client = MlflowClient()
    child = client.get_run(rid)
    parent = client.get_run(child.data.tags["mlflow.parentRunId"])
    assert child.info.status == "KILLED" and parent.info.status == "KILLED"
    assert parent.data.tags["error"].startswith("interrupted: SIGINT after epoch")
    assert torch.load(_checkpoints() / rid / "last.pt", weights_only=True)["epoch"] >= 2


# ---------------------------------------------------------------- 3. dead or slow server


def _free_port() -> int:
    from tracking.server import free_port

    return free_port()


def test_unreachable_server_at_start_fails_fast_naming_the_uri(monkeypatch):
    from tracking import TrackingError, configure

    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    silent = socket.socket()  # accepts connections, never answers: a hung server
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    hung = f"http://127.0.0.1:{silent.getsockname()[1]}"
    previous = mlflow.get_tracking_uri()
    try:
        for target in (uri, hung):
            monkeypatch.setenv("MLFLOW_TRACKING_URI", target)
            t0 = time.monotonic()
            with pytest.raises(TrackingError, match=f"tracking server {target} is unreachable"):
                configure()
            assert time.monotonic() - t0 < 30
    finally:
        silent.close()
        mlflow.set_tracking_uri(previous)

    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", "train", *TINY],
        cwd=ROOT,
        env=_env(MLFLOW_TRACKING_URI=uri),
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - t0  # includes interpreter start and imports
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"error: tracking server {uri} is unreachable (")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert elapsed < 120, elapsed


@pytest.mark.slow
def test_server_dies_mid_run_training_finishes_and_resync_completes_the_run(tmp_path, monkeypatch):
    """Kill the server after epoch 2 (training paused meanwhile), finish offline, restart it, resync."""
    from pipelines.trained import load_trained
    from tracking.server import start_server, stop_server

    store = tmp_path / "store"
    backend, artifacts = f"sqlite:///{store}/mlflow.db", store / "artifacts"
    store.mkdir()
    server, url = start_server(backend, artifacts, log_path=store / "server.log", timeout_s=300)
    port = int(url.rsplit(":", 1)[1])
    epochs = 6
    try:
        proc = _popen(
            ["train", *TINY, "--epochs", str(epochs), "--experiment", "dead-server"],
            tmp_path / "train",
            MLFLOW_TRACKING_URI=url,
        )
        rid = _wait_for_epoch(_checkpoints(), 2, proc, tmp_path / "train")
        proc.send_signal(signal.SIGSTOP)  # hold training while the server goes away, whatever the speed
        stop_server(server)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGCONT)
        rc = proc.wait(300)
    finally:
        stop_server(server)
    offline_s = time.monotonic() - t0
    out, err = _logs(tmp_path / "train")
    print(f"finished {offline_s:.1f} s after the server died; stderr:\n{err[-2000:]}")  # shown with -s
    assert rc == 2 and "Traceback" not in err, err[-3000:]
    assert offline_s < 90, offline_s  # no minutes of retries against the dead server
    assert f"warning: tracking server {url} unreachable" in err and "training continues" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: tracking server {url} is unreachable: run {rid} (FINISHED) is kept in")
    assert f"python -m pipelines resync {rid}" in last

    local = _checkpoints() / rid
    assert len((local / "metrics.jsonl").read_text().splitlines()) == epochs  # every epoch kept locally
    assert torch.load(local / "last.pt", weights_only=True)["epoch"] == epochs
    pending = json.loads((local / "pending.json").read_text())
    assert pending["end"]["status"] == "FINISHED"
    assert {"model", "checkpoints"} <= {a[1] for a in pending["artifacts"]}

    server, url2 = start_server(backend, artifacts, port=port, log_path=store / "server2.log", timeout_s=300)
    try:
        assert url2 == url
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        client = MlflowClient()
        assert client.get_run(rid).info.status == "RUNNING"  # until re-synced
        result = CliRunner().invoke(cli, ["resync", rid])
        assert result.exit_code == 0, result.stderr
        assert "status FINISHED" in result.stdout
        run = client.get_run(rid)
        assert run.info.status == "FINISHED" and run.data.metrics["epochs_done"] == epochs
        for key in ("train_loss", "test_acc", "epoch_seconds"):
            assert _steps(client, rid, key) == list(range(1, epochs + 1)), key
        files = {f.path for d in ("model", "checkpoints", "") for f in client.list_artifacts(rid, d or None)}
        assert {"model/state_dict.pt", "model/model_config.json", "checkpoints/last.pt", "history.json"} <= files
        load_trained(rid)  # the uploaded weights load (weights_only)
        assert not (local / "pending.json").exists()
        again = CliRunner().invoke(cli, ["resync", rid])  # idempotent: nothing sent twice
        assert again.exit_code == 0 and "0 metric values" in again.stdout
        assert _steps(client, rid, "train_loss") == list(range(1, epochs + 1))
    finally:
        stop_server(server)


def test_metric_logger_backs_off_while_the_server_is_down(tracking, tmp_path, monkeypatch, capsys):
    """A dead server costs a quick /health probe per attempt, not MLflow's retries; values wait in memory."""
    from tracking import experiment_id_for, tracked_run
    from tracking import offline as offline_mod
    from tracking.metrics import MetricLogger

    real = offline_mod.server_reachable
    with tracked_run("offline-metrics", experiment_id_for("reliability")) as rid:
        logger = MetricLogger(rid, tmp_path / "m.jsonl", flush_every_s=0)
        monkeypatch.setattr(offline_mod, "server_reachable", lambda timeout_s=3.0: False)
        t0 = time.monotonic()
        for step in range(1, 21):
            logger.log({"loss": 1 / step}, step)
        assert time.monotonic() - t0 < 5 and not logger.flush() and offline_mod.offline()
        assert capsys.readouterr().err.count("warning: tracking server") == 1  # warned once
        monkeypatch.setattr(offline_mod, "server_reachable", real)
        assert logger.flush(force=True) and not offline_mod.offline()
        assert "answers again: 20 buffered metric values sent" in capsys.readouterr().err
    assert _steps(MlflowClient(), rid, "loss") == list(range(1, 21))
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 20


def test_run_ending_while_server_is_down_is_kept_locally_and_resynced(tracking, capsys):
    """The end of a run against a dead server: no hang, a pending record, then resync sets the status."""
    from tracking import TrackingError, experiment_id_for, tracked_run
    from tracking import offline as offline_mod
    from tracking.artifacts import log_json
    from tracking.runs import log_metrics

    dead = f"http://127.0.0.1:{_free_port()}"
    exp = experiment_id_for("reliability")
    t0 = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="boom"), tracked_run("dies-offline", exp) as a:
            mlflow.set_tracking_uri(dead)  # the server goes away mid-run
            offline_mod.mark_offline("test")  # as a failed metric flush would find
            log_metrics({"final": 1.0})
            log_json({"k": 1}, "out/result.json")
            raise RuntimeError("boom")
        assert f"python -m pipelines resync {a}" in capsys.readouterr().err
        assert mlflow.active_run() is None  # popped without the server
        mlflow.set_tracking_uri(tracking)
        ends = pytest.raises(TrackingError, match="is unreachable: run .* \\(FINISHED\\) is kept in")
        with ends, tracked_run("ends-offline", exp) as b:
            mlflow.set_tracking_uri(dead)
    finally:
        mlflow.set_tracking_uri(tracking)
    assert time.monotonic() - t0 < 30  # no retries against the dead server
    client = MlflowClient()
    assert client.get_run(a).info.status == "RUNNING"
    for rid, status in ((a, "FAILED"), (b, "FINISHED")):
        assert CliRunner().invoke(cli, ["resync", rid]).exit_code == 0
        assert client.get_run(rid).info.status == status
    run = client.get_run(a)
    assert run.data.metrics["final"] == 1.0 and run.data.tags["error"] == "RuntimeError: boom"
    assert json.loads(mlflow.artifacts.load_text(f"runs:/{a}/out/result.json")) == {"k": 1}
    assert "boom" in mlflow.artifacts.load_text(f"runs:/{a}/error.txt")


def test_resync_can_end_a_run_left_running_by_a_killed_process(tracking):
    from tracking import experiment_id_for

    client = MlflowClient()
    rid = client.create_run(experiment_id_for("reliability")).info.run_id  # as after SIGKILL: RUNNING forever
    result = CliRunner().invoke(cli, ["resync", rid, "--status", "KILLED"])
    assert result.exit_code == 0, result.stderr
    assert client.get_run(rid).info.status == "KILLED"
    nothing = CliRunner().invoke(cli, ["resync", rid])
    assert nothing.exit_code == 2 and "nothing to resync" in nothing.stderr


# ---------------------------------------------------------------- 5. safety


def _calls(folders=("pipelines", "tracking", "models")):
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    yield path.relative_to(ROOT).as_posix(), ast.unparse(node.func), node


def _kw(node: ast.Call, name: str):
    for k in node.keywords:
        if k.arg == name:
            return ast.literal_eval(k.value) if isinstance(k.value, ast.Constant) else "<expr>"
    return None


UNSAFE_LOADERS = (
    "mlflow.pyfunc.load_model",
    "mlflow.pytorch.load_model",
    "mlflow.onnx.load_model",
    "mlflow.sklearn.load_model",
    "torch.jit.load",
    "joblib.load",
    "cloudpickle.load",
    "dill.load",
)
# CIFAR's pickles go through pipelines/data/pickles.py, an unpickler that admits numpy arrays only.
PICKLE_ALLOWED: set[str] = set()


def test_audit_weights_only_and_no_pickle_loaders():
    torch_loads, problems = 0, []
    for path, name, node in _calls():
        if name == "torch.load":
            torch_loads += 1
            if _kw(node, "weights_only") is not True:
                problems.append(f"{path}:{node.lineno} torch.load without weights_only=True")
        elif name in UNSAFE_LOADERS:
            problems.append(f"{path}:{node.lineno} {name} (pickle-based)")
        elif name in ("pickle.load", "pickle.loads") and path not in PICKLE_ALLOWED:
            problems.append(f"{path}:{node.lineno} {name}")
        elif name in ("np.load", "numpy.load") and _kw(node, "allow_pickle") not in (None, False):
            problems.append(f"{path}:{node.lineno} np.load(allow_pickle=...)")
    assert torch_loads >= 2 and not problems, problems


def test_cifar_pickles_cannot_run_code(tmp_path):
    import os
    import pickle

    from pipelines.data import DataError
    from pipelines.data.pickles import load_cifar_pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    bad = tmp_path / "train"
    bad.write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match="refusing to load"):
        load_cifar_pickle(bad)
    assert not (tmp_path / "pwned").exists()


def test_onnx_models_run_through_onnxruntime_only():
    calls = list(_calls())
    sessions = {p for p, name, _ in calls if name.endswith("InferenceSession")}
    assert {"pipelines/classify.py", "pipelines/export_onnx.py"} <= sessions
    in_classify = [name for p, name, _ in calls if p == "pipelines/classify.py"]
    assert not [n for n in in_classify if "pickle" in n or n.endswith(".load_model") or n == "torch.load"]


def test_servers_bind_127_0_0_1_by_default(tmp_path):
    import inspect

    from pipelines import demo
    from tracking.server import start_server

    server = demo.make_server(tmp_path, 0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()
    assert inspect.signature(start_server).parameters["host"].default == "127.0.0.1"
    assert "host" not in {p.name for p in cli.commands["server"].params}  # `pipelines server` is always local
    hosts = [_kw(node, "host") for _, name, node in _calls() if name.endswith("start_server")]
    assert "0.0.0.0" not in hosts


@pytest.mark.parametrize(
    "name", ["../evil.onnx", "model/../../evil", "/etc/passwd", "C:/evil", "a\\..\\b", "", "a/\x00b", ".."]
)
def test_artifact_names_that_escape_are_refused(tmp_path, name):
    from tracking.artifacts import UnsafeArtifactError, safe_join

    with pytest.raises(UnsafeArtifactError):
        safe_join(tmp_path, name)


def test_safe_join_keeps_ordinary_names_inside(tmp_path):
    from tracking.artifacts import safe_join

    assert safe_join(tmp_path, "model/./model.onnx") == (tmp_path / "model" / "model.onnx").resolve()
    (tmp_path / "link").symlink_to("/etc")
    from tracking.artifacts import UnsafeArtifactError

    with pytest.raises(UnsafeArtifactError, match="resolves outside"):
        safe_join(tmp_path, "link/passwd")  # a link planted earlier cannot lead out either


class _FakeRepo:
    def __init__(self, tree: dict):
        self.tree = tree

    def list_artifacts(self, path=None):
        from mlflow.entities import FileInfo

        return [FileInfo(p, is_dir, None) for p, is_dir in self.tree.get(path, [])]


def test_download_refuses_a_listing_that_escapes_before_writing(tmp_path, monkeypatch):
    import mlflow.store.artifact.artifact_repository_registry as registry_mod

    from tracking.artifacts import UnsafeArtifactError
    from tracking.registry import download_model

    tree = {None: [("model", True)], "model": [("model/MLmodel", False), ("model/../../../evil.onnx", False)]}
    monkeypatch.setattr(registry_mod, "get_artifact_repository", lambda uri: _FakeRepo(tree))
    called = []
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", lambda **kw: called.append(kw))
    dst = tmp_path / "dst"
    with pytest.raises(UnsafeArtifactError, match="evil.onnx"):
        download_model("models:/hostile@champion", dst)
    assert called == [] and list(dst.iterdir()) == []


def test_download_refuses_files_that_resolve_outside(tmp_path, monkeypatch):
    import mlflow.store.artifact.artifact_repository_registry as registry_mod

    from tracking.artifacts import UnsafeArtifactError, safe_download

    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    monkeypatch.setattr(registry_mod, "get_artifact_repository", lambda uri: _FakeRepo({None: [("m.onnx", False)]}))

    def planting_download(artifact_uri, dst_path):
        (Path(dst_path) / "m.onnx").symlink_to(outside)
        return dst_path

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", planting_download)
    with pytest.raises(UnsafeArtifactError, match="outside"):
        safe_download("models:/hostile@champion", tmp_path / "dst")
