"""Eq. 7 in the policy stage: the policy's and the random patch are scored from the SAME classifier state."""

import torch
import torch.nn.functional as F

from adafocus_pl.stages.policy import PolicyStage

NET = dict(num_classes=5, patch_size=32, frame_size=96, glance_backbone="tiny_glance", local_backbone="tiny_local",
           policy_hidden=16, classifier_hidden=16, dropout=0.0)


def test_rollout_confidences_match_a_manual_unroll(monkeypatch):
    torch.manual_seed(0)
    stage = PolicyStage(net=NET, optimizer={"name": "adam", "lr": 1e-3, "scheduler": "constant"}).eval()
    net = stage.net
    frames = torch.randn(2, 4, 3, 96, 96)
    labels = torch.tensor([1, 3])
    actions = torch.tensor([[0, 10, 20, 48], [5, 5, 30, 12]])
    fixed_random = torch.tensor([[3, 7], [60, 0], [64, 64], [10, 50], [0, 0], [33, 2], [12, 12], [64, 1]])
    monkeypatch.setattr(net, "draw_offsets", lambda policy, b, t, device: fixed_random.view(b, t, 2))

    maps = net.glance_maps(frames)
    conf_policy, conf_random = stage.rollout_confidences(frames, maps, actions, labels)

    glance = maps.mean(dim=(-2, -1))
    local_policy = net.local_features(net.crop(frames, net.actions_to_offsets(actions)))
    local_random = net.local_features(net.crop(frames, fixed_random.view(2, 4, 2)))
    # the policy path is exactly the offline classifier over the policy's patches
    offline = F.softmax(net.classify(glance, local_policy), -1)
    assert torch.allclose(conf_policy, offline.gather(2, labels[:, None, None].expand(2, 4, 1)).squeeze(2), atol=1e-6)
    # the random path at t uses h_{t-1} of the POLICY path
    h = net.classifier.init_state(2, frames.device)
    for t in range(4):
        logits_r, _ = net.classifier.step(net.classifier_inputs(glance[:, t], local_random[:, t]), h)
        _, h = net.classifier.step(net.classifier_inputs(glance[:, t], local_policy[:, t]), h)
        assert torch.allclose(conf_random[:, t], F.softmax(logits_r, 1).gather(1, labels[:, None]).squeeze(1), atol=1e-6)
    assert not torch.allclose(conf_policy, conf_random)


def test_policy_stage_trains_only_the_policy():
    stage = PolicyStage(net=NET, optimizer={"name": "adam", "lr": 1e-3, "scheduler": "constant"})
    trainable = {n.split(".")[1] for n, p in stage.named_parameters() if p.requires_grad}
    assert trainable == {"policy"}
    stage.train()
    assert stage.net.policy.training and not stage.net.local.training and not stage.net.glance.training
    assert not stage.net.classifier.training
