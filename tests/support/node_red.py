"""Node-RED's routing of an exported flow, for the nodes the shipped flow uses (mqtt in, json, switch, debug).

The switch operators follow Node-RED's own definitions (nodes/core/function/10-switch.js): ``null`` is true
for a missing property too, ``nnull`` only for one that is there and not null, ``true``/``false`` are strict,
``empty`` holds for an empty string, array or object, ``else`` when no earlier rule matched (checkall false).
"""

from __future__ import annotations

import json
from typing import Any

MISSING = object()  # JavaScript's undefined


def _get(msg: dict, path: str) -> Any:
    value: Any = msg
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def _rule(rule: dict, value: Any, matched_before: bool) -> bool:
    t = rule["t"]
    if t == "else":
        return not matched_before
    if t == "null":
        return value is MISSING or value is None
    if t == "nnull":
        return value is not MISSING and value is not None
    if t == "true":
        return value is True
    if t == "false":
        return value is False
    if t == "empty":
        return isinstance(value, (str, list, dict)) and len(value) == 0
    if t == "nempty":
        return isinstance(value, (str, list, dict)) and len(value) > 0
    if t == "eq":
        return value is not MISSING and str(value) == str(rule["v"]) if rule.get("vt") == "str" else value == rule["v"]
    raise AssertionError(f"switch rule {t!r} is not modelled here: add it (as 10-switch.js defines it) or avoid it")


def route(flow: list[dict], start: str, topic: str, payload: bytes) -> list[dict]:
    """The debug nodes a message from ``start`` (an ``mqtt in`` node, datatype utf8) reaches."""
    nodes = {n["id"]: n for n in flow}
    reached: list[dict] = []

    def send(node_id: str, msg: dict) -> None:
        node = nodes[node_id]
        kind = node["type"]
        if kind == "debug":
            reached.append(node)
            return
        if kind == "mqtt in":
            outputs = [msg]
        elif kind == "json":
            body = msg["payload"]
            outputs = [{**msg, "payload": json.loads(body) if isinstance(body, str) else body}]
        elif kind == "switch":
            assert node["propertyType"] == "msg" and node.get("checkall") in ("false", False), node["id"]
            value = _get(msg, node["property"])
            outputs, matched = [], False
            for rule in node["rules"]:
                hit = not matched and _rule(rule, value, matched)
                outputs.append(msg if hit else None)
                matched = matched or hit
        else:
            raise AssertionError(f"node type {kind!r} ({node_id}) is not modelled here")
        for out, targets in zip(outputs, node["wires"]):
            if out is not None:
                for target in targets:
                    send(target, out)

    send(start, {"topic": topic, "payload": payload.decode()})
    return reached
