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
from .order import batches


class _Feeder:
    """External source: batch ``i`` of the current epoch as (encoded images, labels, indices)."""

    def __init__(self, reader, cfg: BackendConfig):
        self.reader, self.cfg, self.batches = reader, cfg, []

    def start(self, epoch: int) -> None:
        self.batches = batches(self.cfg.order(epoch), self.cfg.batch_size, self.cfg.drop_last)

    def __call__(self, info):
        if info.iteration >= len(self.batches):
            raise StopIteration
        idx = self.batches[info.iteration]
        table = self.reader.table
        images = [np.frombuffer(self.reader.payload(int(i)), dtype=np.uint8) for i in idx]
        rows = table[idx]
        labels = [np.array(v, dtype=np.int64) for v in rows["label"]]
        index = [np.array(i, dtype=np.int64) for i in idx]
        h, w = rows["height"].astype(np.float32), rows["width"].astype(np.float32)
        m = np.minimum(h, w)  # the centre square, as (y, x) corners, for fn.resize's region of interest
        start = np.stack([(h - m) / 2, (w - m) / 2], 1)
        return images, labels, index, list(start), list(start + m[:, None])


def _to_torch(tensor_list, device: torch.device) -> torch.Tensor:
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

        from fastkd.converted import ShardReader

        split = cfg.data.split(cfg.split)
        reader = ShardReader(cfg.data.path(f"dali/{cfg.split}"), [s.rsplit("/", 1)[1] for s in split["dali"]["shards"]])
        self.feeder = _Feeder(reader, cfg)
        gpu = cfg.device.type == "cuda"
        side = cfg.base

        @pipeline_def(batch_size=cfg.batch_size, num_threads=max(1, cfg.workers),
                      device_id=(cfg.device.index or 0) if gpu else None, prefetch_queue_depth=2)
        def pipe():
            encoded, labels, index, roi_start, roi_end = fn.external_source(
                self.feeder, num_outputs=5, batch=True, batch_info=True,
                dtype=[types.UINT8, types.INT64, types.INT64, types.FLOAT, types.FLOAT])
            images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
            images = fn.resize(images, size=(side, side), roi_start=roi_start, roi_end=roi_end, antialias=True)
            return images, labels, index

        self.pipe = pipe()
        self.pipe.build()
        self.state = "new"  # new | running (an epoch was abandoned part-way) | done

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
            yield _to_torch(images, dev), _to_torch(labels, dev), _to_torch(index, dev)
