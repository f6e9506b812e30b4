"""A search's `report.html`: the trials table sorted by the metric, the metric against each searched parameter, and
the learning curves of the best trials. Self-contained like a run's report (`tunefork.report`, whose page style and
table it shares); every picture is an SVG from `tunefork.charts`."""

from __future__ import annotations

import datetime as dt

from tunefork import charts
from tunefork.report import CSS, _e, _fmt, _image, _table

TOP = 3  # the learning curves drawn: the best trials'


def _trials(statistics: dict, hyperopt) -> str:
    paths = list(hyperopt.parameters)
    header = ["#", "trial", "status", *[_e(p) for p in paths], _e(f"{hyperopt.split} {hyperopt.metric}"), "evaluations"]
    rows = []
    for rank, record in enumerate(statistics["hyperopt_results"], 1):
        status = record["status"] if record["error"] is None else f"failed: {record['error']}"
        rows.append([str(rank), _e(record["trial_id"]), _e(status),
                     *[_e(charts.json_text(record["parameters"].get(p))) for p in paths],
                     _fmt(record["metric_score"]), str(record["evaluations"])])
    return _table(header, rows, numeric_from=3 + len(paths))


def _against(statistics: dict, hyperopt) -> str:
    records = statistics["hyperopt_results"]
    scores = [r["metric_score"] for r in records]
    figures = []
    for path, parameter in hyperopt.parameters.items():
        values = [r["parameters"].get(path) for r in records]
        log = parameter.space in ("loguniform", "qloguniform", "lograndint", "qlograndint")
        figures.append(_image(charts.metric_against(values, scores, path, hyperopt.metric, log_x=log), path))
    return '<div class="grid">' + "".join(figures) + "</div>"


def _curves(statistics: dict, hyperopt) -> str:
    top = [r for r in statistics["hyperopt_results"] if r["training_stats"]][:TOP]
    if not top:
        return '<p class="note">No trial recorded an evaluation.</p>'
    stats = {r["trial_id"]: r["training_stats"] for r in top}
    figure = _image(charts.learning_curves(stats, hyperopt.output_feature, hyperopt.metric), "learning curves")
    return (f'<div class="grid">{figure}</div><p class="note">The {len(top)} best trials; a trial stopped early by '
            "the scheduler ends where it was stopped.</p>")


def render(name: str, statistics: dict, hyperopt) -> str:
    search, best = statistics["search"], statistics["best"]
    from tunefork import __version__

    cards = [("trials", search["trials"], f"{search['completed']} completed · {search['stopped']} stopped · "
                                          f"{search['failed']} failed"),
             (f"best {hyperopt.metric}", _fmt(best["metric_score"]) if best else "—",
              _e(best["trial_id"]) if best else "no scored trial"),
             ("wall time", f"{search['wall_seconds']:.1f} s", f"goal: {hyperopt.goal}")]
    card_html = "".join(f'<div class="card"><div class="label">{_e(label)}</div><div class="value">{value}</div>'
                        f'<div class="sub">{sub}</div></div>' for label, value, sub in cards)
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = f"""
<header><div class="brand">tunefork · hyperparameter search</div><h1>{_e(name)}</h1>
<div class="meta">{when} · {_e(hyperopt.search_alg.type)} · {_e(hyperopt.executor.scheduler.type)} · tunefork {__version__}</div></header>
<div class="cards">{card_html}</div>
<section><h2>Trials, best first</h2>{_trials(statistics, hyperopt)}</section>
<section><h2>{_e(hyperopt.metric)} against each parameter</h2>{_against(statistics, hyperopt)}</section>
<section><h2>Learning curves of the best trials</h2>{_curves(statistics, hyperopt)}</section>
"""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>{_e(name)} · tunefork search</title><style>{CSS}</style></head>
<body><main>{body}</main></body></html>
"""
