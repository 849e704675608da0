"""`h36m synth`: a synthetic release in the exact H36M layout, names and formats.

What a program written for the real release sees is the same: `S<n>/Videos/<Seq>.<cam>.mp4` (H.264, 50 fps, the
real sizes times `scale`), `MyPoseFeatures/D3_Positions/<Seq>.cdf` (world mm), `D3_Positions_mono/<Seq>.<cam>.cdf`
(camera mm), `D2_Positions/<Seq>.<cam>.cdf` (pixels of the video, H36M distortion) and
`MySegmentsMat/ground_truth_bb/<Seq>.<cam>.mat` (MAT v7.3 box masks), with the subjects' real sequence names and
the real cameras (intrinsics scaled by `scale`: a reader learns it as video width / 1000).

`write_layout` rewrites a release the two other ways users have it: the tree anibali/h36m-fetch leaves
(`S1/Videos/`, `S1/Poses_D2_Positions/`, `S1/Poses_D3_Positions_mono_universal/`; no world D3_Positions, no
masks) and the official per-subject archives (`Videos_S1.tgz`, `Poses_D3_Positions_S1.tgz`, ...), whose members are
the unpacked tree's paths.

The real quirks, on by default (`quirks=False` turns them off):
  * cameras 55011271 and 58860488 record 2-3 more video frames than the pose files hold;
  * S11 `Directions` camera 54138969 is truncated mid-file (undecodable), when S11 is generated;
  * one subject (`no_2d_subject`, S5 by default) has no D2_Positions and no masks.
"""
from __future__ import annotations

import os
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from h36m.h36m_tools import cdf, masks, video
from h36m.h36m_tools.cameras import CAMERA_IDS, bundled, project, world_to_camera
from h36m.h36m_tools.names import ACTIONS, canonical_action, sequence_table

EXTRA_FRAME_CAMERAS = ("55011271", "58860488")
TRUNCATED = ("S11", "Directions", "54138969")
FPS = 50


#: What every subject performs unless told otherwise: a lifter learns the same actions it is tested on, as with the real
#: release (with actions spread over the subjects it stays near the mean pose: bench/RESULTS_train.md).
DEFAULT_ACTIONS = ("Directions", "Eating", "Walking")


@dataclass(frozen=True)
class SynthConfig:
    """Options of `h36m synth`."""
    out: Path
    subjects: tuple[str, ...] = ("S1", "S5", "S9", "S11")
    actions: tuple[str, ...] = ()           # every subject performs these (canonical names, h36m_tools.names.ACTIONS),
                                            # as in the real release [default: DEFAULT_ACTIONS]
    sequences_per_subject: int | None = None  # instead of actions: this many actions per subject spread over the
                                            # subjects (more actions, each seen by fewer subjects: a lifter trained
                                            # on some meets unseen ones on S9 / S11)
    frames: int = 150
    scale: float = 0.25
    seed: int = 0
    quirks: bool = True
    no_2d_subject: str = "S5"
    noise: float = 3.0
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)


@dataclass(frozen=True)
class SynthJob:
    """One sequence to generate."""
    subject: str
    name: str
    frames: int
    index: int


def video_size(camera_id: str, scale: float) -> tuple[int, int]:
    """(width, height) of a synthetic video: the real size times `scale`, rounded to even numbers (H.264 4:2:0)."""
    k = bundled().intrinsics[camera_id]
    return 2 * max(int(round(k.width * scale / 2)), 8), 2 * max(int(round(k.height * scale / 2)), 8)


def choose_sequences(cfg: SynthConfig) -> list[SynthJob]:
    """Which real sequence names to generate: cfg.actions (DEFAULT_ACTIONS if none) for every subject, or
    sequences_per_subject actions spread over the subjects (S11 `Directions` included with quirks)."""
    table = sequence_table()
    if cfg.actions and cfg.sequences_per_subject is not None:
        raise ValueError("give the actions (--actions) or a number of sequences per subject (--sequences-per-subject), "
                         "not both")
    spread = cfg.sequences_per_subject is not None
    chosen = () if spread else cfg.actions or DEFAULT_ACTIONS
    unknown = [a for a in chosen if a not in ACTIONS]
    if unknown:
        raise ValueError(f"unknown action {unknown[0]!r} (H36M's are {', '.join(ACTIONS)})")
    jobs = []
    for k, subject in enumerate(cfg.subjects):
        if subject not in table:
            raise ValueError(f"unknown subject {subject!r} (H36M has S1-S11)")
        names = list(table[subject])
        by_action = {}
        for name, entry in table[subject].items():
            by_action.setdefault(entry["action_id"], {})[entry["subaction_id"]] = name
        actions = sorted(a for a in by_action if a != 1)
        if not spread:
            named = {canonical_action(by_action[a][1]): by_action[a] for a in actions}
            picks = [named[a][(k + j) % 2 + 1] for j, a in enumerate(chosen)]
        else:
            picks = [by_action[actions[(k * cfg.sequences_per_subject + j) % len(actions)]][(k + j) % 2 + 1]
                     for j in range(min(cfg.sequences_per_subject, len(names)))]
        if cfg.quirks and spread and subject == TRUNCATED[0] and TRUNCATED[1] not in picks and picks:
            picks[0] = TRUNCATED[1]
        seen = []
        for p in picks:
            if p not in seen:
                seen.append(p)
        jobs += [SynthJob(subject, name, cfg.frames, i) for i, name in enumerate(seen)]
    return jobs


def _rng(cfg: SynthConfig, *parts: str) -> np.random.Generator:
    return np.random.default_rng([cfg.seed] + [zlib.crc32(p.encode()) for p in parts])


def generate_sequence(cfg: SynthConfig, job: SynthJob) -> dict:
    """Write every file of one sequence; returns a summary (frames per camera, files written)."""
    from h36m.pipelines.synth.motion import animate, subject_offsets
    from h36m.pipelines.synth.render import background, bb_mask, render_frame

    root = Path(cfg.out) / job.subject
    feats = root / "MyPoseFeatures"
    cams = bundled().cameras(job.subject)
    rng = _rng(cfg, job.subject, job.name)
    extra = {c: (int(rng.integers(2, 4)) if cfg.quirks and c in EXTRA_FRAME_CAMERAS else 0) for c in CAMERA_IDS}
    world = animate(subject_offsets(job.subject, cfg.seed), canonical_action(job.name),
                    job.frames + max(extra.values()), FPS, rng)
    pose = world[: job.frames]
    cdf.write_pose(feats / "D3_Positions" / f"{job.name}.cdf", pose)
    with_2d = not (cfg.quirks and job.subject == cfg.no_2d_subject)
    frames_written = {}
    for cam in cams:
        w, h = video_size(cam.id, cfg.scale)
        k = cam.intrinsics.for_video(w, h)
        cam_xyz = world_to_camera(pose, cam.extrinsics.R, cam.extrinsics.t)
        cdf.write_pose(feats / "D3_Positions_mono" / f"{job.name}.{cam.id}.cdf", cam_xyz)
        if with_2d:
            cdf.write_pose(feats / "D2_Positions" / f"{job.name}.{cam.id}.cdf", project(cam_xyz, k))
        bg = background(cam, k, _rng(cfg, job.subject, cam.id, "room"))
        frng = _rng(cfg, job.subject, job.name, cam.id, "noise")
        boxes = []

        def frames():
            for t in range(job.frames + extra[cam.id]):
                img, sil = render_frame(bg, world[t], cam, k, frng, cfg.noise)
                boxes.append(bb_mask(sil))
                yield img

        path = root / "Videos" / f"{job.name}.{cam.id}.mp4"
        frames_written[cam.id] = video.write_video(path, frames(), w, h, fps=FPS)
        if with_2d:
            masks.write_masks(root / "MySegmentsMat" / "ground_truth_bb" / f"{job.name}.{cam.id}.mat", boxes)
        if cfg.quirks and (job.subject, job.name, cam.id) == TRUNCATED:
            size = path.stat().st_size
            with open(path, "r+b") as fh:
                fh.truncate(size // 2)
    return {"subject": job.subject, "sequence": job.name, "poses": job.frames, "video_frames": frames_written}


def run_synth(cfg: SynthConfig, on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """Generate the whole release under `cfg.out`, sequences in parallel over `cfg.workers` processes."""
    jobs = choose_sequences(cfg)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    results = []
    if cfg.workers <= 1:
        for job in jobs:
            results.append(generate_sequence(cfg, job))
            if on_done:
                on_done(results[-1])
    else:
        with ProcessPoolExecutor(cfg.workers) as pool:
            futures = [pool.submit(generate_sequence, cfg, job) for job in jobs]
            for fut in as_completed(futures):
                results.append(fut.result())
                if on_done:
                    on_done(results[-1])
    results.sort(key=lambda r: (int(r["subject"][1:]), r["sequence"]))
    return results


#: The official per-subject archives: name prefix -> the subject folder they unpack to.
ARCHIVES = {"Videos": "Videos", "Poses_D3_Positions": "MyPoseFeatures/D3_Positions",
            "Poses_D3_Positions_mono": "MyPoseFeatures/D3_Positions_mono",
            "Poses_D2_Positions": "MyPoseFeatures/D2_Positions",
            "Segments_mat_gt_bb": "MySegmentsMat/ground_truth_bb"}
#: h36m-fetch's tree: its folder -> the unpacked tree's folder it comes from. The synthetic camera-frame poses stand
#: in for the universal skeleton's (a synthetic subject's skeleton is its own).
FETCH_FOLDERS = {"Videos": "Videos", "Poses_D2_Positions": "MyPoseFeatures/D2_Positions",
                 "Poses_D3_Positions_mono_universal": "MyPoseFeatures/D3_Positions_mono"}
LAYOUTS = ("unpacked", "h36m-fetch", "archives")


def write_layout(release: str | Path, out: str | Path, layout: str) -> Path:
    """Write the unpacked release `release` into `out` as `layout` ('unpacked': a copy; 'h36m-fetch'; 'archives':
    one gzip tar per subject and kind, members in name order, fixed times and owners so equal input gives equal
    bytes). Files are hard-linked where the file system allows (the release is read-only to readers)."""
    import shutil
    import tarfile

    release, out = Path(release), Path(out)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    out.mkdir(parents=True, exist_ok=True)

    def link(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)

    subjects = sorted((p for p in release.iterdir() if p.is_dir() and p.name[:1] == "S"), key=lambda p: p.name)
    for sdir in subjects:
        if layout == "unpacked":
            for src in sorted(p for p in sdir.rglob("*") if p.is_file()):
                link(src, out / src.relative_to(release))
        elif layout == "h36m-fetch":
            for folder, source in FETCH_FOLDERS.items():
                for src in sorted((sdir / source).glob("*")):
                    link(src, out / sdir.name / folder / src.name)
        else:
            for prefix, folder in ARCHIVES.items():
                files = sorted((sdir / folder).glob("*"))
                if not files:
                    continue
                with tarfile.open(out / f"{prefix}_{sdir.name}.tgz", "w:gz", format=tarfile.GNU_FORMAT) as tar:
                    for src in files:
                        info = tar.gettarinfo(src, f"{sdir.name}/{folder}/{src.name}")
                        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                        with open(src, "rb") as fh:
                            tar.addfile(info, fh)
    return out
