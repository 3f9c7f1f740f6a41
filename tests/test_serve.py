"""`ditlab serve`: the per-step callback of ditlab.generate that drives the page's progress bar, the checks of
a request (bad input is a message, never a traceback), the catalog (a visitor picks names, never paths), and
the page itself: `ditlab serve` on a model trained in the test, driven in headless Chromium."""

import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ditlab
from ditlab.cli import build_parser
from ditlab.cli import main as cli
from ditlab.data import FASHION_MNIST_CLASSES
from ditlab.serve.catalog import Catalog, find_checkpoints
from ditlab.serve.requests import (
    Limits,
    SampleRequest,
    class_choices,
    generate_kwargs,
    sample_request,
    samplers_of,
)

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
HAS_SELENIUM = importlib.util.find_spec("selenium") is not None
# The flags headless Chromium needs here (as root, no GPU, no network beyond localhost).
CHROMIUM_FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking "
    "--disable-component-update --disable-sync --window-size=1280,800"
).split()


def tiny_model(**overrides):
    torch.manual_seed(0)
    args = dict(input_size=8, in_channels=1, num_classes=10, depth=1, hidden_size=32, num_heads=2)
    return ditlab.create_model("DiT-Nano/2", **{**args, **overrides}).eval()


def request(**overrides) -> SampleRequest:
    values = dict(sampler="ddim", steps=3, guidance_scale=1.0, seed=0, num_images=3, conditions={"class": 2})
    return SampleRequest(**{**values, **overrides})


# ------------------------------------------------------------------------------------------ generate's callback
def test_generate_calls_back_once_per_step_of_every_batch():
    model = tiny_model()
    seen = []
    images, _ = ditlab.generate(
        model, classes=[1], per_class=3, steps=4, batch_size=2, callback=lambda info: seen.append(info)
    )
    assert [(s["batch"], s["i"]) for s in seen] == [(b, i) for b in range(2) for i in range(4)]
    assert all(
        s["batches"] == 2 and s["denoised"].shape == (2 if s["batch"] == 0 else 1, 1, 8, 8) for s in seen
    )
    plain, _ = ditlab.generate(model, classes=[1], per_class=3, steps=4, batch_size=2)
    assert np.array_equal(images, plain)  # watching the steps does not change the samples


# ------------------------------------------------------------------------------------------ requests
def test_a_request_reaches_generate_and_writes_the_grid_and_the_npz(tmp_path):
    model = tiny_model()
    progress = []
    result = sample_request(
        model, "tiny model", request(), Limits(), tmp_path, on_step=lambda *a: progress.append(a)
    )
    assert progress == [(1, 3), (2, 3), (3, 3)]
    with np.load(result.npz) as f:
        assert f["arr_0"].shape == (3, 8, 8, 1) and f["labels"].tolist() == [2, 2, 2]
        expected, _ = ditlab.generate(model, classes=[2], per_class=3, sampler="ddim", steps=3, seed=0)
        assert np.array_equal(f["arr_0"], expected)  # the page's images are ditlab.generate's
    assert result.grid.name == "tiny-model-class2-seed0.png"
    assert Image.open(result.grid).size == (3 * 32 + 4 * 2, 32 + 2 * 2)  # 8x8 enlarged to 32, padding 2


@pytest.mark.slow  # importing diffusers takes seconds
def test_latent_models_are_decoded_by_the_servers_vae(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from ditlab.autoencoders import load_vae

    torch.manual_seed(0)
    blocks = dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    tiny = diffusers.AutoencoderKL(
        block_out_channels=(32, 64), latent_channels=4, layers_per_block=1, **blocks
    )
    tiny.save_pretrained(tmp_path / "vae")  # a factor-2 autoencoder: 4x4 latents decode to 8x8 RGB
    latent = tiny_model(in_channels=4, input_size=4)
    with pytest.raises(ValueError, match="4-channel latents"):
        sample_request(latent, "latent", request(), Limits(), tmp_path / "out")
    result = sample_request(
        latent, "latent", request(), Limits(), tmp_path / "out", vae=load_vae(tmp_path / "vae")
    )
    with np.load(result.npz) as f:
        assert f["arr_0"].shape == (3, 8, 8, 3)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(conditions={"class": 10}), "unknown class 10"),
        (dict(conditions={"class": "cat"}), "unknown class 'cat'"),
        (dict(conditions={}), "pick a class"),
        (dict(steps=101), "steps must be between 1 and 100"),
        (dict(steps=2.5), "steps must be a whole number"),
        (dict(num_images=17), "the number of images must be between 1 and 16"),
        (dict(num_images=0), "the number of images must be between 1 and 16"),
        (dict(seed=-3), "the seed must be between 0"),
        (dict(guidance_scale=float("nan")), "the guidance scale must be between 0 and 20"),
        (
            dict(sampler="euler"),
            "unknown sampler 'euler' for this model; choose one of: ddim, ddpm, dpmpp_2m",
        ),
    ],
)
def test_bad_requests_say_what_to_change(change, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        generate_kwargs(tiny_model(), request(**change), Limits(max_images=16, max_steps=100))


def test_guidance_needs_label_dropout():
    with pytest.raises(ValueError, match="cannot be guided: set guidance to 1"):
        generate_kwargs(tiny_model(class_dropout_prob=0.0), request(guidance_scale=4.0), Limits())
    assert generate_kwargs(tiny_model(), request(guidance_scale=4.0), Limits())["guidance_scale"] == 4.0


def test_class_names_come_from_the_training_data_and_samplers_from_the_objective():
    model = tiny_model()
    assert class_choices(model)[:2] == [("class 0", 0), ("class 1", 1)]  # nothing recorded
    model.data_spec = {"name": "fashion-mnist", "class_names": list(FASHION_MNIST_CLASSES)}
    assert class_choices(model)[:2] == [("T-shirt/top (0)", 0), ("Trouser (1)", 1)]
    model.data_spec = {"name": "digits", "class_names": [str(d) for d in range(10)]}
    assert class_choices(model)[3] == ("3", 3)
    assert samplers_of(model) == ["ddim", "ddpm", "dpmpp_2m"]
    model.objective_spec = {"kind": "flow"}
    assert samplers_of(model) == ["euler", "heun", "euler_sde"]


@pytest.mark.slow  # importing Gradio takes seconds
def test_the_handler_turns_bad_input_into_a_page_message(tmp_path):
    gr = pytest.importorskip("gradio")
    from ditlab.serve.app import build_app

    path = tmp_path / "models" / "tiny.safetensors"
    path.parent.mkdir()
    ditlab.save_model(tiny_model(), path)
    app = build_app(Catalog.from_args(None, str(path.parent)), Limits(max_steps=10), tmp_path / "out")
    assert app.analytics_enabled is False  # no telemetry, no version check against the internet
    click = next(f for f in app.fns.values() if f.name == "on_generate")
    values = {block: getattr(block, "value", None) for block in click.inputs}
    by_id = {block.elem_id: block for block in click.inputs}
    values.update({by_id["class"]: 11, by_id["steps"]: 3, by_id["count"]: 2})
    with pytest.raises(gr.Error, match="unknown class 11"):
        click.fn(values, progress=lambda *a, **k: None)
    values.update({by_id["class"]: 4, by_id["model"]: str(path)})  # a path typed in is not a model name
    with pytest.raises(gr.Error, match="unknown model .*this server offers: tiny.safetensors"):
        click.fn(values, progress=lambda *a, **k: None)


@pytest.mark.slow
def test_two_clicks_never_sample_at_once_and_progress_follows_the_steps(tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    from gradio_client import Client

    from ditlab.serve import app as page

    running, most = [0], [0]
    lock = threading.Lock()

    def slow_sampler(*args, on_step, **kwargs):  # stands in for sample_request: counts samplers at once
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        on_step(1, 2)  # the page's progress bar shows the sampler's steps
        time.sleep(0.5)
        with lock:
            running[0] -= 1
        raise ValueError("stopped by the test")

    monkeypatch.setattr(page, "sample_request", slow_sampler)
    ditlab.save_model(tiny_model(), tmp_path / "tiny.safetensors")
    app = page.build_app(
        Catalog.from_args(str(tmp_path / "tiny.safetensors"), None), Limits(), tmp_path / "out"
    )
    port = _free_port()
    page.launch(app, port=port, quiet=True, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        jobs = [client.submit(api_name="/on_generate") for _ in range(2)]  # the page's defaults, twice
        progress = set()
        while not jobs[0].done():
            units = jobs[0].status().progress_data or []
            progress.update(unit.desc for unit in units)
            time.sleep(0.02)
        assert "step 1 of 2" in progress
        for job in jobs:
            with pytest.raises(Exception, match="stopped by the test"):  # the message reaches the client
                job.result(timeout=60)
    finally:
        app.close()
    assert most[0] == 1


def test_the_catalog_lists_only_checkpoints_and_refuses_other_names(tmp_path):
    ditlab.save_model(tiny_model(), tmp_path / "a.safetensors")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert list(find_checkpoints(tmp_path)) == ["a.safetensors"]
    catalog = Catalog.from_args(None, str(tmp_path))
    assert catalog.model("a.safetensors").num_classes == 10
    with pytest.raises(ValueError, match="unknown model"):
        catalog.model(str(tmp_path / "a.safetensors"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no checkpoint in it"):
        find_checkpoints(tmp_path / "empty")


def test_the_command_binds_to_localhost_and_needs_something_to_serve(capsys):
    args = build_parser(["serve"]).parse_args(["serve", "runs/digits"])
    assert (args.host, args.port, args.max_images, args.max_steps) == ("127.0.0.1", 7860, 16, 100)
    with pytest.raises(SystemExit) as exit_:
        cli(["serve"])
    assert exit_.value.code == 2 and "pass RUN_OR_CHECKPOINT and/or --models DIR" in capsys.readouterr().err
    assert cli(["serve", "no/such/run"]) == 2
    assert "checkpoint no/such/run does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the page, in Chromium
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_page(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"ditlab serve exited: {server.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"ditlab serve did not answer on {url} within {timeout} s")


@pytest.fixture
def served_run(tmp_path):
    """A tiny model trained on digits for a few steps, served by `ditlab serve` on a free localhost port
    (with a second model from `--models DIR`)."""
    from ditlab.train import TrainConfig, Trainer

    run = tmp_path / "run"
    cfg = TrainConfig(
        data="digits", model="DiT-Nano/2", batch_size=16, lr=1e-3, steps=4, log_every=1, ckpt_every=4,
        sample_steps=2, progress=False, threads=1, out=str(run),
    )  # fmt: skip
    Trainer(cfg).run()
    models = tmp_path / "models"  # a second model for the picker: untrained, with Fashion-MNIST's names
    models.mkdir()
    fashion = tiny_model()
    fashion.data_spec = {"name": "fashion-mnist", "class_names": list(FASHION_MNIST_CLASSES)}
    ditlab.save_model(fashion, models / "fashion.safetensors")
    port = _free_port()
    cmd = [sys.executable, "-m", "ditlab", "serve", str(run), "--models", str(models), "--port", str(port),
           "--max-images", "8", "--max-steps", "40", "--threads", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for_page(url, server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='ditlab-chromium-')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def _type_number(driver, elem_id: str, value) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


def _requested_urls(driver) -> set[str]:
    messages = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    return {m["params"]["request"]["url"] for m in messages if m["method"] == "Network.requestWillBeSent"}


@pytest.mark.slow
@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER and HAS_SELENIUM),
    reason="needs Debian's chromium and chromium-driver, selenium",
)
def test_the_page_samples_a_class_in_a_browser(served_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser()
    try:
        wait = WebDriverWait(driver, 120)
        driver.get(served_run)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#class input")).click()
        wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, '#class li[role=option][aria-label="3"]')
        ).click()
        _type_number(driver, "steps", 20)
        _type_number(driver, "count", 4)
        driver.find_element(By.ID, "generate").click()
        image = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#grid img"))
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, ".progress-text"))  # the run has finished
        size = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
        assert size == [4 * 32 + 5 * 2, 32 + 2 * 2]  # 4 digits of 8x8, enlarged to 32, in one row
        assert "4 image(s), seed 0" in driver.find_element(By.ID, "summary").text
        links = {Path(a.get_attribute("href")).suffix: a.get_attribute("href")
                 for a in driver.find_elements(By.CSS_SELECTOR, "#files a")}  # fmt: skip
        with urllib.request.urlopen(links[".png"], timeout=10) as r:
            assert Image.open(io.BytesIO(r.read())).size == tuple(size)
        with urllib.request.urlopen(links[".npz"], timeout=10) as r, np.load(io.BytesIO(r.read())) as f:
            assert f["arr_0"].shape == (4, 8, 8, 1) and f["labels"].tolist() == [3] * 4
        driver.save_screenshot(str(tmp_path / "serve.png"))  # the test's artifact (docs/serve.png is one)

        # Bad input: a message on the page, not a traceback.
        seed = driver.find_element(By.CSS_SELECTOR, "#seed input")
        seed.clear()
        seed.send_keys("-3")
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: "the seed must be between 0 and" in d.find_element(By.TAG_NAME, "body").text)
        assert "Traceback" not in driver.find_element(By.TAG_NAME, "body").text

        # The picker: another model brings its own class names.
        driver.find_element(By.CSS_SELECTOR, "#model input").click()
        wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, '#model li[aria-label="fashion.safetensors"]')
        ).click()
        wait.until(
            lambda d: (
                d.find_element(By.CSS_SELECTOR, "#class input").get_attribute("value") == "T-shirt/top (0)"
            )
        )
        driver.find_element(By.CSS_SELECTOR, "#class input").click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '#class li[aria-label="Trouser (1)"]'))

        # Offline: the page fetched nothing beyond the server (no CDN fonts, scripts or telemetry).
        outside = {
            u for u in _requested_urls(driver) if u.startswith("http") and not u.startswith(served_run)
        }
        assert not outside, outside
    finally:
        driver.quit()
