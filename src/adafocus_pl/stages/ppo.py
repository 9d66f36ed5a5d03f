"""PPO for the patch policy (paper Sec. 3.2, Eq. 6; Schulman et al. 2017), as pure tensor functions.

Episodes are the T frames of one video; every tensor here is ``[B, T]`` (batch of videos x time).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """R_t = r_t + gamma * R_{t+1} within each video's episode, R_{T+1} = 0 (Eq. 6)."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns


def normalise(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(x - mean) / (std + eps) over all B x T entries (the release's normalisation of returns).

    Under DDP the mean and std are those of the global batch (all ranks), so N ranks with B/N videos each
    normalise exactly as one process with all B videos."""
    stats = torch.stack([x.sum(), (x * x).sum(), x.new_tensor(float(x.numel()))]).double()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(stats)
    total, squares, count = stats.unbind()
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    return (x - mean.to(x.dtype)) / (std.to(x.dtype) + eps)


@dataclass(frozen=True)
class PPOConfig:
    gamma: float = 0.7
    clip: float = 0.2
    value_weight: float = 0.5
    entropy_weight: float = 0.01
    normalise_returns: bool = True


def ppo_targets(rewards: torch.Tensor, values: torch.Tensor, cfg: PPOConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (value targets, advantages): advantage = (normalised) return - V(s), V detached."""
    returns = discounted_returns(rewards, cfg.gamma)
    if cfg.normalise_returns:
        returns = normalise(returns)
    return returns, returns - values.detach()


def ppo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    cfg: PPOConfig,
) -> dict[str, torch.Tensor]:
    """Clipped surrogate + value loss + entropy bonus, each averaged over B x T."""
    ratio = torch.exp(log_probs - old_log_probs.detach())
    surrogate = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - cfg.clip, 1.0 + cfg.clip) * advantages
    policy_loss = -torch.min(surrogate, clipped).mean()
    value_loss = F.mse_loss(values, returns)
    entropy_mean = entropy.mean()
    loss = policy_loss + cfg.value_weight * value_loss - cfg.entropy_weight * entropy_mean
    return {"loss": loss, "policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy_mean}
