"""`tunefork visualize --visualization hyperopt_report -r <search folder>`: a search's trials drawn with matplotlib.

    hyperopt_<parameter>.png   the metric against each searched parameter (log axis for a log space; a choice of
                               lists or mappings at one position per distinct value)
    hyperopt_pairs.png         every trial as a line across all parameters (parallel coordinates), coloured by its
                               metric: which combinations score well

Ludwig's `hyperopt_hiplot` draws the parallel view with HiPlot, which is no longer maintained; it is refused with a
pointer to hyperopt_pairs, which shows the same picture.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tunefork.errors import TuneforkError

LOG_SPACES = ("loguniform", "qloguniform", "lograndint", "qlograndint")


def _statistics(source: Path) -> dict:
    path = source / "hyperopt_statistics.json" if source.is_dir() else source
    if not path.is_file():
        raise TuneforkError(f"{source}: not a search folder (no hyperopt_statistics.json); give the hyperopt[_N] "
                            "folder a `tunefork hyperopt` wrote")
    return json.loads(path.read_text())


def _positions(values: list) -> tuple[list[float], list[str] | None]:
    """Numbers as they are; anything else at 0, 1, ... by first appearance, with the names of those positions."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], None
    from tunefork.charts import json_text

    names = list(dict.fromkeys(json_text(v) for v in values))
    return [float(names.index(json_text(v))) for v in values], names


def _against(records: list[dict], path: str, space: str, metric: str):
    from tunefork.visualize import PALETTE, _figure, _tidy

    fig, ax = _figure(6.4, 4.0)
    xs, names = _positions([r["parameters"][path] for r in records])
    ax.scatter(xs, [r["metric_score"] for r in records], color=PALETTE[0], alpha=0.75)
    if names is not None:
        ax.set_xticks(range(len(names)), [n[:24] for n in names], rotation=20, ha="right")
    elif space in LOG_SPACES:
        ax.set_xscale("log")
    ax.set_xlabel(path)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against {path} · {len(records)} scored trials")
    _tidy(ax)
    return fig


def _pairs(records: list[dict], paths: list[str], metric: str, goal: str):
    from matplotlib import colormaps

    from tunefork.visualize import _figure, _tidy

    fig, ax = _figure(max(6.4, 1.8 * len(paths)), 4.2)
    columns = []
    for path in paths:
        xs, _ = _positions([r["parameters"][path] for r in records])
        low, high = min(xs), max(xs)
        columns.append([(x - low) / (high - low) if high > low else 0.5 for x in xs])
    scores = [r["metric_score"] for r in records]
    low, high = min(scores), max(scores)
    cmap = colormaps["viridis" if goal == "maximize" else "viridis_r"]
    for i, score in enumerate(scores):
        share = (score - low) / (high - low) if high > low else 1.0
        ax.plot(range(len(paths)), [column[i] for column in columns], color=cmap(share), alpha=0.8)
    ax.set_xticks(range(len(paths)), paths, rotation=10)
    ax.set_ylabel("position in the searched range")
    ax.set_title(f"trials across the parameters · colour: {metric} (bright = better)")
    _tidy(ax)
    return fig


def render(visualization: str, sources: list, output_directory, fmt: str = "png") -> list[Path]:
    """Write the search's pictures into `output_directory`; returns the files written."""
    from tunefork.visualize import _save

    if visualization == "hyperopt_hiplot":
        raise TuneforkError("hyperopt_hiplot draws with HiPlot, which is no longer maintained; use hyperopt_report, "
                            "whose hyperopt_pairs picture shows the same parallel view")
    if len(sources) != 1:
        raise TuneforkError(f"{visualization}: give one search folder with -r, got {len(sources)}")
    statistics = _statistics(Path(sources[0]))
    section = statistics["hyperopt_config"]
    records = [r for r in statistics["hyperopt_results"]
               if r["metric_score"] is not None and math.isfinite(r["metric_score"])]
    if not records:
        raise TuneforkError(f"{sources[0]}: no trial reported a score, so there is nothing to draw")
    metric, paths = section["metric"], list(section["parameters"])
    output_directory = Path(output_directory)
    written = [_save(_against(records, path, section["parameters"][path]["space"], metric), output_directory,
                     f"hyperopt_{path}", fmt) for path in paths]
    written.append(_save(_pairs(records, paths, metric, section["goal"]), output_directory, "hyperopt_pairs", fmt))
    return written
