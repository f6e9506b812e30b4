"""The `hyperopt` section as Ray Tune's own objects: the search space (`tune.choice`, `tune.loguniform`, ...), the
search algorithm (`tune.search.*`) and the scheduler (`tune.schedulers.*`). Nothing here searches or schedules by
itself: Tune does, with the names and arguments Ludwig users already write."""

from __future__ import annotations

from tunefork.errors import ConfigError, TuneforkError, first_line

EXTRAS = {"hyperopt": "hyperopt", "optuna": "optuna"}  # search_alg type → the package it needs


def tune_space(parameters: dict) -> dict:
    """{path: a Tune domain} for the section's `parameters`; a range Tune refuses is a ConfigError."""
    from ray import tune

    def domain(p):
        bounds = (p.lower, p.upper)
        whole = tuple(int(v) for v in bounds) if p.lower is not None else bounds
        return {
            "choice": lambda: tune.choice(p.categories),
            "grid_search": lambda: tune.grid_search(p.values),
            "uniform": lambda: tune.uniform(*bounds),
            "quniform": lambda: tune.quniform(*bounds, p.q),
            "loguniform": lambda: tune.loguniform(*bounds),
            "qloguniform": lambda: tune.qloguniform(*bounds, p.q),
            "randn": lambda: tune.randn(p.mean, p.sd),
            "qrandn": lambda: tune.qrandn(p.mean, p.sd, p.q),
            "randint": lambda: tune.randint(*whole),
            "qrandint": lambda: tune.qrandint(*whole, int(p.q)),
            "lograndint": lambda: tune.lograndint(*whole),
            "qlograndint": lambda: tune.qlograndint(*whole, int(p.q)),
        }[p.space]()

    out = {}
    for path, parameter in parameters.items():
        try:
            out[path] = domain(parameter)
        except ValueError as exc:  # Tune's own checks (say, a bound that is not a multiple of q)
            raise ConfigError([f"hyperopt.parameters.{path}: {first_line(exc)}"]) from None
    return out


def search_algorithm(hyperopt, seed: int):
    """Tune's searcher for `search_alg` (seeded by `random_state_seed`, else by the run's seed). The variant generator
    limits concurrency itself (`executor.max_concurrent_trials`); Tune wraps the other searchers in a limiter."""
    algorithm = hyperopt.search_alg
    chosen = algorithm.random_state_seed if algorithm.random_state_seed is not None else seed
    grids = [path for path, p in hyperopt.parameters.items() if p.space == "grid_search"]
    if algorithm.type in ("variant_generator", "random"):
        from ray.tune.search import BasicVariantGenerator

        limit = hyperopt.executor.max_concurrent_trials
        return BasicVariantGenerator(random_state=chosen, max_concurrent=0 if limit in (None, "auto") else limit)
    if grids:
        raise ConfigError([f"hyperopt.parameters.{grids[0]}: grid_search needs search_alg variant_generator; with "
                           f"{algorithm.type} use space: choice"])
    try:
        if algorithm.type == "hyperopt":
            from ray.tune.search.hyperopt import HyperOptSearch

            return HyperOptSearch(random_state_seed=chosen, n_initial_points=algorithm.n_initial_points,
                                  gamma=algorithm.gamma)
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=chosen, n_startup_trials=algorithm.n_startup_trials))
    except (ImportError, AssertionError):  # Tune's wrappers assert their package imported
        package = EXTRAS[algorithm.type]
        raise TuneforkError(f"hyperopt.search_alg.type {algorithm.type} needs the {package} package: "
                            f"pip install 'tunefork[hyperopt]' (or pip install {package})") from None


def scheduler(section):
    """Tune's trial scheduler for `executor.scheduler` (the metric and mode come from the Tuner's TuneConfig)."""
    from ray.tune import schedulers

    if section.type == "fifo":
        return schedulers.FIFOScheduler()
    if section.type in ("async_hyperband", "asha"):
        return schedulers.AsyncHyperBandScheduler(time_attr=section.time_attr, max_t=section.max_t,
                                                  grace_period=section.grace_period,
                                                  reduction_factor=section.reduction_factor, brackets=section.brackets)
    if section.type == "hyperband":
        return schedulers.HyperBandScheduler(time_attr=section.time_attr, max_t=section.max_t,
                                             reduction_factor=section.reduction_factor,
                                             stop_last_trials=section.stop_last_trials)
    return schedulers.MedianStoppingRule(time_attr=section.time_attr, grace_period=section.grace_period,
                                         min_samples_required=section.min_samples_required,
                                         min_time_slice=section.min_time_slice, hard_stop=section.hard_stop)
