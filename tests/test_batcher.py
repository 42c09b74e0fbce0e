"""The dynamic batcher on its own (no web framework, no model): a fake forward pass."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from app.batcher import BatcherClosed, DynamicBatcher, Overloaded


class Recorder:
    """A forward pass that records each batch and returns 10x its input (row-aligned)."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None,
                 poison: float | None = None):
        self.batches: list[list[float]] = []
        self.threads: list[str] = []
        self.delay = delay
        self.gate = gate
        self.poison = poison
        self.started = threading.Event()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.started.set()
        self.threads.append(threading.current_thread().name)
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if self.delay:
            time.sleep(self.delay)
        self.batches.append(x[:, 0].tolist())
        if self.poison is not None and (x[:, 0] == self.poison).any():
            raise RuntimeError("poisoned batch")
        return x * 10


class Observer:
    def __init__(self):
        self.sizes, self.waits, self.depths, self.failed = [], [], [], 0

    def batch_done(self, size, inference_s, ok):
        self.sizes.append(size)
        self.failed += not ok

    def queue_wait(self, seconds):
        self.waits.append(seconds)

    def queue_depth(self, items):
        self.depths.append(items)


def item(v: float, k: int = 1) -> np.ndarray:
    """k rows; row j is [v + j/10, v + j/10] (float64, so values compare exactly)."""
    return np.array([[v + j / 10, v + j / 10] for j in range(k)], dtype=np.float64)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_batches_fill_up_to_max_size_and_each_caller_gets_its_own_rows():
    async def main():
        fwd, obs = Recorder(), Observer()
        b = DynamicBatcher(fwd, max_batch_size=4, max_delay_s=0.05, max_queue=64, observer=obs)
        b.start()
        results = await asyncio.gather(*[b.submit(item(float(i))) for i in range(10)])
        await b.stop()
        return fwd, obs, results

    fwd, obs, results = run(main())
    assert [len(x) for x in fwd.batches] == [4, 4, 2]
    assert obs.sizes == [4, 4, 2] and obs.failed == 0
    for i, r in enumerate(results):
        assert np.array_equal(r.output, item(float(i)) * 10)
    assert [r.batch_size for r in results] == [4] * 8 + [2] * 2
    assert obs.depths[-1] == 0 and max(obs.depths) == 10


def test_delay_after_the_first_item_is_honoured():
    async def main():
        fwd = Recorder()
        b = DynamicBatcher(fwd, max_batch_size=8, max_delay_s=0.2, max_queue=64)
        b.start()
        t0 = time.perf_counter()
        first = asyncio.ensure_future(b.submit(item(1.0)))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(b.submit(item(2.0)))  # inside the window: same batch
        r1 = await first
        elapsed = time.perf_counter() - t0
        await second
        await asyncio.sleep(0.25)
        third = await b.submit(item(3.0))  # alone: waits the delay, then goes
        await b.stop()
        return fwd, elapsed, r1, third

    fwd, elapsed, r1, third = run(main())
    assert fwd.batches[0] == [1.0, 2.0]
    assert 0.19 <= elapsed < 0.6, elapsed
    assert r1.queue_s >= 0.19
    assert fwd.batches[1] == [3.0] and 0.19 <= third.queue_s < 0.6


def test_zero_delay_does_not_wait():
    async def main():
        b = DynamicBatcher(Recorder(), max_batch_size=8, max_delay_s=0.0, max_queue=8)
        b.start()
        t0 = time.perf_counter()
        await b.submit(item(1.0))
        dt = time.perf_counter() - t0
        await b.stop()
        return dt

    assert run(main()) < 0.1


def test_a_pair_always_rides_in_one_batch():
    async def main():
        gate = threading.Event()
        fwd = Recorder(gate=gate)
        b = DynamicBatcher(fwd, max_batch_size=3, max_delay_s=0.5, max_queue=64)
        b.start()
        blocker = asyncio.ensure_future(b.submit(item(0.0)))
        await asyncio.to_thread(fwd.started.wait, 5)
        singles = [asyncio.ensure_future(b.submit(item(float(i)))) for i in (1, 2)]
        pair = asyncio.ensure_future(b.submit(item(5.0, k=2)))  # does not fit after 1 + 1
        more = asyncio.ensure_future(b.submit(item(7.0)))
        await asyncio.sleep(0.01)
        gate.set()
        res = await asyncio.gather(blocker, *singles, pair, more)
        await b.stop()
        return fwd, res

    fwd, res = run(main())
    assert fwd.batches[0] == [0.0]
    assert fwd.batches[1] == [1.0, 2.0]  # the pair did not fit: carried to the next batch
    assert fwd.batches[2][:2] == pytest.approx([5.0, 5.1])  # both rows of the pair together
    assert all(len(batch) <= 3 for batch in fwd.batches)
    assert np.allclose(res[3].output, item(5.0, k=2) * 10)
    assert np.allclose(res[4].output, item(7.0) * 10)


def test_full_queue_raises_overloaded_at_once_and_recovers():
    async def main():
        gate = threading.Event()
        fwd = Recorder(gate=gate)
        b = DynamicBatcher(fwd, max_batch_size=2, max_delay_s=0.0, max_queue=4, retry_after=7)
        b.start()
        running = asyncio.ensure_future(b.submit(item(0.0, k=2)))
        await asyncio.to_thread(fwd.started.wait, 5)  # the worker is busy in forward
        queued = [asyncio.ensure_future(b.submit(item(float(i), k=2))) for i in (1, 2)]
        await asyncio.sleep(0.01)
        assert b.depth == 4
        t0 = time.perf_counter()
        with pytest.raises(Overloaded) as info:
            await b.submit(item(9.0))
        refused_in = time.perf_counter() - t0
        gate.set()
        done = await asyncio.gather(running, *queued)
        after = await b.submit(item(3.0))  # room again
        await b.stop()
        return info.value, refused_in, done, after

    exc, refused_in, done, after = run(main())
    assert exc.retry_after == 7 and refused_in < 0.05
    assert len(done) == 3 and np.array_equal(after.output, item(3.0) * 10)


def test_stop_drains_what_is_queued_then_refuses_new_work():
    async def main():
        fwd = Recorder(delay=0.02)
        b = DynamicBatcher(fwd, max_batch_size=2, max_delay_s=0.01, max_queue=64)
        b.start()
        futs = [asyncio.ensure_future(b.submit(item(float(i)))) for i in range(7)]
        await asyncio.sleep(0)  # all 7 queued
        await b.stop(drain=True)
        assert all(f.done() for f in futs)
        with pytest.raises(BatcherClosed):
            await b.submit(item(1.0))
        return fwd, [f.result() for f in futs], b

    fwd, results, b = run(main())
    assert sorted(v for batch in fwd.batches for v in batch) == [float(i) for i in range(7)]
    assert [np.array_equal(r.output, item(float(i)) * 10) for i, r in enumerate(results)] == [True] * 7
    assert not b.running and b.depth == 0


def test_stop_without_drain_fails_the_queued_callers():
    async def main():
        gate = threading.Event()
        fwd = Recorder(gate=gate)
        b = DynamicBatcher(fwd, max_batch_size=1, max_delay_s=0.0, max_queue=64)
        b.start()
        first = asyncio.ensure_future(b.submit(item(0.0)))
        await asyncio.to_thread(fwd.started.wait, 5)
        rest = [asyncio.ensure_future(b.submit(item(float(i)))) for i in (1, 2)]
        await asyncio.sleep(0)
        stopping = asyncio.ensure_future(b.stop(drain=False))
        await asyncio.sleep(0.01)
        gate.set()
        await stopping
        return first, rest

    first, rest = run(main())
    assert np.array_equal(first.result().output, item(0.0) * 10)  # the running batch finishes
    assert all(isinstance(f.exception(), BatcherClosed) for f in rest)


def test_an_exception_in_forward_fails_only_that_batch():
    async def main():
        gate = threading.Event()
        fwd, obs = Recorder(gate=gate, poison=66.0), Observer()
        b = DynamicBatcher(fwd, max_batch_size=2, max_delay_s=0.0, max_queue=64, observer=obs)
        b.start()
        blocker = asyncio.ensure_future(b.submit(item(0.0)))
        await asyncio.to_thread(fwd.started.wait, 5)
        bad = asyncio.ensure_future(b.submit(item(66.0)))
        bad_mate = asyncio.ensure_future(b.submit(item(1.0)))  # same batch as the poison
        good_pair = asyncio.ensure_future(b.submit(item(2.0, k=2)))  # next batch
        await asyncio.sleep(0)
        gate.set()
        outcome = await asyncio.gather(blocker, bad, bad_mate, good_pair,
                                       return_exceptions=True)
        later = await b.submit(item(3.0))
        await b.stop()
        return fwd, obs, outcome, later

    fwd, obs, outcome, later = run(main())
    blocker, bad, bad_mate, good_pair = outcome
    assert fwd.batches[1] == [66.0, 1.0]
    assert isinstance(bad, RuntimeError) and isinstance(bad_mate, RuntimeError)
    assert np.array_equal(blocker.output, item(0.0) * 10)
    assert np.allclose(good_pair.output, item(2.0, k=2) * 10)
    assert np.array_equal(later.output, item(3.0) * 10)  # the worker survived
    assert obs.failed == 1


def test_forward_runs_off_the_event_loop_and_cancelled_callers_are_skipped():
    async def main():
        fwd = Recorder(delay=0.2)
        b = DynamicBatcher(fwd, max_batch_size=1, max_delay_s=0.0, max_queue=64)
        b.start()
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.ensure_future(ticker())
        first = asyncio.ensure_future(b.submit(item(1.0)))
        gone = asyncio.ensure_future(b.submit(item(2.0)))
        await asyncio.sleep(0.05)
        gone.cancel()  # its client went away while it was queued
        r = await first
        last = await b.submit(item(3.0))
        t.cancel()
        await b.stop()
        return fwd, ticks, r, last, b

    fwd, ticks, _, _, b = run(main())
    assert ticks >= 10  # the loop kept running during the 0.2 s forward pass
    assert all(name.startswith("encoder") for name in fwd.threads)
    assert fwd.batches == [[1.0], [3.0]]  # the cancelled item never reached forward
    assert b.depth == 0


def test_forward_returning_the_wrong_number_of_rows_fails_the_batch():
    async def main():
        b = DynamicBatcher(lambda x: x[:1], max_batch_size=4, max_delay_s=0.0, max_queue=8)
        b.start()
        with pytest.raises(RuntimeError, match="rows"):
            await b.submit(item(1.0, k=2))
        await b.stop()

    run(main())


def test_a_lone_request_does_not_wait_out_the_batching_delay():
    """With `more_coming` saying nothing else can join, a batch goes at once; while it says
    more may come, the batcher waits (up to max_delay_s) and the late group rides along."""
    async def scenario(more: bool) -> tuple[float, list]:
        rec = Recorder()
        b = DynamicBatcher(rec, max_batch_size=8, max_delay_s=0.5,
                           more_coming=lambda groups: more)
        b.start()
        t0 = time.perf_counter()
        first = asyncio.create_task(b.submit(np.array([[1.0]])))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(b.submit(np.array([[2.0]])))
        await first
        elapsed = time.perf_counter() - t0
        await second
        await b.stop()
        return elapsed, rec.batches

    alone, batches = asyncio.run(scenario(more=False))
    assert alone < 0.25 and batches == [[1.0], [2.0]]
    waited, batches = asyncio.run(scenario(more=True))
    assert waited >= 0.45 and batches == [[1.0, 2.0]]
