"""`h36m demo`: the whole chain end to end (a small version in the suite; the full one on request)."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from h36m.cli import main

SMALL = ["--subjects", "S1,S9", "--actions", "Walking", "--frames", "32", "--epochs-2d", "1",
         "--epochs-lift", "2", "--epochs-triangulate", "1"]


def test_small_demo_runs_the_chain_and_continues_where_it_stopped(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(main, ["demo", "--out", str(out)] + SMALL, catch_exceptions=False, terminal_width=160)
    assert res.exit_code == 0, res.output
    for text in ("synth", "extract", "shard", "train-2d", "predict", "train-lift", "evaluate",
                 "Protocol #1: MPJPE (mm)", "Mean pose", "PoseFormer, GT 2-D", "PoseFormer, pred.npz",
                 "Triangulated (4 views), GT 2-D", "Triangulated (2 views), pred.npz",
                 "Triangulated robust (4 views), pred.npz", "Absolute MPJPE", "Ours vs mean-pose baseline, MPJPE",
                 "train-triangulate", "predict-triangulate", "Triangulated (4 views), pred_triangulate.npz",
                 "PoseFormer fused (4 views), pred.npz", "Trained through triangulation", "report in"):
        assert text in res.output, text
    state = json.loads((out / "demo.json").read_text())
    assert state["done"] == ["synth", "extract", "shard", "train-2d", "predict", "train-lift", "train-triangulate",
                             "predict-triangulate"]
    report = json.loads((out / "report" / "results.json").read_text())
    assert report["subjects"] == ["S9"] and report["frames"]["Mean pose"] == 4 * 32 and report["stage"] == "lift"
    assert report["frames"]["PoseFormer, pred.npz"] == 4 * 32 and report["flip"]
    assert report["frames"]["PoseFormer fused (4 views), pred.npz"] == 32
    assert report["frames"]["Triangulated (4 views), pred_triangulate.npz"] == 32
    assert json.loads((out / "runs" / "triangulate" / "config.json").read_text())["train"]["init"] == str(
        out / "runs" / "2d")
    assert json.loads((out / "runs" / "2d" / "config.json").read_text())["train"]["stage"] == "2d"
    assert json.loads((out / "runs" / "lift" / "config.json").read_text())["train"]["init"] == str(out / "runs" / "2d")
    # again: nothing is redone (same files), the report is rebuilt
    video = next((out / "raw" / "S1" / "Videos").glob("*.mp4"))
    before = (video.stat().st_mtime_ns, (out / "runs" / "2d" / "checkpoint.pt").stat().st_mtime_ns)
    res = CliRunner().invoke(main, ["demo", "--out", str(out)] + SMALL, catch_exceptions=False, terminal_width=160)
    assert res.exit_code == 0, res.output
    assert res.output.count("already done") == 8
    assert before == (video.stat().st_mtime_ns, (out / "runs" / "2d" / "checkpoint.pt").stat().st_mtime_ns)
    # other options on the same folder: refused in one line
    res = CliRunner().invoke(main, ["demo", "--out", str(out), "--frames", "30"] + SMALL[:4])
    assert res.exit_code == 1 and "other options" in res.output and len(res.output.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("H36M_FULL_DEMO"), reason="the full demo takes minutes: set H36M_FULL_DEMO=1")
def test_full_demo_trained_triangulation_beats_after_the_fact_and_the_lifter_in_10_minutes(tmp_path):
    """The demo's defaults: the triangulate run's 4-view DLT below the 2d run's after-the-fact one and below the
    lifter, every lifting row below the mean pose, the chain within 10 minutes (on 2 quiet cores)."""
    from h36m.pipelines.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(out=tmp_path / "demo"))
    assert result.report.subjects == ["S9", "S11"]
    assert all(i.reduction > 0 for i in result.improvement), [(i.metric, i.ours, i.baseline) for i in
                                                              result.improvement]
    assert all(g.reduction > 0 for g in result.geometry), [(g.ours, g.baseline) for g in result.geometry]
    assert sum(result.seconds.values()) < 600


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("H36M_FULL_TOUR"), reason="the README's tour takes minutes: set H36M_FULL_TOUR=1")
def test_the_readme_tour_as_written_trains_models_that_beat_the_mean_pose(tmp_path):
    """bench/run_tour.py: the README's tour block in a fresh folder; the 2-D network above the mean 2-D pose's AP,
    the lifter on the tour's own predicted 2-D at least 10 % below the mean pose's MPJPE."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(repo / "bench" / "run_tour.py"), "--dir", str(tmp_path / "tour")],
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "ok: Table I AP" in proc.stdout and "ok: Table II MPJPE" in proc.stdout
