"""The physics of each asset on the packaging line, coupled through shared process quantities.

One small class per asset. The line program (the PLC sequence) turns the operating mode into
targets; the line speed drives the infeed conveyor, filler and tunnel belt; the filler's bowl
level controller sets the pump's flow demand; the filler's valves draw compressed air. Fault
levels (0 = healthy, 1 = full severity) enter the physics here; sensor faults do not (they are
applied to the measurement in ``simulators.line``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from simulators import modes
from simulators.noise import Wander, lag_gain, toward
from simulators.scenarios import Segment

KW_PER_AMP = math.sqrt(3) * 400.0 / 1000.0  # 400 V three-phase, unity power factor (resistive heaters)
NOMINAL_SPEED = 120.0  # packs/min the line is designed around


@dataclass(slots=True)
class Targets:
    """What the line program asks of the assets this step."""

    speed_setpoint: float  # packs/min
    pump_rpm: float
    tunnel_c: float  # heat-tunnel temperature setpoint
    fan_rpm: float
    bowl_bar: float  # filler bowl gas pressure (0 = vented)
    flush_l_min: float  # least product through the bowl (flushed to drain during changeover)
    reject_extra: float  # % rejects from set-up bottles (start-up and changeover)


class LineProgram:
    """The line PLC: the operating mode's targets, and the line speed ramped by the drives."""

    ACCEL = 2.0  # packs/min per s: drives ramp 0 -> 120 packs/min in a minute
    DECEL = 30.0  # packs/min per s: a controlled stop takes ~4 s
    STANDBY_C = 120.0  # tunnel kept warm while the line is stopped
    PRODUCT_C = 185.0
    TUNNEL_RAMP = 0.3  # degC/s setpoint ramp on heat-up, so the zones do not overshoot
    TEST_RUN_SPEED = 40.0  # packs/min test run at the end of a changeover

    def __init__(self, dt_s: float):
        self.dt = dt_s
        self.line_speed = 0.0
        self.tunnel_sp = self.STANDBY_C

    def step(self, seg: Segment, elapsed: float, product_speed: float) -> Targets:
        mode, d = seg.mode, seg.duration_s
        if mode is modes.RUNNING:
            t = Targets(product_speed, 2850.0, self.PRODUCT_C, 1400.0, 1.5, 0.0, 0.0)
        elif mode is modes.STARTUP:
            ramp_from = min(60.0, 0.2 * d)
            ramp_to = d - 60.0 if d >= 240.0 else 0.8 * d
            share = min(max((elapsed - ramp_from) / max(ramp_to - ramp_from, 1.0), 0.0), 1.0)
            pump = 2850.0 if elapsed >= min(20.0, 0.1 * d) else 0.0
            t = Targets(round(product_speed * share), pump, self.PRODUCT_C, 1400.0, 1.5, 0.0, 2.0)
        elif mode is modes.CHANGEOVER:
            test_run = elapsed >= 0.6 * d
            # the bowl is flushed to drain at a steady flow until the test run takes over
            t = Targets(self.TEST_RUN_SPEED if test_run else 0.0, 1500.0, self.PRODUCT_C, 1400.0, 0.45, 40.0, 2.5)
        else:  # idle: line stopped, pump off, tunnel on standby
            t = Targets(0.0, 0.0, self.STANDBY_C, 900.0, 0.0, 0.0, 0.0)
        rate = self.ACCEL if t.speed_setpoint > self.line_speed else self.DECEL
        self.line_speed = toward(self.line_speed, t.speed_setpoint, rate * self.dt)
        if t.tunnel_c > self.tunnel_sp:
            self.tunnel_sp = min(t.tunnel_c, self.tunnel_sp + self.TUNNEL_RAMP * self.dt)
        else:
            self.tunnel_sp = t.tunnel_c  # standby: the heaters switch off and the tunnel cools freely
        return t


class Conveyor:
    """Infeed conveyor: induction motor on a VFD driving a belt over a friction pulley.

    Load torque = friction + product on the belt (+ overload); current follows torque,
    motor slip grows with torque, the winding temperature lags I^2 losses, vibration follows speed.
    Belt slip: the pulley slides under the belt in intermittent episodes, so the belt runs
    slower than the motor implies, less torque is transmitted and throughput drops.
    """

    RATED_RPM = 1430.0
    BELT_PER_RPM = 1.03 / RATED_RPM  # m/s; the belt runs 3% faster than the packs need
    PACKS_PER_METRE = 2.0  # at nominal pitch: 1 m/s carries 120 packs/min
    MOTOR_SLIP = 0.02  # per unit torque
    TAU_THERMAL = 600.0

    def __init__(self, dt_s: float, ambient: float):
        self.dt = dt_s
        self.g_thermal = lag_gain(dt_s, self.TAU_THERMAL)
        self.temp = ambient
        self.throughput = 0.0
        self.slipping = False
        self.slip_events = 0

    def step(self, line_speed: float, supply: float, ambient: float, overload: float, slip: float,
             z_event: float, z_slip: float, out: dict[str, float]) -> float:
        cmd = self.RATED_RPM * line_speed / NOMINAL_SPEED
        on = cmd > 1.0
        f = cmd / self.RATED_RPM
        load = self.throughput / NOMINAL_SPEED
        torque = (0.35 + 0.15 * f + 0.5 * load + 0.6 * overload) if on else 0.0
        rpm = cmd * (1.0 - self.MOTOR_SLIP * torque)
        slip_frac = 0.0
        if slip > 0.0 and on:
            # two-state slip episodes: enter with p ~ 5%/s at full severity, last ~15 s
            if self.slipping:
                self.slipping = z_event < 1.5  # leave with p ~ 7%/s
            else:
                self.slipping = z_event > _upper_quantile(0.05 * slip * self.dt)
                self.slip_events += self.slipping
            slip_frac = slip * (0.03 + (0.2 + 0.05 * abs(z_slip)) * self.slipping)
        else:
            self.slipping = False
        belt = rpm * self.BELT_PER_RPM * (1.0 - slip_frac)
        capacity = belt * 60.0 * self.PACKS_PER_METRE  # packs/min the belt can carry at this speed
        self.throughput = min(line_speed * supply, capacity) if on else 0.0
        # a slipping pulley transmits less torque: the motor unloads slightly
        torque *= 1.0 - 0.8 * slip_frac
        current = 2.4 + 4.4 * torque if on else 0.0
        self.temp += self.g_thermal * (ambient + 0.75 * current * current - self.temp)
        out["infeed_conveyor.belt_speed"] = belt
        out["infeed_conveyor.motor_speed"] = rpm
        out["infeed_conveyor.motor_current"] = current
        out["infeed_conveyor.motor_temperature"] = self.temp
        out["infeed_conveyor.vibration"] = (0.25 + 1.5 * f**1.5) if on else 0.04
        out["infeed_conveyor.throughput"] = self.throughput
        return self.throughput


class ProductPump:
    """Centrifugal product pump on a VFD, solved on its pump curve against the system curve.

    Pump head dp = H0 (n/n0)^2 - B Q^2 (affinity laws); losses through the inlet filter and
    suction line and across the filler's inlet valve rise with Q^2; the operating flow is where
    they meet. Bearing wear adds friction (current, heat, exponential vibration); cavitation
    breaks down the head (noisy flow and discharge pressure, broadband vibration); a clogging
    filter multiplies the filter resistance (filter dp up, suction pressure and flow down).
    """

    RATED_RPM = 2850.0
    ACCEL = 150.0  # rpm/s
    DECEL = 400.0
    SHUTOFF_BAR = 3.6
    B = 6.2e-5  # bar/(L/min)^2, pump curve droop
    FILTER_K = 1.24e-5  # bar/(L/min)^2, clean inlet filter
    LINE_K = 4.1e-6  # bar/(L/min)^2, suction pipework
    EFFICIENCY = 0.55
    TAU_BEARING = 480.0
    NPSH_BAR = 0.45  # below this suction pressure vapour forms at the impeller eye and the head breaks down

    def __init__(self, dt_s: float, ambient: float):
        self.dt = dt_s
        self.g_bearing = lag_gain(dt_s, self.TAU_BEARING)
        self.rpm = 0.0
        self.bearing_temp = ambient
        self.supply = Wander(1.25, 0.03, 1800.0, dt_s)  # supply-tank head on the suction side
        self.cavity = Wander(0.0, 1.0, 3.0, dt_s)  # fast vapour-bubble collapse noise
        self.flow = 0.0
        self.suction = self.supply.value
        self.breakdown = 0.0
        self.g_breakdown = lag_gain(dt_s, 3.0)

    def step(self, cmd_rpm: float, valve_k: float, p_out: float, ambient: float, wear: float,
               cavitation: float, clog: float, z_supply: float, z_cavity: float,
               out: dict[str, float]) -> float:
        self.rpm = toward(self.rpm, cmd_rpm, (self.ACCEL if cmd_rpm > self.rpm else self.DECEL) * self.dt)
        s = self.rpm / self.RATED_RPM
        cav_noise = self.cavity.step(z_cavity)
        p_src = self.supply.step(z_supply) - 0.45 * cavitation
        # a starved suction (clogged filter, low supply) also breaks the head down: flow limits itself
        starved = min(max((self.NPSH_BAR - self.suction) / 0.3, 0.0), 1.0)
        self.breakdown += self.g_breakdown * (starved - self.breakdown)
        loss = 0.25 * cavitation * (1.0 + 0.4 * cav_noise) + 0.5 * self.breakdown
        head = self.SHUTOFF_BAR * s * s * max(1.0 - loss, 0.0)
        k_filter = self.FILTER_K * (1.0 + 9.0 * clog)
        num = p_src + head - p_out
        q = math.sqrt(num / (k_filter + self.LINE_K + self.B + valve_k)) if num > 0.0 and s > 0.05 else 0.0
        suction = self.suction = p_src - (k_filter + self.LINE_K) * q * q
        dp = max(head - self.B * q * q, 0.0)
        on = s > 0.01
        shaft_kw = q * dp / (600.0 * self.EFFICIENCY)
        current = (3.5 + 1.0 * s * s + 7.0 * shaft_kw + 1.5 * wear * s) if on else 0.0
        self.bearing_temp += self.g_bearing * (ambient + 31.0 * s * s + 22.0 * wear * s - self.bearing_temp)
        vib = (0.2 + 1.8 * s * s + 4.0 * wear * s * s + 3.0 * cavitation * (1.0 + 0.5 * abs(cav_noise))) if on else 0.04
        self.flow = q
        out["product_pump.speed"] = self.rpm
        out["product_pump.flow"] = q
        out["product_pump.suction_pressure"] = suction
        out["product_pump.discharge_pressure"] = suction + dp
        out["product_pump.filter_dp"] = k_filter * q * q
        out["product_pump.motor_current"] = current
        out["product_pump.vibration"] = vib
        out["product_pump.bearing_temperature"] = self.bearing_temp
        return q


class Filler:
    """Rotary filler: a product bowl kept at level by a PI-controlled inlet valve, pneumatic fill valves.

    The bowl empties at the fill rate (and through the flush during changeover); the inlet
    valve's resistance is the pump's system curve, so the pump's flow follows the filler.
    The fill valves draw compressed air in proportion to the fill rate.
    """

    BOWL_L = 150.0
    LEVEL_SP = 60.0
    L_PER_BOTTLE = 0.92  # product drawn per bottle incl. the return to the buffer tank
    VALVE_K_OPEN = 1.134e-4  # bar/(L/min)^2 across the inlet valve when fully open
    KP = 0.03  # valve opening per % level error
    TI = 60.0
    AIR_PER_BOTTLE = 50.0 / NOMINAL_SPEED  # Nm3/h per bottle/min

    def __init__(self, dt_s: float):
        self.dt = dt_s
        self.level = self.LEVEL_SP
        self.opening = 0.85
        self.integral = 0.0
        self.fill_rate = 0.0
        self.g_rate = lag_gain(dt_s, 1.0)
        self.g_nozzle = lag_gain(dt_s, 3.0)
        self.g_reject = lag_gain(dt_s, 30.0)  # rolling count over the last ~100 bottles
        self.nozzle = 0.05
        self.reject = 0.0
        self.product_temp = Wander(21.0, 0.7, 1800.0, dt_s)

    def valve_k(self, level_meas: float, pump_on: bool, flush_l_min: float) -> float:
        """PI level control with feedforward from the outflow; the valve resistance left for the pump."""
        if pump_on:
            e = self.LEVEL_SP - level_meas
            # feedforward: open in proportion to what the bowl is losing, PI trims the level
            feedforward = 0.1 + 0.75 * max(self.L_PER_BOTTLE * self.fill_rate, flush_l_min) / 110.0
            u = feedforward + self.integral + self.KP * e
            # conditional integration: no wind-up while the valve sits on a stop
            if 0.05 < u < 1.0 or (u >= 1.0 and e < 0) or (u <= 0.05 and e > 0):
                self.integral += self.KP * self.dt / self.TI * e
            self.opening = min(max(feedforward + self.integral + self.KP * e, 0.05), 1.0)
        return self.VALVE_K_OPEN / (self.opening * self.opening)

    def step(self, line_speed: float, infeed: float, inflow: float, t: Targets, z_temp: float,
             out: dict[str, float]) -> float:
        self.fill_rate += self.g_rate * (min(line_speed, infeed) - self.fill_rate)
        outflow = max(self.L_PER_BOTTLE * self.fill_rate, t.flush_l_min)
        self.level = min(max(self.level + (inflow - outflow) * self.dt / 60.0 / self.BOWL_L * 100.0, 0.0), 100.0)
        head = 0.0065 * self.level
        nozzle_target = t.bowl_bar + head if t.bowl_bar > 0.0 else 0.05
        self.nozzle += self.g_nozzle * (nozzle_target - self.nozzle)
        filling = self.fill_rate > 3.0
        weight = 501.0 + 4.0 * (self.nozzle - 1.89) if filling else 0.0
        if filling:
            reject_target = 0.35 + t.reject_extra + 0.6 * max(abs(weight - 501.0) - 2.5, 0.0)
            self.reject += self.g_reject * (reject_target - self.reject)
        else:
            self.reject = 0.0  # the rolling reject count restarts when the filler stops
        out["filler.fill_weight"] = weight
        out["filler.fill_rate"] = self.fill_rate
        out["filler.tank_level"] = self.level
        out["filler.product_temperature"] = self.product_temp.step(z_temp)
        out["filler.nozzle_pressure"] = self.nozzle
        out["filler.reject_rate"] = self.reject
        return self.fill_rate * self.AIR_PER_BOTTLE

    def valve_air(self, header_bar: float, out: dict[str, float]) -> None:
        """Fill-valve air pressure: header pressure less the drop in the filler's air line."""
        r = self.fill_rate / NOMINAL_SPEED
        out["filler.valve_air_pressure"] = header_bar - (0.1 + 0.5 * r * r)


class HeatTunnel:
    """Two-zone shrink tunnel: first-order thermal lags, PI control of the mean zone temperature.

    Both zones share one heater bank (54% of the power to zone 1, where the packs enter and take
    most heat). Element degradation cuts the power delivered at a given duty; the controller
    raises the duty until it saturates, then the zones sag. The controller acts on the measured
    temperatures, so a drifting zone-2 sensor pulls the real temperatures away.
    """

    P_MAX_KW = 30.0
    C_KJ_PER_K = 25.0  # per zone
    UA = 0.0315  # kW/K per zone at idle fan speed
    EXCHANGE = 0.03  # kW/K between the zones
    PRODUCT_LOAD = 0.035  # kW/K at nominal speed (packs and belt heated)
    ZONE1_SHARE = 0.54
    KP = 3.0  # % duty per K
    TI = 150.0

    def __init__(self, dt_s: float, ambient: float):
        self.dt = dt_s
        self.fan = 900.0
        self.t1, self.t2 = 122.6, 117.4  # warm standby
        self.duty = 20.0
        self.integral = 20.0

    def step(self, sp: float, fan_cmd: float, line_speed: float, meas_mean: float, ambient: float,
             degradation: float, out: dict[str, float]) -> None:
        e = sp - meas_mean
        u = self.integral + self.KP * e
        if 0.0 < u < 100.0 or (u >= 100.0 and e < 0) or (u <= 0.0 and e > 0):
            self.integral += self.KP * self.dt / self.TI * e
        self.duty = min(max(self.integral + self.KP * e, 0.0), 100.0)
        power = self.P_MAX_KW * self.duty / 100.0 * (1.0 - 0.5 * degradation)
        self.fan = toward(self.fan, fan_cmd, 50.0 * self.dt)
        ua = self.UA * (0.6 + 0.4 * self.fan / 900.0)
        load = self.PRODUCT_LOAD * line_speed / NOMINAL_SPEED
        d1, d2 = self.t1 - ambient, self.t2 - ambient
        q1 = self.ZONE1_SHARE * power - (ua + 0.7 * load) * d1 - self.EXCHANGE * (d1 - d2)
        q2 = (1.0 - self.ZONE1_SHARE) * power - (ua + 0.3 * load) * d2 - self.EXCHANGE * (d2 - d1)
        self.t1 += q1 * self.dt / self.C_KJ_PER_K
        self.t2 += q2 * self.dt / self.C_KJ_PER_K
        out["heat_tunnel.zone1_temperature"] = self.t1
        out["heat_tunnel.zone2_temperature"] = self.t2
        out["heat_tunnel.heater_power"] = power
        out["heat_tunnel.heater_current"] = power / KW_PER_AMP
        out["heat_tunnel.heater_duty"] = self.duty
        out["heat_tunnel.fan_speed"] = self.fan
        out["heat_tunnel.belt_speed"] = 0.003 * line_speed


class AirCompressor:
    """Load/unload screw compressor on a receiver: loads below cut-in, unloads above cut-out.

    Load duty is the controller's moving average of the loaded time; discharge temperature lags
    the loaded state; the header sits below the receiver by the pipework drop (~flow^2). A leak
    is extra demand: more flow, more loaded time, and the header sags.
    """

    FAD_NM3H = 125.0
    RECEIVER_NM3_PER_BAR = 1.2
    CUT_IN, CUT_OUT = 6.55, 7.0
    NOMINAL_FLOW = 70.0

    def __init__(self, dt_s: float, ambient: float):
        self.dt = dt_s
        self.receiver = 6.8
        self.loaded = False
        self.load_avg = 0.16
        self.current = 17.0
        self.vib = 1.5
        self.temp = ambient + 47.0
        self._substeps = max(1, math.ceil(dt_s - 1e-9))
        self._h = h = dt_s / self._substeps
        self.g_duty = lag_gain(h, 120.0)
        self.g_motor = lag_gain(h, 2.0)
        self.g_temp = lag_gain(h, 150.0)

    def step(self, demand_nm3h: float, ambient: float, out: dict[str, float]) -> float:
        # load/unload cycles last ~a minute: sub-step long simulation steps so the pressure switch stays exact
        for _ in range(self._substeps):
            supply = self.FAD_NM3H if self.loaded else 0.0
            self.receiver += (supply - demand_nm3h) / 3600.0 / self.RECEIVER_NM3_PER_BAR * self._h
            self.receiver = max(self.receiver, 0.0)
            if self.receiver <= self.CUT_IN:
                self.loaded = True
            elif self.receiver >= self.CUT_OUT:
                self.loaded = False
            self.load_avg += self.g_duty * (self.loaded - self.load_avg)
            loaded_amps = 38.0 + 4.0 * (self.receiver - 6.5)
            self.current += self.g_motor * ((loaded_amps if self.loaded else 17.0) - self.current)
            self.vib += self.g_motor * ((2.1 if self.loaded else 1.5) - self.vib)
            self.temp += self.g_temp * (ambient + (63.0 if self.loaded else 45.0) - self.temp)
        r = demand_nm3h / self.NOMINAL_FLOW
        header = self.receiver - 0.2 * r * r
        out["air_compressor.header_pressure"] = header
        out["air_compressor.air_flow"] = demand_nm3h
        out["air_compressor.motor_current"] = self.current
        out["air_compressor.load_duty"] = 100.0 * self.load_avg
        out["air_compressor.discharge_temperature"] = self.temp
        out["air_compressor.vibration"] = self.vib
        return header


_QUANTILE_CACHE: dict[float, float] = {}


def _upper_quantile(p: float) -> float:
    """z such that P(Z > z) = p for a standard normal (so one normal draw serves as a coin flip)."""
    p = min(max(p, 1e-9), 0.5)
    key = round(p, 6)
    z = _QUANTILE_CACHE.get(key)
    if z is None:
        z = _QUANTILE_CACHE[key] = NormalDist().inv_cdf(1.0 - key)
    return z
