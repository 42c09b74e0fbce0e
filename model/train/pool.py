"""Worker processes for the offline tools (alignment, teacher vectors, benches), started clean.

Workers are spawned, never forked. A forked child inherits the parent's objects but not its
threads: an ONNX Runtime session left in the parent (the service's encoder, created in the
same process by in-process tests or tools) is copied without its thread pool, and when the
child's garbage collector frees it, its destructor waits forever on a condition variable that
only those threads would signal (a `make test` run hung this way in `load_aligned_folder`).
A spawned worker imports what it needs and shares nothing.
"""
from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor


def process_pool(workers: int, initializer: Callable[..., None] | None = None,
                 initargs: tuple = ()) -> ProcessPoolExecutor:
    """A pool of `workers` spawned processes, each running `initializer(*initargs)` first."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=initializer, initargs=initargs)
