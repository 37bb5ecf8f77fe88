"""Build the data of the CPU training proof (docs/training.md): a training folder of frames and photos, and
a k-NN task from DAVIS-2016 sequences. Nothing here is read by tests.

Training images (never evaluation data): every k-th frame of the shared videos, the shared photos, and the
sample photos shipped with scikit-image and scikit-learn, resized so the short side is `--short-side`.
k-NN task: class = DAVIS sequence; the first half of each sequence's frames is the bank (train/), the second
half the queries (val/), as symlinks.

    python bench/train_proof_data.py --data-dir $DINO_DATA_DIR --train-out /tmp/train-frames --knn-out /tmp/davis-knn
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from dino.data.io import list_images, open_image
from dino.data.masks import davis_frames, davis_sequences

VIDEO_FRAMES = 100  # frames kept per video, evenly spaced
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


def build_training_folder(data_dir: Path, out: Path, short_side: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for video in sorted((data_dir / "videos").iterdir()):
        capture = cv2.VideoCapture(str(video))
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        keep = set(np.linspace(0, total - 1, VIDEO_FRAMES).round().astype(int).tolist())
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
        _save(open_image(path), out / f"photo_{path.parent.name}_{path.stem}.jpg", short_side)
        count += 1
    import skimage.data
    from skimage.color import gray2rgb

    for name in SKIMAGE_PHOTOS:
        loader = getattr(skimage.data, name, None)
        if loader is None:
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

    for index, array in enumerate(load_sample_images().images):
        _save(Image.fromarray(array), out / f"sklearn_{index}.jpg", short_side)
        count += 1
    return count


def build_davis_knn(data_dir: Path, out: Path) -> tuple[int, int]:
    root = data_dir / "davis2016-dev"
    bank = queries = 0
    for sequence in davis_sequences(root, split="val", year="2017"):
        frames = davis_frames(root, sequence)
        half = len(frames) // 2
        for split, chosen in (("train", frames[:half]), ("val", frames[half:])):
            folder = out / split / sequence
            folder.mkdir(parents=True, exist_ok=True)
            for frame in chosen:
                link = folder / Path(frame).name
                if not link.exists():
                    os.symlink(frame, link)
        bank += half
        queries += len(frames) - half
    return bank, queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data-dir", default=os.environ.get("DINO_DATA_DIR"), required="DINO_DATA_DIR" not in os.environ
    )
    parser.add_argument("--train-out", default="train-frames")
    parser.add_argument("--knn-out", default="davis-knn")
    parser.add_argument("--short-side", type=int, default=160)
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    print("training images:", build_training_folder(data_dir, Path(args.train_out), args.short_side))
    print("davis k-NN bank / queries:", build_davis_knn(data_dir, Path(args.knn_out)))


if __name__ == "__main__":
    main()
