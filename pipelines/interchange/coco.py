"""`h36m import-2d`: a COCO-style keypoint results file (mmpose, or any detector writing COCO's results format)
-> a VideoPose3D 2-D keypoints file with `confidence_2d`, in each camera's nominal pixel frame.

    from h36m.pipelines.interchange.coco import Import2DConfig, import_2d
    result = import_2d(Import2DConfig(results="results.json", out="det.npz", images="h36m_coco.json"))

Input: the results, a JSON list of detections `{"image_id", "keypoints": [x, y, score] x 17, "score"}` (COCO's results
format), or an annotation file `{"images", "annotations"}` (its annotations read as detections, score 1 for each
visible joint). Each detection is matched to a sequence, camera and frame by the name of its image,
in the convention of mmpose's H36M data (`S1_Directions_1.54138969_000001.jpg`: subject, sequence base name with
underscores, camera, video frame + 1; any folder before it is ignored). The name is the image's `file_name` in the
`images` list of the results file or of `images` (an annotation file), or the detection's own `file_name` /
`image_name`, or `image_id` itself when that is such a name. An image's `width` (where the images list gives it) is
the size the detector saw: coordinates are scaled by nominal width / width into the camera's nominal frame (1000 px
for H36M; no width: taken as nominal).

Joint layouts: `h36m` is mmpose's H36M-17 (its order is the 17 joints of h36m_tools.skeleton: on the real samples
its keypoints equal D2_Positions' joints in our order); `coco` is COCO-17, which has no hip centre, spine, thorax,
neck/nose or head of H36M's skeleton: it is refused unless `derive` is set, when those five are derived as
MotionBERT's and VideoPose3D's users commonly do (hip = mid-hips, thorax = mid-shoulders, spine = mid(hip, thorax),
neck/nose = nose, head = mid-eyes; their score the lowest of the joints used): approximations, not H36M's joints.

Per image the highest-scoring detection is kept. A sequence's length is its last detected frame + 1 (over its
cameras); frames of a camera without a detection get the coordinates interpolated linearly between its nearest
detected frames (held at the ends) and confidence 0, and are counted. Detections that match nothing (a name not in
the convention, a subject, sequence or camera H36M does not have, a frame past the sequence's video length in
`sequences.json`, an image id not in the images list) are counted and named; sequences without all four cameras are
left out and named.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from h36m.h36m_tools.cameras import CAMERA_IDS, nominal_frame
from h36m.h36m_tools.errors import H36MError
from h36m.h36m_tools.names import SUBJECTS, sequence_table
from h36m.pipelines.interchange.npzfile import metadata_2d, vp3d_action, write_npz

#: Largest results / images file read, bytes (the full H36M test set's detections are about 0.5 GB).
MAX_JSON_BYTES = 4 << 30
#: Longest image name accepted, characters.
MAX_NAME = 1024
#: mmpose's H36M image names: S1_Directions_1.54138969_000001.jpg (video frame + 1).
IMAGE_NAME = re.compile(r"^(S\d{1,2})_([A-Za-z]+(?:_\d+)?)\.(\d{8})_(\d{6})\.(?:jpe?g|png)$", re.IGNORECASE)
#: COCO-17 index of each H36M-17 joint where COCO has that joint (-1: none).
COCO_TO_H36M = (-1, 12, 14, 16, 11, 13, 15, -1, -1, -1, -1, 5, 7, 9, 6, 8, 10)
LAYOUTS = ("h36m", "coco")


@dataclass
class Import2DConfig:
    """Options of `h36m import-2d`."""
    results: str | os.PathLike              # COCO-style results JSON (or an annotation file)
    out: str | os.PathLike                  # the VideoPose3D 2-D .npz to write
    images: str | os.PathLike | None = None  # a COCO annotation file whose `images` give the results' image names
    layout: str = "h36m"                    # 'h36m' (mmpose H36M-17) or 'coco' (COCO-17)
    derive: bool = False                    # coco: derive the five joints COCO lacks (see the module doc)


@dataclass
class Import2DResult:
    out: Path
    detections: int                          # read
    used: int                                # placed in a sequence
    sequences: int
    filled: int                              # (camera, frame) slots without a detection (interpolated, confidence 0)
    duplicates: int                          # detections of an image that already had a better one
    unmatched: dict[str, list[str]] = field(default_factory=dict)    # reason -> image names / ids
    skipped: dict[str, str] = field(default_factory=dict)            # sequence key -> why left out

    @property
    def unmatched_count(self) -> int:
        return sum(len(v) for v in self.unmatched.values())


def parse_image_name(name: str) -> tuple[str, str, str, int] | None:
    """`'S1/S1_Directions_1.54138969/S1_Directions_1.54138969_000001.jpg'` -> ('S1', 'Directions 1', '54138969', 0):
    subject, raw sequence base name, camera id, video frame (0-based); None when not in that convention."""
    m = IMAGE_NAME.match(PurePosixPath(name.replace("\\", "/")).name)
    if m is None:
        return None
    subject, seq, cam, number = m.groups()
    if int(number) < 1:
        return None
    return subject.upper(), seq.replace("_", " "), cam, int(number) - 1


def to_h36m(kps: np.ndarray, layout: str, derive: bool = False) -> np.ndarray:
    """(..., 17, 3) keypoints (x, y, score) in `layout` -> (..., 17, 3) in the 17 joints of h36m_tools.skeleton."""
    check_layout(layout, derive)
    if layout == "h36m":
        return kps
    out = np.zeros(kps.shape[:-2] + (17, 3), kps.dtype)
    for j, c in enumerate(COCO_TO_H36M):
        if c >= 0:
            out[..., j, :] = kps[..., c, :]

    def mid(a, b):
        xy = (a[..., :2] + b[..., :2]) / 2
        return np.concatenate([xy, np.minimum(a[..., 2:], b[..., 2:])], -1)

    out[..., 0, :] = mid(kps[..., 11, :], kps[..., 12, :])
    out[..., 8, :] = mid(kps[..., 5, :], kps[..., 6, :])
    out[..., 7, :] = mid(out[..., 0, :], out[..., 8, :])
    out[..., 9, :] = kps[..., 0, :]
    out[..., 10, :] = mid(kps[..., 1, :], kps[..., 2, :])
    return out


def check_layout(layout: str, derive: bool) -> None:
    """ValueError (one line) for a layout that cannot be mapped to the 17 joints of h36m_tools.skeleton."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown keypoint layout {layout!r} (expected one of {', '.join(LAYOUTS)})")
    if layout == "coco" and not derive:
        raise ValueError("COCO-17 has no hip centre, spine, thorax, neck/nose or head of H36M's skeleton: give "
                         "--derive to derive them from the hips, shoulders, nose and eyes (approximations), or use "
                         "an H36M-17 detector's results")


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES):
    """A JSON file's value, its size bounded first; H36MError naming the file on any problem."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise H36MError(path, f"{size} bytes, more than the {max_bytes} a results file may have")
        with open(path, "rb") as fh:
            return json.loads(fh.read().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise H36MError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise H36MError(path, f"not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise H36MError(path, "JSON nested too deeply") from None


def import_2d(cfg: Import2DConfig) -> Import2DResult:
    """Read cfg.results, write cfg.out (atomically); see the module doc."""
    check_layout(cfg.layout, cfg.derive)
    results = read_json(cfg.results)
    images, detections = _split(results, cfg.results)
    flags = isinstance(results, dict)
    if cfg.images is not None:
        more, _ = _split(read_json(cfg.images), cfg.images, need_detections=False)
        images = {**more, **images}
    n_joints = 17
    best: dict[tuple[str, str, str, int], tuple[float, np.ndarray]] = {}
    unmatched: dict[str, list[str]] = {}
    duplicates = 0
    nominal = {c: nominal_frame(c, 1, 1)[1] for c in CAMERA_IDS}     # nominal width per camera
    for i, det in enumerate(detections):
        where = f"detection {i}"
        name, width = _image_of(det, images, cfg.results, where)
        if name is None:
            unmatched.setdefault("image id not in the images list", []).append(str(det.get("image_id")))
            continue
        parsed = parse_image_name(name)
        if parsed is None:
            unmatched.setdefault("image name not in the convention S1_Directions_1.54138969_000001.jpg",
                                 []).append(name)
            continue
        subject, seq, cam, frame = parsed
        entry = sequence_table().get(subject, {}).get(seq)
        if subject not in SUBJECTS or cam not in CAMERA_IDS or entry is None:
            unmatched.setdefault("unknown subject, sequence or camera", []).append(name)
            continue
        if frame >= max(entry["video_frames_per_camera"]):
            unmatched.setdefault("frame beyond the sequence's video", []).append(name)
            continue
        kps = _keypoints(det, cfg.results, where, n_joints, flags)
        kps = to_h36m(kps, cfg.layout, cfg.derive)
        scale = nominal[cam] / width if width else 1.0
        kps[:, :2] *= scale
        bound = 4.0 * nominal[cam]
        if np.abs(kps[:, :2]).max() > bound:
            raise H36MError(cfg.results, f"{where} ({name}): keypoints beyond {bound:.0f} px of the image")
        score = _number(det.get("score", float(kps[:, 2].mean())), cfg.results, f"{where} score", 0.0, math.inf)
        key = (subject, seq, cam, frame)
        if key in best:
            duplicates += 1
            if best[key][0] >= score:
                continue
        best[key] = (score, kps)
    pos, conf, skipped, filled = _assemble(best)
    if not pos:
        why = "; ".join(f"{len(v)} with {k}" for k, v in unmatched.items()) or "no detections"
        raise H36MError(cfg.results, f"no sequence with all 4 cameras to import ({why})")
    out = Path(cfg.out)
    write_npz(out, positions_2d=pos, confidence_2d=conf, metadata=metadata_2d())
    used = sum(1 for subject, seq, _, _ in best if vp3d_action(seq) in pos.get(subject, {}))
    return Import2DResult(out, len(detections), used, sum(len(v) for v in pos.values()), filled, duplicates,
                          unmatched, skipped)


def _split(data, path, need_detections: bool = True) -> tuple[dict, list]:
    """(image id -> (file name, width or None), detections) of a results list or an annotation dict."""
    images: dict = {}
    if isinstance(data, list):
        detections = data
    elif isinstance(data, dict):
        detections = data.get("annotations", [])
        raw = data.get("images", [])
        if not isinstance(raw, list):
            raise H36MError(path, "'images' is not a list")
        for i, im in enumerate(raw):
            if not isinstance(im, dict) or not isinstance(im.get("file_name"), str) or "id" not in im:
                raise H36MError(path, f"images[{i}] has no file_name and id")
            if len(im["file_name"]) > MAX_NAME:
                raise H36MError(path, f"images[{i}]: a file name longer than {MAX_NAME} characters")
            width = im.get("width")
            if width is not None:
                width = _number(width, path, f"images[{i}] width", 1, 100_000)
            images[_id(im["id"], path, f"images[{i}] id")] = (im["file_name"], width)
    else:
        raise H36MError(path, "neither a list of detections nor a COCO annotation object")
    if not isinstance(detections, list) or (need_detections and not detections):
        raise H36MError(path, "no detections (an empty list, or no 'annotations')")
    return images, detections


def _id(value, path, where):
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise H36MError(path, f"{where}: an image id must be an integer or a string")
    if isinstance(value, str) and len(value) > MAX_NAME:
        raise H36MError(path, f"{where}: an image id longer than {MAX_NAME} characters")
    return value


def _image_of(det, images: dict, path, where) -> tuple[str | None, float | None]:
    """The image name and width a detection refers to (name None: an id the images list lacks)."""
    if not isinstance(det, dict):
        raise H36MError(path, f"{where} is not an object")
    for k in ("file_name", "image_name"):
        if isinstance(det.get(k), str):
            name = det[k]
            if len(name) > MAX_NAME:
                raise H36MError(path, f"{where}: a file name longer than {MAX_NAME} characters")
            return name, None
    if "image_id" not in det:
        raise H36MError(path, f"{where} has no image_id")
    image_id = _id(det["image_id"], path, f"{where} image_id")
    if image_id in images:
        return images[image_id]
    if isinstance(image_id, str):                  # a name, in the convention or not
        return image_id, None
    return None, None


def _number(value, path, where, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise H36MError(path, f"{where}: {value!r} is not a finite number in [{lo}, {hi}]")
    return float(value)


def _keypoints(det: dict, path, where: str, n_joints: int, flags: bool) -> np.ndarray:
    """(17, 3) float64 x, y, score of a detection, every value checked (finite; scores in [0, 1]; `flags`: the third
    values are an annotation's visibility flags, read as score 1 where visible)."""
    kps = det.get("keypoints")
    if not isinstance(kps, list) or len(kps) != 3 * n_joints:
        got = len(kps) if isinstance(kps, list) else type(kps).__name__
        raise H36MError(path, f"{where}: keypoints must be a list of {3 * n_joints} numbers (17 joints x, y, "
                              f"score), got {got}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in kps):
        raise H36MError(path, f"{where}: keypoints hold a value that is not a number")
    arr = np.asarray(kps, np.float64).reshape(n_joints, 3)
    if not np.isfinite(arr).all():
        raise H36MError(path, f"{where}: keypoints hold a non-finite value")
    if flags:                                              # an annotation's visibility flags 0 / 1 / 2
        if not np.isin(arr[:, 2], (0, 1, 2)).all():
            raise H36MError(path, f"{where}: a visibility flag other than 0, 1, 2")
        arr[:, 2] = arr[:, 2] > 0
    elif (arr[:, 2] < 0).any() or (arr[:, 2] > 1).any():
        raise H36MError(path, f"{where}: a keypoint score outside [0, 1]")
    return arr


def _assemble(best: dict) -> tuple[dict, dict, dict, int]:
    """positions_2d, confidence_2d (VideoPose3D layout), left-out sequences and the count of filled slots."""
    by_seq: dict[tuple[str, str], dict[str, dict[int, np.ndarray]]] = {}
    for (subject, seq, cam, frame), (_, kps) in best.items():
        by_seq.setdefault((subject, seq), {}).setdefault(cam, {})[frame] = kps
    pos: dict = {}
    conf: dict = {}
    skipped: dict[str, str] = {}
    filled = 0
    for (subject, seq), cams in sorted(by_seq.items()):
        key = f"{subject}/{seq.replace(' ', '_')}"
        missing = [c for c in CAMERA_IDS if c not in cams]
        if missing:
            skipped[key] = f"no detections for camera {', '.join(missing)}"
            continue
        n = max(max(frames) for frames in cams.values()) + 1
        views, confs = [], []
        for cam in CAMERA_IDS:
            frames = np.array(sorted(cams[cam]))
            kps = np.stack([cams[cam][f] for f in frames])             # (M, 17, 3)
            xy = np.empty((n, 17, 2))
            t = np.arange(n)
            for j in range(17):
                for d in range(2):
                    xy[:, j, d] = np.interp(t, frames, kps[:, j, d])
            c = np.zeros((n, 17))
            c[frames] = kps[:, :, 2]
            filled += n - len(frames)
            views.append(xy.astype(np.float32))
            confs.append(c.astype(np.float32))
        action = vp3d_action(seq)
        pos.setdefault(subject, {})[action] = views
        conf.setdefault(subject, {})[action] = confs
    return pos, conf, skipped, filled
