"""Wall-clock timing of repeated calls, shared by ``bench/`` and the experiments' timing reports."""
from __future__ import annotations

import time

import numpy as np

__all__ = ["call_seconds", "median_seconds", "min_seconds"]


def call_seconds(fn, items=None, repeats=None, warmup=0):
    """Seconds of each timed call, as an array.

    With ``items``, ``fn(item)`` is timed once per item; otherwise ``fn()`` is timed ``repeats``
    times. ``warmup`` untimed calls come first (``fn(items[0])`` or ``fn()``), e.g. to trace a
    compiled function. Raises ValueError unless exactly one of ``items`` / ``repeats`` is given.
    """
    if (items is None) == (repeats is None):
        raise ValueError("give either items or repeats")
    calls = [(it,) for it in items] if items is not None else [()] * int(repeats)
    if not calls:
        raise ValueError("nothing to time: no items or repeats < 1")
    for _ in range(int(warmup)):
        fn(*calls[0])
    times = []
    for args in calls:
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def median_seconds(fn, items=None, repeats=None, warmup=0) -> float:
    """Median of :func:`call_seconds` (robust to load spikes on a shared machine)."""
    return float(np.median(call_seconds(fn, items, repeats, warmup)))


def min_seconds(fn, items=None, repeats=None, warmup=0) -> float:
    """Minimum of :func:`call_seconds` (the least disturbed call)."""
    return float(np.min(call_seconds(fn, items, repeats, warmup)))
