"""`h36m extract`: a release (real or `h36m synth`) -> an extracted dataset (`extract.dataset` format).

Per sequence, in one worker process: read and check the poses (D3_Positions; D3_Positions_mono and D2_Positions when
present), probe the 4 videos, then decode each video once, front to back (one ffmpeg decoder at a time), cutting the
person's square crop out of every frame and JPEG-encoding it once. Rows are synchronised by index (pose row i = video
frame i of every camera), trimmed to the shortest of the videos and pose files. The data file and then its record
are written atomically; `extract.store` rebuilds manifest.json and cameras.json from the records.

Outcomes per sequence: 'done'; 'skipped' (an expected gap of the release: a camera missing, unreadable or truncated
leaves fewer than `min_views` cameras, or no poses); 'failed' (bad input: a damaged CDF, poses that disagree with
the cameras, a mask file that cannot be read, a write that fails, a full disk). Each reason is one line naming the
file.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from h36m.h36m_tools.cameras import Camera, CameraSet, world_to_camera
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


def _read_checked(path: Path, dims: int, ours: np.ndarray, tol: float, what: str, unit: str) -> np.ndarray:
    """The 17 joints of a per-camera CDF, checked finite and within `tol` of what we computed from D3_Positions."""
    from h36m.h36m_tools.cdf import read_pose

    theirs = to17(read_pose(path, dims))
    if not np.isfinite(theirs).all():
        raise H36MError(path, "non-finite joint values")
    _check_close(path, ours, theirs, tol, what, unit)
    return theirs


def _pose_views(files: SequenceFiles, world17: np.ndarray, cameras: dict[str, Camera], cfg: ExtractConfig,
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per camera: 2-D joints (D2_Positions, checked against the projection of D3_Positions, else the projection)
    and camera-frame 3-D joints (D3_Positions_mono, checked against D3_Positions through the camera, else computed)."""
    j2d, j3d = {}, {}
    for cid, cam in cameras.items():
        proj = cam.project(world17)
        cam3d = world_to_camera(world17, cam.extrinsics.R, cam.extrinsics.t)
        if cid in files.d3_mono:
            cam3d = _read_checked(files.d3_mono[cid], 3, cam3d, cfg.mono_tolerance_mm,
                                  "D3_Positions_mono differs from D3_Positions through the camera", "mm")
        if cid in files.d2:
            proj = _read_checked(files.d2[cid], 2, proj, cfg.d2_tolerance_px,
                                 "D2_Positions differ from the projection of D3_Positions", "px")
        j2d[cid], j3d[cid] = proj, cam3d
    return j2d, j3d


# ----------------------------------------------------------------------------------------- one camera

def _mask_boxes(path: Path, n: int, width: int, height: int, margin: float) -> tuple[np.ndarray, int]:
    """(n, 4) boxes from a ground_truth_bb file (NaN where a frame has no mask or an empty one), and how many."""
    from h36m.h36m_tools.masks import iter_masks

    from h36m.pipelines.extract.crop import mask_extent, square_box

    boxes = np.full((n, 4), np.nan)
    count = 0
    for t, m in enumerate(iter_masks(path)):
        if t >= n:
            break
        e = mask_extent(m, width, height)
        if e is not None:
            boxes[t] = square_box(e, margin)
            count += 1
    return boxes, count


def _crop_video(video: Path, camera: Camera, boxes: np.ndarray, cfg: ExtractConfig, put: Callable[[bytes], None]
                ) -> int:
    """Decode one video front to back, `put` the JPEG crops of its first len(boxes) frames; returns its frames."""
    from h36m.h36m_tools.video import VideoInfo

    from h36m.pipelines.extract.crop import crop_jpeg_yuv420, decode_windows
    from h36m.pipelines.extract.decode import iter_yuv420

    info = VideoInfo(camera.intrinsics.width, camera.intrinsics.height, 50.0)
    window = decode_windows(boxes, info.width, info.height)          # only the part the boxes need
    local = np.asarray(boxes, float) - window.offsets()
    n = 0
    for n, (y, u, v) in enumerate(iter_yuv420(video, info, window=window), start=1):
        if n <= len(boxes):
            put(crop_jpeg_yuv420(y, u, v, local[n - 1], cfg.size, cfg.quality))
    return n


# ----------------------------------------------------------------------------------------- one sequence

@dataclass
class _Views:
    """The cameras of a sequence still in use, and why the others were left out (errors naming their files)."""
    cameras: dict[str, Camera]
    dropped: dict[str, H36MError]
    min_views: int

    def drop(self, cam_id: str, why: H36MError) -> None:
        self.cameras.pop(cam_id, None)
        self.dropped[cam_id] = why
        self.check()

    def check(self) -> None:
        """Skip the sequence when fewer than `min_views` cameras are left, naming the first camera's problem."""
        if len(self.cameras) < self.min_views:
            first = next(iter(self.dropped.values()))
            total = len(self.cameras) + len(self.dropped)
            raise Skip(first.path, f"{first.problem}; {len(self.cameras)} of {total} cameras usable, --min-views is "
                                   f"{self.min_views}")


def _open_views(files: SequenceFiles, cs: CameraSet, cfg: ExtractConfig, source: str) -> _Views:
    """Probe each camera's video (H36M's view order); cameras at the video's size."""
    from h36m.h36m_tools.video import probe

    views = _Views({}, {}, cfg.min_views)
    for cid in camera_order(cs.intrinsics):
        video = files.videos.get(cid)
        try:
            if video is None:
                raise H36MError(Path(files.root) / files.subject / "Videos" / f"{files.name}.{cid}.mp4",
                                "video not found")
            info = probe(video)
        except H36MError as e:
            views.dropped[cid] = e
            continue
        views.cameras[cid] = _camera_for_video(cs, files.subject, cid, info.width, info.height, source)
    views.check()
    return views


def _boxes(files: SequenceFiles, views: _Views, j2d: dict, n: int, cfg: ExtractConfig
           ) -> tuple[dict[str, np.ndarray], str, list[str]]:
    """Per camera (n, 4) boxes: from the masks with --bbox mask (joints where a file or a frame has none), else from
    the 17 joints; also the method actually used and notes on fallbacks."""
    from h36m.pipelines.extract.crop import joints_box

    boxes, notes, used_mask = {}, [], False
    for cid, cam in views.cameras.items():
        boxes[cid] = joints_box(j2d[cid][:n], cfg.margin)
        if cfg.bbox != "mask":
            continue
        if cid not in files.masks:
            notes.append(f"camera {cid}: no mask file, boxes from joints")
            continue
        mb, count = _mask_boxes(files.masks[cid], n, cam.intrinsics.width, cam.intrinsics.height, cfg.margin)
        ok = ~np.isnan(mb[:, 0])
        boxes[cid][ok] = mb[ok]
        used_mask = used_mask or bool(ok.any())
        if count < n:
            notes.append(f"camera {cid}: {n - count} frames without a mask, boxes from joints")
    if cfg.bbox == "mask" and not files.masks:
        notes = [f"no masks for {files.subject}: boxes from joints"]
    return boxes, ("mask" if used_mask else "joints"), notes


def _decode_views(files: SequenceFiles, views: _Views, boxes: dict, n: int, cfg: ExtractConfig, spool: Spool
                  ) -> dict[str, int]:
    """Decode each camera once, front to back, spooling its crops; video frames per camera kept. A camera that
    cannot be decoded, or is much shorter than the poses (truncated), is left out."""
    frames = {}
    for cid in list(views.cameras):
        try:
            frames[cid] = _crop_video(files.videos[cid], views.cameras[cid], boxes[cid], cfg,
                                      lambda data, cid=cid: spool.put(cid, data))
        except H36MError as e:
            spool.drop(cid)
            views.drop(cid, e)
            continue
        if frames[cid] < n - cfg.max_short_frames:
            spool.drop(cid)
            views.drop(cid, H36MError(files.videos[cid], f"truncated video ({frames.pop(cid)} frames, the poses "
                                                         f"have {n})"))
    return frames


def _extract(files: SequenceFiles, cfg: ExtractConfig, cs: CameraSet, source: str) -> tuple[SequenceResult, dict]:
    from h36m.h36m_tools.cdf import read_pose

    from h36m.pipelines.extract.crop import to_crop

    if files.d3 is None:
        raise Skip(Path(files.root) / files.subject / "MyPoseFeatures" / "D3_Positions" / f"{files.name}.cdf",
                   "no poses (file not found)")
    world17 = to17(read_pose(files.d3, 3))
    bad = np.flatnonzero(~np.isfinite(world17).all(axis=(1, 2)))
    if bad.size:
        raise H36MError(files.d3, f"{bad.size} rows with non-finite joints (first: row {bad[0]})")
    views = _open_views(files, cs, cfg, source)
    j2d, j3d = _pose_views(files, world17, views.cameras, cfg)
    n_pose = min([len(world17)] + [len(a) for a in j2d.values()] + [len(a) for a in j3d.values()])
    boxes, bbox, notes = _boxes(files, views, j2d, n_pose, cfg)

    path = sequence_path(cfg.out, files.subject, files.name)
    spool = None
    try:
        spool = Spool(path.parent)
        video_frames = _decode_views(files, views, boxes, n_pose, cfg, spool)
        notes += [f"camera {cid} left out: {why}" for cid, why in views.dropped.items()]
        ids = list(views.cameras)
        T = min([n_pose] + [video_frames[c] for c in ids])
        if T < 1:
            raise Skip(files.d3, "no frame common to the poses and the videos")
        trimmed = {**{c: video_frames[c] - T for c in ids}, "poses": len(world17) - T}
        box = np.stack([boxes[c][:T] for c in ids], axis=1)                       # (T, V, 4)
        pose2d = np.stack([j2d[c][:T] for c in ids], axis=1)                      # (T, V, 17, 2)
        arrays = SequenceArrays(
            frame=np.arange(T), pose3d=world17[:T], pose3d_cam=np.stack([j3d[c][:T] for c in ids], axis=1),
            pose2d=pose2d, pose2d_crop=to_crop(pose2d, box, cfg.size), box=box, jpeg=spool.rows(ids, T))
        camera_params = [views.cameras[c].to_dict() for c in ids]
        meta = SequenceMeta(subject=files.subject, sequence=files.name, action=files.action, cameras=ids, fps=50.0,
                            crop_size=cfg.size, frames=T, trimmed=trimmed, bbox=bbox, margin=float(cfg.margin),
                            camera_params=camera_params)
        write_sequence(path, meta, arrays)
    except OSError as e:         # a full disk while spooling or writing
        raise H36MError(path, f"cannot write ({e.strerror or e})") from None
    finally:
        if spool is not None:
            spool.close()
    entry = {"subject": files.subject, "sequence": files.name, "action": files.action, "frames": T, "cameras": ids,
             "trimmed": trimmed, "file": path.relative_to(cfg.out).as_posix(), "bbox": bbox, "notes": notes}
    result = SequenceResult(files.key, "done", frames=T, cameras=ids, trimmed=trimmed, bbox=bbox, notes=notes,
                            decoded_frames=sum(video_frames.values()))
    return result, {"entry": entry, "camera_params": camera_params, "bytes": path.stat().st_size}


def extract_sequence(files: SequenceFiles, cfg: ExtractConfig) -> SequenceResult:
    """Extract one sequence into `cfg.out` and write its record; never raises for bad input (see the result)."""
    import cv2

    cv2.setNumThreads(1)       # one core per worker: the workers are the parallelism
    options = cfg.output_options()
    record = {"key": files.key, "options": options}
    try:
        cs = load_cameras(cfg)
        result, extra = _extract(files, cfg, cs, str(cfg.cameras or BUNDLED_CAMERAS))
        record.update(status="done", **extra)
    except Skip as e:
        result = SequenceResult(files.key, "skipped", str(e))
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
    from concurrent.futures import ProcessPoolExecutor, as_completed

    plan = plan or plan_extract(cfg)
    todo: list[PlannedSequence] = plan.todo
    source, options = str(Path(cfg.raw).resolve()), cfg.output_options()
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
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
        with ProcessPoolExecutor(min(cfg.workers, len(todo)), mp_context=ctx) as pool:
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
