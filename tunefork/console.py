"""What a person sees while a run goes: notes, one metrics table per evaluation, a final summary."""

from __future__ import annotations

import math
import sys

from rich.console import Console as RichConsole
from rich.table import Table

SHOWN = ("loss", "accuracy", "macro_f1", "roc_auc", "mean_absolute_error", "root_mean_squared_error", "r2",
         "perplexity", "exact_match", "rouge_l", "bleu",
         # preference tuning (TRL's names: training.preference)
         "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def metrics_table(scores: dict[str, dict], title: str) -> Table:
    """Rows: output × metric; columns: splits."""
    table = Table(title=title, title_justify="left", header_style="bold")
    splits = list(scores)
    table.add_column("output")
    table.add_column("metric")
    for split in splits:
        table.add_column(split, justify="right")
    outputs = list(dict.fromkeys(o for s in splits for o in scores[s]))
    for output in outputs:
        metrics = list(dict.fromkeys(m for s in splits for m in scores[s].get(output, {}) if m in SHOWN))
        for metric in metrics:
            table.add_row(output, metric, *(_fmt(scores[s].get(output, {}).get(metric)) for s in splits))
    return table


class Console:
    def __init__(self, progress: bool = True, quiet: bool = False):
        self.progress = progress and not quiet
        self.quiet = quiet
        self.out = RichConsole(file=sys.stderr, highlight=False, quiet=quiet)

    def note(self, text: str) -> None:
        if not self.quiet:  # one line however long: the terminal wraps it, a log file keeps it whole
            self.out.print(text, soft_wrap=True)

    def evaluation(self, epoch: int, step: int, scores: dict, history, improved: bool) -> None:
        mark = " [green](best so far)[/green]" if improved else ""
        self.out.print(metrics_table(scores, f"epoch {epoch} · step {step}{mark}"))

    def table(self, scores: dict, title: str) -> None:
        self.out.print(metrics_table(scores, title))
