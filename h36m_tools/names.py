"""H36M names: subjects, splits, canonical actions, and discovery of the sequences present in a release folder.

Sequence base names are irregular (`Eating 2`/`Eating`, `Photo` vs S1's `TakingPhoto`); see FORMAT.md.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

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


@dataclass
class SequenceFiles:
    """The files of one sequence of one subject, as found on disk (missing ones are None)."""
    root: Path
    subject: str
    name: str                                     # raw base name, e.g. 'Directions 1'
    d3: Path | None = None
    videos: dict[str, Path] = field(default_factory=dict)
    d3_mono: dict[str, Path] = field(default_factory=dict)
    d2: dict[str, Path] = field(default_factory=dict)
    masks: dict[str, Path] = field(default_factory=dict)

    @property
    def action(self) -> str:
        return canonical_action(self.name)

    @property
    def key(self) -> str:
        """`S1/Directions_1`: subject and name with spaces as underscores, safe in paths and keys."""
        return f"{self.subject}/{self.name.replace(' ', '_')}"

    @property
    def subaction(self) -> int | None:
        entry = sequence_table().get(self.subject, {}).get(self.name)
        return entry["subaction_id"] if entry else None


def _split_name(path: Path) -> tuple[str, str | None]:
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


def discover(root: str | Path, subjects=None) -> list[SequenceFiles]:
    """Every sequence present under an H36M release folder, sorted by subject number then name.

    A sequence is present if its D3_Positions CDF or any of its videos exists. Raises H36MError if the folder is
    missing or holds no subject folder with H36M content.
    """
    root = Path(root)
    if not root.is_dir():
        raise H36MError(root, "folder not found")
    found = sorted((p for p in root.iterdir() if p.is_dir() and _SUBJECT_RE.match(p.name)),
                   key=lambda p: subject_order(p.name))
    if subjects is not None:
        wanted = set(subjects)
        found = [p for p in found if p.name in wanted]
    if not any((p / "Videos").is_dir() or (p / "MyPoseFeatures").is_dir() for p in found):
        what = "the chosen subjects" if subjects is not None else "no S<n>/Videos or S<n>/MyPoseFeatures folders"
        raise H36MError(root, f"not an H36M release ({what} not found)")
    out: list[SequenceFiles] = []
    for sdir in found:
        seqs: dict[str, SequenceFiles] = {}

        def get(name: str) -> SequenceFiles:
            return seqs.setdefault(name, SequenceFiles(root, sdir.name, name))

        feats = sdir / "MyPoseFeatures"
        for p in sorted((feats / "D3_Positions").glob("*.cdf")):
            name, _ = _split_name(p)
            if _is_sequence(name):
                get(name).d3 = p
        for sub, attr in (("D3_Positions_mono", "d3_mono"), ("D2_Positions", "d2")):
            for p in sorted((feats / sub).glob("*.cdf")):
                name, cam = _split_name(p)
                if cam and _is_sequence(name):
                    getattr(get(name), attr)[cam] = p
        for p in sorted((sdir / "Videos").glob("*.mp4")):
            name, cam = _split_name(p)
            if cam and _is_sequence(name):
                get(name).videos[cam] = p
        for p in sorted((sdir / "MySegmentsMat" / "ground_truth_bb").glob("*.mat")):
            name, cam = _split_name(p)
            if cam and _is_sequence(name):
                get(name).masks[cam] = p
        out.extend(seqs[k] for k in sorted(seqs))
    return out


def camera_order(ids) -> list[str]:
    """Camera ids in H36M's view order (54138969, 55011271, 58860488, 60457274), unknown ids last."""
    rank = {c: i for i, c in enumerate(CAMERA_IDS)}
    return sorted(ids, key=lambda c: (rank.get(c, 99), c))
