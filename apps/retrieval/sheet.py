"""Contact sheets: each query beside its best matches, for looking at search results."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from dino.atomic import atomic_write
from dino.data.io import open_image
from dino.data.transforms import Thumbnail
from dino.search.index import Hit

__all__ = ["contact_sheet", "save_contact_sheet"]

TILE = 160
CAPTION = 34
MARGIN = 6
QUERY_FRAME = (30, 110, 220)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


def _tile(image: Image.Image) -> Image.Image:
    """The image fitted in TILE×TILE (aspect kept), centred on a white square."""
    image = Thumbnail(TILE)(image)
    tile = Image.new("RGB", (TILE, TILE), BACKGROUND)
    tile.paste(image, ((TILE - image.width) // 2, (TILE - image.height) // 2))
    return tile


def _shorten(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def contact_sheet(
    queries: Sequence[str | os.PathLike[str] | Image.Image], hits: Sequence[Sequence[Hit]]
) -> Image.Image:
    """One row per query: the query (framed in blue), then its hits left to right with rank, score and file name."""
    if len(queries) != len(hits):
        raise ValueError(f"{len(queries)} queries but {len(hits)} result lists")
    columns = 1 + max((len(row) for row in hits), default=0)
    cell_w, cell_h = TILE + 2 * MARGIN, TILE + CAPTION + 2 * MARGIN
    sheet = Image.new("RGB", (columns * cell_w, len(queries) * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    for row, (query, results) in enumerate(zip(queries, hits, strict=True)):
        top = row * cell_h + MARGIN
        query_image = query if isinstance(query, Image.Image) else open_image(query)
        sheet.paste(_tile(query_image), (MARGIN, top))
        draw.rectangle((MARGIN - 3, top - 3, MARGIN + TILE + 2, top + TILE + 2), outline=QUERY_FRAME, width=3)
        name = "query" if isinstance(query, Image.Image) else Path(query).name
        draw.text((MARGIN, top + TILE + 4), _shorten(name), fill=QUERY_FRAME, font=font)
        for column, hit in enumerate(results, start=1):
            left = column * cell_w + MARGIN
            sheet.paste(_tile(open_image(hit.path)), (left, top))
            draw.text((left, top + TILE + 4), f"#{hit.rank + 1}  {hit.score:.3f}", fill=TEXT, font=font)
            draw.text((left, top + TILE + 18), _shorten(Path(hit.path).name), fill=TEXT, font=font)
    return sheet


def save_contact_sheet(
    queries: Sequence[str | os.PathLike[str] | Image.Image],
    hits: Sequence[Sequence[Hit]],
    out: str | os.PathLike[str],
) -> Path:
    """Write :func:`contact_sheet` as a PNG, atomically."""
    with atomic_write(out, "wb") as handle:
        contact_sheet(queries, hits).save(handle, format="PNG")
    return Path(out)
