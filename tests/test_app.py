"""The Gradio app end to end: a real server on a free local port, driven by headless Chromium and by
gradio_client, with the tiny test pair as the default."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    env = dict(os.environ, TOKENTIMING_PAIR="tiny", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    log = open(ARTIFACTS.mkdir(exist_ok=True) or ARTIFACTS / "app-server.log", "w")
    process = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"app exited early; see {log.name}")
            time.sleep(0.5)
    else:
        process.kill()
        raise RuntimeError("app did not start within 120 s")
    yield url
    process.terminate()
    process.wait(timeout=30)
    log.close()


def test_api_endpoints_with_gradio_client(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    result = client.predict("tiny-target", "tiny-draft", "def add(a, b):", False, 24, 0.0, 1.0, 5, 8, "tokentiming", -1,
                            api_name="/generate")
    assert len(result["token_ids"]) == 24 or result["stop_reason"] == "eos"
    assert result["stats"]["rounds"] == len(result["rounds"]) > 0
    assert result["stats"]["accepted"] > 0
    alignment = client.predict("print('héllo 世界')", "tiny-draft", "tiny-target", 8, api_name="/align")
    assert alignment["warping_path"][0] == [0, 0]
    assert alignment["warping_path"][-1] == [len(alignment["draft_tokens"]) - 1, len(alignment["proxy_tokens"]) - 1]
    with pytest.raises(Exception, match="unknown model"):
        client.predict("not a model!", "tiny-draft", "x", False, 4, 0.0, 1.0, 5, 8, "tokentiming", -1,
                       api_name="/generate")


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian chromium is not installed (.ci/run installs it)")
def test_browser_generate_inspect_and_errors(server):
    from playwright.sync_api import expect, sync_playwright

    def plot_title(selector):
        return page.evaluate(f"document.querySelector('{selector} .js-plotly-plot').layout.title.text")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2200})
        page.goto(server)
        page.click("#load")
        expect(page.locator("#target-status")).to_contain_text("M parameters", timeout=60_000)
        expect(page.locator("#pair-facts")).to_contain_text("byte-level BPE", timeout=60_000)

        page.click("#generate")
        expect(page.locator("#stats")).to_contain_text("Target alone", timeout=120_000)
        assert page.locator("#output-text .tt-token").count() > 10
        for plot in ("#heatmap", "#mapping", "#acceptance", "#throughput"):
            expect(page.locator(f"{plot} .js-plotly-plot")).to_be_visible()
        traces = page.evaluate("document.querySelector('#heatmap .js-plotly-plot').data.map(t => t.type)")
        assert traces == ["heatmap", "heatmap", "scatter"]  # costs, band shading, warping path
        assert "speedup" in plot_title("#throughput")
        last = plot_title("#heatmap")

        slider = page.locator("#round-slider input[type=number]")
        slider.fill("0")
        slider.press("Enter")
        expect(page.locator("#round-detail")).to_contain_text("Round 0", timeout=20_000)
        page.wait_for_function(f"document.querySelector('#heatmap .js-plotly-plot').layout.title.text !== {last!r}",
                               timeout=20_000)
        assert plot_title("#heatmap").startswith("Round 0")
        page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)

        # Stop: a long generation is cancelled and the page stays usable.
        limit = page.locator("#max-new-tokens input[type=number]")
        limit.fill("512")
        limit.press("Enter")
        before = page.locator("#stats").inner_text()
        page.click("#generate")
        page.wait_for_function(f"!document.querySelector('#stats').innerText.includes({before!r})", timeout=60_000)
        page.locator("#stop").click(timeout=90_000)
        page.wait_for_timeout(1500)
        stopped = page.locator("#stats").inner_text()
        page.wait_for_timeout(3000)
        assert page.locator("#stats").inner_text() == stopped, "generation went on after Stop"
        assert "512 tokens" not in stopped

        spec = page.locator("#target-spec input")
        spec.fill("not a model!")
        spec.press("Enter")
        page.click("#load")
        expect(page.get_by_text("unknown model").first).to_be_visible(timeout=30_000)
        spec.fill("tiny-target")
        spec.press("Enter")
        page.click("#load")
        expect(page.locator("#target-status")).to_contain_text("M parameters", timeout=60_000)

        page.get_by_role("tab", name="Alignment playground").click()
        page.click("#align")
        expect(page.locator("#play-summary")).to_contain_text("path length", timeout=30_000)
        expect(page.locator("#play-heatmap .js-plotly-plot")).to_be_visible()
        browser.close()
