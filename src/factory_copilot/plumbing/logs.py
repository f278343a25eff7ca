"""Log set-up for every command: readable lines on a terminal, JSON lines for a service."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key.startswith("fc_"):  # structured fields passed as extra={"fc_asset": ...}
                body[key[3:]] = value
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


class StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a line is logged, not as it was at set-up.

    A stream swapped in meanwhile (a test's capture, a command's redirection) and closed again must not make
    every later line, from any thread, a "Logging error" instead of a log line.
    """

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: str = "INFO", json_lines: bool = False) -> None:
    handler = StderrHandler()
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # asyncua logs every lost connection with a stack trace; our collectors say it in one line instead
    for noisy in ("asyncua", "amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL if level.upper() != "DEBUG" else logging.INFO)


class Throttled:
    """At most one log line per key every ``every_s`` seconds, saying how many were held back in between.

    For events that can repeat thousands of times a second (a bad payload, a skewed clock, a full
    buffer): each is counted by its caller and named once per interval here, never silenced.
    """

    def __init__(self, logger: logging.Logger, every_s: float = 10.0, clock=time.monotonic):
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()  # paho and asyncua call back from their own threads

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless ``key`` was logged less than ``every_s`` ago; True when it was logged."""
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.every_s:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            self._last[key] = now
            held = self._held.pop(key, 0)
        if held:
            msg += " (+%d more since the last report)"
            args = (*args, held)
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.ERROR, key, msg, *args)

    def info(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, key, msg, *args)


def printable(text: object, limit: int = 200) -> str:
    """Text from outside (a topic, a node id, a name) made safe for one log line: control characters escaped, cut.

    A newline or an ANSI escape in a topic must not forge a second log line or repaint the reader's terminal.
    """
    s = str(text)
    if len(s) > limit:
        s = s[:limit] + f"...(+{len(s) - limit} chars)"
    return _CONTROL.sub(_escape, s)


# C0/C1 controls, DEL, and the Unicode line/paragraph separators and bidi overrides that reorder what a reader sees
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
