"""The operator dashboard: line overview, ISA-18.2 alarm list with acknowledge/shelve, live trends with
normal bands, the copilot's diagnosis, ask-the-copilot chat, operator feedback and the alarm KPIs.

Laid out to read at a glance at 1,280 px: a live header (clock, connection), the assets in line order,
then the alarm list (stable order, consequences folded under their root) beside the selected alarm's
tabs (Diagnosis, Trends, Ask, Feedback), then the alarm system's KPIs (EEMUA 191) and history. The live
parts are Streamlit fragments that rerun on their own; the rest reruns on an operator's action.

    streamlit run dashboards/app.py -- --db PATH --line LINE.yaml --mqtt-host H --mqtt-port P

Everything historical comes from the store; live alarm states, streamed diagnosis text, command
replies and answers come over MQTT through one cached LiveFeed. Each option may also be given as an
environment variable (FACTORY_COPILOT_DB, _LINE, _MQTT_HOST, _MQTT_PORT, _MQTT_PROTOCOL, _TOPIC_PREFIX).

    streamlit run dashboards/app.py -- --site A.yaml B.yaml --mqtt-host SITE-BROKER --users dashboard-users.yaml

serves the site page instead (dashboards/site.py; FACTORY_COPILOT_SITE_LINES, the files joined by the path
separator): every line at a glance, each line's operator page at ``?line=SITE/LINE``.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `streamlit run` puts only dashboards/ on the path

import streamlit as st  # noqa: E402

from dashboards import charts  # noqa: E402
from dashboards.handover import handover_panel  # noqa: E402
from dashboards import login  # noqa: E402
from dashboards.live import LiveFeed, Snapshot  # noqa: E402
from dashboards.overview import line_health  # noqa: E402
from dashboards.waits import wait_words  # noqa: E402
from dashboards.words import plant_units, signal_label  # noqa: E402
from factory_copilot.alarms.grouping import Situation, fold  # noqa: E402
from factory_copilot.alarms.kpi import TARGET_FLOOD_SHARE, TARGET_PEAK_10MIN, TARGET_PER_HOUR, AlarmKpis, alarm_kpis  # noqa: E402
from factory_copilot.catalogue import faults_of  # noqa: E402
from factory_copilot.config import SIMULATED_LINE, MqttConnection, load_line  # noqa: E402
from factory_copilot.copilot.runbooks import runbooks_of  # noqa: E402
from factory_copilot.records import FEEDBACK_VERDICTS, Alarm, AlarmState, CommandKind, Priority, Turn  # noqa: E402
from factory_copilot.names import DEFAULT_PREFIX  # noqa: E402
from factory_copilot.publish import payloads  # noqa: E402
from factory_copilot.store import Store  # noqa: E402
from factory_copilot.store.site import is_url  # noqa: E402
from factory_copilot.store.store import PostgresStore, line_id  # noqa: E402

SHELVE_CHOICES = {"15 min": 900, "30 min": 1800, "1 h": 3600, "4 h": 4 * 3600, "8 h (shift)": 8 * 3600}
SHELVE_DEFAULT = "1 h"
WINDOWS = {"5 min": 300, "15 min": 900, "30 min": 1800, "1 h": 3600, "4 h": 4 * 3600, "24 h": 86_400}
STATUS_COLOURS = {"alarm": None, "warning": "#f2c80f", "stale": "#9e9e9e", "no data": "#bdbdbd", "ok": "#2ca02c"}
STATE_LABELS = {  # what the state asks of the operator, in plain words
    AlarmState.ACTIVE_UNACK: "new, not acknowledged",
    AlarmState.ACTIVE_ACK: "acknowledged, still active",
    AlarmState.RTN_UNACK: "back to normal, not acknowledged",
    AlarmState.NORMAL: "normal",
}
SEVERITY_WORDS = {"slight": "slight", "moderate": "moderate", "severe": "severe"}
GONE = "no alarm with id"  # how the alarm engine refuses a command on an alarm it does not hold
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
    # the site page (dashboards/site.py): the site's line files; each line's operator page is then ?line=SITE/LINE
    site = env("FACTORY_COPILOT_SITE_LINES")
    p.add_argument("--site", nargs="+", metavar="LINE.yaml", default=site.split(os.pathsep) if site else None)
    # under a test runner sys.argv holds the runner's own options: ignore what is not ours
    args, _ = p.parse_known_args(sys.argv[1:])
    return args


@st.cache_resource
def open_store(path: str, url: str | None = None, line: str = "") -> Store:
    # a line whose history is in the site's PostgreSQL (the line file's store.url) is read there, not from --db;
    # a --db postgresql://... is read for the line file's line too
    url = url or (path if is_url(path) else None)
    return PostgresStore(url, line) if url else Store(path)


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
        self.store = open_store(args.db, self.line.store.url if self.line.store else None, line_id(self.line))
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
        # refused by the engine: a ghost of an earlier run, until the engine raises that alarm again
        gone = st.session_state.get("gone", {})
        alarms = [a for a in by_id.values() if a.state is not AlarmState.NORMAL
                  and a.updated_at > gone.get(a.alarm_id, float("-inf"))]
        return stable_order(alarms)


def stable_order(alarms: list[Alarm]) -> list[Alarm]:
    """Most urgent first, then newest first: an operator's action (ack, shelve) never moves a row."""
    return sorted(alarms, key=lambda a: (int(a.priority), -a.raised_at, a.alarm_id))


def page_settings() -> argparse.Namespace:
    """The options of this run: with ``--site``, the site page (which stops the script) or the line ``?line=`` names."""
    args = settings()
    if args.site:
        from dashboards import site

        args = site.route(args)
    return args


cfg = Page(page_settings())


def badge(text: str, colour: str, fg: str = "white") -> str:
    return (f'<span style="background:{colour};color:{fg};padding:2px 8px;border-radius:4px;font-weight:600;'
            f'font-size:0.75rem;letter-spacing:0.03em;white-space:nowrap">{html.escape(text)}</span>')


def priority_badge(p: Priority) -> str:
    return badge(p.name, charts.PRIORITY_COLOURS[p], "black" if p in (Priority.MEDIUM, Priority.LOW) else "white")


SHELVED_COLOUR = "#757575"


def alarm_badge(alarm: Alarm) -> str:
    """The priority badge; a shelved alarm is not calling for anyone: it says shelved, and until when."""
    if alarm.shelved:
        return badge(f"{alarm.priority.name} · SHELVED UNTIL {hhmm(alarm.shelved_until)}", SHELVED_COLOUR)
    return priority_badge(alarm.priority)


def hhmm(ts: float) -> str:
    return time.strftime("%H:%M", time.gmtime(ts))


def shelve_choices(user: str | None) -> dict[str, float]:
    """The shelving durations this person may ask for under the line's ``roles:`` (all without roles)."""
    roles = cfg.line.roles
    if roles is None or user is None:  # nobody logged in sends nothing; the engine keeps its own limit
        return dict(SHELVE_CHOICES)
    most = roles.shelve_max_s(user)
    return {label: s for label, s in SHELVE_CHOICES.items() if s <= most}


def shelve_for(choices: dict[str, float]) -> str | None:
    """The duration picked in the sidebar, if it is still one this person may ask for."""
    picked = st.session_state.get("shelve_for")
    if picked in choices:
        return picked
    allowed = [label for label in choices if choices[label] <= SHELVE_CHOICES[SHELVE_DEFAULT]]
    return SHELVE_DEFAULT if SHELVE_DEFAULT in choices else (allowed or list(choices) or [None])[-1]


def ago(ts: float, now: float) -> str:
    s = max(0, int(now - ts))
    return f"{s} s ago" if s < 60 else f"{s // 60} min ago" if s < 3600 else f"{s // 3600} h {s % 3600 // 60} min ago"


def lasting(ts: float, now: float) -> str:
    """How long since ``ts``, in the words an operator uses: 40 s, 7 min, 2 h 5 min."""
    s = max(0, int(now - ts))
    return f"{s} s" if s < 60 else f"{s // 60} min" if s < 3600 else f"{s // 3600} h {s % 3600 // 60} min"


def clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts))


def since(alarm: Alarm, now: float) -> str:
    return f"since {time.strftime('%H:%M', time.gmtime(alarm.raised_at))} ({lasting(alarm.raised_at, now)})"


def describe(alarm: Alarm, now: float) -> str:
    """The second line of an alarm: severity, since when, what it asks of the operator (no scores)."""
    parts = [SEVERITY_WORDS[alarm.severity]] if alarm.severity in SEVERITY_WORDS else []
    parts.append(since(alarm, now))
    state = STATE_LABELS[alarm.state]
    if alarm.state is AlarmState.ACTIVE_ACK and alarm.acked_by:
        state = f"acknowledged by {alarm.acked_by}, still active"
    if alarm.shelved:
        state += f", shelved until {hhmm(alarm.shelved_until)}" + (f" by {alarm.shelved_by}" if alarm.shelved_by else "")
    if alarm.overdue:
        state += f", overdue: {', '.join(alarm.overdue)} told"
    parts.append(state)
    return " · ".join(parts)


def evidence_words(kind: str, ref: str) -> str:
    """A cited piece of evidence: a signal by its name in the line file, anything else (a runbook, an alarm) as cited."""
    return signal_label(cfg.line, ref) if kind == "signal" else f"`{ref}`"


def asset_name(asset: str) -> str:
    return next((a.name for a in cfg.line.assets if a.id == asset), asset)


def actor() -> str | None:
    """The person logged in: every command and question goes out as them (None: read-only)."""
    return login.current_user()


def key_class(key: str) -> str:
    """The CSS class Streamlit gives the element of a widget or container key."""
    return "st-key-" + re.sub(r"[^a-zA-Z0-9_-]", "-", key)


# ---------------------------------------------------------------------------------------------- sidebar


def sidebar() -> None:
    with st.sidebar:
        if cfg.args.site:
            from dashboards.site import back_to_site

            back_to_site()
        st.markdown(f"### {html.escape(cfg.line.site)} / {html.escape(cfg.line.line)}")
        login.sidebar_user(cfg.args.users)
        choices = shelve_choices(actor())
        if choices:
            st.selectbox("Shelve for", list(choices), key="shelve_for", index=list(choices).index(shelve_for(choices)))
        else:
            st.caption("Your role may not shelve alarms on this line.")
        st.selectbox("Trend window", list(WINDOWS), key="window", index=2)


# ---------------------------------------------------------------------------------------------- header


@st.fragment(run_every=1)
def header() -> None:
    """The line's name, the clock and whether what the page shows is live."""
    snap = cfg.snapshot()
    now = time.time()
    if cfg.feed is None:
        state, colour = "Store only: no broker given (--mqtt-host), commands and live updates are off", "#9e9e9e"
    elif not snap.connected:
        state, colour = f"Broker {cfg.args.mqtt_host}:{cfg.args.mqtt_port} not reachable; retrying", "#d62728"
    elif snap.publisher_status == "offline":
        state, colour = "Live, but the copilot service is offline: no new alarms", "#ff7f0e"
    else:
        state, colour = f"Live · broker {cfg.args.mqtt_host}:{cfg.args.mqtt_port}", "#2ca02c"
    title = html.escape(cfg.line.description.split(":")[0] or cfg.line.line)
    st.markdown(
        f'<div style="display:flex;align-items:baseline;gap:1rem;flex-wrap:wrap">'
        f'<span style="font-size:1.6rem;font-weight:700">{title}</span>'
        f'<span class="fc-clock" style="font-size:1.1rem;font-variant-numeric:tabular-nums">{clock(now)} UTC</span>'
        f'<span class="fc-connection" style="font-size:0.85rem"><span style="color:{colour}">●</span> '
        f'{html.escape(state)}</span></div>',
        unsafe_allow_html=True,
    )


# ---------------------------------------------------------------------------------------------- overview


@st.fragment(run_every=2)
def overview() -> None:
    """One card per asset, in the line's own order (the flow the operator knows), coloured by its worst alarm."""
    now = time.time()
    alarms = cfg.alarms(cfg.snapshot())
    health = {h.asset: h for h in line_health(cfg.store, cfg.line, now=now)}
    order = [a.id for a in cfg.line.assets] + [a for a in health if a not in {x.id for x in cfg.line.assets}]
    by_asset: dict[str, list[Alarm]] = {}
    for a in alarms:
        by_asset.setdefault(a.asset, []).append(a)
    cols = st.columns(len(order), gap="small")
    for col, asset in zip(cols, order):
        h = health[asset]
        own = [a for a in by_asset.get(asset, []) if not a.suppressed and not a.shelved]
        shelved = [a for a in by_asset.get(asset, []) if a.shelved and not a.suppressed]
        folded = len(by_asset.get(asset, [])) - len(own) - len(shelved)
        worst = min((a.priority for a in own), default=None)
        colour = charts.PRIORITY_COLOURS[worst] if worst else STATUS_COLOURS[h.status]
        status = f"{worst.name.lower()} alarm" if worst else {"alarm": "ok", "warning": "watch"}.get(h.status, h.status)
        lines = [f"{len(own)} alarm{'s' if len(own) != 1 else ''}" if own else "no alarms"]
        if folded:
            lines[0] += f" (+{folded} folded)"
        if shelved:
            lines.append(f"{len(shelved)} shelved until {hhmm(min(a.shelved_until for a in shelved))}")
        if h.anomalies and not own:
            lines.append("unusual readings")
        if h.last_reading:
            lines.append(f"data {ago(h.last_reading, now)}")
        col.markdown(
            f'<div class="fc-asset" style="border-left:6px solid {colour};background:rgba(128,128,128,0.07);'
            f'border-radius:6px;padding:6px 8px;min-height:86px;line-height:1.25">'
            f'<div style="font-weight:700;font-size:0.85rem">{html.escape(h.name)}</div>'
            f'<div style="color:{colour};font-weight:700;text-transform:uppercase;font-size:0.72rem">'
            f'{html.escape(status)}</div><div style="font-size:0.75rem;opacity:0.8">'
            f'{"<br>".join(html.escape(x) for x in lines)}</div></div>',
            unsafe_allow_html=True,
        )


# ---------------------------------------------------------------------------------------------- alarm list


@st.fragment(run_every=2)
def alarm_list() -> None:
    now = time.time()
    snap = cfg.snapshot()
    forget_refused(snap)
    alarms = cfg.alarms(snap)
    st.session_state["live_alarms"] = {a.alarm_id: a for a in alarms}
    situations = fold(alarms)
    if "alarm_id" not in st.session_state and situations:
        st.session_state["alarm_id"] = situations[0].root.alarm_id
    selected = st.session_state.get("alarm_id")
    rung = sum(1 for s in situations if not s.root.suppressed)
    folded = len(alarms) - len(situations)
    st.markdown(f"#### Alarms ({rung})" + (f" <span style='font-size:0.8rem;opacity:0.7'>+ {folded} folded "
                f"under their cause</span>" if folded else ""), unsafe_allow_html=True)
    gone = sorted(set(st.session_state.get("gone", {})) - {a.alarm_id for a in alarms})
    if gone:
        st.caption(f"Removed {', '.join(gone)}: the alarm engine does not hold it (left over from an earlier run).")
    if not alarms:
        st.success("No alarms need attention.")
        return
    if selected:  # the row being looked at stands out
        st.markdown(f"<style>.{key_class('row:' + selected)}{{border-color:#1f77b4 !important;"
                    f"box-shadow:inset 4px 0 0 #1f77b4}}</style>", unsafe_allow_html=True)
    for situation in situations:
        with st.container(border=True, key=f"row:{situation.root.alarm_id}"):
            alarm_row(situation.root, snap, now, selected)
            if situation.consequences:
                consequences(situation, snap, now, selected)


def alarm_row(alarm: Alarm, snap: Snapshot, now: float, selected: str | None) -> None:
    """One alarm: what it is, how bad, since when, and its buttons (in a row that keeps its size after Ack)."""
    st.markdown(
        f"{alarm_badge(alarm)} &nbsp;<b>{html.escape(plant_units(alarm.message or alarm.condition))}</b><br>"
        f"<span style='font-size:0.8rem;opacity:0.8'>{html.escape(asset_name(alarm.asset))}"
        f" · {html.escape(describe(alarm, now))}</span>",
        unsafe_allow_html=True,
    )
    no_feed = cfg.feed is None
    with st.container(horizontal=True, gap="small"):
        if st.button("Ack", key=f"ack:{alarm.alarm_id}", disabled=no_feed or alarm.state.acknowledged,
                     # a folded consequence is recorded, not rung: it does not call for the operator in red
                     type="primary" if not alarm.state.acknowledged and not alarm.suppressed else "secondary"):
            send(alarm, CommandKind.ACKNOWLEDGE)
        if alarm.shelved:
            if st.button("Unshelve", key=f"unshelve:{alarm.alarm_id}", disabled=no_feed):
                send(alarm, CommandKind.UNSHELVE)
        elif (choices := shelve_choices(actor())) and st.button(
                f"Shelve {shelve_for(choices)}", key=f"shelve:{alarm.alarm_id}", disabled=no_feed):
            send(alarm, CommandKind.SHELVE, choices[shelve_for(choices)])
        if st.button("Details" if selected != alarm.alarm_id else "Shown below", key=f"select:{alarm.alarm_id}",
                     disabled=selected == alarm.alarm_id):
            st.session_state["alarm_id"] = alarm.alarm_id
            st.rerun()
    sent = st.session_state.setdefault("commands", {}).get(alarm.alarm_id)
    if sent:
        command_reply(sent, snap, now)


def consequences(situation: Situation, snap: Snapshot, now: float, selected: str | None) -> None:
    """What the root alarm explains, folded (recorded, not rung): the operator unfolds it when wanted."""
    n = len(situation.consequences)
    with st.expander(f"{n} consequence{'s' if n != 1 else ''} of this alarm, folded",
                     key=f"fold:{situation.root.alarm_id}"):
        for child in situation.consequences:
            with st.container(key=f"child:{child.alarm_id}"):
                alarm_row(child, snap, now, selected)


def forget_refused(snap: Snapshot) -> None:
    """An alarm the engine says it does not hold is a ghost: drop it from the list, say so once."""
    gone = st.session_state.setdefault("gone", {})  # alarm id -> when the engine said it does not hold it
    for alarm_id, sent in st.session_state.get("commands", {}).items():
        reply = snap.replies.get(sent["request_id"])
        if reply and not reply.get("ok") and GONE in str(reply.get("message", "")):
            gone.setdefault(alarm_id, sent["sent"])


def send(alarm: Alarm, kind: CommandKind, shelve_s: float | None = None) -> None:
    command = kind.value  # the string the feed sends and the reply line names
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
        st.caption(f"✓ {sent['command']}: {reply.get('message') or 'done'}")
    else:
        # the engine's message already says "refused: ..."; the operator reads it once
        reason = re.sub(r"^(refused:\s*)+", "", str(reply.get("message") or "")).strip() or "no reason given"
        st.error(f"{sent['command'].replace('_', ' ').capitalize()} refused: {reason}")


# ---------------------------------------------------------------------------------------------- diagnosis


def selected_alarm() -> Alarm | None:
    alarm_id = st.session_state.get("alarm_id")
    if not alarm_id:
        return None
    return st.session_state.get("live_alarms", {}).get(alarm_id) or cfg.store.alarm(alarm_id)


@st.fragment(run_every=2)
def diagnosis_panel() -> None:
    """The selected alarm's diagnosis: safety first, then what to check first, the rest folded."""
    now = time.time()
    snap = cfg.snapshot()
    alarm = selected_alarm()
    if alarm is None:
        st.caption("Select an alarm (Open) to see what the copilot says about it.")
        return
    st.markdown(f"{alarm_badge(alarm)} &nbsp;**{html.escape(plant_units(alarm.message or alarm.condition))}**  \n"
                f"<span style='font-size:0.8rem;opacity:0.8'>{html.escape(asset_name(alarm.asset))} · "
                f"{html.escape(describe(alarm, now))}</span>", unsafe_allow_html=True)
    stored = cfg.store.diagnosis(alarm.alarm_id)
    live = snap.diagnoses.get(alarm.alarm_id)
    diagnosis = live if live and (stored is None or live.created_at >= stored.created_at) else stored
    streaming = snap.stream_text(alarm.alarm_id)
    writing = bool(streaming) and alarm.alarm_id not in snap.stream_done
    if diagnosis is not None:
        for s in diagnosis.safety:  # before anything else: what keeps people safe while they act
            st.warning(s, icon="⚠️")
    if streaming and (diagnosis is None or diagnosis.origin != "model") and (writing or diagnosis is None):
        # the model's summary as it is written; the runbook diagnosis below stands until the model's is complete
        st.markdown(badge("MODEL · WRITING", "#6a3d9a") + " &nbsp;the local model's diagnosis replaces the runbook's "
                    "when it is complete", unsafe_allow_html=True)
        st.markdown(html.escape(streaming) + (" ▌" if writing else ""))
    job = snap.diagnosis_jobs.get(alarm.alarm_id)
    if job and diagnosis is not None and diagnosis.origin == "model" and diagnosis.created_at >= float(job["since"]):
        job = None  # the model's diagnosis it was waiting for is here
    if diagnosis is None:
        if not model_wait(job, now, "model diagnosis") and not streaming:
            st.info("No diagnosis yet for this alarm.")
        return
    if diagnosis.origin == "model":
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
    model_wait(job, now, "model diagnosis")
    st.markdown(diagnosis.summary)
    checks = [s for s in diagnosis.steps if s.kind == "check"][:2]
    if checks:
        st.markdown("**Check first**")
        for step in checks:  # each opens on the runbook passage it comes from
            if step.runbook_id:
                with st.expander(f"{step.text}  ·  {step.runbook_id}", key=f"check:{alarm.alarm_id}:{step.runbook_id}:{step.text[:40]}"):
                    runbook_passage(step.runbook_id)
            else:
                st.markdown(f"- {step.text}")
    if diagnosis.causes:
        with st.expander(f"Likely causes ({len(diagnosis.causes)})", key=f"causes:{alarm.alarm_id}"):
            for rank, cause in enumerate(diagnosis.causes, 1):
                st.progress(min(1.0, max(0.0, cause.confidence)),
                            text=f"{rank}. {cause.title} — {cause.confidence:.0%}")
                cited = [f"{evidence_words(e.kind, e.ref)} {plant_units(e.detail)}".strip() for e in cause.evidence]
                if cited:
                    st.caption(" · ".join(cited))
    if diagnosis.steps:
        with st.expander(f"Recommended steps ({len(diagnosis.steps)})", key=f"steps:{alarm.alarm_id}"):
            for i, step in enumerate(diagnosis.steps, 1):
                st.markdown(f"{i}. {'Check' if step.kind == 'check' else 'Do'}: {step.text}"
                            + (f" · `{step.runbook_id}`" if step.runbook_id else ""))
    if alarm.anomaly and alarm.anomaly.contributions:
        with st.expander("Evidence", key=f"evidence:{alarm.alarm_id}"):
            st.altair_chart(charts.contribution_chart(
                {signal_label(cfg.line, tag): share for tag, share in alarm.anomaly.contributions.items()}), width="stretch",
                            key=f"contributions:{alarm.alarm_id}")
            evidence_trend(alarm, diagnosis, now)
    if diagnosis.would_change:
        st.caption("What would change this diagnosis: " + " ".join(diagnosis.would_change))
    if diagnosis.dropped_citations:
        st.caption(f"{diagnosis.dropped_citations} citation(s) without evidence were dropped.")


WAIT_COLOURS = {"waiting": "#6a3d9a", "quiet": "#ff7f0e", "dropped": "#757575"}


def model_wait(job: dict | None, now: float, what: str) -> bool:
    """Say where the model's job stands (queued, its place, about how long); False when there is nothing to say."""
    said = wait_words(job, now, what)
    if said is None:
        return False
    kind, words = said
    icon = "⏳ " if kind == "waiting" else ""
    st.markdown(f'<div class="fc-model-wait" style="font-size:0.85rem;border-left:4px solid {WAIT_COLOURS[kind]};'
                f'padding:2px 8px;margin:4px 0">{icon}{html.escape(words)}</div>', unsafe_allow_html=True)
    return True


def evidence_trend(alarm: Alarm, diagnosis, now: float) -> None:
    keys = list(alarm.anomaly.contributions)[:3] if alarm.anomaly else []
    keys += [e.ref for c in diagnosis.causes for e in c.evidence if e.kind == "signal" and e.ref not in keys]
    same_asset = [k.partition(".")[2] for k in keys if k.startswith(alarm.asset + ".")][:3]
    if not same_asset:
        return
    since_ts = alarm.raised_at - 600
    frame = charts.signal_frame(cfg.store, cfg.line, alarm.asset, since_ts, now, same_asset)
    if frame.empty:
        return
    windows = charts.anomaly_windows(cfg.store.anomalies(alarm.asset, since_ts, now))
    names = list(dict.fromkeys(frame["signal"]))
    for name, chart in zip(names, charts.signal_charts(frame, windows, charts.alarm_marks([alarm]), height=70,
                                                        modes=cfg.line.mode_names())):
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
    finish_answers(cfg.snapshot())
    for turn in cfg.store.conversation(alarm.alarm_id):
        with st.chat_message("user" if turn.role == "operator" else "assistant"):
            if turn.role == "copilot":
                copilot_text(turn.text)
            else:
                st.markdown(turn.text)
            who = turn.actor or ("copilot" if turn.role == "copilot" else "operator")
            st.caption(f"{who} · {clock(turn.ts)} UTC" + (f" · {turn.origin}" if turn.origin else ""))
    if any(a["alarm_id"] == alarm.alarm_id for a in asks.values()):  # only then a timer runs for them
        pending_answers(alarm.alarm_id)
    question = st.chat_input(f"Ask the copilot about {alarm.asset}…", key="ask", disabled=cfg.feed is None)
    if question and actor() is None:
        st.error("Log in to ask the copilot.")
    elif question:
        request_id = cfg.feed.ask(alarm.alarm_id, question, actor())
        cfg.store.add_turn(Turn(alarm.alarm_id, "operator", question, time.time(), actor(), request_id))
        asks[request_id] = {"alarm_id": alarm.alarm_id, "question": question}
        st.rerun()


def copilot_text(text: str) -> None:
    """A copilot answer; one given without the model says so in a badge."""
    if text.startswith(RUNBOOK_SEARCH):
        st.markdown(badge("RUNBOOK SEARCH · NO MODEL", "#455a64"), unsafe_allow_html=True)
        st.markdown(text[len(RUNBOOK_SEARCH):])
    else:
        st.markdown(text)


def finish_answers(snap: Snapshot) -> bool:
    """Answers that finished are written to the store once (it keeps one turn per request); True if any did."""
    asks = st.session_state.setdefault("asks", {})
    finished = False
    for request_id, ask in list(asks.items()):
        final = snap.answer_done.get(request_id)
        if final is not None:
            cfg.store.add_turn(Turn(ask["alarm_id"], "copilot", snap.answer_text(request_id), time.time(),
                                    request_id=request_id, origin=payloads.answer_origin(final)))
            del asks[request_id]
            finished = True
    return finished


@st.fragment(run_every=1)
def pending_answers(alarm_id: str) -> None:
    """The answers still coming, on their own: the runbook's at once, the model's words as they come, and where the
    model's job stands; the finished answer takes its place in the conversation without a reload."""
    asks = st.session_state.get("asks", {})
    snap = cfg.snapshot()
    if finish_answers(snap):
        st.rerun(scope="app")  # the conversation above is the store's: it shows the answer now
    now = time.time()
    for request_id, ask in asks.items():
        if ask["alarm_id"] != alarm_id:
            continue
        with st.chat_message("assistant"):
            first = snap.answer_first.get(request_id)
            tokens = snap.answer_tokens(request_id)
            if first:
                copilot_text(str(first["text"]))
            if tokens:
                st.markdown(badge("MODEL · WRITING", "#6a3d9a"), unsafe_allow_html=True)
                st.markdown(html.escape(tokens) + " ▌")
            job = snap.answer_jobs.get(request_id)
            if not model_wait(job, now, "model answer") and not first and not tokens:
                st.markdown("_sent; waiting for the copilot…_")


FEEDBACK_LABELS = {"confirmed": "Confirm the diagnosed cause", "false_alarm": "False alarm",
                   "other_cause": "Another cause"}


def feedback_tab(alarm: Alarm | None) -> None:
    """The operator's verdict on the alarm: sent over MQTT as the person logged in (the service authorises, audits
    and stores it, like an acknowledgement); what was given is read back from the store, the one record of it."""
    if alarm is None:
        st.caption("Select an alarm to give feedback on it.")
        return
    faults = open_faults(cfg.args.line)
    if cfg.feed is None:
        st.warning("Feedback goes to the service over the broker, and this dashboard has none (--mqtt-host): "
                   "it cannot be given here. What was given is below.")
    with st.form(f"feedback:{alarm.alarm_id}", clear_on_submit=True):
        verdict = st.radio("Verdict", FEEDBACK_VERDICTS, format_func=FEEDBACK_LABELS.get, horizontal=True,
                           key="fb_verdict")
        choices = ["(as diagnosed)"] + list(faults) + ["other (describe below)"]
        cause = st.selectbox("Actual cause", choices, key="fb_cause",
                             format_func=lambda c: f"{faults[c].name} ({c})" if c in faults else c)
        described = st.text_input("Cause in your words", key="fb_text")
        fix = st.text_area("What fixed it", key="fb_fix", height=80)
        if st.form_submit_button("Save feedback", type="primary", disabled=cfg.feed is None):
            actual = described.strip() or (cause if cause in faults else None)
            if verdict == "other_cause" and not actual:
                st.error("Name the other cause (pick one or describe it).")
            elif actor() is None:
                st.error("Log in to give feedback: it goes out as the person logged in.")
            elif not cfg.snapshot().connected:
                st.error(f"The broker {cfg.args.mqtt_host}:{cfg.args.mqtt_port} is unavailable: the feedback was not "
                         "sent. Try again when the header shows Live.")
            else:
                request_id = cfg.feed.feedback(alarm.alarm_id, verdict, actor(), actual, fix.strip() or None)
                st.session_state.setdefault("feedback_sent", {})[alarm.alarm_id] = {
                    "request_id": request_id, "command": "feedback", "sent": time.time(),
                    "false_alarm": verdict == "false_alarm"}
    feedback_given(alarm.alarm_id)
    fault = alarm.anomaly.fault_type if alarm.anomaly else None
    signals = list(alarm.anomaly.contributions) if alarm.anomaly else []
    similar = [i for i in cfg.store.similar(alarm.asset, fault, signals) if i.alarm_id != alarm.alarm_id]
    if similar:
        st.markdown("**Similar past incidents**")
        for i in similar:
            st.caption(f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(i.ts))} · {i.asset} · {i.verdict}"
                       f"{' — ' + i.actual_cause if i.actual_cause else ''}{' · fix: ' + i.fix if i.fix else ''}")


@st.fragment(run_every=2)
def feedback_given(alarm_id: str) -> None:
    """The service's reply to the feedback sent, then the alarm's feedback as the store holds it."""
    sent = st.session_state.get("feedback_sent", {}).get(alarm_id)
    if sent and cfg.feed is not None:
        snap = cfg.snapshot()
        reply = snap.replies.get(sent["request_id"])
        command_reply(sent, snap, time.time())
        if reply and reply.get("ok"):
            st.success("Feedback saved: the copilot will remember it for similar alarms."
                       + (" An engineer's `factory-copilot retune` raises the detector's thresholds from false "
                          "alarms." if sent["false_alarm"] else ""))
    for fb in reversed(cfg.store.feedback(alarm_id)):
        st.caption(f"{clock(fb.ts)} UTC · {fb.actor or 'operator'}: {FEEDBACK_LABELS[fb.verdict].lower()}"
                   f"{' — ' + fb.actual_cause if fb.actual_cause else ''}{' · fix: ' + fb.fix if fb.fix else ''}")


@st.fragment(run_every=5)
def trends_tab(alarm: Alarm | None) -> None:
    now = time.time()
    assets = [a.id for a in cfg.line.assets]
    start = assets.index(alarm.asset) if alarm and alarm.asset in assets else 0
    # one picker per alarm looked at: the trends follow the alarm the operator opens, and stay where they
    # put them while they look at it (a widget keeps what its browser copy says over what the script sets)
    asset = st.selectbox("Asset", assets, index=start, key=f"trend_asset:{alarm.alarm_id if alarm else ''}",
                         format_func=asset_name)
    since_ts = now - WINDOWS[st.session_state.get("window", "30 min")]
    frame = charts.signal_frame(cfg.store, cfg.line, asset, since_ts, now)
    if frame.empty:
        st.info(f"No readings for {asset_name(asset)} in this window.")
        return
    windows = charts.anomaly_windows(cfg.store.anomalies(asset, since_ts, now))
    raised = [e.alarm for e in cfg.store.alarm_history(asset=asset, since=since_ts) if e.event == "raised"]
    names = list(dict.fromkeys(frame["signal"]))
    for name, chart in zip(names, charts.signal_charts(frame, windows, charts.alarm_marks(raised),
                                                        modes=cfg.line.mode_names())):
        st.altair_chart(chart, width="stretch", key=f"trend:{asset}:{name}")
    st.caption("Times in UTC. Green: normal band for the line's mode at the time · blue: mean with min–max · red dots: "
               "outside the band · red shading: unusual readings · dashed rules: alarms, in their priority colour.")


# ---------------------------------------------------------------------------------------------- alarm system


def kpi_panel(now: float, window_s: float = 24 * 3600.0) -> None:
    """EEMUA 191's measures of the alarm system over the last 24 h (or since the store's first event)."""
    events = cfg.store.alarm_history(since=now - window_s, limit=100_000)
    if not events:
        st.caption("No alarms in the last 24 h.")
        return
    start = max(now - window_s, min(e.ts for e in events))
    k = alarm_kpis(events, start=min(start, now - 3600), end=now)  # at least an hour: a rate needs one
    c = st.columns(5)
    c[0].metric("Alarms per hour", f"{k.per_hour:.1f}", help=f"EEMUA 191 target: at most {TARGET_PER_HOUR:g} on average",
                delta=None if k.per_hour <= TARGET_PER_HOUR else "above target", delta_color="inverse")
    c[1].metric("Most in 10 min", k.peak_10min, help=f"EEMUA 191 target: at most {TARGET_PEAK_10MIN}",
                delta=None if k.peak_10min <= TARGET_PEAK_10MIN else "flood", delta_color="inverse")
    c[2].metric("Time in flood", f"{k.flood_share:.0%}", help="share of the time with more than 10 alarms in 10 min")
    c[3].metric("Standing", len(k.standing), help="alarms active and rung now")
    c[4].metric("Chattering", len(k.chattering), help="alarms rung 3 times or more within 60 s")
    st.caption(kpi_summary(k))
    if k.top:
        latest = {e.alarm_id: e.alarm for e in reversed(events)}  # newest last: its message wins
        st.dataframe([{"most frequent alarms": plant_units(latest[a].message or a) if a in latest else a,
                       "asset": asset_name(latest[a].asset) if a in latest else "", "times rung": n} for a, n in k.top],
                     hide_index=True, width="stretch",
                     column_config={"most frequent alarms": st.column_config.TextColumn(width="large")})


# the alarm system's parts read the store on their own, like the alarm list: a page left open follows the line, and
# says as of when, so a part that stopped can never pass for a quiet line
SYSTEM_EVERY_S = 10


def as_of(now: float) -> None:
    st.markdown(f'<span class="fc-as-of" style="font-size:0.8rem;opacity:0.7">As of {clock(now)} UTC</span>',
                unsafe_allow_html=True)


@st.fragment(run_every=SYSTEM_EVERY_S)
def alarm_kpis_live() -> None:
    now = time.time()
    as_of(now)
    kpi_panel(now)


@st.fragment(run_every=SYSTEM_EVERY_S)
def alarm_history_live() -> None:
    as_of(time.time())
    history_table()


def kpi_summary(k: AlarmKpis) -> str:
    """The KPIs against EEMUA 191's targets in one sentence (standing alarms are the current ones, not a verdict)."""
    period = f"{k.hours:.1f} h" if k.hours < 23.5 else "24 h"
    within = k.per_hour <= TARGET_PER_HOUR and k.peak_10min <= TARGET_PEAK_10MIN and k.flood_share <= TARGET_FLOOD_SHARE
    verdict = ("within EEMUA 191's targets" if within else "above EEMUA 191's targets") + (
        f" (at most {TARGET_PER_HOUR:g} per hour, {TARGET_PEAK_10MIN} in any 10 min, under "
        f"{TARGET_FLOOD_SHARE:.0%} of the time in flood)")
    extra = f"; {k.folded} consequence(s) folded under their cause, not rung" if k.folded else ""
    stale = f"; standing for over 24 h: {', '.join(k.stale)}" if k.stale else ""
    return f"Last {period}: {k.alarms} alarm(s) rung, {verdict}{extra}{stale}."


def history_table() -> None:
    events = cfg.store.alarm_history(limit=200)
    if not events:
        st.caption("No alarm history yet.")
        return
    st.dataframe(
        [{"time (UTC)": clock(e.ts), "asset": asset_name(e.alarm.asset), "alarm": plant_units(e.alarm.message or e.alarm.condition),
          "priority": e.alarm.priority.name.lower(), "event": e.event, "state": STATE_LABELS[e.state],
          "by": e.actor or ""} for e in events],
        hide_index=True, width="stretch",
        # widths in pixels that add up to less than the page is wide at 1,280 px: every column in view, whole
        column_config={
            "time (UTC)": st.column_config.TextColumn(width=68),
            "asset": st.column_config.TextColumn(width=180),
            "alarm": st.column_config.TextColumn(width=335),
            "priority": st.column_config.TextColumn(width=62),
            "event": st.column_config.TextColumn(width=98),
            "state": st.column_config.TextColumn(width=195),
            "by": st.column_config.TextColumn(width=55),
        },
    )


# ---------------------------------------------------------------------------------------------- page

STYLE = """<style>
.block-container{padding-top:3rem;padding-left:1.5rem;padding-right:1.5rem;max-width:none}
section[data-testid="stSidebar"]{width:220px !important;min-width:220px !important}
h4{margin:0.2rem 0 0.2rem 0}
div[data-testid="stMetricValue"]{font-size:1.4rem}
div[data-testid="stStatusWidget"]{visibility:hidden}
</style>"""


def main() -> None:
    st.set_page_config(page_title=f"Factory Copilot · {cfg.line.line}", layout="wide")
    login.require_login(cfg.args.users, f"Factory Copilot · {html.escape(cfg.line.site)} / {html.escape(cfg.line.line)}")
    st.markdown(STYLE, unsafe_allow_html=True)
    sidebar()
    header()
    overview()
    left, right = st.columns([10, 11], gap="medium")
    with left:
        alarm_list()
    with right:
        alarm = selected_alarm()
        diagnosis, trends, chat, feedback = st.tabs(["Diagnosis", "Trends", "Ask the copilot", "Feedback"],
                                                    key="panel")
        with diagnosis:
            diagnosis_panel()
        with trends:
            trends_tab(alarm)
        with chat:
            chat_tab(alarm)
        with feedback:
            feedback_tab(alarm)
    st.markdown("#### Alarm system")
    kpis, history, handover = st.tabs(["Alarm KPIs (EEMUA 191)", "Alarm history", "Shift handover"], key="system")
    with kpis:
        alarm_kpis_live()
    with history:
        alarm_history_live()
    with handover:
        handover_panel(cfg.store, cfg.feed, actor())


main()
