"""`h36m extract`: a release (real or `h36m synth`) -> an extracted dataset (`extract.dataset` format).

The release may be the official unpacked tree, h36m-fetch's tree or the downloaded archives (`names.discover`);
archive members are read in place through temporary copies (`h36m_tools.archives`). Per sequence, in one worker
process: read the 3-D poses (D3_Positions; without it, camera coordinates from D3_Positions_mono or
D3_Positions_mono_universal through the extrinsics), the per-camera D2_Positions / D3_Positions_mono, then camera
after camera: probe its video, check its poses against the cameras, decode it once, front to back (one ffmpeg
decoder and at most one temporary video copy at a time), cutting the person's square crop out of every kept frame
(`--every N`: the frames whose index is a multiple of N) and JPEG-encoding it once. Rows are synchronised by index
(pose row i = video frame i of every camera), trimmed to the shortest of the videos and pose files. The data file
and then its record are written atomically; `extract.store` rebuilds manifest.json and cameras.json from the records.

Outcomes per sequence: 'done'; 'skipped' (an expected gap of the release: a camera missing, unreadable or truncated
leaves fewer than `min_views` cameras, or no poses); 'failed' (bad input: a damaged CDF, poses that disagree with
the cameras, a mask file that cannot be read, a damaged archive of its subject, a write that fails, a full disk).
Each reason is one line naming the file (or `ARCHIVE:MEMBER`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from h36m.h36m_tools.cameras import Camera, CameraSet, camera_to_world, world_to_camera
from h36m.h36m_tools.errors import H36MError
from h36m.h36m_tools.names import SequenceFiles, camera_order
from h36m.h36m_tools.skeleton import to17

from h36m.pipelines.extract import store
from h36m.pipelines.extract.plan import ExtractConfig, Plan, PlannedSequence, load_cameras, make_plan
from h36m.pipelines.extract.dataset import SequenceArrays, SequenceMeta, sequence_path, write_sequence
from h36m.pipelines.extract.spool import Spool


BUNDLED_CAMERAS = "h36m_tools/data/cameras.json"


class Skip(H36MError):
    """An expected gap of the release (missing or unreadable camera, no poses): the sequence is skipped, not failed."""


class _Damaged(Exception):
    """The sequence's subject has a damaged archive (`SequenceFiles.problems`): it fails with that line."""

    def __init__(self, line: str):
        super().__init__(line)
        self.line = line


@dataclass
class SequenceResult:
    """What happened to one sequence (picklable: returned by worker processes)."""
    key: str
    status: str                                      # 'done', 'skipped' or 'failed'
    reason: str = ""                                 # one line naming the file ('' when done)
    frames: int = 0
    cameras: list[str] = field(default_factory=list)
    trimmed: dict[str, int] = field(default_factory=dict)
    bbox: str = ""
    notes: list[str] = field(default_factory=list)
    decoded_frames: int = 0                          # video frames decoded (for speed reports)
    pose3d_source: str = ""                          # names.POSE3D_SOURCES ('' when not done)


@dataclass
class ExtractEvent:
    """Progress report passed to `on_progress`: kind 'finished' once per sequence of this run."""
    kind: str
    result: SequenceResult


# ----------------------------------------------------------------------------------------- poses and cameras

def _camera_for_video(cs: CameraSet, subject: str, cam_id: str, width: int, height: int, source: str) -> Camera:
    if subject not in cs.extrinsics or cam_id not in cs.extrinsics[subject]:
        raise H36MError(source, f"no extrinsics for {subject} camera {cam_id}")
    return Camera(cam_id, cs.intrinsics[cam_id].for_video(width, height), cs.extrinsics[subject][cam_id])


def _check_close(path: Path, ours: np.ndarray, theirs: np.ndarray, tol: float, what: str, unit: str) -> None:
    n = min(len(ours), len(theirs))
    err = float(np.max(np.abs(ours[:n] - theirs[:n]))) if n else 0.0
    if not err < tol:
        raise H36MError(path, f"{what} by up to {err:.4g} {unit} (> {tol:g} {unit}); wrong cameras (see --cameras) "
                              f"or mismatched files")


def _read17(path, dims: int) -> np.ndarray:
    """The 17 joints of a pose CDF (file or archive member), every row checked finite."""
    from h36m.h36m_tools.cdf import read_pose

    joints = to17(read_pose(path, dims))
    bad = np.flatnonzero(~np.isfinite(joints).all(axis=(1, 2)))
    if bad.size:
        raise H36MError(path, f"{bad.size} rows with non-finite joints (first: row {bad[0]})")
    return joints


def _read_finite(path, dims: int) -> np.ndarray:
    """The 17 joints of a per-camera CDF (file or archive member), checked finite."""
    from h36m.h36m_tools.cdf import read_pose

    joints = to17(read_pose(path, dims))
    if not np.isfinite(joints).all():
        raise H36MError(path, "non-finite joint values")
    return joints


@dataclass
class _Poses:
    """A sequence's 3-D poses: world joints, where they came from, and the camera-frame files of the same skeleton."""
    world: np.ndarray                        # (N, 17, 3) world mm
    source: str                              # names.POSE3D_SOURCES: 'world', 'camera', 'camera, universal skeleton'
    what: str                                # how messages call the source ('D3_Positions', ...)
    file: object                             # the file (Path or Member) they were read from
    mono: dict                               # camera id -> camera-frame file (Path or Member) of the same skeleton
    read: dict[str, np.ndarray] = field(default_factory=dict)      # camera-frame joints already read, per camera


def _world_poses(files: SequenceFiles, cs: CameraSet) -> _Poses:
    """World joints from D3_Positions or, without it, from the first camera's camera-frame joints through its
    extrinsics (X_world = R^T (X_cam - t)); Skip when the sequence has no 3-D poses at all."""
    source = files.pose3d_source
    if source is None:
        raise Skip(Path(files.root) / files.subject / "MyPoseFeatures" / "D3_Positions" / f"{files.name}.cdf",
                   "no poses (file not found, nor D3_Positions_mono or D3_Positions_mono_universal files)")
    if source == "world":
        return _Poses(_read17(files.d3, 3), source, "D3_Positions", files.d3, files.d3_mono)
    mono, what = ((files.d3_mono, "D3_Positions_mono") if source == "camera"
                  else (files.d3_mono_universal, "D3_Positions_mono_universal"))
    cid = camera_order(mono)[0]
    cam3d = _read17(mono[cid], 3)
    if files.subject not in cs.extrinsics or cid not in cs.extrinsics[files.subject]:
        raise H36MError(mono[cid], f"no extrinsics for {files.subject} camera {cid}")
    ext = cs.extrinsics[files.subject][cid]
    return _Poses(camera_to_world(cam3d, ext.R, ext.t), source, f"camera {cid}'s {what}", mono[cid], mono,
                  {cid: cam3d})


def _pose_view(poses: _Poses, d2: np.ndarray | None, d2_file, mono: np.ndarray | None, mono_file,
               camera: Camera, cfg: ExtractConfig) -> tuple[np.ndarray, np.ndarray]:
    """One camera's 2-D joints (D2_Positions, checked against the projection of the 3-D poses unless those are the
    universal skeleton; else the projection) and camera-frame 3-D joints (its own file, checked against the world
    joints through the camera; else computed)."""
    proj = camera.project(poses.world)
    cam3d = world_to_camera(poses.world, camera.extrinsics.R, camera.extrinsics.t)
    if mono is not None:
        if camera.id not in poses.read:
            _check_close(mono_file, cam3d, mono, cfg.mono_tolerance_mm,
                         f"{Path(str(mono_file)).parent.name} differs from {poses.what} through the cameras", "mm")
        cam3d = mono
    if d2 is not None:
        if poses.source != "camera, universal skeleton":
            _check_close(d2_file, proj, d2, cfg.d2_tolerance_px,
                         f"D2_Positions differ from the projection of {poses.what}", "px")
        proj = d2
    return proj, cam3d


# ----------------------------------------------------------------------------------------- one camera

#: Masks may be scaled copies of their video's frame (e.g. half its size); their aspect ratio may differ from the
#: video's by this share (real 1000x1000 masks of 1000x1002 videos). More is another picture: the file is not used.
MASK_SIZE_TOLERANCE = 0.01


class _MaskSize(H36MError):
    """A mask file whose masks are not the size of its video."""


def _mask_boxes(path, n: int, width: int, height: int, margin: float) -> tuple[np.ndarray, int]:
    """(n, 4) boxes from a ground_truth_bb file or archive member (NaN where a frame has no mask or an empty
    one), and how many. Raises _MaskSize for masks of another aspect ratio than the video's."""
    from h36m.h36m_tools.archives import local_file
    from h36m.h36m_tools.masks import iter_masks

    from h36m.pipelines.extract.crop import mask_extent, square_box

    boxes = np.full((n, 4), np.nan)
    count = 0
    with local_file(path) as local:
        for t, m in enumerate(iter_masks(local)):
            if t >= n:
                break
            if abs((m.shape[0] / height) / (m.shape[1] / width) - 1) > MASK_SIZE_TOLERANCE:
                raise _MaskSize(path, f"masks are {m.shape[1]}x{m.shape[0]}, not the shape of the {width}x{height} "
                                      f"video")
            e = mask_extent(m, width, height)
            if e is not None:
                boxes[t] = square_box(e, margin)
                count += 1
    return boxes, count


def _crop_video(video: Path, camera: Camera, boxes: np.ndarray, cfg: ExtractConfig, put: Callable[[bytes], None]
                ) -> int:
    """Decode one video front to back, `put` the JPEG crops of its first len(boxes) frames that `--every` keeps
    (frame index % every == 0); returns its frames."""
    from h36m.h36m_tools.video import VideoInfo

    from h36m.pipelines.extract.crop import crop_jpeg_yuv420, decode_windows
    from h36m.pipelines.extract.decode import iter_yuv420

    info = VideoInfo(camera.intrinsics.width, camera.intrinsics.height, 50.0)
    window = decode_windows(boxes, info.width, info.height)          # only the part the boxes need
    local = np.asarray(boxes, float) - window.offsets()
    n = 0
    for n, (y, u, v) in enumerate(iter_yuv420(video, info, window=window), start=1):
        if n <= len(boxes) and (n - 1) % cfg.every == 0:
            put(crop_jpeg_yuv420(y, u, v, local[n - 1], cfg.size, cfg.quality))
    return n


# ----------------------------------------------------------------------------------------- one sequence

@dataclass
class _Views:
    """The cameras of a sequence still in use, and why the others were left out (errors naming their files)."""
    total: int
    min_views: int
    cameras: dict[str, Camera] = field(default_factory=dict)
    dropped: dict[str, H36MError] = field(default_factory=dict)

    def drop(self, cam_id: str, why: H36MError, check: bool = True) -> None:
        self.cameras.pop(cam_id, None)
        self.dropped[cam_id] = why
        if check:
            self.check()

    def check(self) -> None:
        """Skip the sequence when fewer than `min_views` cameras are left, naming the first camera's problem."""
        usable = self.total - len(self.dropped)
        if usable < self.min_views:
            first = next(iter(self.dropped.values()))
            raise Skip(first.path, f"{first.problem}; {usable} of {self.total} cameras usable, --min-views is "
                                   f"{self.min_views}")


def _camera_boxes(files: SequenceFiles, camera: Camera, j2d: np.ndarray, n: int, cfg: ExtractConfig
                  ) -> tuple[np.ndarray, bool, str | None]:
    """One camera's (n, 4) boxes: from its masks with --bbox mask (joints where the file or a frame has none), else
    from the 17 joints; also whether a mask was used, and a note on the fallback."""
    from h36m.pipelines.extract.crop import joints_box

    boxes = joints_box(j2d[:n], cfg.margin)
    if cfg.bbox != "mask":
        return boxes, False, None
    if camera.id not in files.masks:
        return boxes, False, f"camera {camera.id}: no mask file, boxes from joints"
    try:
        mb, count = _mask_boxes(files.masks[camera.id], n, camera.intrinsics.width, camera.intrinsics.height,
                                cfg.margin)
    except _MaskSize as e:             # masks of another size: a wrong crop if stretched
        return boxes, False, f"camera {camera.id}: {e}; boxes from joints"
    ok = ~np.isnan(mb[:, 0])
    boxes[ok] = mb[ok]
    note = f"camera {camera.id}: {n - count} frames without a mask, boxes from joints" if count < n else None
    return boxes, bool(ok.any()), note


def _extract(files: SequenceFiles, cfg: ExtractConfig, cs: CameraSet, source: str) -> tuple[SequenceResult, dict]:
    """One sequence: the poses first (CDFs), then camera after camera in H36M's view order: its video (a temporary
    copy when it is an archive member, removed after) probed, its poses checked, its boxes made, then decoded once
    front to back with the crops spooled. A camera whose video is missing, unreadable or truncated is left out."""
    from h36m.h36m_tools.archives import local_file, name_member
    from h36m.h36m_tools.video import probe

    from h36m.pipelines.extract.crop import to_crop

    poses = _world_poses(files, cs)
    order = camera_order(cs.intrinsics)
    views = _Views(len(order), cfg.min_views)
    for cid in order:
        if cid not in files.videos:
            views.drop(cid, H36MError(Path(files.root) / files.subject / "Videos" / f"{files.name}.{cid}.mp4",
                                      "video not found"), check=False)
    views.check()
    ids = [c for c in order if c in files.videos]
    d2 = {c: _read_finite(files.d2[c], 2) for c in ids if c in files.d2}
    mono = {c: poses.read.get(c) if c in poses.read else _read_finite(poses.mono[c], 3)
            for c in ids if c in poses.mono}
    n_pose = min([len(poses.world)] + [len(a) for a in (*d2.values(), *mono.values())])

    path = sequence_path(cfg.out, files.subject, files.name)
    spool = None
    boxes, j2d, j3d, video_frames, notes, used_mask = {}, {}, {}, {}, [], False
    try:
        spool = Spool(path.parent)
        for cid in ids:
            ref = files.videos[cid]
            try:
                with local_file(ref, path.parent) as video:
                    try:
                        info = probe(video)
                    except H36MError as e:
                        views.drop(cid, name_member(e, video, ref))
                        continue
                    cam = _camera_for_video(cs, files.subject, cid, info.width, info.height, source)
                    views.cameras[cid] = cam
                    j2d[cid], j3d[cid] = _pose_view(poses, d2.get(cid), files.d2.get(cid), mono.get(cid),
                                                    poses.mono.get(cid), cam, cfg)
                    boxes[cid], mask_used, note = _camera_boxes(files, cam, j2d[cid], n_pose, cfg)
                    used_mask = used_mask or mask_used
                    notes += [note] if note else []
                    try:
                        frames = _crop_video(video, cam, boxes[cid], cfg, lambda data, c=cid: spool.put(c, data))
                    except H36MError as e:
                        spool.drop(cid)
                        views.drop(cid, name_member(e, video, ref))
                        continue
            except Skip:                        # too few cameras left (raised by views.drop above): once
                raise
            except H36MError as e:
                if e.path != str(ref):          # the archive member could not be copied: that camera only
                    raise
                views.drop(cid, e)
                continue
            if frames < n_pose - cfg.max_short_frames:
                spool.drop(cid)
                views.drop(cid, H36MError(ref, f"truncated video ({frames} frames, the poses have {n_pose})"))
                continue
            video_frames[cid] = frames
        if cfg.bbox == "mask" and not files.masks:
            notes = [f"no masks for {files.subject}: boxes from joints"]
        if poses.source == "camera, universal skeleton":
            notes.append("3-D joints of the universal skeleton (D3_Positions_mono_universal): not comparable with "
                         "results on the true skeleton" + ("" if files.d2 else "; 2-D joints projected from them"))
        notes += [f"camera {cid} left out: {why}" for cid, why in views.dropped.items()]
        ids = [c for c in ids if c in video_frames]
        T = min([n_pose] + [video_frames[c] for c in ids])
        if T < 1:
            raise Skip(poses.file, "no frame common to the poses and the videos")
        trimmed = {**{c: video_frames[c] - T for c in ids}, "poses": len(poses.world) - T}
        keep = np.arange(0, T, cfg.every)
        box = np.stack([boxes[c][keep] for c in ids], axis=1)                    # (K, V, 4)
        pose2d = np.stack([j2d[c][keep] for c in ids], axis=1)                   # (K, V, 17, 2)
        arrays = SequenceArrays(
            frame=keep, pose3d=poses.world[keep], pose3d_cam=np.stack([j3d[c][keep] for c in ids], axis=1),
            pose2d=pose2d, pose2d_crop=to_crop(pose2d, box, cfg.size), box=box, jpeg=spool.rows(ids, len(keep)))
        camera_params = [views.cameras[c].to_dict() for c in ids]
        meta = SequenceMeta(subject=files.subject, sequence=files.name, action=files.action, cameras=ids,
                            fps=50.0 / cfg.every, crop_size=cfg.size, frames=len(keep), trimmed=trimmed,
                            bbox="mask" if used_mask else "joints", margin=float(cfg.margin),
                            camera_params=camera_params, every=cfg.every, pose3d_source=poses.source)
        write_sequence(path, meta, arrays)
    except OSError as e:         # a full disk while spooling, copying a member or writing
        raise H36MError(path, f"cannot write ({e.strerror or e})") from None
    finally:
        if spool is not None:
            spool.close()
    entry = {"subject": files.subject, "sequence": files.name, "action": files.action, "frames": len(keep),
             "cameras": ids, "trimmed": trimmed, "file": path.relative_to(cfg.out).as_posix(), "bbox": meta.bbox,
             "notes": notes, "pose3d_source": poses.source}
    result = SequenceResult(files.key, "done", frames=len(keep), cameras=ids, trimmed=trimmed, bbox=meta.bbox,
                            notes=notes, decoded_frames=sum(video_frames.values()), pose3d_source=poses.source)
    return result, {"entry": entry, "camera_params": camera_params, "bytes": path.stat().st_size}


def extract_sequence(files: SequenceFiles, cfg: ExtractConfig) -> SequenceResult:
    """Extract one sequence into `cfg.out` and write its record; never raises for bad input (see the result)."""
    import cv2

    cv2.setNumThreads(1)       # one core per worker: the workers are the parallelism
    options = cfg.output_options()
    record = {"key": files.key, "options": options}
    try:
        if files.problems:           # a damaged archive of its subject: one line naming the archive and member
            raise _Damaged(files.problems[0])
        cs = load_cameras(cfg)
        result, extra = _extract(files, cfg, cs, str(cfg.cameras or BUNDLED_CAMERAS))
        record.update(status="done", **extra)
    except Skip as e:
        result = SequenceResult(files.key, "skipped", str(e))
    except _Damaged as e:
        result = SequenceResult(files.key, "failed", e.line)
    except H36MError as e:
        result = SequenceResult(files.key, "failed", str(e))
    except MemoryError:
        result = SequenceResult(files.key, "failed", f"{files.root}/{files.key}: out of memory")
    except Exception as e:   # a bug must not stop the other sequences; say where
        msg = " ".join(str(e).split())
        result = SequenceResult(files.key, "failed", f"{files.root}/{files.key}: internal error "
                                                     f"({type(e).__name__}: {msg})")
    if result.status != "done":
        record.update(status=result.status, reason=result.reason)
    try:
        store.write_json_atomic(store.record_path(cfg.out, files.key), record)
    except H36MError as e:
        if result.status == "done":
            result = dataclasses.replace(result, status="failed", reason=str(e))
    return result


# ----------------------------------------------------------------------------------------- a run

def plan_extract(cfg: ExtractConfig) -> Plan:
    """Check the options against OUT, discover the sequences and mark what this run does (nothing is written)."""
    load_cameras(cfg)
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise H36MError(cfg.out, "not a folder")
    options = cfg.output_options()
    store.check_options(cfg.out, options)
    return make_plan(cfg, is_done=lambda key: store.is_done(cfg.out, key, options))


def run_extract(cfg: ExtractConfig, plan: Plan | None = None,
                on_progress: Callable[[ExtractEvent], None] | None = None) -> list[SequenceResult]:
    """Extract this part's unfinished sequences over `cfg.workers` processes; rebuild the manifest after each.

    Returns one result per sequence done in this run, in plan order (sequences already done are not redone).
    """
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from h36m.pipelines.workers import die_with_parent

    plan = plan or plan_extract(cfg)
    todo: list[PlannedSequence] = plan.todo
    source, options = str(Path(cfg.raw).resolve()), cfg.output_options()
    store.prepare(cfg.out)
    results: dict[str, SequenceResult] = {}

    def finished(r: SequenceResult):
        results[r.key] = r
        try:
            store.rebuild(cfg.out, source, options)
        except H36MError as e:
            if r.status == "done":
                results[r.key] = dataclasses.replace(r, status="failed", reason=str(e))
        if on_progress:
            on_progress(ExtractEvent("finished", results[r.key]))

    if cfg.workers <= 1 or len(todo) <= 1:
        for s in todo:
            finished(extract_sequence(s.files, cfg))
    else:
        # forkserver, not fork: a caller that already ran OpenCV (or any thread pool) would hand its workers
        # locks held by threads that do not exist in them (cv2.setNumThreads then hangs)
        ctx = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(min(cfg.workers, len(todo)), mp_context=ctx, initializer=die_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(extract_sequence, s.files, cfg): s for s in todo}
            try:
                for fut in as_completed(futures):
                    s = futures[fut]
                    try:
                        r = fut.result()
                    except Exception as e:   # a worker died (killed, out of memory): report, go on
                        r = SequenceResult(s.key, "failed", f"{s.files.root}/{s.key}: worker process died "
                                                            f"({type(e).__name__})")
                    finished(r)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    store.rebuild(cfg.out, source, options)
    return [results[s.key] for s in todo if s.key in results]
