"""Plain-PyTorch backend: reads the shards through their sample table, decodes with PIL in DataLoader
workers. Needs neither ffcv nor DALI."""
from __future__ import annotations

import io
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from . import register_backend
from .backend import Backend, BackendConfig, RawBatch


def base_image(data: bytes, side: int) -> np.ndarray:
    """Decode, crop the centre square, resize to ``side`` (antialiased bilinear)."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        w, h = im.size
        m = min(w, h)
        left, top = (w - m) // 2, (h - m) // 2
        im = im.crop((left, top, left + m, top + m))
        if m != side:
            im = im.resize((side, side), Image.BILINEAR)  # antialiased when shrinking, like DALI's resize
        return np.asarray(im, dtype=np.uint8)


class _Samples(torch.utils.data.Dataset):
    def __init__(self, reader, side: int):
        self.reader, self.side = reader, side

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int):
        return base_image(self.reader.payload(i), self.side), int(self.reader.table[i]["label"]), i


class _EpochBatches:
    """Batch sampler whose epoch is set before iterating (works with persistent workers)."""

    def __init__(self, cfg: BackendConfig):
        self.cfg, self.epoch = cfg, 0

    def __iter__(self):
        from .order import batches

        return iter([b.tolist() for b in batches(self.cfg.order(self.epoch), self.cfg.batch_size, self.cfg.drop_last)])

    def __len__(self):
        from .order import num_batches

        return num_batches(len(self.cfg.order(self.epoch)), self.cfg.batch_size, self.cfg.drop_last)


def _collate(items):
    images = torch.from_numpy(np.stack([it[0] for it in items]))
    labels = torch.tensor([it[1] for it in items], dtype=torch.int64)
    index = torch.tensor([it[2] for it in items], dtype=torch.int64)
    return images, labels, index


@register_backend("torch")
class TorchBackend(Backend):
    def __init__(self, cfg: BackendConfig):
        super().__init__(cfg)
        from fastkd.converters.shards import ShardReader

        split = cfg.data.split(cfg.split)
        reader = ShardReader(cfg.data.path(f"dali/{cfg.split}"), [s.rsplit("/", 1)[1] for s in split["dali"]["shards"]])
        self.sampler = _EpochBatches(cfg)
        self.loader = torch.utils.data.DataLoader(
            _Samples(reader, cfg.base), batch_sampler=self.sampler, num_workers=cfg.workers, collate_fn=_collate,
            pin_memory=cfg.device.type == "cuda", persistent_workers=cfg.workers > 0,
            generator=torch.Generator(),  # worker seeds not drawn from the global RNG: a resume replays it exactly
        )

    def iter_epoch(self, epoch: int) -> Iterator[RawBatch]:
        self.sampler.epoch = epoch
        dev = self.cfg.device
        for images, labels, index in self.loader:
            yield images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True), index.to(dev, non_blocking=True)
