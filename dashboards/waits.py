"""Where the model's job for an alarm or a question stands, in the operator's words, from the copilot's
``model-job/1`` messages: "model diagnosis coming: 2nd in queue, about 40 s".

The copilot states a waiting job's place and estimate on every change of its queue and every 5 s (not
retained), so a job heard of longer ago than ``QUIET_S`` says so rather than passing for a wait that goes on.
"""

from __future__ import annotations

from typing import Any

QUIET_S = 15.0  # three of the copilot's 5 s announcements missed: say the copilot has gone quiet


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def about(seconds: float) -> str:
    """A wait, rounded as a person says it: about 8 s, about 40 s, about 3 min."""
    s = max(1, round(seconds))
    if s < 20:
        return f"about {s} s"
    if s < 90:
        return f"about {5 * round(s / 5)} s"
    return f"about {round(s / 60)} min"


def waited(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60} s" if s < 3600 else f"{s // 3600} h {s % 3600 // 60} min"


def wait_words(job: dict[str, Any] | None, now: float, what: str = "model diagnosis") -> tuple[str, str] | None:
    """(kind, words) for a job's newest state: kind is ``waiting``, ``quiet`` or ``dropped``; None once done
    (or when no job was heard of). ``job`` is the model-job/1 body with ``received``: when the page got it."""
    if not job:
        return None
    state = job.get("state")
    if state == "done":
        return None
    if state == "dropped":
        return "dropped", f"No {what}: {job.get('detail') or 'the copilot dropped the job'}; the runbook's stands."
    received = float(job.get("received", now))
    if now - received > QUIET_S:
        return "quiet", (f"{what.capitalize()} was {_where(job)} {waited(now - received)} ago; no word from the "
                         "copilot since (is the service running?)")
    parts = [_where(job)]
    estimate = job.get("estimate_s")
    if estimate is None:
        parts.append("no time estimate yet (the model is loading or has not finished a job)")
    else:
        left = float(estimate) - (now - received)
        parts.append(about(left) if left >= 1 else "any moment now")
    since = job.get("since")
    words = f"{what.capitalize()} coming: " + ", ".join(parts)
    if since is not None and now - float(since) >= 1:
        words += f" (waiting {waited(now - float(since))})"
    return "waiting", words


def _where(job: dict[str, Any]) -> str:
    if job.get("state") == "running":
        return "the model is writing it"
    return f"{ordinal(int(job.get('position', 0)) + 1)} in queue"
