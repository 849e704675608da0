"""The evaluation report: JSON, CSV and Markdown files, rich tables laid out like the paper's Table II, plots.

Files written by `write_report(report, out)` (each atomically):
    results.json   everything: settings (damaged-sequence policy, frame sampling, OKS sigmas), 3-D rows, 2-D rows
    results.csv    one line per (table, method, metric): table, method, metric, 15 actions, Avg, All, S9, S11, ...
    results.md     the tables in Markdown, with the settings above them
    plots/         per_action.png, pck.png, clip_*.png (evaluate.plots)
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from pathlib import Path

from h36m.pipelines.files import write_atomic
from h36m.h36m_tools.names import ACTIONS

from h36m.pipelines.evaluate.evaluate import METRICS_3D, OURS, EvalReport

#: Column headers of the action columns (the published tables' short forms).
SHORT = {"Directions": "Dir.", "Discussion": "Disc.", "Eating": "Eat", "Greeting": "Greet", "Phoning": "Phone",
         "Photo": "Photo", "Posing": "Pose", "Purchases": "Purch.", "Sitting": "Sit", "SittingDown": "SitD.",
         "Smoking": "Smoke", "Waiting": "Wait", "WalkDog": "WalkD.", "Walking": "Walk", "WalkTogether": "WalkT."}
TITLES = {"MPJPE": "Protocol #1: MPJPE (mm)", "P-MPJPE": "Protocol #2: P-MPJPE (mm)",
          "N-MPJPE": "N-MPJPE (mm)", "MPJVE": "MPJVE (mm/frame)",
          "Abs. MPJPE": "Absolute MPJPE (mm): world joints, no alignment (triangulation only)"}


#: How the reports state each 3-D source (extract.dataset.SequenceMeta.pose3d_source).
POSE3D_WORDS = {"world": "world D3_Positions (true skeleton)",
                "camera": "camera coordinates, D3_Positions_mono (true skeleton)",
                "camera, universal skeleton": "camera coordinates of H36M's universal skeleton "
                                              "(D3_Positions_mono_universal): not comparable with true-skeleton errors"}


def _strides(strides: list[int]) -> str:
    """[1] -> 'every source frame (50 fps)'; [5] -> 'every 5th source frame (10 fps)'."""
    return ", ".join("every source frame (50 fps)" if s == 1 else f"every {s}-th source frame ({50 / s:g} fps; "
                     f"MPJVE per kept frame)" for s in strides)


def settings_lines(r: EvalReport) -> list[str]:
    """The settings every report states: data, damaged-sequence policy, frame sampling, averaging."""
    return [
        f"Run: {r.run} (stage {r.stage}); test subjects {', '.join(r.subjects)}; {r.clips} clips, "
        f"{r.frames} (view, frame) pairs, all cameras, 17 joints.",
        f"Damaged sequences ({', '.join(r.damaged)}): {r.damaged_policy}. S11 Directions: left out, as VideoPose3D's "
        "data and the published tables leave it out.",
        f"Frame sampling: {'every frame' if r.every == 1 else f'every {r.every}-th frame (source index % {r.every} == 0)'}"
        f" of shards holding {_strides(r.strides)}; frames covered by overlapping clips counted once.",
        f"3-D ground truth: {'; '.join(POSE3D_WORDS.get(s, s) for s in r.pose3d_sources)}.",
        "Avg = unweighted mean of the action columns (published tables' convention); All = mean over all frames. "
        "Per action: frames pooled over subactions and subjects. Actions absent from the test data: '-'.",
        "2-D (the paper's Table I): OKS AP/AR via pycocotools, the person area from the tight box of the 17 true "
        "joints, each detection scored by the mean of the network's per-joint confidences (1 without a confidence "
        f"head), per-joint sigmas {', '.join(f'{s:g}' for s in r.oks_sigmas)} (H36M defines none: COCO's for the "
        "same parts); PCK@a = joints within a x the crop side; MSE = mean squared coordinate error in the network's "
        f"input crop px ({r.input_size} px a side), also in full-frame px.",
        f"Training time per epoch: {_cell(r.epoch_time_s, 1)} s ({_cell(r.epoch_images_per_s, 0)} images/s; median "
        f"over whole epochs of the run's metrics.jsonl) on "
        f"{', '.join(r.train_subjects) if r.train_subjects else 'its training shards'}.",
    ] + stage_note(r)


def stage_note(r: EvalReport) -> list[str]:
    """What a 2d- or triangulate-stage run's report lacks and where to get it (empty for other stages)."""
    if r.stage == "triangulate":
        return ["3-D rows: the mean pose only (a triangulate-stage run trains no lifter; its Table II row: `h36m "
                "predict` it, then evaluate a lift run with `--keypoints` that file: 'Triangulated (4 views), <file>'; "
                "docs/triangulation.md)."]
    return ["3-D rows: the mean pose only (a 2d-stage run trains no lifter; for Table II train `--stage lift` and "
            "evaluate that run)."] if r.stage == "2d" else []


def to_json(r: EvalReport) -> str:
    d = dataclasses.asdict(r)
    d.pop("clip_plots", None)
    return json.dumps(_nan_to_none(d), indent=2) + "\n"


def to_csv(r: EvalReport) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    subjects = r.subjects
    w.writerow(["table", "method", "metric"] + list(ACTIONS) + ["Avg", "All"] + subjects)
    for row in r.rows3d:
        w.writerow(["3d", row.method, row.metric] + [_num(row.actions[a]) for a in ACTIONS]
                   + [_num(row.avg), _num(row.all_frames)] + [_num(row.subjects.get(s, math.nan)) for s in subjects])
    w.writerow([])
    w.writerow(["table", "method", "metric", "value"])
    for row in r.rows2d:
        for k, v in list(row.pck.items()) + [("mean_px", row.mean_px), ("mse_px2", row.mse_px2), ("AP", row.ap),
                                             ("AR", row.ar), ("mean_input_px", row.mean_input_px),
                                             ("mse_input_px2", row.mse_input_px2)]:
            w.writerow(["2d", row.method, k, _num(v)])
    return buf.getvalue()


def to_markdown(r: EvalReport) -> str:
    lines = ["# Evaluation", ""] + [f"- {x}" for x in settings_lines(r)] + [""]
    head = ["Method"] + [SHORT[a] for a in ACTIONS] + ["Avg", "All"]
    for metric in METRICS_3D:
        lines += [f"## {TITLES[metric]}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method in r.methods3d:
            row = r.row(method, metric)
            cells = [_cell(row.actions[a]) for a in ACTIONS] + [_cell(row.avg), _cell(row.all_frames)]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        subj = " · ".join(f"{m}: " + ", ".join(f"{s} {_cell(v)}" for s, v in r.row(m, metric).subjects.items())
                          for m in r.methods3d)
        lines += ["", f"Per subject: {subj}", ""]
    lines += ["## Table I: 2-D", "", "| Method | AP | AR | " + " | ".join(r.rows2d[0].pck)
              + f" | MSE ({r.input_size} px²) | MSE (full px²) | Mean (full px) |",
              "|---|" + "---|" * (len(r.rows2d[0].pck) + 5)]
    for row in r.rows2d:
        lines.append(f"| {row.method} | {_cell(row.ap, 3)} | {_cell(row.ar, 3)} | "
                     + " | ".join(f"{v:.3f}" for v in row.pck.values())
                     + f" | {_cell(row.mse_input_px2, 2)} | {_cell(row.mse_px2, 1)} | {_cell(row.mean_px, 2)} |")
    lines += ["", f"Time per training epoch: {_cell(r.epoch_time_s, 1)} s.", ""]
    if r.plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({os.path.relpath(p, Path(r.files[0]).parent) if r.files else p})"
                                         for p in r.plots]
    return "\n".join(lines) + "\n"


def action_tables(r, methods, width: int, metrics=("MPJPE", "P-MPJPE")) -> list:
    """Table-II-like rich tables of `metrics`: a row per method (`r.row(method, metric)`), the 15 actions and Avg,
    split in two halves of the actions when `width` columns cannot hold them with the longest method name (names
    wrap in the halves when even those are too wide; the numbers never do)."""
    from rich import box
    from rich.table import Table

    out = []
    numbers = 124            # the 15 action columns and Avg, with their padding
    halves = [ACTIONS] if width >= numbers + max(len(m) for m in methods) else [ACTIONS[:8], ACTIONS[8:]]
    for metric in metrics:
        for i, actions in enumerate(halves):
            title = TITLES[metric] + ("" if len(halves) == 1 else f" ({i + 1}/2)")
            t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
            t.add_column("Method", overflow="fold")      # long method names wrap; the numbers never do
            for a in actions:
                t.add_column(SHORT[a], justify="right", no_wrap=True)
            last = actions[-1] == ACTIONS[-1]
            if last:
                t.add_column("Avg", justify="right", style="bold", no_wrap=True)
            for method in methods:
                row = r.row(method, metric)
                t.add_row(method, *[_cell(row.actions[a], 0) for a in actions], *([_cell(row.avg)] if last else []))
            out.append(t)
    return out


def rich_tables(r: EvalReport, width: int = 200) -> list:
    """rich renderables: Table-II-like tables of MPJPE and P-MPJPE (rows = methods, 15 actions + Avg; split in two
    halves of the actions when `width` columns cannot hold them), other 3-D metrics, the 2-D table."""
    from rich.table import Table

    out = action_tables(r, r.methods3d, width)
    t = Table(title="Other 3-D metrics (Avg over actions / all frames)", title_justify="left")
    t.add_column("Method")
    for metric in METRICS_3D:
        t.add_column(metric, justify="right")
    for method in r.methods3d:
        t.add_row(method, *[f"{_cell(r.row(method, m).avg)} / {_cell(r.row(method, m).all_frames)}" for m in METRICS_3D])
    out.append(t)
    t = Table(title=f"Table I: 2-D (MSE in {r.input_size} px input crops and in full-frame px; time per training "
                    f"epoch {_cell(r.epoch_time_s, 1)} s)", title_justify="left")
    t.add_column("Method")
    for k in ("AP", "AR", *r.rows2d[0].pck, "MSE in", "MSE full"):
        t.add_column(k, justify="right", no_wrap=True)
    for row in r.rows2d:
        t.add_row(row.method, _cell(row.ap, 3), _cell(row.ar, 3), *[f"{v:.3f}" for v in row.pck.values()],
                  _cell(row.mse_input_px2, 1), _cell(row.mse_px2, 0))
    out.append(t)
    return out


# ----- several runs side by side: Table I and Table III ---------------------------------------------------------

COMPARE_COLUMNS = ("Run", "Model", "F", "AP", "AR", "PCK@0.05", "PCK@0.2", "MSE in (px²)", "MSE full (px²)",
                   "Time/epoch (s)")
#: The same columns' headers in the terminal table (narrow enough for 80 columns).
COMPARE_SHORT = ("Run", "Model", "F", "AP", "AR", "PCK.05", "PCK.2", "MSE in", "MSE full", "s/epoch")


def compare_rows(reports: list[EvalReport]) -> list[list[str]]:
    """One row per run (COMPARE_COLUMNS): the network's Table I metrics and its clip length F (Table III)."""
    rows = []
    for r in reports:
        ours = next(x for x in r.rows2d if x.method == OURS)
        rows.append([Path(r.run).name or r.run, r.model or "-", str(r.clip_frames), _cell(ours.ap, 3), _cell(ours.ar, 3),
                     f"{ours.pck.get('PCK@0.05', math.nan):.3f}", f"{ours.pck.get('PCK@0.2', math.nan):.3f}",
                     _cell(ours.mse_input_px2, 1), _cell(ours.mse_px2, 0), _cell(r.epoch_time_s, 1)])
    return rows


def compare_markdown(reports: list[EvalReport]) -> str:
    two_d = next(x for x in settings_lines(reports[0]) if x.startswith("2-D"))
    lines = ["# Table I and Table III: runs side by side", "", f"- {two_d}",
             f"- F: frames per test clip (Table III). MSE in: in the network's {reports[0].input_size} px input crops.",
             "",
             "| " + " | ".join(COMPARE_COLUMNS) + " |", "|" + "---|" * len(COMPARE_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in compare_rows(reports)]
    return "\n".join(lines) + "\n"


def compare_csv(reports: list[EvalReport]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COMPARE_COLUMNS)
    w.writerows(compare_rows(reports))
    return buf.getvalue()


def compare_table(reports: list[EvalReport]):
    """The rich table of `compare_rows`."""
    from rich.markup import escape
    from rich.table import Table

    from rich import box

    t = Table(title="Table I / Table III: runs side by side", title_justify="left", box=box.SIMPLE_HEAD,
              show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    rows = compare_rows(reports)
    for i, c in enumerate(COMPARE_SHORT):
        t.add_column(c, justify="left" if i < 2 else "right", no_wrap=True,
                     min_width=max([len(c)] + [len(row[i]) for row in rows]))
    for row in rows:
        t.add_row(*[escape(c) for c in row])
    return t


def write_comparison(reports: list[EvalReport], out: str | os.PathLike) -> list[str]:
    """compare.md and compare.csv in `out` (atomically); returns their paths."""
    out = Path(out)
    files = [out / "compare.md", out / "compare.csv"]
    write_atomic(files[0], compare_markdown(reports))
    write_atomic(files[1], compare_csv(reports))
    return [str(f) for f in files]


def write_report(r: EvalReport, out: str | os.PathLike, plots: bool = True) -> EvalReport:
    """Write results.json/.csv/.md (and the plots) into `out`; fills r.files and r.plots; returns r."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        from h36m.pipelines.evaluate.plots import plot_clip, plot_pck, plot_per_action

        pdir = out / "plots"
        # a 2d-stage run's figures are of its 2-D: no 3-D bars of the mean pose alone
        r.plots = ([] if r.stage == "2d" else [str(plot_per_action(r, pdir / "per_action.png"))]) + \
            [str(plot_pck(r, pdir / "pck.png"))]
        for c in r.clip_plots:
            r.plots.append(str(plot_clip(c, pdir / f"clip_{c.key.replace('/', '_')}.png")))
    r.files = [str(out / n) for n in ("results.json", "results.csv", "results.md")]
    for name, text in (("results.csv", to_csv(r)), ("results.md", to_markdown(r)), ("results.json", to_json(r))):
        write_atomic(out / name, text)
    return r


def _num(v: float) -> str:
    return "" if v is None or math.isnan(v) else f"{v:.4f}"


def _cell(v: float, digits: int = 1) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _nan_to_none(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


# ----- Table II of a lift run (evaluate.table2) -------------------------------------------------------------------

def lift_settings_lines(r) -> list[str]:
    """The settings a Table II report states: keypoints, windows, flip, damaged-sequence policy, frame sampling."""
    sources = ", ".join("ground-truth 2-D" if s == "gt" else s for s in r.sources)
    return [
        f"Run: {r.run} (stage {r.stage}, trained on 2-D keypoints: {r.trained_on}); data {r.data}; test subjects "
        f"{', '.join(r.subjects)}, whole sequences, all cameras ({r.sequences} view sequences), 17 joints.",
        f"Keypoints evaluated: {sources}. Receptive field {r.receptive_field} "
        f"({'seq2seq' if r.seq2seq else 'centre frame'}), windows padded only at the sequence ends; "
        f"test-time flip averaging {'on' if r.flip else 'off'}.",
        f"Damaged sequences ({', '.join(r.damaged)}): {r.damaged_policy}. S11 Directions: left out, as VideoPose3D's "
        "data and the published tables leave it out.",
        f"Frame sampling: {'every frame' if r.every == 1 else f'every {r.every}-th frame (index % {r.every} == 0)'}; "
        "counted frames per row: " + ", ".join(f"{m} {n}" for m, n in r.frames.items()) + ".",
        "Avg = unweighted mean of the action columns (published tables' convention); All = mean over all frames. "
        "Per action: frames pooled over subactions, subjects and cameras. Actions absent from the test data: '-'.",
    ] + ([_fusion_line()] if r.fused else []) + ([_triangulation_line(r)] if r.triangulated else [])


def _fusion_line() -> str:
    return ("Fused rows: the lifter's pose of each of the 4 views rotated into the world by its camera, fused per "
            "joint (geometric median, then Tukey-reweighted means, weighted by the 2-D confidences where the source has "
            "them), root-aligned; each frame counted once.")


def _triangulation_line(r) -> str:
    weighted = ", ".join(Path(s).name for s in r.weighted)
    return ("Triangulated rows: world joints from the calibrated views (H36M's distortion undone), no network; "
            "linear (DLT) over all views of each subset, averaged per frame over the subsets of 3 / 2 views; robust: "
            "view pairs as hypotheses, the inliers re-triangulated; "
            + (f"views weighted by the confidences of {weighted}; " if weighted else "views weighted alike; ")
            + "MPJPE root-aligned, Abs. MPJPE with no alignment; each frame counted once.")


def lift_to_markdown(r) -> str:
    lines = ["# Table II", ""] + [f"- {x}" for x in lift_settings_lines(r)] + [""]
    head = ["Method"] + [SHORT[a] for a in ACTIONS] + ["Avg", "All"]
    for metric in ("MPJPE", "P-MPJPE", "Abs. MPJPE"):
        methods = r.methods if metric != "Abs. MPJPE" else r.triangulated
        if not methods:
            continue
        lines += [f"## {TITLES[metric]}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method in methods:
            row = r.row(method, metric)
            cells = [_cell(row.actions[a]) for a in ACTIONS] + [_cell(row.avg), _cell(row.all_frames)]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if r.clips:
        lines += ["## One sequence per action (h36m show --run)", ""]
        lines += [f"- [{action}]({path})" for action, path in r.clips.items()] + [""]
    return "\n".join(lines)


def lift_to_csv(r) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "metric"] + list(ACTIONS) + ["Avg", "All"] + r.subjects)
    for row in r.rows:
        w.writerow([row.method, row.metric] + [_num(row.actions[a]) for a in ACTIONS]
                   + [_num(row.avg), _num(row.all_frames)] + [_num(row.subjects.get(s, math.nan)) for s in r.subjects])
    return buf.getvalue()


def lift_rich_tables(r, width: int = 200) -> list:
    """rich renderables: Table II (MPJPE, P-MPJPE; rows = Mean pose, the lifter on each 2-D source and the
    triangulation rows; split in two halves of the actions when `width` columns cannot hold them), and the
    triangulation rows' absolute MPJPE."""
    out = action_tables(r, r.methods, width)
    if r.triangulated:
        out += action_tables(r, r.triangulated, width, metrics=("Abs. MPJPE",))
    return out


def write_lift_report(r, out: str | os.PathLike):
    """Write results.json/.csv/.md of a Table II report into `out`; fills r.files; returns r."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    r.files = [str(out / n) for n in ("results.json", "results.csv", "results.md")]
    d = _nan_to_none(dataclasses.asdict(r))
    for name, text in (("results.csv", lift_to_csv(r)), ("results.md", lift_to_markdown(r)),
                       ("results.json", json.dumps(d, indent=2) + "\n")):
        write_atomic(out / name, text)
    return r
