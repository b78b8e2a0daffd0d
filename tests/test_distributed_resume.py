"""torchrun resume is exact or refused (issue 19): the checkpoint records the world size and the global
position in the epoch; a mid-epoch checkpoint is refused under another world size (an epoch-end one resumes
under any); ranks agree that the checkpoint exists before reading it; rank 0's weights reach every rank; on
SIGTERM every rank waits for rank 0's checkpoint; a rank that stops answering ends the job with a message
(FASTKD_DIST_TIMEOUT); `fastkd cache build` under torchrun shares the fill between the ranks.

ORL faces (320 training images), resnet32 at 16 px, 2 ranks on the CPU (gloo)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from fastkd.errors import UserError
from fastkd.models import create_model
from fastkd.train import checkpoint, distributed
from fastkd.train.config import TrainConfig
from fastkd.train.trainer import train


# 32 per rank: 2 ranks take 5 global batches of 64 per epoch; one process with batch 32 takes 10
CFG = dict(student="resnet32", res=16, epochs=2, batch_size=32, lr=0.01, workers=0, device="cpu", progress=False,
           backend="memory", seed=3)
TIMING = ("train_seconds", "train_images_per_s")


def _args(data, out, **over):
    cfg = {**CFG, **over}
    args = ["train", "--data", data, "--out", str(out), "--quiet", "--model", cfg.pop("student")]
    cfg.pop("progress")
    for key, value in cfg.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return args


def _script(tmp_path, name, body):
    """A wrapper around `fastkd`: ``body`` patches fastkd (RANK is this process's rank), then the CLI runs."""
    path = tmp_path / f"{name}.py"
    path.write_text("import os, sys, time, signal\nRANK = int(os.environ.get('RANK', '0'))\n" + body
                    + "\nfrom fastkd.cli import main\nmain(sys.argv[1:])\n")
    return str(path)


def _run2(*args, timeout=240, env=None):
    """torchrun with 2 ranks; a hang past ``timeout`` seconds fails the test and kills torchrun and its ranks."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun still running after {timeout} s: {err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _errors(stderr):
    return [line for line in stderr.splitlines() if line.startswith("fastkd: error:")]


def _metrics(out):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in open(out / "metrics.jsonl")]


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def one_process_checkpoints(orl_data, tmp_path_factory):
    """Copies of a 1-process run's folder ``run`` (its --out is part of the run's options): after 4 of epoch 1's
    10 batches (mid) and at epoch 1's end (end); :func:`_restore` puts one back in place."""
    root = tmp_path_factory.mktemp("one")
    run = root / "run"
    real = checkpoint.save_atomic

    def save(path, state):
        real(path, state)
        if state["epoch"] == 0 and state["batch"] in (4, 10):
            shutil.copytree(run, root / ("mid" if state["batch"] == 4 else "end"))
            if state["batch"] == 10:
                raise _Stop

    checkpoint.save_atomic = save
    try:
        with pytest.raises(_Stop):
            train(TrainConfig(data=orl_data, out=str(run), checkpoint_every=1e-9, **CFG))
    finally:
        checkpoint.save_atomic = real
    return root


def _restore(root, which):
    shutil.rmtree(root / "run", ignore_errors=True)
    shutil.copytree(root / which, root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def two_rank_epoch_2(one_process_checkpoints):
    """The epoch-end checkpoint resumed by 2 ranks: epoch 2 uninterrupted. (stderr, a copy of the finished run)"""
    out = _restore(one_process_checkpoints, "end")
    result = _run2("-m", "fastkd", *_args(_data(out), out), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.copytree(out, one_process_checkpoints / "ref")
    return result.stderr, one_process_checkpoints / "ref"


def _data(out):
    return json.load(open(out / "config.json"))["data"]


def test_mid_epoch_checkpoint_is_refused_under_another_world_size_and_an_epoch_end_one_resumes(
        orl_data, one_process_checkpoints, two_rank_epoch_2):
    mid = checkpoint.load(str(one_process_checkpoints / "mid" / "checkpoint.pt"))
    end = checkpoint.load(str(one_process_checkpoints / "end" / "checkpoint.pt"))
    assert (mid["world"], mid["batch"], mid["samples"]) == (1, 4, 128)  # 4 batches of 32 of the global order
    assert (end["world"], end["batch"], end["samples"], end["meters"]) == (1, 10, 320, None)

    out = _restore(one_process_checkpoints, "mid")
    result = _run2("-m", "fastkd", *_args(orl_data, out), "--resume")
    assert result.returncode != 0 and _errors(result.stderr), result.stderr[-3000:]
    message = ("--resume: " + str(out / "checkpoint.pt") + " was written within epoch 1 (128 samples of its order "
               "done) by 1 process, and this run has 2 processes; resume with 1 process (torchrun --nproc_per_node "
               "1), or let that run reach the epoch's end, whose checkpoint any number of processes resumes")
    assert result.stderr.count(message) == 2, result.stderr[-3000:]  # each rank stops with that one line
    assert not (out / "metrics.jsonl").exists()  # nothing trained
    assert torch.equal(checkpoint.load(str(out / "checkpoint.pt"))["model"]["fc.weight"], mid["model"]["fc.weight"])

    stderr, ref = two_rank_epoch_2  # the epoch-end checkpoint under 2 ranks: accepted, epoch 2 trained
    assert "at epoch 2, batch 1" in stderr
    state = checkpoint.load(str(ref / "checkpoint.pt"))
    assert (state["epoch"], state["batch"], state["world"], state["samples"]) == (1, 5, 2, 320)
    assert [r["epoch"] for r in _metrics(ref)] == [1, 2]


def test_a_rank_that_cannot_see_the_checkpoint_stops_every_rank(orl_data, one_process_checkpoints, tmp_path):
    """Rank 0 and rank 1 run in folders of their own (a filesystem the ranks do not share): rank 0's --out
    holds the checkpoint, rank 1's does not. Every rank stops before training, with one line."""
    out = _restore(one_process_checkpoints, "end")  # rank 0's folder
    state = checkpoint.load(str(out / "checkpoint.pt"))
    state["config"]["out"] = "run"  # the --out both ranks are given, so that rank 0 alone could resume
    checkpoint.save_atomic(str(out / "checkpoint.pt"), state)
    (tmp_path / "rank1").mkdir()
    # the same --out for both: rank 1 runs in a folder of its own where that path is empty
    script = _script(tmp_path, "own_folder", f"os.chdir({str(one_process_checkpoints)!r} if RANK == 0 else {str(tmp_path / 'rank1')!r})")
    result = _run2(script, *_args(orl_data, "run"), "--resume", timeout=120, env={"FASTKD_DIST_TIMEOUT": "30"})
    assert result.returncode != 0 and _errors(result.stderr), result.stderr[-3000:]
    message = ("rank(s) 0 see run/checkpoint.pt but rank(s) 1 do not: every rank must see the same --out; put it on "
               "a filesystem all ranks share")
    assert result.stderr.count(message) == 2, result.stderr[-3000:]
    assert not (tmp_path / "rank1" / "run").exists() or not os.listdir(tmp_path / "rank1" / "run")
    assert not (out / "summary.json").exists() and not (out / "metrics.jsonl").exists()


def test_sigterm_waits_for_rank0s_checkpoint_and_the_resume_is_exact(orl_data, one_process_checkpoints,
                                                                      two_rank_epoch_2, tmp_path):
    """Both ranks get SIGTERM after their first step of epoch 2 (as a scheduler signals every process) and
    rank 0's checkpoint write is slow: rank 1 must wait for it, for its exit makes torchrun SIGTERM rank 0
    again (a second signal stops at once). The 2-rank resume of that mid-epoch checkpoint (rank 1 reading
    perturbed weights, as from a stale copy) ends with the uninterrupted 2-rank run's weights and metrics:
    rank 0's weights are broadcast, and the partial epoch's metrics are counted once."""
    _, ref = two_rank_epoch_2
    out = _restore(one_process_checkpoints, "end")
    stop = _script(tmp_path, "stop", """
from fastkd.train import checkpoint, trainer
real_save, real_step = checkpoint.save_atomic, trainer.Trainer._step
def slow_save(path, state):
    time.sleep(2.0)
    real_save(path, state)
def step(self, *a, **k):
    result = real_step(self, *a, **k)
    if not getattr(self, '_signalled', False):
        self._signalled = True
        os.kill(os.getpid(), signal.SIGTERM)
    return result
checkpoint.save_atomic, trainer.Trainer._step = slow_save, step
""")
    result = _run2(stop, *_args(orl_data, out), "--resume")
    assert result.returncode != 0
    assert "stopped by SIGTERM at epoch 2, batch 2" in result.stderr, result.stderr[-3000:]
    state = checkpoint.load(str(out / "checkpoint.pt"))
    assert (state["epoch"], state["batch"], state["world"], state["samples"]) == (1, 2, 2, 128)
    assert state["meters"]["seen"] == 128  # both ranks' samples so far, summed

    stale = _script(tmp_path, "stale", """
from fastkd.train import checkpoint
real_load = checkpoint.load
def load(path):
    state = real_load(path)
    if RANK == 1:
        state['model'] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state['model'].items()}
    return state
checkpoint.load = load
""")
    result = _run2(stale, *_args(orl_data, out), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "at epoch 2, batch 3" in result.stderr
    a, b = _metrics(ref), _metrics(out)
    assert len(a) == len(b) == 2 and a[0] == b[0] and a[1].keys() == b[1].keys()
    for key in a[1]:
        assert b[1][key] == pytest.approx(a[1][key], rel=1e-9, abs=1e-9), key  # float64 sums in another order
    wa, wb = (checkpoint.load(str(d / "checkpoint.pt"))["model"] for d in (ref, out))
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])][:5]


def test_a_rank_that_stops_answering_ends_the_job_with_a_message(orl_data, tmp_path):
    hang = _script(tmp_path, "hang", """
from fastkd.train import trainer
real_step = trainer.Trainer._step
def step(self, *a, **k):
    if RANK == 1 and getattr(self, '_steps', 0) == 1:
        while not self.stop.signum:  # alive but silent (a stuck rank), until torchrun stops it
            time.sleep(0.05)
        os._exit(143)
    self._steps = getattr(self, '_steps', 0) + 1
    return real_step(self, *a, **k)
trainer.Trainer._step = step
""")
    started = time.time()
    result = _run2(hang, *_args(orl_data, tmp_path / "run", epochs=1, checkpoint_every=0), timeout=150,
                   env={"FASTKD_DIST_TIMEOUT": "3"})
    assert result.returncode != 0
    assert time.time() - started < 100
    errors = _errors(result.stderr)
    assert len(errors) == 1 and "rank 0 lost contact with another rank" in errors[0], result.stderr[-3000:]
    assert "FASTKD_DIST_TIMEOUT=3 s" in errors[0]


def test_process_group_timeout_setting(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout_seconds() == 1800
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "12.5")
    assert distributed.timeout_seconds() == 12.5
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(UserError, match="FASTKD_DIST_TIMEOUT=.* is not a number of seconds > 0"):
            distributed.timeout_seconds()


def _cache_arrays(root):
    return {os.path.relpath(os.path.join(d, f), root): np.load(os.path.join(d, f))
            for d, _, files in os.walk(root) for f in files if f.endswith(".npy")}


def test_two_rank_cache_build_shares_the_fill_and_writes_the_one_rank_cache(orl_data, tmp_path):
    from fastkd.cli import main

    torch.manual_seed(0)
    weights = tmp_path / "teacher.pt"
    torch.save(create_model("resnet32", 40, True).state_dict(), weights)
    build = ["cache", "build", "--teacher-weights", str(weights), "--teacher", "resnet32", "--data", orl_data,
             "--method", "kd+at", "--epochs", "2", "--res", "16", "--workers", "0", "--device", "cpu", "--quiet",
             "--batch-size", "64", "--cache-dtype", "float32", "--erasing", "0.5"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the torchrun ranks' thread count (OMP_NUM_THREADS=1)
    try:
        main([*build, "--out", str(tmp_path / "one")])
    finally:
        torch.set_num_threads(threads)
    counting = _script(tmp_path, "count", """
import atexit
from fastkd.train import teacher
real_call, rows = teacher.TeacherSource.__call__, []
def call(self, images, batch):
    rows.extend(batch.index.tolist())
    return real_call(self, images, batch)
teacher.TeacherSource.__call__ = call
atexit.register(lambda: print(f'rank {RANK} ran the teacher on {len(rows)} views', file=sys.stderr, flush=True))
""")
    result = _run2(counting, *build, "--out", str(tmp_path / "two"), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("teacher cache ") == 1 and "2/2 epochs filled (320 views each)" in result.stdout
    # 320 views per epoch, dealt in blocks of 64: rank 0 takes 3 blocks (192 views), rank 1 two (128)
    assert "rank 0 ran the teacher on 384 views" in result.stderr and "rank 1 ran the teacher on 256 views" in result.stderr
    one, two = _cache_arrays(tmp_path / "one"), _cache_arrays(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) >= 2 * 2 * 3  # epochs x signals x (values, crc, written)
    for name in one:
        assert np.array_equal(one[name], two[name]), name
    meta = [json.load(open(tmp_path / d / "cache.json")) for d in ("one", "two")]
    assert meta[0] == meta[1]
