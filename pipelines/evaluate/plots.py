"""PNG figures of an evaluation (matplotlib, Agg backend): per-action bars, PCK curves, clips with skeletons."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from h36m.pipelines.files import atomic_path
from h36m.h36m_tools.names import ACTIONS
from h36m.h36m_tools.skeleton import BONES17, LEFT17

from h36m.pipelines.evaluate.evaluate import CURVE_THRESHOLDS, ClipPlot, EvalReport

COLORS = {"Mean pose": "#9e9e9e", "PoseFormer, GT 2-D": "#4c72b0", "Ours": "#dd8452"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def plot_per_action(r: EvalReport, path) -> Path:
    """Grouped bars per action (+ Avg) of MPJPE and P-MPJPE, one bar per method."""
    plt = _plt()
    cols = [a for a in ACTIONS if a in r.actions] + ["Avg"]
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.9 * len(cols) + 2), 7), sharex=True)
    x = np.arange(len(cols))
    methods = r.methods3d
    w = 0.8 / len(methods)
    for ax, metric in zip(axes, ("MPJPE", "P-MPJPE")):
        for i, m in enumerate(methods):
            row = r.row(m, metric)
            vals = [row.actions[a] for a in cols[:-1]] + [row.avg]
            ax.bar(x + (i - (len(methods) - 1) / 2) * w, vals, w, label=m, color=COLORS.get(m))
        ax.set_ylabel(f"{metric} (mm)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(ncol=len(methods), fontsize=8)
    axes[0].set_title(f"Per action, subjects {', '.join(r.subjects)}; damaged sequences {r.damaged_policy}; "
                      f"every {r.every} frame(s)", fontsize=9)
    axes[1].set_xticks(x, cols, rotation=45, ha="right")
    return _save(fig, path)


def plot_pck(r: EvalReport, path) -> Path:
    """PCK against the threshold (fraction of the box's longer side) for each 2-D method."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for row in r.rows2d:
        ax.plot(CURVE_THRESHOLDS, row.curve, label=row.method, color=COLORS.get(row.method))
    ax.set_xlabel("threshold (x box side)")
    ax.set_ylabel("PCK")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _bones(ax, joints, color, lw=1.5, three_d=False):
    for j, p in BONES17:
        c = color if j not in LEFT17 else color
        pts = joints[[j, p]]
        if three_d:
            ax.plot(pts[:, 0], pts[:, 2], -pts[:, 1], color=c, lw=lw)
        else:
            ax.plot(pts[:, 0], pts[:, 1], color=c, lw=lw)


def plot_clip(c: ClipPlot, path) -> Path:
    """One row per view: the crop with true (green) and predicted (red) 2-D joints, and both 3-D poses."""
    plt = _plt()
    v = len(c.images)
    fig = plt.figure(figsize=(6, 3 * v))
    for i in range(v):
        ax = fig.add_subplot(v, 2, 2 * i + 1)
        ax.imshow(c.images[i])
        _bones(ax, c.gt2d[i], "#2ca02c")
        _bones(ax, c.pred2d[i], "#d62728")
        ax.set_axis_off()
        ax.set_title(f"{c.key} view {i}", fontsize=8)
        ax3 = fig.add_subplot(v, 2, 2 * i + 2, projection="3d")
        _bones(ax3, c.gt3d[i], "#2ca02c", three_d=True)
        _bones(ax3, c.pred3d[i], "#d62728", three_d=True)
        lim = max(float(np.abs(c.gt3d[i]).max()), 1.0)
        ax3.set_xlim(-lim, lim), ax3.set_ylim(-lim, lim), ax3.set_zlim(-lim, lim)
        ax3.view_init(elev=10, azim=-80)
        ax3.set_title("3-D, camera frame (mm): green true, red predicted", fontsize=7)
        ax3.tick_params(labelsize=5)
    return _save(fig, path)
