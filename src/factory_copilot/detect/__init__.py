"""The detect station: learns each line's normal, flags departures, runs the plant checks and names the likely fault."""

from factory_copilot.detect.checks import SignalChecks
from factory_copilot.detect.classify import FaultClassifier
from factory_copilot.detect.multivariate import LineDetector
from factory_copilot.detect.persist import TrainedDetector, ModelMismatchError, load_detector, save_detector
from factory_copilot.detect.station import DetectStation
from factory_copilot.names import UNKNOWN  # re-exported: the tests read the classifier's answer from here

__all__ = [
    "UNKNOWN",
    "TrainedDetector",
    "DetectStation",
    "FaultClassifier",
    "LineDetector",
    "ModelMismatchError",
    "SignalChecks",
    "load_detector",
    "save_detector",
]
