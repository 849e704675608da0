"""Reading VideoPose3D-format `.npz` files from strangers: bounded, nothing run, contents checked.

The field's interchange files (`data_3d_h36m.npz`, `data_2d_h36m_gt.npz`, detections such as
`data_2d_h36m_cpn_ft_h36m_dbb.npz`, `h36m predict`'s) hold dicts of dicts of arrays, which numpy stores as 0-d
object arrays: pickle streams, which `np.load(..., allow_pickle=True)` would run. `load_npz` reads numeric members
from their bytes and object members through `h36m_tools.pickles.decode`, which builds only plain data and numeric
arrays. Every file that is damaged, truncated, encrypted, of another kind, or past a bound below: one H36MError
naming the file and the problem, before the work the bound limits is done.

Bounds of one file:
    MAX_FILE_BYTES      its size on disk
    MAX_MEMBERS         members in its zip directory (read from the directory's end record before the directory)
    MAX_MEMBER_BYTES    one member inflated; its stated size must also fit what its compressed bytes can hold
                        (DEFLATE expands at most MAX_DEFLATE_RATIO times, a stored member not at all), and above
                        EXPANSION_FLOOR be at most MAX_EXPANSION times those bytes (arrays of real numbers deflate
                        a few times at most; a zip bomb a thousand), so a small file cannot cost much memory. A
                        member is inflated only when asked for, in chunks, never past its stated size (a stream
                        longer or shorter than stated is refused)
    MAX_READ_BYTES      the members read from one file, together
    PICKLE_LIMITS       a pickle's nodes (each reference to a shared object counted again) and depth; its arrays'
                        bytes, each reference counted again, at most ARRAY_REFERENCES times its member's size

The layouts (VideoPose3D's `data/prepare_data_h36m.py`; see docs/interchange.md):
    positions_3d[subject][action]            (N, 32, 3) float32, world metres
    positions_2d[subject][action][cam_idx]   (N, 17, 2) float32, full-frame pixels (cameras in CAMERA_IDS order)
    confidence_2d[subject][action][cam_idx]  (N, 17) float32 in [0, 1], optional (`h36m predict` of a network with a
                                             confidence head; VideoPose3D's loaders never read it)
    metadata                                 {'layout_name': 'h36m', 'num_joints': 17, 'keypoints_symmetry':
                                              [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]}
`keypoints_2d` / `positions_2d` check a 2-D file's contents where they are read: the layout is H36M's 17 joints
(a `coco`, `mpii` or 16-joint file is refused, saying so), subjects and actions are text, every coordinate is a
finite number within MAX_ABS_PX (a file with a non-finite or absurd coordinate is refused, naming the first), and
every confidence lies in [0, 1].
"""
from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .cameras import CAMERA_IDS
from .errors import H36MError
from .pickles import PickleLimits, PickleRefused, decode, numeric_dtype
from .skeleton import LEFT17, RIGHT17

#: The `metadata` of a 17-joint H36M 2-D file, as VideoPose3D and PoseFormer read it.
METADATA_2D = {"layout_name": "h36m", "num_joints": 17,
               "keypoints_symmetry": [[int(j) for j in LEFT17], [int(j) for j in RIGHT17]]}

MAX_FILE_BYTES = 4 << 30
MAX_MEMBERS = 64
MAX_MEMBER_BYTES = 2 << 30
MAX_READ_BYTES = 4 << 30
MAX_DEFLATE_RATIO = 1032            # the most DEFLATE can expand (258 bytes from one 2-bit code, and so on)
MAX_EXPANSION = 100                 # above EXPANSION_FLOOR, the most a member may expand (numbers: a few times)
EXPANSION_FLOOR = 64 << 20
PICKLE_LIMITS = PickleLimits(nodes=1_000_000, depth=32)
ARRAY_REFERENCES = 8
#: The largest |coordinate| a 2-D file may hold, px: a hundred times the H36M frame.
MAX_ABS_PX = 1e5

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP = b"PK\x05\x06"
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
_MAX_DIRECTORY_BYTES = MAX_MEMBERS * 1024           # the central directory: ~46 bytes + a name per member


# ----- files and members ------------------------------------------------------------------------------------------

def load_npz(path: str | Path, members: Iterable[str] | None = None) -> dict:
    """The members of an .npz (or one .npy, as 'arr_0') file: name (without '.npy') -> numeric array, or the plain
    data of an object member (`h36m_tools.pickles`: a 0-d object array unwrapped, as `.item()` gives it). With
    `members`, only those are read (others are never inflated; absent ones are absent from the result). Raises
    H36MError naming the file for a missing, damaged, refused or oversized file (module docstring: the bounds)."""
    path = Path(path)
    if not path.is_file():
        raise H36MError(path, "file not found")
    wanted = None if members is None else set(members)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise H36MError(path, f"{size} bytes: more than the {MAX_FILE_BYTES} read from a keypoints file")
            head = fh.read(8)
            if head.startswith(_NPY_MAGIC):
                if size > MAX_MEMBER_BYTES:
                    raise H36MError(path, f"{size} bytes: more than the {MAX_MEMBER_BYTES} read from one array")
                fh.seek(0)
                data = fh.read()
                return {} if wanted is not None and "arr_0" not in wanted else {"arr_0": _member(path, "", data)}
            if not head.startswith((_ZIP_MAGIC, _EMPTY_ZIP)):
                raise H36MError(path, "neither an .npz (zip) nor an .npy file")
            _check_directory(path, fh, size)
            fh.seek(0)
            with zipfile.ZipFile(fh) as z:
                out, read = {}, 0
                for info in z.infolist():
                    if not info.filename.endswith(".npy"):
                        continue
                    key = info.filename[:-4]
                    if wanted is not None and key not in wanted:
                        continue
                    read += info.file_size
                    if read > MAX_READ_BYTES:
                        raise H36MError(path, f"members of more than {MAX_READ_BYTES} bytes together: not read")
                    out[key] = _member(path, info.filename, _inflate(path, z, info, size))
                return out
    except H36MError:
        raise
    except UnicodeDecodeError:
        raise H36MError(path, "a member name is not valid UTF-8 text although the zip says it is") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
            struct.error, ValueError, OverflowError) as e:
        raise H36MError(path, f"not a readable .npz file ({type(e).__name__}: {str(e)[:200]})") from None
    except OSError as e:
        raise H36MError(path, f"cannot be read ({e.strerror or e})") from None


def _check_directory(path: Path, fh, size: int) -> None:
    """The zip's end record (and zip64's) says how many members its directory lists and how large it is: both
    bounded before zipfile reads the directory whole."""
    tail_len = min(size, 22 + 0xFFFF)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    at = tail.rfind(_EMPTY_ZIP)
    if at < 0 or len(tail) - at < 22:
        raise H36MError(path, "not a readable .npz file: no zip directory at its end (truncated, or damaged)")
    entries, directory = struct.unpack_from("<HI", tail, at + 10)
    if entries == 0xFFFF or directory == 0xFFFFFFFF:               # zip64: the real counts are in its end record
        locator = tail[at - 20:at] if at >= 20 else b""
        if not locator.startswith(b"PK\x06\x07"):
            raise H36MError(path, "truncated: a zip64 directory without its locator")
        (offset,) = struct.unpack_from("<Q", locator, 8)
        if offset > size - 56:
            raise H36MError(path, "truncated: its zip64 end record lies past the end of the file")
        fh.seek(offset)
        record = fh.read(56)
        if not record.startswith(b"PK\x06\x06"):
            raise H36MError(path, "damaged: no zip64 end record where its locator points")
        entries, directory = struct.unpack_from("<QQ", record, 32)
    if entries > MAX_MEMBERS or directory > _MAX_DIRECTORY_BYTES:
        raise H36MError(path, f"a zip directory of {entries} members ({directory} bytes): more than the "
                              f"{MAX_MEMBERS} members read from a keypoints file")


def _inflate(path: Path, z: zipfile.ZipFile, info: zipfile.ZipInfo, file_size: int) -> bytearray:
    """A member's bytes, checked against its stated size and what its compressed bytes can hold before any is
    inflated, and inflated in chunks, never past the stated size (zipfile checks the CRC at the end)."""
    name = info.filename
    if info.flag_bits & 0x1:
        raise H36MError(path, f"member {name!r} is encrypted: not read")
    if info.compress_type not in _METHODS:
        raise H36MError(path, f"member {name!r} uses compression method {info.compress_type}: numpy writes stored "
                              f"or deflated members, and nothing else is read")
    if info.file_size > MAX_MEMBER_BYTES:
        raise H36MError(path, f"member {name!r} would inflate to {info.file_size} bytes: more than the "
                              f"{MAX_MEMBER_BYTES} read from one member")
    if info.compress_size > file_size:
        raise H36MError(path, f"member {name!r} claims {info.compress_size} compressed bytes in a file of "
                              f"{file_size}: truncated or forged")
    can_hold = info.compress_size * (MAX_DEFLATE_RATIO if info.compress_type == zipfile.ZIP_DEFLATED else 1) + 64
    if info.file_size > can_hold:
        raise H36MError(path, f"member {name!r} claims {info.file_size} bytes from {info.compress_size} "
                              f"{_METHODS[info.compress_type]} bytes, more than they can hold: forged")
    if info.file_size > max(EXPANSION_FLOOR, MAX_EXPANSION * info.compress_size):
        raise H36MError(path, f"member {name!r} would inflate {info.file_size / info.compress_size:.0f} times, to "
                              f"{info.file_size} bytes: a zip bomb (keypoints compress less than "
                              f"{MAX_EXPANSION} times), not read")
    out = bytearray()
    try:
        with z.open(info) as fh:
            while len(out) < info.file_size:
                chunk = fh.read(min(1 << 20, info.file_size - len(out)))
                if not chunk:
                    break
                out += chunk
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise H36MError(path, f"member {name!r} is damaged ({type(e).__name__}: {str(e)[:200]})") from None
    if len(out) != info.file_size:
        raise H36MError(path, f"member {name!r} is truncated: {len(out)} of its {info.file_size} bytes")
    return out


def _member(path: Path, name: str, data) -> object:
    """One .npy member's value from its bytes: a numeric array (exactly its shape's bytes) or, for an object
    array, the decoded pickle that follows the header."""
    where = f"member {name!r}: " if name else ""
    head = io.BytesIO(bytes(data[:8 + 4 + 10_000]))                # magic, header length, numpy's header limit
    try:
        version = np.lib.format.read_magic(head)
        if version not in ((1, 0), (2, 0)):
            raise H36MError(path, f"{where}.npy format version {version}: versions 1.0 and 2.0 are read")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(head)
    except H36MError:
        raise
    except (ValueError, TypeError, SyntaxError, KeyError, EOFError, struct.error) as e:
        raise H36MError(path, f"{where}not a readable .npy header ({str(e)[:200]})") from None
    offset = head.tell()
    view = memoryview(data)[offset:]
    try:
        if dtype == object:
            limits = PickleLimits(PICKLE_LIMITS.nodes, PICKLE_LIMITS.depth, ARRAY_REFERENCES * max(len(data), 1 << 16))
            return decode(view, limits)
        if dtype.fields is not None or dtype.subdtype is not None or dtype.hasobject:
            raise PickleRefused(f"dtype {str(dtype)[:80]}: only bool, integer and float16/32/64 arrays are read")
        dtype = numeric_dtype(dtype.str[1:], dtype.str[0])
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise PickleRefused(f"shape {str(shape)[:80]} is not a tuple of sizes")
        count = int(np.prod(shape, dtype=object)) if shape else 1
        if len(view) != count * dtype.itemsize:
            raise PickleRefused(f"an array of shape {shape} and dtype {dtype.str} with {len(view)} bytes of data "
                                f"(it needs {count * dtype.itemsize}): truncated or forged")
        flat = np.frombuffer(view, dtype, count) if count else np.zeros(0, dtype)
        return flat.reshape(shape, order="F" if fortran else "C").copy(order="K")
    except PickleRefused as e:
        raise H36MError(path, f"{where}{e}") from None


# ----- 2-D keypoints files ----------------------------------------------------------------------------------------

#: What a 2-D file of another layout holds (VideoPose3D's `data/data_utils.py` names them).
_OTHER_LAYOUTS = {"coco": "COCO's 17 keypoints (other joints, in another order)", "mpii": "MPII's 16 joints",
                  "humaneva15": "HumanEva's 15 joints", "humaneva20": "HumanEva's 20 joints"}


def positions_2d(path: str | Path) -> tuple[dict, dict]:
    """(positions_2d, metadata) of a VideoPose3D 2-D file: positions_2d[subject][action] a list of per-camera
    (N, 17, C >= 2) numeric arrays, checked as `keypoints_2d` checks them (its confidence_2d is not read)."""
    pos, meta, _ = _read_2d(path, with_confidence=False)
    return pos, meta


def keypoints_2d(path: str | Path) -> tuple[dict, dict, dict | None]:
    """(positions_2d, metadata, confidence_2d or None) of a VideoPose3D 2-D file: positions_2d[subject][action] a
    list of (at most 4) per-camera (N, 17, C >= 2) numeric arrays, px (a third channel, CPN-style detections' score,
    is not read as a confidence), confidence_2d[subject][action] per-camera (N, 17) arrays matching them. Raises
    H36MError naming the file when the layout is not that (another skeleton included), when a subject or action is
    not text, when a coordinate is not finite or beyond MAX_ABS_PX, or when a confidence is outside [0, 1]."""
    return _read_2d(path, with_confidence=True)


def _read_2d(path, with_confidence: bool) -> tuple[dict, dict, dict | None]:
    names = ("positions_2d", "metadata") + (("confidence_2d",) if with_confidence else ())
    data = load_npz(path, names)
    if "positions_2d" not in data:
        found = sorted(_member_names(path))
        raise H36MError(path, f"no 'positions_2d' (has {', '.join(found) or 'nothing'}): not a VideoPose3D 2-D "
                              f"keypoints file")
    pos, meta = data["positions_2d"], data.get("metadata", {})
    if not isinstance(meta, dict):
        raise H36MError(path, f"'metadata' is a {type(meta).__name__}, not a dict")
    _check_layout(path, meta)
    _check_tree(path, "positions_2d", pos)
    if not any(pos.values()):
        raise H36MError(path, "positions_2d holds no sequence")
    for where, a in _arrays(pos, "positions_2d"):
        if not isinstance(a, np.ndarray) or a.ndim != 3 or a.shape[-1] < 2 or a.dtype.kind not in "fiu":
            raise H36MError(path, f"{where} is {_describe(a)}, not an (N, 17, 2) array of numbers")
        if a.shape[1] != 17:
            raise H36MError(path, f"{where} has {a.shape[1]} joints: H36M's 17 joints (h36m_tools.skeleton) "
                                  f"are read")
        _check_values(path, where, a[..., :2], -MAX_ABS_PX, MAX_ABS_PX, "pixel coordinates")
    conf = data.get("confidence_2d")
    if conf is None:
        return pos, meta, None
    _check_tree(path, "confidence_2d", conf)
    for subject, actions in conf.items():
        for action, cams in actions.items():
            want = pos.get(subject, {}).get(action)
            if want is None or len(cams) != len(want) or not all(
                    isinstance(c, np.ndarray) and c.shape == p.shape[:2] for c, p in zip(cams, want)):
                raise H36MError(path, f"confidence_2d[{subject!r}][{action!r}] does not match positions_2d's "
                                      f"(N, J) per camera")
    for where, c in _arrays(conf, "confidence_2d"):
        if c.dtype.kind not in "fiu":
            raise H36MError(path, f"{where} is {_describe(c)}, not numbers")
        _check_values(path, where, c, 0.0, 1.0, "confidences")
    return pos, meta, conf


def _member_names(path: str | Path) -> list[str]:
    """The member names (without '.npy') of an .npz file, read from its directory (nothing inflated)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if fh.read(8).startswith(_NPY_MAGIC):
                return ["arr_0"]
            _check_directory(path, fh, size)
            fh.seek(0)
            with zipfile.ZipFile(fh) as z:
                return [n[:-4] for n in z.namelist() if n.endswith(".npy")]
    except H36MError:
        raise
    except (zipfile.BadZipFile, UnicodeDecodeError, ValueError, struct.error, OSError) as e:
        raise H36MError(path, f"not a readable .npz file ({type(e).__name__}: {str(e)[:200]})") from None


def _check_layout(path, meta: dict) -> None:
    """metadata's layout_name and num_joints, where present, say H36M's 17 joints; keypoints_symmetry says its
    left and right joints; cameras are text."""
    layout = meta.get("layout_name", "h36m")
    if layout != "h36m":
        what = _OTHER_LAYOUTS.get(layout, "not H36M's 17 joints") if isinstance(layout, str) else "not text"
        raise H36MError(path, f"layout {layout!r} (metadata layout_name): {what}; this reader takes H36M's 17 "
                              f"joints (layout 'h36m'): convert the file first")
    joints = meta.get("num_joints", 17)
    if type(joints) is not int or joints != 17:
        raise H36MError(path, f"{joints!r} joints (metadata num_joints): H36M's 17 joints are read, not a "
                              f"{joints!r}-joint layout (MPII / stacked-hourglass files have 16)")
    sym = meta.get("keypoints_symmetry")
    if sym is not None and _as_lists(sym) != METADATA_2D["keypoints_symmetry"]:
        raise H36MError(path, f"keypoints_symmetry {str(sym)[:120]} is not H36M's left and right joints "
                              f"{METADATA_2D['keypoints_symmetry']}: another joint order")
    cams = meta.get("cameras")
    if cams is not None and (not isinstance(cams, (list, tuple)) or not all(isinstance(c, str) for c in cams)):
        raise H36MError(path, f"metadata cameras {str(cams)[:120]} are not text (camera ids such as "
                              f"{CAMERA_IDS[0]!r})")


def _as_lists(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (list, tuple)):
        return [_as_lists(v) for v in x]
    return x


def _check_tree(path, member: str, tree) -> None:
    """tree[subject][action] is a list of at most 4 per-camera values; subjects and actions are text."""
    if not isinstance(tree, dict):
        raise H36MError(path, f"'{member}' is a {type(tree).__name__}, not a dict of subjects")
    for subject, actions in tree.items():
        _text_key(path, member, subject, "subject", "S9")
        if not isinstance(actions, dict):
            raise H36MError(path, f"{member}[{subject!r}] is a {type(actions).__name__}, not a dict of actions")
        for action, cams in actions.items():
            _text_key(path, f"{member}[{subject!r}]", action, "action", "Walking 1")
            if not isinstance(cams, (list, tuple)):
                raise H36MError(path, f"{member}[{subject!r}][{action!r}] is {_describe(cams)}, not a list of "
                                      f"per-camera arrays")
            if len(cams) > len(CAMERA_IDS):
                raise H36MError(path, f"{member}[{subject!r}][{action!r}] holds {len(cams)} cameras: H36M has "
                                      f"{len(CAMERA_IDS)} ({', '.join(CAMERA_IDS)})")


def _text_key(path, where: str, key, kind: str, example: str) -> None:
    if not isinstance(key, str):
        raise H36MError(path, f"{where} has the {kind} key {key!r} ({type(key).__name__}): {kind}s are text such as "
                              f"{example!r}")


def _arrays(tree: dict, member: str):
    for subject, actions in tree.items():
        for action, cams in actions.items():
            for i, a in enumerate(cams):
                yield f"{member}[{subject!r}][{action!r}][{i}] (camera {CAMERA_IDS[i]})", a


def _check_values(path, where: str, a: np.ndarray, low: float, high: float, noun: str) -> None:
    """Every value of `a` a finite number in [low, high], else one line naming how many are not and the first."""
    if a.dtype.kind == "f" and a.dtype.itemsize < 4:
        a = a.astype(np.float32)                             # (the bounds in float16 would be inf)
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(a) & (a >= low) & (a <= high))
    if bad.any():
        first = np.argwhere(bad)[0]
        raise H36MError(path, f"{where}: {int(bad.sum())} {noun} not a finite number in [{low:g}, {high:g}] (the "
                              f"first: {float(a[tuple(first)]):g}, frame {first[0]}): refused")


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"a {x.dtype} array of shape {x.shape}"
    return f"a {type(x).__name__}"
