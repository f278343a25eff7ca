"""The line description: one site/line, its assets and signals, and how to reach them.

Loaded from YAML and validated with pydantic; every mistake is reported with its
path in the file (``assets[2].signals[0].unit: Field required``) so a plant
engineer can fix the file without reading our code.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import math
import os
import re
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)

from factory_copilot.records import DEFAULT_MODE, CommandKind, Priority
from factory_copilot.errors import GiveUp
from factory_copilot.names import DEFAULT_PREFIX

# a priority as a line file or a catalogue writes it: low|medium|high|critical or 1-4
PriorityName = Annotated[Priority, BeforeValidator(Priority.parse)]

REPO_ROOT = Path(__file__).resolve().parents[2]
# the demo line, its fault catalogue and runbooks ship inside the package, so an installed wheel has them too
SEEDS_DIR = Path(os.environ.get("FACTORY_COPILOT_SEEDS") or str(importlib.resources.files("factory_copilot") / "seeds"))
SIMULATED_LINE = SEEDS_DIR / "lines" / "packaging_line.yaml"


def demo_state_dir() -> Path:
    """Where the demo keeps its state (relative to where it runs): the default of the commands that read it."""
    return Path(os.environ.get("FACTORY_COPILOT_DEMO_DIR") or "var/demo")
SIMULATED_FAULTS = SEEDS_DIR / "faults.yaml"  # the simulator injects these (the demo line names them too)


class LineConfigError(GiveUp, ValueError):
    """A line file that cannot be used; the message names the file and every bad field."""

    def __init__(self, path: str | Path, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: " + ("; ".join(problems) if len(problems) == 1 else "\n  " + "\n  ".join(problems)))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Range = tuple[float, float]


class MqttSource(_Strict):
    """A signal carried in a JSON field of an MQTT message.

    Several signals may share a topic (the usual gateway layout: one JSON object per sample with a
    field per signal); ``field`` may be a dotted path into nested objects (``data.pump.flow``).
    """

    topic: str
    field: str = "value"
    # optional JSON fields carrying the sample time and OPC UA-style quality
    timestamp_field: str | None = "ts"
    quality_field: str | None = "quality"


class SparkplugSource(_Strict):
    """A signal published as one metric of a Sparkplug B edge node (``device`` None: a node-level metric)."""

    group: str
    edge_node: str
    device: str | None = None
    metric: str  # the metric's name as its birth declares it, folders included ("Motor/Current")

    @field_validator("group", "edge_node", "device")
    @classmethod
    def _sparkplug_id(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "/+#")):
            raise ValueError(f"{v!r} is not a Sparkplug id (non-empty, without '/', '+' or '#')")
        return v

    @field_validator("metric")
    @classmethod
    def _metric_name(cls, v: str) -> str:
        if not v:
            raise ValueError("a metric name cannot be empty")
        return v


class SignalSource(_Strict):
    opcua: str | None = None  # node id, e.g. "ns=2;s=product_pump.flow"
    mqtt: MqttSource | None = None
    sparkplug: SparkplugSource | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "SignalSource":
        if not self.opcua and not self.mqtt and not self.sparkplug:
            raise ValueError("a signal needs an opcua node id, an mqtt topic or a sparkplug metric")
        return self


class SignalCheckSwitches(_Strict):
    """Which single-signal checks watch a signal (all by default); a signal flat by design opts out of ``stuck``."""

    limit: bool = True
    rate: bool = True
    stuck: bool = True
    range: bool = True
    quality: bool = True
    unseen: bool = True  # a signal the detector leaves out (a standby pump) alarms at a value its history never held


class Signal(_Strict):
    name: str
    unit: str
    normal: Range  # normal band while the line produces (its production modes)
    modes: dict[str, Range] = Field(default_factory=dict)  # normal band in another declared mode, by mode name
    limits: Range | None = None  # engineering alarm limits (low, high)
    physical: Range | None = None  # what the sensor can physically read; outside is a sensor fault
    max_rate: float | None = None  # largest credible change per second
    priority: PriorityName | None = None
    source: SignalSource
    description: str = ""
    checks: SignalCheckSwitches = Field(default_factory=SignalCheckSwitches)  # e.g. {stuck: false}

    @field_validator("normal", "limits", "physical")
    @classmethod
    def _ordered(cls, v: Range | None) -> Range | None:
        if v is not None and v[0] > v[1]:
            raise ValueError(f"low {v[0]} is above high {v[1]}")
        return v

    @field_validator("modes")
    @classmethod
    def _ordered_modes(cls, v: dict[str, Range]) -> dict[str, Range]:
        for name, band in v.items():
            if band[0] > band[1]:
                raise ValueError(f"{name}: low {band[0]} is above high {band[1]}")
        return v

    def normal_for(self, mode: str | None) -> Range:
        """The normal band in ``mode`` (a mode without a band of its own keeps the production band)."""
        return self.modes.get(str(mode), self.normal) if mode is not None else self.normal


ALARM_DESIGN = {"criticality", "priority", "feeds", "operator_position"}  # asset fields that shape alarms only


class Asset(_Strict):
    id: str
    name: str
    kind: str = ""
    # how bad it is when this asset's fault runs its course (low, medium, high, critical): the consequence
    # half of an alarm's priority (docs/alarms.md); ``priority`` is its older name, read when it is absent
    criticality: PriorityName | None = None
    priority: PriorityName = Priority.MEDIUM
    feeds: list[str] = []  # the assets this one feeds (product, containers, air, ...): the line's flow
    operator_position: str = "main"
    signals: list[Signal]

    @property
    def consequence(self) -> Priority:
        """The asset's criticality (its older ``priority`` when the file gives none)."""
        return self.criticality or self.priority

    @model_validator(mode="after")
    def _unique_signals(self) -> "Asset":
        seen: set[str] = set()
        for s in self.signals:
            if s.name in seen:
                raise ValueError(f"signal {s.name!r} appears twice in asset {self.id!r}")
            seen.add(s.name)
        return self

    def signal(self, name: str) -> Signal:
        for s in self.signals:
            if s.name == name:
                return s
        raise KeyError(f"{self.id}.{name}")


class OpcuaConnection(_Strict):
    endpoint: str = "opc.tcp://127.0.0.1:4840/factory-copilot/"
    security: Literal["none", "basic256sha256_sign_encrypt"] = "none"
    username: str | None = None
    password: str | None = None
    certificate: str | None = None  # client certificate (DER/PEM); made on first use if missing
    private_key: str | None = None
    server_certificate: str | None = None  # the server certificate we trust
    publishing_interval_ms: float = 100.0
    sampling_interval_ms: float = 100.0
    queue_size: int = 10
    timeout_s: float = 4.0


class MqttConnection(_Strict):
    host: str = "127.0.0.1"
    port: int = 1883
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive_s: int = 30
    max_payload_bytes: int = 65536


class SparkplugHost(_Strict):
    """How the service reads Sparkplug B edge nodes: as a host application (Sparkplug 3.0, reads 2.2 nodes too)."""

    mqtt: MqttConnection | None = None  # the Sparkplug broker; None: the line's mqtt connection
    host_id: str | None = None  # STATE topic id; None: factory-copilot-<site>-<line>
    rebirth: bool = True  # ask an edge node for its births on a gap, an unknown alias or data before birth
    rebirth_min_interval_s: float = Field(5.0, ge=0)  # at most one Rebirth request per edge node this often
    reorder_timeout_s: float = Field(2.0, ge=0)  # a missing seq may still arrive this long before it is a gap
    device_birth_timeout_s: float = Field(5.0, gt=0)  # a mapped device without DBIRTH this long after NBIRTH: lost
    legacy_state: bool = False  # also publish 2.2's STATE/<host_id> ONLINE/OFFLINE (a second connection)

    @field_validator("host_id")
    @classmethod
    def _host_id(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "/+#")):
            raise ValueError(f"{v!r} is not a Sparkplug host id (non-empty, without '/', '+' or '#')")
        return v


class SampleChecks(_Strict):
    """What the collectors accept as a plausible sample, and when a silent signal counts as lost."""

    max_future_s: float = Field(5.0, gt=0)  # stamped further ahead of the clock: rejected (clock_skew)
    max_age_s: float = Field(86400.0, gt=0)  # stamped further back: rejected (clock_skew)
    # a sample for a row already evaluated counts for the current row if at most this late (a lagging source
    # clock, a gateway that sends in batches), else it is dropped and counted
    max_late_s: float = Field(5.0, ge=0)
    # no sample for this many sampling intervals: the signal is stale; None for sources that report by
    # exception (a value that does not change is not sent), where only a lost connection means lost data
    stale_after_intervals: int | None = Field(5, ge=1)


class OperatingModes(_Strict):
    """The machine's own operating modes and how to tell them apart, from one signal.

    Either a mode signal whose values name the mode (``codes: {0: idle, 2: running}``), or a
    load/setpoint signal whose ranges do (``ranges: {night: [4, 8], day: [10, 16]}``). A value
    between two ranges (healthy running at a duty point between regimes) belongs to the nearer
    one; the detector judges it by the load itself, continuously, not by the regime's name.
    """

    signal: str  # "asset.signal"
    codes: dict[int, str] | None = None
    ranges: dict[str, Range] | None = None
    # where the line produces: stuck checks run and every limit applies; default: every range,
    # or the coded modes in which no signal declares a band of its own
    production: list[str] | None = None
    hysteresis: float = Field(0.1, ge=0, lt=0.5)  # ranges: share of the gap to the next range a value must cross

    @field_validator("signal")
    @classmethod
    def _key(cls, v: str) -> str:
        if v.count(".") < 1 or not all(v.partition(".")[::2]):
            raise ValueError(f"{v!r} is not an 'asset.signal' key")
        return v

    @field_validator("codes", "ranges", mode="before")
    @classmethod
    def _no_empty(cls, v: Any) -> Any:
        if v is not None and not v:
            raise ValueError("declares no modes")
        return v

    @model_validator(mode="after")
    def _one_way(self) -> "OperatingModes":
        if (self.codes is None) == (self.ranges is None):
            raise ValueError("give either codes (a mode signal's values) or ranges (of a load or setpoint signal)")
        if self.codes is not None:
            names = list(self.codes.values())
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"codes: mode {twice[0]!r} has two codes")
            for name in names:
                _mode_name(name)
        else:
            spans = sorted(self.ranges.items(), key=lambda kv: kv[1][0])
            for name, (lo, hi) in spans:
                _mode_name(name)
                if lo > hi:
                    raise ValueError(f"ranges.{name}: low {lo} is above high {hi}")
            for (a, (_, ahi)), (b, (blo, _)) in zip(spans, spans[1:]):
                if blo <= ahi:
                    raise ValueError(f"ranges: {a} and {b} overlap")
        unknown = [m for m in self.production or [] if m not in self.names]
        if unknown:
            raise ValueError(f"production: unknown mode {unknown[0]!r}; declared: {', '.join(self.names)}")
        return self

    @property
    def names(self) -> list[str]:
        if self.codes is not None:
            return list(dict.fromkeys(self.codes.values()))
        return [n for n, _ in sorted(self.ranges.items(), key=lambda kv: kv[1][0])]

    def code_of(self, mode: str) -> int:
        """The mode signal's value for ``mode`` (coded modes only)."""
        for code, name in (self.codes or {}).items():
            if name == mode:
                return code
        raise KeyError(f"mode {mode!r} has no code")

    def mode_of(self, value: Any, current: str | None = None) -> str | None:
        """The mode a value of the signal means; None for a value that names none (an unknown code, NaN)."""
        try:
            v = float(value)
        except (TypeError, ValueError):
            text = str(value).strip()
            return text if text in self.names else None
        if not math.isfinite(v):
            return None
        if self.codes is not None:
            return self.codes.get(int(round(v))) if abs(v - round(v)) < 1e-6 else None
        spans = sorted(self.ranges.items(), key=lambda kv: kv[1][0])
        for name, (lo, hi) in spans:
            if lo <= v <= hi:
                return name
        if current in self.ranges:
            # between ranges, stay in the current one until the value is clearly nearer another
            i = [n for n, _ in spans].index(current)
            lo, hi = spans[i][1]
            below = spans[i - 1][1][1] if i > 0 else -math.inf
            above = spans[i + 1][1][0] if i + 1 < len(spans) else math.inf
            reach_lo = lo - (0.5 + self.hysteresis) * (lo - below) if math.isfinite(below) else -math.inf
            reach_hi = hi + (0.5 + self.hysteresis) * (above - hi) if math.isfinite(above) else math.inf
            if reach_lo <= v <= reach_hi:
                return current
        return min(spans, key=lambda kv: (max(kv[1][0] - v, v - kv[1][1]), kv[1][0]))[0]

    def regime_of(self, value: float) -> str:
        """For reports: the range a load value is in, or ``between A and B`` (ranges only)."""
        spans = sorted(self.ranges.items(), key=lambda kv: kv[1][0])
        if not math.isfinite(value):
            return "unknown"
        for name, (lo, hi) in spans:
            if lo <= value <= hi:
                return name
        for (a, _), (b, _) in zip(spans, spans[1:]):
            if self.ranges[a][1] < value < self.ranges[b][0]:
                return f"between {a} and {b}"
        return f"below {spans[0][0]}" if value < spans[0][1][0] else f"above {spans[-1][0]}"


def _mode_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"mode name {name!r} must be a non-empty word without leading or trailing spaces")
    return name


class ExplainerPool(_Strict):
    """The site's explainers (``factory-copilot explainer`` workers), reached over MQTT 5: the line's model calls go
    to them as jobs instead of to a model of its own (copilot/pool.py)."""

    mqtt: MqttConnection | None = None  # the site broker the explainers listen on; None: the line's mqtt connection
    site: str | None = None  # whose explainers; None: the line's site
    prefix: str = DEFAULT_PREFIX  # the jobs go to <prefix>/<site>/explain/jobs
    lease_s: float = Field(10.0, gt=0)  # no word from any explainer this long: the job is published again
    retries: int = Field(2, ge=0)  # that often at most
    deadline_s: float | None = Field(None, gt=0)  # a job's latest answer; None: the copilot's timeout_s
    max_pending: int = Field(4, gt=0)  # jobs out at once; the rest wait here, the most urgent first
    forms: bool = True  # the explainers run GGUF models (the diagnosis' form, prefill, grammar); False: servers

    @model_validator(mode="after")
    def _lease_within_deadline(self) -> "ExplainerPool":
        if self.deadline_s is not None and self.lease_s >= self.deadline_s:
            raise ValueError(f"lease_s: {self.lease_s:g} s is not shorter than deadline_s ({self.deadline_s:g} s): "
                             "a job would never be published again")
        if self.mqtt is not None and self.mqtt.protocol != "5":
            raise ValueError("mqtt.protocol: the explainer pool needs MQTT 5 (response topic, correlation data)")
        return self


class CopilotSettings(_Strict):
    """Which language model explains alarms; none configured means runbook-only diagnoses."""

    model_path: str | None = None  # a GGUF file (see models/README.md)
    openai_url: str | None = None  # or an OpenAI-compatible endpoint (llama-server, vLLM, Ollama)
    openai_model: str | None = None
    pool: ExplainerPool | None = None  # or the site's explainers, over MQTT
    n_threads: int | None = None
    n_ctx: int = 4096
    n_gpu_layers: int = 0
    timeout_s: float = Field(120.0, gt=0)
    max_tokens: int = Field(600, gt=0)

    @model_validator(mode="after")
    def _one_model(self) -> "CopilotSettings":
        if self.pool is not None and (self.model_path or self.openai_url):
            given = "model_path" if self.model_path else "openai_url"
            raise ValueError(f"pool: given with {given}: a line's alarms are explained by one of model_path, "
                             "openai_url or pool")
        if self.pool is not None and self.pool.lease_s >= (self.pool.deadline_s or self.timeout_s):
            raise ValueError(f"pool.lease_s: {self.pool.lease_s:g} s is not shorter than the job's deadline "
                             f"({self.timeout_s:g} s, timeout_s): a job would never be published again")
        return self


class Knowledge(_Strict):
    """The plant's own knowledge: its fault catalogue and runbook folder, relative to the line file.

    Neither given means the copilot explains from the detector's evidence alone; nothing from the
    demo line's catalogue is ever used for another line.
    """

    faults: str | None = None  # fault catalogue (YAML, the format of seeds/faults.yaml)
    runbooks: str | None = None  # runbook folder (Markdown with front matter, the format of seeds/runbooks/)

    def paths(self, base: Path | None) -> tuple[Path | None, Path | None]:
        """The catalogue file and runbook folder, resolved relative to ``base`` (the line file's folder)."""
        def resolve(p: str | None) -> Path | None:
            if not p:
                return None
            path = Path(p).expanduser()
            return path if path.is_absolute() or base is None else (base / path).resolve()
        return resolve(self.faults), resolve(self.runbooks)


SourceKind = Literal["opcua", "sparkplug", "mqtt"]
SOURCE_KINDS: tuple[str, ...] = ("opcua", "sparkplug", "mqtt")  # the order a signal with several sources is read in


class Role(_Strict):
    """What the users of one role may do to an alarm (unshelving, which only brings an alarm back, anyone listed)."""

    users: list[str] = []
    acknowledge: bool = True
    shelve_max_s: float = Field(0.0, ge=0)  # 0: may not shelve
    out_of_service: bool = False  # may take an alarm out of service and return it

    @field_validator("users")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            # the name is the sender's MQTT user name, read from its topic level
            if not name or any(c in name for c in "/+#\0") or name != name.strip():
                raise ValueError(f"{name!r} is not a user name (no '/', '+', '#', surrounding spaces)")
        return v


_ROLE_DEFAULTS = {"operators": {"acknowledge": True, "shelve_max_s": 1800.0},
                  "supervisors": {"acknowledge": True, "shelve_max_s": 8 * 3600.0, "out_of_service": True}}


class Roles(_Strict):
    """Who may change an alarm's state: the actor is the MQTT user a command came from (``commands/<user>``)."""

    operators: Role = Role(acknowledge=True, shelve_max_s=1800)
    supervisors: Role = Role(acknowledge=True, shelve_max_s=8 * 3600, out_of_service=True)

    @model_validator(mode="before")
    @classmethod
    def _role_defaults(cls, data: Any) -> Any:
        # `operators: {users: [ann]}` keeps the operators' defaults for what it leaves out; `operators: [ann]` too
        if isinstance(data, dict):
            data = dict(data)
            for key, default in _ROLE_DEFAULTS.items():
                given = data.get(key)
                if isinstance(given, list):
                    data[key] = {**default, "users": given}
                elif isinstance(given, dict):
                    data[key] = {**default, **given}
        return data

    def of(self, user: str) -> list[str]:
        return [name for name, role in self._roles() if user in role.users]

    def shelve_max_s(self, user: str) -> float:
        """The longest ``user`` may shelve an alarm for (0: not at all)."""
        return max((role.shelve_max_s for _, role in self._roles() if user in role.users), default=0.0)

    def _roles(self) -> list[tuple[str, Role]]:
        return [("operators", self.operators), ("supervisors", self.supervisors)]

    def refusal(self, user: str, command: CommandKind | str, shelve_s: float | None = None) -> str | None:
        """Why ``user`` may not do ``command`` (None: allowed), in words an operator understands."""
        command = CommandKind(command)  # a known kind (the engine refuses an unknown one before asking)
        mine = [role for _, role in self._roles() if user in role.users]
        if not mine:
            what = command.value.replace("_", " ")
            return f"{user} is in no role of this line (operators, supervisors): may not {what}"
        if command is CommandKind.ACKNOWLEDGE and not any(r.acknowledge for r in mine):
            return f"{user} may not acknowledge alarms on this line"
        if command is CommandKind.SHELVE:
            most = max(r.shelve_max_s for r in mine)
            if most <= 0:
                return f"{user} may not shelve alarms on this line"
            if shelve_s is not None and shelve_s > most:
                return f"{user} may shelve for at most {most:g} s, asked for {shelve_s:g} s"
        in_or_out = (CommandKind.OUT_OF_SERVICE, CommandKind.RETURN_TO_SERVICE)
        if command in in_or_out and not any(r.out_of_service for r in mine):
            return f"{user} may not take alarms out of service or return them (supervisors may)"
        return None

    def feedback_refusal(self, user: str) -> str | None:
        """Why ``user`` may not give feedback on this line's alarms (None: allowed): anyone in one of its roles may
        (an operator knows what the fault was); a user in none (a reader, a visitor) may not."""
        if self.of(user):
            return None
        return f"{user} is in no role of this line (operators, supervisors): may not give feedback on its alarms"


class Escalation(_Strict):
    """Who hears of an alarm nobody acknowledged: an annunciated alarm of ``priority`` or more urgent, still
    active and unacknowledged ``after_s`` after it rang, is *overdue*; ``notify`` (a group a pager gateway or
    Node-RED knows) is told once per unacknowledged stretch, over MQTT."""

    priority: str
    after_s: float = Field(gt=0)
    notify: str = Field(min_length=1)

    @field_validator("priority")
    @classmethod
    def _priority(cls, v: str) -> str:
        return Priority.parse(v).name.lower()

    @field_validator("notify")
    @classmethod
    def _group(cls, v: str) -> str:
        if v != v.strip() or any(c in v for c in "/+#\0"):
            raise ValueError(f"{v!r} is not a group name (no '/', '+', '#', surrounding spaces)")
        return v


class Shift(_Strict):
    """One shift of the line's day: its name and the local time it starts (it ends where the next one starts)."""

    name: str
    start: str  # "HH:MM" in the line's ``timezone``

    @field_validator("name")
    @classmethod
    def _shift_name(cls, v: str) -> str:
        if not v or v != v.strip() or any(c in v for c in "/+#\0"):
            raise ValueError(f"{v!r} is not a shift name (non-empty, no '/', '+', '#', surrounding spaces)")
        return v

    @field_validator("start")
    @classmethod
    def _clock_time(cls, v: str) -> str:
        m = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", str(v))
        if not m:
            raise ValueError(f"{v!r} is not a time of day: write it as HH:MM, e.g. \"06:00\"")
        return v

    @property
    def minute_of_day(self) -> int:
        hours, minutes = self.start.split(":")
        return int(hours) * 60 + int(minutes)


class AgentAccess(_Strict):
    """What ``factory-copilot mcp`` offers agents: read tools always; write tools only when enabled here."""

    write_tools: bool = False  # acknowledge and shelve, as the authenticated user, under ``roles:``
    host: str = "127.0.0.1"  # where the streamable HTTP transport listens
    port: int = Field(8765, ge=1, le=65535)


class OpcuaAlarmServer(_Strict):
    """The service's own OPC UA server: its alarms as Alarms & Conditions for an HMI or SCADA (docs/opcua.md)."""

    endpoint: str = "opc.tcp://0.0.0.0:4841/factory-copilot/alarms/"
    security: Literal["none", "basic256sha256_sign_encrypt"] = "basic256sha256_sign_encrypt"
    # who may log in (dashboard-users.yaml from broker init: the broker's people, the same passwords), relative
    # to the line file; None: nobody logs in, so nobody acknowledges or shelves here
    users: str | None = None
    anonymous: bool = True  # anonymous sessions may browse, subscribe and refresh, never change an alarm
    certificate: str | None = None  # the server's certificate (DER); made in <state_dir>/pki/ on first use if None
    private_key: str | None = None

    @field_validator("endpoint")
    @classmethod
    def _opc_tcp(cls, v: str) -> str:
        if not re.fullmatch(r"opc\.tcp://[^/:\s]+:\d{1,5}(/\S*)?", v):
            raise ValueError(f"{v!r} is not an endpoint this server can listen on: write opc.tcp://HOST:PORT/PATH, "
                             "e.g. opc.tcp://0.0.0.0:4841/factory-copilot/alarms/")
        return v

    @model_validator(mode="after")
    def _key_with_certificate(self) -> "OpcuaAlarmServer":
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate: give the server's certificate and its private_key together (or neither: "
                             "one is made on first use)")
        return self


_NODE_ID = re.compile(r"(ns=\d+;)?[isgb]=.+")  # OPC UA Part 6, 5.3.1.10: a node id as text


class PlcAlarmSource(_Strict):
    """Which of the line's assets (and signal) a PLC's alarm source node stands for."""

    source: str  # the SourceNode of the PLC's conditions, an OPC UA node id (ns=2;s=Pump1)
    asset: str
    signal: str | None = None

    @field_validator("source")
    @classmethod
    def _node_id(cls, v: str) -> str:
        if not _NODE_ID.fullmatch(v):
            raise ValueError(f"{v!r} is not an OPC UA node id (write e.g. ns=2;s=Pump1)")
        return v


class PlcAlarms(_Strict):
    """The PLC's own Alarms & Conditions, read in by the OPC UA collector (docs/opcua.md, "What is read")."""

    notifiers: list[str] = ["i=2253"]  # nodes whose events are subscribed: the Server object by default
    map: list[PlcAlarmSource] = []  # source nodes not named here keep their SourceName as the asset

    @field_validator("notifiers")
    @classmethod
    def _node_ids(cls, v: list[str]) -> list[str]:
        for n in v:
            if not _NODE_ID.fullmatch(n):
                raise ValueError(f"{n!r} is not an OPC UA node id (write e.g. i=2253, the Server object)")
        return v


class StoreSettings(_Strict):
    """The PostgreSQL database the site's lines share, holding this line's history instead of SQLite under state_dir."""

    # postgresql://USER@HOST:PORT/DB; the password comes from ~/.pgpass or PGPASSWORD, not from the line file
    url: str

    @field_validator("url")
    @classmethod
    def _postgresql(cls, v: str) -> str:
        if not re.fullmatch(r"postgres(ql)?://[^\s/]*(/[^\s/?]+)?(\?\S*)?", v):
            raise ValueError(f"{v!r} is not a PostgreSQL URL: write postgresql://USER@HOST:PORT/DATABASE (or leave "
                             "store: out to keep the history in SQLite under service.state_dir)")
        if re.match(r"[^:]+://[^/@]*:[^/@]*@", v):
            raise ValueError("the URL holds a password: keep it in ~/.pgpass or PGPASSWORD, not in the line file")
        return v


class ServiceSettings(_Strict):
    """How ``factory-copilot run`` serves this line."""

    # where the readings come from; several kinds serve one line (each signal from the first kind it names);
    # None: every kind the line's signals name and the line file connects to
    source: SourceKind | list[SourceKind] | None = None
    state_dir: str = "var"  # SQLite files (store, alarms, outbox), PKI and the trained detector; relative to the line file
    detector: str | None = None  # trained detector file; default <state_dir>/detector.joblib
    alerts_prefix: str = DEFAULT_PREFIX
    health_port: int | None = 8089  # GET /health on 127.0.0.1; None to disable
    copilot: CopilotSettings = CopilotSettings()
    opcua_server: OpcuaAlarmServer | None = None  # serve the alarms as OPC UA Alarms & Conditions (docs/opcua.md)
    plc_alarms: PlcAlarms | None = None  # read the PLC's own alarms through the OPC UA collector (docs/opcua.md)


class LineConfig(_Strict):
    site: str
    line: str
    description: str = ""
    sampling_interval_s: float = Field(1.0, gt=0)
    # what a row's time counts when it is not seconds (a run-to-failure set in engine cycles, a batch line in
    # batches): sampling_interval_s is then in that unit, and train's and evaluate's reports speak in it
    time_unit: str | None = Field(None, pattern=r"^[a-z][a-z ]{0,19}$")
    modes: OperatingModes | None = None  # the machine's own operating modes; none: one mode, DEFAULT_MODE
    # load and setpoint signals ("asset.signal") that set the operating point: the detector judges every
    # other signal against what is normal there; default: a ranges signal of `modes` and signals named *setpoint*
    operating_point: list[str] | None = None
    samples: SampleChecks = SampleChecks()
    opcua: OpcuaConnection | None = None
    mqtt: MqttConnection | None = None
    sparkplug: SparkplugHost | None = None
    knowledge: Knowledge = Knowledge()
    service: ServiceSettings = ServiceSettings()
    store: StoreSettings | None = None  # a site's shared PostgreSQL; None: SQLite under service.state_dir
    # who may acknowledge, shelve (how long) and take out of service; None: every user the broker lets in may
    roles: Roles | None = None
    # who is told of an alarm nobody acknowledges, after how long (docs/alarms.md "Overdue alarms")
    escalation: list[Escalation] = []
    timezone: str = "UTC"  # the plant's local time (an IANA name, e.g. Europe/Berlin): shift starts are in it
    shifts: list[Shift] | None = None  # the line's shifts, in the order of the day; a handover is written at each change
    mcp: AgentAccess = AgentAccess()
    assets: list[Asset]
    _path: Path | None = PrivateAttr(None)  # the file it was read from: the line's own paths are relative to it

    @property
    def path(self) -> Path | None:
        return self._path

    def with_path(self, path: str | Path | None) -> "LineConfig":
        """This line, remembering the file it came from (``load_line`` does this)."""
        self._path = Path(path).resolve() if path else None
        return self

    @model_validator(mode="before")
    @classmethod
    def _mode_signal(cls, data: Any) -> Any:
        # the first line files named a mode signal with the demo's four fixed codes; modes are declared now
        if isinstance(data, dict) and "mode_signal" in data:
            data = dict(data)
            old = data.pop("mode_signal")
            if old is not None:
                raise ValueError(
                    "mode_signal: replaced by 'modes: {signal: ASSET.SIGNAL, codes: {0: idle, 2: running, ...}}' "
                    "(or ranges of a load signal); the machine's modes are declared, not assumed")
        return data

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            if v != "UTC":  # needs no zone database
                zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not a time zone this machine knows (an IANA name such as Europe/Berlin)") from None
        return v

    @model_validator(mode="after")
    def _day_of_shifts(self) -> "LineConfig":
        if self.shifts is None:
            return self
        if not self.shifts:
            raise ValueError("shifts: names no shift; leave 'shifts:' out for a line without shifts")
        problems = []
        for i, s in enumerate(self.shifts):
            for j, earlier in enumerate(self.shifts[:i]):
                if earlier.name == s.name:
                    problems.append(f"shifts[{i}].name: {s.name!r} is already the name of shifts[{j}]")
                if earlier.start == s.start:
                    problems.append(f"shifts[{i}].start: {s.start} is already the start of shifts[{j}] ({earlier.name})")
        if problems:
            raise ValueError("\n".join(problems))  # parse_line reports each as a problem of its own
        return self

    @model_validator(mode="after")
    def _pool_broker(self) -> "LineConfig":
        pool = self.service.copilot.pool
        if pool is not None and pool.mqtt is None and self.mqtt is None:
            raise ValueError("service.copilot.pool.mqtt: no broker for the explainer pool: give one here, or the "
                             "line's mqtt connection")
        if pool is not None and pool.mqtt is None and self.mqtt is not None and self.mqtt.protocol != "5":
            raise ValueError("service.copilot.pool.mqtt: the line's mqtt connection speaks MQTT 3.1.1; the explainer "
                             "pool needs MQTT 5 (response topic, correlation data): give it a connection of its own")
        return self

    @model_validator(mode="after")
    def _unique_assets(self) -> "LineConfig":
        seen: set[str] = set()
        for a in self.assets:
            if a.id in seen:
                raise ValueError(f"asset {a.id!r} appears twice")
            seen.add(a.id)
        return self

    @model_validator(mode="after")
    def _one_signal_per_source(self) -> "LineConfig":
        """Two signals read from the same node or the same topic+field would silently leave one unmapped."""
        problems: list[str] = []
        nodes: dict[str, str] = {}
        fields: dict[tuple[str, str], str] = {}
        metrics: dict[tuple[str, str, str | None, str], str] = {}
        for i, a in enumerate(self.assets):
            for j, s in enumerate(a.signals):
                here = f"assets[{i}].signals[{j}].source"
                if s.source.opcua:
                    node = _node_key(s.source.opcua)
                    if node in nodes:
                        problems.append(f"{here}.opcua: node {s.source.opcua!r} is already read by {nodes[node]}.opcua")
                    nodes.setdefault(node, here)
                if s.source.mqtt:
                    key = (s.source.mqtt.topic, s.source.mqtt.field)
                    if key in fields:
                        problems.append(f"{here}.mqtt: topic {key[0]!r} field {key[1]!r} is already read by "
                                        f"{fields[key]}.mqtt")
                    fields.setdefault(key, here)
                if s.source.sparkplug:
                    sp = s.source.sparkplug
                    mkey = (sp.group, sp.edge_node, sp.device, sp.metric)
                    if mkey in metrics:
                        where = "/".join(p for p in mkey[:3] if p)
                        problems.append(f"{here}.sparkplug: metric {sp.metric!r} of {where} is already read by "
                                        f"{metrics[mkey]}.sparkplug")
                    metrics.setdefault(mkey, here)
        if problems:
            raise ValueError("\n".join(problems))  # parse_line reports each as a problem of its own
        return self

    @model_validator(mode="after")
    def _known_modes_and_signals(self) -> "LineConfig":
        """Every mode and signal the file names exists (a typo would silently change what is judged normal)."""
        keys = {f"{a.id}.{s.name}" for a in self.assets for s in a.signals}
        problems = []
        if self.modes and self.modes.signal not in keys:
            problems.append(f"modes.signal: unknown signal {self.modes.signal!r}")
        for i, key in enumerate(self.operating_point or []):
            if key not in keys:
                problems.append(f"operating_point[{i}]: unknown signal {key!r}")
        names = self.mode_names()
        for i, a in enumerate(self.assets):
            for j, s in enumerate(a.signals):
                for m in s.modes:
                    if m not in names:
                        declared = f"declared: {', '.join(names)}" if self.modes else "the line declares no modes (add a 'modes:' section)"
                        problems.append(f"assets[{i}].signals[{j}].modes.{m}: unknown mode {m!r}; {declared}")
        plc = self.service.plc_alarms
        assets = {a.id: {s.name for s in a.signals} for a in self.assets}
        for i, m in enumerate(plc.map if plc else []):
            where = f"service.plc_alarms.map[{i}]"
            if m.asset not in assets:
                problems.append(f"{where}.asset: unknown asset {m.asset!r}")
            elif m.signal is not None and m.signal not in assets[m.asset]:
                problems.append(f"{where}.signal: {m.asset} has no signal {m.signal!r}")
        if plc and self.opcua is None:
            problems.append("service.plc_alarms: the PLC's alarms are read over OPC UA; the line file has no 'opcua:' "
                            "connection")
        if self.modes and not self.production_modes():
            problems.append("modes.production: no mode left where the line produces; name them "
                            "(every coded mode has bands of its own, so none could be derived)")
        if problems:
            raise ValueError("\n".join(problems))  # parse_line reports each as a problem of its own
        return self

    def sources(self) -> dict[str, list[str]]:
        """Source kind -> the signal keys it serves (mode signal included), as ``service.source`` says.

        Each signal is read from the first kind in the list it has a source for; a kind is used only
        when the line file says how to connect to it.
        """
        kinds = self.service.source
        if kinds is None:
            # MQTT and Sparkplug default to the broker on 127.0.0.1:1883; OPC UA needs an endpoint
            kinds = [k for k in SOURCE_KINDS if k != "opcua" or self.opcua is not None]
        elif isinstance(kinds, str):
            kinds = [kinds]
        served: dict[str, list[str]] = {k: [] for k in kinds}
        for a in self.assets:
            for s in a.signals:
                for k in kinds:
                    if getattr(s.source, k) is not None:
                        served[k].append(f"{a.id}.{s.name}")
                        break
        return {k: keys for k, keys in served.items() if keys or k in (self.service.source or [])}

    @property
    def sparkplug_host(self) -> SparkplugHost:
        """The Sparkplug host settings (defaults when the line file has no ``sparkplug`` section)."""
        return self.sparkplug or SparkplugHost()

    @property
    def sparkplug_broker(self) -> MqttConnection:
        return self.sparkplug_host.mqtt or self.mqtt or MqttConnection()

    def sparkplug_host_id(self) -> str:
        """This line's Sparkplug host id: configured, else ``factory-copilot-<site>-<line>`` (made topic-safe)."""
        if self.sparkplug_host.host_id:
            return self.sparkplug_host.host_id
        return "factory-copilot-" + "".join("_" if c in "/+# " else c for c in f"{self.site}-{self.line}")

    @model_validator(mode="after")
    def _flow(self) -> "LineConfig":
        ids = [a.id for a in self.assets]
        problems = []
        for i, a in enumerate(self.assets):
            for j, target in enumerate(a.feeds):
                where = f"assets[{i}].feeds[{j}]"
                if target == a.id:
                    problems.append(f"{where}: asset {a.id!r} cannot feed itself")
                elif target not in ids:
                    problems.append(f"{where}: no asset {target!r} on this line (assets: {', '.join(ids)})")
                elif a.feeds.index(target) != j:
                    problems.append(f"{where}: {target!r} is listed twice")
        if problems:
            raise ValueError("\n".join(problems))  # each line names its own path (see parse_line)
        return self

    def asset(self, asset_id: str) -> Asset:
        for a in self.assets:
            if a.id == asset_id:
                return a
        raise KeyError(asset_id)

    def signal(self, key: str) -> Signal:
        asset, _, name = key.partition(".")
        return self.asset(asset).signal(name)

    def downstream(self, asset_id: str) -> set[str]:
        """Every asset ``asset_id`` feeds, directly or through others (a recycle loop may include itself)."""
        feeds = {a.id: a.feeds for a in self.assets}
        seen: set[str] = set()
        todo = list(feeds.get(asset_id, ()))
        while todo:
            a = todo.pop()
            if a not in seen:
                seen.add(a)
                todo.extend(feeds.get(a, ()))
        return seen

    @property
    def mode_key(self) -> str | None:
        """The signal the mode is read from (a coded mode signal, or the load signal of ranges)."""
        return self.modes.signal if self.modes else None

    def signal_keys(self, include_mode: bool = False) -> list[str]:
        """``asset.signal`` for every process signal, in file order (a coded mode signal left out).

        A load signal whose ranges tell the modes is a process signal and stays in.
        """
        keys = [f"{a.id}.{s.name}" for a in self.assets for s in a.signals]
        if not include_mode and self.modes and self.modes.codes is not None:
            keys = [k for k in keys if k != self.modes.signal]
        return keys

    # ---- operating modes -------------------------------------------------------------------------
    def mode_names(self) -> list[str]:
        """The declared modes, in order; a line that declares none runs in one, DEFAULT_MODE."""
        return self.modes.names if self.modes else [DEFAULT_MODE]

    def production_modes(self) -> list[str]:
        """Where the line produces: stuck checks run and every limit applies (declared, else derived)."""
        if not self.modes:
            return [DEFAULT_MODE]
        if self.modes.production:
            return list(self.modes.production)
        if self.modes.ranges is not None:
            return self.modes.names  # a load regime is production at another duty
        # coded modes: those in which no signal needs a band of its own (the normal band is the production band)
        banded = {m for a in self.assets for s in a.signals for m in s.modes if not (self.modes.signal == f"{a.id}.{s.name}")}
        return [m for m in self.modes.names if m not in banded]

    @property
    def production_mode(self) -> str:
        """The production mode a record names when it has no mode of its own."""
        return self.production_modes()[0]

    def is_production(self, mode: str | None) -> bool:
        return mode is None or str(mode) in self.production_modes()

    def mode_of(self, value: Any, current: str | None = None) -> str | None:
        """The mode a value of ``mode_key`` means (None: it names none); without declared modes, DEFAULT_MODE."""
        return self.modes.mode_of(value, current) if self.modes else DEFAULT_MODE

    @property
    def modes_by_range(self) -> bool:
        """Modes told by ranges of a load signal: one continuous normal across them, not one per mode."""
        return bool(self.modes and self.modes.ranges is not None)

    def context_keys(self) -> list[str]:
        """The signals that set the operating point (see ``operating_point``), in file order."""
        if self.operating_point is not None:
            return list(dict.fromkeys(self.operating_point))
        keys = self.signal_keys()
        wanted = {k for k in keys if "setpoint" in k.partition(".")[2]}
        if self.modes_by_range:
            wanted.add(self.modes.signal)
        return [k for k in keys if k in wanted]

    def fingerprint(self) -> str:
        """Hash of what a trained model depends on: assets, signals and modes, not connection details."""
        # what a model learns from is the signals' behaviour: where a signal is read from (node, topic, field), the checks it opts out of, its
        # description and the alarm design (criticality, flow, priorities, positions) can change and keep the model
        exclude = {**dict.fromkeys(ALARM_DESIGN, True), "signals": {"__all__": {"source", "description", "priority", "checks"}}}
        body = json.dumps([[a.model_dump(mode="json", exclude=exclude) for a in self.assets],
                           self.modes.model_dump(mode="json") if self.modes else None, self.operating_point],
                          sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]


@dataclass
class ServicePaths:
    """Where the service keeps its state; all under one directory so a restart finds it again."""

    state_dir: Path
    detector_file: Path | None = None  # the line file's service.detector; default <state_dir>/detector.joblib

    @classmethod
    def of_line(cls, line: LineConfig, line_path: Path, state_dir: Path | None = None) -> "ServicePaths":
        """The line file's ``service`` paths, relative to the line file (``state_dir`` overrides its state_dir)."""
        base = Path(line_path).resolve().parent
        detector = base / line.service.detector if line.service.detector else None
        return cls(Path(state_dir) if state_dir else base / line.service.state_dir, detector)

    @property
    def store(self) -> Path:
        return self.state_dir / "store.db"

    @property
    def alarms(self) -> Path:
        return self.state_dir / "alarms.db"

    @property
    def outbox(self) -> Path:
        return self.state_dir / "outbox.db"

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def detector(self) -> Path:
        return self.detector_file or self.state_dir / "detector.joblib"


def _node_key(node: str) -> str:
    """A node id in one spelling, so ``ns=2;s=x`` and ``ns=2; s=x`` are seen as the same node."""
    return node.replace(" ", "")


def field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"




def parse_line(data: Any, path: str | Path = "<line>") -> LineConfig:
    """Validate a parsed line description; raise LineConfigError naming every bad field."""
    try:
        return LineConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            # pydantic adds the failing union member / validator name to the path; keep the file's path
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tuple["))))
            for msg in err["msg"].removeprefix("Value error, ").split("\n"):
                # a validator of a whole section names the field inside it: "production: ..." -> "modes.production: ..."
                inner = re.match(r"^([A-Za-z_][\w]*(?:\.[\w]+|\[\d+\])*): (.*)$", msg, re.S)
                if inner:
                    where = f"{field_path(loc)}.{inner[1]}" if loc else inner[1]
                    problems.append(f"{where}: {inner[2]}")
                else:
                    problems.append(f"{field_path(loc)}: {msg}")
        raise LineConfigError(path, problems) from None


def load_line(path: str | Path) -> LineConfig:
    """Read and validate a line file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise LineConfigError(path, [f"cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LineConfigError(path, [f"not valid YAML: {exc}"]) from None
    line = parse_line(data, path).with_path(path)
    faults, runbooks = line.knowledge.paths(line.path.parent if line.path else None)
    if faults or runbooks:
        # resolved here, against the line file: a copy of this line (model_dump, a file written elsewhere) keeps them
        knowledge = Knowledge(faults=str(faults) if faults else None, runbooks=str(runbooks) if runbooks else None)
        line = line.model_copy(update={"knowledge": knowledge}).with_path(path)
    return line
