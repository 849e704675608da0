"""The 2-D stage as the paper trains and reports it: pretrained starts, the crop augmentation, E_3D per camera,
weight decay, the comparison presets, Table I's metrics, several runs side by side, the GPU benchmark's smoke run."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures_train import cli, run2d, runlift, train_data  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]


# ----- pretrained starts -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def timm_checkpoints(tmp_path_factory):
    """timm's own swin_tiny_patch4_window7_224 and vit_base_patch16_224, random weights in the real key layout."""
    import timm

    root = tmp_path_factory.mktemp("timm")
    torch.manual_seed(1)
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    torch.save(swin.state_dict(), root / "swin_t.pth")
    vit = timm.create_model("vit_base_patch16_224", pretrained=False)
    torch.save({"model": vit.state_dict()}, root / "vit_b.pth")          # a wrapped one, as some releases are
    return root / "swin_t.pth", root / "vit_b.pth"


def test_paper_trains_from_timm_swin_and_vit_checkpoints(timm_checkpoints, train_data, tmp_path):
    """One step of `paper` (lr 1e-9: the step leaves the weights where they started) from the two checkpoints: the
    spatial module holds the Swin weights, the relation blocks the first ViT blocks, and the CLI says so."""
    from h36m.pipelines.train.checkpoint import load_checkpoint

    swin_file, vit_file = timm_checkpoints
    out = tmp_path / "paper"
    res = cli("train", "--shards", train_data.train, "--out", out, "--preset", "paper_f8", "--stage", "2d",
              "--epochs", "1", "--batch-size", "1", "--max-steps", "1", "--workers", "0", "--lr", "1e-9",
              "--no-augment", "--pretrained-spatial", swin_file, "--pretrained-relations", vit_file)
    assert "pretrained spatial:" in res.output and "pretrained relations:" in res.output and "unused" in res.output
    net = load_checkpoint(out)["model"]
    swin = torch.load(swin_file, weights_only=True)
    vit = torch.load(vit_file, weights_only=True)["model"]
    for name in ("layers.2.blocks.3.attn.qkv.weight", "patch_embed.proj.weight", "layers.3.blocks.1.mlp.fc2.bias"):
        assert torch.allclose(net["spatial.swin." + name], swin[name], atol=1e-6), name
    for part in ("time_blocks", "view_blocks"):
        for name in ("0.attn.qkv.weight", "1.mlp.fc1.weight", "1.norm2.bias"):
            assert torch.allclose(net[f"relations.{part}.{name}"], vit["blocks." + name], atol=1e-6), (part, name)


def test_damaged_or_wrong_checkpoints_get_one_line(timm_checkpoints, train_data, tmp_path):
    from h36m.cli import main
    from click.testing import CliRunner

    swin_file, vit_file = timm_checkpoints
    cut = tmp_path / "cut.pth"
    cut.write_bytes(swin_file.read_bytes()[: swin_file.stat().st_size // 3])
    for flag, path, words in (("--pretrained-spatial", cut, "not a readable torch checkpoint"),
                              ("--pretrained-spatial", vit_file, "not a Swin checkpoint"),
                              ("--pretrained-relations", tmp_path / "nope.pth", "not found")):
        res = CliRunner().invoke(main, ["train", "--shards", train_data.train, "--out", str(tmp_path / flag),
                                        "--preset", "paper_f8", "--max-steps", "1", "--workers", "0", flag, str(path)])
        lines = [x for x in res.output.splitlines() if x.strip()]
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert lines[-1].startswith("error:") and str(path) in lines[-1] and words in lines[-1], res.output


# ----- augmentation ----------------------------------------------------------------------------------------------

def _dots(size: int, points: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """(n, S, S) images: one Gaussian dot each, centred at points[i] (pixel centres at integer coordinates)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    return np.stack([np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2)) for x, y in points])


def _centroid(img: np.ndarray) -> np.ndarray:
    i, j = np.unravel_index(np.argmax(img), img.shape)
    lo_i, lo_j = max(i - 5, 0), max(j - 5, 0)
    win = img[lo_i: i + 6, lo_j: j + 6]
    win = np.where(win > 0.05 * win.max(), win, 0)
    ys, xs = np.mgrid[lo_i: lo_i + win.shape[0], lo_j: lo_j + win.shape[1]]
    return np.array([(xs * win).sum() / win.sum(), (ys * win).sum() / win.sum()])


def test_augmented_labels_stay_on_the_augmented_dot():
    """mmpose's ranges, every view its own transform, its frames the same one: a dot drawn at a joint is found under
    the moved label (< 0.5 px) wherever it stays inside the crop."""
    from h36m.pipelines.train.augment import MMPOSE, augment_views

    size, b, v, f = 64, 8, 4, 2
    rng = np.random.default_rng(0)
    pts = rng.uniform(24, 40, (b, v, f, 2))                      # near the middle: most stay inside
    joints = np.zeros((b, v, f, 17, 2))
    joints[..., 5, :] = pts
    img = _dots(size, pts.reshape(-1, 2)).reshape(b, v, f, 1, size, size)
    images = torch.from_numpy(np.repeat(img, 3, axis=3)).float()
    out, moved = augment_views(images, torch.from_numpy(joints / size).float(), MMPOSE,
                               torch.Generator().manual_seed(3))
    moved = moved.numpy() * size
    checked, worst = 0, 0.0
    for i in np.ndindex(b, v, f):
        lab = moved[i][5]
        if (lab < 6).any() or (lab > size - 7).any():
            continue
        worst = max(worst, float(np.abs(_centroid(out[i][0].numpy()) - lab).max()))
        checked += 1
    assert checked >= 40 and worst < 0.5, (checked, worst)
    assert np.abs(moved[..., 5, :] - pts).max() > 5                 # the transforms did move the labels


def test_augmentation_is_one_transform_per_view_for_all_its_frames():
    from h36m.pipelines.train.augment import MMPOSE, augment_views

    size = 64
    joints = torch.rand(2, 4, 3, 17, 2)
    joints[:, :, 1:] = joints[:, :, :1]                          # every frame of a view: the same pose
    images = torch.rand(2, 4, 3, 3, size, size)
    images[:, :, 1:] = images[:, :, :1]
    out, moved = augment_views(images, joints, MMPOSE, torch.Generator().manual_seed(0))
    assert torch.allclose(moved[:, :, 1:], moved[:, :, :1].expand_as(moved[:, :, 1:]), atol=1e-6)
    assert torch.allclose(out[:, :, 1:], out[:, :, :1].expand_as(out[:, :, 1:]), atol=1e-5)
    assert not torch.allclose(moved[:, 0], moved[:, 1], atol=1e-3)   # views: their own transforms


# ----- E_3D per camera, weight decay, presets ----------------------------------------------------------------------

def test_a_three_view_clip_gives_its_cameras_what_the_four_view_clip_gives_them():
    """S11 Directions with --min-views 3: cameras 0, 2, 3 in slots 0-2. Their outputs equal those of the same
    cameras in a 4-view clip with camera 1 masked out, because E_3D follows the camera, not the slot."""
    from h36m.model import PRESETS, build_model

    torch.manual_seed(0)
    net = build_model(dataclasses.replace(PRESETS["tiny"], lift=False)).eval()
    with torch.no_grad():
        net.relations.view_embed.normal_(0, 1.0)             # embeddings far apart: a slot mix-up shows
    images = torch.randn(1, 4, 4, 3, 64, 64)
    four = net(images, torch.tensor([[True, False, True, True]]), torch.tensor([[0, 1, 2, 3]])).joints2d
    three_images = torch.zeros_like(images)
    three_images[:, :3] = images[:, [0, 2, 3]]
    mask3 = torch.tensor([[True, True, True, False]])
    three = net(three_images, mask3, torch.tensor([[0, 2, 3, 0]])).joints2d
    assert torch.allclose(three[:, :3], four[:, [0, 2, 3]], atol=1e-5)
    by_slot = net(three_images, mask3).joints2d                    # the old behaviour: embeddings by slot
    assert not torch.allclose(by_slot[:, 1:3], four[:, [2, 3]], atol=1e-3)


def test_loader_batches_carry_each_views_rig_position(train_data):
    from h36m.h36m_tools.cameras import CAMERA_IDS
    from h36m.pipelines.loader.loader import LoaderConfig, make_loader

    seen_three = False
    for batch in make_loader(LoaderConfig(train_data.test, batch_size=2, workers=0, equal_batches=False)):
        for b, meta in enumerate(batch["meta"]):
            n = int(batch["view_mask"][b].sum())
            assert batch["view_index"][b, :n].tolist() == [CAMERA_IDS.index(c) for c in meta["cameras"]]
            seen_three |= n == 3
    assert seen_three                           # S11 Directions: 3 views, cameras 1-3 in slots 0-2


def test_embeddings_and_tables_are_out_of_weight_decay():
    from h36m.model import PRESETS, build_model
    from h36m.pipelines.train.loop import _param_groups

    net = build_model(PRESETS["tiny"])
    decay, no_decay = _param_groups(net, 0.05)
    names = {id(p): n for n, p in net.named_parameters()}
    free = {names[id(p)] for p in no_decay["params"]}
    assert {"relations.time_embed", "relations.view_embed", "head.queries", "lifter.joint_pos",
            "lifter.frame_pos"} <= free
    assert "relations.time_blocks.0.attn.qkv.weight" in {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_presets_for_the_papers_comparisons():
    from h36m.model import PRESETS, build_model

    base = PRESETS["paper_baseline"]
    assert not base.relations.enabled and build_model(dataclasses.replace(base, lift=False)).relations is None
    no_time, no_3d = PRESETS["paper_no_time"], PRESETS["paper_no_3d"]
    assert no_time.relations.depth_time == 0 and not no_time.relations.use_time_embedding
    assert no_time.relations.depth_views == 2 and no_time.relations.use_view_embedding
    assert no_3d.relations.depth_views == 0 and not no_3d.relations.use_view_embedding
    assert [PRESETS[f"paper_f{n}"].relations.max_frames for n in (8, 32, 128)] == [8, 32, 128]
    tiny_base = dataclasses.replace(PRESETS["tiny"], lift=False,
                                    relations=dataclasses.replace(PRESETS["tiny"].relations, depth_time=0,
                                                                  depth_views=0, use_time_embedding=False,
                                                                  use_view_embedding=False))
    net = build_model(tiny_base).eval()
    with torch.no_grad():            # without relations, each image is on its own: another view changes nothing
        x = torch.randn(1, 2, 2, 3, 64, 64)
        y = x.clone()
        y[:, 1] = torch.randn(1, 2, 3, 64, 64)
        assert torch.allclose(net(x).joints2d[:, 0], net(y).joints2d[:, 0], atol=1e-6)


# ----- Table I ----------------------------------------------------------------------------------------------------

def _coco_ap_ar(oks: np.ndarray) -> tuple[float, float]:
    """COCO's AP and AR for one person per image, every detection scored 1 (in image order), from its OKS: at each
    threshold 0.50:0.05:0.95 a precision-recall curve interpolated at 101 recall points; AR the recall."""
    aps, ars = [], []
    n = len(oks)
    for t in np.linspace(0.5, 0.95, 10):
        tp = np.cumsum(oks >= t)
        fp = np.cumsum(oks < t)
        recall, precision = tp / n, tp / np.maximum(tp + fp, 1)
        for i in range(n - 1, 0, -1):                    # precision made monotone, as COCO does
            precision[i - 1] = max(precision[i - 1], precision[i])
        pts = [precision[np.searchsorted(recall, r, side="left")] if (recall >= r).any() else 0.0
               for r in np.linspace(0, 1, 101)]
        aps.append(np.mean(pts))
        ars.append(recall[-1])
    return float(np.mean(aps)), float(np.mean(ars))


def test_table_one_metrics_agree_with_hand_computed_values(realdata):
    """On the real H36M joints and a real detector's output: OKS with the tight joint box's area, AP/AR, PCK by the
    crop side, MSE in network-input and full-frame px, each computed by hand."""
    from h36m.h36m_tools import metrics as M
    from h36m.pipelines.evaluate.evaluate import ViewClip, table2d

    d = np.load(realdata / "metric_inputs.npz")
    gt, det = d["gt2d_px"].astype(float), d["det2d_px"].astype(float)
    lo, hi = gt.min(axis=1), gt.max(axis=1)
    centre, side = (lo + hi) / 2, 1.2 * (hi - lo).max(axis=1)
    box = np.concatenate([centre - side[:, None] / 2, centre + side[:, None] / 2], axis=1)      # the 1.2x crop box
    n = len(gt)
    z3 = np.zeros((n, 17, 3))
    view = ViewClip("S9", "Directions 1", "Directions", "54138969", np.arange(n), gt, det, det, box, z3, z3, z3, z3,
                    np.ones(n, bool))
    row = next(r for r in table2d([view], input_size=224) if r.method == "Ours")
    # hand: OKS with the tight box of the true joints as the area (not the 1.2x crop box)
    area = np.prod(hi - lo, axis=1)
    k = 2 * M.OKS_SIGMAS17
    d2 = ((det - gt) ** 2).sum(-1)
    oks = np.exp(-d2 / (2 * area[:, None] * k ** 2)).mean(-1)
    assert np.allclose(M.oks_frames(det, gt, area), oks)
    ap, ar = _coco_ap_ar(oks)
    assert row.ap == pytest.approx(ap, abs=1e-6) and row.ar == pytest.approx(ar, abs=1e-6)
    crop_box_ap = M.oks_ap_ar(det, gt, box)[0]
    assert crop_box_ap != pytest.approx(ap, abs=1e-3)                       # the crop box's area is more lenient
    err = np.linalg.norm(det - gt, axis=-1)
    for t in (0.05, 0.2):
        assert row.pck[f"PCK@{t:g}"] == pytest.approx((err <= t * side[:, None]).mean())
    scale = (224 / side)[:, None, None]
    assert row.mse_input_px2 == pytest.approx((((det - gt) * scale) ** 2).mean())
    assert row.mse_px2 == pytest.approx(((det - gt) ** 2).mean())
    assert row.mean_px == pytest.approx(err.mean())


def test_several_runs_side_by_side(run2d, train_data, tmp_path):
    """`h36m evaluate --run A --run B`: each run's report, one table with a row per run (Table I / III), files;
    the trainer's epoch times are in it."""
    from h36m.pipelines.train.loop import read_metrics

    epochs = read_metrics(run2d, "epoch")
    assert epochs and all(e["epoch_time_s"] > 0 and e["images_per_s"] > 0 for e in epochs)
    import shutil

    other = tmp_path / "2d-again"                   # a second 2-D run (runlift is a sequence lifter: Table II)
    shutil.copytree(run2d, other, ignore=shutil.ignore_patterns("eval"))
    res = cli("evaluate", "--run", run2d, "--run", other, "--shards", train_data.test, "--out", tmp_path / "cmp",
              "--workers", "1", "--no-plots")
    assert "Table I / Table III" in res.output and res.output.count(" tiny ") >= 2, res.output
    md = (tmp_path / "cmp" / "compare.md").read_text()
    rows = [x for x in md.splitlines() if x.startswith("| ") and "Run" not in x]
    assert len(rows) == 2 and rows[0].split("|")[1].strip() == Path(run2d).name
    assert rows[0].split("|")[3].strip() == "8"                                    # F: 8-frame test clips
    epoch_time = float(rows[0].split("|")[-2])
    assert epoch_time == pytest.approx(float(np.median([e["epoch_time_s"] for e in epochs if e["whole"]])), abs=0.06)
    assert (Path(run2d) / "eval" / "results.md").exists() and (other / "eval" / "results.md").exists()


# ----- the GPU benchmark ------------------------------------------------------------------------------------------

def test_gpu_benchmark_runs_its_cpu_smoke_test(train_data, tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--steps", "2", "--work",
                          str(tmp_path), "--shards", train_data.train], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "device: cpu (smoke test, tiny)" in res.stdout and "trainer (tiny, real loader):" in res.stdout
    rows = [x.split() for x in res.stdout.splitlines() if x.startswith("tiny ")]
    assert rows and rows[0][1] == "8" and float(rows[0][2]) > 0           # preset, F, images/s
