"""Running ``fastkd`` as a user does, and the one-line error a user's mistake must give."""
from __future__ import annotations

import os
import subprocess
import sys

FASTKD = [sys.executable, "-m", "fastkd"]


def run_cli(*args, env=None):
    return subprocess.run(FASTKD + list(args), capture_output=True, text=True, timeout=300,
                          env=None if env is None else {**os.environ, **env})


def assert_one_line_error(result, *fragments):
    """Exit code 2 and one stderr line, ``fastkd: error: ...``, holding every fragment."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastkd: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
