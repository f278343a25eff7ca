"""The shift handover of a recorded day of the simulated line with three faults, written from the store and the
alarm journal: every alarm of the shift appears, every standing or shelved alarm is listed with its expiry, the
figures are evaluate's for that window, each sentence cites rows that exist, and the PDF renders.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from factory_copilot.alarms.evaluate import summarise
from factory_copilot.alarms.journal import Journal
from factory_copilot.alarms.kpi import alarm_kpis
from factory_copilot.records import AlarmState
from factory_copilot.shift.calendar import shift_window
from factory_copilot.shift.document import markdown
from factory_copilot.shift.handover import write_handover
from factory_copilot.store import Store
from tests.support.shift_day import DAY, local, record_day


@pytest.fixture(scope="module")
def day(sim_models, tmp_path_factory):
    return record_day(sim_models, tmp_path_factory.mktemp("day") / "state")


@pytest.fixture(scope="module")
def early(day):
    window = shift_window(day.line, "early", DAY)
    store, journal = Store.reader(day.paths.store), Journal(day.paths.alarms, read_only=True)
    try:
        yield window, write_handover(day.line, window, store, journal, now=window.end + 600)
    finally:
        store.close()
        journal.close()


@pytest.mark.slow
def test_every_alarm_of_the_shift_appears_and_what_stands_is_listed_with_its_expiry(day, early):
    window, h = early
    raised = {e.alarm_id for e in day.events if e.event in ("raised", "realarm") and window.start <= e.ts <= window.end}
    assert len(raised) >= 3, raised  # the three faults, each alarmed
    assert {a["alarm_id"] for a in h.body["alarms"]} == raised
    last = {}
    for e in day.events:
        if e.ts <= window.end:
            last[e.alarm_id] = e.alarm
    expected = {a.alarm_id: a for a in last.values()
                if a.state is not AlarmState.NORMAL or a.out_of_service or (a.shelved_until or 0) > window.end}
    standing = {s["alarm_id"]: s for s in h.body["standing"]}
    assert set(standing) == set(expected)
    assert standing[day.shelved]["shelved_until"] == expected[day.shelved].shelved_until > window.end
    assert standing[day.shelved]["shelved_by"] == "sam"
    assert standing[day.out_of_service]["out_of_service"] and standing[day.out_of_service]["out_of_service_by"] == "sam"
    text = markdown(h)
    assert "sam shelved" in text and "until 17:30" in text and "out of service since 08:00 by sam" in text
    verdicts = {a["alarm_id"]: a["verdict"] for a in h.body["alarms"] if a["verdict"]}
    assert verdicts[day.confirmed]["verdict"] == "confirmed" and verdicts[day.false_alarm]["verdict"] == "false_alarm"
    assert [i["alarm_id"] for i in h.body["incidents"]] == [day.confirmed]


@pytest.mark.slow
def test_the_figures_are_evaluates_for_the_shift(day, early):
    window, h = early
    expected = summarise("early", "three faults", day.events, window.start, window.end)
    for key in ("alarms", "per_hour", "peak_10min", "flood_share", "standing", "stale", "chattering", "folded",
                "by_priority", "manageable", "events"):
        assert h.body["figures"][key] == expected[key], key
    assert h.body["figures"]["top"] == [list(t) for t in expected["top"]]
    journal = Journal(day.paths.alarms, read_only=True)  # the health tool reads only the figures' columns
    try:
        light = alarm_kpis([e for _, e in journal.period(window.start, window.end, light="kpi")
                            if e.event != "refused"], window.start, window.end).to_dict()
    finally:
        journal.close()
    assert {k: light[k] for k in expected if k in light} == {k: expected[k] for k in light if k in expected}


@pytest.mark.slow
def test_every_sentence_cites_rows_that_exist(day, early):
    window, h = early
    journal = Journal(day.paths.alarms, read_only=True)
    try:
        seqs = {seq for seq, _ in journal.entries(since=window.start - 86400)}
        ids = set(journal.alarm_ids())
    finally:
        journal.close()
    keys = set(day.line.signal_keys())
    for s in h.body["sentences"]:
        for ref in s["refs"]:
            kind, _, key = ref.partition(":")
            assert {"alarm": key in ids, "audit": key.isdigit() and int(key) in seqs, "trend": key in keys}[kind], ref
    assert all(s["refs"] for s in h.body["sentences"] if s["section"] in ("alarms", "actions"))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="needs pdftoppm (poppler-utils)")
def test_the_pdf_renders(early, tmp_path):
    from factory_copilot.shift.pdf import handover_pdf

    _, h = early
    pdf = tmp_path / "handover.pdf"
    pdf.write_bytes(handover_pdf(h))
    subprocess.run(["pdftoppm", "-png", "-r", "60", str(pdf), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page*.png"))
    assert pages and all(p.stat().st_size > 5_000 for p in pages)
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    assert "Shift handover" in text and "Still standing" in text and "sam" in text


@pytest.mark.slow
def test_shift_report_writes_any_past_shift_from_the_state_files(day, tmp_path, capsys):
    import yaml

    from factory_copilot.cli import main

    data = day.line.model_dump(mode="json")
    data["service"] = {**data["service"], "state_dir": str(day.paths.state_dir)}
    line_file = tmp_path / "line.yaml"
    line_file.write_text(yaml.safe_dump(data))
    assert main(["shift", "report", "--config", str(line_file), "--shift", "early", "--date", DAY]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Shift handover: demo-plant / packaging-1, early shift of 2026-12-03")
    assert main(["shift", "report", "--config", str(line_file), "--shift", "early", "--date", DAY, "--format", "pdf",
                 "--out", str(tmp_path / "early.pdf")]) == 0
    assert (tmp_path / "early.pdf").read_bytes().startswith(b"%PDF")
    assert main(["shift", "report", "--config", str(line_file), "--shift", "noon", "--date", DAY]) == 2
    assert "the line's shifts are early, late, night" in capsys.readouterr().err
    assert main(["shift", "report", "--config", str(line_file), "--date", DAY]) == 2
    assert "needs a shift name" in capsys.readouterr().err
