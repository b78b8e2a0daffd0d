"""FFCV backend: reads ``ffcv/<split>.beton``; decoding runs in FFCV's compiled pipeline: each view
box cut while decoding by fastkd's own decoder (``ffcv_decoder.py``) for RandomResizedCrop/centre views,
FFCV's centre-square decoder for pad-and-crop base images; in fastkd's epoch order (a custom TraversalOrder), so it yields the same samples as the
other backends. One FFCV Loader is built per backend and reused every epoch: its numba compilation
(10-15 s on a CPU) is paid once."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from fastkd.threads import preserve_torch_threads

from . import register_backend
from .backend import Backend, BackendConfig, RawBatch
from .decode import failure, stored_sizes, view_boxes
from .ffcv_decoder import view_decoder, window


def _order_class():
    from ffcv.traversal_order.base import TraversalOrder

    class FastkdOrder(TraversalOrder):
        """fastkd's (seed, epoch) order. FFCV 1.0.2 accepts a TraversalOrder *instance* and then calls it
        with the loader, so the instance returns itself, bound to that loader."""

        def __init__(self, order_fn):
            self.order_fn = order_fn

        def __call__(self, loader):
            super().__init__(loader)
            return self

        def sample_order(self, epoch: int):
            return self.order_fn(epoch).astype(np.uint64)

    return FastkdOrder


@register_backend("ffcv")
class FFCVBackend(Backend):
    reads, package, extra = "ffcv", "ffcv", "ffcv"

    def __init__(self, cfg: BackendConfig):
        super().__init__(cfg)
        with preserve_torch_threads():  # FFCV resets torch's thread count on import and in its Loader
            self._build(cfg)

    def _build(self, cfg: BackendConfig) -> None:
        from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
        from ffcv.loader import Loader
        from ffcv.transforms import Squeeze, ToDevice, ToTensor

        dev = cfg.device
        self.epoch, self.failure = 0, None
        self.table = np.load(cfg.data.path(cfg.data.split(cfg.split)["dali"]["samples"]))
        if cfg.policy is not None and cfg.policy.kind == "rrc":
            decoder = view_decoder(self._windows, self._failed)((cfg.policy.out, cfg.policy.out))
        else:
            decoder = CenterCropRGBImageDecoder((cfg.base, cfg.base), ratio=1.0)

        def to_dev(ops):
            return ops + [ToDevice(dev, non_blocking=True)] if dev.type == "cuda" else ops

        self.loader = Loader(
            cfg.data.path(cfg.data.split(cfg.split)["ffcv"]),
            batch_size=cfg.batch_size,
            num_workers=max(1, cfg.workers),
            order=_order_class()(cfg.order),
            drop_last=cfg.drop_last,
            os_cache=True,
            pipelines={
                "image": to_dev([decoder, ToTensor()]),
                "label": to_dev([IntDecoder(), ToTensor(), Squeeze(-1)]),
                "index": to_dev([IntDecoder(), ToTensor(), Squeeze(-1)]),
            },
        )

    @property
    def decode_path(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            ffcv = version("ffcv")
        except PackageNotFoundError:
            ffcv = "?"
        rrc = self.cfg.policy is not None and self.cfg.policy.kind == "rrc"
        once = ", one decode per photo" if rrc and self.cfg.views_per_image > 1 else ""
        return f"FFCV {ffcv} {'fastkd view decoder' if rrc else 'CenterCropRGBImageDecoder'} on cpu{once}"

    def _windows(self, batch_indices) -> np.ndarray:
        """Called from the compiled decoder once per batch: the decode windows of the epoch's views."""
        idx = np.asarray(batch_indices, dtype=np.int64)
        boxes = view_boxes(self.cfg, self.epoch, idx, self.table)
        return window(boxes, stored_sizes(self.table, idx), self.cfg.policy.out, self.cfg.data.storage != "jpg",
                      self.cfg.views_per_image)

    def _failed(self, batch_indices, status) -> None:
        bad = int(np.asarray(batch_indices)[np.flatnonzero(np.asarray(status))[0]])
        self.failure = self.failure or (bad, "libjpeg-turbo could not decode it")

    def iter_epoch(self, epoch: int) -> Iterator[RawBatch]:
        self.loader.next_epoch = self.epoch = epoch
        self.failure = None
        with preserve_torch_threads():
            batches = iter(self.loader)
        for images, labels, index in batches:
            if self.failure is not None:
                batches.close()
                raise failure(self._reader(), self.cfg.split, *self.failure)
            # FFCV recycles its output buffers a few batches later; Loader.epoch consumes images at once
            # and clones labels and indices
            yield images, labels.to(torch.int64), index.to(torch.int64)

    def _reader(self):
        return self.cfg.data.shard_reader(self.cfg.split)
