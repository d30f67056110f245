import math

import pytest

from verispec.train.schedules import EpsSchedule, LambdaSchedule, LrSchedule, Ramp


@pytest.mark.parametrize("ramp", list(Ramp))
def test_eps_schedules_reach_eps_and_never_exceed(ramp):
    s = EpsSchedule(0.5, ramp, start=0.1, warmup=0.4)
    values = [s.at(e, 20) for e in range(20)]
    assert all(0 <= v <= 0.5 + 1e-12 for v in values)
    assert values[-1] == pytest.approx(0.5) and values[8:] == [pytest.approx(0.5)] * 12
    assert values == sorted(values)
    if ramp is not Ramp.CONSTANT:
        assert values[0] < 0.5


def test_lr_warmup_and_cosine_decay():
    s = LrSchedule(1.0, warmup=0.2, final=0.1)
    assert s.at(0, 10) == pytest.approx(0.5) and s.at(1, 10) == pytest.approx(1.0)
    assert s.at(2, 10) == pytest.approx(1.0)
    assert s.at(9, 10) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 7 / 8)) / 2)
    with pytest.raises(ValueError):
        LrSchedule(1.0, warmup=1.5)


def test_lambda_schedule_is_linear():
    s = LambdaSchedule(1.0, 3.0)
    assert [s.at(e, 3) for e in range(3)] == [1.0, 2.0, 3.0]
