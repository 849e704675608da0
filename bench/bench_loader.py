"""Loader benchmark: crops/s of pipelines.loader against the JPEG decode limit and the usual baseline, one run.

    .venv/bin/python bench/bench_loader.py [--release RAW] [--work bench/out/loader] [--seconds 6]

Data: a synthetic release at the real video size (scale 1.0: 1000x1000 / 1000x1002, written once into --work,
or --release), extracted by `h36m extract` to --crop px crops and sharded by `h36m shard` into --clip-frame clips.
Measured in the same run, on the same machine, for 1 and 2 processes:
  loader     make_loader(workers=P, batch_size=--batch): decode + collate + transfer from the workers; the shard list
             is repeated so one pass lasts --seconds; timed from the first batch (worker start-up excluded).
  decode     the same JPEG bytes (every crop in the shards) decoded with cv2.imdecode in a tight loop by P processes:
             the ceiling for any loader that ships these JPEGs.
  baseline   the common alternative: full-frame JPEG files on disk (one per video frame and camera, quality 90),
             a map-style Dataset that per sample reads and decodes V x F full frames and crops them to the same
             boxes (cv2.warpAffine), DataLoader(batch_size, num_workers=P).
Targets: loader >= 0.8x decode and >= 5x baseline (crops/s). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prepare(args) -> tuple[Path, Path, Path]:
    """(extracted, shards, full-frame JPEG folder) under args.work, made once and reused."""
    from click.testing import CliRunner

    from cli import main

    work = Path(args.work)
    release = Path(args.release) if args.release else work / "release"
    extracted, shards, frames = work / f"extracted{args.crop}", work / f"shards{args.crop}_{args.clip}", work / "fullframes"

    def cli(*a):
        res = CliRunner().invoke(main, [str(x) for x in a])
        if res.exit_code:
            raise SystemExit(f"h36m {' '.join(map(str, a))} failed:\n{res.output}")

    if not (release / "S9").is_dir():
        print(f"synth {release} (scale {args.scale}, {args.frames} frames; once)", file=sys.stderr)
        cli("synth", release, "--subjects", "S1,S9", "--sequences-per-subject", 1, "--frames", args.frames,
            "--scale", args.scale, "--workers", 2)
    if not (extracted / "manifest.json").is_file():
        cli("extract", release, extracted, "--size", args.crop, "--workers", 2)
    if not (shards / "train-index.json").is_file():
        cli("shard", extracted, shards, "--frames", args.clip, "--subjects", "S1,S9", "--shard-mb", 8)
    if not (frames / "done").is_file():
        write_fullframes(extracted, release, frames)
    return extracted, shards, frames


def write_fullframes(extracted: Path, release: Path, out: Path) -> None:
    """Every synchronised video frame of every camera as a full-size JPEG file (quality 90)."""
    import cv2

    from h36m_tools.video import iter_frames
    from pipelines.extracted import list_sequences, read_meta

    for p in list_sequences(extracted):
        meta = read_meta(p)
        for cam in meta.cameras:
            d = out / meta.key / cam
            d.mkdir(parents=True, exist_ok=True)
            video = release / meta.subject / "Videos" / f"{meta.sequence}.{cam}.mp4"
            for t, frame in enumerate(iter_frames(video)):
                if t >= meta.frames:
                    break
                cv2.imwrite(str(d / f"{t:06d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    (out / "done").write_text("")


# ----------------------------------------------------------------------------------------- the loader

def bench_loader(shards: Path, workers: int, batch: int, seconds: float) -> float:
    import json

    from pipelines.loader import LoaderConfig, make_loader

    index = json.loads((shards / "train-index.json").read_text())
    urls = [str(shards / e["name"]) for e in index["shards"]]
    one_pass = _time_pass(make_loader(LoaderConfig(urls, batch_size=batch, workers=workers, shuffle=0,
                                                   equal_batches=False)))
    reps = max(1, int(seconds / max(one_pass, 1e-3)))           # the shard list repeated: one long pass
    loader = make_loader(LoaderConfig(urls * reps, batch_size=batch, workers=workers, shuffle=0, equal_batches=False))
    crops, t0 = 0, None
    for b in loader:
        if t0 is None:
            t0 = time.perf_counter()                              # timed from the first batch
            continue
        crops += int(b["view_mask"].sum()) * b["images"].shape[2]
    return crops / (time.perf_counter() - t0)


def _time_pass(loader) -> float:
    t0 = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------- the decode limit

def _decode_loop(args) -> int:
    import cv2

    cv2.setNumThreads(1)
    blobs, seconds = args
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for b in blobs:
            cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
        n += len(blobs)
    return n


def shard_jpegs(shards: Path) -> list[bytes]:
    from pipelines.shard import iter_tar_samples

    return [v for p in sorted(shards.glob("train-*.tar")) for raw in iter_tar_samples(p)
            for k, v in raw.items() if k.endswith(".jpg")]


def bench_decode(jpegs: list[bytes], procs: int, seconds: float) -> float:
    t0 = time.perf_counter()
    if procs == 1:
        n = _decode_loop((jpegs, seconds))
    else:
        with mp.get_context("fork").Pool(procs) as pool:
            n = sum(pool.map(_decode_loop, [(jpegs[i::procs], seconds) for i in range(procs)]))
    return n / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------- the baseline

class FullFrameClips:
    """Map-style dataset: clip i -> (V, F, 3, S, S) uint8 crops cut from full-frame JPEG files (decode then crop)."""

    def __init__(self, extracted: Path, frames_dir: Path, clip: int, crop: int, repeat: int):
        from pipelines.extracted import list_sequences, read_sequence

        self.items, self.crop, self.frames_dir, self.repeat = [], crop, frames_dir, repeat
        for p in list_sequences(extracted):
            meta, arr = read_sequence(p, with_jpeg=False)
            for s in range(0, meta.frames - clip + 1, clip):
                self.items.append((meta.key, meta.cameras, arr.frame[s:s + clip], arr.box[s:s + clip]))

    def __len__(self):
        return len(self.items) * self.repeat

    def __getitem__(self, i):
        import cv2
        import torch

        key, cams, frames, boxes = self.items[i % len(self.items)]
        out = np.empty((len(cams), len(frames), 3, self.crop, self.crop), np.uint8)
        for v, cam in enumerate(cams):
            for t, f in enumerate(frames):
                full = cv2.imread(str(self.frames_dir / key / cam / f"{int(f):06d}.jpg"), cv2.IMREAD_COLOR)
                b = boxes[t, v]
                s = self.crop / (b[2] - b[0])
                m = np.array([[s, 0, (0.5 - b[0]) * s - 0.5], [0, s, (0.5 - b[1]) * s - 0.5]])
                crop = cv2.warpAffine(full, m, (self.crop, self.crop), flags=cv2.INTER_LINEAR)
                out[v, t] = crop.transpose(2, 0, 1)[::-1]
        return torch.from_numpy(out)


def bench_baseline(extracted: Path, frames_dir: Path, clip: int, crop: int, workers: int, batch: int,
                   seconds: float) -> float:
    import torch

    one = FullFrameClips(extracted, frames_dir, clip, crop, 1)
    t0 = time.perf_counter()
    one[0]
    per_clip = time.perf_counter() - t0
    reps = max(1, int(seconds * max(workers, 1) / per_clip / len(one.items)))
    ds = FullFrameClips(extracted, frames_dir, clip, crop, reps)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=True)
    crops, t0 = 0, None
    for b in dl:
        if t0 is None:
            t0 = time.perf_counter()
            continue
        crops += b.shape[0] * b.shape[1] * b.shape[2]
    return crops / (time.perf_counter() - t0)


def main_bench() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "loader"))
    ap.add_argument("--release", default=None, help="An existing release to use instead of writing one.")
    ap.add_argument("--frames", type=int, default=100, help="Pose frames per synthetic sequence.")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--clip", type=int, default=16, help="Frames per clip.")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0, help="Length of each timed run.")
    ap.add_argument("--rounds", type=int, default=3, help="Interleaved repetitions; the median is reported.")
    args = ap.parse_args()
    extracted, shards, frames_dir = prepare(args)
    jpegs = shard_jpegs(shards)
    import torch

    torch.set_num_threads(1)
    load0 = os.getloadavg()[0]
    runs = {(p, m): [] for p in (1, 2) for m in ("loader", "decode", "baseline")}
    for r in range(args.rounds):
        for p in (1, 2):
            runs[p, "decode"].append(bench_decode(jpegs, p, args.seconds))
            runs[p, "loader"].append(bench_loader(shards, p, args.batch, args.seconds))
            runs[p, "baseline"].append(bench_baseline(extracted, frames_dir, args.clip, args.crop, p, args.batch,
                                                      args.seconds))
            print(f"round {r + 1}, {p} processes: " + ", ".join(f"{m} {runs[p, m][-1]:.0f}"
                                                               for m in ("loader", "decode", "baseline")),
                  file=sys.stderr, flush=True)
    med = {k: float(np.median(v)) for k, v in runs.items()}
    sizes = np.array([len(j) for j in jpegs])
    print(f"\n{len(jpegs)} crops of {args.crop}x{args.crop} px in {args.clip}-frame clips, mean JPEG "
          f"{sizes.mean() / 1e3:.1f} kB; full frames 1000x1000/1002 (mean file "
          f"{np.mean([p.stat().st_size for p in frames_dir.rglob('*.jpg')]) / 1e3:.0f} kB); batch {args.batch}; "
          f"{os.cpu_count()} CPUs; load average {load0:.1f} -> {os.getloadavg()[0]:.1f}; median of {args.rounds} "
          f"runs of {args.seconds:g} s\n")
    print("| processes | loader crops/s | decode limit crops/s | baseline crops/s | loader / decode | loader / baseline |")
    print("| --- | --- | --- | --- | --- | --- |")
    for p in (1, 2):
        ldr, dec, base = med[p, "loader"], med[p, "decode"], med[p, "baseline"]
        print(f"| {p} | {ldr:.0f} | {dec:.0f} | {base:.0f} | {ldr / dec:.2f}x | {ldr / base:.1f}x |")


if __name__ == "__main__":
    main_bench()
