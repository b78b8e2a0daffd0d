"""Every method for every registered teacher (ResNet101/152 aside: see TEACHERS) into one student of each family,
at low and high resolution.

The students are the first model of each family module, ResNet50 (Bottleneck blocks) and every SqueezeNet (whose
two versions differ in structure); deeper or wider models of a family (ResNet34/101/152, ShuffleNetV2 x1.0-x2.0) share its
blocks and taps, and they are teachers here.

Each pair runs at one of the two resolutions (a chequerboard: every model runs at both). For each pair the trainer's
own preparation (``prepare_methods``: pair-dependent taps, tap check,
hooks, adapters from a dry forward) runs for all methods at once; one training step's summed loss
must be finite, reach the student and every method's adapters, and leave the teacher without grad.
The first stages that train teacher-side modules alone on the teacher's signals (FT's and KTA's paraphrasers,
SSKD's teacher head: run_tools.TEACHER_SIDE_FIRST_STAGE) are the same computation for every student of a teacher
and input: each runs in the first of the teacher's pairs that gives it its teacher signals (the last tap both
models have: stage3 or stage4), not again for the next students.
"""
from __future__ import annotations

import pytest
import torch

from fastkd.models import MODELS, create_model, list_models
from run_tools import step_every_method

def _students():
    first = {}
    for name, build in MODELS.items():
        first.setdefault(build.__module__, []).append(name)
    picked = [n for names in first.values() for n in (names if "squeezenet" in names[0] else names[:1])]
    return picked + ["ResNet50"]  # Bottleneck blocks (ResNet18: basic blocks)


STUDENTS = _students()
# every registered model but ResNet101/152: ResNet50 with more Bottleneck blocks per stage, so the same taps with the same
# channel counts and strides as ResNet50's, at 2-3x its cost (with 30 methods' adapters on 2048-channel maps, 4 minutes
# of the suite); test_zoo_models runs every method from other families' teachers
TEACHERS = [m for m in list_models() if m not in ("ResNet101", "ResNet152")]
RES = {True: 32, False: 72}  # 72 > 64: the high-resolution stems and strides
# two images, the fewest with which BatchNorm trains on 1x1 maps and the relational methods have a pair of samples:
# the networks' and the adapters' convolutions (2048-channel maps) cost in proportion to the batch. Batches of 4
# (a triplet and more for RKD's angles, SP, CC...) run every method on the zoo pairs (test_zoo_models).
BATCH = 2
_CACHE = {}


def _model(name: str, low_res: bool, teacher: bool):
    key = (name, low_res, teacher)
    if key not in _CACHE:
        torch.manual_seed(0)
        m = create_model(name, 10, low_res)
        if teacher:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        _CACHE[key] = m
    return _CACHE[key]


@pytest.mark.parametrize("low_res", [True, False], ids=["low", "high"])
@pytest.mark.parametrize("teacher_name", TEACHERS)
def test_all_methods_for_all_students(teacher_name, low_res):
    """Each (teacher, student) pair at one resolution, low and high alternating like a chequerboard over the
    teachers and students, so every model runs at both and the suite pays for each pair once."""
    teacher = _model(teacher_name, low_res, teacher=True)
    x = torch.randn(BATCH, 3, RES[low_res], RES[low_res])
    first = TEACHERS.index(teacher_name) + (0 if low_res else 1)
    first_stages_run = set()  # FT's, KTA's and SSKD's teacher-side first stages, once per teacher signal shape
    for student_name in STUDENTS[first % 2::2]:
        step_every_method(teacher, _model(student_name, low_res, teacher=False), x, f"{teacher_name} -> {student_name}",
                          first_stages_run)
