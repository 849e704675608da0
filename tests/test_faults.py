"""Fault injection: every fault and hostile input ends in one line naming the file and the problem (or in the item
skipped and counted), with the rest of the work finished, nothing half-written and no process left behind.

Real parts throughout: shards written by `h36m shard` and then damaged, real tmpfs mounts for full and read-only
disks, real `kill -9` of real `h36m` processes. conftest.py prints a summary of this module's cases at the end of the
session (cases, passed, and the first docstring line of each: what it checked).
"""
from __future__ import annotations

import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import tarfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fixtures_extract import H36M, copy_release, run_cli, run_cli_on_tmpfs, tree_bytes
from fixtures_shard import CROP, FRAMES, SHARD_MB, extracted, shards  # noqa: F401


def one_line_error(res: subprocess.CompletedProcess, *words: str) -> str:
    """The failed command's stderr as one `error:` line holding `words`, and no traceback anywhere."""
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, res.stderr
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


# ----------------------------------------------------------------------------------------- processes

def descendants(pid: int) -> set[int]:
    """Every living process below `pid` (from /proc: children of children too)."""
    parents: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents.setdefault(int(fields[1]), []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in parents.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def alive(pids: set[int]) -> set[int]:
    out = set()
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(p)
    return out


def kill9_when(cmd: list, ready, timeout: float = 120) -> set[int]:
    """Start `h36m` with `cmd`, kill -9 only its main process once `ready()` holds; returns the processes it had
    started (the test then checks that they died with it)."""
    proc = subprocess.Popen([str(H36M), *map(str, cmd)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    kids: set[int] = set()
    last = 0.0
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        if time.monotonic() - last > 0.2:            # (a scan of /proc costs more than a look at the files)
            kids |= descendants(proc.pid)
            last = time.monotonic()
        time.sleep(0.005)
    kids |= descendants(proc.pid)
    assert proc.poll() is None, f"finished before the kill: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    return kids


def assert_all_exit(kids: set[int], within: float = 3.0) -> None:
    """The processes are gone within `within` s: at once by the parent-death signal, or by the watchdog's next
    look (torch's own DataLoader watchdog looks every 5 s, and never ends a worker stuck on a full pipe)."""
    deadline = time.monotonic() + within
    while alive(kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(kids), f"processes left after kill -9 of their parent: {sorted(alive(kids))}"


_ORPHAN = """
import os, sys, time
from h36m.pipelines.workers import die_with_parent
main = os.getpid()
if os.fork() == 0:                          # the worker
    if sys.argv[1] == "grandchild":         # a forkserver's worker: its parent outlives the main process
        if os.fork():
            time.sleep(600)
            os._exit(0)
        die_with_parent(main)
    elif sys.argv[1] == "child":
        die_with_parent()
    print(os.getpid(), flush=True)
    time.sleep(600)
    os._exit(0)
time.sleep(600)
"""


@pytest.mark.parametrize("kind", ["child", "grandchild"])
def test_workers_die_with_their_parent(kind):
    """workers.die_with_parent: a worker (or a forkserver's worker, watching the main pid) dies within 3 s of a
    kill -9 of the main process, whatever it is doing."""
    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN, kind], stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline())
    kids = descendants(proc.pid)
    assert worker in kids
    proc.kill()
    proc.wait()
    proc.stdout.close()
    try:
        assert_all_exit({worker})      # (the grandchild's parent stands for a forkserver: not a worker of ours)
    finally:
        for p in alive(kids):
            os.kill(p, signal.SIGKILL)


# ----------------------------------------------------------------------------------------- hostile shards

def _tar(path: Path, members: list[tuple[str, bytes]], links: list[tuple[str, str, bytes]] = ()) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target, kind in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    return path


class _Evil:
    """A pickle that, if ever loaded, creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _npy_pickled(marker: Path) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([_Evil(marker)], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a, np.float32))
    return buf.getvalue()


@pytest.fixture(scope="module")
def good_sample(shards) -> list[tuple[str, bytes]]:
    """The first sample of a real train shard as (extension, bytes) members."""
    from h36m.pipelines.shards.sample import iter_tar_samples

    raw = next(iter_tar_samples(sorted(shards.glob("train-*.tar"))[0]))
    return [(k, bytes(v)) for k, v in sorted(raw.items()) if not k.startswith("__")]


def _variant(good, key: str, change: dict[str, bytes | None]) -> list[tuple[str, bytes]]:
    members = [(f"{key}.{ext}", change.get(ext, data)) for ext, data in good if change.get(ext, data) is not None]
    return members + [(f"{key}.{ext}", d) for ext, d in change.items() if d is not None and ext not in dict(good)]


def hostile_samples(good, marker: Path) -> dict[str, list[tuple[str, bytes]]]:
    """Samples that must each cost one sample: name -> tar members."""
    meta = json.loads(dict(good)["meta.json"])
    pose3d = np.load(io.BytesIO(dict(good)["pose3d.npy"]))
    return {
        "deep_json": _variant(good, "S1/deep/000000", {"meta.json": b"[" * 100_000 + b"]" * 100_000}),
        "huge_json": _variant(good, "S1/huge/000000", {"cameras.json": b'["' + b"x" * (3 << 20) + b'"]'}),
        "pickle_npy": _variant(good, "S1/pickle/000000", {"pose3d.npy": _npy_pickled(marker)}),
        "nan_pose": _variant(good, "S1/nan/000000", {"pose3d.npy": _npy(np.full_like(pose3d, np.nan))}),
        "shape_vs_meta": _variant(good, "S1/shape/000000", {"pose3d.npy": _npy(pose3d[:-1])}),
        "huge_frames": _variant(good, "S1/frames/000000", {"meta.json": json.dumps(
            {**meta, "frames": list(range(10 ** 6))}).encode()}),
        "huge_clip": _variant(good, "S1/pixels/000000", {"meta.json": json.dumps(
            {**meta, "crop_size": 4096}).encode()}),
        "wrong_types": _variant(good, "S1/types/000000", {"meta.json": json.dumps(
            {**meta, "crop_size": "64", "real_frames": [1]}).encode()}),
    }


@pytest.fixture(scope="module")
def hostile_shard(good_sample, tmp_path_factory) -> tuple[Path, Path, int]:
    """(a shard of hostile samples between good ones, the pickle's marker file, how many good samples it holds);
    members with traversal names and links too."""
    root = tmp_path_factory.mktemp("hostile")
    marker = root / "UNPICKLED"
    members = _variant(good_sample, "S1/good/000000", {})
    for bad in hostile_samples(good_sample, marker).values():
        members += bad
    members += _variant(good_sample, "S1/good/000008", {})
    links = [("../../evil.jpg", "/etc/passwd", tarfile.SYMTYPE), ("S1/link/000000.meta.json", "/etc/passwd",
                                                                     tarfile.LNKTYPE)]
    members.append(("../../escape.txt", b"outside"))
    return _tar(root / "train-000000.tar", members, links), marker, 2


def test_loader_skips_each_hostile_sample_and_trains_on_the_rest(hostile_shard):
    """loader: deep/huge JSON, pickled .npy, NaN targets, shapes unlike meta.json, huge frame counts, wrong types,
    traversal names and links each cost one sample (counted), never the run; nothing unpickled or written."""
    from h36m.pipelines.loader.loader import LoaderConfig, make_loader
    from h36m.pipelines.loader.stages import ShardWarning

    shard, marker, good = hostile_shard
    for workers in (0, 1):
        loader = make_loader(LoaderConfig(str(shard), batch_size=1, workers=workers, shuffle=0,
                                          equal_batches=False))
        with warnings.catch_warnings(record=True) as caught:      # (a worker's warnings stay in the worker)
            warnings.simplefilter("always", ShardWarning)
            batches = list(loader)
        assert workers or any(issubclass(w.category, ShardWarning) for w in caught)
        assert [b["key"][0] for b in batches] == ["S1/good/000000", "S1/good/000008"]
        for b in batches:
            assert np.isfinite(b["pose3d"].numpy()).all() and b["images"].shape[-1] == CROP
        assert loader.stats.skipped_samples >= len(hostile_samples(good_sample_of(shard), marker))
    assert not marker.exists()
    assert not (shard.parent.parent / "escape.txt").exists() and not (shard.parent.parent / "evil.jpg").exists()


def good_sample_of(shard: Path) -> list[tuple[str, bytes]]:
    from h36m.pipelines.shards.sample import iter_tar_samples

    raw = next(iter_tar_samples(shard))
    return [(k, bytes(v)) for k, v in sorted(raw.items()) if not k.startswith("__")]


def test_verify_and_show_name_each_hostile_sample(hostile_shard, shards, tmp_path):
    """verify lists a problem per hostile sample and still gives every other shard's verdict; show names the
    sample's problem in one line; neither unpickles nor writes outside."""
    shard, marker, _ = hostile_shard
    good = sorted(shards.glob("test-*.tar"))[0]
    res = run_cli("verify", shard, good, "--workers", "2")
    assert res.returncode == 1 and "Traceback" not in res.stderr + res.stdout, res.stderr
    problems = [ln for ln in res.stdout.splitlines() if ln.startswith("problem:")]
    for key in ("deep", "huge", "pickle", "nan", "shape", "frames", "pixels", "types"):
        assert any(f"S1/{key}/000000" in p for p in problems), (key, problems)
    assert not any(str(good) in p for p in problems), problems     # the good shard's verdict survives
    # the good samples (renamed for this shard) have only the renaming against them
    assert all("key does not match meta.json" in p or "key also in" in p for p in problems if "S1/good/" in p)
    one_line_error(run_cli("show", shard, "--key", "S1/deep/000000", "--out", tmp_path / "x.png"), str(shard),
                   "nested deeper")
    assert not marker.exists() and not (tmp_path / "x.png").exists()


def test_huge_tar_header_skips_the_shard(good_sample, tmp_path):
    """loader and verify: a tar member claiming 8 GB in a small file (a lying header) ends the shard there, counted
    once, without allocating its size."""
    from h36m.pipelines.loader.loader import LoaderConfig, make_loader
    from h36m.pipelines.loader.stages import ShardWarning
    from h36m.pipelines.shards.verify import verify_shard

    data = b""
    members = _variant(good_sample, "S1/good/000000", {}) + _variant(good_sample, "S1/good/000008", {})
    for name, blob in members + [("S1/big/000000.meta.json", 8 << 30)]:
        info = tarfile.TarInfo(name)
        info.size = blob if isinstance(blob, int) else len(blob)
        body = b"x" * 512 if isinstance(blob, int) else blob + b"\0" * (-len(blob) % 512)
        data += info.tobuf(tarfile.GNU_FORMAT) + body
    shard = tmp_path / "train-000000.tar"
    shard.write_bytes(data)
    loader = make_loader(LoaderConfig(str(shard), batch_size=1, workers=0, shuffle=0, equal_batches=False))
    with pytest.warns(ShardWarning):
        batches = list(loader)
    # the samples before the damage come through (the last one's members may be cut off with it)
    assert [b["key"][0] for b in batches][:1] == ["S1/good/000000"] and loader.stats.skipped_shards == 1
    n, problems, _ = verify_shard(shard, decode=False)
    assert n >= 1 and [p.message for p in problems if "corrupt" in p.message], problems


# ----------------------------------------------------------------------------------------- configs, checkpoints

WRONG_TYPES = {"epochs": '"ten"', "augment": '"false"', "lr": '"big"', "batch_size": "2.5", "shards": "3",
               "workers": "true", "seed": '"0"', "model": "1", "init": "[1]"}


@pytest.mark.parametrize("key", sorted(WRONG_TYPES))
def test_wrong_typed_toml_value_names_the_key(key, tmp_path):
    """train --config: a TOML value of the wrong type for its TrainConfig field is refused naming the key."""
    from h36m.h36m_tools.errors import H36MError
    from h36m.pipelines.train.config import build_config

    path = tmp_path / "c.toml"
    path.write_text(f'shards = "x.tar"\n{key} = {WRONG_TYPES[key]}\n' if key != "shards" else f"shards = 3\n")
    with pytest.raises(H36MError) as e:
        build_config(path)
    assert str(path) in str(e.value) and f"{key} must be" in str(e.value)


@pytest.mark.parametrize("field, value, words", [("lr", float("nan"), "lr must be a finite number"),
                                                  ("model", {"lifter": {"receptive_field": "x"}},
                                                   "model.lifter.receptive_field must be an integer"),
                                                  ("model", {"spatial": 3}, "model.spatial must be a table")])
def test_non_finite_and_wrong_typed_model_values(field, value, words):
    """train config: a NaN number, or a [model] override of another type than the preset's, is refused naming the
    key (before any model is built)."""
    from h36m.pipelines.train.config import TrainConfig, model_config, resolve

    with pytest.raises(ValueError) as e:
        model_config(resolve(TrainConfig(shards="x.tar", **{field: value})))
    assert words in str(e.value)


def test_wrong_typed_toml_value_cli_one_line(tmp_path):
    """train --config with `augment = "false"`: one line naming the file and the key, exit 1."""
    path = tmp_path / "c.toml"
    path.write_text('augment = "false"\n')
    one_line_error(run_cli("train", "--config", path, "--shards", "x.tar", "--out", tmp_path / "run"),
                   str(path), "augment must be true or false")


@pytest.fixture(scope="module")
def short_run(shards, tmp_path_factory) -> Path:
    """A 2d run of 2 steps on the train shards (in-process, no loader workers)."""
    from h36m.pipelines.train.config import TrainConfig
    from h36m.pipelines.train.loop import train

    out = tmp_path_factory.mktemp("faults_run") / "run"
    train(TrainConfig(shards=str(shards / "train-*.tar"), out=str(out), epochs=1, batch_size=2, workers=0,
                      max_steps=2, checkpoint_every=0))
    return out


def _tamper(run: Path, dst: Path, edit) -> Path:
    import shutil

    import torch

    shutil.copytree(run, dst)
    state = torch.load(dst / "checkpoint.pt", weights_only=True)
    edit(state)
    torch.save(state, dst / "checkpoint.pt")
    return dst


def test_stored_pipe_url_is_never_run(short_run, shards, tmp_path):
    """train --resume: a checkpoint whose stored shards are `pipe:touch MARKER; cat ...` is refused in one line and
    runs nothing; the user's --shards wins and the run goes on."""
    marker = tmp_path / "MARKER"
    run = _tamper(short_run, tmp_path / "run", lambda s: s["config"]["train"].update(
        shards=f"pipe:touch {marker}; cat {sorted(shards.glob('train-*.tar'))[0]}"))
    one_line_error(run_cli("train", "--out", run, "--resume", "--max-steps", "3"), "checkpoint.pt",
                   "shell command", "--shards")
    assert not marker.exists()
    from h36m.pipelines.train.loop import resume

    assert resume(run, max_steps=3, shards=str(shards / "train-*.tar")).steps == 3
    assert not marker.exists()


@pytest.mark.parametrize("case", ["wrong_type", "no_config", "pickle", "bad_weights"])
def test_hostile_checkpoint_is_one_line(case, short_run, tmp_path):
    """resume on a checkpoint with a wrong-typed stored config, no config, a code-running pickle, or weights of
    another shape: an H36MError naming the checkpoint in one line; nothing unpickled."""
    import torch

    marker = tmp_path / "UNPICKLED"
    if case == "pickle":
        run = tmp_path / "run"
        run.mkdir()
        torch.save({"format": 1, "model": {}, "evil": np.array([_Evil(marker)], dtype=object)},
                   run / "checkpoint.pt")
    else:
        edit = {"wrong_type": lambda s: s["config"]["train"].update(epochs="ten"),
                "no_config": lambda s: s.pop("config"),
                "bad_weights": lambda s: s["model"].update({k: torch.zeros(3) for k in list(s["model"])[:1]})}[case]
        run = _tamper(short_run, tmp_path / "run", edit)
    from h36m.h36m_tools.errors import H36MError
    from h36m.pipelines.train.loop import resume

    with pytest.raises(H36MError) as e:           # (the CLI prints an H36MError as one line: see the pipe case)
        resume(run, max_steps=3)
    assert str(run / "checkpoint.pt") in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------- disks

def test_full_disk_shard_and_extract_name_the_file(small_release, extracted, tmp_path):
    """shard and extract onto a full disk (a small tmpfs): one line naming what could not be written and why,
    exit 1, never 'internal error'."""
    out = tmp_path / "full"
    res = run_cli_on_tmpfs(out, "size=200k", "shard", extracted, out, "--frames", FRAMES, "--shard-mb", 0.05)
    line = one_line_error(res, str(out), "No space left on device")
    assert "internal error" not in line
    raw = copy_release(small_release, tmp_path / "raw", subjects=("S1",))
    res = run_cli_on_tmpfs(out, "size=100k", "extract", raw, out, "--size", 32, "--workers", 1)
    assert res.returncode == 1 and "Traceback" not in res.stderr + res.stdout, res.stderr
    assert "internal error" not in res.stderr + res.stdout and "No space left on device" in res.stderr, res.stderr


def test_read_only_output_is_one_line(small_release, extracted, tmp_path):
    """extract, shard and synth into a read-only file system: one line naming the folder, exit 1."""
    out = tmp_path / "ro"
    raw = copy_release(small_release, tmp_path / "raw", subjects=("S1",))
    for args in (("extract", raw, out / "x", "--workers", 1), ("shard", extracted, out / "x", "--frames", FRAMES),
                 ("extract", raw, out, "--workers", 1), ("shard", extracted, out, "--frames", FRAMES),
                 ("synth", out / "x", "--subjects", "S1", "--sequences-per-subject", 1, "--frames", 8)):
        one_line_error(run_cli_on_tmpfs(out, "ro", *args), str(out), "Read-only file system")


# ----------------------------------------------------------------------------------------- kill -9

def _records_done(out: Path) -> int:
    n = 0
    for p in out.glob("S*/*.json"):
        try:
            n += json.loads(p.read_text())["status"] == "done"
        except (OSError, ValueError):
            pass
    return n


@pytest.mark.slow
def test_kill9_extract_leaves_no_worker_and_resumes_identically(small_release, tmp_path):
    """extract --workers 2, kill -9 of the main process early (workers busy) and after a finished sequence: its
    workers die with it, and the rerun ends byte-identical to an unbroken run."""
    raw = small_release
    args = ("--size", 32, "--workers", 2, "--min-views", 3)
    clean = tmp_path / "clean"
    assert run_cli("extract", raw, clean, *args).returncode == 0
    out = tmp_path / "out"
    moments = [lambda done: any(out.glob("S*/.*.tmp")),                 # a sequence file being written
               lambda done: _records_done(out) > done]                     # one more sequence finished
    total = _records_done(clean)
    for moment in moments:
        done = _records_done(out)
        kids = kill9_when(["extract", raw, out, *args], lambda: moment(done))
        if total - done >= 2:                  # one sequence left: extract runs it in its own process, no pool
            assert kids, "the run had no worker processes to check"
        assert_all_exit(kids)
    res = run_cli("extract", raw, out, *args)
    assert res.returncode == 0, res.stderr
    assert tree_bytes(out) == tree_bytes(clean) and not list(out.rglob(".*.tmp"))


@pytest.mark.slow
def test_kill9_shard_resumes_byte_identical(extracted, shards, tmp_path):
    """shard, kill -9 once its first shard is written and again inside a later one: the rerun ends with the bytes
    of an unbroken run and no temporary files."""
    out = tmp_path / "sh"
    args = ("shard", extracted, out, "--frames", FRAMES, "--shard-mb", SHARD_MB)
    for n in (1, 2):
        kill9_when(args, lambda: len(list(out.glob("train-*.tar"))) >= n and any(out.glob(".train-*.tmp")))
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    names = sorted(p.name for p in shards.glob("train-*"))
    assert sorted(p.name for p in out.glob("train-*")) == names
    assert all((out / n).read_bytes() == (shards / n).read_bytes() for n in names)
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".*journal*"))


@pytest.mark.slow
def test_kill9_train_leaves_no_worker_and_resumes_the_same_losses(shards, tmp_path):
    """train --workers 2, kill -9 after its step-2 checkpoint: the loader workers die with it, and --resume
    reproduces the unbroken run's loss curve."""
    def metrics(run):
        return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]

    args = ("--shards", shards / "train-*.tar", "--epochs", 1, "--batch-size", 2, "--workers", 2, "--max-steps", 4,
            "--checkpoint-every", 1)
    clean = tmp_path / "clean"
    assert run_cli("train", "--out", clean, *args, timeout=300).returncode == 0
    run = tmp_path / "run"

    def at_step2():
        try:
            return metrics(run)[-1][0] >= 2
        except (OSError, ValueError, IndexError, KeyError):
            return False

    kids = kill9_when(["train", "--out", run, *args], at_step2, timeout=300)
    assert len(kids) >= 2, "the run had no loader workers to check"
    assert_all_exit(kids)
    res = run_cli("train", "--out", run, "--resume", "--max-steps", 4, timeout=300)
    assert res.returncode == 0, res.stderr
    assert metrics(run) == metrics(clean)


# ----------------------------------------------------------------------------------------- raw trees, paths

def _randomise(path: Path, rng) -> None:
    path.write_bytes(rng.integers(0, 256, max(path.stat().st_size, 64), dtype=np.uint8).tobytes())


def test_random_bytes_in_each_raw_file_kind(small_release, tmp_path):
    """extract on a release whose D3 CDF, D2 CDF, D3_mono CDF, video and mask are random bytes (one kind per
    sequence): each bad file is named in one line, the other sequences are extracted, no traceback."""
    raw = copy_release(small_release, tmp_path / "raw")
    rng = np.random.default_rng(0)
    bad = {"S1": sorted((raw / "S1" / "MyPoseFeatures" / "D3_Positions").glob("*.cdf"))[0],
           "S5": sorted((raw / "S5" / "Videos").glob("*.mp4"))[0],
           "S9": sorted((raw / "S9" / "MyPoseFeatures" / "D2_Positions").glob("*.cdf"))[0],
           "S11": sorted((raw / "S11" / "MyPoseFeatures" / "D3_Positions_mono").glob("*.cdf"))[1]}   # [0]: truncated
    for p in bad.values():
        _randomise(p, rng)
    res = run_cli("extract", raw, tmp_path / "out", "--size", 32, "--workers", 1, "--min-views", 3)
    assert "Traceback" not in res.stderr + res.stdout and "internal error" not in res.stdout + res.stderr
    text = res.stdout + res.stderr
    for p in bad.values():
        assert p.name in " ".join(text.split()), (p, text)
    masks = copy_release(small_release, tmp_path / "raw_masks", subjects=("S1",))
    for p in (masks / "S1" / "MySegmentsMat" / "ground_truth_bb").glob("*.mat"):
        _randomise(p, rng)
    res = run_cli("extract", masks, tmp_path / "out_masks", "--size", 32, "--workers", 1, "--bbox", "mask")
    assert "Traceback" not in res.stderr + res.stdout and ".mat" in res.stdout + res.stderr, res.stdout


@pytest.mark.slow
def test_paths_with_brackets_spaces_and_non_ascii(tmp_path):
    """synth, extract, shard and verify into folders named with `[/x]`, `[bold]`, spaces and non-ASCII: they work
    and print each path literally."""
    base = tmp_path / "a [/x] b[bold]é ü"
    raw, ex, sh = base / "syn[/x]", base / "ex [x]", base / "sh[/x]"
    res = run_cli("synth", raw, "--subjects", "S1", "--sequences-per-subject", 1, "--frames", 16, "--scale", 0.1,
                  "--workers", 1)
    assert res.returncode == 0 and str(raw) in res.stdout.replace("\n", ""), res.stdout + res.stderr
    res = run_cli("extract", raw, ex, "--size", 32, "--workers", 1)
    assert res.returncode == 0 and str(ex) in res.stdout.replace("\n", ""), res.stdout + res.stderr
    res = run_cli("shard", ex, sh, "--frames", 8, "--subjects", "S1")
    assert res.returncode == 0 and str(sh) in res.stdout.replace("\n", ""), res.stdout + res.stderr
    assert run_cli("verify", sh).returncode == 0


# ----------------------------------------------------------------------------------------- options and contents

def test_frames_beyond_the_data_are_refused(extracted, tmp_path):
    """shard --frames longer than every sequence (drop), or past the readers' limit (pad): one line, nothing
    allocated or written."""
    one_line_error(run_cli("shard", extracted, tmp_path / "a", "--frames", 41), str(extracted), "--frames 41",
                   "longest sequence (40 frames)")
    one_line_error(run_cli("shard", extracted, tmp_path / "b", "--frames", 100_000_000, "--tail", "pad"),
                   "--frames must be in 1..")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_release_without_sequences_is_one_line(tmp_path):
    """extract on a folder whose S1/Videos holds no video (and no poses): one line saying it holds no sequence,
    exit 1, not '0 sequences' and exit 0."""
    (tmp_path / "raw" / "S1" / "Videos").mkdir(parents=True)
    one_line_error(run_cli("extract", tmp_path / "raw", tmp_path / "out"), str(tmp_path / "raw"), "no sequence")


def test_concurrent_extracts_into_one_folder_both_finish(small_release, tmp_path):
    """Two `extract` runs of the same release into one folder at once: both exit 0 and the folder ends with the
    bytes of one run alone (each file through a temporary file of its own process; the manifest under a lock)."""
    raw = copy_release(small_release, tmp_path / "raw", subjects=("S1", "S9"))
    args = ("--size", 32, "--workers", 1)
    clean = tmp_path / "clean"
    assert run_cli("extract", raw, clean, *args).returncode == 0
    out = tmp_path / "out"
    procs = [subprocess.Popen([str(H36M), "extract", raw, out, *map(str, args)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert tree_bytes(out) == tree_bytes(clean)


def test_mask_of_another_shape_is_not_stretched(small_release, tmp_path):
    """extract --bbox mask with a mask file whose masks are not the video's shape: that camera's boxes come from the
    joints, with a note naming the file (a stretched mask would give a wrong crop)."""
    from h36m.h36m_tools.masks import iter_masks, write_masks
    from h36m.pipelines.extract.extract import run_extract
    from h36m.pipelines.extract.plan import ExtractConfig

    raw = copy_release(small_release, tmp_path / "raw", subjects=("S1",))
    path = sorted((raw / "S1" / "MySegmentsMat" / "ground_truth_bb").glob("*.mat"))[0]
    masks = list(iter_masks(path))
    write_masks(path, [m[:, : m.shape[1] // 2] for m in masks])           # half as wide, as tall
    (result,) = run_extract(ExtractConfig(raw=raw, out=tmp_path / "out", size=32, bbox="mask", workers=1))
    assert result.status == "done"
    notes = [n for n in result.notes if path.name in n]
    assert len(notes) == 1 and "not the shape" in notes[0] and "boxes from joints" in notes[0], result.notes


# ----------------------------------------------------------------------------------------- hostile keypoints files
# Other people's 2-D detections are the one input users take from strangers. Every file below is built here, then
# read by `h36m triangulate` (which reads its 2-D file before anything else) in a process limited to READ_LIMIT of
# address space and READ_SECONDS of CPU: each must end in exit 1 and one line naming the file and the problem (a
# crash, a traceback, "out of memory" or a timeout fails).

READ_LIMIT = 1 << 30
READ_SECONDS = 60


def _limited() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (READ_LIMIT, READ_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (READ_SECONDS, READ_SECONDS))


def run_cli_limited(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """`h36m ARGS...` in a subprocess under READ_LIMIT bytes of address space and READ_SECONDS of CPU (one thread
    for numpy's BLAS: its per-thread buffers would count against the limit)."""
    return subprocess.run([str(H36M), *map(str, args)], capture_output=True, text=True, timeout=2 * READ_SECONDS,
                          preexec_fn=_limited, env={**os.environ, "COLUMNS": "80", "OPENBLAS_NUM_THREADS": "1",
                                                    "OMP_NUM_THREADS": "1", **(env or {})})


_RECONSTRUCT = np.zeros(1).__reduce__()[0]           # numpy's own _reconstruct, pickled by its name


class _Reduced:
    """Pickles as f(*args) then BUILD state, as numpy's arrays and dtypes do, but with any args and state."""

    def __init__(self, f, args, state=None):
        self.f, self.args, self.state = f, args, state

    def __reduce__(self):
        return (self.f, self.args) if self.state is None else (self.f, self.args, self.state)


def _forged_array(dtype, shape, data) -> _Reduced:
    return _Reduced(_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, shape, dtype, False, data))


def _npy_pickle(stream: bytes) -> bytes:
    """An .npy member of a 0-d object array: numpy's header, then the pickle `stream`."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    return buf.getvalue() + stream


def _npy_object(value, protocol: int = 3) -> bytes:
    """`value` as numpy stores it in an .npz: a 0-d object array, pickled."""
    a = np.empty((), dtype=object)
    a[()] = value
    return _npy_pickle(pickle.dumps(a, protocol=protocol))


def _npy_array(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _npz(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in members.items():
            z.writestr(name + ".npy", data)
    return path


def _poses(frames: int = 50, joints: int = 17, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1000, (frames, joints, 2)).astype(np.float32)


def _members_2d(pos=None, meta=None, conf=None, protocol: int = 3) -> dict[str, bytes]:
    """The members of a VideoPose3D 2-D file: by default S1 'Walking 1' seen by 4 cameras, H36M's metadata."""
    from h36m.h36m_tools.npz import METADATA_2D

    pos = {"S1": {"Walking 1": [_poses(seed=c) for c in range(4)]}} if pos is None else pos
    out = {"positions_2d": _npy_object(pos, protocol), "metadata": _npy_object(
        METADATA_2D if meta is None else meta, protocol)}
    if conf is not None:
        out["confidence_2d"] = _npy_object(conf, protocol)
    return out


def _with_one(value) -> dict[str, bytes]:
    """A 2-D file whose S1 'Walking 1' camera 0 array is `value` (the other 3 cameras good)."""
    return _members_2d({"S1": {"Walking 1": [value] + [_poses(seed=c) for c in range(1, 4)]}})


def _bad_values(**where) -> dict[str, bytes]:
    """A good 2-D file but for values set in camera 0's poses or confidences: where = {'pose': v} or {'conf': v}."""
    pos = [_poses(seed=c) for c in range(4)]
    conf = [np.full((50, 17), 0.9, np.float32) for _ in range(4)]
    if "pose" in where:
        pos[0][7, 3, 1] = where["pose"]
    if "conf" in where:
        conf[0][9, 2] = where["conf"]
    return _members_2d({"S1": {"Walking 1": pos}}, conf={"S1": {"Walking 1": conf}})


def _central_entries(data: bytes):
    """(offset, name) of each central directory entry of a zip."""
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        n = struct.unpack_from("<H", data, at + 28)[0]
        yield at, bytes(data[at + 46:at + 46 + n])
        at = data.find(b"PK\x01\x02", at + 46 + n)


def _patched(path: Path, member: str, flags: int = 0, method: int | None = None, size: int | None = None,
             corrupt: bool = False) -> Path:
    """The zip at `path` with `member`'s directory entry changed: flag bits set, compression method, the stated
    uncompressed size; or with bytes of its compressed data inverted."""
    data = bytearray(path.read_bytes())
    for at, name in list(_central_entries(data)):
        if name != member.encode():
            continue
        struct.pack_into("<H", data, at + 8, struct.unpack_from("<H", data, at + 8)[0] | flags)
        if method is not None:
            struct.pack_into("<H", data, at + 10, method)
        if size is not None:
            struct.pack_into("<I", data, at + 24, size)
    if corrupt:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(member)
        start = info.header_offset + 30 + sum(struct.unpack_from("<HH", data, info.header_offset + 26))
        mid = start + info.compress_size // 2
        data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    path.write_bytes(bytes(data))
    return path


def _zeros_member(path: Path, name: str, n: int, others: dict[str, bytes]) -> Path:
    """A zip of `others` and `name` holding n zero bytes, deflated (a thousand times smaller: a zip bomb's way)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in others.items():
            z.writestr(k + ".npy", v)
        with z.open(name, "w", force_zip64=n > 1 << 31) as fh:
            for _ in range(n >> 20):
                fh.write(bytes(1 << 20))
    return path


def _deep_list(n: int) -> bytes:
    """A pickle of n nested lists, written opcode by opcode (Python's own pickler would recurse too deep)."""
    return b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b"."


def _memo_bomb(width: int, depth: int):
    x = [1.0]
    for _ in range(depth):
        x = [x] * width                 # one list, `width` references to the one below: pickled in a few bytes
    return x


def _utf8_broken(members: dict[str, bytes]) -> dict[str, bytes]:
    """The members with the subject 'Sé' (UTF-8 c3 a9) changed to bytes that are not UTF-8 (ff fe)."""
    return {k: v.replace("Sé".encode(), b"S\xff\xfe") for k, v in members.items()}


def _name_not_utf8(path: Path) -> Path:
    """A 2-D file whose member 'é.npy' (a name flagged UTF-8) is renamed to bytes that are not UTF-8."""
    members = _members_2d()
    members["é"] = members.pop("metadata")
    data = _npz(path, members).read_bytes()
    path.write_bytes(data.replace("é.npy".encode(), b"\xff\xfe.npy"))
    return path


_H36M_META = {"layout_name": "h36m", "num_joints": 17,
              "keypoints_symmetry": [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]}

#: name -> (build(path) -> path, words the one error line holds besides the file's name)
HOSTILE_2D = {
    # the pickle: what it builds
    "forged_dtype_object_field_flags_cleared": (lambda p: _npz(p, _with_one(_forged_array(_Reduced(
        np.dtype, ("V8", False, True), (3, "|", None, ("a",), {"a": (np.dtype(object), 0)}, 8, 1, 0)), (2,),
        b"\x41" * 16))), ("dtype 'V8'", "only bool, integer and float16/32/64")),
    "forged_dtype_field_past_the_item": (lambda p: _npz(p, _with_one(_forged_array(_Reduced(
        np.dtype, ("f4", False, True), (3, "<", None, ("a",), {"a": (np.dtype("<f8"), 4096)}, 4, 4, 0)), (2,),
        b"\0" * 8))), ("state of dtype 'f4'", "refused")),
    "short_object_list_2.5e8_claimed": (lambda p: _npz(p, _with_one(_forged_array(
        np.dtype(object), (250_000_000,), [1.0]))), ("object array of shape (250000000,) with 1 items",)),
    "short_array_data": (lambda p: _npz(p, _with_one(_forged_array(np.dtype("<f4"), (100_000, 17, 2), b"\0" * 8))),
                         ("8 bytes of data (it needs 13600000)",)),
    "code_in_the_pickle": (lambda p: _npz(p, _with_one(_Evil(p.with_suffix(".ran")))), ("names builtins.getattr",
                                                                                          "refused")),
    "memo_bomb_deep": (lambda p: _npz(p, _with_one(_memo_bomb(2, 40))), ("nested deeper than 32",)),
    "memo_bomb_wide": (lambda p: _npz(p, _with_one(_memo_bomb(10, 12))), ("more than 1000000 values",)),
    "memo_bomb_of_arrays": (lambda p: _npz(p, _members_2d({"S1": {"Walking 1": [np.zeros((1 << 14, 17, 2),
                                                                                        np.float32)] * 1000}})),
                            ("arrays of more than", "each reference")),
    "deep_nesting_200000": (lambda p: _npz(p, {"positions_2d": _npy_pickle(_deep_list(200_000))}),
                            ("nested deeper than 32",)),
    "text_not_utf8_in_the_pickle": (lambda p: _npz(p, _utf8_broken(_members_2d(
        {"Sé": {"Walking 1": [_poses(seed=c) for c in range(4)]}}))), ("not valid UTF-8",)),
    "numeric_member_shorter_than_its_shape": (lambda p: _npz(p, {**_members_2d(), "positions_2d": _npy_array(
        np.zeros((1000, 17, 2), np.float32))[:-4000]}), ("bytes of data (it needs 136000)",)),
    "member_with_an_object_field": (lambda p: _npz(p, {**_members_2d(), "positions_2d": _npy_array(
        np.zeros(3, [("a", "<f4"), ("b", "O")]))}), ("only bool, integer and float16/32/64",)),
    # the zip
    "member_stating_3_GiB": (lambda p: _patched(_npz(p, _members_2d()), "positions_2d.npy", size=3 << 30),
                             ("'positions_2d.npy'", "would inflate to 3221225472 bytes")),
    "zip_bomb_within_the_member_limit": (lambda p: _zeros_member(p, "positions_2d.npy", 80 << 20, {}),
                                         ("'positions_2d.npy'", "zip bomb")),
    "zip_bomb_understating_its_size": (lambda p: _patched(_zeros_member(p, "positions_2d.npy", 80 << 20, {}),
                                                          "positions_2d.npy", size=1000), ("damaged", "CRC")),
    "member_size_beyond_its_compressed_bytes": (lambda p: _patched(_npz(p, _members_2d()), "positions_2d.npy",
                                                                   size=1 << 30), ("more than they can hold",)),
    "encrypted_member": (lambda p: _patched(_npz(p, _members_2d()), "positions_2d.npy", flags=0x1),
                         ("'positions_2d.npy' is encrypted",)),
    "unknown_compression_method": (lambda p: _patched(_npz(p, _members_2d()), "positions_2d.npy", method=99),
                                   ("compression method 99",)),
    "corrupt_member": (lambda p: _patched(_npz(p, _members_2d()), "positions_2d.npy", corrupt=True),
                       ("'positions_2d.npy' is damaged",)),
    "truncated_file": (lambda p: p.write_bytes(_npz(p, _members_2d()).read_bytes()[:3000]) and p,
                       ("no zip directory at its end",)),
    "member_name_not_utf8": (_name_not_utf8, ("not valid UTF-8",)),
    "200_members": (lambda p: _npz(p, {**_members_2d(), **{f"m{i}": b"" for i in range(200)}}),
                    ("202 members",)),
    "random_bytes": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)) and p,
                     ("neither an .npz (zip) nor an .npy",)),
    # the contents
    "nan_coordinate": (lambda p: _npz(p, _bad_values(pose=np.nan)), ("1 pixel coordinates", "nan, frame 7")),
    "inf_coordinate": (lambda p: _npz(p, _bad_values(pose=np.inf)), ("pixel coordinates", "inf, frame 7")),
    "1e38_coordinate": (lambda p: _npz(p, _bad_values(pose=1e38)), ("pixel coordinates", "1e+38")),
    "negative_confidence": (lambda p: _npz(p, _bad_values(conf=-0.5)), ("1 confidences", "[0, 1]", "-0.5")),
    "nan_confidence": (lambda p: _npz(p, _bad_values(conf=np.nan)), ("confidences", "nan, frame 9")),
    "1e6_confidence": (lambda p: _npz(p, _bad_values(conf=1e6)), ("confidences", "1e+06")),
    "coco_layout": (lambda p: _npz(p, _members_2d(meta={**_H36M_META, "layout_name": "coco"})),
                    ("layout 'coco'", "COCO's 17 keypoints")),
    "mpii_16_joints": (lambda p: _npz(p, _members_2d({"S1": {"Walking 1": [_poses(joints=16)] * 4}}, meta={
        "layout_name": "mpii", "num_joints": 16})), ("layout 'mpii'", "16 joints")),
    "16_joints_said_h36m": (lambda p: _npz(p, _members_2d(meta={**_H36M_META, "num_joints": 16})),
                            ("16 joints (metadata num_joints)",)),
    "16_joint_arrays": (lambda p: _npz(p, _members_2d({"S1": {"Walking 1": [_poses(joints=16)] * 4}}, meta={})),
                        ("has 16 joints",)),
    "integer_subject": (lambda p: _npz(p, _members_2d({9: {"Walking 1": [_poses()] * 4}})),
                        ("subject key 9 (int)",)),
    "integer_action": (lambda p: _npz(p, _members_2d({"S1": {1: [_poses()] * 4}})), ("action key 1 (int)",)),
    "cameras_not_text": (lambda p: _npz(p, _members_2d(meta={**_H36M_META, "cameras": [54138969]})),
                         ("cameras", "not text")),
    "object_array_of_dicts": (lambda p: _npz(p, _members_2d({"S1": {"Walking 1": np.array(
        [{"x": 1}, {"y": 2}], dtype=object)}})), ("is a dict, not an (N, 17, 2) array",)),
    "five_cameras": (lambda p: _npz(p, _members_2d({"S1": {"Walking 1": [_poses()] * 5}})),
                     ("holds 5 cameras: H36M has 4",)),
    "no_positions_2d": (lambda p: _npz(p, {"positions_3d": _npy_object({"S1": {}})}), ("no 'positions_2d'",)),
    "metadata_a_list": (lambda p: _npz(p, _members_2d(meta=[1, 2])), ("'metadata' is a list",)),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_2D))
def test_hostile_2d_file_is_one_line_in_bounded_memory_and_time(case, tmp_path):
    """A hostile VideoPose3D 2-D file (forged numpy state, short object lists, memo bombs, deep nesting, zip bombs,
    encrypted / unknown-method / damaged members, claimed sizes, non-UTF-8 names, NaN / inf / out-of-range values,
    other skeletons, wrong key types): one line naming the file and the problem, exit 1, under 1 GiB and 60 s of
    CPU; nothing in it runs."""
    build, words = HOSTILE_2D[case]
    path = build(tmp_path / f"{case}.npz")
    assert path.stat().st_size < 4 << 20            # each attack is a small file
    res = run_cli_limited("triangulate", path, "--data", tmp_path / "extracted", "--out", tmp_path / "world.npz")
    assert res.returncode == 1, (res.returncode, res.stderr[-2000:])     # (a signal would be negative)
    one_line_error(res, str(path), *words)
    assert not path.with_suffix(".ran").exists() and not (tmp_path / "world.npz").exists()


@pytest.fixture(scope="module")
def exported_2d(extracted, tmp_path_factory) -> Path:
    """The extracted dataset's ground-truth 2-D as a VideoPose3D file (`export`): a good file triangulate reads."""
    from h36m.pipelines.interchange.export import FILE_2D, ExportConfig, export

    out = tmp_path_factory.mktemp("exported")
    export(ExportConfig(src=extracted, out=out))
    return out / FILE_2D


def test_unused_members_are_never_inflated(exported_2d, extracted, tmp_path):
    """A good 2-D file with an 80 MiB zip-bomb member and a member claiming 3 GiB beside its own: triangulate reads
    the members it uses and finishes under 1 GiB (the others are never inflated); reading every member names the
    bomb."""
    from h36m.h36m_tools.errors import H36MError
    from h36m.h36m_tools.npz import load_npz

    path = tmp_path / "with_bombs.npz"
    with zipfile.ZipFile(exported_2d) as z:
        members = {n[:-4]: z.read(n) for n in z.namelist()}
    _zeros_member(path, "junk.npy", 80 << 20, {**members, "claim": b"x" * 1000})
    _patched(path, "claim.npy", size=3 << 30)
    assert path.stat().st_size < 2 * exported_2d.stat().st_size + (1 << 20)
    res = run_cli_limited("triangulate", path, "--data", extracted, "--out", tmp_path / "world.npz")
    assert res.returncode == 0 and (tmp_path / "world.npz").is_file(), res.stderr
    with pytest.raises(H36MError, match="'(junk|claim).npy'"):
        load_npz(path)


def test_no_sequence_with_two_views_says_so(exported_2d, extracted, tmp_path):
    """triangulate on a 2-D file that gives each sequence one camera: one line saying no sequence has two views."""
    from h36m.h36m_tools.npz import keypoints_2d
    from h36m.pipelines.interchange.npzfile import write_npz

    pos, meta, _ = keypoints_2d(exported_2d)
    path = tmp_path / "one_view.npz"
    write_npz(path, positions_2d={s: {a: cams[:1] for a, cams in acts.items()} for s, acts in pos.items()},
              metadata=meta)
    one_line_error(run_cli("triangulate", path, "--data", extracted, "--out", tmp_path / "w.npz"), str(path),
                   "no sequence of", "two or more cameras")


def test_an_output_never_replaces_an_input(exported_2d, extracted, tmp_path):
    """triangulate X --out X (and --out a link to X): one line, the input unchanged."""
    import shutil

    path = tmp_path / "pred.npz"
    shutil.copy(exported_2d, path)
    before = path.read_bytes()
    (tmp_path / "link.npz").symlink_to(path)
    for out in (path, tmp_path / "link.npz"):
        one_line_error(run_cli("triangulate", path, "--data", extracted, "--out", out), str(out),
                       "is also an input")
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_export_writes_its_pair_as_one_unit(extracted, tmp_path):
    """export into a folder holding an earlier pair, with the second file's write failing: one error naming it,
    and both files of the earlier pair left as they were (none half-replaced), no temporary file left."""
    from h36m.h36m_tools.errors import H36MError
    from h36m.pipelines.files import temporary_name
    from h36m.pipelines.interchange.export import FILE_2D, FILE_3D, ExportConfig, export

    export(ExportConfig(src=extracted, out=tmp_path, subjects=("S1",)))
    before = {f: (tmp_path / f).read_bytes() for f in (FILE_3D, FILE_2D)}
    temporary_name(tmp_path / FILE_2D).mkdir()           # the 2-D file's write fails (a folder in its way)
    with pytest.raises(H36MError, match=FILE_2D):
        export(ExportConfig(src=extracted, out=tmp_path))     # every subject: different files
    assert {f: (tmp_path / f).read_bytes() for f in (FILE_3D, FILE_2D)} == before
    assert [p.name for p in tmp_path.glob(".*.tmp")] == [temporary_name(tmp_path / FILE_2D).name]


def test_missing_remote_shard_is_one_line():
    """A training shard at an http:// URL that cannot be reached: len(loader) is an H36MError (one line in the CLI)
    naming the URL, not a traceback; still a TypeError for code asking for a length."""
    from h36m.h36m_tools.errors import H36MError
    from h36m.pipelines.loader.loader import LoaderConfig, make_loader

    url = "http://127.0.0.1:9/train-000000.tar"           # port 9 (discard): nothing listens
    loader = make_loader(LoaderConfig(url, batch_size=1, workers=0))
    with pytest.raises(H36MError) as e:
        len(loader)
    assert isinstance(e.value, TypeError) and str(e.value).startswith(url) and "index" in str(e.value)


def test_debug_shows_the_traceback_behind_the_line(tmp_path):
    """`h36m --debug` and H36M_DEBUG=1 print the traceback the one-line error hides, then the same line."""
    path = _npz(tmp_path / "nan.npz", _bad_values(pose=np.nan))
    args = ("triangulate", path, "--data", tmp_path, "--out", tmp_path / "w.npz")
    plain = one_line_error(run_cli(*args), str(path))
    for res in (run_cli("--debug", *args), run_cli_limited(*args, env={"H36M_DEBUG": "1"})):
        assert res.returncode == 1 and "Traceback" in res.stderr and "H36MError" in res.stderr, res.stderr
        assert res.stderr.strip().splitlines()[-1] == plain


def test_names_with_control_characters_are_escaped(tmp_path):
    """A 2-D file named with an escape sequence, a newline and a byte that is not UTF-8: the error is one line that
    shows them escaped (\\x1b, \\n, \\xff), with no control character reaching the terminal."""
    name = "a\x1b[2J\nb" + os.fsdecode(b"\xff") + ".npz"
    path = _npz(tmp_path / name, _bad_values(pose=np.inf))
    res = subprocess.run([str(H36M), "triangulate", path, "--data", tmp_path, "--out", tmp_path / "w.npz"],
                         capture_output=True, timeout=120)
    err = res.stderr.decode("ascii")                     # (ASCII: nothing raw got through)
    assert res.returncode == 1 and len(err.strip().splitlines()) == 1, err
    assert "a\\x1b[2J\\nb\\xff.npz" in err and not any(c < " " for c in err.rstrip("\n")), err


@pytest.mark.slow
def test_lift_run_on_a_nan_2d_file_writes_no_model(extracted, tmp_path):
    """train --stage lift --keypoints FILE with a NaN coordinate: one line naming the file and the value, exit 1,
    and no run folder (no checkpoint of NaN weights)."""
    path = _npz(tmp_path / "nan.npz", _bad_values(pose=np.nan))
    one_line_error(run_cli("train", "--stage", "lift", "--data", extracted, "--keypoints", path, "--out",
                           tmp_path / "run", timeout=300), str(path), "pixel coordinates", "nan")
    assert not (tmp_path / "run").exists()
