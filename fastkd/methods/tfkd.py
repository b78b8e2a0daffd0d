"""``tfkd``: Yuan, Tay, Li, Wang & Feng, CVPR 2020, "Revisiting Knowledge Distillation via Label Smoothing
Regularization" (arXiv:1909.11723); reference code github.com/yuanli2333/Teacher-free-Knowledge-Distillation
(``my_loss_function.py``: ``loss_kd_self``) and the form torchdistill runs:
``configs/legacy/official/ilsvrc2012/yoshitomo-matsubara/rrpr2020/tfkd-resnet18_from_resnet18.yaml`` (``KDLoss``,
``torchdistill/losses/mid_level.py``, with a pretrained ResNet18 teacher for a ResNet18 student)."""
from __future__ import annotations

from . import register_method
from .adapters import check_option
from .base import Method
from .kd import soft_kl


@register_method("tfkd", "tf_kd", "tfkd_self")
class TfKD(Method):
    r"""Tf-KD\ :sub:`self`: total loss = ``ce_weight`` * CE + ``weight`` * :math:`T^2\,\mathrm{KL}` (torchdistill's
    ``KDLoss`` soft term, batch mean in the inputs' precision: :func:`~fastkd.methods.kd.soft_kl`), the teacher being a
    trained model *of the student's own architecture* (``--teacher`` = a checkpoint of the student's model; the
    paper's "self-training": the student, trained normally first, teaches a fresh copy of itself).

    This is what torchdistill's Tf-KD config runs: ``KDLoss`` with ``temperature: 1.0``, ``alpha: 0.9``, i.e.
    0.9 * CE + (1 - 0.9) * 1^2 * KL (batchmean), ResNet18 from a pretrained ResNet18: defaults temperature 1,
    ``weight`` 0.1, CE weight 0.9. The authors' ImageNet script has the same weights (``--alpha 0.1`` on the KD
    term) at temperature 20 (``--opt tfkd.temperature=20``); their CIFAR-100 ResNet18 self-teacher setting is
    alpha 0.95, T 6 with a multiplier 50 on a KL averaged over *N x classes* (``nn.KLDivLoss()``'s old 'mean').
    The paper's other form, Tf-KD\ :sub:`reg` (a hand-made "virtual teacher": 0.99 on the true class, the rest
    uniform), needs no teacher and is not this method. torchdistill's ``RegularizationLoss`` (a norm of a module's
    output) is not used by its Tf-KD config. Any teacher works (then this is KD at T = 1 with weight 0.1).
    """

    paper = "Yuan et al. 2020"
    peers = frozenset({"torchdistill"})

    needs = frozenset({"logits"})
    ce_weight = 0.9

    def __init__(self, temperature: float = 1.0, weight: float = 0.1):
        super().__init__()
        check_option(float(temperature) > 0, "tfkd", "temperature", temperature, "must be > 0")
        self.temperature, self.weight = float(temperature), float(weight)

    def forward(self, student, teacher, labels, index=None):
        return {"tfkd": self.weight * soft_kl(student["logits"], teacher["logits"], self.temperature)}

    def options(self):
        return {"temperature": self.temperature, "weight": self.weight}
