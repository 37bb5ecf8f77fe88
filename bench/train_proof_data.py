"""Build the data of the CPU training proof (docs/training.md): a training folder of frames and photos, and
a k-NN task from DAVIS-2016 sequences. Nothing here is read by tests.

Training images (never evaluation data): evenly spaced frames of the shared videos, the shared photos, and the
sample photos shipped with scikit-image and scikit-learn, resized so the short side is `--short-side`. With
`--exclude-benchmark BENCH`, the photos that a copy-detection benchmark (`benchmark.json` of `dino copy-detect
make-benchmark`) uses as originals or distractors are left out, so that benchmark stays unseen by training.
k-NN task: class = DAVIS sequence; the first half of each sequence's frames is the bank (train/), the second
half the queries (val/), as symlinks.

    python bench/train_proof_data.py --data-dir $DINO_DATA_DIR --train-out train-frames --knn-out davis-knn
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import cv2
import numpy as np
from davis_knn_task import write_davis_knn_task
from PIL import Image

from dino.data.io import list_images, open_image

VIDEO_FRAMES = 100  # default number of frames kept per video, evenly spaced
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "motorcycle_left",
    "immunohistochemistry",
    "retina",
    "skin",
    "lily",
    "colorwheel",
    "cat",
    "brick",
    "grass",
    "gravel",
)


def _save(image: Image.Image, path: Path, short_side: int) -> None:
    scale = short_side / min(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    image.save(path, quality=92)


SKIMAGE_ALIASES = {"chelsea": "cat"}  # skimage.data.cat() is the chelsea.png photo


def benchmark_photo_stems(benchmark: Path) -> set[str]:
    """File stems (and scikit-image loader names) of the photos a copy-detection benchmark uses as originals or
    distractors."""
    manifest = json.loads((benchmark / "benchmark.json").read_text())
    stems = {Path(source).stem for part in ("originals", "distractors") for source in manifest[part].values()}
    return stems | {SKIMAGE_ALIASES[stem] for stem in stems if stem in SKIMAGE_ALIASES}


def build_training_folder(
    data_dir: Path, out: Path, short_side: int, video_frames: int = VIDEO_FRAMES, exclude: frozenset[str] = frozenset()
) -> int:
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for video in sorted((data_dir / "videos").iterdir()):
        capture = cv2.VideoCapture(str(video))
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        keep = set(np.linspace(0, total - 1, min(video_frames, total)).round().astype(int).tolist())
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index in keep:
                _save(
                    Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)),
                    out / f"{video.stem}_{index:04d}.jpg",
                    short_side,
                )
                count += 1
            index += 1
    for path in list_images(data_dir / "images"):
        if path.stem in exclude:
            continue
        _save(open_image(path), out / f"photo_{path.parent.name}_{path.stem}.jpg", short_side)
        count += 1
    import skimage.data
    from skimage.color import gray2rgb

    for name in SKIMAGE_PHOTOS:
        loader = getattr(skimage.data, name, None)
        if loader is None or name in exclude:
            continue
        try:
            array = loader()
        except Exception:  # some need pooch downloads; skip them offline
            continue
        if isinstance(array, tuple):
            array = array[0]
        if array.ndim == 2:
            array = gray2rgb(array)
        _save(Image.fromarray(np.asarray(array[..., :3], dtype=np.uint8)), out / f"skimage_{name}.jpg", short_side)
        count += 1
    from sklearn.datasets import load_sample_images

    samples = load_sample_images()
    for index, (array, filename) in enumerate(zip(samples.images, samples.filenames, strict=True)):
        if Path(filename).stem in exclude:
            continue
        _save(Image.fromarray(array), out / f"sklearn_{index}.jpg", short_side)
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data-dir", default=os.environ.get("DINO_DATA_DIR"), required="DINO_DATA_DIR" not in os.environ
    )
    parser.add_argument("--train-out", default="train-frames")
    parser.add_argument("--knn-out", default="davis-knn")
    parser.add_argument("--short-side", type=int, default=160)
    parser.add_argument("--video-frames", type=int, default=VIDEO_FRAMES, help="frames kept per video, evenly spaced")
    parser.add_argument(
        "--exclude-benchmark",
        type=Path,
        help="a copy-detection benchmark folder whose originals and distractors must not be trained on",
    )
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    exclude = frozenset(benchmark_photo_stems(args.exclude_benchmark)) if args.exclude_benchmark else frozenset()
    count = build_training_folder(data_dir, Path(args.train_out), args.short_side, args.video_frames, exclude)
    print("training images:", count, f"({len(exclude)} benchmark photos excluded)" if exclude else "")
    print("davis k-NN bank / queries:", write_davis_knn_task(data_dir / "davis2016-dev", Path(args.knn_out)))


if __name__ == "__main__":
    main()
