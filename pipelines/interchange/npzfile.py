"""Writing VideoPose3D-format `.npz` files, and VideoPose3D's action keys.

VideoPose3D's `data/prepare_data_h36m.py` keys each subject's sequences by the raw sequence base name with two
replacements, `TakingPhoto` -> `Photo` and `WalkingDog` -> `WalkDog` (`'Directions 1'`, `'Photo 1'`, `'WalkDog'`,
`'WalkTogether 1'`), and drops S11 `Directions` (its first camera's video is corrupt). docs/interchange.md.
"""
from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Callable, Iterable, Iterator

import numpy as np

from h36m.h36m_tools.cameras import CAMERA_IDS
from h36m.h36m_tools.errors import H36MError
from h36m.pipelines.files import atomic_path

#: What `metadata['pixel_frame']` says in every 2-D file this project writes: each camera's nominal frame.
PIXEL_FRAME = "nominal"


def metadata_2d() -> dict:
    """The `metadata` of every 17-joint 2-D file this project writes: VideoPose3D's keys (layout_name, num_joints,
    keypoints_symmetry; h36m_tools.npz.METADATA_2D) and the pixel frame its coordinates are in: `pixel_frame`
    'nominal' (each camera's nominal frame, h36m_tools.cameras.nominal_frame) and `frame_size` {camera id: [width,
    height]}. VideoPose3D's and PoseFormer's loaders read only their own keys."""
    from h36m.h36m_tools.cameras import CAMERA_IDS, bundled
    from h36m.h36m_tools.npz import METADATA_2D

    k = bundled().intrinsics
    return {**METADATA_2D, "pixel_frame": PIXEL_FRAME,
            "frame_size": {c: [int(k[c].width), int(k[c].height)] for c in CAMERA_IDS}}

#: (subject, raw sequence name) pairs VideoPose3D leaves out.
VP3D_DROPPED = (("S11", "Directions"),)


def vp3d_action(sequence: str) -> str:
    """A raw sequence base name (spaces or underscores) -> VideoPose3D's key: `'TakingPhoto 1'` -> `'Photo 1'`."""
    return sequence.replace("_", " ").replace("TakingPhoto", "Photo").replace("WalkingDog", "WalkDog")


def write_npz(path: str | os.PathLike, **members) -> None:
    """np.savez_compressed(path, **members), atomically (dicts become 0-d object arrays, as numpy stores them)."""
    write_npz_files({path: members})


def write_npz_files(files: dict) -> None:
    """Several .npz files as one unit: {path: members} each written through its temporary file (`write_npz`), and
    only once all are written, each renamed over its target. A failure in any write (a full disk, a bad value)
    leaves every target as it was; only a kill in the moment between two renames could leave a mixed set."""
    with ExitStack() as stack:
        tmps = {path: stack.enter_context(atomic_path(path)) for path in files}
        for path, members in files.items():
            with open(tmps[path], "wb") as fh:
                np.savez_compressed(fh, **members)


def loaded_sequences(items: Iterable[tuple[str, str, str, Callable]], skipped: dict[str, str]) -> Iterator[tuple]:
    """(key, subject, raw name, load()) per sequence -> (key, subject, raw name, what load() returned) for each one
    that is not VP3D_DROPPED, loads without an H36MError and has all 4 cameras (load() returns None otherwise); the
    others are named in `skipped` with the reason."""
    for key, subject, name, load in items:
        if (subject, name) in VP3D_DROPPED:
            skipped[key] = "left out as VideoPose3D does (corrupt video of camera 54138969)"
            continue
        try:
            value = load()
        except H36MError as e:
            skipped[key] = str(e)
            continue
        if value is None:
            skipped[key] = "not all 4 cameras"
            continue
        yield key, subject, name, value


def extracted_items(root, subjects, build: Callable) -> list[tuple[str, str, str, Callable]]:
    """The (key, subject, raw name, load()) items of `loaded_sequences` for the sequences of `subjects` in an
    extracted dataset: load() reads the sequence file (no JPEGs) and returns build(meta, arrays), or None where the
    sequence lacks one of the 4 cameras."""
    from h36m.pipelines.extract.dataset import list_sequences, read_meta, read_sequence

    def loader(path):
        def load():
            meta, arrays = read_sequence(path, with_jpeg=False)
            return build(meta, arrays) if list(meta.cameras) == list(CAMERA_IDS) else None
        return load

    items = []
    for path in list_sequences(root, subjects):
        meta = read_meta(path)
        items.append((meta.key, meta.subject, meta.sequence, loader(path)))
    return items


def camera_keypoints(kp: dict, path, subject: str, sequence: str, camera: str, frames: np.ndarray
                     ) -> np.ndarray | None:
    """One camera's 2-D joints of a sequence in a VideoPose3D 2-D file: kp = its positions_2d (h36m_tools.npz), path
    = the file (for errors) -> the whole (M, 17, 2) float64 array of nominal-frame px, M > frames.max(), or None when
    the file lacks that camera of that sequence. Raises H36MError naming the file on another joint count or fewer
    frames."""
    action = vp3d_action(sequence)
    cams = kp.get(subject, {}).get(action)
    idx = CAMERA_IDS.index(camera) if camera in CAMERA_IDS else -1
    if cams is None or not 0 <= idx < len(cams):
        return None
    arr = np.asarray(cams[idx], np.float64)[..., :2]
    if arr.shape[1] != 17:
        raise H36MError(path, f"{subject} {action!r} camera {camera}: {arr.shape[1]} joints, expected 17")
    if len(arr) <= int(frames.max()):
        raise H36MError(path, f"{subject} {action!r} camera {camera}: {len(arr)} frames, the sequence has "
                              f"{int(frames.max()) + 1}")
    return arr
