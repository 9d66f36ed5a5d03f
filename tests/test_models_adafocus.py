"""AdaFocusNet and its parts: shapes per patch policy, offline == online, classifiers, policy, sampling."""

import math

import pytest
import torch

from adafocus_pl.models.adafocus import AdaFocusNet
from adafocus_pl.models.classifier import FrameAverageClassifier, RecurrentClassifier
from adafocus_pl.models.policy import PatchPolicy

B, T, K, FRAME, P = 3, 4, 5, 48, 16


def tiny_net(**overrides) -> AdaFocusNet:
    torch.manual_seed(0)
    kwargs = dict(
        num_classes=K,
        patch_size=P,
        frame_size=FRAME,
        glance_backbone="tiny_glance",
        local_backbone="tiny_local",
        glance_kwargs={"widths": [8, 16, 16]},
        local_kwargs={"widths": [8, 16, 16, 32]},
        grid_size=5,
        policy_conv_channels=4,
        policy_hidden=32,
        classifier_hidden=24,
        dropout=0.5,
    )
    kwargs.update(overrides)
    return AdaFocusNet(**kwargs)


def clip(seed=0, batch=B, steps=T, size=FRAME):
    return torch.randn(batch, steps, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_submodules_and_dims():
    net = tiny_net()
    for name in ["glance", "local", "policy", "classifier"]:
        assert isinstance(getattr(net, name), torch.nn.Module)
    assert net.feature_dims == {"glance": 16, "local": 32, "classifier": 48}
    assert net.num_actions == 25 and net.num_classes == K
    assert net.glance_map_hw == (6, 6)  # 48 / 4 = 12, then one stride-2 block
    assert net.actions_to_offsets(torch.tensor([[0, 24]])).tolist() == [[[0, 0], [32, 32]]]


@pytest.mark.parametrize("patch_policy", ["learned", "random", "centre", "gaussian", "given"])
def test_forward_shapes_per_patch_policy(patch_policy):
    net = tiny_net().eval()
    actions = torch.randint(0, 25, (B, T)) if patch_policy == "given" else None
    with torch.no_grad():
        out = net(clip(), patch_policy=patch_policy, actions=actions, generator=torch.Generator().manual_seed(1))
    assert out.logits.shape == (B, T, K)
    assert out.offsets.shape == (B, T, 2) and out.offsets.dtype == torch.long
    assert out.offsets.min() >= 0 and out.offsets.max() <= FRAME - P
    assert out.glance_features.shape == (B, T, 16) and out.local_features.shape == (B, T, 32)
    if patch_policy == "learned":
        assert out.actions.shape == (B, T)
        assert out.policy_logits.shape == (B, T, 25) and out.values.shape == (B, T)
    else:
        assert out.policy_logits is None and out.values is None
    if patch_policy == "given":
        assert torch.equal(out.actions, actions)
        assert torch.equal(out.offsets, net.actions_to_offsets(actions))
    if patch_policy == "centre":
        assert (out.offsets == (FRAME - P) // 2).all()


def test_given_actions_or_offsets_reproduce_the_learned_path():
    net = tiny_net().eval()
    frames = clip()
    with torch.no_grad():
        learned = net(frames)
        by_actions = net(frames, patch_policy="given", actions=learned.actions)
        by_offsets = net(frames, patch_policy="given", offsets=learned.offsets)
    torch.testing.assert_close(by_actions.logits, learned.logits)
    torch.testing.assert_close(by_offsets.logits, learned.logits)
    with pytest.raises(ValueError, match="exactly one"):
        net(frames, patch_policy="given")


@pytest.mark.parametrize("classifier", ["gru", "fc"])
@pytest.mark.parametrize("use_glance_features", [True, False])
def test_offline_equals_online(classifier, use_glance_features):
    net = tiny_net(classifier=classifier, use_glance_features=use_glance_features).eval()
    frames = clip(seed=2)
    with torch.no_grad():
        offline = net(frames)
        online = net.online()
        online.reset(B)
        for t in range(T):
            logits = online.step(frames[:, t])
            assert torch.equal(online.last_actions, offline.actions[:, t])
            torch.testing.assert_close(logits, offline.logits[:, t], atol=1e-5, rtol=0)


def test_online_with_a_fixed_policy():
    net = tiny_net().eval()
    frames = clip(seed=4)
    with torch.no_grad():
        offline = net(frames, patch_policy="centre")
        online = net.online(patch_policy="centre")
        steps = [online.step(frames[:, t]) for t in range(T)]
    torch.testing.assert_close(torch.stack(steps, 1), offline.logits, atol=1e-5, rtol=0)


def test_use_glance_features_switch_changes_classifier_input():
    with_glance = tiny_net()
    without = tiny_net(use_glance_features=False)
    assert with_glance.classifier.gru.weight_ih.shape[1] == 16 + 32
    assert without.classifier.gru.weight_ih.shape[1] == 32
    with torch.no_grad():
        assert without.eval()(clip()).logits.shape == (B, T, K)


def test_frame_average_classifier_is_log_mean_softmax():
    head = FrameAverageClassifier(7, K, dropout=0.3).eval()
    x = torch.randn(2, 6, 7)
    out = head(x)
    probs = torch.softmax(head.fc(x), dim=-1)
    for t in range(6):
        expected = probs[:, : t + 1].mean(dim=1).log()
        torch.testing.assert_close(out[:, t], expected, atol=1e-6, rtol=1e-5)
    assert torch.allclose(out.exp().sum(-1), torch.ones(2, 6))  # valid log-probabilities
    state = head.init_state(2)
    for t in range(6):
        step_logits, state = head.step(x[:, t], state)
        torch.testing.assert_close(step_logits, out[:, t])
    assert state[1] == 6


def test_recurrent_classifier_step_matches_forward():
    head = RecurrentClassifier(7, K, hidden=11, dropout=0.8).eval()
    x = torch.randn(2, 5, 7)
    out = head(x)
    assert out.shape == (2, 5, K)
    h = head.init_state(2)
    for t in range(5):
        logits, h = head.step(x[:, t], h)
        torch.testing.assert_close(logits, out[:, t])


@pytest.mark.parametrize("num_actions", [25, 1])
def test_policy_rollout_matches_steps(num_actions):
    policy = PatchPolicy(in_channels=6, map_hw=(3, 4), num_actions=num_actions, conv_channels=2, hidden=8)
    maps = torch.randn(2, 5, 6, 3, 4)
    logits, values = policy.rollout(maps)
    assert logits.shape == (2, 5, num_actions) and values.shape == (2, 5)
    h = policy.init_state(2)
    for t in range(5):
        step_logits, value, h = policy.step(maps[:, t], h)
        torch.testing.assert_close(step_logits, logits[:, t])
        torch.testing.assert_close(value, values[:, t])
    assert isinstance(policy.gru, torch.nn.GRUCell)
    with pytest.raises(ValueError, match="glance maps"):
        policy.step(torch.randn(2, 6, 4, 4))


def test_sampling_is_reproducible_under_a_seeded_generator():
    net = tiny_net().eval()
    frames = clip(seed=5, batch=8, steps=6)
    with torch.no_grad():
        runs = [net(frames, sample=True, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(runs[0].actions, runs[1].actions)
    torch.testing.assert_close(runs[0].logits, runs[1].logits)
    assert not torch.equal(runs[0].actions, runs[2].actions)
    assert runs[0].actions.min() >= 0 and runs[0].actions.max() < 25


def test_training_step_reaches_the_right_modules():
    net = tiny_net().train()
    out = net(clip(), patch_policy="random", generator=torch.Generator().manual_seed(0))
    loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), torch.zeros(B * T, dtype=torch.long))
    loss.backward()
    for name in ["glance", "local", "classifier"]:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(net, name).parameters()), name
    assert all(p.grad is None for p in net.policy.parameters())
    assert math.isfinite(loss.item())


def test_glance_size_resizes_frames_before_the_glance():
    net = tiny_net(glance_size=32)
    assert net.glance_map_hw == (4, 4)
    with torch.no_grad():
        assert net.eval()(clip()).logits.shape == (B, T, K)


def test_glance_resize_nearest_is_plain_interpolate_and_bilinear_is_antialiased():
    x = clip()
    flat = x.flatten(0, 1)
    nearest = tiny_net(glance_size=32, glance_resize="nearest")
    assert torch.equal(nearest.glance_inputs(x), torch.nn.functional.interpolate(flat, (32, 32)))
    bilinear = tiny_net(glance_size=32)  # the default
    assert bilinear.glance_resize == "bilinear"
    assert torch.equal(bilinear.glance_inputs(x), torch.nn.functional.interpolate(
        flat, (32, 32), mode="bilinear", align_corners=False, antialias=True))
    assert not torch.equal(nearest.glance_inputs(x), bilinear.glance_inputs(x))
    # at the frame size no resize happens in either mode
    assert torch.equal(tiny_net(glance_size=FRAME, glance_resize="nearest").glance_inputs(x), flat)
    with torch.no_grad():
        assert nearest.eval()(x).logits.shape == (B, T, K)


def test_glance_resize_leaves_the_flops_unchanged():
    from adafocus_pl.evaluation.flops import component_gflops, count_gflops

    nets = [tiny_net(glance_size=32, glance_resize=mode).eval() for mode in ("bilinear", "nearest")]
    assert component_gflops(nets[0]) == component_gflops(nets[1])
    # f_G's count through the resize itself (a whole frame in, glance_inputs then f_G): the resize adds nothing
    through = [count_gflops(net, lambda n, x: n.glance_maps(x), clip(batch=1, steps=1)) for net in nets]
    assert through[0] == through[1] == component_gflops(nets[0])["glance"] > 0


def test_input_validation():
    net = tiny_net()
    with pytest.raises(ValueError, match="expected frames"):
        net(clip(size=40))
    with pytest.raises(ValueError, match="patch_policy"):
        net(clip(), patch_policy="oracle")
    with pytest.raises(ValueError, match="classifier"):
        tiny_net(classifier="lstm")
    with pytest.raises(ValueError, match="smaller than the frame"):
        tiny_net(patch_size=FRAME)
    with pytest.raises(ValueError, match=r"model\.glance_resize='area': use 'bilinear' .* or 'nearest'"):
        tiny_net(glance_resize="area")
