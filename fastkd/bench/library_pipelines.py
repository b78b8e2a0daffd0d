"""Reference rows of ``fastkd bench loader``: FFCV's and DALI's own RandomResizedCrop pipelines, as their
documentation writes them, on the very same stored JPEGs (FFCV: fastkd's ``.beton``; DALI: the extracted
ImageFolder copy the DataLoader baseline reads).

They answer "does fastkd beat the libraries it wraps?". They are not drop-in equivalents: each draws its
own crops with its own random numbers (no replay, no teacher cache), and they deliver uint8 images where
fastkd's rows deliver normalised float32 batches, so they do less work per image than fastkd's rows.
- ``ffcv (own pipeline)``: ``RandomResizedCropRGBImageDecoder((res, res))`` (FFCV's window decode and
  resize), ``RandomHorizontalFlip``, ``ToTensor``; ``OrderOption.RANDOM``, the same workers.
- ``dali (own pipeline)``: ``fn.readers.file`` (shuffled), ``fn.decoders.image_random_crop`` (decodes only
  the crop window; area 8-100%, aspect 3/4-4/3, 10 tries), ``fn.resize`` (antialiased) to ``res x res``,
  ``fn.flip`` with a coin flip; CPU, as many threads as workers, run synchronously: asynchronous, it would
  decode the next epoch's first batches ahead while the benchmark times the other loaders.
"""
from __future__ import annotations

from typing import Callable, Iterator, Tuple

import torch

from fastkd.threads import preserve_torch_threads

FFCV_OWN, DALI_OWN = "ffcv-own", "dali-own"
NAMES = {FFCV_OWN: "ffcv (own pipeline)", DALI_OWN: "dali (own pipeline)"}
RunEpoch = Callable[[object, int], Iterator[torch.Tensor]]


def ffcv_own(beton: str, res: int, batch_size: int, workers: int) -> Tuple[object, RunEpoch]:
    """(FFCV Loader, epoch -> its uint8 image batches)."""
    with preserve_torch_threads():  # FFCV resets torch's thread count on import and in its Loader
        from ffcv.fields.decoders import RandomResizedCropRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import RandomHorizontalFlip, ToTensor

        loader = Loader(beton, batch_size=batch_size, num_workers=max(1, workers), order=OrderOption.RANDOM,
                        drop_last=True, os_cache=True, seed=0,
                        pipelines={"image": [RandomResizedCropRGBImageDecoder((res, res)), RandomHorizontalFlip(),
                                             ToTensor()],
                                   "label": None, "index": None})

    def run_epoch(loader, epoch: int):
        with preserve_torch_threads():
            batches = iter(loader)
        for (images,) in batches:
            yield images

    return loader, run_epoch


def dali_own(image_folder: str, res: int, batch_size: int, workers: int) -> Tuple[object, RunEpoch]:
    """(DALI pipeline, epoch -> its uint8 image batches as torch tensors); ``drop_last``: whole batches only."""
    from nvidia.dali import fn, pipeline_def, types

    from fastkd.pipelines.dali_backend import to_torch

    # synchronous: an asynchronous pipeline would decode the next epoch's first batches ahead, while the
    # benchmark times other loaders (its reader never ends an epoch); decoding still uses every thread
    @pipeline_def(batch_size=batch_size, num_threads=max(1, workers), device_id=None, prefetch_queue_depth=1,
                  exec_async=False, exec_pipelined=False, seed=0)
    def pipe():
        jpegs, _ = fn.readers.file(file_root=image_folder, random_shuffle=True, name="reader")
        images = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB, random_area=[0.08, 1.0],
                                               random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=10)
        images = fn.resize(images, resize_x=res, resize_y=res, antialias=True)
        return fn.flip(images, horizontal=fn.random.coin_flip())

    pipeline = pipe()
    pipeline.build()
    batches = pipeline.epoch_size("reader") // batch_size

    def run_epoch(pipeline, epoch: int):
        for _ in range(batches):
            (images,) = pipeline.run()
            yield to_torch(images, torch.device("cpu"))

    return pipeline, run_epoch
