"""Sample-wise early exit: stop reading a video once f_C's prediction is confident (budgeted protocol).

AdaFocus's classifier gives a prediction after every frame (Sec. 3.1: "a prediction may be retrieved after
processing any number of frames", Fig. 6). Early exit turns that into savings per video: the video stops at the
first step t whose confidence (the largest softmax probability) reaches the step's threshold ``thresholds[t]``;
the last step's threshold is -inf, so every video stops by frame T.

The thresholds for a computational budget follow the budgeted-batch protocol of MSDNet (Huang et al., ICLR 2018),
the one AdaFocusV2 and Uni-AdaFocus report: a geometric exit distribution q_t proportional to p^t over the T steps
is fixed by ``p``; on a held-out split (here the training split, as for AdaFocus+'s rho) the q_1 N most confident
videos exit at step 1, the q_2 N most confident of the remaining ones at step 2, and so on; each step's threshold is
the confidence of the last video that exits there. ``p`` is chosen so that the expected cost, sum_t q_t c_t with
c_t the mean cumulative GFLOPs after t frames, meets the budget.

Timing a network with random weights (``python -m adafocus_pl.bench --exit-budget``), whose confidences mean
nothing, imposes the exits instead: :class:`ExitSchedule` stops each video of a batch at a fixed step, drawn from the
same geometric distribution (:func:`schedule_for_fractions`).

Pure tensor code: networks, data and evaluation call it with per-step confidences and costs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ExitRule:
    """Per-step confidence thresholds (``thresholds[t]`` for step t = 0..T-1, the last one -inf) solved for
    ``budget`` (a fraction of the full model's GFLOPs per video; None for hand-given thresholds)."""

    thresholds: tuple[float, ...]
    budget: float | None = None

    @property
    def steps(self) -> int:
        return len(self.thresholds)

    def as_dict(self) -> dict:
        """JSON values: the infinite thresholds as the strings "inf" (nobody leaves at that step) and "-inf"."""
        return {"budget": self.budget, "thresholds": [str(v) if math.isinf(v) else v for v in self.thresholds]}

    @classmethod
    def from_dict(cls, record: dict) -> ExitRule:
        values = tuple(float("-inf") if v is None else float(v) for v in record["thresholds"])
        return cls(values, record.get("budget"))

    def exits_at(self, step: int, confidence: Tensor, videos: Tensor | None = None) -> Tensor:
        """Which videos stop after step ``step`` (0-based) given their confidence ``[B]`` there (``videos``, the
        running videos' indices in the batch, is not needed: a rule looks at the confidence only)."""
        if not 0 <= step < self.steps:
            raise ValueError(f"step {step} is outside the {self.steps} steps this exit rule was solved for")
        return confidence >= self.thresholds[step]


@dataclass(frozen=True)
class ExitSchedule:
    """Imposed exits: video i of a batch stops after step ``exit_steps[i]`` whatever its confidence. For timing
    networks whose confidences mean nothing (random weights) at a given exit distribution
    (:func:`schedule_for_fractions`); it answers :meth:`exits_at` like an :class:`ExitRule`."""

    exit_steps: tuple[int, ...]
    steps: int

    def __post_init__(self):
        bad = [s for s in self.exit_steps if not 0 <= s < self.steps]
        if bad:
            raise ValueError(f"exit steps must lie in 0..{self.steps - 1}, got {bad}")

    def exits_at(self, step: int, confidence: Tensor, videos: Tensor | None = None) -> Tensor:
        if videos is None or (videos.numel() and int(videos.max()) >= len(self.exit_steps)):
            raise ValueError(f"this exit schedule covers batches of {len(self.exit_steps)} videos: give the running "
                             f"videos' indices in the batch")
        planned = torch.tensor(self.exit_steps, device=confidence.device)[videos.to(confidence.device)]
        return planned <= step


def confidences(scores: Tensor) -> Tensor:
    """The confidence of each prediction: the largest softmax probability, ``[..., K] -> [...]``."""
    return scores.float().amax(dim=-1)


def exit_steps(confidence: Tensor, rule: ExitRule) -> Tensor:
    """The 0-based step ``[N]`` at which each video stops: the first t with ``confidence[:, t] >= thresholds[t]``
    (``confidence [N, T]``); the last step when none passes."""
    steps = confidence.shape[1]
    if steps != rule.steps:
        raise ValueError(f"the exit rule has {rule.steps} thresholds, the videos have {steps} steps")
    thresholds = torch.tensor(rule.thresholds, dtype=torch.float32, device=confidence.device)
    passed = confidence.float() >= thresholds
    passed[:, -1] = True
    return passed.int().argmax(dim=1)  # the first True


def geometric_exit_fractions(p: float, steps: int) -> Tensor:
    """MSDNet's exit distribution: q_t proportional to p^t, t = 1..T (``p`` < 1 favours early exits)."""
    exponents = torch.arange(1, steps + 1, dtype=torch.float64)
    logq = exponents * math.log(p)
    return torch.softmax(logq, dim=0)


def thresholds_for_fractions(confidence: Tensor, fractions: Tensor) -> tuple[float, ...]:
    """Thresholds such that, on the videos of ``confidence [N, T]``, a fraction ``fractions[t]`` of all videos
    exits at step t: at each step the most confident of the videos still running leave."""
    count, steps = confidence.shape
    if count == 0:
        raise ValueError("cannot solve exit thresholds on an empty set of videos")
    running = torch.ones(count, dtype=torch.bool)
    conf = confidence.float().cpu()
    thresholds: list[float] = []
    quotas = torch.round(torch.cumsum(fractions, 0) * count).long()
    exited = 0
    for t in range(steps - 1):
        leave = int(quotas[t]) - exited
        values = conf[running, t]
        if leave <= 0 or values.numel() == 0:
            thresholds.append(float("inf"))  # nobody leaves here
            continue
        leave = min(leave, values.numel())
        threshold = float(torch.topk(values, leave).values[-1])
        thresholds.append(threshold)
        gone = running & (conf[:, t] >= threshold)
        exited += int(gone.sum())
        running &= ~gone
    thresholds.append(float("-inf"))
    return tuple(thresholds)


def expected_cost(fractions: Tensor, step_costs: Tensor) -> float:
    """sum_t q_t c_t: the mean cost when a fraction q_t of the videos stops after step t at cost c_t."""
    return float((fractions * step_costs.double()).sum())


def exit_fractions_for_budget(step_costs: Tensor, budget: float, iterations: int = 60) -> Tensor:
    """MSDNet's geometric exit distribution q_t ``[T]`` whose expected cost is ``budget`` times the full cost
    ``step_costs[-1]`` (``step_costs [T]``: the mean cumulative GFLOPs after t frames). ``p`` of q_t is found by
    bisection on log p, since the expected cost grows with p (q shifts to later steps)."""
    budget = check_budget(budget)
    steps = len(step_costs)
    target = budget * float(step_costs[-1])
    if target <= float(step_costs[0]):
        fractions = torch.zeros(steps, dtype=torch.float64)
        fractions[0] = 1.0
    elif budget >= 1.0:
        fractions = torch.zeros(steps, dtype=torch.float64)
        fractions[-1] = 1.0
    else:
        low, high = math.log(1e-6), math.log(1e6)
        for _ in range(iterations):
            mid = 0.5 * (low + high)
            if expected_cost(geometric_exit_fractions(math.exp(mid), steps), step_costs) < target:
                low = mid
            else:
                high = mid
        fractions = geometric_exit_fractions(math.exp(low), steps)
    return fractions


def solve_exit_rule(confidence: Tensor, step_costs: Tensor, budget: float, iterations: int = 60) -> ExitRule:
    """The exit rule for ``budget`` (a fraction of the full cost ``step_costs[-1]``) on the videos of
    ``confidence [N, T]``: the thresholds that make :func:`exit_fractions_for_budget`'s q_t exit at each step."""
    if confidence.shape[1] != len(step_costs):
        raise ValueError(f"confidence has {confidence.shape[1]} steps, step_costs {len(step_costs)}")
    fractions = exit_fractions_for_budget(step_costs, budget, iterations)
    return ExitRule(thresholds_for_fractions(confidence, fractions), float(budget))


def schedule_for_fractions(fractions: Tensor, count: int) -> ExitSchedule:
    """An :class:`ExitSchedule` for a batch of ``count`` videos in which a share ``fractions[t]`` exits at step t
    (rounded as :func:`thresholds_for_fractions` rounds: the cumulative quotas), earliest exits first."""
    quotas = torch.round(torch.cumsum(fractions.double(), 0) * count).long().tolist()
    quotas[-1] = count
    steps: list[int] = []
    for t, quota in enumerate(quotas):
        steps += [t] * max(0, quota - len(steps))
    return ExitSchedule(tuple(steps[:count]), len(fractions))


def solve_exit_rules(confidence: Tensor, step_costs: Tensor, budgets: Iterable[float]) -> list[ExitRule]:
    """One :class:`ExitRule` per budget (e.g. 0.4, 0.5, 0.6, 0.8 of the full GFLOPs)."""
    return [solve_exit_rule(confidence, step_costs, budget) for budget in budgets]


def cumulative_costs(per_frame: float, local: float, steps: int, keep: Tensor | None = None,
                     count: int | None = None) -> Tensor:
    """GFLOPs after t = 1..T frames for each video, ``[N, T]``: ``per_frame`` (f_G, pi, pi', f_C) on every frame
    read plus ``local`` (f_L) on each frame read that ran f_L (``keep [N, T]``; None: all of them, ``count`` rows)."""
    if keep is None:
        if count is None:
            raise ValueError("give keep [N, T] or the number of videos")
        keep = torch.ones(count, steps, dtype=torch.bool)
    frames = torch.arange(1, steps + 1, dtype=torch.float64)
    return per_frame * frames + local * keep.double().cumsum(dim=1)


def gather_steps(values: Tensor, steps: Tensor) -> Tensor:
    """``values [N, T, ...]`` at each video's step ``steps [N]`` -> ``[N, ...]``."""
    return values[torch.arange(values.shape[0], device=values.device), steps.to(values.device)]


def check_budget(budget: float) -> float:
    """``budget`` as a float, or a ``ValueError`` unless it is a fraction of the full GFLOPs in (0, 1]."""
    budget = float(budget)
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"an early-exit budget is a fraction of the full model's GFLOPs in (0, 1], got {budget}")
    return budget


def check_budgets(budgets: Sequence[float]) -> list[float]:
    return [check_budget(b) for b in budgets]
