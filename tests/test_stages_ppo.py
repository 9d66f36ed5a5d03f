"""PPO returns, advantages and loss, and the three patch rewards, on hand-computed toy tensors."""

import math

import pytest
import torch

from adafocus_pl.stages.ppo import PPOConfig, discounted_returns, normalise, ppo_loss, ppo_targets
from adafocus_pl.stages.rewards import patch_reward


def test_discounted_returns_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]])
    g = 0.7
    expected = torch.tensor([
        [1 + g * 0 + g * g * 2, 0 + g * 2, 2.0],
        [0.5 + g * -1.0, -1.0, 0.0],
    ])
    assert torch.allclose(discounted_returns(rewards, g), expected)


def test_returns_are_normalised_over_all_entries_and_advantage_subtracts_detached_value():
    rewards = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    values = torch.tensor([[0.1, 0.2], [0.3, 0.4]], requires_grad=True)
    returns, advantages = ppo_targets(rewards, values, PPOConfig(gamma=0.5))
    raw = torch.tensor([[1.0, 0.0], [1.5, 3.0]])
    mean, std = raw.mean(), raw.std(unbiased=False)
    assert torch.allclose(returns, (raw - mean) / (std + 1e-5))
    assert torch.allclose(advantages, returns - values.detach())
    assert not advantages.requires_grad
    assert abs(normalise(raw).mean().item()) < 1e-6


def test_ppo_loss_terms_and_clipping():
    cfg = PPOConfig(clip=0.2, value_weight=0.5, entropy_weight=0.01)
    old = torch.log(torch.tensor([[0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.9, 0.1]]))  # ratios 1.8 and 0.2: both outside [0.8, 1.2]
    adv = torch.tensor([[1.0, -1.0]])
    values, returns = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    entropy = torch.tensor([[2.0, 2.0]])
    out = ppo_loss(new, old, adv, values, returns, entropy, cfg)
    # min(1.8*1, 1.2*1) = 1.2 ; min(0.2*-1, 0.8*-1) = -0.8 → policy loss = -(1.2 - 0.8)/2
    assert math.isclose(out["policy_loss"].item(), -0.2, rel_tol=1e-5)
    assert math.isclose(out["value_loss"].item(), 0.5, rel_tol=1e-6)
    assert math.isclose(out["loss"].item(), -0.2 + 0.5 * 0.5 - 0.01 * 2.0, rel_tol=1e-5)


def test_unclipped_ppo_gradient_is_policy_gradient():
    # with ratio 1 (one PPO epoch) the surrogate's gradient is advantage * grad log pi
    logits = torch.zeros(1, 3, requires_grad=True)
    log_probs = torch.log_softmax(logits, 1)[:, :1]
    adv = torch.tensor([[2.0]])
    cfg = PPOConfig(value_weight=0.0, entropy_weight=0.0)
    ppo_loss(log_probs, log_probs.detach(), adv, torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), cfg)[
        "loss"].backward()
    expected = -2.0 * (torch.tensor([[1.0, 0, 0]]) - torch.full((1, 3), 1 / 3))
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_rewards_eq7_confidence_increments():
    conf_policy = torch.tensor([[0.2, 0.5, 0.9]])
    conf_random = torch.tensor([[0.1, 0.6, 0.3]])
    assert torch.allclose(patch_reward("eq7", conf_policy, conf_random), torch.tensor([[0.1, -0.1, 0.6]]))
    assert torch.allclose(patch_reward("confidence", conf_policy), conf_policy)
    assert torch.allclose(patch_reward("increments", conf_policy, num_classes=4),
                          torch.tensor([[0.2 - 0.25, 0.3, 0.4]]))
    with pytest.raises(ValueError, match="unknown reward"):
        patch_reward("bogus", conf_policy)
    with pytest.raises(ValueError, match="conf_random"):
        patch_reward("eq7", conf_policy)
