"""GPU benchmark of the paper's model: bf16 training throughput, peak memory at 128 frames, and the trainer fed by the
real loader. One command, under 5 minutes on one GPU:

    .venv/bin/python bench/bench_gpu.py [--work /tmp/bench_gpu] [--steps 20]

Rows (each measured in this run):
  * step: forward + backward + AdamW step of `paper` and `paper_baseline` (no image relations) on one in-memory
    batch of B = 1 clip x 4 views x F frames (F = 8 and 32), bf16 autocast, TF32 on: images/s (views x frames) and
    peak memory. `paper_baseline / paper` is the relations module's price.
  * memory at F = 128: `paper` with gradient checkpointing, B = 1: peak memory of one training step.
  * trainer: `h36m.pipelines.train.loop.train` on real shards (synth -> extract -> shard at the preset's crop size) with
    its loader workers: images/s, the share of each step spent waiting for data (data wait) and its complement
    (the share the device computes or is fed), from metrics.jsonl.
Without a CUDA device it runs the same code on the CPU with `tiny` (F = 8, a few steps): a smoke test the test suite
runs; its numbers say nothing about a GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import time
from pathlib import Path


def step_rate(preset: str, frames: int, device, steps: int, grad_checkpointing: bool = False,
              batch: int = 1) -> dict:
    """Images/s and peak memory (MiB, CUDA only) of the bare training step of `preset` on `device`."""
    import torch

    from h36m.model import PRESETS, build_model, normalise_images

    torch.manual_seed(0)
    cfg = dataclasses.replace(PRESETS[preset], lift=False, grad_checkpointing=grad_checkpointing)
    net = build_model(cfg).to(device)
    opt = torch.optim.AdamW([p for n, p in net.named_parameters() if not n.startswith("lifter.")], lr=1e-4)
    size = cfg.spatial.img_size
    images = torch.randint(0, 255, (batch, 4, frames, 3, size, size), dtype=torch.uint8, device=device)
    target = torch.rand(batch, 4, frames, 17, 2, device=device)
    cuda = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(steps + 2):
        if cuda:
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        with amp:
            loss = (net(normalise_images(images, cfg.spatial)).joints2d.float() - target).norm(dim=-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize(device)
        if i >= 2:                                   # the first steps allocate and tune kernels
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if cuda else float("nan")
    del net, opt, images
    if cuda:
        torch.cuda.empty_cache()
    return {"preset": preset, "frames": frames, "images_per_s": round(batch * 4 * frames / statistics.median(times), 1),
            "peak_mib": round(peak, 0), "grad_checkpointing": grad_checkpointing}


def build_shards(work: Path, crop: int, frames: int) -> Path:
    """Training shards of a small synthetic release at `crop` px, `frames`-frame clips (made once under `work`)."""
    from h36m.pipelines.extract.extract import plan_extract, run_extract
    from h36m.pipelines.extract.plan import ExtractConfig
    from h36m.pipelines.shards.writer import ShardConfig, write_shards
    from h36m.pipelines.synth.release import SynthConfig, run_synth

    sh = work / f"shards_{crop}_{frames}"
    if (sh / "train-index.json").exists():
        return sh
    run_synth(SynthConfig(out=work / "raw", subjects=("S1", "S5"), sequences_per_subject=2, frames=96, workers=2))
    ecfg = ExtractConfig(raw=work / "raw", out=work / f"ex_{crop}", size=crop, min_views=3, workers=2)
    run_extract(ecfg, plan_extract(ecfg))
    write_shards(ShardConfig(extracted=work / f"ex_{crop}", out=sh, frames=frames, split="train", shard_mb=8.0))
    return sh


def trainer_rate(shards: str, work: Path, preset: str, steps: int, workers: int, device: str) -> dict:
    """The trainer on real shards through its loader: images/s and data-wait share (medians after 3 steps)."""
    from h36m.pipelines.train.config import TrainConfig
    from h36m.pipelines.train.loop import read_metrics, train

    out = work / f"run_{preset}"
    shutil.rmtree(out, ignore_errors=True)
    train(TrainConfig(shards=shards, out=str(out), preset=preset, stage="2d", epochs=100, batch_size=1,
                      workers=workers, max_steps=steps, checkpoint_every=0, device=device))
    rows = read_metrics(out)[3:] or read_metrics(out)
    wait = statistics.median(r["data_wait"] for r in rows)
    return {"preset": preset, "images_per_s": round(statistics.median(r["images_per_s"] for r in rows), 1),
            "data_wait": round(wait, 3), "busy": round(1 - wait, 3)}


def run(work: Path, steps: int, shards: str | None = None, workers: int = 4) -> dict:
    """Every row for this machine: the GPU rows with a CUDA device, else the CPU smoke rows (`tiny`)."""
    import torch

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    presets = ("paper", "paper_baseline") if gpu else ("tiny",)
    lengths = (8, 32) if gpu else (8,)
    out = {"device": torch.cuda.get_device_name(0) if gpu else "cpu (smoke test, tiny)", "steps": [],
           "memory": None, "trainer": None}
    for preset in presets:
        for frames in lengths:
            out["steps"].append(step_rate(preset, frames, device, steps))
    if gpu:
        out["memory"] = step_rate("paper", 128, device, max(2, steps // 5), grad_checkpointing=True)
    crop, frames = (224, 32) if gpu else (64, 8)
    urls = shards or str(build_shards(work, crop, frames) / "train-*.tar")
    out["trainer"] = trainer_rate(urls, work, presets[0], steps + 3, workers if gpu else 1, device.type)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_gpu"))
    ap.add_argument("--steps", type=int, default=20, help="Timed steps per row (the CPU smoke test: use few).")
    ap.add_argument("--shards", default=None, help="Training shard URLs to use instead of making some.")
    ap.add_argument("--workers", type=int, default=4, help="Loader workers of the trainer row (GPU).")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    r = run(args.work, args.steps, args.shards, args.workers)
    print(f"device: {r['device']}")
    print(f"{'preset':16} {'F':>4} {'images/s':>10} {'peak MiB':>9}")
    for s in r["steps"]:
        print(f"{s['preset']:16} {s['frames']:>4} {s['images_per_s']:>10} {s['peak_mib']:>9}")
    if r["memory"]:
        m = r["memory"]
        print(f"{m['preset']:16} {m['frames']:>4} {m['images_per_s']:>10} {m['peak_mib']:>9}  (gradient checkpointing)")
    t = r["trainer"]
    print(f"trainer ({t['preset']}, real loader): {t['images_per_s']} images/s, data wait {t['data_wait']:.1%}, "
          f"busy {t['busy']:.1%}")
    print(f"took {time.perf_counter() - t0:.0f} s")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
