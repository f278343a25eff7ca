"""The public benchmarks count alarms as the alarm engine raises them: an on-delay to raise, an off-delay to clear."""

from __future__ import annotations

import numpy as np

from bench.batadal import alarms, off_delay_rows, on_delay_rows, score
from factory_copilot.alarms.engine import AlarmSettings


def test_flags_that_return_within_the_off_delay_are_the_same_alarm_and_a_clear_one_raises_again():
    on, off = on_delay_rows(1.0), off_delay_rows(1.0)
    assert on == 1 + int(np.ceil(AlarmSettings().on_delay_s)) and off == int(AlarmSettings().off_delay_by_kind["multivariate"])
    flags = np.zeros(1000, dtype=bool)
    flags[100:110] = True  # raised at its on-delay-th row
    flags[150:160] = True  # back within the off-delay: the same alarm
    flags[160 + off + 5 : 160 + off + 5 + on] = True  # after it cleared: a new one
    flags[700:701] = True  # one row: shorter than the on-delay, nothing
    raised, standing = alarms(flags, 1.0)
    assert raised == [100 + on - 1, 160 + off + 5 + on - 1]
    assert standing[100 + on - 1 : 160 + off - 1].all() and not standing[160 + off + 1 : 160 + off + 5].any()
    assert not standing[700:].any()


def test_an_event_is_caught_by_an_alarm_raised_in_it_or_standing_on_its_flagged_rows_not_by_one_cleared_before():
    flags = np.zeros(600, dtype=bool)
    labels = np.zeros(600, dtype=int)
    flags[95:130] = True  # raised five rows before the labelled fault, flagging on into it
    labels[100:130] = 1
    labels[400:430] = 1  # a second fault the flags never reach
    r = score(flags, labels, 1.0)
    assert r["events"] == 2 and r["caught"] == 1
    # one false alarm over the healthy rows: the alarm raised before the fault's label
    assert r["false_alarms_per_h"] == 1 / ((600 - 60) / 3600)
