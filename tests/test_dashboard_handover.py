"""The shift handover on the operator's page: shown, acknowledged by the person logged in on their own command level
(handover-ack/1, the same authenticated path as alarm commands), the reply shown."""

from __future__ import annotations

import json

from dashboards.live import LiveFeed
from factory_copilot.store import Store
from tests.test_dashboard import TOPICS, Listener, _app, _login, _texts, fresh_streamlit, seeded, users_file  # noqa: F401
from tests.test_shift_station import early_handover


def seed_handover(db, tmp_path):
    h, _ = early_handover(tmp_path)
    with Store(db) as target:
        target.add_handover(h)
    return h


def test_the_handover_is_shown_and_acknowledged_as_the_person_logged_in(seeded, monkeypatch, broker, fresh_streamlit,
                                                                          users_file, tmp_path):
    db, _ = seeded
    h = seed_handover(db, tmp_path)
    side = Listener(broker, TOPICS.commands("+"))
    try:
        at = _login(_app(monkeypatch, db, broker, users=users_file))
        assert not at.exception, [e.value for e in at.exception]
        texts = _texts(at)
        assert "Shift handover: demo-plant / packaging-1, early shift of 2026-12-03" in texts
        assert "Still standing, shelved or out of service at the end" in texts
        assert "Not acknowledged by the incoming shift yet." in texts
        [feed] = LiveFeed.instances
        assert feed.wait_for(lambda s: s.connected, 10)
        at.button(key="handover_ack_button").click().run()
        assert not at.exception, [e.value for e in at.exception]
        topic, payload = side.next()
        body = json.loads(payload)
        assert topic == TOPICS.commands("maria")  # the person's own level: the broker's ACL makes the name true
        assert (body["schema"], body["handover_id"], body["actor"]) == ("handover-ack/1", h.handover_id, "maria")
        assert "Acknowledgement sent; waiting for the service…" in _texts(at)
        rid = body["request_id"]
        side.publish(TOPICS.command_reply(rid), {"request_id": rid, "ok": True,
                                                 "message": f"handover {h.handover_id} acknowledged by maria"})
        assert feed.wait_for(lambda s: rid in s.replies, 10)
        at.run()
        assert f"✓ handover {h.handover_id} acknowledged by maria" in _texts(at)
    finally:
        side.stop()


def test_without_handovers_the_panel_says_why(seeded, monkeypatch, fresh_streamlit):
    db, _ = seeded
    at = _app(monkeypatch, db).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "No shift handover yet: the line file names no shifts" in _texts(at)
