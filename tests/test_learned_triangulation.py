"""Training through the views' geometry: the differentiable triangulation (model.triangulation) against the numpy DLT
and finite differences, and lift-then-fuse (h36m_tools.triangulate.fuse_lifted)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures_train import run2d, train_config, train_data  # noqa: F401  (fixtures)
from h36m.h36m_tools.cameras import bundled, camera_to_world, world_to_camera
from h36m.h36m_tools.triangulate import fuse_lifted, triangulate_dlt
from h36m.model.triangulation import camera_tensors, crop_to_frame, triangulate, undistort


def scene(seed: int = 0, frames: int = 6, subject: str = "S9"):
    """(world (F, 17, 3) mm, points (4, F, 17, 2) px with 2 px noise, cameras, camera dicts): a person-sized cloud
    of points in the middle of the H36M room seen by the subject's four real cameras (1000 px frames)."""
    rng = np.random.default_rng(seed)
    world = rng.normal([0.0, 0.0, 900.0], [300.0, 300.0, 500.0], size=(frames, 17, 3))
    cams = bundled().cameras(subject)
    points = np.stack([c.project(world) for c in cams]) + rng.normal(0, 2.0, (4, frames, 17, 2))
    dicts = [{**c.intrinsics.to_dict(), **c.extrinsics.to_dict()} for c in cams]
    return world, points, cams, dicts


def torch_points(points: np.ndarray) -> torch.Tensor:
    """(V, F, J, 2) numpy -> (F, J, V, 2) float64: the views next to the coordinates, as `triangulate` takes them."""
    return torch.from_numpy(points).permute(1, 2, 0, 3).contiguous()


@pytest.mark.parametrize("refine", [0, 2])
def test_triangulation_equals_the_numpy_dlt(refine):
    world, points, cams, dicts = scene()
    rng = np.random.default_rng(1)
    weights = rng.uniform(0.05, 1.0, points.shape[:-1])
    weights[2, 0] = 0.0                                          # a view absent for a whole frame
    ours, ok = triangulate(torch_points(points), camera_tensors([dicts], 4),
                           torch.from_numpy(weights).permute(1, 2, 0), refine=refine)
    ref = triangulate_dlt(points, cams, weights, refine=refine)
    assert ok.all() and ours.shape == ref.shape
    assert np.abs(ours.numpy() - ref).max() < 1e-6
    # and it is a triangulation: 2 px of noise at 1000 px is tens of mm at worst, not metres
    assert np.linalg.norm(ours.numpy() - world, axis=-1).mean() < 40


@pytest.mark.parametrize("scale", [1e-2, 1e-4])
def test_the_confidences_scale_does_not_change_the_triangulation(scale):
    """A head trained through the triangulation learns only its confidences' ratios (the solution is invariant to a
    common factor), so their size drifts: 0.006-0.08 in the demo. Both solvers must give the same point as with
    weights near 1, not a point left out as singular."""
    world, points, cams, dicts = scene()
    weights = np.random.default_rng(3).uniform(0.3, 1.0, points.shape[:-1])
    ref = triangulate_dlt(points, cams, weights)
    small = triangulate_dlt(points, cams, weights * scale)
    assert np.isfinite(small).all() and np.abs(small - ref).max() < 1e-6
    ours, ok = triangulate(torch_points(points), camera_tensors([dicts], 4),
                           torch.from_numpy(weights * scale).permute(1, 2, 0))
    assert ok.all() and np.abs(ours.numpy() - ref).max() < 1e-6


def test_gradient_matches_finite_differences():
    _, points, _, dicts = scene(frames=1)
    cams = camera_tensors([dicts], 4)
    pts = torch_points(points)[0, :3].clone().requires_grad_(True)                   # (3 joints, 4 views, 2) px
    w = torch.tensor(np.random.default_rng(2).uniform(0.2, 1.0, (3, 4)), requires_grad=True)
    for refine in (0, 1):
        assert torch.autograd.gradcheck(lambda p, c: triangulate(p, cams, c, refine=refine)[0], (pts, w),
                                        eps=1e-6, atol=1e-6, rtol=1e-4)


def test_guards_give_finite_values_and_gradients_where_a_point_is_undetermined():
    _, points, _, dicts = scene(frames=1)
    cams = camera_tensors([dicts], 4)
    pts = torch_points(points)[0, :2].clone().requires_grad_(True)
    w = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    world, ok = triangulate(pts, cams, w)
    assert ok.tolist() == [False, True]                 # one view cannot fix a point; two can
    assert torch.equal(world[0], torch.zeros(3, dtype=torch.float64))
    world.sum().backward()
    assert torch.isfinite(pts.grad).all() and torch.isfinite(w.grad).all()
    assert pts.grad[0].abs().sum() == 0 and pts.grad[1].abs().sum() > 0


def test_undistort_and_crop_map_invert_the_projection_and_the_crop():
    world, points, cams, dicts = scene()
    k = camera_tensors([dicts], 4).intrinsics[0]                                     # (4, 9)
    clean = np.stack([c.project(world) for c in cams])                               # (4, F, 17, 2)
    xy = undistort(torch.from_numpy(clean), k[:, None, None])
    cam = np.stack([world_to_camera(world, c.extrinsics.R, c.extrinsics.t) for c in cams])
    np.testing.assert_allclose(xy.numpy(), cam[..., :2] / cam[..., 2:], atol=1e-9)
    box = torch.tensor([100.0, 50.0, 420.0, 370.0], dtype=torch.float64)
    u = torch.rand(17, 2, dtype=torch.float64)
    px = crop_to_frame(u, box)
    np.testing.assert_allclose(((px - box[:2]) / 320.0).numpy(), u.numpy(), atol=1e-12)


# ----- lift-then-fuse -----------------------------------------------------------------------------------------

def lifted_views(seed: int = 0, noise: float = 15.0):
    """(truth (F, 17, 3) root-relative world mm, lifted (4, F, 17, 3) root-relative camera mm with noise, R (4, 3, 3))
    of the real S9 cameras."""
    world, _, cams, _ = scene(seed)
    truth = world - world[:, :1]
    rng = np.random.default_rng(seed + 10)
    R = np.stack([c.extrinsics.R for c in cams])
    lifted = np.stack([world_to_camera(world, c.extrinsics.R, c.extrinsics.t) for c in cams])
    lifted = lifted - lifted[:, :, :1] + rng.normal(0, noise, lifted.shape)
    return truth, lifted, R


def test_fusing_lifted_views_rotates_them_into_the_world_and_root_aligns():
    truth, lifted, R = lifted_views(noise=0.0)
    fused = fuse_lifted(lifted, R)
    np.testing.assert_allclose(fused, truth, atol=1e-3)            # cameras.json's R: orthonormal to ~1e-8
    assert np.abs(fused[:, 0]).max() < 1e-9
    # one view alone is the same pose: camera_to_world's rotation, without the translation
    np.testing.assert_allclose(camera_to_world(lifted[1], R[1], np.zeros(3)) - fused, 0, atol=1e-3)


def test_fusion_averages_noise_and_a_garbage_view_barely_moves_it():
    truth, lifted, R = lifted_views(noise=15.0)
    clean = fuse_lifted(lifted, R)
    single = np.linalg.norm(camera_to_world(lifted[0], R[0], np.zeros(3)) - truth, axis=-1).mean()
    err_clean = np.linalg.norm(clean - truth, axis=-1).mean()
    assert err_clean < 0.8 * single                       # four noisy views beat one
    bad = lifted.copy()
    bad[2] = np.random.default_rng(5).normal(0, 2000.0, bad[2].shape)          # one view of garbage (metres off)
    fused = fuse_lifted(bad, R)
    mean = np.mean([camera_to_world(bad[v], R[v], np.zeros(3)) for v in range(4)], axis=0)
    mean -= mean[:, :1]
    moved = np.linalg.norm(fused - clean, axis=-1).mean()
    assert moved < 15.0                                   # the noise's size, where the plain mean moves by metres
    assert np.linalg.norm(mean - clean, axis=-1).mean() > 20 * moved
    # a confidence that knows the bad view removes it
    w = np.ones(lifted.shape[:-1])
    w[2] = 0.0
    fused_w = fuse_lifted(bad, R, w)
    np.testing.assert_allclose(fused_w, fuse_lifted(np.delete(lifted, 2, 0), np.delete(R, 2, 0)), atol=1e-6)


# ----- the triangulate stage ----------------------------------------------------------------------------------

def test_shard_ground_truth_through_the_loss_chain_gives_the_world_joints(train_data):
    """crop units -> frame px through the box -> undistorted with the clip's cameras -> triangulated: the shards'
    own 2-D gives their world joints, mirrored clips (the loader's flip, cameras mirrored with them) included."""
    from h36m.model import ModelOutput
    from h36m.pipelines.loader.loader import LoaderConfig, batch_crop_size, make_loader
    from h36m.pipelines.train.losses import triangulation_loss

    loader = make_loader(LoaderConfig(urls=train_data.train, batch_size=2, workers=0, augment=True, seed=3))
    flipped = 0
    for batch in loader:
        crop = batch_crop_size(batch)
        mask = batch["view_mask"].bool()
        target = batch["pose2d"].double() / crop
        cams = camera_tensors(batch["cameras"], mask.shape[1])
        out = ModelOutput(target.clone(), None, None)
        loss, err2d, m = triangulation_loss(out, mask, target, batch["box"].double(), *cams, batch["pose3d"].double())
        assert float(err2d) == 0 and float(m) * 1000 < 1.0, (batch["key"], float(m) * 1000)
        flipped += sum(bool(meta.get("flipped")) for meta in batch["meta"])
    assert flipped > 0


def test_the_3d_loss_reaches_the_joints_and_the_confidences(train_data, run2d):
    from h36m.model import ModelConfig, build_model, normalise_images
    from h36m.pipelines.loader.loader import LoaderConfig, batch_crop_size, make_loader
    from h36m.pipelines.train.checkpoint import load_checkpoint
    from h36m.pipelines.train.losses import triangulation_loss

    state = load_checkpoint(run2d)
    net = build_model(ModelConfig.from_dict(state["config"]["model"]))
    net.load_state_dict(state["model"])
    batch = next(iter(make_loader(LoaderConfig(urls=train_data.train, batch_size=2, workers=0))))
    mask = batch["view_mask"].bool()
    out = net(normalise_images(batch["images"], net.cfg.spatial), mask, batch["view_index"])
    target = batch["pose2d"].float() / batch_crop_size(batch)
    cams = camera_tensors(batch["cameras"], mask.shape[1])
    args = (out, mask, target, batch["box"].double(), *cams, batch["pose3d"].double())
    with_3d, _, m = triangulation_loss(*args, weight3d=1.0)
    (with_3d - triangulation_loss(*args, weight3d=0.0)[0]).backward()            # the 3-D term's gradient alone
    assert torch.isfinite(m) and 0 < float(m) < 2.0            # metres: a poor 2-D network, not a broken chain
    conf = net.head.confidence_parameters()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in conf)
    assert net.head.offset[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())


def test_triangulate_stage_starts_from_a_2d_run_and_resumes_to_the_unbroken_run(train_data, run2d, tmp_path):
    from h36m.pipelines.train.checkpoint import load_checkpoint
    from h36m.pipelines.train.loop import read_metrics, resume, train

    whole = train(train_config(train_data, tmp_path / "whole", stage="triangulate", init=str(run2d), epochs=1))
    broken = train(train_config(train_data, tmp_path / "broken", stage="triangulate", init=str(run2d), epochs=1,
                                max_steps=2))
    assert (broken.steps, broken.done) == (2, False)
    done = resume(tmp_path / "broken")
    assert done.done and done.steps == whole.steps
    a, b = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "broken")
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-6)
    assert all(0 < r["mpjpe_mm"] < 2000 for r in a) and all(r["err2d_px"] > 0 for r in a)
    wa, wb = load_checkpoint(tmp_path / "whole")["model"], load_checkpoint(tmp_path / "broken")["model"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    start = load_checkpoint(run2d)["model"]
    assert not torch.equal(wa["head.scale_joint"], start["head.scale_joint"])       # the confidences trained
    assert torch.equal(wa["lifter.head.1.weight"], start["lifter.head.1.weight"])    # the lifter did not
