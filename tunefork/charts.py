"""The run report's pictures as SVG written directly: learning curves, a confusion matrix, predicted against true.

Every `train` draws them, so their cost is paid by every run: through matplotlib it was ~1.3 s of a run (0.75 s to
import it, 0.1–0.2 s a figure to lay out and render), a tenth of a cached frozen-encoder run. These pictures are lines,
dots, boxes and text, which SVG says in a few elements: written here they take milliseconds, their text stays text
(selectable, searchable, sharp at any zoom) and nothing is rasterised. What the lines are (`visualize.curves`,
`visualize.fit_summary`) is shared with `tunefork visualize`, which keeps matplotlib for PNG and PDF files.
"""

from __future__ import annotations

import math
from html import escape

from tunefork.visualize import PALETTE, curves, fit_summary, tick_names

FONT = '-apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "DejaVu Sans", sans-serif'
INK, MUTED, GRID = "#111827", "#6b7280", "#e5e7eb"
# matplotlib's "Blues" colour map (ColorBrewer), sampled at nine even steps from 0 to 1
BLUES = ("#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b")
DASHES = ("", "6 3", "2 3", "6 3 2 3")  # one per run when several runs share a chart
WIDTH = 600  # every chart of the report is this wide, so their lettering is one size on the page
MAX_POINTS = 2000  # a scatter draws at most this many rows (chosen evenly); its MAE and R² use every row


def ticks(low: float, high: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick values inside [low, high]: steps of 1, 2, 2.5 or 5 times a power of ten."""
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw and not (integer and m == 2.5))
    step = max(step, 1.0) if integer else step
    first = math.ceil(low / step - 1e-9)
    return [round((first + i) * step, 12) for i in range(int(math.floor(high / step + 1e-9)) - first + 1)]


def _label(value: float, values: list[float]) -> str:
    """A tick label with as many decimals as the step between ticks needs (0.25 → two, 20 → none)."""
    step = min((b - a for a, b in zip(values, values[1:], strict=False)), default=1.0)
    decimals = next(d for d in range(7) if d == 6 or abs(step * 10**d - round(step * 10**d)) < 1e-6)
    return f"{value:,.{decimals}f}"


def _width(text: str, size: float) -> float:
    """About how wide `text` sets at `size` px (average sans-serif advance), to make room for tick labels."""
    return 0.58 * size * len(text)


class _Svg:
    def __init__(self, width: float, height: float):
        self.width, self.height, self.parts = width, height, []

    def add(self, tag: str, text: str | None = None, **attributes) -> None:
        attrs = " ".join(f'{k.rstrip("_").replace("_", "-")}="{escape(str(v))}"' for k, v in attributes.items()
                         if v is not None)
        self.parts.append(f"<{tag} {attrs}>{escape(text)}</{tag}>" if text is not None else f"<{tag} {attrs}/>")

    def text(self, x: float, y: float, text: str, size: float = 11, anchor: str = "start", rotate: float | None = None,
             **attributes) -> None:
        self.add("text", text, x=f"{x:.1f}", y=f"{y:.1f}", font_size=size, text_anchor=anchor,
                 transform=f"rotate({rotate} {x:.1f} {y:.1f})" if rotate else None, **attributes)

    def title(self, lines: list[str]) -> None:
        for i, line in enumerate(lines):
            self.text(14, 22 + 17 * i, line, size=14 if i == 0 else 11.5, fill=INK if i == 0 else MUTED)

    def render(self) -> bytes:
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width:.0f}" height="{self.height:.0f}" '
                f'viewBox="0 0 {self.width:.0f} {self.height:.0f}" font-family=\'{FONT}\' fill="{INK}">'
                f'<rect width="100%" height="100%" fill="#ffffff"/>')
        return (head + "".join(self.parts) + "</svg>").encode("utf-8")


class _Axes:
    """A plotting area with its two linear scales, grid, tick labels and axis names."""

    def __init__(self, svg: _Svg, box: tuple[float, float, float, float], x: tuple[float, float], y: tuple[float, float]):
        self.svg, (self.left, self.top, self.right, self.bottom), self.x, self.y = svg, box, x, y

    def px(self, x: float, y: float) -> tuple[float, float]:
        (x0, x1), (y0, y1) = self.x, self.y
        return (self.left + (x - x0) / (x1 - x0) * (self.right - self.left),
                self.bottom - (y - y0) / (y1 - y0) * (self.bottom - self.top))

    def frame(self, xticks: list[float], yticks: list[float], xname: str, yname: str, ylabel_room: float,
              xlabel=None) -> None:
        """`xlabel`: a tick value → its label (default: the value with the decimals the step needs)."""
        svg = self.svg
        for value in yticks:
            _, py = self.px(self.x[0], value)
            svg.add("line", x1=self.left, x2=self.right, y1=f"{py:.1f}", y2=f"{py:.1f}", stroke=GRID)
            svg.text(self.left - 6, py + 4, _label(value, yticks), size=10.5, anchor="end", fill=MUTED)
        for value in xticks:
            px, _ = self.px(value, self.y[0])
            svg.add("line", x1=f"{px:.1f}", x2=f"{px:.1f}", y1=self.top, y2=self.bottom, stroke=GRID)
            svg.text(px, self.bottom + 16, xlabel(value) if xlabel else _label(value, xticks), size=10.5,
                     anchor="middle", fill=MUTED)
        svg.add("path", d=f"M{self.left},{self.top} V{self.bottom} H{self.right}", stroke=MUTED, fill="none")
        svg.text((self.left + self.right) / 2, self.bottom + 34, xname, size=11.5, anchor="middle")
        ymid = (self.top + self.bottom) / 2
        svg.text(self.left - ylabel_room - 12, ymid, yname, size=11.5, anchor="middle", rotate=-90)


def _span(values: list[float], pad: float = 0.05) -> tuple[float, float]:
    """The data's range widened by `pad` on each side (a flat series gets a unit-free margin)."""
    low, high = min(values), max(values)
    margin = (high - low) * pad or max(abs(high) * pad, 0.05)
    return low - margin, high + margin


def _left_margin(yticks: list[float]) -> tuple[float, float]:
    """Where the plotting area starts, and how wide the widest tick label is: room for the axis name and the labels."""
    room = max(_width(_label(v, yticks), 10.5) for v in yticks)
    return 14 + 16 + room + 10, room


def learning_curves(statistics: dict[str, dict], output: str, metric: str) -> bytes:
    """`metric` of `output` at each evaluation, a line per (run, split); the evaluation whose weights were kept is ringed."""
    lines = curves(statistics, output, metric)
    svg = _Svg(WIDTH, 340)
    name = metric.replace("_", " ")
    title = f"{output} · {name}"
    svg.title([title])
    rows = _legend(svg, lines, after=14 + _width(title, 14) + 24)
    points = [(x, y) for line in lines for x, y in zip(line.x, line.y, strict=True) if math.isfinite(y)]
    if not points:
        svg.text(WIDTH / 2, 170, "no values recorded", anchor="middle", fill=MUTED)
        return svg.render()
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xspan = (min(xs) - 1, max(xs) + 1) if min(xs) == max(xs) else _span(xs)
    yspan = _span(ys)
    yticks = ticks(*yspan)
    left, room = _left_margin(yticks)
    svg.height += 16 * (rows - 1)  # a legend of many lines wraps onto more rows above the plot
    axes = _Axes(svg, (left, 44 + 16 * (rows - 1), WIDTH - 18, svg.height - 46), xspan, yspan)
    axes.frame(ticks(*xspan, integer=True), yticks, "step", name, room)
    for line in lines:
        dash = DASHES[line.run % len(DASHES)] or None
        segment: list[str] = []
        for x, y in [*zip(line.x, line.y, strict=True), (None, math.nan)]:  # a missing value breaks the line
            if x is not None and math.isfinite(y):
                segment.append("{:.1f},{:.1f}".format(*axes.px(x, y)))
            elif segment:
                svg.add("polyline", points=" ".join(segment), fill="none", stroke=line.color, stroke_width=1.8,
                        stroke_dasharray=dash, stroke_linejoin="round")
                segment = []
        for x, y in zip(line.x, line.y, strict=True):
            if math.isfinite(y):
                cx, cy = axes.px(x, y)
                svg.add("circle", cx=f"{cx:.1f}", cy=f"{cy:.1f}", r=3, fill=line.color)
        if line.best is not None and math.isfinite(line.y[line.best]):
            cx, cy = axes.px(line.x[line.best], line.y[line.best])
            svg.add("circle", cx=f"{cx:.1f}", cy=f"{cy:.1f}", r=7, fill="none", stroke=INK, stroke_width=1.4)
    return svg.render()


def range_test(curve: list[dict], chosen: float) -> bytes:
    """`learning_rate: auto`'s range test: the smoothed loss against the learning rate (a log axis), the chosen
    learning rate marked by a ring and a dashed line."""
    svg = _Svg(WIDTH, 340)
    svg.title(["learning-rate range test", f"chosen: {chosen:.3g} (steepest descent of the smoothed loss)"])
    xs = [math.log10(p["learning_rate"]) for p in curve]
    ys = [p["loss"] for p in curve]
    xspan, yspan = (math.floor(min(xs)), math.ceil(max(xs)) + (min(xs) == max(xs))), _span(ys)
    yticks = ticks(*yspan)
    left, room = _left_margin(yticks)
    axes = _Axes(svg, (left, 60, WIDTH - 18, svg.height - 46), xspan, yspan)
    axes.frame(ticks(*xspan, integer=True), yticks, "learning rate", "smoothed loss", room,
               xlabel=lambda v: f"1e{int(v)}")
    svg.add("polyline", points=" ".join("{:.1f},{:.1f}".format(*axes.px(x, y)) for x, y in zip(xs, ys, strict=True)),
            fill="none", stroke=PALETTE[0], stroke_width=1.8, stroke_linejoin="round")
    x = math.log10(chosen)
    top, bottom = axes.px(x, yspan[1]), axes.px(x, yspan[0])
    svg.add("line", x1=f"{top[0]:.1f}", x2=f"{bottom[0]:.1f}", y1=f"{top[1]:.1f}", y2=f"{bottom[1]:.1f}", stroke=INK,
            stroke_dasharray="4 3")
    y = next(p["loss"] for p in curve if p["learning_rate"] == chosen)
    cx, cy = axes.px(x, y)
    svg.add("circle", cx=f"{cx:.1f}", cy=f"{cy:.1f}", r=7, fill="none", stroke=INK, stroke_width=1.4)
    return svg.render()


def _legend(svg: _Svg, lines: list, after: float) -> int:
    """The key on the title's line, right-aligned (it never covers a point), wrapping onto rows below; how many rows."""
    rows: list[list] = [[]]
    room = WIDTH - 18 - after
    for line in lines:
        if rows[-1] and sum(_entry(x) for x in rows[-1]) + _entry(line) > room:
            rows.append([])
            room = WIDTH - 18 - 14
        rows[-1].append(line)
    for r, row in enumerate(rows):
        x, y = WIDTH - 18 - sum(_entry(line) for line in row), 22 + 16 * r
        for line in row:
            svg.add("line", x1=f"{x:.1f}", x2=f"{x + 18:.1f}", y1=y - 4, y2=y - 4, stroke=line.color, stroke_width=2.2,
                    stroke_dasharray=DASHES[line.run % len(DASHES)] or None)
            svg.text(x + 24, y, line.label, size=10.5, fill=MUTED)
            x += _entry(line)
    return len(rows)


def _entry(line) -> float:
    return 24 + _width(line.label, 10.5) + 14


def _blue(share: float) -> str:
    """The Blues colour at `share` in [0, 1], interpolated between the nine samples."""
    position = min(max(share, 0.0), 1.0) * (len(BLUES) - 1)
    i = min(int(position), len(BLUES) - 2)
    a, b = (tuple(int(c[k:k + 2], 16) for k in (1, 3, 5)) for c in BLUES[i:i + 2])
    t = position - i
    return "#" + "".join(f"{round(u + (v - u) * t):02x}" for u, v in zip(a, b, strict=True))


def confusion_matrix(matrix: list[list[int]], labels: list[str], title: str) -> bytes:
    """Counts, rows true and columns predicted, each cell shaded by its share of the true class."""
    n = len(matrix)
    names = tick_names(labels, n)
    totals = [max(1, sum(row)) for row in matrix]
    slanted = n > 3
    label_room = max(_width(name, 10.5) for name in names)
    left, top, bar = 14 + 16 + label_room + 10, 44, 70  # the colour bar and its ticks take the right edge
    side = max(240.0, min(WIDTH - left - bar - 14, 36.0 * n)) if n <= 12 else 36.0 * n
    cell = side / n
    bottom_room = (label_room * 0.72 + 10 if slanted else 18) + 30
    svg = _Svg(max(WIDTH, left + side + bar + 14), top + side + bottom_room + 10)
    svg.title([title])
    for r, row in enumerate(matrix):
        for c, count in enumerate(row):
            share = count / totals[r]
            x, y = left + c * cell, top + r * cell
            svg.add("rect", x=f"{x:.1f}", y=f"{y:.1f}", width=f"{cell:.1f}", height=f"{cell:.1f}", fill=_blue(share))
            if n <= 20:  # past that the numbers would not fit their cells
                svg.text(x + cell / 2, y + cell / 2 + 4, str(int(count)), size=min(12.0, cell * 0.36), anchor="middle",
                         fill="#ffffff" if share > 0.55 else INK)
    for i, name in enumerate(names):
        middle = top + (i + 0.5) * cell
        svg.text(left - 6, middle + 4, name, size=10.5, anchor="end")
        x = left + (i + 0.5) * cell
        if slanted:
            svg.text(x + 3, top + side + 12, name, size=10.5, anchor="end", rotate=-45)
        else:
            svg.text(x, top + side + 16, name, size=10.5, anchor="middle")
    svg.text(left + side / 2, top + side + bottom_room - 4, "predicted", size=11.5, anchor="middle")
    svg.text(14 + 12, top + side / 2, "true", size=11.5, anchor="middle", rotate=-90)
    x = left + side + 16
    svg.parts.append('<defs><linearGradient id="blues" x1="0" y1="1" x2="0" y2="0">' + "".join(
        f'<stop offset="{i / (len(BLUES) - 1):.3f}" stop-color="{c}"/>' for i, c in enumerate(BLUES)) + "</linearGradient></defs>")
    svg.add("rect", x=x, y=top, width=12, height=f"{side:.1f}", fill="url(#blues)", stroke=GRID)
    for share in (0.0, 0.5, 1.0):
        svg.text(x + 16, top + (1 - share) * side + 4, f"{share:.0%}", size=10, fill=MUTED)
    svg.text(x + 52, top + side / 2, "share of the true class", size=10.5, anchor="middle", rotate=90, fill=MUTED)
    return svg.render()


def scatter(true, predicted, title: str) -> bytes:
    """Predicted against true values with the y = x line; MAE, R² and the row count under the title."""
    fit = fit_summary(true, predicted)
    pairs = list(zip(fit.true, fit.predicted, strict=True))
    shown = pairs[:: math.ceil(len(pairs) / MAX_POINTS)] if len(pairs) > MAX_POINTS else pairs
    svg = _Svg(WIDTH, 440)
    subtitle = f"MAE {fit.mae:.3f} · R² {fit.r2:.3f} · {len(pairs):,} rows" if pairs else "no rows"
    if len(shown) < len(pairs):
        subtitle += f" ({len(shown):,} drawn)"
    svg.title([title, subtitle])
    if not pairs:
        return svg.render()
    span = _span([v for pair in pairs for v in pair])
    marks = ticks(*span)
    left, room = _left_margin(marks)
    axes = _Axes(svg, (left, 60, WIDTH - 18, 440 - 46), span, span)
    axes.frame(marks, marks, "true", "predicted", room)
    (x0, y0), (x1, y1) = axes.px(span[0], span[0]), axes.px(span[1], span[1])
    svg.add("line", x1=f"{x0:.1f}", y1=f"{y0:.1f}", x2=f"{x1:.1f}", y2=f"{y1:.1f}", stroke=MUTED, stroke_dasharray="5 4")
    dots = "".join('<circle cx="{:.1f}" cy="{:.1f}" r="2.4"/>'.format(*axes.px(t, p)) for t, p in shown)
    svg.parts.append(f'<g fill="{PALETTE[0]}" fill-opacity="0.45">{dots}</g>')
    return svg.render()


def metric_against(values: list, scores: list[float], parameter: str, metric: str, log_x: bool = False) -> bytes:
    """A search's trials as dots: `metric` against one searched `parameter` (a number on its axis, log-scaled for a
    log space; any other value at one position per distinct value, named under the axis)."""
    pairs = [(v, s) for v, s in zip(values, scores, strict=True) if s is not None and math.isfinite(s)]
    svg = _Svg(WIDTH, 340)
    svg.title([f"{metric.replace('_', ' ')} against {parameter}", f"{len(pairs)} scored trial(s)"])
    if not pairs:
        return svg.render()
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v, _ in pairs)
    names = [] if numeric else list(dict.fromkeys(json_text(v) for v, _ in pairs))
    if numeric:
        xs = [math.log10(v) if log_x and v > 0 else float(v) for v, _ in pairs]
    else:
        xs = [float(names.index(json_text(v))) for v, _ in pairs]
    ys = [s for _, s in pairs]
    xspan = (min(xs) - 1, max(xs) + 1) if min(xs) == max(xs) else _span(xs, 0.08)
    yspan = _span(ys)
    yticks = ticks(*yspan)
    left, room = _left_margin(yticks)
    axes = _Axes(svg, (left, 60, WIDTH - 18, 340 - 46), xspan, yspan)
    xticks = ticks(*xspan) if numeric else []  # distinct values are named under their positions instead
    axes.frame(xticks, yticks, f"log10 {parameter}" if numeric and log_x else parameter, metric.replace("_", " "), room)
    for i, name in enumerate(tick_names(names, len(names))):
        svg.text(axes.px(i, yspan[0])[0], axes.bottom + 16, name, size=10, anchor="middle", fill=MUTED)
    dots = "".join('<circle cx="{:.1f}" cy="{:.1f}" r="4"/>'.format(*axes.px(x, y)) for x, y in zip(xs, ys, strict=True))
    svg.parts.append(f'<g fill="{PALETTE[0]}" fill-opacity="0.7">{dots}</g>')
    return svg.render()


def json_text(value) -> str:
    """A searched value as short text: numbers as written, lists and mappings as compact JSON."""
    import json

    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
