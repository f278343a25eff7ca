"""The fault catalogue: the fault types a line knows, their asset, priority and key signals.

A line file names its own catalogue (``knowledge.faults``, relative to the line file);
the classifier names these ids, the runbooks are written for them and the copilot may
blame nothing else. A line without a catalogue knows no faults: its alarms are explained
from the evidence alone. Nothing here falls back to the demo's catalogue.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from factory_copilot.config import LineConfigError, PriorityName, field_path
from factory_copilot.names import UNKNOWN
from factory_copilot.records import Priority

if TYPE_CHECKING:
    from factory_copilot.config import LineConfig

log = logging.getLogger(__name__)


class Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    asset: str
    priority: PriorityName = Priority.MEDIUM
    signals: list[str] = []

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if v == UNKNOWN:
            raise ValueError(f"{UNKNOWN!r} is reserved for 'no known fault matches'")
        return v


class _Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    faults: list[Fault]


_cache: dict[tuple[str, float], dict[str, Fault]] = {}


def load_faults(path: str | Path) -> dict[str, Fault]:
    """Fault id -> Fault, in file order; errors name the file and the field (``faults[2].asset: Field required``)."""
    path = Path(path)
    try:
        key = (str(path.resolve()), path.stat().st_mtime)
        if key in _cache:
            return dict(_cache[key])
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LineConfigError(path, [f"cannot read the fault catalogue: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise LineConfigError(path, [f"not valid YAML: {exc}"]) from None
    try:
        cat = _Catalogue.model_validate(data)
    except ValidationError as exc:
        raise LineConfigError(path, [f"{field_path(e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                                     for e in exc.errors()]) from None
    faults: dict[str, Fault] = {}
    for i, f in enumerate(cat.faults):
        if f.id in faults:
            raise LineConfigError(path, [f"faults[{i}].id: {f.id!r} appears twice"])
        faults[f.id] = f
    _cache[key] = faults
    return dict(faults)


def faults_of(line: "LineConfig") -> dict[str, Fault]:
    """The line's own fault catalogue (``knowledge.faults``, relative to the line file); none named, none known."""
    path, _ = line.knowledge.paths(line.path.parent if line.path else None)
    if path is not None and line.path is None and not path.is_absolute() and not path.exists():
        # a line built in code (no file) cannot resolve a path relative to its file: say so, know no faults
        log.warning("line %s/%s has no file to resolve knowledge.faults %s against; no fault catalogue",
                    line.site, line.line, path)
        return {}
    return load_faults(path) if path else {}
