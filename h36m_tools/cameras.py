"""H36M cameras: the bundled parameters, the world/camera transforms and H36M's own distortion model.

Conventions (checked against real H36M 2-D annotations, see tests):
  world -> camera:  X_cam = R @ X_world + t = R @ (X_world - center), millimetres, world z up.
  projection:       x = X/Z, y = Y/Z; r2 = x^2 + y^2; radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3;
                    tan = p1 y + p2 x; xd = x (radial + tan) + p2 r2; yd = y (radial + tan) + p1 r2;
                    u = fx xd + cx; v = fy yd + cy   (pixels; NOT OpenCV's tangential formula)
All functions are pure, take numpy arrays with any leading shape and return float64 arrays.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

CAMERA_IDS = ("54138969", "55011271", "58860488", "60457274")


@dataclass(frozen=True)
class Intrinsics:
    """Per-camera intrinsics in pixels at a given image size (width x height)."""
    fx: float
    fy: float
    cx: float
    cy: float
    k1: float
    k2: float
    k3: float
    p1: float
    p2: float
    width: int
    height: int

    def scaled(self, sx: float, sy: float | None = None) -> "Intrinsics":
        """Intrinsics for the image resized by (sx, sy); distortion is in normalised units and does not change."""
        sy = sx if sy is None else sy
        return dataclasses.replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy,
                                   width=int(round(self.width * sx)), height=int(round(self.height * sy)))

    def for_video(self, width: int, height: int) -> "Intrinsics":
        """Intrinsics for a video of the given size: scaled uniformly by width / nominal width.

        A video `--scale`d by s is s times the nominal width; its height is taken as it is (H36M's nominally
        1000x1000 cameras sometimes record 1000x1002, which is not a stretch).
        """
        s = width / self.width
        return dataclasses.replace(self.scaled(s), width=int(width), height=int(height))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Extrinsics:
    """World-to-camera rotation R (3,3) and translation t (3,) in mm."""
    R: np.ndarray
    t: np.ndarray

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates, mm (3,)."""
        return -self.R.T @ self.t

    def to_dict(self) -> dict:
        return {"R": self.R.tolist(), "t": self.t.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Extrinsics":
        return cls(np.asarray(d["R"], float), np.asarray(d["t"], float))


@dataclass(frozen=True)
class Camera:
    """One camera of one subject: id, intrinsics, extrinsics."""
    id: str
    intrinsics: Intrinsics
    extrinsics: Extrinsics

    def to_dict(self) -> dict:
        return {"id": self.id, **self.intrinsics.to_dict(), **self.extrinsics.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Camera":
        names = [f.name for f in dataclasses.fields(Intrinsics)]
        return cls(str(d["id"]), Intrinsics(**{k: d[k] for k in names}), Extrinsics.from_dict(d))

    def project(self, world: np.ndarray) -> np.ndarray:
        """(..., 3) world mm -> (..., 2) distorted pixels."""
        return project(world_to_camera(world, self.extrinsics.R, self.extrinsics.t), self.intrinsics)


# ----------------------------------------------------------------------------------------- transforms

def world_to_camera(world: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(..., 3) world mm -> (..., 3) camera mm: R @ X + t."""
    return np.asarray(world, float) @ np.asarray(R, float).T + np.asarray(t, float)


def camera_to_world(cam: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(..., 3) camera mm -> (..., 3) world mm: R^T (X - t)."""
    return (np.asarray(cam, float) - np.asarray(t, float)) @ np.asarray(R, float)


def distort(xy: np.ndarray, k: Intrinsics) -> np.ndarray:
    """(..., 2) normalised image coordinates (X/Z, Y/Z) -> (..., 2) distorted normalised coordinates (H36M model)."""
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = 1 + k.k1 * r2 + k.k2 * r2 ** 2 + k.k3 * r2 ** 3
    tan = k.p1 * y + k.p2 * x
    return np.stack([x * (radial + tan) + k.p2 * r2, y * (radial + tan) + k.p1 * r2], axis=-1)


def project(cam: np.ndarray, k: Intrinsics, distortion: bool = True) -> np.ndarray:
    """(..., 3) camera-frame points in mm (Z > 0) -> (..., 2) pixels, with H36M's distortion by default."""
    cam = np.asarray(cam, float)
    xy = cam[..., :2] / cam[..., 2:3]
    if distortion:
        xy = distort(xy, k)
    return np.stack([k.fx * xy[..., 0] + k.cx, k.fy * xy[..., 1] + k.cy], axis=-1)


def euler_to_R(angles: np.ndarray) -> np.ndarray:
    """H36M `<w0>` Euler angles (3,) in radians -> world-to-camera R (3,3): R = Rx(a) @ Ry(b) @ Rz(c)."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


# ----------------------------------------------------------------------------------------- the nominal pixel frame

def nominal_frame(camera_id: str, width: float, height: float) -> tuple[float, int, int]:
    """The camera's nominal pixel frame, the one frame of every 2-D file shared with other tools and of the
    lifter's input: (scale, nominal width, nominal height) for a video of that camera recorded width x height px,
    nominal px = video px x scale (videos are scaled copies, as Intrinsics.for_video says: fx, cx, ... times the
    same factor). An H36M camera's nominal frame is its intrinsics' size (1000x1002 / 1000x1000); a camera this
    package does not know is its own nominal frame (scale 1)."""
    known = bundled().intrinsics.get(str(camera_id))
    if known is None:
        return 1.0, int(width), int(height)
    return known.width / float(width), int(known.width), int(known.height)


def nominal_camera(camera: Camera) -> tuple[Camera, float]:
    """A camera whose intrinsics are at its video's size -> (the same camera at its nominal frame, the scale
    nominal px / video px): projections with it land in the nominal frame (nominal_frame)."""
    k = camera.intrinsics
    s, w, h = nominal_frame(camera.id, k.width, k.height)
    return Camera(camera.id, k.for_video(w, h), camera.extrinsics), s


def screen_affine(width: float, height: float) -> tuple[np.ndarray, np.ndarray]:
    """(scale (2,), offset (2,)) of VideoPose3D's screen normalisation of a width x height frame (its
    common/camera.py normalize_screen_coordinates: X / w * 2 - [1, h / w]): screen = px * scale + offset, x in
    [-1, 1], the aspect ratio kept."""
    return np.full(2, 2.0 / width), -np.array([1.0, height / width])


def normalize_screen(px: np.ndarray, width: float, height: float) -> np.ndarray:
    """(..., 2) pixels of a width x height frame -> VideoPose3D's screen coordinates (screen_affine)."""
    scale, offset = screen_affine(width, height)
    return np.asarray(px, float) * scale + offset


def nominal_screen(px: np.ndarray, camera_id: str, width: float, height: float) -> np.ndarray:
    """(..., 2) video px of a width x height video of the camera -> the lifter's input: the screen normalisation of
    the camera's nominal frame (nominal_frame, normalize_screen)."""
    scale, w, h = nominal_frame(camera_id, width, height)
    return normalize_screen(np.asarray(px, float) * scale, w, h)


# ----------------------------------------------------------------------------------------- parameter sets

@dataclass(frozen=True)
class CameraSet:
    """Cameras of a release: intrinsics per camera id, extrinsics per subject and camera id."""
    intrinsics: dict[str, Intrinsics]
    extrinsics: dict[str, dict[str, Extrinsics]]

    def camera(self, subject: str, camera_id: str) -> Camera:
        if subject not in self.extrinsics:
            raise KeyError(f"no camera extrinsics for subject {subject!r} (have {sorted(self.extrinsics)})")
        return Camera(camera_id, self.intrinsics[camera_id], self.extrinsics[subject][camera_id])

    def cameras(self, subject: str, camera_ids=CAMERA_IDS) -> list[Camera]:
        return [self.camera(subject, c) for c in camera_ids]


@lru_cache(maxsize=1)
def bundled() -> CameraSet:
    """The official H36M parameters shipped with the package (from `cameras.json`)."""
    text = resources.files(__package__).joinpath("data/cameras.json").read_text()
    return _from_cameras_json(json.loads(text))


def _from_cameras_json(d: dict) -> CameraSet:
    intr = {cid: Intrinsics(**{f.name: v[f.name] for f in dataclasses.fields(Intrinsics)})
            for cid, v in d["intrinsics"].items()}
    extr = {s: {cid: Extrinsics.from_dict(e) for cid, e in cams.items()} for s, cams in d["extrinsics"].items()}
    return CameraSet(intr, extr)


def parse_metadata_xml(path: str | Path, sizes: dict[str, tuple[int, int]] | None = None) -> CameraSet:
    """Cameras from a user's official `metadata.xml`, decoding `<w0>` (300 numbers).

    For camera c (0-3, in `<dbcameras>` order) and subject s (1-11): offset 6*(c*11 + s - 1) holds 3 Euler
    angles (rad) and the camera centre (mm); offset 264 + 9*c holds fx, fy, cx, cy, k1, k2, k3, p1, p2.
    `sizes` maps camera id -> (width, height); default: the nominal H36M sizes.
    """
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None
    m = re.search(r"<w0>\s*\[(.*?)\]\s*</w0>", text, re.S)
    if not m:
        raise ValueError(f"{path}: no <w0> camera block; is this H36M's metadata.xml?")
    w0 = np.array([float(v) for v in m.group(1).split()])
    if w0.size != 300:
        raise ValueError(f"{path}: <w0> holds {w0.size} numbers, expected 300")
    ids = re.findall(r"<item>\s*(\d{8})\s*</item>", text.split("<dbcameras>", 1)[-1])[:4] or list(CAMERA_IDS)
    nominal = {cid: (k.width, k.height) for cid, k in bundled().intrinsics.items()}
    sizes = {**nominal, **(sizes or {})}
    intr, extr = {}, {}
    for c, cid in enumerate(ids):
        fx, fy, cx, cy, k1, k2, k3, p1, p2 = (float(v) for v in w0[264 + 9 * c: 273 + 9 * c])
        w, h = sizes.get(cid, (1000, 1000))
        intr[cid] = Intrinsics(fx, fy, cx, cy, k1, k2, k3, p1, p2, int(w), int(h))
        for s in range(1, 12):
            o = 6 * (c * 11 + s - 1)
            R = euler_to_R(w0[o:o + 3])
            extr.setdefault(f"S{s}", {})[cid] = Extrinsics(R, -R @ w0[o + 3:o + 6])
    return CameraSet(intr, extr)


def camera_set_to_json(cs: CameraSet) -> dict:
    """A CameraSet as the JSON layout of `cameras.json` (intrinsics per id, extrinsics per subject and id)."""
    return {"camera_ids": list(cs.intrinsics),
            "intrinsics": {c: k.to_dict() for c, k in cs.intrinsics.items()},
            "extrinsics": {s: {c: e.to_dict() for c, e in cams.items()} for s, cams in cs.extrinsics.items()}}


def load_camera_set(path: str | Path) -> CameraSet:
    """A `cameras.json` (this package's layout) or an official `metadata.xml`."""
    path = Path(path)
    if path.suffix.lower() == ".xml":
        return parse_metadata_xml(path)
    try:
        return _from_cameras_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a cameras.json ({e})") from None
