"""H36M file formats: skeleton, names, CDF, MAT v7.3 masks, video, each with clear errors."""
import subprocess
import sys

import h5py
import numpy as np
import pytest

from h36m.h36m_tools import cdf, masks, names, skeleton, video
from h36m.h36m_tools.errors import H36MError


def test_skeleton_tables_are_consistent():
    # the 17-joint parents are the 32-joint tree restricted to the subset (through removed joints)
    index = {j: i for i, j in enumerate(skeleton.JOINTS17)}
    for i, j in enumerate(skeleton.JOINTS17):
        p = skeleton.PARENTS32[j]
        while p >= 0 and p not in index:
            p = skeleton.PARENTS32[p]
        expected = -1 if p < 0 else index[p]
        # H36M's shoulders hang off joints 16/24, which coincide with the thorax (13)
        if j in (17, 25):
            expected = index[13]
        assert skeleton.PARENTS17[i] == expected, (i, j)
    assert sorted(np.r_[skeleton.LEFT17, skeleton.RIGHT17]) == [1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16]
    assert (skeleton.FLIP17[skeleton.FLIP17] == np.arange(17)).all()
    pose = np.random.default_rng(0).uniform(0, 100, (17, 2))
    assert np.allclose(skeleton.flip_joints(skeleton.flip_joints(pose, 64), 64), pose)
    assert np.allclose(skeleton.flip_joints(pose, 64)[..., skeleton.FLIP17, 0], 63 - pose[..., 0])   # pixel i <-> 63 - i


def test_canonical_actions_and_names():
    assert names.canonical_action("TakingPhoto 1") == "Photo"
    assert names.canonical_action("WalkingDog") == "WalkDog"
    assert names.canonical_action("Eating 2") == "Eating"
    assert names.canonical_action("WalkTogether_1") == "WalkTogether"
    with pytest.raises(ValueError):
        names.canonical_action("_ALL 1")
    table = names.sequence_table()
    for subject in names.SUBJECTS:
        actions = {names.canonical_action(n) for n in table[subject] if not n.startswith("_ALL")}
        assert actions == set(names.ACTIONS), subject
    assert "TakingPhoto" in table["S1"] and "Photo" in table["S5"]
    assert names.parse_subjects("1, S5") == ("S1", "S5")


def test_cdf_round_trip_and_shape_errors(tmp_path):
    pose = np.random.default_rng(1).normal(0, 500, (7, 32, 3))
    cdf.write_pose(tmp_path / "a.cdf", pose)
    back = cdf.read_pose(tmp_path / "a.cdf", 3)
    assert back.shape == (7, 32, 3) and np.allclose(back, pose.astype(np.float32))
    with pytest.raises(H36MError, match=r"a\.cdf.*expected \(1, N, 64\)"):
        cdf.read_pose(tmp_path / "a.cdf", 2)
    (tmp_path / "junk.cdf").write_bytes(b"not a cdf at all" * 10)
    with pytest.raises(H36MError, match="junk.cdf.*not a readable CDF"):
        cdf.read_pose(tmp_path / "junk.cdf", 3)
    with pytest.raises(H36MError, match="missing.cdf: file not found"):
        cdf.read_pose(tmp_path / "missing.cdf", 3)


def test_mat_v73_masks_round_trip(tmp_path):
    frames = [np.zeros((30, 40), np.uint8) for _ in range(3)]
    frames[1][5:12, 20:33] = 1
    masks.write_masks(tmp_path / "m.mat", frames)
    with open(tmp_path / "m.mat", "rb") as fh:
        assert fh.read(19) == b"MATLAB 7.3 MAT-file"
    with h5py.File(tmp_path / "m.mat", "r") as f:                 # plain h5py sees H36M's layout
        assert f["Masks"].shape == (3, 1)
        assert f[f["Masks"][1, 0]][()].shape == (40, 30)        # stored transposed
    back = list(masks.iter_masks(tmp_path / "m.mat"))
    assert [m.shape for m in back] == [(30, 40)] * 3
    assert masks.box_from_mask(back[1]).tolist() == [20, 5, 33, 12]
    assert masks.box_from_mask(back[0]) is None
    (tmp_path / "bad.mat").write_bytes(b"\0" * 600)
    with pytest.raises(H36MError, match="bad.mat"):
        list(masks.iter_masks(tmp_path / "bad.mat"))


def test_video_round_trip_and_truncation(tmp_path):
    frames = [np.full((48, 64, 3), 10 + 20 * i, np.uint8) for i in range(12)]
    assert video.write_video(tmp_path / "v.mp4", frames, 64, 48) == 12
    info = video.probe(tmp_path / "v.mp4")
    assert (info.width, info.height, info.fps) == (64, 48, 50.0)
    back = list(video.iter_frames(tmp_path / "v.mp4"))
    assert len(back) == 12
    assert all(abs(float(b.mean()) - float(f.mean())) < 4 for b, f in zip(back, frames))
    data = (tmp_path / "v.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(H36MError, match="cut.mp4"):
        list(video.iter_frames(tmp_path / "cut.mp4"))


def test_cli_help_does_not_import_heavy_libraries():
    code = "import sys, cli; cli.main(['--help'], standalone_mode=False); " \
           "heavy = [m for m in ('torch', 'timm', 'cv2', 'cdflib', 'pyarrow') if m in sys.modules]; " \
           "assert not heavy, heavy"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
