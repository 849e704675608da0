"""Where the loader's CPU goes, stage by stage: CPU microseconds a crop of each stage added in turn, one process.

    .venv/bin/python bench/loader_stages.py [--shards bench/out/loader/shards224_16_noise8_2a] [--rounds 8]

Run `bench/bench_loader.py` first (it writes the shards). The stages, each over the same shards' crops:
  decode          simplejpeg into one reused crop buffer: the decode limit's loop (the buffer stays in L2)
  into batches    the same decoder into the loader's batch layout, buffers rotating as the ImagePool's do
                  (prefetch + 2 of them): what writing every crop to memory costs
  tar + parse     + reading the shards (tarstream) and decode_sample, one shard after the other (no shuffle)
  loader          make_loader(workers=0): + the shuffle buffer, batching, collate, the image pool
  worker          make_loader(workers=1): the worker process's CPU ...
  consumer        ... and the consuming process's (the DataLoader's hand-over; on 2 cores with 2 workers it takes
                  time from the decoding)
Rounds interleave the stages, each about --seconds of CPU (decode: of wall time, bench_loader's loop); medians. A diagnostic for bench_loader's ratios, not a
target: the CPU times are of this process (and for `worker` of its child), so other load on the machine matters less.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", default=str(ROOT / "bench" / "out" / "loader" / "shards224_16_noise8_2a"))
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()

    import torch

    from bench_loader import _decode_loop, _live_children_cpu, crops_of
    from h36m.pipelines.loader.loader import POOL_EXTRA, LoaderConfig, make_loader
    from h36m.pipelines.shards.sample import MAX_VIEWS, decode_into, decode_sample, iter_tar_samples
    from h36m.pipelines.shards.tarstream import iter_samples, iter_tar_files

    torch.set_num_threads(1)
    paths = sorted(Path(args.shards).glob("train-*.tar"))
    if not paths:
        raise SystemExit(f"{args.shards}: no train-*.tar shards (run bench/bench_loader.py first)")
    clips = [decode_sample(raw) for p in paths for raw in iter_tar_samples(p)]
    crops = sum(c.views * c.frames for c in clips)
    cfg = LoaderConfig([str(p) for p in paths], equal_batches=False, workers=0)
    size = int(clips[0].meta["crop_size"])
    pool = [np.empty((cfg.batch_size, MAX_VIEWS, clips[0].frames, size, size, 3), np.uint8)
            for _ in range(cfg.prefetch + POOL_EXTRA)]
    jpegs = [j for c in clips for frames in c.jpeg for j in frames]

    def decode():                                   # bench_loader's decode limit loop, for --seconds
        return _decode_loop((jpegs, args.seconds, "simplejpeg"))

    def slot(i: int) -> np.ndarray:                 # sample i's place in the rotating batch buffers
        return pool[i // cfg.batch_size % len(pool)][i % cfg.batch_size]

    def into_batches():
        for i, c in enumerate(clips):
            decode_into(slot(i), c)
        return crops

    def tar_parse():
        i = 0
        for p in paths:
            with open(p, "rb") as f:
                for raw in iter_samples(iter_tar_files(f), str(p)):
                    decode_into(slot(i), decode_sample(raw))
                    i += 1
        return crops

    in_process = make_loader(cfg)
    with_worker = make_loader(LoaderConfig(cfg.urls, equal_batches=False, workers=1))

    def epoch(loader):
        assert crops_of(loader) == crops
        return crops

    res: dict[str, list[float]] = {k: [] for k in ("decode", "into batches", "tar + parse", "loader", "worker",
                                                   "consumer")}
    epoch(with_worker)                              # start the worker and make its buffers
    for _ in range(args.rounds):
        for name, fn in (("decode", decode), ("into batches", into_batches), ("tar + parse", tar_parse),
                         ("loader", lambda: epoch(in_process))):
            t0, done = time.process_time(), 0
            while time.process_time() - t0 < args.seconds:
                done += fn()
            res[name].append(1e6 * (time.process_time() - t0) / done)
        t0, k0, done = time.process_time(), _live_children_cpu(), 0
        while _live_children_cpu() - k0 < args.seconds:
            done += epoch(with_worker)
        res["consumer"].append(1e6 * (time.process_time() - t0) / done)
        res["worker"].append(1e6 * (_live_children_cpu() - k0) / done)
    base = float(np.median(res["decode"]))
    print(f"{crops} crops of {size} px in {clips[0].frames}-frame clips, batch {cfg.batch_size}; medians of "
          f"{args.rounds} rounds\n")
    print("| stage | CPU us a crop | / decode | rounds |")
    print("| --- | --- | --- | --- |")
    for name, v in res.items():
        m = float(np.median(v))
        print(f"| {name} | {m:.1f} | {m / base:.2f}x | {' '.join(f'{x:.0f}' for x in v)} |")


if __name__ == "__main__":
    main()
