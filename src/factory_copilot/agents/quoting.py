"""Text from outside, handed to an agent as data: escaped and delimited, so it can never read as an instruction.

Signal descriptions, runbook passages, alarm messages, operators' comments and the model's diagnoses reach
tool results. Each is wrapped as ``<data source="...">...</data>`` with ``&``, ``<`` and ``>`` escaped inside
(the text cannot close the wrapper or open a tag of its own) and control characters shown as ``\\x1b``; the
server's instructions tell the agent that what is inside ``<data>`` is plant data. The server itself never
acts on what a text says: its tools do only what their own arguments ask.
"""

from __future__ import annotations

import html
import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
OPEN, CLOSE = "<data", "</data>"


def escape(text: str) -> str:
    out = html.escape(text, quote=False)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}",
                        out)


def quoted(text: str | None, source: str, limit: int = 2000) -> str | None:
    """``text`` as delimited data from ``source`` (cut at ``limit`` characters, and said so)."""
    if text is None:
        return None
    text = str(text)
    cut = ""
    if len(text) > limit:
        cut, text = f" [cut: {len(text) - limit} more characters]", text[:limit]
    return f'{OPEN} source="{escape(source)}">{escape(text)}{CLOSE}{cut}'
