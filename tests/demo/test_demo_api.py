"""Every tab through its public API (gradio_client), as a script or another program would call the demo."""

from __future__ import annotations

import re

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


def test_one_queue_limits_model_work_over_all_tabs(demo_server) -> None:
    model_endpoints = {name.lstrip("/") for name in ENDPOINTS - {"/first_frame"}}
    model_events = [fn for fn in demo_server.page.fns.values() if fn.api_name in model_endpoints]
    assert len(model_events) == len(ENDPOINTS) - 1
    assert {fn.concurrency_id for fn in model_events} == {"model"}
    # "default" = the queue's default_concurrency_limit, which build_demo sets.
    assert {fn.concurrency_limit for fn in model_events} == {"default"}
    assert demo_server.page._queue.default_concurrency_limit == 1


# ---------------------------------------------------------------------------- attention
@pytest.mark.skipif(not adapters.available("attention"), reason="apps.segmentation not installed")
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


@pytest.mark.skipif(not adapters.available("attention"), reason="apps.segmentation not installed")
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


def test_attention_asks_for_a_photo_when_none_is_given(client) -> None:
    assert "Please upload a photo" in _app_error(client, None, 0.6, 224, True, api_name="/attention")


def test_uploads_over_the_limit_are_refused(demo_server) -> None:
    payload = b"\0" * (3 * 2**20)  # the test server allows 2 MB
    response = httpx.post(
        f"{demo_server.url.rstrip('/')}/gradio_api/upload", files={"files": ("big.png", payload, "image/png")}
    )
    assert response.status_code == 413


# ---------------------------------------------------------------------------- search
@pytest.mark.skipif(not adapters.available("search"), reason="dino.index not installed")
def test_search_finds_the_query_itself_first_with_cosine_one(client, demo_cache) -> None:
    results = client.predict(_file(_photo(demo_cache, "skimage-rocket")), 5, api_name="/search")
    assert len(results) == 5
    best_score, best_name = results[0]["caption"].split(" · ")
    assert best_name == "skimage-rocket.jpg"
    assert float(best_score) == pytest.approx(1.0, abs=1e-3)
    scores = [float(item["caption"].split(" · ")[0]) for item in results]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.skipif(not adapters.available("search"), reason="dino.index not installed")
def test_search_returns_at_most_the_gallery(client, demo_cache) -> None:
    results = client.predict(_file(_photo(demo_cache, "skimage-rocket")), 16, api_name="/search")
    assert len(results) == len(sample_gallery(demo_cache))


# ---------------------------------------------------------------------------- copy check
@pytest.mark.skipif(not adapters.available("copy"), reason="apps.copy_detection not installed")
def test_copy_check_of_an_image_with_itself_is_a_copy(client, demo_server, demo_cache) -> None:
    photo = _file(_photo(demo_cache, "skimage-chelsea"))
    similarity, verdict = client.predict(photo, photo, api_name="/copy_check")
    assert similarity == pytest.approx(1.0, abs=1e-3)
    assert verdict.startswith("**Copy.**")
    assert f"threshold {demo_server.page.dino_settings.copy_threshold:.3f}" in verdict


@pytest.mark.skipif(not adapters.available("copy"), reason="apps.copy_detection not installed")
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


@pytest.mark.skipif(not adapters.available("copy"), reason="apps.copy_detection not installed")
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
@pytest.mark.skipif(not adapters.available("video"), reason="apps.video_seg not installed")
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


@pytest.mark.skipif(not adapters.available("video"), reason="apps.video_seg not installed")
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
