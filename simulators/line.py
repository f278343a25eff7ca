"""The simulated packaging line: couples the asset physics, applies faults and sensor behaviour, emits Readings.

``SimulatedLine.step()`` advances one time step and returns one Reading per signal of the line
file; ``simulate_frame`` runs the same model offline into a pandas DataFrame for training and
evaluation. No networking here: the transport layer runs the real-time loop on top.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from factory_copilot.config import LineConfig
from factory_copilot.records import Quality, Reading

from simulators import modes
from simulators.assets import AirCompressor, Conveyor, Filler, HeatTunnel, LineProgram, ProductPump
from simulators.noise import NormalRows, Wander

if TYPE_CHECKING:
    import pandas as pd
from simulators.scenarios import FaultScenario, ModeSchedule, Segment

# Sensor noise per signal: (absolute sd, sd relative to the value). Relative noise vanishes at
# standstill, as it does for encoders, flow meters and checkweighers.
SENSOR_NOISE: dict[str, tuple[float, float]] = {
    "line.mode": (0.0, 0.0),
    "line.speed_setpoint": (0.0, 0.0),
    "infeed_conveyor.belt_speed": (0.0, 0.004),
    "infeed_conveyor.motor_speed": (0.0, 0.0015),
    "infeed_conveyor.motor_current": (0.02, 0.01),
    "infeed_conveyor.motor_temperature": (0.1, 0.0),
    "infeed_conveyor.vibration": (0.0, 0.06),
    "infeed_conveyor.throughput": (0.0, 0.012),
    "product_pump.speed": (0.0, 0.001),
    "product_pump.flow": (0.1, 0.006),
    "product_pump.suction_pressure": (0.01, 0.0),
    "product_pump.discharge_pressure": (0.015, 0.0),
    "product_pump.filter_dp": (0.002, 0.02),
    "product_pump.motor_current": (0.02, 0.008),
    "product_pump.vibration": (0.0, 0.06),
    "product_pump.bearing_temperature": (0.1, 0.0),
    "filler.fill_weight": (0.0, 0.0022),
    "filler.fill_rate": (0.0, 0.008),
    "filler.tank_level": (0.2, 0.0),
    "filler.product_temperature": (0.05, 0.0),
    "filler.nozzle_pressure": (0.0, 0.008),
    "filler.valve_air_pressure": (0.015, 0.0),
    "filler.reject_rate": (0.0, 0.1),
    "heat_tunnel.zone1_temperature": (0.3, 0.0),
    "heat_tunnel.zone2_temperature": (0.3, 0.0),
    "heat_tunnel.heater_power": (0.0, 0.01),
    "heat_tunnel.heater_current": (0.0, 0.01),
    "heat_tunnel.heater_duty": (0.0, 0.0),  # the controller's own output: exact
    "heat_tunnel.fan_speed": (0.0, 0.003),
    "heat_tunnel.belt_speed": (0.0, 0.005),
    "air_compressor.header_pressure": (0.01, 0.0),
    "air_compressor.air_flow": (0.5, 0.01),
    "air_compressor.motor_current": (0.3, 0.0),
    "air_compressor.load_duty": (0.0, 0.0),  # computed by the compressor controller
    "air_compressor.discharge_temperature": (0.1, 0.0),
    "air_compressor.vibration": (0.0, 0.05),
}
PLANT_KEYS: list[str] = list(SENSOR_NOISE)
_N_PROCESS_DRAWS = 8
# A drifting sensor at full severity is off by this many widths of its running band.
DRIFT_BAND_WIDTHS = 1.7


class Plant:
    """The line's physics: every asset stepped in the order the couplings need, true values out."""

    def __init__(self, dt_s: float, seed: int):
        self.dt = dt_s
        self.seed = seed
        self.ambient = Wander(25.0, 1.5, 3600.0, dt_s)
        self.supply = Wander(0.995, 0.008, 120.0, dt_s)  # how well the upstream fills the infeed
        self.air_base = Wander(20.0, 2.0, 600.0, dt_s)  # other compressed-air users in the hall
        self.program = LineProgram(dt_s)
        amb = self.ambient.value
        self.conveyor = Conveyor(dt_s, amb)
        self.pump = ProductPump(dt_s, amb)
        self.filler = Filler(dt_s)
        self.tunnel = HeatTunnel(dt_s, amb)
        self.compressor = AirCompressor(dt_s, amb)
        self._product_speed: dict[int, float] = {}

    def product_speed(self, product: int) -> float:
        """Each production run has its product's line speed (115-125 packs/min), fixed by the seed."""
        speed = self._product_speed.get(product)
        if speed is None:
            speed = self._product_speed[product] = float(np.random.default_rng([self.seed, 7, product]).integers(115, 126))
        return speed

    def step(self, mode_code: int, seg: Segment, elapsed: float, product: int, faults: dict[str, float],
             meas: dict[str, float], z: list[float], out: dict[str, float]) -> None:
        ambient = self.ambient.step(z[0])
        t = self.program.step(seg, elapsed, self.product_speed(product))
        v = self.program.line_speed
        out["line.mode"] = float(mode_code)
        out["line.speed_setpoint"] = t.speed_setpoint
        g = faults.get
        infeed = self.conveyor.step(v, self.supply.step(z[1]), ambient, g("motor_overload", 0.0),
                                    g("belt_slip", 0.0), z[2], z[3], out)
        valve_k = self.filler.valve_k(meas["filler.tank_level"], t.pump_rpm > 0.0, t.flush_l_min)
        p_out = self.filler.nozzle + 0.1 if t.bowl_bar > 0.0 else 1.55
        inflow = self.pump.step(t.pump_rpm, valve_k, p_out, ambient, g("bearing_wear", 0.0),
                                g("pump_cavitation", 0.0), g("clogged_filter", 0.0), z[4], z[5], out)
        filler_air = self.filler.step(v, infeed, inflow, t, z[6], out)
        meas_mean = 0.5 * (meas["heat_tunnel.zone1_temperature"] + meas["heat_tunnel.zone2_temperature"])
        self.tunnel.step(self.program.tunnel_sp, t.fan_rpm, v, meas_mean, ambient, g("heater_degradation", 0.0), out)
        # a leak is an orifice: it blows harder the higher the pressure behind it
        leak = 50.0 * g("air_leak", 0.0) * self.compressor.receiver / 6.8
        header = self.compressor.step(self.air_base.step(z[7]) + filler_air + leak, ambient, out)
        self.filler.valve_air(header, out)


class SimulatedLine:
    """The packaging line, stepped in time: one Reading per line-file signal per step."""

    def __init__(
        self,
        line: LineConfig,
        seed: int = 0,
        dt_s: float = 1.0,
        schedule: ModeSchedule | None = None,
        scenarios: Sequence[FaultScenario] = (),
        start_ts: float | None = None,
    ):
        if not dt_s > 0:
            raise ValueError(f"dt_s must be > 0, got {dt_s}")
        keys = line.signal_keys(include_mode=True)
        unknown = [k for k in keys if k not in SENSOR_NOISE]
        if unknown:
            raise ValueError(f"line {line.site}/{line.line}: the simulator has no physics for {', '.join(unknown)}")
        self.line = line
        self.seed = seed
        self.dt_s = float(dt_s)
        self.schedule = schedule or ModeSchedule.default()
        self.start_ts = time.time() if start_ts is None else float(start_ts)
        self._scenarios: list[FaultScenario] = []
        self.t = 0.0
        self._plant = Plant(self.dt_s, seed)
        self._noise = NormalRows(np.random.default_rng(seed), _N_PROCESS_DRAWS + len(PLANT_KEYS))
        self._keys = keys
        self._out_index = [PLANT_KEYS.index(k) for k in keys]
        self._units = [line.signal(k).unit for k in keys]
        self._noise_sd = [SENSOR_NOISE[k] for k in PLANT_KEYS]
        lo, hi = [], []
        for k in PLANT_KEYS:
            phys = line.signal(k).physical if k in keys else None
            lo.append(phys[0] if phys else 0.0)
            hi.append(phys[1] if phys else float("inf"))
        self._lo, self._hi = lo, hi
        self._band_width = {k: _band_width(line, k) for k in keys}
        self._out: dict[str, float] = {}
        self._values: list[float] = []
        self._stuck: dict[int, float] = {}  # scenario id -> frozen reading
        self._segment_index, self._product = -1, 0
        self.mode = self.schedule.mode_at(0.0)
        # controllers read the previous step's measurements; start from the warm-standby state
        self._meas: dict[str, float] = {
            "filler.tank_level": self._plant.filler.level,
            "heat_tunnel.zone1_temperature": self._plant.tunnel.t1,
            "heat_tunnel.zone2_temperature": self._plant.tunnel.t2,
        }
        self._meas_index = [(k, PLANT_KEYS.index(k)) for k in self._meas]
        for s in scenarios:
            self._add(s)

    # -- faults -------------------------------------------------------------------------------
    def _add(self, scenario: FaultScenario) -> None:
        if scenario.is_sensor_fault and scenario.signal not in self._keys:
            raise ValueError(f"{scenario.fault_type}: signal {scenario.signal!r} is not a signal of this line")
        self._scenarios.append(scenario)

    def inject(self, scenario: FaultScenario) -> FaultScenario:
        """Start a fault at run time; its start_s/end_s count from now. Returns it with absolute times."""
        shifted = scenario.shifted(self.t)
        self._add(shifted)
        return shifted

    @property
    def scenarios(self) -> list[FaultScenario]:
        return list(self._scenarios)

    @property
    def active_faults(self) -> list[FaultScenario]:
        return [s for s in self._scenarios if s.active_at(self.t)]

    def ground_truth(self, start_ts: float | None = None) -> list[dict[str, Any]]:
        return [s.to_dict(self.start_ts if start_ts is None else start_ts) for s in self._scenarios]

    def fault_at(self, t_s: float) -> str:
        """Ground-truth label at time t: the active fault id(s) joined by '+', or 'normal'."""
        active = [s.fault_type for s in self._scenarios if s.active_at(t_s)]
        return "+".join(active) if active else "normal"

    # -- stepping -----------------------------------------------------------------------------
    def _advance(self) -> list[float]:
        """One step of physics and measurement; the measured values in PLANT_KEYS order."""
        t = self.t + self.dt_s
        seg = self.schedule.segment_at(t)
        mode = seg.mode
        faults: dict[str, float] = {}
        sensor: list[FaultScenario] = []
        for s in self._scenarios:
            if s.active_at(t):
                if s.is_sensor_fault:
                    sensor.append(s)
                else:
                    faults[s.fault_type] = faults.get(s.fault_type, 0.0) + s.level(t)
        z = self._noise.row()
        out = self._out
        if seg.index != self._segment_index:
            self._segment_index, self._product = seg.index, self.schedule.product_at(seg.index)
        self._plant.step(modes.code(mode), seg, t - seg.start_s, self._product, faults,
                         self._meas, z, out)
        true = map(out.__getitem__, PLANT_KEYS)
        noisy = [v + (a + r * abs(v)) * n for v, (a, r), n in zip(true, self._noise_sd, z[_N_PROCESS_DRAWS:])]
        # a sensor reads only within its physical range
        values = [lo if v < lo else hi if v > hi else v for v, lo, hi in zip(noisy, self._lo, self._hi)]
        for s in sensor:
            i = PLANT_KEYS.index(s.signal)
            if s.fault_type == "stuck_sensor":
                # freezes at the last reading before onset; still GOOD quality, that is the point
                frozen = self._stuck.setdefault(id(s), self._values[i] if self._values else values[i])
                values[i] = frozen
            else:
                drifted = values[i] + s.level(t) * DRIFT_BAND_WIDTHS * self._band_width[s.signal]
                values[i] = min(max(drifted, self._lo[i]), self._hi[i])
        meas = self._meas
        for key, i in self._meas_index:
            meas[key] = values[i]
        self.t = t
        self.mode = mode
        self._values = values
        return values

    def step(self) -> list[Reading]:
        """Advance dt_s; one GOOD Reading per signal of the line file (mode and setpoint included)."""
        values = self._advance()
        ts = self.start_ts + self.t
        return [
            Reading(ts, key.partition(".")[0], key.partition(".")[2], values[i], Quality.GOOD, "simulator", unit)
            for key, i, unit in zip(self._keys, self._out_index, self._units)
        ]

    def steps(self, n: int) -> list[Reading]:
        """Advance n steps at once (a speed factor above 1 in a real-time loop); all their Readings."""
        out: list[Reading] = []
        for _ in range(n):
            out.extend(self.step())
        return out

    def values(self) -> dict[str, float]:
        """The last published value of each signal, by 'asset.signal'."""
        return {key: self._values[i] for key, i in zip(self._keys, self._out_index)} if self._values else {}


def _band_width(line: LineConfig, key: str) -> float:
    lo, hi = line.signal(key).normal
    return (hi - lo) or 1.0


def simulate_frame(
    line: LineConfig,
    *,
    seed: int = 0,
    duration_s: float,
    dt_s: float = 1.0,
    scenarios: Sequence[FaultScenario] = (),
    schedule: ModeSchedule | None = None,
    start_ts: float = 0.0,
) -> pd.DataFrame:
    """Run the line offline: index 'ts', one column per process signal, 'mode' and ground-truth 'fault'."""
    import pandas as pd  # offline tables only: the demo's live line runs without pandas (and pandas 3's pyarrow)

    sim = SimulatedLine(line, seed=seed, dt_s=dt_s, schedule=schedule, scenarios=scenarios, start_ts=start_ts)
    n = int(round(duration_s / dt_s))
    keys = line.signal_keys()
    cols = [PLANT_KEYS.index(k) for k in keys]
    data = np.empty((n, len(PLANT_KEYS)))
    mode_column: list[str] = []
    ts = np.empty(n)
    for r in range(n):
        data[r] = sim._advance()
        ts[r] = sim.t
        mode_column.append(sim.mode.value)
    frame = pd.DataFrame(data[:, cols], columns=keys, index=pd.Index(start_ts + ts, name="ts"))
    frame["mode"] = mode_column
    labels = np.full(n, "normal", dtype=object)
    for s in sim.scenarios:
        end = np.inf if s.end_s is None else s.end_s
        active = (ts >= s.start_s) & (ts < end)
        labels[active] = np.where(labels[active] == "normal", s.fault_type, labels[active] + "+" + s.fault_type)
    frame["fault"] = labels
    return frame


