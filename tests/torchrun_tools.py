"""Running ``python -m torch.distributed.run`` (torchrun) on the CPU from a test."""
from __future__ import annotations

import os
import subprocess
import sys


def torchrun(nproc, *args, extra=(), env=None):
    """``torchrun --standalone --nproc_per_node NPROC [extra] ARGS``: the finished process (output captured)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *extra,
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
