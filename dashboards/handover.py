"""The shift handover on the operator's page: the newest handovers, who of the incoming shift acknowledged each,
the acknowledgement itself and the Markdown and PDF downloads.

The acknowledgement goes out like an alarm command: a ``handover-ack/1`` on the logged-in person's own
``commands/<user>`` level, over the dashboard's MQTT account; the service records it in the handover's
audit trail with that name and answers on ``commands/reply/<request_id>``.
"""

from __future__ import annotations

import json
import time
import uuid

import streamlit as st

from factory_copilot.publish import payloads
from factory_copilot.records import Handover
from factory_copilot.shift.document import markdown

REPLY_WAIT_S = 10.0


def acknowledge(feed, handover: Handover, user: str) -> str:
    """Send ``user``'s acknowledgement of ``handover`` on their command level; returns its request id."""
    request_id = uuid.uuid4().hex
    body = payloads.handover_ack(handover.handover_id, request_id, user, comment="from the dashboard")
    feed.session.publish(feed.topics.commands(user), json.dumps(body), qos=1)
    return request_id


def _reply(feed, sent: dict) -> None:
    reply = feed.snapshot().replies.get(sent["request_id"])
    if reply is None:
        if time.time() - sent["sent"] > REPLY_WAIT_S:
            st.warning(f"No reply from the service after {REPLY_WAIT_S:.0f} s: is it running?")
        else:
            st.caption("Acknowledgement sent; waiting for the service…")
    elif reply.get("ok"):
        st.caption(f"✓ {reply.get('message')}")
    else:
        st.error(f"Not acknowledged: {reply.get('message')}")


def handover_panel(store, feed, user: str | None) -> None:
    """The newest handovers (pick one), what it says, who acknowledged it; acknowledge and download."""
    handovers = store.handovers(limit=12)
    if not handovers:
        st.caption("No shift handover yet: the line file names no shifts (shifts:), or no shift has ended since.")
        return
    ids = [h.handover_id for h in handovers]
    chosen = st.selectbox("Shift", ids, key="handover_pick", help="the newest first")
    h = handovers[ids.index(chosen)]
    mine = user is not None and any(a["actor"] == user for a in h.acknowledged)
    left, middle, right = st.columns([3, 2, 2])
    with left:
        if h.acknowledged:
            st.caption("Acknowledged by " + ", ".join(
                f"{a['actor']} ({time.strftime('%H:%M', time.gmtime(a['ts']))} UTC)" for a in h.acknowledged))
        else:
            st.caption("Not acknowledged by the incoming shift yet.")
        sent = st.session_state.get("handover_ack", {}).get(h.handover_id)
        if user is None or feed is None:
            st.caption("Log in (and connect the dashboard to the broker) to acknowledge the handover.")
        elif not mine and st.button("Acknowledge handover", key="handover_ack_button", type="primary"):
            st.session_state.setdefault("handover_ack", {})[h.handover_id] = {
                "request_id": acknowledge(feed, h, user), "sent": time.time()}
            sent = st.session_state["handover_ack"][h.handover_id]
        if sent and feed is not None:
            _reply(feed, sent)
    text = markdown(h)
    middle.download_button("Markdown", text, file_name=f"handover-{h.date}-{h.shift}.md", mime="text/markdown",
                           key="handover_md")
    with right:
        from factory_copilot.shift.pdf import handover_pdf  # fpdf2 only when the page offers a PDF

        st.download_button("PDF", handover_pdf(h), file_name=f"handover-{h.date}-{h.shift}.pdf",
                           mime="application/pdf", key="handover_pdf")
    with st.container(border=True):
        st.markdown(text)
