"""Listens to a Sparkplug B group and writes a starting line file from the births it sees.

Edge nodes already online publish their births only when asked, so for every edge node heard
without its NBIRTH the browser sends one ``Node Control/Rebirth`` (``rebirth=False`` only
listens). Each device becomes an asset (an edge node's own metrics one more), each metric with
a numeric or Boolean datatype a signal: unit from the ``engUnit`` property, source
``sparkplug: {group, edge_node, device, metric}``. The normal band is a placeholder around the
value the birth carried, marked TODO: only the plant engineer knows the real one. Control
metrics (``bdSeq``, ``Node Control/*``, ``Device Control/*``, ``Properties/*``) are left out.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as paho
import yaml

from factory_copilot.collect.draft import ident, proposed_band
from factory_copilot.config import MqttConnection
from factory_copilot.plumbing import sparkplug as spb
from factory_copilot.plumbing.mqtt import MqttSession, connection_of

log = logging.getLogger(__name__)

TODO = "  # TODO: normal running band (placeholder around the value in the birth)"
UNIT_KEYS = ("engUnit", "EngUnit", "engineeringUnits", "unit", "units")
CONTROL_PREFIXES = ("Node Control/", "Device Control/", "Properties/", "Node Info/")


@dataclass
class _Birth:
    group: str
    edge_node: str
    device: str | None
    metrics: list[spb.Metric] = field(default_factory=list)


class SparkplugBrowser:
    """Collects the births of one group; ``births`` maps (edge node, device or None) to the latest one."""

    def __init__(self, conn: MqttConnection, group: str, rebirth: bool = True):
        if not spb.valid_id(group):
            raise ValueError(f"{group!r} is not a Sparkplug group id")
        self.conn, self.group, self.rebirth = conn, group, rebirth
        self.births: dict[tuple[str, str | None], _Birth] = {}
        self.asked: set[str] = set()
        self.heard: set[str] = set()
        self.session: MqttSession | None = None
        self.undecodable = 0
        self._lock = threading.Lock()

    def listen(self, seconds: float) -> None:
        self.session = MqttSession(self.conn, role="sparkplug browse",
                                   subscriptions=[(spb.group_subscription(self.group), 1)], on_message=self._on_message)
        self.session.start()
        try:
            if not self.session.wait_connected(min(10.0, seconds + 5)):
                raise ConnectionError(f"no MQTT broker answers at {self.conn.host}:{self.conn.port}")
            time.sleep(seconds)
        finally:
            self.session.stop()

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        where = spb.Topic.parse(msg.topic)
        if where is None or where.kind in ("NCMD", "DCMD"):
            return
        try:
            payload = spb.decode(bytes(msg.payload))
        except ValueError:
            self.undecodable += 1
            return
        with self._lock:
            self.heard.add(where.edge_node)
            if where.kind == "NBIRTH":
                for key in [k for k in self.births if k[0] == where.edge_node]:
                    del self.births[key]  # a new session: its devices will birth again
                self.births[(where.edge_node, None)] = _Birth(where.group, where.edge_node, None, list(payload.metrics))
            elif where.kind == "DBIRTH" and (where.edge_node, None) in self.births:
                self.births[(where.edge_node, where.device)] = _Birth(where.group, where.edge_node, where.device,
                                                                      list(payload.metrics))
            elif (where.edge_node, None) not in self.births and self.rebirth and where.edge_node not in self.asked:
                self.asked.add(where.edge_node)
                log.info("asking edge node %s/%s for its births (Rebirth)", self.group, where.edge_node)
                if self.session is not None:
                    self.session.publish(spb.topic(self.group, "NCMD", where.edge_node), spb.rebirth_request(), qos=0)

    def line_file(self, url: str, site: str = "TODO-site", line: str = "TODO-line") -> str:
        """YAML text of a line file for what was heard."""
        assets: list[dict] = []
        taken: set[str] = set()
        with self._lock:
            births = sorted(self.births.values(), key=lambda b: (b.edge_node, b.device or ""))
        for b in births:
            signals = []
            names: set[str] = set()
            for m in b.metrics:
                s = self._signal(b, m)
                if s is None:
                    continue
                while s["name"] in names:
                    s["name"] += "_2"
                names.add(s["name"])
                signals.append(s)
            if not signals:
                continue
            aid = ident(b.device or b.edge_node)
            if aid in taken:
                aid = ident(f"{b.edge_node}_{b.device or 'node'}")
            taken.add(aid)
            title = f"{b.device} on {b.edge_node}" if b.device else f"edge node {b.edge_node}"
            assets.append({"id": aid, "name": title, "signals": signals})
        mqtt: dict = {"host": self.conn.host, "port": self.conn.port}
        if self.conn.tls:
            mqtt["tls"] = True
        body = {
            "site": site,
            "line": line,
            "description": f"browsed from {url} (Sparkplug group {self.group})",
            "mqtt": mqtt,
            "service": {"source": "sparkplug"},
            "assets": assets,
        }
        text = yaml.safe_dump(body, sort_keys=False, default_flow_style=None, width=120, allow_unicode=True)
        heard_unborn = sorted(self.heard - {e for e, _ in self.births})
        header = f"# Line file browsed from {url}, Sparkplug group {self.group}; check every TODO before use.\n"
        if heard_unborn:
            header += f"# TODO: heard edge node(s) {', '.join(heard_unborn)} but saw no birth; browse again longer.\n"
        return header + "\n".join(ln + TODO if ln.lstrip().startswith("normal:") else ln for ln in text.splitlines()) + "\n"

    @staticmethod
    def _signal(b: _Birth, m: spb.Metric) -> dict | None:
        if not m.name or m.name == spb.BDSEQ or m.name.startswith(CONTROL_PREFIXES):
            return None
        datatype = m.datatype or 0
        if datatype not in spb.PROCESS_TYPES:
            return None
        unit = "TODO"
        for key in UNIT_KEYS:
            prop = spb.property_of(m, key)
            text = spb.property_text(prop) if prop is not None else None
            if text:
                unit = text
                break
        value = None
        if not m.is_null:
            try:
                value = spb.metric_value(m, datatype)
            except spb.NotAProcessValue:
                value = None
        low, high = proposed_band(value)
        source = {"group": b.group, "edge_node": b.edge_node}
        if b.device:
            source["device"] = b.device
        source["metric"] = m.name
        return {"name": ident(m.name), "unit": unit, "normal": [low, high], "source": {"sparkplug": source}}


def browse_sparkplug(url: str, group: str, *, seconds: float = 10.0, rebirth: bool = True, site: str = "TODO-site",
                     line: str = "TODO-line", username: str | None = None, password: str | None = None) -> str:
    """YAML text of a line file from the births of ``group`` heard at ``url`` within ``seconds``."""
    browser = SparkplugBrowser(connection_of(url, username, password), group, rebirth)
    browser.listen(seconds)
    if not browser.births:
        raise LookupError(f"no Sparkplug birth from group {group!r} at {url} within {seconds:g} s"
                          + (f" (heard {', '.join(sorted(browser.heard))} but no birth)" if browser.heard else ""))
    return browser.line_file(url, site, line)
