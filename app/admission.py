"""How many requests are worked on at once, and who waits: an adaptive-LIFO gate with a
wait budget.

Two cores do their best work on a few requests at a time; more in flight only share the
cores and all get slower. So `slots` requests are worked on (decode → detect → encode) and
the others wait, up to `max_wait_s`, for a slot; a request that gets none in time is refused
(503 overloaded with Retry-After), having cost the service nothing but its wait.

While few wait (at most `lifo_above`: 16, or 4 per slot when more), slots go in arrival order: a load the
service keeps up with is served fairly and nobody is refused. When more wait, the newest
waiter gets the next free slot (last in, first out, as in Facebook's adaptive LIFO): under
overload the answered requests stay fast (they waited ~one completion interval, not a whole
queue) and the refused ones wait out the budget, which slows a client that retries at once.
With first-in-first-out every accepted request would queue nearly the whole budget, and
with no wait at all refusals come back at once and their own handling takes the cores
(bench.wrk_load, 64 clients: 16,000 instant refusals in 12 s left 20 pairs/s answered).
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class GateFull(Exception):
    """No slot within the wait budget."""


class LifoGate:
    def __init__(self, slots: int, max_wait_s: float | None, lifo_above: int | None = None):
        if slots < 1:
            raise ValueError("a gate needs at least one slot")
        self.slots = slots
        self.lifo_above = max(16, 4 * slots) if lifo_above is None else lifo_above
        self.max_wait_s = max_wait_s
        self.busy = 0
        self._waiters: list[asyncio.Future] = []  # in arrival order

    @property
    def waiting(self) -> int:
        return sum(not w.done() for w in self._waiters)

    async def _acquire(self) -> None:
        if self.busy < self.slots and not self._waiters:
            self.busy += 1
            return
        granted = asyncio.get_running_loop().create_future()
        self._waiters.append(granted)
        try:
            await asyncio.wait_for(asyncio.shield(granted), self.max_wait_s)
        except TimeoutError:
            if granted.done():
                return  # granted just as the budget ran out: the slot is ours
            self._forget(granted)
            raise GateFull() from None
        except asyncio.CancelledError:  # the request went away while waiting
            if granted.done():
                self._release()  # granted meanwhile: pass the slot on
            else:
                self._forget(granted)
            raise

    def _forget(self, granted: asyncio.Future) -> None:
        granted.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(granted)

    def _release(self) -> None:
        newest_first = len(self._waiters) > self.lifo_above
        while self._waiters:
            nxt = self._waiters.pop() if newest_first else self._waiters.pop(0)
            if not nxt.done():
                nxt.set_result(None)  # the slot passes straight to that waiter
                return
        self.busy -= 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the block; GateFull when none came within the budget."""
        await self._acquire()
        try:
            yield
        finally:
            self._release()
