"""`vla train` as one process of a torchrun launch, watched by the 2-process tests (not a test module).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/train/ddp_worker.py [--kill-at N] ARGS

- Processes other than rank 0 must not write under the run folder (--out): an audit hook turns any
  write, rename, removal or directory creation there into an error that stops the run.
- `--kill-at N`: every process SIGKILLs itself as optimiser step N starts (a crash at a known point).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

WRITE_EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.truncate", "shutil.rmtree"}


def _guard_run_folder(out: Path, rank: int) -> None:
    root = out.resolve()

    def inside(path: object) -> bool:
        try:
            return Path(os.fsdecode(path)).resolve().is_relative_to(root)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False

    def writes(mode: object, flags: object) -> bool:
        by_mode = isinstance(mode, str) and bool(set(mode) & set("wax+"))
        return by_mode or (isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))

    def hook(event: str, args: tuple) -> None:
        if event == "open" and len(args) == 3 and writes(args[1], args[2]) and inside(args[0]):
            raise RuntimeError(f"rank {rank} opened {args[0]} for writing")
        if event in WRITE_EVENTS and args and any(inside(a) for a in args[:2] if isinstance(a, str | bytes | Path)):
            raise RuntimeError(f"rank {rank}: {event} {args[:2]} in the run folder")

    sys.addaudithook(hook)


def _kill_at(step: int) -> None:
    from vla.train import trainer

    original = trainer._train_step

    def train_step(s, micro_batches, n, tc):
        if n == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(s, micro_batches, n, tc)

    trainer._train_step = train_step


def main(argv: list[str]) -> None:
    if argv[:1] == ["--kill-at"]:
        _kill_at(int(argv[1]))
        argv = argv[2:]
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        _guard_run_folder(Path(argv[argv.index("--out") + 1]), rank)
    from vla.cli import app

    app(["train", *argv], standalone_mode=True)


if __name__ == "__main__":
    main(sys.argv[1:])
