"""Stage II, learning to select patches (paper Sec. 3.2, Eqs. 6-7): PPO trains pi; everything else is frozen.

Per batch: f_G runs once over all frames; pi samples a patch per frame from its categorical over the grid; f_L
sees the policy's patches and one uniformly random patch per frame (both in one batch); f_C steps through time,
scoring both patches from the same hidden state h_{t-1} while only the policy's patch advances it (Eq. 7).

AdaFocus+ (Sec. 3.3): pi' is trained beside pi, with PPO on a Bernoulli b_t per frame and the reward of Eq. 10.
f_C also scores the frame with zero local features (b_t = 0) from the same h_{t-1}; the state advances with the
policy's patch where b_t = 1 and with zeros where b_t = 0. pi keeps its Eq. 7 reward on every frame: it measures
the patch's value from h_{t-1} whether or not this frame's patch was used (the paper leaves this case open).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli

from adafocus_pl.models.skipping import DEFAULT_RHO
from adafocus_pl.stages.base import StageModule
from adafocus_pl.stages.guards import check_finite
from adafocus_pl.stages.ppo import PPOConfig, ppo_loss, ppo_targets
from adafocus_pl.stages.rewards import patch_reward, skip_reward


class PolicyStage(StageModule):
    stage_id = 2
    accepts_init_from = (1,)

    def __init__(self, net: dict, optimizer: dict, reward: str = "eq7", gamma: float = 0.7, clip: float = 0.2,
                 value_weight: float = 0.5, entropy_weight: float = 0.01, ppo_epochs: int = 1,
                 normalise_returns: bool = True, eval_seed: int = 0, channels_last: bool = True,
                 trainable: list[str] = ("policy", "skip_policy"), skip_cost: float = 1e-6,
                 eval_rho: float = DEFAULT_RHO, skip_gamma: float | None = None) -> None:
        if not set(trainable) <= {"policy", "skip_policy"} or "policy" not in trainable:
            raise ValueError(f"stage II trains the policies only (paper Sec. 3.2-3.3); got trainable={list(trainable)}")
        super().__init__(net=net, optimizer=optimizer, trainable=list(trainable), eval_seed=eval_seed,
                         channels_last=channels_last)
        self.skip_cost = skip_cost  # lambda of Eq. 10; the cost of running f_L is lambda * P^2
        self.eval_rho = eval_rho  # validation only: rho is solved later (adafocus_pl.eval)
        self.automatic_optimization = False  # PPO: several passes over one rollout, our own loss
        self.reward_kind = reward
        self.ppo = PPOConfig(gamma=gamma, clip=clip, value_weight=value_weight, entropy_weight=entropy_weight,
                             normalise_returns=normalise_returns)
        # pi''s discount (the paper gives none for it; None: pi's gamma)
        self.skip_ppo = self.ppo if skip_gamma is None else dataclasses.replace(self.ppo, gamma=float(skip_gamma))
        self.ppo_epochs = ppo_epochs

    @torch.no_grad()
    def rollout_confidences(self, frames: torch.Tensor, glance_maps: torch.Tensor, actions: torch.Tensor,
                            labels: torch.Tensor, keep: torch.Tensor | None = None,
                            focus_frames: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Ground-truth confidences ``[B, T]``: with the policy's patches, with one random patch per frame (per
        video for AdaFocus-TSM) and, with AdaFocus+'s ``keep [B, T]`` (b_t), with zero local features (the frame
        skipped), each from the same h_{t-1} (``AdaFocusNet.score_patches``)."""
        net = self.net
        offsets_policy = net.actions_to_offsets(actions)
        offsets_random = net.draw_offsets("random", *actions.shape[:2], frames.device)
        scores = net.score_patches(frames, glance_maps, [offsets_policy, offsets_random], keep=keep,
                                   focus_frames=focus_frames)
        index = labels[:, None, None].expand(-1, scores[0].shape[1], 1)
        return [F.softmax(logits.float(), -1).gather(-1, index).squeeze(-1) for logits in scores]

    def training_step(self, batch: dict, batch_idx: int) -> None:
        frames, labels, focus_frames = batch["frames"], batch["label"], batch.get("focus_frames")
        with torch.no_grad():
            glance_maps = self.net.glance_maps(frames)
        logits, values = self.net.policy_rollout(glance_maps)
        check_finite(self.trainer, self, "policy logits", logits)  # a clear stop, not the distribution's error
        dist = self.net.action_distribution(logits)
        actions = dist.sample()
        old_log_probs = dist.log_prob(actions).detach()
        plus = self.net.capabilities.has_skip_policy
        if plus:  # Eq. 8: b_t ~ Bernoulli(p_t^B)
            skip_logits, skip_values = self.net.skip_rollout(glance_maps)
            check_finite(self.trainer, self, "skip-policy logits", skip_logits)
            skip_dist = Bernoulli(logits=skip_logits.float())
            keep = skip_dist.sample()
            old_skip_log_probs = skip_dist.log_prob(keep).detach()
            keep = keep.bool()
            conf_policy, conf_random, conf_skip = self.rollout_confidences(frames, glance_maps, actions, labels, keep)
            skip_rewards = skip_reward(conf_policy, conf_skip, keep, self.skip_cost * self.net.patch_size**2)
            skip_returns, skip_advantages = ppo_targets(skip_rewards, skip_values, self.skip_ppo)
        else:
            conf_policy, conf_random = self.rollout_confidences(frames, glance_maps, actions, labels,
                                                                focus_frames=focus_frames)
        rewards = patch_reward(self.reward_kind, conf_policy, conf_random, num_classes=self.net.num_classes)
        returns, advantages = ppo_targets(rewards, values, self.ppo)

        opt = self.optimizers()
        for epoch in range(self.ppo_epochs):
            if epoch > 0:  # later PPO epochs re-evaluate the policies on the same rollout
                logits, values = self.net.policy_rollout(glance_maps)
                dist = self.net.action_distribution(logits)
                if plus:
                    skip_logits, skip_values = self.net.skip_rollout(glance_maps)
                    skip_dist = Bernoulli(logits=skip_logits.float())
            losses = ppo_loss(dist.log_prob(actions), old_log_probs, advantages, values.float(), returns,
                              dist.entropy(), self.ppo)
            loss = losses["loss"]
            if plus:
                skip_losses = ppo_loss(skip_dist.log_prob(keep.float()), old_skip_log_probs, skip_advantages,
                                       skip_values.float(), skip_returns, skip_dist.entropy(), self.skip_ppo)
                loss = loss + skip_losses["loss"]
            opt.zero_grad()
            # DDP: Lightning's manual_backward re-arms DDP's reducer before every backward (DDPStrategy.pre_backward
            # -> prepare_for_backward), so each PPO epoch's gradients are averaged over the ranks, also in the later
            # epochs whose forward does not go through the DDP wrapper. No all-reduce of our own (tests/test_ddp.py).
            self.manual_backward(loss)
            opt.step()
        logged = {
            "train/loss": loss, "train/policy_loss": losses["policy_loss"],
            "train/value_loss": losses["value_loss"], "train/entropy": losses["entropy"],
            "train/reward": rewards.mean(), "train/confidence": conf_policy.mean(),
        }
        if plus:
            logged.update({"train/skip_reward": skip_rewards.mean(), "train/keep_fraction": keep.float().mean(),
                           "train/skip_entropy": skip_losses["entropy"]})
        self.log_dict(logged, prog_bar=False)

    def on_train_epoch_end(self) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is not None:
            schedulers.step()

    def eval_forward(self, frames, offsets, focus):
        rho = self.eval_rho if self.net.capabilities.has_skip_policy else None
        return self.net(frames, patch_policy="learned", sample=False, rho=rho, **focus)
