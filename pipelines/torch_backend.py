"""Plain-PyTorch backend: reads the shards through their sample table and, in DataLoader workers, cuts
each view while decoding with PIL (``decode.py``: DCT-scaled decode, crop, antialiased resize), so the
workers deliver uint8 ``res x res`` views (RRC/centre) or ``S x S`` base squares (pad-and-crop).
Needs neither ffcv nor DALI."""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch

from . import register_backend
from .backend import Backend, BackendConfig, RawBatch, worker_batches
from .decode import DecodeError, base_image, cut_view, failure, first_failure, view_boxes
from .photo_views import cut_photo_views
from .resize import cut_views
from .order import batches, num_batches


class Samples(torch.utils.data.Dataset):
    """Item ``(i, box)``: sample i's view cut while decoding (``box`` in stored pixels), or its base
    square when ``box`` is None (pad-and-crop); with ``--views-per-image K`` > 1, item ``(i, boxes, K)``:
    the K views (or K copies of the base square) from one decode, as one uint8 (K, ...) array. A decode failure
    comes back as its reason (raised by the main process, naming the sample), never as a worker traceback."""

    def __init__(self, reader, side: int, out: int = 0):
        self.reader, self.side, self.out = reader, side, out

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, item):
        item = item if isinstance(item, tuple) else (item, None)
        i, box, k = item if len(item) == 3 else (*item, 0)
        label = int(self.reader.table[i]["label"])
        try:
            data = self.reader.payload(i)
            if k:  # one photo, its K views
                image = (np.repeat(base_image(data, self.side)[None], k, 0) if box is None
                         else cut_photo_views(data, box, self.out))
            else:
                image = base_image(data, self.side) if box is None else cut_view(data, box, self.out)
        except DecodeError as exc:
            return None, label, i, str(exc)
        return image, label, i, None


class _Encoded(Samples):
    """Item ``(i, box)`` (or ``(i, boxes, K)``): sample i's stored bytes, label, index and box(es), for decoding
    on the device."""

    def __getitem__(self, item):
        i, box = item[:2]
        data = torch.from_numpy(np.frombuffer(self.reader.payload(i), dtype=np.uint8).copy())
        return data, int(self.reader.table[i]["label"]), i, np.asarray(box).reshape(-1, 5)


def _collate_encoded(items):
    """Per photo its bytes once; labels, indices and boxes per view (a photo's K views in a row)."""
    k = np.array([len(it[3]) for it in items])
    return ([it[0] for it in items], torch.tensor(np.repeat([it[1] for it in items], k), dtype=torch.int64),
            torch.tensor(np.repeat([it[2] for it in items], k), dtype=torch.int64), np.concatenate([it[3] for it in items]),
            torch.from_numpy(k))


class _EpochBatches:
    """Batch sampler whose epoch is set before iterating (works with persistent workers); with RRC/centre
    views each item carries its box, computed for the whole batch here (:func:`decode.view_boxes`)."""

    def __init__(self, cfg: BackendConfig, table):
        self.cfg, self.table, self.epoch = cfg, table, 0

    def __iter__(self):
        k = self.cfg.views_per_image
        for b in batches(self.cfg.order(self.epoch), self.cfg.batch_size, self.cfg.drop_last):
            boxes = view_boxes(self.cfg, self.epoch, b, self.table)
            if k > 1:  # the order repeats each photo K times in a row: one item (one decode) per photo
                photos = b[::k].tolist()
                views = [None] * len(photos) if boxes is None else [tuple(map(tuple, v)) for v in boxes.reshape(-1, k, 5).tolist()]
                yield list(zip(photos, views, [k] * len(photos)))
            else:
                yield b.tolist() if boxes is None else list(zip(b.tolist(), map(tuple, boxes.tolist())))

    def __len__(self):
        return num_batches(len(self.cfg.order(self.epoch)), self.cfg.batch_size, self.cfg.drop_last)


def _stack_shared(arrays) -> torch.Tensor:
    """``np.stack(arrays)`` as a uint8 tensor that, in a DataLoader worker, is written straight into shared
    memory (as ``default_collate`` does), so sending it to the training process copies no pixels again."""
    shape = (len(arrays),) + arrays[0].shape
    if torch.utils.data.get_worker_info() is None:
        return torch.from_numpy(np.stack(arrays))
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)), device="cpu")
    out = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
    np.stack(arrays, out=out.numpy())
    return out


def _collate(items):
    errors = [(it[2], it[3]) for it in items if it[3] is not None]
    if errors:
        return None, None, None, errors[0]
    images = _stack_shared([it[0] for it in items])
    k = 1
    if images.dim() == 5:  # (photos, K, ...): a photo's K views in a row
        k = images.shape[1]
        images = images.flatten(0, 1)
    labels = torch.tensor(np.repeat([it[1] for it in items], k), dtype=torch.int64)
    index = torch.tensor(np.repeat([it[2] for it in items], k), dtype=torch.int64)
    return images, labels, index, None


@register_backend("torch")
class TorchBackend(Backend):
    """With ``--device cuda`` (RRC/centre views of JPEGs), workers only read the bytes: each batch is
    decoded whole on the GPU (``torchvision.io.decode_jpeg``, nvJPEG) and its boxes cut there
    (``resize.cut_views``). ``on_device`` forces that path on or off (True on a CPU runs the same
    code with torchvision's CPU decoder: how the tests check it without a GPU)."""

    reads = "dali"  # the shards, decoded with PIL in DataLoader workers
    on_device: Optional[bool] = None  # None: on the device when it is a GPU

    def __init__(self, cfg: BackendConfig):
        super().__init__(cfg)
        reader = cfg.data.shard_reader(cfg.split)
        self.reader = reader
        self.sampler = _EpochBatches(cfg, reader.table)
        self.out = cfg.policy.out if cfg.policy is not None else cfg.base
        rrc = cfg.policy is not None and cfg.policy.kind == "rrc" and cfg.data.storage == "jpg"
        self.device_decode = rrc and (cfg.device.type == "cuda" if self.on_device is None else self.on_device)
        dataset = (_Encoded if self.device_decode else Samples)(reader, cfg.base, self.out)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=self.sampler, num_workers=cfg.workers,
            collate_fn=_collate_encoded if self.device_decode else _collate,
            pin_memory=cfg.device.type == "cuda" and not self.device_decode, persistent_workers=cfg.workers > 0,
            generator=torch.Generator(),  # worker seeds not drawn from the global RNG: a resume replays it exactly
        )

    @property
    def decode_path(self) -> str:
        from . import jpeg_window

        if self.device_decode:
            return f"torchvision decode_jpeg on {self.cfg.device.type} (nvJPEG on cuda) + roi_align"
        if self.cfg.policy is not None and self.cfg.policy.kind == "rrc":
            native = jpeg_window.AVAILABLE and self.cfg.data.storage == "jpg"
            return f"{'libjpeg window decoder' if native else 'PIL'} views on cpu"
        return "PIL base squares on cpu"

    def iter_epoch(self, epoch: int) -> Iterator[RawBatch]:
        self.sampler.epoch = epoch
        dev = self.cfg.device
        if self.device_decode:
            for data, labels, index, boxes, k in worker_batches(self.loader):
                images = self._decode_on_device(data, index[np.cumsum(k.numpy()) - 1])  # each photo decoded once
                images = [im for im, n in zip(images, k.tolist()) for _ in range(n)]
                yield cut_views(images, boxes, self.out), labels.to(dev, non_blocking=True), index.to(dev, non_blocking=True)
            return
        for images, labels, index, error in worker_batches(self.loader):
            if error is not None:
                raise failure(self.reader, self.cfg.split, *error)
            yield images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True), index.to(dev, non_blocking=True)

    def _decode_on_device(self, data, index) -> list:
        """uint8 (3, H, W) images of a batch, decoded on the device (one batched decode_jpeg call)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        from fastkd.limits import too_many_pixels

        from .decode import jpeg_size

        for d, i in zip(data, index.tolist()):  # nvJPEG allocates what the header declares: no bombs
            size = jpeg_size(d.numpy().tobytes())
            bomb = too_many_pixels(*size) if size else None
            if bomb:
                raise failure(self.reader, self.cfg.split, i, bomb)
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.cfg.device)
        except RuntimeError as exc:  # name the first sample that does not decode
            bad = first_failure(self.reader, index.tolist())
            if bad is None:
                raise
            raise failure(self.reader, self.cfg.split, *bad) from exc
