"""The commands' log set-up: lines reach whatever stderr is when they are logged."""

from __future__ import annotations

import io
import logging
import sys
import threading

from factory_copilot.plumbing.logs import setup_logging


def test_a_line_logged_after_stderr_was_swapped_and_closed_reaches_the_new_stderr():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    first, second = io.StringIO(), io.StringIO()
    saved = sys.stderr
    try:
        sys.stderr = first  # a command set up its logging while a test (or a redirection) held stderr
        setup_logging("INFO")
        sys.stderr = second
        first.close()  # ... and that stream is gone now
        # a background thread (paho's, say) logs afterwards
        worker = threading.Thread(target=lambda: logging.getLogger("fc.test").warning("broker down"))
        worker.start()
        worker.join()
    finally:
        sys.stderr = saved
        root.handlers[:], root.level = handlers, level
    assert "broker down" in second.getvalue() and "Logging error" not in second.getvalue()
