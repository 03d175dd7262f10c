"""The Gradio app end to end: one real server on a free local port for the module, driven by gradio_client and
by headless Chromium (one desktop page and one phone page), with the tiny test pair as the default."""

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
needs_chromium = pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian chromium is not installed")
LONG_TEXT = ("def f(x):\n    return x * 2  # héllo 世界 👋 مرحبا\n" * 80)[:3000]


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
    fixed = client.predict("tiny-target", "tiny-draft", "def add(a, b):", False, 24, 0.0, 1.0, 5, 8, "tokentiming", -1,
                           False, 0, api_name="/generate")  # adaptive, top_k: the new trailing parameters
    assert fixed["token_ids"] == result["token_ids"]  # greedy: the target's own tokens either way
    alignment = client.predict("print('héllo 世界')", "tiny-draft", "tiny-target", 8, api_name="/align")
    assert alignment["warping_path"][0] == [0, 0]
    assert alignment["warping_path"][-1] == [len(alignment["draft_tokens"]) - 1, len(alignment["proxy_tokens"]) - 1]
    assert "cost_matrix" not in alignment and alignment["banded_cells"]
    with pytest.raises(Exception, match="unknown model"):
        client.predict("not a model!", "tiny-draft", "x", False, 4, 0.0, 1.0, 5, 8, "tokentiming", -1,
                       api_name="/generate")


# -- the page in a browser ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(server, browser):
    """One desktop page shared by the tests below, in order: each starts where the last one left it."""
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(server)
    page.wait_for_selector("#heatmap .js-plotly-plot", timeout=60_000)
    yield page
    page.close()


def plot_title(page, plot: str) -> str:
    return page.evaluate(f"document.querySelector('{plot} .js-plotly-plot').layout.title.text")


def overlapping_parts(page, plot: str) -> list:
    """Pairs of a plot's title, axis titles and legend whose boxes overlap on screen."""
    return page.evaluate("""(plot) => {
      const root = document.querySelector(plot + ' .js-plotly-plot');
      const parts = ['.gtitle', '.xtitle', '.ytitle', '.legend'].flatMap(
        (s) => [...root.querySelectorAll(s)].map((e) => [s, e.getBoundingClientRect()]));
      const hits = [];
      for (let a = 0; a < parts.length; a++) for (let b = a + 1; b < parts.length; b++) {
        const [n, p] = parts[a], [m, q] = parts[b];
        if (p.width && q.width && p.left < q.right && q.left < p.right && p.top < q.bottom && q.top < p.bottom)
          hits.push([n, m]);
      }
      return hits;
    }""", plot)


def wait_idle(page, timeout=120_000):
    from playwright.sync_api import expect

    expect(page.locator("#generate")).to_be_enabled(timeout=timeout)


def no_replacement_characters(page) -> None:
    """Byte pieces must read <0xE4>, never U+FFFD, in text and in every plot's labels."""
    text = page.evaluate("document.body.innerText + [...document.querySelectorAll('svg text')]"
                         ".map((t) => t.textContent).join(' ')")
    assert "\ufffd" not in text


@needs_chromium
def test_page_opens_on_an_explorable_recorded_run_with_the_tiny_pair_note_and_clear_plots(page):
    from playwright.sync_api import expect

    expect(page.locator("#tiny-note")).to_contain_text("plumbing test pair")
    expect(page.locator("#stats")).to_contain_text("Recorded run")
    assert page.locator("#output-text .tt-token").count() > 10
    assert "nothing proposed" not in page.locator("#round-detail").inner_text()  # not the draftless last round
    for plot in ("#heatmap", "#mapping", "#acceptance", "#throughput"):
        assert overlapping_parts(page, plot) == [], plot
    assert page.evaluate("document.querySelector('#heatmap .js-plotly-plot').data[0].zmax") == 8
    legend = page.locator("#output-text .tt-legend").inner_text()
    assert all(name in legend for name in ("accepted proxy", "target correction", "bonus token", "target alone"))
    no_replacement_characters(page)


@needs_chromium
def test_generate_shows_output_in_view_and_a_token_click_selects_its_round(page):
    from playwright.sync_api import expect

    page.click("#load")
    expect(page.locator("#target-status")).to_contain_text("M parameters", timeout=60_000)
    expect(page.locator("#pair-facts")).to_contain_text("byte-level BPE", timeout=60_000)
    page.click("#generate")
    expect(page.locator("#stats")).not_to_contain_text("Recorded run", timeout=60_000)
    wait_idle(page)
    expect(page.locator("#stats")).to_contain_text("Target alone")
    box = page.locator("#output-text").bounding_box()
    assert 0 <= box["y"] < 1000 - 60, "the output is below the fold"
    assert "speedup" in plot_title(page, "#throughput")

    token = page.locator("#output-text .tt-token").nth(6)
    index = token.get_attribute("data-round")
    token.click()
    expect(page.locator("#round-detail")).to_contain_text(f"round {index}", timeout=20_000)
    expect(page.locator("#round-slider input[type=number]")).to_have_value(index)
    expect(page.locator("#follow-live input")).not_to_be_checked()
    page.wait_for_function(f"document.querySelector('#heatmap .js-plotly-plot').layout.title.text"
                           f".startsWith('Round {index}:')", timeout=20_000)


@needs_chromium
def test_an_error_leaves_earlier_results_on_the_page(page):
    from playwright.sync_api import expect

    tokens = page.locator("#output-text").inner_text()
    stats = page.locator("#stats").inner_text()
    page.locator("#prompt textarea").fill("")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("Type a prompt", timeout=30_000)
    wait_idle(page)
    assert page.locator("#output-text").inner_text() == tokens and page.locator("#stats").inner_text() == stats
    for plot in ("#heatmap", "#mapping", "#acceptance", "#throughput"):
        expect(page.locator(f"{plot} .js-plotly-plot")).to_be_visible()
    assert page.get_by_text("Error", exact=True).count() == 0

    spec = page.locator("#target-spec input")
    spec.fill("not a model!")
    spec.press("Enter")
    page.click("#load")
    expect(page.locator("#status")).to_contain_text("unknown model", timeout=30_000)
    expect(page.locator("#target-status")).to_contain_text("tiny-target")  # the loaded target stays
    expect(page.locator("#draft-status")).to_contain_text("M parameters")
    spec.fill("tiny-target")
    spec.press("Enter")
    page.locator("#prompt textarea").fill("def quicksort(items):")


@needs_chromium
def test_slider_keeps_the_users_round_while_streaming_and_stop_reports_without_a_speedup(page):
    from playwright.sync_api import expect

    # A run that streams for long enough to pick a round and see updates after it, on any machine: the tiny
    # pair writes 480 tokens in about 1.5 s with the default settings (once faster than the pick), and in
    # about 18 s drafting 64 tokens every round.
    limit = page.locator("#max-new-tokens input[type=number]")
    limit.fill("480")
    limit.press("Enter")
    draft_tokens = page.locator("#num-draft-tokens input[type=number]")
    draft_tokens.fill("64")
    draft_tokens.press("Enter")
    page.locator("#adaptive input").uncheck()
    before = page.locator("#stats").inner_text()
    page.click("#generate")
    page.wait_for_function(f"document.querySelector('#stats').innerText !== {before!r}", timeout=60_000)
    page.wait_for_function("Number(document.querySelector('#round-slider input[type=number]').max) >= 3",
                           timeout=60_000)
    slider = page.locator("#round-slider input[type=number]")
    slider.fill("2")
    slider.press("Enter")
    rounds_at_pick = int(slider.get_attribute("max"))
    expect(page.locator("#follow-live input")).not_to_be_checked(timeout=10_000)
    page.wait_for_timeout(4500)  # two plot redraws of the live stream
    expect(page.locator("#stop")).to_be_enabled()  # still streaming
    assert int(slider.get_attribute("max")) > rounds_at_pick, "no update came after the pick: nothing was tested"
    assert slider.input_value() == "2"
    assert plot_title(page, "#heatmap").startswith("Round 2:")
    assert page.locator("#round-detail").inner_text().startswith("Round 2")


    # Stop: the same run, still streaming, cancelled; the page says how far it got and computes no speedup.
    expect(page.locator("#stop")).to_be_enabled()
    page.click("#stop")
    expect(page.locator("#status")).to_contain_text("Stopped after", timeout=30_000)
    assert "×" not in page.locator("#stats").inner_text()
    assert "speedup" not in plot_title(page, "#throughput")
    expect(page.locator("#stop")).to_be_disabled()
    page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)


@needs_chromium
def test_playground_renders_a_3000_character_text_quickly_in_a_bounded_page(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Alignment").click()
    page.locator("#play-text textarea").fill(LONG_TEXT)
    start = time.perf_counter()
    page.click("#align")
    expect(page.locator("#play-summary")).to_contain_text("path length", timeout=20_000)
    page.wait_for_selector("#play-heatmap .js-plotly-plot", timeout=20_000)
    assert time.perf_counter() - start < 20
    assert page.evaluate("document.body.scrollHeight") < 4000
    assert "<0x" in page.locator("#play-table").inner_text()
    no_replacement_characters(page)
    assert overlapping_parts(page, "#play-heatmap") == []

    window = page.locator("#play-window input[type=number]")
    window.fill("300")
    window.press("Enter")
    page.wait_for_function("document.querySelector('#play-heatmap .js-plotly-plot').layout.title.text"
                           ".includes('draft 300')", timeout=20_000)


@needs_chromium
def test_phone_layout_has_no_sideways_scroll_and_full_size_plots(server, browser):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(server)
    page.wait_for_selector("#heatmap .js-plotly-plot", timeout=60_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.locator("#tiny-note").is_visible()
    for plot in ("#heatmap", "#acceptance"):
        assert overlapping_parts(page, plot) == [], plot
        assert page.locator(f"{plot} .js-plotly-plot").bounding_box()["height"] >= 300
    page.get_by_role("tab", name="Alignment").click()
    page.click("#align")
    page.wait_for_selector("#play-heatmap .js-plotly-plot", timeout=30_000)
    assert page.locator("#play-heatmap .js-plotly-plot").bounding_box()["height"] >= 300
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.close()
