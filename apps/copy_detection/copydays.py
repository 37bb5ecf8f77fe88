"""Reading a benchmark in the Copydays layout: its query blocks and who is a copy of whom (SPEC §12).

The layout is ``ROOT/original``, ``ROOT/strong``, ``ROOT/jpegqual/<quality>`` and ``ROOT/crops/<percent>``, each a
folder of images. Nothing about the blocks is hard-coded: the quality and crop levels are whatever subfolders
exist (ordered numerically), and each block's size is the number of images in it. Files are taken in sorted
filename order, as the reference's ``sorted(os.listdir(...))``; the reference reads only ``.jpg`` files, every
image extension is accepted here (the Copydays release is all ``.jpg``, so that changes nothing there).

Positives (the reference's ``CopydaysDataset.eval_result``):
    * ``strong``: every original whose filename shares the query's first :data:`STRONG_PREFIX_LENGTH` characters.
    * every other block: the original at the same sorted index (1:1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dino.data.io import list_images

__all__ = [
    "ORIGINAL_BLOCK",
    "STRONG_BLOCK",
    "STRONG_PREFIX_LENGTH",
    "VARIANT_GROUPS",
    "CopydaysLayout",
    "QueryBlock",
    "read_copydays",
]

ORIGINAL_BLOCK = "original"
STRONG_BLOCK = "strong"
# Block families with one subfolder per level: JPEG quality factors and cropped-area percentages.
VARIANT_GROUPS: tuple[str, ...] = ("jpegqual", "crops")
# SPEC §12: a strong query's positives are the originals sharing its first 4 filename characters.
STRONG_PREFIX_LENGTH = 4


@dataclass(frozen=True)
class QueryBlock:
    """One block of queries and, per query, the indices of its positives among the originals.

    Attributes:
        name: ``original``, ``strong``, ``jpegqual/<q>`` or ``crops/<c>``.
        images: The query images, in sorted filename order.
        positives: For each query, the indices (into :attr:`CopydaysLayout.originals`) of its true copies.
    """

    name: str
    images: tuple[Path, ...]
    positives: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class CopydaysLayout:
    """A Copydays-layout benchmark read from disk.

    Attributes:
        root: The benchmark folder.
        originals: The database images (``original/``), in sorted filename order.
        blocks: The query blocks in the reference's order: original, strong, jpegqual levels, crop levels.
    """

    root: Path
    originals: tuple[Path, ...]
    blocks: tuple[QueryBlock, ...]

    @property
    def queries(self) -> list[Path]:
        """All query images, block after block (the order of :attr:`blocks`)."""
        return [path for block in self.blocks for path in block.images]

    def block(self, name: str) -> QueryBlock:
        """The block called `name` (e.g. ``"strong"``, ``"jpegqual/50"``)."""
        for block in self.blocks:
            if block.name == name:
                return block
        raise KeyError(f"{self.root}: no block {name!r}; blocks are {[b.name for b in self.blocks]}")


def read_copydays(root: str | os.PathLike[str]) -> CopydaysLayout:
    """Read the blocks, their sizes and their positives from a Copydays-layout folder.

    Args:
        root: A folder with ``original/`` and any of ``strong/``, ``jpegqual/<q>/``, ``crops/<c>/``.

    Raises:
        FileNotFoundError: `root` or ``root/original`` is missing.
        ValueError: An empty block, a 1:1 block whose size differs from the originals', a strong query that
            shares its prefix with no original, or a level folder that is not a number.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such Copydays folder")
    originals = tuple(_block_images(root, ORIGINAL_BLOCK))
    blocks = [_one_to_one_block(root, ORIGINAL_BLOCK, originals)]
    if (root / STRONG_BLOCK).is_dir():
        blocks.append(_strong_block(root, originals))
    for group in VARIANT_GROUPS:
        for level in _levels(root / group):
            blocks.append(_one_to_one_block(root, f"{group}/{level}", originals))
    return CopydaysLayout(root=root, originals=originals, blocks=tuple(blocks))


def _block_images(root: Path, name: str) -> list[Path]:
    folder = root / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such block folder (expected the Copydays layout, SPEC §12)")
    images = list_images(folder, recursive=False)
    if not images:
        raise ValueError(f"{folder}: block folder holds no images")
    return images


def _one_to_one_block(root: Path, name: str, originals: tuple[Path, ...]) -> QueryBlock:
    images = _block_images(root, name)
    if len(images) != len(originals):
        raise ValueError(
            f"{root / name}: {len(images)} images but {len(originals)} originals; this block maps its queries "
            "1:1 to the originals by sorted index, so the counts must match"
        )
    return QueryBlock(name=name, images=tuple(images), positives=tuple((index,) for index in range(len(images))))


def _strong_block(root: Path, originals: tuple[Path, ...]) -> QueryBlock:
    images = _block_images(root, STRONG_BLOCK)
    prefixes = [path.name[:STRONG_PREFIX_LENGTH] for path in originals]
    positives = []
    for query in images:
        matches = tuple(i for i, prefix in enumerate(prefixes) if prefix == query.name[:STRONG_PREFIX_LENGTH])
        if not matches:
            raise ValueError(
                f"{query}: no original shares its first {STRONG_PREFIX_LENGTH} characters "
                f"{query.name[:STRONG_PREFIX_LENGTH]!r}, so it has no positive"
            )
        positives.append(matches)
    return QueryBlock(name=STRONG_BLOCK, images=tuple(images), positives=tuple(positives))


def _levels(group: Path) -> list[str]:
    """The level subfolders of a block family, in increasing numeric order (3, 5, 8, 10 …, not 10, 15, 3 …)."""
    if not group.is_dir():
        return []
    levels = [entry.name for entry in group.iterdir() if entry.is_dir() and not entry.name.startswith(".")]
    for level in levels:
        try:
            float(level)
        except ValueError:
            raise ValueError(f"{group / level}: level folders of {group.name}/ must be named by a number") from None
    return sorted(levels, key=float)
