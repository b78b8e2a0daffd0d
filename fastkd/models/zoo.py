"""Any classification model of timm or torchvision, by a prefixed name: ``timm:convnext_tiny``,
``torchvision:mobilenet_v3_small``.

Built randomly initialised (weights come from local files: ``--pretrained``, ``--teacher-weights``; nothing is
downloaded), with ``num_classes`` outputs and, for models whose input size is fixed (vision transformers), at the
run's resolution. Their feature taps are derived from the architecture (:mod:`.zoo_taps`), so every method
that reads stages, the embedding or pre-activations works on them. The seed's names without a prefix keep
their meaning (``resnet18`` is fastkd's, with its low-resolution stem).
"""
from __future__ import annotations

import fnmatch
import importlib
import json
import os
import warnings
from functools import lru_cache
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..atomic import atomic_write_text
from ..errors import UserError
from .common import attach_taps
from .layouts import READS_ATTR
from .preact import attach_preact_taps
from .zoo_taps import derive_taps

SOURCES = ("timm", "torchvision")
INSTALL = {"timm": "pip install 'fastkd[timm]' (scripts/setup.sh installs it)", "torchvision": ""}


def split_name(name: str) -> Tuple[Optional[str], str]:
    """``"timm:convnext_tiny"`` -> ``("timm", "convnext_tiny")``; a seed name -> ``(None, name)``."""
    source, sep, arch = str(name).partition(":")
    if not sep:
        return None, str(name)
    if source.lower() not in SOURCES:
        raise UserError(f"unknown model source {source!r} in {name!r}; prefix a zoo model with "
                        f"{' or '.join(s + ':' for s in SOURCES)}, or give a seed name (`fastkd list models`)")
    return source.lower(), arch


def is_zoo_name(name: str) -> bool:
    return ":" in str(name)


def _timm():
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise UserError(f"timm models need the timm package; {INSTALL['timm']}") from None


def zoo_names(source: str) -> List[str]:
    """Every classification model name of ``source``."""
    if source == "timm":
        return list(_timm().list_models())
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def canonical(name: str) -> str:
    """``source:arch`` with the names the source knows (case-insensitive); a UserError with close matches."""
    source, arch = split_name(name)
    known = {n.lower(): n for n in zoo_names(source)}
    if arch.lower() not in known:
        import difflib

        close = difflib.get_close_matches(arch.lower(), list(known), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(f'{source}:{known[c]}' for c in close)}?" if close else ""
        raise UserError(f"{source} has no classification model {arch!r}{hint} "
                        f"(see `fastkd list models --source {source} --filter WORD`)")
    return f"{source}:{known[arch.lower()]}"


def _builder(source: str, arch: str, res: int) -> Tuple[Callable[[int], nn.Module], bool]:
    """``(build(num_classes), fixed_size)``: a builder of the architecture at input side ``res``."""
    if source == "timm":
        timm = _timm()
        fixed = _timm_takes_img_size(arch)
        kwargs = {"img_size": res} if fixed else {}
        return (lambda n: timm.create_model(arch, pretrained=False, num_classes=n, **kwargs)), fixed
    import torchvision

    kwargs = {}
    fixed = arch.startswith("vit_")
    if fixed:
        kwargs["image_size"] = res
    if arch in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)
    builder = torchvision.models.get_model_builder(arch)
    return (lambda n: builder(weights=None, num_classes=n, **kwargs)), fixed


@lru_cache(maxsize=None)
def _timm_takes_img_size(arch: str) -> bool:
    """Whether timm's ``arch`` is built for one input size (it takes ``img_size``: ViT, DeiT, Swin, ...)."""
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        try:
            _timm().create_model(arch, pretrained=False, num_classes=1, img_size=224)
        except TypeError:
            return False
    return True


def build_zoo_model(name: str, num_classes: int, res: int) -> nn.Module:
    """Model ``source:arch`` with ``num_classes`` outputs for ``res`` x ``res`` inputs, its taps attached."""
    source, arch = split_name(canonical(name))
    build, _ = _builder(source, arch, res)
    taps, reads, preact = _taps_of(source, arch, res)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, UserWarning))
        try:
            model = build(num_classes)
        except NotImplementedError:  # on the meta device, an initialiser that needs numbers (torchvision RegNets)
            with torch.device("cpu"):
                model = build(num_classes).to("meta")
    attach_preact_taps(attach_taps(model, taps), preact)
    setattr(model, READS_ATTR, dict(reads))
    return model


@lru_cache(maxsize=64)
def _taps_of(source: str, arch: str, res: int):
    """The derived taps of ``source:arch`` at ``res`` (one meta-device probe per architecture and size)."""
    build, fixed = _builder(source, arch, res)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, UserWarning))
        try:
            with torch.device("meta"):
                return derive_taps(build, res, fixed)
        except Exception as exc:  # noqa: BLE001 - the architecture cannot run at this size
            raise UserError(f"{source}:{arch} cannot run on {res}x{res} inputs ({type(exc).__name__}: "
                            f"{str(exc)[:120]}); pick another --res or model") from None


# ---- listing -------------------------------------------------------------------------------------------
def _count_file(source: str) -> str:
    version = importlib.import_module(source).__version__
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "fastkd", f"param-counts-{source}-{version}.json")


def describe_zoo(source: str, pattern: str = "", progress: bool = True) -> List[Tuple[str, Optional[int]]]:
    """``[(source:arch, parameters at 1000 classes or None when it does not build)]`` for the models of
    ``source`` matching ``pattern`` (a substring, or a shell pattern with ``*``). Counts are computed on the
    ``meta`` device and kept in ``~/.cache/fastkd`` per package version (timm has over a thousand models)."""
    if source not in SOURCES:
        raise UserError(f"unknown --source {source!r}; choose one of: {', '.join(SOURCES)}")
    names = zoo_names(source)
    if pattern:
        glob = pattern.lower() if "*" in pattern or "?" in pattern else f"*{pattern.lower()}*"
        names = [n for n in names if fnmatch.fnmatch(n.lower(), glob)]
    path = _count_file(source)
    try:
        with open(path) as f:
            counts: Dict[str, Optional[int]] = json.load(f)
    except (OSError, ValueError):
        counts = {}
    todo = [n for n in names if n not in counts]
    if todo:
        from tqdm import tqdm

        for arch in tqdm(todo, desc=f"counting {source} parameters", disable=not progress or len(todo) < 20,
                         unit="model", leave=False):
            counts[arch] = _count(source, arch)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write_text(path, json.dumps(counts, sort_keys=True))
        except OSError:
            pass  # a read-only home: counted again next time
    return [(f"{source}:{n}", counts[n]) for n in names]


def _count(source: str, arch: str) -> Optional[int]:
    build, _ = _builder(source, arch, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for device in ("meta", "cpu"):  # a few initialisers need real tensors
            try:
                with torch.device(device):
                    model = build(1000)
                return sum(p.numel() for p in model.parameters())
            except Exception:  # noqa: BLE001 - listed with an unknown count
                continue
    return None
