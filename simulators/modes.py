"""The simulated packaging line's four operating modes, each a ``records.Mode`` (the one word for a mode), and their codes.

A mode's code is the value of the line's ``line.mode`` signal; the simulated line file declares the same codes
under ``modes.codes`` ({0: idle, 1: startup, 2: running, 3: changeover}).
"""

from __future__ import annotations

from factory_copilot.records import Mode

# in the order of their codes; one object each, so ``is`` compares a schedule's modes
IDLE, STARTUP, RUNNING, CHANGEOVER = ALL = tuple(Mode(m) for m in ("idle", "startup", "running", "changeover"))


def code(mode: str) -> int:
    """The ``line.mode`` signal's value in ``mode``."""
    return ALL.index(mode)


def from_code(value: float | int) -> Mode:
    """The mode a ``line.mode`` signal's value stands for."""
    return ALL[int(round(float(value)))]


def named(name: str) -> Mode:
    """The simulated line's mode called ``name`` (any case); ValueError naming the four if it has none."""
    try:
        return ALL[ALL.index(str(name).lower())]
    except ValueError:
        raise ValueError(f"{name!r} is not a mode of the simulated line ({', '.join(ALL)})") from None
