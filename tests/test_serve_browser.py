"""The server's page and a run's report.html in a real browser: Debian's headless Chromium
driven by Selenium (no browser download). Screenshots go under the test's tmp directory.

Skipped only when ``/usr/bin/chromium`` is absent; ``.ci/run`` installs it, so CI runs this.
"""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.serving import ServerProcess, build_real_bundle

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and DRIVER.exists()),
        reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
    ),
]
# the machine's network is closed: without these Chromium stalls on its background fetches
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1200,1000",
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(str(DRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("models")
    build_real_bundle(root, "tiny")
    proc = ServerProcess(root)
    yield proc
    assert proc.stop() == 0


def first_paint_ms(driver: Any) -> float:
    """The page's first contentful paint (performance timing), waited for (bounded)."""
    driver.set_script_timeout(10)
    return float(
        driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "new PerformanceObserver((list) => {"
            "  const e = list.getEntriesByName('first-contentful-paint')[0];"
            "  if (e) done(e.startTime);"
            "}).observe({type: 'paint', buffered: true});"
        )
    )


def wait_for(check: Any, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)  # the page updates on its own clock; poll it, bounded
    raise AssertionError("the page did not get there in time")


def test_page_classifies_a_text_and_its_live_plots_move(
    browser: Any, server: ServerProcess, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    rows = browser.find_elements(By.CSS_SELECTOR, "#models tbody tr")
    assert [r.find_element(By.TAG_NAME, "th").text for r in rows] == ["tiny"]
    assert "loaded" in rows[0].text and "onnx" in rows[0].text
    assert first_paint_ms(browser) < 1000  # a shared CI machine; bench/serve_page.py measures
    browser.save_screenshot(str(tmp_path / "page.png"))

    plot = "#live-tiny .plot-rps polyline"
    before = browser.find_element(By.CSS_SELECTOR, plot).get_attribute("points") or ""
    text = browser.find_element(By.ID, "try-text")
    text.send_keys("a great film, good plot")
    browser.find_element(By.ID, "try-go").click()
    result = browser.find_element(By.ID, "try-result")
    assert result.get_attribute("aria-live") == "polite"
    bars = wait_for(lambda: result.find_elements(By.CSS_SELECTOR, ".bars li"))
    assert {b.find_element(By.CLASS_NAME, "name").text.split()[0] for b in bars} == {
        "neg",
        "pos",
        "mixed",
    }
    assert "Top label" in result.text
    browser.save_screenshot(str(tmp_path / "classified.png"))
    for _ in range(5):  # more traffic for the plots
        browser.find_element(By.ID, "try-go").click()
        time.sleep(0.2)

    def moved() -> bool:
        rps = browser.find_element(By.CSS_SELECTOR, "#live-tiny .plot-rps b").text
        after = browser.find_element(By.CSS_SELECTOR, plot).get_attribute("points") or ""
        return after != before and rps not in ("", "0", "–") and float(rps) > 0

    wait_for(moved, 15)
    latency = browser.find_element(By.CSS_SELECTOR, "#live-tiny .plot-latency b").text
    assert latency != "– / –"
    browser.save_screenshot(str(tmp_path / "live.png"))
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert (tmp_path / "live.png").stat().st_size > 1000


def test_docs_page_opens(browser: Any, server: ServerProcess, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/docs")
    heads = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    assert "POST /v1/models/{name}/predict" in heads and "POST /v2/models/{name}/infer" in heads
    browser.save_screenshot(str(tmp_path / "docs.png"))


def test_report_html_shows_its_plots(browser: Any, tmp_path: Path) -> None:
    import numpy as np
    from selenium.webdriver.common.by import By
    from test_report_html import TARGETS, VARIANTS

    from modelyard.choice import choose
    from modelyard.plots import plot_learning_curves
    from modelyard.report.html import ReportContent, write_report
    from modelyard.report.tradeoff import variants_plot

    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e} for e in (1, 2, 3)]
    choices = choose(TARGETS, VARIANTS)
    report = write_report(
        ReportContent(
            name="demo",
            task="binary",
            metric="accuracy",
            data={"train": "data/train.csv"},
            test_metrics={"accuracy": float(np.float32(0.9))},
            variants=VARIANTS,
            choices=choices,
            targets=TARGETS,
            tradeoff_png=variants_plot(VARIANTS, choices, tmp_path / "v.png", metric="accuracy"),
            images={"Learning curves": plot_learning_curves(history, tmp_path / "c.png")},
        ),
        tmp_path / "report.html",
    )
    browser.get(report.resolve().as_uri())
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) >= 2
    for img in images:  # decoded and drawn, not a broken-image box
        assert browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0;", img
        )
    browser.save_screenshot(str(tmp_path / "report.png"))
    assert os.path.getsize(tmp_path / "report.png") > 1000


def test_page_behind_api_keys_uses_the_key_the_browser_was_given(
    browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    build_real_bundle(tmp_path / "models", "tiny")
    (tmp_path / "keys").write_text("page-key\n")
    server = ServerProcess(tmp_path / "models", "--api-key-file", str(tmp_path / "keys"))
    try:
        # what a person types into the browser's Basic prompt, here in the URL
        browser.get(server.url.replace("http://", "http://me:page-key@") + "/")
        assert browser.find_elements(By.CSS_SELECTOR, "#models tbody tr")
        browser.find_element(By.ID, "try-text").send_keys("good film")
        browser.find_element(By.ID, "try-go").click()
        result = browser.find_element(By.ID, "try-result")
        wait_for(lambda: result.find_elements(By.CSS_SELECTOR, ".bars li"))
        wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#live-tiny .plot-rps b").text)
        assert "unavailable" not in browser.find_element(By.ID, "live-note").text
        browser.save_screenshot(str(tmp_path / "with-keys.png"))
    finally:
        assert server.stop() == 0


def test_chat_streams_a_reply_and_stop_cuts_one_short(browser: Any, tmp_path: Path) -> None:
    """A toy generator (the engine's interface, a token every 50 ms) beside a toy classifier."""
    from helpers.generation import ThreadServer, ToyGenerator, mixed_loader
    from helpers.serving import toy_repo
    from selenium.webdriver.common.by import By

    from modelyard.config import ServeConfig
    from modelyard.serving import create_app

    generator = ToyGenerator("chat", delay_s=0.05)
    repo = toy_repo(tmp_path / "models", {"chat": [1], "toy": [1]})
    app = create_app(str(repo), ServeConfig(), loader=mixed_loader({"chat": generator}), poll=False)
    with ThreadServer(app) as server:
        browser.get(server.url + "/")
        assert browser.find_element(By.ID, "chat-section").is_displayed()
        tokens = browser.find_element(By.ID, "chat-max-tokens")
        tokens.clear()
        tokens.send_keys("8")
        browser.find_element(By.ID, "chat-text").send_keys("hello")
        browser.find_element(By.ID, "chat-send").click()
        replies = ".msg.assistant"
        seen = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, replies + " .text"))
        partial = wait_for(lambda: seen[0].text.strip() and seen[0].text)  # tokens as they come
        done = wait_for(
            lambda: browser.find_element(By.CSS_SELECTOR, replies).get_attribute("data-done")
        )
        assert done == "finished" and seen[0].text.split() == [f"w{i}" for i in range(8)]
        assert len(partial.split()) <= 8
        browser.save_screenshot(str(tmp_path / "chat.png"))

        tokens.clear()
        tokens.send_keys("60")
        browser.find_element(By.ID, "chat-text").send_keys("again, longer")
        browser.find_element(By.ID, "chat-send").click()
        second = lambda: browser.find_elements(By.CSS_SELECTOR, replies)[1]  # noqa: E731
        wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, replies)) == 2)
        wait_for(lambda: len(second().find_element(By.CLASS_NAME, "text").text.split()) >= 3)
        browser.find_element(By.ID, "chat-stop").click()
        assert wait_for(lambda: second().get_attribute("data-done")) == "stopped"
        cut = len(second().find_element(By.CLASS_NAME, "text").text.split())
        assert 3 <= cut < 60
        wait_for(lambda: generator.cut >= 1)  # the server stopped generating too
        browser.save_screenshot(str(tmp_path / "chat-stopped.png"))


def test_a_real_server_classifies_and_streams_a_gguf_chat_that_stop_cuts_short(
    browser: Any, tmp_path: Path
) -> None:
    """`modelyard serve` (a process) holding a classifier and a GGUF bundle on llama.cpp: the
    page classifies a text, streams a chat reply and stops a long one mid-way."""
    from helpers.tiny_llm import tiny_gguf_bundle, tiny_llama_dir, tiny_tokenizer
    from selenium.webdriver.common.by import By

    root = tmp_path / "models"
    build_real_bundle(root, "tiny")
    # a random llama wide enough that a long greedy answer takes seconds (it rarely ends itself)
    model_dir = tiny_llama_dir(tmp_path / "hf", tiny_tokenizer(), positions=4096, width=512)
    tiny_gguf_bundle(root, model_dir, name="tiny-llm")
    server = ServerProcess(root, "--generation-threads", "1", "--generation-slots", "2")
    browser.get_log("browser")  # what earlier pages logged (a stopped server's polls) is theirs
    try:
        browser.get(server.url + "/")
        rows = browser.find_elements(By.CSS_SELECTOR, "#models tbody tr")
        names = {r.find_element(By.TAG_NAME, "th").text: r.text for r in rows}
        assert set(names) == {"tiny", "tiny-llm"} and "gguf" in names["tiny-llm"]
        browser.find_element(By.ID, "try-text").send_keys("a great film")
        browser.find_element(By.ID, "try-go").click()
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#try-result .bars li"))

        tokens = browser.find_element(By.ID, "chat-max-tokens")
        tokens.clear()
        tokens.send_keys("6")
        browser.find_element(By.ID, "chat-text").send_keys("What is a cat?")
        browser.find_element(By.ID, "chat-send").click()
        replies = ".msg.assistant"
        first = lambda: browser.find_elements(By.CSS_SELECTOR, replies)[0]  # noqa: E731
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, replies))
        assert wait_for(lambda: first().get_attribute("data-done"), 30) == "finished"
        assert first().find_element(By.CLASS_NAME, "text").text.strip()
        browser.save_screenshot(str(tmp_path / "gguf-chat.png"))

        temperature = browser.find_element(By.ID, "chat-temperature")
        temperature.clear()
        temperature.send_keys("0")
        tokens.clear()
        tokens.send_keys("4000")
        browser.find_element(By.ID, "chat-text").send_keys("Once upon a time")
        browser.find_element(By.ID, "chat-send").click()
        second = lambda: browser.find_elements(By.CSS_SELECTOR, replies)[1]  # noqa: E731
        wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, replies)) == 2)
        wait_for(lambda: second().find_element(By.CLASS_NAME, "text").text.strip(), 30)
        browser.find_element(By.ID, "chat-stop").click()
        assert wait_for(lambda: second().get_attribute("data-done"), 30) == "stopped"
        browser.save_screenshot(str(tmp_path / "gguf-chat-stopped.png"))

        def slots_free() -> bool:  # the server stopped generating too
            metrics = urllib.request.urlopen(server.url + "/metrics", timeout=5).read().decode()
            running = [
                line
                for line in metrics.splitlines()
                if line.startswith("vllm:num_requests_running{")
            ]
            return bool(running) and all(line.endswith(" 0.0") for line in running)

        wait_for(slots_free, 30)
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not [e for e in severe if server.url in e["message"]], severe
    finally:
        assert server.stop() == 0
