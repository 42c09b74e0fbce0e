"""The admission gate (app/admission.py): slots in arrival order while few wait, newest first
when many do, a refusal after the wait budget, and no slot lost to a request that went away."""
from __future__ import annotations

import asyncio

import pytest

from app.admission import GateFull, LifoGate


async def _hold(gate: LifoGate, name: str, order: list[str], release: asyncio.Event):
    async with gate.slot():
        order.append(name)
        await release.wait()


def _run_waiters(n_waiters: int, lifo_above: int) -> list[str]:
    """One slot, held; `n_waiters` queue behind it in order; then the slot is freed one
    holder at a time. The order in which the waiters got it."""
    async def go():
        gate = LifoGate(1, max_wait_s=5, lifo_above=lifo_above)
        order: list[str] = []
        events = {f"w{i}": asyncio.Event() for i in range(n_waiters)}
        first = asyncio.Event()
        tasks = [asyncio.create_task(_hold(gate, "first", order, first))]
        await asyncio.sleep(0.01)
        for name, ev in events.items():
            tasks.append(asyncio.create_task(_hold(gate, name, order, ev)))
            await asyncio.sleep(0.001)
        first.set()
        for _ in range(n_waiters):
            await asyncio.sleep(0.01)
            events[order[-1]].set()  # the holder leaves; the next gets the slot
        await asyncio.gather(*tasks)
        return order[1:]
    return asyncio.run(go())


def test_few_waiters_are_served_in_arrival_order():
    assert _run_waiters(4, lifo_above=4) == ["w0", "w1", "w2", "w3"]


def test_many_waiters_the_newest_first_until_the_queue_is_short_again():
    # 6 waiting > 3: the newest (w5), then w4 (5 > 3), w3 (4 > 3); then in order
    assert _run_waiters(6, lifo_above=3) == ["w5", "w4", "w3", "w0", "w1", "w2"]


def test_a_waiter_without_a_slot_in_time_is_refused_and_holds_nothing():
    async def go():
        gate = LifoGate(1, max_wait_s=0.05)
        release = asyncio.Event()
        holder = asyncio.create_task(_hold(gate, "a", [], release))
        await asyncio.sleep(0.01)
        with pytest.raises(GateFull):
            async with gate.slot():
                pass
        release.set()
        await holder
        assert gate.busy == 0 and gate.waiting == 0
        async with gate.slot():  # free again
            assert gate.busy == 1
    asyncio.run(go())


def test_a_cancelled_waiter_passes_its_slot_on():
    async def go():
        gate = LifoGate(1, max_wait_s=5)
        release, order = asyncio.Event(), []
        holder = asyncio.create_task(_hold(gate, "a", order, release))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(_hold(gate, "gone", order, asyncio.Event()))
        await asyncio.sleep(0.01)
        later_release = asyncio.Event()
        later = asyncio.create_task(_hold(gate, "later", order, later_release))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client hung up while waiting
        release.set()
        await asyncio.sleep(0.01)
        assert order == ["a", "later"]
        later_release.set()
        await asyncio.gather(holder, later)
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert gate.busy == 0
    asyncio.run(go())
