"""Diffusion-Policy replay-buffer Zarr -> store episodes.

SRC is a replay buffer as Diffusion Policy's `ReplayBuffer` writes it: a Zarr group (format v2;
v3 and `.zarr.zip` files are read too) with `data/<key>` arrays concatenated over time and
`meta/episode_ends`. The format says nothing about fps, the meaning of action dimensions, image
orientation or language, so:

- fps must be declared (`--fps` or a `--declare` YAML);
- action/state dimensions are declared, or recorded as 'other' dimensions named `<key>_<i>` (the
  spec's source details say they were not declared);
- keys map by `decl.keys` (source -> store), else: `action` -> action, `state` (else `agent_pos`)
  -> observation.state, (N, H, W, 3) arrays -> observation.images.<name>, anything else ->
  `observation.<name>` kept verbatim;
- images are upright unless declared otherwise; float images (the released Push-T stores float32
  0..255) must hold whole numbers in 0..255 and are stored as uint8;
- the language instruction is `decl.task` (None without one).

zarr reads a missing chunk back as its fill value: a source whose chunks are not all present, or
with a `data/` entry whose array metadata vanished, is refused rather than converted into zeros.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync
from zarr.storage import ZipStore

from vla.datasets.convert.base import files_fingerprint
from vla.datasets.declare import Declaration
from vla.datasets.spec import ORIENTATIONS, CameraSpec, DimSpec, KeySpec, SourceInfo, StoreSpec
from vla.datasets.store import INDEX_KEYS, Episode, check_chunks, stored_keys
from vla.errors import DataError
from vla.keys import ACTION_KEY, IMAGE_PREFIX, STATE_KEY

STATE_KEYS = ("state", "agent_pos")  # Diffusion Policy's names for the robot state, in preference order
KNOWN_FORMATS = (2, 3)
METADATA_FILES = (".zgroup", ".zattrs", ".zarray", ".zmetadata", "zarr.json")


# --- opening -----------------------------------------------------------------------------------


def _root_metadata(src: Path) -> tuple[str, dict[str, Any]]:
    """(metadata file name, its JSON) of the root group, from a folder or a .zip."""
    try:
        if src.is_file():
            with zipfile.ZipFile(src) as z:
                names = set(z.namelist())
                name = next((n for n in ("zarr.json", ".zgroup") if n in names), None)
                text = z.read(name) if name else None
        else:
            name = next((n for n in ("zarr.json", ".zgroup") if (src / n).is_file()), None)
            text = (src / name).read_bytes() if name else None
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(src, None, f"cannot read as a Zarr store (a folder or a .zip): {e}") from None
    if name is None:
        raise DataError(src, None, "not a Zarr group (no .zgroup or zarr.json): not a Diffusion Policy replay buffer")
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(src, name, f"group metadata is not valid JSON: {e}") from None
    return name, meta if isinstance(meta, dict) else {}


def zarr_format_of(src: Path) -> int:
    """The store's Zarr format version; anything but 2 or 3 is refused before zarr touches it."""
    name, meta = _root_metadata(src)
    version = meta.get("zarr_format")
    if version not in KNOWN_FORMATS or (name == ".zgroup") != (version == 2):
        raise DataError(src, name, f"unsupported zarr_format {version!r} (this reader knows {KNOWN_FORMATS})")
    if name == "zarr.json" and meta.get("node_type", "group") != "group":
        raise DataError(src, name, f"the root is a {meta.get('node_type')!r}, expected a group")
    return int(version)


def _open_group(src: Path, version: int) -> zarr.Group:
    store: Any = ZipStore(src, mode="r") if src.is_file() else src
    try:
        return zarr.open_group(store, mode="r", zarr_format=version)
    except Exception as e:  # zarr raises many kinds here; the user needs only what and where
        raise DataError(src, None, f"cannot open the Zarr group: {e}") from None


def _member(src: Path, group: zarr.Group, key: str, where: str | None = None) -> zarr.Array | zarr.Group | None:
    """group[key], None when absent; metadata zarr cannot read (corrupt JSON, unknown dtype or codec,
    a link loop) is an error naming it."""
    try:
        return group.get(key)
    except Exception as e:  # zarr raises many kinds here
        problem = f"cannot read its metadata ({type(e).__name__}: {e}); restore it or remove the entry"
        raise DataError(src, where or key, problem) from None


def _episode_ends(src: Path, root: zarr.Group) -> np.ndarray:
    key = "meta/episode_ends"
    node = _member(src, root, key)
    if not isinstance(node, zarr.Array):
        raise DataError(src, key, "required array is missing (not a replay buffer?)")
    check_chunks(node, src, key)
    try:
        ends = np.asarray(node[:])
    except Exception as e:  # corrupt chunk bytes, codec errors
        raise DataError(src, key, f"cannot read ({type(e).__name__}: {e}); restore the file") from None
    if ends.ndim != 1 or ends.dtype.kind not in "iu":
        raise DataError(src, "meta/episode_ends", f"expected a 1-D integer array, got {ends.dtype} {ends.shape}")
    if len(ends) == 0:
        raise DataError(src, "meta/episode_ends", "no episodes")
    lengths = np.diff(np.concatenate([[0], ends]))
    if np.any(lengths == 0):
        raise DataError(src, "meta/episode_ends", f"episode {int(np.argmax(lengths == 0))} is empty (0 frames)")
    if np.any(lengths < 0):
        raise DataError(src, "meta/episode_ends", f"not increasing at episode {int(np.argmax(lengths < 0))}")
    return ends.astype(np.int64)


def _children(src: Path, group: zarr.Group) -> list[str]:
    """Names directly under a group, as its store lists them (links included), in a fixed order."""
    prefix = f"{group.path}/" if group.path else ""

    async def listing() -> list[str]:
        return [name async for name in group.store.list_dir(prefix)]

    try:
        return sorted(n for n in sync(listing()) if n not in METADATA_FILES)
    except Exception as e:  # unreadable folder, a link loop
        raise DataError(src, group.path, f"cannot list ({type(e).__name__}: {e}); fix or remove that entry") from None


def _data_arrays(src: Path, data: zarr.Group) -> dict[str, zarr.Array]:
    """The arrays of `data/`, by name; an entry whose array metadata vanished (chunks without
    .zarray / zarr.json) or cannot be read is an error, not an array that silently drops out."""
    chunked = {k.split("/")[0] for k in stored_keys(data) if "/" in k}
    arrays = {}
    for name in _children(src, data):
        node = _member(src, data, name, f"data/{name}")
        if isinstance(node, zarr.Array):
            arrays[name] = node
        elif node is None and name in chunked:
            raise DataError(
                src, f"data/{name}", "holds chunks but no array metadata (.zarray or zarr.json): restore it"
            )
    return arrays


# --- key mapping -------------------------------------------------------------------------------


def _is_image(arr: zarr.Array) -> bool:
    return arr.ndim == 4 and arr.shape[-1] == 3 and np.dtype(arr.dtype).kind in "uf"


def default_mapping(arrays: dict[str, zarr.Array]) -> dict[str, str]:
    state = next((k for k in STATE_KEYS if k in arrays), None)
    out = {}
    for name, arr in arrays.items():
        if name == ACTION_KEY:
            out[name] = ACTION_KEY
        elif name == state:
            out[name] = STATE_KEY
        elif _is_image(arr):
            out[name] = IMAGE_PREFIX + name
        else:
            out[name] = f"observation.{name}"
    return out


def merged_mapping(arrays: dict[str, zarr.Array], declared: dict[str, str]) -> dict[str, str]:
    """Declared names win; a default that collides with a declared target falls back to an extra key."""
    taken = set(declared.values())
    out = {}
    for name, target in default_mapping(arrays).items():
        out[name] = declared.get(name, target if target not in taken else f"observation.{name}")
    return out


def _check_mapping(src: Path, mapping: dict[str, str], arrays: dict[str, zarr.Array]) -> None:
    seen: dict[str, str] = {}
    for name, target in mapping.items():
        where = f"data/{name}"
        arr = arrays[name]
        if target in seen:
            raise DataError(src, where, f"maps to {target!r}, as does data/{seen[target]}")
        seen[target] = name
        if target in INDEX_KEYS or not (target == ACTION_KEY or target.startswith("observation.")):
            raise DataError(
                src,
                where,
                f"cannot map to {target!r}: use action, observation.state, "
                "observation.images.<camera> or observation.<name>",
            )
        if target in (ACTION_KEY, STATE_KEY) and (arr.ndim != 2 or np.dtype(arr.dtype).kind not in "iuf"):
            raise DataError(src, where, f"{target} needs a numeric (N, D) array, got {arr.dtype} {arr.shape}")
        if target.startswith(IMAGE_PREFIX) and not _is_image(arr):
            raise DataError(src, where, f"images must be (N, H, W, 3) uint8 or float, got {arr.dtype} {arr.shape}")
        if np.dtype(arr.dtype).kind not in "iufb":
            raise DataError(src, where, f"unsupported dtype {arr.dtype}")
    if ACTION_KEY not in seen:
        raise DataError(src, "data/action", "no action array; name one with --key SOURCE_KEY=action")


def _dims(declared: tuple[DimSpec, ...] | None, prefix: str, width: int, src: Path, what: str) -> tuple[DimSpec, ...]:
    if declared is None:
        return tuple(DimSpec(f"{prefix}_{i}") for i in range(width))
    if len(declared) != width:
        raise DataError(src, what, f"declared {len(declared)} dimensions, the data has {width}")
    return tuple(declared)


# --- the converter -------------------------------------------------------------------------------


class DiffusionPolicyZarrConverter:
    """Reads a Diffusion-Policy replay buffer (see the module docstring for the mapping)."""

    def __init__(self, src: Path, decl: Declaration):
        self.src = Path(src)
        self.decl = decl
        if not decl.fps:
            raise DataError(
                self.src,
                None,
                "a replay buffer does not record its control rate: pass --fps HZ (or a --declare YAML with 'fps:')",
            )
        self.version = zarr_format_of(self.src)
        root = _open_group(self.src, self.version)
        data = _member(self.src, root, "data")
        if not isinstance(data, zarr.Group):
            raise DataError(self.src, "data", "required group is missing (not a replay buffer?)")
        self.arrays = _data_arrays(self.src, data)
        self.ends = _episode_ends(self.src, root)
        self.starts = np.concatenate([[0], self.ends[:-1]])
        for name, arr in self.arrays.items():
            if arr.shape[0] != self.ends[-1]:
                raise DataError(
                    self.src, f"data/{name}", f"has {arr.shape[0]} frames, meta/episode_ends ends at {self.ends[-1]}"
                )
        unknown = sorted(set(decl.keys) - set(self.arrays))
        if unknown:
            raise DataError(
                self.src, f"data/{unknown[0]}", f"declared in keys but absent; arrays: {sorted(self.arrays)}"
            )
        self.mapping = merged_mapping(self.arrays, decl.keys)
        _check_mapping(self.src, self.mapping, self.arrays)
        for name in self.mapping:  # zarr would read a missing chunk back as zeros
            check_chunks(self.arrays[name], self.src, f"data/{name}")
        self.cameras = {t[len(IMAGE_PREFIX) :]: n for n, t in self.mapping.items() if t.startswith(IMAGE_PREFIX)}
        for cam, value in decl.camera_orientation.items():
            if cam not in self.cameras or value not in ORIENTATIONS:
                raise DataError(
                    self.src,
                    cam,
                    f"bad orientation declaration {value!r}; cameras: "
                    f"{sorted(self.cameras)}, orientations: {ORIENTATIONS}",
                )

    def _source_of(self, target: str) -> str | None:
        return next((n for n, t in self.mapping.items() if t == target), None)

    def spec(self) -> StoreSpec:
        action_src, state_src = self._source_of(ACTION_KEY), self._source_of(STATE_KEY)
        action = _dims(self.decl.action, action_src, self.arrays[action_src].shape[1], self.src, ACTION_KEY)
        state = (
            _dims(self.decl.state, state_src, self.arrays[state_src].shape[1], self.src, "state") if state_src else ()
        )
        cameras = tuple(
            CameraSpec(
                cam,
                self.arrays[n].shape[1],
                self.arrays[n].shape[2],
                3,
                "upright",
                self.decl.camera_orientation.get(cam, "upright"),
            )
            for cam, n in self.cameras.items()
        )
        extra = {
            t: KeySpec(str(self.arrays[n].dtype), tuple(self.arrays[n].shape[1:]))
            for n, t in self.mapping.items()
            if t not in (ACTION_KEY, STATE_KEY) and not t.startswith(IMAGE_PREFIX)
        }
        undeclared = "not declared: recorded as 'other' dimensions (pass --action-space or --declare)"
        details = {
            "zarr_format": self.version,
            "keys": dict(self.mapping),
            "action_dims": "declared" if self.decl.action else undeclared,
            "state_dims": ("declared" if self.decl.state else undeclared) if state_src else "no state",
            "embodiment": "declared" if self.decl.embodiment else "not declared: named after the source",
            "float_images_cast_to_uint8": sorted(n for n in self.cameras.values() if self.arrays[n].dtype.kind == "f"),
        }
        return StoreSpec(
            fps=float(self.decl.fps),
            embodiment=self.decl.embodiment or self.src.name.split(".")[0],
            robot_type=self.decl.robot_type or "",
            action=action,
            state=state,
            cameras=cameras,
            extra_keys=extra,
            source=SourceInfo(format="dp-zarr", path=str(self.src), version=f"zarr v{self.version}", details=details),
        )

    def num_episodes(self) -> int:
        return len(self.ends)

    def fingerprint(self) -> str:
        if self.src.is_file():
            return files_fingerprint([self.src])
        return files_fingerprint([Path(d) / f for d, _, files in os.walk(self.src) for f in files])

    def episodes(self, start: int = 0) -> Iterator[Episode]:
        for i in range(start, len(self.ends)):
            yield self._read_episode(i)

    def _read_episode(self, i: int) -> Episode:
        s, e = int(self.starts[i]), int(self.ends[i])
        frames = {}
        for name, target in self.mapping.items():
            arr = self._read(name, s, e)
            if target.startswith(IMAGE_PREFIX):
                arr = self._image(name, target[len(IMAGE_PREFIX) :], arr, s)
            frames[target] = arr
        return Episode(frames=frames, task=self.decl.task, source_id=f"{self.src}:episode {i}")

    def _read(self, name: str, s: int, e: int) -> np.ndarray:
        try:
            arr = np.asarray(self.arrays[name][s:e])
        except Exception as err:  # missing chunks, unknown codecs, corrupt bytes
            raise DataError(self.src, f"data/{name}", f"cannot read frames {s}..{e - 1}: {err}") from None
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = s + int(np.argwhere(~np.isfinite(arr))[0][0])
            raise DataError(self.src, f"data/{name}", f"non-finite value (NaN or inf) at frame {bad}")
        return arr

    def _image(self, name: str, cam: str, arr: np.ndarray, s: int) -> np.ndarray:
        if arr.dtype != np.uint8:
            ok = (arr >= 0) & (arr <= 255) & (arr == np.round(arr))
            if not ok.all():
                bad = s + int(np.argwhere(~ok)[0][0])
                raise DataError(
                    self.src, f"data/{name}", f"float images must hold whole numbers in 0..255; frame {bad} does not"
                )
            arr = arr.astype(np.uint8)
        if self.decl.camera_orientation.get(cam, "upright") == "rotated_180":
            arr = np.ascontiguousarray(arr[:, ::-1, ::-1])
        return arr
