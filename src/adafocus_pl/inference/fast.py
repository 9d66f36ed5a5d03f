"""The fast offline inference path (paper Sec. 3.4): turn AdaFocus's saved FLOPs into saved time.

:class:`FastAdaFocus` wraps a trained :class:`~adafocus_pl.models.adafocus.AdaFocusNet` and, for a batch of
videos ``[B, T, 3, H, W]``:

1. runs f_G over all B*T frames in one batch (Eq. 1), or in chunks of ``glance_chunk`` frames
   (see :data:`DEFAULT_GLANCE_CHUNK`);
2. runs pi's conv/linear over all B*T glance maps at once and only its GRU step by step (Eq. 3): the input
   projections of all steps in one matrix product (:class:`GRUScan`, the weights of the training ``nn.GRUCell``;
   its few-row products through :class:`~adafocus_pl.inference.linear.FastLinear`);
3. for AdaFocus+, runs pi' the same way and keeps the frames with p_t^B >= rho (Sec. 3.3);
4. cuts every kept frame's patch in one batched gather;
5. runs f_L over all kept patches in one batch (Eq. 2): skipped frames are never cropped nor computed;
6. runs f_C over the sequence (Eq. 4).

With an exit rule (sample-wise early exit, :mod:`adafocus_pl.inference.early_exit`) the same blocks run frame by
frame instead, each step on the videos still reading only: a video leaves the batch once f_C is confident enough.

Everything runs under ``torch.inference_mode``; the backbones are copies prepared once: BatchNorm folded into
the preceding convolution (``torch.fx`` fusion), ReLU / ReLU6 fused into the convolution before them on a CPU
(:mod:`adafocus_pl.inference.fusion`), channels-last memory format, and one of three backends:
``eager`` (default), ``compile`` (``torch.compile`` with Inductor's weight freezing; compiling costs start-up time
for every network) or ``script`` (TorchScript trace + freeze + ``optimize_for_inference``, which PyTorch
deprecates). The per-frame times of the three backends, and the other measurements behind this path, are in
docs/performance.md ("Measurements behind the inference path and the process layout").

:class:`FastFullFrame` is the same path for the full-frame baselines (:class:`~adafocus_pl.models.full_frame.
FullFrameNet`), so the benchmark compares like with like.

With ``profile=True`` the engines add the wall time spent inside f_G and f_L (including the conversion of their
input to channels-last) to ``timings``; the rest of a call is the work outside the two CNNs: policies, crop, f_C,
Python.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from adafocus_pl.inference.early_exit import ExitRule, ExitSchedule, confidences
from adafocus_pl.inference.fusion import fold_batchnorm, fuse_conv_activations
from adafocus_pl.inference.linear import FastLinear
from adafocus_pl.models.adafocus import AdaFocusNet
from adafocus_pl.models.classifier import RecurrentClassifier
from adafocus_pl.models.contract import NetOutput, has_per_frame_blocks
from adafocus_pl.models.full_frame import FullFrameNet
from adafocus_pl.models.patch_policies import get_patch_policy
from adafocus_pl.models.policy import PatchPolicy
from adafocus_pl.models.skipping import check_eta, keep_mask

log = logging.getLogger(__name__)

BACKENDS = ("eager", "compile", "script")
# Frames per f_G call; None: all of a batch's frames in one call. One f_G call per batch: chunking gained ~nothing
# inside the benchmark (docs/performance.md). f_L is fastest in one call and is never chunked.
DEFAULT_GLANCE_CHUNK: int | None = None


# ------------------------------------------------------------------------------------------- backbone preparation
class _BackboneMethod(nn.Module):
    """``forward(x) = getattr(backbone, method)(x)``: one traceable module per use of a backbone
    (``forward_features`` for f_G's maps, ``forward`` for pooled features)."""

    def __init__(self, backbone: nn.Module, method: str):
        super().__init__()
        self.backbone, self.method = backbone, method

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self.backbone, self.method)(x)


class _LazyTorchScript:
    """TorchScript trace + freeze + ``optimize_for_inference`` of ``module`` at its first call (a trace needs an
    example input); the frozen graph accepts any batch size afterwards."""

    def __init__(self, module: nn.Module):
        self.module, self.frozen = module, None

    def __call__(self, x: Tensor) -> Tensor:
        if self.frozen is None:
            with warnings.catch_warnings():  # TorchScript's deprecation notices, once per backbone
                warnings.filterwarnings("ignore", category=FutureWarning)
                warnings.filterwarnings("ignore", category=UserWarning)
                traced = torch.jit.trace(self.module, x, check_trace=False)
                self.frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        return self.frozen(x)


def prepare_backbone(backbone: nn.Module, method: str = "forward", backend: str = "eager",
                     channels_last: bool = True, fold_bn: bool = True,
                     fuse_activations: bool = True) -> Callable[[Tensor], Tensor]:
    """An inference-only callable for ``getattr(backbone, method)``; ``backbone`` itself is left untouched.
    ``fuse_activations`` applies to the eager backend (``compile`` and ``script`` fuse by themselves)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    module = copy.deepcopy(_BackboneMethod(backbone, method)).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    if fold_bn:
        module = fold_batchnorm(module)
    if fuse_activations and backend == "eager":
        module = fuse_conv_activations(module)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if backend == "script":
        return _LazyTorchScript(module)
    if backend == "compile":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # constant-fold the weights and pre-pack them for oneDNN (inference only)
        return torch.compile(module, dynamic=False)
    return module


class GRUScan:
    """An ``nn.GRUCell`` run over a whole sequence ``[B, T, F] -> states [B, T, H]`` (h_0 = 0), same maths as the
    cell (gates r, z, n; PyTorch's GRU equations): the input projections of all B*T steps in one matrix product,
    then per step only the hidden projection and five fused gate operations. Both products go through
    :class:`~adafocus_pl.inference.linear.FastLinear`; the hidden biases of r and z are folded into the input
    projection's (they are only ever summed), b_hn stays inside ``r * (W_hn h + b_hn)``.
    Faster than the same scan with ``F.linear`` and unfused gates, than ``nn.GRU`` and than a Python loop over the
    cell (timings in docs/performance.md)."""

    def __init__(self, cell: nn.GRUCell):
        self.hidden = hidden = cell.hidden_size
        weight_ih, weight_hh = cell.weight_ih.detach(), cell.weight_hh.detach()
        zeros = weight_hh.new_zeros(3 * hidden)
        bias_ih = zeros if cell.bias_ih is None else cell.bias_ih.detach()
        bias_hh = zeros if cell.bias_hh is None else cell.bias_hh.detach()
        split = 2 * hidden
        self.input = FastLinear(weight_ih, torch.cat([bias_ih[:split] + bias_hh[:split], bias_ih[split:]]))
        self.recurrent = FastLinear(weight_hh, torch.cat([zeros[:split], bias_hh[split:]]))

    def __call__(self, x: Tensor) -> Tensor:
        batch, steps = x.shape[0], x.shape[1]
        input_gates = self.input(x.flatten(0, 1)).unflatten(0, (batch, steps))  # [B, T, 3H]
        h = x.new_zeros(batch, self.hidden)
        states = []
        for t in range(steps):
            h = self._advance(input_gates[:, t], h)
            states.append(h)
        return torch.stack(states, dim=1)

    def step(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        """One step of the cell: ``x [B, F]``, ``h [B, H]`` (None: h_0 = 0) -> the new state ``[B, H]``."""
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden)
        return self._advance(self.input(x), h)

    def _advance(self, from_input: Tensor, h: Tensor) -> Tensor:
        """The cell's update from the input projection ``[B, 3H]`` (input biases and b_hr, b_hz included)."""
        hidden = self.hidden
        from_hidden = self.recurrent(h)
        reset_update = torch.sigmoid(from_input[:, :2 * hidden] + from_hidden[:, :2 * hidden])
        reset, update = reset_update[:, :hidden], reset_update[:, hidden:]
        new = torch.tanh(torch.addcmul(from_input[:, 2 * hidden:], reset, from_hidden[:, 2 * hidden:]))
        return torch.lerp(new, h, update).contiguous()  # (1 - z) * n + z * h; row-major for the next product


class _PolicyScan:
    """A :class:`PatchPolicy`'s actor logits ``[B, T, A]`` over a clip of glance maps: encoder over all B*T maps,
    one :class:`GRUScan` over the sequence, actor over all states (the critic is a training-only head)."""

    def __init__(self, policy: PatchPolicy):
        self.policy, self.gru = policy, GRUScan(policy.gru)

    def __call__(self, glance_maps: Tensor) -> Tensor:
        inputs = self.policy.encode(glance_maps.flatten(0, 1)).unflatten(0, glance_maps.shape[:2])
        return self.policy.actor(self.gru(inputs))

    def step(self, glance_map: Tensor, h: Tensor | None) -> tuple[Tensor, Tensor]:
        """One decision (Eq. 3 / Eq. 8): ``(logits [B, A], h_new)`` from e_G_t ``[B, C, h, w]``."""
        h = self.gru.step(self.policy.encode(glance_map), h)
        return self.policy.actor(h), h


class _ClassifierScan:
    """f_C's logits ``[B, T, K]``: the recurrent f_C as a :class:`GRUScan`, the frame-averaged f_C as it is."""

    def __init__(self, classifier: nn.Module):
        self.classifier = classifier
        self.gru = GRUScan(classifier.gru) if isinstance(classifier, RecurrentClassifier) else None

    def __call__(self, features: Tensor) -> Tensor:
        if self.gru is None:
            return self.classifier(features)
        return self.classifier.fc(self.gru(features))  # dropout is the identity at inference

    def step(self, features: Tensor, state) -> tuple[Tensor, object]:
        """One step of Eq. (4): ``(logits [B, K], new state)`` from one frame's features ``[B, F]`` (state None at
        the first frame)."""
        if self.gru is None:
            return self.classifier.step(features, state)
        h = self.gru.step(features, state)
        return self.classifier.fc(h), h

    def keep_rows(self, state, rows: Tensor):
        """The state of the videos ``rows`` only (the others left the batch)."""
        if self.gru is not None:
            return state[rows]
        log_sum, count = state  # the frame-averaged f_C: (log of the running sum [B, K], frames so far)
        return log_sum[rows], count


# ------------------------------------------------------------------------------------------------------ engines
class _Engine:
    """Shared set-up: eval mode, prepared backbones, the memory format, optional timing of f_G and f_L."""

    def __init__(self, net: nn.Module, backend: str, channels_last: bool, fold_bn: bool, fuse_activations: bool,
                 profile: bool, glance_chunk: int | None):
        if glance_chunk is not None and int(glance_chunk) < 1:
            raise ValueError(f"glance_chunk must be a number of frames >= 1 or None (all at once), got {glance_chunk}")
        self.net = net.eval()
        self.backend, self.profile = backend, profile
        self.chunks = {"glance": None if glance_chunk is None else int(glance_chunk)}
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._options = dict(backend=backend, channels_last=channels_last, fold_bn=fold_bn,
                             fuse_activations=fuse_activations)
        self.timings: dict[str, float] = defaultdict(float)

    def _prepare(self, backbone: nn.Module, method: str) -> Callable[[Tensor], Tensor]:
        return prepare_backbone(backbone, method, **self._options)

    def reset_timings(self) -> None:
        self.timings = defaultdict(float)

    def _run(self, name: str, backbone: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """``backbone(x)`` with ``x`` in the engine's memory format (the conversion counts as the backbone's time),
        in chunks of ``self.chunks[name]`` frames when that is set."""
        if not self.profile:
            return self._chunked(backbone, x, self.chunks.get(name))
        _synchronize(x.device)
        start = time.perf_counter()
        out = self._chunked(backbone, x, self.chunks.get(name))
        _synchronize(x.device)
        self.timings[name] += time.perf_counter() - start
        return out

    def _chunked(self, backbone: Callable[[Tensor], Tensor], x: Tensor, chunk: int | None) -> Tensor:
        if chunk is None or x.shape[0] <= chunk:
            return backbone(x.contiguous(memory_format=self.memory_format))
        return torch.cat([backbone(part.contiguous(memory_format=self.memory_format)) for part in x.split(chunk)])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


FAST_POLICY_KINDS = ("learned", "fixed")  # the patch policies the engine draws itself


def supports_fast_path(net: nn.Module, patch_policy: str = "learned") -> bool:
    """Whether :class:`FastAdaFocus` runs ``net`` with ``patch_policy``: a patch network with one patch per frame,
    whose building blocks (:class:`~adafocus_pl.models.contract.PerFrameBlocks`) the engine composes, and a policy
    it can draw (pi's argmax or a fixed one)."""
    return has_per_frame_blocks(net) and get_patch_policy(patch_policy).kind in FAST_POLICY_KINDS


class FastAdaFocus(_Engine):
    """Offline AdaFocus / AdaFocus+ inference (see the module docstring): ``engine(frames) -> dict``.

    AdaFocus+ (a network with pi'): ``rho`` keeps the frames with p_t^B >= rho (the value the Stage III+
    checkpoint stores); ``eta`` instead keeps the top eta of each call's frames (rho solved on the batch, as for
    training; the benchmark uses it so that exactly eta of the frames run f_L). Neither: every frame runs f_L, as
    in the network's own forward. ``patch_policy``: "learned" (argmax of pi) or a registered fixed policy
    (``generator`` drives the random ones).

    ``exit_rule`` (:class:`~adafocus_pl.inference.early_exit.ExitRule`, or an imposed
    :class:`~adafocus_pl.inference.early_exit.ExitSchedule`): sample-wise early exit. The batch is then processed
    frame by frame, and each step runs only on the videos still reading: f_G on their frame t, one step of pi (and
    pi'), the crop and f_L on their (kept) patches, one step of f_C; the videos whose confidence reaches the
    step's threshold leave the batch (Sec. 3.1: a prediction after any number of frames). The output carries
    ``exit_steps`` (see :class:`~adafocus_pl.models.contract.NetOutput`). The random fixed policies draw their
    patches step by step, so they differ from the whole-clip path's draws.
    """

    def __init__(self, net: AdaFocusNet, backend: str = "eager", channels_last: bool = True, fold_bn: bool = True,
                 fuse_activations: bool = True, rho: float | None = None,
                 eta: float | None = None, profile: bool = False,
                 patch_policy: str = "learned", generator: torch.Generator | None = None,
                 glance_chunk: int | None = DEFAULT_GLANCE_CHUNK, exit_rule: ExitRule | ExitSchedule | None = None):
        if get_patch_policy(patch_policy).kind not in FAST_POLICY_KINDS:
            raise ValueError(f"patch_policy must be 'learned' or a fixed policy, got {patch_policy!r}")
        if not has_per_frame_blocks(net):
            raise TypeError(f"FastAdaFocus runs a network with a patch per frame (AdaFocusNet), got "
                            f"{type(net).__name__} (AdaFocus-TSM networks run through their own forward)")
        if (rho is not None or eta is not None) and not net.capabilities.has_skip_policy:
            raise ValueError("rho/eta need AdaFocus+'s skip policy pi' (model.skip_policy=true)")
        if rho is not None and eta is not None:
            raise ValueError("give rho or eta, not both")
        if exit_rule is not None and eta is not None:
            raise ValueError("eta solves rho over all of a call's frames, which early exit never reads: give rho "
                             "(solved on the training split) with exit_rule")
        super().__init__(net, backend, channels_last, fold_bn, fuse_activations, profile, glance_chunk)
        self.rho = None if rho is None else float(rho)
        self.eta = None if eta is None else check_eta(eta)
        self.patch_policy, self.generator = patch_policy, generator
        self.glance = self._prepare(net.glance, "forward_features")
        self.local = self._prepare(net.local, "forward")
        self.policy = _PolicyScan(net.policy)
        self.skip_policy = _PolicyScan(net.skip_policy) if net.capabilities.has_skip_policy else None
        self.classifier = _ClassifierScan(net.classifier)
        self.exit_rule = exit_rule

    def _keep(self, glance_maps: Tensor) -> Tensor | None:
        """b_t ``[B, T]`` (Eq. 8 and Sec. 3.3's rho), or None when every frame runs f_L."""
        if self.skip_policy is None or (self.rho is None and self.eta is None):
            return None
        return keep_mask(self.skip_policy(glance_maps).squeeze(-1), self.rho, self.eta)

    @torch.inference_mode()
    def __call__(self, frames: Tensor) -> NetOutput:
        """``frames [B, T, 3, H, W]`` (normalised) -> ``logits [B, T, K]`` (the prediction after each frame; the
        video's is the last), ``actions [B, T]``, ``offsets [B, T, 2]`` and ``keep [B, T]`` (None unless skipping)."""
        net = self.net
        net.check_frames(frames)
        if self.exit_rule is not None:
            return self._with_exits(frames)
        batch, steps = frames.shape[:2]
        glance_maps = self._run("glance", self.glance, net.glance_inputs(frames)).unflatten(0, (batch, steps))
        glance_features = glance_maps.mean(dim=(-2, -1))
        if self.patch_policy == "learned":
            actions = self.policy(glance_maps).argmax(dim=-1)
            offsets = net.actions_to_offsets(actions)
        else:  # a fixed policy (e.g. a Stage I checkpoint, trained on random patches, Eq. 5)
            actions = None
            offsets = net.draw_offsets(self.patch_policy, batch, steps, frames.device, self.generator)
        keep = self._keep(glance_maps)
        run_local = partial(self._run, "local", self.local)
        if keep is None:
            local = net.local_features(net.crop(frames, offsets), local=run_local)
        else:
            local = net.kept_local_features(frames, offsets, keep, local=run_local)
        features = net.classifier_inputs(glance_features, local)
        return NetOutput(self.classifier(features), actions=actions, offsets=offsets, keep=keep)

    def _with_exits(self, frames: Tensor) -> NetOutput:
        """Frame by frame, the videos that exited leaving the batch (see the class docstring)."""
        net, rule = self.net, self.exit_rule
        batch, steps = frames.shape[:2]
        if rule.steps != steps:
            raise ValueError(f"the exit rule has {rule.steps} steps but the videos have {steps} frames: solve it for "
                             f"data.num_segments={steps}")
        device = frames.device
        learned = self.patch_policy == "learned"
        skipping = self.skip_policy is not None and self.rho is not None
        running = torch.arange(batch, device=device)  # the videos still reading, as rows of the batch
        logits_out = None
        actions = torch.full((batch, steps), -1, dtype=torch.long, device=device) if learned else None
        offsets = torch.full((batch, steps, 2), -1, dtype=torch.long, device=device)
        keep_out = torch.zeros(batch, steps, dtype=torch.bool, device=device) if skipping else None
        exit_steps = torch.full((batch,), steps - 1, dtype=torch.long, device=device)
        policy_state = skip_state = classifier_state = None
        run_local = partial(self._run, "local", self.local)
        for t in range(steps):
            frame = frames[running, t].unsqueeze(1)  # [b, 1, 3, H, W]
            glance_map = self._run("glance", self.glance, net.glance_inputs(frame))  # Eq. 1 on frame t only
            if learned:  # Eq. 3, one step
                policy_logits, policy_state = self.policy.step(glance_map, policy_state)
                step_actions = policy_logits.argmax(dim=-1)
                step_offsets = net.actions_to_offsets(step_actions)
                actions[running, t] = step_actions
            else:
                step_offsets = net.draw_offsets(self.patch_policy, len(running), 1, device, self.generator)[:, 0]
            offsets[running, t] = step_offsets
            if skipping:  # Eq. 8 and rho: f_L only where p_t^B >= rho
                skip_logits, skip_state = self.skip_policy.step(glance_map, skip_state)
                keep = keep_mask(skip_logits.squeeze(-1), self.rho)
                keep_out[running, t] = keep
                local = net.kept_local_features(frame, step_offsets[:, None], keep[:, None], local=run_local)[:, 0]
            else:
                local = net.local_features(net.crop(frame, step_offsets[:, None]), local=run_local)[:, 0]
            features = net.classifier_inputs(glance_map.mean(dim=(-2, -1)), local)
            logits, classifier_state = self.classifier.step(features, classifier_state)  # Eq. 4, one step
            if logits_out is None:
                logits_out = logits.new_zeros(batch, steps, logits.shape[-1])
            logits_out[running, t:] = logits.unsqueeze(1)  # later steps repeat it unless the video reads on
            leaving = rule.exits_at(t, confidences(torch.softmax(logits.float(), dim=-1)), running)
            if t == steps - 1 or bool(leaving.all()):
                exit_steps[running] = t
                break
            exit_steps[running[leaving]] = t
            rows = (~leaving).nonzero().squeeze(1)
            running = running[rows]
            policy_state = None if policy_state is None else policy_state[rows]
            skip_state = None if skip_state is None else skip_state[rows]
            classifier_state = self.classifier.keep_rows(classifier_state, rows)
        return NetOutput(logits_out, actions=actions, offsets=offsets, keep=keep_out, exit_steps=exit_steps)


class FastFullFrame(_Engine):
    """The full-frame baselines on the same fast path: f_G (if any) and f_L each over all B*T frames in one batch,
    then f_C."""

    def __init__(self, net: FullFrameNet, backend: str = "eager", channels_last: bool = True, fold_bn: bool = True,
                 fuse_activations: bool = True, profile: bool = False,
                 glance_chunk: int | None = DEFAULT_GLANCE_CHUNK):
        super().__init__(net, backend, channels_last, fold_bn, fuse_activations, profile, glance_chunk)
        self.glance = None if net.glance is None else self._prepare(net.glance, "forward")
        self.local = self._prepare(net.local, "forward")
        self.classifier = _ClassifierScan(net.classifier)

    @torch.inference_mode()
    def __call__(self, frames: Tensor) -> NetOutput:
        """``frames [B, T, 3, H, W]`` -> ``logits [B, T, K]``."""
        glance, local = self.net.features(
            frames, glance=None if self.glance is None else partial(self._run, "glance", self.glance),
            local=partial(self._run, "local", self.local))
        return NetOutput(self.classifier(self.net.classifier_inputs(glance, local)))
