"""`h36m train`: schedule, config, checkpoints, the stages, exact resume (also after Ctrl-C), and 2-process DDP."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:             # Python 3.10
    import tomli as tomllib

import pytest
import torch

from fixtures_train import cli, python, replace, run2d, runlift, train_config, train_data  # noqa: F401
from h36m.h36m_tools.errors import H36MError
from h36m.pipelines.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from h36m.pipelines.train.schedule import make_scheduler, warmup_cosine
from h36m.pipelines.train.loop import read_metrics, resume, train
from h36m.pipelines.train.config import TrainConfig, build_config, resolve, to_dict, to_toml

REPO = Path(__file__).resolve().parents[1]


def losses(run) -> list[tuple[int, float, float]]:
    return [(m["step"], m["loss"], m["lr"]) for m in read_metrics(run)]


# ----- pure parts ------------------------------------------------------------------------------------------------

def test_warmup_then_cosine():
    lrs = [warmup_cosine(s, 100, 20, 1e-3, 1e-5) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-3 / 21)
    assert all(a < b for a, b in zip(lrs[:20], lrs[1:21]))              # linear warm-up
    assert lrs[19] == pytest.approx(1e-3 * 20 / 21) and lrs[20] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:]))             # cosine decay
    assert lrs[60] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))         # half way down at the middle
    assert lrs[100] == pytest.approx(1e-5)
    # the torch scheduler applies the same rates, and its state survives a weights_only round trip
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = make_scheduler(opt, 100, 20, 0.01)
    seen = []
    for _ in range(30):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(lrs[:30])


def test_recipe_toml_and_cli_precedence(tmp_path):
    paper = resolve(TrainConfig(shards="x.tar", preset="paper"))
    assert (paper.epochs, paper.lr, paper.weight_decay, paper.warmup_epochs) == (100, 1e-3, 0.05, 20)
    tiny = resolve(TrainConfig(shards="x.tar", preset="tiny", epochs=10))
    assert tiny.warmup_epochs == pytest.approx(2.0)                       # 20 % of the epochs, like the paper
    f = tmp_path / "c.toml"
    f.write_text('preset = "tiny"\nepochs = 7\nlr = 0.005\nshards = "a.tar"\n[model.lifter]\nreceptive_field = 27\n')
    cfg = resolve(build_config(f, epochs=3, lr=None, out="r"))
    assert (cfg.epochs, cfg.lr, cfg.shards, cfg.out) == (3, 0.005, "a.tar", "r")   # the option wins, None does not
    assert cfg.model == {"lifter": {"receptive_field": 27}}
    # the resolved config written to a run folder reads back to the same config
    back = tomllib.loads(to_toml(to_dict(cfg), cfg.model))
    assert TrainConfig(**back) == cfg
    bad = tmp_path / "bad.toml"
    bad.write_text("epochz = 3\n")
    with pytest.raises(H36MError, match="bad.toml: unknown setting.*epochz"):
        build_config(bad)
    bad.write_text("epochs = \n")
    with pytest.raises(H36MError, match="not valid TOML"):
        build_config(bad)
    with pytest.raises(ValueError, match="stage"):
        resolve(TrainConfig(shards="a.tar", stage="3d"))


def test_checkpoint_atomic_weights_only_and_rng(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(3.0)}, "rng": rng_state(), "config": {"a": [1, None]}})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]             # no temporary file left
    expected = torch.rand(4)
    state = load_checkpoint(path)
    set_rng_state(state["rng"])
    assert torch.equal(torch.rand(4), expected)
    # weights_only: a pickle that would run code is refused, with the file named
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))
    torch.save({"format": 1, "model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(H36MError, match="evil.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(H36MError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(H36MError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing")


# ----- real runs on the tiny shards -------------------------------------------------------------------------------

def test_2d_run_folder_and_frozen_lifter(run2d):
    from h36m.model import ModelConfig, build_model

    cfg = tomllib.loads((run2d / "config.toml").read_text())
    assert cfg["stage"] == "2d" and cfg["model"]["spatial"]["img_size"] == 64
    rows = read_metrics(run2d)
    assert [r["step"] for r in rows] == list(range(1, 9))                # 9 clips, batch 2 -> 4 steps x 2 epochs
    assert all(math.isfinite(r["loss"]) and r["images_per_s"] > 0 and 0 <= r["data_wait"] <= 1 for r in rows)
    assert rows[0]["lr"] < rows[1]["lr"]                                 # warm-up
    assert list((run2d / "tb").glob("events.out.tfevents.*"))
    state = load_checkpoint(run2d)
    assert state["done"] and state["step"] == 8 and state["stats"]["count"] > 0
    torch.manual_seed(0)                                                 # the run's initialisation (seed 0, rank 0)
    fresh = build_model(ModelConfig.from_dict(state["config"]["model"])).state_dict()
    for name, w in state["model"].items():
        same = torch.equal(w, fresh[name])
        if name.startswith("lifter."):
            assert same, f"{name} changed in the 2d stage"
    assert not torch.equal(state["model"]["head.queries"], fresh["head.queries"])


def test_lift_stage_trains_only_the_lifter(run2d, runlift):
    a, b = load_checkpoint(run2d)["model"], load_checkpoint(runlift)["model"]
    for name in a:
        if name.startswith("lifter."):
            continue
        assert torch.equal(a[name], b[name]), f"{name} changed in the lift stage"
    assert not torch.equal(a["lifter.head.1.weight"], b["lifter.head.1.weight"])
    rows = read_metrics(runlift)
    mm = [r["mpjpe_mm"] for r in rows]
    assert sum(mm[-3:]) / 3 < 0.7 * sum(mm[:3]) / 3, mm                  # it learns


def test_resume_reproduces_the_unbroken_run(train_data, run2d, tmp_path):
    out = tmp_path / "broken"
    first = train(train_config(train_data, out, stage="2d", max_steps=3))
    assert (first.steps, first.done) == (3, False)
    assert load_checkpoint(out)["step"] == 3
    done = resume(out, max_steps=None)
    assert (done.steps, done.done) == (8, True)
    a, b = losses(run2d), losses(out)
    assert [s for s, _, _ in b] == list(range(1, 9))
    for (s, la, ra), (_, lb, rb) in zip(a, b):
        assert lb == pytest.approx(la, abs=1e-6) and rb == pytest.approx(ra, rel=1e-12), s
    wa, wb = load_checkpoint(run2d)["model"], load_checkpoint(out)["model"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_ctrl_c_saves_and_the_cli_resumes(train_data, run2d, tmp_path):
    out = tmp_path / "sigint"
    cmd = [python(), "-m", "h36m", "train", "--shards", train_data.train, "--out", str(out), "--stage", "2d",
           "--epochs", "2", "--batch-size", "2", "--workers", "1", "--seed", "0", "--checkpoint-every", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "error: interrupted" in output and "checkpoint saved at step" in output
    stopped = load_checkpoint(out)["step"]
    assert 2 <= stopped < 8 and not load_checkpoint(out)["done"]
    result = cli("train", "--out", out, "--resume")
    assert "step 8/8, complete" in result.output
    assert [x for _, x, _ in losses(out)] == pytest.approx([x for _, x, _ in losses(run2d)], abs=1e-6)


def test_piped_output_gets_a_progress_line_at_a_steady_interval(train_data, tmp_path):
    """Under a scheduler or `| tee` (stdout not a terminal) the bar cannot redraw: train prints a plain line every
    H36M_PROGRESS_EVERY seconds with the step, rate, loss and time left, and no terminal control codes."""
    import re

    cmd = [python(), "-m", "h36m", "train", "--shards", train_data.train, "--out", str(tmp_path / "piped"), "--epochs",
           "3", "--batch-size", "2", "--workers", "1", "--checkpoint-every", "0"]
    env = {**os.environ, "H36M_PROGRESS_EVERY": "0.2"}
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300,
                          env=env)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = re.compile(r"epoch (\d)/3: (\d+)/12 steps \(\d+ %\), ([\d.]+) steps/s, loss (-?[\d.]+), lr [\d.e+-]+, "
                      r"\d+ img/s, wait \d+%, \d:\d\d:\d\d elapsed, \d:\d\d:\d\d left$")
    found = [line.match(x) for x in proc.stdout.splitlines()]
    found = [m for m in found if m]
    # 12 steps of a few tenths of a second each: a line after (nearly) every step, never two for one step
    assert len(found) >= 4, proc.stdout
    steps = [int(m[2]) for m in found]
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and steps[-1] >= 10
    assert all(float(m[3]) > 0 and math.isfinite(float(m[4])) for m in found)
    assert [int(m[1]) for m in found] == sorted(int(m[1]) for m in found)
    assert "\x1b[" not in proc.stdout and "\r" not in proc.stdout and took < 300
    assert "step 12/12, complete" in proc.stdout


def test_torchrun_two_processes_on_cpu(train_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [python(), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "h36m", "train",
           "--shards", train_data.train, "--out", str(out), "--epochs", "2", "--batch-size", "2", "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 process(es) on cpu" in proc.stdout
    ranks = [[json.loads(x) for x in (out / "ranks" / f"rank-{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    # 9 clips over 2 ranks x batch 2: 2 steps per epoch on each rank, the same on both
    assert [x["step"] for x in ranks[0]] == [x["step"] for x in ranks[1]] == [1, 2, 3, 4]
    assert [x["step"] for x in read_metrics(out)] == [1, 2, 3, 4]
    for a, b in zip(*ranks):
        assert a["loss"] != b["loss"]                                     # different data on each rank ...
        assert a["weights"] == pytest.approx(b["weights"], rel=1e-9)      # ... the same weights after every step
    for a, b, m in zip(*ranks, read_metrics(out)):
        assert m["loss"] == pytest.approx((a["loss"] + b["loss"]) / 2, rel=1e-6)
    assert load_checkpoint(out)["world_size"] == 2


def test_bad_input_gives_one_line_errors(train_data, run2d, tmp_path):
    from click.testing import CliRunner

    from h36m.cli import main

    def run(*args):
        r = CliRunner().invoke(main, [str(a) for a in args])
        return r.exit_code, r.output.strip()

    code, out = run("train", "--out", tmp_path / "none", "--resume")
    assert code == 1 and out.startswith("error:") and "checkpoint not found" in out and len(out.splitlines()) == 1
    code, out = run("train", "--shards", train_data.train, "--out", run2d)
    assert code == 1 and "already holds a run" in out and len(out.splitlines()) == 1
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\0" * 10)
    code, out = run("train", "--data", train_data.extracted, "--out", tmp_path / "x", "--stage", "lift", "--init",
                    junk)
    assert code == 1 and "junk.pt: not a readable checkpoint" in out and len(out.splitlines()) == 1
    code, out = run("train", "--shards", str(tmp_path / "nothing-*.tar"), "--out", tmp_path / "y")
    assert code == 1 and "no shards match" in out and len(out.splitlines()) == 1
