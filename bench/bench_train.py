"""Benchmark of `h36m train`: the training loop's throughput against the bare model step measured in the same run.

    .venv/bin/python bench/bench_train.py [--work /tmp/bench_train] [--steps 40]

Baseline: forward + backward + AdamW step of the same network on a batch already in memory (uint8 images normalised
the way the trainer does). Measured: `h36m.pipelines.train.loop.train` on real shards (synth -> extract -> shard), read from
its metrics.jsonl (median over the steps after the first few). Ratio = trainer / bare (1.0 = no loop overhead);
data_wait = the share of the step spent waiting for the loader. The 2d stage (the lift stage: bench_lift.py).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path


def build_shards(work: Path) -> Path:
    from h36m.pipelines.extract.extract import plan_extract, run_extract
    from h36m.pipelines.extract.plan import ExtractConfig
    from h36m.pipelines.shards.writer import ShardConfig, write_shards
    from h36m.pipelines.synth.release import SynthConfig, run_synth

    sh = work / "shards"
    if (sh / "train-index.json").exists():
        return sh
    run_synth(SynthConfig(out=work / "raw", subjects=("S1", "S5"), sequences_per_subject=2, frames=64, workers=2))
    ecfg = ExtractConfig(raw=work / "raw", out=work / "ex", size=64, min_views=3, workers=2)
    run_extract(ecfg, plan_extract(ecfg))
    write_shards(ShardConfig(extracted=work / "ex", out=sh, frames=8, split="train", shard_mb=1.0))
    return sh


def bare_step_rate(stage: str, batch: int, steps: int) -> float:
    """Images (views x frames) per second of the bare training step on an in-memory batch."""
    import dataclasses

    import torch

    from h36m.model import PRESETS, build_model
    from h36m.model import normalise_images

    torch.manual_seed(0)
    net = build_model(dataclasses.replace(PRESETS["tiny"], lift=False))
    params = [p for n, p in net.named_parameters() if n.startswith("lifter.") == (stage == "lift")]
    opt = torch.optim.AdamW(params, lr=1e-3)
    images = torch.randint(0, 255, (batch, 4, 8, 3, 64, 64), dtype=torch.uint8)
    target = torch.rand(batch, 4, 8, 17, 2)
    target3d = torch.randn(batch * 4, 8, 17, 3) * 300
    times = []
    for i in range(steps):
        t = time.perf_counter()
        if stage == "2d":
            loss = (net(normalise_images(images, net.cfg.spatial)).joints2d - target).norm(dim=-1).mean()
        else:
            loss = (net.lift(target.flatten(0, 1)) - target3d).norm(dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return batch * 32 / statistics.median(times)


def trainer_rate(shards: Path, work: Path, stage: str, batch: int, steps: int) -> tuple[float, float]:
    from h36m.pipelines.train.loop import read_metrics, train
    from h36m.pipelines.train.config import TrainConfig

    out = work / f"run_{stage}"
    shutil.rmtree(out, ignore_errors=True)
    train(TrainConfig(shards=str(shards / "train-*.tar"), out=str(out), stage=stage, epochs=100, batch_size=batch,
                      workers=1, max_steps=steps, checkpoint_every=0, augment=False))
    rows = read_metrics(out)[3:]
    return statistics.median(r["images_per_s"] for r in rows), statistics.median(r["data_wait"] for r in rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_train"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    shards = build_shards(args.work)
    results = {}
    for stage in ("2d",):            # the lift stage: bench/bench_lift.py (whole sequences, no shards)
        bare = bare_step_rate(stage, args.batch, max(args.steps // 2, 8))
        rate, wait = trainer_rate(shards, args.work, stage, args.batch, args.steps)
        results[stage] = {"bare_img_s": round(bare, 1), "trainer_img_s": round(rate, 1),
                          "ratio": round(rate / bare, 3), "data_wait": round(wait, 3)}
    print(f"{'stage':6} {'bare img/s':>11} {'trainer img/s':>14} {'ratio':>6} {'data wait':>10}")
    for stage, r in results.items():
        print(f"{stage:6} {r['bare_img_s']:>11} {r['trainer_img_s']:>14} {r['ratio']:>6} {r['data_wait']:>10.1%}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
