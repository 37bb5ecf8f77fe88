"""FeatureExtractor outputs and the `dino` front door."""

from __future__ import annotations

import json
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from dino import cli
from dino.checkpoint import load_backbone
from dino.cli.arguments import runtime_from_args
from dino.data.constants import DEFAULT_MAX_TOKENS
from dino.data.io import ImageLoadError
from dino.data.transforms import knn_transform, make_transform
from dino.features import FeatureExtractor
from dino.runtime import Runtime, autocast_dtype, cpu_has_native_bf16, pick_device
from dino.search.descriptors import DescriptorExtractor, DescriptorRecipe


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for index, size in enumerate([(64, 48), (80, 80), (64, 48)]):
        path = tmp_path / f"img{index}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_extractor_matches_direct_forward(images) -> None:
    model = load_backbone("random:vit_tiny/16")
    transform = knn_transform(resize=40, crop=32)
    features = FeatureExtractor(
        model, transform, Runtime(device="cpu", dtype="fp32", batch_size=2, progress=False)
    ).extract(images, patch_tokens=True, attention=True)
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
    with torch.no_grad():
        expected = model(batch)
        attention = model.get_last_selfattention(batch)
    torch.testing.assert_close(features.cls, expected, rtol=0, atol=1e-5)
    assert features.patch_tokens.shape == (3, 2, 2, 192)
    torch.testing.assert_close(features.attention, attention, rtol=0, atol=1e-6)


def test_variable_sizes_keep_input_order(images) -> None:
    model = load_backbone("random:vit_tiny/16")
    transform = make_transform("short-side", 32, patch_size=16)
    features = FeatureExtractor(
        model, transform, Runtime(device="cpu", dtype="fp32", batch_size=3, progress=False)
    ).extract(images, patch_tokens=True)
    # 64×48 -> 42×32 and 80×80 -> 32×32, both cropped to 32×32: one grid size, so the result is stacked.
    assert isinstance(features.patch_tokens, torch.Tensor) and features.patch_tokens.shape == (3, 2, 2, 192)
    transform = make_transform("thumbnail", 64, patch_size=16)
    features = FeatureExtractor(
        model, transform, Runtime(device="cpu", dtype="fp32", batch_size=3, progress=False)
    ).extract(images, patch_tokens=True)
    assert isinstance(features.patch_tokens, list)
    assert [tuple(t.shape[:2]) for t in features.patch_tokens] == [(3, 4), (4, 4), (3, 4)]
    with torch.no_grad():
        direct = model(transform(Image.open(images[1]).convert("RGB"))[None])[0]
    torch.testing.assert_close(features.cls[1], direct, rtol=0, atol=1e-5)


def test_device_and_dtype_choice() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert autocast_dtype(torch.device("cpu"), "fp32") is None
    native = torch.bfloat16 if cpu_has_native_bf16() else None  # "auto" on a CPU: bf16 only where it is native
    assert autocast_dtype(torch.device("cpu")) is native
    assert autocast_dtype(torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype(torch.device("cuda"), "fp16") is torch.float16
    with pytest.raises(ValueError):
        autocast_dtype(torch.device("cpu"), "int8")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"num_workers": -1}, "num_workers must be 0 or more, got -1"),
        ({"max_tokens": 0}, r"max_tokens must be at least 1 \(or None for no limit\), got 0"),
        ({"dtype": "int8"}, "unknown dtype 'int8'; choose auto, fp32, bf16 or fp16"),
    ],
)
def test_runtime_refuses_impossible_values_when_built(fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        Runtime(**fields)


def test_extractor_resolves_its_runtime_once() -> None:
    model = load_backbone("random:vit_tiny/16")
    assert Runtime().max_tokens == DEFAULT_MAX_TOKENS and Runtime(max_tokens=None).max_tokens is None
    native = torch.bfloat16 if cpu_has_native_bf16() else None
    extractor = FeatureExtractor(model, runtime=Runtime(device="cpu", batch_size=5))
    assert extractor.device == torch.device("cpu") and extractor.autocast_dtype is native
    assert extractor.runtime.batch_size == 5
    assert FeatureExtractor(model, runtime=Runtime(device="cpu", dtype="fp32")).autocast_dtype is None
    assert FeatureExtractor(model).runtime == Runtime()


def test_runtime_from_args_maps_every_runtime_flag() -> None:
    parser = cli.build_parser()
    features = ["features", "x", "--out", "f.npy"]
    assert runtime_from_args(parser.parse_args(features)) == Runtime(num_workers=2)  # the CLI decodes in 2 workers
    flags = ["--device", "cpu", "--dtype", "bf16", "--batch-size", "5", "--workers", "0", "--no-progress"]
    given = runtime_from_args(parser.parse_args([*features, *flags, "--max-tokens", "100"]))
    assert given == Runtime(device="cpu", dtype="bf16", batch_size=5, num_workers=0, progress=False, max_tokens=100)
    assert runtime_from_args(parser.parse_args([*features, "--max-tokens", "0"])).max_tokens is None  # no limit
    # The protocol evaluations keep the reference's fp32 and their batch sizes; linear has no --max-tokens.
    knn = runtime_from_args(parser.parse_args(["knn", "--train", "t", "--val", "v"]))
    assert knn == Runtime(dtype="fp32", batch_size=64, num_workers=2)
    linear = runtime_from_args(parser.parse_args(["linear", "--train", "t", "--val", "v"]))
    assert linear == Runtime(dtype="fp32", batch_size=128, num_workers=2, max_tokens=DEFAULT_MAX_TOKENS)
    search_eval = runtime_from_args(parser.parse_args(["search", "eval", "--dataset", "roxford5k"]))
    assert (search_eval.dtype, search_eval.batch_size) == ("fp32", 1)
    copy_eval = runtime_from_args(parser.parse_args(["copy-detect", "eval", "--copydays", "c"]))
    assert (copy_eval.dtype, copy_eval.batch_size) == ("fp32", 16)


def test_cli_help_lists_core_verbs(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "info" in text and "features" in text


def test_cli_features_writes_array_and_sidecar(images, tmp_path, capsys) -> None:
    out = tmp_path / "out" / "feats.npy"
    code = cli.main(
        [
            "features",
            str(images[0].parent),
            "--out",
            str(out),
            "--weights",
            "random:vit_tiny/16",
            "--size",
            "32",
            "--no-progress",
            "--workers",
            "0",
        ]
    )
    assert code == 0
    array = np.load(out)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert array.shape == (3, 192) and array.dtype == np.float32
    assert sidecar["images"] == [str(p) for p in images] and sidecar["shape"] == [3, 192]


def test_cli_reports_user_errors_without_traceback(monkeypatch, tmp_path, capsys) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    code = cli.main(["features", str(tmp_path / "a.png"), "--out", str(tmp_path / "f.npy"), "--weights", "dino_vits8"])
    err = capsys.readouterr().err
    assert code == 2 and "dino_deitsmall8_pretrain.pth" in err and "Traceback" not in err
    assert not (tmp_path / "f.npy").exists()
    code = cli.main(["features", str(tmp_path / "missing"), "--out", str(tmp_path / "f.npy")])
    assert code == 2 and "missing: no such file or folder" in capsys.readouterr().err


def test_cli_info_json(capsys) -> None:
    assert cli.main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["torch"] == torch.__version__ and report["device"] in ("cpu", "cuda", "mps")


@pytest.mark.parametrize("workers", [0, 1])
def test_unusable_images_fail_with_one_line_naming_the_file(tmp_path, workers) -> None:
    model = load_backbone("random:vit_tiny/16")
    runtime = Runtime(device="cpu", num_workers=workers, progress=False)
    extractor = FeatureExtractor(model, make_transform("thumbnail", 64), runtime)
    Image.new("RGB", (64, 64)).save(tmp_path / "good.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "icon.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 10)
    with pytest.raises(ImageLoadError) as small:
        extractor.extract([tmp_path / "good.png", tmp_path / "icon.png"])
    assert str(small.value).startswith(str(tmp_path / "icon.png")) and "8×8" in str(small.value)
    with pytest.raises(ImageLoadError) as broken:
        extractor.extract([tmp_path / "broken.jpg"])
    # Raised in the main process as the loader's own error, not wrapped in a worker traceback.
    assert str(broken.value).startswith(str(tmp_path / "broken.jpg")) and "\n" not in str(broken.value)


def test_multiscale_descriptors_need_a_patch_at_the_smallest_scale(tmp_path) -> None:
    model = load_backbone("random:vit_tiny/16")
    Image.new("RGB", (24, 24)).save(tmp_path / "small.png")
    assert (
        DescriptorExtractor(model, DescriptorRecipe(size=64), runtime=Runtime(progress=False))
        .extract([tmp_path / "small.png"])
        .shape
    )
    with pytest.raises(ImageLoadError, match="at least 32"):
        DescriptorExtractor(model, DescriptorRecipe(size=64, multiscale=True), runtime=Runtime(progress=False)).extract(
            [tmp_path / "small.png"]
        )


def test_pil_inputs_of_any_mode_are_converted_to_rgb() -> None:
    model = load_backbone("random:vit_tiny/16")
    extractor = FeatureExtractor(model, knn_transform(resize=40, crop=32), Runtime(device="cpu", progress=False))
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    gray = rgb.convert("L")
    rgba = rgb.convert("RGBA")
    features = extractor.extract([rgba, gray, gray.convert("RGB")]).cls
    torch.testing.assert_close(features[0], extractor.extract([rgb]).cls[0])
    torch.testing.assert_close(features[1], features[2])
    # PIL inputs have no file name: an unusable one is named by its position.
    extractor.transform = make_transform("thumbnail", 64)
    with pytest.raises(ImageLoadError, match=r"^image 2 of 2: too small, 8×8 pixels"):
        extractor.extract([rgb, Image.new("RGB", (8, 8))])


def test_unavailable_devices_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'gpu0': not a device name"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda': this machine has no CUDA device"):
            pick_device("cuda")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "0"], "--batch-size: 0: must be at least 1"),
        (["--workers", "-1"], "--workers: -1: must be 0 or more"),
        (["--size", "x"], "--size: x: not an integer"),
    ],
)
def test_cli_refuses_bad_numbers_while_parsing(images, tmp_path, capsys, argv, message) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["features", str(images[0]), "--out", str(tmp_path / "f.npy"), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_cli_refuses_outputs_that_would_lose_data(images, tmp_path, capsys) -> None:
    (tmp_path / "folder").mkdir()
    with pytest.raises(SystemExit):
        cli.main(["features", str(images[0]), "--out", str(tmp_path / "folder")])
    assert "is a folder; give the path of a file" in capsys.readouterr().err
    # A .json output would be overwritten by its own image-list sidecar.
    code = cli.main(["features", str(images[0]), "--out", str(tmp_path / "f.json"), "--weights", "random:vit_tiny/16"])
    assert code == 2 and "give a .npy path" in capsys.readouterr().err
    assert not (tmp_path / "f.json").exists()
    code = cli.main(
        ["features", str(images[0]), "--out", str(tmp_path / "f.npy"), "--size", "8", "--weights", "random"]
    )
    assert code == 2 and "size 8 is smaller than one 16-pixel patch" in capsys.readouterr().err


def test_protocol_evaluations_default_to_the_reference_precision() -> None:
    parser = cli.build_parser()

    def dtype(*argv: str) -> str | None:
        return parser.parse_args(list(argv)).dtype

    protocols = [
        ("knn", "--train", "t", "--val", "v"),
        ("linear", "--train", "t", "--val", "v"),
        ("seg-eval", "--davis", "d", "--out", "o"),
        ("search", "eval", "--dataset", "roxford5k"),
        ("copy-detect", "eval", "--copydays", "c"),
    ]
    for argv in protocols:
        assert dtype(*argv) == "fp32", argv
    for argv in [
        ("features", "x", "--out", "f.npy"),
        ("attention", "x", "--out", "o"),
        ("search", "index", "x", "--out", "i"),
    ]:
        assert dtype(*argv) == "auto", argv
    # video-seg decides by its source: fp32 for the DAVIS protocol, auto for a video file.
    from apps.video_seg.cli import backbone_precision

    assert backbone_precision(parser.parse_args(["video-seg", "--davis", "d", "--out", "o"])) == "fp32"
    assert backbone_precision(parser.parse_args(["video-seg", "--video", "v.mp4", "--out", "o"])) == "auto"
    assert (
        backbone_precision(parser.parse_args(["video-seg", "--davis", "d", "--out", "o", "--dtype", "bf16"])) == "bf16"
    )


def test_building_the_parser_loads_no_heavy_library() -> None:
    """`dino --help` and `dino VERB --help` answer at once: no PyTorch, FAISS or app algorithm at parse time."""
    import subprocess
    import sys

    probe = (
        "import sys, dino.cli; parser = dino.cli.build_parser(); parser.parse_args(['attention', 'x', '--out', 'o']); "
        "print(sorted(m for m in ('torch', 'torchvision', 'faiss', 'cv2', 'scipy', 'matplotlib', 'gradio', 'onnx') "
        "if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_loading_a_vit_loads_no_torchvision() -> None:
    """`dino info` and the ViT loading front stay free of torchvision (a second of start-up); only the ResNet-50
    loader imports it, when called."""
    import subprocess
    import sys

    probe = (
        "import sys, dino.checkpoint; dino.checkpoint.load_backbone('random:vit_tiny/16'); "
        "print('torchvision' in sys.modules)"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "False"
