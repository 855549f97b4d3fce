"""Training metrics: one JSON line per logged step, and TensorBoard when it is installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    def __init__(self, out_dir: Path, resume_step: int = 0, enabled: bool = True):
        self.path = out_dir / METRICS_FILE
        self.enabled = enabled
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
            self._truncate_after(resume_step)
        self._tb = _tensorboard(out_dir / "tensorboard") if enabled else None

    def _truncate_after(self, step: int) -> None:
        """A resumed run re-logs the steps after its checkpoint: drop the killed run's copies."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut off by the kill
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        tmp.replace(self.path)

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _tensorboard(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(log_dir))


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
