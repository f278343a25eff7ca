"""The words every part of the runtime spells alike and no record owns: each defined here once.

Not in ``records.py``: these are no record's fields but words of the line's vocabulary (a cause id the
classifier, the alarm engine and the copilot all say; the topic scheme's first level, which the publisher,
the broker's ACL, the line file's defaults and every MQTT client share), and ``plumbing/`` and ``config.py``
need them without the records. This module imports nothing, so any module may import it.
"""

from __future__ import annotations

UNKNOWN = "unknown"  # the cause id for "no known fault matches": never a catalogue id, the classifier's honest answer
DEFAULT_PREFIX = "factory-copilot"  # the MQTT topic scheme's first level: <prefix>/<site>/<line>/... (publish/topics.py)
