"""The pose network: presets, shapes, masks, patch selection, ablations, checkpoints, and an overfit run."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from timm.models.swin_transformer import SwinTransformer
from torch.utils.flop_counter import FlopCounterMode

from h36m.model import (MEAN_POSE_2D, PRESETS, ModelConfig, ModelOutput, PoseNetwork, SpatialEncoder, build_model,
                   load_pretrained_spatial)

TINY = PRESETS["tiny"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny_images(b=2, v=4, f=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, v, f, 3, 64, 64, generator=g)


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return build_model(TINY).eval()


# ---------------------------------------------------------------- configuration

def test_presets_roundtrip_through_json():
    assert {"tiny", "paper", "paper_f8", "paper_f32", "paper_f128", "paper_rf9", "paper_rf27"} <= set(PRESETS)
    for name, cfg in PRESETS.items():
        d = json.loads(json.dumps(cfg.to_dict()))
        assert ModelConfig.from_dict(d) == cfg, name
        # TOML has no null: every leaf is a bool / int / float / str or a list of them
        stack = [d]
        while stack:
            for value in stack.pop().values():
                if isinstance(value, dict):
                    stack.append(value)
                else:
                    assert isinstance(value, (bool, int, float, str, list)), (name, value)
    assert PRESETS["paper_f8"].relations.max_frames == 8 and PRESETS["paper_f32"].relations.max_frames == 32
    assert PRESETS["paper"].relations.max_frames == 128 and PRESETS["paper"].lifter.receptive_field == 81
    assert PRESETS["paper_rf9"].lifter.receptive_field == 9 and PRESETS["paper_rf27"].lifter.receptive_field == 27


def test_config_overrides_and_errors():
    cfg = replace(TINY, spatial=replace(TINY.spatial, keep_ratio=0.5))
    assert cfg.spatial.keep_ratio == 0.5 and TINY.spatial.keep_ratio == 1.0
    assert ModelConfig.from_dict({"spatial": {"keep_ratio": 0.5}}).spatial.keep_ratio == 0.5
    with pytest.raises(KeyError):
        ModelConfig.from_dict({"spatial": {"no_such_field": 1}})
    with pytest.raises(ValueError):
        build_model(replace(TINY, spatial=replace(TINY.spatial, img_size=60)))
    with pytest.raises(ValueError):
        build_model(replace(TINY, spatial=replace(TINY.spatial, keep_ratio=0.0)))


# ---------------------------------------------------------------- tiny: shapes, gradients, masks

def test_tiny_forward_backward():
    torch.manual_seed(0)
    net = build_model(TINY)
    out = net(tiny_images())
    assert isinstance(out, ModelOutput)
    assert out.joints2d.shape == (2, 4, 8, 17, 2) and out.joints3d.shape == (2, 4, 8, 17, 3)
    assert torch.isfinite(out.joints2d).all() and torch.isfinite(out.joints3d).all()
    assert out.joints3d[..., 0, :].abs().max() == 0  # root-relative
    assert out.log_scale2d.shape == (2, 4, 8, 17) and torch.isfinite(out.log_scale2d).all()
    (out.joints2d.sum() + 1e-3 * out.joints3d.sum() + out.log_scale2d.sum()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert net.head.queries.grad.abs().sum() > 0
    assert isinstance(net, PoseNetwork) and net.cfg is TINY
    for part in (net.spatial, net.relations, net.head, net.lifter):
        assert n_params(part) > 0


def test_head_starts_at_mean_pose(tiny_net):
    with torch.no_grad():
        j2d = tiny_net(tiny_images(1, 2, 3)).joints2d
    err = (j2d - torch.tensor(MEAN_POSE_2D)).abs().max().item()
    assert err < 0.03, err


@pytest.mark.parametrize("v,f", [(1, 1), (2, 5), (3, 8), (4, 32)])
def test_tiny_any_frames_and_views(tiny_net, v, f):
    with torch.no_grad():
        out = tiny_net(tiny_images(1, v, f))
    assert out.joints2d.shape == (1, v, f, 17, 2) and out.joints3d.shape == (1, v, f, 17, 3)
    assert torch.isfinite(out.joints2d).all()


def test_too_many_frames_or_views_rejected(tiny_net):
    with pytest.raises(ValueError):
        tiny_net(tiny_images(1, 1, TINY.relations.max_frames + 1))
    with pytest.raises(ValueError):
        tiny_net(tiny_images(1, 5, 1))


def test_missing_views_do_not_leak(tiny_net):
    x = tiny_images(2, 4, 3)
    mask = torch.tensor([[True, False, True, True], [False, False, True, False]])
    with torch.no_grad():
        a = tiny_net(x, view_mask=mask)
        y = x.clone()
        y[~mask] = torch.randn_like(y[~mask]) * 5  # change only the missing views' images
        b = tiny_net(y, view_mask=mask)
        full = tiny_net(x)
        none = tiny_net(x, view_mask=torch.zeros(2, 4, dtype=torch.bool))
    assert torch.allclose(a.joints2d[mask], b.joints2d[mask], atol=1e-5)
    assert torch.allclose(a.joints3d[mask], b.joints3d[mask], atol=1e-2)
    assert torch.isfinite(a.joints2d).all() and torch.isfinite(none.joints2d).all()
    # without the mask the present views do see the other views
    assert (full.joints2d[mask] - a.joints2d[mask]).abs().max() > 1e-5
    # an all-present mask is the same as no mask
    with torch.no_grad():
        same = tiny_net(x, view_mask=torch.ones(2, 4, dtype=torch.bool))
    assert torch.allclose(same.joints2d, full.joints2d, atol=1e-6)


def test_lift_api():
    torch.manual_seed(0)
    net = build_model(TINY).eval()
    with torch.no_grad():
        out = net(tiny_images(1, 2, 5))
        lifted = net.lift(out.joints2d.flatten(0, 1) * 2 - 1)      # the crop taken as its own frame
    assert lifted.shape == (2, 5, 17, 3)
    assert torch.allclose(lifted.reshape(1, 2, 5, 17, 3), out.joints3d, atol=1e-3)
    no_lift = build_model(replace(TINY, lift=False))
    assert no_lift(tiny_images(1, 1, 2)).joints3d is None
    assert isinstance(no_lift.lifter, torch.nn.Module)  # still there, for the lifting stage


# ---------------------------------------------------------------- relations: E_time, E_3D

def test_time_and_view_embeddings_matter(tiny_net):
    x = tiny_images(1, 3, 6)
    rel = tiny_net.relations
    with torch.no_grad():
        base = tiny_net(x).joints2d
        rel.use_time_embedding = False
        no_time = tiny_net(x).joints2d
        rel.use_time_embedding = True
        rel.use_view_embedding = False
        no_view = tiny_net(x).joints2d
        rel.use_view_embedding = True
    assert (base - no_time).abs().max() > 1e-4
    assert (base - no_view).abs().max() > 1e-4


def test_embeddings_break_permutation_symmetry():
    """Without E_3D the network is equivariant to reordering views, without E_time to reordering frames;
    with them it is not: the embeddings are what tells views and frames apart."""
    torch.manual_seed(0)
    net = build_model(replace(TINY, lift=False)).eval()
    x = tiny_images(1, 3, 4)
    pv, pf = torch.tensor([2, 0, 1]), torch.tensor([3, 1, 0, 2])

    def run(images):
        with torch.no_grad():
            return net(images).joints2d

    def view_gap():
        return (run(x[:, pv]) - run(x)[:, pv]).abs().max().item()

    def frame_gap():
        return (run(x[:, :, pf]) - run(x)[:, :, pf]).abs().max().item()

    assert view_gap() > 1e-4 and frame_gap() > 1e-4
    net.relations.use_view_embedding = False
    assert view_gap() < 1e-5
    net.relations.use_time_embedding = False
    assert frame_gap() < 1e-5


# ---------------------------------------------------------------- patch selection

def test_selection_path_reproduces_swin():
    """The sparse path (tokens gathered, masked window attention, gathered patch merging) at keep 1.0 is
    exactly timm's Swin, shifted windows included; so pretrained weights keep their meaning."""
    torch.manual_seed(0)
    for stage in (0, 1):
        enc = SpatialEncoder(replace(TINY.spatial, keep_ratio=0.5, select_stage=stage)).eval()
        x = torch.randn(3, 3, 64, 64)
        with torch.no_grad():
            dense = enc.swin.forward_features(x)
            sparse = enc._forward_selected(x, 1.0)
        assert torch.allclose(dense, sparse.grid, atol=1e-4)
        assert torch.allclose(dense.mean((1, 2)), sparse.pooled, atol=1e-4)


def test_selection_keeps_fewer_tokens_and_fewer_flops():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    flops = {}
    for keep in (1.0, 0.5):
        enc = SpatialEncoder(replace(TINY.spatial, keep_ratio=keep)).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            feats = enc(x)
        flops[keep] = fc.get_total_flops()
        assert feats.grid.shape == (2, 4, 4, 128)
        if keep < 1:
            assert feats.keep.shape == (2, 4, 4) and feats.keep.sum().item() == 2 * round(keep * 16)
            assert (feats.grid[~feats.keep] == 0).all()
    assert flops[0.5] < 0.75 * flops[1.0], flops


def test_selection_trains_the_scorer():
    torch.manual_seed(0)
    net = build_model(replace(TINY, spatial=replace(TINY.spatial, keep_ratio=0.5)))
    out = net(tiny_images(1, 2, 2))
    assert out.joints2d.shape == (1, 2, 2, 17, 2) and torch.isfinite(out.joints2d).all()
    out.joints2d.square().sum().backward()
    assert net.spatial.scorer.query.grad.abs().sum() > 0
    assert net.spatial.scorer.key.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- checkpointing, pretrained weights

def test_grad_checkpointing_gives_same_grads():
    torch.manual_seed(0)
    cfg = replace(TINY, spatial=replace(TINY.spatial, keep_ratio=0.5))
    a = build_model(cfg)
    b = build_model(replace(cfg, grad_checkpointing=True))
    b.load_state_dict(a.state_dict())
    x = tiny_images(1, 2, 3)
    grads = []
    for net in (a, b):
        out = net(x)
        (out.joints2d.sum() + 1e-3 * out.joints3d.sum() + out.log_scale2d.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4), name


def test_load_pretrained_spatial(tmp_path):
    torch.manual_seed(0)
    s = TINY.spatial
    ref = SwinTransformer(img_size=s.img_size, patch_size=s.patch_size, embed_dim=s.embed_dim, depths=s.depths,
                          num_heads=s.num_heads, window_size=s.window_size, num_classes=1000).eval()
    path = tmp_path / "swin.pth"
    torch.save({"model": ref.state_dict()}, path)
    net = build_model(TINY)
    unused = load_pretrained_spatial(net, path)
    assert unused == []
    for name, p in net.spatial.swin.state_dict().items():
        assert torch.equal(p, ref.state_dict()[name]), name
    with torch.no_grad():
        assert torch.allclose(net.spatial.swin.forward_features(torch.ones(1, 3, 64, 64)),
                              ref.forward_features(torch.ones(1, 3, 64, 64)))
    other = SwinTransformer(img_size=64, patch_size=4, embed_dim=32, depths=(2, 2), num_heads=(1, 2), window_size=4)
    torch.save(other.state_dict(), path)
    with pytest.raises(ValueError):
        load_pretrained_spatial(build_model(TINY), path)


# ---------------------------------------------------------------- paper preset

def test_paper_parameter_counts():
    with torch.device("meta"):
        net = build_model(PRESETS["paper"])
    spatial = n_params(net.spatial)
    assert abs(spatial - 27.52e6) < 0.01 * 27.52e6, spatial  # Swin-T without its classifier
    c = 768
    blocks = PRESETS["paper"].relations.depth_time + PRESETS["paper"].relations.depth_views
    expected = blocks * (12 * c * c + 13 * c) + (128 + 4) * c + 2 * c
    assert n_params(net.relations) == expected
    assert 9.4e6 < n_params(net.lifter) < 9.8e6
    assert n_params(net.head) < 1e6


def test_paper_forward_backward_small():
    torch.manual_seed(0)
    net = build_model(replace(PRESETS["paper_f8"], lifter=replace(PRESETS["paper"].lifter, receptive_field=9)))
    x = torch.randn(1, 2, 1, 3, 224, 224)
    out = net(x, view_mask=torch.tensor([[True, True]]))
    assert out.joints2d.shape == (1, 2, 1, 17, 2) and out.joints3d.shape == (1, 2, 1, 17, 3)
    assert torch.isfinite(out.joints2d).all() and torch.isfinite(out.joints3d).all()
    out.joints2d.sum().backward()
    assert torch.isfinite(net.spatial.swin.patch_embed.proj.weight.grad).all()


def test_paper_views_frames_and_mask():
    torch.manual_seed(0)
    net = build_model(PRESETS["paper_f8"]).eval()  # with the rf-81 PoseFormer
    x = torch.randn(1, 3, 1, 3, 224, 224)
    mask = torch.tensor([[True, False, True]])
    with torch.no_grad():
        out = net(x, view_mask=mask)  # the missing view's image is not run through Swin
        x[:, 1] = 0
        again = net(x, view_mask=mask)
    assert out.joints2d.shape == (1, 3, 1, 17, 2) and out.joints3d.shape == (1, 3, 1, 17, 3)
    assert torch.isfinite(out.joints2d).all() and torch.isfinite(out.joints3d).all()
    assert torch.allclose(out.joints2d[mask], again.joints2d[mask], atol=1e-5)
    with pytest.raises(ValueError):
        net(torch.zeros(1, 1, 9, 3, 224, 224))  # more frames than paper_f8's relations take


# ---------------------------------------------------------------- learning

def blob_clips(b=3, v=2, f=4, size=64, seed=0):
    """Images with one bright blob; the target pose is the mean pose centred on the blob."""
    g = torch.Generator().manual_seed(seed)
    centre = 0.3 + 0.4 * torch.rand(b, v, f, 2, generator=g)
    grid = (torch.arange(size) + 0.5) / size
    ys, xs = torch.meshgrid(grid, grid, indexing="ij")
    d2 = (xs - centre[..., 0, None, None]) ** 2 + (ys - centre[..., 1, None, None]) ** 2
    blob = torch.exp(-d2 / (2 * 0.06 ** 2))[:, :, :, None].expand(-1, -1, -1, 3, -1, -1)
    images = (blob - 0.3) / 0.3 + 0.1 * torch.randn(b, v, f, 3, size, size, generator=g)
    target = torch.tensor(MEAN_POSE_2D) - 0.5 + centre[..., None, :]
    return images, target


def test_tiny_overfits_a_few_clips():
    torch.manual_seed(0)
    net = build_model(TINY)
    images, target = blob_clips()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.0)
    with torch.no_grad():
        first = (net(images).joints2d - target).abs().mean().item()
    for _ in range(150):
        loss = (net(images).joints2d - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = (net(images).joints2d - target).abs().mean().item()
    assert last < first / 10, (first, last)  # reaches ~first / 25
