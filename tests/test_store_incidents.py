"""Incident memory read from the store: ``similar()`` ranks as ``rank_incidents`` does over every verdict on the
asset, and holds only the best few candidates while it reads, not one object per row (issue 21: 2,000 held
candidates per look-up drove the service's process into full garbage collections of half a second and more)."""

from __future__ import annotations

import random
import tracemalloc

from factory_copilot.records import (
    Alarm,
    AlarmEvent,
    AlarmState,
    Anomaly,
    Feedback,
    Incident,
    Priority,
    rank_incidents,
)

T0 = 1_700_000_000.0
SIGNALS = [f"product_pump.{s}" for s in ("flow", "discharge_pressure", "suction_pressure", "vibration", "motor_current")]
FAULTS = ["pump_cavitation", "bearing_wear", None]


def give_verdicts(store, n: int, seed: int = 7) -> list[Incident]:
    """``n`` alarms on the pump, each with an operator's verdict (distinct times, so the order is one); returns
    them as the incidents the store should make of them."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        ts, fault = T0 + 10 * i, rnd.choice(FAULTS)
        shares = {s: rnd.random() for s in rnd.sample(SIGNALS, rnd.randint(1, 4))}
        an = Anomaly(ts, "product_pump", "multivariate", 3.0, 1.0, fault_type=fault, contributions=shares)
        alarm = Alarm(f"a{i}", "product_pump", an.condition, AlarmState.ACTIVE_UNACK, Priority.HIGH, "pump", ts, ts,
                      anomaly=an)
        store.add_alarm_event(AlarmEvent(alarm.alarm_id, ts, "raised", alarm.state, alarm))
        verdict = rnd.choice(["confirmed", "false_alarm", "other_cause"])
        store.add_feedback(Feedback(alarm.alarm_id, verdict, fix=f"fix {i}", actor="sam", ts=ts + 1))
        signals = [k for k, _ in sorted(shares.items(), key=lambda kv: -kv[1])]
        out.append(Incident(alarm.alarm_id, "product_pump", fault, verdict, ts + 1, an.condition, signals,
                            fault if verdict == "confirmed" else None, f"fix {i}", "sam"))
    return out


def test_similar_ranks_as_rank_incidents_over_every_verdict(make_store):
    store = make_store()
    incidents = give_verdicts(store, 40)
    rnd = random.Random(3)
    for n in range(60):  # each fault, and the overlap of the signals deciding among the same fault's verdicts
        fault, limit = FAULTS[n % 3], (1, 2, 3, 5, 50)[n % 5]
        wanted = rnd.sample(SIGNALS, rnd.randint(0, 4))
        expected = rank_incidents(incidents, "product_pump", fault, wanted, limit)
        found = store.similar("product_pump", fault, wanted, limit)
        assert [(i.alarm_id, i.similarity) for i in found] == [(i.alarm_id, i.similarity) for i in expected]
        assert [(i.verdict, i.ts, i.signals, i.fix, i.actual_cause) for i in found] == \
               [(i.verdict, i.ts, i.signals, i.fix, i.actual_cause) for i in expected]
    assert store.similar("filler", "pump_cavitation", SIGNALS[:2]) == []


def test_similar_holds_the_best_few_candidates_only_while_it_reads(make_store):
    store = make_store()
    give_verdicts(store, 400)
    store.similar("product_pump", "bearing_wear", SIGNALS[:2])  # first call: statement caches, imports
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        found = store.similar("product_pump", "bearing_wear", SIGNALS[:2])
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert len(found) == 3
    # the 400 candidates held as Incidents took ~420 kB; scored as read and let go, a few kB
    assert peak < 100_000, f"similar() held {peak:,} bytes over 400 candidates"
