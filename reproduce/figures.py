"""Pictures for the tables: what a person would rather look at than read. Drawn with PIL only (no plotting stack).

    gallery(items, path)   a grid of images, each with lines of text under it (e.g. the model's caption and answers)
    histogram(values, path)  bars of integer counts per series (e.g. visual tokens per image)
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


def histogram(values: dict[str, list[int]], path: str | Path, *, title: str = "", xlabel: str = "", width: int = 640, height: int = 360) -> Path:
    """Write a PNG bar chart of integer counts, one colour per series (side by side per value), with each series'
    mean in the legend. Returns the path (written atomically)."""
    import io
    from collections import Counter

    from PIL import Image, ImageDraw, ImageFont

    from harness.io import atomic_write_bytes

    if not values or not any(values.values()):
        raise ValueError("histogram: no values to draw")
    font = ImageFont.load_default()
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
    counts = {name: Counter(v) for name, v in values.items()}
    lo = min(min(v) for v in values.values() if v)
    hi = max(max(v) for v in values.values() if v)
    shares = {name: {k: c[k] / max(1, len(values[name])) for k in c} for name, c in counts.items()}
    top = max(max(s.values()) for s in shares.values() if s)
    left, right, upper, lower = 48, 16, 40 if title else 16, 40
    plot_w, plot_h = width - left - right, height - upper - lower
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((left, 8), title, fill="black", font=font)
    draw.line([(left, upper), (left, upper + plot_h), (left + plot_w, upper + plot_h)], fill="black")
    bins = hi - lo + 1
    slot = plot_w / bins
    bar = max(1.0, slot * 0.8 / len(values))
    for j, name in enumerate(values):
        for k, share in shares[name].items():
            x0 = left + (k - lo) * slot + slot * 0.1 + j * bar
            y0 = min(upper + plot_h - share / top * plot_h, upper + plot_h - 1)  # a tiny share: a one-pixel bar
            draw.rectangle([x0, y0, x0 + bar - 1, upper + plot_h - 1], fill=colours[j % len(colours)])
    for k in range(lo, hi + 1):
        if bins <= 20 or (k - lo) % max(1, bins // 10) == 0:
            draw.text((left + (k - lo + 0.4) * slot, upper + plot_h + 4), str(k), fill="black", font=font)
    if xlabel:
        draw.text((left + plot_w // 2 - 40, height - 16), xlabel, fill="black", font=font)
    draw.text((4, upper), f"{top:.0%}", fill="black", font=font)
    draw.text((4, upper + plot_h - 10), "0%", fill="black", font=font)
    for j, name in enumerate(values):
        mean = sum(values[name]) / max(1, len(values[name]))
        y = upper + 4 + 14 * j
        draw.rectangle([left + plot_w - 210, y, left + plot_w - 200, y + 10], fill=colours[j % len(colours)])
        draw.text((left + plot_w - 195, y), f"{name}: mean {mean:.2f} (n={len(values[name])})", fill="black", font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())
