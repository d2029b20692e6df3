"""The credit rule and BOINC's recent average credit, on a fake clock (pure functions)."""

import math

import pytest

from protocol.credit import CREDIT_RULE, FLOPS_PER_CREDIT, RAC_HALF_LIFE_SECONDS, credit_for, recent_average

DAY = 86400.0


def test_the_rule_is_named_and_counts_cobblestones():
    assert CREDIT_RULE == "flops-v1"
    assert credit_for(1000, int(FLOPS_PER_CREDIT)) == 1000
    assert RAC_HALF_LIFE_SECONDS == 7 * DAY


@pytest.mark.parametrize("step", [DAY, DAY / 24, 7 * DAY])
def test_a_steady_100_credits_a_day_converges_to_100(step):
    rac, updated, now = 0.0, None, 0.0
    for _ in range(int(120 * DAY / step)):  # 120 days: 17 half-lives
        now += step
        rac, updated = recent_average(rac, updated, 100 * step / DAY, now), now
    assert rac == pytest.approx(100, rel=1e-3)


def test_an_idle_average_halves_every_seven_days():
    assert recent_average(80.0, 0.0, 0.0, 7 * DAY) == pytest.approx(40.0)
    assert recent_average(80.0, 0.0, 0.0, 14 * DAY) == pytest.approx(20.0)
    assert recent_average(80.0, 5.0, 0.0, 5.0) == 80.0  # no time passed: nothing decays


def test_the_first_credit_and_a_burst_use_boincs_short_interval_limit():
    first = recent_average(0.0, None, 100.0, 1000.0)
    assert first == pytest.approx(100 * math.log(2) / 7)
    # two grants a millisecond apart count (almost exactly) as one grant of their sum
    a = recent_average(recent_average(0.0, None, 60.0, 0.0), 0.0, 40.0, 0.001)
    assert a == pytest.approx(first, rel=1e-6)
    assert recent_average(10.0, 100.0, 5.0, 50.0) == pytest.approx(10.0 + 5 * math.log(2) / 7)  # clock went back
