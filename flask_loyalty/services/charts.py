"""Small server-side SVG charts for the dashboard (no JavaScript, no external assets).

Each function returns an ``<svg>`` string (a :class:`markupsafe.Markup`) that
scales to its container (``viewBox``, no fixed width), carries ``role="img"``
and a ``<title>``, and escapes every label.  The numbers are always also
given as a data table next to the chart, so the picture is never the only
way to read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from itertools import count

from markupsafe import Markup, escape

from ..i18n import gettext

#: Colours with enough contrast on white, distinguishable for common colour-vision deficiencies.
PALETTE = ("#0b5cad", "#d35400", "#1b6e20", "#7b2d8b", "#a4161a", "#4a4a4a")
_ids = count(1)

Number = int | float | Decimal


def _f(value: Number) -> str:
    """A coordinate with at most one decimal."""
    return f"{float(value):.1f}".rstrip("0").rstrip(".")


def _open(width: int, height: int, title: str, desc: str = "") -> tuple[str, list[str]]:
    uid = f"lc{next(_ids)}"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'class="loyalty-chart" '
        f'role="img" aria-labelledby="{uid}t{" " + uid + "d" if desc else ""}" '
        f'preserveAspectRatio="xMidYMid meet" font-family="system-ui, sans-serif" font-size="12">',
        f'<title id="{uid}t">{escape(title)}</title>',
    ]
    if desc:
        parts.append(f'<desc id="{uid}d">{escape(desc)}</desc>')
    return uid, parts


def _close(parts: list[str]) -> Markup:
    parts.append("</svg>")
    return Markup("".join(parts))


def _text(x: Number, y: Number, text: str, *, anchor: str = "middle", size: int | None = None,
          fill: str = "#1a1a1a", weight: str | None = None, rotate: int | None = None) -> str:
    attrs = f'x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}" fill="{fill}"'
    if size:
        attrs += f' font-size="{size}"'
    if weight:
        attrs += f' font-weight="{weight}"'
    if rotate is not None:
        attrs += f' transform="rotate({rotate} {_f(x)} {_f(y)})"'
    return f"<text {attrs}>{escape(text)}</text>"


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value``."""
    if value <= 0:
        return 1.0
    magnitude = float(10 ** len(str(int(value)))) / 10
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return float(10 * magnitude)


def _shade(share: float) -> str:
    """A blue from very light (0) to dark (1)."""
    share = min(max(share, 0.0), 1.0)
    light, dark = (234, 242, 251), (11, 60, 120)
    rgb = [round(a + (b - a) * share) for a, b in zip(light, dark, strict=True)]
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def heatmap(row_labels: Sequence[str], col_labels: Sequence[str], grid: Sequence[Sequence[Decimal | None]], *,
            title: str, x_label: str = "", y_label: str = "",
            cell_labels: Sequence[Sequence[str]] | None = None) -> Markup:
    """A grid of shaded cells; ``grid`` holds fractions 0..1 (``None`` = no data, left blank).

    Cells show ``cell_labels`` when given, else the fraction as a whole percentage.
    """
    left, top = 80, 40
    cw, ch = (72, 40) if len(col_labels) <= 6 else (48, 26)
    width = max(left + cw * max(len(col_labels), 1) + 10, 9 * len(title) + left)
    height = top + ch * max(len(row_labels), 1) + 30
    _uid, parts = _open(width, height, title)
    parts.append(_text(left, 16, title, anchor="start", size=14, weight="600"))
    if x_label:
        parts.append(_text(left + cw * len(col_labels) / 2, height - 6, x_label))
    if y_label:
        parts.append(_text(4, 32, y_label, anchor="start", fill="#4a4a4a"))
    for j, label in enumerate(col_labels):
        parts.append(_text(left + cw * j + cw / 2, top - 4, label, fill="#4a4a4a"))
    for i, label in enumerate(row_labels):
        y = top + ch * i
        parts.append(_text(left - 6, y + ch / 2 + 4, label, anchor="end"))
        for j, value in enumerate(grid[i] if i < len(grid) else ()):
            x = left + cw * j
            if value is None:
                continue
            share = float(value)
            parts.append(f'<rect x="{x}" y="{y}" width="{cw - 2}" height="{ch - 2}" rx="2" '
                         f'fill="{_shade(share)}"/>')
            text = cell_labels[i][j] if cell_labels else f"{round(share * 100)}%"
            parts.append(_text(x + cw / 2 - 1, y + ch / 2 + 4, text, size=13 if cw > 60 else 11,
                               fill="#ffffff" if share > 0.45 else "#1a1a1a"))
    return _close(parts)


def _axes(parts: list[str], left: int, top: int, w: int, h: int, y_max: float, *, y_min: float = 0.0,
          y_format: str = "{:g}", ticks: int = 4) -> None:
    parts.append(f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#767676"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="#767676"/>')
    for k in range(ticks + 1):
        value = y_min + (y_max - y_min) * k / ticks
        y = top + h - h * k / ticks
        parts.append(f'<line x1="{left}" y1="{_f(y)}" x2="{left + w}" y2="{_f(y)}" stroke="#e2e2de"/>')
        parts.append(_text(left - 6, y + 4, y_format.format(value), anchor="end", fill="#4a4a4a", size=11))


def bars(labels: Sequence[str], values: Sequence[Number], *, title: str, x_label: str = "",
         y_label: str = "") -> Markup:
    """A vertical bar chart of counts."""
    left, top, w, h = 60, 30, 560, 200
    width, height = left + w + 20, top + h + 70
    _uid, parts = _open(width, height, title)
    parts.append(_text(left, 16, title, anchor="start", size=14, weight="600"))
    y_max = _nice_max(max((float(v) for v in values), default=0))
    _axes(parts, left, top, w, h, y_max)
    n = max(len(values), 1)
    slot = w / n
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        bh = h * float(value) / y_max
        x = left + slot * i + slot * 0.15
        parts.append(f'<rect x="{_f(x)}" y="{_f(top + h - bh)}" width="{_f(slot * 0.7)}" height="{_f(bh)}" '
                     f'fill="{PALETTE[0]}"><title>{escape(label)}: {escape(str(value))}</title></rect>')
        parts.append(_text(x + slot * 0.35, top + h + 14, label, size=10, rotate=-30 if n > 8 else None,
                           anchor="end" if n > 8 else "middle"))
    if x_label:
        parts.append(_text(left + w / 2, height - 4, x_label))
    if y_label:
        parts.append(_text(14, top + h / 2, y_label, rotate=-90))
    return _close(parts)


def grouped_bars(labels: Sequence[str], series: Sequence[tuple[str, Sequence[Number]]], *, title: str,
                 y_max: float | None = None, y_format: str = "{:g}", value_format: str = "{}") -> Markup:
    """Bars side by side per label, one colour per series (with a legend)."""
    left, top, w, h = 60, 50, 560, 200
    width, height = left + w + 20, top + h + 50
    _uid, parts = _open(width, height, title)
    parts.append(_text(left, 16, title, anchor="start", size=14, weight="600"))
    for s, (name, _values) in enumerate(series):
        legend_x = left + 150 * s
        parts.append(f'<rect x="{legend_x}" y="26" width="12" height="12" fill="{PALETTE[s % len(PALETTE)]}"/>')
        parts.append(_text(legend_x + 16, 36, name, anchor="start"))
    top_value = max((float(v) for _n, vals in series for v in vals), default=0)
    axis_max = y_max if y_max is not None else _nice_max(top_value)
    _axes(parts, left, top, w, h, axis_max, y_format=y_format)
    n = max(len(labels), 1)
    slot = w / n
    bw = slot * 0.8 / max(len(series), 1)
    for i, label in enumerate(labels):
        for s, (name, values) in enumerate(series):
            value = float(values[i])
            bh = h * value / axis_max if axis_max else 0.0
            x = left + slot * i + slot * 0.1 + bw * s
            parts.append(f'<rect x="{_f(x)}" y="{_f(top + h - bh)}" width="{_f(bw)}" height="{_f(bh)}" '
                         f'fill="{PALETTE[s % len(PALETTE)]}"><title>{escape(label)} – {escape(name)}: '
                         f'{escape(value_format.format(values[i]))}</title></rect>')
        parts.append(_text(left + slot * i + slot / 2, top + h + 16, label, size=11))
    return _close(parts)


def line(labels: Sequence[str], values: Sequence[Number | None], *, title: str, y_min: float, y_max: float,
         y_format: str = "{:g}", y_label: str = "") -> Markup:
    """A line over ``labels``; ``None`` values leave a gap and get no point."""
    left, top, w, h = 60, 30, 560, 200
    width, height = left + w + 20, top + h + 50
    _uid, parts = _open(width, height, title)
    parts.append(_text(left, 16, title, anchor="start", size=14, weight="600"))
    _axes(parts, left, top, w, h, y_max, y_min=y_min, y_format=y_format)
    if y_min < 0 < y_max:
        zero = top + h - h * (0 - y_min) / (y_max - y_min)
        parts.append(f'<line x1="{left}" y1="{_f(zero)}" x2="{left + w}" y2="{_f(zero)}" stroke="#767676" '
                     f'stroke-dasharray="4 3"/>')
    n = max(len(labels), 1)
    step = w / n
    segment: list[str] = []
    segments: list[list[str]] = []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x = left + step * i + step / 2
        parts.append(_text(x, top + h + 16, label, size=10))
        if value is None:
            if segment:
                segments.append(segment)
            segment = []
            continue
        y = top + h - h * (float(value) - y_min) / (y_max - y_min)
        segment.append(f"{_f(x)},{_f(y)}")
        parts.append(f'<circle cx="{_f(x)}" cy="{_f(y)}" r="4" fill="{PALETTE[0]}"><title>{escape(label)}: '
                     f'{escape(y_format.format(float(value)))}</title></circle>')
    if segment:
        segments.append(segment)
    for seg in segments:
        parts.insert(3, f'<polyline points="{" ".join(seg)}" fill="none" stroke="{PALETTE[0]}" stroke-width="2"/>')
    if y_label:
        parts.append(_text(14, top + h / 2, y_label, rotate=-90))
    return _close(parts)


def pareto(points: Sequence[tuple[Decimal, Decimal]], *, mark: Decimal, mark_share: Decimal | None,
           title: str, x_label: str = "Share of customers (best first)") -> Markup:
    """A cumulative share curve (both axes 0..100%) with a vertical mark at ``mark`` (e.g. top 30%).

    The mark's label is translated with :func:`flask_loyalty.i18n.gettext` (the dashboard's language).
    """
    left, top, w, h = 60, 30, 400, 260
    width, height = left + w + 30, top + h + 50
    _uid, parts = _open(width, height, title)
    parts.append(_text(left, 16, title, anchor="start", size=14, weight="600"))
    _axes(parts, left, top, w, h, 100, y_format="{:.0f}%")
    for k in range(5):
        x = left + w * k / 4
        parts.append(_text(x, top + h + 16, f"{25 * k}%", size=11, fill="#4a4a4a"))
    parts.append(_text(left + w / 2, height - 6, x_label))
    parts.append(f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top}" stroke="#a0a0a0" '
                 f'stroke-dasharray="3 3"/>')
    coords = [f"{_f(left + w * float(x))},{_f(top + h - h * float(y))}" for x, y in points]
    if coords:
        parts.append(f'<polyline points="{" ".join(coords)}" fill="none" stroke="{PALETTE[0]}" stroke-width="2.5"/>')
    mx = left + w * float(mark)
    parts.append(f'<line x1="{_f(mx)}" y1="{top}" x2="{_f(mx)}" y2="{top + h}" stroke="{PALETTE[1]}" '
                 f'stroke-width="2"/>')
    top_text = f"{round(float(mark) * 100)}%"
    label = gettext("top %(top)s", top=top_text)
    if mark_share is not None:
        my = top + h - h * float(mark_share)
        parts.append(f'<circle cx="{_f(mx)}" cy="{_f(my)}" r="5" fill="{PALETTE[1]}"/>')
        share_text = f"{round(float(mark_share) * 100)}%"
        label = gettext("top %(top)s → %(share)s of revenue", top=top_text, share=share_text)
        parts.append(_text(mx + 8, my + 16, label, anchor="start", fill=PALETTE[1], weight="600"))
    return _close(parts)


def funnel(labels: Sequence[str], values: Sequence[int], *, title: str) -> Markup:
    """Horizontal bars narrowing from the first step, each with its count and share of the first step."""
    left, top, w, bh = 150, 30, 420, 34
    width, height = left + w + 90, top + bh * max(len(labels), 1) + 10
    _uid, parts = _open(width, height, title)
    parts.append(_text(10, 16, title, anchor="start", size=14, weight="600"))
    first = max(float(values[0]) if values else 0.0, 1.0)
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = top + bh * i
        bw = w * float(value) / first
        x = left + (w - bw) / 2
        parts.append(_text(left - 8, y + bh / 2 + 4, label, anchor="end"))
        parts.append(f'<rect x="{_f(x)}" y="{y}" width="{_f(max(bw, 1))}" height="{bh - 6}" rx="3" '
                     f'fill="{PALETTE[i % len(PALETTE)]}"/>')
        share = f"{round(100 * float(value) / first)}%" if values and values[0] else ""
        parts.append(_text(left + w + 8, y + bh / 2 + 4, f"{value} ({share})" if share else str(value),
                           anchor="start"))
    return _close(parts)
