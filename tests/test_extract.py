"""`h36m extract`: boxes and crops on real H36M frames, then the whole stage on `h36m synth` releases (real CDF,
MP4, MAT and Parquet files; real subprocesses for the CLI, kills included)."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from fixtures_extract import (H36M, copy_release, error_lines, extracted_small, run_cli,  # noqa: F401
                              run_cli_on_small_disk,
                              tree_bytes)

SIZE, MARGIN = 224, 1.2
FRAMES = ("S1_Directions_1.54138969_000001.jpg", "S5_SittingDown.54138969_002061.jpg",
          "S7_Greeting.55011271_000396.jpg", "S8_WalkDog_1.55011271_000026.jpg")


def _decode(jpeg: bytes) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


def _bilinear(img: np.ndarray, x: float, y: float) -> np.ndarray:
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    ax, ay = x - x0, y - y0
    p = img[y0:y0 + 2, x0:x0 + 2].astype(float)
    return (p[0, 0] * (1 - ax) * (1 - ay) + p[0, 1] * ax * (1 - ay) + p[1, 0] * (1 - ax) * ay + p[1, 1] * ax * ay)


# ----------------------------------------------------------------------------------------- real H36M frames

@pytest.fixture(scope="module")
def mmpose(realdata):
    return np.load(realdata / "mmpose_h36m" / "test_h36m_body3d.npz")


def test_joints_box_reproduces_the_published_h36m_boxes(mmpose):
    from h36m.pipelines.extract.crop import joints_box

    box = joints_box(mmpose["part"][:, :, :2], MARGIN)
    np.testing.assert_allclose(0.5 * (box[:, :2] + box[:, 2:]), mmpose["center"], atol=1e-4)
    np.testing.assert_allclose(box[:, 2] - box[:, 0], 200 * mmpose["scale"], atol=1e-3)
    np.testing.assert_allclose(box[:, 3] - box[:, 1], 200 * mmpose["scale"], atol=1e-3)


def test_real_crops_hold_all_joints_with_the_margin_and_match_the_frame(mmpose, realdata):
    import cv2

    from h36m.pipelines.extract.crop import crop_bgr, joints_box, to_crop, to_full

    for i, name in enumerate(FRAMES):
        img = cv2.imread(str(realdata / "mmpose_h36m" / name))
        joints = mmpose["part"][i, :, :2]
        box = joints_box(joints, MARGIN)
        crop = crop_bgr(img, box, SIZE)
        uv = to_crop(joints, box, SIZE)
        # the margin: the joints' larger extent fills 1/margin of the crop, centred
        edge = SIZE * (MARGIN - 1) / (2 * MARGIN)
        assert uv.min() >= edge - 1e-6 and uv.max() <= SIZE - edge + 1e-6, name
        assert np.isclose(max(np.ptp(uv[:, 0]), np.ptp(uv[:, 1])), SIZE / MARGIN)
        np.testing.assert_allclose(to_full(uv, box, SIZE), joints, atol=1e-9)
        # the image moved with the joints: crop pixel (u, v) is the frame at to_full(u, v)
        for u, v in np.round(uv).astype(int):
            x, y = to_full(np.array([[u, v]], float), box, SIZE)[0]
            np.testing.assert_allclose(crop[v, u], _bilinear(img, x, y), atol=1.5)


def test_yuv_crop_equals_bgr_crop_and_is_black_outside(realdata, mmpose):
    import cv2

    from h36m.pipelines.extract.crop import crop_bgr, crop_yuv420, joints_box

    img = cv2.imread(str(realdata / "mmpose_h36m" / FRAMES[0]))
    h, w = img.shape[:2]
    i420 = cv2.cvtColor(img, cv2.COLOR_BGR2YUV_I420).reshape(-1)
    y = i420[: w * h].reshape(h, w)
    u = i420[w * h: w * h + w * h // 4].reshape(h // 2, w // 2)
    v = i420[w * h + w * h // 4:].reshape(h // 2, w // 2)
    box = joints_box(mmpose["part"][0, :, :2], MARGIN)
    ref = crop_bgr(img, box, SIZE).astype(float)
    assert np.abs(crop_yuv420(y, u, v, box, SIZE) - ref).mean() < 3.0
    outside = np.array([-600.0, -600.0, 200.0, 200.0])        # 3/4 of this box lies outside the frame
    crop = crop_yuv420(y, u, v, outside, SIZE)
    assert crop[: SIZE // 2 - 2, : SIZE // 2 - 2].max() <= 1 and crop[-20:, -20:].mean() > 20


def test_jpeg_from_planes_equals_the_bgr_route(realdata, mmpose):
    """The crop JPEG made from the warped 4:2:0 planes decodes to what encoding the BGR crop gives (same quality),
    at even and odd sizes, and is black outside the frame."""
    import cv2

    from h36m.pipelines.extract.crop import crop_bgr, crop_jpeg_yuv420, crop_yuv420, encode_jpeg, joints_box

    img = cv2.imread(str(realdata / "mmpose_h36m" / FRAMES[1]))
    h, w = img.shape[:2]
    h, w = h // 2 * 2, w // 2 * 2
    i420 = cv2.cvtColor(img[:h, :w], cv2.COLOR_BGR2YUV_I420).reshape(-1)
    y = i420[: w * h].reshape(h, w)
    u = i420[w * h: w * h + w * h // 4].reshape(h // 2, w // 2)
    v = i420[w * h + w * h // 4:].reshape(h // 2, w // 2)
    box = joints_box(mmpose["part"][1, :, :2], MARGIN)

    def decode(b):
        return cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR).astype(float)

    for size in (SIZE, 63):
        ours = decode(crop_jpeg_yuv420(y, u, v, box, size, 90))
        assert ours.shape == (size, size, 3)
        assert np.abs(ours - decode(encode_jpeg(crop_yuv420(y, u, v, box, size), 90))).mean() < 1.5
        assert np.abs(ours - crop_bgr(img, box, size)).mean() < 4.0
    assert crop_jpeg_yuv420(y, u, v, box, SIZE, 90) == crop_jpeg_yuv420(y, u, v, box, SIZE, 90)
    assert len(crop_jpeg_yuv420(y, u, v, box, SIZE, 50)) < len(crop_jpeg_yuv420(y, u, v, box, SIZE, 95))
    dark = decode(crop_jpeg_yuv420(y, u, v, np.array([-600.0, -600.0, 200.0, 200.0]), SIZE, 90))
    assert dark[: SIZE // 2 - 8, : SIZE // 2 - 8].max() <= 3 and dark[-20:, -20:].mean() > 20


def test_decode_windows_hold_every_padded_box_and_follow_the_person():
    from h36m.pipelines.extract.crop import decode_windows

    rng = np.random.default_rng(1)
    centre = np.cumsum(rng.normal(0, 6, (500, 2)), axis=0) + [500, 500]      # a person wandering about
    side = rng.uniform(150, 300, (500, 1))
    wander = np.concatenate([centre - side / 2, centre + side / 2], axis=1)
    t = np.arange(200)[:, None]
    leaving = np.c_[-150 + t, 850 + t, 150 + t, 1150 + t]                    # boxes reaching off the frame
    for boxes in (wander, leaving):
        w = decode_windows(boxes, 1000, 1002, chunk=25, pad=4)
        assert w.w % 2 == 0 and w.h % 2 == 0 and not (w.x % 2).any() and not (w.y % 2).any()
        assert (w.x >= 0).all() and (w.y >= 0).all() and (w.x + w.w <= 1000).all() and (w.y + w.h <= 1002).all()
        need = np.clip(np.c_[np.floor(boxes[:, :2]) - 4, np.ceil(boxes[:, 2:]) + 4], 0, [1000, 1002, 1000, 1002])
        assert (w.x <= need[:, 0]).all() and (w.y <= need[:, 1]).all()
        assert (w.x + w.w >= need[:, 2]).all() and (w.y + w.h >= need[:, 3]).all()
    w = decode_windows(wander, 1000, 1002, chunk=25)
    assert len(np.unique(w.x[:25])) == 1 and len(np.unique(w.x)) > 5           # constant per chunk, follows
    whole = decode_windows(wander, 1000, 1002, chunk=len(wander))             # one window for the whole video
    assert w.w * w.h < 0.5 * whole.w * whole.h                                # far fewer bytes per frame


def test_decoding_a_moving_window_gives_the_frames_pixels(small_release):
    from h36m.h36m_tools.video import probe
    from h36m.pipelines.extract.crop import decode_windows
    from h36m.pipelines.extract.decode import iter_yuv420

    video = next((small_release / "S1" / "Videos").glob("*.54138969.mp4"))
    info = probe(video)
    full = [y.copy() for y, _, _ in iter_yuv420(video, info)]
    t = np.arange(len(full) - 3)[:, None]                         # no boxes for the last 3 frames
    boxes = np.c_[10 + t * 0.5, 20 + t * 0.3, 90 + t * 0.5, 100 + t * 0.3]
    w = decode_windows(boxes, info.width, info.height, chunk=10)
    assert len(np.unique(w.x)) > 1
    got = [(y.copy(), u.shape) for y, u, _ in iter_yuv420(video, info, window=w)]
    assert len(got) == len(full)
    for i, (y, ushape) in enumerate(got):
        x0, y0 = (w.x[i], w.y[i]) if i < len(w.x) else (w.x[-1], w.y[-1])
        assert np.array_equal(y, full[i][y0:y0 + w.h, x0:x0 + w.w]) and ushape == (w.h // 2, w.w // 2)


def test_mask_extent_is_the_pixel_extent_in_video_pixels():
    from h36m.pipelines.extract.crop import mask_extent, square_box

    m = np.zeros((100, 50), np.uint8)
    m[10:21, 5:8] = 1
    np.testing.assert_allclose(mask_extent(m), [4.5, 9.5, 7.5, 20.5])
    np.testing.assert_allclose(mask_extent(m, 100, 200), [9.5, 19.5, 15.5, 41.5])  # mask at half the video size
    assert mask_extent(np.zeros((4, 4))) is None
    np.testing.assert_allclose(square_box(np.array([0, 0, 10, 20.0]), 1.5), [-10, -5, 20, 25])


# ----------------------------------------------------------------------------------------- a synthetic release

def test_manifest_records_done_and_skipped_sequences(extracted_small, small_release):
    from h36m.h36m_tools.cameras import bundled, load_camera_set
    from h36m.pipelines.extract.dataset import list_sequences

    m = json.loads((extracted_small / "manifest.json").read_text())
    assert m["format"] == 1 and m["source"] == str(small_release.resolve())
    assert m["options"] == {"bbox": "joints", "cameras": "bundled", "margin": 1.2, "quality": 90, "size": 224}
    assert list(m["sequences"]) == ["S1/Directions_1", "S5/Discussion_3", "S9/Eating_1"]
    assert m["failed"] == {}
    # the real release's broken camera: an expected skip, with the file named
    assert list(m["skipped"]) == ["S11/Directions"]
    assert f"{small_release.resolve()}/S11/Videos/Directions.54138969.mp4: unreadable video" in m["skipped"][
        "S11/Directions"]
    assert [p.name for p in list_sequences(extracted_small)] == ["Directions_1.parquet", "Discussion_3.parquet",
                                                                 "Eating_1.parquet"]
    cs = load_camera_set(extracted_small / "cameras.json")
    assert cs.intrinsics["54138969"].width == 250
    np.testing.assert_allclose(cs.intrinsics["54138969"].fx, bundled().intrinsics["54138969"].fx / 4)
    np.testing.assert_allclose(cs.extrinsics["S9"]["60457274"].R, bundled().extrinsics["S9"]["60457274"].R)


def test_frames_are_synchronised_and_extra_video_frames_trimmed(extracted_small, small_release):
    from h36m.h36m_tools.video import iter_frames
    from h36m.pipelines.extract.dataset import read_meta

    m = json.loads((extracted_small / "manifest.json").read_text())
    for key, entry in m["sequences"].items():
        meta = read_meta(extracted_small / entry["file"])
        assert meta.frames == entry["frames"] == 40 and meta.trimmed == entry["trimmed"]
        assert meta.cameras == ["54138969", "55011271", "58860488", "60457274"]
        for cam in meta.cameras:
            video = small_release / meta.subject / "Videos" / f"{meta.sequence}.{cam}.mp4"
            assert sum(1 for _ in iter_frames(video)) - meta.frames == meta.trimmed[cam]
        assert meta.trimmed["poses"] == 0
        assert meta.trimmed["55011271"] > 0 and meta.trimmed["58860488"] > 0   # the real cameras' extra frames


def test_3d_joints_are_the_cdfs(extracted_small, small_release):
    from h36m.h36m_tools.cdf import read_pose
    from h36m.h36m_tools.skeleton import to17
    from h36m.pipelines.extract.dataset import read_sequence

    for key in ("S1/Directions_1", "S5/Discussion_3"):
        meta, a = read_sequence(extracted_small / f"{key}.parquet", with_jpeg=False)
        feats = small_release / meta.subject / "MyPoseFeatures"
        world = to17(read_pose(feats / "D3_Positions" / f"{meta.sequence}.cdf", 3)).astype(np.float32)
        np.testing.assert_array_equal(a.pose3d, world[: meta.frames])
        for v, cam in enumerate(meta.cameras):
            mono = to17(read_pose(feats / "D3_Positions_mono" / f"{meta.sequence}.{cam}.cdf", 3))
            np.testing.assert_array_equal(a.pose3d_cam[:, v], mono.astype(np.float32)[: meta.frames])


def test_2d_joints_boxes_and_crop_joints(extracted_small, small_release):
    from h36m.h36m_tools.cameras import Camera
    from h36m.h36m_tools.cdf import read_pose
    from h36m.h36m_tools.skeleton import to17
    from h36m.pipelines.extract.dataset import read_sequence

    for key in ("S1/Directions_1", "S5/Discussion_3"):      # S5 has no D2_Positions: projected
        meta, a = read_sequence(extracted_small / f"{key}.parquet", with_jpeg=False)
        world = to17(read_pose(small_release / meta.subject / "MyPoseFeatures" / "D3_Positions" /
                               f"{meta.sequence}.cdf", 3))[: meta.frames]
        for v, cam in enumerate(meta.cameras):
            camera = Camera.from_dict(meta.camera_params[v])
            assert (camera.intrinsics.width, camera.intrinsics.height) == (250, 250)
            np.testing.assert_allclose(a.pose2d[:, v], camera.project(world), atol=2e-3)
            d2 = small_release / meta.subject / "MyPoseFeatures" / "D2_Positions" / f"{meta.sequence}.{cam}.cdf"
            assert d2.is_file() == (meta.subject == "S1")
            if d2.is_file():
                np.testing.assert_array_equal(a.pose2d[:, v], to17(read_pose(d2, 2)).astype(np.float32)[:40])
            lo, hi = a.pose2d[:, v].min(axis=1), a.pose2d[:, v].max(axis=1)
            side = MARGIN * np.max(hi - lo, axis=1)
            np.testing.assert_allclose(a.box[:, v, 2] - a.box[:, v, 0], side, rtol=1e-5)
            np.testing.assert_allclose(a.box[:, v, 3] - a.box[:, v, 1], side, rtol=1e-5)
            np.testing.assert_allclose(a.box[:, v, :2] + a.box[:, v, 2:], lo + hi, atol=1e-3)
            full = (a.pose2d_crop[:, v] * (side / SIZE)[:, None, None] + a.box[:, v, None, :2])
            np.testing.assert_allclose(full, a.pose2d[:, v], atol=2e-3)


def test_each_crop_is_its_own_frame_not_the_next(extracted_small, small_release):
    """Warp the decoded video frame t with the stored box: it matches the stored crop t, and t-1/t+1 do not."""
    from h36m.h36m_tools.video import iter_frames
    from h36m.pipelines.extract.crop import crop_bgr
    from h36m.pipelines.extract.dataset import read_sequence

    for key in ("S1/Directions_1", "S9/Eating_1"):
        meta, a = read_sequence(extracted_small / f"{key}.parquet")
        for v, cam in enumerate(meta.cameras):
            frames = list(iter_frames(small_release / meta.subject / "Videos" / f"{meta.sequence}.{cam}.mp4"))
            for t in range(1, meta.frames - 1, 3):
                crop = _decode(a.jpeg[t][v]).astype(float)
                err = [np.abs(crop - crop_bgr(frames[t + d], a.box[t, v], meta.crop_size)).mean() for d in (-1, 0, 1)]
                assert err[1] < 3.0 and err[1] < min(err[0], err[2]), (key, cam, t, err)


def test_limb_colours_lie_at_the_stored_crop_joints(extracted_small):
    """The synthetic body's limbs are blue (left and right alike): halfway along each limb, at the stored crop joints,
    the crop has the limb colour (unless hidden behind the body); less so at frame t+1's joints mapped into crop t,
    less again at t+2's."""
    from h36m.pipelines.extract.crop import to_crop
    from h36m.pipelines.extract.dataset import read_sequence

    bones = ((4, 5), (5, 6), (11, 12), (12, 13), (1, 2), (2, 3), (14, 15), (15, 16))

    def score(crop, joints):
        hits = []
        for a, b in bones:
            u, v = np.round(0.5 * (joints[a] + joints[b])).astype(int)
            if 0 <= u < crop.shape[1] and 0 <= v < crop.shape[0]:
                px = crop[v, u].astype(int)                      # BGR
                hits.append(px[0] - px[2] > 40)
        return np.mean(hits)

    scores = {"t": [], "t+1": [], "t+2": []}
    for key in ("S1/Directions_1", "S9/Eating_1"):
        meta, a = read_sequence(extracted_small / f"{key}.parquet")
        for t in range(meta.frames - 2):
            for v in range(len(meta.cameras)):
                crop = _decode(a.jpeg[t][v])
                scores["t"].append(score(crop, a.pose2d_crop[t, v]))
                for d in (1, 2):
                    scores[f"t+{d}"].append(score(crop, to_crop(a.pose2d[t + d, v], a.box[t, v], SIZE)))
    m = {k: float(np.mean(v)) for k, v in scores.items()}
    assert m["t"] > 0.65, m
    assert m["t"] > m["t+1"] + 0.015 and m["t+1"] > m["t+2"] + 0.015, m


def test_min_views_3_keeps_s11_directions_with_3_cameras(small_release, tmp_path):
    from h36m.pipelines.extract.extract import run_extract
    from h36m.pipelines.extract.plan import ExtractConfig
    from h36m.pipelines.extract.dataset import read_sequence

    (r,) = run_extract(ExtractConfig(raw=small_release, out=tmp_path, subjects=("S11",), min_views=3))
    assert r.status == "done" and r.cameras == ["55011271", "58860488", "60457274"]
    assert any("camera 54138969 left out" in n and "Directions.54138969.mp4" in n for n in r.notes)
    meta, a = read_sequence(tmp_path / "S11" / "Directions.parquet")
    assert meta.cameras == r.cameras and a.box.shape == (40, 3, 4) and len(a.jpeg[0]) == 3
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert list(m["sequences"]) == ["S11/Directions"] and m["skipped"] == {}


def test_bbox_mask_uses_masks_and_falls_back_to_joints(small_release, tmp_path):
    from h36m.h36m_tools.masks import iter_masks
    from h36m.pipelines.extract.crop import mask_extent
    from h36m.pipelines.extract.extract import run_extract
    from h36m.pipelines.extract.plan import ExtractConfig
    from h36m.pipelines.extract.dataset import read_sequence

    results = run_extract(ExtractConfig(raw=small_release, out=tmp_path, subjects=("S1", "S5"), bbox="mask"))
    s1, s5 = results
    assert (s1.status, s1.bbox, s1.notes) == ("done", "mask", [])
    assert (s5.status, s5.bbox, s5.notes) == ("done", "joints", ["no masks for S5: boxes from joints"])
    meta, a = read_sequence(tmp_path / "S1" / "Directions_1.parquet", with_jpeg=False)
    assert meta.bbox == "mask"
    masks = small_release / "S1" / "MySegmentsMat" / "ground_truth_bb"
    for v, cam in enumerate(meta.cameras):
        for t, m in enumerate(iter_masks(masks / f"Directions 1.{cam}.mat")):
            if t == meta.frames:
                break
            e = mask_extent(m)
            np.testing.assert_allclose(a.box[t, v, 2] - a.box[t, v, 0], MARGIN * max(e[2] - e[0], e[3] - e[1]),
                                       rtol=1e-5)
            np.testing.assert_allclose(a.box[t, v, :2] + a.box[t, v, 2:], e[:2] + e[2:], atol=1e-3)
    assert a.pose2d_crop.min() > 0 and a.pose2d_crop.max() < SIZE      # the silhouette's box holds the joints
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["options"]["bbox"] == "mask" and m["sequences"]["S5/Discussion_3"]["bbox"] == "joints"


def test_cameras_from_the_official_metadata_xml_agree_with_d2(small_release, tmp_path, realdata):
    from h36m.pipelines.extract.extract import run_extract
    from h36m.pipelines.extract.plan import ExtractConfig

    xml = realdata.parent / "h36m" / "metadata.xml"
    (r,) = run_extract(ExtractConfig(raw=small_release, out=tmp_path, subjects=("S1",), cameras=xml))
    assert r.status == "done", r.reason


# ----------------------------------------------------------------------------------------- resume and parts

def test_killed_run_resumes_to_identical_output(small_release, extracted_small, tmp_path):
    """Kill a real `h36m extract` (SIGKILL, no cleanup) once its first sequence is recorded as done, start it again:
    it redoes only unfinished sequences and ends with the bytes of an uninterrupted run."""
    from h36m.pipelines.extract.dataset import read_sequence

    out = tmp_path / "out"

    def done():   # a sequence is finished once its record says so (the record is written after the data)
        return sorted(p for p in out.glob("S*/*.json") if json.loads(p.read_text())["status"] == "done")

    proc = subprocess.Popen([str(H36M), "extract", small_release, out, "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not done() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = [p.with_suffix(".parquet") for p in done()]
    assert 1 <= len(finished) < 3, "the run was not killed mid-way"     # 3 sequences to extract, S11 skipped
    stats = [p.stat() for p in finished]
    # nothing half-written under a final name: every visible file is whole
    for p in out.glob("S*/*.parquet"):
        assert read_sequence(p, with_jpeg=False)[0].frames == 40
    for p in out.rglob("*.json"):
        json.loads(p.read_text())
    res = run_cli("extract", small_release, out, "--workers", "1")
    assert res.returncode == 0, res.stderr
    k = len(finished)
    assert f"{3 - k} extracted" in res.stdout and f"already done before: {k}" in res.stdout, res.stdout
    for p, st in zip(finished, stats):                                    # the finished ones were not redone
        assert p.stat().st_mtime_ns == st.st_mtime_ns and p.stat().st_ino == st.st_ino
    assert tree_bytes(out) == tree_bytes(extracted_small)
    again = run_cli("extract", small_release, out)                                  # all done: nothing to do
    assert again.returncode == 0 and "0 extracted" in again.stdout and tree_bytes(out) == tree_bytes(extracted_small)


def test_parts_share_one_folder(small_release, extracted_small, tmp_path):
    out = tmp_path / "out"
    procs = [subprocess.Popen([str(H36M), "extract", small_release, out, "--workers", "1", "--part", f"{i}/2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "2 sequences to do" in outs[0][0] and "2 sequences to do" in outs[1][0]
    assert tree_bytes(out) == tree_bytes(extracted_small)


# ----------------------------------------------------------------------------------------- bad input

def _one_line_naming(res: subprocess.CompletedProcess, path) -> str:
    lines = error_lines(res.stderr)
    assert len(lines) == 1, res.stderr
    assert str(path) in lines[0] and "Traceback" not in res.stdout + res.stderr
    return lines[0]


def test_missing_folder_and_not_h36m(tmp_path):
    missing = tmp_path / "no such folder"
    res = run_cli("extract", missing, tmp_path / "out")
    assert res.returncode == 1 and "folder not found" in _one_line_naming(res, missing)
    junk = tmp_path / "junk"
    (junk / "photos").mkdir(parents=True)
    (junk / "notes.txt").write_text("hello")
    res = run_cli("extract", junk, tmp_path / "out")
    assert res.returncode == 1 and "not an H36M release" in _one_line_naming(res, junk)
    assert not (tmp_path / "out").exists()


def test_bad_cdf_shape_fails_that_sequence_only(small_release, tmp_path):
    from cdflib.cdfwrite import CDF

    raw = copy_release(small_release, tmp_path / "raw", {"S1", "S9"})
    bad = raw / "S1" / "MyPoseFeatures" / "D3_Positions" / "Directions 1.cdf"
    bad.unlink()
    cdf = CDF(str(bad), cdf_spec={"Majority": "row_major"}, delete=True)
    cdf.write_var({"Variable": "Pose", "Data_Type": CDF.CDF_FLOAT, "Num_Elements": 1, "Rec_Vary": True,
                   "Dim_Sizes": [40, 90]}, var_attrs={}, var_data=np.zeros((1, 40, 90), np.float32))
    cdf.close()
    res = run_cli("extract", raw, tmp_path / "out")
    line = _one_line_naming(res, bad)
    assert res.returncode == 1 and "S1/Directions_1" in line and "shape" in line and "(1, N, 96)" in line
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert list(m["sequences"]) == ["S9/Eating_1"] and list(m["failed"]) == ["S1/Directions_1"]
    res = run_cli("extract", raw, tmp_path / "out", "--keep-going")              # S1 is retried, fails again
    assert res.returncode == 0 and "shape" in _one_line_naming(res, bad)


def test_truncated_and_short_videos_are_skipped_with_their_file(small_release, tmp_path):
    from h36m.h36m_tools.video import ffmpeg_binary

    raw = copy_release(small_release, tmp_path / "raw", {"S9", "S11"})
    # a download cut short, with its index at the front: it opens, and decodes a few frames only
    video = raw / "S9" / "Videos" / "Eating 1.60457274.mp4"
    fast = tmp_path / "faststart.mp4"
    subprocess.run([ffmpeg_binary(), "-loglevel", "error", "-i", video, "-c", "copy", "-movflags", "+faststart",
                    fast], check=True)
    video.write_bytes(fast.read_bytes()[: fast.stat().st_size // 2])
    res = run_cli("extract", raw, tmp_path / "out")
    assert res.returncode == 0 and error_lines(res.stderr) == []
    skipped = [ln for ln in res.stdout.splitlines() if ln.startswith("skipped ")]
    assert len(skipped) == 2, res.stdout
    assert skipped[0].startswith(f"skipped S9/Eating_1: {video}: truncated video (")    # plan order: S9, S11
    assert "the poses have 40); 3 of 4 cameras usable, --min-views is 4" in skipped[0]
    assert skipped[1].startswith("skipped S11/Directions: ") and "Directions.54138969.mp4: unreadable" in skipped[1]
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["sequences"] == {} and sorted(m["skipped"]) == ["S11/Directions", "S9/Eating_1"]


def test_full_disk_fails_with_the_file_named(small_release, tmp_path):
    """S1's folder is a 64 KiB tmpfs: its data file does not fit (the kernel's real 'No space left on device'),
    its small record does; S9 is on the big disk."""
    out = tmp_path / "out"
    res = run_cli_on_small_disk(out / "S1", 64, "extract", small_release, out, "--subjects", "S1,S9")
    line = _one_line_naming(res, out / "S1" / "Directions_1.parquet")
    assert res.returncode == 1 and "No space left on device" in line
    m = json.loads((out / "manifest.json").read_text())
    assert list(m["sequences"]) == ["S9/Eating_1"] and list(m["failed"]) == ["S1/Directions_1"]
    assert not list((out / "S9").glob(".*.tmp"))                            # no leftover tmp


def test_projection_mismatch_fails_and_other_options_are_refused(small_release, tmp_path):
    from h36m.h36m_tools.cameras import bundled, camera_set_to_json

    cams = camera_set_to_json(bundled())
    cams["intrinsics"]["58860488"]["cx"] += 2.0                    # 0.5 px in the 250 px videos
    bad = tmp_path / "my cameras.json"
    bad.write_text(json.dumps(cams))
    res = run_cli("extract", small_release, tmp_path / "out", "--subjects", "S1", "--cameras", bad)
    d2 = small_release / "S1" / "MyPoseFeatures" / "D2_Positions" / "Directions 1.58860488.cdf"
    line = _one_line_naming(res, d2)
    assert res.returncode == 1 and "differ from the projection" in line and "0.5 px" in line
    res = run_cli("extract", small_release, tmp_path / "out", "--subjects", "S1")   # bundled != my cameras.json
    line = _one_line_naming(res, tmp_path / "out" / "manifest.json")
    assert res.returncode == 1 and "other options" in line and "use another OUT folder" in line
    res = run_cli("extract", small_release, tmp_path / "out2", "--cameras", tmp_path / "nope.xml")
    assert res.returncode == 1 and "camera file not found" in _one_line_naming(res, tmp_path / "nope.xml")


def test_cli_prints_plan_and_summary(small_release, tmp_path):
    res = run_cli("extract", small_release, tmp_path / "out", "--subjects", "S1,S11", "--workers", "2")
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert text.index("plan") < text.index("summary") and "2 sequences to do (80 pose frames)" in text
    assert "S1/Directions_1" in text and "55011271:" in text and "skipped S11/Directions: " in text
    assert "1 extracted (40 frames), 1 skipped, 0 failed" in text


# ----- the layouts users have: official tree, h36m-fetch's tree, the archives; --every ---------------------------

def _relayout(small_release, tmp_path, layout, subjects=("S1",)):
    from h36m.pipelines.synth.release import write_layout

    return write_layout(copy_release(small_release, tmp_path / f"rel-{layout}", subjects), tmp_path / layout, layout)


def test_three_layouts_extract_to_the_same_dataset(small_release, tmp_path):
    from h36m.pipelines.extract.dataset import read_sequence
    from h36m.pipelines.extract.extract import run_extract
    from h36m.pipelines.extract.plan import ExtractConfig, make_plan

    outs, plans = {}, {}
    for layout in ("unpacked", "h36m-fetch", "archives"):
        raw = _relayout(small_release, tmp_path, layout)
        plans[layout] = make_plan(ExtractConfig(raw=raw, out=tmp_path / "x")).by_subject()
        outs[layout] = tmp_path / f"out-{layout}"
        res = run_extract(ExtractConfig(raw=raw, out=outs[layout], workers=1))
        assert [r.status for r in res] == ["done"], res
    assert [(r["layout"], r["pose3d"], r["sequences"], r["videos"], r["pose_frames"]) for r in
            (plans[k][0] for k in ("unpacked", "h36m-fetch", "archives"))] == [
        ("unpacked", "world", 1, 4, 40), ("h36m-fetch", "camera, universal skeleton", 1, 4, 40),
        ("archives", "world", 1, 4, 40)]
    # archives read in place: the same bytes as the unpacked tree, but for the manifest's source folder
    a, b = tree_bytes(outs["unpacked"]), tree_bytes(outs["archives"])
    assert sorted(a) == sorted(b) and [k for k in a if a[k] != b[k]] == ["manifest.json"]
    ma, mb = (json.loads(x["manifest.json"]) for x in (a, b))
    assert ma.pop("source").endswith("unpacked") and mb.pop("source").endswith("archives") and ma == mb
    # h36m-fetch: world joints through the extrinsics from camera coordinates (float rounding), the rest identical
    seq = "S1/Directions_1.parquet"
    (m1, x1), (m2, x2) = read_sequence(outs["unpacked"] / seq), read_sequence(outs["h36m-fetch"] / seq)
    assert (m1.pose3d_source, m2.pose3d_source) == ("world", "camera, universal skeleton")
    assert {k: v for k, v in m1.__dict__.items() if m2.__dict__[k] != v} == {"pose3d_source": "world"}
    for name in ("frame", "pose3d_cam", "pose2d", "pose2d_crop", "box", "jpeg"):
        assert np.array_equal(np.asarray(getattr(x1, name), dtype=object), np.asarray(getattr(x2, name), dtype=object))
    assert 0 < np.abs(x1.pose3d - x2.pose3d).max() < 1e-3
    entry = json.loads(tree_bytes(outs["h36m-fetch"])["manifest.json"])["sequences"]["S1/Directions_1"]
    assert entry["pose3d_source"] == "camera, universal skeleton" and "universal skeleton" in entry["notes"][0]


def test_every_5_keeps_a_fifth_of_the_frames_with_the_same_crops(small_release, extracted_small, tmp_path):
    from h36m.pipelines.extract.dataset import read_sequence
    from h36m.pipelines.shards.verify import verify
    from h36m.pipelines.shards.writer import ShardConfig, write_shards

    out = tmp_path / "every5"
    res = run_cli("extract", small_release, out, "--subjects", "S1", "--every", "5", "--workers", "1")
    assert res.returncode == 0, res.stderr
    assert "every 5-th frame" in res.stdout and json.loads((out / "manifest.json").read_text())["options"]["every"] == 5
    seq = "S1/Directions_1.parquet"
    (mf, full), (m5, five) = read_sequence(extracted_small / seq), read_sequence(out / seq)
    assert list(five.frame) == list(range(0, mf.frames, 5)) and (m5.frames, m5.every, m5.fps) == (8, 5, 10.0)
    for name in ("pose3d", "pose3d_cam", "pose2d", "pose2d_crop", "box"):
        assert np.array_equal(getattr(five, name), getattr(full, name)[five.frame]), name
    assert five.jpeg == [full.jpeg[i] for i in five.frame]
    # shards: clips of consecutive kept frames at 10 fps, which verify accepts (and a wrong stride it does not)
    write_shards(ShardConfig(extracted=out, out=tmp_path / "shards", frames=4, split="train", subjects=("S1",)))
    shards = sorted((tmp_path / "shards").glob("train-*.tar"))
    report = verify(shards)
    assert report.samples == 2 and report.ok, report.problems
    from h36m.pipelines.shards.sample import decode_sample, iter_tar_samples

    clip = decode_sample(next(iter_tar_samples(shards[0])))
    assert clip.meta["fps"] == 10.0 and clip.meta["every"] == 5 and np.all(np.diff(clip.meta["frames"]) == 5)
    from h36m.pipelines.shards.verify import check_clip_values

    clip.meta["every"] = 1
    assert "frames are not consecutive source frames" in check_clip_values(clip)


def test_damaged_archives_fail_their_subject_only_with_one_line(small_release, tmp_path):
    import tarfile

    raw = _relayout(small_release, tmp_path, "archives", subjects=("S1", "S9"))
    videos = raw / "Videos_S9.tgz"
    videos.write_bytes(videos.read_bytes()[: videos.stat().st_size // 2])          # a download cut short
    poses = raw / "Poses_D3_Positions_S1.tgz"                                        # a member that is no CDF
    with tarfile.open(poses) as tar:
        member = tar.getmembers()[0]
    with tarfile.open(poses, "w:gz") as tar:
        member.size = 5000
        tar.addfile(member, io.BytesIO(b"x" * 5000))
    res = run_cli("extract", raw, tmp_path / "out", "--workers", "1")
    assert res.returncode == 1
    errors = error_lines(res.stderr)
    assert len(errors) == 2, errors
    s1 = next(e for e in errors if e.startswith("error: S1/"))
    s9 = next(e for e in errors if e.startswith("error: S9/"))
    assert f"{poses}:S1/MyPoseFeatures/D3_Positions/" in s1 and "not a readable CDF file" in s1
    assert f"{videos}: truncated archive (stops in or after member 'S9/Videos/" in s9
    assert "Traceback" not in res.stderr
