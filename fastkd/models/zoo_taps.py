"""Feature taps of a zoo model (timm, torchvision), derived from one forward pass on the ``meta`` device.

A copy of the architecture is built on ``meta`` (no memory, no arithmetic) and run once with hooks on every
submodule; from the shapes and the order in which modules finish:

- ``stage1..stage4``: the module that ends each resolution stage (output stride 4, 8, 16, 32). timm models
  name them in ``feature_info``; for torchvision models the stage of stride s is the shallowest module whose
  output is a map of side ``probe/s``, the last to finish when several are (``layer1`` of a ResNet,
  ``features.3`` of a MobileNetV3, ``features.1`` of a ConvNeXt). Vision transformers have one resolution: the
  blocks (the container with the most token-sequence outputs) give four stages at depths D/4, D/2, 3D/4, D.
- layouts: maps come out as N x C x H x W; channels-last stage outputs (Swin) are permuted; token sequences
  N x L x C (ViT, DeiT) lose their class / distillation / register tokens and are reshaped to the patch grid.
- ``embedding``: the classifier's input (timm's ``get_classifier()``; for torchvision the shallowest module
  whose output has one value per class), so it is the vector the logits are computed from.
- ``preK`` (overhaul): when the last computing submodule of stage K is an activation (a ResNet block's final
  ReLU), its input, with the BatchNorm before it; otherwise (linear bottlenecks, ConvNeXt and transformer
  blocks end in a linear residual sum) the stage output itself, with the last BatchNorm if the stage ends
  in one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..tap_names import EMBEDDING, MAX_STAGE, pre, stage
from .layouts import TapRead
from .preact import PreActTap

#: Side of the probe input of models that take any input size (large enough that no pooled 1 x 1 output is
#: mistaken for the stride-32 stage).
PROBE_RES = 224
#: Class count of the probe copy: a prime no channel count equals, so the classifier is unambiguous.
PROBE_CLASSES = 997
_PASSTHROUGH = ("Dropout", "Dropout2d", "Identity", "StochasticDepth", "DropPath", "Permute", "Flatten",
                "LayerScale")  # leaves that compute nothing a pre-activation tap is about
_ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.GELU: "gelu", nn.SiLU: "silu", nn.Hardswish: "hardswish",
                nn.LeakyReLU: "leaky_relu"}


@dataclass
class _Record:
    order: int
    out: Tuple[int, ...]
    leaf: bool
    module: nn.Module


def _probe(model: nn.Module, res: int) -> Dict[str, _Record]:
    """Run ``model`` (on ``meta``) once at ``res`` x ``res``; every named submodule's last output shape and the
    order in which it last finished."""
    records: Dict[str, _Record] = {}
    counter = [0]
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod, args, out, name=name):
            counter[0] += 1
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
            records[name] = _Record(counter[0], shape, not any(True for _ in mod.children()), mod)

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, 3, res, res, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return records


def _depth(name: str) -> int:
    return name.count(".")


def _layout(shape: Tuple[int, ...], side: Optional[int]) -> Optional[str]:
    """``nchw`` / ``nhwc`` when ``shape`` is a map of side ``side`` (any side when None), else None."""
    if len(shape) != 4:
        return None
    if shape[2] == shape[3] and (side is None or shape[2] == side):
        return "nchw"
    if shape[1] == shape[2] and (side is None or shape[1] == side):
        return "nhwc"
    return None


def _prefix_tokens(shape: Tuple[int, ...]) -> Optional[int]:
    """Leading non-patch tokens of an N x L x C sequence whose patches form a square grid (at most 16)."""
    if len(shape) != 3:
        return None
    side = math.isqrt(shape[1])
    prefix = shape[1] - side * side
    return prefix if side >= 1 and prefix <= 16 else None


def _classifier_name(model: nn.Module, records: Dict[str, _Record]) -> str:
    get = getattr(model, "get_classifier", None)
    if callable(get):  # timm
        head = get()
        for name, module in model.named_modules():
            if module is head and name in records:
                return name
    hits = [n for n, r in records.items() if r.out and math.prod(r.out[1:]) == PROBE_CLASSES]
    if not hits:
        raise ValueError("no module outputs one value per class")
    return min(hits, key=lambda n: (_depth(n), -records[n].order))


def _token_stages(records: Dict[str, _Record], exclude: str) -> List[Tuple[str, TapRead]]:
    """Four evenly spaced blocks of the container holding the most token-sequence outputs."""
    by_parent: Dict[str, List[str]] = {}
    for name, r in records.items():
        if not name.startswith(exclude) and _prefix_tokens(r.out) is not None and "." in name:
            by_parent.setdefault(name.rsplit(".", 1)[0], []).append(name)
    if not by_parent:
        return []
    blocks = max(by_parent.values(), key=len)
    blocks.sort(key=lambda n: records[n].order)
    picks = [blocks[max(round(len(blocks) * k / MAX_STAGE), 1) - 1] for k in range(1, MAX_STAGE + 1)]
    return [(n, TapRead("output", "tokens", _prefix_tokens(records[n].out))) for n in dict.fromkeys(picks)]


def _map_stages(records: Dict[str, _Record], res: int, exclude: str) -> List[Tuple[str, TapRead]]:
    """The stages of output stride 4, 8, 16, 32; for networks whose maps are not ``res / stride`` (AlexNet,
    Inception and SqueezeNet shrink by unpadded convolutions), the four smallest map sides below ``res / 3``."""
    maps = {n: (_layout(r.out, None), r.out) for n, r in records.items() if not n.startswith(exclude)}
    maps = {n: (lay, shape[2] if lay == "nchw" else shape[1]) for n, (lay, shape) in maps.items() if lay}
    sides = [res // s for s in (4, 8, 16, 32) if res % s == 0]
    if sum(any(side == want for _, side in maps.values()) for want in sides) < 3:
        sides = sorted({side for _, side in maps.values() if 1 < side <= res // 3})[:MAX_STAGE][::-1]
    out = []
    for want in sides:
        hits = [n for n, (lay, side) in maps.items() if side == want]
        if hits:
            name = min(hits, key=lambda n: (_depth(n), -records[n].order))
            out.append((name, TapRead("output", maps[name][0])))
    return out


def _timm_stages(model: nn.Module, records: Dict[str, _Record], res: int) -> List[Tuple[str, TapRead]]:
    info = getattr(model, "feature_info", None)
    info = list(getattr(info, "info", info) or [])
    entries = [(i["module"], i["reduction"]) for i in info if i.get("module") in records]
    if not entries:
        return []
    reductions = {r for _, r in entries}
    if len(reductions) == 1:  # one resolution: a transformer (or an isotropic CNN)
        names = [n for n, _ in entries]
        picks = [names[max(round(len(names) * k / MAX_STAGE), 1) - 1] for k in range(1, MAX_STAGE + 1)]
        chosen = list(dict.fromkeys(picks))
    else:
        last: Dict[int, str] = {}
        for name, reduction in entries:
            if reduction >= 4:
                last[reduction] = name
        chosen = [last[r] for r in sorted(last)][:MAX_STAGE]
    out = []
    for name in chosen:
        shape = records[name].out
        lay = _layout(shape, None)
        if lay is None and _prefix_tokens(shape) is None:
            return []
        prefix = getattr(model, "num_prefix_tokens", None)
        if lay is None:
            out.append((name, TapRead("output", "tokens", int(prefix if prefix is not None else _prefix_tokens(shape)))))
        else:
            if lay == "nchw" and getattr(model, "output_fmt", "NCHW") == "NHWC":
                lay = "nhwc"
            out.append((name, TapRead("output", lay)))
    return out


def _preact(records: Dict[str, _Record], stage_name: str, read: TapRead) -> PreActTap:
    inside = sorted(((n, r) for n, r in records.items() if n.startswith(stage_name + ".")), key=lambda x: x[1].order)
    leaves = [(n, r) for n, r in inside if r.leaf and type(r.module).__name__ not in _PASSTHROUGH]
    norms = [n for n, r in inside if isinstance(r.module, nn.modules.batchnorm._BatchNorm)]
    if leaves and type(leaves[-1][1].module) in _ACTIVATIONS and read.layout == "nchw":
        act_name, act = leaves[-1]
        parent = act_name.rsplit(".", 1)[0]
        before = [n for n in norms if records[n].order < act.order or n == parent]
        bn = parent if parent in norms else (before[-1] if before else None)
        return PreActTap((act_name,), "input", bn=bn, activation=_ACTIVATIONS[type(act.module)])
    last_leaf = leaves[-1][1].order if leaves else 0
    bn = norms[-1] if norms and (records[norms[-1]].order >= last_leaf or
                                 isinstance(leaves[-1][1].module, nn.modules.batchnorm._BatchNorm)) else None
    return PreActTap((stage_name,), "output", bn=bn, activation="identity", layout=read.layout,
                     prefix_tokens=read.prefix_tokens)


def derive_taps(build_on_meta: Callable[[int], nn.Module], res: int, fixed_size: bool):
    """``(taps, reads, preact)`` of an architecture: ``build_on_meta(num_classes)`` builds it on the ``meta``
    device; ``res``: its input side (the probe's when ``fixed_size``, else :data:`PROBE_RES`)."""
    probe_res = res if fixed_size else PROBE_RES
    try:
        model = build_on_meta(PROBE_CLASSES)
    except NotImplementedError:  # an initialiser that needs real numbers (torchvision's RegNets): build, then drop them
        with torch.device("cpu"):
            model = build_on_meta(PROBE_CLASSES).to("meta")
    records = _probe(model, probe_res)
    head = _classifier_name(model, records)
    stages = _timm_stages(model, records, probe_res) if hasattr(model, "feature_info") else []
    if not stages:
        stages = max(_map_stages(records, probe_res, head), _token_stages(records, head), key=len)
    taps: Dict[str, str] = {}
    reads: Dict[str, TapRead] = {}
    preact: Dict[str, PreActTap] = {}
    for k, (name, read) in enumerate(stages[:MAX_STAGE], start=1):
        taps[stage(k)] = name
        if read != TapRead():
            reads[stage(k)] = read
        preact[pre(k)] = _preact(records, name, read)
    taps[EMBEDDING] = head
    reads[EMBEDDING] = TapRead("input")
    return taps, reads, preact
