"""The runbook library: Markdown runbooks with YAML front matter, split into citable passages and searched lexically.

A runbook file (``seeds/runbooks/RB-PUMP-001-*.md``) has front matter (id, title,
asset, faults, signals, parts, time_to_fix) and ``## Heading {#anchor}`` sections;
each section is a passage cited as ``RB-PUMP-001#checks``. Retrieval is TF-IDF
over the passages (scikit-learn, in-process, no external service). A file that
cannot be used is skipped with one log line naming it; the others still load.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from factory_copilot.config import SEEDS_DIR

log = logging.getLogger(__name__)

RUNBOOKS_DIR = SEEDS_DIR / "runbooks"
DIRECTIONS = ("up", "down", "any", "flat")
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


class RunbookError(ValueError):
    pass


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
    rb_id = str(meta.get("id", ""))
    if not ID_PATTERN.match(rb_id):
        raise RunbookError(f"{path}: id {rb_id!r} must look like RB-PUMP-001")
    for key in ("title", "asset"):
        if not meta.get(key):
            raise RunbookError(f"{path}: front matter field {key!r} is missing")
    signature = meta.get("signature") or []
    signatures = signature if isinstance(signature, list) else [signature]
    if any(not isinstance(s, dict) or any(v not in DIRECTIONS for v in s.values()) for s in signatures):
        raise RunbookError(f"{path}: signature must map signal keys to one of {', '.join(DIRECTIONS)} (or be a list of such maps)")
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
        id=rb_id,
        title=str(meta["title"]),
        asset=str(meta["asset"]),
        faults=[str(f) for f in meta.get("faults", []) or []],
        signals=[str(s) for s in meta.get("signals", []) or []],
        parts=[str(p) for p in meta.get("parts", []) or []],
        time_to_fix=str(meta.get("time_to_fix", "")),
        path=path,
        signatures=[{str(k): str(v) for k, v in s.items()} for s in signatures if s],
        passages=passages,
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
        self._vectorizer = None
        self._matrix = None
        if self.passages:
            from sklearn.feature_extraction.text import TfidfVectorizer

            self._vectorizer = TfidfVectorizer(token_pattern=_TOKEN, sublinear_tf=True, ngram_range=(1, 2), min_df=1)
            self._matrix = self._vectorizer.fit_transform([self._document(p) for p in self.passages])

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
        if self._vectorizer is None or not query.strip():
            return []
        q = self._vectorizer.transform([query])
        scores = (self._matrix @ q.T).toarray().ravel()
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


def load_runbooks(directory: str | Path = RUNBOOKS_DIR) -> RunbookLibrary:
    """Load every ``*.md`` runbook under ``directory`` (README.md aside); bad files are logged and skipped."""
    directory = Path(directory)
    books = []
    if not directory.is_dir():
        log.error("runbook directory %s does not exist; the copilot has no runbooks to ground on", directory)
        return RunbookLibrary([])
    for path in sorted(directory.glob("*.md")):
        if path.name.lower() == "readme.md":
            continue
        try:
            books.append(parse_runbook(path.read_text(encoding="utf-8"), str(path)))
        except (RunbookError, OSError, UnicodeDecodeError) as exc:
            log.error("runbook skipped: %s", exc)
    return RunbookLibrary(books)
