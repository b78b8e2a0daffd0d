"""DALI backend: encoded images are read from the shards (via the sample table, in fastkd's epoch
order) and fed to a DALI pipeline that decodes, resizes and centre-crops. On a GPU the decoder runs
as ``device="mixed"`` (nvJPEG) and the outputs stay on the GPU; without one the pipeline runs on the
CPU with ``device_id=None``. With ``--views-per-image`` K > 1 each photo is decoded once (the window of
its K boxes) and cut K times. DALI's own ``fn.readers.webdataset`` opens the same shards (the tests
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
    anchor (x, y) and shape (w, h) in whole stored pixels, then per cut the resize ROI start and end (y, x) in the
    window and the horizontal flip flag). With ``views_per_image`` K > 1 a batch is fed by photo: each photo once
    (its K views are consecutive in the order), its window covering the boxes of its K views, and K cuts."""

    def __init__(self, reader, cfg: BackendConfig, cuts: int):
        self.reader, self.cfg, self.batches, self.epoch, self.fed = reader, cfg, [], 0, 0
        self.k, self.cuts = cfg.views_per_image, cuts

    def start(self, epoch: int) -> None:
        self.batches, self.epoch, self.fed = batches(self.cfg.order(epoch), self.cfg.batch_size, self.cfg.drop_last), epoch, 0

    def __call__(self, info):
        if info.iteration >= len(self.batches):
            raise StopIteration
        self.fed = info.iteration + 1
        idx = self.batches[info.iteration]
        table = self.reader.table
        photos = idx[:: self.k]
        images = [np.frombuffer(self.reader.payload(int(i)), dtype=np.uint8) for i in photos]
        rows = table[photos]
        labels = [np.array(v, dtype=np.int64) for v in rows["label"]]
        index = [np.array(i, dtype=np.int64) for i in photos]
        box = view_boxes(self.cfg, self.epoch, idx, table)
        if box is None:  # the centre square of the whole image, unflipped (the same for each of a photo's views)
            h, w = rows["height"].astype(np.float64), rows["width"].astype(np.float64)
            m = np.minimum(h, w)
            box = np.repeat(np.stack([(w - m) / 2, (h - m) / 2, m, m, 0 * m], 1), self.k, 0)
        flip = box[:, 4].astype(np.int32).reshape(-1, self.k)
        box = box[:, :4].reshape(-1, self.k, 4)
        lo = np.floor(box[:, :, :2].min(1))  # the window of each photo: every box of its views
        hi = np.minimum(np.ceil((box[:, :, :2] + box[:, :, 2:]).max(1)), np.stack([rows["width"], rows["height"]], 1))
        start = box[:, :, 1::-1] - lo[:, None, ::-1]
        end = box[:, :, 1::-1] + box[:, :, :1:-1] - lo[:, None, ::-1]
        cuts = []
        for c in range(self.cuts):
            cuts += [list(start[:, c].astype(np.float32)), list(end[:, c].astype(np.float32)), list(flip[:, c])]
        return (images, labels, index, list(lo.astype(np.int32)), list((hi - lo).astype(np.int32)), *cuts)

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
        rrc = cfg.policy is not None and cfg.policy.kind == "rrc"
        # --views-per-image K: one decode per photo; K cuts of RandomResizedCrop views, or one base square used K times
        self.k, self.cuts = cfg.views_per_image, cfg.views_per_image if rrc else 1
        self.feeder = _Feeder(reader, cfg, self.cuts)
        gpu = cfg.device.type == "cuda"
        side = cfg.policy.out if rrc else cfg.base

        @pipeline_def(batch_size=cfg.batch_size // self.k, num_threads=max(1, cfg.workers),
                      device_id=(cfg.device.index or 0) if gpu else None, prefetch_queue_depth=2)
        def pipe():
            encoded, labels, index, anchor, shape, *cuts = fn.external_source(
                self.feeder, num_outputs=5 + 3 * self.cuts, batch=True, batch_info=True,
                dtype=[types.UINT8, types.INT64, types.INT64, types.INT32, types.INT32]
                + [types.FLOAT, types.FLOAT, types.INT32] * self.cuts)
            decoded = fn.decoders.image_slice(encoded, anchor, shape, device="mixed" if gpu else "cpu",
                                              output_type=types.RGB, axis_names="WH", adjust_orientation=False)
            views = []
            for c in range(self.cuts):
                roi_start, roi_end, flip = cuts[3 * c : 3 * c + 3]
                images = fn.resize(decoded, size=(side, side), roi_start=roi_start, roi_end=roi_end, antialias=True)
                views.append(fn.flip(images, horizontal=flip, vertical=0))
            return (*views, labels, index)

        self.pipe = pipe()
        self.pipe.build()
        self.state = "new"  # new | running (an epoch was abandoned part-way) | done

    @property
    def decode_path(self) -> str:
        import nvidia.dali

        where = "mixed (nvJPEG)" if self.cfg.device.type == "cuda" else "cpu"
        once = ", one decode per photo" if self.k > 1 else ""
        return f"DALI {nvidia.dali.__version__} image_slice on {where}{once}"

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
                *views, labels, index = self.pipe.run()
            except StopIteration:
                self.state = "done"
                return
            except RuntimeError as exc:  # a sample DALI cannot decode: name it
                bad = self.feeder.culprit()
                if bad is None:
                    raise
                raise failure(self.feeder.reader, self.cfg.split, *bad) from exc
            images = torch.stack([to_torch(v, dev) for v in views], 1).flatten(0, 1)  # photo by photo, its views
            labels, index = to_torch(labels, dev), to_torch(index, dev)
            if self.k > 1:
                images = images.repeat_interleave(self.k // self.cuts, 0)
                labels, index = labels.repeat_interleave(self.k), index.repeat_interleave(self.k)
            yield images, labels, index
