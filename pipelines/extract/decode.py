"""Decoding a video front to back to planar YUV 4:2:0 through one ffmpeg process (ffmpeg-python).

Half the bytes of BGR through the pipe and no full-frame colour conversion: `h36m extract` only converts the crops
(`extract.crop`). Uses `h36m_tools.video.ffmpeg_binary()` (PATH, else imageio-ffmpeg's).
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from h36m.h36m_tools.errors import H36MError
from h36m.h36m_tools.video import VideoInfo, ffmpeg_binary, probe

from h36m.pipelines.extract.crop import DecodeWindow


def _widen_pipe(pipe, frame_bytes: int) -> None:
    """Let the pipe hold a whole frame (Linux; up to the system's limit, 1 MiB by default): fewer wake-ups and
    context switches between ffmpeg and us per frame. Best effort: nothing changes where it is not allowed."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, min(max(frame_bytes, 1 << 16), 1 << 20))
    except (ImportError, AttributeError, OSError):
        pass


def piecewise(values: np.ndarray) -> str:
    """(N,) ints -> an ffmpeg expression of the frame number `n` equal to values[n] (values[-1] past the end): a
    balanced tree of `if(lt(n,k),a,b)` over the runs of equal values, so each frame evaluates O(log runs)."""
    values = np.asarray(values, int).reshape(-1)
    if values.size == 0:
        return "0"
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    vals = values[starts]

    def tree(i: int, j: int) -> str:
        if j - i == 1:
            return str(int(vals[i]))
        m = (i + j) // 2
        return f"if(lt(n,{int(starts[m])}),{tree(i, m)},{tree(m, j)})"

    return tree(0, len(starts))


def iter_yuv420(path: str | Path, info: VideoInfo | None = None, threads: int = 1,
                window: DecodeWindow | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield each frame as (y (H, W), u (ceil(H/2), ceil(W/2)), v (same)) uint8 planes, in frame order.

    `window` (`crop.decode_windows`) has ffmpeg cut a moving w x h window out of every frame first (far
    fewer bytes through the pipe: piping whole 1000 x 1000 frames costs about half as much CPU as decoding them);
    the planes are then the window's, at (window.x[t], window.y[t]) of frame t. They are views into one buffer
    reused for the next frame: copy what you keep. Raises H36MError naming the file if ffmpeg reports a decoding
    error (truncated or corrupt file), after yielding the frames it could decode.
    """
    import ffmpeg

    path = Path(path)
    info = info or probe(path)
    stream = ffmpeg.input(str(path), threads=threads)
    w, h = info.width, info.height
    if window is not None and not (window.w == w and window.h == h and not window.x.any() and not window.y.any()):
        w, h = window.w, window.h
        if min(w, h) < 2 or (w | h) % 2 or w > info.width or h > info.height or len(window.x) == 0 or \
                (window.x % 2).any() or (window.y % 2).any() or (window.x < 0).any() or (window.y < 0).any() or \
                (window.x + w > info.width).any() or (window.y + h > info.height).any():
            raise ValueError(f"window {w}x{h} is not even-aligned inside the {info.width}x{info.height} frame")
        stream = stream.crop(piecewise(window.x), piecewise(window.y), w, h)
    cw, ch = (w + 1) // 2, (h + 1) // 2
    nbytes = w * h + 2 * cw * ch
    args = (stream.output("pipe:", format="rawvideo", pix_fmt="yuv420p", threads=threads)
            .global_args("-hide_banner", "-loglevel", "error", "-nostdin")
            .compile(cmd=ffmpeg_binary()))
    errlog = tempfile.TemporaryFile()      # a file, not a pipe: a chatty decoder can never block on it
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errlog)
    _widen_pipe(proc.stdout, nbytes)
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
