"""PoseFormer lifter: shapes, receptive fields, sliding windows, and a short fit on projected poses."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from h36m.model import PRESETS, LifterConfig, PoseFormer


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 17-joint H36M-like skeleton in mm, body frame: x to the subject's left, y down, z forward; hip at 0.
SKELETON_MM = torch.tensor([
    [0, 0, 0], [-130, 0, 0], [-130, 450, 0], [-130, 890, 0], [130, 0, 0], [130, 450, 0], [130, 890, 0],
    [0, -230, 0], [0, -480, 0], [0, -560, -60], [0, -680, 0], [160, -450, 0], [420, -450, 0], [650, -450, 0],
    [-160, -450, 0], [-400, -300, 100], [-520, -120, 250],
], dtype=torch.float32)


def _rot(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """(...,) angles -> (..., 3, 3): rotation about y (vertical), then x, then z."""
    cy, sy, cp, sp, cr, sr = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin(), roll.cos(), roll.sin()
    o, z = torch.ones_like(yaw), torch.zeros_like(yaw)
    ry = torch.stack([cy, z, sy, z, o, z, -sy, z, cy], -1).reshape(*yaw.shape, 3, 3)
    rx = torch.stack([o, z, z, z, cp, -sp, z, sp, cp], -1).reshape(*yaw.shape, 3, 3)
    rz = torch.stack([cr, -sr, z, sr, cr, z, z, z, o], -1).reshape(*yaw.shape, 3, 3)
    return rz @ rx @ ry


def make_sequences(n: int, t: int, generator: torch.Generator):
    """n sequences of t frames of a rotating skeleton seen by a pinhole camera.

    Returns screen-normalised 2-D (n, t, 17, 2) in [-1, 1] and root-relative camera 3-D (n, t, 17, 3) mm."""
    def u(*shape, lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(*shape, generator=generator)
    steps = torch.arange(t, dtype=torch.float32) - t // 2
    yaw = u(n, 1, hi=2 * math.pi) + u(n, 1, lo=-0.05, hi=0.05) * steps
    pitch = u(n, 1, lo=-0.25, hi=0.25).expand(n, t)
    roll = u(n, 1, lo=-0.15, hi=0.15).expand(n, t)
    pose = SKELETON_MM @ _rot(yaw, pitch, roll).transpose(-1, -2)  # (n, t, 17, 3) root-relative
    root = torch.stack([u(n, lo=-600, hi=600), u(n, lo=-300, hi=300), u(n, lo=4000, hi=6000)], -1)
    cam = pose + root[:, None, None]
    focal, centre, size = 1150.0, 500.0, 1000.0
    pix = focal * cam[..., :2] / cam[..., 2:] + centre
    return pix / size * 2 - 1, pose


def mpjpe(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).norm(dim=-1).mean().item()


@pytest.mark.parametrize("rf", [9, 27, 81])
@pytest.mark.parametrize("seq2seq", [False, True])
def test_shapes_and_root_relative(rf: int, seq2seq: bool):
    cfg = LifterConfig(receptive_field=rf, seq2seq=seq2seq, joint_dim=8, depth_spatial=1, depth_temporal=1,
                       num_heads=2)
    net = PoseFormer(cfg)
    x = torch.rand(2, rf, 17, 2) * 2 - 1
    y = net(x)
    assert y.shape == ((2, rf, 17, 3) if seq2seq else (2, 1, 17, 3))
    assert torch.isfinite(y).all()
    assert y[:, :, 0].abs().max() == 0  # root-relative
    short = net(x[:, :5])  # fewer frames than the receptive field
    assert short.shape[1] == (5 if seq2seq else 1)
    with pytest.raises(ValueError):
        net(torch.zeros(1, rf + 2, 17, 2))
    seq = net.predict_sequence(torch.rand(2, rf + 7, 17, 2))
    assert seq.shape == (2, rf + 7, 17, 3)


def test_even_receptive_field_rejected():
    with pytest.raises(ValueError):
        PoseFormer(LifterConfig(receptive_field=8))


def test_centre_mode_uses_the_whole_window():
    torch.manual_seed(0)
    net = PoseFormer(replace(PRESETS["tiny"].lifter, seq2seq=False)).eval()
    x = torch.rand(1, 9, 17, 2) * 2 - 1
    y0 = net(x)
    x2 = x.clone()
    x2[:, 0] += 0.3  # perturb the first frame only: the centre prediction must react
    assert (net(x2) - y0).abs().max() > 1e-3


def test_predict_sequence_matches_windows():
    torch.manual_seed(0)
    net = PoseFormer(PRESETS["tiny"].lifter).eval()
    x = torch.rand(2, 12, 17, 2) * 2 - 1
    seq = net.predict_sequence(x)
    # frame 6's window is frames 2..10; frame 0's window is frame 0 repeated 4 times then frames 0..4
    assert torch.allclose(seq[:, 6], net(x[:, 2:11])[:, 0], atol=1e-4)
    first = torch.cat([x[:, :1].expand(-1, 4, -1, -1), x[:, :5]], dim=1)
    assert torch.allclose(seq[:, 0], net(first)[:, 0], atol=1e-4)


def test_param_count_paper_rf81():
    net = PoseFormer(PRESETS["paper"].lifter)
    n = sum(p.numel() for p in net.parameters())
    assert 9.4e6 < n < 9.8e6  # PoseFormer paper: 9.6M at 81 frames


def test_fit_recovers_3d_from_projection():
    """After a short fit the lifter maps projected poses back to 3-D far better than the mean pose."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = replace(PRESETS["tiny"].lifter, seq2seq=False, joint_dim=8, depth_spatial=1, depth_temporal=1,
                  drop_path_rate=0.0)
    net = PoseFormer(cfg)
    x_test, y_test = make_sequences(256, cfg.receptive_field, gen)
    y_test = y_test[:, cfg.receptive_field // 2]
    _, y_train = make_sequences(2048, cfg.receptive_field, gen)
    baseline = mpjpe(y_train[:, cfg.receptive_field // 2].mean(0), y_test)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 300
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        x, y = make_sequences(64, cfg.receptive_field, gen)
        loss = (net(x)[:, 0] - y[:, cfg.receptive_field // 2]).norm(dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        err = mpjpe(net(x_test)[:, 0], y_test)
    assert baseline > 150  # the trivial answer is far off
    assert err < 0.4 * baseline, (err, baseline)  # reaches ~0.28 x; side views keep some depth ambiguity
