"""One signal vocabulary (fastkd/tap_names.py): the forms it accepts, the check when taps are attached, and
methods that take tap names from it rather than from the model zoo."""
from __future__ import annotations

import ast
import pathlib

import pytest
import torch
from torch import nn

from fastkd.errors import UserError
from fastkd.models import FeatureTaps, attach_taps, create_model
from fastkd.tap_names import VALID_FORMS, is_valid, split_stats, stats

METHODS = pathlib.Path(__file__).resolve().parents[1] / "fastkd" / "methods"


@pytest.mark.parametrize("name", ["stage1", "stage4", "pre1", "pre4", "pre3_stats", "embedding", "logits"])
def test_valid_forms(name):
    assert is_valid(name)


@pytest.mark.parametrize("name", ["stage0", "stage5", "stage1_stats", "pre", "pre05", "Stage1", "pre2_stat",
                                  "embeddings", "", None, "stage 1"])
def test_malformed_names(name):
    assert not is_valid(name)


def test_stats_suffix_round_trip():
    assert stats("pre2") == "pre2_stats" and split_stats(stats("pre2")) == ("pre2", True)
    assert split_stats("pre2") == ("pre2", False)


def test_attaching_a_malformed_tap_is_a_user_error_listing_the_forms():
    model = create_model("resnet32", 10, low_res=True)
    with pytest.raises(UserError) as info:
        FeatureTaps(model, ["stage2", "stage9", "emb"])
    message = str(info.value)
    assert "'stage9'" in message and "'emb'" in message and "'stage2'" not in message
    assert VALID_FORMS in message
    with pytest.raises(UserError, match="available taps"):  # well formed, but resnet32 has three stages
        FeatureTaps(model, ["stage4"])
    with FeatureTaps(model, ["stage3", "pre3_stats", "embedding"]) as taps:
        model(torch.zeros(4, 3, 32, 32))
        assert taps["stage3"].shape[:2] == (4, 64) and taps["pre3_stats"].shape == (2, 64)  # [mean; std]
        assert taps["embedding"].shape == (4, 64)


def test_the_zoo_cannot_declare_a_name_outside_the_vocabulary():
    net = nn.Sequential(nn.Conv2d(3, 4, 3))
    attach_taps(net, {"stage1": "0"})
    with pytest.raises(ValueError, match="block1"):
        attach_taps(net, {"block1": "0"})


def test_methods_do_not_import_the_model_zoo():
    for path in sorted(METHODS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert not (module.startswith("fastkd.models") or module.startswith("..models")), path.name
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("fastkd.models") for a in node.names), path.name
