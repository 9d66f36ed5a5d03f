"""Rewards for the patch policy, from the ground-truth confidences of the classifier (paper Eq. 7, Table 5).

``conf_policy[b, t]``: softmax(f_C(h_{t-1}, [e_G, e_L(policy patch)]))_y; ``conf_random[b, t]``: the same from the
same hidden state h_{t-1} with one uniformly random patch instead. Only the policy's patch advances h.
"""

from __future__ import annotations

import torch

REWARDS = ("eq7", "confidence", "increments")


def patch_reward(
    kind: str, conf_policy: torch.Tensor, conf_random: torch.Tensor | None = None, num_classes: int | None = None
) -> torch.Tensor:
    """``[B, T]`` rewards.

    - ``eq7`` (paper): r_t = p_ty(policy patch) - p_ty(random patch), a one-sample Monte-Carlo estimate of the
      expectation in Eq. 7, so that E[r_t] = 0 under a random policy.
    - ``confidence`` (Table 5): r_t = p_ty(policy patch).
    - ``increments`` (Table 5): r_t = p_ty(t) - p_ty(t-1); before the first frame the confidence is taken as the
      uniform prior 1/K.
    """
    if kind == "eq7":
        if conf_random is None:
            raise ValueError("the eq7 reward needs the confidence with a random patch (conf_random)")
        return conf_policy - conf_random
    if kind == "confidence":
        return conf_policy
    if kind == "increments":
        if num_classes is None:
            raise ValueError("the increments reward needs num_classes (for the prior before the first frame)")
        prior = torch.full_like(conf_policy[:, :1], 1.0 / num_classes)
        previous = torch.cat([prior, conf_policy[:, :-1]], dim=1)
        return conf_policy - previous
    raise ValueError(f"unknown reward {kind!r}: choose one of {', '.join(REWARDS)} (config key stage.module.reward)")


def skip_reward(conf_keep: torch.Tensor, conf_skip: torch.Tensor, keep: torch.Tensor, cost: float) -> torch.Tensor:
    """AdaFocus+'s reward for pi' (paper Eq. 10), ``[B, T]``.

    r'_t = p'_ty(b_1..b_{t-1}, 1) - p'_ty(b_1..b_{t-1}, 0) - lambda * P^2 where b_t = 1 (the frame ran f_L), else 0.
    ``conf_keep`` / ``conf_skip``: the ground-truth confidence from the same h_{t-1} with the policy's patch /
    with zero local features; ``cost`` = lambda * P^2.
    """
    return torch.where(keep.bool(), conf_keep - conf_skip - cost, torch.zeros_like(conf_keep))
