"""The model's text as it is written, for listeners: the summary's words only (``SummaryStream``), read out of the
JSON answer as it comes."""

from __future__ import annotations

import re
import time
from typing import Callable

from factory_copilot.copilot.decoding import JsonStringReader

TokenSink = Callable[[str], None]
_SUMMARY_KEY = re.compile(r'"summary"\s*:\s*"')


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
