"""Browses an OPC UA server and prints a starting line file from its address space.

Folders/objects under Objects become assets, their variables become signals
(unit from the EngineeringUnits property, node id as the source). The normal
band is a placeholder around the current value, marked TODO: only the plant
engineer knows the real one.
"""

from __future__ import annotations

import math
import re

import yaml
from asyncua import Node, ua

from factory_copilot.collect.opcua import open_client, quiet_asyncua
from factory_copilot.collect.ua import unit_of
from factory_copilot.config import OpcuaConnection

TODO = "  # TODO: normal running band (placeholder around the value read while browsing)"


def _ident(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_").lower() or "unnamed"


async def _signal(var: Node, name: str) -> dict:
    unit = ""
    try:
        eu = await var.get_child(ua.QualifiedName("EngineeringUnits", 0))
        unit = unit_of(await eu.read_value())
    except Exception:  # a variable without EngineeringUnits: the engineer fills in the unit
        unit = "TODO"
    value = None
    try:
        dv = await var.read_data_value(raise_on_bad_status=False)
        value = float(dv.Value.Value) if dv.Value is not None and dv.Value.Value is not None else None
    except Exception:  # not a number (string, struct): still listed, band left at zero
        value = None
    if value is None or not math.isfinite(value):
        low, high = 0.0, 0.0
    else:
        margin = abs(value) * 0.1 or 1.0
        low, high = round(value - margin, 6), round(value + margin, 6)
    return {
        "name": name,
        "unit": unit,
        "normal": [low, high],
        "source": {"opcua": var.nodeid.to_string()},
    }


async def browse_line(
    endpoint: str, site: str = "TODO-site", line: str = "TODO-line", connection: OpcuaConnection | None = None
) -> str:
    """YAML text of a line file built from the server at ``endpoint``."""
    conn = connection or OpcuaConnection(endpoint=endpoint)
    if conn.endpoint != endpoint:
        conn = conn.model_copy(update={"endpoint": endpoint})
    client = await open_client(conn, auto_reconnect=False)
    assets = []
    try:
        for obj in await client.nodes.objects.get_children():
            if obj.nodeid.NamespaceIndex == 0:  # the server's own nodes (Server, Aliases, ...)
                continue
            if await obj.read_node_class() != ua.NodeClass.Object:
                continue
            asset_name = (await obj.read_browse_name()).Name
            try:
                title = (await obj.read_description()).Text or asset_name
            except Exception:
                title = asset_name
            signals = []
            for var in await obj.get_children(nodeclassmask=ua.NodeClass.Variable):
                name = (await var.read_browse_name()).Name
                signals.append(await _signal(var, _ident(name)))
            if signals:
                assets.append({"id": _ident(asset_name), "name": title, "signals": signals})
    finally:
        with quiet_asyncua():
            await client.disconnect()
    body = {
        "site": site,
        "line": line,
        "description": f"browsed from {endpoint}",
        "mode_signal": None,
        "opcua": {"endpoint": endpoint, "security": conn.security},
        "assets": assets,
    }
    text = yaml.safe_dump(body, sort_keys=False, default_flow_style=None, width=120)
    header = f"# Line file browsed from {endpoint}; check every TODO before use.\n"
    return header + "\n".join(line + TODO if line.lstrip().startswith("normal:") else line for line in text.splitlines()) + "\n"
