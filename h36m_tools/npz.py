"""Reading VideoPose3D-format `.npz` files without running their pickles.

The field's interchange files (`data_3d_h36m.npz`, `data_2d_h36m_gt.npz`, detections such as
`data_2d_h36m_cpn_ft_h36m_dbb.npz`) hold dicts of dicts of arrays, which numpy stores as 0-d object arrays: a
pickle stream. `np.load(..., allow_pickle=True)` would run whatever that stream names. `load_npz` reads numeric
members with numpy's own reader (pickles off) and unpickles object members through `SafeUnpickler`, which builds
only dicts, lists, tuples, strings, numbers and numeric numpy arrays / scalars; anything else is refused with one
H36MError naming the file, before any of it is constructed.

The layouts (VideoPose3D's `data/prepare_data_h36m.py`; see docs/interchange.md):
    positions_3d[subject][action]            (N, 32, 3) float32, world metres
    positions_2d[subject][action][cam_idx]   (N, 17, 2) float32, full-frame pixels (cameras in CAMERA_IDS order)
    confidence_2d[subject][action][cam_idx]  (N, 17) float32 in [0, 1], optional (`h36m predict` of a network with a
                                             confidence head; VideoPose3D's loaders never read it)
    metadata                                 {'layout_name': 'h36m', 'num_joints': 17, 'keypoints_symmetry':
                                              [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]}
"""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from .errors import H36MError
from .skeleton import LEFT17, RIGHT17

#: The `metadata` of a 17-joint H36M 2-D file, as VideoPose3D and PoseFormer read it.
METADATA_2D = {"layout_name": "h36m", "num_joints": 17,
               "keypoints_symmetry": [[int(j) for j in LEFT17], [int(j) for j in RIGHT17]]}

#: (module, name) pairs the unpickler may build: the containers and numbers, and numpy's data-only reconstructors
#: (numpy 1.x names them `numpy.core.*`, numpy 2 `numpy._core.*`).
_ALLOWED = {("builtins", n) for n in ("dict", "list", "tuple", "str", "int", "float", "bool", "complex", "bytes",
                                      "bytearray")}
_ALLOWED |= {(f"numpy.{core}.{mod}", n) for core in ("core", "_core")
             for mod, n in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}
_ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype")}


class RefusedPickle(pickle.UnpicklingError):
    """The pickle names something other than data."""


class SafeUnpickler(pickle.Unpickler):
    """Builds only dicts, lists, tuples, strings, numbers and numpy arrays / dtypes / scalars of them."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise RefusedPickle(f"{module}.{name}")
        return super().find_class(module, name)


def _check_array(a: np.ndarray, what: str) -> None:
    if a.dtype.hasobject and a.dtype != object:
        raise RefusedPickle(f"structured array with object fields in {what}")


def _walk(x, what: str):
    """Every numpy array in x must hold numbers (object arrays are walked); returns x with 0-d object arrays
    unwrapped."""
    if isinstance(x, np.ndarray):
        _check_array(x, what)
        if x.dtype == object:
            for v in x.flat:
                _walk(v, what)
            return x.item() if x.ndim == 0 else x
        return x
    if isinstance(x, dict):
        return {k: _walk(v, what) for k, v in x.items()}
    if isinstance(x, list):
        return [_walk(v, what) for v in x]
    if isinstance(x, tuple):
        return tuple(_walk(v, what) for v in x)
    return x


def load_npz(path: str | Path) -> dict:
    """Every member of an .npz (or one .npy) file: numeric arrays as they are, object members unpickled safely
    (0-d object arrays unwrapped, as `.item()` gives them). Raises H36MError naming the file for a missing,
    damaged or refused file."""
    path = Path(path)
    if not path.is_file():
        raise H36MError(path, "file not found")
    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as fh:
                return {"arr_0": _read_member(fh, path.name)}
        out = {}
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if not name.endswith(".npy"):
                    continue
                with z.open(name) as fh:
                    out[name[:-4]] = _read_member(io.BytesIO(fh.read()), name)
        return out
    except RefusedPickle as e:
        raise H36MError(path, f"holds a pickle that would build {e}: refused (only dicts, lists, strings, numbers "
                              f"and numeric arrays are read)") from None
    except (pickle.UnpicklingError, ValueError, EOFError, OSError, zipfile.BadZipFile, KeyError, TypeError,
            AttributeError) as e:
        raise H36MError(path, f"not a readable .npz file ({type(e).__name__}: {e})") from None


def _read_member(fh, name: str):
    version = np.lib.format.read_magic(fh)
    header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = header(fh)
    if not dtype.hasobject:
        fh.seek(0)
        return np.lib.format.read_array(fh, allow_pickle=False)
    if dtype != object:
        raise RefusedPickle(f"structured array with object fields in {name}")
    obj = SafeUnpickler(fh, encoding="latin1").load()
    if not isinstance(obj, np.ndarray):
        raise RefusedPickle(f"{type(obj).__name__} instead of an array in {name}")
    return _walk(obj, name)


def positions_2d(path: str | Path) -> tuple[dict, dict]:
    """(positions_2d, metadata) of a VideoPose3D 2-D file: positions_2d[subject][action] a list of per-camera
    (N, J, 2) float arrays. Raises H36MError naming the file when the layout is not that."""
    pos, meta, _ = keypoints_2d(path)
    return pos, meta


def keypoints_2d(path: str | Path) -> tuple[dict, dict, dict | None]:
    """(positions_2d, metadata, confidence_2d or None) of a VideoPose3D 2-D file (see `positions_2d`);
    confidence_2d[subject][action] a list of per-camera (N, J) arrays: each must match its positions' (N, J), and a
    third channel of positions_2d (CPN-style detections) is not read as a confidence. Raises H36MError naming the
    file when the layout is not that."""
    data = load_npz(path)
    if "positions_2d" not in data:
        raise H36MError(path, f"no 'positions_2d' (has {', '.join(sorted(data)) or 'nothing'}): not a "
                              f"VideoPose3D 2-D keypoints file")
    pos, meta = data["positions_2d"], data.get("metadata", {})
    if not isinstance(pos, dict) or not isinstance(meta, dict):
        raise H36MError(path, "'positions_2d' / 'metadata' are not dicts")
    for subject, actions in pos.items():
        if not isinstance(actions, dict):
            raise H36MError(path, f"positions_2d[{subject!r}] is not a dict of actions")
        for action, cams in actions.items():
            if not isinstance(cams, (list, tuple)) or not all(
                    isinstance(a, np.ndarray) and a.ndim == 3 and a.shape[-1] >= 2 for a in cams):
                raise H36MError(path, f"positions_2d[{subject!r}][{action!r}] is not a list of (N, J, 2) arrays")
    conf = data.get("confidence_2d")
    if conf is None:
        return pos, meta, None
    if not isinstance(conf, dict):
        raise H36MError(path, "'confidence_2d' is not a dict")
    for subject, actions in conf.items():
        for action, cams in (actions.items() if isinstance(actions, dict) else [(None, None)]):
            want = pos.get(subject, {}).get(action) if action is not None else None
            if want is None or not isinstance(cams, (list, tuple)) or len(cams) != len(want) or not all(
                    isinstance(c, np.ndarray) and c.shape == p.shape[:2] for c, p in zip(cams, want)):
                raise H36MError(path, f"confidence_2d[{subject!r}][{action!r}] does not match positions_2d's "
                                      f"(N, J) per camera")
    return pos, meta, conf
