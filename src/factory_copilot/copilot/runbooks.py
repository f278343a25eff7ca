"""The runbook library: Markdown runbooks with YAML front matter, split into citable passages and searched lexically.

A runbook file (``seeds/runbooks/RB-PUMP-001-*.md``) has front matter (id, title,
asset, faults, signals, signature, parts, time_to_fix, revision; validated with
pydantic, errors name the file and the field) and ``## Heading {#anchor}`` sections;
each section is a passage cited as ``RB-PUMP-001#checks``, each numbered item of a
section a step cited as ``RB-PUMP-001#checks.2``. Retrieval is TF-IDF over the
passages (scikit-learn, in-process, no external service). A file that cannot be
used is skipped with one log line naming it; the others still load. A line's
runbooks are the folder its line file names (``runbooks_of``); there is no default.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from factory_copilot.config import field_path
from factory_copilot.copilot.tfidf import TfIdfIndex
from factory_copilot.errors import GiveUp

if TYPE_CHECKING:
    from factory_copilot.config import LineConfig

log = logging.getLogger(__name__)

DIRECTIONS = ("up", "down", "any", "flat")
STANDARD_SECTIONS = ("symptoms", "causes", "checks", "actions", "safety", "parts")
ID_PATTERN = re.compile(r"^RB-[A-Z0-9]+-\d{3}$")
_HEADING = re.compile(r"^##\s+(?P<title>.+?)\s*(?:\{#(?P<anchor>[a-z0-9_-]+)\})?\s*$")
_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*])\s+(?P<text>.+)$")
# signal keys and ids stay whole tokens so "product_pump.filter_dp" matches itself, not every pump passage
_TOKEN = r"(?u)\b[A-Za-z][A-Za-z0-9_.-]*[A-Za-z0-9]\b"


@dataclass(slots=True)
class Passage:
    """One section of a runbook: the unit the copilot retrieves and cites."""

    id: str  # "RB-PUMP-001#checks"
    runbook_id: str
    anchor: str
    title: str
    text: str
    items: list[str] = field(default_factory=list)  # numbered/bulleted items, in order


@dataclass(slots=True)
class Runbook:
    id: str
    title: str
    asset: str
    faults: list[str]
    signals: list[str]
    parts: list[str]
    time_to_fix: str
    path: str
    # how the fault shows, as alternatives: each maps signal key -> "up" | "down" | "any" | "flat"
    signatures: list[dict[str, str]]

    @property
    def signature_signals(self) -> list[str]:
        return list(dict.fromkeys(k for sig in self.signatures for k in sig))
    passages: dict[str, Passage]  # anchor -> passage, in file order

    def passage(self, anchor: str) -> Passage | None:
        return self.passages.get(anchor)


class RunbookError(GiveUp, ValueError):
    pass


Direction = Literal["up", "down", "any", "flat"]


class FrontMatter(BaseModel):
    """A runbook's YAML front matter, validated like the line file (unknown fields are typos, and refused)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    title: str = Field(min_length=1)
    asset: str = Field(min_length=1)
    faults: list[str] = []
    signals: list[str] = []
    # how the fault shows, as alternatives: each maps signal key -> direction
    signature: dict[str, Direction] | list[dict[str, Direction]] = []
    parts: list[str] = []
    time_to_fix: str = ""
    revision: str | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not ID_PATTERN.match(v):
            raise ValueError(f"{v!r} must look like RB-PUMP-001 (RB-<AREA>-<NNN>)")
        return v

    @field_validator("revision", "time_to_fix", mode="before")
    @classmethod
    def _text(cls, v: object) -> object:
        return None if v is None else str(v)  # YAML reads "2026-03" as text but 2026-03-01 as a date


def parse_runbook(text: str, path: str = "<runbook>") -> Runbook:
    """Parse one runbook file; raise RunbookError naming the file and the problem."""
    if not text.startswith("---"):
        raise RunbookError(f"{path}: no YAML front matter (the file must start with '---')")
    try:
        _, head, body = text.split("---", 2)
        meta = yaml.safe_load(head) or {}
    except (ValueError, yaml.YAMLError) as exc:
        raise RunbookError(f"{path}: front matter is not valid YAML: {exc}") from None
    if not isinstance(meta, dict):
        raise RunbookError(f"{path}: front matter must be a mapping")
    try:
        front = FrontMatter.model_validate(meta)
    except ValidationError as exc:
        problems = "; ".join(f"{field_path(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise RunbookError(f"{path}: front matter {problems}") from None
    rb_id = front.id
    signatures = front.signature if isinstance(front.signature, list) else [front.signature]
    passages: dict[str, Passage] = {}
    current: Passage | None = None
    for line in body.splitlines():
        m = _HEADING.match(line)
        if m:
            anchor = m["anchor"] or re.sub(r"[^a-z0-9]+", "-", m["title"].lower()).strip("-")
            if anchor in passages:
                raise RunbookError(f"{path}: section anchor #{anchor} appears twice")
            current = Passage(f"{rb_id}#{anchor}", rb_id, anchor, m["title"], "")
            passages[anchor] = current
            continue
        if current is None or line.startswith("# "):
            continue
        current.text += line + "\n"
        item = _ITEM.match(line)
        if item:
            current.items.append(item["text"].strip())
    for p in passages.values():
        p.text = p.text.strip()
    if not passages:
        raise RunbookError(f"{path}: no '## Heading {{#anchor}}' sections")
    return Runbook(
        id=rb_id, title=front.title, asset=front.asset, faults=front.faults, signals=front.signals,
        parts=front.parts, time_to_fix=front.time_to_fix, path=path,
        signatures=[dict(s) for s in signatures if s], passages=passages,
    )


class RunbookLibrary:
    """All runbooks of a plant, indexed for lookup by id/fault and for TF-IDF search."""

    def __init__(self, runbooks: list[Runbook]):
        self.runbooks: dict[str, Runbook] = {}
        for rb in runbooks:
            if rb.id in self.runbooks:
                log.error("runbook %s: id %s already used by %s; skipped", rb.path, rb.id, self.runbooks[rb.id].path)
                continue
            self.runbooks[rb.id] = rb
        self.passages: list[Passage] = [p for rb in self.runbooks.values() for p in rb.passages.values()]
        self._by_id = {p.id: p for p in self.passages}
        self._index = TfIdfIndex([self._document(p) for p in self.passages], _TOKEN) if self.passages else None

    def _document(self, p: Passage) -> str:
        rb = self.runbooks[p.runbook_id]
        # the runbook's title, asset and faults belong to every passage: "cavitation" must find its checks section
        return f"{rb.title} {rb.asset} {' '.join(rb.faults)} {' '.join(rb.signals)} {p.title}\n{p.text}"

    def __len__(self) -> int:
        return len(self.runbooks)

    def get(self, runbook_id: str) -> Runbook | None:
        return self.runbooks.get(runbook_id.partition("#")[0])

    def passage(self, passage_id: str) -> Passage | None:
        return self._by_id.get(passage_id)

    def step(self, step_id: str) -> tuple[Passage, str] | None:
        """The passage and text of a step id ``RB-PUMP-001#checks.2`` (the 2nd item of that section)."""
        passage_id, _, n = step_id.rpartition(".")
        p = self._by_id.get(passage_id)
        if p is None or not n.isdigit() or not 1 <= int(n) <= len(p.items):
            return None
        return p, p.items[int(n) - 1]

    def step_ids(self, anchors: tuple[str, ...] = ("checks", "actions")) -> list[str]:
        """Every step of the library's check and action sections, in file order."""
        return [f"{p.id}.{i}" for p in self.passages if p.anchor in anchors for i in range(1, len(p.items) + 1)]

    def for_fault(self, fault_id: str | None) -> Runbook | None:
        """The runbook written for a fault id (first one if a plant has several)."""
        if not fault_id:
            return None
        for rb in self.runbooks.values():
            if fault_id in rb.faults:
                return rb
        return None

    def search(self, query: str, k: int = 4, asset: str | None = None) -> list[tuple[Passage, float]]:
        """The k passages most similar to ``query`` (TF-IDF cosine), optionally only for one asset."""
        if self._index is None or not query.strip():
            return []
        scores = self._index.scores(query)
        order = scores.argsort()[::-1]
        out = []
        for i in order:
            p = self.passages[i]
            if scores[i] <= 0 or len(out) >= k:
                break
            if asset and self.runbooks[p.runbook_id].asset != asset:
                continue
            out.append((p, float(scores[i])))
        return out


def runbook_files(directory: Path) -> list[Path]:
    return [p for p in sorted(Path(directory).glob("*.md")) if p.name.lower() != "readme.md"]


def load_runbooks(directory: str | Path) -> RunbookLibrary:
    """Load every ``*.md`` runbook under ``directory`` (README.md aside); bad files are logged and skipped."""
    directory = Path(directory)
    books = []
    if not directory.is_dir():
        log.error("runbook directory %s does not exist; the copilot has no runbooks to ground on", directory)
        return RunbookLibrary([])
    for path in runbook_files(directory):
        try:
            books.append(parse_runbook(path.read_text(encoding="utf-8"), str(path)))
        except (RunbookError, OSError, UnicodeDecodeError) as exc:
            log.error("runbook skipped: %s", exc)
    return RunbookLibrary(books)


def runbooks_of(line: "LineConfig") -> RunbookLibrary:
    """The line's own runbooks (``knowledge.runbooks``, relative to the line file); none named, an empty library."""
    _, directory = line.knowledge.paths(line.path.parent if line.path else None)
    return load_runbooks(directory) if directory else RunbookLibrary([])
