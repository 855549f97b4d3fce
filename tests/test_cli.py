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
