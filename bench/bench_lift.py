"""Benchmark of the lift stage: windows per second of training and of whole-sequence testing, against the bare
lifter measured in the same run.

    .venv/bin/python bench/bench_lift.py [--work /tmp/bench_lift] [--preset tiny] [--steps 40]

Train baseline: forward + backward + AdamW step of the preset's lifter on a batch of windows already in memory.
Measured: `h36m train --stage lift` (train.stages) on a synthetic extracted dataset, windows/s read from its
metrics.jsonl (median after the first steps). Test baseline: the lifter's forward on windows in memory; measured:
`train.sequences.lift_sequence` over whole sequences (windows built from the sequence, flip averaging on, which
runs the lifter twice: 0.5 is the expected ratio). Ratios = measured / bare.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path


def build_extracted(work: Path) -> Path:
    from h36m.pipelines.extract.extract import plan_extract, run_extract
    from h36m.pipelines.extract.plan import ExtractConfig
    from h36m.pipelines.synth.release import SynthConfig, run_synth

    ex = work / "ex"
    if (ex / "manifest.json").exists():
        return ex
    run_synth(SynthConfig(out=work / "raw", subjects=("S1",), sequences_per_subject=2, frames=120, workers=2))
    ecfg = ExtractConfig(raw=work / "raw", out=ex, size=64, min_views=3, workers=2)
    run_extract(ecfg, plan_extract(ecfg))
    return ex


def main():
    import torch

    from h36m.model import PRESETS
    from h36m.model.lifter import PoseFormer
    from h36m.pipelines.train.config import TrainConfig, recipe_for
    from h36m.pipelines.train.loop import read_metrics, train
    from h36m.pipelines.train.sequences import inputs, lift_sequence, load_sequences

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_lift"))
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=None)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    ex = build_extracted(args.work)
    cfg = PRESETS[args.preset].lifter
    batch = args.batch or recipe_for(args.preset, "lift").batch_size
    torch.manual_seed(0)
    net = PoseFormer(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch, cfg.receptive_field, 17, 2)
    y = torch.randn(batch, 1, 17, 3) * 300
    times = []
    for i in range(max(args.steps // 2, 8)):
        t = time.perf_counter()
        loss = (net(x) - y).norm(dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    bare_train = batch / statistics.median(times)
    out = args.work / "run"
    shutil.rmtree(out, ignore_errors=True)
    train(TrainConfig(stage="lift", data=str(ex), subjects="S1", out=str(out), preset=args.preset, epochs=100,
                      batch_size=batch, max_steps=args.steps, checkpoint_every=0))
    trainer = statistics.median(r["images_per_s"] for r in read_metrics(out)[3:])
    net.eval()
    with torch.no_grad():
        t = time.perf_counter()
        for _ in range(3):
            net(x)
        bare_test = 3 * batch / (time.perf_counter() - t)
    seqs, _ = load_sequences(ex, ("S1",))
    t = time.perf_counter()
    n = sum(len(lift_sequence(net, inputs(s), flip=True)) for s in seqs)
    test = n / (time.perf_counter() - t)
    res = {"preset": args.preset, "batch": batch, "rf": cfg.receptive_field,
           "train_bare_win_s": round(bare_train, 1), "train_win_s": round(trainer, 1),
           "train_ratio": round(trainer / bare_train, 3), "test_bare_win_s": round(bare_test, 1),
           "test_win_s": round(test, 1), "test_ratio": round(test / bare_test, 3)}
    print(" ".join(f"{k}={v}" for k, v in res.items()))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
