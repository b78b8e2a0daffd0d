"""ImageNet-1k (ILSVRC2012): 1000 classes, 1,281,167 train / 50,000 val photos.

Layout (``--root`` = the folder holding these, or its parent when that holds ``imagenet/`` or ``ILSVRC2012/``):
``train/<wnid>/*.JPEG`` or the download ``ILSVRC2012_img_train.tar`` itself (1000 inner ``<wnid>.tar``,
read in place, never extracted); ``val/ILSVRC2012_val_000xxxxx.JPEG`` flat (or the download
``ILSVRC2012_img_val.tar``) labelled by the devkit ``ILSVRC2012_devkit_t12/data/{meta.mat,
ILSVRC2012_validation_ground_truth.txt}``, or val already sorted into ``val/<wnid>/`` folders.

Labels: index in the SORTED wnids (torchvision ImageFolder / timm order, n01440764 -> 0). Trap: the
ground-truth file holds 1-based ILSVRC2012_IDs in meta.mat order (ID 1 = n02119789), so a val label is
ID -> wnid -> sorted index (see ``converters/imagenet_devkit.py``). Files are sorted within each class.

Photos are stored as JPEG with the longer side shrunk to at most 512 px; the classic preprocessing
(``--resize-side shorter --max-side 256``) keeps the shorter side at 256 instead. ImageNet has a PNG saved
as ``.JPEG`` and CMYK JPEGs: both decode to RGB.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from fastkd.errors import UserError

from .. import register_dataset
from ..imagenet_devkit import TRAIN_TAR, ImageNetFiles, load_image, make_splits
from ..layout import require_root
from ..spec import DatasetSource, DatasetSpec

SPEC = DatasetSpec(
    name="imagenet",
    num_classes=1000,
    split_counts={"train": 1_281_167, "val": 50_000},
    resolution="variable photos, ~400x350 on average (most 500x375 or 375x500)",
    storage="jpg",
    low_res=False,
    default_res=224,
    default_max_side=512,
    layout=f"train/<wnid>/*.JPEG or {TRAIN_TAR}; val/ILSVRC2012_val_*.JPEG + ILSVRC2012_devkit_t12/data/"
           "{meta.mat, ILSVRC2012_validation_ground_truth.txt}, or val/<wnid>/*.JPEG",
)


@register_dataset(SPEC)
def read(root: Optional[str] = None) -> DatasetSource:
    files = ImageNetFiles(require_root(root, SPEC.name), SPEC.layout)
    classes = files.train_wnids()
    if files.has_devkit:
        devkit = files.full_wnids()
        missing, unknown = sorted(set(devkit) - set(classes)), sorted(set(classes) - set(devkit))
        if missing or unknown:
            raise UserError(f"the train set has {len(classes)} classes but the devkit's meta.mat lists {len(devkit)} "
                            f"(no training images for {', '.join(missing[:5]) or 'none'}; not in meta.mat: "
                            f"{', '.join(unknown[:5]) or 'none'}); restore the missing classes, or use imagenet_subset "
                            f"--opt classes=LIST.txt for a subset")
    return imagenet_source(
        SPEC, files, classes, strict=True,
        class_order="index in sorted wnids (torchvision/timm order); val: ground-truth ILSVRC2012_ID "
                    "(1-based, meta.mat order) -> wnid -> sorted index",
        split_rule="official: train = ILSVRC2012 train images, val = the 50,000 ILSVRC2012 validation images",
        extra={"wnids": classes},
    )


def imagenet_source(spec: DatasetSpec, files: ImageNetFiles, classes: List[str], strict: bool, class_order: str,
                    split_rule: str, extra: Dict[str, object]) -> DatasetSource:
    """The ImageNet images of ``classes`` (sorted wnids; ``strict`` as :func:`make_splits`), decoded by
    ``load_image``. ``split_rule`` gets the file order appended; the manifest's extra is ``extra``, then the
    class names and where the files were read."""
    splits = make_splits(files, classes, strict=strict)
    return DatasetSource(spec=spec, classes=classes, splits=splits, load=load_image, class_order=class_order,
                         split_rule=f"{split_rule}; files sorted by name within each class",
                         extra={**extra, "class_names": files.class_names(classes), **files.sources()})
