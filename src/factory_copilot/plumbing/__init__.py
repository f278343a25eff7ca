"""Shared plumbing, one home each: buffers between stations, the MQTT session, SQLite, OPC UA vocabulary, logging, brokers, history files' time and label rules."""
