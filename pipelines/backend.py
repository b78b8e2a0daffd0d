"""What every pipeline backend implements: uint8 images (views or base squares), labels and indices in a given order."""
from __future__ import annotations

import gc
import importlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Tuple

import numpy as np
import torch

from fastkd.errors import UserError
from fastkd.threads import preserve_torch_threads

from .dataset import ConvertedData

RawBatch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # uint8 (N,S,S,3) or (N,res,res,3), int64 (N,) x 2
IndexBatch = Tuple[torch.Tensor, torch.Tensor, np.ndarray]  # labels, index on the device, the same index on the host


@dataclass
class BackendConfig:
    data: ConvertedData
    split: str
    base: int  # side S of the square base images to deliver
    batch_size: int
    workers: int
    device: torch.device
    order: Callable[[int], np.ndarray]  # epoch -> dataset indices this rank visits, in order
    drop_last: bool
    pad: int = 0  # the Loader's pad-and-crop padding (0: none); a backend may cut those views itself (cuts_pad_crop)
    policy: Optional[object] = None  # the Loader's ViewPolicy; rrc: backends cut its boxes (view_policy.py) while decoding
    seed: int = 0  # the views' seed (boxes are a pure function of seed, epoch, index, stored size)
    views_per_image: int = 1  # K: ``order`` repeats each photo K times in a row (its views k = 0..K-1)


class Backend:
    """Decodes samples to uint8 on ``device``: for an ``rrc`` policy each sample's view (``decode.view_boxes``:
    box resized to ``res x res``, then flipped); otherwise ``S x S`` base squares (shorter side to S,
    centre square) for the Loader's pad-and-crop.

    What the Loader asks of a backend: :meth:`iter_epoch`, always; and, where :meth:`cuts_pad_crop` says the
    backend cuts pad-and-crop views itself, :meth:`index_batches` and :meth:`crop` instead of it."""

    reads: str = ""  # the converted format it opens: "ffcv" (the .beton files) or "dali" (the shards); required
    package: str = ""  # import name needed
    extra: str = ""  # pip extra that installs it

    def __init__(self, cfg: BackendConfig):
        self.cfg = cfg

    @classmethod
    def require(cls, name: str, cfg: BackendConfig) -> None:
        """Before building backend ``name`` (its registered name): the conversion must hold the files it
        ``reads``, and its ``package`` must import; otherwise a UserError naming the fix."""
        from . import BACKENDS

        have = cfg.data.formats()
        if cls.reads not in have:
            able = " or ".join(n for n, b in BACKENDS.items() if b.reads in have)
            instead = f", or use --backend {able}" if able else ""
            raise UserError(f"{cfg.data.root} was converted without {cls.reads} files, which --backend {name} "
                            f"reads; convert again with --formats {cls.reads}{instead}")
        if cls.package:
            try:
                with preserve_torch_threads():  # importing ffcv resets torch's thread count
                    importlib.import_module(cls.package)
            except ImportError:
                raise UserError(f"the {name} backend needs {cls.package}; "
                                f"install it with pip install 'fastkd[{cls.extra}]'")

    @property
    def decode_path(self) -> str:
        """A short string naming how this backend makes a view's pixels (decoder, where it runs, how views are
        cut): part of a teacher cache's key, since another path may give other pixels."""
        return type(self).__name__

    @property
    def hold(self) -> Optional[str]:
        """How a backend that holds the split in memory holds it (part of a teacher cache's key, since another
        tier may give other pixels); None: it holds nothing."""
        return None

    def iter_epoch(self, epoch: int) -> Iterator[RawBatch]:
        """``(uint8 images, int64 labels, int64 index)`` on ``cfg.device`` per batch of ``cfg.order(epoch)``
        (``cfg.batch_size`` samples, the last one short unless ``cfg.drop_last``): (N, res, res, 3) views for an
        ``rrc`` policy, else (N, S, S, 3) base squares. The Loader is done with a batch's images before it asks
        for the next (a backend may reuse its buffers)."""
        raise NotImplementedError

    def cuts_pad_crop(self, pad: int) -> bool:
        """Whether this backend cuts the Loader's pad-and-crop views for a padding of ``pad`` px itself, with
        :meth:`index_batches` and :meth:`crop`. Default: no, the Loader cuts them from :meth:`iter_epoch`'s base
        squares."""
        return False

    def index_batches(self, epoch: int) -> Iterator[IndexBatch]:
        """``(labels, index on the device, the same index on the host)`` per batch of the epoch, as
        :meth:`iter_epoch` but without pixels: the Loader then cuts each batch's views with :meth:`crop`.
        Only for a backend whose :meth:`cuts_pad_crop` is True."""
        raise NotImplementedError(f"{type(self).__name__} does not cut pad-and-crop views itself")

    def crop(self, index: torch.Tensor, offset: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) on the device: the base squares of samples ``index`` (on the device) cropped at
        integer ``offset`` (B, 2) ``(dx, dy)`` in [-pad, pad] (the pad-and-crop box's corner, zero fill outside
        the image) and mirrored where ``flip`` (B,): exactly :func:`view_policy.pad_crop_flip` of them. Only
        for a backend whose :meth:`cuts_pad_crop` is True."""
        raise NotImplementedError(f"{type(self).__name__} does not cut pad-and-crop views itself")


def worker_batches(loader: torch.utils.data.DataLoader):
    """``iter(loader)``, after collecting this process's garbage when the loader forks worker processes: an
    unreachable object that owns threads (a dropped DALI pipeline) is then finalised here, not in a forked
    worker, where its threads do not exist and its finaliser waits for them forever."""
    if loader.num_workers > 0 and not getattr(loader, "_iterator", None):
        gc.collect()
    return iter(loader)
