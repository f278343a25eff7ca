"""The project's errors: one root, and the three kinds the service's watchdog treats differently.

As Home Assistant's integrations raise ConfigEntryNotReady / ConfigEntryAuthFailed / a permanent error, a
station that fails tells the watchdog what to do next by the kind of error it raises:
- ``Transient``: the other end is down or slow (a server unreachable, a model busy): restart with back-off.
- ``AuthRefused``: the other end refused our credentials: retrying at once cannot help, so retry slowly
  (someone must fix a password or a certificate) and say so in /health.
- ``GiveUp``: nothing will change without a person (a line file that cannot work, another instance already
  publishing this line): the station stays stopped with the reason in /health.
Anything else a station raises is a bug: restarted with back-off, like a transient one, and logged with its trace.
"""

from __future__ import annotations


class FactoryCopilotError(Exception):
    """Root of the project's own errors (catch this to catch any of them)."""


class Transient(FactoryCopilotError):
    """Worth retrying soon: the other end may be back."""


class AuthRefused(FactoryCopilotError):
    """Credentials refused: retry slowly, a person has to act."""


class GiveUp(FactoryCopilotError):
    """Permanent: the station stays stopped and /health says why."""
