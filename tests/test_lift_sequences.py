"""Whole sequences: `h36m predict` stitching, the lifter on whole sequences, the lift stage and Table II."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fixtures_train import cli, run2d, runlift, train_data  # noqa: F401  (fixtures)
from h36m.cli import main
from h36m.h36m_tools.cameras import CAMERA_IDS
from h36m.h36m_tools.npz import positions_2d
from h36m.model import PRESETS, build_model
from h36m.model.lifter import PoseFormer
from h36m.pipelines.train.checkpoint import save_checkpoint
from h36m.h36m_tools.skeleton import flip_joints
from h36m.pipelines.train.sequences import inputs, lift_sequence, load_sequences, windows


@pytest.fixture(scope="module")
def per_image_run(tmp_path_factory):
    """A 2-D network whose prediction of an image does not depend on its clip (no relation blocks, no time or view
    embedding): untrained but fixed, saved as a 2d run."""
    cfg = PRESETS["tiny"]
    cfg = replace(cfg, lift=False, relations=replace(cfg.relations, depth_time=0, depth_views=0,
                                                     use_time_embedding=False, use_view_embedding=False))
    torch.manual_seed(0)
    net = build_model(cfg)
    out = tmp_path_factory.mktemp("per_image") / "run"
    save_checkpoint(out / "checkpoint.pt", {"model": net.state_dict(), "config": {
        "train": {"stage": "2d"}, "model": cfg.to_dict()}})
    return out


def test_predict_gives_the_same_sequences_whatever_the_clips(train_data, per_image_run, tmp_path):
    from h36m.h36m_tools.npz import keypoints_2d

    files = {}
    # b: overlapping clips (frames averaged); c: the tail dropped (frames 20-23 in no clip)
    for name, frames, stride, tail in (("a", 8, 8, "pad"), ("b", 12, 5, "pad"), ("c", 10, 10, "drop")):
        sh = tmp_path / name
        cli("shard", train_data.extracted, sh, "--frames", frames, "--stride", stride, "--split", "test", "--tail",
            tail, "--shard-mb", 1, "--no-shuffle")
        files[name] = tmp_path / f"{name}.npz"
        res = cli("predict", "--run", per_image_run, "--shards", str(sh / "test-*.tar"), "--out", files[name],
                  "--workers", 0)
        assert "left out S11/Directions" in res.output                      # 3 cameras only
    a, meta = positions_2d(files["a"])
    b, _ = positions_2d(files["b"])
    assert meta["num_joints"] == 17 and set(a) == {"S9", "S11"} and a["S9"].keys() == b["S9"].keys()
    for subject in a:
        for action in a[subject]:
            assert len(a[subject][action]) == len(CAMERA_IDS)
            for va, vb in zip(a[subject][action], b[subject][action]):
                assert va.shape == (24, 17, 2) and va.dtype == np.float32       # one value per frame, all frames
                np.testing.assert_allclose(va, vb, atol=1e-3)
                assert np.ptp(va[..., 0]) > 1.0                                 # full-frame pixels, not crop units
    # every frame of every sequence whatever the tail mode: those past the last clip hold its last frame, with
    # confidence 0, so the file feeds the lift stage (which wants every frame)
    c, _, conf = keypoints_2d(files["c"])
    for subject in a:
        for action in a[subject]:
            for va, vc, cc in zip(a[subject][action], c[subject][action], conf[subject][action]):
                assert vc.shape == va.shape
                np.testing.assert_allclose(vc[:20], va[:20], atol=1e-3)
                assert (vc[20:] == vc[19]).all() and (cc[20:] == 0).all() and (cc[:20] > 0).all()


def test_the_lifter_gives_a_frame_one_prediction_whatever_the_clips(train_data):
    torch.manual_seed(0)
    lifter = PoseFormer(PRESETS["tiny"].lifter).eval()
    seqs, _ = load_sequences(train_data.extracted, ("S9",), "gt")
    x = inputs(seqs[0])
    whole = lift_sequence(lifter, x, flip=False)
    # frame t's prediction is the window of its own sequence, padded only at the sequence's ends
    for t in (0, 3, len(x) // 2, len(x) - 1):
        w = torch.from_numpy(windows(x, 9)[t:t + 1])
        np.testing.assert_allclose(whole[t], lifter(w)[0, 0].detach().numpy(), atol=1e-2)
    # the same frames cut into other pieces and lifted piecewise give other poses near a cut: the sequence is the
    # unit (the old per-clip padding); lifting the whole sequence is independent of any clip boundary
    piece = lift_sequence(lifter, x[:8], flip=False)
    assert not np.allclose(piece[-1], whole[7], atol=1e-3)
    assert np.allclose(lift_sequence(lifter, x, flip=False, chunk=5), whole, atol=1e-2)
    flipped = lift_sequence(lifter, x, flip=True)
    np.testing.assert_allclose(flipped, (whole + flip_joints(lift_sequence(lifter, flip_joints(x), flip=False))) / 2,
                               atol=1e-2)


def test_lift_run_on_gt_prints_table_ii_and_beats_the_mean_pose(runlift, train_data, tmp_path):
    res = CliRunner().invoke(main, ["evaluate", "--run", str(runlift), "--out", str(tmp_path / "rep")],
                             catch_exceptions=False, terminal_width=200)
    assert res.exit_code == 0, res.output
    for text in ("Protocol #1: MPJPE (mm)", "Protocol #2: P-MPJPE (mm)", "Mean pose", "PoseFormer, GT 2-D",
                 "test-time flip averaging on", "Damaged sequences", "Frame sampling: every frame"):
        assert text in res.output, text
    report = json.loads((tmp_path / "rep" / "results.json").read_text())
    rows = {(r["method"], r["metric"]): r for r in report["rows"]}
    assert report["subjects"] == ["S9", "S11"] and report["trained_on"] == "gt"
    for metric in ("MPJPE", "P-MPJPE"):
        assert rows[("PoseFormer, GT 2-D", metric)]["avg"] < 0.8 * rows[("Mean pose", metric)]["avg"], metric
    # whole sequences: every frame of every test view once (S9 3 x 4 views, S11 2 x 4; S11 Directions, whose 3 views
    # the extracted dataset keeps, is left out as VideoPose3D's data leaves it), 24 frames
    assert "S11 Directions: left out" in res.output
    assert report["frames"]["Mean pose"] == 24 * (12 + 8)
