"""Training tricks: each option changes exactly what it claims to."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastkd.errors import UserError
from fastkd.models import create_model
from fastkd.train import tricks
from fastkd.train.config import TrainConfig
from fastkd.train.schedule import lr_at
from fastkd.train.trainer import Trainer


def test_kaiming_and_xavier_follow_their_formulas():
    torch.manual_seed(0)
    m = create_model("ResNet18", 10, True)
    tricks.initialise(m, "kaiming")
    w = m.layer3[0].conv1.weight  # fan_out = 256 * 3 * 3
    assert w.std().item() == pytest.approx((2.0 / (256 * 9)) ** 0.5, rel=0.05)
    assert m.fc.weight.std().item() == pytest.approx(0.01, rel=0.1)  # the classifier feeds no ReLU
    tricks.initialise(m, "xavier")
    fan_in, fan_out = 128 * 9, 256 * 9
    bound = (6.0 / (fan_in + fan_out)) ** 0.5
    assert w.abs().max().item() <= bound and w.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
    assert torch.all(m.fc.bias == 0)
    with pytest.raises(UserError):
        tricks.initialise(m, "lecun")


def test_zero_gamma_zeroes_the_last_norm_of_each_residual_block():
    m = create_model("ResNet50", 10, True)
    assert tricks.zero_gamma(m) == 16  # 3 + 4 + 6 + 3 bottlenecks
    assert all(torch.all(b.bn3.weight == 0) for layer in (m.layer1, m.layer4) for b in layer)
    assert torch.all(m.layer1[0].bn1.weight == 1)
    assert tricks.zero_gamma(create_model("resnet32", 10, True)) == 13  # 15 less the 2 zero-padding downsamplers
    mb = create_model("mobilenet_v2", 10, True)
    assert tricks.zero_gamma(mb) == 10  # inverted residuals with an identity path
    with pytest.raises(UserError, match="no additive residual"):
        tricks.zero_gamma(create_model("squeezenet1_1", 10, True))


def test_dropout_hook_acts_in_training_only():
    m = create_model("resnet32", 10, True)
    tricks.add_dropout(m, 0.5)
    x = torch.randn(4, 3, 32, 32)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    a = m(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, m(x))
    assert set(m.state_dict()) == set(create_model("resnet32", 10, True).state_dict())


def test_no_bias_decay_groups():
    m = create_model("resnet32", 10, True)
    groups = tricks.param_groups(m, [], 5e-4, no_bias_decay=True)
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(p.ndim == 1 for p in groups[1]["params"])
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in m.parameters())
    assert len(tricks.param_groups(m, [], 5e-4, no_bias_decay=False)) == 1


def test_pretrained_loads_what_fits(tmp_path):
    src = create_model("ResNet18", 1000, False)  # an "ImageNet" checkpoint in torchvision's layout
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    dst = create_model("ResNet18", 10, True)  # other classifier, low-res stem
    left = tricks.load_pretrained(dst, str(tmp_path / "r18.pth"))
    assert set(left) == {"conv1.weight", "fc.weight", "fc.bias"}
    assert torch.equal(dst.layer2[0].conv1.weight, src.layer2[0].conv1.weight)
    with pytest.raises(UserError, match="no tensor fits"):
        tricks.load_pretrained(create_model("squeezenet1_1", 10, True), str(tmp_path / "r18.pth"))


def test_label_smoothing_and_soft_targets(orl_data, tmp_path):
    cfg = TrainConfig(data=orl_data, out=str(tmp_path / "r"), student="resnet32", res=32, workers=0, device="cpu",
                      progress=False, label_smoothing=0.1)
    tr = Trainer(cfg)
    logits, labels = torch.randn(4, 40), torch.tensor([0, 3, 5, 39])
    batch = type("B", (), {"labels": labels, "targets": None})()
    want = F.cross_entropy(logits, labels, label_smoothing=0.1)
    assert tr._hard_loss(logits, batch).item() == pytest.approx(want.item(), rel=1e-6)
    batch.targets = F.one_hot(labels, 40).float()  # one-hot soft targets reduce to the same loss
    assert tr._hard_loss(logits, batch).item() == pytest.approx(want.item(), rel=1e-5)
    tr.close()


def test_linear_lr_scaling(orl_data, tmp_path):
    cfg = TrainConfig(data=orl_data, out=str(tmp_path / "r"), student="resnet32", res=32, workers=0, device="cpu",
                      progress=False, lr=0.1, batch_size=32, lr_scaling=True, schedule="constant")
    tr = Trainer(cfg)
    assert lr_at(tr.sched, 0.5) == pytest.approx(0.1 * 32 / 256)
    tr.close()


def test_bf16_channels_last_epoch_runs(orl_data, tmp_path):
    cfg = TrainConfig(data=orl_data, out=str(tmp_path / "r"), student="shufflenet_v2_x0_5", res=32, workers=0,
                      device="cpu", progress=False, epochs=1, amp="bf16", channels_last=True, no_bias_decay=True,
                      init="kaiming", dropout=0.2, label_smoothing=0.1, warmup_epochs=0.5)
    tr = Trainer(cfg)
    summary = tr.fit()
    tr.close()
    assert summary["top1"] is not None and summary["train_seconds"] > 0
