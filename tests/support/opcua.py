"""A real asyncua server serving a line on a free 127.0.0.1 port, for tests.

Server ``init()`` costs ~1.5-2.5 s, so test modules share one server where they can
(module-scoped fixtures with ``loop_scope="module"``) and only tests that restart
or reconfigure the server make their own.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from factory_copilot.plumbing.broker import free_port
from factory_copilot.config import LineConfig, OpcuaConnection, load_line, SIMULATED_LINE
from factory_copilot.records import Quality, Reading, SourceState
from simulators.opcua_server import LineServer


def endpoint_on(port: int) -> str:
    return f"opc.tcp://127.0.0.1:{port}/factory-copilot/"


def line_with_opcua(line: LineConfig | None = None, **connection) -> LineConfig:
    """The simulated line (or ``line``) with its OPC UA connection replaced."""
    line = line or load_line(SIMULATED_LINE)
    return line.model_copy(update={"opcua": OpcuaConnection(**connection)})


async def start_server(line: LineConfig | None = None, port: int | None = None, **options) -> LineServer:
    line = line or load_line(SIMULATED_LINE)
    return await LineServer(line, endpoint_on(port or free_port()), **options).start()


def readings_for(keys: list[str], ts: float | None = None, value: float = 1.0, quality: Quality = Quality.GOOD) -> list[Reading]:
    ts = time.time() if ts is None else ts
    return [Reading(ts, k.split(".")[0], k.split(".")[1], value, quality) for k in keys]


async def drain(buffer, until, timeout_s: float = 10.0, states: list[SourceState] | None = None) -> list[Reading]:
    """Take readings from ``buffer`` until ``until(readings)`` is true; fail after ``timeout_s``.

    The collectors' SourceState records go to ``states`` when given, else are passed over.
    """
    got: list[Reading] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not until(got):
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout_s} s with {len(got)} readings: {got[-3:]}")
        try:
            item = await asyncio.wait_for(buffer.get(), left)
        except asyncio.TimeoutError:
            continue
        if isinstance(item, SourceState):
            if states is not None:
                states.append(item)
            continue
        got.append(item)
    return got


def port_of(server: LineServer) -> int:
    return int(server.endpoint.rsplit(":", 1)[1].split("/")[0])


__all__ = ["start_server", "line_with_opcua", "readings_for", "drain", "endpoint_on", "port_of", "Path"]
