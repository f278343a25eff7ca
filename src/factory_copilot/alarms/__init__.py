"""The alarms station: ISA-18.2 alarms from anomalies, one per abnormal situation, with operator commands,
SQLite state, an audit trail and EEMUA 191 KPIs.

    engine = AlarmEngine(line, "var/alarms.db")          # pure, clock-injected
    events = engine.ingest(anomaly)                       # -> list[AlarmEvent]
    result, events = engine.command(OperatorCommand("acknowledge", alarm_id, "op1"))
    events = engine.tick()                                # delays, shelve expiry, consequences, flood end
    engine.active(); engine.get(alarm_id); engine.consequences(root_id); engine.audit(alarm_id=None, since=None)

    fold(alarms)                                          # each root alarm with the consequences folded under it
    alarm_kpis(events, start, end)                        # alarms per hour, peak per 10 min, floods, bad actors

    station = AlarmStation(engine, anomalies, events_buffer, commands, reply)   # async wrapper
"""

from factory_copilot.alarms.engine import AlarmEngine, AlarmSettings, annunciated
from factory_copilot.alarms.grouping import Situation, fold
from factory_copilot.alarms.kpi import AlarmKpis, alarm_kpis
from factory_copilot.alarms.station import AlarmStation

__all__ = ["AlarmEngine", "AlarmKpis", "AlarmSettings", "AlarmStation", "Situation", "alarm_kpis", "annunciated", "fold"]
