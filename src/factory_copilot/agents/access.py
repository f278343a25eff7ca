"""Who an HTTP caller of the MCP server is: a bearer token from the tokens file, or one of the broker's users.

* ``--tokens tokens.yaml``: ``factory-copilot mcp --tokens tokens.yaml --add-token ann`` makes a random token
  for ``ann``, prints it once and keeps only its SHA-256 (owner-only file). A caller sends it as
  ``Authorization: Bearer <token>``.
* ``--users dashboard-users.yaml`` (written by ``broker init``: the broker's people, Argon2id hashes of the
  same passwords): a caller sends ``Authorization: Bearer <user>:<password>``. A checked password is
  remembered (by its SHA-256, in memory) for ``remember_s``, so Argon2id runs once, not on every request.

Either way the name is the user the write tools act as, under the line's ``roles:``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from pathlib import Path

import yaml

from factory_copilot.config import Role
from factory_copilot.plumbing.logins import Logins
from factory_copilot.errors import FactoryCopilotError


class AccessError(FactoryCopilotError, ValueError):
    """A tokens or users file that cannot be used; the message names the file and the entry."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenFile:
    """Bearer tokens by user, kept as SHA-256 digests (tokens are random: a digest cannot be guessed back)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: list[tuple[str, str]] = []  # (user, sha256)
        if self.path.exists():
            try:
                data = yaml.safe_load(self.path.read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise AccessError(f"{self.path}: cannot read the tokens file: {exc}") from None
            for i, entry in enumerate(data.get("tokens") or []):
                if not isinstance(entry, dict) or not entry.get("user") or not entry.get("sha256"):
                    raise AccessError(f"{self.path}: tokens[{i}]: needs 'user' and 'sha256'")
                self.entries.append((str(entry["user"]), str(entry["sha256"])))

    def add(self, user: str) -> str:
        """A new token for ``user`` (returned once; only its digest is written)."""
        Role(users=[user])  # the same rules as a role's user names: it is an MQTT topic level
        token = secrets.token_urlsafe(32)
        self.entries.append((user, _digest(token)))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = yaml.safe_dump({"tokens": [{"user": u, "sha256": d} for u, d in self.entries]}, sort_keys=False)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(body)
        return token

    def user_of(self, token: str) -> str | None:
        digest = _digest(token)
        found = None
        for user, known in self.entries:  # every entry compared, in constant time each
            if hmac.compare_digest(digest, known):
                found = user
        return found


class BrokerUsers:
    """The broker's people (``dashboard-users.yaml``): ``<user>:<password>`` checked against their Argon2id hashes."""

    def __init__(self, path: str | Path, remember_s: float = 600.0, clock=time.monotonic):
        try:
            self.logins = Logins.load(path)
        except Exception as exc:  # LoginsError names the file; anything else too
            raise AccessError(str(exc)) from None
        self.remember_s = remember_s
        self.clock = clock
        self._known: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def user_of(self, token: str) -> str | None:
        name, sep, password = token.partition(":")
        if not sep or not name or not password:
            return None
        digest = _digest(token)
        with self._lock:
            known = self._known.get(digest)
            if known and self.clock() - known[1] < self.remember_s:
                return known[0]
        if not self.logins.check(name, password):
            return None
        with self._lock:
            self._known[digest] = (name, self.clock())
        return name
