"""H36M names: subjects, splits, canonical actions, and discovery of the sequences present in a release folder.

Sequence base names are irregular (`Eating 2`/`Eating`, `Photo` vs S1's `TakingPhoto`); see FORMAT.md.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path, PurePosixPath

from .archives import Member, is_archive, list_archive, subject_in_name
from .cameras import CAMERA_IDS
from .errors import H36MError

ACTIONS = ("Directions", "Discussion", "Eating", "Greeting", "Phoning", "Photo", "Posing", "Purchases",
           "Sitting", "SittingDown", "Smoking", "Waiting", "WalkDog", "Walking", "WalkTogether")
TRAIN_SUBJECTS = ("S1", "S5", "S6", "S7", "S8")
TEST_SUBJECTS = ("S9", "S11")
SUBJECTS = TRAIN_SUBJECTS + TEST_SUBJECTS
#: Test sequences whose ground truth drifts from the images (excluded by `--exclude-damaged`).
DAMAGED = (("S9", "Greeting"), ("S9", "SittingDown 1"), ("S9", "Waiting 1"))
_ALIASES = {"TakingPhoto": "Photo", "WalkingDog": "WalkDog", "WalkingTogether": "WalkTogether"}
_SUBJECT_RE = re.compile(r"^S(\d+)$")


def canonical_action(sequence: str) -> str:
    """`'Eating 2'` -> `'Eating'`, `'TakingPhoto 1'` -> `'Photo'`; raises ValueError for an unknown action."""
    head = sequence.replace("_", " ").split(" ")[0]
    action = _ALIASES.get(head, head)
    if action not in ACTIONS:
        raise ValueError(f"unknown H36M action in sequence name {sequence!r}")
    return action


def parse_subjects(text: str | None, default=SUBJECTS) -> tuple[str, ...]:
    """`'S1,S5'` or `'1,5'` -> ('S1', 'S5'); None -> default."""
    if not text:
        return tuple(default)
    out = []
    for part in text.replace(" ", "").split(","):
        if part:
            s = part if part.upper().startswith("S") else f"S{part}"
            if not _SUBJECT_RE.match(s.upper()):
                raise ValueError(f"not a subject: {part!r} (expected S1, S5, ...)")
            out.append(s.upper())
    return tuple(out)


@lru_cache(maxsize=1)
def sequence_table() -> dict:
    """`sequences.json`: per subject, sequence base name -> action id, subaction id, video frames per camera."""
    return json.loads(resources.files(__package__).joinpath("data/sequences.json").read_text())["sequences"]


#: 3-D sources in order of preference: SequenceFiles attribute, and what the manifest, shards and reports call it.
POSE3D_SOURCES = (("d3", "world"), ("d3_mono", "camera"), ("d3_mono_universal", "camera, universal skeleton"))
#: The layouts a subject's files can come from (see `discover`).
LAYOUTS = ("unpacked", "h36m-fetch", "archives")


def sequence_key(subject: str, sequence: str) -> str:
    """The one key of a sequence, in files, reports and errors: `('S1', 'Directions 1')` -> `'S1/Directions_1'`
    (spaces as underscores, safe in paths and keys)."""
    return f"{subject}/{sequence.replace(' ', '_')}"


@dataclass
class SequenceFiles:
    """The files of one sequence of one subject, as found (missing ones are None / absent). A file is a Path, or an
    `archives.Member` when it is read from inside an archive."""
    root: Path
    subject: str
    name: str                                     # raw base name, e.g. 'Directions 1'
    d3: Path | Member | None = None
    videos: dict[str, Path | Member] = field(default_factory=dict)
    d3_mono: dict[str, Path | Member] = field(default_factory=dict)
    d3_mono_universal: dict[str, Path | Member] = field(default_factory=dict)
    d2: dict[str, Path | Member] = field(default_factory=dict)
    masks: dict[str, Path | Member] = field(default_factory=dict)
    layouts: set[str] = field(default_factory=set)        # LAYOUTS its files came from
    problems: list[str] = field(default_factory=list)     # damaged archives of its subject (one line each)

    @property
    def action(self) -> str:
        return canonical_action(self.name)

    @property
    def key(self) -> str:
        """`S1/Directions_1`: subject and name with spaces as underscores, safe in paths and keys."""
        return sequence_key(self.subject, self.name)

    @property
    def subaction(self) -> int | None:
        entry = sequence_table().get(self.subject, {}).get(self.name)
        return entry["subaction_id"] if entry else None

    @property
    def layout(self) -> str:
        """Where its files came from: one of LAYOUTS, or several joined by '+' (a mixed release)."""
        return "+".join(x for x in LAYOUTS if x in self.layouts)

    @property
    def pose3d_source(self) -> str | None:
        """The 3-D source extraction will use: 'world' (D3_Positions), 'camera' (D3_Positions_mono through the
        extrinsics) or 'camera, universal skeleton' (D3_Positions_mono_universal); None when there is none."""
        for attr, source in POSE3D_SOURCES:
            if getattr(self, attr):
                return source
        return None

    @property
    def pose3d_file(self) -> Path | Member | None:
        """The file the 3-D poses are read from (the first camera's for camera coordinates)."""
        for attr, _ in POSE3D_SOURCES:
            ref = getattr(self, attr)
            if isinstance(ref, dict) and ref:
                return ref[camera_order(ref)[0]]
            if ref and not isinstance(ref, dict):
                return ref
        return None


def _split_name(path: Path | PurePosixPath) -> tuple[str, str | None]:
    """`'Directions 1.54138969.mp4'` -> ('Directions 1', '54138969'); `'Directions 1.cdf'` -> ('Directions 1', None)."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    base, _, cam = stem.rpartition(".")
    if base and re.fullmatch(r"\d{8}", cam):
        return base, cam
    return stem, None


def _is_sequence(name: str) -> bool:
    if name.startswith("_ALL"):
        return False
    try:
        canonical_action(name)
        return True
    except ValueError:
        return False


def subject_order(subject: str) -> tuple[int, str]:
    """Sort key of a subject: by number (S1 < S5 < S11), names that are not `S<n>` after all of them."""
    digits = subject[1:]
    return (int(digits) if subject[:1] == "S" and digits.isdigit() else 10 ** 6), subject


def sequence_order(key: str) -> tuple[int, str, str]:
    """Sort key of a sequence key `S<n>/<name>`: by subject number (`subject_order`), then name."""
    subject, _, name = key.partition("/")
    return (*subject_order(subject), name)


#: Where each kind of file lives in a subject folder: (folder, suffix, SequenceFiles attribute, per camera).
#: The official tree (also inside the archives) and h36m-fetch's renamed folders (`Poses_<kind>`).
_FOLDERS = {
    "MyPoseFeatures/D3_Positions": (".cdf", "d3", False),
    "MyPoseFeatures/D3_Positions_mono": (".cdf", "d3_mono", True),
    "MyPoseFeatures/D3_Positions_mono_universal": (".cdf", "d3_mono_universal", True),
    "MyPoseFeatures/D2_Positions": (".cdf", "d2", True),
    "Videos": (".mp4", "videos", True),
    "MySegmentsMat/ground_truth_bb": (".mat", "masks", True),
}
_FETCH_FOLDERS = {f"Poses_{k.split('/')[1]}": v for k, v in _FOLDERS.items() if k.startswith("MyPoseFeatures/")}


class _Found:
    """The sequences found so far, per subject; the first file found for a slot wins (folders before archives)."""

    def __init__(self, root: Path):
        self.root = root
        self.seqs: dict[str, dict[str, SequenceFiles]] = {}

    def add(self, subject: str, folder: str, basename: str, ref, layout: str) -> None:
        suffix, attr, per_camera = {**_FOLDERS, **_FETCH_FOLDERS}[folder]
        p = PurePosixPath(basename)
        if p.suffix.lower() != suffix:
            return
        name, cam = _split_name(p)
        if per_camera != (cam is not None) or not _is_sequence(name):
            return
        seq = self.seqs.setdefault(subject, {}).setdefault(name, SequenceFiles(self.root, subject, name))
        slot = getattr(seq, attr)
        if per_camera:
            if cam in slot:
                return
            slot[cam] = ref
        elif slot is None:
            setattr(seq, attr, ref)
        else:
            return
        seq.layouts.add(layout)


def _scan_folders(found: _Found, sdir: Path) -> None:
    fetch = any((sdir / f).is_dir() for f in _FETCH_FOLDERS)       # Videos/ is in both trees
    for folder in (*_FOLDERS, *_FETCH_FOLDERS):
        layout = "h36m-fetch" if folder in _FETCH_FOLDERS or (fetch and not folder.startswith("My")) else "unpacked"
        d = sdir / folder
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.is_file():
                    found.add(sdir.name, folder, p.name, p, layout)


def _scan_archive(found: _Found, path: Path, wanted) -> dict[str, str]:
    """Add an archive's members; returns {subject: problem line} when the archive is damaged."""
    members, problem = list_archive(path)
    subjects = set()
    for m in members:
        parts = PurePosixPath(m.name).parts
        if len(parts) < 3 or not _SUBJECT_RE.match(parts[0]) or (wanted is not None and parts[0] not in wanted):
            continue
        folder = "/".join(parts[1:-1])
        if folder in _FOLDERS:
            found.add(parts[0], folder, parts[-1], m, "archives")
            subjects.add(parts[0])
    if problem is None:
        return {}
    named = subject_in_name(path)
    subjects = {named} if named else subjects
    if not subjects:
        raise problem
    return {s: str(problem) for s in subjects if wanted is None or s in wanted}


def discover(root: str | Path, subjects=None) -> list[SequenceFiles]:
    """Every sequence present under an H36M release folder, sorted by subject number then name.

    Three layouts, mixed freely: the official tree (`S1/MyPoseFeatures/D3_Positions/...`, `S1/Videos/...`); the
    tree anibali/h36m-fetch leaves (`S1/Poses_D2_Positions/`, `S1/Poses_D3_Positions_mono_universal/`, `S1/Videos/`);
    the downloaded archives themselves in ROOT (`Videos_S1.tgz`, `Poses_D3_Positions_S1.tgz`, ...: their members are
    the official tree's paths), read in place. A file found unpacked is preferred to the same file in an archive.
    A sequence is present if any of its pose files or videos is. A damaged (truncated) archive is listed as far as
    it reads, and its subject's sequences carry the problem (`SequenceFiles.problems`). Raises H36MError if the
    folder is missing or holds no H36M content.
    """
    root = Path(root)
    if not root.is_dir():
        raise H36MError(root, "folder not found")
    wanted = set(subjects) if subjects is not None else None
    dirs = sorted((p for p in root.iterdir() if p.is_dir() and _SUBJECT_RE.match(p.name)
                   and (wanted is None or p.name in wanted)), key=lambda p: subject_order(p.name))
    archives = sorted(p for p in root.iterdir() if is_archive(p)
                      and (wanted is None or subject_in_name(p) in (None, *wanted)))
    found = _Found(root)
    for sdir in dirs:
        _scan_folders(found, sdir)
    problems: dict[str, list[str]] = {}
    for path in archives:
        for subject, line in _scan_archive(found, path, wanted).items():
            problems.setdefault(subject, []).append(line)
    if not found.seqs and not problems:
        what = "no sequence of the chosen subjects" if subjects is not None else \
            "no sequence found: no S<n> folder with H36M files, no H36M archive such as Videos_S1.tgz"
        raise H36MError(root, f"not an H36M release ({what})")
    out: list[SequenceFiles] = []
    for subject in sorted(set(found.seqs) | set(problems), key=subject_order):
        seqs = found.seqs.get(subject, {})
        for name in sorted(seqs):
            seqs[name].problems = list(problems.get(subject, []))
            out.append(seqs[name])
    return out


def camera_order(ids) -> list[str]:
    """Camera ids in H36M's view order (54138969, 55011271, 58860488, 60457274), unknown ids last."""
    rank = {c: i for i, c in enumerate(CAMERA_IDS)}
    return sorted(ids, key=lambda c: (rank.get(c, 99), c))
