"""Factory Copilot: an edge copilot for factory-line diagnostics."""

__version__ = "0.1.0"
