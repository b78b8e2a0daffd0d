"""DALI backend: encoded images are read from the shards (via the sample table, in fastkd's epoch
order) and fed to a DALI pipeline that decodes, resizes and centre-crops. On a GPU the decoder runs
as ``device="mixed"`` (nvJPEG) and the outputs stay on the GPU; without one the pipeline runs on the
CPU with ``device_id=None``. DALI's own ``fn.readers.webdataset`` opens the same shards (the tests
check it); fastkd feeds the pipeline itself because DALI's readers shuffle with their own generator,
while fastkd's order and views must be pure functions of (seed, epoch, index) on every backend."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from . import register_backend
from .backend import Backend, BackendConfig, RawBatch
from .decode import failure, first_failure, view_boxes
from .order import batches


class _Feeder:
    """External source: batch ``i`` of the current epoch as (encoded images, labels, indices, window
    anchor (x, y) and shape (w, h) in whole stored pixels, resize ROI start and end (y, x) in the window,
    horizontal flip flag)."""

    def __init__(self, reader, cfg: BackendConfig):
        self.reader, self.cfg, self.batches, self.epoch, self.fed = reader, cfg, [], 0, 0

    def start(self, epoch: int) -> None:
        self.batches, self.epoch, self.fed = batches(self.cfg.order(epoch), self.cfg.batch_size, self.cfg.drop_last), epoch, 0

    def __call__(self, info):
        if info.iteration >= len(self.batches):
            raise StopIteration
        self.fed = info.iteration + 1
        idx = self.batches[info.iteration]
        table = self.reader.table
        images = [np.frombuffer(self.reader.payload(int(i)), dtype=np.uint8) for i in idx]
        rows = table[idx]
        labels = [np.array(v, dtype=np.int64) for v in rows["label"]]
        index = [np.array(i, dtype=np.int64) for i in idx]
        box = view_boxes(self.cfg, self.epoch, idx, table)
        if box is None:  # the centre square of the whole image, unflipped
            h, w = rows["height"].astype(np.float64), rows["width"].astype(np.float64)
            m = np.minimum(h, w)
            box = np.stack([(w - m) / 2, (h - m) / 2, m, m, 0 * m], 1)
        flip = list(box[:, 4].astype(np.int32))
        box = box[:, :4]
        lo = np.floor(box[:, :2])
        hi = np.minimum(np.ceil(box[:, :2] + box[:, 2:]), np.stack([rows["width"], rows["height"]], 1))
        start, end = box[:, 1::-1] - lo[:, ::-1], box[:, 1::-1] + box[:, :1:-1] - lo[:, ::-1]
        return (images, labels, index, list(lo.astype(np.int32)), list((hi - lo).astype(np.int32)),
                list(start.astype(np.float32)), list(end.astype(np.float32)), flip)

    def culprit(self):
        """``(index, reason)`` of the first sample fed this epoch that does not decode, or None."""
        return first_failure(self.reader, (i for b in self.batches[: self.fed] for i in b))


def to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """A DALI TensorList (one dense batch) copied into a new torch tensor on ``device``."""
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    dense = tensor_list.as_tensor()
    out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device=device)
    feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device) if device.type == "cuda" else None)
    return out


@register_backend("dali")
class DALIBackend(Backend):
    reads, package, extra = "dali", "nvidia.dali", "dali"

    def __init__(self, cfg: BackendConfig):
        super().__init__(cfg)
        from nvidia.dali import fn, pipeline_def, types

        reader = cfg.data.shard_reader(cfg.split)
        self.feeder = _Feeder(reader, cfg)
        gpu = cfg.device.type == "cuda"
        side = cfg.policy.out if cfg.policy is not None and cfg.policy.kind == "rrc" else cfg.base

        @pipeline_def(batch_size=cfg.batch_size, num_threads=max(1, cfg.workers),
                      device_id=(cfg.device.index or 0) if gpu else None, prefetch_queue_depth=2)
        def pipe():
            encoded, labels, index, anchor, shape, roi_start, roi_end, flip = fn.external_source(
                self.feeder, num_outputs=8, batch=True, batch_info=True,
                dtype=[types.UINT8, types.INT64, types.INT64, types.INT32, types.INT32, types.FLOAT, types.FLOAT,
                       types.INT32])
            images = fn.decoders.image_slice(encoded, anchor, shape, device="mixed" if gpu else "cpu",
                                             output_type=types.RGB, axis_names="WH", adjust_orientation=False)
            images = fn.resize(images, size=(side, side), roi_start=roi_start, roi_end=roi_end, antialias=True)
            images = fn.flip(images, horizontal=flip, vertical=0)
            return images, labels, index

        self.pipe = pipe()
        self.pipe.build()
        self.state = "new"  # new | running (an epoch was abandoned part-way) | done

    @property
    def decode_path(self) -> str:
        import nvidia.dali

        where = "mixed (nvJPEG)" if self.cfg.device.type == "cuda" else "cpu"
        return f"DALI {nvidia.dali.__version__} image_slice on {where}"

    def _drain(self) -> None:
        while True:
            try:
                self.pipe.run()
            except StopIteration:
                return

    def iter_epoch(self, epoch: int) -> Iterator[RawBatch]:
        if self.state == "running":
            self._drain()
        self.feeder.start(epoch)  # before reset(), in case DALI pulls from the source as it resets
        if self.state != "new":
            self.pipe.reset()
        self.state = "running"
        dev = self.cfg.device
        while True:
            try:
                images, labels, index = self.pipe.run()
            except StopIteration:
                self.state = "done"
                return
            except RuntimeError as exc:  # a sample DALI cannot decode: name it
                bad = self.feeder.culprit()
                if bad is None:
                    raise
                raise failure(self.feeder.reader, self.cfg.split, *bad) from exc
            yield to_torch(images, dev), to_torch(labels, dev), to_torch(index, dev)
