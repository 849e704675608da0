"""VideoPose3D interchange: `h36m export` read back as VideoPose3D reads it, and the safe .npz reader."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from click.testing import CliRunner

from fixtures_shard import extracted  # noqa: F401  (fixture)
from h36m.cli import main
from h36m.h36m_tools import cdf
from h36m.h36m_tools.cameras import CAMERA_IDS, bundled, project, world_to_camera
from h36m.h36m_tools.errors import H36MError
from h36m.h36m_tools.names import discover
from h36m.h36m_tools.npz import load_npz, positions_2d
from h36m.h36m_tools.skeleton import JOINTS17, to17
from h36m.h36m_tools.video import probe


def test_export_of_a_release_equals_its_cdfs(small_release, tmp_path):
    res = CliRunner().invoke(main, ["export", str(small_release), str(tmp_path / "vp3d")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "left out S11/Directions" in res.output
    # as VideoPose3D's Human36mDataset and run_poseformer.py read them
    pos3d = np.load(tmp_path / "vp3d" / "data_3d_h36m.npz", allow_pickle=True)["positions_3d"].item()
    f2d = np.load(tmp_path / "vp3d" / "data_2d_h36m_gt.npz", allow_pickle=True)
    pos2d, meta = f2d["positions_2d"].item(), f2d["metadata"].item()
    assert {k: meta[k] for k in ("layout_name", "num_joints", "keypoints_symmetry")} == {
        "layout_name": "h36m", "num_joints": 17, "keypoints_symmetry": [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]}
    assert meta["pixel_frame"] == "nominal"
    seqs = {(f.subject, f.name): f for f in discover(small_release)}
    assert set(pos3d) == {"S1", "S5", "S9"} and "S11" not in pos2d        # S11's one sequence is Directions
    cams = bundled()
    for subject, actions in pos3d.items():
        for action, p3 in actions.items():
            raw = next(f for (s, n), f in seqs.items() if s == subject and
                       n.replace("TakingPhoto", "Photo").replace("WalkingDog", "WalkDog") == action)
            world = cdf.read_pose(raw.d3, 3)
            assert p3.dtype == np.float32 and p3.shape == (len(world), 32, 3)
            np.testing.assert_allclose(p3, world / 1000.0, atol=1e-6)                   # metres, world
            p2 = pos2d[subject][action]
            assert len(p2) == 4 and all(a.dtype == np.float32 and a.shape == (len(world), 17, 2) for a in p2)
            for i, cam_id in enumerate(CAMERA_IDS):                                      # camera order
                if cam_id in raw.d2:     # the 250 px video's pixels, scaled to the nominal 1000 px frame
                    want = to17(cdf.read_pose(raw.d2[cam_id], 2)) * (1000 / probe(raw.videos[cam_id]).width)
                else:   # S5 of the synthetic release has no D2_Positions: VideoPose3D's projection
                    cam = cams.camera(subject, cam_id)
                    want = project(world_to_camera(to17(world), cam.extrinsics.R, cam.extrinsics.t), cam.intrinsics)
                np.testing.assert_allclose(p2[i], want, atol=2e-3)
    # the safe reader gives the same
    mine, meta2 = positions_2d(tmp_path / "vp3d" / "data_2d_h36m_gt.npz")
    assert meta2 == meta and all(np.array_equal(mine[s][a][i], pos2d[s][a][i]) for s in pos2d for a in pos2d[s]
                                 for i in range(4))


def test_export_of_an_extracted_dataset(extracted, tmp_path):
    from h36m.pipelines.extract.dataset import list_sequences, read_sequence
    from h36m.pipelines.interchange.export import ExportConfig, export

    res = export(ExportConfig(src=extracted, out=tmp_path))
    assert res.source == "extracted" and "S11/Directions" in res.skipped
    pos3d = load_npz(tmp_path / "data_3d_h36m.npz")["positions_3d"]
    pos2d, _ = positions_2d(tmp_path / "data_2d_h36m_gt.npz")
    for path in list_sequences(extracted, ("S1", "S5", "S9")):
        meta, a = read_sequence(path, with_jpeg=False)
        action = meta.sequence.replace("TakingPhoto", "Photo").replace("WalkingDog", "WalkDog")
        np.testing.assert_allclose(pos3d[meta.subject][action][:, JOINTS17], a.pose3d / 1000.0, atol=1e-6)
        assert pos3d[meta.subject][action].shape[1] == 32 and np.isfinite(pos3d[meta.subject][action]).all()
        for v in range(4):          # video pixels times nominal / video width
            np.testing.assert_allclose(pos2d[meta.subject][action][v],
                                       a.pose2d[:, v] * (1000 / meta.camera_params[v]["width"]), rtol=1e-6)


class _Exploit:
    """Unpickling this would create the marker file (os.system runs a shell command)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickled_instance_is_refused_and_nothing_of_it_runs(tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "evil.npz"
    np.savez(bad, positions_2d=np.array({"S1": {"Walking 1": [_Exploit(marker)]}}, dtype=object))
    with pytest.raises(H36MError) as e:
        load_npz(bad)
    assert str(bad) in str(e.value) and "refused" in str(e.value) and "system" in str(e.value)
    assert not marker.exists()
    # the same through the CLI: one line, nothing ran
    res = CliRunner().invoke(main, ["train", "--stage", "lift", "--data", str(tmp_path), "--keypoints", str(bad),
                                    "--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1 and not marker.exists()
    # sanity: the exploit is real (pickle runs it)
    pickle.loads(pickle.dumps(_Exploit(marker)))
    assert marker.exists()


def test_plain_data_pickles_and_numeric_files_read(tmp_path):
    data = {"S1": {"Directions 1": [np.arange(34, dtype=np.float32).reshape(1, 17, 2)] * 4}}
    meta = {"num_joints": np.int64(17), "keypoints_symmetry": [np.array([4, 5]), [1, 2]], "x": (1.5, "a", None)}
    np.savez_compressed(tmp_path / "ok.npz", positions_2d=data, metadata=meta, plain=np.eye(3))
    out = load_npz(tmp_path / "ok.npz")
    assert np.array_equal(out["plain"], np.eye(3)) and out["metadata"]["num_joints"] == 17
    assert np.array_equal(out["positions_2d"]["S1"]["Directions 1"][2], data["S1"]["Directions 1"][2])
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(H36MError, match="junk.npz: not a readable"):
        load_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(H36MError, match="no 'positions_2d'"):
        positions_2d(tmp_path / "plain.npz")
