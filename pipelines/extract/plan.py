"""What `h36m extract` will do: its options, the sequences found, this part's share, and what is already done."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from h36m.h36m_tools.cameras import CAMERA_IDS, CameraSet
from h36m.h36m_tools.errors import H36MError
from h36m.h36m_tools.archives import Member, local_file
from h36m.h36m_tools.names import LAYOUTS, SequenceFiles, discover


@dataclass(frozen=True)
class ExtractConfig:
    """Options of `h36m extract`. Only `output_options()` shape the files; the rest say what to do and how fast."""
    raw: Path
    out: Path
    subjects: tuple[str, ...] | None = None      # None: every subject folder present
    size: int = 224                              # crop side, px
    margin: float = 1.2                          # box side / larger extent of the joints (or mask)
    bbox: str = "joints"                         # 'joints' or 'mask'
    quality: int = 90                            # JPEG quality
    cameras: Path | None = None                  # metadata.xml or cameras.json; None: the bundled parameters
    min_views: int = 4                           # keep a sequence with at least this many readable cameras
    workers: int = 1                             # processes, one sequence (and one decoder) each
    part: tuple[int, int] = (1, 1)               # (I, N): this run does the I-th of N shares (1-based)
    max_short_frames: int = 10                   # a video this much shorter than the poses counts as truncated
    d2_tolerance_px: float = 0.01                # D2_Positions vs projected D3_Positions
    mono_tolerance_mm: float = 1.0               # D3_Positions_mono vs D3_Positions through the cameras
    every: int = 1                               # keep every N-th frame (source index % N == 0)

    def __post_init__(self):
        if self.bbox not in ("joints", "mask"):
            raise ValueError(f"--bbox must be 'joints' or 'mask', not {self.bbox!r}")
        if not 1 <= self.part[0] <= self.part[1]:
            raise ValueError(f"--part must be I/N with 1 <= I <= N, not {self.part[0]}/{self.part[1]}")
        if self.size < 8 or self.margin < 1.0 or not 1 <= self.quality <= 100 or not 1 <= self.min_views <= 4:
            raise ValueError("need --size >= 8, --margin >= 1, --quality 1-100, --min-views 1-4")
        if self.every < 1:
            raise ValueError(f"--every must be >= 1, not {self.every}")

    def output_options(self) -> dict:
        """The options that shape the output files (stored in the manifest; a resumed run must use the same).
        `every` is there only when it is not 1, so folders extracted before it existed stay valid."""
        options = {"bbox": self.bbox, "cameras": str(Path(self.cameras).resolve()) if self.cameras else "bundled",
                   "margin": float(self.margin), "quality": int(self.quality), "size": int(self.size)}
        if self.every != 1:
            options["every"] = int(self.every)
        return options


def parse_part(text: str) -> tuple[int, int]:
    """`'2/4'` -> (2, 4); raises ValueError on anything else."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--part must look like I/N (e.g. 1/4), not {text!r}") from None
    if not 1 <= i <= n:
        raise ValueError(f"--part must be I/N with 1 <= I <= N, not {text!r}")
    return i, n


def load_cameras(cfg: ExtractConfig) -> CameraSet:
    """The camera set to project with: `cfg.cameras` (metadata.xml or cameras.json) or the bundled one."""
    from h36m.h36m_tools.cameras import bundled, load_camera_set

    if cfg.cameras is None:
        return bundled()
    path = Path(cfg.cameras)
    if not path.is_file():
        raise H36MError(path, "camera file not found")
    try:
        cs = load_camera_set(path)
    except ValueError as e:
        raise H36MError(path, str(e).removeprefix(f"{path}: ")) from None
    missing = [c for c in CAMERA_IDS if c not in cs.intrinsics]
    if missing:
        raise H36MError(path, f"no intrinsics for cameras {', '.join(missing)}")
    return cs


@dataclass
class PlannedSequence:
    """One sequence found in the release, with what this run will do about it."""
    files: SequenceFiles
    pose_frames: int | None       # rows of the 3-D pose file (None: missing or unreadable; the run reports why)
    status: str                   # 'todo', 'done' (already extracted: skipped on resume) or 'other part'

    @property
    def key(self) -> str:
        return self.files.key


@dataclass
class Plan:
    """The sequences found for the chosen subjects and what this run does with each."""
    config: ExtractConfig
    sequences: list[PlannedSequence] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)      # files not read, one line each (names.discover)

    @property
    def todo(self) -> list[PlannedSequence]:
        return [s for s in self.sequences if s.status == "todo"]

    def by_subject(self) -> list[dict]:
        """Per subject: the layouts its files came from, the 3-D sources, sequences, videos found, pose frames,
        already done, to do, other parts (for printing)."""
        rows: dict[str, dict] = {}
        for s in self.sequences:
            r = rows.setdefault(s.files.subject, {"subject": s.files.subject, "layout": set(), "pose3d": set(),
                                                  "sequences": 0, "videos": 0, "pose_frames": 0, "done": 0,
                                                  "todo": 0, "other part": 0})
            r["layout"].update(s.files.layouts)
            r["pose3d"].add(s.files.pose3d_source or "none")
            r["sequences"] += 1
            r["videos"] += len(s.files.videos)
            r["pose_frames"] += s.pose_frames or 0
            r[s.status] += 1
        for r in rows.values():
            r["layout"] = "+".join(x for x in LAYOUTS if x in r["layout"])
            r["pose3d"] = " / ".join(sorted(r["pose3d"]))
        return list(rows.values())


def pose_frames(path: Path | Member | None) -> int | None:
    """Rows of a pose CDF from its header (no data read; an archive member is copied first); None if missing or
    unreadable."""
    if path is None:
        return None
    try:
        import cdflib

        with local_file(path) as local:
            dims = cdflib.CDF(str(local)).varinq("Pose").Dim_Sizes
        return int(dims[0]) if len(dims) == 2 else None
    except Exception:   # any damage is reported when the sequence is processed
        return None


def make_plan(cfg: ExtractConfig, is_done=None) -> Plan:
    """Discover the sequences of the chosen subjects, take this part's share (round robin over the sorted list, so
    every part of the same command agrees) and mark those already extracted (`is_done(key) -> bool`)."""
    plan = Plan(cfg)
    found = discover(Path(cfg.raw).resolve(), cfg.subjects, plan.left_out)
    i, n = cfg.part
    for k, files in enumerate(found):
        if k % n != i - 1:
            status = "other part"
        elif is_done is not None and is_done(files.key):
            status = "done"
        else:
            status = "todo"
        plan.sequences.append(PlannedSequence(files, pose_frames(files.pose3d_file), status))
    return plan


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
