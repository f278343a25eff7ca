"""Hand-made alarms and readings for copilot tests, a simulated incident helper, and a stream of the model's text."""

from __future__ import annotations

import asyncio
from pathlib import Path

from factory_copilot.records import Alarm, AlarmState, Anomaly, Mode, Priority, Reading


def alarm_for(asset: str, fault_type: str | None = None, probability: float = 0.0, contributions: dict | None = None,
              signal: str | None = None, kind: str = "multivariate", alarm_id: str = "A-1", message: str = "",
              mode: Mode = Mode("running"), ts: float = 1000.0) -> Alarm:
    an = Anomaly(ts=ts, asset=asset, kind=kind, score=12.0, threshold=5.0, signal=signal,
                 contributions=contributions or {}, fault_type=fault_type, fault_probability=probability, mode=mode)
    return Alarm(alarm_id, asset, an.condition, AlarmState.ACTIVE_UNACK, Priority.HIGH, message or f"{asset} anomaly",
                 ts, ts, an)


def ramp(key: str, start: float, end: float, t0: float = 400.0, t1: float = 1000.0, step: float = 5.0) -> list[Reading]:
    """Readings of one signal moving linearly from start to end, with a little deterministic wobble."""
    asset, signal = key.split(".", 1)
    n = int((t1 - t0) / step) + 1
    out = []
    for i in range(n):
        wobble = 0.001 * abs(end - start + 1) * ((-1) ** i)
        out.append(Reading(t0 + i * step, asset, signal, start + (end - start) * i / (n - 1) + wobble))
    return out


def make_tiny_qwen(path: str | Path, q4_k_m: bool = False) -> Path:
    """Generate the tiny random-weight Qwen2 GGUF with the repo's script (models/make_tiny_qwen.py)."""
    import importlib.util

    from factory_copilot.config import REPO_ROOT

    spec = importlib.util.spec_from_file_location("make_tiny_qwen", REPO_ROOT / "models" / "make_tiny_qwen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.write_tiny_qwen(path, q4_k_m=q4_k_m))


class TokenStream:
    """An async iterator of the model's text pieces; pass it as ``on_token`` and ``async for`` over it."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.text = ""

    def __call__(self, piece: str) -> None:
        self.text += piece
        self._queue.put_nowait(piece)

    def close(self) -> None:
        self._queue.put_nowait(None)

    def __aiter__(self) -> "TokenStream":
        return self

    async def __anext__(self) -> str:
        piece = await self._queue.get()
        if piece is None:
            raise StopAsyncIteration
        return piece
