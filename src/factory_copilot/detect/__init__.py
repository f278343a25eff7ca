"""The detect station: learns each line's normal, flags departures, runs the plant checks and names the likely fault."""

from factory_copilot.detect.multivariate import LineDetector

__all__ = ["LineDetector"]
