"""TrainConfig's fields are declared once (fastkd/train/config.py) and become the options of `fastkd train`,
`fastkd cache build` and `fastkd grid`, help text included; the parsed options give back the TrainConfig."""
from __future__ import annotations

import dataclasses

import pytest

import fastkd.cli.train  # noqa: F401  (registers `fastkd train`)
from fastkd.cli import cli
from fastkd.cli.cache import CACHE_FIELDS, CACHE_OVERRIDES
from fastkd.cli.config_options import config_values
from fastkd.cli.grid import GRID_FIELDS, GRID_OVERRIDES
from fastkd.train.config import TrainConfig

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _command(*path):
    command = cli
    for name in path:
        command = command.commands[name]
    return command


def _options(command) -> dict:
    return {p.name: p for p in command.params}


def test_every_field_is_declared_with_help_and_is_an_option_of_train():
    options = _options(_command("train"))
    for name, f in FIELDS.items():
        assert f.metadata.get("help"), f"TrainConfig.{name} has no help text"
        assert name in options, f"TrainConfig.{name} is no option of fastkd train"
        assert options[name].help == f.metadata["help"]


@pytest.mark.parametrize("path, names, overrides", [(("cache", "build"), CACHE_FIELDS, CACHE_OVERRIDES),
                                                    (("grid",), GRID_FIELDS, GRID_OVERRIDES)])
def test_cache_build_and_grid_take_the_same_declaration(path, names, overrides):
    options, train = _options(_command(*path)), _options(_command("train"))
    for name in names:
        assert name in options, f"{' '.join(path)} lacks {name}"
        assert options[name].opts == train[name].opts or "flag" in overrides.get(name, {})
        if "help" not in overrides.get(name, {}):
            assert options[name].help.startswith(FIELDS[name].metadata["help"])


def test_a_new_field_becomes_an_option_with_no_other_edit(monkeypatch):
    import click

    from fastkd.cli import config_options as co
    from fastkd.train.config import option

    extra = option(0.25, "A made-up option.")  # what a new TrainConfig field declares
    extra.name, extra.type = "made_up", "float"
    monkeypatch.setitem(co.FIELDS, "made_up", extra)

    @click.command()
    @co.config_options(["made_up", "epochs"])
    def command(**kw):
        pass

    ctx = command.make_context("command", ["--made-up", "0.5"])
    assert {p.name: p.help for p in command.params}["made_up"] == "A made-up option."
    assert config_values(dict(ctx.params), ["made_up", "epochs"]) == {"made_up": 0.5, "epochs": 30}


def test_parsed_train_options_give_the_config():
    command = _command("train")
    args = ["--data", "d", "--out", "o", "--model", "resnet32", "--wd", "1e-4", "--quiet", "--no-augment",
            "--milestones", "3,5", "--schedule", "multistep", "--epochs", "6", "--opt", "kd.temperature=2",
            "--method", "kd", "--no-channels-last", "--res", "32"]
    ctx = command.make_context("train", args)
    params = dict(ctx.params)
    params.pop("resume")
    cfg = TrainConfig(**config_values(params))
    want = TrainConfig(data="d", out="o", student="resnet32", weight_decay=1e-4, progress=False, views=False,
                       milestones=[3, 5], schedule="multistep", epochs=6, method="kd",
                       method_options={"kd": {"temperature": 2}}, channels_last=False, res=32)
    assert cfg == want
    assert params == {}, "every train option but --resume is a TrainConfig field"


def test_grid_leaves_unset_options_to_the_recipe():
    ctx = _command("grid").make_context("grid", ["--data", "d", "--out", "o", "--epochs", "2", "--quiet"])
    params = {k: v for k, v in ctx.params.items() if k in GRID_FIELDS}
    assert config_values(params, GRID_FIELDS) == {"epochs": 2, "progress": False}


def test_cache_build_defaults_are_the_cache_commands():
    ctx = _command("cache", "build").make_context("build", ["--data", "d", "--out", "c", "--teacher-weights", "w",
                                                            "--epochs", "3"])
    values = config_values(dict(ctx.params), CACHE_FIELDS)
    assert values["teacher_cache"] == "c" and values["method"] == "kd" and values["batch_size"] == 256
