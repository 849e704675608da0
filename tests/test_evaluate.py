"""`h36m evaluate`: the numbers against a direct computation from the shards, the policies, the files, the CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fixtures_train import run2d, train_config, train_data  # noqa: F401  (fixtures)
from h36m.h36m_tools import metrics as M
from h36m.h36m_tools.names import ACTIONS
from h36m.pipelines.train.checkpoint import load_checkpoint
from h36m.pipelines.evaluate.evaluate import METHODS, METRICS_3D, EvalConfig, evaluate, is_damaged
from h36m.pipelines.evaluate.report import settings_lines, to_csv, to_markdown, write_report
from h36m.pipelines.shards.sample import decode_sample, iter_tar_samples
from h36m.pipelines.train.pose_stats import PoseStats


def shard_views(pattern: str):
    """Every (subject, sequence, action, gt root-relative 3-D (T, 17, 3)) view of the test shards, read directly."""
    out = []
    for tar in sorted(Path(pattern).parent.glob(Path(pattern).name)):
        for raw in iter_tar_samples(tar):
            clip = decode_sample(raw)
            real = int(clip.meta["real_frames"])
            for v in range(clip.views):
                cam = clip.pose3d_cam[v, :real].astype(np.float64)
                out.append((clip.meta["subject"], clip.meta["sequence"], clip.meta["action"], cam - cam[:, :1]))
    return out


@pytest.fixture(scope="module")
def report(run2d, train_data):
    return evaluate(EvalConfig(run=str(run2d), shards=train_data.test, workers=1, clip_plots=2))


def test_mean_pose_rows_match_a_direct_computation(report, run2d, train_data):
    every = shard_views(train_data.test)
    views = [x for x in every if (x[0], x[1]) != ("S11", "Directions")]   # never counted, as in Table II
    assert len(views) < len(every)
    assert report.frames == sum(len(g) for *_, g in views) == 3 * 4 * 24 + 2 * 4 * 24
    assert "S11 Directions: left out" in "\n".join(settings_lines(report))
    assert report.subjects == ["S9", "S11"]
    mean3d = PoseStats.from_state(load_checkpoint(run2d)["stats"]).mean3d
    row = report.row("Mean pose", "MPJPE")
    for action in ACTIONS:
        gts = [g for _, _, a, g in views if a == action]
        if not gts:
            assert math.isnan(row.actions[action])
            continue
        gt = np.concatenate(gts)
        assert row.actions[action] == pytest.approx(M.mpjpe(np.broadcast_to(mean3d, gt.shape), gt), abs=1e-6)
    present = [row.actions[a] for a in report.actions]
    assert row.avg == pytest.approx(np.mean(present), abs=1e-9)
    gt = np.concatenate([g for *_, g in views])
    assert row.all_frames == pytest.approx(M.mpjpe(np.broadcast_to(mean3d, gt.shape), gt), abs=1e-6)
    p2 = report.row("Mean pose", "P-MPJPE")
    assert p2.all_frames == pytest.approx(M.p_mpjpe(np.broadcast_to(mean3d, gt.shape), gt), abs=1e-6)
    assert p2.all_frames < row.all_frames
    s9 = np.concatenate([g for s, *_, g in views if s == "S9"])
    assert row.subjects["S9"] == pytest.approx(M.mpjpe(np.broadcast_to(mean3d, s9.shape), s9), abs=1e-6)


def test_every_row_and_the_2d_table(report):
    # a 2d-stage run trains no lifter: its 3-D rows are the mean pose's only, and the report says so
    assert report.stage == "2d" and report.methods3d == ["Mean pose"]
    assert [(r.metric, r.method) for r in report.rows3d] == [(m, "Mean pose") for m in METRICS_3D]
    assert "3-D rows: the mean pose only" in to_markdown(report)
    for r in report.rows3d:
        assert all(math.isfinite(r.actions[a]) for a in report.actions)
        assert math.isfinite(r.avg) and r.avg > 0
    assert [r.method for r in report.rows2d] == ["Mean pose", "Ours"]
    for r in report.rows2d:
        assert 0 <= r.pck["PCK@0.05"] <= r.pck["PCK@0.1"] <= r.pck["PCK@0.2"] <= 1
        assert r.mean_px > 0 and r.mse_px2 > 0 and 0 <= r.ap <= 1 and 0 <= r.ar <= 1
        assert r.curve[0] == 0 and r.curve == sorted(r.curve)
    assert report.damaged_policy == "included" and report.every == 1


def test_a_joint_run_has_the_lifter_rows(run2d, train_data, tmp_path):
    from h36m.pipelines.train.loop import train

    train(train_config(train_data, tmp_path / "joint", stage="joint", init=str(run2d), max_steps=1))
    r = evaluate(EvalConfig(run=str(tmp_path / "joint"), shards=train_data.test, workers=0, plots=False, coco=False))
    assert r.stage == "joint" and r.methods3d == list(METHODS)
    assert [(x.metric, x.method) for x in r.rows3d] == [(m, x) for m in METRICS_3D for x in METHODS]
    assert all(math.isfinite(r.row(m, "MPJPE").avg) for m in METHODS)
    assert "3-D rows" not in to_markdown(r)


def test_exclude_damaged_and_frame_sampling(run2d, train_data, report):
    assert is_damaged("S9", "Greeting") and is_damaged("S9", "SittingDown_1") and not is_damaged("S11", "Greeting")
    r = evaluate(EvalConfig(run=str(run2d), shards=train_data.test, workers=0, exclude_damaged=True, every=2,
                            plots=False, coco=False))
    assert r.damaged_policy == "excluded" and r.every == 2
    assert r.frames == (report.frames - 4 * 24) // 2                       # S9 Greeting gone, every other frame
    assert "Greeting" not in r.actions
    md = to_markdown(r)
    assert "Damaged sequences (S9/Greeting, S9/SittingDown 1, S9/Waiting 1): excluded." in md
    assert "every 2-th frame" in md


def test_report_files_and_plots(report, tmp_path):
    write_report(report, tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["damaged_policy"] == "included" and data["every"] == 1 and len(data["oks_sigmas"]) == 17
    assert {r["method"] for r in data["rows3d"]} == {"Mean pose"}
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert header[3:18] == list(ACTIONS) and header[18:20] == ["Avg", "All"]
    md = (tmp_path / "results.md").read_text()
    assert "| Method | Dir. | Disc. |" in md and "Protocol #2: P-MPJPE (mm)" in md
    # a 2d run's figures show what it trained, its 2-D: PCK and 2 clips, no 3-D bars or untrained lifter's poses
    assert [Path(p).name for p in report.plots][:1] == ["pck.png"] and len(report.plots) == 3
    assert all(c.pred3d is None for c in report.clip_plots)
    for p in report.plots:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(p).stat().st_size > 5000
    import matplotlib.image

    clip, views = matplotlib.image.imread(report.plots[-1]), len(report.clip_plots[-1].images)
    assert clip.shape[0] > 0.6 * views * clip.shape[1]   # one column (2-D of each view, no 3-D panel): ~0.8 x views
    assert sum(line.startswith("3d,") for line in to_csv(report).splitlines()) == len(report.rows3d)


def test_cli_prints_the_table_and_names_the_policies(run2d, train_data, tmp_path):
    from h36m.cli import main

    res = CliRunner().invoke(main, ["evaluate", "--run", str(run2d), "--shards", train_data.test, "--out",
                                    str(tmp_path / "rep"), "--workers", "0", "--exclude-damaged"],
                             catch_exceptions=False, terminal_width=200)
    assert res.exit_code == 0, res.output
    out = res.output
    for text in ("Protocol #1: MPJPE (mm)", "Dir.", "WalkT.", "Avg", "Mean pose", "Ours", "PCK@0.1",
                 "Damaged sequences", "excluded", "Frame sampling: every frame", "plots:",
                 "3-D rows: the mean pose only"):
        assert text in out, text
    assert "PoseFormer, GT 2-D" not in out          # the 2d run's lifter is untrained: no 3-D rows of it
    assert (tmp_path / "rep" / "results.md").exists() and (tmp_path / "rep" / "plots" / "pck.png").exists()
    assert not (tmp_path / "rep" / "plots" / "per_action.png").exists()
    res = CliRunner().invoke(main, ["evaluate", "--run", str(tmp_path / "nope"), "--shards", train_data.test])
    assert res.exit_code == 1 and "checkpoint not found" in res.output and len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(main, ["evaluate", "--run", str(run2d), "--shards", str(tmp_path / "none-*.tar")])
    assert res.exit_code == 1 and "no shards match" in res.output.splitlines()[-1]
