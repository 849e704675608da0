"""Decoding a video front to back to planar YUV 4:2:0 through one ffmpeg process (ffmpeg-python).

Half the bytes of BGR through the pipe and no full-frame colour conversion: `h36m extract` only converts the crops
(`pipelines.crop.crop_yuv420`). Uses `h36m_tools.video.ffmpeg_binary()` (PATH, else imageio-ffmpeg's).
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from h36m_tools.errors import H36MError
from h36m_tools.video import VideoInfo, ffmpeg_binary, probe


def iter_yuv420(path: str | Path, info: VideoInfo | None = None, threads: int = 1,
                region: tuple[int, int, int, int] | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield each frame as (y (H, W), u (ceil(H/2), ceil(W/2)), v (same)) uint8 planes, in frame order.

    `region` (x, y, w, h), even numbers inside the frame, has ffmpeg cut that part out first (fewer bytes through
    the pipe); the planes are then the region's. They are views into one buffer reused for the next frame: copy
    what you keep. Raises H36MError naming the file if ffmpeg reports a decoding error (truncated or corrupt
    file), after yielding the frames it could decode.
    """
    import ffmpeg

    path = Path(path)
    info = info or probe(path)
    stream = ffmpeg.input(str(path), threads=threads)
    w, h = info.width, info.height
    if region is not None and tuple(region) != (0, 0, w, h):
        rx, ry, w, h = (int(v) for v in region)
        if min(rx, ry, w, h) < 0 or (rx | ry | w | h) % 2 or rx + w > info.width or ry + h > info.height or not w * h:
            raise ValueError(f"region {region} is not even-aligned inside the {info.width}x{info.height} frame")
        stream = stream.crop(rx, ry, w, h)
    cw, ch = (w + 1) // 2, (h + 1) // 2
    nbytes = w * h + 2 * cw * ch
    args = (stream.output("pipe:", format="rawvideo", pix_fmt="yuv420p", threads=threads)
            .global_args("-hide_banner", "-loglevel", "error", "-nostdin")
            .compile(cmd=ffmpeg_binary()))
    errlog = tempfile.TemporaryFile()      # a file, not a pipe: a chatty decoder can never block on it
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errlog)
    buf = np.empty(nbytes, np.uint8)
    view = memoryview(buf)
    y = buf[: w * h].reshape(h, w)
    u = buf[w * h: w * h + cw * ch].reshape(ch, cw)
    v = buf[w * h + cw * ch:].reshape(ch, cw)
    finished = False
    try:
        while True:
            got = 0
            while got < nbytes:
                n = proc.stdout.readinto(view[got:])
                if not n:
                    break
                got += n
            if got < nbytes:
                break
            yield y, u, v
        finished = True
    finally:
        if not finished:          # the consumer stopped early: do not wait for the whole file
            proc.kill()
        proc.stdout.close()
        code = proc.wait()
        errlog.seek(0)
        err = errlog.read().decode(errors="replace").strip()
        errlog.close()
    if code != 0:
        last = err.splitlines()[-1] if err else f"ffmpeg exited with {code}"
        raise H36MError(path, f"cannot decode video ({last})")
