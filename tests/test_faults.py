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
import signal
import subprocess
import sys
import tarfile
import time
import warnings
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
