"""Loader benchmark: crops/s of h36m.pipelines.loader against the JPEG decode limit and the usual baseline, one run.

    .venv/bin/python bench/bench_loader.py [--release RAW] [--work bench/out/loader] [--noise 8] [--seconds 15] [--rounds 5]

Data: a synthetic release at the real video size (scale 1.0: 1000x1000 / 1000x1002; written once into --work, or
--release) with sensor noise 8, which makes full-frame JPEGs the size of real H36M frames' (100 kB vs 89-101 kB at
quality 90) and 224 px crops of 9.3 kB (real: 9.7-13.1 kB, bench/RESULTS_extract.md), extracted by
`h36m extract` to --crop px crops and sharded by `h36m shard` into --clip-frame clips.
Measured in the same run on the same data, for P = 1 and 2 processes, each run about --seconds long:
  loader     make_loader(workers=P, batch_size=--batch, default shuffle) over the shard list repeated so that an
             epoch lasts --seconds, as training runs it: one loader, epoch after epoch (set_epoch). Timed: its
             second epoch (tar reading, decoding, batching, hand-over from the workers, the shuffle buffer filling
             at the start, the workers finishing unevenly at the end); the workers and their image buffers persist
             from the first epoch.
  first      that loader's first epoch, which also starts the workers and makes their image buffers: what a
             loader made for a single epoch gets (reported beside the loader, not instead of it).
  decode     the same JPEG bytes (every crop in the shards) decoded in a tight loop by P processes, with the
             loader's decoder (libjpeg-turbo through simplejpeg, into one reused buffer): the ceiling for any
             loader that ships these JPEGs.
  cv2        the same loop with cv2.imdecode (the same libjpeg-turbo pixels, about 20 % slower): for reference,
             the decode limit of earlier rounds.
  baseline   the usual alternative: full-frame JPEG files on disk (one per video frame and camera, quality 90) and
             a map-style Dataset that per sample reads and decodes V x F full frames and crops them to the same
             boxes (cv2.warpAffine), DataLoader(batch_size=--batch, num_workers=P, shuffle=True).
Rounds interleave them; reported: medians of crops/s, and medians of the per-round ratios, by wall time and by
CPU time (this process and its workers, live or exited: robust to other load on the machine).
Targets: loader >= 0.8x decode and >= 5x baseline. Prints a Markdown table to stdout.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


#: Marker file of a finished preparation stage in --work.
DONE = ".bench-done"


def prepare(args) -> tuple[Path, Path, Path]:
    """(extracted, shards, full-frame JPEG folder) under args.work, made once and reused."""
    from click.testing import CliRunner

    from h36m.cli import main

    work = Path(args.work)
    tag = ("" if args.noise == 3.0 else f"_noise{args.noise:g}") + ("" if args.frames == 100 else f"_f{args.frames}")
    release = Path(args.release) if args.release else work / f"release{tag}"
    # 2 clips a shard, so that every shard holds the same number of samples: the workers then get equal work, as
    # with the equal 256 MB shards of real use (with 8 MB shards, 11 + 1 samples, one worker idled at the end)
    shard_mb = 2.5 * (4 * args.clip * args.crop ** 2 * 3 / 16 + 30e3) / 1e6
    extracted, shards = work / f"extracted{args.crop}{tag}", work / f"shards{args.crop}_{args.clip}{tag}_2a"
    frames = work / f"fullframes{tag}"

    def cli(*a):
        res = CliRunner().invoke(main, [str(x) for x in a])
        if res.exit_code:
            raise SystemExit(f"h36m {' '.join(map(str, a))} failed:\n{res.output}{res.exception!r}")

    # a stage is done when its marker is there (written after it succeeded: a killed run is redone, not reused)
    if not args.release and not (release / DONE).is_file():
        print(f"synth {release} (scale {args.scale}, {args.frames} frames; once)", file=sys.stderr)
        from h36m.pipelines.synth.release import SynthConfig, run_synth

        run_synth(SynthConfig(out=release, subjects=("S1", "S9"), sequences_per_subject=1, frames=args.frames,
                              scale=args.scale, noise=args.noise, workers=2))
        (release / DONE).write_text("")
    if not (extracted / DONE).is_file():
        cli("extract", release, extracted, "--size", args.crop, "--workers", 2)
        (extracted / DONE).write_text("")
    if not (shards / "train-index.json").is_file():
        cli("shard", extracted, shards, "--frames", args.clip, "--subjects", "S1,S9", "--shard-mb", f"{shard_mb:.3f}")
    if not (frames / DONE).is_file():
        write_fullframes(extracted, release, frames)
    return extracted, shards, frames


def write_fullframes(extracted: Path, release: Path, out: Path) -> None:
    """Every synchronised video frame of every camera as a full-size JPEG file (quality 90)."""
    import cv2

    from h36m.h36m_tools.video import iter_frames
    from h36m.pipelines.extract.dataset import list_sequences, read_meta

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
    (out / DONE).write_text("")


# ----------------------------------------------------------------------------------------- measuring

@dataclass
class Run:
    """One timed run: crops produced, wall seconds, CPU seconds of this process and its children (`cpu`) and of
    this process alone (`own`: for the loader, the consumer's part)."""
    crops: int
    wall: float
    cpu: float
    own: float

    @property
    def rate(self) -> float:
        return self.crops / self.wall

    @property
    def per_cpu(self) -> float:
        return self.crops / self.cpu


def _live_children_cpu() -> float:
    """CPU seconds of this process's live child processes (persistent DataLoader workers), from /proc."""
    me, ticks, total = os.getpid(), os.sysconf("SC_CLK_TCK"), 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            f = stat[stat.rindex(")") + 2:].split()       # fields after "pid (comm)": state ppid ... utime stime
            if int(f[1]) == me:
                total += int(f[11]) + int(f[12])
    return total / ticks


def _cpu() -> float:
    import resource

    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime + _live_children_cpu()


def timed(fn) -> Run:
    """Run fn() -> crops, counting the CPU time of this process and of its children (live or exited)."""
    c0, o0, t0 = _cpu(), time.process_time(), time.perf_counter()
    crops = fn()
    return Run(crops, time.perf_counter() - t0, _cpu() - c0, time.process_time() - o0)


# ----------------------------------------------------------------------------------------- the loader

def crops_of(loader) -> int:
    """Crops in one pass over a loader (real views x frames of each batch)."""
    return sum(int(b["view_mask"].sum()) * b["images"].shape[2] for b in loader)


def bench_loader(shards: Path, workers: int, batch: int, seconds: float,
                 message_crops: int | None = None) -> tuple[Run, Run]:
    """(first, second) epoch of one make_loader over the shard list repeated so that an epoch lasts about
    `seconds`: the first starts the workers, the second is what the rest of a training run gets. `message_crops`:
    LoaderConfig's (None: its default)."""
    import json

    from h36m.pipelines.loader.stages import MESSAGE_CROPS
    from h36m.pipelines.loader.loader import LoaderConfig, make_loader

    index = json.loads((shards / "train-index.json").read_text())
    urls = [str(shards / e["name"]) for e in index["shards"]]

    def loader(reps):
        return make_loader(LoaderConfig(urls * reps, batch_size=batch, workers=workers, equal_batches=False,
                                        message_crops=MESSAGE_CROPS if message_crops is None else message_crops))

    def epoch(ld, n):
        ld.set_epoch(n)
        return crops_of(ld)

    one = timed(lambda: epoch(loader(1), 0))
    ld = loader(max(1, round(seconds / one.wall)))
    first = timed(lambda: epoch(ld, 0))
    second = timed(lambda: epoch(ld, 1))
    del ld                                   # its workers end
    return first, second


# ----------------------------------------------------------------------------------------- the decode limit

def _decode_loop(args) -> int:
    """Decode `blobs` over and over for `seconds`: with simplejpeg (the loader's decoder) into one reused RGB
    buffer, or with cv2.imdecode (BGR, a new array each) -> crops decoded."""
    import cv2
    import simplejpeg

    cv2.setNumThreads(1)
    blobs, seconds, how = args
    h, w = simplejpeg.decode_jpeg_header(blobs[0])[:2]
    buf = np.empty((h, w, 3), np.uint8)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if how == "simplejpeg":
            for b in blobs:
                simplejpeg.decode_jpeg(b, "RGB", buffer=buf)
        else:
            for b in blobs:
                cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
        n += len(blobs)
    return n


def shard_jpegs(shards: Path) -> list[bytes]:
    from h36m.pipelines.shards.sample import iter_tar_samples

    return [v for p in sorted(shards.glob("train-*.tar")) for raw in iter_tar_samples(p)
            for k, v in raw.items() if k.endswith(".jpg")]


def bench_decode(jpegs: list[bytes], procs: int, seconds: float, how: str = "simplejpeg") -> Run:
    def run():
        if procs == 1:
            return _decode_loop((jpegs, seconds, how))
        with mp.get_context("fork").Pool(procs) as pool:
            return sum(pool.map(_decode_loop, [(jpegs[i::procs], seconds, how) for i in range(procs)]))

    return timed(run)


# ----------------------------------------------------------------------------------------- the baseline

class FullFrameClips:
    """Map-style dataset: clip i -> (V, F, 3, S, S) uint8 crops cut from full-frame JPEG files (decode then crop)."""

    def __init__(self, extracted: Path, frames_dir: Path, clip: int, crop: int, repeat: int):
        from h36m.pipelines.extract.dataset import list_sequences, read_sequence

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
                   seconds: float) -> Run:
    import torch

    one = FullFrameClips(extracted, frames_dir, clip, crop, 1)
    t0 = time.perf_counter()
    one[0]
    reps = max(1, round(seconds * max(workers, 1) / (time.perf_counter() - t0) / len(one.items)))
    ds = FullFrameClips(extracted, frames_dir, clip, crop, reps)

    def epoch():
        dl = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=True)
        return sum(b.shape[0] * b.shape[1] * b.shape[2] for b in dl)

    return timed(epoch)


def main_bench() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "loader"))
    ap.add_argument("--release", default=None, help="An existing release to use instead of writing one.")
    ap.add_argument("--frames", type=int, default=100, help="Pose frames per synthetic sequence.")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--noise", type=float, default=8.0, help="synthetic sensor noise (grey levels; synth's default "
                    "is 3; 8 gives full-frame JPEGs the size of real H36M frames')")
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--clip", type=int, default=16, help="Frames per clip.")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--message-crops", type=int, default=None, help="LoaderConfig.message_crops (default: "
                    "the loader's; 1: one batch a worker message, as before messages held several)")
    ap.add_argument("--seconds", type=float, default=15.0, help="Length of each timed run (a loader "
                    "epoch; real training epochs last minutes).")
    ap.add_argument("--rounds", type=int, default=5, help="Interleaved repetitions; the median is reported (this "
                    "VM's decode speed moves 5-10 %% between runs: 3 rounds were not enough).")
    args = ap.parse_args()
    extracted, shards, frames_dir = prepare(args)
    jpegs = shard_jpegs(shards)
    import torch

    torch.set_num_threads(1)
    load0 = os.getloadavg()[0]
    methods = ("loader", "first", "decode", "cv2", "baseline")
    runs = {(p, m): [] for p in (1, 2) for m in methods}
    for r in range(args.rounds):
        for p in (1, 2):
            runs[p, "decode"].append(bench_decode(jpegs, p, args.seconds))
            runs[p, "cv2"].append(bench_decode(jpegs, p, args.seconds, "cv2"))
            first, later = bench_loader(shards, p, args.batch, args.seconds, args.message_crops)
            runs[p, "first"].append(first)
            runs[p, "loader"].append(later)
            runs[p, "baseline"].append(bench_baseline(extracted, frames_dir, args.clip, args.crop, p, args.batch,
                                                      args.seconds))
            print(f"round {r + 1}, {p} processes: " + ", ".join(
                f"{m} {runs[p, m][-1].rate:.0f}/s ({runs[p, m][-1].per_cpu:.0f}/CPU-s)" for m in methods),
                file=sys.stderr, flush=True)
    sizes = np.array([len(j) for j in jpegs])
    print(f"\n{len(jpegs)} crops of {args.crop}x{args.crop} px in {args.clip}-frame clips (mean JPEG "
          f"{sizes.mean() / 1e3:.1f} kB); full frames 1000x1000/1002 (mean file "
          f"{np.mean([p.stat().st_size for p in frames_dir.rglob('*.jpg')]) / 1e3:.0f} kB); batch {args.batch}"
          f"{'' if args.message_crops is None else f' (message_crops {args.message_crops})'}; "
          f"{os.cpu_count()} CPUs, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}; median of {args.rounds} "
          f"rounds of {args.seconds:g} s runs\n")

    def each(p, m, f):              # median over the rounds of f(run)
        return float(np.median([f(x) for x in runs[p, m]]))

    def med(p, m, attr):
        return each(p, m, lambda x: getattr(x, attr))

    def ratio(p, a, b, attr):       # per-round ratio of runs taken back to back, then the median
        return float(np.median([getattr(x, attr) / getattr(y, attr) for x, y in zip(runs[p, a], runs[p, b])]))

    print("| processes | loader crops/s | decode limit crops/s | cv2.imdecode loop crops/s | baseline crops/s | "
          "loader / decode | loader / baseline | loader / decode per CPU-s | loader / baseline per CPU-s | "
          "loader / cv2.imdecode loop | first epoch crops/s | first epoch / decode |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for p in (1, 2):
        print(f"| {p} | {med(p, 'loader', 'rate'):.0f} | {med(p, 'decode', 'rate'):.0f} | {med(p, 'cv2', 'rate'):.0f} | "
              f"{med(p, 'baseline', 'rate'):.0f} | {ratio(p, 'loader', 'decode', 'rate'):.2f}x | "
              f"{ratio(p, 'loader', 'baseline', 'rate'):.1f}x | {ratio(p, 'loader', 'decode', 'per_cpu'):.2f}x | "
              f"{ratio(p, 'loader', 'baseline', 'per_cpu'):.1f}x | {ratio(p, 'loader', 'cv2', 'rate'):.2f}x | "
              f"{med(p, 'first', 'rate'):.0f} | {ratio(p, 'first', 'decode', 'rate'):.2f}x |")
    print("\nper round, loader / decode: " + "; ".join(
        f"{p} process{'es' if p > 1 else ''} " + ", ".join(f"{x.rate / y.rate:.2f}"
                                                       for x, y in zip(runs[p, 'loader'], runs[p, 'decode']))
        for p in (1, 2)))

    def busy(x):
        return x.cpu / x.wall

    def us_a_crop(x):
        return 1e6 * x.cpu / x.crops

    print("where the loader's time goes (medians): " + "; ".join(
        f"{p} process{'es' if p > 1 else ''}: cores busy {each(p, 'loader', busy):.2f} (decode limit "
        f"{each(p, 'decode', busy):.2f}), the consumer {100 * each(p, 'loader', lambda x: x.own / x.cpu):.1f} % of "
        f"the loader's CPU, {each(p, 'loader', us_a_crop):.0f} us of CPU a crop (decode limit "
        f"{each(p, 'decode', us_a_crop):.0f})" for p in (1, 2)))


if __name__ == "__main__":
    main_bench()
