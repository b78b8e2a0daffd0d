"""`fastkd bench kd` on a tiny generated conversion: every row, the cache's bytes per view from its own layout, the
cache really filled with that many rows, the projection, and one-line errors for bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fastkd.bench.kd import ROWS
from fastkd.cache.store import TeacherCache
from run_tools import fastkd_cli

N, EPOCHS, PLANNED, K = 32, 2, 5, 2


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """N random 40 px JPEGs in 10 classes, converted (train split only)."""
    from PIL import Image

    from fastkd.converters.convert import ConvertOptions, convert

    root, rng = tmp_path_factory.mktemp("kd_photos"), np.random.default_rng(0)
    for i in range(N):
        folder = root / "src" / f"c{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    convert("imagefolder", str(root / "src"), str(root / "data"), ConvertOptions(formats=("dali",), progress=False))
    return str(root / "data")


@pytest.fixture
def one_thread():
    """The bench trains six networks: on a shared 2-core machine, two torch threads each oversubscribe it badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _overhead() -> int:
    """Bytes per row of a signal's files other than its values, read from the cache's own file layout."""
    files = TeacherCache._paths("/c", 0, "logits", {"shape": [10], "dtype": "float16", "topk": 0})
    return sum(np.dtype(d).itemsize * math.prod(s) for sfx, (_, d, s) in files.items() if sfx != "values")


def test_bench_kd_rows_storage_and_projection(photos, tmp_path, one_thread):
    out = tmp_path / "res" / "kd.json"
    code, err = fastkd_cli("bench", "kd", "--teacher", "resnet32", "--student", "shufflenet_v2_x0_5", "--data", photos,
                           "--res", "32", "--epochs", str(EPOCHS), "--batch-size", "16", "--workers", "0", "--device",
                           "cpu", "--cache-topk", str(K), "--epochs-planned", str(PLANNED), "--out", str(out))
    assert code == 0, err
    assert all(f"] {row}:" in err for row in ROWS + ("plain",))  # one progress line per row
    doc = json.loads(out.read_text())
    assert not list(out.parent.glob("*.tmp*")) and doc["machine"]["cpu_count"] >= 1
    (r,) = doc["rows"]
    classes = r["num_classes"]
    assert r["n_train"] == N and r["epochs_planned"] == PLANNED and r["random_teacher"] and classes == 10
    assert set(r["images_per_s"]) == set(ROWS) | {"plain"} and all(v > 0 for v in r["images_per_s"].values())
    rate = r["images_per_s"]
    assert r["cached_vs_student"] == pytest.approx(rate["kd_cached"] / rate["student"], rel=0.01)
    assert "random-init teacher" in doc["table"] and f"cache for {PLANNED} epochs" in doc["table"]

    st, extra = r["storage"], _overhead()
    assert st["float32"]["bytes_per_view"] == 4 * classes + extra
    assert st["float16"]["bytes_per_view"] - extra == (st["float32"]["bytes_per_view"] - extra) // 2
    assert st[f"top{K}"]["topk"] == K and st[f"top{K}"]["bytes_per_view"] < st["float16"]["bytes_per_view"]
    for s in st.values():
        assert s["total_bytes"] == s["bytes_per_view"] * N * PLANNED

    # the kd_fill run really wrote one float16 row per image and epoch, as many bytes per view as predicted
    m = r["cache_measured"]
    assert m["storage"] == {"dtype": "float16", "topk": 0} and m["bytes_per_view"] == st["float16"]["bytes_per_view"]
    assert m["rows_written"] == {"logits": N * EPOCHS} and m["views"] == N * EPOCHS
    assert 0 <= m["bytes_on_disk"] - m["bytes_per_view"] * N * EPOCHS < 8192  # + .npy headers and cache.json

    h = r["hours"]
    assert h["saved_per_cached_run_h"] == pytest.approx(
        PLANNED * N * (1 / rate["kd_online"] - 1 / rate["kd_cached"]) / 3600, rel=0.01, abs=1e-9)
    assert h["fill_overhead_h"] == pytest.approx(h["fill_h"] - h["online_h"])
    assert h["saved_fill_plus_one_h"] == pytest.approx(h["saved_per_cached_run_h"] - h["fill_overhead_h"])


@pytest.mark.parametrize("args, message", [
    (["--teacher", "resnet32", "--student", "no_such_net"], "--student no_such_net"),
    (["--teacher", "resnet32", "--student", "shufflenet_v2_x0_5", "--data", "{tmp}/missing"], "does not exist"),
    (["--teacher", "resnet32", "--student", "shufflenet_v2_x0_5", "--data", "{tmp}"], "not a fastkd conversion"),
    (["--teacher", "resnet32", "--student", "shufflenet_v2_x0_5", "--data", "{photos}", "--photos", "16"],
     "one of them"),
    (["--teacher", "resnet32", "--teacher-weights", "{tmp}/none.pt", "--student", "resnet32"], "do not exist"),
    (["--teacher", "resnet32", "--teacher-weights", "{wrong}", "--student", "resnet32"], "the teacher resnet32"),
    (["--teacher", "resnet32", "--student", "torchvision:squeezenet1_0", "--res", "16"], "cannot take 16 px images"),
])
def test_bench_kd_bad_input_is_one_line(photos, tmp_path, args, message):
    from fastkd.models import create_model

    wrong = tmp_path / "shufflenet.pt"  # weights of another architecture than --teacher
    torch.save(create_model("shufflenet_v2_x0_5", 10, True).state_dict(), wrong)
    args = [a.format(tmp=tmp_path, photos=photos, wrong=wrong) for a in args]
    args += [] if "--data" in args or "--photos" in args else ["--data", photos]
    args += [] if "--res" in args else ["--res", "32"]
    code, err = fastkd_cli("bench", "kd", *args, "--out", str(tmp_path / "kd.json"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "kd.json").exists()
