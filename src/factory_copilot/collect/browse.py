"""Browses an OPC UA server and prints a starting line file from its address space.

Objects and folders holding variables become assets (searched through
plant/area nesting below Objects), their variables become signals
(unit from the EngineeringUnits property, node id as the source). The normal
band is a placeholder around the current value, marked TODO: only the plant
engineer knows the real one.
"""

from __future__ import annotations


import yaml
from asyncua import Node, ua

from factory_copilot.collect.opcua import open_client, quiet_asyncua
from factory_copilot.plumbing.opcua import unit_of
from factory_copilot.collect.draft import ident, proposed_band
from factory_copilot.config import OpcuaConnection

MAX_DEPTH = 5  # folders below Objects searched for assets
TODO = "  # TODO: normal running band (placeholder: +-10 % of the one value read while browsing)"
# what browse cannot know, said at the top of the file it writes and on stderr by the command
BANDS_WARNING = (
    "the proposed normal bands are +-10 % around the single value each signal had at the moment of browsing "
    "(during a fault or a stop too): replace them with the bands of normal running before use, and declare the "
    "machine's operating modes under 'modes:'"
)


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
    low, high = proposed_band(value)
    return {
        "name": name,
        "unit": unit,
        "normal": [low, high],
        "source": {"opcua": var.nodeid.to_string()},
    }


async def _collect_assets(obj: Node, path: list[str], assets: list[dict], depth: int = 0) -> None:
    """An object or folder holding variables is an asset; sub-folders are searched (plant/area/line/asset nesting)."""
    if depth > MAX_DEPTH or await obj.read_node_class() != ua.NodeClass.Object:
        return
    name = (await obj.read_browse_name()).Name
    signals = []
    for var in await obj.get_children(refs=ua.ObjectIds.HasComponent, nodeclassmask=ua.NodeClass.Variable):
        signals.append(await _signal(var, ident((await var.read_browse_name()).Name)))
    if signals:
        try:
            title = (await obj.read_description()).Text or name
        except Exception:  # no description attribute: the browse name will do
            title = name
        taken = {a["id"] for a in assets}
        aid = ident(name) if ident(name) not in taken else ident("_".join([*path[-1:], name]))
        assets.append({"id": aid, "name": title, "signals": signals})
    for child in await obj.get_children(refs=ua.ObjectIds.HierarchicalReferences, nodeclassmask=ua.NodeClass.Object):
        await _collect_assets(child, [*path, name], assets, depth + 1)


async def browse_line(
    endpoint: str, site: str = "TODO-site", line: str = "TODO-line", connection: OpcuaConnection | None = None
) -> str:
    """YAML text of a line file built from the server at ``endpoint``."""
    conn = connection or OpcuaConnection(endpoint=endpoint)
    if conn.endpoint != endpoint:
        conn = conn.model_copy(update={"endpoint": endpoint})
    client = await open_client(conn, auto_reconnect=False)
    assets: list[dict] = []
    try:
        for obj in await client.nodes.objects.get_children():
            if obj.nodeid.NamespaceIndex != 0:  # skip the server's own nodes (Server, Aliases, ...)
                await _collect_assets(obj, [], assets)
    finally:
        with quiet_asyncua():
            await client.disconnect()
    body = {
        "site": site,
        "line": line,
        "description": f"browsed from {endpoint}",
        "opcua": {"endpoint": endpoint, "security": conn.security},
        "assets": assets,
    }
    text = yaml.safe_dump(body, sort_keys=False, default_flow_style=None, width=120)
    header = f"# Line file browsed from {endpoint}; check every TODO before use.\n# WARNING: {BANDS_WARNING}.\n"
    return header + "\n".join(line + TODO if line.lstrip().startswith("normal:") else line for line in text.splitlines()) + "\n"
