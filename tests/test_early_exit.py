"""Sample-wise early exit (budgeted protocol): thresholds, exit steps, costs."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from adafocus_pl.inference.early_exit import (
    ExitRule,
    ExitSchedule,
    cumulative_costs,
    exit_fractions_for_budget,
    exit_steps,
    expected_cost,
    gather_steps,
    geometric_exit_fractions,
    schedule_for_fractions,
    solve_exit_rule,
    thresholds_for_fractions,
)


def _confidence(n=400, steps=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    # confidence grows with the frames read, differently per video
    base = torch.rand(n, 1, generator=g)
    return (base + 0.08 * torch.arange(steps) + 0.05 * torch.rand(n, steps, generator=g)).clamp(max=1.0)


def test_first_step_over_its_threshold_is_the_exit():
    conf = torch.tensor([[0.9, 0.1, 0.1], [0.2, 0.8, 0.1], [0.1, 0.1, 0.1], [0.5, 0.95, 0.9]])
    rule = ExitRule((0.85, 0.9, float("-inf")))
    assert exit_steps(conf, rule).tolist() == [0, 2, 2, 1]


def test_geometric_fractions_sum_to_one_and_favour_early_steps_below_one():
    q = geometric_exit_fractions(0.5, 6)
    assert math.isclose(float(q.sum()), 1.0, rel_tol=1e-9)
    assert torch.all(q[:-1] > q[1:])
    assert torch.all(geometric_exit_fractions(2.0, 6).diff() > 0)


def test_thresholds_reproduce_the_exit_fractions_on_their_own_split():
    conf = _confidence()
    fractions = geometric_exit_fractions(0.7, 8)
    rule = ExitRule(thresholds_for_fractions(conf, fractions))
    counts = torch.bincount(exit_steps(conf, rule), minlength=8).double() / conf.shape[0]
    assert torch.allclose(counts, fractions, atol=1.5 / conf.shape[0])


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.6, 0.8])
def test_solved_rule_meets_its_budget_on_the_split_it_was_solved_on(budget):
    conf = _confidence()
    costs = cumulative_costs(1.0, 4.0, 8, count=conf.shape[0])
    rule = solve_exit_rule(conf, costs.mean(0), budget)
    assert rule.budget == budget and math.isinf(rule.thresholds[-1])
    spent = gather_steps(costs, exit_steps(conf, rule)).mean().item()
    assert abs(spent - budget * costs[0, -1].item()) < 0.03 * costs[0, -1].item()


def test_full_budget_reads_every_frame_and_tiny_budget_stops_at_once():
    conf = _confidence()
    costs = cumulative_costs(1.0, 4.0, 8, count=conf.shape[0]).mean(0)
    assert exit_steps(conf, solve_exit_rule(conf, costs, 1.0)).eq(7).all()
    assert exit_steps(conf, solve_exit_rule(conf, costs, 0.01)).eq(0).all()


def test_costs_count_f_L_only_on_kept_frames():
    keep = torch.tensor([[True, False, True], [False, False, False]])
    costs = cumulative_costs(1.0, 10.0, 3, keep=keep)
    assert costs.tolist() == [[11.0, 12.0, 23.0], [1.0, 2.0, 3.0]]
    assert expected_cost(torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64), costs[0]) == pytest.approx(17.0)


def test_bad_budgets_and_mismatched_steps_are_refused():
    conf = _confidence(steps=4)
    with pytest.raises(ValueError, match="budget"):
        solve_exit_rule(conf, torch.ones(4), 1.5)
    with pytest.raises(ValueError, match="3 thresholds"):
        exit_steps(conf, ExitRule((0.5, 0.5, float("-inf"))))


def test_rule_round_trips_through_json_values():
    rule = ExitRule((0.9, float("inf"), 0.8, float("-inf")), 0.6)  # inf: nobody leaves at step 1
    assert ExitRule.from_dict(json.loads(json.dumps(rule.as_dict(), allow_nan=False))) == rule
    assert ExitRule.from_dict({"thresholds": [0.5, None]}).thresholds == (0.5, float("-inf"))


def test_early_exit_rows_score_each_video_at_its_exit_step():
    from adafocus_pl.evaluation.evaluate import SplitOutputs, early_exit_rows

    # video i is confident (and right) only at step s_i; at every other step it predicts the wrong class at 0.6
    confident_at = torch.tensor([0, 0, 1, 1, 2, 2])
    scores = torch.tensor([0.4, 0.6]).repeat(6, 3, 1)
    scores[torch.arange(6), confident_at] = torch.tensor([0.95, 0.05])
    labels = torch.zeros(6, dtype=torch.long)
    outputs = SplitOutputs(scores, labels, F.one_hot(labels, 2).float())
    parts = {"glance": 0.5, "policy": 0.25, "classifier": 0.25, "local": 1.0}  # 1 + 1 GFLOPs per frame read
    rows = early_exit_rows("AdaFocus", outputs, outputs, parts, True, [1 / 3, 2 / 3], patch_policy="learned")
    assert [r["method"] for r in rows] == ["AdaFocus early exit (budget 33.3333%)",
                                           "AdaFocus early exit (budget 66.6667%)"]
    everyone_first, each_at_its_step = rows
    # 1/3 of the cost: everyone stops after the first frame, where only videos 0 and 1 are right
    assert everyone_first["exit_fractions"] == [1.0, 0.0, 0.0] and everyone_first["top1"] == pytest.approx(1 / 3)
    assert everyone_first["gflops_per_video"] == pytest.approx(2.0)
    # 2/3: a third leaves at each step, the confident ones, each scored where it stopped (the last step: 1/3 right)
    assert each_at_its_step["exit_fractions"] == pytest.approx([1 / 3] * 3)
    assert each_at_its_step["top1"] == pytest.approx(1.0) and each_at_its_step["thresholds"][:2] == pytest.approx([0.95] * 2)
    assert each_at_its_step["gflops_per_video"] == pytest.approx(4.0) == each_at_its_step["gflops_on_threshold_split"]
    assert each_at_its_step["full_gflops_per_video"] == pytest.approx(6.0)
    assert each_at_its_step["mean_frames_read"] == pytest.approx(2.0)
    assert each_at_its_step["keep_fraction"] == pytest.approx(2 / 3)  # f_L on every frame read, 2 of 3 frames
    # AdaFocus+: f_L counted only on the kept frames that were read
    keep = torch.tensor([[True, False, False]]).repeat(6, 1)
    plus = SplitOutputs(scores, labels, outputs.targets, keep=keep)
    row = early_exit_rows("AdaFocus+ (eta=0.5)", plus, plus, parts, True, [0.8])[0]
    assert row["family"] == "AdaFocus+ (eta=0.5) early exit" and row["full_gflops_per_video"] == pytest.approx(4.0)
    assert row["gflops_per_video"] == pytest.approx(1.0 + row["mean_frames_read"])  # f_L once, on frame 1
    assert row["keep_fraction"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("budget", [0.4, 0.6])
def test_an_imposed_schedule_has_the_budgets_exit_distribution(budget):
    costs = cumulative_costs(1.0, 4.0, 8, count=1)[0]
    fractions = exit_fractions_for_budget(costs, budget)
    assert expected_cost(fractions, costs) == pytest.approx(budget * float(costs[-1]), rel=1e-6)
    schedule = schedule_for_fractions(fractions, 64)
    counts = torch.bincount(torch.tensor(schedule.exit_steps), minlength=8).double() / 64
    assert torch.allclose(counts, fractions, atol=1.0 / 64)
    assert list(schedule.exit_steps) == sorted(schedule.exit_steps)
    spent = float(costs[list(schedule.exit_steps)].mean())
    assert abs(spent - budget * float(costs[-1])) < 0.05 * float(costs[-1])
    # it answers for the videos still running, whatever their confidence
    running = torch.tensor([0, 63])
    assert schedule.exits_at(schedule.exit_steps[0], torch.zeros(2), running).tolist() == [True, False]
    with pytest.raises(ValueError, match="running videos"):
        schedule.exits_at(0, torch.zeros(2))
    with pytest.raises(ValueError, match="0..3"):
        ExitSchedule((0, 4), steps=4)
