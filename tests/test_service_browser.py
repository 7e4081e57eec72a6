"""The web page in a real browser: Debian's headless Chromium driven by Playwright adds a file
stream, waits for its segments on the timeline, asks a question and checks that the streamed
answer and its evidence (thumbnails with times) render; a screenshot goes to the test's tmp dir."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("playwright.sync_api")

from agent_helpers import color_video
from playwright import sync_api
from service_helpers import KEY, LiveServer, load_llm, make_service
from test_ingest_live import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")


def test_page_adds_a_stream_shows_segments_and_answers_with_evidence(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    color_video(media / "colors.mp4", [("red", 3.0), ("green", 3.0), ("blue", 3.0)])
    service = make_service(load_llm(tmp_path / "llava"), tmp_path / "mem", media, max_new_tokens=8)
    with LiveServer(service, free_port()) as server, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(server.url + "/")
        page.fill("#key", KEY)
        page.click("#connect")
        page.wait_for_function("document.getElementById('conn-state').textContent === 'connected'", timeout=20_000)
        page.fill("#stream-id", "cam")
        page.fill("#stream-source", "colors.mp4")
        page.click("#add-stream")
        page.wait_for_selector("#streams tbody tr[data-stream='cam']", timeout=20_000)
        page.wait_for_function(
            "document.querySelector(\"#streams tr[data-stream='cam'] .state\")?.textContent === 'done'",
            timeout=60_000,
        )
        page.wait_for_function("document.querySelectorAll('.timeline .seg').length >= 3", timeout=20_000)
        page.wait_for_function("document.querySelectorAll('#events li.segment').length >= 3", timeout=20_000)
        segments = page.locator(".timeline .seg").count()
        assert "tokens held" in page.inner_text("#budget-text")
        page.fill("#question", "What colour is the square?")
        page.click("#ask")
        page.wait_for_function("document.getElementById('answer').dataset.state === 'done'", timeout=60_000)
        answer = page.inner_text("#answer-text")
        cards = page.locator("#evidence .evidence")
        n_cards = cards.count()
        assert answer.strip() and n_cards >= 1
        page.wait_for_function(
            "[...document.querySelectorAll('#evidence img')].every(i => i.complete && i.naturalWidth > 0)",
            timeout=20_000,
        )
        assert "cam 0:0" in page.inner_text("#evidence")  # stream and clock time under each thumbnail
        cards.first.click()  # evidence is clickable: the key frame opens and the segment lights up
        page.wait_for_function("document.getElementById('preview-img').naturalWidth > 0", timeout=20_000)
        assert page.locator(".timeline .seg.highlight").count() == 1
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    service.memory.close()
    assert shot.stat().st_size > 10_000 and segments >= 3
    assert errors == [], errors
    print(f"\nscreenshot: {shot} ({segments} segments on the timeline, {n_cards} evidence cards)")
