"""Pictures for the tables: what a person would rather look at than read. Drawn with PIL only (no plotting stack).

    gallery(items, path)   a grid of images, each with lines of text under it (e.g. the model's caption and answers)
    histogram(values, path)  bars of integer counts per series (e.g. visual tokens per image)
    bars(groups, series, path)  grouped bars with error bars and reference lines (e.g. accuracy per setting, chance)
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


@dataclass
class BarGroup:
    label: str  # under the group (one line; long labels are wrapped)
    values: list[float]  # one bar per series, in the order of `series`
    low: list[float | None] = field(default_factory=list)  # per bar: an error bar's ends (e.g. the seed range); None = no bar
    high: list[float | None] = field(default_factory=list)


def bars(groups: list[BarGroup], series: list[str], path: str | Path, *, title: str = "", ylabel: str = "",
         lines: dict[str, float] | None = None, width: int = 720, height: int = 400) -> Path:
    """Write a PNG of grouped bars (one group per row, one colour per series) with the value above each bar, an
    optional error bar per bar (low..high) and labelled horizontal reference lines (e.g. {"chance": 25.0}).
    The value axis starts at 0. Returns the path (written atomically)."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    from harness.io import atomic_write_bytes

    if not groups or not series or any(len(g.values) != len(series) for g in groups):
        raise ValueError(f"bars: every group needs one value per series ({len(series)})")
    lines = lines or {}
    font = ImageFont.load_default()
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (148, 103, 189)]
    tops = [v for g in groups for v in g.values] + [h for g in groups for h in g.high if h is not None] + list(lines.values())
    top = max(1e-9, max(tops)) * 1.15
    left, right, upper, lower = 48, 16, 48 if title else 28, 56
    plot_w, plot_h = width - left - right, height - upper - lower
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)

    def y_of(value: float) -> float:
        return upper + plot_h - max(0.0, value) / top * plot_h

    if title:
        draw.text((left, 8), title, fill="black", font=font)
    if ylabel:
        draw.text((4, 8 + (14 if title else 0)), ylabel, fill="black", font=font)
    draw.line([(left, upper), (left, upper + plot_h), (left + plot_w, upper + plot_h)], fill="black")
    for tick in range(0, 6):
        value = top / 1.15 * tick / 5
        draw.text((4, y_of(value) - 5), f"{value:.0f}", fill="black", font=font)
    slot = plot_w / len(groups)
    bar = slot * 0.8 / len(series)
    for i, group in enumerate(groups):
        for j, value in enumerate(group.values):
            x0 = left + i * slot + slot * 0.1 + j * bar
            draw.rectangle([x0, y_of(value), x0 + bar - 2, upper + plot_h - 1], fill=colours[j % len(colours)])
            draw.text((x0, y_of(value) - 12), f"{value:.1f}", fill="black", font=font)
            lo = group.low[j] if j < len(group.low) else None
            hi = group.high[j] if j < len(group.high) else None
            if lo is not None and hi is not None:
                xm = x0 + (bar - 2) / 2
                draw.line([(xm, y_of(hi)), (xm, y_of(lo))], fill="black", width=2)
                for y in (y_of(hi), y_of(lo)):
                    draw.line([(xm - 4, y), (xm + 4, y)], fill="black", width=2)
        for k, text in enumerate(_wrap(group.label, max(8, int(slot // 6)))):
            draw.text((left + i * slot + 4, upper + plot_h + 4 + 12 * k), text, fill="black", font=font)
    for name, value in lines.items():
        y = y_of(value)
        for x in range(left, left + plot_w, 8):  # dashed
            draw.line([(x, y), (x + 4, y)], fill=(120, 120, 120))
        draw.text((left + plot_w - 80, y - 12), f"{name} {value:g}", fill=(90, 90, 90), font=font)
    for j, name in enumerate(series):
        y = upper - 16 + 0 * j
        x = left + 8 + j * 200
        draw.rectangle([x, y, x + 10, y + 10], fill=colours[j % len(colours)])
        draw.text((x + 14, y), name, fill="black", font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())
