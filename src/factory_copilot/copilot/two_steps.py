"""The diagnosis in two calls on one cached prompt: the summary written freely, then the ids under a small GBNF grammar.

The station's ``two_steps`` option, for a backend that continues a started answer (``supports_prefill``). Measured
with bench/copilot.py: the first words come ~1 s sooner than under the schema, but the whole answer costs more (the
second call re-reads the summary the first wrote), so it is not the default.
"""

from __future__ import annotations

import json
import time
from typing import Any, Awaitable, Callable

from factory_copilot.copilot.language_model import Messages, Reply
from factory_copilot.copilot.streams import SummaryStream
from factory_copilot.names import UNKNOWN

SUMMARY_OPEN = '{"summary":"'
CHOICE_TOKENS = 48  # the second call's bound: two causes and three step numbers fit with room
# the station's ``_generate``: (messages, schema, max_tokens, on_token, timeout_s, **chat options) -> Reply
Generate = Callable[..., Awaitable[Reply]]


def _gbnf(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def choice_grammar(faults: list[str], steps: list[str], max_causes: int = 2, max_steps: int = 3) -> str:
    """GBNF for the rest of the answer after ``"causes":["``: fault:confidence choices, then step numbers."""
    causes = " | ".join(_gbnf(f"{f}:{c}") for f in [*faults, UNKNOWN] for c in ("high", "medium", "low"))
    more_causes = f' ({_gbnf(chr(34) + "," + chr(34))} cause)?' * (max_causes - 1)
    step = " | ".join(_gbnf(s) for s in steps)
    n = min(max_steps, len(steps))
    step_list = f' (step{(" (" + _gbnf(",") + " step)?") * (n - 1)})?' if steps else ""
    return (f'root ::= cause{more_causes} {_gbnf(chr(34) + "],")} {_gbnf(chr(34) + "steps" + chr(34) + ":[")}'
            f'{step_list} {_gbnf("]}")}\ncause ::= {causes}\n' + (f"step ::= {step}\n" if steps else ""))


async def two_step_answer(generate: Generate, messages: Messages, faults: list[str], steps: list[str],
                          summary: SummaryStream, summary_tokens: int, timeout_s: float) -> Reply:
    """The answer to ``messages`` in two ``generate`` calls: the summary, then the choices of ``faults`` and ``steps``.

    The JSON around them is given (prefilled), not generated: every generated token costs a forward pass,
    and a grammar over the whole vocabulary costs more per token than free writing. The summary ends
    at its closing quote; the choices are an enum of this line's faults and this alarm's steps.
    """
    started = time.monotonic()
    summary(SUMMARY_OPEN)
    first = await generate(messages, None, summary_tokens, summary, prefill=SUMMARY_OPEN, stop=['"'])
    summary.close()  # the summary ended at its quote (or the token limit); a cut escape is dropped
    # the summary as the operator read it, encoded again: a stray escape of the model cannot break the JSON
    choices = SUMMARY_OPEN + json.dumps(summary.text, ensure_ascii=False)[1:-1] + '","causes":["'
    rest = await generate(messages, None, CHOICE_TOKENS, None, timeout_s - (time.monotonic() - started),
                          prefill=choices, grammar=choice_grammar(faults, steps))
    stats: dict[str, Any] = {**rest.stats, "ttft_s": first.stats.get("ttft_s", 0.0),
                             "completion_chunks": first.stats.get("completion_chunks", 0)
                             + rest.stats.get("completion_chunks", 0)}
    return Reply(choices + rest.text, stats)
