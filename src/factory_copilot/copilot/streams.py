"""The model's text as it is written, for listeners: every piece (``TokenStream``), or the summary's words only
(``SummaryStream``)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Callable

from factory_copilot.copilot.decoding import JsonStringReader

TokenSink = Callable[[str], None]
_SUMMARY_KEY = re.compile(r'"summary"\s*:\s*"')


class TokenStream:
    """An async iterator of the model's text pieces; pass it as ``on_token`` and ``async for`` over it."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.text = ""

    def __call__(self, piece: str) -> None:
        self.text += piece
        self._queue.put_nowait(piece)

    def close(self) -> None:
        self._queue.put_nowait(None)

    def __aiter__(self) -> "TokenStream":
        return self

    async def __anext__(self) -> str:
        piece = await self._queue.get()
        if piece is None:
            raise StopAsyncIteration
        return piece


class SummaryStream:
    """Turns the model's JSON, piece by piece, into the text of its first field (``summary``) for the operator.

    The schema puts the summary first, so the operator reads the model's words as they come while
    the rest (ids the code renders) is still being written; the string is read by ``decoding.JsonStringReader``.
    """

    def __init__(self, sink: TokenSink | None):
        self.sink = sink
        self.raw = ""
        self.first_at: float | None = None
        self._reader: JsonStringReader | None = None  # from the summary's opening quote on
        self._closed = False

    @property
    def text(self) -> str:
        return self._reader.text if self._reader is not None else ""

    def __call__(self, piece: str) -> None:
        self.raw += piece
        if self._closed:
            return
        if self._reader is None:
            m = _SUMMARY_KEY.search(self.raw)
            if not m:
                return
            self._reader, piece = JsonStringReader(), self.raw[m.end():]
        if self._reader.ended:
            return
        new, _ = self._reader.feed(piece.encode())
        if new:
            if self.first_at is None:
                self.first_at = time.perf_counter()
            if self.sink:
                self.sink(new)

    def close(self) -> None:
        """The summary is over (what is pending, a cut escape, is dropped)."""
        self._closed = True
