"""Named feature taps: capture intermediate outputs of a zoo model by tap name.

Every model from :func:`fastkd.models.create_model` carries ``model.fastkd_taps``, a dict
``{tap name: submodule name}`` (``model.get_submodule(name)`` works on the values):
``stage1``..``stage4`` (outputs of successive resolution stages; fewer for small families)
and ``embedding`` (the module whose output, pooled/flattened, is the penultimate feature
vector fed to the classifier). ``logits`` is the model output itself, not a tap.
Pre-activation taps ``pre1``.. / ``pre1_stats``.. (the input of each stage's final ReLU and its
Gaussian statistics, :mod:`.preact`) are captured the same way by name. The names are defined in
:mod:`fastkd.tap_names`; a malformed one is refused when the taps are attached.

>>> with FeatureTaps(model, ["stage3", "embedding"]) as taps:
...     logits = model(x)
...     feats = taps.outputs          # {"stage3": N x C x H x W, "embedding": N x D}
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import nn

from ..errors import UserError
from ..tap_names import EMBEDDING, LOGITS, check_names
from .common import NAME_ATTR, TAPS_ATTR
from .layouts import READS_ATTR, TapRead, to_map
from .preact import preact_tap_names, register_preact_hooks


def unwrap(model: nn.Module) -> nn.Module:
    """The zoo model inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while not hasattr(model, TAPS_ATTR):
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


def model_name(model: nn.Module) -> str:
    model = unwrap(model)
    return getattr(model, NAME_ATTR, type(model).__name__)


def model_taps(model: nn.Module) -> Dict[str, str]:
    """A copy of ``model.fastkd_taps`` (``{tap name: submodule name}``), followed by the model's
    pre-activation taps ``preK`` / ``preK_stats`` (value: the submodule they are read in)."""
    inner = unwrap(model)
    taps = getattr(inner, TAPS_ATTR, None)
    if taps is None:
        raise UserError(
            f"model {model_name(model)} has no feature taps; build it with"
            " fastkd.models.create_model (see `fastkd list models`)"
        )
    out = dict(taps)
    for name, target in preact_tap_names(inner).items():
        out.setdefault(name, target)
    return out


def pool_embedding(t: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x C by global average pooling (exact for 1x1 maps); else flatten."""
    if t.dim() > 2:
        t = t.flatten(2).mean(dim=2)
    return t.flatten(1)


class FeatureTaps:
    """Forward hooks on named taps; each forward of the model refills :attr:`outputs`.

    ``names`` defaults to every tap of the model. With ``pool_embedding`` (the default) the
    ``embedding`` tap is returned as an N x D vector: it is global-average-pooled when the
    module yields a map (ShuffleNetV2 ``conv5``, MobileNetV2 / SqueezeNet ``features``) and
    flattened when it yields N x C x 1 x 1 (ResNet ``avgpool``). Other taps are the module
    outputs as they are, still attached to the autograd graph. Pre-activation taps (``preK``,
    ``preK_stats``; :mod:`.preact`) have hooks only when named: ``names=None`` captures them too.
    Call :meth:`close` (or use it as a context manager) to remove the hooks.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Optional[Union[str, Iterable[str]]] = None,
        *,
        pool_embedding: bool = True,
    ):
        inner = unwrap(model)
        available = model_taps(inner)
        if names is None:
            names = list(available)
        elif isinstance(names, str):
            names = [names]
        self.names: List[str] = list(dict.fromkeys(names))
        check_names(self.names, f"feature taps of {model_name(inner)}")
        for name in self.names:
            if name not in available:
                hint = f" ({LOGITS!r} is the model output itself, not a tap)" if name == LOGITS else ""
                raise UserError(
                    f"unknown feature tap {name!r} for model {model_name(inner)}{hint};"
                    f" available taps: {', '.join(available)}"
                )
        self.pool_embedding = pool_embedding
        self.outputs: Dict[str, torch.Tensor] = {}
        preact = preact_tap_names(inner)
        reads: Dict[str, TapRead] = getattr(inner, READS_ATTR, None) or {}
        by_module: Dict[Tuple[str, str], List[str]] = {}
        for name in self.names:
            if name not in preact:
                by_module.setdefault((available[name], reads.get(name, TapRead()).read), []).append(name)
        self._handles = [inner.register_forward_pre_hook(self._reset)]
        for (target, read), tap_names in by_module.items():
            module = inner.get_submodule(target)
            hook = self._hook([(name, reads.get(name, TapRead())) for name in tap_names])
            if read == "input":
                self._handles.append(module.register_forward_pre_hook(lambda mod, args, hook=hook: hook(mod, args, args[0])))
            else:
                self._handles.append(module.register_forward_hook(hook))
        wanted_preact = [name for name in self.names if name in preact]
        if wanted_preact:  # read by their own hooks, filled in at the end of the forward
            self._handles += register_preact_hooks(inner, wanted_preact, lambda: self.outputs)

    def _reset(self, module, args) -> None:
        self.outputs = {}

    def _hook(self, taps: List[Tuple[str, TapRead]]):
        def hook(module, args, output):
            for name, how in taps:
                value = to_map(output, how.layout, how.prefix_tokens) if how.layout != "nchw" else output
                self.outputs[name] = pool_embedding(value) if name == EMBEDDING and self.pool_embedding else value

        return hook

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.outputs[name]

    def __contains__(self, name: str) -> bool:
        return name in self.outputs

    def clear(self) -> None:
        self.outputs = {}

    def close(self) -> None:
        """Remove the hooks; :attr:`outputs` from the last forward stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
