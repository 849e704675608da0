"""Reading and writing the `Pose` variable of H36M's CDF files with cdflib (no NASA C library needed).

Every pose CDF holds one zVariable `Pose` shaped (1, N, 32*k): D3_Positions and D3_Positions_mono (N, 32, 3) in mm,
D2_Positions (N, 32, 2) in pixels. Row i is video frame i of every camera.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .archives import Member, local_file
from .errors import H36MError


def read_pose(path: str | Path | Member, dims: int) -> np.ndarray:
    """The `Pose` of a CDF (a file, or an archive member read through a temporary copy) as (N, 32, dims) float64;
    raises H36MError naming the file (or member) on any problem."""
    import cdflib

    if isinstance(path, Member):
        with local_file(path) as tmp:
            return read_pose(tmp, dims)
    path = Path(path)
    if not path.is_file():
        raise H36MError(path, "file not found")
    try:
        cdf = cdflib.CDF(str(path))
        info = cdf.cdf_info()
        names = list(info.zVariables) + list(info.rVariables)
        if "Pose" not in names:
            raise H36MError(path, f"no 'Pose' variable (has {names or 'none'})")
        data = np.asarray(cdf.varget("Pose"))
    except H36MError:
        raise
    except Exception as e:  # cdflib raises assorted errors on damaged files
        raise H36MError(path, f"not a readable CDF file ({type(e).__name__}: {e})") from None
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2 or data.shape[1] != 32 * dims:
        raise H36MError(path, f"'Pose' has shape {data.shape}, expected (1, N, {32 * dims})")
    if data.shape[0] == 0:
        raise H36MError(path, "'Pose' has no frames")
    return data.reshape(-1, 32, dims).astype(np.float64)


def write_pose(path: str | Path, pose: np.ndarray) -> None:
    """Write (N, 32, dims) as an H36M-style CDF: one zVariable `Pose` (1, N, 32*dims), CDF_FLOAT. Atomic."""
    from cdflib.cdfwrite import CDF

    path = Path(path)
    pose = np.asarray(pose, np.float32)
    n, j, d = pose.shape
    if j != 32:
        raise ValueError(f"expected (N, 32, dims), got {pose.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.cdf")
    if tmp.exists():
        tmp.unlink()
    cdf = CDF(str(tmp), cdf_spec={"Compressed": False, "Majority": "row_major"}, delete=True)
    cdf.write_var({"Variable": "Pose", "Data_Type": CDF.CDF_FLOAT, "Num_Elements": 1, "Rec_Vary": True, "Compress": 0,
                   "Dim_Sizes": [n, j * d]}, var_attrs={}, var_data=pose.reshape(1, n, j * d))
    cdf.close()
    os.replace(tmp, path)
