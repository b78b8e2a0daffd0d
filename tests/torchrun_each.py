"""Launched by torchrun (torchrun_tools.torchrun_each): ``python torchrun_each.py LOGDIR`` runs each fastkd command
of LOGDIR/runs.json ({name: args}) in turn on this rank, its stdout and stderr (file descriptors 1 and 2, so
every writer is caught) in LOGDIR/NAME.rankR.out and .err and its exit code in NAME.rankR.code. A command that
fails ends this rank with its code, so torchrun stops the others rather than leaving them in a collective."""
import json
import os
import sys

from fastkd.cli import main


def run(args, base: str) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    code = 0
    with open(base + ".out", "w") as out, open(base + ".err", "w") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
    with open(base + ".code", "w") as f:
        f.write(str(code))
    return code


if __name__ == "__main__":
    logdir = sys.argv[1]
    rank = os.environ.get("RANK", "0")
    with open(os.path.join(logdir, "runs.json")) as f:
        runs = json.load(f)
    for name, args in runs.items():
        code = run(args, os.path.join(logdir, f"{name}.rank{rank}"))
        if code != 0:
            sys.exit(code)
