"""Store station: SQLite for trends, alarms, diagnoses, conversations and feedback."""
