"""Small bar and line charts as inline SVG, drawn on the server: no chart library, no CDN.

Each chart is a self-contained `<svg>` with a `<title>` and a `role="img"` label, one `<rect>` or
point per day, and a `<title>` per mark so a pointer shows the exact figure. Colours are classes
(`chart-…`), styled by the page's stylesheet, so the markup carries no inline style (the web's
Content-Security-Policy forbids it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from xml.sax.saxutils import escape, quoteattr

WIDTH, HEIGHT = 600, 160
LEFT, RIGHT, TOP, BOTTOM = 40, 8, 10, 22


def _scale(maximum: float) -> float:
    """A round top for the y axis, at least 1."""
    if maximum <= 1:
        return 1.0
    for step in (1, 2, 5):
        magnitude = 10 ** (len(str(int(maximum))) - 1)
        top = step * magnitude
        if top >= maximum:
            return float(top)
    return float(10 ** len(str(int(maximum))))


def _frame(label: str, top: float, unit: str, days: Sequence[date], body: list[str]) -> str:
    plot_height = HEIGHT - TOP - BOTTOM
    axis = [
        f'<line class="chart-axis" x1="{LEFT}" y1="{TOP + plot_height}" '
        f'x2="{WIDTH - RIGHT}" y2="{TOP + plot_height}"/>',
        f'<text class="chart-tick" x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">'
        f"{escape(_number(top))}{escape(unit)}</text>",
        f'<text class="chart-tick" x="{LEFT - 4}" y="{TOP + plot_height}" '
        'text-anchor="end">0</text>',
    ]
    if days:
        axis.append(
            f'<text class="chart-tick" x="{LEFT}" y="{HEIGHT - 6}">{days[0].isoformat()}</text>'
        )
        axis.append(
            f'<text class="chart-tick" x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" text-anchor="end">'
            f"{days[-1].isoformat()}</text>"
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label={quoteattr(label)}><title>{escape(label)}</title>'
        + "".join(axis + body)
        + "</svg>"
    )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def stacked_bars(
    label: str, days: Sequence[date], series: Mapping[str, Sequence[int]], *, unit: str = ""
) -> str:
    """One bar per day, its segments stacked in the order of `series` (class `chart-<name>`)."""
    totals = [sum(values[n] for values in series.values()) for n in range(len(days))]
    top = _scale(max(totals, default=0))
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    slot = plot_width / max(len(days), 1)
    bar = max(slot * 0.7, 1.0)
    body: list[str] = []
    for n, day in enumerate(days):
        x = LEFT + n * slot + (slot - bar) / 2
        base: float = TOP + plot_height
        for name, values in series.items():
            value = values[n]
            if value <= 0:
                continue
            height = plot_height * value / top
            base -= height
            body.append(
                f'<rect class="chart-{escape(name)}" x="{x:.1f}" y="{base:.1f}" '
                f'width="{bar:.1f}" height="{height:.1f}" data-day="{day.isoformat()}" '
                f'data-series="{escape(name)}" data-value="{value}">'
                f"<title>{day.isoformat()}: {value} {escape(name.replace('_', ' '))}</title></rect>"
            )
    return _frame(label, top, unit, days, body)


def line(label: str, days: Sequence[date], values: Sequence[float | None], *, unit: str) -> str:
    """A line through the days that have a value (gaps where they have none), with a dot each."""
    top = _scale(max((v for v in values if v is not None), default=0))
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    slot = plot_width / max(len(days), 1)
    points: list[tuple[float, float, date, float]] = []
    for n, (day, value) in enumerate(zip(days, values, strict=True)):
        if value is None:
            continue
        x = LEFT + n * slot + slot / 2
        y = TOP + plot_height - plot_height * value / top
        points.append((x, y, day, value))
    body: list[str] = []
    if len(points) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
        body.append(f'<polyline class="chart-line" fill="none" points="{path}"/>')
    for x, y, day, value in points:
        body.append(
            f'<circle class="chart-dot" cx="{x:.1f}" cy="{y:.1f}" r="2.5" '
            f'data-day="{day.isoformat()}" data-value="{_number(value)}">'
            f"<title>{day.isoformat()}: {escape(_number(value))}{escape(unit)}</title></circle>"
        )
    return _frame(label, top, unit, days, body)
