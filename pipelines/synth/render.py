"""Drawing for `h36m synth`: a room-like background per camera and the body as shaded, depth-ordered limbs.

Images are BGR uint8. Geometry goes through the project's own camera model (H36M distortion), so the drawn joints
sit exactly on D2_Positions.

The body is left-right symmetric in colour, as people are: its left and right sides are told apart only by where it
faces (a face spot and a chest badge on the front, hair and a darker patch on the back, the feet pointing forward).
So a mirrored image is again a valid image of a (mirrored) person, and flipping with swapped labels is a valid
augmentation, as it is on real images.
"""
from __future__ import annotations

import cv2
import numpy as np

from h36m.h36m_tools.cameras import Camera, Intrinsics, project, world_to_camera
from h36m.h36m_tools.skeleton import PARENTS32
from h36m.pipelines.synth.motion import HEAD_RADIUS_MM, LIMB_RADIUS_MM

LIMB_COLOR = np.array([200, 120, 40])     # BGR: both arms and both legs
TORSO_COLOR = np.array([90, 150, 90])
SKIN_COLOR = np.array([120, 160, 215])
FACE_COLOR = np.array([40, 40, 70])       # the face spot on the front of the head
BADGE_COLOR = np.array([230, 230, 240])   # the badge on the front of the chest
HAIR_COLOR = np.array([25, 35, 50])       # the back of the head
BACK_COLOR = np.array([40, 70, 40])       # the patch on the back of the torso
_LIMBS32 = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31}
_SHIFT = 4                                 # sub-pixel bits for cv2 drawing


def _pts(uv: np.ndarray) -> np.ndarray:
    return np.round(uv * (1 << _SHIFT)).astype(np.int32)


def _project_points(world: np.ndarray, cam: Camera, k: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    c = world_to_camera(world, cam.extrinsics.R, cam.extrinsics.t)
    return project(c, k), c[..., 2]


def background(cam: Camera, k: Intrinsics, rng: np.random.Generator) -> np.ndarray:
    """A static room for one camera: wall gradient, a tiled floor (world plane z = 0) and box-shaped clutter."""
    h, w = k.height, k.width
    img = np.empty((h, w, 3), np.uint8)
    wall = rng.uniform(120, 180, size=3)
    img[:] = (wall * np.linspace(0.8, 1.1, h)[:, None, None]).clip(0, 255)
    # floor polygon: a large square on z = 0 clipped to points in front of the camera
    floor = np.zeros((h, w), np.uint8)
    tiles = 500.0
    for x0 in np.arange(-4000, 4000, tiles):
        for y0 in np.arange(-4000, 4000, tiles):
            quad = np.array([[x0, y0, 0], [x0 + tiles, y0, 0], [x0 + tiles, y0 + tiles, 0], [x0, y0 + tiles, 0]])
            uv, z = _project_points(quad, cam, k)
            if (z < 300).any() or np.abs(uv).max() > 20 * max(w, h):
                continue
            shade = 95 + 25 * ((int(x0 // tiles) + int(y0 // tiles)) % 2)
            cv2.fillConvexPoly(img, _pts(uv), (shade, shade + 8, shade + 15), cv2.LINE_AA, _SHIFT)
            cv2.fillConvexPoly(floor, _pts(uv), 1, cv2.LINE_8, _SHIFT)
    # clutter: boxes standing on the floor outside the capture area
    for _ in range(6):
        a = rng.uniform(0, 2 * np.pi)
        r = rng.uniform(2600, 3600)
        cx, cy = r * np.cos(a), r * np.sin(a)
        sx, sy, sz = rng.uniform(300, 800, 3)
        color = tuple(int(v) for v in rng.uniform(40, 220, 3))
        corners = np.array([[cx + dx, cy + dy, dz] for dz in (0, sz) for dx in (-sx / 2, sx / 2)
                            for dy in (-sy / 2, sy / 2)])
        uv, z = _project_points(corners, cam, k)
        if (z < 300).any():
            continue
        hull = cv2.convexHull(_pts(uv).reshape(-1, 1, 2))
        cv2.fillConvexPoly(img, hull, color, cv2.LINE_AA, _SHIFT)
        cv2.polylines(img, [hull], True, tuple(int(v * 0.6) for v in color), 1, cv2.LINE_AA, _SHIFT)
    return img


def _segments(world: np.ndarray):
    """(child, parent, radius_mm, colour) for each drawn limb of a 32-joint pose."""
    for j, p in enumerate(PARENTS32):
        r = LIMB_RADIUS_MM.get(j)
        if p < 0 or r is None:
            continue
        color = LIMB_COLOR if j in _LIMBS32 else TORSO_COLOR
        yield j, p, r, color


def facing(world: np.ndarray) -> np.ndarray:
    """The unit direction a 32-joint pose (32, 3) faces: up (hip -> thorax) x left (right hip -> left hip), the
    body frame's y (synth.motion: x left, y forward, z up)."""
    left = world[6] - world[1]
    up = world[13] - world[0]
    f = np.cross(up, left)
    return f / (np.linalg.norm(f) + 1e-9)


def front_marks(world: np.ndarray) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """(point (3,) mm, radius mm, colour) of the marks that tell the body's front from its back, as a face and hair
    or a shirt's front and back do: the face spot and the chest badge on the front, the hair and a darker patch on
    the back. Each is drawn only when its side faces the camera, so a view shows the front or the back at once."""
    f = facing(world)
    chest = 0.5 * (world[12] + world[13])
    head, torso = HEAD_RADIUS_MM, LIMB_RADIUS_MM[13]
    return [(world[15] + f * head * 0.75, head * 0.5, FACE_COLOR),
            (chest + f * torso * 0.8, torso * 0.55, BADGE_COLOR),
            (world[15] - f * head * 0.5, head * 0.85, HAIR_COLOR),
            (chest - f * torso * 0.8, torso * 0.6, BACK_COLOR)]


def draw_person(img: np.ndarray, mask: np.ndarray, world: np.ndarray, cam: Camera, k: Intrinsics) -> None:
    """Draw one 32-joint world pose (32, 3) mm into `img` (BGR) and its silhouette into `mask` (uint8), in place.

    Limbs are capsules whose pixel radius follows depth (radius_mm * f / Z), shaded dark-to-light across the limb,
    and drawn far to near (painter's order), so self-occlusion is right.
    """
    uv, z = _project_points(world, cam, k)
    f = 0.5 * (k.fx + k.fy)
    items = []
    for j, p, r, color in _segments(world):
        depth = 0.5 * (z[j] + z[p])
        items.append((depth, "limb", j, p, r, color))
    items.append((z[15] + 1.0, "head", 15, 14, HEAD_RADIUS_MM, SKIN_COLOR))
    marks = front_marks(world)
    mark_uv, mark_z = _project_points(np.stack([m[0] for m in marks]), cam, k)
    for i, (_, r, color) in enumerate(marks):        # drawn after the body part it sits on only when it faces us
        items.append((mark_z[i], "mark", i, i, r, color))
    for depth, kind, j, p, r, color in sorted(items, key=lambda it: -it[0]):
        rad = max(r * f / depth, 1.0)
        if kind == "mark":
            cv2.circle(img, tuple(_pts(mark_uv[j])), int(rad * 16), tuple(int(v) for v in color), -1, cv2.LINE_AA,
                       _SHIFT)
            continue
        if kind == "head":
            centre = uv[15]
            for s, g in ((1.0, 0.55), (0.75, 0.8), (0.4, 1.0)):
                cv2.circle(img, tuple(_pts(centre - np.array([0.25, 0.3]) * rad * (1 - s))), int(rad * s * 16),
                           tuple(int(v) for v in np.clip(color * g, 0, 255)), -1, cv2.LINE_AA, _SHIFT)
            cv2.circle(mask, tuple(_pts(centre)), int(rad * 16), 1, -1, cv2.LINE_8, _SHIFT)
            continue
        a, b = _pts(uv[p]), _pts(uv[j])
        normal = np.array([-(uv[j] - uv[p])[1], (uv[j] - uv[p])[0]])
        normal = normal / (np.linalg.norm(normal) + 1e-9)
        for s, g in ((1.0, 0.5), (0.72, 0.75), (0.42, 1.0), (0.18, 1.2)):
            off = _pts(-normal * rad * (1 - s) * 0.5) if s < 1 else np.zeros(2, np.int32)
            thick = max(int(round(2 * rad * s)), 1)
            cv2.line(img, tuple(a + off), tuple(b + off), tuple(int(v) for v in np.clip(color * g, 0, 255)),
                     thick, cv2.LINE_AA, _SHIFT)
        cv2.line(mask, tuple(a), tuple(b), 1, max(int(round(2 * rad)), 1), cv2.LINE_8, _SHIFT)


def render_frame(bg: np.ndarray, world: np.ndarray, cam: Camera, k: Intrinsics,
                 rng: np.random.Generator, noise: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """One video frame and the person's silhouette: background + person + Gaussian noise (sigma in grey levels)."""
    img = bg.copy()
    mask = np.zeros(bg.shape[:2], np.uint8)
    draw_person(img, mask, world, cam, k)
    if noise > 0:
        img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
    return img, mask


def bb_mask(silhouette: np.ndarray, pad: int = 2) -> np.ndarray:
    """H36M `ground_truth_bb`: the filled bounding rectangle of the silhouette grown by `pad` px for the
    anti-aliased fringe (uint8 0/1, same size)."""
    out = np.zeros_like(silhouette)
    ys = np.flatnonzero(silhouette.any(axis=1))
    xs = np.flatnonzero(silhouette.any(axis=0))
    if ys.size:
        out[max(ys[0] - pad, 0):ys[-1] + 1 + pad, max(xs[0] - pad, 0):xs[-1] + 1 + pad] = 1
    return out
