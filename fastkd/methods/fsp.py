"""``fsp``: Yim, Joo, Bae & Kim, CVPR 2017, "A Gift from Knowledge Distillation: Fast Optimization, Network
Minimization and Transfer Learning"; reference code: torchdistill ``FSPLoss`` (``torchdistill/losses/mid_level.py``)
and its two-stage config ``configs/legacy/sample/ilsvrc2012/multi_stage/fsp/resnet18_from_resnet34.yaml``."""
from __future__ import annotations

from typing import Collection, Iterable, Sequence, Union

import torch
from torch import nn

from fastkd.errors import UserError
from fastkd.tap_names import STAGE_TAPS

from . import register_method
from .adapters import COMMON_STAGES, check_option, checked_maps, is_auto, match_spatial, shared_taps, stage_names
from .base import Method
from .precision import full_precision, widen


def fsp_matrix(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    r"""N x C1 x C2 "flow of solution procedure" matrix of two maps (paper eq. 1):
    :math:`G_{ij} = \frac{1}{h w} \sum_{x, y} F^1_{i,x,y} F^2_{j,x,y}`; a map larger than the other (per axis) is
    adaptive-*max* pooled to the smaller size first, as torchdistill's ``compute_fsp_matrix``."""
    first, second = match_spatial(first, second, "max")
    return first.flatten(2) @ second.flatten(2).transpose(1, 2) / (first.shape[2] * first.shape[3])


def fsp_loss(student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    r"""FSP loss over consecutive map pairs (torchdistill ``FSPLoss`` with every pair's weight 1):

    .. math::
        L_{FSP} = \frac{1}{N} \sum_{k} \sum_{n} \sum_{j} \left\lVert G^S_k(x_n)_{:, j} - G^T_k(x_n)_{:, j}
                  \right\rVert_2, \qquad G_k = \mathrm{fsp\_matrix}(F_k, F_{k+1})

    i.e. torchdistill's ``(G_s - G_t).norm(dim=1).sum() / batch_size``: the L2 norm of each column of the
    difference, summed. The paper writes the *squared* Frobenius norm, :math:`\frac1N \sum_k \lambda_k
    \lVert G^T_k - G^S_k \rVert_2^2`; this is the reference code's form. Computed in the inputs' precision
    (float32 for half inputs); the teacher maps are detached.
    """
    total = None
    for k in range(len(student_maps) - 1):
        g_s = fsp_matrix(widen(student_maps[k]), widen(student_maps[k + 1]))
        g_t = fsp_matrix(widen(teacher_maps[k].detach()), widen(teacher_maps[k + 1].detach()))
        term = (g_s - g_t).norm(dim=1).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("fsp_loss needs at least two maps (its matrices relate consecutive ones)")
    return total / student_maps[0].shape[0]


@register_method("fsp")
class FSP(Method):
    r"""Total loss = ``weight`` * ``fsp_loss(a(student[stages]), teacher[stages])`` during stage 1, then CE.

    **Pairs**: the FSP matrix of each pair of consecutive ``stages`` (``auto``, the default: every stage tap both
    models have once the trainer calls :meth:`select_taps`, ``stage1,stage2,stage3`` before that; or an explicit
    list of at least two, taken in stage order): the outputs of stage k and stage k+1, i.e. the input and output of
    stage k+1, the paper's pairs (the input and output of a stage), as RepDistiller's ``FSP`` pairs consecutive
    features. torchdistill's config takes ``layerK.1``'s input and ``layerK``'s output, within each stage (4 pairs
    for ResNet18, the first from the stem); fastkd has no tap inside a stage or at the stem (3 pairs for ResNet18).

    **Channels**: FSP matrices compare only when student and teacher have the same channel counts (the paper's
    setting; the reference has no adapter). Where a stage's counts differ, the student map goes through a 1x1
    convolution (no bias, no normalisation, PyTorch's default initialisation) to the teacher's channels, built in
    :meth:`setup` and trained with the student: a linear change of basis, so the adapted FSP matrix is
    :math:`A G^S B^\top` and keeps the student's magnitudes (a BatchNorm would re-centre the maps and change the
    products); where the counts agree the student map is used as it is.

    **Stages**: the paper trains the student on the FSP loss alone (stage 1), then on the main task (stage 2).
    ``stage1_epochs`` = 5 (torchdistill's sample config: 5 FSP epochs, then 15 of CE; 5 of fastkd's default 30
    epochs leaves 25 for stage 2, between its 1:3 split and RepDistiller's 30 ``init_epochs`` before 240): during
    epochs ``0 .. stage1_epochs-1`` (told by :meth:`set_epoch`) :attr:`exclusive` is True and this loss is the
    step's whole loss (layers past the last paired stage, the classifier, get no gradient); afterwards this method
    emits nothing and the run trains on CE (``ce_weight`` 1, the reference's stage 2), or on whatever it is
    combined with. ``stage1_epochs=0``: one-stage FSP, ``weight`` * FSP added to CE every epoch. ``weight`` 1
    (the config's factor 1.0). The reference's stage-1 optimiser (Adam, lr 1e-4, blind to the loss's scale) is not
    reproduced: the run's SGD schedule serves both stages. The loss is large (hundreds to thousands for CIFAR-size
    ResNets); in an ORL smoke run, weight 1 at SGD lr 0.05 diverged within 5 steps, so lower ``fsp.weight``
    (e.g. 0.1) or ``--lr`` for stage 1.
    """

    paper = "Yim et al. 2017"
    peers = frozenset({"torchdistill"})

    needs = frozenset(COMMON_STAGES)
    ce_weight = 1.0

    def __init__(self, weight: float = 1.0, stages: Union[str, Iterable[str]] = "auto", stage1_epochs: int = 5):
        super().__init__()
        check_option(int(stage1_epochs) >= 0, "fsp", "stage1_epochs", stage1_epochs, "must be >= 0 (0: one-stage FSP)")
        self.weight, self.stage1_epochs = float(weight), int(stage1_epochs)
        self.auto = is_auto(stages)
        chosen = COMMON_STAGES if self.auto else stage_names(stages, "fsp.stages")
        self.stages = tuple(sorted(chosen, key=STAGE_TAPS.index))
        if len(self.stages) < 2:
            raise UserError(f"fsp.stages={stages!r}: give at least two stages (FSP matrices pair consecutive ones)")
        self.needs = frozenset(self.stages)
        self.embeds = nn.ModuleDict()
        self._epoch, self._built = 0, False

    def select_taps(self, student_taps: Collection[str], teacher_taps: Collection[str]) -> None:
        """With ``stages=auto``: every stage tap both models have (at least two)."""
        if self.auto:
            self.stages = shared_taps("fsp", student_taps, teacher_taps, least=2)
            self.needs = frozenset(self.stages)

    def setup(self, student_signals, teacher_signals):
        self.embeds = nn.ModuleDict()
        for name in self.stages:
            s, t = checked_maps(student_signals, teacher_signals, name)
            if s.shape[1] != t.shape[1]:
                self.embeds[name] = nn.Conv2d(s.shape[1], t.shape[1], kernel_size=1, bias=False)
        self._built = True

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of each (0-based) epoch."""
        self._epoch = int(epoch)

    def has_stages(self) -> bool:
        return self.stage1_epochs > 0

    @property
    def exclusive(self) -> bool:
        """True during stage 1 (FSP training): the step's loss must be this method's alone."""
        return self._epoch < self.stage1_epochs

    def _student_map(self, student, name: str) -> torch.Tensor:
        if name not in self.embeds:
            return student[name]
        embed = self.embeds[name]
        return embed(student[name].to(embed.weight.dtype))  # under --amp: in the step's precision

    def forward(self, student, teacher, labels, index=None):
        if not self._built:
            raise RuntimeError("fsp: setup() must run before the first forward (it builds the channel adapters)")
        if self.stage1_epochs > 0 and not self.exclusive:
            return {}
        maps = [self._student_map(student, name) for name in self.stages]
        with full_precision(maps[0].device):
            return {"fsp": self.weight * fsp_loss(maps, [teacher[name] for name in self.stages])}

    def options(self):
        return {"weight": self.weight, "stages": list(self.stages), "stage1_epochs": self.stage1_epochs}
