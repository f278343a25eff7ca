"""The evidence pack: everything the copilot may say about one alarm, gathered before anyone explains it.

The pack holds the alarm and its asset, the signals that stood out (current
value, the mode's normal band from the line file, trend over the last minutes
from ``SignalHistory``), the fault type the classifier named, the runbook
passages retrieved for it, and similar past incidents with their fixes. Both
the model and the deterministic explainer see only this pack, and every
citation in a diagnosis is checked against it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Iterable, Protocol

from factory_copilot.catalogue import Fault
from factory_copilot.config import LineConfig, Signal
from factory_copilot.copilot.runbooks import Passage, Runbook, RunbookLibrary
from factory_copilot.records import Alarm, Anomaly, Incident, Mode, Reading, rank_incidents

# a signal whose last FLAT_MIN_SAMPLES good values are identical is flat-lined (healthy sensors always show noise)
FLAT_MIN_SAMPLES = 10
# deviation (in half-bands from the band centre) below which a signal counts as normal: 1.0 is the band edge
DEVIATION_NORMAL = 1.0


@dataclass(slots=True)
class SignalTrend:
    """How a signal moved over the window: slope per minute, range, and whether it flat-lined (a summary of the
    signal's trend, whose readings the store's ``Trends`` keep)."""

    n: int
    window_s: float
    first: float
    last: float
    minimum: float
    maximum: float
    slope_per_min: float
    flat: bool
    baseline: float = 0.0  # mean of the oldest third of the window: "before", when an alarm comes early
    baseline_std: float = 0.0
    recent: float = 0.0  # mean of the newest 30 s (or last few points): "now", without the noise


class SignalHistory:
    """A rolling window of recent good values per signal, filled with ``observe(reading)``."""

    def __init__(self, window_s: float = 600.0, max_points: int = 1200):
        self.window_s = window_s
        self.max_points = max_points
        self._points: dict[str, deque[tuple[float, float]]] = {}

    def observe(self, reading: Reading) -> None:
        if not reading.is_process_value:  # bad/uncertain values are marked at the source, never trended
            return
        points = self._points.get(reading.key)
        if points is None:
            points = self._points[reading.key] = deque(maxlen=self.max_points)
        points.append((reading.ts, float(reading.value)))  # type: ignore[arg-type]
        while points and points[0][0] < reading.ts - self.window_s:
            points.popleft()

    def observe_many(self, readings: Iterable[Reading]) -> None:
        for r in readings:
            self.observe(r)

    def keys(self) -> list[str]:
        return list(self._points)

    def copy(self) -> "SignalHistory":
        """The window as it is now, for a worker thread to read while this one goes on filling."""
        snapshot = SignalHistory(self.window_s, self.max_points)
        snapshot._points = {k: deque(v, maxlen=self.max_points) for k, v in self._points.items()}
        return snapshot

    def last(self, key: str) -> tuple[float, float] | None:
        points = self._points.get(key)
        return points[-1] if points else None

    def trend(self, key: str, window_s: float | None = None) -> SignalTrend | None:
        points = self._points.get(key)
        if not points:
            return None
        window_s = window_s or self.window_s
        newest = points[-1][0]
        pts = [p for p in points if p[0] >= newest - window_s]
        ts = [p[0] for p in pts]
        vs = [p[1] for p in pts]
        n = len(pts)
        slope = 0.0
        if n >= 2:
            mt, mv = sum(ts) / n, sum(vs) / n
            var = sum((t - mt) ** 2 for t in ts)
            if var > 0:
                slope = sum((t - mt) * (v - mv) for t, v in zip(ts, vs)) / var * 60.0
        tail = vs[-FLAT_MIN_SAMPLES:]
        flat = len(tail) >= FLAT_MIN_SAMPLES and max(tail) - min(tail) == 0.0
        old = vs[: max(1, n // 3)]
        base = sum(old) / len(old)
        base_std = (sum((v - base) ** 2 for v in old) / len(old)) ** 0.5
        new = [v for t, v in pts if t >= newest - 30.0][-30:] or vs[-1:]
        return SignalTrend(n, ts[-1] - ts[0], vs[0], vs[-1], min(vs), max(vs), slope, flat, base, base_std, sum(new) / len(new))


@dataclass(slots=True)
class SignalEvidence:
    """One signal as evidence: where it is, where it should be, and where it is going."""

    key: str
    unit: str
    value: float | None
    normal: tuple[float, float]  # normal band for the alarm's operating mode
    deviation: float  # signed distance from the band centre in half-bands: |d| > 1 is outside the band
    contribution: float = 0.0  # share of the anomaly score (detector's, or from deviations when it gave none)
    trend: SignalTrend | None = None
    description: str = ""

    @property
    def change(self) -> float:
        """Signed move from the start of the window to now, in units of the early window's noise (a z-score).

        An alarm often comes while a fault is still growing inside the normal band; the move
        against the signal's own recent past shows its direction before the band does.
        """
        if not self.trend or self.trend.n < 20:
            return 0.0
        lo, hi = self.normal
        floor = max(0.05 * (hi - lo), 1e-9)  # a quiet or slowly settling signal must still move a visible amount
        return (self.trend.recent - self.trend.baseline) / max(self.trend.baseline_std, floor)

    @property
    def strength(self) -> float:
        """How far out of band the signal is now, or (at 70 %) was at its extreme in the recent window."""
        d = abs(self.deviation)
        if self.trend:
            d = max(d, 0.7 * abs(deviation(self.trend.minimum, self.normal)), 0.7 * abs(deviation(self.trend.maximum, self.normal)))
        return d

    @property
    def direction(self) -> str:
        if self.trend and self.trend.flat:
            return "flat"
        if self.deviation > DEVIATION_NORMAL:
            return "high"
        if self.deviation < -DEVIATION_NORMAL:
            return "low"
        return "in band"


@dataclass(slots=True)
class EvidencePack:
    alarm_id: str
    asset: str
    asset_name: str
    asset_kind: str
    condition: str
    priority: str
    message: str
    mode: Mode
    raised_at: float
    fault_type: str | None
    fault_name: str | None
    fault_probability: float
    anomaly_kind: str | None
    signals: list[SignalEvidence]
    passages: list[Passage]
    incidents: list[Incident] = field(default_factory=list)
    # every signal with a recent value (the prompt shows only ``signals``); the runbook ranking reads these
    context: dict[str, SignalEvidence] = field(default_factory=dict)
    # the known faults whose runbook signature fits, best first (fault id, fit), and the runbook steps offered
    candidates: list[tuple[str, float]] = field(default_factory=list)
    step_ids: list[str] = field(default_factory=list)
    step_texts: dict[str, str] = field(default_factory=dict)
    step_faults: dict[str, str] = field(default_factory=dict)  # step id -> the fault its runbook answers
    stale: list[str] = field(default_factory=list)  # signal keys whose data is lost (a lost source, a silent signal)
    created_at: float = field(default_factory=time.time)

    def step_labels(self) -> list[str]:
        """What the model writes to choose a step: its number in this alarm's list ("1", "2", ...)."""
        return [str(i) for i in range(1, len(self.step_ids) + 1)]

    def step_for(self, label: str) -> str | None:
        """The step id a label (or a full step id offered for this alarm) stands for."""
        labels = self.step_labels()
        if label in labels:
            return self.step_ids[labels.index(label)]
        return label if label in self.step_ids else None

    def signal_keys(self) -> set[str]:
        return {s.key for s in self.signals}

    def signal(self, key: str) -> SignalEvidence | None:
        return next((s for s in self.signals if s.key == key), None)

    def passage_ids(self) -> set[str]:
        return {p.id for p in self.passages}

    def runbook_ids(self) -> set[str]:
        return {p.runbook_id for p in self.passages}

    def to_text(self, max_signals: int = 3, step_chars: int = 44, steps_by_ref: bool = False,
                asset_name: bool = True, usual_mode: str | None = None) -> str:
        """The pack as the prompt's compact data block: one short line per signal (≈70-110 tokens in all).

        Every token here is processed per alarm before the first word can come: signals of the
        alarm's own asset go by their name alone (another asset's only when it is out of or near the edge of its
        band), numbers have 3 digits, bands and trends are
        terse (a signal in its band gets words, not numbers), fits are words and only the first of the weak ones
        is named, steps are numbered (the model answers with the number; the code quotes the step). With
        ``steps_by_ref`` the steps' text is in the prompt's cached step catalogue and the block only says which
        of each runbook's first steps it offers under which numbers: ``fits: air_leak strong 1-3, bearing_wear fair 4``.
        Without ``asset_name`` the asset goes by its id alone (its name is in the cached prefix). The mode is named
        unless it is ``usual_mode`` (the prefix says which that is). A moving signal's signed figure is its change
        per minute (the prefix says so: "/min" is two tokens a signal). Three signals: the model writes one
        sentence of at most 120 characters, which has room for two or three; the code renders the rest of the
        evidence from the pack. Text from the plant floor is put on one line each.
        """
        message = _flat(self.message)
        for head in (f"{self.asset}: ", f"{_flat(self.asset_name)}: "):
            message = message[len(head):] if message.startswith(head) else message
        # the alarm text's figures ("likely bearing wear, moderate — vibration 5.2 mm/s (normal 1.0–3.5 mm/s)") are the
        # signal lines below: a dozen tokens said twice
        message = message.split(" — ", 1)[0]
        named = f" ({_flat(self.asset_name)})" if asset_name and self.asset_name and self.asset_name != self.asset else ""
        mode = "" if _mode_name(self.mode) == usual_mode else f", mode {_mode_name(self.mode)}"
        lines = [f"{self.priority} alarm on {self.asset}{named}{mode}: {message}"]
        if self.fault_type:
            lines.append(f"classifier: {self.fault_type} p={self.fault_probability:.1f}")
        own = f"{self.asset}."
        shown = 0
        for s in self.signals:
            if shown == max_signals:
                break
            name = s.key[len(own):] if s.key.startswith(own) else s.key
            if name == s.key and s.direction == "in band" and abs(s.deviation) < 0.7:
                continue  # another asset's signal well inside its band says little about this alarm: tokens for nothing
            shown += 1
            moving = s.trend is not None and s.trend.n >= 2 and not s.trend.flat and abs(s.change) >= 1.0
            if s.direction == "in band" and s.value is not None:
                # in its band: where in it and which way, in words (a band and a slope are a dozen tokens of digits),
                # the value to two figures (it is not what the alarm is about)
                where = "near high" if s.deviation >= 0.7 else "near low" if s.deviation <= -0.7 else "in band"
                lines.append(f"{name} {_num(s.value, 2)} {s.unit} {where}"
                             + (f", {'rising' if s.change > 0 else 'falling'}" if moving else ""))
                continue
            if s.direction in ("high", "low"):  # out of its band: the limit it crossed is the one that matters
                text = f"{name} {_num(s.value)} {s.unit} " + (f"above {_num(s.normal[1])}" if s.direction == "high"
                                                             else f"below {_num(s.normal[0])}")
            else:
                text = f"{name} {_num(s.value)} {s.unit} {s.direction} ({_num(s.normal[0])}-{_num(s.normal[1])})"
            lines.append(text + (f", {'+' if s.trend.slope_per_min > 0 else ''}{_num(s.trend.slope_per_min, 2)}"
                                 if moving else ""))
        # a weak fit says little: the first is named (nothing fits better), the others only when they offer steps
        offered: dict[str | None, list[tuple[str, str]]] = {}  # fault -> its runbook's steps on offer: (number, id)
        for label, sid in zip(self.step_labels(), self.step_ids):
            offered.setdefault(self.step_faults.get(sid), []).append((label, sid))
        fits = [(f, fit) for i, (f, fit) in enumerate(self.candidates)
                if i == 0 or _fit_word(fit) != "weak" or (steps_by_ref and f in offered)]
        if steps_by_ref:  # the steps' text is in the cached catalogue: each fit says which of its first steps are on
            # offer under which numbers ("air_leak strong 1-3"; steps_offered keeps them the catalogue's first)
            parts = [f"{f} {_fit_word(fit)}{_numbers(offered.get(f))}" for f, fit in fits]
            parts += [f"{f}{_numbers(steps)}" for f, steps in offered.items() if f not in dict(fits)]
            lines.append("fits: " + (", ".join(parts) or "no known fault"))
        else:
            lines.append("fits: " + (", ".join(f"{f} {_fit_word(fit)}" for f, fit in fits) or "no known fault"))
            for fault, steps in offered.items():
                lines.append(f"steps for {fault}:")
                lines += [f"{label} {trim_words(self.step_texts.get(sid, '').replace('`', ''), step_chars)}"
                          for label, sid in steps]
        for i in self.incidents[:2]:
            lines.append(f"past: {_flat(i.fault_type or i.actual_cause or 'unknown')} {i.verdict}"
                         + (f", fix: {trim_words(i.fix, 40)}" if i.fix else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mode"] = _mode_name(self.mode)
        return d


def _numbers(steps: list[tuple[str, str]] | None) -> str:
    """' 1-3' for steps numbered 1, 2 and 3 (they are always consecutive), ' 4' for one, '' for none."""
    if not steps:
        return ""
    return f" {steps[0][0]}-{steps[-1][0]}" if len(steps) > 1 else f" {steps[0][0]}"


def _fit_word(fit: float) -> str:
    """How well a runbook signature fits, in a word (a token, where "1.1" is three)."""
    return "strong" if fit >= 1.0 else "fair" if fit >= 0.5 else "weak"


def _flat(text: object) -> str:
    """Text from the plant floor on one line: a newline inside a message must not start a line of its own."""
    return " ".join(str(text).split())


def _num(x: float | None, figures: int = 3) -> str:
    """``figures`` significant figures, never an exponent: 1480 rpm is "1480" (4 tokens), not "1.48e+03" (8)."""
    if x is None or not math.isfinite(x):
        return "n/a"
    if x == 0:
        return "0"
    decimals = figures - 1 - math.floor(math.log10(abs(x)))
    x = round(x, decimals)
    if decimals <= 0:
        return f"{x:.0f}"
    return f"{x:.{decimals}f}".rstrip("0").rstrip(".")


def _mode_name(mode: object) -> str:
    return str(getattr(mode, "value", mode))  # a mode is a name (plant-declared regimes are plain strings)


def trim_words(text: str, n: int) -> str:
    """At most ``n`` characters of ``text`` on one line, cut at a word with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1].rsplit(" ", 1)[0] + "…"


class IncidentMemory(Protocol):
    """Past alarms with the operators' verdicts; the store implements it over SQLite."""

    def similar(self, asset: str, fault_type: str | None, signals: list[str]) -> list[Incident]: ...


class InMemoryIncidents:
    """IncidentMemory kept in a list: for tests and for a copilot without a store."""

    def __init__(self, incidents: Iterable[Incident] = (), limit: int = 3):
        self.incidents = list(incidents)
        self.limit = limit

    def add(self, incident: Incident) -> None:
        self.incidents.append(incident)

    def similar(self, asset: str, fault_type: str | None, signals: list[str]) -> list[Incident]:
        return rank_incidents(self.incidents, asset, fault_type, signals, self.limit)


def deviation(value: float, band: tuple[float, float]) -> float:
    """Signed distance from the band centre in half-band widths (0 centre, ±1 band edge)."""
    lo, hi = band
    half = (hi - lo) / 2.0
    # a degenerate band (idle speed 0..0) gets a floor so a tiny value is not "infinitely" out
    half = max(half, 0.01 * max(abs(lo), abs(hi), 1.0))
    return (value - (lo + hi) / 2.0) / half


def band_contributions(deviations: dict[str, float], flats: set[str] = frozenset()) -> dict[str, float]:
    """Contribution shares from how far each signal is outside its band (used when the detector gave none)."""
    excess = {k: max(0.0, abs(d) - DEVIATION_NORMAL * 0.8) for k, d in deviations.items()}
    for k in flats:
        excess[k] = max(excess.get(k, 0.0), 1.0)  # a flat-lined signal is evidence even inside its band
    total = sum(excess.values())
    if total <= 0:
        return {}
    return dict(sorted(((k, e / total) for k, e in excess.items() if e > 0), key=lambda kv: -kv[1]))


def _can_flatline(key: str, value: float, spec: Signal, line: LineConfig) -> bool:
    """A constant value is suspicious only for a measurement: not for the mode, a setpoint, or a value pinned at its range end."""
    if key == line.mode_key:
        return False
    if key.rsplit(".", 1)[-1].endswith("setpoint"):
        return False
    if spec.physical and value in spec.physical:  # saturated (duty at 100 %, speed at 0) is not a stuck sensor
        return False
    return True


def build_evidence(
    alarm: Alarm,
    line: LineConfig,
    history: SignalHistory,
    library: RunbookLibrary,
    faults: dict[str, Fault],
    memory: IncidentMemory | None = None,
    max_signals: int = 6,
    max_passages: int = 3,
    max_steps: int = 4,
) -> EvidencePack:
    """Gather the evidence for one alarm from the line file, the recent history, the line's runbooks and past incidents."""
    anomaly = alarm.anomaly
    mode = anomaly.mode if anomaly else Mode(line.production_mode)
    try:
        asset = line.asset(alarm.asset)
        asset_name, asset_kind = asset.name, asset.kind
    except KeyError:  # an alarm for an asset the line file does not describe still gets explained
        asset_name, asset_kind = alarm.asset, ""

    # every signal with a recent value: its deviation from the mode's band, and its trend
    all_signals: dict[str, SignalEvidence] = {}
    for key in line.signal_keys():
        last = history.last(key)
        if last is None:
            continue
        spec = line.signal(key)
        band = spec.normal_for(mode)
        trend = history.trend(key)
        if trend and trend.flat and not _can_flatline(key, last[1], spec, line):
            trend.flat = False
        all_signals[key] = SignalEvidence(
            key=key, unit=spec.unit, value=last[1], normal=band, deviation=deviation(last[1], band),
            trend=trend, description=spec.description,
        )
    contributions = dict(anomaly.contributions) if anomaly and anomaly.contributions else band_contributions(
        {k: s.strength for k, s in all_signals.items()},
        {k for k, s in all_signals.items() if s.trend and s.trend.flat},
    )
    for key, share in contributions.items():
        if key in all_signals:
            all_signals[key].contribution = share

    # which signals go in the pack: the alarm's own signal, the largest contributors, flat-lined ones,
    # and the key signals of the named fault, in that order of importance
    fault = faults.get(anomaly.fault_type) if anomaly and anomaly.fault_type else None
    probe = _pack(alarm, asset_name, asset_kind, mode, fault, anomaly, [], [], [], all_signals)
    ranked = [c for c in rank_faults(probe, library) if c.score > MATCH_MIN and c.fault in faults]
    primary = library.for_fault(fault.id) if fault else None
    if primary is None:
        # no classifier vote: the runbook whose signature the signals fit best is the one to quote
        primary = ranked[0].runbook if ranked else None
    chosen: list[str] = []
    if anomaly and anomaly.signal:
        chosen.append(anomaly.signal if "." in anomaly.signal else f"{alarm.asset}.{anomaly.signal}")
    chosen += [k for k in sorted(contributions, key=lambda k: -contributions[k])][: max_signals - 2]
    chosen += [k for k, s in all_signals.items() if s.trend and s.trend.flat]
    chosen += fault.signals if fault else []
    chosen += primary.signature_signals if primary else []
    signals: list[SignalEvidence] = []
    for key in dict.fromkeys(chosen):
        if len(signals) >= max_signals:
            break
        if key in all_signals:
            signals.append(all_signals[key])
            continue
        try:
            spec = line.signal(key)
        except KeyError:
            continue  # a detector naming a signal the line does not have: nothing to show for it
        signals.append(SignalEvidence(key, spec.unit, None, spec.normal_for(mode), 0.0,
                                      contributions.get(key, 0.0), None, spec.description))

    # runbook passages: the primary runbook's checks and actions first, then what TF-IDF finds (its safety
    # notes go to the operator with every diagnosis anyway, so they need not cost prompt tokens)
    passages: list[Passage] = []
    if primary:
        passages += [p for a in ("checks", "actions") if (p := primary.passage(a))]
    words = [f"{s.key} {s.key.split('.')[-1].replace('_', ' ')} {s.direction}" for s in signals[:5]]
    query = " ".join([alarm.asset, asset_name, fault.name if fault else "", alarm.message, *words])
    for p, _score in library.search(query, k=max_passages * 2):
        if len(passages) >= max_passages:
            break
        if p not in passages and p.anchor not in ("parts", "safety"):
            passages.append(p)

    incidents = memory.similar(alarm.asset, anomaly.fault_type if anomaly else None, [s.key for s in signals]) if memory else []
    pack = _pack(alarm, asset_name, asset_kind, mode, fault, anomaly, signals, passages, incidents, all_signals)
    pack.candidates = [(c.fault, round(c.score, 2)) for c in ranked[:3]]
    # the steps the model may choose from: the best-fitting runbooks' checks and actions, first ones first
    # (a weak fit's runbook only when nothing fits better: its steps would be numbers to choose among for nothing)
    fitting = [c.runbook for i, c in enumerate(ranked[:2]) if i == 0 or _fit_word(c.score) != "weak"]
    books = list({b.id: b for b in [primary] + fitting if b is not None}.values())
    offered = [step for rank, book in enumerate(books) for step in steps_offered(book, first=rank == 0)]
    pack.step_ids = [sid for sid, _ in offered[:max_steps]]
    pack.step_texts = dict(offered[:max_steps])
    by_book = {b.id: step_group(b) for b in books}
    pack.step_faults = {sid: by_book[sid.partition("#")[0]] for sid in pack.step_ids}
    return pack


def steps_on_offer(book: Runbook) -> list[tuple[str, str]]:
    """The steps of a runbook an alarm may be offered (id, text), in order: its first two checks and its first action.
    The prompt's step catalogue lists exactly these, so the two never disagree."""
    out: list[tuple[str, str]] = []
    for anchor, n in (("checks", 2), ("actions", 1)):
        p = book.passage(anchor)
        out += [(f"{p.id}.{i + 1}", item) for i, item in enumerate(p.items[:n])] if p else []
    return out


def steps_offered(book: Runbook, first: bool) -> list[tuple[str, str]]:
    """The steps one alarm offers from a runbook: all on offer for the best fit, the first two for another.

    Always the first of ``steps_on_offer``, so the data block can name them by count against the cached catalogue.
    """
    steps = steps_on_offer(book)
    return steps if first else steps[:2]


def step_group(book: Runbook) -> str:
    """What a runbook's steps are listed under: the fault it answers (its id when it names none)."""
    return book.faults[0] if book.faults else book.id


def step_ref(step_id: str) -> str:
    """A step's short name within its runbook: ``RB-PUMP-001#checks.2`` -> ``check 2``."""
    passage, _, n = step_id.rpartition(".")
    anchor = passage.partition("#")[2]
    return f"{anchor[:-1] if anchor.endswith('s') else anchor} {n}"


def _pack(alarm: Alarm, asset_name: str, asset_kind: str, mode: Mode, fault: Fault | None, anomaly: Anomaly | None,
          signals: list[SignalEvidence], passages: list[Passage], incidents: list[Incident],
          context: dict[str, SignalEvidence]) -> EvidencePack:
    return EvidencePack(
        alarm_id=alarm.alarm_id,
        asset=alarm.asset,
        asset_name=asset_name,
        asset_kind=asset_kind,
        condition=alarm.condition,
        priority=alarm.priority.name.lower(),
        message=alarm.message,
        mode=mode,
        raised_at=alarm.raised_at,
        fault_type=anomaly.fault_type if anomaly else None,
        fault_name=fault.name if fault else None,
        fault_probability=anomaly.fault_probability if anomaly else 0.0,
        anomaly_kind=anomaly.kind if anomaly else None,
        signals=signals,
        passages=passages,
        incidents=incidents,
        context=context,
        stale=list(anomaly.stale) if anomaly else [],
    )


MATCH_MIN = 0.1  # a runbook signature that fits less than this is no match


# ---------------------------------------------------------------- which faults the evidence fits


def match(direction: str, s: SignalEvidence | None) -> float:
    """How strongly one signal shows the expected direction, 0..1.

    Two views, the stronger counts: against the normal band (band edge ≈ 0.33, twice out ≈ 1;
    the extreme of the recent window at 70 %, so intermittent belt-slip episodes still show),
    and against the signal's own recent past (a move of 3 noise widths ≈ 0.25, 6 ≈ 1), which
    shows a fault that is still growing inside the band when the detector raises the alarm early.
    """
    if s is None or s.value is None:
        return 0.0
    if direction == "flat":
        return 1.0 if s.trend and s.trend.flat else 0.0
    d = s.deviation
    lo_d = hi_d = d
    if s.trend:
        lo_d, hi_d = deviation(s.trend.minimum, s.normal), deviation(s.trend.maximum, s.normal)
    band = {
        "up": max(d, 0.7 * hi_d),
        "down": max(-d, -0.7 * lo_d),
        "any": max(abs(d), 0.7 * max(abs(lo_d), abs(hi_d))),
    }[direction]
    z = s.change
    move = {"up": z, "down": -z, "any": abs(z)}[direction]
    return min(1.0, max(0.0, (band - 0.5) / 1.5, (move - 2.0) / 4.0))


def agreement(direction: str, s: SignalEvidence | None) -> float:
    """Does the signal move the way the signature says? 1 yes, 0.5 no clear direction yet, 0 the other way."""
    if s is None:
        return 0.0
    if direction == "flat":
        return 1.0 if s.trend and s.trend.flat else 0.0
    if direction == "any":
        return 1.0
    if abs(s.change) >= 1.0:
        lean = s.change
    elif abs(s.deviation) >= DEVIATION_NORMAL:
        lean = s.deviation
    else:
        return 0.5  # an intermittent fault (belt slip) can look normal at the alarm instant
    return 1.0 if (lean > 0) == (direction == "up") else 0.0


def against(direction: str, s: SignalEvidence | None) -> bool:
    """Does the signal go against the signature now? Out of its band the other way, or, inside it, moving the other
    way (an accelerometer falling back into its band shows no imbalance, however high it was earlier in the
    window). A signal out of its band the expected way never counts against."""
    if s is None or s.value is None or direction not in ("up", "down"):
        return False
    sign = 1.0 if direction == "up" else -1.0
    if sign * s.deviation > DEVIATION_NORMAL:
        return False
    return -sign * s.deviation > DEVIATION_NORMAL or sign * s.change <= -1.0


CONTRARY_WEIGHT = 0.5  # a signature signal going the other way takes this much off the fit (per share of the signature)



@dataclass(slots=True)
class Candidate:
    fault: str
    runbook: Runbook
    score: float
    matched: list[str]  # signal keys that show the signature
    contrary: list[str] = field(default_factory=list)  # signature signals that go the other way


def rank_faults(pack: EvidencePack, library: RunbookLibrary) -> list[Candidate]:
    """Every fault with a runbook signature, scored against the pack; best first.

    Score = how well the signals fit the signature (mean match over its signals)
          - the share of its signals that go against it (``against``), at ``CONTRARY_WEIGHT``
          + the detector's share of the anomaly on signature signals moving the right way
          + the classifier's probability if it named this fault (never below 0 in all).
    A signal that goes against the signature is no evidence for it, whatever its window's extremes showed.
    """
    signals = pack.context or {s.key: s for s in pack.signals}
    out = []
    for rb in library.runbooks.values():
        best: tuple[float, dict[str, float], list[str]] | None = None
        for sig in rb.signatures:
            contrary = [k for k, d in sig.items() if against(d, signals.get(k))]
            matches = {k: 0.0 if k in contrary else match(d, signals.get(k)) for k, d in sig.items()}
            shares = {k: signals[k].contribution * agreement(d, signals[k]) for k, d in sig.items() if k in signals}
            fit = (sum(matches.values()) - CONTRARY_WEIGHT * len(contrary)) / len(matches) \
                + 0.5 * min(1.0, sum(shares.values()))
            if best is None or fit > best[0]:
                # a signal is evidence if it shows the signature or carries a real share of the anomaly the right way
                best = (fit, {k: max(m, shares.get(k, 0.0) if shares.get(k, 0.0) >= 0.05 else 0.0)
                              for k, m in matches.items() if k not in contrary}, contrary)
        if best is None:
            continue
        fit, evidence, contrary = best
        matched = [k for k, m in sorted(evidence.items(), key=lambda km: -km[1]) if m > 0]
        for fault in rb.faults:
            vote = pack.fault_probability if pack.fault_type == fault else 0.0
            score = max(0.0, fit + vote + (0.05 if rb.asset == pack.asset else 0.0))
            out.append(Candidate(fault, rb, score, matched, contrary))
    out.sort(key=lambda c: -c.score)
    return out
