"""The simulated line, for the commands that train, evaluate or explain on it: a plugin found by name.

Serving a real line never needs the simulator, so the runtime never imports it: the few commands
that work on the simulated line ask for it here, and say so in one line if it is not installed.
"""

from __future__ import annotations

import importlib
from types import ModuleType

PLUGIN = "simulators.evaluation"


def simulated_line() -> ModuleType:
    """The simulator's evaluation data (``simulated_history``, ``evaluate_sim``, ``simulated_incident``, ...)."""
    try:
        return importlib.import_module(PLUGIN)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "simulators":
            raise
        raise SystemExit("error: this command needs the simulated line (the 'simulators' package, installed with "
                         "factory-copilot from its repository); on your own line pass --history") from None
