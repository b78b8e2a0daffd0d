"""Bad option values (infinite, NaN, out of range, of the wrong type) are one-line errors naming the option, on
the command line and in every place a run's options are built (issue 19, point 4)."""
from __future__ import annotations

import re

import pytest

from fastkd.errors import UserError
from cli_errors import assert_one_line_error, run_cli


@pytest.mark.parametrize("bad,message", [
    ({"lr": float("inf")}, "--lr inf is not a finite number"),
    ({"lr": float("nan")}, "--lr nan is not a finite number"),
    ({"lr": "0.1"}, "--lr '0.1' is not a finite number"),
    ({"weight_decay": float("inf")}, "--weight-decay inf"),
    ({"label_smoothing": 1.0}, "--label-smoothing 1.0 must be in [0, 1)"),
    ({"label_smoothing": -0.1}, "--label-smoothing -0.1 must be in [0, 1)"),
    ({"mixup": float("nan")}, "--mixup nan"),
    ({"cutmix": -1.0}, "--cutmix -1.0 must be >= 0"),
    ({"epochs": 2.5}, "--epochs 2.5 must be an integer >= 1"),
    ({"workers": -1}, "--workers -1 must be an integer >= 0"),
    ({"res": 9.5}, "--res 9.5 must be at least 8"),
    ({"seed": -1}, "--seed -1 must be an integer >= 0"),
    ({"step_size": 0}, "--step-size 0 must be an integer >= 1"),
    ({"ce_weight": -1.0}, "--ce-weight -1.0 must be"),
    ({"ce_weight": float("inf")}, "--ce-weight inf must be"),
    ({"cache_budget": float("inf")}, "--cache-budget inf"),
    ({"cache_topk": -2}, "--cache-topk -2"),
    ({"checkpoint_every": float("nan")}, "--checkpoint-every nan"),
    ({"momentum": 1.0}, "--momentum 1.0 must be in [0, 1)"),
    ({"method": "kd", "method_options": {"kd": {"temperature": 0}}}, "--opt kd.temperature=0 must be > 0"),
    ({"method": "kd", "method_options": {"kd": {"temperature": float("inf")}}}, "--opt kd.temperature=inf"),
    ({"method": "kd", "method_options": {"kd": {"weight": -0.5}}}, "--opt kd.weight=-0.5 is a loss weight"),
    ({"method": "rkd", "method_options": {"rkd": {"angle_weight": -1}}}, "--opt rkd.angle_weight=-1"),
    ({"method": "dkd", "method_options": {"dkd": {"beta": -8}}}, "--opt dkd.beta=-8 is a loss weight"),
])
def test_bad_option_values_are_one_line_errors_naming_the_option(bad, message):
    from fastkd.train.config import TrainConfig

    with pytest.raises(UserError) as info:
        TrainConfig(data="", out="", student="resnet8", **bad)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("options,message", [
    ({"kd": {"temperature": 0.0}}, "--opt kd.temperature=0.0 must be > 0"),
    ({"kd": {"temperature": "hot"}}, "--opt kd.temperature='hot' must be a number"),
    ({"kd": {"weight": -1}}, "--opt kd.weight=-1 is a loss weight"),
    ({"crd": {"temperature": -0.07}}, "--opt crd.temperature=-0.07 must be > 0"),
    ({"dkd": {"warmup": 2.5}}, "--opt dkd.warmup=2.5 must be an integer"),
    ({"pkt": {"eps": 0}}, "--opt pkt.eps=0 must be > 0"),
])
def test_method_options_are_checked_where_methods_are_built(options, message):
    """``parse_methods`` (training, ``fastkd cache build``, a grid's check) refuses them too."""
    from fastkd.methods import parse_methods

    with pytest.raises(UserError) as info:
        parse_methods("+".join(options), options)
    assert message in str(info.value)


@pytest.mark.parametrize("value", ["inf", "nan", "-1G", "0", "garbage", "1e400"])
def test_memory_limit_refuses_non_sizes(value):
    from fastkd.pipelines.memory_backend import parse_bytes

    with pytest.raises(UserError, match="is not a size"):
        parse_bytes(value)


def test_memory_limit_inf_is_one_line_on_the_command_line(tmp_path):
    result = run_cli("train", "--memory-limit", "inf", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--student", "resnet8")
    assert_one_line_error(result, "'inf' is not a size")


def test_convert_options_are_checked(tmp_path):
    base = ["convert", "--dataset", "imagefolder", "--root", str(tmp_path), "--out", str(tmp_path) + "-o"]
    assert_one_line_error(run_cli(*base, "--val-fraction", "nan", "--per-shard", "1"),
                          "--val-fraction nan must be in [0, 1)")


@pytest.mark.parametrize("where,options,message", [
    ("student_train", {"lr": float("inf")}, "--lr inf is not a finite number"),
    ("teacher_train", {"label_smoothing": 1.5}, "--label-smoothing 1.5 must be in [0, 1)"),
    ("method_options", {"kd": {"temperature": 0}}, "--opt kd.temperature=0 must be > 0"),
])
def test_grid_checks_every_cells_option_values_before_training(tmp_path, where, options, message):
    """A bad value only the student or method cells use fails before the teachers train for hours."""
    from fastkd.experiments.grid import GridSpec

    spec = GridSpec(data=str(tmp_path), out=str(tmp_path / "g"), teachers=["ResNet18"], student="resnet32",
                    methods=["kd"], seeds=[0], **{where: options})
    with pytest.raises(UserError, match=re.escape(message)):
        spec.check()
