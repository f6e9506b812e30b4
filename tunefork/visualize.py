"""Pictures of runs: learning curves, confusion matrices, predicted-vs-true scatter, compared metrics, ROC curves.

`tunefork visualize` writes them as files from run directories; the HTML run report draws the same lines as SVG
(`charts.py`, from `curves` and `fit_summary` here) without paying for matplotlib's start-up. The figures use
matplotlib's object API (`Figure`, never pyplot), so no global backend is switched and nothing opens a window: saving
goes through the Agg renderer, which works headless.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunefork.errors import TuneforkError

SPLIT_COLORS = {"training": "#4C72B0", "validation": "#DD8452", "test": "#55A868"}
PALETTE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
VISUALIZATIONS = ("learning_curves", "confusion_matrix", "compare_performance", "roc_curves")
COMPARED = ("accuracy", "macro_f1", "roc_auc", "hits_at_k", "mean_absolute_error", "root_mean_squared_error", "r2",
            "exact_match", "rouge_l", "bleu")  # the last three: a causal LM's generations, scored on the test split


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _tidy(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)


def encode(fig, fmt: str = "svg") -> bytes:
    import matplotlib

    buffer = io.BytesIO()
    # SVG text stays text (not glyph outlines): a third of the size, selectable, searchable
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buffer, format=fmt, dpi=110 if fmt == "png" else None)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ figures


@dataclass
class Curve:
    """One line of a learning curve: a split of a run, its value at each evaluation's step."""

    label: str
    x: list[int]
    y: list[float]  # nan where the evaluation did not score this split
    color: str
    run: int  # the run's position among those drawn: picks the dash pattern
    best: int | None  # index of the evaluation whose weights were kept, when it was judged on this split


def curves(statistics: dict[str, dict], output: str, metric: str) -> list[Curve]:
    """The lines of a learning curve of `metric` for `output`: one per (run, split) that recorded it."""
    several = len(statistics) > 1
    lines = []
    for i, (run, stats) in enumerate(statistics.items()):
        steps = [e["step"] for e in stats.get("evaluations", [])]
        best = stats.get("best") or {}
        for split, color in SPLIT_COLORS.items():
            values = stats.get(split, {}).get(output, {}).get(metric)
            if not values:
                continue
            y = [math.nan if v is None else float(v) for v in values]
            x = steps[: len(y)] if len(steps) >= len(y) else list(range(1, len(y) + 1))
            ringed = split == best.get("split") and best.get("evaluation") is not None and best["evaluation"] < len(y)
            lines.append(Curve(f"{run} · {split}" if several else split, x, y,
                               PALETTE[i % len(PALETTE)] if several and split == "validation" else color, i,
                               best["evaluation"] if ringed else None))
    return lines


def learning_curves(statistics: dict[str, dict], output: str, metric: str):
    """`metric` of `output` at each evaluation, one line per (run, split); the best evaluation is ringed."""
    fig, ax = _figure(6.0, 3.4)
    for line in curves(statistics, output, metric):
        ax.plot(line.x, line.y, ["-", "--", ":", "-."][line.run % 4], color=line.color, marker="o", markersize=3.5,
                linewidth=1.8, label=line.label)
        if line.best is not None:
            ax.plot([line.x[line.best]], [line.y[line.best]], "o", markersize=10, markerfacecolor="none",
                    markeredgecolor="#111827", markeredgewidth=1.4)
    ax.set_xlabel("step")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{output} · {metric.replace('_', ' ')}", loc="left", fontsize=11)
    _tidy(ax)
    if ax.lines:
        ax.legend(frameon=False, fontsize=8)
    return fig


def confusion_matrix(matrix, labels: list[str], title: str):
    """Counts, rows true and columns predicted; cells are shaded by the share of their true class."""
    m = np.asarray(matrix, dtype=float)
    n = len(m)
    # one width for every figure in the report keeps their lettering the same size; height grows with the classes
    fig, ax = _figure(6.0 if n <= 12 else min(12.0, 2.0 + 0.4 * n), max(4.2, min(11.0, 1.6 + 0.4 * n)))
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    names = tick_names(labels, n)
    ax.set_xticks(range(n), names, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:  # past that the numbers would not fit their cells
        for (r, c), count in np.ndenumerate(m):
            ax.text(c, r, f"{int(count)}", ha="center", va="center", fontsize=8,
                    color="white" if share[r, c] > 0.55 else "#111827")
    ax.set_title(title, loc="left", fontsize=11)
    return fig


@dataclass
class Fit:
    """Predicted against true values (finite pairs only), with the mean absolute error and R²."""

    true: list[float]
    predicted: list[float]
    mae: float
    r2: float


def fit_summary(true, predicted) -> Fit:
    y, p = np.asarray(true, dtype=float), np.asarray(predicted, dtype=float)
    keep = np.isfinite(y) & np.isfinite(p)
    y, p = y[keep], p[keep]
    if not len(y):
        return Fit([], [], math.nan, math.nan)
    variance = float(np.var(y))
    r2 = 1 - float(np.mean((p - y) ** 2)) / variance if variance > 0 else math.nan
    return Fit(y.tolist(), p.tolist(), float(np.mean(np.abs(p - y))), r2)


def scatter(true, predicted, title: str):
    """Predicted against true values with the y = x line; MAE and R² in the title."""
    fit = fit_summary(true, predicted)
    fig, ax = _figure(6.0, 4.2)
    ax.scatter(fit.true, fit.predicted, s=9, alpha=0.45, color=PALETTE[0], linewidths=0)
    if fit.true:
        low, high = min(min(fit.true), min(fit.predicted)), max(max(fit.true), max(fit.predicted))
        ax.plot([low, high], [low, high], "--", color="#6b7280", linewidth=1)
        title = f"{title}\nMAE {fit.mae:.3f} · R² {fit.r2:.3f} · {len(fit.true)} rows"
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title, loc="left", fontsize=11)
    _tidy(ax)
    return fig


def compare_performance(scores: dict[str, dict], output: str, title: str):
    """Grouped bars: one group per metric, one bar per run."""
    metrics = [m for m in COMPARED if any(m in s and s[m] is not None for s in scores.values())]
    if not metrics:
        raise TuneforkError(f"output '{output}': none of the runs reports a comparable metric ({', '.join(COMPARED)})")
    fig, ax = _figure(max(5.0, 1.3 * len(metrics) * max(1, len(scores)) ** 0.5 + 2), 3.6)
    width = 0.8 / len(scores)
    for i, (run, values) in enumerate(scores.items()):
        heights = [values.get(m) if values.get(m) is not None else np.nan for m in metrics]
        bars = ax.bar(np.arange(len(metrics)) + (i - (len(scores) - 1) / 2) * width, heights, width * 0.92,
                      label=run, color=PALETTE[i % len(PALETTE)])
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(range(len(metrics)), [m.replace("_", " ") for m in metrics], fontsize=9)
    ax.set_title(title, loc="left", fontsize=11)
    _tidy(ax)
    ax.legend(frameon=False, fontsize=8)
    return fig


def roc_points(positive, score) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, from the highest score down."""
    y = np.asarray(positive, dtype=bool)
    s = np.asarray(score, dtype=float)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last row of each run of tied scores
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    return np.r_[0.0, fp / max(1, (~y).sum())], np.r_[0.0, tp / max(1, y.sum())]


def roc_curves(curves: dict[str, tuple], title: str):
    fig, ax = _figure(4.8, 4.4)
    for i, (run, (fpr, tpr, auc)) in enumerate(curves.items()):
        ax.plot(fpr, tpr, color=PALETTE[i % len(PALETTE)], linewidth=1.8, label=f"{run} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="#9ca3af", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, loc="left", fontsize=11)
    _tidy(ax)
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    return fig


# ------------------------------------------------------------------------------------ run directories → files


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise TuneforkError(f"{path}: not found (is {path.parent} a tunefork run directory?)")
    return json.loads(path.read_text())


def output_meta(run: Path) -> dict:
    """Output feature metadata (class names) from a run directory's model folder; {} if there is none (a causal
    LM's metadata has no per-output section: its outputs are generated text)."""
    path = run / "model" / "training_set_metadata.json"
    return (json.loads(path.read_text()).get("outputs") or {}) if path.is_file() else {}


def _none_of(runs: list[Path], what: str) -> TuneforkError:
    """The error when no output of `runs` has `what`, naming causal-LM runs, which never do."""
    llm = [str(r) for r in runs if (r / "model" / "training_set_metadata.json").is_file()
           and json.loads((r / "model" / "training_set_metadata.json").read_text()).get("model_type") == "llm"]
    why = (f" ({', '.join(llm)}: model_type llm, whose output is generated text; learning_curves and "
           f"compare_performance draw its runs)") if llm else ""
    return TuneforkError(f"no category or binary output {what} in these runs{why}")


def tick_names(labels: list[str], n: int) -> list[str]:
    """A confusion matrix's n axis labels: class names cut to 18 characters, indices where names run out."""
    return [str(label)[:18] for label in labels[:n]] + [str(i) for i in range(len(labels), n)]


def class_names(meta: dict, n: int) -> list[str]:
    names = meta.get("vocab") or meta.get("labels") or []
    return [str(v) for v in names] if len(names) == n else [str(i) for i in range(n)]


def best_scores(statistics: dict, split: str) -> dict:
    """{output: {metric: value}} at the evaluation that picked the best weights (the last one if none did)."""
    best = (statistics.get("best") or {}).get("evaluation")
    out = {}
    for output, metrics in (statistics.get(split) or {}).items():
        out[output] = {m: (v[best] if best is not None and best < len(v) else v[-1]) for m, v in metrics.items() if v}
    return out


def _outputs(statistics: dict, wanted: str | None) -> list[str]:
    names = [o for o in statistics.get("training", {}) if o != "combined"]
    if wanted is not None:
        if wanted not in names:
            raise TuneforkError(f"output feature '{wanted}' not found; this run has: {', '.join(names)}")
        return [wanted]
    return names


def _save(fig, folder: Path, name: str, fmt: str) -> Path:
    path = folder / f"{name}.{fmt}"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(fig, fmt))
    return path


def render(visualization: str, runs: list[Path], output_directory: Path, *, file_format: str = "png",
           model_names: list[str] | None = None, output_feature_name: str | None = None,
           ground_truth=None, positive_label: str | None = None) -> list[Path]:
    """Write `visualization` for the run directories `runs` into `output_directory`; returns the files written."""
    if visualization not in VISUALIZATIONS:
        raise TuneforkError(f"unknown visualization '{visualization}' (one of: {', '.join(VISUALIZATIONS)})")
    runs = [Path(r) for r in runs]
    if model_names and len(model_names) != len(runs):
        raise TuneforkError(f"--model_names has {len(model_names)} names for {len(runs)} run directories")
    names = model_names or [r.name for r in runs]
    output_directory = Path(output_directory)  # made by the first `_save`: a refused request leaves no folder
    training = {n: _read_json(r / "training_statistics.json") for n, r in zip(names, runs, strict=True)}
    outputs = _outputs(next(iter(training.values())), output_feature_name)
    written = []
    if visualization == "learning_curves":
        for output in [*outputs, "combined"] if output_feature_name is None else outputs:
            metrics = dict.fromkeys(m for s in training.values() for m in s.get("training", {}).get(output, {}))
            for metric in metrics:
                fig = learning_curves(training, output, metric)
                written.append(_save(fig, output_directory, f"learning_curves_{output}_{metric}", file_format))
    elif visualization == "confusion_matrix":
        for name, run in zip(names, runs, strict=True):
            test = _read_json(run / "test_statistics.json")
            meta = output_meta(run)
            for output in outputs:
                matrix = test.get(output, {}).get("confusion_matrix")
                if matrix is None:
                    continue
                fig = confusion_matrix(matrix, class_names(meta.get(output, {}), len(matrix)), f"{name} · {output} · test")
                written.append(_save(fig, output_directory, f"confusion_matrix_{name}_{output}", file_format))
        if not written:
            raise _none_of(runs, "with a confusion matrix")
    elif visualization == "compare_performance":
        have_test = all((r / "test_statistics.json").is_file() for r in runs)
        source = "test" if have_test else "best validation"
        for output in outputs:
            scores = {n: (_read_json(r / "test_statistics.json") if have_test else best_scores(training[n], "validation")).get(output, {})
                      for n, r in zip(names, runs, strict=True)}
            fig = compare_performance(scores, output, f"{output} · {source}")
            written.append(_save(fig, output_directory, f"compare_performance_{output}", file_format))
    else:
        written += _roc(runs, names, outputs, output_directory, file_format, ground_truth, positive_label)
    return written


def _roc(runs, names, outputs, folder: Path, fmt: str, ground_truth, positive_label) -> list[Path]:
    from types import SimpleNamespace

    import pandas as pd

    from tunefork.data import read
    from tunefork.features import binary
    from tunefork.features.metrics import roc_auc

    if ground_truth is None:
        raise TuneforkError("roc_curves needs --ground_truth: the test dataset holding the true labels, row for row")
    truth = read.read(ground_truth, "ground truth")
    written = []
    for output in outputs:
        curves = {}
        for name, run in zip(names, runs, strict=True):
            meta = output_meta(run).get(output, {})
            labels = meta.get("labels") or meta.get("vocab")
            if labels is None:
                continue  # a number output has no ROC curve
            positive = positive_label or (meta["labels"][1] if "labels" in meta else None)
            if positive is None or positive not in labels:
                raise TuneforkError(f"output '{output}': give --positive_label, one of {', '.join(map(str, labels[:10]))}")
            path = run / "test_predictions.csv"
            if not path.is_file():
                raise TuneforkError(f"{path}: not found (run `tunefork experiment`, which writes test predictions)")
            predictions = pd.read_csv(path)
            column = f"{output}_probabilities_{positive}"
            source = _column_of(run, output)
            if source not in truth.columns:
                raise TuneforkError(f"{truth.attrs['source']}: column '{source}' (output '{output}') not found")
            if len(truth) != len(predictions):
                raise TuneforkError(f"{truth.attrs['source']} has {len(truth)} rows but {path} has {len(predictions)}")
            if "str2bool" in meta:  # a binary column may hold 1/0 or yes/no: read it the way training did
                flags = binary.transform(truth[source], SimpleNamespace(source=source), meta) > 0.5
                y = flags if positive == meta["labels"][1] else ~flags
            else:
                y = truth[source].astype(str).str.strip().to_numpy() == str(positive)
            fpr, tpr = roc_points(y, predictions[column].to_numpy())
            curves[name] = (fpr, tpr, roc_auc(y, predictions[column].to_numpy()))
        if curves:
            fig = roc_curves(curves, f"{output} · positive class '{positive}'")
            written.append(_save(fig, folder, f"roc_curves_{output}", fmt))
    if not written:
        raise _none_of(runs, "to draw ROC curves for")
    return written


def _column_of(run: Path, output: str) -> str:
    path = run / "model" / "model_hyperparameters.json"
    if path.is_file():
        for feature in json.loads(path.read_text())["output_features"]:
            if feature["name"] == output:
                return feature.get("column") or output
    return output
