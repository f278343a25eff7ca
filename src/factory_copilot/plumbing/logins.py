"""Local dashboard logins: a users file of salted Argon2id password hashes, checked in constant work.

``factory-copilot broker init`` writes it (``dashboard-users.yaml``) for the people of the users
file, with the same password as their MQTT account; nothing here ever stores a password in clear.
argon2-cffi does the hashing (the Password Hashing Competition's winner, as OWASP recommends).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import yaml

from factory_copilot.errors import GiveUp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()  # Argon2id, 64 MiB, 3 passes, 16-byte salt: argon2-cffi's RFC 9106 low-memory profile
_DUMMY = _HASHER.hash("not a password of anyone")  # an unknown user costs as much as a known one


class LoginsError(GiveUp, ValueError):
    """A users file that cannot be used; the message names the file and the entry."""


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


class Logins:
    """The users file's names and hashes; ``check(name, password)`` says whether they match."""

    def __init__(self, hashes: dict[str, str], path: str | Path | None = None):
        self.hashes = dict(hashes)
        self.path = str(path) if path else None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path) -> "Logins":
        path = Path(path)
        try:
            body = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise LoginsError(f"{path}: cannot read the dashboard users file: {exc}") from None
        entries = body.get("users") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            raise LoginsError(f"{path}: expected 'users:' with a list of {{name, password_hash}}")
        hashes: dict[str, str] = {}
        for i, entry in enumerate(entries):
            if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                    and isinstance(entry.get("password_hash"), str) and entry["password_hash"].startswith("$argon2")):
                raise LoginsError(f"{path}: users[{i}]: expected name and an Argon2 password_hash")
            hashes[entry["name"]] = entry["password_hash"]
        return cls(hashes, path)

    def check(self, name: str, password: str) -> bool:
        stored = self.hashes.get(name)
        try:
            return _HASHER.verify(stored or _DUMMY, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def write(self, path: str | Path) -> None:
        """The users file, readable by its owner only."""
        path = Path(path)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("# dashboard logins, written by factory-copilot broker init: Argon2id hashes, no passwords\n")
            yaml.safe_dump({"users": [{"name": n, "password_hash": h} for n, h in self.hashes.items()]}, f,
                           sort_keys=False)
