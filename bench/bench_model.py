"""Cost of the pose network's parts: parameters, FLOPs, CPU time, patch selection, `tiny` step time.

    python bench/bench_model.py [--out bench/RESULTS_model.md] [--quick]

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode on the meta device (no compute; a
multiply-add is 2 FLOPs, so Swin-T at 224 is ~9.0 GFLOPs = 4.5 GMACs). Times are CPU wall-clock
minima over repeats, and every time is reported as a ratio to a baseline measured in the same run.
Prints a Markdown report and writes it to --out.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from h36m.model import PRESETS, build_model  # noqa: E402

PARTS = ("spatial", "relations", "head", "lifter")
B, V = 1, 4


def params(net) -> dict[str, int]:
    out = {p: sum(x.numel() for x in getattr(net, p).parameters()) for p in PARTS}
    out["total"] = sum(x.numel() for x in net.parameters())
    return out


def flops(cfg, f: int) -> dict[str, int]:
    """FLOPs of one forward pass of (B, V, f, 3, S, S) images, per part."""
    with torch.device("meta"):
        net = build_model(cfg).eval()
        x = torch.empty(B, V, f, 3, cfg.spatial.img_size, cfg.spatial.img_size)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(x)
    counts = fc.get_flop_counts()
    out = {p: sum(counts.get(f"PoseNetwork.{p}", {}).values()) for p in PARTS}
    out["total"] = sum(counts["Global"].values())
    return out


def best_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def interleaved_min(fns: dict, rounds: int, inner: dict | None = None) -> dict:
    """Min time of each fn, timed in alternation round after round so that load changes hit all alike;
    inner[name] repeats a short fn within each round."""
    inner = inner or {}
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], best_time(fn, inner.get(name, 1)))
    return best


def fmt_g(x: float) -> str:
    return f"{x / 1e9:,.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS_model.md")))
    ap.add_argument("--quick", action="store_true", help="fewer repeats and images (smoke run)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads for the timed comparisons (default 1, see the report's note)")
    args = ap.parse_args()
    all_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reps = 1 if args.quick else 3
    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    load0 = os.getloadavg()[0]
    say("# Pose network (`model/`): measured costs")
    say()
    say(f"Run: `python bench/bench_model.py` - torch {torch.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average at start {load0:.1f}. "
        "FLOPs from `FlopCounterMode` (1 multiply-add = 2 FLOPs) for one forward pass of B = 1 clip of V = 4 views; "
        "times are CPU minima over interleaved repeats, compared with a baseline timed in the same run. "
        f"The comparisons are timed with {args.threads} torch thread(s): on a shared 2-core machine two threads "
        "oversubscribe the cores and their ratios swing by 2x between runs; the `tiny` step is timed with "
        f"{all_threads} and with 1 thread.")
    say()

    # ------------------------------------------------------------ parameters and FLOPs per part
    say("## `paper` preset: parameters and forward FLOPs per part (B = 1, V = 4)")
    say()
    say("| F | preset | spatial (Swin-T) | relations | head | lifter (PoseFormer, rf 81) | total | relations share |")
    say("|---|---|---|---|---|---|---|---|")
    per_f = {}
    for f in (8, 32, 128):
        name = f"paper_f{f}"
        with torch.device("meta"):
            p = params(build_model(PRESETS[name]))
        fl = flops(PRESETS[name], f)
        per_f[f] = fl
        say(f"| {f} | `{name}` params (M) | {p['spatial'] / 1e6:.2f} | {p['relations'] / 1e6:.2f} | "
            f"{p['head'] / 1e6:.2f} | {p['lifter'] / 1e6:.2f} | {p['total'] / 1e6:.2f} | "
            f"{p['relations'] / p['total']:.1%} |")
        say(f"| {f} | GFLOPs | {fmt_g(fl['spatial'])} | {fmt_g(fl['relations'])} | {fmt_g(fl['head'])} | "
            f"{fmt_g(fl['lifter'])} | {fmt_g(fl['total'])} | {fl['relations'] / fl['total']:.2%} |")
    no_lift = {f: flops(replace(PRESETS[f"paper_f{f}"], lift=False), f) for f in (8, 32, 128)}
    say()
    say("Relations share of the FLOPs of the 2-D network (spatial + relations + head, no lifter): " + ", ".join(
        f"F = {f}: {no_lift[f]['relations'] / no_lift[f]['total']:.2%}" for f in (8, 32, 128)) + ".")
    say("The lifter runs one 81-frame window per output frame (PoseFormer's centre-frame protocol, clips "
        "edge-padded), so its cost grows with F like the spatial module's.")
    say()

    # ------------------------------------------------------------ relations: measured CPU time
    say("## Image relations: share of measured CPU time (`paper_f8`, B = 1, V = 4, F = 8, 32 images)")
    say()
    cfg = replace(PRESETS["paper_f8"], lift=False)
    net = build_model(cfg)
    f = 2 if args.quick else 8
    x = torch.randn(B, V, f, 3, 224, 224)
    tokens = torch.randn(B, V, f, net.spatial.num_features)
    net.eval()
    with torch.no_grad():
        net(x)  # warm-up
        t = interleaved_min({"fwd": lambda: net(x), "rel": lambda: net.relations(tokens)}, reps, {"rel": 10})
    t_fwd, t_rel = t["fwd"], t["rel"]
    net.train()

    def step():
        net.zero_grad(set_to_none=True)
        net(x).joints2d.sum().backward()

    def rel_step():
        net.relations.zero_grad(set_to_none=True)
        net.relations(tokens.requires_grad_()).sum().backward()

    t = interleaved_min({"step": step, "rel": rel_step}, max(1, reps - 1), {"rel": 10})
    t_step, t_rel_step = t["step"], t["rel"]
    say("| pass | 2-D network, no lifter (s) | relations alone (ms) | relations share |")
    say("|---|---|---|---|")
    say(f"| forward (eval) | {t_fwd:.2f} | {t_rel * 1e3:.2f} | {t_rel / t_fwd:.3%} |")
    say(f"| forward + backward (train) | {t_step:.2f} | {t_rel_step * 1e3:.2f} | {t_rel_step / t_step:.3%} |")
    say()
    flop_share = no_lift[8]["relations"] / no_lift[8]["total"]
    say(f"Paper: 755.3 s vs 755.4 s an epoch, a 0.1 s difference ({0.1 / 755.4:.3%}). Here the relations take "
        f"{t_rel / t_fwd:.2%} of the forward time and {t_rel_step / t_step:.2%} of a training step of the 2-D "
        f"network, for {flop_share:.2%} of its FLOPs. A training epoch also loads and augments data, which "
        "dilutes the share further.")
    say()

    # ------------------------------------------------------------ patch selection
    say("## Patch selection (`paper` Swin-T at 224, selection after stage 2 on the 14 x 14 grid)")
    say()
    n_img = 2 if args.quick else 4
    imgs = torch.randn(n_img, 3, 224, 224)
    settings = [(1.0, 2), (0.7, 2), (0.5, 2), (0.7, 1), (0.5, 1)]  # (keep ratio, select_stage)

    def sel_cfg(keep, stage):
        return replace(PRESETS["paper_f8"], lift=False,
                       spatial=replace(PRESETS["paper"].spatial, keep_ratio=keep, select_stage=stage))

    encs = {k: build_model(sel_cfg(*k)).spatial.eval() for k in settings}
    sp_flops, net_flops, times = {}, {}, {k: [] for k in encs}
    for keep in encs:
        fl = flops(sel_cfg(*keep), 8)
        sp_flops[keep] = fl["spatial"] / (B * V * 8)
        net_flops[keep] = fl["total"]
    with torch.no_grad():
        for keep in encs:
            encs[keep](imgs)  # warm-up
        for _ in range(2 * reps):  # interleaved, so load changes hit every setting alike
            for keep, enc in encs.items():
                t = time.perf_counter()
                enc(imgs)
                times[keep].append(time.perf_counter() - t)
    base = settings[0]
    t_base = min(times[base])
    say(f"| keep ratio | selected before stage | tokens per stage | spatial GFLOPs / image | FLOPs vs keep 1.0 | "
        f"2-D network (F = 8) FLOPs vs 1.0 | CPU time, {n_img} images (s) | time vs keep 1.0 |")
    say("|---|---|---|---|---|---|---|---|")
    for key, enc in encs.items():
        keep, stage = key
        t = min(times[key])
        where = "-" if keep == 1.0 else f"{stage + 1} ({enc.cfg.grid_sizes()[stage]}^2 grid)"
        say(f"| {keep} | {where} | {'-'.join(map(str, enc.kept_tokens(keep)))} | {fmt_g(sp_flops[key])} | "
            f"{sp_flops[key] / sp_flops[base]:.3f} | {net_flops[key] / net_flops[base]:.3f} | {t:.2f} | "
            f"{t / t_base:.3f} |")
    say()
    say("Default (`select_stage = 2`): stages 1-2 (56 x 56 and 28 x 28 grids) run in full, stages 3-4 run on "
        "the kept tokens only (masked window attention over kept tokens, gathered patch merging), so the saving "
        "is bounded by the share of stages 3-4 in Swin-T. `select_stage = 1` prunes from stage 2 on and saves "
        "more, at the price of dropping tokens on the basis of earlier, less semantic features. "
        "Window attention over kept tokens still costs a full window's matmuls; the counts include it.")
    say()

    # ------------------------------------------------------------ tiny
    say("## `tiny` preset: CPU training step (B = 2, V = 4, F = 8, 64 px, AdamW, with lifter)")
    say()
    tiny = build_model(PRESETS["tiny"])
    opt = torch.optim.AdamW(tiny.parameters(), lr=1e-4)
    xt = torch.randn(2, 4, 8, 3, 64, 64)

    def tiny_step():
        out = tiny(xt)
        loss = out.joints2d.square().mean() + 1e-6 * out.joints3d.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def tiny_forward():
        with torch.no_grad():
            tiny(xt)

    tp = params(tiny)
    tf = flops(PRESETS["tiny"], 8)
    say(f"{tp['total'] / 1e6:.2f} M parameters, {fmt_g(tf['total'])} GFLOPs a forward pass.")
    say()
    say("| CPU threads | step median (ms) | step min (ms) | no-grad forward min (ms) | step / forward |")
    say("|---|---|---|---|---|")
    threads = torch.get_num_threads()
    for n_threads in sorted({all_threads, 1}, reverse=True):
        torch.set_num_threads(n_threads)
        for _ in range(2):
            tiny_step()
        step_times = []
        for _ in range(5 if args.quick else 15):
            t = time.perf_counter()
            tiny_step()
            step_times.append(time.perf_counter() - t)
        t_tiny_fwd = best_time(tiny_forward, 5)
        say(f"| {n_threads} | {statistics.median(step_times) * 1e3:.0f} | {min(step_times) * 1e3:.0f} | "
            f"{t_tiny_fwd * 1e3:.0f} | {min(step_times) / t_tiny_fwd:.2f} |")
    torch.set_num_threads(threads)
    say()
    say(f"Load average at the end: {os.getloadavg()[0]:.1f} (the machine may be shared; ratios are more "
        "stable than absolute times).")
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
