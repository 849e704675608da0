"""`h36m import-2d`: COCO-style keypoint results -> a VideoPose3D 2-D file, matched by H36M image names."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from h36m.cli import main
from h36m.h36m_tools.cameras import CAMERA_IDS
from h36m.h36m_tools.names import discover
from h36m.h36m_tools.npz import keypoints_2d
from h36m.pipelines.interchange.coco import COCO_TO_H36M, parse_image_name, read_json
from h36m.pipelines.interchange.npzfile import vp3d_action


def _image_name(subject, raw, cam, frame):
    return f"{subject}_{raw.replace(' ', '_')}.{cam}_{frame + 1:06d}.jpg"


@pytest.fixture(scope="module")
def exported(small_release, tmp_path_factory):
    out = tmp_path_factory.mktemp("vp3d")
    res = CliRunner().invoke(main, ["export", str(small_release), str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    pos, meta, _ = keypoints_2d(out / "data_2d_h36m_gt.npz")
    raw = {(f.subject, vp3d_action(f.name)): f.name for f in discover(small_release)}
    return pos, raw


def test_ground_truth_as_coco_results_imports_to_the_same_2d_as_export(exported, tmp_path):
    pos, raw = exported
    images, results = [], []
    for subject, actions in pos.items():
        for action, cams in actions.items():
            for v, arr in enumerate(cams):
                small = v % 2 == 1                   # cameras 1 and 3 as a detector on 250 px frames saw them
                s = 0.25 if small else 1.0
                for t, xy in enumerate(arr):
                    iid = len(images) + 1
                    images.append({"id": iid, "file_name": f"{subject}/" + _image_name(subject, raw[subject, action],
                                                                                       CAMERA_IDS[v], t),
                                   "width": 250 if small else 1000, "height": 250 if small else 1002})
                    kps = np.concatenate([xy * s, np.full((17, 1), 0.9)], 1)
                    results.append({"image_id": iid, "category_id": 1, "keypoints": kps.ravel().tolist(),
                                    "score": 0.9})
    # a worse duplicate of the first image, and two detections that match nothing
    results.append({"image_id": 1, "category_id": 1, "keypoints": [0.0] * 51, "score": 0.1})
    results.append({"image_id": 10 ** 6, "category_id": 1, "keypoints": [1.0] * 51, "score": 0.5})
    images.append({"id": -1, "file_name": "frame_0001.jpg"})
    results.append({"image_id": -1, "category_id": 1, "keypoints": [1.0] * 51, "score": 0.5})
    for name in ("S1_Directions_1.54138969_999999.jpg", "S1_Dancing.54138969_000001.jpg"):    # 1.6 GB if allocated
        results.append({"image_id": name, "category_id": 1, "keypoints": [1.0] * 51, "score": 0.5})
    (tmp_path / "gt.json").write_text(json.dumps({"images": images, "categories": []}))
    (tmp_path / "res.json").write_text(json.dumps(results))
    res = CliRunner().invoke(main, ["import-2d", str(tmp_path / "res.json"), "--images", str(tmp_path / "gt.json"),
                                    "--out", str(tmp_path / "det.npz")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "unmatched: 1 detections, image id not in the images list: 1000000" in res.output
    assert "unmatched: 1 detections, image name not in the convention" in res.output and "frame_0001.jpg" in res.output
    assert "1 detections, frame beyond the sequence's video: S1_Directions_1.54138969_999999.jpg" in res.output
    assert "1 detections, unknown subject, sequence or camera: S1_Dancing.54138969_000001.jpg" in res.output
    assert "1 duplicates" in res.output and "0 camera frames without a detection" in res.output
    mine, meta, conf = keypoints_2d(tmp_path / "det.npz")
    assert meta["layout_name"] == "h36m" and set(mine) == set(pos)
    for subject, actions in pos.items():
        assert set(mine[subject]) == set(actions)
        for action, cams in actions.items():
            for v in range(4):
                assert mine[subject][action][v].shape == cams[v].shape
                np.testing.assert_allclose(mine[subject][action][v], cams[v], atol=1e-3)
                np.testing.assert_allclose(conf[subject][action][v], 0.9, atol=1e-6)


def test_real_mmpose_h36m_names_and_joints(realdata, tmp_path):
    """The real mmpose H36M samples: names give subject, sequence, camera and frame (number - 1); the H36M-17 order
    is ours (the annotation's keypoints are D2_Positions' joints in our order), and the real detector's output lands
    at its frame with its scores."""
    folder = realdata / "mmpose_h36m"
    body = np.load(folder / "test_h36m_body3d.npz")
    names = [str(n) for n in body["imgname"]]
    assert [parse_image_name(n) for n in names] == [("S1", "Directions 1", "54138969", 0),
                                                    ("S5", "SittingDown", "54138969", 2060),
                                                    ("S7", "Greeting", "55011271", 395),
                                                    ("S8", "WalkDog 1", "55011271", 25)]
    assert parse_image_name("S1_Directions_1.54138969_000000.jpg") is None
    coco = json.loads((folder / "h36m_coco.json").read_text())
    by_name = {im["file_name"]: im["id"] for im in coco["images"]}
    for a in coco["annotations"]:
        name = next(n for n in names if n.endswith([k for k, i in by_name.items() if i == a["image_id"]][0]))
        np.testing.assert_allclose(np.reshape(a["keypoints"], (17, 3))[:, :2], body["part"][names.index(name)][:, :2])
    det = np.load(folder / "test_h36m_2d_detection.npy")
    # the S5 frame as all four cameras saw it (one real detection per camera name)
    results = [{"image_id": f"S5_SittingDown.{c}_002061.jpg", "keypoints": det[1].ravel().tolist(),
                "score": float(det[1, :, 2].mean())} for c in CAMERA_IDS]
    (tmp_path / "r.json").write_text(json.dumps(results))
    res = CliRunner().invoke(main, ["import-2d", str(tmp_path / "r.json"), "--out", str(tmp_path / "d.npz")])
    assert res.exit_code == 0, res.output
    pos, _, conf = keypoints_2d(tmp_path / "d.npz")
    arr = pos["S5"]["SittingDown"][0]
    assert arr.shape == (2061, 17, 2)
    np.testing.assert_allclose(arr[2060], det[1, :, :2], atol=1e-3)
    np.testing.assert_allclose(arr[0], det[1, :, :2], atol=1e-3)           # held before the first detection
    np.testing.assert_allclose(conf["S5"]["SittingDown"][0][2060], det[1, :, 2], atol=1e-6)
    assert not conf["S5"]["SittingDown"][0][:2060].any()                   # no detection: confidence 0
    assert "8240 camera frames without a detection" in res.output


def test_coco17_maps_its_twelve_joints_and_derives_the_rest_only_when_asked(tmp_path):
    rng = np.random.default_rng(0)
    coco = np.concatenate([rng.uniform(100, 900, (17, 2)), rng.uniform(0.5, 1, (17, 1))], 1)
    results = [{"image_id": f"S9_Walking.{c}_000003.jpg", "keypoints": coco.ravel().tolist(), "score": 0.8}
               for c in CAMERA_IDS]
    (tmp_path / "r.json").write_text(json.dumps(results))
    res = CliRunner().invoke(main, ["import-2d", str(tmp_path / "r.json"), "--out", str(tmp_path / "d.npz"),
                                    "--layout", "coco"])
    assert res.exit_code == 1 and "COCO-17 has no hip centre" in res.output and not (tmp_path / "d.npz").exists()
    res = CliRunner().invoke(main, ["import-2d", str(tmp_path / "r.json"), "--out", str(tmp_path / "d.npz"),
                                    "--layout", "coco", "--derive"])
    assert res.exit_code == 0, res.output
    pos, _, conf = keypoints_2d(tmp_path / "d.npz")
    got = pos["S9"]["Walking"][2][2]
    for j, c in enumerate(COCO_TO_H36M):
        if c >= 0:
            np.testing.assert_allclose(got[j], coco[c, :2], atol=1e-3)
    np.testing.assert_allclose(got[0], (coco[11, :2] + coco[12, :2]) / 2, atol=1e-3)      # hip centre
    assert conf["S9"]["Walking"][2][2][0] == pytest.approx(min(coco[11, 2], coco[12, 2]), abs=1e-6)


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not JSON"),
    ("[]", "no detections"),
    ('[{"image_id": "S1_Directions_1.54138969_000001.jpg", "keypoints": [1, 2, 3], "score": 1}]',
     "keypoints must be a list of 51 numbers"),
    ('[{"image_id": "S1_Directions_1.54138969_000001.jpg", "keypoints": [NaN' + ", 1" * 50 + '], "score": 1}]',
     "non-finite"),
    ('[{"image_id": "S1_Directions_1.54138969_000001.jpg", "keypoints": [1' + ", 1.5" * 50 + '], "score": 1}]',
     "score outside [0, 1]"),
    ('[{"image_id": "S1_Directions_1.54138969_000001.jpg", "keypoints": [1' + ", 1" * 50 + '], "score": -2}]',
     "score: -2 is not a finite number"),
    ('[{"image_id": "S1_Directions_1.54138969_000001.jpg", "keypoints": [1e30' + ", 1" * 50 + '], "score": 1}]',
     "keypoints beyond"),
    ('[{"image_id": "S1_Directions_1.54138969_000001.jpg", "keypoints": [1' + ", 1" * 50 + '], "score": 1}]',
     "no sequence with all 4 cameras"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ('{"images": 3, "annotations": []}', "'images' is not a list"),
    ('[{"image_id": [1], "keypoints": []}]', "an image id must be an integer or a string"),
])
def test_bad_results_files_get_one_line(tmp_path, content, problem):
    path = tmp_path / "bad [1].json"
    path.write_text(content)
    res = CliRunner().invoke(main, ["import-2d", str(path), "--out", str(tmp_path / "d.npz")])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and problem in lines[0], res.output
    assert not (tmp_path / "d.npz").exists()


def test_results_file_size_is_bounded_before_reading(tmp_path):
    from h36m.h36m_tools.errors import H36MError

    path = tmp_path / "big.json"
    path.write_text("[" + "0," * 1000 + "0]")
    with pytest.raises(H36MError, match="more than the 100 a results file may have"):
        read_json(path, max_bytes=100)
