"""The time-limit planner: a pure function of measured speeds, data sizes and time left."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hemaflow.config import ConfigError, load_config
from hemaflow.planning import (
    Budget,
    Measured,
    PlanError,
    Workload,
    deadline_overrides,
    epoch_seconds,
    fixed_seconds,
    job_start,
    make_plan,
    member_seconds,
    parse_time_limit,
)

FAST = Measured("fast", 0.90, 100.0, 400.0, 2.0, 200, first_epoch_seconds=4.0, overhead_seconds=5.0)
SLOW = Measured("slow", 0.89, 50.0, 300.0, 4.0, 200, first_epoch_seconds=6.0, overhead_seconds=5.0)
POOR = Measured("poor", 0.50, 200.0, 800.0, 1.0, 200, first_epoch_seconds=2.0, overhead_seconds=5.0)
WORK = Workload(
    train_images=800, val_images=100, eval_images=200, corruption_images=1000, full_epochs=4
)


def plan_for(minutes: float, **budget) -> object:
    return make_plan([FAST, SLOW], WORK, Budget(seconds_left=minutes * 60, **budget))


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("90s", 1.5), ("55m", 55.0), ("1h30m", 90.0), ("2h", 120.0), ("60", 60.0), (" 7.5 ", 7.5)],
)
def test_time_limits_parse_to_minutes(text, minutes):
    assert parse_time_limit(text) == pytest.approx(minutes)


@pytest.mark.parametrize("text", ["0", "0m", "-5", "-5m", "soon", "", "5x", "m", "1h-3m"])
def test_bad_time_limits_are_one_line_errors(text):
    with pytest.raises(PlanError) as info:
        parse_time_limit(text)
    assert "\n" not in str(info.value) and "--time-limit" in str(info.value)


def test_budget_minutes_are_validated():
    assert load_config(overrides={"budget.minutes": 0}).budget.minutes == 0
    with pytest.raises(ConfigError, match="budget.minutes"):
        load_config(overrides={"budget.minutes": -1})
    with pytest.raises(ConfigError, match="budget.max_epochs"):
        load_config(overrides={"budget.max_epochs": -1})
    with pytest.raises(ConfigError, match="budget.lengthen_at"):
        load_config(overrides={"budget.max_members": 2, "budget.lengthen_at": 3})


def test_a_budget_clock_starts_when_the_run_starts():
    assert deadline_overrides(0, now=1000.0) == {}
    config = load_config(overrides=deadline_overrides(55, now=1000.0))
    assert config.budget.minutes == 55 and config.budget.deadline == 1000.0 + 55 * 60


@pytest.mark.parametrize(
    "created",
    ["2026-12-03T06:00:00Z", "2026-12-03T06:00:00.123456789Z", "2026-12-03T07:00:00+01:00"],
)
def test_a_job_creation_time_starts_a_submitted_runs_clock(created):
    assert job_start(created) == pytest.approx(1796277600.0, abs=0.2)


@pytest.mark.parametrize(
    "created", ["", "{{$.pipeline_job_create_time_utc}}", "yesterday", "2026-12-03"]
)
def test_an_unfilled_creation_time_leaves_the_clock_to_the_plan(created):
    assert job_start(created) is None


def test_more_budget_never_means_fewer_members_or_epochs():
    previous = (0, 0)
    for minutes in [1, 1.5, 2, 2.5, 3, 4, 5, 7, 10, 30, 120]:
        plan = plan_for(minutes, views=4)
        count, epochs = len(plan.members), plan.members[0].epochs
        assert count >= previous[0]
        assert count > previous[0] or epochs >= previous[1]
        assert count * epochs >= previous[0] * previous[1]  # work only grows
        assert plan.predicted["total"] <= minutes * 60 * 0.85 + 1e-6
        previous = (count, epochs)
    assert previous == (3, WORK.full_epochs)  # max_members at full length in the end


@pytest.mark.parametrize("parallel", [False, True])
def test_time_left_after_max_members_lengthens_every_member(parallel):
    previous, lengthened = 0, []
    for minutes in [3, 4, 5, 7, 10, 30, 120]:
        plan = plan_for(minutes, max_epochs=3 * WORK.full_epochs, parallel=parallel)
        short = plan_for(minutes, parallel=parallel)  # max_epochs 0: full length at most
        epochs = {m.epochs for m in plan.members}
        assert len(epochs) == 1 and len(plan.members) == len(short.members)
        if len(plan.members) < 3:  # another member still fits before anyone trains longer
            assert plan.members == short.members
            continue
        (count,) = epochs
        assert previous <= count <= 3 * WORK.full_epochs
        assert plan.predicted["total"] <= minutes * 60 * 0.85 + 1e-6
        # It spends the time: one epoch more would not have fitted, unless at max_epochs.
        more = [epoch_seconds(FAST if m.backbone == "fast" else SLOW, WORK) for m in plan.members]
        longer = max(more) if parallel else sum(more)
        spare = plan.predicted["reserve"] - minutes * 60 * 0.15
        assert count == 3 * WORK.full_epochs or spare < longer
        lengthened.append(count)
        previous = count
    assert lengthened[0] >= WORK.full_epochs and lengthened[-1] == 3 * WORK.full_epochs


@pytest.mark.parametrize("parallel", [False, True])
def test_lengthen_at_spends_time_on_epochs_before_more_members(parallel):
    longest, previous, between = 3 * WORK.full_epochs, (0, 0), []
    for minutes in [m / 2 for m in range(2, 61)] + [120]:
        plan = plan_for(minutes, max_epochs=longest, lengthen_at=2, parallel=parallel)
        members_first = plan_for(minutes, max_epochs=longest, parallel=parallel)
        count, (epochs,) = len(plan.members), {m.epochs for m in plan.members}
        assert count >= previous[0] and (count > previous[0] or epochs >= previous[1])
        assert plan.predicted["total"] <= minutes * 60 * 0.85 + 1e-6
        if count < 2:  # the second member still comes at full length, as without lengthen_at
            assert plan.members == members_first.members
        if count > 2:  # a third member joins only once both train at max_epochs
            assert epochs == longest
        if count == 2 and epochs < longest:
            assert len(members_first.members) >= count  # members first would have had more
        if count == 2 and len(members_first.members) == 3:
            between.append(epochs)
        previous = (count, epochs)
    # In the end max_members train at max_epochs; somewhere before, two lengthened members
    # stood where the members-first order already had a third.
    assert previous == (3, longest)
    assert between, "no budget where lengthening two members beat adding a third"
    assert all(epochs > WORK.full_epochs for epochs in between)


def test_lengthen_at_max_members_is_the_default_order():
    for minutes in [2, 5, 10, 30]:
        a = plan_for(minutes, max_epochs=12, lengthen_at=3)
        assert a.members == plan_for(minutes, max_epochs=12).members


def test_short_budget_trains_one_member_below_full_length():
    plan = plan_for(1.0)
    assert len(plan.members) == 1 and 1 <= plan.members[0].epochs < WORK.full_epochs
    assert plan.members[0].backbone == "fast"


def test_too_short_a_limit_is_refused_naming_the_minimum():
    with pytest.raises(PlanError, match=r"needs at least (\d+\.\d) min") as info:
        plan_for(0.5, spent_seconds=120)
    need = float(info.value.args[0].split("at least ")[1].split(" min")[0])
    # That minimum, counted from the run's start, is indeed enough for one epoch of one member.
    left = need * 60 - 120 + 6  # rounding to 0.1 min
    plan = plan_for(left / 60, spent_seconds=120)
    assert plan.members[0].epochs >= 1


def test_predictions_add_up():
    plan = plan_for(10, views=2)
    p = plan.predicted
    assert p["total"] == pytest.approx(p["train"] + p["ensemble"] + p["evaluate"])
    assert p["train"] == pytest.approx(sum(m.predicted_seconds for m in plan.members))
    assert p["reserve"] == pytest.approx(p["seconds_left"] - p["total"])
    m = plan.members[0]
    by_hand = 10 + 5 + (4.0 - 2.0) + m.epochs * epoch_seconds(FAST, WORK)
    assert m.predicted_seconds == pytest.approx(by_hand)
    # An epoch: compare's training part (minus validation) scaled to 800 images, then val.
    assert epoch_seconds(FAST, WORK) == pytest.approx(800 * (2.0 - 100 / 400) / 200 + 100 / 400)
    team = [FAST if mm.backbone == "fast" else SLOW for mm in plan.members]
    fixed = fixed_seconds(team, WORK, plan.views, 10.0)
    assert p["evaluate"] == pytest.approx(fixed["evaluate"])
    # Members stop one after another, the last by the end of the training window.
    offsets = [mm.deadline_offset for mm in plan.members]
    assert offsets == sorted(offsets)
    assert offsets[-1] == pytest.approx(600 * 0.85 - p["ensemble"] - p["evaluate"])


def test_writing_the_corruptions_is_planned_once_whatever_the_ensemble():
    budget = Budget(seconds_left=300.0)
    slow = replace(WORK, generation_seconds=120.0)
    for team in ([FAST], [FAST, SLOW]):
        before, after = fixed_seconds(team, WORK, 2, 10.0), fixed_seconds(team, slow, 2, 10.0)
        assert after["evaluate"] == pytest.approx(before["evaluate"] + 120.0)
        assert after["ensemble"] == before["ensemble"]
    # It comes out of the training window: fewer epochs or members, never a later finish.
    cheap, costly = make_plan([FAST, SLOW], WORK, budget), make_plan([FAST, SLOW], slow, budget)
    assert costly.predicted["evaluate"] > cheap.predicted["evaluate"] + 100
    trained = [sum(m.epochs for m in p.members) for p in (cheap, costly)]
    assert trained[1] < trained[0]
    assert costly.predicted["total"] <= budget.seconds_left * (1 - budget.margin) + 1e-6


def test_side_by_side_members_cost_the_longest_not_the_sum():
    sequential = plan_for(3)
    parallel = plan_for(3, parallel=True)
    assert parallel.predicted["train"] == pytest.approx(
        max(m.predicted_seconds for m in parallel.members)
    )
    assert len(parallel.members) >= len(sequential.members)
    assert len(parallel.members) > 1
    assert len({m.deadline_offset for m in parallel.members}) == 1


def test_close_backbones_alternate_and_a_clear_winner_gets_seeds():
    close = plan_for(30)
    assert [m.backbone for m in close.members] == ["fast", "slow", "fast"]
    assert [m.seed for m in close.members] == [1337, 1338, 1339]
    clear = make_plan([FAST, POOR], WORK, Budget(seconds_left=1800))
    assert {m.backbone for m in clear.members} == {"fast"} and len(clear.members) == 3


def test_views_shrink_only_when_they_do_not_fit():
    assert plan_for(30, views=4).views == 4
    tight = plan_for(1.5, views=8)
    assert tight.views < 8
    member = tight.members[0]
    assert member_seconds(FAST, WORK, member.epochs, 10.0) == pytest.approx(
        member.predicted_seconds
    )


def test_compare_results_become_measurements():
    result = {
        "backbone": "fast",
        "train_images_per_s": 100.0,
        "infer_images_per_s": 400.0,
        "train_images": 200,
        "epoch_seconds": 2.0,
        "first_epoch_seconds": 4.0,
        "overhead_seconds": 5.0,
    }
    assert Measured.from_result(result, 0.9) == FAST
    with pytest.raises(PlanError, match="no usable speeds"):
        Measured.from_result({"backbone": "x", "train_images_per_s": 0}, 0.5)


def test_a_one_epoch_comparison_plans_with_its_steady_epoch():
    from hemaflow.components.compare import epoch_timing

    one = epoch_timing([4000 / 29.0], 4000, 60.0, [20.0])
    assert one["epoch_seconds"] == 20.0 and one["first_epoch_seconds"] == pytest.approx(29.0)
    assert one["overhead_seconds"] == pytest.approx(31.0)
    # With epochs after the first, those are the steady ones.
    two = epoch_timing([4000 / 29.0, 4000 / 18.0], 4000, 80.0, [20.0, 17.5])
    assert two["epoch_seconds"] == pytest.approx(18.0)
    # A fit read from an older record (no steady seconds) keeps its first epoch.
    assert epoch_timing([4000 / 29.0], 4000, 60.0)["epoch_seconds"] == pytest.approx(29.0)
