"""The demo in a real browser: Debian's headless Chromium driven by Playwright, one screenshot per tab.

Screenshots go to a temporary folder, or to ``$DINO_DEMO_SCREENSHOTS`` when set (that is how
docs/images/demo-*.png are made: ``DINO_DEMO_SCREENSHOTS=docs/images pytest tests/demo/test_demo_browser.py``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]' (or '.[dev]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install -e '.[dev]'")

from demo.gallery import sample_copy, sample_gallery, sample_video  # noqa: E402

# Debian's package; Playwright's own browser download is not used (it needs a CDN this project cannot assume).
CHROMIUM = Path(os.environ.get("DINO_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1000}
# Model work on a loaded 2-core machine; the page itself answers in well under a second.
RESULT_TIMEOUT_MS = 180_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*"),
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason=f"no Chromium at {CHROMIUM} (as root, `bash scripts/setup.sh dev` installs Debian's chromium; "
        "or set DINO_CHROMIUM)",
    ),
]


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("DINO_DEMO_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser_page(demo_server) -> Iterator[object]:
    """A fresh Chromium profile showing the demo page; closed after the module's tests."""
    with sync_api.sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="dino-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS, viewport=VIEWPORT
        )
        try:
            page = context.new_page()
            page.goto(demo_server.url)
            page.locator("#attention-photo").wait_for()
            yield page
        finally:
            context.close()


def _open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _upload(page, component_id: str, path: Path) -> None:
    page.locator(f"#{component_id} input[type=file]").set_input_files(str(path))


def _run_tab(page, tab: str, uploads: dict[str, Path], shown: str, run: str) -> None:
    """Open a tab, upload files into components (by elem_id), wait until `shown` is displayed, press `run`."""
    _open_tab(page, tab)
    for component_id, path in uploads.items():
        _upload(page, component_id, path)
    page.locator(shown).first.wait_for()
    page.locator(run).click()


def _shoot(page, folder: Path, tab: str) -> Path:
    """A full-page screenshot, without the notification toasts that would cover the page's top right."""
    for close in page.locator(".toast-close").all():
        close.click()
    page.locator(".toast-close").first.wait_for(state="detached")
    path = folder / f"demo-{tab}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a real rendering, not a blank page
    return path


def test_page_states_the_weights_and_their_quality(browser_page) -> None:
    notice = browser_page.locator("#weights-notice").inner_text()
    assert "`default`" not in notice  # rendered as code, not as backticks
    assert "dinov2_vits14_imgfocus" in notice and "MODEL_CARD" in notice and "fine-tuned for saliency" in notice


def test_attention_tab_shows_heatmaps_and_masks(browser_page, demo_server, screenshots) -> None:
    page = browser_page
    photo = next(path for path in sample_gallery(demo_server.cache_dir) if path.stem == "dino-butterfly")
    _run_tab(page, "Attention", {"attention-photo": photo}, "#attention-photo img", "#attention-run")
    heads = page.locator("#attention-heads img")
    heads.nth(demo_server.heads - 1).wait_for(timeout=RESULT_TIMEOUT_MS)
    page.locator("#attention-masks img").nth(demo_server.heads).wait_for(timeout=RESULT_TIMEOUT_MS)
    for output in ("#attention-mean img", "#attention-ncut img"):
        page.locator(output).wait_for(timeout=RESULT_TIMEOUT_MS)
        assert page.locator(output).evaluate("img => img.naturalWidth") > 0  # the browser decoded it
    assert heads.count() == demo_server.heads
    _shoot(page, screenshots, "attention")


def test_search_tab_shows_results(browser_page, demo_server, screenshots) -> None:
    page = browser_page
    query = next(path for path in sample_gallery(demo_server.cache_dir) if path.stem == "skimage-astronaut")
    _run_tab(page, "Search", {"search-query": query}, "#search-query img", "#search-run")
    page.locator("#search-results img").nth(3).wait_for(timeout=RESULT_TIMEOUT_MS)
    page.get_by_text("1.000 · skimage-astronaut.jpg").first.wait_for()
    _shoot(page, screenshots, "search")


def test_copy_tab_gives_a_verdict(browser_page, demo_server, screenshots) -> None:
    page = browser_page
    pair = sample_copy(demo_server.cache_dir)
    _run_tab(page, "Copy check", {"copy-a": pair.original, "copy-b": pair.copy}, "#copy-b img", "#copy-run")
    page.locator("#copy-verdict").get_by_text("threshold").wait_for(timeout=RESULT_TIMEOUT_MS)
    _shoot(page, screenshots, "copy")


def test_video_tab_returns_a_playable_overlay(browser_page, demo_server, screenshots) -> None:
    page = browser_page
    clip = sample_video(demo_server.cache_dir)
    _run_tab(page, "Video", {"video-input": clip.video, "video-mask": clip.first_mask}, "#video-mask img", "#video-run")
    page.locator("#video-notice").get_by_text("frames propagated").wait_for(timeout=RESULT_TIMEOUT_MS)
    result = page.locator("#video-result video")
    result.wait_for()
    # readyState ≥ 1: the browser parsed the WebM's metadata, so it can play it.
    page.wait_for_function("document.querySelector('#video-result video').readyState >= 1", timeout=30_000)
    assert result.evaluate("video => video.videoWidth") == 320
    _shoot(page, screenshots, "video")


def test_video_tab_propagates_a_mask_drawn_on_the_first_frame(browser_page, demo_server) -> None:
    page = browser_page
    page.reload()  # a fresh page: no mask left uploaded by another test, so the drawing is what counts
    page.locator("#attention-photo").wait_for()
    _open_tab(page, "Video")
    _upload(page, "video-input", sample_video(demo_server.cache_dir).video)
    page.locator("#video-input video").wait_for()
    page.get_by_role("button", name="Draw on the first frame instead").click()
    # The empty editor asks for a tool; once the first frame is its background, it draws with the brush.
    page.locator("#video-draw").get_by_text("select the draw tool to start").wait_for(
        state="hidden", timeout=RESULT_TIMEOUT_MS
    )
    page.wait_for_timeout(1000)  # the editor fits the frame into its canvas
    box = page.locator("#video-draw canvas").first.bounding_box()
    # A stroke through the middle of the canvas, where the editor centres the frame.
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 0.4 * box["width"], y)
    page.mouse.down()
    for step in range(11):
        page.mouse.move(box["x"] + (0.4 + 0.02 * step) * box["width"], y + step % 3)
    page.mouse.up()
    page.locator("#video-run").click()
    notice = page.locator("#video-notice").get_by_text("frames propagated, 1 object(s)")
    notice.wait_for(timeout=RESULT_TIMEOUT_MS)


def test_a_file_that_is_not_an_image_gives_a_message_not_a_trace(browser_page, tmp_path) -> None:
    page = browser_page
    # Named like a photo, so the browser's file picker lets it through to the server.
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo")
    _run_tab(page, "Attention", {"attention-photo": notes}, "#attention-photo img", "#attention-run")
    message = page.get_by_text("notes.jpg is not an image this demo can read")
    message.first.wait_for(timeout=RESULT_TIMEOUT_MS)
    assert "Traceback" not in page.content()


@pytest.mark.parametrize(
    ("tab", "samples", "sample", "filled"),
    [
        ("Attention", "#attention-samples", "skimage-chelsea.jpg", ["#attention-photo img"]),
        ("Video", "#video-samples", "disc.webm", ["#video-input video", "#video-mask img"]),
    ],
)
def test_a_sample_click_fills_the_uploads(browser_page, tab, samples, sample, filled) -> None:
    page = browser_page
    page.reload()  # empty uploads: what the click puts there is what is checked
    page.locator("#attention-photo").wait_for()
    _open_tab(page, tab)
    for shown in filled:
        assert page.locator(shown).count() == 0
    thumbnail = page.locator(f"{samples} img[alt='{sample}']")
    assert thumbnail.evaluate("img => img.naturalWidth") > 0  # the inline thumbnail decoded
    thumbnail.click()
    for shown in filled:
        page.locator(shown).wait_for(timeout=30_000)
