"""Untrusted images cannot exhaust the machine (issue 19, point 4): images declaring more pixels than
``fastkd.limits`` allows are refused before any decoder allocates (window decoder, every backend's decode path, the
converters, where ``--skip-corrupt`` skips and counts them). Names read from JSON: test_untrusted_names.py; option
values: test_option_values.py."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from fastkd.errors import UserError
from fastkd.limits import ENV, MAX_IMAGE_PIXELS, max_image_pixels
from fastkd.pipelines import decode, jpeg_window
from layout_tools import encode_jpeg


def jpeg(width: int = 64, height: int = 48, mode: str = "RGB", **save) -> bytes:
    rng = np.random.default_rng(width * height)
    return encode_jpeg(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), 85, mode, **save)


def declare(data: bytes, width: int, height: int) -> bytes:
    """``data`` with its frame header (SOFn) declaring ``width x height``: a decompression bomb of a few KB."""
    d, at = bytearray(data), 2
    while True:
        marker, length = d[at + 1], (d[at + 2] << 8) | d[at + 3]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            d[at + 5:at + 9] = struct.pack(">HH", height, width)
            return bytes(d)
        at += 2 + length


def run_python(code: str, timeout: int = 60) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter: a segfault or a blown-up process fails the test, not pytest."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------- the pixel limit


def test_the_limit_is_pils_default_and_the_environment_overrides_it(monkeypatch):
    assert MAX_IMAGE_PIXELS == 89_478_485 == max_image_pixels()
    monkeypatch.setenv(ENV, "1000")
    assert max_image_pixels() == 1000
    monkeypatch.setenv(ENV, "lots")
    with pytest.raises(UserError, match=ENV):
        max_image_pixels()


@pytest.mark.skipif(not jpeg_window.AVAILABLE, reason="the window decoder is not built")
def test_window_decoder_refuses_a_bomb_before_allocating():
    """A 2.5 KB progressive JPEG declaring 20000 x 20000 px grew the process by ~763 MB (libjpeg's whole
    coefficient buffer) before anything refused it; 65500 x 65500 baseline would need gigabytes for the
    buffer. Refused now after the header, with the process's peak memory unchanged."""
    code = f"""
        import resource, struct, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_untrusted_files import declare, jpeg
        from fastkd.pipelines import decode, jpeg_window
        bombs = [declare(jpeg(64, 64, "L", progressive=True), 20000, 20000),
                 declare(jpeg(64, 64, progressive=True), 65500, 65500),
                 declare(jpeg(64, 64), 65500, 65500)]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for data in bombs:
            try:
                jpeg_window._decode(data, 1, 0, 0, 16, 16, 65500)
            except jpeg_window.TooManyPixels as exc:
                assert "over the limit of 89478485" in str(exc), exc
            else:
                raise AssertionError("decoded a bomb")
            try:
                decode.cut_view(data, (0, 0, 64, 64, 0), 32)
            except decode.DecodeError as exc:
                assert "over the limit" in str(exc), exc
            else:
                raise AssertionError("cut a view of a bomb")
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) < 50, f"peak memory grew by {result.stdout.split()[-1]} MB"


@pytest.fixture
def small_limit(monkeypatch):
    """A limit of 1000 pixels: the test images (64 x 48 = 3072 px) are bombs."""
    monkeypatch.setenv(ENV, "1000")


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("native", [True, False])
def test_every_backend_decode_path_refuses_images_over_the_limit(small_limit, monkeypatch, native, progressive):
    """The torch backend (base images, views through the window decoder or PIL), the memory backend (whole
    or capped images) and the batched decoders' culprit search all refuse with the limit in the reason."""
    if native and not jpeg_window.AVAILABLE:
        pytest.skip("the window decoder is not built")
    monkeypatch.setattr(jpeg_window, "AVAILABLE", native and jpeg_window.AVAILABLE)
    data = jpeg(64, 48, progressive=progressive)
    for call in (lambda: decode.cut_view(data, (0, 0, 32, 32, 1), 16),
                 lambda: decode.cut_view(data, (3.5, 2.25, 40.5, 30.0, 0), 16),
                 lambda: decode.base_image(data, 16),
                 lambda: decode.decode_whole(data),
                 lambda: decode.capped_image(data, 16)):
        with pytest.raises(decode.DecodeError, match="64x48 = 3072 pixels, over the limit of 1000"):
            call()


@pytest.mark.skipif(not jpeg_window.AVAILABLE, reason="the window decoder is not built")
def test_window_decoder_takes_the_limit_from_python(small_limit):
    data = jpeg(64, 48)
    with pytest.raises(jpeg_window.TooManyPixels, match="64x48 = 3072 pixels, over the limit of 1000"):
        jpeg_window._decode(data, 1, 0, 0, 8, 8, 64)
    restarts = jpeg(64, 48, restart_marker_rows=1)
    assert jpeg_window.subimage(restarts, 0, 0, 8, 8) is None  # not cut to a small window first: refused whole
    with pytest.raises(jpeg_window.TooManyPixels):
        jpeg_window.decode_window(restarts, 1, 0, 0, 8, 8, 64)


def test_first_failure_names_a_bomb(small_limit):
    class Reader:
        def payload(self, i):
            return jpeg(64, 48) if i == 2 else jpeg(16, 16)

    assert decode.first_failure(Reader(), [0, 1, 2]) == (2, decode.first_failure(Reader(), [2])[1])
    assert "over the limit of 1000" in decode.first_failure(Reader(), [2])[1]


def test_loader_refuses_a_sample_table_recording_a_bomb(tmp_path):
    """FFCV and DALI size their buffers from the stored sizes: a table recording a bomb is refused."""
    from fastkd.converted import SAMPLE_DTYPE
    from fastkd.pipelines.loader import _check_stored_sizes

    table = np.zeros(3, dtype=SAMPLE_DTYPE)
    table["width"], table["height"] = 64, 48
    _check_stored_sizes(table, "/data/x", "train")
    table["width"][1], table["height"][1] = 65535, 65535
    with pytest.raises(UserError, match=r"sample 1 of split 'train' of /data/x: image declares 65535x65535"):
        _check_stored_sizes(table, "/data/x", "train")


def _imagefolder(root, bomb: bytes) -> str:
    for cls, name, data in (("a", "1.jpg", jpeg(40, 30)), ("a", "bomb.jpg", bomb), ("b", "2.jpg", jpeg(30, 40)),
                            ("b", "3.png", None)):
        os.makedirs(os.path.join(root, "train", cls), exist_ok=True)
        path = os.path.join(root, "train", cls, name)
        if data is None:
            Image.new("RGB", (20, 20), (9, 90, 200)).save(path)
        else:
            with open(path, "wb") as f:
                f.write(data)
    return str(root)


@pytest.mark.parametrize("width,height", [(20000, 20000), (10000, 10000)])
def test_conversion_skips_and_counts_a_bomb_with_skip_corrupt(tmp_path, width, height):
    """20000 x 20000 px: PIL's own DecompressionBombError (not an OSError) escaped as a traceback; 10000 x
    10000 px (100 M, under twice PIL's limit) PIL only warned about and decoded (300 MB RGB)."""
    from fastkd.converters.convert import ConvertOptions, convert

    root = _imagefolder(tmp_path / "src", declare(jpeg(64, 64, progressive=True), width, height))
    bomb = os.path.join(root, "train", "a", "bomb.jpg")
    opts = dict(formats=("dali",), workers=1, progress=False)
    with pytest.raises(UserError) as info:
        convert("imagefolder", root, str(tmp_path / "out"), ConvertOptions(**opts))
    message = str(info.value)
    assert "\n" not in message and bomb in message and "decompression bomb" in message.lower()
    assert "--skip-corrupt" in message
    manifest = convert("imagefolder", root, str(tmp_path / "out"), ConvertOptions(skip_corrupt=True, **opts))
    assert manifest["splits"]["train"]["count"] == 3
    assert manifest["splits"]["train"]["skipped_corrupt"] == [os.path.join("train", "a", "bomb.jpg")]


def test_converter_readers_refuse_over_the_limit(tmp_path, small_limit):
    from fastkd.converters.images import CorruptImageError, load_rgb_file
    from fastkd.converters.imagenet_devkit import load_image

    path = tmp_path / "x.jpg"
    path.write_bytes(jpeg(64, 48))
    with pytest.raises(CorruptImageError, match="over the limit of 1000"):
        load_rgb_file(str(path))
    with pytest.raises(CorruptImageError, match="n01/x.JPEG: image declares 64x48"):
        load_image((str(path), 0, path.stat().st_size, "n01/x.JPEG"))


# ---------------------------------------------------------------- the window decoder's marker scan


@pytest.mark.skipif(not jpeg_window.AVAILABLE, reason="the window decoder is not built")
def test_subimage_does_not_read_past_a_scan_header_that_ends_the_buffer():
    """A start-of-scan segment of length 2 ending the buffer: the scan's component count was read from the
    byte after the buffer. The buffer ends at a page followed by an unreadable page: a read past it faults."""
    head = jpeg(32, 32, restart_marker_rows=1)
    at = head.index(b"\xff\xda")
    data = head[:at] + b"\xff\xda\x00\x02"
    code = f"""
        import ctypes, mmap, sys
        from fastkd.pipelines import jpeg_window
        data = bytes.fromhex({data.hex()!r})
        page = mmap.PAGESIZE
        buf = mmap.mmap(-1, 2 * page)
        libc = ctypes.CDLL(None, use_errno=True)
        base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        assert libc.mprotect(ctypes.c_void_p(base + page), page, 0) == 0  # PROT_NONE
        start = base + page - len(data)
        ctypes.memmove(start, data, len(data))
        out = (ctypes.c_ubyte * 4096)()
        v = [ctypes.c_int() for _ in range(4)]
        n = jpeg_window._LIB.fk_jpeg_subimage(start, len(data), 0, 0, 8, 8, ctypes.addressof(out), 4096,
                                               *[ctypes.byref(x) for x in v], 1 << 40)
        print("returned", n)
    """
    result = run_python(code)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-500:]}"
    assert "returned 0" in result.stdout


@pytest.mark.skipif(not jpeg_window.AVAILABLE, reason="the window decoder is not built")
def test_subimage_refuses_a_frame_declaring_more_segments_than_the_data_holds():
    data = declare(jpeg(64, 64, restart_marker_blocks=1), 65520, 65520)
    assert jpeg_window.subimage(data, 0, 0, 16, 16) is None
