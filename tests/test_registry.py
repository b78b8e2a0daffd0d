"""Extension is one file: package discovery registers every model, method, backend and dataset module;
every registered dataset has a sane spec and names what is missing from an empty root; every backend
declares the converted format it reads."""
from __future__ import annotations

import copy
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastkd.converters import DATASETS
from fastkd.converters.convert import ConvertOptions
from fastkd.errors import UserError
from fastkd.methods import METHODS
from fastkd.models import MODELS
from fastkd.pipelines import BACKENDS, ConvertedData, Loader, open_converted
from fastkd.pipelines.backend import BackendConfig
from fastkd.registry import Registry, import_modules

SPLITS = {"train", "val", "trainval", "test"}

# registry, package, the decorator a registering module calls, a file-name suffix discovery requires
PACKAGES = {
    "models": (MODELS, "fastkd.models", "@register_model(", ""),
    "methods": (METHODS, "fastkd.methods", "@register_method(", ""),
    "backends": (BACKENDS, "fastkd.pipelines", "@register_backend(", "_backend"),
    "datasets": (DATASETS, "fastkd.converters.datasets", "@register_dataset(", ""),
}


def _registered_module(obj) -> str:
    return getattr(obj, "read", obj).__module__  # a dataset entry holds its reader


@pytest.mark.parametrize("kind", list(PACKAGES))
def test_every_registering_module_is_discovered(kind):
    """The modules that call the decorator are exactly the modules the registry's entries come from."""
    registry, package, decorator, suffix = PACKAGES[kind]
    folder = os.path.dirname(sys.modules[package].__file__)
    calling = {f"{package}.{name[:-3]}" for name in os.listdir(folder) if name.endswith(".py")
               and name != "__init__.py" and decorator in Path(folder, name).read_text()}
    assert calling, f"no module of {package} calls {decorator}"
    assert {_registered_module(obj) for _, obj in registry.items()} == calling
    assert all(name.endswith(suffix) for name in calling), f"{kind} modules must be named *{suffix}.py"


def test_a_new_module_is_registered_without_another_edit(tmp_path, monkeypatch):
    """The discovery the packages use, on a package made here: dropping in one file registers it."""
    pkg = tmp_path / "fastkd_plugin_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from fastkd.registry import Registry, import_modules\n"
        "THINGS = Registry('thing')\n"
        "LOADED = import_modules(__name__, suffix='_thing')\n")
    (pkg / "zebra_thing.py").write_text("from . import THINGS\n\n@THINGS.register('zebra')\nclass Z: ...\n")
    (pkg / "alpha_thing.py").write_text("from . import THINGS\n\n@THINGS.register('alpha', 'A')\ndef build(): ...\n")
    (pkg / "helpers.py").write_text("raise AssertionError('not a *_thing module: never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fastkd_plugin_pkg as plugin

    try:
        assert plugin.LOADED == ["fastkd_plugin_pkg.alpha_thing", "fastkd_plugin_pkg.zebra_thing"]
        assert plugin.THINGS.names() == ["alpha", "zebra"]  # file-name order
        assert plugin.THINGS.canonical("a") == "alpha" and plugin.THINGS.get("ZEBRA").__name__ == "Z"
    finally:
        for name in [m for m in sys.modules if m.startswith("fastkd_plugin_pkg")]:
            del sys.modules[name]


def test_import_modules_names_a_missing_package_and_registry_rejects_duplicates():
    with pytest.raises(ModuleNotFoundError):
        import_modules("fastkd.no_such_package")
    reg = Registry("thing")
    reg.register("one", "uno")(object())
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("UNO")(object())


def test_importing_the_registries_imports_neither_ffcv_nor_dali():
    code = ("import sys, fastkd, fastkd.models, fastkd.methods, fastkd.pipelines, fastkd.converters\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('ffcv', 'nvidia')]\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


# ---- datasets ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_spec_is_sane(name):
    entry = DATASETS.get(name)
    spec = entry.spec
    assert spec.name == name == entry.read.__module__.rsplit(".", 1)[1]  # one file, named for the dataset
    assert isinstance(spec.num_classes, int) and spec.num_classes >= 0
    assert (spec.num_classes == 0) == (not spec.split_counts)  # 0: a generic reader, classes from the files
    assert set(spec.split_counts) <= SPLITS and (not spec.split_counts or "train" in spec.split_counts)
    assert all(isinstance(n, int) and n > 0 for n in spec.split_counts.values())
    assert spec.storage in ("jpg", "raw") and isinstance(spec.low_res, bool)
    assert isinstance(spec.default_res, int) and spec.default_res > 0
    assert not spec.low_res or spec.default_res <= 64  # the low-resolution stem is for small inputs
    if spec.default_max_side is not None:
        assert isinstance(spec.default_max_side, int) and spec.default_max_side >= spec.default_res
    assert spec.resolution.strip() and spec.layout.strip()
    params = list(inspect.signature(entry.read).parameters.values())
    assert params and params[0].name == "root"  # `fastkd convert --root`
    assert all(p.default is not inspect.Parameter.empty for p in params)  # options come from --opt


@pytest.mark.parametrize("name", DATASETS.names())
def test_empty_root_is_a_user_error_naming_what_is_missing(name, tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(UserError) as info:
        DATASETS.get(name).read(str(root))
    message = str(info.value)
    assert "\n" not in message.strip()
    assert str(root) in message or "--opt" in message, message  # the file looked for, or the option needed


# ---- backends ------------------------------------------------------------------------------------------
def _with_formats(data: ConvertedData, formats) -> ConvertedData:
    manifest = copy.deepcopy(data.manifest)
    manifest["options"]["formats"] = list(formats)
    return ConvertedData(data.root, manifest)


@pytest.mark.parametrize("name", BACKENDS.names())
def test_backend_declares_the_format_it_reads(name, orl_data, monkeypatch):
    cls = BACKENDS.get(name)
    formats = ConvertOptions().formats
    assert cls.reads in formats, f"backend {name} must declare reads = one of {formats}"
    data = open_converted(orl_data)
    cfg = BackendConfig(_with_formats(data, [cls.reads]), "train", 32, 8, 0, None, None, True)
    monkeypatch.setattr(cls, "package", "")  # the package check is tested in test_pipelines.py
    cls.require(name, cfg)  # a conversion with just that format is enough
    others = [f for f in formats if f != cls.reads]
    cfg.data = _with_formats(data, others)
    with pytest.raises(UserError) as info:
        cls.require(name, cfg)
    able = [n for n, b in BACKENDS.items() if b.reads in others]
    message = str(info.value)
    assert f"without {cls.reads} files" in message and f"--formats {cls.reads}" in message and name in message
    assert all(n in message for n in able)


def test_backend_names_are_case_insensitive_and_read_their_own_format(orl_data):
    """Any spelling of a backend's name asks for the format that backend reads (``--backend FFCV`` once asked
    for DALI files), and the message names the backends that can read what the conversion holds."""
    data = open_converted(orl_data)
    by_format = {}
    for name, cls in BACKENDS.items():
        by_format.setdefault(cls.reads, []).append(name)
    for fmt, names in by_format.items():
        missing = _with_formats(data, [f for f in by_format if f != fmt])
        for name in names:
            with pytest.raises(UserError, match=f"without {fmt} files, which --backend {name} reads"):
                Loader(missing, "train", backend=name.upper(), batch_size=8, res=32)


def _commands(group, path=()):
    import click

    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, path + (name,))
        else:
            yield path + (name,), command


def test_every_backend_option_lists_the_registered_backends_in_its_help():
    from click.testing import CliRunner

    from fastkd.cli import ablate, bench, cli, compare, convert, demo, listing, train  # noqa: F401  (commands)
    from fastkd.cli.options import RegistryOption

    checked = 0
    for path, command in _commands(cli):
        for option in command.params:
            if not any(o.startswith("--backend") for o in getattr(option, "opts", [])):
                continue
            assert isinstance(option, RegistryOption), f"fastkd {' '.join(path)} {option.opts[0]}"
            result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=400)
            assert result.exit_code == 0, result.output
            line = next(li for li in result.output.splitlines() if option.opts[0] in li)
            assert all(name in line for name in BACKENDS.names()), line
            checked += 1
    assert checked >= 2  # train and eval at least
