"""The loader the trainer uses: a backend's uint8 base images -> augmented, normalised ``Batch``."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Dict, Iterator, Optional

import torch

from . import BACKENDS
from .backend import BackendConfig
from .dataset import ConvertedData, open_converted
from .order import epoch_order, num_batches
from .views import ViewPolicy, apply_views


@dataclass
class Batch:
    images: torch.Tensor  # float32 (N, 3, res, res), normalised, on the training device
    labels: torch.Tensor  # int64 (N,)
    index: torch.Tensor  # int64 (N,) dataset index of each sample in its split
    view: Dict[str, torch.Tensor]  # per-sample view parameters: box (N, 4) in base pixels, flip (N,)
    epoch: int


class Loader:
    """Iterate ``loader.epoch(e)`` for the batches of epoch ``e``; the backend is built once and reused.

    ``res`` is the side the model sees; the policy (pad-and-crop for res <= 64, RandomResizedCrop
    above) and the base decode size follow from it (see ``views.py``).
    """

    def __init__(self, data, split: str, backend: str = "torch", batch_size: int = 64, train: bool = True,
                 res: Optional[int] = None, seed: int = 0, workers: int = 2, device="cpu",
                 rank: int = 0, world: int = 1, drop_last: Optional[bool] = None):
        self.data: ConvertedData = data if isinstance(data, ConvertedData) else open_converted(data)
        self.split, self.train, self.seed = split, train, seed
        self.count = int(self.data.split(split)["count"])
        self.res = int(res or self.data.default_res)
        self.policy = ViewPolicy.for_resolution(self.res, train)
        self.device = torch.device(device)
        self.drop_last = train if drop_last is None else drop_last
        self.batch_size = batch_size
        self.order = partial(epoch_order, self.count, seed, shuffle=train, rank=rank, world=world)
        cls = BACKENDS.get(backend)
        cfg = BackendConfig(self.data, split, self.policy.base, batch_size, workers, self.device,
                            self.order, self.drop_last)
        cls.require("ffcv" if backend == "ffcv" else "dali", cfg)
        self.backend = cls(cfg)
        mean = torch.tensor(self.data.mean, device=self.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.data.std, device=self.device).view(1, 3, 1, 1) * 255
        self._mean, self._std = mean, std

    @property
    def low_res(self) -> bool:
        return self.policy.kind == "pad_crop"

    def __len__(self) -> int:
        return num_batches(len(self.order(0)), self.batch_size, self.drop_last)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        for images, labels, index in self.backend.iter_epoch(epoch):
            view = self.policy.sample(self.seed, epoch, index.cpu().numpy())
            box = torch.from_numpy(view["box"]).float()
            flip = torch.from_numpy(view["flip"])
            x = images.permute(0, 3, 1, 2).float()
            if self.train or self.policy.kind == "rrc":
                x = apply_views(x, box, flip, self.policy.out, self.policy.padding)
            x = (x - self._mean) / self._std
            yield Batch(x.contiguous(), labels.clone(), index.clone(),
                        {"box": box.to(self.device), "flip": flip.to(self.device)}, epoch)
