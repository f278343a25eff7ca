"""Reproducible randomness for the simulator: a fixed number of draws per step, and slow process wander.

Every step consumes the same number of normals whether or not a fault is active, so a
run with a fault is sample-for-sample identical to the fault-free run until the onset.
"""

from __future__ import annotations

import math

import numpy as np


class NormalRows:
    """Rows of standard normals of fixed width, drawn from numpy in blocks and served as Python floats."""

    def __init__(self, rng: np.random.Generator, width: int, block: int = 2048):
        self._rng = rng
        self.width = width
        self._block = block
        self._rows: list[list[float]] = []
        self._i = 0

    def row(self) -> list[float]:
        if self._i >= len(self._rows):
            # per-step scalar maths is faster on Python floats than on numpy scalars
            self._rows = self._rng.standard_normal((self._block, self.width)).tolist()
            self._i = 0
        r = self._rows[self._i]
        self._i += 1
        return r


class Wander:
    """Slow, mean-reverting process drift (Ornstein-Uhlenbeck), discretised exactly for any step."""

    __slots__ = ("mean", "value", "_a", "_b")

    def __init__(self, mean: float, sd: float, tau_s: float, dt_s: float, value: float | None = None):
        self.mean = mean
        self.value = mean if value is None else value
        self._a = math.exp(-dt_s / tau_s)
        self._b = sd * math.sqrt(1.0 - self._a * self._a)

    def step(self, z: float) -> float:
        self.value = self.mean + (self.value - self.mean) * self._a + self._b * z
        return self.value


def lag_gain(dt_s: float, tau_s: float) -> float:
    """Share of the gap a first-order lag closes in one step: x += gain * (target - x)."""
    return 1.0 - math.exp(-dt_s / tau_s)


def toward(value: float, target: float, max_step: float) -> float:
    """Move toward target by at most max_step (a drive's acceleration ramp)."""
    if target > value + max_step:
        return value + max_step
    if target < value - max_step:
        return value - max_step
    return target
