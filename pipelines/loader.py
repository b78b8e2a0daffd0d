"""The loader the trainer uses: a backend's uint8 base images -> augmented, normalised ``Batch``."""
from __future__ import annotations

from dataclasses import dataclass, fields
from functools import partial
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from fastkd.errors import UserError

from . import BACKENDS
from .augment import AugmentConfig, Augmenter
from .backend import BackendConfig
from .dataset import ConvertedData, open_converted
from .order import epoch_order, num_batches
from .decode import stored_sizes
from .view_policy import ViewPolicy, pad_crop_flip, view_keys, view_numbers


class _SkippingOrder:
    """The order the backend delivers: the epoch's, less the samples a mid-epoch start skips, so that
    skipped batches are never read or decoded."""

    def __init__(self, order):
        self.order, self.skip = order, (None, 0)  # skip: (epoch, samples) where epoch(e, start) resumes

    def __call__(self, epoch: int):
        skip_epoch, skip = self.skip
        order = self.order(epoch)
        return order[skip:] if epoch == skip_epoch else order


@dataclass
class ViewParams:
    """How each sample of a batch was viewed, on the training device: enough to replay the batch exactly (every
    entry is a function of seed, epoch, dataset index and position in the epoch order). ``box`` and ``flip``
    are always set; an augmentation's entries (``augment.py``) are set when it is on, else None."""

    box: torch.Tensor
    """float32 (N, 4) ``(x0, y0, w, h)`` of the crop: in stored-image pixels for RandomResizedCrop and centre
    views; in base-square pixels for pad-and-crop (``x0, y0``: whole-pixel offsets in [-pad, pad])."""
    flip: torch.Tensor
    """bool (N,): mirrored left-right."""
    mix_partner: Optional[torch.Tensor] = None
    """int64 (N,), mixup/cutmix: dataset index of the sample mixed in (its own: not paired)."""
    mix_lam: Optional[torch.Tensor] = None
    """float32 (N,), mixup/cutmix: weight of the sample's own image and label (1: not mixed)."""
    mix_kind: Optional[torch.Tensor] = None
    """uint8 (N,), mixup/cutmix: ``augment.NONE``, ``MIXUP`` or ``CUTMIX``."""
    mix_box: Optional[torch.Tensor] = None
    """int64 (N, 4), mixup/cutmix: ``(x0, y0, w, h)`` in output pixels of the partner's pasted box (0: no cutmix)."""
    erase_box: Optional[torch.Tensor] = None
    """int64 (N, 4), random erasing: ``(x0, y0, w, h)`` in output pixels of the erased box (w = h = 0: none)."""
    erase_key: Optional[torch.Tensor] = None
    """int64 (N,), random erasing: the 53-bit key of the box's random fill (``augment.fill_values``)."""
    cutout_box: Optional[torch.Tensor] = None
    """int64 (N, 4), cutout: ``(x0, y0, w, h)`` in output pixels of the zeroed square, clipped (w = h = 0: none)."""

    def entries(self) -> Dict[str, torch.Tensor]:
        """The set entries by name, in declaration order: box, flip, then the augmentations'."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass
class Batch:
    """One batch of :meth:`Loader.epoch`: the model's input, its labels, and where and how each sample was viewed."""

    images: torch.Tensor
    """float32 (N, 3, res, res), normalised, on the training device; channels-last strides unless the Loader
    was built with ``channels_last=False``."""
    labels: torch.Tensor
    """int64 (N,) class labels, on the training device."""
    index: torch.Tensor
    """int64 (N,) dataset index of each sample in its split, on the host (CPU); :meth:`index_on` copies it to a
    device (CRD's memory banks). With ``--views-per-image`` K > 1 each photo's index appears K times in a row."""
    rows: torch.Tensor
    """int64 (N,) on the host: each view's row of the epoch in the teacher cache, ``index * K + k`` (``index``
    when K = 1), with no device-to-host copy."""
    view: ViewParams
    """The crop, flip and augmentation parameters of each sample."""
    epoch: int
    """The epoch the batch belongs to."""
    targets: Optional[torch.Tensor] = None
    """float32 (N, num_classes) soft targets when mixup/cutmix is on; None: ``labels`` are the targets."""

    def index_on(self, device) -> torch.Tensor:
        """``index`` on ``device``: an asynchronous host-to-device copy (no sync)."""
        return self.index.to(device, non_blocking=True)


ViewBatch = Tuple[torch.Tensor, torch.Tensor, np.ndarray, torch.Tensor, torch.Tensor]
# one image path's batch: normalised float32 (N, 3, res, res) views, labels, host index, crop box, flip


def normalise_nhwc(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                   rows: Optional[Dict[int, tuple]] = None) -> torch.Tensor:
    """float32 (N, H, W, 3) normalised copy of uint8 NHWC ``images``: ``(x - mean) / std`` (``mean``, ``std``:
    (1, 3, 1, 1) on the 0..255 scale) along each image row with the channels' constants repeated W times, which
    vectorises (broadcasting a size-3 channel dimension does not: 8x slower at 224 px); the same float
    operations as on NCHW, so the same bits. ``rows``: a cache of the repeated constants by width W."""
    n, h, w, c = images.shape
    row = rows.get(w) if rows is not None else None
    if row is None:
        row = (mean.view(c).repeat(w), std.view(c).repeat(w))
        if rows is not None:
            rows[w] = row
    row_mean, row_std = row
    return images.reshape(n * h, w * c).float().sub_(row_mean).div_(row_std).view(n, h, w, c)


def _host_index(index: torch.Tensor) -> np.ndarray:
    """A backend's int64 index tensor as the batch's own host array (a backend may reuse its buffers)."""
    return index.to("cpu", copy=True).numpy()


def _check_stored_sizes(table, root: str, split: str) -> None:
    """Every backend sizes its decode buffers from the sample table (FFCV, DALI) or the JPEG headers: a table
    recording an image over ``fastkd.limits``' pixel limit is refused before anything is allocated."""
    from fastkd.limits import max_image_pixels, too_many_pixels

    if not len(table):
        return
    pixels = table["width"].astype(np.int64) * table["height"].astype(np.int64)
    k = int(np.argmax(pixels))
    if pixels[k] > max_image_pixels():
        raise UserError(f"sample {k} of split {split!r} of {root}: "
                        f"{too_many_pixels(int(table['width'][k]), int(table['height'][k]))}; convert the dataset again")


class Loader:
    """Iterate ``loader.epoch(e)`` for the batches of epoch ``e``; the backend is built once and reused.

    ``res`` is the side the model sees; the policy (pad-and-crop for res <= 64, RandomResizedCrop
    above) and the base decode size follow from it (see ``view_policy.py``); ``views=False`` trains on centre
    views (no crop/flip: the "no data augmentation" baseline). ``augment`` (training only) adds
    mixup/cutmix, random erasing and cutout after normalisation (see ``augment.py``); mixing pairs positions
    2k and 2k+1 of the epoch order and needs an even ``batch_size``. ``channels_last`` (the default, as in
    ``fastkd train``) yields NCHW batches stored NHWC: the backends' NHWC views are normalised where they
    lie, with no transposing copy; ``channels_last=False`` gives contiguous NCHW (the values are the same).
    """

    def __init__(self, data, split: str, backend: str = "torch", batch_size: int = 64, train: bool = True,
                 res: Optional[int] = None, seed: int = 0, workers: int = 2, device="cpu",
                 rank: int = 0, world: int = 1, drop_last: Optional[bool] = None,
                 augment: Optional[AugmentConfig] = None, views: bool = True, channels_last: bool = True,
                 views_per_image: int = 1):
        self.data: ConvertedData = data if isinstance(data, ConvertedData) else open_converted(data)
        self.split, self.train, self.seed = split, train, seed
        self.count = int(self.data.split(split)["count"])
        self.res = int(res or self.data.default_res)
        self.policy = ViewPolicy.for_resolution(self.res, train and views)  # views=False: centre views
        self._table = np.load(self.data.path(self.data.split(split)["dali"]["samples"]))  # stored (w, h) per sample
        _check_stored_sizes(self._table, self.data.root, split)
        self.device = torch.device(device)
        self.drop_last = train if drop_last is None else drop_last
        self.batch_size = batch_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.augment = augment if (train and augment is not None and augment.active) else None
        self.views_per_image = k = int(views_per_image)
        if k < 1 or (k > 1 and not train):
            raise UserError(f"--views-per-image {k}: give K >= 1, for a training split only (evaluation views one per image)")
        if batch_size % k:
            raise UserError(f"--views-per-image {k} needs a batch size that is a multiple of it (a batch holds whole "
                            f"photos, {k} views each); got --batch-size {batch_size}")
        if self.augment is not None and self.augment.mixing and (batch_size // k) % 2:
            raise UserError(f"mixup/cutmix pair consecutive photos (positions 2j and 2j+1 of the epoch order's photos) "
                            f"and need an even batch size (an even number of photos per batch); got --batch-size "
                            f"{batch_size}" + (f" with --views-per-image {k}" if k > 1 else ""))
        self.order = partial(epoch_order, self.count, seed, shuffle=train, rank=rank, world=world,
                             batch_size=batch_size, drop_last=self.drop_last, views_per_image=k)
        self._backend_order = _SkippingOrder(self.order)  # no reference back to the Loader: freed by refcount
        name = BACKENDS.canonical(backend)
        cls = BACKENDS.get(name)
        cfg = BackendConfig(self.data, split, self.policy.base, batch_size, workers, self.device,
                            self._backend_order, self.drop_last, pad=self.policy.pad, policy=self.policy, seed=seed,
                            views_per_image=k)
        cls.require(name, cfg)
        self.backend = cls(cfg)
        mean = torch.tensor(self.data.mean, device=self.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.data.std, device=self.device).view(1, 3, 1, 1) * 255
        self._mean, self._std = mean, std
        self._rows: Dict[int, tuple] = {}  # width -> (mean, std) repeated along an NHWC row
        self._augmenter = (Augmenter(self.augment, seed, self.res, mean, std, self.data.num_classes)
                           if self.augment is not None else None)

    @property
    def low_res(self) -> bool:
        return self.policy.kind == "pad_crop"

    def __len__(self) -> int:
        return num_batches(len(self.order(0)), self.batch_size, self.drop_last)

    @property
    def rows_per_epoch(self) -> int:
        """Views of the split in one epoch: its images x ``views_per_image`` (the teacher cache's rows)."""
        return self.count * self.views_per_image

    def views_of(self, epoch: int, idx, k=None) -> Dict[str, np.ndarray]:
        """The crop ``box`` and ``flip`` of samples ``idx`` (views ``k`` of them; None: view 0, as with one view
        per image) in ``epoch`` (host arrays of ``Batch.view``'s): a pure function of (seed, epoch, index, k) and,
        for RandomResizedCrop, each image's stored size."""
        sizes = stored_sizes(self._table, idx) if self.policy.kind == "rrc" else None
        return self.policy.sample(self.seed, epoch, view_keys(idx, k), sizes)

    def _view_numbers(self, n: int):
        """``k`` of the n views of a batch (None with one view per image): batches start at whole photos."""
        return view_numbers(n, self.views_per_image)

    def _crop_flip(self, epoch: int, idx: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        """float32 box (N, 4) and bool flip (N,), on the host, of :meth:`views_of` (one batch's views)."""
        view = self.views_of(epoch, idx, self._view_numbers(len(idx)))
        return torch.from_numpy(view["box"]).float(), torch.from_numpy(view["flip"])

    def _normalise_nchw(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` in place: ``x`` is this batch's own float32 (N, 3, S, S) copy."""
        return x.sub_(self._mean).div_(self._std)

    def _image_path(self, epoch: int) -> Iterator[ViewBatch]:
        """The batches of this Loader's view policy, through the one image path that cuts its views."""
        if self.policy.kind == "pad_crop" and self.backend.cuts_pad_crop(self.policy.pad):
            return self._held_pad_crop_batches(epoch)
        if self.policy.kind == "pad_crop" and self.policy.train:
            return self._pad_crop_batches(epoch)
        return self._decoded_view_batches(epoch)

    def _held_pad_crop_batches(self, epoch: int) -> Iterator[ViewBatch]:
        """Pad-and-crop views (training and evaluation) that the backend cuts itself: one gather per batch
        from its held, zero-padded split (the memory backend); no pixels cross from the host."""
        for labels, index, idx in self.backend.index_batches(epoch):
            box, flip = self._crop_flip(epoch, idx)
            x = self.backend.crop(index, box[:, :2].long(), flip).float()
            yield self._normalise_nchw(x), labels, idx, box, flip

    def _pad_crop_batches(self, epoch: int) -> Iterator[ViewBatch]:
        """Pad-and-crop training views (res <= 64) cut here from the backend's uint8 (N, S, S, 3) base squares:
        an exact integer gather (:func:`view_policy.pad_crop_flip`)."""
        for images, labels, index in self.backend.iter_epoch(epoch):
            idx = _host_index(index)
            box, flip = self._crop_flip(epoch, idx)
            x = pad_crop_flip(images, box, flip, self.policy.pad)
            yield self._normalise_nchw(x), labels, idx, box, flip

    def _decoded_view_batches(self, epoch: int) -> Iterator[ViewBatch]:
        """Views the backend delivers finished, uint8 (N, res, res, 3): RandomResizedCrop (training) and centre
        (evaluation) views cut and flipped while decoding; pad-and-crop's evaluation views, the base squares
        themselves. Normalised where they lie: the NHWC views seen as NCHW, no transpose."""
        for images, labels, index in self.backend.iter_epoch(epoch):
            idx = _host_index(index)
            box, flip = self._crop_flip(epoch, idx)
            x = normalise_nhwc(images, self._mean, self._std, self._rows).permute(0, 3, 1, 2)
            yield x, labels, idx, box, flip

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` from batch ``start`` on: exactly the tail of the full epoch, since views
        and augmentations are functions of (seed, epoch, index, position) (a resumed checkpoint)."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start batch {start} outside the epoch's {len(self)} batches")
        position = start * self.batch_size  # of the batch in the epoch order
        self._backend_order.skip = (epoch, position)
        for x, labels, idx, box, flip in self._image_path(epoch):
            targets, augmented, k = None, {}, self._view_numbers(len(idx))
            if self._augmenter is not None:  # each view its own draws (its key), pairs of photos view by view
                x, targets, augmented = self._augmenter(x, labels, view_keys(idx, k), position, epoch, inplace=True,
                                                        views_per_image=self.views_per_image)
            view = ViewParams(box.to(self.device), flip.to(self.device), **augmented)
            position += len(idx)
            index = torch.from_numpy(idx)
            rows = index if k is None else index * self.views_per_image + torch.from_numpy(k)
            yield Batch(x.contiguous(memory_format=self.memory_format), labels.clone(), index, rows, view, epoch, targets)
