"""The browser demo — ``demo`` command + the static page with onnxruntime-web, in headless Chromium.

The browser test needs Debian's ``chromium`` + ``chromium-driver`` and ``selenium`` (pip); it skips with
the reason when one is missing. onnxruntime-web must be vendored (``sh web/build.sh``; run here when npm
exists). ``DEMO_SCREENSHOT=web/screenshot.png`` also copies the screenshot there (for the README).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from tests.conftest import ROOT

CNN, FC = "demo-cnn", "demo-fc"
BROWSERS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1000",
)


@pytest.fixture(scope="module")
def demo_models(mlflow_server, cifar_dir, tmp_path_factory):
    """Register a tiny CNN and a tiny FC model (2 epochs, CPU) on the synthetic CIFAR-100 classes."""
    import mlflow

    from pipelines import export_onnx, train
    from pipelines.config import data_config, export_config, train_config
    from pipelines.trained import load_data as load

    tmp = tmp_path_factory.mktemp("demo-models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mp.setenv("PIPELINE_CHECKPOINT_DIR", str(tmp / "checkpoints"))
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mlflow.set_tracking_uri(mlflow_server)
        data = data_config("cifar100", cifar_dir, "default")
        ds = load(data)
        # train -> export_onnx (the real steps, registry tags included); evaluate's reports are not needed here.
        for model, name in (("pooling_cnn", CNN), ("fcnet", FC)):
            cfg = train_config(model=model, epochs="2", augment="false", device="cpu", precision="fp32")
            trained = train.run(data, cfg, dataset=ds, experiment="web-demo")
            score = trained.state.history[-1]["test_acc"]
            export_onnx.run(trained.run_id, export_config(name, 1e-4), ds, trained.model, score, "web-demo")
    return {"cnn": f"models:/{CNN}@champion", "fc": f"models:/{FC}@champion"}


def _vendor_or_skip() -> None:
    from pipelines.demo import VENDOR, vendored_ort_version

    if not (VENDOR / "VERSION").is_file():
        if not shutil.which("npm"):
            pytest.skip("onnxruntime-web is not vendored and npm is missing: run `sh web/build.sh`")
        subprocess.run(["sh", str(ROOT / "web" / "build.sh")], check=True, capture_output=True, timeout=300)
    vendored_ort_version()


def _box(img: np.ndarray, f: int) -> np.ndarray:
    """The page's box filter for an integer factor, in the page's order of float64 operations."""
    img = img.astype(np.float64)
    h = sum((img[:, k::f] * 1.0 for k in range(1, f)), start=img[:, 0::f] * 1.0) / f
    return sum((h[k::f] for k in range(1, f)), start=h[0::f] * 1.0) / f


def _round(v: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(v + 0.5), 0, 255).astype(np.float32)  # JS Math.round for v >= 0


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits.astype(np.float64) - logits.max())
    return e / e.sum()


def test_demo_cli_writes_folder(tracking, demo_models, tmp_path):
    import json

    from pipelines.cli import cli
    from pipelines.modelcard import read as read_card

    _vendor_or_skip()
    out = tmp_path / "demo"
    args = ["demo", "--cnn-uri", demo_models["cnn"], "--fc-uri", demo_models["fc"], "--out", str(out), "--no-serve"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    for name in ("index.html", "demo.js", "style.css", "model_cnn.onnx", "model_fc.onnx", "models.json"):
        assert (out / name).is_file(), name
    assert (out / "vendor" / "ort.wasm.min.mjs").is_file() and (
        out / "vendor" / "ort-wasm-simd-threaded.wasm"
    ).is_file()
    html = (out / "index.html").read_text() + (out / "demo.js").read_text()
    assert "http://" not in html and "https://" not in html  # nothing from a CDN: works offline
    meta = json.loads((out / "models.json").read_text())
    assert (
        meta["onnxruntime_web"]
        == json.loads((ROOT / "web" / "package.json").read_text())["dependencies"]["onnxruntime-web"]
    )
    cnn, fc = meta["models"]
    assert (cnn["registered_model"], fc["registered_model"]) == (CNN, FC)
    for m in (cnn, fc):
        assert m["input_shape"] == [32, 32, 3] and m["input_layout"] == "NHWC" and m["input_range"] == [0, 255]
        assert m["class_ids"] == [0, 33, 41] and m["class_names"] == ["class_0", "class_33", "class_41"]
        assert m["run_id"] and m["train_run_id"] and 0 <= m["test_accuracy"] <= 1
        card = read_card(out / m["file"])  # models.json repeats the file's own card
        assert (m["class_names"], m["train_run_id"], m["preprocessing"]) == (
            card.class_names,
            card.train_run_id,
            card.preprocessing,
        )
        assert m["preprocessing_id"] == "center-crop-box-v1" and m["dataset"] == "cifar100"
        sess = ort.InferenceSession(str(out / m["file"]), providers=["CPUExecutionProvider"])
        assert sess.get_inputs()[0].name == m["input_name"]

    bad = CliRunner().invoke(
        cli, ["demo", "--cnn-uri", "models:/no-such-model@champion", "--out", str(out), "--no-serve"]
    )
    assert bad.exit_code == 2 and "no registered model models:/no-such-model@champion" in bad.output
    bad = CliRunner().invoke(cli, ["demo", "--port", "-1", "--no-serve"])
    assert bad.exit_code == 2 and "port must be an integer >= 0" in bad.output


def _driver_or_skip(tmp_path: Path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    browser = next((b for b in BROWSERS if os.access(b, os.X_OK)), None)
    driver_path = shutil.which("chromedriver")
    if not browser or not driver_path:
        pytest.skip(
            f"no headless browser: chromium {browser or 'missing'}, chromedriver {driver_path or 'missing'} "
            "(apt-get install chromium chromium-driver)"
        )
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))


def _wait_update(driver, after_seq: int) -> dict:
    from selenium.webdriver.support.ui import WebDriverWait

    js = "const d = window.__demo; return d && {seq: d.seq, done: d.done, error: d.error, ready: d.ready};"
    WebDriverWait(driver, 30).until(
        lambda d: (s := d.execute_script(js)) and (s["error"] or (s["seq"] > after_seq and s["done"] == s["seq"]))
    )
    state = driver.execute_script(js)
    assert not state["error"], state["error"]
    return driver.execute_script("return JSON.parse(JSON.stringify(window.__demo));")


def _check(driver, demo: dict, folder: Path, expected_input: np.ndarray, dx: int, dy: int) -> None:
    """The page's input is ``expected_input``; its logits/probabilities and shown ranking equal onnxruntime's."""
    from selenium.webdriver.common.by import By

    assert (demo["dx"], demo["dy"]) == (dx, dy)
    for m in demo["meta"]["models"]:
        res = demo["results"][m["key"]]
        x = np.asarray(res["input"], dtype=np.float32).reshape(m["input_shape"])
        np.testing.assert_array_equal(x, expected_input)
        sess = ort.InferenceSession(str(folder / m["file"]), providers=["CPUExecutionProvider"])
        logits = sess.run([m["output_name"]], {m["input_name"]: x[None]})[0][0]
        probs = _softmax(logits)
        np.testing.assert_allclose(res["logits"], logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(res["probs"], probs, rtol=0, atol=1e-6)
        rows = driver.find_elements(By.CSS_SELECTOR, f'.model[data-key="{m["key"]}"] li[data-class-id]')
        order = np.argsort(-probs)
        assert [int(r.get_attribute("data-class-id")) for r in rows] == [m["class_ids"][i] for i in order]
        shown = [float(r.find_element(By.CLASS_NAME, "prob").text.rstrip(" %\xa0")) for r in rows]
        assert np.all(np.abs(np.asarray(shown) - 100 * probs[order]) <= 0.05 + 1e-9), (shown, probs[order])


def test_demo_in_headless_chromium(tracking, demo_models, cifar_dir, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from pipelines.data import load_dataset
    from pipelines.demo import build, serve_in_thread

    _vendor_or_skip()
    driver = _driver_or_skip(tmp_path)
    folder = build(demo_models["cnn"], demo_models["fc"], tmp_path / "demo")
    server, url = serve_in_thread(folder, 0)
    try:
        assert url.startswith("http://127.0.0.1:")
        # A test image whose preprocessing is known exactly: a 32x32 test image enlarged 2x, with 8 px of
        # noise left and right that the centre crop removes (80x64 -> 64x64 -> box filter -> 32x32).
        ref = load_dataset("cifar100", cifar_dir).x_test[0]
        rng = np.random.default_rng(0)
        big = np.repeat(np.repeat(ref, 2, axis=0), 2, axis=1)
        img = np.concatenate([rng.integers(0, 256, (64, 8, 3)), big, rng.integers(0, 256, (64, 8, 3))], axis=1)
        png = tmp_path / "test_image.png"
        Image.fromarray(img.astype(np.uint8)).save(png)
        expected = _round(_box(img[:, 8:72], 2))
        np.testing.assert_array_equal(expected, ref)

        driver.get(url)
        ready = "return window.__demo && (window.__demo.ready || window.__demo.error)"
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(ready))
        assert not driver.execute_script("return window.__demo.error")
        assert (
            driver.execute_script("return window.__demo.ortVersion")
            == folder.joinpath("vendor/VERSION").read_text().strip()
        )
        driver.find_element(By.ID, "file").send_keys(str(png))
        demo = _wait_update(driver, 0)
        assert demo["image"]["width"] == 80 and demo["image"]["crop"] == [8, 0, 64, 64]
        _check(driver, demo, folder, expected, 0, 0)
        canvas = driver.find_element(By.CSS_SELECTOR, "#previews canvas")
        assert canvas.get_attribute("width") == "32" and canvas.size["width"] >= 128  # shown enlarged

        # Shift right 2, down 1 with the arrow buttons: zero fill, both models re-run.
        seq = demo["seq"]
        for button in ("right", "right", "down"):
            driver.find_element(By.ID, button).click()
        demo = _wait_update(driver, seq + 2)
        shifted = np.zeros_like(expected)
        shifted[1:, 2:] = expected[:-1, :-2]
        _check(driver, demo, folder, shifted, 2, 1)
        assert driver.find_element(By.ID, "dx").get_attribute("value") == "2"

        # Untick the CNN's top class: it disappears from both lists.
        top = driver.find_element(By.CSS_SELECTOR, '.model[data-key="cnn"] li[data-class-id]')
        top_id = top.get_attribute("data-class-id")
        driver.find_element(By.CSS_SELECTOR, f'#classes input[data-class-id="{top_id}"]').click()
        for key in ("cnn", "fc"):
            ids = [
                r.get_attribute("data-class-id")
                for r in driver.find_elements(By.CSS_SELECTOR, f'.model[data-key="{key}"] li[data-class-id]')
            ]
            assert top_id not in ids and len(ids) == 2
        driver.find_element(By.CSS_SELECTOR, f'#classes input[data-class-id="{top_id}"]').click()

        # Grayscale models (MNIST 28x28x1, digits 8x8x1): the same code path, checked on synthetic pixels.
        for size, f in ((28, 2), (8, 3)):
            rgb = rng.integers(0, 256, (size * f, size * f, 3))
            rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255)], axis=2)
            got = driver.execute_script(
                "return window.__demo.api.toInput(Uint8ClampedArray.from(arguments[0]), arguments[1], arguments[1], "
                "arguments[2], arguments[2], 1, true);",
                rgba.ravel().tolist(),
                size * f,
                size,
            )
            b = _box(rgb, f)
            want = 255 - _round(0.299 * b[..., 0] + 0.587 * b[..., 1] + 0.114 * b[..., 2])
            np.testing.assert_array_equal(np.asarray(got, dtype=np.float32).reshape(size, size), want)

        shot = tmp_path / "web_demo.png"
        assert driver.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        if os.environ.get("DEMO_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["DEMO_SCREENSHOT"])
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()


# A non-square photo, one larger than 1024 px on a side, one with transparency, one rotated by EXIF.
PHOTOS = (("wide.png", 97, 61), ("big.png", 1100, 1500), ("alpha.png", 120, 80), ("rotated.jpg", 90, 60))


def _photo_file(folder: Path, name: str, w: int, h: int) -> Path:
    from PIL import Image

    from tests.test_modelcard import photo

    path = folder / name
    pixels = photo(w, h, seed=w)
    if name.startswith("alpha"):
        alpha = np.linspace(0, 255, w, dtype=np.float64)[None, :].repeat(h, axis=0)  # transparent on the left
        Image.fromarray(np.dstack([pixels, alpha.round().astype(np.uint8)]), "RGBA").save(path)
    elif name.startswith("rotated"):
        img = Image.fromarray(pixels)
        exif = img.getexif()
        exif[0x0112] = 6  # shown rotated 90 degrees clockwise, as phones store portrait photos
        img.save(path, quality=92, exif=exif.tobytes())
    else:
        Image.fromarray(pixels).save(path)
    return path


def test_page_and_python_make_the_same_model_input(tmp_path):
    """The same image files through ``modelcard.to_model_input`` + onnxruntime and through the page."""
    from PIL import Image, ImageOps
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from pipelines.demo import build, serve_in_thread
    from pipelines.modelcard import PREPROCESSING_ID, crop_rect, to_model_input
    from tests.test_modelcard import export_with_card

    _vendor_or_skip()
    driver = _driver_or_skip(tmp_path)
    # Local .onnx files with their cards (no registry): an RGB CNN and a grayscale FC model.
    cnn, fc = tmp_path / "cnn.onnx", tmp_path / "fc.onnx"
    export_with_card(cnn, "pooling_cnn", (32, 32, 3), seed=1)
    export_with_card(fc, "fcnet", (28, 28, 1), seed=2)
    folder = build(str(cnn), str(fc), tmp_path / "demo")
    server, url = serve_in_thread(folder, 0)
    try:
        driver.get(url)
        ready = "return window.__demo && (window.__demo.ready || window.__demo.error)"
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(ready))
        assert not driver.execute_script("return window.__demo.error")
        assert f"preprocessing {PREPROCESSING_ID}" in driver.find_element(By.ID, "about").text
        assert driver.execute_script("return window.__demo.api.cropRect(10, 3, 3, 2)") == [2, 0, 5, 3]  # ties up
        sessions = {
            m["key"]: ort.InferenceSession(str(folder / m["file"]), providers=["CPUExecutionProvider"])
            for m in driver.execute_script("return window.__demo.meta.models")
        }
        seq, worst = 0, {}
        for name, w, h in PHOTOS:
            path = _photo_file(tmp_path, name, w, h)
            driver.find_element(By.ID, "file").send_keys(str(path))
            demo = _wait_update(driver, seq)
            seq = demo["seq"]
            with Image.open(path) as img:
                upright = ImageOps.exif_transpose(img).size
                assert [demo["image"]["width"], demo["image"]["height"]] == list(upright)
                assert demo["image"]["crop"] == list(crop_rect(*upright, 32, 32))
                assert demo["image"]["preprocessing"] == PREPROCESSING_ID
                for m in demo["meta"]["models"]:
                    res = demo["results"][m["key"]]
                    page = np.asarray(res["input"], dtype=np.float32).reshape(m["input_shape"])
                    ours = to_model_input(img, *m["input_shape"])
                    diff = float(np.abs(page - ours).max())
                    worst[(name, m["key"])] = diff
                    assert diff <= 1.0, (name, m["key"], diff)  # within 1/255 of the 0..255 range
                    logits = sessions[m["key"]].run(None, {m["input_name"]: ours[None]})[0][0]
                    assert int(np.argmax(res["logits"])) == int(np.argmax(logits)), (name, m["key"])
        print("max |page - python| per image and model:", worst)
        assert max(v for (n, _), v in worst.items() if n.endswith(".png") and "alpha" not in n) == 0
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
