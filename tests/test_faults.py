"""Training survives faults: a real `fastkd train` killed (SIGKILL) at random moments, during checkpoint
writes included, resumes to exactly the uninterrupted run's weights and metrics; SIGTERM checkpoints and
prints the resume command; a NaN stops the run keeping the last good checkpoint."""
from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastkd.errors import UserError
from fastkd.train import checkpoint
from fastkd.train.config import TrainConfig
from fastkd.train.trainer import train

# 320 ORL training images / 32 = 10 steps per epoch, 2 epochs; one process thread count for every run; 16 px (the
# kills, checkpoints and resumptions do not depend on the pixel count; a quarter of the compute of 32)
RUN = ["--model", "resnet32", "--res", "16", "--epochs", "2", "--batch-size", "32", "--lr", "0.05", "--workers", "0",
       "--device", "cpu", "--quiet"]
TIMING = ("train_seconds", "train_images_per_s")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread count for every run, and no spinning on a busy machine


def _cmd(data, out, backend, *extra):
    return [sys.executable, "-m", "fastkd", "train", "--data", data, "--out", str(out), "--backend", backend,
            *RUN, *extra]


def _result(out):
    """Final weights and the metrics rows less their timings."""
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    return (checkpoint.load(str(out / "checkpoint.pt"))["model"],
            [{k: v for k, v in r.items() if k not in TIMING} for r in rows])


def _assert_same(a, b):
    (wa, ra), (wb, rb) = a, b
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert ra == rb


@pytest.fixture(scope="module")
def references(orl_data, tmp_path_factory):
    """Uninterrupted runs: ce on the memory backend, then kd (teacher: that ce run) on the torch backend."""
    root = tmp_path_factory.mktemp("ref")
    subprocess.run(_cmd(orl_data, root / "ce", "memory"), check=True, capture_output=True, env=ENV)
    teacher = str(root / "ce" / "checkpoint.pt")
    subprocess.run(_cmd(orl_data, root / "kd", "torch", "--method", "kd", "--teacher-weights", teacher),
                   check=True, capture_output=True, env=ENV)
    return {"ce": (root / "ce", ()), "kd": (root / "kd", ("--method", "kd", "--teacher-weights", teacher))}


def _checkpoint_writes(path) -> int:
    """Identity of the current checkpoint file (each atomic replace gives a new inode); -1 while absent."""
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return -1


@pytest.mark.parametrize("method,backend", [("ce", "memory"), ("kd", "torch")])
def test_sigkill_at_random_moments_resumes_exactly(orl_data, references, tmp_path, method, backend):
    """A checkpoint after every step (--checkpoint-every 1e-9 minutes), so kills land before the first one,
    between steps and inside checkpoint writes; every start passes --resume (the first one on an empty
    folder, which starts the run)."""
    ref_dir, extra = references[method]
    cmd = _cmd(orl_data, tmp_path / "run", backend, *extra, "--checkpoint-every", "1e-9", "--resume")
    rng, killed = random.Random(f"{method}-{backend}"), 0
    for _ in range(2):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        writes, last, wanted = 0, _checkpoint_writes(tmp_path / "run" / "checkpoint.pt"), rng.randrange(0, 12)
        while proc.poll() is None and writes < wanted:
            time.sleep(0.002)
            now = _checkpoint_writes(tmp_path / "run" / "checkpoint.pt")
            writes, last = writes + (now != last), now
        time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
    assert killed >= 1  # a kill hit a live process (a run takes seconds; the second may find it done)
    subprocess.run(cmd, check=True, capture_output=True, env=ENV)
    _assert_same(_result(tmp_path / "run"), _result(ref_dir))


def test_sigterm_checkpoints_and_prints_how_to_resume(orl_data, references, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(orl_data, out, "memory", "--checkpoint-every", "0", "--resume"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    while proc.poll() is None and not (out / "checkpoint.pt").exists():  # the first epoch's end
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate()[1]
    assert "holds no checkpoint yet; starting the run from the beginning" in err
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err
    state = checkpoint.load(str(out / "checkpoint.pt"))
    # at the next step of the second epoch, or right at the first epoch's end when the signal came while that
    # epoch was closing (after its checkpoint, before the check that follows it): both are where a run stops
    at = (state["epoch"], state["batch"])
    assert at == (0, 10) or (at[0] == 1 and 1 <= at[1] < 10), at
    resume = err.split("resume with: ", 1)[1].splitlines()[0]
    args = shlex.split(resume)
    assert args[:2] == ["fastkd", "train"] and args.count("--resume") == 1
    subprocess.run([sys.executable, "-m", "fastkd", *args[1:]], check=True, capture_output=True, env=ENV)
    _assert_same(_result(out), _result(references["ce"][0]))


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(orl_data, tmp_path):
    cfg = TrainConfig(data=orl_data, out=str(tmp_path / "nan"), student="resnet32", res=16, epochs=3, batch_size=32,
                      lr=1e6, backend="memory", workers=0, device="cpu", progress=False, checkpoint_every=1e-9)
    with pytest.raises(UserError, match=r"non-finite .* in epoch 1 by batch \d+; lower --lr .* last good checkpoint"):
        train(cfg)
    state = checkpoint.load(str(tmp_path / "nan" / "checkpoint.pt"))
    assert state["epoch"] == 0 and state["batch"] >= 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert bool(state["meters"]["finite"])
