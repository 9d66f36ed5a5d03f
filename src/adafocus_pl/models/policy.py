"""Recurrent actor-critic policy pi over patch candidates (paper Sec. 3.1, Fig. 3, Eq. 3).

The same module with ``num_actions=1`` gives a Bernoulli logit, i.e. AdaFocus+'s pi' (Sec. 3.3, Eq. 8).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


class PatchPolicy(nn.Module):
    """``Conv1x1(in -> conv_channels) -> ReLU -> flatten -> Linear -> ReLU -> GRUCell`` + actor and critic heads.

    No pooling on e_G (the spatial layout locates the patch); the 1x1 conv only compresses channels (Fig. 3).
    ``nn.GRUCell`` rather than ``nn.GRU`` so that fvcore counts its FLOPs.
    """

    def __init__(
        self,
        in_channels: int,
        map_hw: int | Sequence[int],
        num_actions: int,
        conv_channels: int = 32,
        hidden: int = 1024,
    ):
        super().__init__()
        map_h, map_w = (map_hw, map_hw) if isinstance(map_hw, int) else (int(map_hw[0]), int(map_hw[1]))
        self.in_channels, self.map_hw, self.num_actions, self.hidden = in_channels, (map_h, map_w), num_actions, hidden
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, conv_channels, 1, bias=False), nn.ReLU(inplace=True))
        self.embed = nn.Sequential(nn.Linear(conv_channels * map_h * map_w, hidden), nn.ReLU(inplace=True))
        self.gru = nn.GRUCell(hidden, hidden)
        self.actor = nn.Linear(hidden, num_actions)
        self.critic = nn.Linear(hidden, 1)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        """Zero hidden state h_0 ``[B, hidden]``."""
        return torch.zeros(batch_size, self.hidden, device=device, dtype=self.actor.weight.dtype)

    def encode(self, maps: Tensor) -> Tensor:
        """GRU inputs from e_G maps ``[N, C, h, w] -> [N, hidden]`` (batch-independent: run it over B*T at once)."""
        if tuple(maps.shape[1:]) != (self.in_channels, *self.map_hw):
            raise ValueError(
                f"policy expects glance maps [N, {self.in_channels}, {self.map_hw[0]}, {self.map_hw[1]}], "
                f"got {list(maps.shape)} (was the frame size or glance_size changed?)"
            )
        return self.embed(self.reduce(maps).flatten(1))

    def heads(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Actor logits ``[N, A]`` and critic value ``[N]`` from GRU states."""
        return self.actor(h), self.critic(h).squeeze(-1)

    def step(self, glance_map: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """One step of Eq. (3): ``(logits [B, A], value [B], h_new [B, hidden])`` from e_G_t ``[B, C, h, w]``."""
        if h is None:
            h = self.init_state(glance_map.shape[0], glance_map.device)
        h_new = self.gru(self.encode(glance_map), h)
        logits, value = self.heads(h_new)
        return logits, value, h_new

    def rollout(self, glance_maps: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run pi over a clip ``[B, T, C, h, w]`` -> ``(logits [B, T, A], values [B, T])``.

        pi's inputs do not depend on its actions, so conv/linear run over B*T at once and only the GRUCell steps.
        """
        batch, steps = glance_maps.shape[:2]
        inputs = self.encode(glance_maps.flatten(0, 1)).unflatten(0, (batch, steps))
        if h is None:
            h = self.init_state(batch, glance_maps.device)
        states = []
        for t in range(steps):
            h = self.gru(inputs[:, t], h)
            states.append(h)
        logits, values = self.heads(torch.stack(states, dim=1))
        return logits, values


def categorical_actions(logits: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """Argmax of a categorical policy's ``logits [..., A]`` (test time) or one draw from it (training): ``[...]``."""
    if not sample:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.detach().float(), dim=-1)
    draws = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    return draws.reshape(probs.shape[:-1])


def policy_decision(policy: PatchPolicy, glance_map: Tensor, h: Tensor) -> Tensor:
    """One inference step of a policy (Eq. 3 / Eq. 8): conv -> linear -> GRUCell -> actor. The critic is a
    training-only head (PPO's value), so it is not part of a decision's cost."""
    return policy.actor(policy.gru(policy.encode(glance_map), h))


def choose_patches(net: nn.Module, request, glance_maps: Tensor | None, draw_offsets: Callable[[], Tensor],
                   ) -> tuple[Tensor | None, Tensor, Tensor | None, Tensor | None]:
    """Where f_L looks for a :class:`~adafocus_pl.models.contract.PatchRequest`:
    ``(actions, offsets, policy_logits, values)``.

    "learned": pi's rollout over ``glance_maps`` (``net.policy_rollout``), then its argmax or a draw
    (``request.sample``); "given": the request's ``actions`` (grid indices) or raw ``offsets``; a fixed policy:
    ``draw_offsets()`` (random, Eq. 5; centre or gaussian, Table 5). Offsets keep the caller's layout.
    """
    kind = request.policy.kind
    if kind == "learned":
        policy_logits, values = net.policy_rollout(glance_maps)
        actions = net.select_actions(policy_logits, sample=request.sample, generator=request.generator)
        return actions, net.actions_to_offsets(actions), policy_logits, values
    if kind == "given":
        if request.actions is not None:
            return request.actions, net.actions_to_offsets(request.actions.to(net.grid.device)), None, None
        return None, request.offsets, None, None
    return None, draw_offsets(), None, None
