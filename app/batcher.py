"""A dynamic batcher for the encoder, independent of the web framework.

Callers `await batcher.submit(x)` with a tensor of k items (k = 2 for a /verify pair); the k
items stay together and ride in the same batch. One worker task takes groups off a bounded
queue and forms a batch of up to `max_batch_size` items, waiting at most `max_delay_s` after
the first item of the batch was queued (or not at all when `more_coming` says nothing else can
join); it runs `forward(batch)` in a thread (never on the
event loop) and resolves each caller's future with its own rows of the result.

- Full queue: `submit` raises `Overloaded` at once (the service answers 503 + Retry-After).
- An exception in `forward` fails the futures of that batch only; the worker carries on.
- `stop()` refuses new work and drains what is queued before the worker ends.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class Overloaded(RuntimeError):
    """The queue is full; try again later."""

    def __init__(self, message: str = "the encoder queue is full", retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class BatcherClosed(RuntimeError):
    """The batcher is stopping or stopped and takes no new work."""


class BatchObserver(Protocol):
    """Hooks for metrics; every method is optional to implement meaningfully."""

    def batch_done(self, size: int, inference_s: float, ok: bool) -> None: ...
    def queue_wait(self, seconds: float) -> None: ...
    def queue_depth(self, items: int) -> None: ...


class _NullObserver:
    def batch_done(self, size: int, inference_s: float, ok: bool) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def queue_depth(self, items: int) -> None:
        pass


@dataclass
class BatchResult:
    """What a caller gets back: its rows of the output and where the time went."""

    output: np.ndarray
    queue_s: float  # from submit until its batch's forward pass started
    inference_s: float  # the forward pass of the batch it rode in
    batch_size: int  # items in that batch


@dataclass
class _Group:
    items: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)

    def __len__(self) -> int:
        return int(self.items.shape[0])


_STOP = object()


class DynamicBatcher:
    def __init__(self, forward: Callable[[np.ndarray], np.ndarray], *,
                 max_batch_size: int = 32, max_delay_s: float = 0.005, max_queue: int = 256,
                 retry_after: int = 1, observer: BatchObserver | None = None,
                 executor: concurrent.futures.Executor | None = None,
                 more_coming: Callable[[int], bool] | None = None):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self.forward = forward
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.retry_after = retry_after
        self.observer = observer or _NullObserver()
        # more_coming(groups in the batch so far): can another group still join it? When it
        # says no (the service: no request is still in its face stage), the batch goes
        # without waiting out `max_delay_s`, so a lone request pays no batching delay.
        self.more_coming = more_coming
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="encoder")
        # Unbounded asyncio queue; the bound is enforced in items by `submit`, so the
        # stop sentinel always fits.
        self._queue: asyncio.Queue = asyncio.Queue()
        self._carry: _Group | None = None  # a group that did not fit the previous batch
        self._depth = 0  # items queued (including the carried group), not yet in a batch
        self._worker: asyncio.Task | None = None
        self._closing = False

    # -- public API ----------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return self._depth

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(),
                                                                  name="dynamic-batcher")

    async def submit(self, items: np.ndarray) -> BatchResult:
        """Queue k items that must be batched together; returns their k output rows."""
        if self._closing or self._worker is None:
            raise BatcherClosed("the encoder is not accepting work")
        k = int(items.shape[0])
        if k < 1:
            raise ValueError("submit needs at least one item")
        if self._depth + k > self.max_queue:
            raise Overloaded(f"the encoder queue is full ({self._depth} of {self.max_queue} "
                             "faces waiting)", self.retry_after)
        group = _Group(items, asyncio.get_running_loop().create_future())
        self._depth += k
        self.observer.queue_depth(self._depth)
        self._queue.put_nowait(group)
        return await group.future

    async def stop(self, drain: bool = True) -> None:
        """Refuse new work; finish what is queued (drain) or fail it, then end the worker."""
        self._closing = True
        if self._worker is None:
            return
        if not drain:
            self._fail_queued(BatcherClosed("the encoder is shutting down"))
        self._queue.put_nowait(_STOP)
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        if self._own_executor:
            self._executor.shutdown(wait=True)

    # -- worker --------------------------------------------------------------------------
    def _take(self, group: _Group) -> None:
        self._depth -= len(group)
        self.observer.queue_depth(self._depth)

    def _fail_queued(self, exc: Exception) -> None:
        pending = [self._carry] if self._carry else []
        self._carry = None
        while not self._queue.empty():
            g = self._queue.get_nowait()
            if g is not _STOP:
                pending.append(g)
        for g in pending:
            self._take(g)
            if not g.future.done():
                g.future.set_exception(exc)

    async def _next_group(self, timeout: float | None):
        """The carried group, else the next queued one; None on timeout."""
        if self._carry is not None:
            g, self._carry = self._carry, None
            return g
        if timeout is None:
            return await self._queue.get()
        if timeout <= 0:
            try:
                return self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _run(self) -> None:
        stopping = False
        while not (stopping and self._carry is None and self._queue.empty()):
            first = await self._next_group(None)
            if first is _STOP:
                stopping = True
                continue
            self._take(first)
            if first.future.done():  # the caller went away (request cancelled)
                continue
            batch, n = [first], len(first)
            deadline = first.enqueued + self.max_delay_s
            while n < self.max_batch_size:
                # After a stop request, or once the deadline passed, take only what is
                # already queued; otherwise wait until the deadline for more.
                wait = 0.0 if stopping else deadline - time.perf_counter()
                if self.more_coming is not None and not self.more_coming(len(batch)):
                    wait = 0.0
                g = await self._next_group(wait)
                if g is None:
                    break
                if g is _STOP:
                    stopping = True
                    continue
                if g.future.done():
                    self._take(g)
                    continue
                if n + len(g) > self.max_batch_size:
                    self._carry = g  # stays counted in depth until its own batch
                    break
                self._take(g)
                batch.append(g)
                n += len(g)
            await self._process(batch, n)

    async def _process(self, batch: list[_Group], n: int) -> None:
        started = time.perf_counter()
        for g in batch:
            self.observer.queue_wait(started - g.enqueued)
        x = batch[0].items if len(batch) == 1 else np.concatenate([g.items for g in batch])
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(self._executor, self.forward, x)
            if out.shape[0] != n:
                raise RuntimeError(f"forward returned {out.shape[0]} rows for {n} inputs")
        except Exception as exc:  # noqa: BLE001 — fail this batch's callers only
            elapsed = time.perf_counter() - started
            self.observer.batch_done(n, elapsed, False)
            for g in batch:
                if not g.future.done():
                    g.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        self.observer.batch_done(n, elapsed, True)
        i = 0
        for g in batch:
            k = len(g)
            if not g.future.done():
                g.future.set_result(BatchResult(out[i:i + k], started - g.enqueued, elapsed, n))
            i += k
