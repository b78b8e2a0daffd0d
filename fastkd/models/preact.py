"""Pre-activation taps: the input of the final ReLU of each stage, read by hooks.

Heo et al., "A Comprehensive Overhaul of Feature Distillation" (ICCV 2019) distil the *pre-ReLU*
response at the end of every stage. That tensor is rarely a module output: in a ResNet block it is
``out + identity`` just before ``self.relu`` - a module the block calls two or three times, in place.
A family module therefore declares, next to its ``fastkd_taps``, a dict
``model.fastkd_preact_taps = {"pre1": PreActTap(...), ...}`` (:func:`attach_preact_taps`) saying where
each stage's pre-activation is read:

* ``read="input"``: the input of the LAST call of each ``sources`` module in the forward pass (every
  call overwrites the previous one). The input is cloned when the module works in place
  (``module.inplace``, e.g. ``nn.ReLU(inplace=True)``), since the call overwrites it; the clone stays
  on the autograd graph, so gradients flow to the network as through the original tensor.
* ``read="output"``: the output of the (last call of the) ``sources`` modules, for positions that are
  already pre-activation (MobileNetV2's linear bottlenecks).
* several ``sources`` are concatenated along channels (SqueezeNet's two expand branches).
* ``bn``: the BatchNorm whose affine parameters model the tap's distribution per channel as
  N(beta, gamma^2) (the paper's margin, section 3.2); ``None`` where no BatchNorm precedes.
* ``activation``: what the network applies to the tap next (``"relu"``, ``"relu6"``, ``"identity"``, and for
  zoo models ``"gelu"``, ``"silu"``, ``"hardswish"``, ``"leaky_relu"``), documentation for users and tests.

:class:`~fastkd.models.taps.FeatureTaps` captures them by name like any tap: ``preK`` is the N x C x H x W
pre-activation map and ``preK_stats`` the 2 x C tensor ``[mean; std]`` of the Gaussian modelling it
(``[beta; |gamma|]`` of ``bn``, detached; without ``bn``: the batch's per-channel mean and standard
deviation of the map). Both are listed by :func:`fastkd.models.model_taps` (the value is the submodule
holding the sources), so ``Method.needs`` and the trainer treat them as ordinary signals. They are not
part of ``model.fastkd_taps`` (the ``fastkd list models`` column), and hooks exist only for the taps a
:class:`FeatureTaps` is asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ..tap_names import PRE_TAPS, STATS_SUFFIX, split_stats
from .layouts import LAYOUTS, to_map

#: Attribute holding ``{tap name: PreActTap}`` on every model built by the zoo.
PREACT_ATTR = "fastkd_preact_taps"
_READS = ("input", "output")
_ACTIVATIONS = ("relu", "relu6", "identity", "gelu", "silu", "hardswish", "leaky_relu")


@dataclass(frozen=True)
class PreActTap:
    """Where one stage's pre-activation is read (see the module docstring)."""

    sources: Tuple[str, ...]
    read: str = "input"
    bn: Optional[str] = None
    activation: str = "relu"
    #: what the source yields (zoo models: :mod:`.zoo_taps`): ``nchw``, ``nhwc`` or ``tokens`` (N x L x C with
    #: ``prefix_tokens`` leading class/register tokens); the tap is always read as N x C x H x W.
    layout: str = "nchw"
    prefix_tokens: int = 0

    @property
    def module(self) -> str:
        """The innermost submodule holding every source (the source itself when there is one)."""
        parts = [s.split(".") for s in self.sources]
        common = []
        for level in zip(*parts):
            if len(set(level)) != 1:
                break
            common.append(level[0])
        return ".".join(common)


def attach_preact_taps(model: nn.Module, taps: Dict[str, PreActTap]) -> nn.Module:
    """Set ``model.fastkd_preact_taps`` after checking every source and BatchNorm is a real submodule."""
    for name, tap in taps.items():
        if (name not in PRE_TAPS or not tap.sources or tap.read not in _READS or tap.activation not in _ACTIVATIONS
                or tap.layout not in LAYOUTS):
            raise ValueError(f"pre-activation tap {name!r}: bad spec {tap}")
        for target in tap.sources:
            model.get_submodule(target)  # AttributeError on a typo: a bug in the zoo
        if tap.bn is not None and not isinstance(model.get_submodule(tap.bn), nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"pre-activation tap {name!r}: {tap.bn} is not a BatchNorm")
    setattr(model, PREACT_ATTR, dict(taps))
    return model


def preact_taps(model: nn.Module) -> Dict[str, PreActTap]:
    """A copy of ``model.fastkd_preact_taps`` (empty if the model has none); ``model`` is unwrapped."""
    return dict(getattr(model, PREACT_ATTR, None) or {})


def preact_tap_names(model: nn.Module) -> Dict[str, str]:
    """``{preK: module, preK_stats: module}`` for every pre-activation tap of (unwrapped) ``model``."""
    out = {}
    for name, tap in preact_taps(model).items():
        out[name] = out[name + STATS_SUFFIX] = tap.module
    return out


def gaussian_stats(x: torch.Tensor, bn: Optional[nn.Module] = None) -> torch.Tensor:
    """2 x C ``[mean; std]`` per channel: ``[beta; |gamma|]`` of ``bn`` if given, else the moments of
    the N x C x H x W map ``x`` over N, H, W (population std). Float32, detached."""
    if bn is not None:
        c = bn.num_features
        gamma = bn.weight if bn.weight is not None else torch.ones(c, device=x.device)
        beta = bn.bias if bn.bias is not None else torch.zeros(c, device=x.device)
        return torch.stack([beta.detach().float(), gamma.detach().float().abs()])
    x = x.detach().float()
    dims = [d for d in range(x.dim()) if d != 1]
    return torch.stack([x.mean(dim=dims), x.std(dim=dims, unbiased=False)])


def resnet_preact_taps(model: nn.Module, stages: int) -> Dict[str, PreActTap]:
    """``pre1..pre{stages}`` of a torchvision-style ResNet (``layerK``: blocks with ``relu``, ``bn2`` and,
    in Bottlenecks, ``bn3``): the input of the last ``relu`` call of the stage's last block, i.e. the
    residual sum; BatchNorm: that block's last one (``bn3`` / ``bn2``), as Heo et al.'s reference does."""
    taps = {}
    for k in range(1, stages + 1):
        last = f"layer{k}.{len(model.get_submodule(f'layer{k}')) - 1}"
        bn = "bn3" if hasattr(model.get_submodule(last), "bn3") else "bn2"
        taps[f"pre{k}"] = PreActTap((f"{last}.relu",), "input", bn=f"{last}.{bn}")
    return taps


def register_preact_hooks(
    model: nn.Module, names: Iterable[str], outputs: Callable[[], Dict[str, torch.Tensor]]
) -> List[torch.utils.hooks.RemovableHandle]:
    """Hooks on (unwrapped) ``model`` that, at the end of each forward, put the requested ``preK`` /
    ``preK_stats`` tensors into the dict ``outputs()`` returns. Returns the handles to remove."""
    specs = preact_taps(model)
    wanted: Dict[str, List[bool]] = {}  # tap -> [want map, want stats]
    for name in names:
        base, stats = split_stats(name)
        if base not in specs:
            raise KeyError(name)
        wanted.setdefault(base, [False, False])[int(stats)] = True
    last: Dict[str, torch.Tensor] = {}  # source module -> its last input / output in this forward

    def start(module, args):
        last.clear()

    handles = [model.register_forward_pre_hook(start)]
    sources = {(src, specs[base].read) for base in wanted for src in specs[base].sources}
    for src, read in sorted(sources):
        module = model.get_submodule(src)
        if read == "input":
            def grab_input(mod, args, src=src):
                x = args[0]
                last[src] = x.clone() if getattr(mod, "inplace", False) else x

            handles.append(module.register_forward_pre_hook(grab_input))
        else:
            def grab_output(mod, args, out, src=src):
                last[src] = out

            handles.append(module.register_forward_hook(grab_output))
    bns = {base: model.get_submodule(specs[base].bn) if specs[base].bn else None for base in wanted}

    def finish(module, args, out):
        sink = outputs()
        for base, (want_map, want_stats) in wanted.items():
            parts = [last.get(src) for src in specs[base].sources]
            if any(p is None for p in parts):
                raise RuntimeError(f"pre-activation tap {base}: {specs[base].sources} did not run in the forward")
            x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            if specs[base].layout != "nchw":
                x = to_map(x, specs[base].layout, specs[base].prefix_tokens)
            if want_map:
                sink[base] = x
            if want_stats:
                sink[base + STATS_SUFFIX] = gaussian_stats(x, bns[base])
        last.clear()

    handles.append(model.register_forward_hook(finish))
    return handles
