"""Pictures for the tables: what a person would rather look at than read. Drawn with PIL only (no plotting stack).

    gallery(items, path)   a grid of images, each with lines of text under it (e.g. the model's caption and answers)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class GalleryItem:
    image: "Image.Image"
    lines: list[str] = field(default_factory=list)  # drawn under the image, one per row (long lines are cut)
    marks: list[bool | None] = field(default_factory=list)  # per line: True = right (green), False = wrong (red)


def _wrap(text: str, width: int, max_rows: int = 3) -> list[str]:
    import textwrap

    rows = textwrap.wrap(text, width) or [""]
    if len(rows) > max_rows:
        rows = rows[:max_rows]
        rows[-1] = rows[-1][: width - 1] + "…"
    return rows


def gallery(items: list[GalleryItem], path: str | Path, *, columns: int = 4, cell: int = 160, title: str = "") -> Path:
    """Write a PNG grid: each image scaled to `cell` pixels (nearest neighbour: the mini world's shapes stay sharp)
    with its text lines below. Returns the path (written atomically)."""
    from PIL import Image, ImageDraw, ImageFont

    from harness.io import atomic_write_bytes

    font = ImageFont.load_default()
    line_h, pad = 13, 6
    chars = max(8, cell // 6)
    wrapped = [[_wrap(line, chars) for line in item.lines] for item in items]
    n_lines = max((sum(len(rows) for rows in lines) for lines in wrapped), default=0)
    rows = -(-len(items) // columns)
    top = line_h + 2 * pad if title else 0
    width, height = columns * (cell + pad) + pad, top + rows * (cell + n_lines * line_h + 2 * pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill="black", font=font)
    for k, item in enumerate(items):
        x = pad + (k % columns) * (cell + pad)
        y = top + pad + (k // columns) * (cell + n_lines * line_h + 2 * pad)
        canvas.paste(item.image.convert("RGB").resize((cell, cell), Image.NEAREST), (x, y))
        row = 0
        for j, rows in enumerate(wrapped[k]):
            mark = item.marks[j] if j < len(item.marks) else None
            colour = {True: (0, 120, 0), False: (190, 0, 0), None: (0, 0, 0)}[mark]
            for text in rows:
                draw.text((x, y + cell + 2 + row * line_h), text, fill=colour, font=font)
                row += 1
    import io

    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())
