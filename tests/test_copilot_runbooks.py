"""The runbooks: one per catalogued fault, grounded in the line's real signal keys, parsed into citable passages."""

from __future__ import annotations

import logging

import pytest

from factory_copilot.catalogue import load_faults
from factory_copilot.config import SIMULATED_FAULTS, SIMULATED_LINE, load_line
from factory_copilot.copilot.runbooks import RunbookError, load_runbooks, parse_runbook, runbooks_of

LINE = load_line(SIMULATED_LINE)
LIB = runbooks_of(LINE)


def test_every_fault_has_a_runbook_with_the_standard_sections():
    for fault_id, fault in load_faults(SIMULATED_FAULTS).items():
        rb = LIB.for_fault(fault_id)
        assert rb is not None, f"no runbook for fault {fault_id}"
        assert rb.asset == fault.asset
        for anchor in ("symptoms", "causes", "checks", "actions", "safety", "parts"):
            assert rb.passage(anchor) is not None, f"{rb.id} has no #{anchor}"
        assert len(rb.passage("checks").items) >= 3 and len(rb.passage("actions").items) >= 3
        assert rb.parts and rb.time_to_fix
        assert rb.signatures, f"{rb.id} has no signature to rank causes with"


def test_runbooks_name_only_signals_the_line_has():
    keys = set(LINE.signal_keys(include_mode=True))
    for rb in LIB.runbooks.values():
        assert set(rb.signals) <= keys, rb.id
        assert set(rb.signature_signals) <= keys, rb.id
        # the symptoms are written in the line's own signal keys
        assert any(f"`{k}`" in rb.passage("symptoms").text for k in rb.signals), rb.id


def test_safety_sections_require_isolation_before_opening_equipment():
    for rb in LIB.runbooks.values():
        text = rb.passage("safety").text.lower()
        assert "lock" in text or "isolat" in text, rb.id


def test_passage_ids_are_stable_anchors():
    assert LIB.passage("RB-PUMP-001#checks").runbook_id == "RB-PUMP-001"
    assert LIB.passage("RB-PUMP-001#nope") is None
    assert LIB.get("RB-AIR-001#actions").id == "RB-AIR-001"


@pytest.mark.parametrize(
    "query, expected",
    [
        ("suction pressure low, flow erratic, gravel noise at the pump casing", "RB-PUMP-002"),
        ("product_pump.filter_dp rising", "RB-PUMP-003"),
        ("belt speed below motor speed, gaps on the infeed", "RB-CONV-001"),
        ("fill weight constant, load cell", "RB-FILL-001"),
        ("compressed air hiss, header pressure sagging", "RB-AIR-001"),
    ],
)
def test_retrieval_finds_the_runbook_for_symptoms(query, expected):
    hits = LIB.search(query, k=3)
    assert hits and hits[0][0].runbook_id == expected, [(p.id, s) for p, s in hits]


def test_a_bad_runbook_file_is_skipped_with_its_name_and_the_rest_load(tmp_path, caplog):
    good = (LIB.for_fault("air_leak").path)
    (tmp_path / "good.md").write_text(open(good).read())
    (tmp_path / "broken.md").write_text("---\nid: RB-X\ntitle: t\n---\n## A {#a}\n")
    (tmp_path / "nofront.md").write_text("# just text\n")
    with caplog.at_level(logging.ERROR):
        lib = load_runbooks(tmp_path)
    assert list(lib.runbooks) == ["RB-AIR-001"]
    assert "broken.md" in caplog.text and "RB-PUMP-001" in caplog.text and "nofront.md" in caplog.text


def test_parse_rejects_a_bad_signature_direction():
    text = "---\nid: RB-TEST-001\ntitle: t\nasset: filler\nsignature: {filler.fill_weight: sideways}\n---\n## A {#a}\nx\n"
    with pytest.raises(RunbookError, match="signature"):
        parse_runbook(text, "t.md")
