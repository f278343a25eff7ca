"""The plant's words on the page: units as an operator writes them, signals by the names the line file gives.

Display only: the line file, the store and MQTT keep the ASCII units and tags engineers and systems use.
"""

from __future__ import annotations

import re

from factory_copilot.config import LineConfig

# ASCII spellings of units, as line files write them, and how an operator reads them
UNITS = {"degC": "°C", "degF": "°F", "deg": "°", "m3/min": "m³/min", "Nm3/h": "Nm³/h", "m3/h": "m³/h",
         "m3": "m³", "mm2": "mm²", "m2": "m²"}  # not "us"/"um": English words too
# a unit stands alone (after a number or a space, before punctuation or the end), never inside a word or a tag
_UNIT = re.compile(r"(?<![\w.])(" + "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True)) + r")(?![\w/³])")


def plant_units(text: str) -> str:
    """``text`` with ASCII unit spellings as the plant writes them: "72–92 degC" → "72–92 °C"."""
    return _UNIT.sub(lambda m: UNITS[m.group(1)], text) if text else text


def signal_words(name: str, description: str = "") -> str:
    """A signal as the line file names it: its description, else its name with spaces ("zone2_temperature" → "zone2 temperature")."""
    return description.split(":")[0].strip() or name.replace("_", " ")  # "operating mode: 0 idle, ..." → "operating mode"


def signal_label(line: LineConfig, tag: str) -> str:
    """``asset.signal`` as an operator reads it: "Shrink heat tunnel · zone2 temperature"; an unknown tag stays as it is."""
    asset_id, _, signal = tag.partition(".")
    asset = next((a for a in line.assets if a.id == asset_id), None)
    spec = next((s for s in asset.signals if s.name == signal), None) if asset else None
    if spec is None:
        return tag
    return f"{asset.name} · {signal_words(spec.name, spec.description)}"
