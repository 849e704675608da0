"""Multi-view triangulation (h36m_tools.triangulate, h36m triangulate, Table II's rows) and the 2-D network's
per-joint confidence (model.head, train.losses.laplace_nll, h36m predict's confidence_2d)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fixtures_train import SMALL_LIFTER, TRAIN_KW, cli, train_config, train_data  # noqa: F401  (fixtures)
from h36m.cli import main
from h36m.h36m_tools import cdf
from h36m.h36m_tools.cameras import CAMERA_IDS, bundled, distort
from h36m.h36m_tools.npz import keypoints_2d, load_npz
from h36m.h36m_tools.skeleton import to17
from h36m.h36m_tools.triangulate import (reprojection_errors, triangulate_dlt, triangulate_robust,
                                         undistort_points)
from h36m.pipelines.interchange.npzfile import vp3d_action
from h36m.pipelines.synth.release import video_size


def release_views(release, subject: str):
    """(world (N, 17, 3) mm, points (4, N, 17, 2) px, cameras) of a synthetic release's first sequence of `subject`:
    its D3_Positions, its D2_Positions (the ground-truth 2-D, H36M's distortion) and the cameras at the video size."""
    feats = release / subject / "MyPoseFeatures"
    seq = sorted(p.stem for p in (feats / "D3_Positions").glob("*.cdf"))[0]
    world = to17(cdf.read_pose(feats / "D3_Positions" / f"{seq}.cdf", 3))
    points = np.stack([to17(cdf.read_pose(feats / "D2_Positions" / f"{seq}.{c}.cdf", 2)) for c in CAMERA_IDS])
    cams = []
    for cam in bundled().cameras(subject):
        w, h = video_size(cam.id, 0.25)
        cams.append(replace(cam, intrinsics=cam.intrinsics.for_video(w, h)))
    return world, points, cams


def errors_mm(world, truth) -> np.ndarray:
    return np.linalg.norm(world - truth, axis=-1)


# ----- the maths -----------------------------------------------------------------------------------------------

def test_undistort_inverts_h36m_distortion():
    rng = np.random.default_rng(0)
    for k in bundled().intrinsics.values():
        px = rng.uniform([0, 0], [k.width - 1, k.height - 1], size=(500, 2))
        xy = undistort_points(px, k)
        back = distort(xy, k) * [k.fx, k.fy] + [k.cx, k.cy]
        assert np.abs(back - px).max() < 1e-6
        # the distortion is not nothing: skipping it is off by pixels near the corners
        plain = np.stack([(px[:, 0] - k.cx) / k.fx, (px[:, 1] - k.cy) / k.fy], -1)
        assert np.abs(plain - xy).max() * k.fx > 0.5


@pytest.mark.parametrize("subject", ["S1", "S9"])
def test_gt_2d_of_a_synthetic_release_triangulates_to_its_world_joints(small_release, subject):
    world, points, cams = release_views(small_release, subject)
    assert errors_mm(triangulate_dlt(points, cams), world).max() < 1.0
    assert errors_mm(triangulate_robust(points, cams)[0], world).max() < 1.0
    for missing in range(4):                                       # any one view missing
        keep = [v for v in range(4) if v != missing]
        assert errors_mm(triangulate_dlt(points[keep], [cams[v] for v in keep]), world).max() < 1.0
        gone = points.copy()
        gone[missing] = np.nan                                     # or marked missing in place
        assert errors_mm(triangulate_dlt(gone, cams), world).max() < 1.0
        assert errors_mm(triangulate_robust(gone, cams)[0], world).max() < 1.0
    one = points.copy()
    one[1:] = np.nan
    assert np.isnan(triangulate_dlt(one, cams)).all()             # one view: no point
    assert reprojection_errors(world, points, cams).max() < 0.01


@pytest.mark.parametrize("bad", range(4))
def test_one_view_of_noise_robust_stays_within_a_few_mm_dlt_does_not(small_release, bad):
    world, points, cams = release_views(small_release, "S9")
    rng = np.random.default_rng(bad)
    noisy = points.copy()
    k = cams[bad].intrinsics
    noisy[bad] = rng.uniform([0, 0], [k.width - 1, k.height - 1], size=noisy[bad].shape)
    robust, inliers = triangulate_robust(noisy, cams)
    assert errors_mm(robust, world).mean() < 3.0 and np.median(errors_mm(robust, world)) < 1.0
    assert inliers[bad].mean() < 0.2 and inliers[[v for v in range(4) if v != bad]].all()
    assert errors_mm(triangulate_dlt(noisy, cams), world).mean() > 50.0
    # the confidence-weighted DLT: a bad view that its weights say is bad does no harm either
    weights = np.ones(points.shape[:-1])
    weights[bad] = 1e-6
    assert errors_mm(triangulate_dlt(noisy, cams, weights), world).mean() < 1.0


def test_laplace_nll_is_least_at_the_mean_absolute_error():
    from h36m.pipelines.train.losses import laplace_nll

    torch.manual_seed(0)
    target = torch.rand(2, 2, 3, 17, 2)
    pred = target + 0.03 * torch.randn_like(target)
    mask = torch.tensor([[True, True], [True, False]])
    best = (pred - target).abs()[mask].mean().log()
    grid = best + torch.linspace(-1, 1, 21)
    losses = torch.stack([laplace_nll(pred, torch.full(target.shape[:-1], float(g)), target, mask) for g in grid])
    assert int(losses.argmin()) == 10                              # b = mean |error| minimises the NLL
    log_b = torch.zeros(target.shape[:-1], requires_grad=True)
    laplace_nll(pred, log_b, target, mask).backward()
    assert log_b.grad[1, 1].abs().max() == 0 and log_b.grad[0].abs().min() > 0     # missing views do not count


# ----- the confidence head ---------------------------------------------------------------------------------------

def test_old_configs_and_checkpoints_load_without_a_confidence(tmp_path):
    from h36m.model import PRESETS, ModelConfig, build_model, confidence
    from h36m.pipelines.train.checkpoint import load_network, save_checkpoint

    old = PRESETS["tiny"].to_dict()
    del old["head"]["confidence"]                                  # a config written before the confidence head
    cfg = ModelConfig.from_dict(old)
    assert not cfg.head.confidence and PRESETS["tiny"].head.confidence
    torch.manual_seed(0)
    net = build_model(cfg)
    assert not any(k.startswith("head.log_scale") for k in net.state_dict())
    save_checkpoint(tmp_path / "checkpoint.pt", {"model": net.state_dict(), "config": {"train": {"stage": "2d"},
                                                                                       "model": old}})
    loaded, _ = load_network(tmp_path)
    out = loaded(torch.rand(1, 1, 2, 3, 64, 64))
    assert out.log_scale2d is None and out.joints2d.shape == (1, 1, 2, 17, 2)
    c = confidence(torch.tensor([-4.0, -3.0, 0.0]))
    assert ((0 < c) & (c < 1)).all() and c[0] > c[1] > c[2]        # a smaller scale is a higher confidence


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def confident_run(train_data, tmp_path_factory):
    """The tiny preset trained briefly on the synthetic training subject (S1): 2d stage, 10 epochs of 5 steps."""
    from h36m.pipelines.train.loop import train

    out = tmp_path_factory.mktemp("confident") / "2d"
    torch.set_num_threads(1)
    try:
        train(train_config(train_data, out, stage="2d", epochs=10, lr=3e-3))
    finally:
        torch.set_num_threads(2)
    return out


def test_confidence_is_lower_where_the_error_is_larger_on_held_out_subjects(confident_run, train_data, tmp_path):
    from h36m.pipelines.predict.triangulate import load_views

    pred = tmp_path / "pred.npz"
    res = cli("predict", "--run", confident_run, "--shards", train_data.test, "--out", pred, "--workers", 0)
    assert "left out S11/Directions" in res.output
    # VideoPose3D reads it as before: 2 channels in positions_2d; the confidence is a member of its own
    raw = np.load(pred, allow_pickle=True)
    assert set(raw.files) == {"positions_2d", "metadata", "confidence_2d"}
    assert raw["positions_2d"].item()["S9"][next(iter(raw["positions_2d"].item()["S9"]))][0].shape[-1] == 2
    pos, _, conf = keypoints_2d(pred)
    gt, _ = load_views(train_data.extracted, ("S9", "S11"), "gt")
    errs, confs = [], []
    for mv in gt:
        if mv.sequence == "Directions" and mv.subject == "S11":
            continue
        action = vp3d_action(mv.sequence)
        for v, cam in enumerate(c.id for c in mv.cameras):
            i = CAMERA_IDS.index(cam)
            c = conf[mv.subject][action][i][mv.frames]
            assert c.shape == (len(mv.frames), 17) and ((c > 0) & (c < 1)).all()
            errs.append(np.linalg.norm(pos[mv.subject][action][i][mv.frames] - mv.points[v], axis=-1).ravel())
            confs.append(c.ravel())
    rho = spearman(np.concatenate(confs), -np.concatenate(errs))
    assert rho > 0.1, rho


# ----- the command and Table II -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def confident_pred(confident_run, train_data, tmp_path_factory):
    pred = tmp_path_factory.mktemp("pred") / "pred.npz"
    cli("predict", "--run", confident_run, "--shards", train_data.test, "--out", pred, "--workers", 0)
    return pred


def test_triangulate_command_writes_world_joints(confident_pred, train_data, tmp_path):
    out = tmp_path / "world.npz"
    res = cli("triangulate", confident_pred, "--data", train_data.extracted, "--out", out)
    assert "confidence-weighted" in res.output and "absolute" in res.output
    data = load_npz(out)
    assert data["metadata"]["units"] == "mm" and data["metadata"]["weighted"]
    tri = data["triangulated_3d"]
    assert set(tri) == {"S9", "S11"}
    world = next(iter(tri["S9"].values()))
    assert world.shape == (24, 17, 3) and np.isfinite(world).all()
    assert not list(tmp_path.glob("*.tmp*"))
    # bad input: one line naming the file
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    res = CliRunner().invoke(main, ["triangulate", str(tmp_path / "junk.npz"), "--data", str(train_data.extracted),
                                    "--out", str(tmp_path / "x.npz")])
    assert res.exit_code == 1 and "junk.npz" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.npz").exists()


@pytest.fixture(scope="module")
def quick_lift(confident_run, train_data) -> str:
    """A lift run started from confident_run: one epoch of a small lifter (Table II needs a lift run; the
    triangulation rows do not depend on it)."""
    from h36m.pipelines.train.config import TrainConfig
    from h36m.pipelines.train.loop import train

    out = confident_run.parent / "lift"
    train(TrainConfig(out=str(out), data=str(train_data.extracted), init=str(confident_run), stage="lift",
                      subjects="S1", **{**TRAIN_KW, "epochs": 1, "batch_size": 32, "model": SMALL_LIFTER}))
    return str(out)


def test_table_ii_prints_the_triangulation_rows(quick_lift, train_data, confident_pred, tmp_path):
    runlift = quick_lift
    res = CliRunner().invoke(main, ["evaluate", "--run", str(runlift), "--keypoints", "gt", "--keypoints",
                                    str(confident_pred), "--out", str(tmp_path / "rep")],
                             catch_exceptions=False, terminal_width=200)
    assert res.exit_code == 0, res.output
    for text in ("Triangulated (4 views), GT 2-D", "Triangulated (4 views), pred.npz",
                 "Triangulated (3 views), pred.npz", "Triangulated (2 views), pred.npz",
                 "Triangulated robust (4 views), pred.npz", "Absolute MPJPE (mm)", "Triangulated rows:"):
        assert text in res.output, text
    report = json.loads((tmp_path / "rep" / "results.json").read_text())
    rows = {(r["method"], r["metric"]): r for r in report["rows"]}
    assert rows[("Triangulated (4 views), GT 2-D", "MPJPE")]["avg"] < 1.0           # the cameras check out
    assert rows[("Triangulated (4 views), GT 2-D", "Abs. MPJPE")]["avg"] < 1.0
    assert rows[("Triangulated (4 views), pred.npz", "Abs. MPJPE")]["avg"] > 1.0
    assert ("PoseFormer, GT 2-D", "Abs. MPJPE") not in rows                     # no lifter gives world positions
    assert report["weighted"] == [str(confident_pred)]
    md = (tmp_path / "rep" / "results.md").read_text()
    assert "Absolute MPJPE" in md and "Triangulated robust (4 views), pred.npz" in md
    res = CliRunner().invoke(main, ["evaluate", "--run", str(runlift), "--no-triangulate", "--out",
                                    str(tmp_path / "rep2")], catch_exceptions=False, terminal_width=200)
    assert res.exit_code == 0 and "Triangulated" not in res.output


def test_the_scale_loss_leaves_the_joints_as_without_a_confidence(train_data, tmp_path):
    """`confidence_loss = "scale"` (the default): the 2-D joints train step for step as a head without the branch;
    `rle` (the NLL on the coordinates) trains them otherwise; an unknown value is refused."""
    from h36m.pipelines.train.config import resolve
    from h36m.pipelines.train.loop import read_metrics, train

    curves = {}
    for name, kw in (("plain", {"model": {"head": {"confidence": False}}}), ("scale", {}),
                     ("rle", {"confidence_loss": "rle"})):
        train(train_config(train_data, tmp_path / name, stage="2d", max_steps=3, **kw))
        curves[name] = [r["err2d_px"] for r in read_metrics(tmp_path / name)]
    assert len(curves["plain"]) == 3
    assert curves["scale"] == curves["plain"]
    assert curves["rle"][0] == curves["plain"][0] and curves["rle"][1:] != curves["plain"][1:]
    with pytest.raises(ValueError, match="confidence_loss"):
        resolve(train_config(train_data, tmp_path / "x", confidence_loss="gauss"))
