"""The flags of `tunefork serve` (and --engine of predict / evaluate), and the command itself: the local server or
a Ray Serve deployment, from the `serve:` section of a YAML (--config) with the flags given over it."""

from __future__ import annotations

import argparse


def engine_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=("auto", "onnx", "torch"), default="auto",
                   help="auto (default): ONNX Runtime when the model exports (written once into the model folder, "
                        "starts in about a second), else torch; torch: always the torch model")


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of 0 or more, got {text!r}")
    return value


def flags(p: argparse.ArgumentParser, count) -> None:
    """`count`: the argparse type of a whole number above 0."""
    p.add_argument("--max_field_chars", type=count, default=100_000,
                   help="most characters in one text field of a request; longer is a 422 (default 100000)")
    p.add_argument("--max_pending", type=count, default=256,
                   help="prediction requests in the server at once (queued or computing); more get 503 with "
                        "Retry-After (default 256)")
    p.add_argument("--max_batch_size", type=count, default=32,
                   help="most rows in one forward pass; concurrent requests are batched up to it (default 32)")
    p.add_argument("--batch_wait_ms", type=_non_negative, default=None,
                   help="longest a request waits for others to share its forward pass, in ms (default 5; for an "
                        "LLM, whose generate takes seconds, 50)")
    p.add_argument("--request_timeout", type=_non_negative, default=60.0,
                   help="seconds a request may wait for its answer; past it, 504 (default 60)")
    engine_flag(p)
    p.add_argument("--config", help="a YAML whose `serve:` section holds these settings (flags given override it)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local (default): this process; ray: a Ray Serve deployment of --num_replicas replicas")
    p.add_argument("--num_replicas", type=count, default=1, help="ray: replicas of the model (default 1)")
    p.add_argument("--num_cpus", type=_non_negative, default=1.0, help="ray: CPUs each replica reserves (default 1)")
    p.add_argument("--num_gpus", type=_non_negative, default=0.0, help="ray: GPUs each replica reserves (default 0)")
    p.add_argument("--address", help="ray: the cluster to join (default: RAY_ADDRESS, else start one on this machine)")


def serve(args, parser: argparse.ArgumentParser) -> None:
    """Serve locally or on Ray Serve: the `serve:` section of --config, with the flags given over it."""
    from tunefork import serve_ray

    defaults = vars(parser.parse_args(["serve", "-m", "-"]))
    given = {k: v for k, v in vars(args).items() if k in serve_ray.Settings.model_fields and v != defaults[k]}
    settings = serve_ray.settings(args.config, given)
    if settings.backend == "ray":
        serve_ray.run(args.model_path, settings.deployment(), host=settings.host, port=settings.port,
                      **settings.app_options())
    else:
        from tunefork import serve

        serve.run(args.model_path, settings.host, settings.port, log_level=args.logging_level, **settings.app_options())
