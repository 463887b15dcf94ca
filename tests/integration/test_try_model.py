"""``vlmtune chat`` and ``vlmtune app`` on a tiny demo run: their answers are the pipeline's
own greedy generation for prompts written out here in InternLM2's published chat format."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vlmtune.config import compose_recipe, validate
from vlmtune.data.images import open_image
from vlmtune.data.templates import INTERNVL2_SYSTEM, get_template
from vlmtune.evaluation.multiple_choice import MultipleChoiceScorer
from vlmtune.models.loading import ensure_model_dir, load_model
from vlmtune.pipelines.runner import run_pipeline

TINY = ["train.max_iters=20", "train.save_every=20", "benchmark.limit=4", "benchmarks=[heldout]"]
MAX_NEW = 12
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="module")
def demo_run(shared_cache, tmp_path_factory):
    """A tiny demo run (20 iterations, LoRA merged into merged/), tracked in a sqlite store."""
    root = tmp_path_factory.mktemp("try-model")
    mp = pytest.MonkeyPatch()
    mp.setenv("VLMTUNE_PROGRESS", "0")
    recipe = validate(compose_recipe([
        "experiment=demo", f"cache_dir={shared_cache}", f"output_root={root / 'outputs'}",
        f"tracking.uri=sqlite:///{root / 'mlflow.db'}", *TINY]))
    result = run_pipeline(recipe)
    mp.undo()
    return result, recipe


@pytest.fixture(scope="module")
def expected(demo_run):
    """``generate(label, prompt_text, image_paths) -> text``: greedy generation of the base
    (the recipe's model) or tuned (``merged/``) model through evaluation's generation."""
    result, recipe = demo_run
    dirs = {"base": ensure_model_dir(recipe.model), "tuned": result.run_dir / "merged"}
    template = get_template(recipe.model.chat_template)
    scorers = {label: MultipleChoiceScorer(load_model(path, recipe.model), template, None)
               for label, path in dirs.items()}

    def generate(label: str, text: str, images: list[Path]) -> str:
        scorer = scorers[label]
        encoded = scorer.lm.images.encode([open_image(p) for p in images])
        for block in encoded.blocks:
            text = text.replace("<image>", block, 1)
        ids = scorer.tok(text, add_special_tokens=True)["input_ids"]
        out = scorer.generate_ids([(ids, encoded.tensors)], MAX_NEW)[0]
        return scorer.tok.decode(out, skip_special_tokens=True)

    return generate


def heldout_photo(run_dir: Path) -> tuple[Path, str]:
    """The first held-out record's photo and question (its ``<image>`` line removed)."""
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    rec = json.loads((run_dir / "data" / "heldout.jsonl").read_text().splitlines()[0])
    image = rec["image"] if isinstance(rec["image"], str) else rec["image"][0]
    question = rec["conversations"][0]["value"].replace("<image>\n", "")
    return Path(manifest["image_root"]) / image, question


def user(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def system() -> str:
    return f"<|im_start|>system\n{INTERNVL2_SYSTEM}<|im_end|>\n"


def vlmtune(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    return subprocess.Popen([sys.executable, "-m", "vlmtune.cli", *args], env=env,
                            text=True, **kwargs)


def test_chat_multi_turn_with_image_and_base_toggle(demo_run, expected, app_server):
    result, _ = demo_run
    photo, _ = heldout_photo(result.run_dir)
    q1, q2, q3 = "What dish is this?", "And its \nmain ingredient?", "Which region?"
    script = (f"/image {photo}\n{q1}\nAnd its \\\nmain ingredient?\n/base\n{q3}\n"
              f"/reset\n/quit\n")
    proc = vlmtune("chat", str(result.run_dir), "--max-new-tokens", str(MAX_NEW),
                   "--device", "cpu", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE)
    out, err = proc.communicate(script, timeout=300)
    assert proc.returncode == 0, err

    prompt = system() + user(f"<image>\n{q1}")
    a1 = expected("tuned", prompt, [photo])
    prompt += a1 + "<|im_end|>\n" + user(q2)
    a2 = expected("tuned", prompt, [photo])
    prompt += a2 + "<|im_end|>\n" + user(q3)
    a3 = expected("base", prompt, [photo])
    assert f"tuned> {a1}\n" in out
    assert f"tuned> {a2}\n" in out
    assert "(now talking to the base model)" in out
    assert f"base> {a3}\n" in out
    assert out.index(f"tuned> {a2}") < out.index(f"base> {a3}")
    assert "(conversation cleared)" in out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_server(demo_run):
    """``vlmtune app RUN`` started on a free localhost port (it starts while the chat test
    runs), or None without Gradio; stopped after the module."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        yield None
        return
    result, _ = demo_run
    port = free_port()
    log_path = result.run_dir.parent / "app.log"
    with log_path.open("w") as log:
        proc = vlmtune("app", str(result.run_dir), "--port", str(port), "--device", "cpu",
                       stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc, f"http://127.0.0.1:{port}", log_path
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def app_url(app_server):
    """The app's address, once it answers."""
    if app_server is None:
        pytest.skip("the app extra (gradio) is not installed: make app")
    proc, url, log_path = app_server
    deadline = time.monotonic() + 240
    while True:
        assert proc.poll() is None, log_path.read_text()
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return url
        except OSError:
            assert time.monotonic() < deadline, "vlmtune app did not start in 240 s"
            time.sleep(0.5)


def test_app_compare_api_gives_greedy_base_and_tuned(demo_run, expected, app_url):
    from gradio_client import Client, handle_file

    result, _ = demo_run
    photo, question = heldout_photo(result.run_dir)
    base, tuned = Client(app_url, verbose=False).predict(
        handle_file(str(photo)), question, MAX_NEW, 0.0, api_name="/compare")
    prompt = system() + user(f"<image>\n{question}")
    assert (base, tuned) == (expected("base", prompt, [photo]),
                             expected("tuned", prompt, [photo]))


def test_app_page_in_headless_chromium(demo_run, expected, app_url):
    browser, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver_bin):
        pytest.skip("chromium / chromedriver not installed (make test installs them as root "
                    "with apt-get)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    result, recipe = demo_run
    photo, _ = heldout_photo(result.run_dir)
    question = "What dish is this?"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(driver_bin), options=options)
    try:
        driver.get(app_url)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "likelihood/accuracy" in body  # the headline metrics table
        assert result.mlflow_run_id in body  # the MLflow run link
        assert "Held-out photos" in body
        driver.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(photo))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo img"))
        driver.find_element(By.CSS_SELECTOR, "#question textarea").send_keys(question)
        max_new = driver.find_element(By.CSS_SELECTOR, "#max-new-tokens input[type=number]")
        max_new.send_keys(Keys.CONTROL, "a")
        max_new.send_keys(str(MAX_NEW), Keys.TAB)
        wait.until(lambda d: d.find_element(
            By.CSS_SELECTOR, "#max-new-tokens input[type=range]").get_attribute("value")
            == str(MAX_NEW))
        driver.find_element(By.CSS_SELECTOR, "#compare").click()
        want = {label: expected(label, system() + user(f"<image>\n{question}"), [photo])
                for label in ("base", "tuned")}

        def answers(d) -> dict[str, str]:
            return {label: d.find_element(By.CSS_SELECTOR, f"#{label}-answer textarea")
                    .get_attribute("value") for label in ("base", "tuned")}

        try:
            wait.until(lambda d: answers(d) == want)
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / "app.png"))
        assert answers(driver) == want
    finally:
        driver.quit()


def test_the_registry_champion_resolves_to_the_run(demo_run):
    from vlmtune.app.session import resolve_target

    result, recipe = demo_run
    target = resolve_target("models:/vlmtune-demo@champion", str(recipe.tracking.uri), "cpu")
    assert target.run_dir == result.run_dir
    assert target.tuned == (result.run_dir / "merged", None)
