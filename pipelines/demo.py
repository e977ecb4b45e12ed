"""Command ``demo``: a static browser page that runs two registered ONNX models with onnxruntime-web.

``build(cnn_uri, fc_uri, out)`` downloads both models from the registry into ``out`` as
``model_cnn.onnx`` / ``model_fc.onnx``, writes ``models.json`` (registered name, version and run id;
from each file's own model card: input shape and layout, class ids and names, preprocessing, training
run, test accuracy) and copies the page (``web/``) with the vendored
onnxruntime-web (``web/dist/vendor``, built by ``sh web/build.sh`` from the pinned npm package).
``serve(out, port)`` serves that folder on 127.0.0.1 only. Nothing is loaded from the network
by the page: it works offline.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import tempfile
import threading
from pathlib import Path

from pipelines import modelcard
from pipelines.parsing import ConfigError

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
PAGE_FILES = ("index.html", "demo.js", "style.css")
VENDOR = WEB / "dist" / "vendor"  # written by web/build.sh: the pinned onnxruntime-web files
VENDOR_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
DEFAULT_CNN = "models:/cifar100-pooling_cnn@champion"
DEFAULT_FC = "models:/cifar100-fcnet@champion"
DEFAULT_OUT = "out/demo"
HOST = "127.0.0.1"
MIME = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json"}


def vendored_ort_version(vendor: Path = VENDOR) -> str:
    """The onnxruntime-web version in ``web/dist/vendor``; ConfigError saying how to build it if absent."""
    missing = [f for f in (*VENDOR_FILES, "VERSION") if not (vendor / f).is_file()]
    if missing:
        raise ConfigError(
            f"onnxruntime-web is not vendored ({vendor / missing[0]} missing): run `sh web/build.sh` (npm ci) first"
        )
    return (vendor / "VERSION").read_text().strip()


def fetch_model(model_uri: str, key: str, title: str, out: Path) -> dict:
    """Download ``model_uri`` (or copy a local ``.onnx`` file) to ``out/model_<key>.onnx``; its models.json entry."""
    from pipelines.classify import is_local, onnx_file
    from tracking.registry import model_version_info

    dst = out / f"model_{key}.onnx"
    if is_local(model_uri):
        modelcard.read(model_uri)  # a missing file or one without a card: one line, before anything is written
        shutil.copyfile(model_uri, dst)
        return {"key": key, "title": title, **model_entry(dst, model_uri)}
    info = model_version_info(model_uri)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(onnx_file(model_uri, Path(tmp)), dst)
    registry = {"registered_model": info.name, "version": info.version, "run_id": info.run_id}
    return {"key": key, "title": title, **model_entry(dst, model_uri), **registry}


def model_entry(dst: Path, model_uri: str) -> dict:
    """The ``models.json`` entry of the ONNX file ``dst`` from its own card (checked against its graph)."""
    card = modelcard.read_checked(dst, model_uri)  # the file describes itself: no registry tag is read
    return {
        "file": dst.name,
        "model_uri": model_uri,
        "registered_model": None,  # a local file: not from the registry
        "version": None,
        "run_id": None,
        "train_run_id": card.train_run_id,
        "model": card.model,
        "dataset": card.dataset,
        "input_name": card.input_name,
        "input_shape": card.input_shape,  # [H, W, C] of one image; the model takes [batch, H, W, C]
        "input_layout": card.input_layout,
        "input_dtype": "float32",
        "input_range": [0, 255],
        "preprocessing_id": card.preprocessing_id,  # the page refuses a model whose id it does not implement
        "preprocessing": card.preprocessing,
        "output_name": card.output_name,
        "output": "logits",
        "class_ids": card.class_ids,
        "class_names": card.class_names,
        "test_accuracy": card.test_accuracy,
        "test_split": card.test_split,
    }


def build(cnn_uri: str = DEFAULT_CNN, fc_uri: str = DEFAULT_FC, out: str | Path = DEFAULT_OUT) -> Path:
    """Write the demo folder: page, vendored onnxruntime-web, both models and ``models.json``."""
    ort_version = vendored_ort_version()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = [fetch_model(cnn_uri, "cnn", "CNN", out), fetch_model(fc_uri, "fc", "Fully connected", out)]
    if models[0]["class_ids"] != models[1]["class_ids"]:
        raise ConfigError(
            f"the two models are trained on different classes: {cnn_uri} {models[0]['class_ids']} vs "
            f"{fc_uri} {models[1]['class_ids']}"
        )
    for name in PAGE_FILES:
        shutil.copyfile(WEB / name, out / name)
    shutil.copytree(VENDOR, out / "vendor", dirs_exist_ok=True)
    meta = {"created_by": "python -m pipelines demo", "onnxruntime_web": ort_version, "models": models}
    (out / "models.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME}

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")  # a rebuilt folder is never shadowed by a cached model
        super().end_headers()

    def log_message(self, format, *args):  # quiet: the command prints the URL, not every request
        pass


def make_server(folder: str | Path, port: int = 8000) -> http.server.ThreadingHTTPServer:
    """An HTTP server for ``folder`` bound to 127.0.0.1 only (port 0 = any free port); not started."""
    handler = functools.partial(_Handler, directory=str(folder))
    try:
        return http.server.ThreadingHTTPServer((HOST, port), handler)
    except (OSError, OverflowError) as e:
        raise ConfigError(f"cannot serve on {HOST}:{port}: {getattr(e, 'strerror', None) or e}") from None


def url_of(server: http.server.HTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"


def serve_in_thread(folder: str | Path, port: int = 0) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Start serving in a daemon thread (tests); stop with ``server.shutdown(); server.server_close()``."""
    server = make_server(folder, port)
    threading.Thread(target=server.serve_forever, daemon=True, name="demo-http").start()
    return server, url_of(server)
