"""A corpus of bad inputs run through every `dino` verb, as a new user would meet them.

Each case runs `dino VERB …` in a fresh process on a workspace of small synthetic files (good photos, broken
and hostile files, damaged weights and indexes, odd numbers and paths) with a random tiny ViT, and is judged:

- pass: the verb succeeded where it should, or refused with a one-line error (exit 2, no traceback);
- traceback: a Python traceback reached the user;
- hang: it ran past the time limit (every input's work must be bounded);
- wrong: it succeeded where it should have refused (a silent wrong result), or a check of its output failed;
- failed: it refused an input it should have accepted;
- damage: a file that existed before the case changed or vanished (inputs, earlier outputs).

    python bench/bad_inputs.py --out bench/results/bad_inputs.json          # about 10 minutes on 2 cores
    python bench/bad_inputs.py --only features attention                    # cases of some verbs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

TINY = ["--weights", "random:vit_tiny/16"]
QUIET = ["--no-progress", "--workers", "0"]
TIME_LIMIT = 180.0


@dataclass
class Case:
    """One command line, what it should do, and an optional check of what it wrote."""

    name: str
    argv: list[str]
    expect: str  # "ok" or "error"
    check: Callable[[Path], str | None] | None = None  # returns a problem, or None
    timeout: float = TIME_LIMIT


@dataclass
class Outcome:
    name: str
    argv: list[str]
    expect: str
    verdict: str
    code: int | None
    seconds: float
    last_line: str
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- the workspace
def _photo(path: Path, width: int, height: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A 1×1 PNG whose header claims width×height pixels (PIL refuses it at open)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


class _Exploit:
    """Unpickling this runs a shell command: loading must never execute it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _run_dino(workspace: Path, argv: list[str], timeout: float = TIME_LIMIT) -> None:
    result = subprocess.run(_dino() + argv, cwd=workspace, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"setting up the corpus: dino {' '.join(argv)} failed:\n{result.stderr}")


def _dino() -> list[str]:
    return [sys.executable, "-m", "dino.cli"]


def build_workspace(root: Path) -> None:
    """Good and bad files the cases use, all under `root`."""
    import torch

    from dino.checkpoint import load_backbone

    good = root / "good"
    good.mkdir()
    for i, (width, height) in enumerate([(64, 48), (80, 80), (96, 64), (64, 48), (72, 56), (48, 64)]):
        _photo(good / f"photo{i}.png", width, height, seed=i)
    Image.open(good / "photo0.png").convert("RGB").save(good / "photo0_copy.jpg", quality=70)

    bad = root / "bad"
    bad.mkdir()
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("this is not an image\n")
    full = (good / "photo0_copy.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(full[: len(full) // 2])
    _bomb_png(bad / "bomb.png")
    Image.new("RGB", (10000, 20), "white").save(bad / "strip.png")
    Image.new("RGB", (20, 10000), "white").save(bad / "tall.png")
    Image.new("RGB", (1, 1)).save(bad / "pixel.png")
    (bad / "folder.jpg").mkdir()
    (bad / "dangling.jpg").symlink_to(bad / "nowhere.jpg")
    (bad / "loop.jpg").symlink_to(bad / "loop.jpg")

    odd = root / "odd"  # unusual but valid: every verb should take these
    odd.mkdir()
    Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).save(odd / "gray16.png")
    Image.open(good / "photo1.png").convert("CMYK").save(odd / "cmyk.jpg")
    frames = [Image.open(good / f"photo{i}.png").convert("P").resize((64, 48)) for i in (0, 3)]
    frames[0].save(odd / "anim.gif", save_all=True, append_images=frames[1:])
    rgba = Image.open(good / "photo2.png").convert("RGBA")
    rgba.putalpha(128)
    rgba.save(odd / "rgba.png")
    _photo(odd / "ünï cöde name.png", 64, 64, seed=9)
    _photo(odd / "big.jpg", 4000, 3000, seed=10)

    Image.new("L", (12000, 9000)).save(odd / "over_warning.png")  # 108 Mpx: PIL warns but decodes it
    Image.open(good / "photo2.png").convert("L").save(odd / "gray.jpg")
    exif = Image.open(good / "photo2.png")
    exif_data = Image.Exif()
    exif_data[0x0112] = 6  # rotated 90°
    exif.save(odd / "rotated.jpg", exif=exif_data)
    pages = [Image.open(good / f"photo{i}.png") for i in (0, 3)]
    pages[0].save(odd / "pages.tif", save_all=True, append_images=pages[1:])
    Image.fromarray(np.full((40, 50), 40000, dtype=np.uint16)).save(odd / "deep.tif")
    (bad / "png_named.mp4").write_bytes((good / "photo0.png").read_bytes())
    Image.new("RGB", (1, 100000)).save(bad / "needle.png")

    mixed = root / "mixed"  # a bulk job's folder: good photos and one of each bad kind
    shutil.copytree(good, mixed)
    for name in ("zero.jpg", "text.jpg", "truncated.jpg", "bomb.png", "strip.png"):
        shutil.copy(bad / name, mixed / name)

    only_bad = root / "only_bad"
    only_bad.mkdir()
    for name in ("zero.jpg", "text.jpg", "truncated.jpg"):
        shutil.copy(bad / name, only_bad / name)
    (root / "empty").mkdir()

    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / "classes" / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                _photo(folder / f"{label}{i}.png", 64, 64, seed=hash((split, label, i)) % 1000)
    shutil.copytree(root / "classes", root / "classes_bad")
    shutil.copy(bad / "truncated.jpg", root / "classes_bad" / "train" / "a" / "broken.jpg")

    weights = root / "weights"
    weights.mkdir()
    model = load_backbone("random:vit_tiny/16")
    state = model.state_dict()
    torch.save(state, weights / "tiny.pth")
    (weights / "zero.pth").write_bytes(b"")
    (weights / "text.pth").write_text("not a checkpoint")
    blob = (weights / "tiny.pth").read_bytes()
    (weights / "truncated.pth").write_bytes(blob[: len(blob) // 2])
    nan_state = {key: value.clone() for key, value in state.items()}
    nan_state["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    torch.save(nan_state, weights / "nan.pth")
    inf_state = {key: value.clone() for key, value in state.items()}
    inf_state["norm.weight"][0] = float("inf")
    torch.save(inf_state, weights / "inf.pth")
    with open(weights / "exploit.pth", "wb") as handle:
        pickle.dump({"teacher": _Exploit(root / "PWNED")}, handle)
    torch.save({"foo": torch.zeros(3)}, weights / "unrelated.pth")
    torch.save({key: value for key, value in state.items() if not key.startswith("blocks.1.")}, weights / "partial.pth")
    torch.save(["a", "list"], weights / "list.pth")

    masks = root / "masks"
    masks.mkdir()
    import cv2

    video = root / "video"
    video.mkdir()
    writer = cv2.VideoWriter(str(video / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    rng = np.random.default_rng(3)
    for _ in range(6):
        writer.write(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    writer.release()
    (video / "zero.mp4").write_bytes(b"")
    (video / "text.mp4").write_text("no video here")
    first = np.zeros((64, 96), dtype=np.uint8)
    first[16:40, 24:60] = 1
    from dino.data.masks import write_indexed_png

    write_indexed_png(masks / "first.png", first)
    write_indexed_png(masks / "wrong_size.png", np.ones((10, 10), dtype=np.uint8))
    write_indexed_png(masks / "empty.png", np.zeros((64, 96), dtype=np.uint8))
    Image.fromarray(np.stack([first * 255] * 3, axis=-1)).save(masks / "flat_rgb.png")
    _photo(masks / "photo.jpg", 96, 64, seed=4)

    davis = root / "davis"
    for sequence, sizes in (("seq_a", [(96, 64)] * 4), ("seq_odd", [(96, 64), (96, 64), (80, 64), (96, 64)])):
        frames_dir = davis / "JPEGImages" / "480p" / sequence
        labels_dir = davis / "Annotations" / "480p" / sequence
        frames_dir.mkdir(parents=True)
        labels_dir.mkdir(parents=True)
        for i, (width, height) in enumerate(sizes):
            _photo(frames_dir / f"{i:05d}.jpg", width, height, seed=20 + i)
            labels = np.zeros((height, width), dtype=np.uint8)
            labels[10:30, 20:50] = 1
            write_indexed_png(labels_dir / f"{i:05d}.png", labels)
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "val.txt").write_text("seq_a\n")

    # Indexes: a good one, then damaged copies of it.
    _run_dino(root, ["search", "index", "good", "--out", "index", *TINY, *QUIET])
    _run_dino(root, ["search", "index", "classes/train", "--out", "index_other", *TINY, *QUIET])
    _run_dino(root, ["copy-detect", "index", "good", "--out", "copy_index", *TINY, *QUIET])
    shutil.copytree(root / "index", root / "index_manifest")
    (root / "index_manifest" / "manifest.json").write_text("{ damaged")
    shutil.copytree(root / "index", root / "index_truncated")
    faiss_file = root / "index_truncated" / "index.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    shutil.copytree(root / "index", root / "index_swapped")
    shutil.copy(root / "index_other" / "index.faiss", root / "index_swapped" / "index.faiss")
    (weights / "hf_folder").mkdir()
    (weights / "hf_folder" / "config.json").write_text("{ not json")
    (weights / "hf_folder" / "model.safetensors").write_bytes(b"\x00" * 64)
    (weights / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    import zipfile

    with zipfile.ZipFile(weights / "zip.pth", "w") as archive:
        archive.writestr("hello.txt", "a zip, not a torch archive")
    torch.save({"teacher": torch.zeros(3)}, weights / "teacher_tensor.pth")
    shutil.copytree(root / "index", root / "index_list_manifest")
    (root / "index_list_manifest" / "manifest.json").write_text("[1, 2, 3]")
    (root / "configs").mkdir()
    (root / "configs" / "bad.yaml").write_text("optim: [unclosed\n")
    (root / "configs" / "unknown.yaml").write_text("optim:\n  not_a_key: 1\n")
    (root / "configs" / "binary.yaml").write_bytes(bytes(range(256)))
    (root / "configs" / "list.yaml").write_text("- 1\n- 2\n")
    davis_blank = root / "davis_blank"
    shutil.copytree(davis, davis_blank)
    (davis_blank / "ImageSets" / "2017" / "val.txt").write_text("\n  seq_a  \n\n")
    davis_noanno = root / "davis_noanno"
    shutil.copytree(davis, davis_noanno)
    (davis_noanno / "Annotations" / "480p" / "seq_a" / "00000.png").unlink()
    (root / "classes_empty" / "train" / "a").mkdir(parents=True)
    (root / "classes_empty" / "train" / "b").mkdir(parents=True)
    _photo(root / "classes_empty" / "train" / "b" / "b0.png", 64, 64, seed=30)
    shutil.copytree(root / "classes" / "val", root / "classes_empty" / "val")
    (root / "existing_file.txt").write_text("a file, not a folder\n")


# ---------------------------------------------------------------------------- the cases
def _exists(path: str) -> Callable[[Path], str | None]:
    return lambda root: None if (root / path).exists() else f"{path} was not written"


def _not_pwned(root: Path) -> str | None:
    return "the pickled command ran" if (root / "PWNED").exists() else None


def _rows(path: str, rows: int) -> Callable[[Path], str | None]:
    def check(root: Path) -> str | None:
        found = np.load(root / path).shape[0]
        return None if found == rows else f"{path} has {found} rows, expected {rows}"

    return check


def cases(port: int) -> list[Case]:
    """Every case, grouped by verb (the first word of its name)."""
    result: list[Case] = []

    def add(
        name: str, expect: str, command: str, flags: str = "model", check=None, timeout: float = TIME_LIMIT
    ) -> None:
        """`command` is split like a shell line; `flags` adds the tiny random ViT and the quiet runtime options
        ("model"), only the quiet ones ("quiet"), or nothing ("none")."""
        extra = {"model": TINY + QUIET, "quiet": QUIET, "none": []}[flags]
        result.append(Case(name, shlex.split(command) + extra, expect, check, timeout))

    # features: each bad file alone is refused in one line; odd but valid files work.
    for name in ("zero.jpg", "text.jpg", "truncated.jpg", "bomb.png", "folder.jpg", "dangling.jpg", "loop.jpg"):
        add(f"features bad/{name}", "error", f"features bad/{name} --out out/f.npy")
    add("features bad/nowhere.jpg", "error", "features bad/nowhere.jpg --out out/f.npy")
    add("features bad/pixel.png", "ok", "features bad/pixel.png --out out/pixel.npy")
    add("features bad/pixel.png thumbnail", "error", "features bad/pixel.png --out out/f.npy --preprocess thumbnail")
    add("features strip square", "ok", "features bad/strip.png --out out/strip.npy --preprocess square --size 64")
    for name in ("strip.png", "tall.png"):
        add(f"features {name} short-side", "error", f"features bad/{name} --out out/f.npy --preprocess short-side")
    add("features odd/", "ok", "features odd --out out/odd.npy", check=_rows("out/odd.npy", 11))
    add("features mixed/ (skips)", "ok", "features mixed --out out/mixed.npy", check=_rows("out/mixed.npy", 8))
    add("features mixed/ --on-error fail", "error", "features mixed --out out/fail.npy --on-error fail")
    add("features over an earlier output", "ok", "features good --out out/mixed.npy", check=_rows("out/mixed.npy", 7))
    for folder in ("only_bad", "empty", "missing"):
        add(f"features {folder}/", "error", f"features {folder} --out out/f.npy")
    add("features --out a folder", "error", "features good --out good")
    add("features --out .json", "error", "features good --out out/x.json")
    for option in (
        "--size 0",
        "--size -3",
        "--size abc",
        "--size 100000",
        "--batch-size 0",
        "--workers -1",
        "--max-tokens -5",
        "--device cuda",
        "--device gpu9",
        "--dtype fp8",
    ):
        add(f"features {option}", "error", f"features good --out out/f.npy --preprocess square {option}")
    add("features --dtype bf16", "ok", "features good --out out/bf16.npy --dtype bf16")
    add("features odd/over_warning.png", "ok", "features odd/over_warning.png --out out/ow.npy", timeout=120)
    add("features bad/needle.png square", "ok", "features bad/needle.png --out out/needle.npy --preprocess square")
    add(
        "features bad/needle.png short-side", "error", "features bad/needle.png --out out/f.npy --preprocess short-side"
    )
    add("features --out over an input", "error", "features good/photo0.png --out good/photo0.png")
    add("features --out not .npy", "error", "features good --out out/feats.txt")

    # weights
    for name in ("zero", "text", "truncated", "nan", "inf", "unrelated", "partial", "list", "missing"):
        add(
            f"weights {name}.pth",
            "error",
            f"features good --out out/f.npy --weights weights/{name}.pth",
            flags="quiet",
        )
    add(
        "weights exploit.pth",
        "error",
        "features good --out out/f.npy --weights weights/exploit.pth",
        flags="quiet",
        check=_not_pwned,
    )
    add("weights tiny.pth", "ok", "features good --out out/t.npy --weights weights/tiny.pth", flags="quiet")
    for name in ("dino_vitz99", "random:vit_huge/3", "random:vit_small/0"):
        add(f"weights {name}", "error", f"features good --out out/f.npy --weights {name}", flags="quiet")
    for name in ("hf_folder", "garbage.safetensors", "zip.pth", "teacher_tensor.pth"):
        add(f"weights {name}", "error", f"features good --out out/f.npy --weights weights/{name}", flags="quiet")
    add("export over its input", "error", "export weights/tiny.pth weights/tiny.pth", flags="none")
    add("export exploit.pth", "error", "export weights/exploit.pth out/e.pth", flags="none", check=_not_pwned)
    add("export nan.pth", "error", "export weights/nan.pth out/e.pth", flags="none")
    add("export into a folder", "error", "export weights/tiny.pth good", flags="none")

    # attention and seg-eval
    for name in ("bomb.png", "truncated.jpg", "zero.jpg"):
        add(f"attention bad/{name}", "error", f"attention bad/{name} --out out/a1")
    add(
        "attention strip keep-aspect",
        "error",
        "attention bad/strip.png --out out/a2 --keep-aspect --size 224",
        timeout=60,
    )
    add("attention strip square", "ok", "attention bad/strip.png --out out/a3 --size 64")
    add(
        "attention big photo",
        "ok",
        "attention odd/big.jpg --out out/a4 --size 224",
        check=_exists("out/a4/big/mask.png"),
    )
    add("attention --ncut 61×61 grid", "error", "attention good/photo1.png --out out/a5 --ncut --size 976", timeout=60)
    for value in ("2", "nan", "-0.5"):
        add(f"attention --threshold {value}", "error", f"attention good --out out/a6 --threshold {value}")
    add("attention --out a file", "error", "attention good --out existing_file.txt")
    add("seg-eval davis", "ok", "seg-eval --davis davis --out out/seg")
    add("seg-eval missing", "error", "seg-eval --davis missing --out out/seg2")
    add("seg-eval --voc on davis", "error", "seg-eval --voc davis --out out/seg3")

    # search
    add("search index mixed (skips)", "ok", "search index mixed --out out/idx", check=_exists("out/idx/index.faiss"))
    add("search index only_bad", "error", "search index only_bad --out out/idx_bad")
    add("search index into a file", "error", "search index good --out existing_file.txt")
    add("search index into good/", "error", "search index good --out good")
    add("search index bad factory", "error", "search index good --out out/idx_f --factory IVF999999,Flat")
    add("search query", "ok", "search query good/photo0.png --index index", flags="quiet")
    add("search query bomb", "error", "search query bad/bomb.png --index index", flags="quiet")
    add("search query -k 0", "error", "search query good/photo0.png --index index -k 0", flags="quiet")
    for name in ("index_manifest", "index_truncated", "index_swapped", "missing_index", "good"):
        add(
            f"search query --index {name}",
            "error",
            f"search query good/photo0.png --index {name}",
            flags="quiet",
        )
    add(
        "search query other weights",
        "error",
        "search query good/photo0.png --index index --weights random:vit_small/16",
        flags="quiet",
    )
    add("search update missing index", "error", "search update good --index missing_index", flags="quiet")
    add(
        "search query --index list manifest",
        "error",
        "search query good/photo0.png --index index_list_manifest",
        flags="quiet",
    )
    add(
        "search query --sheet over a query",
        "error",
        "search query good/photo0.png --index index --sheet good/photo0.png",
        flags="quiet",
    )
    add("search whiten only_bad", "error", "search whiten only_bad --out out/w.npz")
    add("search eval missing", "error", "search eval --dataset roxford5k --root missing")

    # copy detection
    add("copy-detect index mixed", "ok", "copy-detect index mixed --out out/cidx")
    add("copy-detect find", "ok", "copy-detect find good/photo0_copy.jpg --index copy_index", flags="quiet")
    for value in ("nan", "5"):
        add(
            f"copy-detect find --threshold {value}",
            "error",
            f"copy-detect find good/photo0.png --index copy_index --threshold {value}",
            flags="quiet",
        )
    add("copy-detect find bomb", "error", "copy-detect find bad/bomb.png --index copy_index", flags="quiet")
    add(
        "copy-detect find on a search index",
        "error",
        "copy-detect find good/photo0.png --index index",
        flags="quiet",
    )
    add(
        "copy-detect find --out over a query",
        "error",
        "copy-detect find good/photo0.png --index copy_index --out good/photo0.png",
        flags="quiet",
    )
    add("copy-detect eval missing", "error", "copy-detect eval --copydays missing")
    add("copy-detect eval on photos", "error", "copy-detect eval --copydays good")
    add(
        "copy-detect make-benchmark only_bad",
        "error",
        "copy-detect make-benchmark --images only_bad --out out/bench --no-progress",
        flags="none",
    )
    add("copy-detect make-benchmark --help", "ok", "copy-detect make-benchmark --help", flags="none")

    # k-NN, linear, train
    add("knn", "ok", "knn --train classes/train --val classes/val")
    add("knn with a broken image", "error", "knn --train classes_bad/train --val classes_bad/val")
    add("knn on a flat folder", "error", "knn --train good --val good")
    add("knn --nb-knn 0", "error", "knn --train classes/train --val classes/val --nb-knn 0")
    add("knn with an empty class", "ok", "knn --train classes_empty/train --val classes_empty/val")
    add("linear with a broken image", "error", "linear --train classes_bad/train --val classes_bad/val --epochs 1")
    add("linear --epochs 0", "error", "linear --train classes/train --val classes/val --epochs 0")
    train = (
        "train --preset cpu_small --no-progress run.num_workers=0 run.max_steps=1 optim.batch_size_per_gpu=2 "
        "model.arch=vit_tiny model.out_dim=64"
    )
    for folder in ("empty", "only_bad", "missing"):
        add(f"train {folder}", "error", f"{train} --data-path {folder} --output-dir out/t1", flags="none")
    add(
        "train bad yaml",
        "error",
        f"{train} --data-path good --config configs/bad.yaml --output-dir out/t2",
        flags="none",
    )
    for override in ("optim.not_a_key=1", "optim.lr=nan", "run.max_steps=-1"):
        add(f"train {override}", "error", f"{train} --data-path good {override} --output-dir out/t3", flags="none")
    add("train into a file", "error", f"{train} --data-path good --output-dir existing_file.txt", flags="none")
    for name in ("binary.yaml", "list.yaml", "unknown.yaml"):
        add(
            f"train --config {name}",
            "error",
            f"{train} --data-path good --config configs/{name} --output-dir out/t4",
            flags="none",
        )
    add(
        "train --config a folder",
        "error",
        f"{train} --data-path good --config configs --output-dir out/t5",
        flags="none",
    )

    # video
    video = "video-seg --weights random:vit_tiny/16 --no-progress"
    add(
        "video-seg --video",
        "ok",
        f"{video} --video video/clip.avi --first-mask masks/first.png --out out/v1",
        flags="none",
        check=_exists("out/v1/overlay.mp4"),
    )
    add(
        "video-seg flat RGB mask",
        "ok",
        f"{video} --video video/clip.avi --first-mask masks/flat_rgb.png --out out/v2",
        flags="none",
    )
    for name in ("wrong_size.png", "empty.png", "photo.jpg", "missing.png"):
        add(
            f"video-seg mask {name}",
            "error",
            f"{video} --video video/clip.avi --first-mask masks/{name} --out out/v3",
            flags="none",
        )
    for name in ("zero.mp4", "text.mp4", "missing.mp4"):
        add(
            f"video-seg video {name}",
            "error",
            f"{video} --video video/{name} --first-mask masks/first.png --out out/v4",
            flags="none",
        )
    add("video-seg davis odd frame", "error", f"{video} --davis davis --sequences seq_odd --out out/dv1", flags="none")
    add(
        "video-seg davis unknown sequence",
        "error",
        f"{video} --davis davis --sequences nope --out out/dv2",
        flags="none",
    )
    add("video-seg davis --sequences", "ok", f"{video} --davis davis --sequences seq_a --out out/dv", flags="none")
    add("video-eval after --sequences", "ok", "video-eval --davis davis --results out/dv", flags="none")
    add("video-eval missing results", "error", "video-eval --davis davis --results missing", flags="none")
    add("video-seg both sources", "error", f"{video} --davis davis --video video/clip.avi --out out/vb", flags="none")
    add(
        "video-seg a PNG named .mp4",
        "error",
        f"{video} --video bad/png_named.mp4 --first-mask masks/first.png --out out/v5",
        flags="none",
    )
    add("video-seg davis with blank lines", "ok", f"{video} --davis davis_blank --out out/dv3", flags="none")
    add("video-seg davis without first mask", "error", f"{video} --davis davis_noanno --out out/dv4", flags="none")
    add("video-seg --out into the DAVIS root", "error", f"{video} --davis davis --out davis", flags="none")

    # demo start-up: each of these must stop before serving
    demo = "demo --weights random:vit_tiny/16 --cache-dir out/demo_cache"
    add("demo busy port", "error", f"{demo} --port {port}", flags="none", timeout=300)
    add("demo --gallery missing", "error", f"{demo} --gallery missing", flags="none", timeout=300)
    add("demo --gallery only_bad", "error", f"{demo} --gallery only_bad", flags="none", timeout=300)
    add("demo --copy-threshold nan", "error", f"{demo} --copy-threshold nan", flags="none")
    add("info", "ok", "info", flags="none")
    add("unknown verb", "error", "frobnicate", flags="none")
    return result


# ---------------------------------------------------------------------------- running and judging
def _snapshot(root: Path) -> dict[str, str]:
    digests = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and "out" not in path.relative_to(root).parts[:1]:
            digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def run_case(root: Path, case: Case) -> Outcome:
    before = _snapshot(root)
    start = time.perf_counter()
    try:
        result = subprocess.run(_dino() + case.argv, cwd=root, capture_output=True, text=True, timeout=case.timeout)
        code, stderr = result.returncode, result.stderr
    except subprocess.TimeoutExpired as expired:
        partial = expired.stderr or ""
        code, stderr = None, partial.decode(errors="replace") if isinstance(partial, bytes) else partial
    seconds = time.perf_counter() - start
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    # The workspace is a temporary folder of this machine: results name it WORKSPACE.
    last = lines[-1].replace(str(root), "WORKSPACE") if lines else ""
    problems = []
    after = _snapshot(root)
    changed = sorted(name for name in before if after.get(name) != before[name])
    if changed:
        problems.append(f"changed or removed: {', '.join(changed[:5])}")
    if code is None:
        verdict = "hang"
    elif "Traceback (most recent call last)" in stderr:
        verdict = "traceback"
    elif case.expect == "error" and code == 0:
        verdict = "wrong"
    elif case.expect == "ok" and code != 0:
        verdict = "failed"
    elif case.expect == "error" and code != 2:
        verdict = "traceback" if code not in (1, 2) else "pass"
    else:
        verdict = "pass"
    if case.check is not None and code is not None:
        problem = case.check(root)
        if problem:
            problems.append(problem)
            verdict = "wrong" if verdict == "pass" else verdict
    if changed and verdict == "pass":
        verdict = "damage"
    return Outcome(case.name, case.argv, case.expect, verdict, code, round(seconds, 1), last[:300], problems)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write every outcome as JSON here")
    parser.add_argument("--only", nargs="+", help="run the cases whose verb (first word) is one of these")
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it (default: a temporary one)")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="dino-bad-inputs-"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "out").mkdir(exist_ok=True)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        print(f"building the workspace in {root} …", file=sys.stderr)
        build_workspace(root)
        selected = [case for case in cases(port) if not args.only or case.name.split()[0] in args.only]
        outcomes = []
        for number, case in enumerate(selected, 1):
            outcome = run_case(root, case)
            outcomes.append(outcome)
            flag = "" if outcome.verdict == "pass" else f"  <-- {outcome.verdict.upper()}"
            print(f"[{number:3d}/{len(selected)}] {outcome.seconds:6.1f}s {case.name}{flag}", file=sys.stderr)
            if outcome.verdict != "pass":
                print(f"        exit {outcome.code}: {outcome.last_line} {outcome.problems}", file=sys.stderr)
    counts = Counter(outcome.verdict for outcome in outcomes)
    print(json.dumps(dict(counts)))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"counts": counts, "outcomes": [o.__dict__ for o in outcomes]}, indent=1) + "\n")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if counts.keys() <= {"pass"} else 1)


if __name__ == "__main__":
    main()
