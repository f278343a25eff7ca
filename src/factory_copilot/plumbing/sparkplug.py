"""Sparkplug B vocabulary: topics, datatypes, metric values, quality, STATE and Rebirth payloads.

One home for what the host application (``collect/sparkplug.py``), ``browse --sparkplug``
and the simulated edge node all speak. Payloads are the specification's protobuf
(``sparkplug_b.proto``, compiled into ``sparkplug_b_pb2``); the STATE message of a host
application is JSON (Sparkplug 3.0) or the bare words ONLINE/OFFLINE (2.2).

Topics: ``spBv1.0/<group>/<NBIRTH|NDEATH|NDATA|NCMD>/<edge_node>`` and
``spBv1.0/<group>/<DBIRTH|DDEATH|DDATA|DCMD>/<edge_node>/<device>``; ``spBv1.0/STATE/<host_id>``.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from factory_copilot.plumbing import sparkplug_b_pb2 as pb
from factory_copilot.records import Quality
from factory_copilot.errors import FactoryCopilotError

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
BDSEQ = "bdSeq"
QUALITY = "Quality"  # the metric property a non-GOOD value carries (0 bad, 192 good, 500 stale)
QUALITY_BAD, QUALITY_GOOD, QUALITY_STALE = 0, 192, 500

Payload = pb.Payload
Metric = pb.Payload.Metric

NODE_KINDS = frozenset({"NBIRTH", "NDEATH", "NDATA", "NCMD"})
DEVICE_KINDS = frozenset({"DBIRTH", "DDEATH", "DDATA", "DCMD"})


class DataType(enum.IntEnum):
    """Sparkplug B datatypes (the proto's DataType enum)."""

    Unknown = 0
    Int8 = 1
    Int16 = 2
    Int32 = 3
    Int64 = 4
    UInt8 = 5
    UInt16 = 6
    UInt32 = 7
    UInt64 = 8
    Float = 9
    Double = 10
    Boolean = 11
    String = 12
    DateTime = 13
    Text = 14
    UUID = 15
    DataSet = 16
    Bytes = 17
    File = 18
    Template = 19
    PropertySet = 20
    PropertySetList = 21
    Int8Array = 22
    Int16Array = 23
    Int32Array = 24
    Int64Array = 25
    UInt8Array = 26
    UInt16Array = 27
    UInt32Array = 28
    UInt64Array = 29
    FloatArray = 30
    DoubleArray = 31
    BooleanArray = 32
    StringArray = 33
    DateTimeArray = 34

    @classmethod
    def name_of(cls, value: int) -> str:
        try:
            return cls(value).name
        except ValueError:
            return f"datatype {value}"


SIGNED_BITS = {DataType.Int8: 8, DataType.Int16: 16, DataType.Int32: 32, DataType.Int64: 64}
UNSIGNED = frozenset({DataType.UInt8, DataType.UInt16, DataType.UInt32, DataType.UInt64})
FLOATS = frozenset({DataType.Float, DataType.Double})
# the datatypes whose value is one number a detector can use (a Boolean reads as 0 or 1)
PROCESS_TYPES = frozenset({*SIGNED_BITS, *UNSIGNED, *FLOATS, DataType.Boolean})


class NotAProcessValue(FactoryCopilotError, ValueError):
    """A metric whose value is not one finite number (text, a data set, an array, a missing value)."""


# ---- topics -------------------------------------------------------------------------------------------


def valid_id(text: str) -> bool:
    """A group, edge node, device or host id: non-empty UTF-8 without '/', '+' or '#'."""
    return bool(text) and not any(c in text for c in "/+#")


@dataclass(frozen=True, slots=True)
class Topic:
    """One Sparkplug topic, parsed."""

    group: str
    kind: str  # NBIRTH, NDEATH, NDATA, NCMD, DBIRTH, DDEATH, DDATA, DCMD
    edge_node: str
    device: str | None = None

    @classmethod
    def parse(cls, topic: str) -> "Topic | None":
        """The parts of a Sparkplug B edge topic, or None for anything else (STATE included)."""
        parts = topic.split("/")
        if len(parts) < 4 or parts[0] != NAMESPACE:
            return None
        _, group, kind, node, *rest = parts
        if kind in NODE_KINDS and not rest and group and node:
            return cls(group, kind, node)
        if kind in DEVICE_KINDS and len(rest) == 1 and group and node and rest[0]:
            return cls(group, kind, node, rest[0])
        return None

    def __str__(self) -> str:
        return topic(self.group, self.kind, self.edge_node, self.device)


def topic(group: str, kind: str, edge_node: str, device: str | None = None) -> str:
    return f"{NAMESPACE}/{group}/{kind}/{edge_node}" + (f"/{device}" if device else "")


def group_subscription(group: str) -> str:
    return f"{NAMESPACE}/{group}/#"


def state_topic(host_id: str) -> str:
    """Sparkplug 3.0 host application STATE topic."""
    return f"{NAMESPACE}/STATE/{host_id}"


def legacy_state_topic(host_id: str) -> str:
    """Sparkplug 2.2 host application STATE topic (payload ONLINE / OFFLINE)."""
    return f"STATE/{host_id}"


# ---- payloads -----------------------------------------------------------------------------------------


def decode(raw: bytes) -> Payload:
    """A payload from the wire; ValueError when it is not a Sparkplug B protobuf."""
    payload = Payload()
    try:
        payload.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:  # RuntimeError: nesting too deep
        raise ValueError(f"not a Sparkplug B payload ({type(exc).__name__}: {exc})") from None
    return payload


def now_ms() -> int:
    return int(time.time() * 1000)


def metric_value(metric: Metric, datatype: int) -> float:
    """The metric's value as one float, read as its datatype says; NotAProcessValue when it is not a number."""
    try:
        dt = DataType(datatype)
    except ValueError:
        raise NotAProcessValue(f"unknown datatype {datatype}") from None
    if dt not in PROCESS_TYPES:
        raise NotAProcessValue(f"a {dt.name} metric is not a number")
    field = metric.WhichOneof("value")
    if field is None:
        raise NotAProcessValue(f"{dt.name} metric without a value (and not is_null)")
    raw = getattr(metric, field)
    # the declared datatype decides the reading of an integer field; a gateway that sends a Double as
    # float_value, or a Boolean as 0/1, still sends a usable number
    if field in ("float_value", "double_value"):
        return float(raw)
    if field == "boolean_value":
        return 1.0 if raw else 0.0
    if field not in ("int_value", "long_value"):
        raise NotAProcessValue(f"{dt.name} metric carries {field}, not a number")
    bits = SIGNED_BITS.get(dt)
    if bits is not None:  # two's complement, whether the sender sign-extended to 32/64 bits or masked to its width
        raw &= (1 << bits) - 1
        if raw >= 1 << (bits - 1):
            raw -= 1 << bits
    return float(raw)


def set_value(metric: Metric, datatype: DataType, value: float | bool | int | None) -> None:
    """Put ``value`` into ``metric`` as ``datatype`` says (None: is_null)."""
    if value is None:
        metric.is_null = True
        return
    if datatype in FLOATS:
        if datatype is DataType.Float:
            metric.float_value = float(value)
        else:
            metric.double_value = float(value)
    elif datatype is DataType.Boolean:
        metric.boolean_value = bool(value)
    elif datatype in SIGNED_BITS:
        bits = SIGNED_BITS[datatype]
        field = "long_value" if bits == 64 else "int_value"
        setattr(metric, field, int(value) & ((1 << (64 if bits == 64 else 32)) - 1))
    elif datatype in UNSIGNED:
        setattr(metric, "long_value" if datatype is DataType.UInt64 else "int_value", int(value))
    elif datatype in (DataType.String, DataType.Text, DataType.UUID):
        metric.string_value = str(value)
    else:
        raise ValueError(f"cannot encode a {datatype.name} here")


def property_of(metric: Metric, key: str) -> "pb.Payload.PropertyValue | None":
    """A metric property by name (Sparkplug keys are matched as sent, then case-insensitively)."""
    if not metric.HasField("properties"):
        return None
    keys = list(metric.properties.keys)
    for i, k in enumerate(keys):
        if k == key and i < len(metric.properties.values):
            return metric.properties.values[i]
    lowered = key.lower()
    for i, k in enumerate(keys):
        if k.lower() == lowered and i < len(metric.properties.values):
            return metric.properties.values[i]
    return None


def property_number(value: "pb.Payload.PropertyValue") -> float | None:
    field = value.WhichOneof("value")
    if field in ("int_value", "long_value", "float_value", "double_value"):
        raw = getattr(value, field)
        if field == "int_value" and value.type == DataType.Int32 and raw >= 1 << 31:
            raw -= 1 << 32
        return float(raw)
    return None


def property_text(value: "pb.Payload.PropertyValue") -> str | None:
    return value.string_value if value.WhichOneof("value") == "string_value" else None


def quality_of(metric: Metric) -> Quality:
    """GOOD, or what ``is_null`` and the ``Quality`` property say; ValueError for a quality code we cannot read."""
    if metric.is_null:
        return Quality.BAD
    prop = property_of(metric, QUALITY)
    if prop is None or prop.is_null:
        return Quality.GOOD
    code = property_number(prop)
    if code is None or code != int(code):
        raise ValueError(f"Quality property {prop.WhichOneof('value')} is not an integer code")
    code = int(code)
    if code == QUALITY_GOOD:
        return Quality.GOOD
    if code == QUALITY_STALE:
        return Quality.UNCERTAIN  # a value, but no longer current
    if 0 <= code <= 255:  # OPC DA quality bits, as older gateways send: 11 good, 01 uncertain, 00 bad
        return {0xC0: Quality.GOOD, 0x40: Quality.UNCERTAIN}.get(code & 0xC0, Quality.BAD)
    raise ValueError(f"Quality code {code} is none of 0 (bad), 192 (good), 500 (stale)")


def int_metric(payload: Payload, name: str) -> int | None:
    """An integer metric of a payload by name (bdSeq: Int64 in 3.0, UInt64 in 2.2 edge nodes)."""
    for m in payload.metrics:
        if m.name == name:
            field = m.WhichOneof("value")
            if field in ("int_value", "long_value"):
                return int(getattr(m, field))
            if field in ("float_value", "double_value"):
                return int(getattr(m, field))
            return None
    return None


def rebirth_request(ts_ms: int | None = None) -> bytes:
    """The NCMD payload that asks an edge node for a complete birth sequence."""
    payload = Payload(timestamp=ts_ms or now_ms())
    m = payload.metrics.add(name=REBIRTH, timestamp=payload.timestamp, datatype=DataType.Boolean)
    m.boolean_value = True
    return payload.SerializeToString()


def is_rebirth_request(payload: Payload) -> bool:
    return any(m.name == REBIRTH and m.WhichOneof("value") == "boolean_value" and m.boolean_value
               for m in payload.metrics)


def state_payload(online: bool, ts_ms: int) -> bytes:
    """Sparkplug 3.0 host application STATE (birth and will): JSON with ``online`` and ``timestamp``."""
    return json.dumps({"online": online, "timestamp": ts_ms}).encode()


def parse_state(raw: bytes) -> tuple[bool, int | None] | None:
    """(online, timestamp) of a STATE payload (3.0 JSON, or 2.2's ONLINE/OFFLINE); None when unreadable."""
    text = bytes(raw[:1024]).decode("utf-8", "replace").strip()
    if text.upper() in ("ONLINE", "OFFLINE"):
        return text.upper() == "ONLINE", None
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("online"), bool):
        return None
    ts = body.get("timestamp")
    return body["online"], ts if isinstance(ts, int) and not isinstance(ts, bool) else None


def next_seq(seq: int) -> int:
    return (seq + 1) % 256

