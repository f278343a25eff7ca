"""Where the tests find the Tennessee Eastman set: $FACTORY_COPILOT_TEP, else ../shared/data/tep beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

from factory_copilot.detect import tep

ROOT = Path(__file__).resolve().parents[2]
TEP_DIR = Path(os.environ.get(tep.ENV) or ROOT.parent / "shared" / "data" / "tep")
SKIP_REASON = f"TEP data not in {TEP_DIR} (no d00.dat; set {tep.ENV} or place the set at ../shared/data/tep)"
