"""The classic training tricks that act on the model and the optimiser (Bag of Tricks, He et al. 2019).

Each is a small function the trainer applies when its option is set; data-side tricks (erasing,
cutout, mixup, cutmix) live in the pipelines, schedule tricks in ``schedule.py``.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastkd.errors import UserError

from .config import INITS


def initialise(model: nn.Module, scheme: str) -> None:
    """Re-initialise: ``kaiming`` (He et al. 2015: convs normal, fan_out, ReLU gain; the linear classifier,
    which feeds no ReLU, N(0, 0.01)) or ``xavier`` (Glorot & Bengio 2010, uniform, convs and linear);
    biases to zero, norm layers to (1, 0).
    ``default`` keeps each architecture's own initialisation (torchvision's)."""
    if scheme == "default":
        return
    if scheme not in INITS:
        raise UserError(f"unknown --init {scheme!r}; choose one of: {', '.join(INITS)}")
    for m in model.modules():
        if isinstance(m, nn.Conv2d) or (isinstance(m, nn.Linear) and scheme == "xavier"):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):  # kaiming: the classifier feeds no ReLU; N(0, 0.01) keeps logits small
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def residual_last_norms(model: nn.Module) -> List[nn.BatchNorm2d]:
    """The last BatchNorm of every block whose output is added to an identity path.

    Left out: the CIFAR ResNet's downsampling blocks, whose option-A shortcut zero-pads the new channels.
    With a zero gamma (and beta) those channels would be ``relu(0 + 0)``, whose gradient is 0, so they
    would never leave zero: in resnet32 48 of the 64 final channels stayed dead and training stalled at
    chance. Those blocks are no identity anyway (torchvision's projection shortcuts carry every channel)."""
    from fastkd.models.resnet_cifar import ShortcutA

    norms = []
    for m in model.modules():
        name = type(m).__name__
        if name == "Bottleneck" and hasattr(m, "bn3"):
            norms.append(m.bn3)
        elif name == "BasicBlock" and hasattr(m, "bn2"):
            if not isinstance(getattr(m, "shortcut", None), ShortcutA):
                norms.append(m.bn2)
        elif name == "InvertedResidual" and getattr(m, "use_res_connect", False):
            last = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)][-1]
            norms.append(last)
    return norms


def zero_gamma(model: nn.Module) -> int:
    """Zero-init the last BN gamma of each residual block (Goyal et al. 2017): blocks start as identity.
    Returns how many were zeroed; families without additive residual blocks (ShuffleNetV2 concatenates,
    SqueezeNet has none) have nothing to zero, which is an error so an ablation row is not silently void."""
    norms = residual_last_norms(model)
    if not norms:
        raise UserError(f"--zero-gamma: {getattr(model, 'fastkd_name', type(model).__name__)} has no additive "
                        "residual blocks; drop the option for this model")
    for bn in norms:
        nn.init.zeros_(bn.weight)
    return len(norms)


def classifier(model: nn.Module) -> nn.Module:
    """The module producing the logits: the last Linear, or SqueezeNet's final 1x1 conv."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1]


def add_dropout(model: nn.Module, p: float) -> None:
    """Dropout (Srivastava et al. 2014) on the classifier's input, as a forward pre-hook so the model's
    structure and state dict stay torchvision's (it adds to any dropout the architecture already has)."""
    head = classifier(model)

    def hook(module, args):
        return (F.dropout(args[0], p, module.training),) + tuple(args[1:])

    head.register_forward_pre_hook(hook)


def param_groups(model: nn.Module, extra: List[nn.Parameter], weight_decay: float, no_bias_decay: bool,
                 head: Sequence[str] = (), body_lr_scale: float = 1.0) -> List[Dict]:
    """SGD parameter groups; with ``no_bias_decay`` biases and norm parameters (all 1-d tensors) get no
    weight decay (He et al. 2019, "Bag of Tricks", section 3.1). With ``body_lr_scale`` != 1 (fine-tuning) the
    model's parameters but those named in ``head`` (a new classifier) form groups of their own whose
    ``lr_scale`` is ``body_lr_scale``; the schedule multiplies each group's learning rate by its ``lr_scale``."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if body_lr_scale == 1.0:
        parts = [([p for _, p in named] + list(extra), 1.0)]
    else:  # the new head and the methods' adapters train at --lr, the pretrained body at lr x body_lr_scale
        parts = [([p for n, p in named if n in head] + list(extra), 1.0),
                 ([p for n, p in named if n not in head], body_lr_scale)]
    groups = []
    for params, scale in parts:
        if not no_bias_decay:
            groups.append({"params": params, "weight_decay": weight_decay, "lr_scale": scale})
            continue
        groups += [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, "lr_scale": scale},
                   {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": scale}]
    return [g for g in groups if g["params"]]


def load_pretrained(model: nn.Module, path: str) -> List[str]:
    """Load a local weights file (any format of :mod:`.weights_files`) into ``model``; a classifier of another
    class count and a swapped low-resolution stem are left as initialised, any other key that does not fit is
    an error (:func:`fastkd.train.weights.load_pretrained`). Returns the names left at their initialisation."""
    from .weights import load_pretrained as load

    head = classifier(model)
    return load(model, path, head.out_features if isinstance(head, nn.Linear) else head.out_channels).left


def amp_dtype(mode: str):
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]
