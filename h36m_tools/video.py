"""Videos through ffmpeg: the binary (PATH, else imageio-ffmpeg's), probing, front-to-back decoding, encoding."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .errors import H36MError


@lru_cache(maxsize=1)
def ffmpeg_binary() -> str:
    """`ffmpeg` from PATH, else the binary bundled with imageio-ffmpeg."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float


def probe(path: str | Path) -> VideoInfo:
    """Size and frame rate of a video from its header (ffmpeg -i); raises H36MError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise H36MError(path, "video not found")
    res = subprocess.run([ffmpeg_binary(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    m = re.search(r"Stream #.*?Video: .*?(\d{2,5})x(\d{2,5})", res.stderr)
    if not m:
        last = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "no output"
        raise H36MError(path, f"unreadable video ({last})")
    fps = re.search(r"([\d.]+) fps", res.stderr)
    return VideoInfo(int(m.group(1)), int(m.group(2)), float(fps.group(1)) if fps else 50.0)


def iter_frames(path: str | Path, info: VideoInfo | None = None, threads: int = 1) -> Iterator[np.ndarray]:
    """Decode a video front to back with one ffmpeg process; yield (H, W, 3) uint8 BGR frames.

    Raises H36MError naming the file if ffmpeg reports a decoding error (a truncated or corrupt file) — after
    yielding the frames it could decode.
    """
    import ffmpeg

    path = Path(path)
    info = info or probe(path)
    proc = (ffmpeg.input(str(path), threads=threads)
            .output("pipe:", format="rawvideo", pix_fmt="bgr24", threads=threads)
            .global_args("-hide_banner", "-loglevel", "error", "-nostdin")
            .run_async(cmd=ffmpeg_binary(), pipe_stdout=True, pipe_stderr=True))
    nbytes = info.width * info.height * 3
    try:
        while True:
            buf = proc.stdout.read(nbytes)
            if len(buf) < nbytes:
                break
            yield np.frombuffer(buf, np.uint8).reshape(info.height, info.width, 3)
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        code = proc.wait()
    if code != 0:
        last = err.splitlines()[-1] if err else f"ffmpeg exited with {code}"
        raise H36MError(path, f"cannot decode video ({last})")


def decode_to_null(path: str | Path, threads: int = 1) -> None:
    """Decode a whole video and discard the frames (the decode speed limit, for benchmarks)."""
    subprocess.run([ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-nostdin", "-threads", str(threads),
                    "-i", str(path), "-threads", str(threads), "-f", "null", "-"], check=True)


def write_video(path: str | Path, frames: Iterable[np.ndarray], width: int, height: int, fps: int = 50,
                crf: int = 23, threads: int = 1) -> int:
    """Encode BGR uint8 (height, width, 3) frames as H.264 MP4 (yuv420p; even width and height) at `fps`, or, for a
    path ending in `.gif`, as an animated GIF with a palette made for the clip. Atomic; returns frames written."""
    import ffmpeg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gif = path.suffix.lower() == ".gif"
    tmp = path.with_name(f".{path.stem}.tmp{'.gif' if gif else '.mp4'}")
    if gif:
        out_args = {"vf": "split[a][b];[a]palettegen=stats_mode=diff[p];[b][p]paletteuse", "r": fps}
    else:
        out_args = {"vcodec": "libx264", "pix_fmt": "yuv420p", "crf": crf, "preset": "veryfast", "r": fps,
                    "threads": threads, "x264-params": "log-level=error"}
    proc = (ffmpeg.input("pipe:", format="rawvideo", pix_fmt="bgr24", s=f"{width}x{height}", framerate=fps)
            .output(str(tmp), **out_args)
            .global_args("-hide_banner", "-loglevel", "error", "-nostdin")
            .overwrite_output()
            .run_async(cmd=ffmpeg_binary(), pipe_stdin=True, pipe_stderr=True))
    n = 0
    try:
        for f in frames:
            if f.shape != (height, width, 3):
                raise ValueError(f"frame {n} has shape {f.shape}, expected {(height, width, 3)}")
            proc.stdin.write(np.ascontiguousarray(f, np.uint8).tobytes())
            n += 1
    finally:
        proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace")
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"ffmpeg failed writing {path}: {err.strip()}")
    os.replace(tmp, path)
    return n
