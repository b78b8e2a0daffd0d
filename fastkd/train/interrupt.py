"""SIGTERM and SIGINT (what schedulers and people send) during training: noted, not obeyed at once.

The loop checks :attr:`StopSignals.signum` after each step, writes a checkpoint and exits with
``128 + signum`` (143 for SIGTERM, 130 for SIGINT) and the command that resumes. A second signal
stops at once (KeyboardInterrupt), leaving the previous checkpoint.
"""
from __future__ import annotations

import shlex
import signal
import sys
import threading


class StopSignals:
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = 0
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # Python only handles signals there
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def resume_command(world: int) -> str:
    """How to continue: this command line with ``--resume`` (under torchrun, its own command)."""
    args = sys.argv[1:]
    if world > 1 or not args or args[0] != "train":
        return "rerun the same command with --resume"
    return "resume with: fastkd " + shlex.join(args + ([] if "--resume" in args else ["--resume"]))
