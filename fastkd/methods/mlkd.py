"""``mlkd``: Jin, Wang & Lin, CVPR 2023, "Multi-Level Logit Distillation".

Reference code: github.com/Jin-Ying/Multi-Level-Logit-Distillation: the loss in ``mdistiller/distillers/KD_ours.py``
(``KD_ours``), the weak and strong views in ``mdistiller/dataset/cifar100.py`` (``get_cifar100_train_transform_strong``,
``RandAugment``), the defaults in ``mdistiller/engine/cfg.py`` (``CFG.KD``), which ``configs/cifar100/ours/*.yaml``
keep, and ``configs/imagenet/r34_r18/kd_ours.yaml``."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from fastkd.ranks import rank_world

from . import register_method
from .adapters import SeededSteps, check_option
from .base import Method
from .crd import stream_seed
from .kd import soft_kl
from .precision import full_precision, widen

#: the temperatures the reference adds to its configured one, in its order
EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)
#: the strong view's operations (two drawn per image, with replacement)
STRONG_OPS = ("identity", "rotate", "shear_x", "shear_y", "translate_x", "translate_y", "contrast", "sharpness")
_STRONG_STREAM = 0x6D6C6B64  # "mlkd": the strong views' generator stream


def class_loss(z_s: torch.Tensor, z_t: torch.Tensor, t: float) -> torch.Tensor:
    r""":math:`\frac1C \lVert P_t^\top P_t - P_s^\top P_s \rVert_F^2` (``C x C`` class correlations; ``cc_loss``)."""
    p_s, p_t = torch.softmax(z_s / t, dim=1), torch.softmax(z_t / t, dim=1)
    return (p_t.t() @ p_t - p_s.t() @ p_s).square().sum() / z_s.shape[1]


def batch_loss(z_s: torch.Tensor, z_t: torch.Tensor, t: float) -> torch.Tensor:
    r""":math:`\frac1B \lVert P_t P_t^\top - P_s P_s^\top \rVert_F^2` (``B x B`` sample correlations; ``bc_loss``)."""
    p_s, p_t = torch.softmax(z_s / t, dim=1), torch.softmax(z_t / t, dim=1)
    return (p_t @ p_t.t() - p_s @ p_s.t()).square().sum() / z_s.shape[0]


def below_median(x: torch.Tensor) -> torch.Tensor:
    """The share of ``x`` at or below its median (``np.percentile(x, 50)``, linear interpolation): the mean of the
    reference's confidence mask ``x.le(threshold)``."""
    return (x <= torch.quantile(x, 0.5)).to(x.dtype).mean()


def mlkd_losses(s_weak: torch.Tensor, t_weak: torch.Tensor, s_strong: torch.Tensor, t_strong: torch.Tensor,
                temperature: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""``(instance, class, batch)``, unweighted, as ``KD_ours.forward_train`` computes them, with
    :math:`\mathcal T = (T, 3, 5, 2, 6)`, :math:`m` = :func:`below_median` of the teacher's weak-view confidences
    :math:`\max_c \mathrm{softmax}(t_w)` and :math:`m_c` of its class confidences :math:`\sum_n \mathrm{softmax}(t_w)`,
    :math:`\mathrm{KD}_\tau` = :func:`~fastkd.methods.kd.soft_kl` at temperature :math:`\tau` (reference ``kd_loss``):

    .. math::
        L_{ins} = m \sum_{\tau \in \mathcal T} \mathrm{KD}_\tau(s_w, t_w)
                  + \sum_{\tau \in (T, 3, 5)} \mathrm{KD}_\tau(s_s, t_s)
                  + \sum_{\tau \in (2, 6)} \mathrm{KD}_\tau(s_w, t_w),\quad
        L_{cls} = m_c \sum_{\tau} L^{class}_\tau(s_w, t_w),\quad L_{bat} = m \sum_{\tau} L^{batch}_\tau(s_w, t_w)

    Three properties of the reference are kept as they train: its ``kd_loss``/``cc_loss``/``bc_loss`` are reduced
    to a scalar before the product with the confidence mask, so each mask enters as its mean (:math:`m, m_c` ~ 1/2,
    the samples / classes at or below the median confidence), not as a per-sample selection; the strong-view
    ``loss_kd_strong`` sum reads the *weak* views at temperatures 2 and 6; and its class and batch terms of the
    strong views are computed but left out of the returned losses.
    """
    p_t = torch.softmax(t_weak, dim=1)
    m, m_c = below_median(p_t.max(dim=1).values), below_median(p_t.sum(dim=0))
    temps = (temperature, *EXTRA_TEMPERATURES)
    instance = m * sum(soft_kl(s_weak, t_weak, t) for t in temps) \
        + sum(soft_kl(s_strong, t_strong, t) for t in temps[:3]) \
        + sum(soft_kl(s_weak, t_weak, t) for t in temps[3:])
    correlations = m_c * sum(class_loss(s_weak, t_weak, t) for t in temps)
    batch = m * sum(batch_loss(s_weak, t_weak, t) for t in temps)
    return instance, correlations, batch


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``x`` resampled at ``theta`` (``N x 2 x 3``, normalised coordinates), nearest pixel, zeros outside."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _apply_op(x: torch.Tensor, op: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Image ``n`` through ``STRONG_OPS[op[n]]`` at magnitude ``u[n]`` in [0, 1)."""
    h, w = x.shape[-2:]
    s = u * 0.6 - 0.3  # shear / translation in [-0.3, 0.3)
    angle = torch.where(op == 1, (u * 60.0 - 30.0) * (math.pi / 180.0), torch.zeros_like(u))
    zero = torch.zeros_like(u)
    theta = torch.stack([
        torch.stack([angle.cos(), -angle.sin() * (h / w) + torch.where(op == 2, s * (h / w), zero),
                     torch.where(op == 4, 2.0 * s, zero)], dim=1),
        torch.stack([angle.sin() * (w / h) + torch.where(op == 3, s * (w / h), zero), angle.cos(),
                     torch.where(op == 5, 2.0 * s, zero)], dim=1)], dim=1)
    x = torch.where(_per_image((op >= 1) & (op <= 5)), _affine(x, theta), x)
    v = _per_image(0.05 + 0.9 * u).to(x.dtype)  # contrast / sharpness factor in [0.05, 0.95): the reference's range
    contrast = v * x + (1 - v) * x.mean(dim=(2, 3), keepdim=True)
    x = torch.where(_per_image(op == 6), contrast, x)
    kernel = x.new_tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0  # PIL's SMOOTH
    smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(x.shape[1], 1, 3, 3), groups=x.shape[1])
    return torch.where(_per_image(op == 7), v * x + (1 - v) * smooth, x)


def strong_view(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """MLKD's strong view of a normalised ``N x C x H x W`` batch, made on its device from ``generator`` (per image):
    a horizontal flip (p = 1/2) and a shift of up to ``W/8`` x ``H/8`` pixels (4 at 32 px), two of
    :data:`STRONG_OPS` drawn with replacement at uniform magnitudes (rotation +-30 degrees, shear +-0.3,
    translation +-0.3 of the size, contrast and sharpness factors in [0.05, 0.95)), then a cutout square of side
    up to W/2 at a uniform centre. Exposed pixels and the cutout are 0: the normalised data set's mean colour."""
    n, _, h, w = x.shape
    u = torch.rand(n, 10, generator=generator, device=x.device)
    shift = torch.stack([torch.floor(u[:, 1] * (2 * (w // 8) + 1)) - w // 8,
                         torch.floor(u[:, 2] * (2 * (h // 8) + 1)) - h // 8], dim=1)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = torch.where(u[:, 0] < 0.5, -1.0, 1.0)
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2], theta[:, 1, 2] = 2.0 * shift[:, 0] / w, 2.0 * shift[:, 1] / h
    x = _affine(x, theta)
    for op_u, magnitude in ((u[:, 3], u[:, 4]), (u[:, 5], u[:, 6])):
        x = _apply_op(x, (op_u * len(STRONG_OPS)).long().clamp_max(len(STRONG_OPS) - 1), magnitude)
    half = _per_image(u[:, 7] * 0.25 * w)  # half the cutout's side
    cols = torch.arange(w, device=x.device).view(1, 1, 1, w) + 0.5
    rows = torch.arange(h, device=x.device).view(1, 1, h, 1) + 0.5
    inside = ((cols - _per_image(u[:, 8] * w)).abs() < half) & ((rows - _per_image(u[:, 9] * h)).abs() < half)
    return x.masked_fill(inside, 0.0)


@register_method("mlkd", "kd_ours")
class MLKD(SeededSteps, Method):
    r"""Total loss = ``ce_weight`` CE(weak) + ``strong_ce_weight`` CE(strong) + ``weight`` (L_ins + L_cls + L_bat)
    (:func:`mlkd_losses`); terms ``mlkd.ce_strong``, ``mlkd.instance``, ``mlkd.class``, ``mlkd.batch``.

    :meth:`expand` appends a strong view of every image (:func:`strong_view`) to the loader's (weak) batch; both
    networks see both. Defaults: the reference's CIFAR-100 setting (``CFG.KD``, kept by every
    ``configs/cifar100/ours/*.yaml``): T = 4, KD weight 0.9, CE weight 0.1 on each view. Its ImageNet setting
    (``kd_ours.yaml``): ``--opt mlkd.temperature=1 --opt mlkd.weight=0.5 --opt mlkd.strong_ce_weight=0.5
    --ce-weight 0.5``. The fixed temperatures 3, 5, 2, 6 are the reference's.

    The strong view: the reference's is a *second* pipeline from the raw image, RandomCrop(32, padding 4) +
    horizontal flip + ``RandAugment(2, 10)`` (two of AutoContrast, Brightness, Color, Contrast, Equalize, Identity,
    Posterize, Rotate, Sharpness, ShearX/Y, Solarize, TranslateX/Y on the PIL image, each at a uniform magnitude
    of its range) + Cutout (a square of side up to half the width, grey). fastkd's is made on the normalised
    tensor: a flip and shift of the loader's view, two of the eight operations in :data:`STRONG_OPS` (those that
    need no pixel range: AutoContrast, Brightness, Color, Equalize, Posterize and Solarize need the 0..255 values
    the normalised batch no longer carries), and the same cutout. It is a pure function of the run's seed, the
    rank and the step (a counter in the state dict, so a resumed run draws the same views; CPU and CUDA
    generators differ).
    """

    paper = "Jin et al. 2023"
    peers = frozenset()
    cacheable = False  # the teacher must see the strong views
    expands = True

    needs = frozenset({"logits"})
    ce_weight = 0.1

    def __init__(self, temperature: float = 4.0, weight: float = 0.9, strong_ce_weight: float = 0.1):
        super().__init__()
        self.temperature, self.weight = float(temperature), float(weight)
        self.strong_ce_weight = float(strong_ce_weight)
        check_option(self.temperature > 0, "mlkd", "temperature", temperature, "must be > 0")
        self._seed: Optional[int] = None
        self._step = 0

    def setup(self, student_signals, teacher_signals):
        self._seed = torch.initial_seed()

    def expand(self, images: torch.Tensor) -> torch.Tensor:
        seed = self._seed if self._seed is not None else torch.initial_seed()  # before setup: the run's seed too
        g = torch.Generator(device=images.device)
        g.manual_seed(stream_seed(seed, _STRONG_STREAM, rank_world()[0], self._step))
        self._step += 1
        return torch.cat([images, strong_view(images, g)])

    def forward(self, student, teacher, labels, index=None):
        b = labels.shape[0]
        z_s, z_t = widen(student["logits"]), widen(teacher["logits"].detach())
        if z_s.shape[0] != 2 * b or z_t.shape[0] != 2 * b:
            raise RuntimeError(f"mlkd: expected the signals of a batch of {b} and its strong views ({2 * b} rows, "
                               f"the trainer's expand()), got {z_s.shape[0]}")
        with full_precision(z_s.device):
            instance, correlations, batch = mlkd_losses(z_s[:b], z_t[:b], z_s[b:], z_t[b:], self.temperature)
            ce_strong = F.cross_entropy(z_s[b:], labels)
        return {"mlkd.ce_strong": self.strong_ce_weight * ce_strong, "mlkd.instance": self.weight * instance,
                "mlkd.class": self.weight * correlations, "mlkd.batch": self.weight * batch}

    def options(self):
        return {"temperature": self.temperature, "weight": self.weight, "strong_ce_weight": self.strong_ce_weight}
