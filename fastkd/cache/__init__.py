"""The teacher-output cache: a teacher's outputs on the exact training views, addressed by (epoch, index).

Every view (crop, flip, mixup/cutmix partner and lambda, erasing and cutout boxes) is a pure function of
(seed, epoch, dataset index) (``pipelines/view_policy.py``, ``pipelines/augment.py``), so a student run recomputes
the views the teacher saw and looks its outputs up by (epoch, index): FKD's replay (Shen & Xing, ECCV
2022) without stored coordinates. ``key.py`` says what a cache is valid for, ``store.py`` holds the
arrays, ``build.py`` fills a cache with no student (``fastkd cache build``), ``info.py`` describes one.
"""
from .key import cache_key
from .store import TeacherCache

__all__ = ["TeacherCache", "cache_key"]
