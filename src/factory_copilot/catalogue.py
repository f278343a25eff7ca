"""The fault catalogue: the fault types a line knows, their asset, priority and key signals.

Read from ``seeds/faults.yaml`` (or a plant's own file); the simulator injects
these ids, the classifier names them and the runbooks are written for them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from factory_copilot.config import SEEDS_DIR, LineConfigError, _format_loc
from factory_copilot.records import Priority

FAULTS_FILE = SEEDS_DIR / "faults.yaml"


class Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    asset: str
    priority: Priority = Priority.MEDIUM
    signals: list[str] = []

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, v: object) -> Priority:
        return Priority.parse(v)  # type: ignore[arg-type]


class _Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    faults: list[Fault]


@lru_cache(maxsize=8)
def load_faults(path: str | Path = FAULTS_FILE) -> dict[str, Fault]:
    """Fault id -> Fault, in file order."""
    path = Path(path)
    try:
        cat = _Catalogue.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as exc:
        raise LineConfigError(path, [f"{_format_loc(e['loc'])}: {e['msg']}" for e in exc.errors()]) from None
    return {f.id: f for f in cat.faults}
