"""The loader the trainer uses: a backend's uint8 base images -> augmented, normalised ``Batch``."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Dict, Iterator, Optional

import numpy as np
import torch

from fastkd.errors import UserError

from . import BACKENDS
from .augment import AugmentConfig, Augmenter
from .backend import BackendConfig
from .dataset import ConvertedData, open_converted
from .order import epoch_order, num_batches
from .decode import stored_sizes
from .views import ViewPolicy, pad_crop_flip


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
class Batch:
    images: torch.Tensor  # float32 (N, 3, res, res), normalised, on the training device; channels-last strides
    # unless the Loader was built with channels_last=False
    labels: torch.Tensor  # int64 (N,)
    index: torch.Tensor  # int64 (N,) dataset index of each sample in its split
    view: Dict[str, torch.Tensor]  # per-sample view parameters: box (N, 4) (x0, y0, w, h) in stored-image pixels
    # (pad-and-crop: base pixels), flip (N,), and the augmentation's entries (augment.py): mix_partner, mix_lam,
    # mix_kind, mix_box; erase_box, erase_key; cutout_box
    epoch: int
    host_index: np.ndarray  # ``index`` on the host (the cache's rows; no device-to-host copy)
    targets: Optional[torch.Tensor] = None  # float32 (N, num_classes) soft targets when mixup/cutmix is on


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
    above) and the base decode size follow from it (see ``views.py``); ``views=False`` trains on centre
    views (no crop/flip: the "no data augmentation" baseline). ``augment`` (training only) adds
    mixup/cutmix, random erasing and cutout after normalisation (see ``augment.py``); mixing pairs positions
    2k and 2k+1 of the epoch order and needs an even ``batch_size``. ``channels_last`` (the default, as in
    ``fastkd train``) yields NCHW batches stored NHWC: the backends' NHWC views are normalised where they
    lie, with no transposing copy; ``channels_last=False`` gives contiguous NCHW (the values are the same).
    """

    def __init__(self, data, split: str, backend: str = "torch", batch_size: int = 64, train: bool = True,
                 res: Optional[int] = None, seed: int = 0, workers: int = 2, device="cpu",
                 rank: int = 0, world: int = 1, drop_last: Optional[bool] = None,
                 augment: Optional[AugmentConfig] = None, views: bool = True, channels_last: bool = True):
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
        if self.augment is not None and self.augment.mixing and batch_size % 2:
            raise UserError(f"mixup/cutmix pair consecutive samples (positions 2k, 2k+1 of the epoch order) and "
                            f"need an even batch size; got {batch_size}")
        self.order = partial(epoch_order, self.count, seed, shuffle=train, rank=rank, world=world,
                             batch_size=batch_size, drop_last=self.drop_last)
        self._backend_order = _SkippingOrder(self.order)  # no reference back to the Loader: freed by refcount
        name = BACKENDS.canonical(backend)
        cls = BACKENDS.get(name)
        cfg = BackendConfig(self.data, split, self.policy.base, batch_size, workers, self.device,
                            self._backend_order, self.drop_last, pad=self.policy.pad, policy=self.policy, seed=seed)
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

    def views_of(self, epoch: int, idx) -> Dict[str, np.ndarray]:
        """The crop box and flip of samples ``idx`` in ``epoch`` (what ``Batch.view`` reports): a pure
        function of (seed, epoch, index) and, for RandomResizedCrop, each image's stored size."""
        sizes = stored_sizes(self._table, idx) if self.policy.kind == "rrc" else None
        return self.policy.sample(self.seed, epoch, idx, sizes)

    def _raw(self, epoch: int) -> Iterator[tuple]:
        """``(uint8 images or None, labels, index, index as a host array)`` per batch: (N, res, res, 3) views
        (cut and flipped while decoding) for rrc, (N, S, S, 3) base squares for pad-and-crop; None: the backend cuts the pad-and-crop
        views itself (the memory backend's single gather)."""
        if self.policy.kind == "pad_crop" and self.backend.pad >= self.policy.pad:
            for labels, index, idx in self.backend.index_batches(epoch):
                yield None, labels, index, idx
            return
        for images, labels, index in self.backend.iter_epoch(epoch):
            yield images, labels, index, index.cpu().numpy()

    def _normalise_nhwc(self, images: torch.Tensor) -> torch.Tensor:
        """float32 (N, H, W, 3) normalised copy of uint8 NHWC ``images``: ``(x - mean) / std`` along each image
        row with the channels' constants repeated W times, which vectorises (broadcasting a size-3 channel
        dimension does not: 8x slower at 224 px); the same float operations as on NCHW, so the same bits."""
        n, h, w, c = images.shape
        if w not in self._rows:
            self._rows[w] = (self._mean.view(c).repeat(w), self._std.view(c).repeat(w))
        mean, std = self._rows[w]
        return images.reshape(n * h, w * c).float().sub_(mean).div_(std).view(n, h, w, c)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` from batch ``start`` on: exactly the tail of the full epoch, since views
        and augmentations are functions of (seed, epoch, index, position) (a resumed checkpoint)."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start batch {start} outside the epoch's {len(self)} batches")
        start *= self.batch_size  # position of the batch in the epoch order
        self._backend_order.skip = (epoch, start)
        for images, labels, index, idx in self._raw(epoch):
            view = self.views_of(epoch, idx)
            box = torch.from_numpy(view["box"]).float()
            flip = torch.from_numpy(view["flip"])
            if images is not None and not (self.policy.train and self.policy.kind == "pad_crop"):
                x = self._normalise_nhwc(images).permute(0, 3, 1, 2)  # NHWC views seen as NCHW: no transpose
            else:  # pad-and-crop: the backend's single gather from its held split, else an exact integer gather
                x = (self.backend.crop(index, box[:, :2].long(), flip).float() if images is None
                     else pad_crop_flip(images, box, flip, self.policy.pad))
                x = x.sub_(self._mean).div_(self._std)  # in place: x is this batch's own float copy
            views = {"box": box.to(self.device), "flip": flip.to(self.device)}
            targets = None
            if self._augmenter is not None:
                x, targets, extra = self._augmenter(x, labels, idx, start, epoch, inplace=True)
                views.update(extra)
            start += len(idx)
            yield Batch(x.contiguous(memory_format=self.memory_format), labels.clone(), index.clone(), views, epoch,
                        idx, targets)
