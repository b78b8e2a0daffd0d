"""``pad_l2``: Zhang, Lan, Dai, Zeng, Bai, Chang & Wei, ECCV 2020, "Prime-Aware Adaptive Distillation"
(arXiv:2008.01458); reference code: torchdistill ``PADL2Loss`` (``torchdistill/losses/mid_level.py``, "the
author's provided code takes average of losses") with its variance branch ``VarianceBranch4PAD``
(``torchdistill/models/wrapper.py``), configs ``configs/legacy/official/ilsvrc2012/yoshitomo-matsubara/rrpr2020/
pad_l2-resnet18_from_resnet34.yaml`` (after ``cse_l2-resnet18_from_resnet34.yaml``) and
``configs/legacy/sample/ilsvrc2012/multi_stage/pad/resnet18_from_resnet34.yaml``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import register_method
from .adapters import check_option
from .base import Method
from .precision import full_precision, widen


def pad_l2_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor, log_variance: torch.Tensor,
                eps: float) -> torch.Tensor:
    r"""Uncertainty-weighted L2 between the embeddings (paper eq. 9 per dimension; torchdistill ``PADL2Loss``):

    .. math::
        L_{PAD} = \frac{1}{N} \sum_n \frac{1}{D} \sum_d \left( \frac{(f^t_{nd} - f^s_{nd})^2}{\epsilon + e^{v_{nd}}}
                  + v_{nd} \right)

    :math:`v` = ``log_variance`` (N x D, the variance branch's output on the student's embedding): a sample the
    student finds hard (large predicted variance) weighs less, the :math:`+v` term keeps the variances from
    growing without bound. Computed in the inputs' precision, float32 for half inputs; the teacher is detached.
    """
    s, t, v = widen(student_embedding), widen(teacher_embedding.detach()), widen(log_variance)
    return ((t - s).pow(2) / (eps + v.exp()) + v).mean(dim=1).mean()


@register_method("pad_l2", "pad")
class PADL2(Method):
    r"""Total loss = ``ce_weight`` * CE + ``weight`` * ``pad_l2_loss(c(s), t, var(s))`` on ``embedding``.

    ``var``: the variance branch, ``Linear`` (with bias) + ``BatchNorm1d`` on the student's embedding, one log
    variance per teacher embedding dimension (torchdistill's ``VarianceBranch4PAD``, ``feat_dim`` = 512 for
    ResNet18), built in :meth:`setup` and trained with the student. ``c``: the identity when both embeddings have
    the same width (the reference, ResNet18 from ResNet34); otherwise a ``Linear`` (with bias) from the student's
    width to the teacher's, which the reference has no need of.

    Two stages, as torchdistill runs PAD-L2 ("a two-stage training method", ``rrpr2020/README.md``): stage 1 =
    CE + ``l2_weight`` * MSE(c(s), t) (mean over N x D, ``MSELoss``), term ``pad_l2.l2``; stage 2 = CE +
    ``weight`` * PAD-L2, term ``pad_l2``. ``l2_epochs`` (default 0) = the length of stage 1 in epochs (told by
    :meth:`set_epoch`); no epoch is exclusive (CE runs in both stages). Default 0 = PAD-L2 from the first epoch,
    because the split depends on the run's length, which a method does not know: the reference's official run
    trained stage 1 for 90 epochs (``cse_l2``, factor 15) and then stage 2 for 30 from that checkpoint (its
    sample config: 10 + 10 epochs with factor 1); ``--opt pad_l2.l2_epochs=E`` with E = 3/4 of ``--epochs``
    follows the official split. ``l2_weight`` 15 (the official ``cse_l2`` factor), ``weight`` 1 (the
    ``pad_l2`` factor), ``eps`` 1e-6, CE weight 1 (``org_term`` factor 1). The variance branch gets no gradient
    during stage 1 (the reference builds it at stage 2).

    Its gradient on the student's embedding is :math:`2 (s - t) / (\epsilon + e^{v})`: where the branch learns a
    small variance it grows without bound, so from scratch at a large learning rate the student diverges (on the
    ORL faces, resnet32 -> shufflenet_v2_x0_5, lr 0.05: NaN within 6 steps, the log-variance down to -10 by step 4,
    as low as -265 at step 5); the reference starts it from an L2-trained student at a fine-tuning
    learning rate. The same run at lr 0.01 trains (benchmarks/README.md).
    """

    paper = "Zhang et al. 2020"
    peers = frozenset({"torchdistill"})

    needs = frozenset({"embedding"})
    ce_weight = 1.0

    def __init__(self, weight: float = 1.0, eps: float = 1e-6, l2_epochs: int = 0, l2_weight: float = 15.0):
        super().__init__()
        check_option(float(eps) > 0, "pad_l2", "eps", eps, "must be > 0")
        check_option(int(l2_epochs) >= 0, "pad_l2", "l2_epochs", l2_epochs, "must be >= 0 (epochs of the L2 stage)")
        self.weight, self.eps = float(weight), float(eps)
        self.l2_epochs, self.l2_weight = int(l2_epochs), float(l2_weight)
        self.connector: nn.Module = nn.Identity()
        self.var_estimator: nn.Module = nn.Identity()
        self._epoch = 0

    def setup(self, student_signals, teacher_signals):
        d_s, d_t = student_signals["embedding"][0].numel(), teacher_signals["embedding"][0].numel()
        self.connector = nn.Identity() if d_s == d_t else nn.Linear(d_s, d_t)
        self.var_estimator = nn.Sequential(nn.Linear(d_s, d_t), nn.BatchNorm1d(d_t))

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of each (0-based) epoch: stage 1 (L2) before ``l2_epochs``."""
        self._epoch = int(epoch)

    def forward(self, student, teacher, labels, index=None):
        if isinstance(self.var_estimator, nn.Identity):
            raise RuntimeError("pad_l2: setup() must run before the first forward (it builds the variance branch)")
        s = student["embedding"].flatten(1).to(self.var_estimator[0].weight.dtype)
        t = teacher["embedding"].detach().flatten(1)
        mean = self.connector(s)  # under --amp: in the step's precision
        if self._epoch < self.l2_epochs:
            with full_precision(s.device):
                return {"pad_l2.l2": self.l2_weight * F.mse_loss(widen(mean), widen(t))}
        log_variance = self.var_estimator(s)
        with full_precision(s.device):
            return {"pad_l2": self.weight * pad_l2_loss(mean, t, log_variance, self.eps)}

    def options(self):
        return {"weight": self.weight, "eps": self.eps, "l2_epochs": self.l2_epochs, "l2_weight": self.l2_weight}
