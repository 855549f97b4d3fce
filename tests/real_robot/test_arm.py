from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vla.real_robot.arm import ArmFileError, load_arm, save_arm


@pytest.mark.parametrize("name", ["so101", "koch", "fr3"])
def test_builtin_arms_load(name: str) -> None:
    spec = load_arm(name)
    assert spec.dof in (6, 7)
    assert np.all(spec.low < spec.high)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_arm_file_round_trip(tmp_path: Path, suffix: str) -> None:
    spec = load_arm("fr3")
    path = save_arm(spec, tmp_path / f"arm{suffix}")
    assert load_arm(path) == spec


def test_bad_arm_files_name_the_problem(tmp_path: Path) -> None:
    spec = load_arm("so101").to_dict()
    spec["joints"][0]["low"] = 5.0
    bad = tmp_path / "bad.yaml"
    save_arm(load_arm("so101"), bad)
    bad.write_text(bad.read_text().replace("low: -1.9", "low: 5.0", 1))
    with pytest.raises(ArmFileError, match="shoulder_pan"):
        load_arm(bad)
    (tmp_path / "x.yaml").write_text("name: x\ndriver: rs485\njoints: []\nbogus: 1\n")
    with pytest.raises(ArmFileError, match="unknown fields"):
        load_arm(tmp_path / "x.yaml")
    with pytest.raises(ArmFileError, match="no such arm file"):
        load_arm(tmp_path / "missing.yaml")
