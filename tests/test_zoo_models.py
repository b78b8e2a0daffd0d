"""timm and torchvision models by prefixed name: building, derived feature taps, every method on pairs across
families (a CNN, a ConvNeXt, a ViT, a seed model), the errors, and ``fastkd list models --source``.

Random initialisation only (nothing is downloaded); tiny variants at 32 px."""
from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch import nn

from fastkd.cli import main
from fastkd.errors import UserError
from fastkd.methods import parse_methods
from fastkd.models import FeatureTaps, count_parameters, create_model, model_taps
from fastkd.models.layouts import to_map
from fastkd.models.preact import preact_taps
from fastkd.models.zoo_taps import derive_taps
from fastkd.train.signals import check_pair
from run_tools import step_every_method

timm = pytest.importorskip("timm")

CNN, CONVNEXT, VIT = "torchvision:mobilenet_v3_small", "timm:convnext_atto", "timm:vit_tiny_patch16_224"
FAMILIES = [CNN, CONVNEXT, VIT, "resnet32"]
RES = 32
_MODELS = {}


def _model(name: str, teacher: bool) -> nn.Module:
    if (name, teacher) not in _MODELS:
        if name not in _MODELS:
            torch.manual_seed(0)
            _MODELS[name] = create_model(name, 10, True, res=RES)
        m = _MODELS[name]
        if teacher:
            m = copy.deepcopy(m).eval().requires_grad_(False)
        _MODELS[name, teacher] = m
    return _MODELS[name, teacher]


@pytest.mark.parametrize("teacher_name", FAMILIES)
def test_every_method_for_pairs_across_families(teacher_name):
    """kd, l2, fitnets, pkt, rkd, at, overhaul, dkd, crd at once, for this teacher into every family (a ViT
    teacher into a CNN student included): finite loss, gradients to the student and every adapter, none to
    the teacher."""
    teacher = _model(teacher_name, teacher=True)
    x = torch.randn(4, 3, RES, RES)
    for student_name in FAMILIES:
        step_every_method(teacher, _model(student_name, teacher=False), x, f"{teacher_name} -> {student_name}")


def test_taps_are_derived_from_each_family():
    cnn, convnext, vit = (_model(n, teacher=True) for n in (CNN, CONVNEXT, VIT))
    assert cnn.fastkd_taps == {"stage1": "features.1", "stage2": "features.3", "stage3": "features.8",
                               "stage4": "features", "embedding": "classifier"}
    assert convnext.fastkd_taps == {"stage1": "stages.0", "stage2": "stages.1", "stage3": "stages.2",
                                    "stage4": "stages.3", "embedding": "head.fc"}
    assert vit.fastkd_taps == {"stage1": "blocks.2", "stage2": "blocks.5", "stage3": "blocks.8",
                               "stage4": "blocks.11", "embedding": "head"}
    # overhaul's positions: MobileNetV3's last stage ends in BN + Hardswish, its blocks in a linear BN
    pre = preact_taps(cnn)
    assert (pre["pre4"].sources, pre["pre4"].read, pre["pre4"].bn, pre["pre4"].activation) == \
        (("features.12.2",), "input", "features.12.1", "hardswish")
    assert (pre["pre1"].read, pre["pre1"].bn, pre["pre1"].activation) == ("output", "features.1.block.2.1", "identity")
    assert all(p.layout == "tokens" and p.prefix_tokens == 1 and p.bn is None for p in preact_taps(vit).values())


def test_torchvision_resnet18_taps_equal_the_hand_written_seed_taps():
    """The derivation finds what fastkd's resnet18 declares by hand: stages, and the pre-ReLU residual sums
    with the block's last BatchNorm."""
    derived, seed = create_model("torchvision:resnet18", 10, False), create_model("resnet18", 10, False)
    assert {k: v for k, v in derived.fastkd_taps.items() if k != "embedding"} == \
        {k: v for k, v in seed.fastkd_taps.items() if k != "embedding"}
    assert {k: (p.sources, p.read, p.bn) for k, p in preact_taps(derived).items()} == \
        {k: (p.sources, p.read, p.bn) for k, p in preact_taps(seed).items()}
    x = torch.randn(2, 3, 64, 64)
    derived.load_state_dict(seed.state_dict())
    with FeatureTaps(derived.eval()) as a, FeatureTaps(seed.eval()) as b:
        derived(x), seed(x)
        assert set(a.outputs) == set(b.outputs)
        assert all(torch.equal(a.outputs[k], b.outputs[k]) for k in a.outputs)


def test_vit_stages_are_patch_tokens_on_their_grid_and_embedding_is_the_head_input():
    vit = _model(VIT, teacher=True)
    x = torch.randn(2, 3, RES, RES)
    with FeatureTaps(vit, ["stage1", "stage4", "embedding"]) as taps:
        vit(x)
        ours = dict(taps.outputs)
    maps = vit.forward_intermediates(x, indices=[2, 11], norm=False, output_fmt="NCHW", intermediates_only=True)
    assert ours["stage1"].shape == (2, 192, 2, 2)
    assert torch.equal(ours["stage1"], maps[0]) and torch.equal(ours["stage4"], maps[1])
    pre_logits = vit.forward_head(vit.forward_features(x), pre_logits=True)
    assert torch.equal(ours["embedding"], pre_logits)
    cnn = _model(CNN, teacher=True)
    with FeatureTaps(cnn, ["embedding"]) as taps:
        cnn(x)
        assert torch.equal(taps["embedding"], torch.flatten(cnn.avgpool(cnn.features(x)), 1))


def test_channels_last_and_token_layouts_become_maps():
    x = torch.arange(2 * 5 * 3 * 3 * 4, dtype=torch.float32).view(2, 5 * 3 * 3 + 0, 4)[:, :9]  # N x L x C tokens
    tokens = torch.cat([torch.zeros(2, 1, 4), x], dim=1)  # one class token in front
    grid = to_map(tokens, "tokens", 1)
    assert grid.shape == (2, 4, 3, 3) and torch.equal(grid[:, :, 1, 2], x[:, 1 * 3 + 2])
    nhwc = torch.randn(2, 3, 3, 4)
    assert torch.equal(to_map(nhwc, "nhwc"), nhwc.permute(0, 3, 1, 2))
    import torchvision

    build = lambda n: torchvision.models.swin_t(weights=None, num_classes=n)  # noqa: E731
    with torch.device("meta"):
        taps, reads, _ = derive_taps(build, 224, False)
    assert [reads[f"stage{k}"].layout for k in (1, 2, 3)] == ["nhwc"] * 3 and taps["embedding"] == "head"


def test_zoo_models_match_their_sources():
    import torchvision

    model = create_model(CNN, 7, False)
    assert count_parameters(model) == count_parameters(torchvision.models.mobilenet_v3_small(num_classes=7))
    assert model.fastkd_name == CNN and create_model("TIMM:ConvNeXt_Atto", 7, True).fastkd_name == CONVNEXT
    assert count_parameters(_model(CONVNEXT, True)) == count_parameters(timm.create_model("convnext_atto",
                                                                                          num_classes=10))


@pytest.mark.parametrize("name, message", [
    ("foo:resnet", "unknown model source 'foo'"),
    ("timm:convnxt_atto", "did you mean timm:convnext_atto"),
    ("torchvision:resnet_18", "torchvision has no classification model 'resnet_18'"),
])
def test_bad_zoo_names_are_one_line_errors(name, message):
    with pytest.raises(UserError, match=message):
        create_model(name, 10, False)


def test_timm_missing_says_how_to_install(monkeypatch):
    real = importlib.import_module

    def no_timm(name, *a, **k):
        if name == "timm":
            raise ImportError("No module named 'timm'")
        return real(name, *a, **k)
    monkeypatch.setattr(importlib, "import_module", no_timm)
    with pytest.raises(UserError, match=r"timm models need the timm package; pip install 'fastkd\[timm\]'"):
        create_model(CONVNEXT, 10, False)


def test_a_model_that_cannot_run_at_the_resolution_or_serve_a_method_says_so():
    with pytest.raises(UserError, match=r"timm:crossvit_tiny_240 cannot run on 32x32 inputs"):
        create_model("timm:crossvit_tiny_240", 10, True, res=32)
    squeeze = create_model("torchvision:squeezenet1_1", 10, False)  # three map sizes: three stages
    assert [t for t in model_taps(squeeze) if t.startswith("stage")] == ["stage1", "stage2", "stage3"]
    methods = parse_methods("at", {"at": {"stages": "stage1,stage2,stage3,stage4"}})
    with pytest.raises(UserError, match=r"method at needs feature tap 'stage4', which the student "
                                        r"torchvision:squeezenet1_1 lacks"):
        check_pair(methods, squeeze, _model(CONVNEXT, teacher=True))


def test_list_models_from_a_source_with_parameter_counts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for argv in (["list", "models", "--source", "torchvision", "--filter", "mobilenet_v3"],
                 ["list", "models", "--source", "timm", "--filter", "convnext_at*"]):
        main(argv)
    out = capsys.readouterr().out
    assert "torchvision:mobilenet_v3_small" in out and "2,542,856" in out  # torchvision's own count
    assert f"{count_parameters(create_model(CONVNEXT, 1000, False)):,}" in out
    assert "resnet" not in out
    assert len(list((tmp_path / "fastkd").glob("param-counts-*.json"))) == 2  # counted once per version
    with pytest.raises(SystemExit):
        main(["list", "models", "--source", "timm", "--filter", "no-such-model"])
    assert "no timm model matches 'no-such-model'" in capsys.readouterr().err
