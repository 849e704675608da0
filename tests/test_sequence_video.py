"""`h36m show --pred / --run`: one sequence rendered as a GIF / MP4 a person can watch."""
from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from fixtures_shard import extracted  # noqa: F401  (fixture)
from fixtures_train import run2d, runlift, train_data  # noqa: F401  (fixtures)
from h36m.cli import main
from h36m.h36m_tools.cameras import project
from h36m.h36m_tools.video import iter_frames, probe
from h36m.pipelines.evaluate.sequence_video import HEIGHT, WIDTH, SequenceVideoConfig, load_clip


def _prediction_files(extracted, tmp_path, key="S9/Walking_1"):
    """A 2-D file of the ground truth in each camera's nominal frame, and a 3-D file (VideoPose3D's positions_3d,
    world metres) of the truth with every joint but the root moved 30 mm along world x."""
    from h36m.pipelines.extract.dataset import list_sequences, read_sequence
    from h36m.h36m_tools.cameras import Camera, nominal_camera
    from h36m.pipelines.interchange.npzfile import vp3d_action

    path = next(p for p in list_sequences(extracted, ("S9",)))
    meta, a = read_sequence(path, with_jpeg=False)
    action = vp3d_action(meta.sequence)
    views = [project(a.pose3d_cam[:, v].astype(float), nominal_camera(Camera.from_dict(meta.camera_params[v]))[0].intrinsics)
             for v in range(len(meta.cameras))]
    np.savez(tmp_path / "det.npz", positions_2d={"S9": {action: [x.astype(np.float32) for x in views]}})
    world = a.pose3d.astype(float).copy()
    world[:, 1:, 0] += 30.0
    np.savez(tmp_path / "pred3d.npz", positions_3d={"S9": {action: (world / 1000).astype(np.float32)}})
    return meta, a


def test_show_pred_draws_the_predictions_where_they_are(extracted, tmp_path):
    meta, a = _prediction_files(extracted, tmp_path)
    clip = load_clip(SequenceVideoConfig(out=tmp_path / "x.gif", data=str(extracted), sequence=meta.key,
                                         pred=(str(tmp_path / "det.npz"), str(tmp_path / "pred3d.npz"))))
    # nominal frame -> video pixels -> crop pixels: on the true 2-D
    assert clip.pred2d.shape == clip.true2d.shape == (len(a.frame), 4, 17, 2)
    np.testing.assert_allclose(clip.pred2d, clip.true2d, atol=0.05)
    # 3-D seen from the first camera, root-aligned: every non-root joint 30 mm off
    np.testing.assert_allclose(clip.errors, 30.0 * 16 / 17, atol=0.05)


def test_show_pred_writes_a_gif_and_a_still(extracted, tmp_path):
    meta, a = _prediction_files(extracted, tmp_path)
    out = tmp_path / "clip [S9].gif"
    res = CliRunner().invoke(main, ["show", "--pred", str(tmp_path / "det.npz"), "--pred", str(tmp_path / "pred3d.npz"),
                                    "--data", str(extracted), "--sequence", meta.key, "--out", str(out),
                                    "--still", "5"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert f"{len(a.frame)} frames, mean per-frame MPJPE 28.2 mm" in res.output
    info = probe(out)
    assert (info.width, info.height) == (WIDTH, HEIGHT)
    frames = list(iter_frames(out, info))
    assert len(frames) == len(a.frame)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 1       # it moves
    import cv2

    still = cv2.imread(str(out.with_suffix(".png")))
    assert still.shape == (HEIGHT, WIDTH, 3)
    red = (still[..., 2] > 180) & (still[..., 1] < 80) & (still[..., 0] < 80)       # right-side bones drawn
    assert red[:, : WIDTH // 2].sum() > 20 and red[:, WIDTH // 2:].sum() > 20


def test_show_run_renders_the_lifters_3d_as_mp4(runlift, train_data, tmp_path):
    out = tmp_path / "lift.mp4"
    res = CliRunner().invoke(main, ["show", "--run", str(runlift), "--data", str(train_data.extracted), "--out",
                                    str(out), "--max-frames", "12"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    line = res.output.strip().splitlines()[-1]                      # after the progress bar
    assert line.startswith("S9/") and "12 frames, mean per-frame MPJPE" in line, res.output
    assert 0 < float(line.split("MPJPE ")[1].split(" mm")[0]) < 1000
    info = probe(out)
    assert (info.width, info.height) == (WIDTH, HEIGHT) and len(list(iter_frames(out, info))) == 12


def test_show_refuses_in_one_line(extracted, tmp_path):
    res = CliRunner().invoke(main, ["show", "--pred", str(tmp_path / "none.npz"), "--data", str(extracted),
                                    "--out", str(tmp_path / "x.avi")])
    assert res.exit_code == 1 and "must be a .gif or .mp4" in res.output
    np.savez(tmp_path / "empty.npz", other=np.zeros(3))
    res = CliRunner().invoke(main, ["show", "--pred", str(tmp_path / "empty.npz"), "--data", str(extracted),
                                    "--out", str(tmp_path / "x.gif")])
    assert res.exit_code == 1 and "nothing to show" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.gif").exists()


def test_evaluate_links_one_clip_per_action(runlift, train_data, tmp_path):
    from h36m.pipelines.extract.dataset import list_sequences, read_meta

    out = tmp_path / "ev"
    res = CliRunner().invoke(main, ["evaluate", "--run", str(runlift), "--data", str(train_data.extracted),
                                    "--clips", "4", "--no-triangulate", "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    actions = {read_meta(p).action for p in list_sequences(train_data.extracted, ("S9", "S11"))}
    md = (out / "results.md").read_text()
    links = [line for line in md.splitlines() if line.startswith("- [") and "](clips/" in line]
    assert sorted(line[3:line.index("]")] for line in links) == sorted(actions)
    for line in links:
        clip = out / line[line.index("(") + 1:-1]
        info = probe(clip)
        assert (info.width, info.height) == (WIDTH, HEIGHT) and len(list(iter_frames(clip, info))) == 4
