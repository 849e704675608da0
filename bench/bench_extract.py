"""Benchmark of `h36m extract` against its baselines, measured in one run on the same synthetic videos.

    .venv/bin/python bench/bench_extract.py [--scale 1.0] [--frames 900] [--noise 8] [--repeat 3] [--work DIR]
    .venv/bin/python bench/bench_extract.py --archives 12,24 [--pad-mb 16] [--repeat 3] [--workers 2] [--work DIR]

Defaults chosen to look like the real release: 1000 x 1000 frames; 900 frames per camera (the shortest real
sequence has 871, the median 2479: `../shared/h36m/sequences.json`), so fixed start-up costs weigh no more than
they would; sensor noise 8, which gives full-frame JPEGs of 100 kB at quality 90, the size of the real H36M frames'
(89-101 kB, `../shared/realdata/mmpose_h36m`). Synthesising that release takes about 3 minutes, once per --work.

Measures (best of --repeat, one worker / one decoder thread each, so the numbers are per core):
  bare decode     ffmpeg decoding every video to null (h36m_tools.video.decode_to_null): the speed limit;
  extract         `run_extract` with 1 worker: decode + crop + JPEG + Parquet;
  full-frame JPEG the common practice it replaces: every frame written as a full-size JPEG (same quality),
                  then cropped on load (read + decode + warp to the crop size), timed separately.
Frames are video frames decoded. CPU time counts this process and its children (ffmpeg). Prints a Markdown table
of times, frames/s, frames per CPU-second, ratios to bare decode, and disk use.

--archives N,M,...: the cost of reading the release from its downloaded archives. For each N, one subject of N
sequences (4N videos, small synthetic frames) whose every video is padded to --pad-mb MB with an MP4 `free` box of
real H.264 bytes (noise video: gzip saves under 2 % of it, as on real videos; the padding is never decoded), written
as the unpacked tree and as the official archives (`Videos_S1.tgz`, gzip -6). Measured in one run, min / median /
max of --repeat: extract from the tree, extract from the archives (same --workers), and one decompression pass of
`Videos_S1.tgz` with Python's gzip, `gzip -dc`, and rapidgzip (the inflater extract uses). Overhead = archives -
tree; the target is overhead <= 2 passes, and linear in N.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path



def _cpu() -> float:
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _timed(fn, repeat: int) -> tuple[float, float, object]:
    """Best wall time of `repeat` calls, the CPU time of that call, and its result."""
    best = None
    for _ in range(repeat):
        t, c = time.perf_counter(), _cpu()
        out = fn()
        wall, cpu = time.perf_counter() - t, _cpu() - c
        if best is None or wall < best[0]:
            best = (wall, cpu, out)
    return best


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="synthetic video scale (1.0 = real 1000x1000)")
    ap.add_argument("--frames", type=int, default=900)
    ap.add_argument("--sequences", type=int, default=1)
    ap.add_argument("--noise", type=float, default=8.0, help="synthetic sensor noise (grey levels; synth's default "
                    "is 3; 8 matches the JPEG size of real frames): more noise, more bits, costlier decoding")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="keep the release and outputs here (reused if present)")
    ap.add_argument("--archives", default=None, help="N,M,...: the archives row, with N sequences (4N videos)")
    ap.add_argument("--pad-mb", type=float, default=16.0, help="--archives: each video padded to this size")
    ap.add_argument("--workers", type=int, default=2, help="--archives: extract workers")
    args = ap.parse_args(argv)
    if args.archives:
        return archives_row(args)

    import cv2
    import numpy as np

    from h36m.h36m_tools import video
    from h36m.pipelines.extract.crop import crop_bgr, joints_box
    from h36m.pipelines.extract.extract import run_extract
    from h36m.pipelines.extract.plan import ExtractConfig
    from h36m.pipelines.extract.dataset import list_sequences, read_sequence
    from h36m.pipelines.synth.release import SynthConfig, run_synth

    cv2.setNumThreads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_extract_"))
    noise = "" if args.noise == 3.0 else f"_noise{args.noise:g}"
    raw = work / f"raw_scale{args.scale}_f{args.frames}_s{args.sequences}{noise}"
    if not raw.is_dir():
        t = time.perf_counter()
        run_synth(SynthConfig(out=raw, subjects=("S1",), sequences_per_subject=args.sequences, frames=args.frames,
                              scale=args.scale, quirks=False, noise=args.noise, workers=2))
        print(f"synth: {time.perf_counter() - t:.1f} s -> {raw}", file=sys.stderr)
    videos = sorted(raw.glob("S*/Videos/*.mp4"))
    n_frames = sum(sum(1 for _ in video.iter_frames(v)) for v in videos)
    info = video.probe(videos[0])
    video_bytes = sum(v.stat().st_size for v in videos)

    # 1. bare decode
    bare = _timed(lambda: [video.decode_to_null(v) for v in videos], args.repeat)

    # 2. extract, one worker
    out = work / "extracted"

    def extract():
        shutil.rmtree(out, ignore_errors=True)
        res = run_extract(ExtractConfig(raw=raw, out=out, size=args.size, quality=args.quality, workers=1))
        assert all(r.status == "done" for r in res), [r.reason for r in res]
        return sum(r.decoded_frames for r in res)

    ext = _timed(extract, args.repeat)
    assert ext[2] == n_frames, (ext[2], n_frames)
    ext_bytes = sum(p.stat().st_size for p in list_sequences(out))

    # 3. the common practice: full-frame JPEGs, cropped on load (same boxes as extract)
    jpg_dir = work / "fullframe_jpeg"

    def write_full():
        shutil.rmtree(jpg_dir, ignore_errors=True)
        jpg_dir.mkdir(parents=True)
        n = 0
        for v in videos:
            for t, frame in enumerate(video.iter_frames(v)):
                cv2.imwrite(str(jpg_dir / f"{v.stem}_{t:06d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, args.quality])
                n += 1
        return n

    full = _timed(write_full, args.repeat)
    full_bytes = _du(jpg_dir)
    boxes = {}
    for p in list_sequences(out):
        meta, a = read_sequence(p, with_jpeg=False)
        for vi, cam in enumerate(meta.cameras):
            for t in range(meta.frames):
                boxes[f"{meta.sequence}.{cam}_{t:06d}"] = a.box[t, vi]
    files = sorted(jpg_dir.glob("*.jpg"))

    def load_full():
        for f in files:
            box = boxes.get(f.stem)
            img = cv2.imread(str(f))
            crop_bgr(img, box if box is not None else joints_box(np.zeros((1, 2))), args.size)
        return len(files)

    load = _timed(load_full, args.repeat)

    def load_ours():
        n = 0
        for p in list_sequences(out):
            _, a = read_sequence(p)
            for row in a.jpeg:
                for j in row:
                    cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)
                    n += 1
        return n

    ours_load = _timed(load_ours, args.repeat)

    def row(name, r, frames):
        wall, cpu, _ = r
        return (f"| {name} | {wall:.2f} | {cpu:.2f} | {frames / wall:.0f} | {frames / cpu:.0f} | "
                f"{(frames / wall) / (n_frames / bare[0]):.2f} | {(frames / cpu) / (n_frames / bare[1]):.2f} |")

    print(f"\n{len(videos)} videos, {info.width}x{info.height}, {n_frames} frames, {video_bytes / 1e6:.2f} MB of "
          f"H.264 ({video_bytes / n_frames / 1e3:.1f} kB/frame); crops {args.size}px, JPEG q{args.quality}; "
          f"best of {args.repeat}\n")
    print("| step | wall s | CPU s | frames/s | frames/CPU-s | vs bare decode (wall) | vs bare decode (per core) |")
    print("|---|---|---|---|---|---|---|")
    print(row("bare decode (ffmpeg -> null)", bare, n_frames))
    print(row("**h36m extract** (1 worker)", ext, n_frames))
    print(row("full-frame JPEG: write", full, n_frames))
    print(row("full-frame JPEG: load + crop", load, len(files)))
    print(row("extract output: load (JPEG decode)", ours_load, ours_load[2]))
    wall_full = full[0] + load[0]
    print(f"\nfull-frame practice, write + one pass of loading: {wall_full:.2f} s, "
          f"{wall_full / ext[0]:.1f}x the extract time")
    print(f"\n| disk | MB | per frame kB | vs full-frame JPEG |\n|---|---|---|---|\n"
          f"| source videos | {video_bytes / 1e6:.2f} | {video_bytes / n_frames / 1e3:.1f} | "
          f"{video_bytes / full_bytes:.3f} |\n"
          f"| full-frame JPEG | {full_bytes / 1e6:.2f} | {full_bytes / n_frames / 1e3:.1f} | 1 |\n"
          f"| extract (Parquet, crops + annotations) | {ext_bytes / 1e6:.2f} | {ext_bytes / n_frames / 1e3:.1f} | "
          f"{ext_bytes / full_bytes:.3f} |")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def _pad_video(path: Path, size: int, payload: bytes, offset: int) -> None:
    """Append an MP4 `free` box so the file is `size` bytes: ignored by every reader, filled with `payload` bytes
    from `offset` on (wrapping)."""
    import struct

    need = size - path.stat().st_size - 8
    if need <= 0:
        return
    data = (payload[offset % len(payload):] + payload) * (need // len(payload) + 2)
    with open(path, "ab") as fh:
        fh.write(struct.pack(">I", need + 8) + b"free" + data[:need])


def _h264_payload(work: Path, mb: float) -> bytes:
    """Real H.264 bytes (a noise video, ultrafast, CRF 18) of about `mb` MB: what a video member holds."""
    import subprocess

    from h36m.h36m_tools.video import ffmpeg_binary

    path = work / "noise.h264"
    if not path.is_file() or path.stat().st_size < mb * 1e6:
        frames = int(mb * 1e6 / 140e3) + 25
        subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i",
                        "testsrc2=size=640x480:rate=50,noise=alls=20:allf=t", "-frames:v", str(frames),
                        "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-f", "h264", str(path)],
                       check=True)
    return path.read_bytes()


def _stats(times: list[float]) -> str:
    import statistics

    return f"{min(times):.2f} / {statistics.median(times):.2f} / {max(times):.2f}"


def archives_row(args) -> None:
    """The archives row: see the module docstring (--archives)."""
    import os
    import statistics
    import subprocess
    import gzip

    from h36m.h36m_tools import archives
    from h36m.pipelines.extract.extract import run_extract
    from h36m.pipelines.extract.plan import ExtractConfig
    from h36m.pipelines.synth.release import SynthConfig, run_synth, write_layout

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_archives_"))
    work.mkdir(parents=True, exist_ok=True)
    pad = int(args.pad_mb * 1e6)
    payload = _h264_payload(work, args.pad_mb * 2)
    rows = []
    for n in (int(x) for x in args.archives.split(",")):
        base = work / f"synth_s{n}"
        if not base.is_dir():
            run_synth(SynthConfig(out=base, subjects=("S1",), sequences_per_subject=n, frames=50, scale=0.25,
                                  quirks=False, workers=2))
        tree, raw = work / f"tree_s{n}_pad{args.pad_mb:g}", work / f"archives_s{n}_pad{args.pad_mb:g}"
        if not raw.is_dir():
            shutil.rmtree(tree, ignore_errors=True)
            shutil.copytree(base, tree, ignore=lambda d, names: [x for x in names if x.endswith(".json")])
            for i, v in enumerate(sorted(tree.glob("S1/Videos/*.mp4"))):
                _pad_video(v, pad, payload, i * 7_919_000)
            t = time.perf_counter()
            write_layout(tree, raw, "archives")
            print(f"{n} sequences: archives written in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        videos = raw / "Videos_S1.tgz"
        members = len(list(tree.glob("S1/Videos/*.mp4")))

        def extract(src):
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            res = run_extract(ExtractConfig(raw=src, out=out, size=64, workers=args.workers))
            wall = time.perf_counter() - t
            assert all(r.status == "done" for r in res), [r.reason for r in res if r.status != "done"]
            return wall

        def python_gzip():
            t = time.perf_counter()
            with gzip.open(videos) as fh:
                while fh.read(1 << 20):
                    pass
            return time.perf_counter() - t

        def gzip_dc():
            t = time.perf_counter()
            subprocess.run(f"gzip -dc '{videos}' > /dev/null", shell=True, check=True)
            return time.perf_counter() - t

        def rapid():
            t = time.perf_counter()
            with archives.rapidgzip.open(str(videos), parallelization=archives._threads()) as fh:
                while fh.read(1 << 20):
                    pass
            return time.perf_counter() - t

        times = {k: [] for k in ("tree", "archives", "python gzip", "gzip -dc", "rapidgzip")}
        for _ in range(args.repeat):          # interleaved, so a change of load touches every column alike
            times["tree"].append(extract(tree))
            times["archives"].append(extract(raw))
            times["python gzip"].append(python_gzip())
            times["gzip -dc"].append(gzip_dc())
            times["rapidgzip"].append(rapid())
        over = [a - t for a, t in zip(times["archives"], times["tree"])]
        index = max(p.stat().st_size for p in archives.index_folder().glob("Videos_S1.tgz.*"))
        rows.append((n, members, videos.stat().st_size, times, over, index))
        for p in archives.index_folder().glob("*"):
            p.unlink()
    load = os.getloadavg()
    print(f"\nload average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) on {os.cpu_count()} CPUs; "
          f"extract --workers {args.workers}; wall s, min / median / max of {args.repeat} interleaved rounds\n")
    print("| sequences | video members | Videos_S1.tgz MB | tree | archives | overhead (archives - tree) | "
          "Python gzip pass | gzip -dc pass | rapidgzip pass | overhead / Python gzip pass | index MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, members, size, times, over, index in rows:
        ratio = statistics.median(over) / statistics.median(times["python gzip"])
        print(f"| {n} | {members} | {size / 1e6:.0f} | {_stats(times['tree'])} | {_stats(times['archives'])} | "
              f"{_stats(over)} | {_stats(times['python gzip'])} | {_stats(times['gzip -dc'])} | "
              f"{_stats(times['rapidgzip'])} | {ratio:.2f} | {index / 1e6:.1f} |")
    if len(rows) > 1:
        (n0, *_, o0, _), (n1, *_, o1, _) = rows[0], rows[-1]
        print(f"\n{n1 / n0:g}x the members: {statistics.median(o1) / statistics.median(o0):.2f}x the overhead "
              f"(medians)")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
