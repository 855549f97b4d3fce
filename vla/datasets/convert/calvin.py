"""CALVIN split folders -> store episodes.

SRC is a split folder (`training/`, `validation/`) or a dataset root holding `training/`. One store
episode per continuous segment of `ep_start_end_ids.npy` (inclusive frame ids); every frame is kept,
so unlabeled play data stays. Language windows from `lang_annotations/auto_lang_ann.npy`
(`info.indx`, inclusive) become the episode's annotations; their precomputed embeddings are not
stored (the text is re-encoded by whichever language encoder a policy uses).

Stored: `action` = `rel_actions` (scaled relative, CALVIN's training default), `action.absolute` =
`actions`, `observation.state` = `robot_obs` (15), `observation.scene_obs` (24), cameras `static`
and `gripper` (upright, as CALVIN renders). Depth and tactile streams are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vla.datasets.convert.base import files_fingerprint
from vla.datasets.declare import Declaration, preset
from vla.datasets.spec import CameraSpec, DimSpec, KeySpec, SourceInfo, StoreSpec, dims
from vla.datasets.store import Episode
from vla.errors import DataError

FPS = 30.0
ROBOT_OBS_DIMS: tuple[DimSpec, ...] = (
    *dims(("tcp_x", "tcp_y", "tcp_z"), "eef_pos", "absolute", frame="world", unit="m"),
    *dims(("tcp_roll", "tcp_pitch", "tcp_yaw"), "eef_rot_euler", "absolute", frame="world", unit="rad"),
    DimSpec("gripper_width", "gripper", "absolute", unit="m"),
    *dims([f"joint_{i}" for i in range(7)], "joint_pos", "absolute", unit="rad"),
    DimSpec("gripper_action", "other", "absolute", unit="-1 close, +1 open"),
)
# npz key -> (store key, per-frame shape or None for images)
LOWDIM = {
    "rel_actions": ("action", (7,)),
    "actions": ("action.absolute", (7,)),
    "robot_obs": ("observation.state", (15,)),
    "scene_obs": ("observation.scene_obs", (24,)),
}
CAMERAS = {"rgb_static": "static", "rgb_gripper": "gripper"}
LANG_FILE = Path("lang_annotations") / "auto_lang_ann.npy"


def _split_dir(src: Path) -> Path:
    if (src / "ep_start_end_ids.npy").exists():
        return src
    if (src / "training" / "ep_start_end_ids.npy").exists():
        return src / "training"
    raise DataError(src / "ep_start_end_ids.npy", None, "missing: not a CALVIN split folder (or a root with training/)")


class CalvinConverter:
    def __init__(self, src: Path, decl: Declaration):
        self.src = _split_dir(Path(src))
        self.decl = decl
        ids_file = self.src / "ep_start_end_ids.npy"
        ids = np.load(ids_file)
        if ids.ndim != 2 or ids.shape[1] != 2 or np.any(ids[:, 1] < ids[:, 0]):
            raise DataError(ids_file, None, f"expected (K, 2) inclusive (start, end) ids, got shape {ids.shape}")
        self.segments = [(int(s), int(e)) for s, e in sorted(ids.tolist())]
        self.windows = self._language()
        first = self._frame(self.segments[0][0])
        self.image_shapes = {cam: first[key].shape for key, cam in CAMERAS.items()}

    def _frame_path(self, i: int) -> Path:
        return self.src / f"episode_{i:07d}.npz"

    def _frame(self, i: int) -> dict[str, np.ndarray]:
        path = self._frame_path(i)
        if not path.exists():
            raise DataError(path, None, "frame file is missing")
        try:
            with np.load(path) as z:
                out = {}
                for key, (_, shape) in LOWDIM.items():
                    if key not in z:
                        raise DataError(path, key, "required array is missing")
                    out[key] = z[key]
                    if out[key].shape != shape:
                        raise DataError(path, key, f"expected shape {shape}, got {out[key].shape}")
                for key in CAMERAS:
                    if key not in z:
                        raise DataError(path, key, "required image is missing")
                    out[key] = z[key]
                return out
        except (OSError, ValueError) as e:
            raise DataError(path, None, f"cannot read npz (truncated or corrupt?): {e}") from None

    def _language(self) -> dict[int, list[tuple[int, int, str]]]:
        """Segment number -> its language windows, as segment-relative (start, end exclusive, text)."""
        path = self.src / LANG_FILE
        out: dict[int, list[tuple[int, int, str]]] = {}
        if not path.exists():
            return out
        try:
            lang = np.load(path, allow_pickle=True).item()
            texts, spans = lang["language"]["ann"], lang["info"]["indx"]
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise DataError(path, "language.ann / info.indx", f"unreadable annotation file: {e}") from None
        for n, (text, (s, e)) in enumerate(zip(texts, spans, strict=True)):
            seg = next((k for k, (a, b) in enumerate(self.segments) if a <= s and e <= b), None)
            if seg is None:
                raise DataError(path, f"info.indx[{n}]", f"window ({s}, {e}) is not inside one continuous segment")
            a = self.segments[seg][0]
            out.setdefault(seg, []).append((int(s) - a, int(e) - a + 1, str(text)))
        return out

    def spec(self) -> StoreSpec:
        extra = {
            "action.absolute": KeySpec("float32", (7,), tuple(d.name for d in preset("eef_abs_euler_gripper"))),
            "observation.scene_obs": KeySpec("float32", (24,)),
        }
        cams = tuple(CameraSpec(cam, h, w, c) for cam, (h, w, c) in self.image_shapes.items())
        return StoreSpec(
            fps=self.decl.fps or FPS,
            embodiment=self.decl.embodiment or "calvin_panda",
            robot_type=self.decl.robot_type or "franka_panda",
            action=self.decl.action or preset("eef_rel_euler_gripper"),
            state=self.decl.state or ROBOT_OBS_DIMS,
            cameras=cams,
            extra_keys=extra,
            source=SourceInfo(
                "calvin",
                path=str(self.src),
                details={
                    "segments": len(self.segments),
                    "language_windows": sum(len(v) for v in self.windows.values()),
                    "skipped": ["depth_static", "depth_gripper", "depth_tactile", "rgb_tactile"],
                    "action": "rel_actions; absolute actions kept as action.absolute",
                },
            ),
        )

    def num_episodes(self) -> int:
        return len(self.segments)

    def fingerprint(self) -> str:
        files = [
            self.src / "ep_start_end_ids.npy",
            *([self.src / LANG_FILE] if (self.src / LANG_FILE).exists() else []),
        ]
        return files_fingerprint(files)

    def episodes(self, start: int = 0) -> Iterator[Episode]:
        for k in range(start, len(self.segments)):
            a, b = self.segments[k]
            frames = [self._frame(i) for i in range(a, b + 1)]
            out = {store: np.stack([f[key] for f in frames]) for key, (store, _) in LOWDIM.items()}
            for key, cam in CAMERAS.items():
                out[f"observation.images.{cam}"] = np.stack([f[key] for f in frames])
            yield Episode(
                frames=out,
                task=self.decl.task,
                source_id=f"{self.src}/episode_{a:07d}..{b:07d}",
                annotations=self.windows.get(k, []),
            )
