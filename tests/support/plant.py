"""The simulated line served over OPC UA (and, for some assets, MQTT), with the service watching it, for tests.

The line is already running when the service connects (its start-up is simulated faster
than real time first). The OPC UA server and the broker can be killed and started again
in the middle of a run; the simulator keeps stepping and writes nowhere meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from factory_copilot.config import SIMULATED_LINE, LineConfig, MqttConnection, load_line
from factory_copilot.detect.persist import TrainedDetector
from factory_copilot.plumbing.broker import free_port
from factory_copilot.publish import Topics
from factory_copilot.service import LineService, ServicePaths
from simulators import FaultScenario, ModeSchedule, SimulatedLine
from simulators.mqtt_publisher import ReadingPublisher
from simulators.opcua_server import LineServer
from simulators.runner import run_simulation
from tests.support.opcua import endpoint_on


def line_for(broker, *, mqtt_assets: tuple[str, ...] = (), service: dict | None = None) -> LineConfig:
    """The simulated line on a free OPC UA port and the test's broker; ``mqtt_assets`` are read over MQTT instead."""
    base = load_line(SIMULATED_LINE)
    data = base.model_dump(mode="json")
    data["opcua"]["endpoint"] = endpoint_on(free_port())
    data["mqtt"] = MqttConnection(host=broker.host, port=broker.port, protocol=broker.protocol).model_dump(mode="json")
    for asset in data["assets"]:
        if asset["id"] in mqtt_assets:
            for s in asset["signals"]:
                s["source"].pop("opcua", None)
    if service:
        data["service"] = {**data["service"], **service}
    return LineConfig.model_validate(data)


class Plant:
    """The simulated line (already running), its OPC UA server, its MQTT publisher, and the service watching it."""

    def __init__(self, broker, tmp_path: Path, models: TrainedDetector, *, mqtt_assets: tuple[str, ...] = (),
                 health_port: int | None = None):
        self.broker = broker
        self.line = line_for(broker, mqtt_assets=mqtt_assets)
        self.mqtt_assets = mqtt_assets
        self.topics = Topics(self.line.site, self.line.line)
        self.paths = ServicePaths(tmp_path / "state")
        self.tmp_path = tmp_path
        self.models = models
        self.health_port = health_port
        self.sim = SimulatedLine(self.line, seed=11, dt_s=1.0, schedule=ModeSchedule.running(startup_s=120),
                                 start_ts=time.time() - 600)
        self.sim.steps(600)  # start-up is over before the service connects
        self.stop_line = asyncio.Event()
        self.service: LineService | None = None
        self.publisher: ReadingPublisher | None = None

    async def start(self) -> "Plant":
        self.server = await LineServer(self.line, self.line.opcua.endpoint, pki_dir=self.tmp_path / "pki").start()
        if self.mqtt_assets:
            self.publisher = await ReadingPublisher(self.line, self.line.mqtt).start(wait_s=10)
        self.line_task = asyncio.create_task(run_simulation(self.sim, speed=1.0, server=self.server,
                                                            publisher=self.publisher, stop=self.stop_line))
        await self.start_service()
        return self

    async def start_service(self) -> LineService:
        self.service = LineService(self.line, self.models, self.paths, health_port=self.health_port)
        self.stop_service = asyncio.Event()
        self.service_task = asyncio.create_task(self.service.run(self.stop_service))
        await asyncio.wait_for(self.service.collector.connected.wait(), 30)
        return self.service

    async def stop_service_now(self) -> None:
        self.stop_service.set()
        await asyncio.wait_for(self.service_task, 30)

    async def kill_opcua(self) -> None:
        await self.server.stop()  # the simulator's writes go nowhere until it is back

    async def restart_opcua(self) -> None:
        await self.server.start()

    def inject(self, fault: str = "pump_cavitation", severity: float = 2.0, ramp_s: float = 10.0) -> None:
        self.sim.inject(FaultScenario(fault, start_s=0.0, severity=severity, ramp_s=ramp_s))

    async def close(self) -> None:
        if self.service and not self.service_task.done():
            await self.stop_service_now()
        self.stop_line.set()
        await self.line_task
        if self.publisher:
            await self.publisher.stop()
        await self.server.stop()


async def condition(check, timeout_s: float = 30.0) -> None:
    """Wait until ``check()`` holds (it reads another station's counters, which have no event to await)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
