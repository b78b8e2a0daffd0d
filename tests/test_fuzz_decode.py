"""Fuzzing the decoders with mutated JPEGs (issue 19, point 5): the native window decoder
(``pipelines/roijpeg.c``: the restart-segment cutter and the window decode), every backend's decode path
on the CPU (torch: base images, views through the window decoder and through PIL, the batched
``decode_jpeg`` path; memory: whole and capped images) and the converter (an imagefolder of mutants
converted with ``--skip-corrupt``) get thousands of truncated, bit-flipped, bomb-sized, restart-broken
and length-broken JPEGs, from a fixed seed. Each part runs in a child process, so a segfault or an
abort fails the test instead of killing pytest; the child has a timeout (no hang) and reports its
peak memory growth (bounded); every refusal must be a one-line error (``DecodeError`` / ``WindowError``,
which the backends turn into a one-line ``UserError``, or a skipped and counted sample).

Run one part by hand: ``python tests/test_fuzz_decode.py decoders 1200``.
"""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from typing import List, Tuple

import numpy as np
from PIL import Image

SEED = 19
MAX_GROWTH_MB = 300
HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------- base JPEGs and mutations


def _pil_jpeg(width: int, height: int, mode: str = "RGB", **save) -> bytes:
    rng = np.random.default_rng(width * 7 + height)
    smooth = np.cumsum(rng.integers(-6, 7, (height, width, 3)), axis=1) % 256  # some structure, some detail
    im = Image.fromarray(smooth.astype(np.uint8))
    if mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80, **save)
    return buf.getvalue()


def base_jpegs() -> List[bytes]:
    """Small JPEGs of every kind the decoders meet: baseline 4:2:0 / 4:4:4 / grey, progressive, restart
    markers every MCU and every MCU row (PIL), and as ``fastkd convert`` stores them (OpenCV, restart
    interval dividing the MCU rows: what the window decoder cuts into segments)."""
    from fastkd.converters.images import encode_jpeg

    photo = (np.cumsum(np.random.default_rng(1).integers(-5, 6, (40, 64, 3)), axis=0) % 256).astype(np.uint8)
    return [
        _pil_jpeg(48, 40),
        _pil_jpeg(37, 29, subsampling=0),
        _pil_jpeg(40, 33, mode="L"),
        _pil_jpeg(48, 40, progressive=True),
        _pil_jpeg(64, 48, restart_marker_blocks=1),
        _pil_jpeg(50, 41, restart_marker_rows=1),
        encode_jpeg(photo, 90),
        encode_jpeg(photo[:, :48], 75),
    ]


def _segments(d: bytes) -> List[Tuple[int, int, int]]:
    """(offset, marker, length) of the marker segments before the entropy-coded data (SOS included)."""
    out, at = [], 2
    while at + 4 <= len(d) and d[at] == 0xFF:
        marker, length = d[at + 1], (d[at + 2] << 8) | d[at + 3]
        out.append((at, marker, length))
        if marker == 0xDA:
            break
        at += 2 + length
    return out


def _sof(segs):
    return next((s for s in segs if 0xC0 <= s[1] <= 0xCF and s[1] not in (0xC4, 0xC8, 0xCC)), None)


def mutate(data: bytes, rng: np.random.Generator) -> Tuple[str, bytes]:
    """One mutant of ``data`` and the kind of mutation."""
    d = bytearray(data)
    segs = _segments(data)
    sos = next((s for s in segs if s[1] == 0xDA), None)
    kind = ["truncate", "bitflip", "huge_sof", "dri", "rst", "length", "sos_end", "splice"][int(rng.integers(8))]
    if kind == "truncate":
        return kind, bytes(d[: int(rng.integers(0, len(d)))])
    if kind == "bitflip":
        for _ in range(int(rng.integers(1, 9))):
            at = int(rng.integers(0, len(d)))
            d[at] ^= 1 << int(rng.integers(8))
        return kind, bytes(d)
    if kind == "huge_sof":
        at = _sof(segs)[0]
        w, h = [(65500, 65500), (20000, 20000), (65535, 1400), (9500, 9500), (0, 40), (48, 0), (65535, 65535),
                (int(rng.integers(9460, 65536)), int(rng.integers(9460, 65536)))][int(rng.integers(8))]
        d[at + 5:at + 9] = struct.pack(">HH", h, w)  # all over the limit (or zero): nothing is decoded
        return kind, bytes(d)
    if kind == "dri":  # a restart interval that does not match the data (or a DRI segment where none was)
        interval = [0, 1, 2, 3, 7, 255, 65535][int(rng.integers(7))]
        dri = next((s for s in segs if s[1] == 0xDD), None)
        if dri is not None and rng.integers(2):
            d[dri[0] + 4:dri[0] + 6] = struct.pack(">H", interval)
            return kind, bytes(d)
        at = sos[0] if sos else 2
        length = [4, 2, 3, 6][int(rng.integers(4))]
        return kind, bytes(d[:at] + b"\xff\xdd" + struct.pack(">H", length) + struct.pack(">H", interval)[: max(0, length - 2)] + d[at:])
    if kind == "rst":  # restart markers renumbered, dropped or added in the entropy-coded data
        body = sos[0] + 2 + sos[2] if sos else 2
        marks = [i for i in range(body, len(d) - 1) if d[i] == 0xFF and 0xD0 <= d[i + 1] <= 0xD7]
        if marks and rng.integers(3):
            at = marks[int(rng.integers(len(marks)))]
            if rng.integers(2):
                d[at + 1] = 0xD0 + int(rng.integers(8))
            else:
                del d[at:at + 2]
        else:
            at = int(rng.integers(body, len(d)))
            d[at:at] = bytes([0xFF, 0xD0 + int(rng.integers(8))])
        return kind, bytes(d)
    if kind == "length":  # a marker segment's length field wrong
        at = segs[int(rng.integers(len(segs)))][0]
        length = [0, 1, 2, 3, 5, 65535, int(rng.integers(0, 65536))][int(rng.integers(7))]
        d[at + 2:at + 4] = struct.pack(">H", length)
        return kind, bytes(d)
    if kind == "sos_end":  # the data ends inside or right after the start-of-scan segment
        cut = [sos[0] + 2, sos[0] + 3, sos[0] + 4, sos[0] + 5, sos[0] + 2 + sos[2]][int(rng.integers(5))]
        d = d[:cut]
        if rng.integers(2) and cut >= sos[0] + 4:
            d[sos[0] + 2:sos[0] + 4] = b"\x00\x02"  # a length of 2: no component count inside
        return kind, bytes(d)
    # splice: a chunk repeated, removed or moved
    a, b = sorted(int(x) for x in rng.integers(0, len(d), 2))
    op = int(rng.integers(3))
    if op == 0:
        return kind, bytes(d[:b] + d[a:b] + d[b:])
    if op == 1:
        return kind, bytes(d[:a] + d[b:])
    return kind, bytes(d[a:b] + d[:a] + d[b:])


def mutants(count: int, seed: int = SEED) -> List[Tuple[str, bytes]]:
    rng = np.random.default_rng(seed)
    bases = base_jpegs()
    return [mutate(bases[i % len(bases)], rng) for i in range(count)]


# ---------------------------------------------------------------- the child processes


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one_line(exc: BaseException) -> bool:
    text = str(exc)
    return bool(text) and "\n" not in text


def fuzz_decoders(count: int) -> dict:
    """Every mutant through the window decoder and every CPU decode path of the torch and memory backends."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg  # noqa: F401  (imported before measuring)

    from fastkd.converted import SAMPLE_DTYPE
    from fastkd.errors import UserError
    from fastkd.pipelines import decode, jpeg_window
    from fastkd.pipelines.torch_backend import TorchBackend

    torch.set_num_threads(1)
    cases = mutants(count)
    bad: List[str] = []
    kinds: dict = {}
    refused = {"window": 0, "decode": 0, "device": 0}

    class Fake:  # what TorchBackend._decode_on_device reads of itself
        class cfg:
            device, split = torch.device("cpu"), "train"

        class reader:
            folder, shard_names = "/fuzz", ["shard-00000.tar"]
            table = np.zeros(1, dtype=SAMPLE_DTYPE)
            payload = None

    for data in base_jpegs():  # warm up every path, then measure
        decode.cut_view(data, (1, 1, 20, 20, 1), 16)
        decode.base_image(data, 16)
    before = _peak_mb()
    for n, (kind, data) in enumerate(cases):
        kinds[kind] = kinds.get(kind, 0) + 1
        size = decode.jpeg_size(data)
        w, h = size if size and min(size) > 0 else (48, 40)
        calls = []
        if jpeg_window.AVAILABLE:
            calls += [("window", lambda: jpeg_window.subimage(data, 0, 0, min(w, 24), min(h, 24))),
                      ("window", lambda: jpeg_window._decode(data, 1, 0, 0, min(w, 17), min(h, 9), w)),
                      ("window", lambda: jpeg_window.decode_window(data, 2, 1, 1, max(2, min(w // 2, 12)),
                                                                   max(2, min(h // 2, 10)), -(-w // 2)))]
        calls += [("decode", lambda: decode.cut_view(data, (2, 3, 20, 18, 1), 16)),  # window decoder, else PIL
                  ("decode", lambda: decode.cut_view(data, (0.5, 1.25, 30.5, 24.0, 0), 8)),  # DCT-scaled
                  ("decode", lambda: decode.base_image(data, 16)),  # pad-and-crop (torch, memory)
                  ("decode", lambda: decode.capped_image(data, 12)),  # memory backend, RRC
                  ("decode", lambda: decode.decode_whole(data))]  # memory backend, whole
        Fake.reader.payload = staticmethod(lambda i: data)
        calls.append(("device", lambda: TorchBackend._decode_on_device(
            Fake, [torch.frombuffer(bytearray(data) or bytearray(1), dtype=torch.uint8)], torch.tensor([0]))))
        for part, call in calls:
            try:
                call()
            except (jpeg_window.WindowError, decode.DecodeError, UserError) as exc:
                refused[part] += 1
                if not _one_line(exc):
                    bad.append(f"case {n} ({kind}), {part}: a refusal of several lines: {str(exc)!r}")
            except Exception as exc:  # noqa: BLE001  (anything else is a bug)
                bad.append(f"case {n} ({kind}), {part}: {type(exc).__name__}: {str(exc)[:200]}")
    return {"cases": len(cases), "kinds": kinds, "refused": refused, "bad": bad[:20], "n_bad": len(bad),
            "growth_mb": _peak_mb() - before}


def fuzz_converter(count: int, folder: str) -> dict:
    """The mutants as an imagefolder (two classes), converted with ``--skip-corrupt``: each is converted or
    skipped and counted; without it the first undecodable one is a one-line UserError naming it."""
    from fastkd.converters.convert import ConvertOptions, convert
    from fastkd.errors import UserError

    cases = mutants(count, seed=SEED + 1)
    root = os.path.join(folder, "src")
    for n, (kind, data) in enumerate(cases):
        cls = os.path.join(root, "train", f"c{n % 2}")
        os.makedirs(cls, exist_ok=True)
        with open(os.path.join(cls, f"{n:04d}-{kind}.jpg"), "wb") as f:
            f.write(data)
    before = _peak_mb()
    bad: List[str] = []
    opts = dict(formats=("dali",), workers=1, progress=False, max_side=64)
    try:
        convert("imagefolder", root, os.path.join(folder, "strict"), ConvertOptions(**opts))
        strict = "converted"
    except UserError as exc:
        strict = str(exc)
        if not _one_line(exc) or "--skip-corrupt" not in strict:
            bad.append(f"without --skip-corrupt: {strict!r}")
    manifest = convert("imagefolder", root, os.path.join(folder, "skipping"), ConvertOptions(skip_corrupt=True, **opts))
    train = manifest["splits"]["train"]
    if train["count"] + len(train["skipped_corrupt"]) != len(cases):
        bad.append(f"{train['count']} converted + {len(train['skipped_corrupt'])} skipped != {len(cases)}")
    # the children that decoded: the pool's worker (fork: its own peak)
    import resource

    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"cases": len(cases), "converted": train["count"], "skipped": len(train["skipped_corrupt"]),
            "strict": strict, "bad": bad, "n_bad": len(bad), "growth_mb": max(_peak_mb() - before, child - before)}


def _child(part: str, count: int, folder: str = "", timeout: int = 240) -> dict:
    """Run ``part`` in a child process; its last stdout line is the JSON report."""
    result = subprocess.run([sys.executable, os.path.abspath(__file__), part, str(count), folder],
                            capture_output=True, text=True, timeout=timeout, cwd=HERE)
    assert result.returncode == 0, (f"the {part} fuzzer died with exit code {result.returncode} (a crash: "
                                    f"negative = signal): {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the tests


def test_fuzz_window_decoder_and_backend_decode_paths():
    report = _child("decoders", 1200)
    assert report["cases"] == 1200 and set(report["kinds"]) == {"truncate", "bitflip", "huge_sof", "dri", "rst",
                                                                 "length", "sos_end", "splice"}
    assert report["n_bad"] == 0, "\n".join(report["bad"])
    assert min(report["refused"].values()) > 100, report  # the mutants do reach the refusals
    assert report["growth_mb"] < MAX_GROWTH_MB, report


def test_fuzz_converter_skips_and_counts_what_does_not_decode(tmp_path):
    report = _child("converter", 160, str(tmp_path))
    assert report["n_bad"] == 0, "\n".join(report["bad"])
    assert report["skipped"] > 10 and report["converted"] > 10, report
    assert report["strict"] != "converted"
    assert report["growth_mb"] < MAX_GROWTH_MB, report


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    part, count = sys.argv[1], int(sys.argv[2])
    folder = sys.argv[3] if len(sys.argv) > 3 else ""
    out = fuzz_decoders(count) if part == "decoders" else fuzz_converter(count, folder)
    print(json.dumps(out))
