"""Shard writer benchmark: crops/s of `h36m shard` at 1 and 2 workers against a plain webdataset.ShardWriter pass.

    .venv/bin/python bench/bench_shard.py [--release RAW | --extracted EXT] [--work DIR] [--clip 16] [--rounds 3]

Data: a synthetic release like bench_extract's (S1, one 900-frame sequence, 1000x1000 videos, sensor noise 8:
224 px crops of about 9.3 kB, the size of real crops), extracted by `h36m extract` into --work once, or an
extracted folder given with --extracted. Clips of --clip frames (tail dropped), shards of --shard-mb (small, so
that the few clips still make many shards, as the whole release makes with 256 MB ones).
Measured in the same run on the same data, rounds interleaved, medians reported:
  webdataset  the same clips with the same members, read by the writer's reader (`writer.iter_clips`, encoded by
              `sample.encode_clip`) and written by a plain `webdataset.ShardWriter` (encoder off, same --shard-mb)
              in one process: what writing shards costs without planning, fixed headers, checksums or a journal;
  webdataset 2  the same in 2 processes, each writing every other clip to its own shards: how well plain work
              scales to 2 processes on this machine (2 vCPUs of a VM share a core's caches);
  shard P     `write_shards` with P = 1 worker (plan, then shards written as it goes, checksums, index) and P = 2
              (plan, the clip-size pass, then whole shards in parallel);
  plan        `plan_clips` alone (the sequence footers: the serial part);
  sizes       the clip-size pass alone (`writer.clip_bytes`), in this process.
Crops are views x frames of every clip. CPU time counts this process and its (reaped) workers.
Projection to N cores (--cores): N workers at one worker's measured rate (the serial plan taken out), slowed by
the size pass only several workers make (its CPU over one worker's), after the serial plan; it assumes the disk
keeps up (the bandwidth it needs is printed), cores not shared, and enough shards to keep N workers busy (the
whole release makes about 90 shards of 256 MB). Also printed: the 2-worker run's wall time scaled the same way
(e = its parallel efficiency), which only means something on a machine with 2 idle cores. Prints Markdown.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn) -> tuple[float, float]:
    """(wall s, CPU s) of fn()."""
    c, t = _cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - t, _cpu() - c


def prepare(args) -> Path:
    """The extracted folder to shard (made once under --work unless given)."""
    if args.extracted:
        return Path(args.extracted)
    from click.testing import CliRunner

    from h36m.cli import main

    work = Path(args.work)
    release = Path(args.release) if args.release else work / "release"
    extracted = work / "extracted224"
    if not args.release and not (release / ".bench-done").is_file():
        from h36m.pipelines.synth.release import SynthConfig, run_synth

        print(f"synth {release} (once)", file=sys.stderr)
        run_synth(SynthConfig(out=release, subjects=("S1",), sequences_per_subject=1, frames=args.frames,
                              scale=1.0, noise=8.0, workers=2))
        (release / ".bench-done").write_text("")
    if not (extracted / ".bench-done").is_file():
        res = CliRunner().invoke(main, ["extract", str(release), str(extracted), "--size", "224", "--workers", "2"])
        if res.exit_code:
            raise SystemExit(f"h36m extract failed:\n{res.output}")
        (extracted / ".bench-done").write_text("")
    return extracted


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--release", help="a release to extract (default: synthesised into --work)")
    ap.add_argument("--extracted", help="an extracted folder to shard (default: made under --work)")
    ap.add_argument("--work", default="bench/out/shard")
    ap.add_argument("--frames", type=int, default=900, help="frames of the synthesised sequence")
    ap.add_argument("--clip", type=int, default=16)
    ap.add_argument("--shard-mb", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cores", type=int, default=16)
    args = ap.parse_args(argv)

    import webdataset as wds

    from h36m.pipelines.shards.sample import encode_clip
    from h36m.pipelines.shards.writer import ShardConfig, clip_bytes, iter_clips, plan_clips, write_shards

    extracted = prepare(args)
    work = Path(args.work)
    out = work / "out"
    cfg = ShardConfig(extracted, out, frames=args.clip, subjects=("S1", "S5", "S6", "S7", "S8", "S9", "S11"),
                      shard_mb=args.shard_mb)
    plan = plan_clips(cfg)
    crops = 0
    for ref in plan.clips:          # views x frames of each clip
        from h36m.pipelines.extract.dataset import read_meta

        crops += len(read_meta(ref.path).cameras) * args.clip
    data_bytes = sum(clip_bytes(plan.clips, args.clip))

    def webdataset_part(part: int, parts: int):
        with wds.ShardWriter(str(out / f"base{part}-%06d.tar"), maxsize=int(args.shard_mb * 1e6), encoder=False,
                             verbose=0) as sink:
            for clip in iter_clips(plan.clips[part::parts], args.clip):
                sink.write({"__key__": clip.key, **dict(encode_clip(clip))})

    def webdataset_pass(procs: int):
        def run():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            if procs == 1:
                return webdataset_part(0, 1)
            ps = [mp.get_context("fork").Process(target=webdataset_part, args=(i, procs)) for i in range(procs)]
            for q in ps:
                q.start()
            for q in ps:
                q.join()
        return run

    def shard(workers):
        def run():
            shutil.rmtree(out, ignore_errors=True)
            write_shards(ShardConfig(**{**cfg.__dict__, "workers": workers}))
        return run

    runs = {"webdataset": webdataset_pass(1), "webdataset 2": webdataset_pass(2), "shard 1": shard(1),
            "shard 2": shard(2), "plan": lambda: plan_clips(cfg), "sizes": lambda: clip_bytes(plan.clips, args.clip)}
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    load = os.getloadavg()
    for r in range(args.rounds):
        for name, fn in runs.items():
            got[name].append(_timed(fn))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1][0]:.2f} s" for k, v in got.items()), file=sys.stderr)
    load = [max(a, b) for a, b in zip(load, os.getloadavg())]
    shutil.rmtree(out, ignore_errors=True)

    wall = {k: statistics.median(w for w, _ in v) for k, v in got.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in got.items()}
    base = wall["webdataset"]
    print(f"{len(plan.clips)} clips of {args.clip} frames, {crops} crops, {data_bytes / 1e6:.1f} MB in shards of "
          f"{args.shard_mb:g} MB; {args.rounds} rounds, medians; load average (1/5/15 min, max of start and end) "
          f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} on {os.cpu_count()} CPUs\n")
    print("| run | wall s | crops/s | vs webdataset | CPU s | us CPU a crop |")
    print("| --- | --- | --- | --- | --- | --- |")
    for k in ("webdataset", "webdataset 2", "shard 1", "shard 2"):
        print(f"| {k} | {wall[k]:.2f} | {crops / wall[k]:,.0f} | {base / wall[k]:.2f}x | {cpu[k]:.2f} | "
              f"{cpu[k] / crops * 1e6:.0f} |")
    print(f"| plan (serial; part of shard 1 and 2) | {wall['plan']:.3f} | | | {cpu['plan']:.3f} | "
          f"{cpu['plan'] / crops * 1e6:.1f} |")
    print(f"| sizes (part of shard 2, in parallel) | {wall['sizes']:.2f} | | | {cpu['sizes']:.2f} | "
          f"{cpu['sizes'] / crops * 1e6:.0f} |")
    s, t1, t2 = wall["plan"], wall["shard 1"], wall["shard 2"]
    e = min(1.0, (t1 - s) / (2 * (t2 - s)))
    n = args.cores
    r1 = crops / (t1 - s)                                   # one worker's rate, the serial plan taken out
    rn = n * r1 / (1 + cpu["sizes"] / cpu["shard 1"])       # N workers also pay the size pass
    model = crops / (s + crops / rn)
    by_wall = crops / (s + (t1 - s) / (n * e))
    print(f"\n2 workers: {t1 / t2:.2f}x one worker by wall time (parallel efficiency e = {e:.2f}); "
          f"CPU a crop {cpu['shard 2'] / cpu['shard 1']:.2f}x one worker's. 2 webdataset processes on half the clips "
          f"each: {base / wall['webdataset 2']:.2f}x one by wall time, CPU a crop "
          f"{cpu['webdataset 2'] / cpu['webdataset']:.2f}x one's (this machine's own 2-process scaling); "
          f"shard 2 vs webdataset 2: {wall['webdataset 2'] / t2:.2f}x by wall time.")
    print(f"\nProjection to {n} cores: T({n}) = plan + crops / ({n} r1 / (1 + sizes/shard 1)), r1 = one worker's "
          f"measured rate without the serial plan ({r1:,.0f} crops/s), the size pass costing "
          f"{cpu['sizes'] / cpu['shard 1']:.0%} of one worker's CPU: {model:,.0f} crops/s, "
          f"{model * t1 / crops:.1f}x one worker, {model * base / crops:.1f}x the webdataset pass; the whole release "
          f"(2,137,064 crops) in {2137064 / model:.0f} s (one worker: {2137064 / (crops / t1):.0f} s). Disk "
          f"bandwidth that needs: {model * data_bytes / crops / 1e6:,.0f} MB/s read and as much written. "
          f"Scaling the 2-worker run instead (T({n}) = plan + (T(1) - plan) / ({n} e)): {by_wall:,.0f} crops/s.")

if __name__ == "__main__":
    main()
