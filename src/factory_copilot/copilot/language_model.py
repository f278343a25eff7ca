"""What the copilot station asks of a language model and what it gets back: the ``LLMBackend`` protocol, its ``Reply``,
its errors and the ``AnswerForm`` of a diagnosis.

Every backend (``backends.LlamaCppBackend`` in this process, ``worker.LocalModel`` in a child process,
``backends.OpenAIBackend`` for a server) subclasses ``LLMBackend``: the station calls these members and no others,
and a backend that cannot do something says so in a flag (``supports_prefill``, ``supports_forms``) the station
reads before asking. Calls block (the station runs them in a worker thread) and return their result; nothing is
left on the backend for the caller to read afterwards, where another call could overwrite it first.
"""

from __future__ import annotations

import json
from contextvars import ContextVar

from factory_copilot.errors import Transient
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol

OnToken = Callable[[str], None]
Messages = list[dict[str, str]]


@dataclass(frozen=True, slots=True)
class CallFor:
    """What a call is for, as its caller names it: the alarm event or the question (its request id), and how urgent
    (higher first). A backend that sends its calls elsewhere (pool.py) keys and orders its jobs by it."""

    key: str
    priority: int = 0


# set by the caller around a call; asyncio.to_thread carries it into the worker thread the backend runs in
CALL_FOR: ContextVar[CallFor | None] = ContextVar("call_for", default=None)


class BackendError(Transient, RuntimeError):
    reason = "backend error"


class ModelUnavailable(BackendError):
    reason = "model unavailable"


class ModelTimeout(BackendError):
    reason = "timeout"

    def __init__(self, message: str, partial: str = ""):
        super().__init__(message)
        self.partial = partial


@dataclass(frozen=True, slots=True)
class Reply:
    """One call's result: the text the model gave, and how the call went (seconds, tokens: what the backend measured,
    e.g. ``ttft_s``, ``total_s``, ``completion_chunks``, ``cached_tokens``; a warm-up's ``restored``)."""

    text: str
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class ChoiceList:
    """A JSON array whose items are picked from ``options`` (each already JSON: ``'"bearing_wear:high"'``, ``'1'``)."""

    key: str
    options: list[str]
    min_items: int = 0
    max_items: int = 1
    # options whose text before this separator is the same exclude each other once one is chosen (one fault, one
    # confidence word): the validation keeps only the first anyway, so a second would be passes for nothing
    distinct_before: str | None = None


@dataclass(slots=True)
class AnswerForm:
    """``{"<text_key>": "<written>", "<list key>": [<chosen>, ...], ...}``: one written string first, then lists."""

    text_key: str = "summary"
    min_chars: int = 1
    max_chars: int = 120
    max_tokens: int = 32
    lists: list[ChoiceList] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AnswerForm":
        return cls(**{**data, "lists": [ChoiceList(**x) for x in data.get("lists", [])]})

    @classmethod
    def from_schema(cls, schema: dict, max_tokens: int) -> "AnswerForm":
        """The form of a JSON schema shaped like the diagnosis': a string property first, then arrays of enum items.

        Raises ValueError for any other shape (the caller then uses the schema as a grammar).
        """
        props = schema.get("properties") or {}
        keys = list(props)
        if not keys or props[keys[0]].get("type") != "string" or "enum" in props[keys[0]]:
            raise ValueError("the first property is not a free string")
        text = props[keys[0]]
        lists = []
        for key in keys[1:]:
            p = props[key]
            if p.get("type") != "array":
                raise ValueError(f"{key}: not an array")
            items = p.get("items") or {}
            enum = items.get("enum", [])
            if items and not enum:
                raise ValueError(f"{key}: items are not an enum")
            max_items = min(int(p.get("maxItems", len(enum))), len(enum)) if enum else 0
            lists.append(ChoiceList(key, [json.dumps(v, ensure_ascii=False) for v in enum],
                                    min(int(p.get("minItems", 0)), max_items), max_items,
                                    ":" if all(isinstance(v, str) and ":" in v for v in enum) and enum else None))
        # the token bound comes first: a minimum length is kept within it (the quote is not allowed before)
        return cls(keys[0], int(text.get("minLength", 0)), int(text.get("maxLength", 10_000)), max_tokens, lists)


class LLMBackend(Protocol):
    """A language model as the copilot station uses it; the defaults are a plain chat server's (no prefill, no forms,
    warmed by a one-token reply, nothing to close). Errors: ``ModelUnavailable`` (no model, or a broken one, or no
    server: logged once), ``ModelTimeout`` (stopped at the deadline, with the partial text) or ``BackendError``."""

    name: str  # which model, for the diagnosis and the log
    model_path: str | None = None  # its GGUF file, whose manifest /health shows; None for a server
    supports_prefill: bool = False  # chat() continues a started answer (``prefill``), stops at ``stop``, follows ``grammar``
    supports_forms: bool = False  # answer() writes a diagnosis in its ``AnswerForm`` (decoding.py)

    def chat(self, messages: Messages, schema: dict | None = None, max_tokens: int = 512,
             on_token: OnToken | None = None, timeout_s: float | None = None, prefill: str = "",
             stop: list[str] | None = None, grammar: str | None = None) -> Reply:
        """The reply to ``messages``, each piece to ``on_token`` as it is generated. ``schema`` (JSON schema)
        constrains it; ``prefill``, ``stop`` and ``grammar`` (GBNF) only where ``supports_prefill``."""
        ...

    def answer(self, messages: Messages, form: AnswerForm, on_token: OnToken | None = None,
               timeout_s: float | None = None) -> Reply:
        """The reply in the shape of ``form``: the summary written, the ids chosen, the JSON given (``supports_forms``)."""
        raise BackendError(f"{self.name} cannot answer in a form")

    def warm(self, system: str, user_prefix: str = "", timeout_s: float | None = None) -> Reply:
        """Have the fixed prompt prefix (``system``, then ``user_prefix`` in the user message) ready before the first
        alarm; a server is asked for one token, so it caches the system prompt."""
        return self.chat([{"role": "system", "content": system}, {"role": "user", "content": "ready?"}], None, 1,
                         timeout_s=timeout_s)

    def close(self) -> None:
        """Free what the backend holds (a child process); at shutdown, even mid-answer."""

    def stats(self) -> dict[str, Any]:
        """What the backend counts, for ``/health``: its calls (a child process: its crashes; a pool: its jobs, retries,
        duplicates); this default, {}, shows nothing."""
        return {}
