"""ImageNet (ILSVRC2012) files, shared by the ``imagenet`` and ``imagenet_subset`` readers.

Layouts read (``root`` is the folder holding them, or its parent when that holds ``imagenet/`` or
``ILSVRC2012/``)::

    train/<wnid>/<wnid>_<n>.JPEG                 the extracted train set, or
    ILSVRC2012_img_train.tar                     the download itself: inner tars <wnid>.tar, read in place
    val/ILSVRC2012_val_000xxxxx.JPEG             flat val, labelled by the devkit, or
    val/<wnid>/ILSVRC2012_val_000xxxxx.JPEG      val already sorted into class folders (valprep.sh), or
    ILSVRC2012_img_val.tar                       the flat val download, read in place
    ILSVRC2012_devkit_t12/data/meta.mat                                  (extracted devkit)
    ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt

Label trap: line i of the ground-truth file is the 1-based ILSVRC2012_ID of val image i+1, in meta.mat
order (1 = n02119789), NOT sorted-wnid order. Labels are indices in SORTED wnids (torchvision/timm order),
so a val label is ID -> wnid (meta.mat) -> sorted index.

Tars are never extracted: the outer tar's headers are indexed, each inner tar is opened through the outer
tar's member data, and a sample reference is ``(tar path, absolute byte offset, size, display name)``;
a worker seeks there and decodes the JPEG bytes.
"""
from __future__ import annotations

import io
import os
import re
import tarfile
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from fastkd.errors import UserError

from .images import PIL_ERRORS, CorruptImageError, check_pixels, load_rgb_file, pil_to_rgb
from .layout import read_lines
from .safe_load import load_mat, mat_records
from .spec import SourceSplit

TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
DEVKIT = os.path.join("ILSVRC2012_devkit_t12", "data")
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
PARENTS = ("imagenet", "ILSVRC2012")
IMAGE_EXTS = (".jpeg", ".jpg", ".png")
VAL_NAME = re.compile(r"ILSVRC2012_val_\d{8}\.JPEG$")

Item = Tuple[object, str]  # (sample reference, display name)


def load_image(ref) -> np.ndarray:
    """Worker: a file path, or ``(tar, offset, size, name)`` of a JPEG stored inside a tar -> RGB uint8."""
    if isinstance(ref, str):
        return load_rgb_file(ref)
    path, offset, size, name = ref
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
    except FileNotFoundError:
        raise UserError(f"{path} (listed when the dataset was read) is missing now; restore it")
    try:
        if len(data) != size:
            raise OSError(f"truncated: {len(data)} of {size} bytes")
        with warnings.catch_warnings():  # PIL's DecompressionBombWarning: check_pixels refuses those itself
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        with im:
            check_pixels(im, name)
            im.load()
            return pil_to_rgb(im)
    except PIL_ERRORS as exc:
        raise CorruptImageError(name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def _open_tar(path: str, fileobj=None) -> tarfile.TarFile:
    try:
        return tarfile.open(path if fileobj is None else None, "r:", fileobj=fileobj)
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"{path} is not a readable (uncompressed) tar ({exc}); re-download it")


class ImageNetFiles:
    """The train, val and devkit files found under ``root``; nothing is decoded here."""

    def __init__(self, root: str, layout: str):
        self.layout = layout
        for sub in ("", *PARENTS):
            base = os.path.join(root, sub)
            if os.path.isdir(os.path.join(base, "train")) or os.path.isfile(os.path.join(base, TRAIN_TAR)):
                break
        else:
            raise UserError(f"expected {os.path.join(root, 'train')}/<wnid>/*.JPEG or {os.path.join(root, TRAIN_TAR)} "
                            f"(layout: {layout}); is --root the ImageNet folder?")
        self.base = base
        self.train_tar = None if os.path.isdir(os.path.join(base, "train")) else os.path.join(base, TRAIN_TAR)
        self.val_tar = None if os.path.isdir(os.path.join(base, "val")) else os.path.join(base, VAL_TAR)
        if self.val_tar and not os.path.isfile(self.val_tar):
            raise UserError(f"expected {os.path.join(base, 'val')}/ (flat, or sorted into <wnid>/ folders) or "
                            f"{self.val_tar} (layout: {layout})")
        self.devkit = os.path.join(base, DEVKIT)
        self.has_devkit = os.path.isfile(os.path.join(self.devkit, "meta.mat"))
        self._meta: Optional[Tuple[Dict[int, str], Dict[str, str]]] = None

    # ---- devkit ----------------------------------------------------------------------------------
    def meta(self) -> Tuple[Dict[int, str], Dict[str, str]]:
        """``{ILSVRC2012_ID: wnid}`` and ``{wnid: words}`` of the leaf synsets (num_children == 0) of meta.mat."""
        if self._meta is None:
            path = os.path.join(self.devkit, "meta.mat")
            if not self.has_devkit:
                raise UserError(f"expected {path}: a flat val/ needs the devkit (extract ILSVRC2012_devkit_t12.tar.gz "
                                f"into {self.base}) or val sorted into val/<wnid>/ folders")
            leaves = [r for r in mat_records(load_mat(path), "synsets", path) if int(r["num_children"]) == 0]
            ids = {int(r["ILSVRC2012_ID"]): str(r["WNID"]) for r in leaves}
            if sorted(ids) != list(range(1, len(leaves) + 1)):
                raise UserError(f"{path}: leaf synsets do not carry ILSVRC2012_IDs 1..{len(leaves)}; re-download the devkit")
            self._meta = ids, {str(r["WNID"]): str(r["words"]) for r in leaves}
        return self._meta

    def full_wnids(self) -> List[str]:
        """The sorted wnids of every class: meta.mat's leaves with a devkit, else the train wnids."""
        return sorted(self.meta()[1]) if self.has_devkit else self.train_wnids()

    def class_names(self, wnids: Sequence[str]) -> Optional[List[str]]:
        return [self.meta()[1].get(w, "") for w in wnids] if self.has_devkit else None

    # ---- train -----------------------------------------------------------------------------------
    def train_wnids(self) -> List[str]:
        """Sorted wnids that have training images (class folders, or inner tars of the train tar)."""
        if self.train_tar:
            with _open_tar(self.train_tar) as outer:
                wnids = sorted(os.path.basename(m.name)[:-4] for m in outer if m.isfile() and m.name.endswith(".tar"))
        else:
            folder = os.path.join(self.base, "train")
            wnids = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
        if not wnids:
            raise UserError(f"{self.train_tar or folder} holds no <wnid> classes (layout: {self.layout}); "
                            f"extract each inner <wnid>.tar into train/<wnid>/, or keep {TRAIN_TAR} unextracted")
        return wnids

    def train(self, wnids: Sequence[str]) -> Dict[str, List[Item]]:
        """Images of each wnid, sorted by file name."""
        out: Dict[str, List[Item]] = {}
        if self.train_tar:
            wanted, tar_name = set(wnids), os.path.basename(self.train_tar)
            with _open_tar(self.train_tar) as outer:
                for m in outer:
                    wnid = os.path.basename(m.name)[:-4]
                    if not (m.isfile() and m.name.endswith(".tar") and wnid in wanted):
                        continue
                    with _open_tar(f"{self.train_tar}:{m.name}", outer.extractfile(m)) as inner:
                        files = sorted((i.name, i.offset_data, i.size) for i in inner if i.isfile() and _is_image(i.name))
                    out[wnid] = [((self.train_tar, m.offset_data + off, size, f"{tar_name}:{m.name}:{name}"),
                                  f"{tar_name}:{m.name}:{name}") for name, off, size in files]
        else:
            for wnid in wnids:
                folder = os.path.join(self.base, "train", wnid)
                if os.path.isdir(folder):
                    out[wnid] = [(os.path.join(folder, f), f"train/{wnid}/{f}")
                                 for f in sorted(os.listdir(folder)) if _is_image(f)]
        where = self.train_tar or os.path.join(self.base, "train")
        for wnid in wnids:
            if not out.get(wnid):
                raise UserError(f"no training images for {wnid} in {where}; the download or extraction is incomplete")
        return out

    def sources(self) -> Dict[str, str]:
        """Which train and val layouts were read (for the manifest)."""
        val = os.path.basename(self.val_tar) if self.val_tar else ("val/<wnid>/" if self._val_dirs() else "val/ (flat)")
        return {"train_source": os.path.basename(self.train_tar) if self.train_tar else "train/<wnid>/",
                "val_source": val}

    # ---- val -------------------------------------------------------------------------------------
    def _val_dirs(self) -> List[str]:
        folder = os.path.join(self.base, "val")
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))

    def val(self) -> List[Tuple[object, str, str]]:
        """``(ref, name, wnid)`` of every val image, sorted by file name (class folders: by wnid, then name)."""
        folder = os.path.join(self.base, "val")
        dirs = [] if self.val_tar else self._val_dirs()
        if dirs:
            return [(os.path.join(folder, w, f), f"val/{w}/{f}", w) for w in dirs
                    for f in sorted(os.listdir(os.path.join(folder, w))) if _is_image(f)]
        if self.val_tar:
            tar_name = os.path.basename(self.val_tar)
            with _open_tar(self.val_tar) as tar:
                members = sorted((os.path.basename(m.name), m.offset_data, m.size) for m in tar if m.isfile())
            items = [((self.val_tar, off, size, f"{tar_name}:{n}"), f"{tar_name}:{n}", n)
                     for n, off, size in members if VAL_NAME.match(n)]
        else:
            items = [(os.path.join(folder, n), f"val/{n}", n) for n in sorted(os.listdir(folder)) if VAL_NAME.match(n)]
        if not items:
            raise UserError(f"no ILSVRC2012_val_*.JPEG in {self.val_tar or folder} (layout: {self.layout})")
        id_to_wnid = self.meta()[0]
        gt_path = os.path.join(self.devkit, GROUND_TRUTH)
        truth = read_lines(gt_path, self.layout)
        out = []
        for ref, name, fname in items:
            number = int(fname[15:23])  # ILSVRC2012_val_00000001.JPEG -> 1 = line 1
            if number > len(truth):
                raise UserError(f"{gt_path} has {len(truth)} lines; no label for {name}")
            try:
                out.append((ref, name, id_to_wnid[int(truth[number - 1])]))
            except (KeyError, ValueError):
                raise UserError(f"{gt_path} line {number}: {truth[number - 1]!r} is not an ILSVRC2012_ID of meta.mat")
        return out


def make_splits(files: ImageNetFiles, classes: Sequence[str], strict: bool) -> Dict[str, SourceSplit]:
    """train + val with label = index in ``classes`` (sorted wnids). ``strict``: every val wnid must be a
    class; otherwise val images of other wnids are dropped (subsets)."""
    index = {w: i for i, w in enumerate(classes)}
    train = files.train(classes)
    val = []
    for ref, name, wnid in files.val():
        if wnid in index:
            val.append((ref, name, index[wnid]))
        elif strict:
            raise UserError(f"val image {name} is of class {wnid}, which has no training images; "
                            f"the train and val files do not belong together")
    rows = {"train": [(ref, name, index[w]) for w in classes for ref, name in train[w]], "val": val}
    return {split: SourceSplit([r[0] for r in items], np.asarray([r[2] for r in items], dtype=np.int64),
                               [r[1] for r in items])
            for split, items in rows.items()}
