"""benchmarks/gpu_check.sh --cpu: the GPU decoding paths' CPU equivalents agree with the PIL path, and the
script prints loader and training throughput (what it does on a CUDA machine, minus the GPU)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_cpu_part(tmp_path):
    pytest.importorskip("nvidia.dali")
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--cpu", "--out", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=900)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr[-2000:]
    for path in ("torch, decode_jpeg on cpu", "dali cpu", "memory on cpu"):
        assert sum(line.startswith(path) and line.endswith("ok") for line in out.splitlines()) == 2, out  # train, eval
    assert "decode-only (PIL, full)" in out and "training (shufflenet_v2_x0_5" in out and "img/s" in out
    assert (tmp_path / "gpu_check_loader.json").is_file()
    assert "one pass (2 cells, cpu):" in out and (tmp_path / "gpu_check_one_pass.json").is_file()
    methods = __import__("json").loads((tmp_path / "gpu_check_methods.json").read_text())
    assert [r["method"] for r in methods["rows"]] == ["ce", "kd", "rkd"] and methods["table"] in out
    assert out.rstrip().endswith("gpu_check: all paths agree")


def test_gpu_check_refuses_without_a_gpu():
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is here")
    result = subprocess.run([sys.executable, "-m", "fastkd.bench.gpu_check"], capture_output=True, text=True)
    assert result.returncode == 2 and "--cpu" in result.stderr
