from __future__ import annotations

from typer.testing import CliRunner

from tests.datasets.store_helpers import write_toy_store
from vla.cli import app

runner = CliRunner()


def test_help_lists_the_command_groups():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "data" in result.output


def test_convert_help_explains_formats():
    result = runner.invoke(app, ["data", "convert", "--help"])
    assert result.exit_code == 0
    for fmt in ("lerobot", "libero", "calvin", "dp-zarr"):
        assert fmt in result.output


def test_info_and_validate_on_a_store(tmp_path):
    store = write_toy_store(tmp_path / "s.zarr", [4, 6])
    info = runner.invoke(app, ["data", "info", str(store.path)])
    assert info.exit_code == 0 and "2 episodes, 10 frames" in " ".join(info.output.split())
    as_json = runner.invoke(app, ["data", "info", "--json", str(store.path)])
    assert '"frames": 10' in as_json.output
    ok = runner.invoke(app, ["data", "validate", str(store.path)])
    assert ok.exit_code == 0 and "ok" in ok.output


def test_validate_a_non_store_exits_1(tmp_path):
    result = runner.invoke(app, ["data", "validate", str(tmp_path)])
    assert result.exit_code == 1
    assert "not a Zarr store" in result.output


def test_unknown_format_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["data", "convert", "--from", "rosbag", str(tmp_path), str(tmp_path / "o")])
    assert result.exit_code == 2


def test_eval_needs_a_policy_by_name(tmp_path):
    """No silent random policy: --policy is required, and the random one is asked for by name."""
    for bench, extra in (("libero", ["--suite", "libero_object"]), ("calvin", [])):
        result = runner.invoke(app, ["eval", bench, *extra, "--out", str(tmp_path)])
        assert result.exit_code == 2 and "--policy" in result.output, result.output
        helped = runner.invoke(app, ["eval", bench, "--help"], terminal_width=200)
        assert "'random'" in helped.output and "auto" in helped.output


def test_device_auto_everywhere():
    import torch

    from vla.policies.pretrained import resolve_device

    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu") or (
        resolve_device("auto").type == "mps"
    )
    assert resolve_device("cpu") == torch.device("cpu")
    for command in (["eval", "libero"], ["eval", "calvin"], ["deploy"], ["serve"], ["inspect", "routing"]):
        helped = runner.invoke(app, [*command, "--help"], terminal_width=200)
        text = " ".join(helped.output.split())
        assert "--device" in text and "auto" in text, command


def test_info_stays_one_row_per_key_for_wide_vectors(tmp_path):
    import dataclasses

    import numpy as np

    from tests.datasets.store_helpers import small_spec, toy_episode
    from vla.datasets.spec import KeySpec
    from vla.datasets.store import StoreWriter

    names = tuple(f"q{i}" for i in range(47))  # a flattened simulator state, as LIBERO's
    spec = dataclasses.replace(small_spec(), extra_keys={"observation.sim_state": KeySpec("float32", (47,), names)})
    writer, rng = StoreWriter(tmp_path / "wide.zarr", spec), np.random.default_rng(0)
    for i, n in enumerate([5, 7]):
        ep = toy_episode(i, n, spec, rng)
        ep.frames["observation.sim_state"] = rng.normal(size=(n, 47)).astype(np.float32)
        writer.add_episode(ep)
    store = writer.finalize()
    info = runner.invoke(app, ["data", "info", str(store.path)], terminal_width=120)
    assert info.exit_code == 0, info.output
    rows = [line for line in info.output.splitlines() if "(47,)" in line]
    assert len(rows) == 1 and rows[0].count("..") == 2  # one row: mean and std as ranges, not 47 numbers each
    assert len(info.output.splitlines()) < 25
    args = ["data", "info", str(store.path), "--dims", "observation.sim_state"]
    dims = runner.invoke(app, args, terminal_width=120)
    assert dims.exit_code == 0
    assert "q0" in dims.output and "q46" in dims.output
    assert len([line for line in dims.output.splitlines() if "│ 46 " in line]) == 1  # dimension 46, one row
    bad = runner.invoke(app, ["data", "info", str(store.path), "--dims", "nope"])
    assert bad.exit_code == 2 and "not a key" in bad.output
