"""`report.html`: the page a person opens after a run — metrics, curves, confusion matrix or scatter, cost, config.

One self-contained file: styles inline, pictures embedded as base64 SVG (`charts.py`), no script and no network
request, so it reads the same offline, from an e-mail attachment or an artifact store. `Model.train` writes it into
the run directory before the directory appears; `Model.experiment` rewrites it with the test split added.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from tunefork import charts, visualize
from tunefork.console import SHOWN

SCATTER_ROWS = 2000  # a validation pass for the scatter is capped: the report must not cost a second evaluation
MAIN_METRIC = {"category": "accuracy", "binary": "accuracy", "number": "r2", "text": "perplexity", "set": "jaccard"}


def _main_metric(config: dict, feature: dict) -> str:
    """What a run's first card and curves show: a causal LM's evaluations report loss and perplexity only (and
    preference tuning its reward accuracy, or KTO's reward margin)."""
    if config.get("model_type") == "llm":
        kind = (config.get("trainer") or {}).get("type")
        return {"dpo": "rewards/accuracies", "orpo": "rewards/accuracies", "kto": "rewards/margins"}.get(kind, "perplexity")
    return MAIN_METRIC[feature["type"]]


class Recorder:
    """A report target beside the Console: keeps each evaluation's confusion matrices, which History drops."""

    progress = False

    def __init__(self):
        self.matrices: dict[int, dict] = {}  # by the evaluation's index in History (a resumed run starts past 0)

    def evaluation(self, epoch: int, step: int, scores: dict, history, improved: bool) -> None:
        index = len(history.evaluations) - 1 if history is not None else len(self.matrices)
        self.matrices[index] = {
            split: {o: s["confusion_matrix"] for o, s in outputs.items() if "confusion_matrix" in s}
            for split, outputs in scores.items()
        }

    def at(self, evaluation: int | None) -> dict:
        """The matrices of evaluation `evaluation`; the latest recorded if that one was not seen (before a resume)."""
        if evaluation in self.matrices:
            return self.matrices[evaluation]
        return self.matrices[max(self.matrices)] if self.matrices else {}


@dataclass
class RunReport:
    name: str
    config: dict
    plan: dict
    statistics: dict
    efficiency: dict
    outputs_meta: dict
    matrices: dict = field(default_factory=dict)  # split → output → confusion matrix (at the best evaluation)
    points: dict = field(default_factory=dict)  # split → output → (true values, predictions)
    test: dict | None = None
    range_test: dict | None = None  # learning_rate: auto (training.lr_range)

    def add_test(self, statistics: dict, predictions, frame) -> None:
        """The test split from `experiment`: its metrics, confusion matrices and regression points."""
        self.test = statistics
        self.matrices["test"] = {o: s["confusion_matrix"] for o, s in statistics.items() if "confusion_matrix" in s}
        for feature in self.config["output_features"]:
            if feature["type"] == "number":
                source = feature.get("column") or feature["name"]
                # predict numbers its rows 0..n-1 in the frame's order (read.read resets the index)
                true = frame[source].reset_index(drop=True).loc[predictions.index].to_numpy(dtype=float)
                pred = predictions[f"{feature['name']}_predictions"].to_numpy(dtype=float)
                self.points.setdefault("test", {})[feature["name"]] = (true, pred)

    def write(self, path: Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(render(self), encoding="utf-8")
        tmp.replace(path)
        return path


def collect(name: str, config_dict: dict, plan, recorder: Recorder, statistics: dict, efficiency: dict, meta: dict,
            points: dict, range_test: dict | None = None) -> RunReport:
    """Everything the report shows: the records of the run, the confusion matrices the recorder kept at the best
    evaluation, `points` (split → number output → (true, predicted)) from the recipe's model, and the learning-rate
    range test when `learning_rate: auto` ran one."""
    best = (statistics.get("best") or {}).get("evaluation")
    return RunReport(name, config_dict, plan.to_dict(), statistics, efficiency, meta.get("outputs", {}),
                     recorder.at(best), dict(points), range_test=range_test)


def regression_points(model, table, config, meta, plan, numbers) -> dict:
    """output → (true values, predictions) of the number outputs over (at most SCATTER_ROWS of) `table`."""
    import numpy as np

    from tunefork.features import number
    from tunefork.training.ecd import run_inference

    if len(table) > SCATTER_ROWS:
        table = table.take(np.random.default_rng(0).choice(len(table), SCATTER_ROWS, replace=False))
    outputs = run_inference(model, table, config, meta, plan).outputs()
    points = {}
    for feature in numbers:
        shift, scale = number._scale(meta["outputs"][feature.name])  # targets are stored normalised
        points[feature.name] = (table[feature.name] * scale + shift, outputs[feature.name]["predictions"])
    return points


# ------------------------------------------------------------------------------------------------ rendering


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 1e5 else f"{value:,.0f}"
    return _e(value)


def _image(svg: bytes, alt: str) -> str:
    data = base64.b64encode(svg).decode("ascii")
    return f'<figure><img alt="{_e(alt)}" src="data:image/svg+xml;base64,{data}"></figure>'


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f'<th class="{"num" if i >= numeric_from else ""}">{h}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if i >= numeric_from else ""}">{c}</td>' for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _metrics(report: RunReport) -> tuple[str, dict]:
    splits = {s: visualize.best_scores(report.statistics, s) for s in ("training", "validation")}
    splits = {s: v for s, v in splits.items() if v}
    if report.test:
        splits["test"] = report.test
    rows = []
    outputs = [f["name"] for f in report.config["output_features"]] + ["combined"]
    for output in outputs:
        names = dict.fromkeys(m for s in splits.values() for m in s.get(output, {}) if m in SHOWN or m == "hits_at_k")
        for metric in names:
            rows.append([_e(output), _e(metric.replace("_", " ")),
                         *(_fmt(splits[s].get(output, {}).get(metric)) for s in splits)])
    note = ""
    if report.statistics.get("training_metrics"):
        note = f'<p class="note">Training column: {_e(report.statistics["training_metrics"])}.</p>'
    return _table(["output", "metric", *splits], rows, numeric_from=2) + note, splits


def _cards(report: RunReport, splits: dict) -> str:
    cards = []
    first = report.config["output_features"][0]
    metric = _main_metric(report.config, first)
    for split in ("validation", "test"):
        value = splits.get(split, {}).get(first["name"], {}).get(metric)
        if value is not None:
            cards.append((f"{split} {metric}", _fmt(value), first["name"]))
    seconds = report.efficiency.get("seconds", {})
    cards.append(("training time", f"{seconds.get('train', 0):,.1f} s", f"{report.efficiency.get('train_examples', 0):,} examples"))
    cards.append(("throughput", f"{report.efficiency.get('train_examples_per_second', 0):,.1f}/s",
                  f"{report.efficiency.get('train_tokens_per_second', 0):,.0f} tokens/s"))
    cards.append(("device", _e(report.efficiency.get("device", "?")), _e(report.efficiency.get("precision", ""))))
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="label">{_e(a)}</div><div class="value">{b}</div><div class="sub">{_e(c)}</div></div>'
        for a, b, c in cards
    ) + "</div>"


def _curves(report: RunReport) -> str:
    stats = {report.name: report.statistics}
    figures = []
    for feature in report.config["output_features"]:
        for metric in ("loss", _main_metric(report.config, feature)):
            if report.statistics.get("training", {}).get(feature["name"], {}).get(metric) or \
                    report.statistics.get("validation", {}).get(feature["name"], {}).get(metric):
                figures.append(_image(charts.learning_curves(stats, feature["name"], metric), f"{feature['name']} {metric}"))
    if len(report.config["output_features"]) > 1:
        figures.append(_image(charts.learning_curves(stats, "combined", "loss"), "combined loss"))
    if not figures:
        return '<p class="note">No evaluation was recorded.</p>'
    return '<div class="grid">' + "".join(figures) + '</div><p class="note">The ringed point is the evaluation whose weights were kept.</p>'


def _range_test(report: RunReport) -> str:
    test = report.range_test
    if not test:
        return ""
    figure = _image(charts.range_test(test["curve"], test["learning_rate"]), "learning-rate range test")
    return (f'<section><h2>Learning rate: auto</h2><div class="grid">{figure}</div><p class="note">'
            f'{test["steps"]} steps from {test["min_lr"]:g} to {test["max_lr"]:g}; chosen {test["learning_rate"]:.3g} '
            f'by {_e(test["rule"])} (learning_rate_range_test.json).</p></section>')


def _outcomes(report: RunReport) -> str:
    figures = []
    held_out = "validation" if report.matrices.get("validation") or report.points.get("validation") else "training"
    for split in (held_out, "test"):
        where = "best evaluation" if split != "test" else "final model"
        for output, matrix in report.matrices.get(split, {}).items():
            labels = visualize.class_names(report.outputs_meta.get(output, {}), len(matrix))
            figure = charts.confusion_matrix(matrix, labels, f"{output} · {split} ({where})")
            figures.append(_image(figure, f"confusion matrix {output} {split}"))
        for output, (true, pred) in report.points.get(split, {}).items():
            figure = charts.scatter(true, pred, f"{output} · {split} ({where})")
            figures.append(_image(figure, f"predicted vs true {output} {split}"))
    if not figures:
        return '<p class="note">No confusion matrix or scatter: this run recorded no evaluation.</p>'
    return '<div class="grid">' + "".join(figures) + "</div>"


def _measure(key: str, value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return _e(", ".join(f"{k}: {_measure(k, v)}" for k, v in value.items()))
    if key.endswith("_mb"):
        return f"{value:,.0f} MB"
    if key.endswith("_share"):
        return f"{value:.1%}"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.1f}" if isinstance(value, float) else _e(value)


def _efficiency(report: RunReport) -> str:
    eff = report.efficiency
    phases = [[_e(phase), f"{float(v):,.2f} s"] for phase, v in eff.get("seconds", {}).items()]
    rows = []
    for key in ("train_examples", "train_examples_per_second", "train_tokens_per_second", "train_padding_share",
                "peak_rss_mb", "peak_device_mb", "preprocessing_cache_hit", "embedding_cache_hit"):
        if eff.get(key) not in (None, {}):
            rows.append([_e(key.replace("_", " ").replace(" mb", " memory")), _measure(key, eff[key])])
    return (f'<div class="pair"><div>{_table(["phase", "wall time"], phases)}</div>'
            f'<div>{_table(["measure", "value"], rows)}</div></div>')


def _config(report: RunReport) -> str:
    import yaml

    rows = []
    for kind in ("input_features", "output_features"):
        for f in report.config[kind]:
            encoder = f.get("encoder") or {}
            model = encoder.get("pretrained_model_name_or_path") or encoder.get("type", "")
            detail = []
            if encoder.get("type") == "auto_transformer":
                pooling = report.plan.get(f"pooling.{f['name']}", {}).get("value", encoder.get("reduce_output"))
                adapter = (encoder.get("adapter") or {}).get("type")  # an adapter trains whatever `trainable` says
                state = f"{adapter} adapter, base frozen" if adapter else ("trainable" if encoder.get("trainable") else "frozen")
                detail.append(state + f", pooling {pooling}")
                detail.append(f"max {f.get('preprocessing', {}).get('max_sequence_length')} tokens")
            rows.append([_e(kind.split("_")[0]), _e(f["name"]), _e(f["type"]), _e(f.get("column") or f["name"]),
                         f'<span class="model">{_e(model)}</span>', _e("; ".join(detail))])
    features = _table(["", "feature", "type", "column", "encoder", "notes"], rows, numeric_from=99)
    plan_rows = [[_e(k), _e(v["value"]), _e(v["reason"])] for k, v in report.plan.items()]
    plan = _table(["decision", "value", "why"], plan_rows, numeric_from=99)
    full = _e(yaml.safe_dump(report.config, sort_keys=False, allow_unicode=True))
    return (f"{features}<h3>Resolved plan</h3>{plan}"
            f"<details><summary>Full config with defaults</summary><pre>{full}</pre></details>")


def render(report: RunReport) -> str:
    metrics, splits = _metrics(report)
    outcome_title = " / ".join(
        t for t, kinds in (("Confusion matrix", ("category", "binary")), ("Predicted vs true", ("number",)))
        if any(f["type"] in kinds for f in report.config["output_features"])
    )
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    from tunefork import __version__

    body = f"""
<header><div class="brand">tunefork · run report</div><h1>{_e(report.name)}</h1>
<div class="meta">{when} · {"experiment (train + test)" if report.test else "train"} · tunefork {__version__}</div></header>
{_cards(report, splits)}
<section><h2>Metrics</h2>{metrics}</section>
{_range_test(report)}<section><h2>Learning curves</h2>{_curves(report)}</section>
<section><h2>{outcome_title}</h2>{_outcomes(report)}</section>
<section><h2>Efficiency</h2>{_efficiency(report)}</section>
<section><h2>Configuration</h2>{_config(report)}</section>
"""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>{_e(report.name)} · tunefork report</title><style>{CSS}</style></head>
<body><main>{body}</main></body></html>
"""


CSS = """
:root { --ink:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#f6f7f9; --accent:#4C72B0; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "DejaVu Sans", sans-serif; }
main { max-width:1120px; margin:0 auto; padding:28px 28px 48px; }
header { border-bottom:3px solid var(--accent); padding-bottom:12px; margin-bottom:20px; }
.brand { color:var(--accent); font-weight:600; letter-spacing:.04em; text-transform:uppercase; font-size:12px; }
h1 { margin:4px 0 2px; font-size:26px; } .meta { color:var(--muted); }
h2 { font-size:17px; margin:0 0 12px; } h3 { font-size:14px; margin:18px 0 8px; color:var(--muted); }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:18px 20px; margin:16px 0; }
.cards { display:grid; grid-template-columns:repeat(auto-fit, minmax(170px, 1fr)); gap:12px; }
.card { background:#fff; border:1px solid var(--line); border-left:4px solid var(--accent); border-radius:10px;
        padding:12px 14px; }
.card .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.03em; }
.card .value { font-size:22px; font-weight:650; margin-top:2px; } .card .sub { color:var(--muted); font-size:12px; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { background:#f9fafb; font-weight:600; } td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
tbody tr:hover { background:#f9fafb; }
.grid { display:grid; grid-template-columns:repeat(auto-fit, minmax(420px, 1fr)); gap:14px; align-items:start; }
figure { margin:0; } figure img { width:100%; height:auto; display:block; }
.pair { display:grid; grid-template-columns:repeat(auto-fit, minmax(320px, 1fr)); gap:18px; }
.note { color:var(--muted); font-size:12px; margin:8px 0 0; }
.model { font-family:ui-monospace, Menlo, Consolas, monospace; font-size:12px; word-break:break-all; }
details { margin-top:14px; } summary { cursor:pointer; color:var(--accent); font-weight:600; }
pre { background:#f9fafb; border:1px solid var(--line); border-radius:8px; padding:12px; overflow:auto; font-size:12px; }
"""
