"""JSON from outside the process (MQTT payloads, commands, questions), parsed within limits or refused by name.

``json.loads`` alone turns a hostile payload into an exception nobody expects: a JSON
nested 60,000 deep raises RecursionError, a 5,000-digit integer raises ValueError in
Python >= 3.11 (and would be no float anyway), ``NaN`` is accepted as a number. Here
the size and depth are checked before parsing, integers are bounded, NaN and
Infinity are refused, and every refusal is a ``BadJson`` with a short reason.
"""

from __future__ import annotations

import json
import re

from factory_copilot.errors import FactoryCopilotError
from typing import Any

MAX_DEPTH = 32
MAX_INT_DIGITS = 30  # beyond float64's 17 significant digits anyway
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


class BadJson(FactoryCopilotError, ValueError):
    """Why a payload is not usable JSON: ``reason`` is oversized, too_deep, not_json or not_finite."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def depth(raw: bytes) -> int:
    """Deepest nesting of objects and arrays (brackets inside strings do not count)."""
    body = _STRING.sub(b'""', raw)
    level = deepest = 0
    for ch in body:
        if ch in (0x5B, 0x7B):  # [ {
            level += 1
            deepest = max(deepest, level)
        elif ch in (0x5D, 0x7D):
            level -= 1
    return deepest


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BadJson("not_finite", f"integer of {len(text)} digits")
    return int(text)


def _constant(name: str) -> float:
    raise BadJson("not_finite", f"{name} is not a finite number")


def loads(raw: bytes | bytearray | str, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """The parsed JSON, or BadJson: size and depth checked first, huge integers and NaN refused."""
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    if len(data) > max_bytes:
        raise BadJson("oversized", f"{len(data)} bytes > limit of {max_bytes}")
    # counting brackets is cheap; walking them only when there could be too many
    if data.count(b"[") + data.count(b"{") > max_depth and depth(data) > max_depth:
        raise BadJson("too_deep", f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(data, parse_int=_int, parse_constant=_constant)
    except BadJson:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadJson("not_json", f"not JSON ({type(exc).__name__})") from None
