"""Model zoo tests, parametrised over the registry: a newly registered model is tested as is."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from fastkd.errors import UserError
from fastkd.models import (
    MODELS,
    FeatureTaps,
    count_parameters,
    create_model,
    describe_models,
    list_models,
    model_taps,
)

NUM_CLASSES = 10
HIGH_RES = 224


@pytest.fixture(scope="module", params=list_models())
def pair(request):
    """(name, low-res model, high-res model), built once per name; pytest groups tests by it."""
    torch.manual_seed(0)
    name = request.param
    return name, create_model(name, NUM_CLASSES, low_res=True).eval(), create_model(
        name, NUM_CLASSES, low_res=False
    ).eval()


def stage_taps(model):
    return sorted((t for t in model_taps(model) if t.startswith("stage")), key=lambda t: int(t[5:]))


def run_with_taps(model, size, batch):
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad(), FeatureTaps(model) as taps:
        logits = model(x)
    return logits, taps.outputs


def check_forward(model, size, batch):
    logits, feats = run_with_taps(model, size, batch)
    assert logits.shape == (batch, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    assert set(feats) == set(model_taps(model))
    stages = stage_taps(model)
    assert stages[:3] == ["stage1", "stage2", "stage3"], stages
    sizes = [feats[s].shape[-2:] for s in stages]
    for t in stages:
        assert feats[t].dim() == 4 and feats[t].shape[0] == batch and torch.isfinite(feats[t]).all()
    for (h0, w0), (h1, w1) in zip(sizes, sizes[1:]):
        assert h1 < h0 and w1 < w0, f"stage sizes do not decrease: {sizes}"
    emb = feats["embedding"]
    assert emb.dim() == 2 and emb.shape[0] == batch
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:  # the embedding is exactly what the final linear classifier sees
        torch.testing.assert_close(linears[-1](emb), logits)
    return feats


def test_forward_low_res(pair):
    _, low, _ = pair
    check_forward(low, 32, 2)


def test_forward_high_res(pair):
    _, _, high = pair
    check_forward(high, HIGH_RES, 1)


def test_low_res_stem_keeps_more_resolution(pair):
    _, low, high = pair
    _, f_low = run_with_taps(low, 64, 1)
    _, f_high = run_with_taps(high, 64, 1)
    for stage in stage_taps(low):
        assert f_low[stage].shape[-1] > f_high[stage].shape[-1], stage
    # low-res total downsampling at most 8: 32x32 keeps at least a 4x4 final map
    _, f32 = run_with_taps(low, 32, 1)
    assert f32[stage_taps(low)[-1]].shape[-1] >= 4


def test_taps_are_submodules_and_info(pair):
    name, low, high = pair
    for model in (low, high):
        assert model.fastkd_name == name
        for tap, target in model_taps(model).items():
            assert isinstance(model.get_submodule(target), nn.Module), tap
        assert "logits" not in model_taps(model)


@pytest.mark.parametrize("name", list_models())
def test_aliases_resolve(name):
    assert MODELS.canonical(name.lower()) == name
    assert MODELS.canonical(name.upper()) == name
    assert name.lower() in MODELS


def test_alias_builds_same_model():
    a, b = create_model("resnet18", 10, low_res=True), create_model("ResNet18", 10, low_res=True)
    assert a.fastkd_name == b.fastkd_name == "ResNet18"
    assert count_parameters(a) == count_parameters(b)


def meta_count(build):
    with torch.device("meta"):
        return count_parameters(build())


@pytest.mark.parametrize(
    "name", [n for n in list_models() if n.lower() in torchvision.models.list_models()]
)
def test_param_count_matches_torchvision(name):
    ours = meta_count(lambda: create_model(name, 1000, low_res=False))
    ref = meta_count(lambda: torchvision.models.get_model(name.lower(), weights=None))
    assert ours == ref


def test_known_param_counts():
    assert count_parameters(create_model("ResNet18", 1000, low_res=False)) == 11_689_512
    assert count_parameters(create_model("resnet32", 10, low_res=True)) == 464_154
    n = count_parameters(create_model("resnet32", 100, low_res=True))
    assert 0.45e6 < n < 0.48e6 and n == 470_004


def test_describe_models():
    rows = describe_models()
    assert [r.name for r in rows] == list_models()
    by_name = {r.name: r for r in rows}
    assert by_name["ResNet18"].params == 11_689_512
    assert by_name["ResNet18"].taps == ("stage1", "stage2", "stage3", "stage4", "embedding")
    assert by_name["resnet32"].taps == ("stage1", "stage2", "stage3", "embedding")


def test_unknown_model_lists_names():
    with pytest.raises(UserError) as err:
        create_model("resnet9000", 10, low_res=True)
    msg = str(err.value)
    assert "resnet9000" in msg
    for name in list_models():
        assert name in msg


def test_bad_num_classes():
    with pytest.raises(UserError):
        create_model("resnet32", 0, low_res=True)


def test_unknown_tap_names_tap_model_and_choices():
    model = create_model("resnet32", 10, low_res=True)
    with pytest.raises(UserError) as err:
        FeatureTaps(model, ["stage4"])
    msg = str(err.value)
    assert "stage4" in msg and "resnet32" in msg
    for tap in model_taps(model):
        assert tap in msg
    with pytest.raises(UserError, match="model output"):
        FeatureTaps(model, "logits")


def test_model_without_taps():
    with pytest.raises(UserError):
        model_taps(nn.Linear(2, 2))


def test_feature_taps_lifecycle_and_gradients():
    model = create_model("resnet32", 10, low_res=True).train()
    taps = FeatureTaps(model, ["stage2", "embedding"])
    logits = model(torch.randn(2, 3, 32, 32))
    assert set(taps.outputs) == {"stage2", "embedding"}
    (taps["stage2"].square().mean() + taps["embedding"].sum() + logits.sum()).backward()
    assert model.conv1.weight.grad is not None
    model(torch.randn(1, 3, 32, 32))
    assert taps["stage2"].shape[0] == 1  # refreshed by every forward
    taps.close()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    model(torch.randn(3, 3, 32, 32))
    assert taps["stage2"].shape[0] == 1  # no longer updated


def test_model_taps_is_a_copy():
    model = create_model("mobilenet_v2", 10, low_res=True)
    model_taps(model)["stage1"] = "nonsense"
    assert model.fastkd_taps["stage1"] == "features.3"


def test_low_res_resnet_stem():
    model = create_model("ResNet50", 10, low_res=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model.conv1.bias is None and isinstance(model.maxpool, nn.Identity)
