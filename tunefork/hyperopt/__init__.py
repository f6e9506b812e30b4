"""Hyperparameter search on Ray Tune: Ludwig's `hyperopt:` section, `tunefork hyperopt`, `Model.hyperopt`.

    from tunefork.hyperopt import hyperopt
    result = hyperopt("config.yaml", dataset="train.csv")   # Ludwig's `hyperopt(config, dataset=...)`
    result.best["parameters"], result.best["metric_score"], result.folder / "report.html"

Importing this package is light (the section's checks need no Ray); `hyperopt()` imports Ray Tune when it runs.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["hyperopt"]


def hyperopt(config, dataset=None, *, training_set=None, validation_set=None, test_set=None,
             output_directory: str | Path = "results", random_seed: int = 42, resume: bool = False,
             quiet: bool = False, console=None):
    """Search the config's `hyperopt` section on Ray Tune; every trial is an ordinary run directory under
    `<output_directory>/hyperopt[_N]/trials/`. `resume=True` continues the newest search folder in
    `output_directory` (after a killed search): finished trials are kept. Returns a `SearchResult`
    (folder, best trial record, the statistics written to hyperopt_statistics.json)."""
    from tunefork.console import Console
    from tunefork.hyperopt import search
    from tunefork.runner import Data

    options = search.SearchOptions(output_directory, random_seed, resume, quiet)
    data = Data(dataset, training_set, validation_set, test_set)
    return search.run(config, data, options, console or Console(progress=False, quiet=quiet))
