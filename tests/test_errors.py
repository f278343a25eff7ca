"""The watchdog acts on the kind of error a station raises: retry soon, retry slowly, or stay stopped and say why."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from factory_copilot.config import LineConfigError
from factory_copilot.copilot.language_model import ModelTimeout
from factory_copilot.detect.persist import ModelMismatchError
from factory_copilot.errors import AuthRefused, FactoryCopilotError, GiveUp, Transient
from factory_copilot.publish.session import InstanceConflict
from factory_copilot.service import LineService


async def watched(error: Exception, attempts: int, backoff_max_s: float, within_s: float = 5.0):
    """LineService's watchdog over a station that raises ``error``: its record, and when the station was started."""
    svc, stop, starts, enough = SimpleNamespace(restarts={}, stopped={}), asyncio.Event(), [], asyncio.Event()
    loop = asyncio.get_running_loop()

    async def station(stop_: asyncio.Event):
        starts.append(loop.time())
        if len(starts) >= attempts:
            enough.set()
        raise error

    task = asyncio.create_task(LineService._station(svc, "collect", station, stop, backoff_max_s=backoff_max_s,
                                                    backoff_s=0.01))
    done = asyncio.create_task(enough.wait())
    await asyncio.wait([done, task], timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
    record = dict(svc.stopped)
    stop.set()
    await asyncio.wait_for(task, 5)
    done.cancel()
    return svc, record, starts


async def test_a_station_that_gives_up_stays_stopped_and_says_why():
    # a restart would come within 0.05 s: half a second without one is ten back-offs
    svc, record, starts = await watched(InstanceConflict("another instance publishes this line"), 2, 0.05, within_s=0.5)
    assert len(starts) == 1 and not svc.restarts  # never started again
    assert svc.stopped == {"collect": "gave up: another instance publishes this line"}


async def test_a_transient_failure_is_retried_soon_and_counted():
    svc, record, starts = await watched(ModelTimeout("model busy"), 3, 0.05)
    assert len(starts) >= 3 and svc.restarts["collect"] >= 2
    assert max(b - a for a, b in zip(starts, starts[1:])) < 0.5


async def test_refused_credentials_are_retried_only_at_the_slow_pace_and_said():
    svc, record, starts = await watched(AuthRefused("broker refused user line-2"), 2, 0.3)
    assert record["collect"] == "credentials refused: broker refused user line-2"
    assert len(starts) == 2 and starts[1] - starts[0] >= 0.3  # the slow pace at once, not a transient's 0.01 s


@pytest.mark.parametrize("error", [LineConfigError("line.yaml", ["x: bad"]), ModelMismatchError("other line")])
def test_the_projects_errors_share_one_root_and_say_their_kind(error):
    assert isinstance(error, FactoryCopilotError) and isinstance(error, GiveUp)
    assert isinstance(error, ValueError)  # callers that catch ValueError still do
    assert isinstance(ModelTimeout("slow"), Transient) and isinstance(ModelTimeout("slow"), FactoryCopilotError)
