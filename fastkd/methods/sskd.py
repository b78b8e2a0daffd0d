"""``sskd``: Xu, Liu, Li & Loy, ECCV 2020, "Knowledge Distillation Meets Self-Supervision" (arXiv:2006.07114).

Reference code: the authors' github.com/xuguodong03/SSKD (``student.py``: the teacher's self-supervision stage and the
student's loss, with their defaults; ``wrapper.py``: the projection head; ``cifar.py``: the four rotations), and
torchdistill's ``AuxSSKDLoss`` / ``SSKDLoss`` (``torchdistill/losses/mid_level.py``) with ``SSWrapper4SSKD``
(``torchdistill/models/wrapper.py``) and ``configs/official/ilsvrc2012/yoshitomo-matsubara/rrpr2020/
sskd-resnet18_from_resnet34.yaml`` (same as ``configs/legacy/sample/ilsvrc2012/multi_stage/sskd/``)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fastkd.errors import UserError

from . import register_method
from .adapters import check_option
from .base import Method
from .kd import soft_kl
from .precision import full_precision, widen

#: views of each image: the batch itself, then its 90-, 180- and 270-degree rotations
VIEWS = 4


def rotations(images: torch.Tensor) -> torch.Tensor:
    """``[x; rot90(x); rot180(x); rot270(x)]`` (counter-clockwise, the reference dataset's ``np.rot90`` of the
    H x W plane): the batch's ``B`` rows, then the ``B`` rows of each rotation."""
    if images.shape[-1] != images.shape[-2]:
        raise UserError(f"sskd rotates the images by 90 degrees and needs square ones, got "
                        f"{images.shape[-2]} x {images.shape[-1]} (use a square --res)")
    return torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(VIEWS)])


def split_views(x: torch.Tensor, b: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(normal, rotated)`` of view-major rows ``[x (B); rot90 (B); rot180 (B); rot270 (B)]``: the ``B`` normal rows
    and the ``3B`` rotated ones in the reference's order (sample 0's three rotations, then sample 1's, ...)."""
    rotated = x[b:].reshape(VIEWS - 1, b, *x.shape[1:]).transpose(0, 1).reshape(-1, *x.shape[1:])
    return x[:b], rotated


def rotation_similarities(features: torch.Tensor, b: int) -> torch.Tensor:
    r"""``3B x B`` cosine similarities :math:`\cos(f(\tilde x_a), f(x_j))` of every rotated view ``a`` with every
    normal view ``j`` (``eps`` = 1e-8 on each norm, as ``F.cosine_similarity``); row ``a``'s own image is ``a // 3``."""
    normal, rotated = split_views(features, b)
    return F.normalize(rotated, dim=1, eps=1e-8) @ F.normalize(normal, dim=1, eps=1e-8).t()


def error_rank_mask(scores: torch.Tensor, target: torch.Tensor, ratio: float) -> torch.Tensor:
    r"""The rows SSKD's error-level ranking keeps: the rank of row ``n``'s target is the number of columns the
    teacher's ``scores`` put strictly above it; every row of rank 0 (the teacher is right) is kept, and of the
    ``W`` wrong rows the :math:`\lfloor \mathrm{ratio} \cdot W \rfloor` of smallest rank (ties: the earlier row,
    a stable sort of the reference's ``argsort(rank)[:correct + wrong_keep]``). A boolean row mask, no host sync."""
    rank = (scores > scores.gather(1, target.unsqueeze(1))).sum(dim=1)
    keep = (rank == 0).sum() + torch.floor((rank > 0).sum().double() * ratio).long()
    order = torch.argsort(rank, stable=True)
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel(), device=order.device)
    return position < keep


class ProjectionHead(nn.Sequential):
    """``Linear(d, d) - ReLU - Linear(d, d)`` on the flattened embedding: the reference's ``proj_head``
    (``wrapper.py``) / ``ss_module`` (``SSWrapper4SSKD``), PyTorch's default initialisation."""

    def __init__(self, dim: int):
        super().__init__(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))


@register_method("sskd")
class SSKD(Method):
    r"""Two stages on the batch and its three rotations (:meth:`expand`; both networks see all ``4B`` views).

    **Stage 1** (epochs ``0 .. ss_epochs-1``, :attr:`exclusive`, the student not trained): the teacher-side head
    ``head_t`` on the frozen teacher's ``embedding`` learns to tell each rotated view's own image among the batch,
    ``sskd.aux`` = CE over the ``3B x B`` :func:`rotation_similarities` (no temperature) with target ``a // 3`` (the
    authors' teacher loop, torchdistill's ``AuxSSKDLoss``).

    **Stage 2** (afterwards, and when :meth:`set_epoch` is never called): ``head_t`` frozen, the student-side
    head ``head_s`` trains with the student; with :math:`s, t` the logits of normal (:math:`n`) and rotated
    (:math:`r`) views and :math:`S^s, S^t` the heads' similarity matrices,

    .. math::
        L = \text{ce\_weight}\,\mathrm{CE}(s_n, y) + \text{kd\_weight}\,\mathrm{KL}_{T}(s_n, t_n)
            + \text{tf\_weight}\,\mathrm{KL}_{T_{tf}}(s_r, t_r)[M_{tf}]
            + \text{ss\_weight}\,\mathrm{KL}_{T_{ss}}(S^s, S^t)[M_{ss}]

    (:func:`~fastkd.methods.kd.soft_kl` over the rows a mask keeps, each :math:`T^2`-scaled; the CE on the normal
    views is the trainer's). :math:`M_{tf}` keeps the rotated views by :func:`error_rank_mask` of the teacher's
    rotated-view logits (the order of its probabilities) against the label (``tf_ratio`` of the wrong ones),
    :math:`M_{ss}` those of :math:`S^t` against the view's own image (``ss_ratio``). Terms ``sskd.kd``, ``sskd.tf``,
    ``sskd.ss``.

    Defaults: the authors' CIFAR-100 ``student.py`` (``--kd-T 4 --tf-T 4 --ss-T 0.5 --ratio-tf 1.0 --ratio-ss 0.75
    --kd-weight 0.9 --tf-weight 2.7 --ss-weight 10 --ce-weight 0.1 --t-epoch 60``); torchdistill's ImageNet config
    has the same temperatures, ratios and weights (``loss_weights: [1.0, 0.9, 10.0, 2.7]``) but CE weight 1.0
    (``--ce-weight 1``) and a 30-epoch stage 1 (``--opt sskd.ss_epochs=30``). Heads: ``d -> d`` MLPs
    (:class:`ProjectionHead`) of each network's embedding width, as both references.

    Deviations: ``ss_epochs`` are part of ``--epochs`` and run at the run's learning-rate schedule (the authors'
    stage 1 comes before the student's 240 epochs, with its own lr 0.05 decayed at epochs 30 and 45): the authors'
    recipe is ``--epochs 300 --opt sskd.ss_epochs=60 --milestones 210,240,270``; a run of at most ``ss_epochs``
    epochs never trains the student. The rotations are of the loader's view (one crop for the four views; the
    authors crop each rotation on its own). Ranks count the classes strictly above the target (the reference's
    unstable ``argsort`` differs only on ties).
    """

    paper = "Xu et al. 2020"
    peers = frozenset({"torchdistill"})
    cacheable = False  # the teacher must see the rotations
    expands = True

    needs = frozenset({"logits", "embedding"})
    ce_weight = 0.1

    def __init__(self, kd_weight: float = 0.9, tf_weight: float = 2.7, ss_weight: float = 10.0,
                 temperature: float = 4.0, tf_temperature: float = 4.0, ss_temperature: float = 0.5,
                 tf_ratio: float = 1.0, ss_ratio: float = 0.75, ss_epochs: int = 60):
        super().__init__()
        for option, value in (("tf_temperature", tf_temperature), ("ss_temperature", ss_temperature)):
            check_option(float(value) > 0, "sskd", option, value, "must be > 0")
        for option, value in (("tf_ratio", tf_ratio), ("ss_ratio", ss_ratio)):
            check_option(0.0 <= float(value) <= 1.0, "sskd", option, value,
                         "is the share of wrongly ranked views kept; give a value in [0, 1]")
        check_option(int(ss_epochs) >= 0, "sskd", "ss_epochs", ss_epochs, "must be >= 0 (0: no teacher-head stage)")
        self.kd_weight, self.tf_weight, self.ss_weight = float(kd_weight), float(tf_weight), float(ss_weight)
        self.temperature, self.tf_temperature = float(temperature), float(tf_temperature)
        self.ss_temperature, self.tf_ratio, self.ss_ratio = float(ss_temperature), float(tf_ratio), float(ss_ratio)
        self.ss_epochs = int(ss_epochs)
        self.head_s: Optional[ProjectionHead] = None
        self.head_t: Optional[ProjectionHead] = None
        self._epoch: Optional[int] = None

    def setup(self, student_signals, teacher_signals):
        self.head_s = ProjectionHead(student_signals["embedding"][0].numel())
        self.head_t = ProjectionHead(teacher_signals["embedding"][0].numel())
        self.head_t.requires_grad_(self.exclusive)

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of each (0-based) epoch: ``head_t`` trains in stage 1 only."""
        self._epoch = int(epoch)
        if self.head_t is not None:
            self.head_t.requires_grad_(self.exclusive)

    def has_stages(self) -> bool:
        return self.ss_epochs > 0

    @property
    def exclusive(self) -> bool:
        """True during stage 1 (the teacher-side head's rotation task): the step's loss is ``sskd.aux`` alone."""
        return self._epoch is not None and self._epoch < self.ss_epochs

    @property
    def trains_student(self) -> bool:
        return not self.exclusive

    def expand(self, images: torch.Tensor) -> torch.Tensor:
        return rotations(images)

    def forward(self, student, teacher, labels, index=None):
        if self.head_s is None:
            raise RuntimeError("sskd: setup() must run before the first forward (it builds the projection heads)")
        b, rows = labels.shape[0], teacher["logits"].shape[0]
        if rows != VIEWS * b or student["logits"].shape[0] != rows:
            raise RuntimeError(f"sskd: expected the signals of a batch of {b} and its 3 rotations ({VIEWS * b} rows, "
                               f"the trainer's expand()), got {rows}")
        t_emb = teacher["embedding"].detach().flatten(1)
        own_image = torch.arange(b, device=t_emb.device).repeat_interleave(VIEWS - 1)
        f_t = self.head_t(t_emb.to(self.head_t[0].weight.dtype))  # trainable in stage 1 only (set_epoch)
        if self.exclusive:
            with full_precision(f_t.device):
                return {"sskd.aux": F.cross_entropy(rotation_similarities(widen(f_t), b), own_image)}
        f_s = self.head_s(student["embedding"].flatten(1).to(self.head_s[0].weight.dtype))
        z_s, z_t = widen(student["logits"]), widen(teacher["logits"].detach())
        with full_precision(z_s.device):
            s_normal, s_rotated = split_views(z_s, b)
            t_normal, t_rotated = split_views(z_t, b)
            kd = soft_kl(s_normal, t_normal, self.temperature)
            tf_rows = error_rank_mask(t_rotated, labels.repeat_interleave(VIEWS - 1), self.tf_ratio)
            tf = soft_kl(s_rotated, t_rotated, self.tf_temperature, tf_rows)
            sim_s, sim_t = rotation_similarities(widen(f_s), b), rotation_similarities(widen(f_t), b)
            ss = soft_kl(sim_s, sim_t, self.ss_temperature, error_rank_mask(sim_t, own_image, self.ss_ratio))
        return {"sskd.kd": self.kd_weight * kd, "sskd.tf": self.tf_weight * tf, "sskd.ss": self.ss_weight * ss}

    def options(self):
        return {"kd_weight": self.kd_weight, "tf_weight": self.tf_weight, "ss_weight": self.ss_weight,
                "temperature": self.temperature, "tf_temperature": self.tf_temperature,
                "ss_temperature": self.ss_temperature, "tf_ratio": self.tf_ratio, "ss_ratio": self.ss_ratio,
                "ss_epochs": self.ss_epochs}
