"""The trainer: it learns, it resumes exactly after a kill, its checkpoints load, bad input fails clearly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.train.helpers import TINY, write_reach_store
from vla.datasets.sampler import WindowConfig, WindowDataset
from vla.errors import PolicyError
from vla.policies.policy import Policy
from vla.policies.pretrained import list_checkpoints
from vla.train import TrainConfig, train
from vla.train.config import TrainError
from vla.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reach_store(tmp_path_factory):
    return write_reach_store(tmp_path_factory.mktemp("reach") / "reach.zarr")


def tiny_run(store, out: Path, **kw) -> TrainConfig:
    base = {"steps": 12, "batch_size": 8, "warmup_steps": 2, "save_every": 5, "log_every": 1, "progress": False}
    return TrainConfig(data=(str(store.path),), out=str(out), **{**base, **kw})


@pytest.mark.slow
def test_cpu_preset_learns_the_demonstrated_actions(reach_store, tmp_path):
    tc = tiny_run(reach_store, tmp_path / "run", steps=250, batch_size=32, warmup_steps=20, lr=1e-3, log_every=10)
    result = train("mode", tc, preset="cpu")
    assert result.last_loss < 0.1 * result.first_loss, (result.first_loss, result.last_loss)
    policy = Policy.from_pretrained(tmp_path / "run" / "last").eval()
    windows = WindowDataset(reach_store, WindowConfig(horizons=(policy.config.chunk_size,)))
    batch = torch.utils.data.default_collate([windows[i] for i in range(0, len(windows), 5)])
    pred = policy.predict_chunk(batch, generator=torch.Generator().manual_seed(0))
    mse = float(((pred - batch["action"]) ** 2).mean())
    # The mean action is what a policy that ignores the state would predict; the policy must do far better.
    baseline = float(((batch["action"] - batch["action"].mean((0, 1))) ** 2).mean())
    assert mse < 0.1 * baseline, (mse, baseline)


def _cli(out: Path, store, steps: int, *extra: str) -> list[str]:
    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    return [
        sys.executable, "-m", "vla", "train", "--data", str(store.path), "--out", str(out), "--steps", str(steps),
        "--batch-size", "8", "--warmup-steps", "3", "--save-every", "10", "--log-every", "1", "--lr", "1e-3",
        *sets, *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _losses(out: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(out)}


@pytest.mark.slow
def test_resume_after_kill_continues_the_same_loss_curve(reach_store, tmp_path):
    steps = 150
    ref = tmp_path / "ref"
    subprocess.run(_cli(ref, reach_store, steps), env=_env(), check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(killed, reach_store, steps), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step_000020").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = max(_losses(killed))
    assert done < steps, "the run finished before it was killed; the test proves nothing"

    resumed = subprocess.run(_cli(killed, reach_store, steps, "--resume"), env=_env(), capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    a, b = _losses(ref), _losses(killed)
    assert sorted(b) == list(range(1, steps + 1))  # no step lost, none logged twice
    for step in range(1, steps + 1):
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-7), step


def test_checkpoints_are_complete_loadable_and_pruned(reach_store, tmp_path):
    tc = tiny_run(reach_store, tmp_path / "run", steps=12, save_every=4, keep_checkpoints=2)
    result = train("mode", tc, preset="cpu", overrides=TINY)
    steps = [s for s, _ in list_checkpoints(tmp_path / "run")]
    assert steps == [8, 12] and result.checkpoint.name == "step_000012"
    assert os.readlink(tmp_path / "run" / "last") == "checkpoints/step_000012"
    assert not list((tmp_path / "run" / "checkpoints").glob("*.partial"))
    ckpt = tmp_path / "run" / "last"
    for name in (
        "config.json",
        "model.safetensors",
        "normalization.json",
        "data_spec.json",
        "train_state/trainer.json",
    ):
        assert (ckpt / name).is_file(), name
    config = json.loads((ckpt / "config.json").read_text())
    # the data contract came from the store: state only, 4-D state, 7-D action
    assert (config["camera_keys"], config["state_dim"], config["action_dim"]) == ([], 4, 7)
    policy = Policy.from_pretrained(ckpt).eval()
    windows = WindowDataset(reach_store, WindowConfig(horizons=(policy.config.chunk_size,)))
    batch = torch.utils.data.default_collate([windows[0], windows[1]])
    assert policy.predict_chunk(batch).shape == (2, policy.config.chunk_size, 7)
    # the shipped weights are the EMA average, not the raw weights kept for resuming
    from safetensors.torch import load_file

    ema, raw = load_file(str(ckpt / "model.safetensors")), load_file(str(ckpt / "train_state" / "model.safetensors"))
    assert ema.keys() == raw.keys() and any(not torch.equal(ema[k], raw[k]) for k in ema)


def test_two_stores_with_different_action_sizes_train_through_slots(reach_store, tmp_path):
    other = write_reach_store(tmp_path / "joint.zarr", episodes=4, action="joint5_gripper", embodiment="toy_b")
    tc = TrainConfig(data=(str(reach_store.path), str(other.path)), out=str(tmp_path / "run"), steps=3, batch_size=8,
                     warmup_steps=1, progress=False)  # fmt: skip
    train("mode", tc, preset="cpu", overrides=TINY)
    config = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    assert config["action_dim"] == 24 and config["state_dim"] == 24


def test_bad_input_fails_before_training_with_a_clear_message(reach_store, tmp_path):
    with pytest.raises(TrainError, match=r"reach\.zarr.*missing key 'observation\.images\.wrist'"):
        train(
            "mode",
            tiny_run(reach_store, tmp_path / "a"),
            overrides={**TINY, "camera_keys": ["observation.images.wrist"]},
        )
    with pytest.raises(TrainError, match=r"'action' has per-frame shape \(7,\), the policy needs \(5,\)"):
        train("mode", tiny_run(reach_store, tmp_path / "b"), overrides={**TINY, "action_dim": 5})
    with pytest.raises(Exception, match="not a Zarr store"):
        train("mode", TrainConfig(data=(str(tmp_path),), out=str(tmp_path / "c"), progress=False))
    with pytest.raises(TrainError, match="no training data"):
        TrainConfig(data=(), out=str(tmp_path / "d"))


def test_resume_refuses_other_settings_and_damaged_checkpoints(reach_store, tmp_path):
    out = tmp_path / "run"
    train("mode", tiny_run(reach_store, out, steps=5), overrides=TINY)
    with pytest.raises(TrainError, match="already holds a training run"):
        train("mode", tiny_run(reach_store, out, steps=5), overrides=TINY)
    with pytest.raises(TrainError, match="batch_size"):
        train("mode", tiny_run(reach_store, out, steps=8, batch_size=4), overrides=TINY, resume=True)
    (out / "last" / "train_state" / "optimizer.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TrainError, match=r"step_000005: cannot resume"):
        train("mode", tiny_run(reach_store, out, steps=8), overrides=TINY, resume=True)
    (out / "last" / "model.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(PolicyError, match=r"model\.safetensors: unreadable weights"):
        Policy.from_pretrained(out / "last")


def test_train_cli_runs_and_prints_a_summary(reach_store, tmp_path):
    from typer.testing import CliRunner

    from vla.cli import app

    args = _cli(tmp_path / "run", reach_store, 4)[3:]  # drop "python -m vla"
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "loss first -> last" in result.output and "samples/s" in result.output
    assert (tmp_path / "run" / "checkpoints" / "step_000004" / "model.safetensors").is_file()
    help_text = CliRunner().invoke(app, ["train", "--help"]).output
    assert "--resume" in help_text and "--data" in help_text


def test_loader_workers_never_fork_the_training_process_and_give_the_same_losses(reach_store, tmp_path, monkeypatch):
    """By the time workers start, zarr's event loop and torch's pools run threads, and a forked child can
    inherit a held lock: workers must come from a forkserver/spawn, never os.fork() of this process. Their
    batches (so the losses) equal loading in the main process."""

    def no_fork() -> int:
        raise AssertionError("os.fork() of the multi-threaded training process")

    monkeypatch.setattr(os, "fork", no_fork)
    train("mode", tiny_run(reach_store, tmp_path / "workers", steps=4, num_workers=2), preset="cpu")
    monkeypatch.undo()
    train("mode", tiny_run(reach_store, tmp_path / "main", steps=4, num_workers=0), preset="cpu")
    assert _losses(tmp_path / "workers") == _losses(tmp_path / "main")


def test_config_file_sets_every_field_and_flags_override_it(reach_store, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from vla.cli import app

    out = tmp_path / "from_file"
    settings = {
        "data": [str(reach_store.path)], "out": str(out), "steps": 3, "batch_size": 8, "warmup_steps": 1,
        "lr": 5e-4, "betas": [0.8, 0.9], "weight_decay": 0.01, "min_lr_ratio": 0.1, "keep_checkpoints": 1,
        "save_every": 1, "log_every": 1, "progress": False, "policy": "mode", "preset": "cpu", "overrides": TINY,
    }  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(settings))
    result = CliRunner().invoke(app, ["train", "--config", str(path), "--lr", "1e-3"])  # the flag wins
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["lr"] == 1e-3 and saved["betas"] == [0.8, 0.9] and saved["weight_decay"] == 0.01
    assert saved["min_lr_ratio"] == 0.1 and saved["keep_checkpoints"] == 1 and saved["steps"] == 3
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000003"]  # keep_checkpoints: 1
    assert json.loads((out / "last" / "config.json").read_text())["width"] == TINY["width"]

    path.write_text(yaml.safe_dump({**settings, "lerning_rate": 1.0}))
    bad = CliRunner().invoke(app, ["train", "--config", str(path)])
    assert isinstance(bad.exception, TrainError) and "unknown key 'lerning_rate'" in str(bad.exception)
