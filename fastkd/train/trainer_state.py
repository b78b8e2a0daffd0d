"""What a run's checkpoint holds and how a :class:`~fastkd.train.trainer.Trainer` resumes from it (mid-epoch
positions, world sizes, the options a resume may not change)."""
from __future__ import annotations

from typing import Optional

from fastkd import __version__
from fastkd.errors import UserError
from fastkd.log import log

from . import checkpoint, distributed
from .weights_files import safetensors_bytes


class CheckpointState:
    """The checkpoint side of the Trainer (which sets every attribute used here)."""

    def _state(self, epoch: int, batch: int, meters: Optional[dict] = None) -> dict:
        """Everything a resume needs; ``batch`` batches of ``epoch`` are done by each of the ``world`` ranks
        (all of them at its end), ``samples`` samples of the epoch's global order; ``meters``: the epoch's
        metrics so far summed over the ranks (None at its end)."""
        return {
            "kind": checkpoint.KIND, "fastkd_version": __version__, "epoch": epoch, "batch": batch,
            "world": self.dist.world, "samples": batch * self.cfg.batch_size * self.dist.world,
            "meters": meters,
            "model_name": self.student.fastkd_name, "num_classes": self.data.num_classes,
            "dataset": self.data.manifest["dataset"],
            "low_res": self.train_loader.low_res, "res": self.train_loader.res,
            "mean": self.data.mean, "std": self.data.std, "classes": self.data.classes,
            "model": self.student.state_dict(), "methods": [m.state_dict() for m in self.methods],
            "optimizer": self.optimizer.state_dict(), "rng": checkpoint.rng_state(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "config": self.cfg.to_dict(), "history": self.history,
        }

    def _weights_file(self, state: dict) -> bytes:
        """model.safetensors: the student's tensors; the metadata name its architecture, classes, stem and input."""
        meta = {k: state[k] for k in ("num_classes", "res", "low_res", "mean", "std")}
        meta["fastkd_model"] = state["model_name"]
        return safetensors_bytes(state["model"], meta)

    def _resume(self) -> None:
        state = checkpoint.load(self.ckpt_path)
        if state.get("kind") != checkpoint.KIND:
            raise UserError(f"{self.ckpt_path} is not a fastkd checkpoint; use another --out")
        for what, saved, now in (("model", state["model_name"], self.student.fastkd_name),
                                 ("dataset", state.get("dataset"), self.data.manifest["dataset"]),
                                 ("class count", state["num_classes"], self.data.num_classes)):
            if saved != now:
                raise UserError(f"--resume: {self.ckpt_path} is a run of {what} {saved}, not {now}; "
                                "rerun with the original options or use another --out")
        diff = self.cfg.differs_from(state["config"])
        if diff:
            raise UserError(f"--resume with options that differ from the saved run ({', '.join(diff)}); "
                            "rerun with the original options or use another --out")
        # an older checkpoint has no "world": written by one process (the case it was accepted wrongly in)
        saved_world, mid_epoch = int(state.get("world", 1)), state["meters"] is not None
        # the same checkpoint on every rank (a rank reading a stale copy stops the job)
        distributed.agree_same([state["epoch"], state["batch"], saved_world], "checkpoints (epoch, batch, world size)",
                               self.dist)
        if mid_epoch and saved_world != self.dist.world:
            # each rank's batch k is a block of global batch k: a position counted in one world size's batches
            # is not a batch boundary of another's, and resuming it would skip or repeat samples
            done = state.get("samples", state["batch"] * self.cfg.batch_size * saved_world)
            raise UserError(f"--resume: {self.ckpt_path} was written within epoch {state['epoch'] + 1} ({done} samples "
                            f"of its order done) by {_procs(saved_world)}, and this run has {_procs(self.dist.world)}; "
                            f"resume with {_procs(saved_world)} (torchrun --nproc_per_node {saved_world}), or let "
                            "that run reach the epoch's end, whose checkpoint any number of processes resumes")
        self.student.load_state_dict(state["model"])
        for m, sd in zip(self.methods, state["methods"]):
            m.load_state_dict(sd)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])  # the loss scale and its growth counter
        # rank 0's weights, adapters and optimiser state everywhere (the DDP wrapper broadcast the weights it
        # was built with, before this load)
        distributed.broadcast_state([self.student, *self.methods], self.optimizer)
        checkpoint.set_rng_state(state["rng"])
        self.history = list(state["history"])
        if not mid_epoch:  # an epoch end
            self.start_epoch = state["epoch"] + 1
        else:  # within an epoch: continue at its next batch with its metrics so far (summed over the ranks:
            # rank 0 carries them, the others start from zero, so the epoch's all_reduce counts them once)
            self.start_epoch, self.start_batch = state["epoch"], state["batch"]
            self.meters.load_state_dict(state["meters"], carry=self.dist.main)
        if self.dist.main:
            log(f"resuming {self.cfg.out} at epoch {self.start_epoch + 1}, batch {self.start_batch + 1}")


def _procs(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"
