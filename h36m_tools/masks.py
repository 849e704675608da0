"""H36M `ground_truth_bb` person masks: MATLAB v7.3 MAT files (HDF5), read and written through h5py.

Layout: dataset `Masks` (N, 1) of HDF5 object references, each to a 2-D uint8/logical mask stored transposed
(MATLAB is column-major: apply `.T` to get height x width). The person's box is the extent of the non-zero pixels.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import H36MError

_USERBLOCK = 512


def _open(path: Path):
    import h5py

    if not path.is_file():
        raise H36MError(path, "file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise H36MError(path, f"not a MAT v7.3 (HDF5) file ({e})") from None
    if "Masks" not in f:
        keys = list(f.keys())
        f.close()
        raise H36MError(path, f"no 'Masks' dataset (has {keys})")
    return f


def count_masks(path: str | Path) -> int:
    """Number of frames in a mask file."""
    with _open(Path(path)) as f:
        return int(np.prod(f["Masks"].shape))


def iter_masks(path: str | Path) -> Iterator[np.ndarray]:
    """Yield each frame's mask as (height, width) uint8 (0/1), in frame order."""
    import h5py

    path = Path(path)
    with _open(path) as f:
        refs = f["Masks"]
        if refs.dtype != h5py.ref_dtype:
            raise H36MError(path, f"'Masks' holds {refs.dtype}, expected object references (a MATLAB cell)")
        for ref in refs[()].reshape(-1):
            try:
                m = f[ref][()]
            except Exception as e:
                raise H36MError(path, f"broken mask reference ({e})") from None
            if m.ndim != 2:
                raise H36MError(path, f"a mask has shape {m.shape}, expected 2-D")
            yield (m.T != 0).astype(np.uint8)


def box_from_mask(mask: np.ndarray) -> np.ndarray | None:
    """(H, W) mask -> [x0, y0, x1, y1] pixel extent of the non-zero pixels (x1, y1 exclusive), or None if empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return None
    return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], float)


def write_masks(path: str | Path, masks) -> None:
    """Write an iterable of (H, W) masks as a MAT v7.3 file with a cell `Masks` (N, 1), like H36M's. Atomic."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.mat")
    with h5py.File(tmp, "w", userblock_size=_USERBLOCK) as f:
        refs_group = f.create_group("#refs#")
        refs = []
        for i, m in enumerate(masks):
            d = refs_group.create_dataset(f"m{i}", data=np.ascontiguousarray((np.asarray(m) != 0).T.astype(np.uint8)),
                                          compression="gzip", compression_opts=4, chunks=True)
            d.attrs["MATLAB_class"] = np.bytes_("logical")
            d.attrs["MATLAB_int_decode"] = np.int32(1)
            refs.append(d.ref)
        ds = f.create_dataset("Masks", shape=(len(refs), 1), dtype=h5py.ref_dtype)
        for i, r in enumerate(refs):
            ds[i, 0] = r
        ds.attrs["MATLAB_class"] = np.bytes_("cell")
    header = (f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: "
              f"{time.strftime('%a %b %d %H:%M:%S %Y', time.gmtime(0))} HDF5 schema 1.00 .").encode()
    block = header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(tmp, "r+b") as fh:
        fh.write(block.ljust(_USERBLOCK, b"\x00"))
    os.replace(tmp, path)
