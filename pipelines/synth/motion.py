"""Synthetic motion for `h36m synth`: a 32-joint H36M skeleton driven by action-dependent joint angles.

Body frame: x = the person's left, y = forward, z = up; millimetres. Forward kinematics from local rotations, so
bone lengths are exactly constant within a subject. Pure numpy; deterministic for a seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h36m.h36m_tools.skeleton import PARENTS32

# Rest offsets of each joint from its parent (body frame, mm, for a 1.0-scale subject).
_REST = np.array([
    [0, 0, 0],                                                        # 0 hip (root)
    [-130, 0, 0], [0, 0, -450], [0, 0, -440], [0, 130, -45], [0, 60, 0],     # 1-5 right leg
    [130, 0, 0], [0, 0, -450], [0, 0, -440], [0, 130, -45], [0, 60, 0],      # 6-10 left leg
    [0, 0, 1e-3], [0, 0, 235], [0, 0, 250], [0, 25, 110], [0, -10, 115],      # 11 spine, 12 spine1, 13 thorax,
    [0, 0, 250], [150, 0, -25], [0, 0, -280], [0, 0, -250], [0, 0, -60],     # 16 L base, 17 L shoulder ...
    [0, 15, -30], [0, 0, -80], [0, 0, -20],
    [0, 0, 250], [-150, 0, -25], [0, 0, -280], [0, 0, -250], [0, 0, -60],    # 24 R base, 25 R shoulder ...
    [0, 15, -30], [0, 0, -80], [0, 0, -20],
], float)

LIMB_RADIUS_MM = {  # (child joint in 32-joint numbering) -> radius of the limb from its parent, for drawing
    2: 75, 3: 55, 4: 40, 7: 75, 8: 55, 9: 40, 12: 125, 13: 135, 14: 55, 18: 48, 19: 38, 22: 30,
    26: 48, 27: 38, 30: 30, 17: 50, 25: 50,
}
HEAD_RADIUS_MM = 105


def _rot(axis: int, angle: np.ndarray) -> np.ndarray:
    """(T,) angles (rad) -> (T, 3, 3) rotations about body axis 0 (x), 1 (y) or 2 (z)."""
    c, s = np.cos(angle), np.sin(angle)
    out = np.zeros(angle.shape + (3, 3))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    out[..., axis, axis] = 1
    out[..., i, i], out[..., j, j], out[..., i, j], out[..., j, i] = c, c, -s, s
    return out


def subject_offsets(subject: str, seed: int) -> np.ndarray:
    """(32, 3) rest offsets for a subject: an overall height scale and per-bone variation, fixed by subject+seed."""
    rng = np.random.default_rng([seed, int(subject.lstrip("S"))])
    scale = rng.uniform(0.9, 1.1)
    per_bone = rng.uniform(0.94, 1.06, size=(32, 1))
    per_bone[[6, 7, 8, 9, 10]] = per_bone[[1, 2, 3, 4, 5]]          # symmetric legs
    per_bone[[24, 25, 26, 27, 28, 29, 30, 31]] = per_bone[[16, 17, 18, 19, 20, 21, 22, 23]]
    return _REST * scale * per_bone


@dataclass(frozen=True)
class ActionStyle:
    """How an action moves: walking speed, seated share, arm gestures, turning; angles in radians."""
    speed: float = 0.0          # mm/s along the path
    gait: float = 0.0           # leg swing amplitude
    sit: float = 0.0            # 0 stand .. 1 seated (time-averaged)
    sit_cycle: float = 0.0      # amplitude of standing up / sitting down over time
    arms: float = 0.6           # arm gesture amplitude
    raise_arm: float = 0.0      # bias lifting an arm (phone, photo, eating)
    bend: float = 0.1           # spine bend amplitude
    turn: float = 0.6           # body yaw rate, rad/s


STYLES = {
    "Directions": ActionStyle(speed=300, gait=0.35, arms=1.1, turn=0.8),
    "Discussion": ActionStyle(arms=1.2, turn=0.7, bend=0.2),
    "Eating": ActionStyle(sit=1.0, arms=0.8, raise_arm=1.4, bend=0.25),
    "Greeting": ActionStyle(speed=350, gait=0.4, arms=1.5, raise_arm=0.8),
    "Phoning": ActionStyle(speed=200, gait=0.3, arms=0.6, raise_arm=2.0),
    "Photo": ActionStyle(speed=150, gait=0.25, arms=0.7, raise_arm=1.8, bend=0.3),
    "Posing": ActionStyle(arms=1.6, bend=0.35, turn=0.9),
    "Purchases": ActionStyle(speed=400, gait=0.4, arms=1.0, bend=0.4),
    "Sitting": ActionStyle(sit=1.0, arms=0.9, bend=0.3, turn=0.3),
    "SittingDown": ActionStyle(sit=0.5, sit_cycle=0.5, arms=0.7, bend=0.45, turn=0.3),
    "Smoking": ActionStyle(sit=0.5, sit_cycle=0.5, arms=0.6, raise_arm=1.6),
    "Waiting": ActionStyle(speed=150, gait=0.25, arms=0.8, bend=0.25, turn=0.5),
    "WalkDog": ActionStyle(speed=900, gait=0.6, arms=0.9, bend=0.3),
    "Walking": ActionStyle(speed=1200, gait=0.7, arms=0.8),
    "WalkTogether": ActionStyle(speed=1000, gait=0.6, arms=0.7, turn=0.4),
}


def animate(offsets: np.ndarray, action: str, frames: int, fps: float, rng: np.random.Generator,
            area_radius: float = 1300.0) -> np.ndarray:
    """World joints (frames, 32, 3) in mm: the skeleton with `offsets` moving as `action` inside the capture area.

    The root follows a smooth loop of radius <= `area_radius` around the world origin on the floor (z = 0);
    feet stay near the floor; gesture frequencies are ~1-2 Hz so consecutive frames differ visibly.
    """
    style = STYLES[action]
    t = np.arange(frames) / fps
    ph = rng.uniform(0, 2 * np.pi, size=16)
    freq = rng.uniform(1.0, 1.8, size=8)
    T = frames
    local = np.tile(np.eye(3), (32, T, 1, 1))

    def wave(k: int, amp: float, f: float | None = None) -> np.ndarray:
        return amp * np.sin(2 * np.pi * (f or freq[k % 8]) * t + ph[k % 16])

    sit = np.clip(style.sit + style.sit_cycle * np.sin(2 * np.pi * 0.35 * t + ph[0]), 0, 1)
    cadence = 1.6 + 0.004 * style.speed / 10                   # steps per second grows with speed
    stride = 2 * np.pi * cadence / 2 * t + ph[1]
    gait = style.gait * (1 - sit)
    # legs: hip flexion about x (positive = forward), knees bend back
    for hip, knee, sign in ((1, 2, 1), (6, 7, -1)):
        flex = 1.45 * sit + gait * sign * np.sin(stride) + wave(hip, 0.08)
        local[hip] = _rot(0, flex) @ _rot(1, sign * wave(hip + 1, 0.12) * (1 - sit))
        local[knee] = _rot(0, -(1.55 * sit + gait * 0.9 * (1 + np.sin(stride + sign * 1.2 + np.pi / 2)) / 2))
    # spine: bend forward/back and twist
    local[12] = _rot(0, wave(3, style.bend) + 0.15 * sit) @ _rot(2, wave(4, 0.35 * style.arms))
    local[13] = _rot(0, wave(5, 0.25)) @ _rot(2, wave(6, 0.5))
    # arms: swing opposite the legs while walking, gestures otherwise, optional raised arm
    for sh, el, side in ((17, 18, 1), (25, 26, -1)):
        swing = -gait * side * np.sin(stride) * 0.8
        raise_ = style.raise_arm * (0.5 + 0.5 * np.sin(2 * np.pi * 0.4 * t + ph[sh % 16])) if side == -1 else 0
        lift = np.abs(wave(sh, style.arms)) + raise_ * 0.6
        local[sh] = _rot(0, swing + wave(sh + 2, 0.6 * style.arms) + raise_ * 0.7) @ _rot(1, side * lift * 0.8)
        local[el] = _rot(0, 0.3 + np.abs(wave(el, 1.2 * style.arms)) + raise_ * 0.9)
    # root: heading, path and height
    heading = np.cumsum(np.full(T, style.turn / fps) * np.sign(np.sin(0.3 * t + ph[7]) + 0.3)) + ph[8]
    height = np.zeros(T)                                      # set after FK: lowest foot joint on the floor
    root_rot = _rot(2, heading) @ _rot(0, -0.1 * sit)
    radius = area_radius * rng.uniform(0.35, 0.8)
    omega = (style.speed + 150) / max(radius, 1.0) * rng.choice([-1, 1])
    ang = omega * t + ph[9]
    pos = np.stack([radius * np.cos(ang) * 0.9, radius * np.sin(ang), height], -1)
    if style.speed > 0:                                       # face along the path when walking
        heading = ang + np.pi * (omega > 0) + wave(10, 0.3)
        root_rot = _rot(2, heading) @ _rot(0, -0.1 * sit)
    local[0] = root_rot
    # forward kinematics
    glob = np.zeros((32, T, 3, 3))
    out = np.zeros((32, T, 3))
    for j, p in enumerate(PARENTS32):
        if p < 0:
            glob[j], out[j] = local[j], pos
        else:
            out[j] = out[p] + np.einsum("tij,j->ti", glob[p], offsets[j])
            glob[j] = glob[p] @ local[j]
    out = out.transpose(1, 0, 2)
    feet = out[:, [3, 4, 5, 8, 9, 10], 2]
    out[..., 2] -= feet.min(axis=1, keepdims=True) - 15.0    # soles ~15 mm below the ankle/toe joints
    return out
