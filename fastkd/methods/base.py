"""The method interface: declared signals, default weights, adapters, and the loss terms."""
from __future__ import annotations

from typing import Collection, Dict, FrozenSet, Optional

import torch
from torch import nn


#: The trainers fastkd's method list is compared with.
PEERS = ("mdistiller", "torchdistill")


class Method(nn.Module):
    """A distillation loss.

    ``needs``: teacher signals the method reads (``"logits"``, or tap names such as ``"stage3"`` /
    ``"embedding"``); the trainer computes only these. ``ce_weight``: the paper's weight of the
    cross-entropy on hard labels when this method is used (the trainer takes the first method's
    value unless ``--ce-weight`` is given). Adapters (regressors, connectors) are submodules built in
    ``setup`` from the shapes of a dry forward pass; they train with the student and are saved in the
    checkpoint.
    """

    name: str = ""
    #: the paper, as "Authors year" (the module docstring has the full reference)
    paper: str = ""
    #: which peer trainers ship the method: a subset of :data:`PEERS` (``fastkd list methods``, docs/methods.md)
    peers: FrozenSet[str] = frozenset()
    #: whether the teacher cache can serve every signal it reads (False: it needs a teacher forward the cache
    #: cannot replay, such as one on a transformed input, so the teacher runs online)
    cacheable: bool = True
    needs: FrozenSet[str] = frozenset()
    ce_weight: float = 1.0
    #: True while this method's terms must be the step's whole loss (no CE, no other method), e.g.
    #: FitNets' stage 1 (hint training); methods that use it update it in :meth:`set_epoch`.
    exclusive: bool = False
    #: True for a method that runs the networks on copies of the batch (:meth:`expand`)
    expands: bool = False

    @property
    def trains_student(self) -> bool:
        """False while this method's exclusive stage trains its own modules only (FT's paraphraser, SSKD's
        teacher-side head): the trainer then runs the student without gradient, in eval mode (no BN
        statistics move), and only the methods' parameters step. Read only while :attr:`exclusive`."""
        return True

    def has_stages(self) -> bool:
        """Whether some epochs run an exclusive stage (FitNets' stage 1, FT's paraphraser, AB's
        initialisation); the trainer checks that such a stage leaves the run epochs to train the student."""
        return False

    def expand(self, images: torch.Tensor) -> Optional[torch.Tensor]:
        """For a method that needs both networks on transformed copies of the batch (SSKD's rotations, MLKD's
        strong augmentation): ``[images; copies]``, the batch's ``B`` rows first then the copies (``K*B`` rows
        in all), drawn from a generator seeded by the run's seed and the step (resume-exact); such a method sets
        :attr:`expands`. The trainer runs
        the student and the teacher on it, computes CE, the metrics and every other method on the first ``B``
        rows, and hands this method the signals of all rows. Such a method is not :attr:`cacheable`; at most
        one method of a run expands."""
        raise NotImplementedError(f"{self.name} sets expands but has no expand()")

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of every (0-based) epoch, a resumed one included, for
        epoch-dependent schedules (DKD's warm-up, FitNets' stages). Default: nothing."""

    def select_taps(self, student_taps: Collection[str], teacher_taps: Collection[str]) -> None:
        """Called by the trainer, before any signal is computed, with the tap names of the student and
        the teacher, for methods whose default taps depend on the pair (overhaul's ``stages=auto``:
        every stage both have); such a method updates :attr:`needs`. Default: nothing."""

    def setup(self, student_signals: Dict[str, torch.Tensor], teacher_signals: Dict[str, torch.Tensor]) -> None:
        """Build adapters from one dry forward pass (shapes only). Default: nothing to build."""

    def forward(self, student: Dict[str, torch.Tensor], teacher: Dict[str, torch.Tensor],
                labels: torch.Tensor, index: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Weighted loss terms, named ``<method>`` or ``<method>.<term>``. ``index``: dataset indices of
        the batch (for methods with a memory bank)."""
        raise NotImplementedError

    def options(self) -> Dict[str, object]:
        """The hyper-parameters in force, recorded in the run's config."""
        return {}
