"""Cameras: the bundled parameters and H36M's distortion reproduce real H36M 2-D annotations."""
import json

import numpy as np
import pytest

from h36m.h36m_tools import cameras
from h36m.h36m_tools.cameras import CAMERA_IDS, bundled, parse_metadata_xml, project


def _frames(realdata):
    d = np.load(realdata / "mmpose_h36m" / "test_h36m_body3d.npz")
    for i, name in enumerate(d["imgname"]):
        base = name.split("/")[-1]                      # S1_Directions_1.54138969_000001.jpg
        subject, cam = base.split("_")[0], base.split(".")[1].split("_")[0]
        yield subject, cam, d["S"][i, :, :3] * 1000, d["part"][i, :, :2]


def test_projection_of_real_camera_joints_reproduces_d2(realdata):
    for subject, cam, xyz_mm, part in _frames(realdata):
        uv = project(xyz_mm, bundled().intrinsics[cam])
        assert np.abs(uv - part).max() < 1e-3, (subject, cam)


def test_distortion_matters(realdata):
    """Without distortion the error is pixels: the test above would catch a wrong model."""
    subject, cam, xyz_mm, part = next(_frames(realdata))
    assert np.abs(project(xyz_mm, bundled().intrinsics[cam], distortion=False) - part).max() > 0.5


def test_world_route_through_coco_annotations(realdata):
    coco = json.loads((realdata / "mmpose_h36m" / "h36m_coco.json").read_text())
    assert len(coco["annotations"]) == 4
    for image, ann in zip(coco["images"], coco["annotations"]):
        subject, cam = image["file_name"].split("_")[0], image["file_name"].split(".")[1][:8]
        k3 = ann["keypoints_3d"]
        k2 = ann["keypoints"]
        world = np.array(json.loads(k3) if isinstance(k3, str) else k3).reshape(17, 4)[:, :3] * 1000
        uv = np.array(json.loads(k2) if isinstance(k2, str) else k2).reshape(17, 3)[:, :2]
        assert np.abs(bundled().camera(subject, cam).project(world) - uv).max() < 1e-3


def test_world_camera_round_trip():
    e = bundled().extrinsics["S9"]["58860488"]
    pts = np.random.default_rng(0).normal(0, 1000, (10, 3))
    back = cameras.camera_to_world(cameras.world_to_camera(pts, e.R, e.t), e.R, e.t)
    assert np.allclose(back, pts, atol=1e-9)
    assert np.allclose(e.R @ e.R.T, np.eye(3), atol=1e-6)
    assert np.allclose(cameras.world_to_camera(e.center, e.R, e.t), 0, atol=1e-2)


def test_metadata_xml_yields_cameras_json(h36m_facts):
    parsed = parse_metadata_xml(h36m_facts / "metadata.xml")
    ref = bundled()
    for cid in CAMERA_IDS:
        a, b = parsed.intrinsics[cid], ref.intrinsics[cid]
        for name in ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "p1", "p2"):
            assert getattr(a, name) == pytest.approx(getattr(b, name), abs=1e-4), (cid, name)
        assert (a.width, a.height) == (b.width, b.height)
    for subject in ref.extrinsics:
        for cid in CAMERA_IDS:
            assert np.abs(parsed.extrinsics[subject][cid].R - ref.extrinsics[subject][cid].R).max() < 1e-6
            assert np.abs(parsed.extrinsics[subject][cid].t - ref.extrinsics[subject][cid].t).max() < 1e-2


def test_metadata_xml_errors_name_the_file(tmp_path):
    bad = tmp_path / "metadata.xml"
    bad.write_text("<a><mapping/></a>")
    with pytest.raises(ValueError, match="metadata.xml.*<w0>"):
        parse_metadata_xml(bad)


def test_intrinsics_for_video_scales_uniformly():
    k = bundled().intrinsics["54138969"]
    small = k.for_video(250, 250)
    assert small.fx == pytest.approx(k.fx / 4) and small.cy == pytest.approx(k.cy / 4)
    # a nominally 1000x1000 camera that recorded 1000x1002 is not a stretch
    k2 = bundled().intrinsics["55011271"].for_video(1000, 1002)
    assert k2.fy == bundled().intrinsics["55011271"].fy and k2.height == 1002
    pt = np.array([[100.0, -200.0, 5000.0]])
    assert np.allclose(project(pt, small), project(pt, k) / 4)
