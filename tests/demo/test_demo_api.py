"""Every tab through its public API (gradio_client), as a script or another program would call the demo."""

from __future__ import annotations

import re
import struct
import threading
import zlib

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]' (or '.[dev]')")
pytest.importorskip("gradio_client", reason="the demo's API tests need gradio_client: pip install -e '.[dev]'")

from demo import adapters  # noqa: E402
from demo.gallery import sample_copy, sample_gallery, sample_video  # noqa: E402
from dino.checkpoint import load_backbone  # noqa: E402
from dino.data.masks import write_indexed_png  # noqa: E402

pytestmark = [
    pytest.mark.slow,  # one demo server for the session: ~30 s of model work on 2 CPU cores
    # Gradio's queue uses pandas options that pandas 3 deprecates; nothing the demo can change.
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*"),
]

ENDPOINTS = {"/attention", "/search", "/copy_check", "/copy_search", "/first_frame", "/video"}


def _file(path):
    from gradio_client import handle_file

    return handle_file(str(path))


def _app_error(client, *args, api_name: str) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        client.predict(*args, api_name=api_name)
    return str(caught.value)


def _photo(demo_cache, stem: str):
    return next(path for path in sample_gallery(demo_cache) if path.stem == stem)


def test_every_tab_has_a_named_endpoint(client) -> None:
    assert ENDPOINTS <= set(client.view_api(return_format="dict")["named_endpoints"])


def _bomb_png(path, width: int, height: int):
    """A valid 1×1 PNG whose header claims width×height pixels (as tests/core/test_bad_inputs.py makes it)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_each_tab_queues_its_model_work_separately(demo_server) -> None:
    queues = {fn.api_name: fn.concurrency_id for fn in demo_server.page.fns.values() if fn.api_name}
    assert {queues[name] for name in ("attention", "search", "copy_check", "video")} == {
        "attention",
        "search",
        "copy",
        "video",
    }
    assert queues["copy_search"] == queues["copy_check"]
    model_events = [fn for fn in demo_server.page.fns.values() if fn.concurrency_id in set(queues.values())]
    # "default" = the queue's default_concurrency_limit, which build_demo sets: one at a time per tab.
    assert {fn.concurrency_limit for fn in model_events} == {"default"}
    assert demo_server.page._queue.default_concurrency_limit == 1


def test_a_search_is_answered_while_the_attention_tab_is_busy(demo_server, demo_cache, monkeypatch) -> None:
    from gradio_client import Client

    started, release = threading.Event(), threading.Event()
    attention_views = adapters.attention_views

    def held(*args, **kwargs):
        started.set()
        release.wait(timeout=120)
        return attention_views(*args, **kwargs)

    monkeypatch.setattr(adapters, "attention_views", held)  # the server runs in this process
    photo = _file(_photo(demo_cache, "skimage-rocket"))
    busy = Client(demo_server.url, verbose=False).submit(photo, 0.6, 224, False, api_name="/attention")
    try:
        assert started.wait(timeout=60)
        search = Client(demo_server.url, verbose=False).submit(photo, 3, api_name="/search")
        assert len(search.result(timeout=60)) == 3  # with one queue for all tabs it would wait for `release`
        assert not busy.done()
    finally:
        release.set()
    assert len(busy.result(timeout=120)) == 4


def test_user_errors_print_no_traceback_on_the_server_but_bugs_do(client, demo_cache, capfd, monkeypatch) -> None:
    _app_error(client, None, 0.6, 224, True, api_name="/attention")
    _app_error(client, _file(_photo(demo_cache, "skimage-chelsea")), None, api_name="/copy_check")
    assert "Traceback" not in capfd.readouterr().err

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in the demo")

    monkeypatch.setattr(adapters, "search_similar", broken)
    _app_error(client, _file(_photo(demo_cache, "skimage-chelsea")), 3, api_name="/search")
    console = capfd.readouterr().err
    assert "Traceback" in console and "ZeroDivisionError: a bug in the demo" in console


def test_the_page_and_its_config_name_no_server_path(demo_server, demo_cache) -> None:
    base = demo_server.url.rstrip("/")
    for text in (httpx.get(f"{base}/config").text, httpx.get(base).text):
        assert str(demo_cache) not in text
        assert not re.search(r'"path":\s*"/', text)  # no FileData with an absolute path (the samples are inline)
        assert "file=/" not in text
    assert "skimage-chelsea.jpg" in httpx.get(f"{base}/config").text  # the samples, by their bare names


def _server_paths(value) -> list[str]:
    """The server-side paths of every file in an API result taken with download_files=False."""
    if isinstance(value, dict):
        found = [value["path"]] if isinstance(value.get("path"), str) else []
        return found + [
            path for item in value.values() if isinstance(item, (dict, list)) for path in _server_paths(item)
        ]
    if isinstance(value, (list, tuple)):
        return [path for item in value for path in _server_paths(item)]
    return []


def test_identical_requests_get_files_of_their_own(demo_server, demo_cache) -> None:
    from gradio_client import Client

    remote = Client(demo_server.url, verbose=False, download_files=False)
    photo = _file(_photo(demo_cache, "skimage-coffee"))
    # Search: 3 thumbnails; attention: the mean map, the better mask, a heatmap and a mask per head, all heads.
    for arguments, endpoint, count in (
        ((photo, 3), "/search", 3),
        ((photo, 0.6, 224, True), "/attention", 2 + 2 * demo_server.heads + 1),
    ):
        first = _server_paths(remote.predict(*arguments, api_name=endpoint))
        second = _server_paths(remote.predict(*arguments, api_name=endpoint))
        assert len(first) == len(second) == count
        # Same pictures, yet no path is shared: one response's writing can never touch a file another downloads.
        assert not set(first) & set(second) and len(set(first)) == len(first)


# ---------------------------------------------------------------------------- attention
def test_attention_gives_one_heatmap_and_mask_per_head(client, demo_server, demo_cache) -> None:
    mean_map, cut, heads, masks = client.predict(
        _file(_photo(demo_cache, "skimage-chelsea")), 0.6, 224, True, api_name="/attention"
    )
    assert [item["caption"] for item in heads] == [f"head {i}" for i in range(demo_server.heads)]
    assert [item["caption"] for item in masks] == [f"head {i}" for i in range(demo_server.heads)] + ["all heads"]
    # chelsea is 451×300: short side to 224 keeps the aspect, then crops to a multiple of the patch (14 or 16).
    expected = (224, 336)
    for path in [mean_map, *(item["image"] for item in heads + masks)]:
        assert np.asarray(Image.open(path)).shape[:2] == expected
    assert np.asarray(Image.open(cut)).shape[:2] == (300, 451)  # the foreground mask: at the photo's own size


def test_attention_threshold_changes_the_masks_but_not_the_heatmaps(client, demo_cache) -> None:
    photo = _file(_photo(demo_cache, "skimage-astronaut"))
    _, _, heads_low, masks_low = client.predict(photo, 0.2, 224, False, api_name="/attention")
    _, cut, heads_high, masks_high = client.predict(photo, 0.9, 224, False, api_name="/attention")
    assert cut is None  # the normalized cut was not asked for
    assert np.array_equal(np.asarray(Image.open(heads_low[0]["image"])), np.asarray(Image.open(heads_high[0]["image"])))
    assert not np.array_equal(
        np.asarray(Image.open(masks_low[0]["image"])), np.asarray(Image.open(masks_high[0]["image"]))
    )


def test_attention_refuses_a_text_file_politely(client, tmp_path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    message = _app_error(client, _file(notes), 0.6, 224, True, api_name="/attention")
    assert "notes.txt is not an image this demo can read" in message
    assert "Traceback" not in message


def test_attention_names_a_truncated_photo_without_server_paths(client, demo_cache, tmp_path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(_photo(demo_cache, "skimage-coffee").read_bytes()[:2000])
    message = _app_error(client, _file(broken), 0.6, 224, True, api_name="/attention")
    assert "broken.jpg" in message
    assert str(tmp_path) not in message and "/tmp/" not in message


def test_attention_refuses_a_strip_over_the_demo_token_budget_at_once(client, tmp_path) -> None:
    from demo.config import DEMO_MAX_TOKENS

    Image.new("RGB", (10000, 20), "white").save(tmp_path / "strip.png")
    message = _app_error(client, _file(tmp_path / "strip.png"), 0.6, 224, True, api_name="/attention")
    assert message.startswith("strip.png is 10000×20 pixels: at input short side 224")
    assert f"this demo's limit ({DEMO_MAX_TOKENS:,})" in message and "--max-tokens" not in message


def test_attention_refuses_images_with_too_many_pixels_before_decoding(client, tmp_path) -> None:
    bomb = _app_error(
        client, _file(_bomb_png(tmp_path / "bomb.png", 30000, 30000)), 0.6, 224, True, api_name="/attention"
    )
    assert bomb == "bomb.png has too many pixels to open safely; this demo takes images of up to 50 megapixels."
    huge = _app_error(
        client, _file(_bomb_png(tmp_path / "huge.png", 8000, 7000)), 0.6, 224, True, api_name="/attention"
    )
    assert huge.startswith("huge.png is 8000×7000 pixels, too large")


def test_attention_shows_the_better_mask_of_a_large_photo_at_a_bounded_size(client, tmp_path) -> None:
    from apps.segmentation.diffusion import MAX_REFINE_PIXELS

    Image.new("RGB", (2400, 1800), (90, 140, 200)).save(tmp_path / "large.jpg")  # 4.3 MP, 4:3
    _, cut, _, _ = client.predict(_file(tmp_path / "large.jpg"), 0.6, 224, True, api_name="/attention")
    height, width = np.asarray(Image.open(cut)).shape[:2]
    assert 0.995 * MAX_REFINE_PIXELS <= width * height <= MAX_REFINE_PIXELS
    assert width / height == pytest.approx(4 / 3, abs=1e-3)


def test_attention_asks_for_a_photo_when_none_is_given(client) -> None:
    assert "Please upload a photo" in _app_error(client, None, 0.6, 224, True, api_name="/attention")


def test_uploads_over_the_limit_are_refused(demo_server) -> None:
    payload = b"\0" * (3 * 2**20)  # the test server allows 2 MB
    response = httpx.post(
        f"{demo_server.url.rstrip('/')}/gradio_api/upload", files={"files": ("big.png", payload, "image/png")}
    )
    assert response.status_code == 413


# ---------------------------------------------------------------------------- search
def test_search_finds_the_query_itself_first_with_cosine_one(client, demo_cache) -> None:
    results = client.predict(_file(_photo(demo_cache, "skimage-rocket")), 5, api_name="/search")
    assert len(results) == 5
    best_score, best_name = results[0]["caption"].split(" · ")
    assert best_name == "skimage-rocket.jpg"
    assert float(best_score) == pytest.approx(1.0, abs=1e-3)
    scores = [float(item["caption"].split(" · ")[0]) for item in results]
    assert scores == sorted(scores, reverse=True)


def test_search_returns_at_most_the_gallery(client, demo_cache) -> None:
    results = client.predict(_file(_photo(demo_cache, "skimage-rocket")), 16, api_name="/search")
    assert len(results) == len(sample_gallery(demo_cache))


# ---------------------------------------------------------------------------- copy check
def test_copy_check_of_an_image_with_itself_is_a_copy(client, demo_server, demo_cache) -> None:
    photo = _file(_photo(demo_cache, "skimage-chelsea"))
    similarity, verdict = client.predict(photo, photo, api_name="/copy_check")
    assert similarity == pytest.approx(1.0, abs=1e-3)
    assert verdict.startswith("**Copy.**")
    assert f"threshold {demo_server.page.dino_settings.copy_threshold:.3f}" in verdict


def test_copy_check_verdict_follows_the_verified_matches(client, demo_server, demo_cache) -> None:
    pair = sample_copy(demo_cache)
    model = load_backbone("default")  # what the demo server serves (conftest.TEST_WEIGHTS)
    minimum = adapters.copy_min_matches(model, adapters.copy_verifier(model))
    for other, expected in ((pair.copy, "**Copy.**"), (pair.other, "**Not a copy.**")):
        similarity, verdict = client.predict(_file(pair.original), _file(other), api_name="/copy_check")
        assert similarity < 1.0 - 1e-3
        matches = int(re.search(r"(\d+) geometrically verified matches", verdict).group(1))
        assert verdict.startswith(expected) and (matches >= minimum) == (expected == "**Copy.**")
        # The edited copy (crop, 0.6x, brighter, JPEG 30) falls below the similarity threshold of the default
        # weights: verification is what recognises it.
        assert similarity < demo_server.page.dino_settings.copy_threshold


def test_copy_search_finds_the_image_itself_in_the_index(client, demo_server, demo_cache) -> None:
    summary, matches = client.predict(_file(_photo(demo_cache, "skimage-coffee")), api_name="/copy_search")
    assert matches[0]["caption"] == "1.000 · skimage-coffee.jpg"
    assert summary.startswith(f"**{len(matches)} likely cop")
    scores = [float(item["caption"].split(" · ")[0]) for item in matches]
    assert min(scores) >= demo_server.page.dino_settings.copy_threshold


def test_copy_check_needs_both_images(client, demo_cache) -> None:
    photo = _file(_photo(demo_cache, "skimage-chelsea"))
    assert "Please upload image B" in _app_error(client, photo, None, api_name="/copy_check")


# ---------------------------------------------------------------------------- video
def test_video_is_cut_to_the_frame_limit_with_a_notice(client, demo_server, demo_cache) -> None:
    limit = demo_server.max_video_frames
    clip = sample_video(demo_cache)
    video, notice = client.predict(_file(clip.video), _file(clip.first_mask), None, api_name="/video")
    path = video["video"] if isinstance(video, dict) else video
    capture = cv2.VideoCapture(str(path))
    frames = []
    while (frame := capture.read())[0]:
        frames.append(frame[1])
    capture.release()
    assert len(frames) == limit
    assert frames[0].shape[:2] == (240, 320)
    assert f"{limit} frames propagated, 1 object(s)" in notice
    assert f"only its first {limit} frames were used" in notice


def test_video_follows_a_mask_drawn_on_the_first_frame(client, demo_cache, tmp_path) -> None:
    clip = sample_video(demo_cache)
    layer = np.zeros((240, 320, 4), np.uint8)
    layer[100:140, 40:80] = (255, 51, 102, 255)  # a brush stroke on the disc, as the editor returns it
    Image.fromarray(layer).save(tmp_path / "layer.png")
    drawn = {"background": None, "layers": [_file(tmp_path / "layer.png")], "composite": None, "id": None}
    _, notice = client.predict(_file(clip.video), None, drawn, api_name="/video")
    assert "frames propagated, 1 object(s)" in notice


def test_video_first_frame_for_drawing(client, demo_cache) -> None:
    editor = client.predict(_file(sample_video(demo_cache).video), api_name="/first_frame")
    assert np.asarray(Image.open(editor["background"])).shape[:2] == (240, 320)


def test_video_without_a_mask_says_what_is_missing(client, demo_cache) -> None:
    message = _app_error(client, _file(sample_video(demo_cache).video), None, None, api_name="/video")
    assert "Upload a first-frame mask or draw" in message


def test_video_refuses_a_file_that_is_not_a_video(client, demo_cache, tmp_path) -> None:
    fake = tmp_path / "holiday.mp4"
    fake.write_text("not a video")
    message = _app_error(client, _file(fake), _file(sample_video(demo_cache).first_mask), None, api_name="/video")
    assert "holiday.mp4: OpenCV cannot decode this video" in message


def test_video_of_strips_is_refused_at_once_over_the_demo_token_budget(client, tmp_path) -> None:
    from demo.config import DEMO_MAX_TOKENS

    writer = cv2.VideoWriter(str(tmp_path / "strip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (2000, 16))
    for _ in range(3):
        writer.write(np.full((16, 2000, 3), 128, np.uint8))
    writer.release()
    labels = np.zeros((16, 2000), np.uint8)
    labels[:, :100] = 1
    write_indexed_png(tmp_path / "strip-mask.png", labels)
    message = _app_error(
        client, _file(tmp_path / "strip.avi"), _file(tmp_path / "strip-mask.png"), None, api_name="/video"
    )
    # Propagation resizes the short side to 480: 60000×480 pixels would make far more than the budget.
    assert message.startswith("strip.avi: frames of 2000×16 pixels make more patch tokens than this demo's limit")
    assert f"({DEMO_MAX_TOKENS:,})" in message
