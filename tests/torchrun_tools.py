"""Running ``python -m torch.distributed.run`` (torchrun) on the CPU from a test."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

#: the script :func:`torchrun_each` launches: it runs the listed fastkd commands one after another on every rank
EACH = Path(__file__).with_name("torchrun_each.py")


def torchrun(nproc, *args, extra=(), env=None):
    """``torchrun --standalone --nproc_per_node NPROC [extra] ARGS``: the finished process (output captured)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *extra,
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


@dataclass
class Run:
    """One fastkd command of a :func:`torchrun_each` launch, as :func:`torchrun`'s result would give it."""

    returncode: int  #: the first non-zero exit code of the ranks, 0 when every rank succeeded; -1: it never ran
    stdout: str  #: every rank's stdout of this command, rank 0's first
    stderr: str  #: every rank's stderr of this command, then (when it did not succeed) the launch's own stderr


def torchrun_each(nproc: int, runs: Dict[str, List[str]], logdir, env=None) -> Dict[str, Run]:
    """``fastkd ARGS`` for each ``name: ARGS`` of ``runs``, in order, in ONE torchrun launch of ``nproc`` ranks:
    torchrun's start (interpreter, imports, rendezvous: seconds per launch) is paid once, and the process group is
    set up by the first command and reused by the next (fastkd.train.distributed.init). A command that fails on a
    rank ends the launch there (torchrun stops the other ranks), so the later ones report returncode -1. Each
    command's output per rank is in ``logdir`` (NAME.rankR.out/.err/.code)."""
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    (logdir / "runs.json").write_text(json.dumps(runs))
    launch = torchrun(nproc, str(EACH), str(logdir), env={"FASTKD_DIST_TIMEOUT": "300", **(env or {})})
    results = {}
    for name in runs:
        files = [{kind: logdir / f"{name}.rank{rank}.{kind}" for kind in ("out", "err", "code")} for rank in range(nproc)]
        codes = [int(f["code"].read_text()) if f["code"].exists() else -1 for f in files]
        code = next((c for c in codes if c != 0), 0)
        read = lambda path: path.read_text() if path.exists() else ""  # noqa: E731
        stderr = "".join(read(f["err"]) for f in files)
        if code != 0:
            stderr += f"\n[torchrun launch: exit code {launch.returncode}]\n{launch.stderr}"
        results[name] = Run(code, "".join(read(f["out"]) for f in files), stderr)
    return results
