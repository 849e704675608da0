"""`h36m synth`: the synthetic release is indistinguishable in layout and formats from the real one."""
import filecmp
import subprocess
import sys

import cdflib
import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from h36m.cli import main
from h36m.h36m_tools import cdf, masks, names, skeleton, video
from h36m.h36m_tools.cameras import CAMERA_IDS, bundled, project, world_to_camera
from h36m.h36m_tools.errors import H36MError
from h36m.pipelines.synth.release import SynthConfig, _rng, choose_sequences, run_synth, video_size
from h36m.pipelines.synth.render import background

SEQS = {"S1": "Directions 1", "S5": "Discussion 3", "S9": "Eating 1", "S11": "Directions"}


def test_sequence_choice_uses_real_names_and_covers_actions():
    jobs = choose_sequences(SynthConfig(out=".", sequences_per_subject=3))
    table = names.sequence_table()
    assert all(j.name in table[j.subject] for j in jobs)
    assert ("S11", "Directions") in {(j.subject, j.name) for j in jobs}
    assert len({names.canonical_action(j.name) for j in jobs}) >= 10
    assert {(j.subject, j.name) for j in choose_sequences(SynthConfig(out=".", sequences_per_subject=1))} == \
        set(SEQS.items())


def test_by_default_every_subject_performs_the_same_actions():
    from h36m.pipelines.synth.release import DEFAULT_ACTIONS

    jobs = choose_sequences(SynthConfig(out="."))
    for subject in ("S1", "S5", "S9", "S11"):
        assert [names.canonical_action(j.name) for j in jobs if j.subject == subject] == list(DEFAULT_ACTIONS)
    with pytest.raises(ValueError, match="not both"):
        choose_sequences(SynthConfig(out=".", actions=("Walking",), sequences_per_subject=2))
    res = CliRunner().invoke(main, ["synth", "x", "--actions", "Walking", "--sequences-per-subject", "2"])
    assert res.exit_code == 1 and "not both" in res.output and len(res.output.strip().splitlines()) == 1


def test_actions_give_every_subject_the_same_actions_with_real_names():
    jobs = choose_sequences(SynthConfig(out=".", actions=("Walking", "Photo", "Eating")))
    table = names.sequence_table()
    assert all(j.name in table[j.subject] for j in jobs)
    for subject in ("S1", "S5", "S9", "S11"):
        assert [names.canonical_action(j.name) for j in jobs if j.subject == subject] == ["Walking", "Photo", "Eating"]
    assert ("S11", "Directions") not in {(j.subject, j.name) for j in jobs}   # quirks pick it only among the actions
    with pytest.raises(ValueError, match="unknown action 'Jumping'"):
        choose_sequences(SynthConfig(out=".", actions=("Jumping",)))
    res = CliRunner().invoke(main, ["synth", "x", "--actions", "Walking,Jumping"])
    assert res.exit_code == 1 and "Jumping" in res.output and len(res.output.strip().splitlines()) == 1


def test_layout_and_plain_library_shapes(small_release):
    for subject, seq in SEQS.items():
        feats = small_release / subject / "MyPoseFeatures"
        d3 = cdflib.CDF(str(feats / "D3_Positions" / f"{seq}.cdf")).varget("Pose")
        assert d3.shape == (1, 40, 96)
        for cam in CAMERA_IDS:
            assert cdflib.CDF(str(feats / "D3_Positions_mono" / f"{seq}.{cam}.cdf")).varget("Pose").shape == (1, 40, 96)
            d2 = feats / "D2_Positions" / f"{seq}.{cam}.cdf"
            mat = small_release / subject / "MySegmentsMat" / "ground_truth_bb" / f"{seq}.{cam}.mat"
            mp4 = small_release / subject / "Videos" / f"{seq}.{cam}.mp4"
            assert mp4.is_file()
            if subject == "S5":                      # the subject without D2_Positions and masks
                assert not d2.exists() and not mat.exists()
                continue
            assert cdflib.CDF(str(d2)).varget("Pose").shape == (1, 40, 64)
            with h5py.File(mat, "r") as f:
                n = f["Masks"].shape
                assert n[1] == 1 and f[f["Masks"][0, 0]][()].shape == (250, 250)


def test_video_frame_counts_sizes_and_quirks(small_release):
    for subject, seq in SEQS.items():
        for cam in CAMERA_IDS:
            path = small_release / subject / "Videos" / f"{seq}.{cam}.mp4"
            if (subject, seq, cam) == ("S11", "Directions", "54138969"):
                with pytest.raises(H36MError, match="54138969.mp4"):
                    list(video.iter_frames(path))
                continue
            cap = cv2.VideoCapture(str(path))
            n = 0
            while cap.read()[0]:
                n += 1
            assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (250, 250)
            assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(50)
            extra = n - 40
            assert (2 <= extra <= 3) if cam in ("55011271", "58860488") else extra == 0, (subject, cam, n)
            if subject != "S5":
                assert masks.count_masks(path.parents[1] / "MySegmentsMat" / "ground_truth_bb" /
                                         f"{seq}.{cam}.mat") == n


def test_readback_bones_constant_and_d2_is_projection(small_release):
    for subject, seq in SEQS.items():
        feats = small_release / subject / "MyPoseFeatures"
        world = cdf.read_pose(feats / "D3_Positions" / f"{seq}.cdf", 3)
        bones = skeleton.bone_lengths(skeleton.to17(world))
        assert np.ptp(bones, axis=0).max() < 0.01            # mm, float32 storage
        assert bones.min() > 50
        for cam in bundled().cameras(subject):
            mono = cdf.read_pose(feats / "D3_Positions_mono" / f"{seq}.{cam.id}.cdf", 3)
            assert np.abs(mono - world_to_camera(world, cam.extrinsics.R, cam.extrinsics.t)).max() < 0.01
            if subject == "S5":
                continue
            d2 = cdf.read_pose(feats / "D2_Positions" / f"{seq}.{cam.id}.cdf", 2)
            k = cam.intrinsics.for_video(*video_size(cam.id, 0.25))
            assert np.abs(project(mono, k) - d2).max() < 1e-3


def test_drawn_person_inside_mask_and_on_joints(small_release):
    cfg = SynthConfig(out=small_release)
    for subject, seq in (("S1", SEQS["S1"]), ("S9", SEQS["S9"])):
        feats = small_release / subject / "MyPoseFeatures"
        for cam in bundled().cameras(subject):
            k = cam.intrinsics.for_video(*video_size(cam.id, 0.25))
            bg = background(cam, k, _rng(cfg, subject, cam.id, "room")).astype(int)
            # video coding blurs the room's sharp edges: pixels near them may differ without a person there
            grey = bg.mean(axis=2).astype(np.float32)
            edges = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)) > 40
            edges = cv2.dilate(edges.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            d2 = skeleton.to17(cdf.read_pose(feats / "D2_Positions" / f"{seq}.{cam.id}.cdf", 2))
            mat = small_release / subject / "MySegmentsMat" / "ground_truth_bb" / f"{seq}.{cam.id}.mat"
            frames = list(video.iter_frames(small_release / subject / "Videos" / f"{seq}.{cam.id}.mp4"))
            for t, m in enumerate(masks.iter_masks(mat)):
                if t >= 40 or t % 7:
                    continue
                person = (np.abs(frames[t].astype(int) - bg).max(axis=2) > 60) & ~edges
                assert person.sum() > 100
                assert (person & (m == 0)).sum() <= 0.01 * person.sum(), (subject, cam.id, t)
                x0, y0, x1, y1 = masks.box_from_mask(m)
                u, v = d2[t, :, 0], d2[t, :, 1]
                assert ((u >= x0) & (u < x1) & (v >= y0) & (v < y1)).all()
                ui, vi = np.round(u).astype(int), np.round(v).astype(int)
                on = np.abs(frames[t][vi, ui].astype(int) - bg[vi, ui]).max(axis=1) > 25
                # all but two joints: a joint on the green torso (the neck, or an arm's joint behind the body) can
                # come within 25 levels of a grey wall once H.264 has blurred the colours
                assert on.sum() >= len(on) - 2, (subject, cam.id, t, on)


def test_deterministic_for_a_seed(tmp_path):
    kw = dict(subjects=("S9",), sequences_per_subject=1, frames=6, workers=1)
    run_synth(SynthConfig(out=tmp_path / "a", **kw))
    run_synth(SynthConfig(out=tmp_path / "b", **kw))
    run_synth(SynthConfig(out=tmp_path / "c", seed=1, **kw))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 1 + 4 * 4                                  # D3 + per camera mono, D2, mp4, mat
    for f in files:
        assert filecmp.cmp(tmp_path / "a" / f, tmp_path / "b" / f, shallow=False), f
    seq = next(f for f in files if "D3_Positions/" in str(f))
    assert not filecmp.cmp(tmp_path / "a" / seq, tmp_path / "c" / seq, shallow=False)


def test_cli_synth_writes_a_release(tmp_path):
    res = subprocess.run([sys.executable, "-m", "h36m", "synth", str(tmp_path / "r"), "--subjects", "S11",
                          "--sequences-per-subject", "1", "--frames", "5", "--workers", "1"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "truncated" in res.stdout
    assert len(names.discover(tmp_path / "r")) == 1
    bad = subprocess.run([sys.executable, "-m", "h36m", "synth", str(tmp_path / "x"), "--subjects", "S99"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "S99" in bad.stderr and "Traceback" not in bad.stderr


def test_discovery_finds_every_sequence_and_its_files(small_release, tmp_path):
    found = {(s.subject, s.name): s for s in names.discover(small_release)}
    assert set(found) == set(SEQS.items())
    s1 = found[("S1", "Directions 1")]
    assert s1.key == "S1/Directions_1" and s1.action == "Directions" and s1.subaction == 1
    assert sorted(s1.videos) == sorted(s1.d2) == sorted(s1.masks) == sorted(s1.d3_mono) == list(CAMERA_IDS)
    assert found[("S5", SEQS["S5"])].d2 == {} and found[("S5", SEQS["S5"])].masks == {}
    assert [s.subject for s in names.discover(small_release, subjects=("S11", "S9"))] == ["S9", "S11"]
    with pytest.raises(H36MError, match="folder not found"):
        names.discover(tmp_path / "nope")
    (tmp_path / "photos").mkdir()
    with pytest.raises(H36MError, match="not an H36M release"):
        names.discover(tmp_path)
