"""Dynamic batching for the local `tunefork serve`: requests that arrive together run as one forward pass.

Why written here, not taken from a library: Ray Serve's `@serve.batch` (what `--backend ray` uses) needs a Ray
replica around it, and TorchServe / Triton are servers of their own; what the one-process server needs is a queue and
a loop, about a hundred lines, tested in tests/test_serve_batching.py.

A request puts its rows on an asyncio queue as one *item* and awaits its future. One loop takes the first item and
waits up to `batch_wait_ms` for company until `max_batch_size` rows are gathered — but no longer than there is
company to wait for: once every request in the server (`inside`, counted as requests arrive, before their bodies
are read) is in the batch, it runs, so a lone caller pays no wait and a burst is not cut in two by its first
arrival. An LLM's batch (`eager=False`) instead always waits its `batch_wait_ms` (50 ms by default) unless it fills:
its forward pass is a generate of seconds, so a burst's first request, alone in the server for the few ms before
the others connect, would otherwise make them wait a whole generation. It sorts the rows by length (less padding),
runs `run(rows)` in one worker thread (forward passes saturate the cores; two at once slow both), and hands each
item its own slice of the answer. Per request, never per batch:

- an item whose caller has gone (client disconnected, timed out) is dropped before the batch runs;
- a batch that fails on a row's data (a TuneforkError, e.g. a binary value neither label) is rerun item by item, so
  only the bad item gets the error (a 422) and the others their answers;
- any other failure is given, as one line, to exactly the items of that batch (a 500); the loop keeps serving.

A large request joins in slices of at most `max_batch_size` rows, one slice in the queue at a time, so single rows
arriving meanwhile share the next batch instead of waiting behind the whole request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tunefork.errors import TuneforkError, first_line

log = logging.getLogger("tunefork.serve")
MAX_BATCH_SIZE = 32
BATCH_WAIT_MS = 5.0  # an encoder's forward pass: milliseconds
LLM_BATCH_WAIT_MS = 50.0  # an LLM's generate: seconds, of which this is a few percent


def wait_ms(given: float | None, llm: bool) -> float:
    """`--batch_wait_ms` as given, else its default for the model type."""
    if given is not None:
        return given
    return LLM_BATCH_WAIT_MS if llm else BATCH_WAIT_MS


class BatchFailed(Exception):
    """The forward pass of the batch this request was in raised; `str()` is its one-line reason."""


@dataclass
class Item:
    rows: list
    lengths: list[int]
    gone: Callable[[], Awaitable[bool]] | None  # async: has the caller disconnected?
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Batcher:
    """The queue and its loop. `run(rows) -> list` answers rows in order; `length(row)` is a row's sort key;
    `observe(rows)` is told each batch's size (metrics); `inside()` is how many requests that will submit rows are in
    the server (default: those that have submitted); `eager`: run once they are all in the batch."""

    def __init__(self, run: Callable[[list], list], *, max_batch_size: int = MAX_BATCH_SIZE,
                 batch_wait_ms: float = BATCH_WAIT_MS, length: Callable = len, observe: Callable[[int], None] = None,
                 inside: Callable[[], int] | None = None, eager: bool = True):
        self.run, self.length, self.observe = run, length, observe or (lambda n: None)
        self.inside, self.eager = inside or (lambda: self.in_flight), eager
        self.max_batch_size, self.wait = max_batch_size, batch_wait_ms / 1000
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self.pool: ThreadPoolExecutor | None = None  # the forward thread, started with the first batch
        self.task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        self.in_flight = 0  # requests that have submitted rows and wait for their answers

    @property
    def depth(self) -> int:
        """Rows waiting in the queue."""
        return sum(len(item.rows) for item in self.queue._queue)  # noqa: SLF001 — asyncio.Queue keeps a deque

    async def submit(self, rows: list, gone=None) -> list:
        """The answers to `rows`, in order: in slices of max_batch_size, one in the queue at a time."""
        self._started()
        answers = []
        self.in_flight += 1
        try:
            for start in range(0, len(rows), self.max_batch_size):
                part = rows[start:start + self.max_batch_size]
                item = Item(part, [self.length(r) for r in part], gone)
                self.queue.put_nowait(item)
                try:
                    answers += await item.future
                except asyncio.CancelledError:
                    item.future.cancel()  # dropped from any batch not yet run
                    raise
        finally:
            self.in_flight -= 1
        return answers

    def _started(self) -> None:
        """The loop runs on the event loop of the requests (a test client may start a new one per request)."""
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # the old loop's queue and task are gone with it
            self.loop, self.queue, self.task = loop, asyncio.Queue(), None
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._loop())

    async def in_thread(self, work: Callable, *args):
        """Run `work` on the forward thread (a streamed generation shares the cores with the batches)."""
        if self.pool is None:
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="tunefork-forward")
        return await asyncio.get_running_loop().run_in_executor(self.pool, work, *args)

    async def _gather(self) -> list[Item]:
        items = [await self.queue.get()]
        rows = len(items[0].rows)
        deadline = time.monotonic() + self.wait
        while rows < self.max_batch_size:
            if self.queue.empty():
                if self.eager and self.inside() <= len(items):
                    break  # every request in the server is in this batch: nobody to wait for
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await asyncio.sleep(min(left, 0.001))
                continue
            nxt = self.queue._queue[0]  # noqa: SLF001 — look before taking: a slice that does not fit waits
            if rows + len(nxt.rows) > self.max_batch_size:
                break
            items.append(self.queue.get_nowait())
            rows += len(nxt.rows)
        return items

    async def _alive(self, items: list[Item]) -> list[Item]:
        kept = []
        for item in items:
            if item.future.done():
                continue  # timed out or cancelled while queued
            if item.gone is not None and await item.gone():
                item.future.cancel()
                continue
            kept.append(item)
        return kept

    async def _loop(self) -> None:
        while True:
            items = await self._alive(await self._gather())
            if items:
                await self._answer(items)

    async def _answer(self, items: list[Item]) -> None:
        flat = [(item.lengths[j], i, j) for i, item in enumerate(items) for j in range(len(item.rows))]
        flat.sort()  # by length: rows of a like length share the padding
        rows = [items[i].rows[j] for _, i, j in flat]
        self.batches += 1
        self.observe(len(rows))
        try:
            answers = await self.in_thread(self.run, rows)
        except TuneforkError as exc:
            if len(items) == 1:
                return self._fail(items, exc)
            for item in items:  # a row's data is wrong: find whose, answer the others
                await self._answer([item])
            return
        except Exception as exc:  # noqa: BLE001 — given to this batch's callers, and the loop goes on
            log.error("a batch of %d rows failed: %s", len(rows), first_line(exc))
            return self._fail(items, BatchFailed(f"the batch this request was in failed: {type(exc).__name__}: "
                                                       f"{first_line(exc)}"))
        placed: list[list] = [[None] * len(item.rows) for item in items]
        for answer, (_, i, j) in zip(answers, flat, strict=True):
            placed[i][j] = answer
        for item, answer in zip(items, placed, strict=True):
            if not item.future.done():
                item.future.set_result(answer)

    @staticmethod
    def _fail(items: list[Item], error: Exception) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)

    def close(self) -> None:
        """Stop the loop and the forward thread (the server shuts down); a later request starts them again."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None
