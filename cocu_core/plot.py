"""Line plots as PNG with Pillow alone (no matplotlib in the dependency set): loss curves, ablation curves."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

from cocu_core.io import write_bytes_atomic

_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127)]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Why: round tick values a reader can read off the axis."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    out, v = [], start
    while v <= hi + 1e-12:
        out.append(round(v, 10))
        v += step
    return out


def line_plot_png(series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str,
                  ylabel: str, size: tuple[int, int] = (720, 420)) -> bytes:
    """Why: one PNG with named (x, y) series, axes, ticks and a legend; enough for loss curves."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 70, 20, 36, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    xs = [x for sx, _ in series.values() for x in sx]
    ys = [y for _, sy in series.values() for y in sy if math.isfinite(y)]
    if not xs or not ys:
        d.text((left, h // 2), "no data", fill="black")
    else:
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        pad = (y1 - y0) * 0.05 or 0.5
        y0, y1 = y0 - pad, y1 + pad
        x1 = x1 if x1 > x0 else x0 + 1

        def px(x: float, y: float) -> tuple[float, float]:
            return (left + (x - x0) / (x1 - x0) * (w - left - right), top + (y1 - y) / (y1 - y0) * (h - top - bottom))

        d.rectangle([left, top, w - right, h - bottom], outline="black")
        for t in _ticks(y0, y1):
            _, yy = px(x0, t)
            d.line([left - 4, yy, left, yy], fill="black")
            d.line([left, yy, w - right, yy], fill=(230, 230, 230))
            d.text((4, yy - 6), f"{t:.3g}", fill="black")
        for t in _ticks(x0, x1):
            xx, _ = px(t, y0)
            d.line([xx, h - bottom, xx, h - bottom + 4], fill="black")
            d.text((xx - 10, h - bottom + 6), f"{t:g}", fill="black")
        for i, (name, (sx, sy)) in enumerate(series.items()):
            colour = _COLOURS[i % len(_COLOURS)]
            pts = [px(x, y) for x, y in zip(sx, sy) if math.isfinite(y)]
            if len(pts) > 1:
                d.line(pts, fill=colour, width=2)
            elif pts:
                d.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=colour)
            ly = top + 8 + 14 * i
            d.line([w - right - 150, ly + 6, w - right - 130, ly + 6], fill=colour, width=3)
            d.text((w - right - 125, ly), name, fill="black")
    d.text((left, 10), title, fill="black")
    d.text(((w - len(xlabel) * 6) // 2, h - 18), xlabel, fill="black")
    d.text((4, top - 18), ylabel, fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_line_plot(path: str | Path, series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str,
                   xlabel: str, ylabel: str) -> None:
    """Why: atomic write of :func:`line_plot_png`."""
    write_bytes_atomic(path, line_plot_png(series, title, xlabel, ylabel))
