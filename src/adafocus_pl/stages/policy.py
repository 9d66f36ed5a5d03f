"""Stage II, learning to select patches (paper Sec. 3.2, Eqs. 6-7): PPO trains pi; everything else is frozen.

Per batch: f_G runs once over all frames; pi samples a patch per frame from its categorical over the grid; f_L
sees the policy's patches and one uniformly random patch per frame (both in one batch); f_C steps through time,
scoring both patches from the same hidden state h_{t-1} while only the policy's patch advances it (Eq. 7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Categorical

from adafocus_pl.stages.base import StageModule
from adafocus_pl.stages.ppo import PPOConfig, ppo_loss, ppo_targets
from adafocus_pl.stages.rewards import patch_reward


class PolicyStage(StageModule):
    stage_id = 2
    accepts_init_from = (1,)

    def __init__(self, net: dict, optimizer: dict, reward: str = "eq7", gamma: float = 0.7, clip: float = 0.2,
                 value_weight: float = 0.5, entropy_weight: float = 0.01, ppo_epochs: int = 1,
                 normalise_returns: bool = True, eval_seed: int = 0, channels_last: bool = True,
                 trainable: list[str] = ("policy",)) -> None:
        if list(trainable) != ["policy"]:
            raise ValueError(f"stage II trains the policy only (paper Sec. 3.2); got trainable={list(trainable)}")
        super().__init__(net=net, optimizer=optimizer, trainable=["policy"], eval_seed=eval_seed,
                         channels_last=channels_last)
        self.automatic_optimization = False  # PPO: several passes over one rollout, our own loss
        self.reward_kind = reward
        self.ppo = PPOConfig(gamma=gamma, clip=clip, value_weight=value_weight, entropy_weight=entropy_weight,
                             normalise_returns=normalise_returns)
        self.ppo_epochs = ppo_epochs

    @torch.no_grad()
    def rollout_confidences(self, frames: torch.Tensor, glance_maps: torch.Tensor, actions: torch.Tensor,
                            labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ground-truth confidences ``[B, T]`` with the policy's patches and with one random patch per frame."""
        net = self.net
        b, t = actions.shape
        offsets_policy = net.actions_to_offsets(actions)
        offsets_random = net.fixed_offsets("random", b, t, frames.device)
        patches = net.crop(frames.repeat(2, 1, 1, 1, 1), torch.cat([offsets_policy, offsets_random]))
        local = net.local_features(patches)  # f_L once over 2*B*T patches
        local_policy, local_random = local[:b], local[b:]
        glance = glance_maps.mean(dim=(-2, -1))
        state = net.classifier.init_state(b, frames.device)
        conf_policy, conf_random = [], []
        for step in range(t):
            x_policy = net.classifier_inputs(glance[:, step], local_policy[:, step])
            x_random = net.classifier_inputs(glance[:, step], local_random[:, step])
            logits_random, _ = net.classifier.step(x_random, state)  # same h_{t-1}, not advanced
            logits_policy, state = net.classifier.step(x_policy, state)
            conf_policy.append(F.softmax(logits_policy.float(), 1).gather(1, labels[:, None]).squeeze(1))
            conf_random.append(F.softmax(logits_random.float(), 1).gather(1, labels[:, None]).squeeze(1))
        return torch.stack(conf_policy, 1), torch.stack(conf_random, 1)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        frames, labels = batch["frames"], batch["label"]
        with torch.no_grad():
            glance_maps = self.net.glance_maps(frames)
        logits, values = self.net.policy_rollout(glance_maps)
        dist = Categorical(logits=logits.float())
        actions = dist.sample()
        old_log_probs = dist.log_prob(actions).detach()

        conf_policy, conf_random = self.rollout_confidences(frames, glance_maps, actions, labels)
        rewards = patch_reward(self.reward_kind, conf_policy, conf_random, num_classes=self.net.num_classes)
        returns, advantages = ppo_targets(rewards, values, self.ppo)

        opt = self.optimizers()
        for epoch in range(self.ppo_epochs):
            if epoch > 0:  # later PPO epochs re-evaluate the policy on the same rollout
                logits, values = self.net.policy_rollout(glance_maps)
                dist = Categorical(logits=logits.float())
            losses = ppo_loss(dist.log_prob(actions), old_log_probs, advantages, values.float(), returns,
                              dist.entropy(), self.ppo)
            opt.zero_grad()
            self.manual_backward(losses["loss"])
            opt.step()
        self.log_dict({
            "train/loss": losses["loss"], "train/policy_loss": losses["policy_loss"],
            "train/value_loss": losses["value_loss"], "train/entropy": losses["entropy"],
            "train/reward": rewards.mean(), "train/confidence": conf_policy.mean(),
        }, prog_bar=False)

    def on_train_epoch_end(self) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is not None:
            schedulers.step()

    def eval_forward(self, frames, generator):
        return self.net(frames, patch_policy="learned", sample=False)
