"""Reading `.npy` files safely: number arrays, and pickled objects such as CALVIN's annotation files.

`np.load(allow_pickle=True)` runs whatever a pickle names: a dataset file could call `os.system`.
CALVIN's files are pickled dicts of strings, lists, tuples, numbers and numpy arrays, so the
unpickler here admits exactly the four numpy globals those need and refuses every other one
before it is imported or called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from vla.errors import DataError

# The callables numpy's own pickles name, taken from numpy itself so both spellings (numpy 1's
# `numpy.core`, numpy 2's `numpy._core`) resolve to the installed objects.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{
        (module, name): obj
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name, obj in (("_reconstruct", _RECONSTRUCT), ("scalar", _SCALAR))
    },
}
_HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}


class _Refused(Exception):
    """A global outside the allow-list (kept apart so no parse error is mistaken for it)."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("persistent_id", repr(pid)[:60])


def _read(path: Path, fh: io.BufferedReader, pickled: bool) -> Any:
    version = npy_format.read_magic(fh)
    if version not in _HEADER_READERS:
        raise ValueError(f"unsupported .npy format version {version}")
    _shape, _fortran, dtype = _HEADER_READERS[version](fh)
    if not dtype.hasobject:  # plain numbers: numpy reads them without any pickle
        fh.seek(0)
        return np.load(fh, allow_pickle=False)
    if not pickled:
        raise DataError(path, None, f"holds pickled objects (dtype {dtype}); expected an array of plain numbers")
    value = _DataUnpickler(fh).load()
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.hasobject:
        return value.item()  # np.save wraps a pickled object in a 0-d object array
    return value


def load_npy(path: Path, *, pickled: bool = True) -> Any:
    """What a `.npy` file holds: a number array, or (if `pickled`) a pickled object made of dicts, lists,
    tuples, str, numbers and numpy arrays. Anything else, or unreadable bytes, is a DataError."""
    try:
        with open(path, "rb") as fh:
            return _read(path, fh, pickled)
    except DataError:
        raise
    except _Refused as e:
        raise DataError(
            path,
            None,
            f"refused to unpickle {e}: only dicts, lists, strings, numbers and numpy arrays are read from a "
            "dataset file (this one may be malicious; do not load it with np.load(allow_pickle=True))",
        ) from None
    except OSError as e:
        raise DataError(path, None, f"cannot read: {e}") from None
    except Exception as e:  # any parse failure of hostile bytes means "corrupt file"
        raise DataError(path, None, f"cannot read (truncated or corrupt?): {type(e).__name__}: {e}") from None
