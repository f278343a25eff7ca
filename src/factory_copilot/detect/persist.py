"""Saving trained detect models to disk and loading them back, bound to the line file they were trained for."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import joblib

from factory_copilot import __version__
from factory_copilot.config import LineConfig
from factory_copilot.detect.checks import SignalChecks
from factory_copilot.detect.classify import FaultClassifier
from factory_copilot.detect.multivariate import LineDetector
from factory_copilot.errors import GiveUp

log = logging.getLogger(__name__)

# 2: modes declared by the line file, operating-point features, out-of-sample calibration;
# 3: no scikit-learn object inside (the classifier's trees as numpy arrays), so serving loads without it;
# 4: signals a short history cannot pin the level of, judged against their recent level (LineDetector.drifting_)
# 5: the values the signals the detector leaves out held in the history, for the unseen check (seen, seen_tolerance)
FORMAT = 5


class ModelMismatchError(GiveUp, ValueError):
    """The model file was trained for another line file (or is not a detect model)."""


@dataclass
class TrainedDetector:
    """What `factory-copilot train` produces: the detector, the classifier and the learnt check tolerances."""

    fingerprint: str
    line: str
    detector: LineDetector
    classifier: FaultClassifier | None = None
    stuck_tolerance: dict[str, float] = field(default_factory=dict)
    stuck_exempt: set[str] = field(default_factory=set)
    # signal -> (low, high, rows) bands of the values it held in the history (SignalChecks.learn_seen), their tolerance
    seen: dict[str, tuple] = field(default_factory=dict)
    seen_tolerance: dict[str, float] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def describe(self) -> str:
        """Which detector this is, in one line: trained when, on what, for which signals and modes."""
        m = self.metadata
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(m["trained_at"])) if m.get("trained_at") else "unknown"
        det = self.detector
        modes = ", ".join(getattr(det, "models_", {})) or "none"
        classes = [str(c) for c in self.classifier.classes_] if self.classifier is not None else []
        return (f"trained {when} for {self.line} on {m.get('rows', '?')} rows ({m.get('normal_rows', '?')} normal); "
                f"{len(getattr(det, 'signals_', []))} signals; modes {modes}; "
                + (f"fault classes {', '.join(classes)}" if classes else "no fault classes"))

    def checks(self, line: LineConfig, **kwargs) -> SignalChecks:
        """The single-signal checks as trained: learnt tolerances, no stuck check where normal is flat, and the values
        the signals the detector leaves out held (the unseen check)."""
        return (SignalChecks(line, stuck_tolerance=self.stuck_tolerance or None, **kwargs)
                .exempt_from_stuck(self.stuck_exempt).watch_unseen(self.seen, self.seen_tolerance))


def save_detector(path: str | Path, models: TrainedDetector) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump({"format": FORMAT, "version": __version__, "models": models}, path, compress=3)
    return path


def load_detector(path: str | Path, line: LineConfig, line_path: str | Path = "<line>",
                  announce: bool = True) -> TrainedDetector:
    """Load models; fails with a clear message if they were trained for a different line file.

    ``announce``: log which detector it is (a caller that reports it itself, like ``check``, says False)."""
    path = Path(path)
    try:
        blob = joblib.load(path)
    except FileNotFoundError:
        raise ModelMismatchError(f"{path}: no model file; run `factory-copilot train` first") from None
    except Exception as exc:  # pickle errors come in many types
        raise ModelMismatchError(f"{path}: not a readable detect model file ({exc})") from None
    if isinstance(blob, dict) and isinstance(blob.get("format"), int) and blob["format"] != FORMAT:
        raise ModelMismatchError(f"{path}: a detect model file of format {blob['format']} (this version reads {FORMAT}); "
                                 f"retrain with `factory-copilot train --line {line_path}`")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or not isinstance(blob.get("models"), TrainedDetector):
        raise ModelMismatchError(f"{path}: not a factory-copilot detect model file (format {FORMAT})")
    models: TrainedDetector = blob["models"]
    if models.fingerprint != line.fingerprint():
        raise ModelMismatchError(
            f"{path}: trained for line {models.line!r} with fingerprint {models.fingerprint}, but {line_path} "
            f"({line.site}/{line.line}) has fingerprint {line.fingerprint()}: its assets or signals differ; "
            f"retrain with `factory-copilot train --line {line_path}`"
        )
    if announce:
        log.info("detector %s: %s", path, models.describe())
    return models
