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
    pad: int = 0  # the Loader's pad-and-crop padding (0: none); a backend that cuts views itself may use it
    policy: Optional[object] = None  # the Loader's ViewPolicy; rrc: backends cut its boxes (views.py) while decoding
    seed: int = 0  # the views' seed (boxes are a pure function of seed, epoch, index, stored size)


class Backend:
    """Decodes samples to uint8 on ``device``: for an ``rrc`` policy each sample's view (``decode.view_boxes``:
    box resized to ``res x res``, then flipped); otherwise ``S x S`` base squares (shorter side to S,
    centre square) for the Loader's pad-and-crop."""

    reads: str = ""  # the converted format it opens: "ffcv" (the .beton files) or "dali" (the shards); required
    package: str = ""  # import name needed
    extra: str = ""  # pip extra that installs it
    # > 0: the backend cuts the Loader's pad-and-crop views itself, for pads up to this, with
    # ``index_batches(epoch)`` -> (labels, index, host index) and ``crop(index, offset, flip)`` (memory backend)
    pad: int = 0

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

    def iter_epoch(self, epoch: int) -> Iterator[RawBatch]:
        raise NotImplementedError


def worker_batches(loader: torch.utils.data.DataLoader):
    """``iter(loader)``, after collecting this process's garbage when the loader forks worker processes: an
    unreachable object that owns threads (a dropped DALI pipeline) is then finalised here, not in a forked
    worker, where its threads do not exist and its finaliser waits for them forever."""
    if loader.num_workers > 0 and not getattr(loader, "_iterator", None):
        gc.collect()
    return iter(loader)
