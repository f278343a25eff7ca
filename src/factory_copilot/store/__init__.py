"""Store station: SQLite for trends, alarms, diagnoses, conversations and feedback."""

from factory_copilot.store.station import StoreStation
from factory_copilot.store.store import Retention, Store

__all__ = ["Retention", "Store", "StoreStation"]
