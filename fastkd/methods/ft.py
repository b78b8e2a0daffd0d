"""``ft``: Kim, Park & Kwak, NeurIPS 2018, "Paraphrasing Complex Network: Network Compression via Factor
Transfer" (arXiv:1802.04977). Reference code: torchdistill's ``FTLoss`` (``torchdistill/losses/mid_level.py``),
``Paraphraser4FactorTransfer`` / ``Translator4FactorTransfer`` (``torchdistill/models/wrapper.py``) and its
two-stage config ``configs/legacy/official/ilsvrc2012/yoshitomo-matsubara/rrpr2020/ft-resnet18_from_resnet34.yaml``
(also ``configs/legacy/sample/ilsvrc2012/multi_stage/ft/resnet18_from_resnet34.yaml``)."""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from fastkd.errors import UserError

from . import register_method
from .adapters import COMMON_STAGES, check_option, checked_maps, is_auto, match_spatial, one_stage, shared_taps
from .base import Method
from .precision import full_precision, widen

REDUCTIONS = ("mean", "sum")


def _convs(widths: List[int], batch_norm: bool, transposed: bool = False,
           bias: Optional[bool] = None) -> List[nn.Module]:
    """3x3 (transposed) convolutions, stride 1, padding 1, each followed by BatchNorm (if ``batch_norm``) and
    LeakyReLU(0.1): the reference's ``make_enc_modules`` / ``make_dec_modules``; PyTorch's default initialisation.
    ``bias`` None: a convolution bias only without BatchNorm, as in the FT authors' code (a bias before BatchNorm
    has no effect in training); True: always, as torchdistill's modules."""
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: List[nn.Module] = []
    for cin, cout in zip(widths, widths[1:]):
        layers.append(conv(cin, cout, kernel_size=3, padding=1, bias=not batch_norm if bias is None else bias))
        layers += [nn.BatchNorm2d(cout), nn.LeakyReLU(0.1)] if batch_norm else [nn.LeakyReLU(0.1)]
    return layers


class Paraphraser(nn.Module):
    """Convolutional autoencoder on the teacher's map (C channels): encoder C -> C -> k -> k, decoder
    (transposed) k -> k -> C -> C, with k = int(C * rate) factor channels (``Paraphraser4FactorTransfer``). The
    encoder's output is the teacher factor. ``bias``: see :func:`_convs`."""

    def __init__(self, channels: int, factor_channels: int, batch_norm: bool, bias: Optional[bool] = None):
        super().__init__()
        widths = [channels, channels, factor_channels, factor_channels]
        self.encoder = nn.Sequential(*_convs(widths, batch_norm, bias=bias))
        self.decoder = nn.Sequential(*_convs(widths[::-1], batch_norm, transposed=True, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class Translator(nn.Sequential):
    """The student's three convolutions (its map's channels -> the teacher's factor channels), the same layers
    as the paraphraser's encoder: student channels -> student channels -> k -> k."""

    def __init__(self, in_channels: int, factor_channels: int, batch_norm: bool):
        super().__init__(*_convs([in_channels, in_channels, factor_channels, factor_channels], batch_norm))


def reconstruction_loss(reconstructed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Stage 1: :math:`\frac{1}{NCHW} \lVert P(x) - x \rVert_2^2`, the paraphraser's reconstruction of the
    teacher's map (``MSELoss(reduction='mean')``, factor 1, of the official config; the sample config sums instead)."""
    return F.mse_loss(widen(reconstructed), widen(target.detach()))


def ft_loss(student_factor: torch.Tensor, teacher_factor: torch.Tensor, p: float = 1.0,
            reduction: str = "mean", q: float = 2.0) -> torch.Tensor:
    r"""Factor transfer loss (reference ``FTLoss``; with ``q``, torchdistill's ``KTALoss`` of KTA): with
    :math:`F_T^n`, :math:`F_S^n` the teacher's and the student's factors of sample n flattened (D = C*H*W values),

    .. math::
        u_n = \frac{F_S^n}{\lVert F_S^n\rVert_q} - \frac{F_T^n}{\lVert F_T^n\rVert_q}, \qquad
        p = 1:\ \frac{1}{N D} \sum_n \lVert u_n \rVert_1, \qquad p \ne 1:\ \frac{1}{N} \sum_n \lVert u_n \rVert_p

    (``reduction='sum'`` drops the 1/(ND), resp. 1/N: as the reference, ``p = 1`` is ``l1_loss``, an
    element mean, while other ``p`` average the per-sample norms). Factors of different H x W are pooled to
    the smaller size first (the reference pairs equal sizes only); the normalisation divides by
    ``max(norm, 1e-12)`` (the reference divides by the norm itself, which differs only for an all-zero factor);
    q = 2 for FT.
    """
    s, t = match_spatial(widen(student_factor), widen(teacher_factor.detach()))
    s, t = F.normalize(s.flatten(1), p=q, dim=1), F.normalize(t.flatten(1), p=q, dim=1)
    if p == 1:
        return F.l1_loss(s, t, reduction=reduction)
    per_sample = torch.linalg.vector_norm(s - t, ord=p, dim=1)
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


class ParaphraserStages(Method):
    """A method whose stage 1 trains a teacher-side :class:`Paraphraser` alone (FT, KTA) on one ``stage`` tap
    (``auto``: the last stage tap both models have once the trainer calls :meth:`select_taps`, ``stage3`` before
    that), keeping int(C * ``rate``) factor channels of the teacher's C. Epochs ``0 .. stage1_epochs-1`` (told by
    :meth:`set_epoch`) are :attr:`exclusive` and leave the student untrained (:attr:`trains_student` False); later
    epochs, and any call before :meth:`set_epoch`, are stage 2, with the paraphraser frozen (``requires_grad``
    False, and in eval mode whatever :meth:`train` is told, so its BatchNorm statistics stay). A subclass
    builds ``paraphraser`` in its ``setup``."""

    def __init__(self, stage1_epochs: int, stage: str, rate: float):
        super().__init__()
        self.stage1_epochs, self.rate = int(stage1_epochs), float(rate)
        self.auto, self.stage = is_auto(stage), one_stage(stage, f"{self.name}.stage")
        self.needs = frozenset({self.stage})
        self.paraphraser: Optional[Paraphraser] = None
        self._epoch: Optional[int] = None

    def select_taps(self, student_taps, teacher_taps) -> None:
        """With ``stage=auto``: the last stage tap both models have."""
        if self.auto:
            self.stage = shared_taps(self.name, student_taps, teacher_taps)[-1]
            self.needs = frozenset({self.stage})

    def factor_channels(self, teacher_map: torch.Tensor) -> int:
        """int(C * ``rate``) of the teacher's C channels; a UserError if none."""
        channels = int(teacher_map.shape[1] * self.rate)
        if channels < 1:
            raise UserError(f"{self.name}.rate={self.rate} leaves no channel of the teacher's {teacher_map.shape[1]} "
                            f"at {self.stage} (int(C x rate) factor channels)")
        return channels

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of each (0-based) epoch."""
        self._epoch = int(epoch)
        self._apply_stage()

    def has_stages(self) -> bool:
        return True

    @property
    def exclusive(self) -> bool:
        """True during stage 1 (paraphraser training): the paraphraser's terms are the step's whole loss."""
        return self._epoch is not None and self._epoch < self.stage1_epochs

    @property
    def trains_student(self) -> bool:
        return not self.exclusive

    def train(self, mode: bool = True):
        super().train(mode)
        self._apply_stage()
        return self

    def _apply_stage(self) -> None:
        """The paraphraser trains in stage 1 only: its gradient and BatchNorm mode follow the stage."""
        if self.paraphraser is not None:
            self.paraphraser.requires_grad_(self.exclusive)
            self.paraphraser.train(self.training and self.exclusive)


@register_method("ft", "factor_transfer")
class FT(ParaphraserStages):
    r"""Two stages, scheduled by :meth:`set_epoch`:

    **Stage 1** (epochs ``0 .. paraphraser_epochs-1``, :attr:`exclusive`, :attr:`trains_student` False): only
    the :class:`Paraphraser` trains, on the teacher's map alone, with :func:`reconstruction_loss` (term
    ``ft.reconstruction``); the trainer runs the student without gradient.

    **Stage 2** (later epochs): total loss = ``ce_weight`` * CE + ``weight`` *
    ``ft_loss(translator(student[stage]), paraphraser.encoder(teacher[stage]))`` (term ``ft``). The paraphraser
    is frozen (``requires_grad`` False, eval mode, as the reference's teacher-side wrapper with
    ``requires_grad: False``); the :class:`Translator` trains with the student (it is frozen in stage 1).
    Before any :meth:`set_epoch` the method is in stage 2.

    ``stage``: ``auto`` (default) = the last stage tap both models have once the trainer calls
    :meth:`select_taps` (``stage3`` before that), the reference's ``layer4`` of the ResNet pair; or a stage tap.
    The paraphraser and the translator are built in :meth:`setup` from the two maps' channels.

    Defaults of the reference's official config: paraphrase rate ``rate`` = 0.5, ``p`` = 1, ``reduction`` =
    ``mean``, ``weight`` = 1000, CE weight 1, one paraphraser epoch (``paraphraser_epochs`` = 1), 3x3 convolutions
    with LeakyReLU(0.1) after each. Departure: ``batch_norm`` = True, a BatchNorm after each convolution of both
    modules (the default of torchdistill's ``Paraphraser4FactorTransfer`` / ``Translator4FactorTransfer`` and of
    the FT authors' code), where the config sets ``uses_bn: False``. That config trains stage 1 with an optimiser
    of its own (SGD, lr 0.01, then lr 0.1 for stage 2); here both stages follow the run's one schedule, and the
    paraphraser without BatchNorm diverges (nan within a few steps) at lr 0.05 and 0.1 with momentum 0.9 even on
    unit-scale maps, while the one with BatchNorm converges at 0.01 to 0.1. ``--opt ft.batch_norm=false`` gives
    the config's modules (then keep the lr near 0.01).
    """

    paper = "Kim et al. 2018"
    peers = frozenset({"torchdistill"})

    needs = frozenset(COMMON_STAGES[-1:])
    ce_weight = 1.0

    def __init__(self, weight: float = 1000.0, p: float = 1.0, reduction: str = "mean", rate: float = 0.5,
                 paraphraser_epochs: int = 1, stage: str = "auto", batch_norm: bool = True):
        check_option(isinstance(batch_norm, bool), "ft", "batch_norm", batch_norm, "must be true or false")
        check_option(reduction in REDUCTIONS, "ft", "reduction", reduction, f"must be one of {', '.join(REDUCTIONS)}")
        check_option(float(p) > 0, "ft", "p", p, "must be > 0 (the norm's order)")
        check_option(float(rate) > 0, "ft", "rate", rate, "must be > 0 (factor channels = rate x C)")
        check_option(int(paraphraser_epochs) >= 1, "ft", "paraphraser_epochs", paraphraser_epochs,
                     "must be >= 1 (the paraphraser is trained before its factors are transferred)")
        super().__init__(paraphraser_epochs, stage, rate)
        self.weight, self.p, self.reduction, self.batch_norm = float(weight), float(p), reduction, batch_norm
        self.translator: Optional[Translator] = None

    def setup(self, student_signals, teacher_signals):
        s, t = checked_maps(student_signals, teacher_signals, self.stage)
        factor_channels = self.factor_channels(t)
        self.paraphraser = Paraphraser(t.shape[1], factor_channels, self.batch_norm)
        self.translator = Translator(s.shape[1], factor_channels, self.batch_norm)
        self._apply_stage()

    def _apply_stage(self) -> None:
        """Stage 1: the paraphraser trains, the translator is frozen; stage 2: the reverse, the paraphraser in eval."""
        super()._apply_stage()
        if self.translator is not None:
            self.translator.requires_grad_(not self.exclusive)

    def forward(self, student, teacher, labels, index=None):
        if self.paraphraser is None:
            raise RuntimeError("ft: setup() must run before the first forward (it builds the paraphraser)")
        dtype = self.paraphraser.encoder[0].weight.dtype  # under --amp: the adapters run in the step's precision
        t = teacher[self.stage].detach().to(dtype)
        if self.exclusive:
            reconstructed = self.paraphraser(t)
            with full_precision(t.device):
                return {"ft.reconstruction": reconstruction_loss(reconstructed, t)}
        with torch.no_grad():
            teacher_factor = self.paraphraser.encoder(t)
        student_factor = self.translator(student[self.stage].to(dtype))
        with full_precision(t.device):
            return {"ft": self.weight * ft_loss(student_factor, teacher_factor, self.p, self.reduction)}

    def options(self):
        return {"weight": self.weight, "p": self.p, "reduction": self.reduction, "rate": self.rate,
                "paraphraser_epochs": self.stage1_epochs, "stage": self.stage, "batch_norm": self.batch_norm}
