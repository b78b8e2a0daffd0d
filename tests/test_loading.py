"""No input runs code: every file a user names is loaded weights-only; a checkpoint of another run is
refused on --resume naming the difference."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from fastkd.cli import main
from fastkd.errors import UserError
from fastkd.train import checkpoint
from fastkd.train.config import TrainConfig
from fastkd.train.trainer import Trainer


class Payload:
    """Unpickling this calls os.system("touch MARKER")."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _fail(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    assert err.count("fastkd: error:") == 1 and err.splitlines()[-1].startswith("fastkd: error:"), err
    return err.splitlines()[-1]


def test_pickle_payload_is_refused_without_running(orl_data, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    torch.save({"model": Payload(marker)}, evil)
    base = ["train", "--data", orl_data, "--model", "resnet32", "--res", "32", "--epochs", "1", "--backend", "memory",
            "--workers", "0", "--quiet"]
    uses = {
        "teacher": base + ["--out", str(tmp_path / "t"), "--method", "kd", "--teacher-weights", str(evil)],
        "pretrained": base + ["--out", str(tmp_path / "p"), "--pretrained", str(evil)],
        "eval": ["eval", "--data", orl_data, "--checkpoint", str(evil), "--workers", "0"],
    }
    os.makedirs(tmp_path / "r")
    shutil.copy(evil, tmp_path / "r" / "checkpoint.pt")
    uses["resume"] = base + ["--out", str(tmp_path / "r"), "--resume"]
    for use, argv in uses.items():
        err = _fail(capsys, argv)
        assert "holds Python objects besides tensors" in err, (use, err)
        assert not marker.exists(), use


def test_resume_refuses_a_checkpoint_of_another_model_or_dataset(orl_data, tmp_path):
    cfg = TrainConfig(data=orl_data, out=str(tmp_path / "run"), student="resnet32", res=32, epochs=1, batch_size=64,
                      backend="memory", workers=0, progress=False)
    trainer = Trainer(cfg)  # its checkpoint as at the end of epoch 1 (no need to train for it)
    os.makedirs(cfg.out)
    checkpoint.save_atomic(trainer.ckpt_path, trainer._state(0, len(trainer.train_loader)))
    trainer.close()
    with pytest.raises(UserError, match="is a run of model resnet32, not shufflenet_v2_x0_5"):
        Trainer(TrainConfig(**{**cfg.to_dict(), "student": "shufflenet_v2_x0_5"}), resume=True)
    other = tmp_path / "other"
    shutil.copytree(orl_data, other)
    manifest = json.load(open(other / "manifest.json"))
    manifest["dataset"] = "another"
    json.dump(manifest, open(other / "manifest.json", "w"))
    with pytest.raises(UserError, match="is a run of dataset orl_faces, not another"):
        Trainer(TrainConfig(**{**cfg.to_dict(), "data": str(other)}), resume=True)
