"""Person boxes and square crops: pure box math, and the affine warp that cuts a crop out of a frame.

Conventions (pixels, pixel centres at integer coordinates, as numpy indexes an image):
  box   = [x0, y0, x1, y1] in full-frame pixels, square (x1 - x0 == y1 - y0 == side), may reach outside the image;
  crop  = (full - [x0, y0]) * size / side          (`to_crop`),   full = crop * side / size + [x0, y0] (`to_full`).
The image is warped with exactly that transform (`crop_matrix`), black outside the frame, so a joint at full-frame
pixel p shows at crop pixel `to_crop(p)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Smallest box side in pixels (a degenerate pose, e.g. every joint at one point, still gets a usable box).
MIN_SIDE = 8.0

# BT.601 limited-range YCbCr -> BGR (what ffmpeg's swscale uses for untagged H.264), as a 3x4 affine for cv2.transform
_Y, _CB_B, _CB_G, _CR_G, _CR_R = 255 / 219, 1.772 * 255 / 224, -0.344136 * 255 / 224, -0.714136 * 255 / 224, \
    1.402 * 255 / 224
YUV_TO_BGR = np.array([[_Y, _CB_B, 0.0, -16 * _Y - 128 * _CB_B],
                       [_Y, _CB_G, _CR_G, -16 * _Y - 128 * (_CB_G + _CR_G)],
                       [_Y, 0.0, _CR_R, -16 * _Y - 128 * _CR_R]])
#: Luma position of chroma sample 0 of 4:2:0 video (H.264's default 'left' siting): co-sited in x, between rows in y.
CHROMA_SITING = (0.0, 0.5)


def square_box(extent: np.ndarray, margin: float = 1.2, min_side: float = MIN_SIDE) -> np.ndarray:
    """(..., 4) extents [x0, y0, x1, y1] -> (..., 4) square boxes with the same centre, side = margin x the larger
    extent (at least `min_side` px). Units: pixels."""
    extent = np.asarray(extent, float)
    centre = 0.5 * (extent[..., :2] + extent[..., 2:])
    side = margin * np.max(extent[..., 2:] - extent[..., :2], axis=-1)
    half = 0.5 * np.maximum(side, min_side)[..., None]
    return np.concatenate([centre - half, centre + half], axis=-1)


def joints_extent(joints: np.ndarray) -> np.ndarray:
    """(..., J, 2) pixel joints -> (..., 4) their extent [min x, min y, max x, max y]."""
    joints = np.asarray(joints, float)
    return np.concatenate([joints.min(axis=-2), joints.max(axis=-2)], axis=-1)


def joints_box(joints: np.ndarray, margin: float = 1.2) -> np.ndarray:
    """(..., J, 2) pixel joints (the 17 of the standard skeleton) -> (..., 4) square box centred on their extent,
    side = margin x the larger of its width and height (H36M's usual box: margin 1.2)."""
    return square_box(joints_extent(joints), margin)


def mask_extent(mask: np.ndarray, width: int | None = None, height: int | None = None) -> np.ndarray | None:
    """(H, W) person mask -> extent [x0, y0, x1, y1] of its pixels (outer pixel edges, i.e. first centre - 0.5 to
    last centre + 0.5) in the pixels of a `width` x `height` video (default: the mask's own size); None if empty."""
    mask = np.asarray(mask)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    e = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], float)   # edges, pixel i spans [i, i+1)
    sx = 1.0 if width is None else width / mask.shape[1]
    sy = 1.0 if height is None else height / mask.shape[0]
    return e * [sx, sy, sx, sy] - 0.5                                     # edges -> centre-based coordinates


def to_crop(points: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """(..., N, 2) full-frame pixels -> crop pixels of the `size` x `size` crop of `box` (..., 4); shapes broadcast
    as points[..., N, 2] with box[..., None, 4]."""
    box = np.asarray(box, float)[..., None, :]
    return (np.asarray(points, float) - box[..., :2]) * (size / (box[..., 2:] - box[..., :2]))


def to_full(points: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Inverse of `to_crop`: (..., N, 2) crop pixels -> full-frame pixels."""
    box = np.asarray(box, float)[..., None, :]
    return np.asarray(points, float) * ((box[..., 2:] - box[..., :2]) / size) + box[..., :2]


def crop_matrix(box: np.ndarray, size: int) -> np.ndarray:
    """(4,) box -> (2, 3) affine matrix mapping full-frame pixels to crop pixels (the `to_crop` transform)."""
    x0, y0, x1, y1 = np.asarray(box, float)
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    return np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy]])


def crop_bgr(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Cut the (size, size, C) crop of `box` out of an (H, W, C) uint8 image: bilinear warp, black outside."""
    import cv2

    return cv2.warpAffine(image, crop_matrix(box, size), (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def _plane_warps(box: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(luma matrix, chroma matrix, chroma crop size) that cut the crop of `box` from 4:2:0 planes: luma at size x
    size; chroma at half that for even sizes (chroma crop sample j covers crop luma 2j, 2j+1), at full size for odd
    ones (chroma crop sample j at crop luma j). Chroma sample i sits at luma 2i + CHROMA_SITING."""
    m = crop_matrix(box, size)
    x0, y0 = float(box[0]), float(box[1])
    sx, sy = m[0, 0], m[1, 1]
    ox, oy = CHROMA_SITING
    if size % 2 == 0:
        mc = np.array([[sx, 0.0, (sx * (ox - x0) - 0.5) / 2], [0.0, sy, (sy * (oy - y0) - 0.5) / 2]])
        return m, mc, (size // 2, size // 2)
    mc = np.array([[2 * sx, 0.0, sx * (ox - x0)], [0.0, 2 * sy, sy * (oy - y0)]])
    return m, mc, (size, size)


def _warp_planes(y: np.ndarray, u: np.ndarray, v: np.ndarray, box: np.ndarray, size: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The crop of `box` as limited-range planes (Y size x size, U and V as `_plane_warps` says); black (Y 16,
    U V 128) outside the frame."""
    import cv2

    m, mc, csize = _plane_warps(box, size)
    flags, border = cv2.INTER_LINEAR, cv2.BORDER_CONSTANT
    return (cv2.warpAffine(y, m, (size, size), flags=flags, borderMode=border, borderValue=16),
            cv2.warpAffine(u, mc, csize, flags=flags, borderMode=border, borderValue=128),
            cv2.warpAffine(v, mc, csize, flags=flags, borderMode=border, borderValue=128))


def crop_yuv420(y: np.ndarray, u: np.ndarray, v: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """The (size, size, 3) BGR crop of `box` from a planar 4:2:0 frame: y (H, W), u and v (ceil(H/2), ceil(W/2)).

    Each plane is warped straight to the crop (Y at size x size; U and V at half that, then bilinearly upsampled,
    for even sizes; at full size for odd ones) and converted with BT.601 limited range, as ffmpeg does for untagged
    video: no full-size BGR frame is ever made. Black (Y 16, U V 128) outside the frame.
    """
    import cv2

    planes = list(_warp_planes(y, u, v, box, size))
    for i in (1, 2):
        if planes[i].shape[0] != size:
            planes[i] = cv2.resize(planes[i], (size, size), interpolation=cv2.INTER_LINEAR)
    return cv2.transform(cv2.merge(planes), YUV_TO_BGR)


#: Limited-range (video) -> full-range (JFIF) lookup tables for Y and for Cb/Cr, BT.601 both sides.
_FULL_Y = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)
_FULL_C = np.clip(np.round((np.arange(256) - 128) * 255 / 224 + 128), 0, 255).astype(np.uint8)


def crop_jpeg_yuv420(y: np.ndarray, u: np.ndarray, v: np.ndarray, box: np.ndarray, size: int,
                     quality: int = 90) -> bytes:
    """The JPEG of the crop of `box` from a planar 4:2:0 frame (planes as `crop_yuv420` takes them).

    For even sizes the warped planes go straight into a 4:2:0 JPEG (libjpeg-turbo through simplejpeg), only
    rescaled from the video's limited range to JFIF's full range: no BGR image, no colour conversion and no chroma
    resampling in between (what `encode_jpeg(crop_yuv420(...))` does and then undoes). The decoded result equals
    that route's to about 1 grey level. Odd sizes take that route. Deterministic for equal input and quality."""
    if size % 2:
        return encode_jpeg(crop_yuv420(y, u, v, box, size), quality)
    import cv2
    import simplejpeg

    Y, U, V = _warp_planes(y, u, v, box, size)
    return simplejpeg.encode_jpeg_yuv_planes(cv2.LUT(Y, _FULL_Y), cv2.LUT(U, _FULL_C), cv2.LUT(V, _FULL_C),
                                             quality=int(quality))


@dataclass(frozen=True)
class DecodeWindow:
    """The part of each frame ffmpeg cuts out before piping it: a `w` x `h` window (even sizes) whose top-left corner
    in frame t is (x[t], y[t]) (even, constant over chunks of frames). Full-frame pixel p of frame t is window pixel
    p - (x[t], y[t])."""
    w: int
    h: int
    x: np.ndarray          # (N,) int
    y: np.ndarray          # (N,) int

    def offsets(self) -> np.ndarray:
        """(N, 4) what to subtract from full-frame boxes [x0, y0, x1, y1] to get window boxes."""
        return np.stack([self.x, self.y, self.x, self.y], axis=1).astype(float)


def decode_windows(boxes: np.ndarray, width: int, height: int, chunk: int = 25, pad: int = 4) -> DecodeWindow:
    """(N, 4) boxes of one video's frames -> the window ffmpeg should cut out of each frame so that every crop can
    be made from it: per chunk of `chunk` frames the union of the chunk's boxes padded by `pad` px (for the
    bilinear warp) and clipped to the frame; one window size for the video (the largest chunk union, so a moving
    person costs no more than the box and half a second of motion), placed per chunk. Even-aligned (4:2:0)."""
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    n = len(boxes)
    full = DecodeWindow(width - width % 2, height - height % 2, np.zeros(n, int), np.zeros(n, int))
    if n == 0 or width < 2 or height < 2:
        return full
    starts = np.arange(0, n, chunk)
    lo = np.minimum.reduceat(boxes[:, :2], starts, axis=0)
    hi = np.maximum.reduceat(boxes[:, 2:], starts, axis=0)
    lo = np.clip(np.floor(lo) - pad, 0, [width, height]).astype(int) // 2 * 2
    hi = np.clip(np.ceil(hi) + pad, 0, [width, height]).astype(int)
    size = np.maximum(hi - lo, 2).max(axis=0)
    w, h = (int(v) for v in np.minimum(size + size % 2, [full.w, full.h]))
    x = np.clip(lo[:, 0], 0, full.w - w) // 2 * 2
    y = np.clip(lo[:, 1], 0, full.h - h) // 2 * 2
    reps = np.diff(np.append(starts, n))
    return DecodeWindow(w, h, np.repeat(x, reps), np.repeat(y, reps))


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """BGR uint8 image -> JPEG bytes (libjpeg through cv2; deterministic for equal input and quality)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
