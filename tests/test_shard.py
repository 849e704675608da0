"""`h36m shard`, `h36m verify`, `h36m show` on the real chain synth -> extract -> shard (tests/fixtures_shard.py)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from fixtures_shard import FRAMES, SHARD_MB, extracted, run_cli, shards  # noqa: F401  (fixtures)
from h36m.pipelines.extract.dataset import list_sequences, read_sequence
from h36m.pipelines.shards.sample import CAMERA_FIELDS, clip_key, decode_images, iter_tar_samples, read_clip
from h36m.pipelines.shards.writer import ShardConfig, clip_starts, shard_bounds, write_shards


def _samples(folder: Path, split: str):
    from h36m.pipelines.shards.sample import decode_sample

    for p in sorted(folder.glob(f"{split}-*.tar")):
        for raw in iter_tar_samples(p):
            yield p, decode_sample(raw)


def _tar_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ----------------------------------------------------------------------------------------- clip planning

@pytest.mark.parametrize("rows, frames, stride, tail, want", [
    (40, 8, 8, "drop", [(0, 8), (8, 8), (16, 8), (24, 8), (32, 8)]),
    (42, 8, 8, "drop", [(0, 8), (8, 8), (16, 8), (24, 8), (32, 8)]),
    (42, 8, 8, "pad", [(0, 8), (8, 8), (16, 8), (24, 8), (32, 8), (40, 2)]),
    (40, 8, 12, "pad", [(0, 8), (12, 8), (24, 8), (36, 4)]),
    (20, 8, 4, "pad", [(0, 8), (4, 8), (8, 8), (12, 8)]),          # overlapping clips reach the end: no pad clip
    (5, 8, 8, "drop", []),
    (5, 8, 8, "pad", [(0, 5)]),
])
def test_clip_starts(rows, frames, stride, tail, want):
    assert clip_starts(rows, frames, stride, tail) == want


# ----------------------------------------------------------------------------------------- the format

def test_keys_round_trip_through_webdataset(shards):
    """WebDataset groups `{key}.{ext}` members back into samples whose __key__ holds the '/'s of the key."""
    import webdataset as wds

    urls = [str(p) for p in sorted(shards.glob("test-*.tar"))]
    got = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(got) == json.loads((shards / "test-index.json").read_text())["samples"] == 10
    want_ext = {"meta.json", "cameras.json", "pose3d.npy", "pose3d_cam.npy", "pose2d.npy", "box.npy"}
    for s in got:
        meta = json.loads(s["meta.json"])
        assert s["__key__"] == clip_key(meta["subject"], meta["sequence"], meta["frames"][0])
        assert s["__key__"].count("/") == 2 and "." not in s["__key__"]
        jpgs = {k for k in s if k.endswith(".jpg")}
        assert jpgs == {f"v{v}_{t:04d}.jpg" for v in range(len(meta["cameras"])) for t in range(FRAMES)}
        assert set(k for k in s if not k.startswith("__")) - jpgs == want_ext


def test_round_trip_equals_extracted(shards, extracted):
    """Every array equals the extracted annotations at the clip's frames; JPEG bytes are copied unchanged; every
    full clip of every sequence of the split is there exactly once."""
    seqs = {}
    for p in list_sequences(extracted):
        meta, arr = read_sequence(p)
        seqs[meta.key] = (meta, arr)
    for split, subjects in (("train", {"S1", "S5"}), ("test", {"S9", "S11"})):
        seen = []
        for _, clip in _samples(shards, split):
            meta, arr = seqs[clip.key.rsplit("/", 1)[0]]
            assert meta.subject in subjects
            rows = np.searchsorted(arr.frame, clip.meta["frames"])
            assert list(arr.frame[rows]) == clip.meta["frames"] and len(rows) == FRAMES
            assert clip.meta == {"format": 1, "subject": meta.subject, "sequence": meta.sequence, "action": meta.action,
                                 "cameras": meta.cameras, "frames": clip.meta["frames"], "real_frames": FRAMES,
                                 "fps": meta.fps, "crop_size": meta.crop_size}
            np.testing.assert_array_equal(clip.pose3d, arr.pose3d[rows])
            np.testing.assert_array_equal(clip.pose3d_cam, arr.pose3d_cam[rows].transpose(1, 0, 2, 3))
            np.testing.assert_array_equal(clip.pose2d, arr.pose2d_crop[rows].transpose(1, 0, 2, 3))
            np.testing.assert_array_equal(clip.box, arr.box[rows].transpose(1, 0, 2))
            assert clip.jpeg == [[arr.jpeg[r][v] for r in rows] for v in range(len(meta.cameras))]
            assert clip.cameras == [{k: p[k] for k in CAMERA_FIELDS} for p in meta.camera_params]
            seen.append(clip.key)
        want = [clip_key(m.subject, m.sequence, s) for m, _ in seqs.values() if m.subject in subjects
                for s, _ in clip_starts(m.frames, FRAMES, FRAMES, "drop")]
        assert sorted(seen) == sorted(want) and len(set(seen)) == len(seen)
    assert [len(c.cameras) for _, c in _samples(shards, "test") if c.key.startswith("S11/")] == [3] * 5


def test_clip_annotations_are_consistent(shards):
    """Cameras, 3-D and 2-D agree inside a sample: world -> camera by R, t; camera -> crop px by the intrinsics,
    H36M's distortion and the box; decoded crops have the stored size."""
    from h36m.h36m_tools.cameras import Camera, world_to_camera

    for _, clip in list(_samples(shards, "test"))[:3]:
        decode_images(clip)
        size = clip.meta["crop_size"]
        assert clip.images.shape == (clip.views, FRAMES, size, size, 3)
        for v, c in enumerate(clip.cameras):
            cam = Camera.from_dict(c)
            np.testing.assert_allclose(world_to_camera(clip.pose3d, cam.extrinsics.R, cam.extrinsics.t),
                                       clip.pose3d_cam[v], atol=0.05)
            full = cam.project(clip.pose3d.astype(float))
            b = clip.box[v][:, None, :]
            crop = (full - b[..., :2]) * size / (b[..., 2:3] - b[..., 0:1])
            np.testing.assert_allclose(crop, clip.pose2d[v], atol=0.01)


def test_shards_are_deterministic_and_respect_the_size_limit(extracted, shards, tmp_path):
    """The same input and options give byte-identical shards and index; another seed only reorders the clips."""
    again = tmp_path / "again"
    for split in ("train", "test"):
        write_shards(ShardConfig(extracted, again, frames=FRAMES, split=split, shard_mb=SHARD_MB))
    assert _tar_bytes(again) == _tar_bytes(shards)
    index = json.loads((shards / "train-index.json").read_text())
    assert len(index["shards"]) >= 3 and all(e["bytes"] <= SHARD_MB * 1e6 for e in index["shards"])
    with tarfile.open(shards / "train-000000.tar") as tf:
        m = tf.getmembers()[0]
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
    other = tmp_path / "seed1"
    write_shards(ShardConfig(extracted, other, frames=FRAMES, split="train", shard_mb=SHARD_MB, shuffle_seed=1))
    keys = [[c.key for _, c in _samples(d, "train")] for d in (shards, other)]
    assert keys[0] != keys[1] and sorted(keys[0]) == sorted(keys[1])
    ordered = tmp_path / "ordered"
    write_shards(ShardConfig(extracted, ordered, frames=FRAMES, split="train", shuffle_seed=None))
    assert [c.key for _, c in _samples(ordered, "train")] == sorted(keys[0])


def test_tail_pad_repeats_the_last_frame(extracted, tmp_path):
    res = write_shards(ShardConfig(extracted, tmp_path, frames=FRAMES, stride=12, split="test", tail="pad",
                                   subjects=("S9",), shuffle_seed=None))
    clips = [c for _, c in _samples(tmp_path, "test")]
    assert res.samples == len(clips) == 4 and [c.key for c in clips][-1] == "S9/Eating_1/000036"
    last = clips[-1]
    assert last.meta["real_frames"] == 4 and last.meta["frames"] == [36, 37, 38, 39, 39, 39, 39, 39]
    for a in (last.pose3d, last.pose3d_cam[0], last.pose2d[1], last.box[2]):
        assert np.array_equal(a[4:], np.repeat(a[3:4], 4, axis=0)) and not np.array_equal(a[2], a[3])
    assert all(last.jpeg[v][t] == last.jpeg[v][3] for v in range(4) for t in range(4, 8))


def test_killed_run_resumes_to_the_same_shards(extracted, shards, tmp_path):
    """Killed inside its third shard: complete shards stay, the half one and the index do not; the rerun skips the
    complete ones and ends byte-identical to an uninterrupted run."""
    out = tmp_path / "killed"
    cfg = ShardConfig(extracted, out, frames=FRAMES, split="train", shard_mb=SHARD_MB)
    finished = []

    def kill(ev):
        if ev.shard:
            finished.append(ev.shard)
        elif len(finished) == 2 and list(out.glob(".train-*.tar.*.tmp")):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shards(cfg, on_progress=kill)
    assert not (out / "train-index.json").exists() and not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert sorted(p.name for p in out.glob("train-*.tar")) == finished
    res = write_shards(cfg)
    assert res.resumed_shards == 2
    assert {k: v for k, v in _tar_bytes(out).items() if k.startswith("train")} == \
        {k: v for k, v in _tar_bytes(shards).items() if k.startswith("train")}
    assert not list(out.glob(".*")) and not list(out.glob("*.tmp"))


def test_unreadable_sequence_files_are_left_out_and_named(extracted, tmp_path):
    ext = tmp_path / "extracted"
    shutil.copytree(extracted, ext)
    bad = ext / "S9" / "Eating_1.parquet"
    bad.write_bytes(bad.read_bytes()[:5000])                       # a damaged sequence file
    res = run_cli("shard", ext, tmp_path / "out", "--frames", FRAMES, "--split", "test")
    assert res.exit_code == 0, res.output
    assert f"skipped {bad}: not a readable extracted sequence" in res.output
    keys = [c.key for _, c in _samples(tmp_path / "out", "test")]
    assert len(keys) == 5 and all(k.startswith("S11/") for k in keys)
    (ext / "S11" / "Directions.parquet").unlink()                  # nothing readable left: one line, exit 1
    res = run_cli("shard", ext, tmp_path / "out2", "--frames", FRAMES, "--split", "test")
    assert res.exit_code == 1 and "no readable sequence" in res.output and "Traceback" not in res.output


def test_stale_shards_of_an_earlier_run_are_removed(extracted, tmp_path):
    write_shards(ShardConfig(extracted, tmp_path, frames=FRAMES, split="train", shard_mb=SHARD_MB))
    before = sorted(p.name for p in tmp_path.glob("train-*.tar"))
    res = write_shards(ShardConfig(extracted, tmp_path, frames=FRAMES, split="train"))
    assert len(before) > 1 and res.removed == before[1:]
    assert sorted(p.name for p in tmp_path.glob("train-*.tar")) == ["train-000000.tar"]


@pytest.mark.parametrize("sizes, limit, want", [
    ([], 100, [0]),
    ([30, 30, 30], 100 + tarfile.RECORDSIZE, [0, 3]),
    ([30, 30, 30], 90 + tarfile.RECORDSIZE, [0, 3]),           # exactly at the limit: still one shard
    ([30, 30, 30], 89 + tarfile.RECORDSIZE, [0, 2, 3]),
    ([10, 500, 10, 10], 100 + tarfile.RECORDSIZE, [0, 1, 2, 4]),   # a clip larger than the limit: its own shard
])
def test_shard_bounds(sizes, limit, want):
    assert shard_bounds(sizes, limit) == want


def test_workers_write_the_same_bytes(extracted, shards, tmp_path):
    """2 and 3 worker processes write the shards, index and checksums of one process (the fixture's, written by
    `h36m shard` with all cores, equals one process's: test_shards_are_deterministic...)."""
    want = {k: v for k, v in _tar_bytes(shards).items() if k.startswith("train")}
    assert len(want) >= 4

    def member_bytes(path, first_sample_only=False):
        with tarfile.open(path) as tf:
            members = tf.getmembers()
        if first_sample_only:
            members = [m for m in members if m.name.split(".")[0] == members[0].name.split(".")[0]]
        return sum(tarfile.BLOCKSIZE + -(-m.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE for m in members)

    names = sorted(k for k in want if k.endswith(".tar"))
    for a, b in zip(names, names[1:]):      # each shard was closed because the next clip would not fit
        assert member_bytes(shards / a) + member_bytes(shards / b, True) + tarfile.RECORDSIZE > SHARD_MB * 1e6
    for workers in (2, 3):
        out = tmp_path / f"w{workers}"
        res = write_shards(ShardConfig(extracted, out, frames=FRAMES, split="train", shard_mb=SHARD_MB,
                                       workers=workers))
        assert res.index == out / "train-index.json"
        assert _tar_bytes(out) == want
    res = run_cli("shard", extracted, tmp_path / "cli1", "--frames", FRAMES, "--shard-mb", SHARD_MB, "--workers", 1)
    assert res.exit_code == 0, res.output
    assert _tar_bytes(tmp_path / "cli1") == want


def test_a_run_killed_with_one_worker_resumes_with_two(extracted, shards, tmp_path):
    """One process writes shards as it goes (no plan in the journal); two workers plan the rest and finish it."""
    out = tmp_path / "out"
    finished = []

    def kill(ev):
        if ev.shard:
            finished.append(ev.shard)
            if len(finished) == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shards(ShardConfig(extracted, out, frames=FRAMES, split="train", shard_mb=SHARD_MB), on_progress=kill)
    res = write_shards(ShardConfig(extracted, out, frames=FRAMES, split="train", shard_mb=SHARD_MB, workers=2))
    assert res.resumed_shards == 2
    assert _tar_bytes(out) == {k: v for k, v in _tar_bytes(shards).items() if k.startswith("train")}


_KILL_AFTER_TWO_SHARDS = """
import os, signal, sys
from pathlib import Path
from h36m.pipelines.shards.writer import ShardConfig, write_shards

extracted, out, pids, shard_mb = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
finished = []

def on_progress(ev):
    if ev.shard:
        finished.append(ev.shard)
    if len(finished) == 2:          # the workers are busy with the next shards: list them, then kill -9 this process
        me, kids = os.getpid(), []
        for d in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == me:
                kids.append(d)
        pids.write_text(" ".join(kids))
        os.kill(me, signal.SIGKILL)

write_shards(ShardConfig(extracted, out, frames=8, split="train", shard_mb=shard_mb, workers=2), on_progress)
"""


def _alive(pid: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="lists worker processes through /proc")
def test_kill_9_mid_run_then_rerun_gives_the_same_bytes(extracted, shards, tmp_path):
    """A real `write_shards(workers=2)` process killed with SIGKILL after its second shard: its workers die with it,
    the finished shards and the journal stay, no index; the rerun (`h36m shard`) removes the half-written
    temporary files, writes only the missing shards and ends byte-identical to an uninterrupted run."""
    out, pids, log = tmp_path / "out", tmp_path / "pids", tmp_path / "log"
    with open(log, "w") as fh:          # not a pipe: workers that outlive the parent would hold it open
        proc = subprocess.run([sys.executable, "-c", _KILL_AFTER_TWO_SHARDS, str(extracted), str(out), str(pids),
                               str(SHARD_MB)], stdout=fh, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    workers = pids.read_text().split()
    try:
        assert len(workers) == 2
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in workers), "workers outlived their killed parent"
    finally:
        for p in filter(_alive, workers):
            os.kill(int(p), signal.SIGKILL)
    assert (out / ".train-journal.json").is_file() and not (out / "train-index.json").exists()
    assert len(list(out.glob("train-*.tar"))) >= 2
    (out / ".train-000003.tar.999999.tmp").write_bytes(b"half a shard")    # as a worker killed mid-shard leaves
    res = run_cli("shard", extracted, out, "--frames", FRAMES, "--shard-mb", SHARD_MB, "--workers", 2)
    assert res.exit_code == 0, res.output
    assert "resumed after 2 shards" in res.output
    assert _tar_bytes(out) == {k: v for k, v in _tar_bytes(shards).items() if k.startswith("train")}
    assert not list(out.glob(".*"))


# ----------------------------------------------------------------------------------------- CLI: shard, verify, show

def test_cli_shard_errors_are_one_line(tmp_path, extracted):
    res = run_cli("shard", tmp_path / "nowhere", tmp_path / "out", "--frames", 8)
    assert res.exit_code == 1 and "nowhere: no manifest.json" in res.output and "Traceback" not in res.output
    res = run_cli("shard", extracted, tmp_path / "out", "--frames", 8, "--subjects", "S7")
    assert res.exit_code == 1 and "no extracted sequences of subjects S7" in res.output


def test_verify_passes_good_shards(shards):
    res = run_cli("verify", shards, "--workers", 2)
    assert res.exit_code == 0, res.output
    assert "ok: 10 shards, 20 samples, no problems" in res.output


def _rewrite_member(tar: Path, suffix: str, change) -> str:
    """Rewrite `tar` with the data of its first member ending in `suffix` replaced by change(data); its name."""
    import io

    with tarfile.open(tar) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    name = next(m.name for m, _ in members if m.name.endswith(suffix))
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as tf:
        for m, data in members:
            data = change(data) if m.name == name else data
            m.size = len(data)
            tf.addfile(m, io.BytesIO(data))
    return name


def test_verify_reports_every_problem(shards, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    t = bad / "train-000000.tar"                                  # truncated in the middle
    t.write_bytes(t.read_bytes()[: t.stat().st_size // 2 + 700])
    jpg = _rewrite_member(bad / "train-000001.tar", ".v1_0003.jpg", lambda d: bytes(len(d)))   # a JPEG zeroed
    npy = _rewrite_member(bad / "test-000002.tar", ".pose2d.npy", lambda d: d[:-8])             # an array cut
    (bad / "test-000001.tar").unlink()                           # a listed shard is gone
    res = run_cli("verify", bad)
    lines = [line for line in res.output.splitlines() if line.startswith("problem:")]
    text = "\n".join(lines)
    assert res.exit_code == 1 and f"{len(lines)} problems in 9 shards" in res.output
    assert "train-000000.tar: truncated" in text
    assert "train-000000.tar: sha256 differs from the index" in text
    assert f"train-000000.tar: {t.stat().st_size} bytes, the index lists" in text
    assert f"train-000001.tar: {jpg[:-len('.v1_0003.jpg')]}: v1_0003.jpg: not a decodable JPEG" in text
    assert f"test-000002.tar: {npy[:-len('.pose2d.npy')]}: pose2d.npy: not a readable .npy" in text
    assert "train-000001.tar: sha256 differs from the index" in text
    assert "test-index.json: lists test-000001.tar, which is missing" in text
    assert not any(s in text for s in ("test-000000", "test-000003", "train-000002"))


def test_show_draws_the_skeleton_on_the_crops(shards, tmp_path):
    import cv2

    from h36m.pipelines.shards.show import COLORS, HEADER, LABEL, render_clip

    out = tmp_path / "clip.png"
    shard = shards / "test-000000.tar"
    key = next(iter_tar_samples(shard))["__key__"]
    res = run_cli("show", shard, "--key", key, "--out", out, "--max-frames", 4)
    assert res.exit_code == 0 and f"{key}: " in res.output
    img = cv2.imread(str(out))
    clip = read_clip(shard, key)
    assert img.shape == (2 * HEADER + clip.views * 160, LABEL + 4 * 160, 3)
    np.testing.assert_array_equal(img, render_clip(clip, 4))
    # the head (joint 10, centre) of view 0, frame 0 is drawn in the centre colour where pose2d puts it
    x, y = (clip.pose2d[0, 0, 10] * 160 / clip.meta["crop_size"] - 0.5).round().astype(int)
    assert np.abs(img[2 * HEADER + y, LABEL + x].astype(int) - COLORS["centre"]).max() < 40
    res = run_cli("show", shard, "--key", "S1/Nope/000000")
    assert res.exit_code == 1 and "no sample with key 'S1/Nope/000000'" in res.output
