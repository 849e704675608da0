"""pipelines/loader/ on real shards of the synth -> extract -> shard chain: the batch contract, ranks and workers,
damaged shards, the flip, and URLs (brace patterns, globs, pipe:, http)."""
from __future__ import annotations

import functools
import http.server
import io
import json
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from fixtures_shard import FRAMES, extracted, shards  # noqa: F401  (fixtures; realdata comes from conftest)
from h36m.pipelines.loader.loader import LoaderConfig, make_loader
from h36m.pipelines.loader.stages import ShardWarning, sample_bytes, shuffle_size
from h36m.pipelines.loader.plan import Unit, plan_batches, plan_rank
from h36m.pipelines.shards.urls import expand_urls, shard_counts
from h36m.pipelines.shards.sample import decode_sample, iter_tar_samples

TRAIN = "train-{000000..000004}.tar"


def _urls(folder: Path, split: str = "train") -> str:
    n = len(json.loads((folder / f"{split}-index.json").read_text())["shards"])
    return str(folder / f"{split}-{{000000..{n - 1:06d}}}.tar")


def _keys(loader) -> list[str]:
    return [k for batch in loader for k in batch["key"]]


def _all_keys(folder: Path, split: str) -> list[str]:
    return [raw["__key__"] for p in sorted(folder.glob(f"{split}-*.tar")) for raw in iter_tar_samples(p)]


# ----------------------------------------------------------------------------------------- the batch contract

def test_batch_contract_and_content(shards, extracted):
    """Shapes and dtypes of the contract; images are the extracted JPEGs decoded (RGB); S11's 3 views padded."""
    import cv2
    import torch

    from h36m.pipelines.extract.dataset import read_sequence, sequence_path

    loader = make_loader(LoaderConfig(_urls(shards, "test"), batch_size=4, workers=0, shuffle=0,
                                      shuffle_shards=False))
    batches = list(loader)
    assert len(loader) == len(batches) == 2 and loader.stats.samples == 8          # floor(10 / 4) batches
    b = batches[0]
    assert set(b) == {"images", "pose2d", "pose3d_cam", "pose3d", "box", "view_mask", "view_index", "key", "meta",
                      "cameras"}
    want = {"images": ((4, 4, FRAMES, 3, 64, 64), torch.uint8), "pose2d": ((4, 4, FRAMES, 17, 2), torch.float32),
            "pose3d_cam": ((4, 4, FRAMES, 17, 3), torch.float32), "pose3d": ((4, FRAMES, 17, 3), torch.float32),
            "box": ((4, 4, FRAMES, 4), torch.float32), "view_mask": ((4, 4), torch.bool),
            "view_index": ((4, 4), torch.int64)}
    for name, (shape, dtype) in want.items():
        assert tuple(b[name].shape) == shape and b[name].dtype == dtype, name
    assert len(b["key"]) == len(b["meta"]) == len(b["cameras"]) == 4
    padded = 0
    for batch in batches:
        for i, (key, meta, cams) in enumerate(zip(batch["key"], batch["meta"], batch["cameras"])):
            V = len(meta["cameras"])
            assert batch["view_mask"][i].tolist() == [True] * V + [False] * (4 - V)
            assert [c["id"] for c in cams] == meta["cameras"]
            padded += V < 4
            if V < 4:
                assert not batch["images"][i, V:].any() and not batch["pose2d"][i, V:].any()
            _, arr = read_sequence(sequence_path(extracted, meta["subject"], meta["sequence"]))
            rows = meta["frames"]
            np.testing.assert_array_equal(batch["pose3d"][i].numpy(), arr.pose3d[rows])
            np.testing.assert_array_equal(batch["pose2d"][i, :V].numpy(), arr.pose2d_crop[rows].transpose(1, 0, 2, 3))
            for v in (0, V - 1):
                for t in (0, FRAMES - 1):
                    bgr = cv2.imdecode(np.frombuffer(arr.jpeg[rows[t]][v], np.uint8), cv2.IMREAD_COLOR)
                    np.testing.assert_array_equal(batch["images"][i, v, t].permute(1, 2, 0).numpy(), bgr[..., ::-1])
    assert padded >= 1


# ----------------------------------------------------------------------------------------- ranks and workers

@pytest.mark.parametrize("counts", [[2, 2, 2, 2, 2], [3, 1, 4, 1, 5, 9, 2], [7], [2, 3]])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
@pytest.mark.parametrize("workers", [0, 1, 3])
def test_plans_split_exactly(counts, world, workers):
    """Over all ranks and readers: evaluation plans cover every sample of every shard exactly once; training plans
    give every rank floor(total / (world * batch)) batches."""
    urls = [f"s-{i:06d}.tar" for i in range(len(counts))]
    kw = dict(world_size=world, workers=workers, batch_size=2, seed=3, epoch=1, shuffle_shards=True)
    covered = {u: [] for u in urls}
    for rank in range(world):
        plans = plan_rank(urls, counts, rank=rank, equal_batches=False, **kw)
        assert len(plans) == max(workers, 1)
        for p in plans:
            for u in p.units:
                n = counts[urls.index(u.url)]
                covered[u.url] += [i for i in range(n) if i % u.modulo == u.residue]
        train = plan_rank(urls, counts, rank=rank, equal_batches=True, **kw)
        assert plan_batches(train, 2) == sum(counts) // (world * 2)
        assert [p.units for p in train] == [p.units for p in plans]
    for u, got in covered.items():
        assert sorted(got) == list(range(counts[urls.index(u)])), u
    assert plan_rank(urls, [None] * len(counts), rank=0, equal_batches=True, **kw)[0].batches is None


def test_unit_counts_samples_of_its_residue():
    assert [Unit("x", 3, r, 7).samples for r in range(3)] == [3, 2, 2]
    assert Unit("x", 4, 3, 2).samples == 0 and Unit("x").samples is None


@pytest.mark.parametrize("workers", [0, 2])
def test_two_ranks_see_disjoint_clips_and_equal_batch_counts(shards, workers):
    urls = _urls(shards)
    total = json.loads((shards / "train-index.json").read_text())["samples"]
    seen = []
    for rank in (0, 1):
        loader = make_loader(LoaderConfig(urls, batch_size=2, workers=workers, rank=rank, world_size=2, seed=5))
        keys = _keys(loader)
        assert len(loader) == total // 4 == 2 and len(keys) == 2 * len(loader)
        assert loader.stats.skipped_shards == loader.stats.skipped_samples == 0
        seen.append(set(keys))
    assert not seen[0] & seen[1]
    # evaluation: every clip exactly once over the ranks, even with more ranks than shards
    every = []
    for rank in range(8):
        loader = make_loader(LoaderConfig(urls, batch_size=2, workers=workers, rank=rank, world_size=8,
                                          equal_batches=False))
        keys = _keys(loader)
        assert len(keys) == sum(loader.plans()[w].samples for w in range(max(workers, 1)))
        every += keys
    assert sorted(every) == sorted(_all_keys(shards, "train"))


def test_a_rank_that_runs_short_repeats_its_clips(shards):
    """3 ranks over 5 shards of 2 clips: the ranks hold 4, 4 and 2 clips and all yield floor(10 / 3) = 3 batches of
    1; the short rank re-reads its clips (a fresh pass) instead of ending early."""
    for rank, held in ((0, 2), (1, 2), (2, 1)):
        loader = make_loader(LoaderConfig(_urls(shards), batch_size=1, workers=0, rank=rank, world_size=3,
                                          shuffle_shards=False))
        keys = _keys(loader)
        assert len(loader) == len(keys) == 3
        assert len(set(keys)) == min(3, 2 * held)


def test_order_is_seeded_and_changes_per_epoch(shards):
    def keys(**kw):
        return _keys(make_loader(LoaderConfig(_urls(shards), batch_size=2, equal_batches=False, **kw)))

    a, b, c = keys(seed=1), keys(seed=1), keys(seed=1, epoch=1)
    assert a == b and a != c and sorted(a) == sorted(c) == sorted(_all_keys(shards, "train"))
    assert keys(shuffle=0, shuffle_shards=False, workers=0) == _all_keys(shards, "train")


def test_shuffle_buffer_is_capped_by_memory(shards):
    """`shuffle_mb` bounds the samples the shuffle buffer holds (so 5 MB clips of 128 frames do not fill 256 x 5 MB
    per worker): with room for 2 samples no clip comes out more than 1 place ahead of its tar order; with the
    default room the same seed moves clips further; every clip still comes exactly once."""
    order = _all_keys(shards, "train")
    first = next(iter_tar_samples(sorted(shards.glob("train-*.tar"))[0]))

    def ahead(**kw):
        keys = _keys(make_loader(LoaderConfig(_urls(shards), batch_size=1, workers=0, shuffle_shards=False,
                                              equal_batches=False, seed=1, **kw)))
        assert sorted(keys) == sorted(order)
        return max(order.index(k) - i for i, k in enumerate(keys))

    assert ahead(shuffle_mb=2.5 * sample_bytes(first) / 2 ** 20) <= 1
    assert ahead() > 1
    assert shuffle_size(256, 256, 5 << 20) == 51 and shuffle_size(256, 256, 600 << 10) == 256
    assert shuffle_size(256, 0, 1) == 2


# ----------------------------------------------------------------------------------------- damaged shards

def test_truncated_shard_is_skipped_and_counted(shards, tmp_path):
    import tarfile

    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    t = bad / "train-000002.tar"
    cut = t.stat().st_size // 2 + 700
    with tarfile.open(t) as tf:                     # samples whose members all lie before the cut survive it
        ends = {}
        for m in tf.getmembers():
            key = m.name.split(".", 1)[0]
            ends[key] = max(ends.get(key, 0), m.offset_data + m.size)
    survivors = [k for k, end in ends.items() if end <= cut]
    t.write_bytes(t.read_bytes()[:cut])
    (bad / "train-000004.tar").write_bytes(b"not a tar file" * 100)
    with pytest.warns(ShardWarning) as caught:
        loader = make_loader(LoaderConfig(_urls(bad), batch_size=2, workers=0, equal_batches=False, shuffle=0,
                                          shuffle_shards=False))
        keys = _keys(loader)
    assert loader.stats.skipped_shards == 2 and loader.stats.skipped_samples == 0
    assert {str(w.message).split(":")[0] for w in caught} == {str(t), str(bad / "train-000004.tar")}
    def shard_keys(name):
        return [raw["__key__"] for raw in iter_tar_samples(bad / f"{name}.tar")]

    intact = shard_keys("train-000000") + shard_keys("train-000001") + survivors + shard_keys("train-000003")
    assert 0 < len(survivors) < len(ends) and keys == intact and loader.stats.samples == len(keys)
    # training: the same batch count as with intact shards, from worker processes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShardWarning)
        loader = make_loader(LoaderConfig(_urls(bad), batch_size=2, workers=2))
        batches = list(loader)
    assert len(batches) == len(loader) == 5 and loader.stats.skipped_shards == 2
    assert set(k for b in batches for k in b["key"]) <= set(_all_keys(shards, "train"))


def test_missing_shard_is_skipped(shards, tmp_path):
    with pytest.warns(ShardWarning, match="cannot open"):
        loader = make_loader(LoaderConfig([str(shards / "train-000000.tar"), str(tmp_path / "gone-000000.tar")],
                                          batch_size=1, workers=0, equal_batches=False))
        keys = _keys(loader)
    assert keys and loader.stats.skipped_shards == 1
    with pytest.raises(TypeError, match="no \\{split\\}-index.json"):
        len(loader)


# ----------------------------------------------------------------------------------------- the flip

def _project_to_crop(clip_cams, pose3d, box, size):
    """World joints (F,17,3) through each view's camera into crop px (V,F,17,2), and camera coords (V,F,17,3)."""
    from h36m.h36m_tools.cameras import Camera, world_to_camera

    crops, cams = [], []
    for v, c in enumerate(clip_cams):
        cam = Camera.from_dict(c)
        cams.append(world_to_camera(pose3d, cam.extrinsics.R, cam.extrinsics.t))
        full = cam.project(pose3d.astype(float))
        b = box[v][:, None, :]
        crops.append((full - b[..., :2]) * size / (b[..., 2:3] - b[..., 0:1]))
    return np.stack(crops), np.stack(cams)


def test_flip_gives_a_valid_mirrored_clip(shards):
    from h36m.h36m_tools.skeleton import LEFT17, RIGHT17, bone_lengths
    from h36m.pipelines.loader.augment import flip_clip
    from h36m.pipelines.loader.stages import decode_chw

    clip = decode_chw(decode_sample(next(iter_tar_samples(shards / "train-000000.tar"))))
    f = flip_clip(clip)
    size = clip.meta["crop_size"]
    for c in (clip, f):        # the original and the flipped clip are consistent in the same way
        crop, cam = _project_to_crop(c.cameras, c.pose3d, c.box, size)
        np.testing.assert_allclose(crop, c.pose2d, atol=0.01)
        np.testing.assert_allclose(cam, c.pose3d_cam, atol=0.05)
    for cam in f.cameras:
        R = np.asarray(cam["R"])
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)
        assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(bone_lengths(f.pose3d), bone_lengths(clip.pose3d), atol=1e-3)
    np.testing.assert_allclose(bone_lengths(f.pose3d_cam), bone_lengths(clip.pose3d_cam), atol=1e-3)
    # the flipped left wrist is the mirror image of the original right wrist, in every view (pixel i <-> size - 1 - i)
    np.testing.assert_allclose(f.pose2d[..., LEFT17, 0], size - 1 - clip.pose2d[..., RIGHT17, 0], atol=1e-4)
    np.testing.assert_allclose(f.pose2d[..., LEFT17, 1], clip.pose2d[..., RIGHT17, 1])
    np.testing.assert_array_equal(f.images, clip.images[..., ::-1])
    assert f.meta["flipped"] and "flipped" not in clip.meta
    g = flip_clip(f)
    np.testing.assert_allclose(g.pose3d, clip.pose3d)
    np.testing.assert_allclose(g.pose2d, clip.pose2d, atol=1e-4)
    np.testing.assert_allclose(np.asarray(g.cameras[0]["R"]), np.asarray(clip.cameras[0]["R"]))


def _reference_images(folder: Path, split: str = "train") -> dict[str, np.ndarray]:
    from h36m.pipelines.loader.stages import decode_chw

    return {raw["__key__"]: decode_chw(decode_sample(raw)).images
            for p in sorted(folder.glob(f"{split}-*.tar")) for raw in iter_tar_samples(p)}


def test_flipped_real_cameras_project_mirrored_real_joints(realdata):
    """On the real H36M frames: the mirrored world joints through the flipped real cameras (real extrinsics,
    intrinsics and distortion) land on the mirror image of the real 2-D annotations."""
    from h36m.h36m_tools.cameras import Camera, bundled
    from h36m.h36m_tools.skeleton import FLIP17
    from h36m.pipelines.loader.augment import MIRROR, flip_camera

    coco = json.loads((realdata / "mmpose_h36m" / "h36m_coco.json").read_text())
    images = {im["id"]: im for im in coco["images"]}
    for ann in coco["annotations"]:
        im = images[ann["image_id"]]
        subject, cam_id = im["file_name"].split("_")[0], im["file_name"].split(".")[1].split("_")[0]
        cam = bundled().camera(subject, cam_id)
        world = np.asarray(ann["keypoints_3d"], float).reshape(17, 4)[:, :3] * 1000
        part = np.asarray(ann["keypoints"], float).reshape(17, 3)[:, :2]
        assert np.abs(cam.project(world) - part).max() < 1e-3                       # the real camera as it is
        flipped = Camera.from_dict(flip_camera(cam.to_dict()))
        mirrored = part[FLIP17].copy()
        mirrored[:, 0] = cam.intrinsics.width - 1 - mirrored[:, 0]            # pixel i <-> width - 1 - i
        np.testing.assert_allclose(flipped.project(world[FLIP17] @ MIRROR), mirrored, atol=1e-3)


def test_augmenting_loader_flips_whole_samples(shards):
    ref = _reference_images(shards)
    loader = make_loader(LoaderConfig(_urls(shards), batch_size=5, workers=0, augment=True, seed=2,
                                      equal_batches=False))
    flips = []
    for batch in loader:
        for i, (meta, cams) in enumerate(zip(batch["meta"], batch["cameras"])):
            flips.append(bool(meta.get("flipped")))
            V = len(cams)
            want = ref[batch["key"][i]][..., ::-1] if flips[-1] else ref[batch["key"][i]]
            np.testing.assert_array_equal(batch["images"][i, :V].numpy(), want)
            crop, cam = _project_to_crop(cams, batch["pose3d"][i].numpy(), batch["box"][i, :V].numpy(),
                                         meta["crop_size"])
            np.testing.assert_allclose(crop, batch["pose2d"][i, :V].numpy(), atol=0.01)
            np.testing.assert_allclose(cam, batch["pose3d_cam"][i, :V].numpy(), atol=0.05)
    assert len(flips) == 10 and 0 < sum(flips) < 10


@pytest.mark.parametrize("workers,message_crops", [(0, 1), (2, 1), (2, 2 * 4 * FRAMES)])
def test_recycled_image_buffers_are_not_overwritten_while_referenced(shards, workers, message_crops):
    """Readers reuse an image buffer only after the consumer dropped every reference to its images: views kept from
    every other batch still hold their clip at the end, and every batch is right on arrival; also when a buffer
    holds a message of 2 batches and only the first of them is kept (prefetch 1: few buffers, much reuse)."""
    ref = _reference_images(shards)
    loader = make_loader(LoaderConfig([_urls(shards)] * 2, batch_size=1, workers=workers, equal_batches=False,
                                      seed=4, prefetch=1, message_crops=message_crops))
    kept = []
    for i, batch in enumerate(loader):      # the shards twice: 20 batches (10 a worker), more than a reader's 3 buffers
        key, V = batch["key"][0], int(batch["view_mask"][0].sum())
        np.testing.assert_array_equal(batch["images"][0, :V].numpy(), ref[key])
        if i % 2 == 0:
            kept.append((key, batch["images"][0, :V]))        # a view: keeps the storage (and buffer) busy
        del batch
    assert i + 1 == 20 and len(kept) == 10
    for key, view in kept:
        np.testing.assert_array_equal(view.numpy(), ref[key])


@pytest.mark.parametrize("workers", [0, 2])
def test_without_the_pool_the_batches_are_the_same(shards, workers):
    """`pool=False` (a fresh buffer every message, here a batch) yields the same batches as the pool."""
    def batches(pool):
        loader = make_loader(LoaderConfig(_urls(shards), batch_size=2, workers=workers, equal_batches=False, seed=1,
                                          prefetch=1, message_crops=1, pool=pool))
        out = [(b["key"], b["images"].clone(), b["pose2d"].clone()) for b in loader]
        return out, loader.stats

    (pooled, pstats), (fresh, fstats) = batches(True), batches(False)
    assert [k for k, _, _ in pooled] == [k for k, _, _ in fresh] and len(fresh) > 3
    for (_, ia, pa), (_, ib, pb) in zip(pooled, fresh):
        assert np.array_equal(ia.numpy(), ib.numpy()) and np.array_equal(pa.numpy(), pb.numpy())
    assert fstats.buffers == len(fresh) and pstats.samples == fstats.samples


@pytest.mark.parametrize("workers", [0, 2])
def test_image_buffers_are_recycled_when_batches_are_dropped(shards, workers):
    """A consumer that lets each batch go gets its images in the readers' few pool buffers (mapped once), not in a
    new buffer per batch."""
    cfg = LoaderConfig(_urls(shards), batch_size=1, workers=workers, equal_batches=False, shuffle=0, prefetch=1,
                       message_crops=1)
    loader = make_loader(cfg)
    assert sum(1 for _ in loader) == 10
    assert loader.stats.buffers <= max(workers, 1) * (cfg.prefetch + 2) < 10
    pooled = max(workers, 1) * (cfg.prefetch + 2)
    held = list(loader)                 # a consumer that keeps every batch: the pool, then a new buffer each
    assert 10 - pooled <= loader.stats.buffers < 10 and len({b["images"].data_ptr() for b in held}) == 10


@pytest.mark.parametrize("workers", [0, 2])
def test_passes_after_an_abandoned_one_are_whole_and_follow_set_epoch(shards, workers):
    """One loader, pass after pass (persistent workers and image pools): a pass the consumer leaves after 2 batches
    does not disturb the next, which gives every clip with its own images in the order of a new loader at that
    epoch; the batches the DataLoader dropped free their buffers again (no new buffers in the pass after)."""
    ref = _reference_images(shards)
    cfg = LoaderConfig(_urls(shards), batch_size=1, workers=workers, equal_batches=False, seed=3, prefetch=1,
                       message_crops=1)
    loader = make_loader(cfg)
    for i, _ in enumerate(loader):
        if i == 1:
            break
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        keys = []
        for batch in loader:
            key, V = batch["key"][0], int(batch["view_mask"][0].sum())
            np.testing.assert_array_equal(batch["images"][0, :V].numpy(), ref[key])
            keys.append(key)
            del batch
        fresh = _keys(make_loader(LoaderConfig(_urls(shards), batch_size=1, workers=workers, equal_batches=False,
                                               seed=3, prefetch=1, epoch=epoch, message_crops=1)))
        assert keys == fresh and sorted(keys) == sorted(ref)
    assert loader.stats.buffers == 0 and loader.stats.samples == 10


@pytest.mark.parametrize("workers", [0, 2])
def test_messages_of_several_batches_split_into_the_same_batches(shards, workers):
    """A worker sends several batches per message (message_crops): the consumer still gets batches of batch_size,
    len(loader) of them in training (a quota that is no multiple of the message), every clip once with its own
    images in evaluation, the last batch of each worker perhaps short."""
    from h36m.pipelines.loader.stages import batches_per_message

    assert batches_per_message(2, 4 * FRAMES, 1) == 1 and batches_per_message(2, 4 * FRAMES, 65) == 2
    assert batches_per_message(1, 4 * 128) == 1
    ref = _reference_images(shards)
    for equal in (True, False):
        got = {}
        for crops in (1, 3 * 4 * FRAMES, 10 ** 9):     # 1 batch, 2 batches of 2 clips, all of a worker's batches
            loader = make_loader(LoaderConfig(_urls(shards), batch_size=2, workers=workers, equal_batches=equal,
                                              seed=1, message_crops=crops))
            batches = list(loader)
            sizes = [len(b["key"]) for b in batches]
            for b in batches:
                assert b["images"].shape[0] == len(b["key"]) == b["pose2d"].shape[0] == b["view_mask"].shape[0]
                for i, key in enumerate(b["key"]):
                    V = int(b["view_mask"][i].sum())
                    np.testing.assert_array_equal(b["images"][i, :V].numpy(), ref[key])
            if equal:
                assert sizes == [2] * len(loader)
            else:
                assert sizes.count(1) <= max(workers, 1) and sum(sizes) == len(ref)
            got[crops] = sorted(_keys(batches))
        assert got[1] == got[3 * 4 * FRAMES] == got[10 ** 9]


def test_loader_workers_leave_inherited_objects_to_the_garbage_collector_of_the_parent(shards):
    """A DataLoader worker starts with the parent's objects frozen (gc.freeze), so its collections do not walk,
    and copy, the inherited heap."""
    import gc

    import torch

    from h36m.pipelines.loader.loader import _worker_init

    class FreezeCount(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield gc.get_freeze_count()

    counts = list(torch.utils.data.DataLoader(FreezeCount(), batch_size=None, num_workers=1,
                                              worker_init_fn=_worker_init))
    assert counts[0] > 10_000 and gc.get_freeze_count() == 0
    assert make_loader(LoaderConfig(_urls(shards), workers=1))._loader.worker_init_fn is _worker_init


# ----------------------------------------------------------------------------------------- URLs

def test_tar_reader_follows_long_names_and_matches_tarfile(tmp_path):
    import io
    import tarfile

    from h36m.pipelines.shards.tarstream import iter_tar_files

    names = ["S1/Directions_1/000000.meta.json", "S1/" + "x" * 120 + "/000000.v0_0000.jpg"]
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            for i, n in enumerate(names if fmt != tarfile.USTAR_FORMAT else names[:1]):
                info = tarfile.TarInfo(n)
                info.size = i + 3
                tf.addfile(info, io.BytesIO(bytes(range(i + 3))))
        data = buf.getvalue()
        got = list(iter_tar_files(io.BytesIO(data)))
        want = names if fmt != tarfile.USTAR_FORMAT else names[:1]
        assert got == [(n, bytes(range(i + 3))) for i, n in enumerate(want)]
        with pytest.raises(EOFError):
            list(iter_tar_files(io.BytesIO(data[:1024])))
        with pytest.raises(ValueError, match="checksum"):
            list(iter_tar_files(io.BytesIO(data[:100] + b"?" + data[101:])))


def test_tar_numeric_fields_read_as_tarfile_reads_them():
    """Header numbers as tarfile writes them (the checksum's NUL then blank, the size's trailing NUL) and as other
    writers do (blanks, no NUL, nothing after a NUL) read as `tarfile.nti` reads them; a non-number is ValueError."""
    import tarfile

    from h36m.pipelines.shards.tarstream import _octal

    fields = [tarfile.itn(n, 8, tarfile.GNU_FORMAT) for n in (0, 7, 0o12345, 0o7777777)]
    fields += [b"0012345\0 ", b"00000001234\0", b" 1234 \0\0\0", b"   17   ", b"12\0garbage", b"\0" * 12, b" " * 8]
    for f in fields:
        assert _octal(f) == tarfile.nti(f), f
    assert _octal(tarfile.itn(0o12345, 8, tarfile.GNU_FORMAT)) == 0o12345
    for bad in (b"12x4\0", b"1 2\0", b"9\0"):
        with pytest.raises(ValueError):
            _octal(bad)


class _Trickle:
    """A stream that returns at most `most` bytes a read, as a socket or pipe may."""

    def __init__(self, data: bytes, most: int):
        self.data, self.most, self.pos = data, most, 0

    def read(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + min(n, self.most)]
        self.pos += len(out)
        return out


def test_tar_reader_reads_a_real_shard_in_any_chunks_as_tarfile_does(shards):
    """Every member of a real shard, name and bytes, as `tarfile` reads it, whatever the read sizes; a shard cut
    anywhere ends in EOFError after the members before the cut."""
    import tarfile

    from h36m.pipelines.shards.tarstream import iter_tar_files

    path = shards / "train-000000.tar"
    data = path.read_bytes()
    with tarfile.open(path) as tf:
        want = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers() if m.isfile()]
    for chunk, most in ((1 << 20, 1 << 30), (700, 300), (512, 1)):
        assert list(iter_tar_files(_Trickle(data, most), chunk=chunk)) == want
    got = []
    with pytest.raises(EOFError):
        for name, _ in iter_tar_files(_Trickle(data[: len(data) // 2], 4096), chunk=1000):
            got.append(name)
    assert 0 < len(got) < len(want) and got == [n for n, _ in want[: len(got)]]


def test_tar_reader_maps_regular_files(shards, tmp_path):
    """A regular file is mapped, not read: its members are memoryviews into the file with tarfile's bytes, valid after
    the file is closed; a file cut anywhere ends in EOFError after the members before the cut, as a stream does."""
    import tarfile

    from h36m.pipelines.shards.tarstream import iter_tar_files

    path = shards / "train-000000.tar"
    with tarfile.open(path) as tf:
        want = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers() if m.isfile()]
    with open(path, "rb") as fh:
        got = list(iter_tar_files(fh))
    assert all(isinstance(d, memoryview) and d.readonly for _, d in got)
    assert [(n, bytes(d)) for n, d in got] == want
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) // 3 + 100, 700):
        (tmp_path / "cut.tar").write_bytes(data[:cut])
        names = []
        with open(tmp_path / "cut.tar", "rb") as fh, pytest.raises(EOFError):
            for name, _ in iter_tar_files(fh):
                names.append(name)
        assert names == [n for n, _ in want[: len(names)]] and len(names) < len(want)


def test_samples_group_as_webdataset_does(shards, tmp_path):
    """iter_samples(iter_tar_files(...)) gives webdataset's samples, also with one buffer reused across shards and
    one smaller than a member (it grows); upper-case extensions are lowered and a repeated one is an error."""
    import io
    import tarfile

    from h36m.pipelines.shards.tarstream import iter_samples, iter_tar_files

    buffer = bytearray(4096)
    for p in sorted(shards.glob("train-*.tar"))[:2]:
        with open(p, "rb") as fh:
            got = list(iter_samples(iter_tar_files(fh, chunk=4096, buffer=buffer), str(p)))
        assert got == list(iter_tar_samples(p)) and len(got) == 2
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for n in ("a/k1.X.JPG", "a/noext", "a/k1.y", "a/k2.y", "a/k2.y"):
            info = tarfile.TarInfo(n)
            info.size = 1
            tf.addfile(info, io.BytesIO(b"1"))
    samples = iter_samples(iter_tar_files(io.BytesIO(buf.getvalue())), "u")
    assert next(samples) == {"__key__": "a/k1", "__url__": "u", "x.jpg": b"1", "y": b"1"}
    with pytest.raises(ValueError, match="duplicate"):
        next(samples)


def test_split_key_groups_member_names_as_webdataset_does():
    import itertools

    from webdataset.tariterators import base_plus_ext

    from h36m.pipelines.shards.tarstream import split_key

    names = ["".join(t) for k in range(7) for t in itertools.product("a./", repeat=k)]
    names += ["S1/Directions_1/000128.v0_0001.jpg", "S1/Walk Dog 1/000000.meta.json", "a/.b.c", "x/y.tar.gz"]
    assert [split_key(n) for n in names] == [base_plus_ext(n) for n in names]


def test_globs_braces_and_pipe_urls(shards):
    n = len(json.loads((shards / "train-index.json").read_text())["shards"])
    listed = [str(shards / f"train-{i:06d}.tar") for i in range(n)]
    assert expand_urls(str(shards / "train-*.tar")) == expand_urls(_urls(shards)) == listed
    assert expand_urls(f"{listed[0]}::{listed[1]}") == listed[:2]
    pipe = [f"pipe:cat {u}" for u in listed]
    assert shard_counts(pipe) == shard_counts(listed) == [2] * n
    loader = make_loader(LoaderConfig(pipe, batch_size=2, workers=0, shuffle=0, shuffle_shards=False))
    assert len(loader) == 5 and _keys(loader) == _all_keys(shards, "train")


def test_http_shards_stream_like_local_files(shards):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shards))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        cfg = dict(batch_size=2, workers=2, shuffle=0, shuffle_shards=False)
        remote = make_loader(LoaderConfig(f"{base}/{TRAIN}", **cfg))
        local = make_loader(LoaderConfig(str(shards / TRAIN), **cfg))
        assert len(remote) == len(local) == 5
        for a, b in zip(remote, local, strict=True):
            assert a["key"] == b["key"]
            for name in ("images", "pose2d", "pose3d_cam", "pose3d", "box", "view_mask"):
                assert (a[name] == b[name]).all()
        with pytest.warns(ShardWarning, match="cannot open"):
            gone = make_loader(LoaderConfig(f"{base}/train-000099.tar", workers=0, equal_batches=False))
            assert _keys(gone) == [] and gone.stats.skipped_shards == 1
    finally:
        server.shutdown()
        server.server_close()


def test_one_ahead_keeps_order_and_raises_the_workers_error():
    """The pinning stage: every item once, in order, computed off the consumer's thread; its error reaches the
    consumer at the item that failed."""
    import threading

    from h36m.pipelines.loader.loader import one_ahead

    main = threading.get_ident()
    seen = []

    def fn(x):
        seen.append(threading.get_ident())
        if x == 3:
            raise RuntimeError("bad item 3")
        return x * 10

    assert list(one_ahead(iter(range(3)), fn)) == [0, 10, 20] and main not in seen
    assert list(one_ahead(iter([]), fn)) == []
    got = []
    with pytest.raises(RuntimeError, match="bad item 3"):
        for y in one_ahead(iter(range(6)), fn):
            got.append(y)
    assert got == [0, 10, 20]


def _dot_shard(path: Path, size: int = 64, views: int = 2, frames: int = 3, clips: int = 6, sigma: float = 1.6,
                  seed: int = 0) -> None:
    """A shard whose crops are dark but for one bright Gaussian dot centred exactly on joint _LEFT_WRIST's stored
    label (pixel centres at integer coordinates: pixel (i, j) is at x = j, y = i)."""
    import tarfile

    from h36m.h36m_tools.cameras import CAMERA_IDS
    from h36m.pipelines.extract.crop import encode_jpeg
    from h36m.pipelines.shards.sample import FORMAT, Clip, clip_key, encode_clip

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    joint = _LEFT_WRIST
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for c in range(clips):
            pose2d = rng.uniform(10, size - 11, (views, frames, 17, 2)).astype(np.float32)
            jpeg = []
            for v in range(views):
                row = []
                for t in range(frames):
                    x, y = pose2d[v, t, joint]
                    dot = 255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
                    img = np.repeat(dot.round().astype(np.uint8)[..., None], 3, axis=2)
                    row.append(encode_jpeg(img, quality=98))
                jpeg.append(row)
            cameras = [{"id": CAMERA_IDS[v], "fx": 1145.0, "fy": 1144.0, "cx": 512.0 - v, "cy": 515.0, "k1": 0.0,
                        "k2": 0.0, "k3": 0.0, "p1": 0.0, "p2": 0.0, "width": 1000, "height": 1002,
                        "R": np.eye(3).tolist(), "t": [0.0, 0.0, 5000.0]} for v in range(views)]
            box = np.tile(np.array([300.0, 200.0, 300.0 + 2.5 * size, 200.0 + 2.5 * size], np.float32),
                          (views, frames, 1))
            meta = {"format": FORMAT, "subject": "S1", "sequence": "Directions 1", "action": "Directions",
                    "cameras": [cam["id"] for cam in cameras], "frames": list(range(c * frames, (c + 1) * frames)),
                    "real_frames": frames, "fps": 50.0, "crop_size": size}
            clip = Clip(key=clip_key("S1", "Directions 1", c * frames), meta=meta, cameras=cameras,
                        pose3d=np.zeros((frames, 17, 3), np.float32),
                        pose3d_cam=np.zeros((views, frames, 17, 3), np.float32), pose2d=pose2d, box=box, jpeg=jpeg)
            for ext, data in encode_clip(clip):
                info = tarfile.TarInfo(f"{clip.key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


_LEFT_WRIST = 13        # a joint with a mirror partner: a flipped label must follow FLIP17


def _dot_centre(img: np.ndarray) -> np.ndarray:
    """Sub-pixel (x, y) of the one bright dot of a (3, H, W) crop: intensity-weighted centroid around its peak."""
    g = img.astype(float).mean(axis=0)
    i, j = np.unravel_index(np.argmax(g), g.shape)
    win = g[max(i - 5, 0): i + 6, max(j - 5, 0): j + 6]
    win = np.clip(win - 8.0, 0, None)                  # JPEG ringing in the dark background
    ys, xs = np.mgrid[max(i - 5, 0): i + 6, max(j - 5, 0): j + 6]
    return np.array([(xs * win).sum() / win.sum(), (ys * win).sum() / win.sum()])


def test_labels_stay_on_their_pixels_in_flipped_and_plain_samples(tmp_path):
    """A bright dot drawn at a joint's label is found under that label (< 0.25 px) after the real loader's decode,
    whether the sample was flipped (the label then belongs to the mirrored joint) or not."""
    from h36m.h36m_tools.skeleton import FLIP17

    assert FLIP17[_LEFT_WRIST] != _LEFT_WRIST
    _dot_shard(tmp_path / "dots-000000.tar")
    seen = {False: 0, True: 0}
    worst = 0.0
    for seed in range(4):
        loader = make_loader(LoaderConfig(str(tmp_path / "dots-000000.tar"), batch_size=2, workers=0, shuffle=0,
                                          augment=True, seed=seed, equal_batches=False))
        for batch in loader:
            for b, meta in enumerate(batch["meta"]):
                flipped = bool(meta.get("flipped"))
                joint = FLIP17[_LEFT_WRIST] if flipped else _LEFT_WRIST
                for v in range(int(batch["view_mask"][b].sum())):
                    for t in range(batch["images"].shape[2]):
                        found = _dot_centre(batch["images"][b, v, t].numpy())
                        worst = max(worst, float(np.abs(found - batch["pose2d"][b, v, t, joint].numpy()).max()))
                seen[flipped] += 1
    assert seen[True] > 0 and seen[False] > 0, seen
    assert worst < 0.25, f"a label is {worst:.2f} px off its dot"
