"""`h36m show`: one sample as a grid of views (rows) x frames (columns), the 17-joint skeleton drawn on each crop
(left side blue, right side red, centre green), so sync and crops can be judged at a glance."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from h36m.h36m_tools.errors import H36MError
from h36m.pipelines.files import write_atomic
from h36m.h36m_tools.skeleton import BONES17, LEFT17, RIGHT17

from h36m.pipelines.shards.sample import Clip, read_clip

#: BGR colours of bones and joints by side.
COLORS = {"left": (230, 120, 30), "right": (40, 40, 230), "centre": (60, 200, 60)}
HEADER = 24
LABEL = 92


@dataclass(frozen=True)
class ShowConfig:
    shard: Path
    out: Path = Path("clip.png")
    key: str | None = None         # default: the shard's first sample
    max_frames: int = 8            # columns: frames spread evenly over the clip
    cell: int = 160                # side of one crop in the picture, px


def _side(j: int) -> str:
    return "left" if j in LEFT17 else "right" if j in RIGHT17 else "centre"


def render_clip(clip: Clip, max_frames: int = 8, cell: int = 160) -> np.ndarray:
    """(H, W, 3) uint8 BGR picture of a clip with decoded `images` (V, F, h, w, 3) RGB and pose2d in crop px."""
    import cv2

    V, F = clip.views, clip.frames
    cols = np.unique(np.linspace(0, F - 1, min(max_frames, F)).round().astype(int))
    size = clip.images.shape[2]
    s = cell / size
    real = int(clip.meta.get("real_frames", F))
    img = np.full((HEADER * 2 + V * cell, LABEL + len(cols) * cell, 3), 255, np.uint8)
    title = f"{clip.key}  {clip.meta.get('action', '')}  {V} views x {F} frames ({real} real)  crop {size} px"
    cv2.putText(img, title, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for c, t in enumerate(cols):
        label = f"t={t} f={clip.meta['frames'][t]}" + (" pad" if t >= real else "")
        cv2.putText(img, label, (LABEL + c * cell + 4, HEADER + 17), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    for v in range(V):
        y0 = HEADER * 2 + v * cell
        cv2.putText(img, str(clip.cameras[v]["id"]), (4, y0 + cell // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
        for c, t in enumerate(cols):
            x0 = LABEL + c * cell
            crop = cv2.resize(np.ascontiguousarray(clip.images[v, t][..., ::-1]), (cell, cell),
                              interpolation=cv2.INTER_LINEAR)
            pts = clip.pose2d[v, t] * s                     # continuous px: pixel i covers [i, i+1)
            for j, p in BONES17:
                a, b = pts[j], pts[p]
                cv2.line(crop, (int(round(a[0] - 0.5)), int(round(a[1] - 0.5))),
                         (int(round(b[0] - 0.5)), int(round(b[1] - 0.5))), COLORS[_side(j)], 2, cv2.LINE_AA)
            for j, q in enumerate(pts):
                cv2.circle(crop, (int(round(q[0] - 0.5)), int(round(q[1] - 0.5))), 3, COLORS[_side(j)], -1,
                           cv2.LINE_AA)
            img[y0:y0 + cell, x0:x0 + cell] = crop
            cv2.rectangle(img, (x0, y0), (x0 + cell - 1, y0 + cell - 1), (200, 200, 200), 1)
    return img


def show(cfg: ShowConfig) -> tuple[Path, Clip]:
    """Render sample `cfg.key` of `cfg.shard` to the PNG `cfg.out` (written atomically); returns it and the clip."""
    import cv2

    clip = read_clip(cfg.shard, cfg.key)
    img = render_clip(clip, cfg.max_frames, cfg.cell)
    out = Path(cfg.out)
    ok, png = cv2.imencode(".png", img)
    if not ok:
        raise H36MError(out, "cannot encode the picture as PNG")
    write_atomic(out, png.tobytes())
    return out, clip
