"""The local server's batcher: concurrent requests share a forward pass, length-sorted, each answer to its caller,
and every failure stays with the requests it concerns."""

from __future__ import annotations

import asyncio
import time

import pytest

from tunefork.errors import DataError
from tunefork.serve_batching import Batcher, BatchFailed


class Model:
    """A stand-in forward pass over strings: records each batch it is given; 'bad' rows are a data error, and the
    batch given to it as `crash_on` raises."""

    def __init__(self, crash_on: int | None = None, seconds: float = 0.0):
        self.calls: list[list[str]] = []
        self.crash_on, self.seconds = crash_on, seconds

    def __call__(self, rows: list[str]) -> list[str]:
        time.sleep(self.seconds)
        self.calls.append(list(rows))
        if len(self.calls) == self.crash_on:
            raise RuntimeError("CUDA out of memory\nsecond line of the trace")
        if "bad" in rows:
            raise DataError("binary column 'recommended': 'bad' is neither of ['no', 'yes']")
        return [row.upper() for row in rows]


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_run_as_one_length_sorted_batch_each_answer_to_its_caller():
    model = Model()
    batcher = Batcher(model, max_batch_size=8, batch_wait_ms=50)

    async def main():
        return await asyncio.gather(*(batcher.submit([text]) for text in ["ccc", "a", "bbbb", "dd"]))

    assert run(main()) == [["CCC"], ["A"], ["BBBB"], ["DD"]]
    assert model.calls == [["a", "dd", "ccc", "bbbb"]]  # one forward pass, shortest first


def test_a_lone_caller_does_not_wait_for_company():
    model = Model()
    batcher = Batcher(model, max_batch_size=8, batch_wait_ms=2000)

    async def main():
        started = time.perf_counter()
        answers = [await batcher.submit([text]) for text in ("a", "b")]
        return answers, time.perf_counter() - started

    answers, seconds = run(main())
    assert answers == [["A"], ["B"]] and seconds < 1.0 and model.calls == [["a"], ["b"]]


def test_a_burst_is_one_batch_even_when_its_first_request_is_ready_before_the_others():
    """The server counts requests from their arrival (`inside`); the batch waits for those still reading their body,
    and runs as soon as all of them are in it, well before batch_wait_ms."""
    model, arrived = Model(), [0]
    batcher = Batcher(model, max_batch_size=8, batch_wait_ms=2000, inside=lambda: arrived[0])

    async def request(text: str, parsing: float):
        arrived[0] += 1
        try:
            await asyncio.sleep(parsing)  # the body is read and validated: the first is ready 30 ms before the last
            return await batcher.submit([text])
        finally:
            arrived[0] -= 1

    async def main():
        started = time.perf_counter()
        answers = await asyncio.gather(*(request(t, 0.01 * i) for i, t in enumerate(["a", "b", "c", "d"])))
        return answers, time.perf_counter() - started

    answers, seconds = run(main())
    assert answers == [["A"], ["B"], ["C"], ["D"]] and model.calls == [["a", "b", "c", "d"]] and seconds < 1.0


@pytest.mark.parametrize("eager, passes", [(True, [["a"], ["b", "c"]]), (False, [["a", "b", "c"]])],
                         ids=["encoder-runs-a-lone-request-at-once", "llm-waits-for-a-burst-still-connecting"])
def test_only_an_llm_batch_waits_out_batch_wait_ms_for_requests_not_yet_in_the_server(eager, passes):
    model = Model(seconds=0.1)
    batcher = Batcher(model, max_batch_size=8, batch_wait_ms=300, eager=eager)

    async def arriving(text: str, after: float):
        await asyncio.sleep(after)
        return await batcher.submit([text])

    async def main():
        return await asyncio.gather(*(arriving(t, 0.03 * i) for i, t in enumerate("abc")))

    assert run(main()) == [["A"], ["B"], ["C"]] and model.calls == passes


def test_a_batch_never_exceeds_max_batch_size_and_a_large_request_joins_in_slices():
    model = Model(seconds=0.1)  # the large request takes 3 forward passes: 0.3 s
    batcher = Batcher(model, max_batch_size=4, batch_wait_ms=20)

    async def main():
        big = asyncio.ensure_future(batcher.submit([f"row{i}" for i in range(10)]))
        await asyncio.sleep(0.005)  # the big request's first slice is queued; a single row arrives
        single = await batcher.submit(["x"])
        done_then = big.done()
        return await big, single, done_then

    big, single, big_done_when_single_answered = run(main())
    assert big == [f"ROW{i}" for i in range(10)] and single == ["X"]
    assert max(map(len, model.calls)) <= 4
    assert not big_done_when_single_answered  # the single row did not wait for the whole large request
    assert [i for i, call in enumerate(model.calls) if "x" in call] == [1]  # it ran right after the first slice


def test_a_bad_row_gets_its_own_error_and_the_rest_of_the_batch_its_answers():
    batcher = Batcher(Model(), max_batch_size=8, batch_wait_ms=50)

    async def main():
        return await asyncio.gather(*(batcher.submit([t]) for t in ["good", "bad", "fine"]), return_exceptions=True)

    good, bad, fine = run(main())
    assert good == ["GOOD"] and fine == ["FINE"]
    assert isinstance(bad, DataError) and "'bad' is neither" in str(bad)


def test_a_failed_forward_fails_exactly_its_batch_with_one_line_and_the_next_batch_is_served():
    model = Model(crash_on=1)
    batcher = Batcher(model, max_batch_size=8, batch_wait_ms=30)

    async def main():
        first = await asyncio.gather(*(batcher.submit([t]) for t in ["a", "b", "c"]), return_exceptions=True)
        later = await batcher.submit(["d"])
        return first, later

    first, later = run(main())
    assert all(isinstance(e, BatchFailed) for e in first) and len(model.calls[0]) == 3
    assert str(first[0]) == "the batch this request was in failed: RuntimeError: CUDA out of memory"
    assert later == ["D"]


def test_a_disconnected_or_timed_out_request_is_dropped_before_its_batch_runs():
    model = Model()
    batcher = Batcher(model, max_batch_size=8, batch_wait_ms=30)

    async def gone():
        return True

    async def main():
        left = asyncio.ensure_future(batcher.submit(["left"], gone))
        waited = asyncio.ensure_future(asyncio.wait_for(batcher.submit(["slow"]), 0.001))
        stays = await batcher.submit(["stays"])
        results = await asyncio.gather(left, waited, return_exceptions=True)
        return stays, results

    stays, (left, waited) = run(main())
    assert stays == ["STAYS"] and model.calls == [["stays"]]
    assert isinstance(left, asyncio.CancelledError) and isinstance(waited, TimeoutError)


def test_depth_counts_the_rows_waiting():
    batcher = Batcher(Model(), max_batch_size=2, batch_wait_ms=1000)

    async def main():
        batcher._started()
        for rows in (["a", "b"], ["c"]):
            asyncio.ensure_future(batcher.submit(rows))
        await asyncio.sleep(0)
        return batcher.depth

    assert run(main()) == 3


@pytest.mark.parametrize("flag, value", [("--max_batch_size", "0"), ("--batch_wait_ms", "-1"), ("--request_timeout", "x")])
def test_serve_flags_refuse_values_that_are_not_limits(flag, value, capsys):
    from tunefork.cli import parser

    with pytest.raises(SystemExit):
        parser().parse_args(["serve", "-m", "x", flag, value])
    assert flag in capsys.readouterr().err


def test_serve_flag_defaults_are_the_documented_ones():
    from tunefork.cli import parser

    args = parser().parse_args(["serve", "-m", "x"])
    assert (args.max_batch_size, args.batch_wait_ms, args.request_timeout, args.max_pending, args.engine) == (32, None, 60.0, 256, "auto")


def test_a_serve_section_in_yaml_gives_the_settings_and_flags_given_override_it(tmp_path, capsys):
    from tunefork import cli, serve_ray

    path = tmp_path / "serve.yaml"
    path.write_text("serve:\n  backend: ray\n  num_cpus: 0.5\n  port: 9000\n  max_batch_size: 8\n"
                    "  autoscaling: {min_replicas: 1, max_replicas: 3}\n")
    settings = serve_ray.settings(path, {"port": 9100})
    assert (settings.backend, settings.port, settings.max_batch_size) == ("ray", 9100, 8)
    deployment = settings.deployment()
    assert deployment.num_cpus == 0.5 and deployment.autoscaling.max_replicas == 3
    assert settings.app_options()["max_batch_size"] == 8
    path.write_text("serve:\n  num_replica: 2\n")
    assert cli.main(["serve", "-m", str(tmp_path), "--config", str(path)]) == 2
    assert capsys.readouterr().err == f"error: serve.num_replica: Extra inputs are not permitted (in {path})\n"
