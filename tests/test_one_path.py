"""One 3-D path: the camera's nominal pixel frame in every 2-D file, one lifter input convention in every stage, the
documented workflows end to end, and no run that leaves non-finite weights.

The synthetic releases here have 250 px videos (`h36m synth`'s default scale 0.25), so a file in video pixels is
a factor 4 (hundreds of pixels) away from the nominal frame that VideoPose3D projects into.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fixtures_shard import extracted, shards  # noqa: F401  (fixtures)
from fixtures_train import LIFT_KW, TRAIN_KW, cli, run2d, runlift, train_data  # noqa: F401  (fixtures)
from h36m.cli import main
from h36m.h36m_tools.cameras import (CAMERA_IDS, Camera, bundled, nominal_camera, nominal_screen, project,
                                     world_to_camera)
from h36m.h36m_tools.npz import keypoints_2d, load_npz
from h36m.h36m_tools.skeleton import to17
from h36m.pipelines.interchange.npzfile import vp3d_action

# ----- VideoPose3D's own definitions (facebookresearch/VideoPose3D, common/h36m_dataset.py, common/skeleton.py,
# common/mocap_dataset.py, common/camera.py), written out: what its Human36mDataset does with data_3d_h36m.npz
VP3D_PARENTS = [-1, 0, 1, 2, 3, 4, 0, 6, 7, 8, 9, 0, 11, 12, 13, 14, 12, 16, 17, 18, 19, 20, 19, 22, 12, 24, 25, 26,
                27, 28, 27, 30]
VP3D_REMOVED = [4, 5, 9, 10, 11, 16, 20, 21, 22, 23, 24, 28, 29, 30, 31]
VP3D_RES = [(1000, 1002), (1000, 1000), (1000, 1000), (1000, 1002)]     # h36m_cameras_intrinsic_params res_w, res_h


def vp3d_load_positions(path) -> dict:
    """Human36mDataset.__init__ + MocapDataset.remove_joints: np.load(...)['positions_3d'].item(), then
    positions[:, kept_joints] with kept = the joints not removed (Skeleton.remove_joints)."""
    data = np.load(path, allow_pickle=True)["positions_3d"].item()      # our own file, written by the test
    kept = [j for j in range(len(VP3D_PARENTS)) if j not in VP3D_REMOVED]
    return {s: {a: p[:, kept] for a, p in acts.items()} for s, acts in data.items()}


def vp3d_normalize_screen(x, w, h):
    """common/camera.py normalize_screen_coordinates."""
    assert x.shape[-1] == 2
    return x / w * 2 - [1, h / w]


def nominal_projection(world_mm: np.ndarray, subject: str, cam_id: str) -> np.ndarray:
    """(N, 17, 3) world mm -> (N, 17, 2) px of the camera's nominal frame, with the package's own H36M cameras."""
    cam = bundled().camera(subject, cam_id)
    return project(world_to_camera(world_mm, cam.extrinsics.R, cam.extrinsics.t), cam.intrinsics)


# ----- the files: every 2-D file in the nominal frame ---------------------------------------------------------

def test_export_raw_is_in_the_nominal_frame_for_every_subject(small_release, tmp_path):
    """S1, S9, S11 have D2_Positions in their 250 px videos' pixels, S5 has none (projected): all four land within
    1 px of the nominal projection of D3_Positions, and the metadata says which frame."""
    from h36m.h36m_tools import cdf
    from h36m.h36m_tools.names import discover

    cli("export", small_release, tmp_path)
    pos, meta, _ = keypoints_2d(tmp_path / "data_2d_h36m_gt.npz")
    assert meta["pixel_frame"] == "nominal" and meta["frame_size"]["54138969"] == [1000, 1002]
    seen = set()
    for f in discover(small_release):
        if f.d3 is None or vp3d_action(f.name) not in pos.get(f.subject, {}):
            continue
        world = to17(cdf.read_pose(f.d3, 3))
        for i, cam_id in enumerate(CAMERA_IDS):
            err = np.abs(pos[f.subject][vp3d_action(f.name)][i] - nominal_projection(world, f.subject, cam_id))
            assert err.max() < 1.0, (f.key, cam_id, err.max())
        seen.add(f.subject)
    assert {"S1", "S5", "S9"} <= seen


def test_export_extracted_is_nominal_and_indexable_by_human36mdataset(extracted, tmp_path):
    """The 3-D loads through VideoPose3D's Human36mDataset indexing (32 joints -> its 17) back to our 17 joints;
    the 2-D is the nominal projection of that 3-D within 1 px."""
    from h36m.pipelines.extract.dataset import list_sequences, read_sequence

    cli("export", extracted, tmp_path)
    pos3d = vp3d_load_positions(tmp_path / "data_3d_h36m.npz")
    pos2d, meta, _ = keypoints_2d(tmp_path / "data_2d_h36m_gt.npz")
    assert meta["pixel_frame"] == "nominal"
    checked = 0
    for path in list_sequences(extracted):
        m, a = read_sequence(path, with_jpeg=False)
        action = vp3d_action(m.sequence)
        if action not in pos3d.get(m.subject, {}):
            continue
        world = pos3d[m.subject][action] * 1000.0                     # metres -> mm, VideoPose3D's 17 joints
        np.testing.assert_allclose(world, a.pose3d, atol=0.01)
        for v, cam_id in enumerate(m.cameras):
            cam, _ = nominal_camera(Camera.from_dict(m.camera_params[v]))
            i = CAMERA_IDS.index(cam_id)
            proj = project(world_to_camera(world, cam.extrinsics.R, cam.extrinsics.t), cam.intrinsics)
            assert np.abs(pos2d[m.subject][action][i] - proj).max() < 1.0, (m.key, cam_id)
            # VideoPose3D's normalisation of the file's 2-D is the lifter's input of the same joints
            w, h = VP3D_RES[i]
            p = m.camera_params[v]
            np.testing.assert_allclose(vp3d_normalize_screen(pos2d[m.subject][action][i], w, h),
                                       nominal_screen(a.pose2d[:, v], cam_id, p["width"], p["height"]), atol=1e-4)
            checked += 1
    assert checked >= 8


def test_predict_chain_puts_ground_truth_in_the_nominal_frame(train_data):
    """predict's crop -> nominal map (loader.inputs.crop_to_nominal), applied to the clips' ground-truth crop joints,
    lands within 1 px of the nominal projection of the world joints."""
    from h36m.pipelines.loader.inputs import crop_to_nominal
    from h36m.pipelines.loader.loader import LoaderConfig, batch_crop_size, make_loader

    loader = make_loader(LoaderConfig(urls=train_data.test, batch_size=2, workers=0, shuffle=0, shuffle_shards=False,
                                      rank=0, world_size=1, equal_batches=False))
    n = 0
    for batch in loader:
        crop = batch_crop_size(batch)
        for b, meta in enumerate(batch["meta"]):
            for v in range(int(batch["view_mask"][b].sum())):
                got = crop_to_nominal(batch["pose2d"][b, v].numpy(), batch["box"][b, v].numpy(), crop,
                                      batch["cameras"][b][v])
                cam, _ = nominal_camera(Camera.from_dict(batch["cameras"][b][v]))
                want = cam.project(batch["pose3d"][b].numpy().astype(np.float64))
                assert np.abs(got - want).max() < 1.0, (meta["subject"], meta["sequence"], v)
                n += 1
    assert n >= 8


# ----- one lifter convention ----------------------------------------------------------------------------------

def test_table_ii_is_the_same_with_gt_and_the_exported_gt_file(runlift, train_data, tmp_path):
    from h36m.pipelines.evaluate.table2 import LiftEvalConfig, evaluate_lift

    cli("export", train_data.extracted, tmp_path / "gt")
    gt_file = str(tmp_path / "gt" / "data_2d_h36m_gt.npz")
    report = evaluate_lift(LiftEvalConfig(run=str(runlift), keypoints=("gt", gt_file), triangulate=False))
    for metric in ("MPJPE", "P-MPJPE"):
        a, b = report.row("PoseFormer, GT 2-D", metric), report.row(f"PoseFormer, {gt_file.split('/')[-1]}", metric)
        assert abs(a.avg - b.avg) < 0.05 and abs(a.all_frames - b.all_frames) < 0.05, (metric, a.avg, b.avg)


def test_the_joint_stage_gives_the_lift_runs_3d_for_the_same_2d(runlift, train_data, tmp_path):
    """Whole test sequences as single clips: the joint stage's path (crop joints -> box -> nominal frame -> screen,
    loader.inputs, then the network's lifter) and the lift stage's (train.sequences) give the same 3-D."""
    from h36m.pipelines.loader.inputs import network_inputs
    from h36m.pipelines.loader.loader import LoaderConfig, make_loader
    from h36m.pipelines.train.checkpoint import load_network
    from h36m.pipelines.train.sequences import inputs, lift_sequence, load_sequences

    whole = tmp_path / "whole"
    cli("shard", train_data.extracted, whole, "--frames", 24, "--split", "test")
    net, _ = load_network(runlift)
    seqs = {s.key: s for s in load_sequences(train_data.extracted, ("S9", "S11"))[0]}
    loader = make_loader(LoaderConfig(urls=str(whole / "test-*.tar"), batch_size=1, workers=0, shuffle=0,
                                      shuffle_shards=False, rank=0, world_size=1, equal_batches=False))
    compared = 0
    with torch.no_grad():
        for batch in loader:
            x = network_inputs(batch, net.cfg.spatial, torch.device("cpu"))
            meta = batch["meta"][0]
            if int(meta.get("real_frames", 24)) != 24:
                continue
            scale, offset = x.to_screen
            screen = batch["pose2d"].float() / x.crop * scale + offset                 # (1, V, F, 17, 2)
            joint3d = net.lift(screen[0][x.view_mask[0]]).numpy()
            for v, cam in enumerate(meta["cameras"][: int(x.view_mask[0].sum())]):
                seq = seqs[f"{meta['subject']}/{meta['sequence'].replace(' ', '_')}/{cam}"]
                np.testing.assert_allclose(screen[0, v].numpy(), inputs(seq), atol=2e-3)
                lifted = lift_sequence(net.lifter, inputs(seq), flip=False)
                np.testing.assert_allclose(joint3d[v], lifted, atol=0.5)               # mm
                compared += 1
    assert compared >= 8


# ----- the documented workflows, end to end -------------------------------------------------------------------

def test_workflows_2d_predict_lift_and_lift_joint_init(train_data, run2d, runlift, tmp_path):
    """2d -> predict -> lift on the predicted 2-D of the training subject; lift -> joint with --init; each run
    evaluates."""
    pred = tmp_path / "pred_train.npz"
    cli("predict", "--run", run2d, "--shards", train_data.train, "--out", pred, "--workers", 1)
    pos, meta, _ = keypoints_2d(pred)
    assert meta["pixel_frame"] == "nominal" and "S1" in pos
    lift = tmp_path / "lift_pred"
    cli("train", "--stage", "lift", "--data", train_data.extracted, "--keypoints", pred, "--train-subjects", "S1",
        "--init", run2d, "--out", lift, "--epochs", 1, "--batch-size", 32)
    assert (lift / "checkpoint.pt").is_file()
    joint = tmp_path / "joint"
    cli("train", "--stage", "joint", "--shards", train_data.train, "--init", runlift, "--out", joint,
        "--epochs", 1, "--batch-size", 2, "--workers", 1, "--max-steps", 2)
    from h36m.pipelines.train.checkpoint import load_checkpoint

    j, l = load_checkpoint(joint), load_checkpoint(runlift)
    assert j["config"]["model"]["lifter"] == l["config"]["model"]["lifter"]
    res = CliRunner().invoke(main, ["evaluate", "--run", str(joint), "--shards", train_data.test, "--out",
                                    str(tmp_path / "rep"), "--workers", "1"], catch_exceptions=False)
    assert res.exit_code == 0, res.output


# ----- never a non-finite model -------------------------------------------------------------------------------

def test_save_checkpoint_refuses_non_finite_weights(tmp_path):
    from h36m.h36m_tools.errors import H36MError
    from h36m.pipelines.train.checkpoint import save_checkpoint

    good = tmp_path / "c.pt"
    save_checkpoint(good, {"model": {"w": torch.ones(3)}})
    before = good.read_bytes()
    with pytest.raises(H36MError, match="non-finite"):
        save_checkpoint(good, {"model": {"w": torch.tensor([1.0, float("nan"), 2.0])}})
    assert good.read_bytes() == before


@pytest.mark.parametrize("bad", [float("nan"), 1e38])
def test_a_lift_run_on_non_finite_or_huge_2d_stops_in_one_line(train_data, tmp_path, bad):
    """A 2-D file whose values are NaN or 1e38 in some frames: the run exits 1 with one line naming the file, and
    leaves no checkpoint with non-finite weights."""
    from h36m.pipelines.interchange.npzfile import write_npz
    from h36m.pipelines.train.checkpoint import load_checkpoint

    cli("export", train_data.extracted, tmp_path / "gt")
    data = load_npz(tmp_path / "gt" / "data_2d_h36m_gt.npz")
    pos = data["positions_2d"]
    for acts in pos.values():
        for cams in acts.values():
            for arr in cams:
                arr[3:9] = bad
    hostile = tmp_path / "hostile.npz"
    write_npz(hostile, positions_2d=pos, metadata=data["metadata"])
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--stage", "lift", "--data", str(train_data.extracted), "--keypoints",
                                    str(hostile), "--train-subjects", "S1", "--out", str(out), "--epochs", "2",
                                    "--batch-size", "16", "--checkpoint-every", "1"], catch_exceptions=False)
    assert res.exit_code == 1, res.output
    lines = [x for x in res.output.strip().splitlines() if x.strip()]
    assert "hostile.npz" in lines[-1] and "Traceback" not in res.output, res.output
    if (out / "checkpoint.pt").exists():
        state = load_checkpoint(out)
        assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


# ----- one evaluate -------------------------------------------------------------------------------------------

def test_evaluate_refuses_options_that_do_not_apply_in_one_line(run2d, runlift, train_data, tmp_path):
    for run, args, words in ((run2d, ["--shards", train_data.test, "--keypoints", "gt"], "trains no lifter"),
                             (run2d, ["--shards", train_data.test, "--no-flip"], "--flip/--no-flip"),
                             (runlift, ["--shards", train_data.test], "trains no 2-D network"),
                             (run2d, [], "give --shards")):
        res = CliRunner().invoke(main, ["evaluate", "--run", str(run), "--out", str(tmp_path / "r"), *map(str, args)],
                                 catch_exceptions=False)
        assert res.exit_code == 1 and words in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1 and str(run) in res.output, res.output
    assert not (tmp_path / "r").exists()
