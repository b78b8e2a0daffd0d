"""Writes one split into an FFCV ``.beton`` from the already-written shards.

Images were encoded once (in parallel) for the shards; the beton stores the very same JPEG bytes
(raw mode: the very same pixels), so every backend reads identical data (decoders and resize
filters still differ by a few grey levels). FFCV has no API for
pre-encoded images, and its writer records a field's type by exact class, so instead of subclassing
we give one ``RGBImageField`` instance an ``encode`` that copies our bytes.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from fastkd.errors import UserError
from fastkd.threads import preserve_torch_threads

from .images import decode_bytes
from fastkd.converted import ShardReader


class _Encoded:
    """A JPEG already encoded, with its size; handed to the patched field encoder."""

    __slots__ = ("data", "height", "width")

    def __init__(self, data: bytes, height: int, width: int):
        self.data, self.height, self.width = data, height, width


def _encode_preencoded(field, original, destination, image, malloc):
    from ffcv.fields.rgb_image import IMAGE_MODES

    if not isinstance(image, _Encoded):
        return original(destination, image, malloc)
    destination["mode"] = IMAGE_MODES["jpg"]
    destination["height"], destination["width"] = image.height, image.width
    destination["data_ptr"], storage = malloc(len(image.data))
    storage[:] = np.frombuffer(image.data, dtype=np.uint8)


class _ShardDataset:
    """Indexed dataset over the shards, in the form FFCV's writer expects: (image, label, index)."""

    def __init__(self, reader: ShardReader, storage: str):
        self.reader, self.storage = reader, storage

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int):
        row = self.reader.table[i]
        data = self.reader.payload(i)
        image = _Encoded(data, int(row["height"]), int(row["width"])) if self.storage == "jpg" else decode_bytes(data)
        return image, int(row["label"]), int(i)


def write_beton(path: str, reader: ShardReader, storage: str, progress: bool = True) -> None:
    """Write ``path`` (fields: image, label, index). One writer process keeps the output byte-identical
    across runs; the expensive decode/resize/encode already ran in parallel."""
    try:
        with preserve_torch_threads():  # importing FFCV sets torch's thread count to 1
            from ffcv.fields import IntField, RGBImageField
            from ffcv.writer import DatasetWriter
    except ImportError:
        raise UserError("writing .beton files needs ffcv: pip install 'fastkd[ffcv]' (or pass --formats dali)")
    image_field = RGBImageField(write_mode="jpg" if storage == "jpg" else "raw")
    image_field.encode = functools.partial(_encode_preencoded, image_field, image_field.encode)
    fields = {"image": image_field, "label": IntField(), "index": IntField()}
    sizes = reader.table["nbytes"] if storage == "jpg" else reader.table["height"].astype(np.int64) * reader.table["width"] * 3
    page = 1 << 21  # FFCV's minimum page (2 MiB); grow so the largest sample fits comfortably
    while len(sizes) and page < 4 * int(sizes.max()):
        page *= 2
    writer = DatasetWriter(path, fields, page_size=page, num_workers=1)
    import ffcv.writer  # already imported above, under the thread guard
    from tqdm import tqdm

    original = ffcv.writer.tqdm  # FFCV draws its own bar; silence it with ours
    ffcv.writer.tqdm = functools.partial(tqdm, disable=not progress, desc=f"ffcv {os.path.basename(path)}",
                                         unit="img", leave=False)
    try:
        writer.from_indexed_dataset(_ShardDataset(reader, storage), chunksize=256)
    finally:
        ffcv.writer.tqdm = original
