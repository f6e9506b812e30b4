"""The report's SVG charts: where the marks land, what the text says, and that drawing them never loads matplotlib."""

from __future__ import annotations

import math
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from tunefork import charts

NS = "{http://www.w3.org/2000/svg}"


def _parse(svg: bytes) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg"
    return root


def _texts(root: ET.Element) -> list[str]:
    return [t.text for t in root.iter(f"{NS}text")]


def _statistics(validation_accuracy: list) -> dict:
    return {
        "evaluations": [{"step": s} for s in (10, 20, 30, 40)],
        "training": {"label": {"accuracy": [0.5, 0.6, 0.7, 0.8]}},
        "validation": {"label": {"accuracy": validation_accuracy}},
        "best": {"split": "validation", "evaluation": 1},
    }


@pytest.mark.parametrize("low, high, integer", [(0.0, 1.0, False), (0.731, 0.8342, False), (-3.2, 41.7, False),
                                                (112.0, 388.0, True), (0.0, 2.0, True), (1e-5, 3e-5, False)])
def test_ticks_are_round_evenly_spaced_and_inside_the_range(low, high, integer):
    values = charts.ticks(low, high, integer=integer)
    assert 2 <= len(values) <= 11
    assert all(low - 1e-12 <= v <= high + 1e-12 for v in values)
    steps = np.diff(values)
    assert np.allclose(steps, steps[0])
    mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]))
    assert any(math.isclose(mantissa, m) for m in ((1, 2, 5) if integer else (1, 2, 2.5, 5)))
    if integer:
        assert all(float(v).is_integer() for v in values)


def test_an_integer_axis_never_gets_fractional_ticks():
    assert charts.ticks(0.2, 1.8, integer=True) == [1.0]  # one evaluation at step 1
    assert charts.ticks(0.0, 4.0, count=10, integer=True) == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_tick_labels_show_the_decimals_their_step_needs():
    assert [charts._label(v, [0.25, 0.5, 0.75]) for v in (0.25, 0.5, 0.75)] == ["0.25", "0.50", "0.75"]
    assert charts._label(1500.0, [1000.0, 1500.0, 2000.0]) == "1,500"
    assert charts._label(0.74, [0.74, 0.76]) == "0.74"


def test_learning_curves_draw_each_recorded_value_and_ring_the_kept_one():
    root = _parse(charts.learning_curves({"run": _statistics([0.55, 0.65, None, 0.6])}, "label", "accuracy"))
    lines = root.findall(f"{NS}polyline")
    # training: one unbroken line of 4 points; validation: the missing third value splits it into 2 + 1 points
    assert sorted(len(line.get("points").split()) for line in lines) == [1, 2, 4]
    rings = [c for c in root.iter(f"{NS}circle") if c.get("fill") == "none"]
    dots = [c for c in root.iter(f"{NS}circle") if c.get("fill") != "none"]
    assert len(dots) == 7 and len(rings) == 1
    validation = [c for c in dots if c.get("fill") == "#DD8452"]
    ring = rings[0]
    assert (ring.get("cx"), ring.get("cy")) == (validation[1].get("cx"), validation[1].get("cy"))  # evaluation 1
    texts = _texts(root)
    assert {"label · accuracy", "training", "validation", "step", "accuracy"} <= set(texts)
    # higher accuracy is drawn higher: training's y falls (SVG y grows downwards) as its values rise
    training_y = [float(c.get("cy")) for c in dots if c.get("fill") == "#4C72B0"]
    assert training_y == sorted(training_y, reverse=True)


def test_confusion_matrix_shows_counts_row_by_row_shaded_by_share():
    matrix = [[90, 10, 0, 0], [5, 5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    root = _parse(charts.confusion_matrix(matrix, ["cat", "dog", "bird", "fish"], "animal · test"))
    texts = _texts(root)
    assert [int(t) for t in texts if t.isdigit()] == [c for row in matrix for c in row]
    assert {"cat", "dog", "bird", "fish", "predicted", "true", "0%", "100%", "animal · test"} <= set(texts)
    cells = [r for r in root.iter(f"{NS}rect") if r.get("fill", "").startswith("#")][1:]  # after the background
    assert len(cells) == 16
    assert cells[0].get("fill") == charts._blue(0.9) and cells[5].get("fill") == charts._blue(0.5)
    assert cells[10].get("fill") == charts.BLUES[-1] and cells[15].get("fill") == charts.BLUES[0]  # an empty row: 0%
    numbers = [t for t in root.iter(f"{NS}text") if t.text.isdigit()]
    assert numbers[0].get("fill") == "#ffffff" and numbers[1].get("fill") != "#ffffff"  # light text on dark cells


def test_scatter_reports_the_fit_and_draws_at_most_max_points():
    rng = np.random.default_rng(0)
    true = rng.normal(size=5000)
    predicted = true + rng.normal(scale=0.5, size=5000)
    predicted[0] = np.nan  # dropped from the drawing and from the figures
    root = _parse(charts.scatter(true, predicted, "score · test"))
    keep = np.isfinite(predicted)
    mae = np.mean(np.abs(predicted[keep] - true[keep]))
    r2 = 1 - np.mean((predicted[keep] - true[keep]) ** 2) / np.var(true[keep])
    subtitle = _texts(root)[1]
    assert subtitle.startswith(f"MAE {mae:.3f} · R² {r2:.3f} · 4,999 rows (")
    dots = list(root.iter(f"{NS}circle"))
    assert 1000 < len(dots) <= charts.MAX_POINTS and f"({len(dots):,} drawn)" in subtitle


def test_the_report_is_drawn_without_importing_matplotlib():
    code = ("import sys\nfrom tunefork import charts, report\n"
            "charts.learning_curves({'r': {'training': {'y': {'loss': [1.0, 0.5]}}}}, 'y', 'loss')\n"
            "charts.confusion_matrix([[1, 2], [3, 4]], ['a', 'b'], 't')\ncharts.scatter([1, 2, 3], [1, 2, 4], 't')\n"
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
