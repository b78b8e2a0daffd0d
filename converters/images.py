"""Reading images robustly (greyscale, CMYK, PNG saved as .JPEG) and encoding them for storage."""
from __future__ import annotations

import io
import warnings
from typing import Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from fastkd.errors import UserError
from fastkd.limits import too_many_pixels

#: what PIL raises for an unreadable image (DecompressionBombError: PIL's own limit, twice its
#: MAX_IMAGE_PIXELS, is not an OSError)
PIL_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class CorruptImageError(UserError):
    """An image file that cannot be decoded; carries the path."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"corrupt image {path}: {reason}; fix or remove the file, or pass --skip-corrupt")
        self.path = path


def check_pixels(im: Image.Image, name: str) -> None:
    """Refuse (CorruptImageError: ``--skip-corrupt`` skips and counts it) an opened, not yet loaded image whose
    header declares more pixels than ``fastkd.limits`` allows, before the decoder allocates anything."""
    bomb = too_many_pixels(*im.size)
    if bomb:
        raise CorruptImageError(name, bomb)


def load_rgb_file(path: str) -> np.ndarray:
    """Decode any image file PIL understands (sniffing the content, not the extension) to RGB uint8."""
    try:
        with warnings.catch_warnings():  # PIL's DecompressionBombWarning: check_pixels refuses those itself
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            check_pixels(im, path)
            im.load()
            return pil_to_rgb(im)
    except FileNotFoundError:
        raise UserError(f"image {path} is listed by the dataset but missing on disk; restore the file")
    except PIL_ERRORS as exc:
        raise CorruptImageError(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit grey: PIL's convert would clip, so scale
        grey = (np.asarray(im, dtype=np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")  # L, LA, P, CMYK (PIL inverts Adobe CMYK JPEGs correctly), RGBA
    return np.asarray(im, dtype=np.uint8).copy()


def resize_max_side(image: np.ndarray, max_side: Optional[int], side: str = "longer") -> np.ndarray:
    """Shrink (never enlarge) so the longer (or shorter) side is at most ``max_side`` (area filter)."""
    if not max_side:
        return image
    h, w = image.shape[:2]
    ref = max(h, w) if side == "longer" else min(h, w)
    if ref <= max_side:
        return image
    scale = max_side / ref
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BOX), dtype=np.uint8)


def restart_interval(width: int, mcu: int = 16, most: int = 4) -> int:
    """MCUs per restart interval for a JPEG ``width`` px wide (MCU of ``mcu`` px: 16 for OpenCV's 4:2:0): the
    largest divisor of the MCUs per row from 2 to ``most``, else the whole row, so that every interval lies
    in one MCU row and a window can be cut out of the stored bytes without decoding the rest
    (``pipelines/roijpeg.c``). Measured on 360-640 px photos: 0.9% larger files, whole decode as fast,
    the decode of a window of 36% of the image 17% faster."""
    per_row = -(-int(width) // mcu)
    return max([d for d in range(2, most + 1) if per_row % d == 0] or [per_row])


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """Encode as FFCV's RGBImageField does (OpenCV, BGR order, 4:2:0) so both stores hold one JPEG, with
    restart markers (:func:`restart_interval`), which every JPEG decoder reads."""
    import cv2

    params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)]
    if hasattr(cv2, "IMWRITE_JPEG_RST_INTERVAL"):  # OpenCV >= 4.6; older: no markers, windows decode as before
        params += [int(cv2.IMWRITE_JPEG_RST_INTERVAL), restart_interval(image.shape[1])]
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return buf.tobytes()


def encode_png(image: np.ndarray) -> bytes:
    """Lossless encoding for raw-stored (small) images, readable by DALI's decoder and PIL."""
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [int(cv2.IMWRITE_PNG_COMPRESSION), 1])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a PNG")
    return buf.tobytes()


def decode_bytes(data: bytes) -> np.ndarray:
    """Decode stored JPEG/PNG bytes to RGB uint8 (used by the torch backend and tests)."""
    with Image.open(io.BytesIO(data)) as im:
        bomb = too_many_pixels(*im.size)
        if bomb:
            raise UserError(f"a stored image: {bomb}; convert the dataset again")
        return pil_to_rgb(im)


def channel_stats(image: np.ndarray) -> Tuple[np.ndarray, np.ndarray, int]:
    """Per-channel sum and sum of squares of pixel values in [0, 1], and the pixel count.

    Computed from 256-bin histograms (exact, ~10x faster than summing floats)."""
    x = image.reshape(-1, 3)
    v = np.arange(256, dtype=np.float64) / 255.0
    hist = np.stack([np.bincount(x[:, c], minlength=256) for c in range(3)]).astype(np.float64)
    return hist @ v, hist @ (v * v), x.shape[0]
