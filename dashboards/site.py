"""The site page: every line of the site at a glance, for the person signed in: its health, its standing and
unacknowledged alarms by priority, its EEMUA 191 figures for the shift, and a click through to its operator page.

Where each figure comes from, and why:

* Live state from the site's MQTT broker, where every bridged line's retained ``status`` and alarm states arrive
  (``broker init --bridge-line SITE/LINE``). Retained messages are what the line's alarm engine says now, to any
  subscriber that connects late, with no query and no copy of the engine's state: one subscription per line, the
  same topics and payloads the operator page reads. The status is the service's heartbeat (``status/1``, said
  again every ``every_s`` with its /health reasons), so a line is ok, degraded (and what is down), or offline:
  its last will said so, or no heartbeat came for ``STALE_BEATS`` of its periods (the service, its broker or the
  WAN is gone; the bridge's queue brings what was missed once it is back).
* The shift's EEMUA 191 figures from the site's PostgreSQL (the line file's ``store.url``): rates need the
  shift's whole alarm history, which the broker does not keep (events are not retained). Computed by
  ``alarms/kpi.py``, as the operator page and the handover compute them. A line whose history stays on its edge
  box (SQLite) says so instead of showing figures from part of the shift.

Who sees what: with log-ins (``--users``) a person sees the lines whose ``roles:`` name them (a line without
``roles:`` lets everyone the broker logs in act on it, so everyone sees it); without, the page is read-only and
shows every line, as the operator page does. The operator page of a line is this app with ``?line=SITE/LINE``.
"""

from __future__ import annotations

import argparse
import copy
import html
import json
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import streamlit as st

from dashboards import login
from factory_copilot.alarms.kpi import TARGET_FLOOD_SHARE, TARGET_PEAK_10MIN, TARGET_PER_HOUR, AlarmKpis, alarm_kpis
from factory_copilot.config import LineConfig, MqttConnection, load_line
from factory_copilot.names import DEFAULT_PREFIX
from factory_copilot.plumbing.logs import Throttled
from factory_copilot.plumbing.mqtt import MqttSession
from factory_copilot.records import Alarm, Priority
from factory_copilot.publish.topics import Topics, parse
from factory_copilot.shift.calendar import shift_at
from factory_copilot.store.store import PostgresStore, line_id

log = logging.getLogger(__name__)
_unanswered = Throttled(log, 30.0)  # the site's database away: said once per 30 s, not at every refresh

STALE_BEATS = 3  # heartbeats missed before a line counts as offline
clock = time.time  # the page's clock (a test moves it on rather than wait for a line to go quiet)
SHIFT_WITHOUT_SHIFTS_S = 8 * 3600.0  # a line without ``shifts:``: its figures over the last 8 h


# ---------------------------------------------------------------------------------------------- the broker


@dataclass
class LineState:
    """What the broker has said of one line."""

    status: dict[str, Any] | None = None
    heard: float | None = None  # when the page received the status (the page's clock)
    alarms: dict[str, Alarm] = field(default_factory=dict)


@dataclass
class SiteSnapshot:
    connected: bool = False
    lines: dict[str, LineState] = field(default_factory=dict)  # "site/line" -> what the broker said
    rejected: int = 0


class SiteFeed:
    """One MQTT session on the site broker following the status and alarm states of the lines given."""

    instances: ClassVar[list["SiteFeed"]] = []  # lets a test stop the feeds a page built

    def __init__(self, conn: MqttConnection, lines: list[LineConfig], prefix: str = DEFAULT_PREFIX):
        self.topics = {line_id(c): Topics(c.site, c.line, prefix) for c in lines}
        self.prefix = prefix
        self._lock = threading.Condition()
        self._snap = SiteSnapshot(lines={k: LineState() for k in self.topics})
        subs = [(t.status(), 1) for t in self.topics.values()] + [(t.all_alarms(), 1) for t in self.topics.values()]
        self.session = MqttSession(conn, role="site-dashboard", subscriptions=subs, on_message=self._on_message,
                                   on_up=lambda: self._set_connected(True), on_down=lambda why: self._set_connected(False))
        SiteFeed.instances.append(self)

    def start(self) -> "SiteFeed":
        self.session.start()
        return self

    def stop(self) -> None:
        self.session.stop()
        if self in SiteFeed.instances:
            SiteFeed.instances.remove(self)

    def snapshot(self) -> SiteSnapshot:
        with self._lock:
            return copy.deepcopy(self._snap)

    def wait_for(self, predicate, timeout: float) -> bool:
        """Block until ``predicate(snapshot)`` holds (True) or ``timeout`` passes (False)."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self._snap), timeout)

    def _set_connected(self, up: bool) -> None:
        with self._lock:
            self._snap.connected = up
            self._lock.notify_all()

    def _on_message(self, msg) -> None:  # paho's thread: only the snapshot, under the lock
        parts = parse(msg.topic, self.prefix)
        if parts is None:
            return
        key = f"{parts.site}/{parts.line}"
        try:
            body = json.loads(msg.payload) if msg.payload else None
            with self._lock:
                state = self._snap.lines.get(key)
                if state is None:
                    return
                if parts.kind == "status":
                    state.status, state.heard = (body if isinstance(body, dict) else None), time.time()
                elif parts.kind == "alarm" and body is None:
                    state.alarms.pop(parts.alarm_id, None)
                elif parts.kind == "alarm":
                    state.alarms[parts.alarm_id] = Alarm.from_dict(body)
                self._lock.notify_all()
        except Exception as exc:  # one unreadable message costs that message; the other lines keep flowing
            with self._lock:
                self._snap.rejected += 1
            log.warning("site page: skipped message on %s: %s", msg.topic, exc)


# ---------------------------------------------------------------------------------------------- what a line shows


@dataclass
class Health:
    kind: str  # "ok", "degraded", "offline", "unknown"
    words: str
    reasons: list[str] = field(default_factory=list)


def health_of(state: LineState, now: float) -> Health:
    """ok / degraded with what is down / offline (its will, or no heartbeat for STALE_BEATS periods) / unknown."""
    s = state.status
    if s is None:
        return Health("unknown", "no status from this line on the site broker (never bridged, or never started)")
    ts = float(s.get("ts") or 0.0)
    # the line's clock, but never later than the page heard it: a status from an edge clock ahead still ages
    said = min(ts, state.heard) if state.heard is not None and ts else (ts or state.heard or 0.0)
    if s.get("state") == "offline":
        return Health("offline", f"the copilot service stopped at {_hhmm(said)} UTC (its last will or its goodbye)")
    every = s.get("every_s")
    if isinstance(every, (int, float)) and every > 0 and now - said > STALE_BEATS * every:
        return Health("offline", f"no word since {_hhmm(said)} UTC ({_lasting(now - said)}): the service, its broker "
                                 "or the link to the site is down")
    reasons = [str(r) for r in s.get("reasons") or []]
    if s.get("health") == "degraded" or reasons:
        return Health("degraded", "; ".join(reasons) or "degraded", reasons)
    if s.get("health") == "ok":
        return Health("ok", f"as of {_hhmm(said)} UTC")
    return Health("ok", f"online since {_hhmm(float(s.get('started_at') or said))} UTC (its health not said yet)")


@dataclass
class AlarmCounts:
    standing: Counter = field(default_factory=Counter)  # Priority -> active alarms that are rung
    unacknowledged: Counter = field(default_factory=Counter)  # Priority -> rung alarms nobody acknowledged
    shelved: int = 0
    folded: int = 0


def alarm_counts(alarms: list[Alarm]) -> AlarmCounts:
    """Standing (active) and unacknowledged alarms by priority; shelved, out of service and folded ones apart."""
    c = AlarmCounts()
    for a in alarms:
        if a.suppressed:
            c.folded += 1
        elif a.shelved or a.out_of_service:
            c.shelved += 1
        else:
            if a.state.active:
                c.standing[a.priority] += 1
            if not a.state.acknowledged:
                c.unacknowledged[a.priority] += 1
    return c


def covers(line: LineConfig, user: str | None, logins: bool) -> bool:
    """Whether ``user`` sees ``line``: without log-ins everyone (read-only); else a role of the line names them,
    or the line has no ``roles:`` (then everyone the broker logs in may act on it)."""
    if not logins:
        return True
    if user is None:
        return False
    return line.roles is None or bool(line.roles.of(user))


def shift_of(line: LineConfig, now: float) -> tuple[float, str]:
    """When the shift running now began, and its name: the line's ``shifts:``, else the last 8 hours."""
    if line.shifts:
        w = shift_at(line, now)
        return w.start, f"{w.name} shift since {_hhmm(w.start)} UTC"
    return now - SHIFT_WITHOUT_SHIFTS_S, "last 8 h (the line file names no shifts)"


def shift_figures(store, line: LineConfig, now: float) -> tuple[AlarmKpis, str]:
    """EEMUA 191's figures for the shift so far, from the line's history (at least 10 min, so a rate has a base)."""
    start, label = shift_of(line, now)
    events = store.alarm_history(since=start, limit=100_000)
    return alarm_kpis(events, start=min(start, now - 600.0), end=now), label


# ---------------------------------------------------------------------------------------------- words


PRIORITY_ORDER = sorted(Priority, key=int)


def _hhmm(ts: float) -> str:
    return time.strftime("%H:%M", time.gmtime(ts))


def _lasting(s: float) -> str:
    s = max(0, int(s))
    return f"{s} s" if s < 60 else f"{s // 60} min" if s < 3600 else f"{s // 3600} h {s % 3600 // 60} min"


def by_priority(counts: Counter) -> str:
    """"1 critical, 2 high" (most urgent first), or "none"."""
    return ", ".join(f"{counts[p]} {p.name.lower()}" for p in PRIORITY_ORDER if counts.get(p)) or "none"


def figures_words(k: AlarmKpis) -> str:
    within = k.per_hour <= TARGET_PER_HOUR and k.peak_10min <= TARGET_PEAK_10MIN and k.flood_share <= TARGET_FLOOD_SHARE
    return (f"{k.per_hour / 6:.1f} alarms per 10 min on average, at most {k.peak_10min} in 10 min, "
            f"{k.flood_share:.0%} of the time in flood: {'within' if within else 'above'} EEMUA 191's targets "
            f"(1 per 10 min, {TARGET_PEAK_10MIN} in 10 min, under {TARGET_FLOOD_SHARE:.0%} in flood)")


HEALTH_COLOURS = {"ok": "#2ca02c", "degraded": "#ff7f0e", "offline": "#d62728", "unknown": "#9e9e9e"}


def card(line: LineConfig, health: Health, counts: AlarmCounts, figures: str) -> str:
    """One line's card, as HTML: name, health, alarms by priority, the shift's figures."""
    key = line_id(line)
    title = line.description.split(":")[0] or line.line
    extra = []
    if counts.shelved:
        extra.append(f"{counts.shelved} shelved or out of service")
    if counts.folded:
        extra.append(f"{counts.folded} folded under their cause")
    colour = HEALTH_COLOURS[health.kind]
    return (
        f'<div class="fc-site-line" data-line="{html.escape(key)}" data-health="{health.kind}" '
        f'style="border-left:6px solid {colour};padding:0.4rem 0.8rem;margin-bottom:0.6rem">'
        f'<div style="font-size:1.15rem;font-weight:700">{html.escape(title)} '
        f'<span style="font-weight:400;opacity:0.7">{html.escape(key)}</span></div>'
        f'<div class="fc-health"><span style="color:{colour}">●</span> <b>{health.kind.upper()}</b> · '
        f'{html.escape(health.words)}</div>'
        f'<div class="fc-standing">Standing: {html.escape(by_priority(counts.standing))}</div>'
        f'<div class="fc-unacked">Not acknowledged: {html.escape(by_priority(counts.unacknowledged))}</div>'
        + (f'<div style="opacity:0.8">{html.escape(", ".join(extra))}</div>' if extra else "")
        + f'<div class="fc-figures" style="font-size:0.9rem">{html.escape(figures)}</div></div>'
    )


# ---------------------------------------------------------------------------------------------- the page


def _open_lines(paths: tuple[str, ...]) -> list[LineConfig]:
    return [load_line(p) for p in paths]


def _open_feed(host: str, port: int, protocol: str, paths: tuple[str, ...], prefix: str,
               _base: MqttConnection | None) -> SiteFeed:
    # the first line file's MQTT settings (TLS, CA) apply; host and port come from the command line, the
    # page's own account from the environment, as for the operator page
    update = {"host": host, "port": port, "protocol": protocol, "client_id": None}
    if os.environ.get("FACTORY_COPILOT_MQTT_USERNAME"):
        update.update(username=os.environ["FACTORY_COPILOT_MQTT_USERNAME"],
                      password=os.environ.get("FACTORY_COPILOT_MQTT_PASSWORD"))
    conn = (_base or MqttConnection()).model_copy(update=update)
    return SiteFeed(conn, open_lines(paths), prefix).start()


def _open_history(url: str, line: str) -> PostgresStore:
    return PostgresStore(url, line, read_only=True)


open_lines = st.cache_resource(_open_lines)
open_feed = st.cache_resource(_open_feed)
open_history = st.cache_resource(_open_history)
FIGURES_EVERY_S = 10.0  # the shift's figures move slowly; the database is asked once per 10 s per line
_figures: dict[str, tuple[float, str]] = {}  # line id -> (when, the words), shared by the page's sessions


def figures_of(line: LineConfig, now: float) -> str:
    key = line_id(line)
    if line.store is None or not line.store.url:
        return "EEMUA 191 figures: this line's history stays on its edge box (no store.url in its line file)"
    cached = _figures.get(key)
    if cached and now - cached[0] < FIGURES_EVERY_S:
        return cached[1]
    try:
        k, label = shift_figures(open_history(line.store.url, key), line, now)
        words = f"EEMUA 191, {label}: {k.alarms} alarm(s); {figures_words(k)}"
    except Exception as exc:  # the database away costs the figures, never the page
        _unanswered.warning(key, "site page: no EEMUA figures for %s: %s", key, exc)
        words = f"EEMUA 191 figures unavailable: the site's history did not answer ({type(exc).__name__})"
    _figures[key] = (now, words)
    return words


def route(args):
    """The site page (the script stops there), or the options of the operator page ``?line=`` names when the person
    signed in may see that line."""
    lines = open_lines(tuple(args.site))
    st.set_page_config(page_title="Factory Copilot · site", layout="wide")
    user = login.require_login(args.users, "Factory Copilot · site")
    wanted = st.query_params.get("line")
    if wanted:
        line = next((c for c in lines if line_id(c) == wanted), None)
        if line is not None and covers(line, user, bool(args.users)):
            return argparse.Namespace(**{**vars(args), "line": str(line.path)})
        st.error(f"Line {wanted} is not one of the lines you see on this site page.")
    page(args, lines, user)
    st.stop()


def back_to_site() -> None:
    """On a line's operator page opened from the site page: the way back."""
    if st.button("← All lines of the site", key="site-back"):
        st.query_params.clear()
        st.rerun()


def page(args, lines: list[LineConfig], user: str | None) -> None:
    visible = [c for c in lines if covers(c, user, bool(args.users))]
    with st.sidebar:
        st.markdown("### Site")
        login.sidebar_user(args.users)
    feed = (open_feed(args.mqtt_host, args.mqtt_port, args.mqtt_protocol, tuple(args.site), args.topic_prefix,
                      lines[0].mqtt if lines else None) if args.mqtt_host else None)
    sites = ", ".join(dict.fromkeys(c.site for c in visible)) or "no line"
    st.markdown(f"## {html.escape(sites)} · {len(visible)} line{'s' if len(visible) != 1 else ''}")
    if not visible:
        st.info("None of the site's lines names you in its roles: ask your supervisor to add you to a line's "
                "operators or supervisors.")
        return
    if feed is None:
        st.warning("No site broker given (--mqtt-host): the lines' health and alarms are not known.")
    site_lines(feed, visible)


@st.fragment(run_every=2)
def site_lines(feed: SiteFeed | None, lines: list[LineConfig]) -> None:
    now = clock()
    snap = feed.snapshot() if feed else SiteSnapshot()
    state = ("Broker not reachable; retrying" if feed and not snap.connected else
             f"Live · as of {time.strftime('%H:%M:%S', time.gmtime(now))} UTC" if feed else "Not live")
    st.markdown(f'<span class="fc-site-connection">{html.escape(state)}</span>', unsafe_allow_html=True)
    for line in lines:
        key = line_id(line)
        s = snap.lines.get(key, LineState())
        health = health_of(s, now) if feed and snap.connected else Health("unknown", "the site broker is not reachable")
        with st.container(key=f"site-line:{key}"):
            st.markdown(card(line, health, alarm_counts(list(s.alarms.values())), figures_of(line, now)),
                        unsafe_allow_html=True)
            if st.button(f"Open the operator page of {line.line}", key=f"open:{key}"):
                st.query_params["line"] = key
                st.rerun(scope="app")
