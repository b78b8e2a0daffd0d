"""The most pixels fastkd decodes from one image: a guard against decompression bombs (a few KB of JPEG or
PNG declaring, say, 20000 x 20000 pixels, which a decoder would allocate gigabytes for).

One limit for every decoder: the converters (``converters/images.py``), every backend's host decode
(``pipelines/decode.py``) and the native window decoder (``pipelines/roijpeg.c``, which is passed it and
refuses after reading the header, before allocating). Default: PIL's ``Image.MAX_IMAGE_PIXELS`` default,
89,478,485 pixels (a 256 MiB RGB image, e.g. 9459 x 9459); ``FASTKD_MAX_IMAGE_PIXELS`` overrides it.
"""
from __future__ import annotations

import os
from typing import Optional

from fastkd.errors import UserError

MAX_IMAGE_PIXELS = 89_478_485  # PIL's default Image.MAX_IMAGE_PIXELS: int(1024 * 1024 * 1024 // 4 // 3)
ENV = "FASTKD_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int:
    """:data:`MAX_IMAGE_PIXELS`, or ``FASTKD_MAX_IMAGE_PIXELS`` where set (a positive integer)."""
    text = os.environ.get(ENV)
    if not text:
        return MAX_IMAGE_PIXELS
    try:
        value = int(text.strip().replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{ENV}={text!r} is not a pixel count; give a positive integer such as {MAX_IMAGE_PIXELS}")
    return value


def too_many_pixels(width: int, height: int) -> Optional[str]:
    """Why an image declaring ``width x height`` pixels is refused (one line), or None when it is within the
    limit."""
    limit = max_image_pixels()
    if int(width) * int(height) <= limit:
        return None
    return (f"image declares {int(width)}x{int(height)} = {int(width) * int(height)} pixels, over the limit of "
            f"{limit} (a decompression bomb?; {ENV} raises the limit)")
