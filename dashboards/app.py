"""The operator dashboard: line overview, ISA-18.2 alarm list with acknowledge/shelve, live trends with
normal bands, the copilot's diagnosis, ask-the-copilot chat and operator feedback.

    streamlit run dashboards/app.py -- --db PATH --line LINE.yaml --mqtt-host H --mqtt-port P

Everything historical comes from the store; live alarm states, streamed diagnosis text, command
replies and answers come over MQTT through one cached LiveFeed. Each option may also be given as an
environment variable (FACTORY_COPILOT_DB, _LINE, _MQTT_HOST, _MQTT_PORT, _MQTT_PROTOCOL, _TOPIC_PREFIX).
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `streamlit run` puts only dashboards/ on the path

import streamlit as st  # noqa: E402

from dashboards import charts  # noqa: E402
from dashboards import login  # noqa: E402
from dashboards.live import LiveFeed, Snapshot  # noqa: E402
from dashboards.overview import line_health  # noqa: E402
from factory_copilot.catalogue import faults_of  # noqa: E402
from factory_copilot.config import SIMULATED_LINE, MqttConnection, load_line  # noqa: E402
from factory_copilot.copilot.runbooks import runbooks_of  # noqa: E402
from factory_copilot.records import FEEDBACK_VERDICTS, Alarm, AlarmState, Feedback, Priority, Turn  # noqa: E402
from factory_copilot.publish.topics import DEFAULT_PREFIX  # noqa: E402
from factory_copilot.store import Store  # noqa: E402

SHELVE_CHOICES = {"15 min": 900, "1 h": 3600, "4 h": 4 * 3600, "8 h (shift)": 8 * 3600}
WINDOWS = {"5 min": 300, "15 min": 900, "30 min": 1800, "1 h": 3600, "4 h": 4 * 3600, "24 h": 86_400}
STATUS_COLOURS = {"alarm": None, "warning": "#f2c80f", "stale": "#9e9e9e", "no data": "#bdbdbd", "ok": "#2ca02c"}
STATE_LABELS = {
    AlarmState.ACTIVE_UNACK: "ACTIVE · UNACK",
    AlarmState.ACTIVE_ACK: "active · acked",
    AlarmState.RTN_UNACK: "returned · UNACK",
    AlarmState.NORMAL: "normal",
}
REPLY_WAIT_S = 10.0
RUNBOOK_SEARCH = "Runbook search (no model): "  # how the copilot marks an answer given without its model


def settings() -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="dashboards/app.py", description=__doc__.splitlines()[0])
    p.add_argument("--db", default=env("FACTORY_COPILOT_DB", "data/factory-copilot.db"))
    p.add_argument("--line", default=env("FACTORY_COPILOT_LINE", str(SIMULATED_LINE)))
    p.add_argument("--mqtt-host", default=env("FACTORY_COPILOT_MQTT_HOST"))
    p.add_argument("--mqtt-port", type=int, default=int(env("FACTORY_COPILOT_MQTT_PORT", "1883")))
    p.add_argument("--mqtt-protocol", default=env("FACTORY_COPILOT_MQTT_PROTOCOL", "5"), choices=["5", "3.1.1"])
    p.add_argument("--topic-prefix", default=env("FACTORY_COPILOT_TOPIC_PREFIX", DEFAULT_PREFIX))
    # log-ins (Argon2id hashes, from broker init); none: read-only. The dashboard's own MQTT account is given in
    # the environment (FACTORY_COPILOT_MQTT_USERNAME/_PASSWORD), so no password shows in a process list
    p.add_argument("--users", default=env("FACTORY_COPILOT_DASHBOARD_USERS"))
    # under a test runner sys.argv holds the runner's own options: ignore what is not ours
    args, _ = p.parse_known_args(sys.argv[1:])
    return args


@st.cache_resource
def open_store(path: str) -> Store:
    return Store(path)


@st.cache_resource
def open_line(path: str):
    return load_line(path)


@st.cache_resource
def open_runbooks(path: str):
    return runbooks_of(open_line(path))  # the line's own runbooks, never the demo's


@st.cache_resource
def open_faults(path: str):
    return faults_of(open_line(path))


@st.cache_resource
def open_feed(host: str, port: int, protocol: str, site: str, line: str, prefix: str,
              _base: MqttConnection | None) -> LiveFeed:
    # the line file's MQTT settings (TLS, credentials) apply; host and port come from the command line
    update = {"host": host, "port": port, "protocol": protocol, "client_id": None}
    if os.environ.get("FACTORY_COPILOT_MQTT_USERNAME"):
        update.update(username=os.environ["FACTORY_COPILOT_MQTT_USERNAME"],
                      password=os.environ.get("FACTORY_COPILOT_MQTT_PASSWORD"))
    conn = (_base or MqttConnection()).model_copy(update=update)
    return LiveFeed(conn, site, line, prefix).start()


class Page:
    """The objects one run of the script works with."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.line = open_line(args.line)
        self.store = open_store(args.db)
        self.feed = (open_feed(args.mqtt_host, args.mqtt_port, args.mqtt_protocol, self.line.site, self.line.line,
                               args.topic_prefix, self.line.mqtt) if args.mqtt_host else None)

    def snapshot(self) -> Snapshot:
        return self.feed.snapshot() if self.feed else Snapshot()

    def alarms(self, snap: Snapshot) -> list[Alarm]:
        """Alarms needing attention: the store's, updated by newer retained states from the broker."""
        by_id = {a.alarm_id: a for a in self.store.active_alarms()}
        for alarm_id, live in snap.alarms.items():
            stored = by_id.get(alarm_id)
            if stored is None or live.updated_at >= stored.updated_at:
                by_id[alarm_id] = live
        for alarm_id in snap.cleared:
            by_id.pop(alarm_id, None)
        alarms = [a for a in by_id.values() if a.state is not AlarmState.NORMAL]
        return sorted(alarms, key=lambda a: (int(a.priority), a.state.acknowledged, -a.raised_at))


cfg = Page(settings())


def badge(text: str, colour: str, fg: str = "white") -> str:
    return (f'<span style="background:{colour};color:{fg};padding:2px 8px;border-radius:4px;font-weight:600;'
            f'font-size:0.75rem;letter-spacing:0.03em;white-space:nowrap">{html.escape(text)}</span>')


def priority_badge(p: Priority) -> str:
    return badge(p.name, charts.PRIORITY_COLOURS[p], "black" if p in (Priority.MEDIUM, Priority.LOW) else "white")


def ago(ts: float, now: float) -> str:
    s = max(0, int(now - ts))
    return f"{s} s ago" if s < 60 else f"{s // 60} min ago" if s < 3600 else f"{s // 3600} h {s % 3600 // 60} min ago"


def clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts))


def actor() -> str | None:
    """The person logged in: every command and question goes out as them (None: read-only)."""
    return login.current_user()


# ---------------------------------------------------------------------------------------------- sidebar


def sidebar(snap: Snapshot) -> None:
    with st.sidebar:
        st.markdown(f"### {html.escape(cfg.line.site)} / {html.escape(cfg.line.line)}")
        login.sidebar_user(cfg.args.users)
        st.selectbox("Shelve for", list(SHELVE_CHOICES), key="shelve_for", index=1)
        st.selectbox("Trend window", list(WINDOWS), key="window", index=2)
        if cfg.feed is None:
            st.info("No MQTT broker given (--mqtt-host): commands and live updates are off.")
        elif snap.connected:
            st.success(f"Live: {cfg.args.mqtt_host}:{cfg.args.mqtt_port}")
        else:
            st.error(f"Broker {cfg.args.mqtt_host}:{cfg.args.mqtt_port} not reachable; retrying")
        if snap.publisher_status:
            st.caption(f"Copilot service: {snap.publisher_status}")
        st.caption(f"Store: {cfg.args.db}")


# ---------------------------------------------------------------------------------------------- overview


def overview(alarms: list[Alarm], now: float) -> None:
    health = line_health(cfg.store, cfg.line, now=now)
    by_asset: dict[str, list[Alarm]] = {}
    for a in alarms:
        by_asset.setdefault(a.asset, []).append(a)
    cols = st.columns(len(health))
    for col, h in zip(cols, health):
        own = by_asset.get(h.asset, [])
        worst = min((a.priority for a in own), default=h.worst_priority)
        colour = charts.PRIORITY_COLOURS[worst] if worst else STATUS_COLOURS[h.status]
        status = f"{worst.name.lower()} alarm" if worst else h.status
        lines = [f"{len(own)} alarm{'s' if len(own) != 1 else ''}" if own else "no alarms"]
        if h.anomalies:
            lines.append(f"{h.anomalies} anomalies · peak {h.peak_ratio:.1f}×")
        if h.last_reading:
            lines.append(f"data {ago(h.last_reading, now)}")
        col.markdown(
            f'<div style="border-left:8px solid {colour};background:rgba(128,128,128,0.07);border-radius:6px;'
            f'padding:8px 10px;min-height:104px"><div style="font-weight:700">{html.escape(h.name)}</div>'
            f'<div style="color:{colour};font-weight:700;text-transform:uppercase;font-size:0.8rem">'
            f'{html.escape(status)}</div><div style="font-size:0.8rem;opacity:0.8">'
            f'{"<br>".join(html.escape(x) for x in lines)}</div></div>',
            unsafe_allow_html=True,
        )


# ---------------------------------------------------------------------------------------------- alarm list


def alarm_list(alarms: list[Alarm], snap: Snapshot, now: float) -> None:
    st.subheader(f"Alarms ({len(alarms)})")
    if not alarms:
        st.success("No alarms need attention.")
        return
    pending = st.session_state.setdefault("commands", {})
    for alarm in alarms:
        selected = st.session_state.get("alarm_id") == alarm.alarm_id
        with st.container(border=True):
            c_badge, c_text, c_buttons = st.columns([1.3, 3.9, 4.4], vertical_alignment="center")
            c_badge.markdown(priority_badge(alarm.priority), unsafe_allow_html=True)
            state = STATE_LABELS[alarm.state]
            if alarm.shelved:
                state += f" · shelved until {clock(alarm.shelved_until)}"
            marker = "▶ " if selected else ""
            c_text.markdown(
                f"{marker}**{html.escape(alarm.message or alarm.condition)}**  \n"
                f"<span style='font-size:0.8rem;opacity:0.8'>{html.escape(alarm.asset)} · {state} · raised "
                f"{clock(alarm.raised_at)} UTC ({ago(alarm.raised_at, now)})"
                f"{' · acked by ' + html.escape(alarm.acked_by) if alarm.acked_by else ''}</span>",
                unsafe_allow_html=True,
            )
            b1, b2, b3 = c_buttons.columns(3)
            no_feed = cfg.feed is None
            if b1.button("Ack", key=f"ack:{alarm.alarm_id}", disabled=no_feed or alarm.state.acknowledged,
                         type="primary" if not alarm.state.acknowledged else "secondary"):
                send(alarm, "acknowledge")
            if alarm.shelved:
                if b2.button("Unshelve", key=f"unshelve:{alarm.alarm_id}", disabled=no_feed):
                    send(alarm, "unshelve")
            elif b2.button("Shelve", key=f"shelve:{alarm.alarm_id}", disabled=no_feed):  # for the sidebar's time
                send(alarm, "shelve", SHELVE_CHOICES[st.session_state.get("shelve_for", "1 h")])
            if b3.button("Open", key=f"select:{alarm.alarm_id}", disabled=selected):
                st.session_state["alarm_id"] = alarm.alarm_id
                st.session_state["trend_asset"] = alarm.asset  # the trends follow the alarm being looked at
                st.rerun()
            sent = pending.get(alarm.alarm_id)
            if sent:
                command_reply(sent, snap, now)


def send(alarm: Alarm, command: str, shelve_s: float | None = None) -> None:
    if actor() is None:
        st.error("Log in to acknowledge or shelve: commands go out as the person logged in.")
        return
    request_id = cfg.feed.command(command, alarm.alarm_id, actor(), comment="from the dashboard", shelve_s=shelve_s)
    st.session_state.setdefault("commands", {})[alarm.alarm_id] = {"request_id": request_id, "command": command,
                                                                   "sent": time.time()}


def command_reply(sent: dict, snap: Snapshot, now: float) -> None:
    reply = snap.replies.get(sent["request_id"])
    if reply is None:
        if now - sent["sent"] > REPLY_WAIT_S:
            st.warning(f"{sent['command']}: no reply from the alarm engine after {REPLY_WAIT_S:.0f} s")
        else:
            st.caption(f"{sent['command']} sent; waiting for the alarm engine…")
    elif reply.get("ok"):
        st.success(f"{sent['command']}: {reply.get('message') or 'done'}")
    else:
        st.error(f"{sent['command']} refused: {reply.get('message') or 'no reason given'}")


@st.fragment(run_every=2)
def live_section() -> None:
    now = time.time()
    snap = cfg.snapshot()
    alarms = cfg.alarms(snap)
    st.session_state["live_alarms"] = {a.alarm_id: a for a in alarms}
    if "alarm_id" not in st.session_state and alarms:
        st.session_state["alarm_id"] = alarms[0].alarm_id
    overview(alarms, now)
    left, right = st.columns([11, 9], gap="medium")
    with left:
        alarm_list(alarms, snap, now)
    with right:
        diagnosis_panel(snap, now)


# ---------------------------------------------------------------------------------------------- diagnosis


def selected_alarm() -> Alarm | None:
    alarm_id = st.session_state.get("alarm_id")
    if not alarm_id:
        return None
    return st.session_state.get("live_alarms", {}).get(alarm_id) or cfg.store.alarm(alarm_id)


def diagnosis_panel(snap: Snapshot, now: float) -> None:
    alarm = selected_alarm()
    st.subheader("Diagnosis")
    if alarm is None:
        st.caption("Select an alarm to see what the copilot says about it.")
        return
    st.markdown(f"{priority_badge(alarm.priority)} &nbsp;**{html.escape(alarm.message or alarm.condition)}**",
                unsafe_allow_html=True)
    stored = cfg.store.diagnosis(alarm.alarm_id)
    live = snap.diagnoses.get(alarm.alarm_id)
    diagnosis = live if live and (stored is None or live.created_at >= stored.created_at) else stored
    streaming = snap.stream_text(alarm.alarm_id)
    writing = bool(streaming) and alarm.alarm_id not in snap.stream_done
    if streaming and (diagnosis is None or diagnosis.source != "model") and (writing or diagnosis is None):
        # the model's summary as it is written; the runbook diagnosis below stands until the model's is complete
        st.markdown(badge("MODEL · WRITING", "#6a3d9a") + " &nbsp;the local model's diagnosis replaces the runbook's "
                    "when it is complete", unsafe_allow_html=True)
        st.markdown(html.escape(streaming) + (" ▌" if writing else ""))
    if diagnosis is None:
        if not streaming:
            st.info("No diagnosis yet for this alarm.")
        return
    if diagnosis.source == "model":
        how = f"From the local model ({diagnosis.model or 'LLM'}"
        how += f", {diagnosis.latency_s:.1f} s)" if diagnosis.latency_s else ")"
        how += "; causes, steps and safety notes quoted from the line's runbooks"
        st.markdown(badge("MODEL", "#6a3d9a") + f" &nbsp;{html.escape(how)}", unsafe_allow_html=True)
    elif diagnosis.fallback_reason:
        st.markdown(badge("RUNBOOK FALLBACK", "#455a64") + " &nbsp;"
                    + html.escape(f"Rule-based from the runbooks; the model's: {diagnosis.fallback_reason}"),
                    unsafe_allow_html=True)
    else:
        st.markdown(badge("RUNBOOK", "#455a64") + " &nbsp;" + html.escape("Rule-based from the line's runbooks, at once"
                    + ("; the model is writing its own" if writing else "")), unsafe_allow_html=True)
    st.markdown(diagnosis.summary)
    if diagnosis.causes:
        st.markdown("**Likely causes**")
        for rank, cause in enumerate(diagnosis.causes, 1):
            st.progress(min(1.0, max(0.0, cause.confidence)),
                        text=f"{rank}. {cause.title} — {cause.confidence:.0%}")
            cited = [f"`{e.ref}` {e.detail}".strip() for e in cause.evidence]
            if cited:
                st.caption(" · ".join(cited))
    if alarm.anomaly and alarm.anomaly.contributions:
        with st.expander("Evidence chart", expanded=True):
            st.altair_chart(charts.contribution_chart(alarm.anomaly.contributions), width="stretch",
                            key=f"contributions:{alarm.alarm_id}")
            evidence_trend(alarm, diagnosis, now)
    if diagnosis.steps:
        st.markdown("**Recommended steps**")
        for i, step in enumerate(diagnosis.steps, 1):
            label = f"{i}. {'Check' if step.kind == 'check' else 'Do'}: {step.text}"
            if step.runbook_id:
                with st.expander(f"{label}  ·  {step.runbook_id}"):
                    runbook_passage(step.runbook_id)
            else:
                st.markdown(label)
    for s in diagnosis.safety:
        st.warning(s)
    if diagnosis.would_change:
        st.caption("What would change this diagnosis: " + " ".join(diagnosis.would_change))
    if diagnosis.dropped_citations:
        st.caption(f"{diagnosis.dropped_citations} citation(s) without evidence were dropped.")


def evidence_trend(alarm: Alarm, diagnosis, now: float) -> None:
    keys = list(alarm.anomaly.contributions)[:3] if alarm.anomaly else []
    keys += [e.ref for c in diagnosis.causes for e in c.evidence if e.kind == "signal" and e.ref not in keys]
    same_asset = [k.partition(".")[2] for k in keys if k.startswith(alarm.asset + ".")][:3]
    if not same_asset:
        return
    since = alarm.raised_at - 600
    frame = charts.signal_frame(cfg.store, cfg.line, alarm.asset, since, now, same_asset)
    if frame.empty:
        return
    windows = charts.anomaly_windows(cfg.store.anomalies(alarm.asset, since, now))
    names = list(dict.fromkeys(frame["signal"]))
    for name, chart in zip(names, charts.signal_charts(frame, windows, charts.alarm_marks([alarm]), height=70)):
        # a key per alarm and signal: the browser must not morph another signal's chart into this one
        st.altair_chart(chart, width="stretch", key=f"evidence:{alarm.alarm_id}:{name}")


def runbook_passage(ref: str) -> None:
    library = open_runbooks(cfg.args.line)
    runbook = library.get(ref)
    if runbook is None:
        st.caption(f"Runbook {ref} is not in the library.")
        return
    anchor = ref.partition("#")[2]
    passages = [runbook.passage(anchor)] if anchor and runbook.passage(anchor) else list(runbook.passages.values())
    st.markdown(f"**{runbook.id} — {runbook.title}**")
    for p in passages:
        st.markdown(f"*{p.title}*\n\n{p.text}")


# ---------------------------------------------------------------------------------------------- tabs


def chat_tab(alarm: Alarm | None) -> None:
    if alarm is None:
        st.caption("Select an alarm to ask the copilot about it.")
        return
    asks = st.session_state.setdefault("asks", {})
    snap = cfg.snapshot()
    # answers that finished are written to the store once (the store keeps one turn per request)
    for request_id, ask in list(asks.items()):
        final = snap.answer_done.get(request_id)
        if final is not None:
            cfg.store.add_turn(Turn(ask["alarm_id"], "copilot", snap.answer_text(request_id), time.time(),
                                    request_id=request_id, source=final.get("source")))
            del asks[request_id]
    for turn in cfg.store.conversation(alarm.alarm_id):
        with st.chat_message("user" if turn.role == "operator" else "assistant"):
            if turn.role == "copilot" and turn.text.startswith(RUNBOOK_SEARCH):
                st.markdown(badge("RUNBOOK SEARCH · NO MODEL", "#455a64"), unsafe_allow_html=True)
                st.markdown(turn.text[len(RUNBOOK_SEARCH):])
            else:
                st.markdown(turn.text)
            who = turn.actor or ("copilot" if turn.role == "copilot" else "operator")
            st.caption(f"{who} · {clock(turn.ts)} UTC" + (f" · {turn.source}" if turn.source else ""))
    for request_id, ask in asks.items():
        if ask["alarm_id"] != alarm.alarm_id:
            continue
        with st.chat_message("assistant"):
            text = snap.answer_text(request_id)
            st.markdown((text + " ▌") if text else "_thinking…_")
    question = st.chat_input(f"Ask the copilot about {alarm.asset}…", key="ask", disabled=cfg.feed is None)
    if question and actor() is None:
        st.error("Log in to ask the copilot.")
    elif question:
        request_id = cfg.feed.ask(alarm.alarm_id, question, actor())
        cfg.store.add_turn(Turn(alarm.alarm_id, "operator", question, time.time(), actor(), request_id))
        asks[request_id] = {"alarm_id": alarm.alarm_id, "question": question}
        st.rerun()


def feedback_tab(alarm: Alarm | None) -> None:
    if alarm is None:
        st.caption("Select an alarm to give feedback on it.")
        return
    faults = open_faults(cfg.args.line)
    labels = {"confirmed": "Confirm the diagnosed cause", "false_alarm": "False alarm",
              "other_cause": "Another cause"}
    with st.form(f"feedback:{alarm.alarm_id}", clear_on_submit=True):
        verdict = st.radio("Verdict", FEEDBACK_VERDICTS, format_func=labels.get, horizontal=True, key="fb_verdict")
        choices = ["(as diagnosed)"] + list(faults) + ["other (describe below)"]
        cause = st.selectbox("Actual cause", choices, key="fb_cause",
                             format_func=lambda c: f"{faults[c].name} ({c})" if c in faults else c)
        described = st.text_input("Cause in your words", key="fb_text")
        fix = st.text_area("What fixed it", key="fb_fix", height=80)
        if st.form_submit_button("Save feedback", type="primary"):
            actual = described.strip() or (cause if cause in faults else None)
            if verdict == "other_cause" and not actual:
                st.error("Name the other cause (pick one or describe it).")
            else:
                cfg.store.add_feedback(Feedback(alarm.alarm_id, verdict, actual, fix.strip() or None, actor()))
                st.success("Feedback saved: the copilot will remember it for similar alarms."
                           + (" An engineer's `factory-copilot retune` raises the detector's thresholds from false "
                              "alarms." if verdict == "false_alarm" else ""))
    given = cfg.store.feedback(alarm.alarm_id)
    for fb in reversed(given):
        st.caption(f"{clock(fb.ts)} UTC · {fb.actor or 'operator'}: {labels[fb.verdict].lower()}"
                   f"{' — ' + fb.actual_cause if fb.actual_cause else ''}{' · fix: ' + fb.fix if fb.fix else ''}")
    fault = alarm.anomaly.fault_type if alarm.anomaly else None
    signals = list(alarm.anomaly.contributions) if alarm.anomaly else []
    similar = [i for i in cfg.store.similar(alarm.asset, fault, signals) if i.alarm_id != alarm.alarm_id]
    if similar:
        st.markdown("**Similar past incidents**")
        for i in similar:
            st.caption(f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(i.ts))} · {i.asset} · {i.verdict}"
                       f"{' — ' + i.actual_cause if i.actual_cause else ''}{' · fix: ' + i.fix if i.fix else ''}")


@st.fragment(run_every=5)
def trends_tab(alarm: Alarm | None) -> None:
    now = time.time()
    assets = [a.id for a in cfg.line.assets]
    if st.session_state.get("trend_asset") not in assets:
        st.session_state["trend_asset"] = alarm.asset if alarm and alarm.asset in assets else assets[0]
    asset = st.selectbox("Asset", assets, key="trend_asset",
                         format_func=lambda a: cfg.line.asset(a).name)
    since = now - WINDOWS[st.session_state.get("window", "30 min")]
    frame = charts.signal_frame(cfg.store, cfg.line, asset, since, now)
    if frame.empty:
        st.info(f"No readings for {asset} in this window.")
        return
    windows = charts.anomaly_windows(cfg.store.anomalies(asset, since, now))
    raised = [e.alarm for e in cfg.store.alarm_history(asset=asset, since=since) if e.event == "raised"]
    names = list(dict.fromkeys(frame["signal"]))
    for name, chart in zip(names, charts.signal_charts(frame, windows, charts.alarm_marks(raised))):
        st.altair_chart(chart, width="stretch", key=f"trend:{asset}:{name}")
    st.caption("Times in UTC. Green: normal band for the line's mode at the time · blue: mean with min–max · red dots: outside "
               "the band · red shading: anomalies · dashed rules: alarms, in their priority colour.")


def history_tab() -> None:
    events = cfg.store.alarm_history(limit=200)
    if not events:
        st.caption("No alarm history yet.")
        return
    st.dataframe(
        [{"time (UTC)": clock(e.ts), "asset": e.alarm.asset, "alarm": e.alarm.message or e.alarm.condition,
          "priority": e.alarm.priority.name.lower(), "event": e.event, "state": e.state.value.replace("_", " "),
          "by": e.actor or ""} for e in events],
        hide_index=True, width="stretch",
    )


# ---------------------------------------------------------------------------------------------- page


def main() -> None:
    st.set_page_config(page_title=f"Factory Copilot · {cfg.line.line}", layout="wide")
    login.require_login(cfg.args.users, f"Factory Copilot · {html.escape(cfg.line.site)} / {html.escape(cfg.line.line)}")
    st.markdown("<style>.block-container{padding-top:2.2rem} h3{margin-bottom:0.2rem}</style>",
                unsafe_allow_html=True)
    snap = cfg.snapshot()
    sidebar(snap)
    st.markdown(f"## {html.escape(cfg.line.description.split(':')[0] or cfg.line.line)}"
                f" <span style='font-size:0.9rem;opacity:0.6'>{clock(time.time())} UTC</span>",
                unsafe_allow_html=True)
    live_section()
    alarm = selected_alarm()
    trends, chat, feedback, history = st.tabs(["Trends", "Ask the copilot", "Feedback", "Alarm history"])
    with trends:
        trends_tab(alarm)
    with chat:
        chat_tab(alarm)
    with feedback:
        feedback_tab(alarm)
    with history:
        history_tab()


main()
