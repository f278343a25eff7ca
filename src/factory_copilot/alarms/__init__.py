"""The alarms station: ISA-18.2 alarms from anomalies, with operator commands, SQLite state and an audit trail.

    engine = AlarmEngine(line, "var/alarms.db")          # pure, clock-injected
    events = engine.ingest(anomaly)                       # -> list[AlarmEvent]
    result, events = engine.command(OperatorCommand("acknowledge", alarm_id, "op1"))
    events = engine.tick()                                # delays, shelve expiry, flood end
    engine.active(); engine.get(alarm_id); engine.audit(alarm_id=None, since=None)

    station = AlarmStation(engine, anomalies, events_buffer, commands, reply)   # async wrapper
"""

from factory_copilot.alarms.engine import AlarmEngine, AlarmSettings, annunciated
from factory_copilot.alarms.station import AlarmStation

__all__ = ["AlarmEngine", "AlarmSettings", "AlarmStation", "annunciated"]
