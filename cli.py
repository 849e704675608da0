"""`h36m`: the command line. Commands stay thin: they parse options, call the Python API, and own all output.

Heavy imports (torch, timm, cv2, cdflib) happen inside the commands so `h36m --help` is instant. Options that
several commands share are declared once (the `*_option` decorators); so is the handling of errors (`_Group`):
the library's H36MError and ValueError (bad input, bad options) and OSError become one line on stderr, exit 1.
Every path or user string printed inside rich markup goes through `_lit` (printed as it is, `[` included).
"""
from __future__ import annotations

import sys
from pathlib import Path

import click


def _printable(text: str) -> str:
    """`text` with its control characters escaped (a name from a file or a shard cannot move the cursor, recolour the
    terminal or break a line), and the bytes of a file name that are not UTF-8 shown as `\\xNN`."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c) - 0xDC00:02x}" if "\udc80" <= c <= "\udcff"
                   else c.encode("unicode_escape").decode("ascii") for c in text)


def _echo(text: str, err: bool = False) -> None:
    """A plain line, escaped (`_printable`)."""
    click.echo(_printable(text), err=err)


def _console(stderr: bool = False):
    """The rich console of a command; every string it prints is escaped (`_printable`) before its markup is read."""
    from rich.console import Console

    class _Escaping(Console):
        def render_str(self, text: str, **kwargs):
            return super().render_str(_printable(text), **kwargs)

    return _Escaping(stderr=stderr, highlight=False, soft_wrap=stderr)


def _fail(message: str, code: int = 1):
    from rich.markup import escape

    # soft_wrap: one line whatever the terminal width (messages name long paths); escape: paths may hold '['
    _console(stderr=True).print(f"[bold red]error:[/] {escape(message)}")
    sys.exit(code)


def _progress(console, *fields: str, unit: str = ""):
    """The CLI's one progress display. On a terminal, a rich bar (with `fields`: extra columns, rich TextColumn
    templates such as "loss {task.fields[loss]}"). Elsewhere (a scheduler's log file, `| tee`) a plain line every
    H36M_PROGRESS_EVERY seconds (default 30) while work advances: done/total `unit` (the description's, if none),
    rate, the fields, elapsed and time left, e.g.
    `epoch 3/20: 81/540 steps (15 %), 2.31 steps/s, loss 0.1234, 0:00:35 elapsed, 0:03:19 left`; when it stops, the
    last state once more (unless just printed) instead of a bar."""
    import os
    import time

    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    every = float(os.environ.get("H36M_PROGRESS_EVERY") or 30)

    class _Logged(Progress):
        last = time.monotonic()
        logged: dict = {}

        def update(self, task_id, **kwargs) -> None:
            super().update(task_id, **kwargs)
            self._log(task_id)

        def advance(self, task_id, advance: float = 1) -> None:
            super().advance(task_id, advance)
            self._log(task_id)

        def stop(self) -> None:
            if not console.is_terminal and self.live.is_started:     # the last state, once, as a line
                for task_id in self.task_ids:
                    self._log(task_id, final=True)
            super().stop()

        def _log(self, task_id, final: bool = False) -> None:
            now = time.monotonic()
            task = self._tasks[task_id]
            if console.is_terminal or not self.live.is_started or (now - self.last < every and not final) or \
                    (final and self.logged.get(task_id) == task.completed):
                return
            self.last, self.logged[task_id] = now, task.completed
            units = f" {unit}" if unit else ""
            parts = [f"{task.completed:.0f}/{task.total:.0f}{units} ({task.percentage:.0f} %)" if task.total
                     else f"{task.completed:.0f}{units}"]
            if task.speed:
                parts.append(f"{task.speed:.2f}{units}/s" if task.speed < 100 else f"{task.speed:.0f}{units}/s")
            parts += [f.format(task=task) for f in fields]
            parts.append(f"{_clock(task.elapsed)} elapsed")
            if task.time_remaining is not None:
                parts.append(f"{_clock(task.time_remaining)} left")
            console.print(f"{Text.from_markup(task.description).plain}: {', '.join(parts)}", markup=False,
                          highlight=False, soft_wrap=True)

    from rich.text import Text

    return _Logged(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   *(TextColumn(f) for f in fields), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                   transient=not console.is_terminal)      # not a terminal: lines only, no bar cut at 80 columns


def _clock(seconds) -> str:
    """Seconds as H:MM:SS."""
    s = int(seconds or 0)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _late_progress(console, label: str):
    """A bar that appears with its first update, not before a bad input is reported: (progress, update(done, total));
    stop the progress when done."""
    progress = _progress(console)
    task = progress.add_task(label, total=None, start=False)

    def update(done, total) -> None:
        if not progress.live.is_started:
            progress.start()
            progress.start_task(task)
        progress.update(task, completed=done, total=total)

    return progress, update


def _lit(value) -> str:
    """`value` as text that rich markup prints literally (a path may hold `[`)."""
    from rich.markup import escape

    return escape(_printable(str(value)))


class _Group(click.Group):
    """Turns the library's errors into one-line messages instead of tracebacks: H36MError and ValueError (bad input
    files, bad options; an H36MError names its file) and OSError (with the file it names). With `h36m --debug` or
    H36M_DEBUG=1 the traceback behind the line is printed first."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ValueError as e:
            _fail(_debug(ctx, str(e)))
        except OSError as e:
            _fail(_debug(ctx, f"{e.filename}: {e.strerror or e}" if e.filename else str(e)))
        except MemoryError:
            _fail(_debug(ctx, "out of memory"))
        except KeyboardInterrupt:
            _fail(_debug(ctx, "interrupted"), 130)


def _debug(ctx, message: str) -> str:
    """`message`, after the traceback of the exception being handled where --debug or H36M_DEBUG=1 asks for it."""
    import os
    import traceback

    if ctx.params.get("debug") or os.environ.get("H36M_DEBUG", "") not in ("", "0"):
        traceback.print_exc()
    return message


# ----- options several commands share ---------------------------------------------------------------------------

def subjects_option(default: str | None, help: str):
    return click.option("--subjects", default=default, show_default=default is not None, help=help)


def workers_option(default: int | None = None, help: str = "Processes [default: all cores].", low: int = 1):
    return click.option("--workers", default=default, show_default=default is not None, type=click.IntRange(low),
                        help=help)


def device_option(default: str | None = None):
    return click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=default,
                        show_default=default is not None, help="Where the network runs (auto: a GPU if present).")


def actions_option(default: str | None, help: str):
    return click.option("--actions", default=default, show_default=default is not None, help=help)


def _parse_actions(text: str | None) -> tuple[str, ...]:
    """'Directions,Eating' (H36M's action names or VideoPose3D's aliases) -> ('Directions', 'Eating')."""
    from h36m.h36m_tools.names import canonical_action

    return tuple(dict.fromkeys(canonical_action(a) for a in (text or "").replace(" ", "").split(",") if a))


def batch_size_option(default: int | None = None, help: str = "Clips per process per batch."):
    return click.option("--batch-size", default=default, show_default=default is not None,
                        type=click.IntRange(1), help=help)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="h36m")
@click.option("--debug", is_flag=True, help="Print the traceback behind a one-line error (or set H36M_DEBUG=1).")
def main(debug):
    """h36m: from the raw Human3.6M release to a trained, evaluated multi-view 3-D pose model.

    \b
    Typical flow:
      h36m synth RAW                      # or use your own H36M tree as RAW
      h36m extract RAW EXTRACTED
      h36m shard EXTRACTED SHARDS --frames 128 --split train
      h36m shard EXTRACTED SHARDS --frames 128 --split test --no-shuffle --tail pad
      h36m train --shards 'SHARDS/train-*.tar' --out RUN
      h36m evaluate --run RUN --shards 'SHARDS/test-*.tar'
    """


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@subjects_option("S1,S5,S9,S11", "Comma-separated subjects.")
@actions_option(None, "Comma-separated actions every subject performs, as in the real release [default: "
                "Directions,Eating,Walking].")
@click.option("--sequences-per-subject", type=click.IntRange(1, 30), help="Instead of --actions: this many actions "
              "per subject, spread over the subjects (more actions, each seen by fewer subjects).")
@click.option("--frames", default=150, show_default=True, type=click.IntRange(2), help="Pose frames per sequence.")
@click.option("--scale", default=0.25, show_default=True, type=click.FloatRange(0.05, 1.0),
              help="Video size as a fraction of the real 1000x1000 / 1000x1002.")
@click.option("--seed", default=0, show_default=True)
@click.option("--no-quirks", is_flag=True, help="Leave out the real release's quirks (extra frames, a truncated "
              "video, a subject without D2/masks).")
@workers_option()
def synth(out, subjects, sequences_per_subject, actions, frames, scale, seed, no_quirks, workers):
    """Write a synthetic release in the exact H36M layout and formats to OUT."""
    import os

    from h36m.h36m_tools.names import parse_subjects
    from h36m.pipelines.synth.release import SynthConfig, choose_sequences, run_synth

    cfg = SynthConfig(out=out, subjects=parse_subjects(subjects), sequences_per_subject=sequences_per_subject,
                      actions=_parse_actions(actions), frames=frames, scale=scale, seed=seed,
                      quirks=not no_quirks,
                      workers=workers or os.cpu_count() or 1)
    jobs = choose_sequences(cfg)
    console = _console()
    console.print(f"synth: {len(jobs)} sequences x 4 cameras x {frames} frames at scale {scale} -> {out}",
                  markup=False)
    with _progress(console) as progress:
        task = progress.add_task("sequences", total=len(jobs))
        results = run_synth(cfg, on_done=lambda r: progress.advance(task))
    extra = sum(v - r["poses"] for r in results for v in r["video_frames"].values())
    notes = [f"{extra} extra video frames past the poses"]
    if not no_quirks and cfg.no_2d_subject in cfg.subjects:
        notes.append(f"{cfg.no_2d_subject} has no D2_Positions or masks")
    if not no_quirks and "S11" in cfg.subjects:
        notes.append("S11 'Directions' camera 54138969 is truncated")
    console.print(f"[green]done[/]: {len(results)} sequences; " + _lit("; ".join(notes)), soft_wrap=True)


# ----- extract --------------------------------------------------------------------------------------------------
def _extract_plan_table(plan):
    from rich.table import Table

    table = Table("subject", "layout", "3-D from", "sequences", "videos", "pose frames", "done before", "to do",
                  "other parts", title="plan", title_justify="left")
    for r in plan.by_subject():
        table.add_row(_lit(r["subject"]), r["layout"], _lit(r["pose3d"]), str(r["sequences"]), str(r["videos"]),
                      str(r["pose_frames"]), str(r["done"]), str(r["todo"]), str(r["other part"]))
    return table


def _extract_summary_table(results):
    from rich.table import Table

    table = Table("sequence", "status", "frames", "cameras", "trimmed at the end", "bbox", title="summary",
                  title_justify="left")
    for r in results:
        trimmed = " ".join(f"{c}:{n}" for c, n in r.trimmed.items() if n) or "-"
        status = {"done": "[green]done[/]", "skipped": "[yellow]skipped[/]"}.get(r.status, "[red]failed[/]")
        table.add_row(_lit(r.key), status,
                      str(r.frames or "-"), str(len(r.cameras) or "-"), _lit(trimmed), _lit(r.bbox or "-"))
    return table


@main.command()
@click.argument("raw", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@subjects_option(None, "Comma-separated subjects [default: every S<n> folder in RAW].")
@click.option("--size", default=224, show_default=True, type=click.IntRange(8, 4096), help="Crop side, pixels.")
@click.option("--margin", default=1.2, show_default=True, type=click.FloatRange(1.0, 10.0),
              help="Box side / larger extent of the joints (or mask).")
@click.option("--bbox", type=click.Choice(["joints", "mask"]), default="joints", show_default=True,
              help="Boxes from the 17 2-D joints, or from ground_truth_bb masks (joints where a subject has none).")
@click.option("--quality", default=90, show_default=True, type=click.IntRange(1, 100), help="JPEG quality.")
@click.option("--cameras", "cameras_file", default=None, type=click.Path(path_type=Path),
              help="metadata.xml or cameras.json to project with [default: the bundled H36M parameters].")
@click.option("--min-views", default=4, show_default=True, type=click.IntRange(1, 4),
              help="Keep a sequence with at least this many readable cameras (3 keeps S11 Directions).")
@workers_option()
@click.option("--part", default="1/1", show_default=True,
              help="Do the I-th of N shares (I/N; e.g. $SLURM_ARRAY_TASK_ID/N with --array=1-N); all parts may "
              "share one OUT.")
@click.option("--every", default=1, show_default=True, type=click.IntRange(1, 1000),
              help="Keep every N-th frame (source index % N == 0; 5 is common for training, 64 for some tests).")
@click.option("--keep-going", is_flag=True, help="Exit 0 even if some sequences failed (they are still listed).")
def extract(raw, out, subjects, size, margin, bbox, quality, cameras_file, min_views, workers, part, every,
            keep_going):
    """Turn a release in RAW into an extracted dataset in OUT: per sequence, synchronised square JPEG crops of every
    camera and frame with their 2-D/3-D joints and boxes (Parquet), plus manifest.json and cameras.json.

    RAW is the official unpacked tree (S1/MyPoseFeatures/..., S1/Videos/...), the tree anibali/h36m-fetch leaves
    (S1/Poses_D2_Positions/, S1/Poses_D3_Positions_mono_universal/, S1/Videos/) or a folder of the downloaded
    archives (Videos_S1.tgz, Poses_D3_Positions_S1.tgz, ...), read in place; mixed is fine.

    A killed run started again redoes only unfinished sequences. Skipped sequences (a missing or unreadable camera,
    no poses) do not change the exit status; failed ones (bad input files, a full disk) make it 1.
    """
    from h36m.h36m_tools.names import parse_subjects
    from h36m.pipelines.extract.extract import plan_extract, run_extract
    from h36m.pipelines.extract.plan import ExtractConfig, default_workers, parse_part

    cfg = ExtractConfig(raw=raw, out=out, subjects=parse_subjects(subjects) if subjects else None, size=size,
                        margin=margin, bbox=bbox, quality=quality, cameras=cameras_file, min_views=min_views,
                        workers=workers or default_workers(), part=parse_part(part), every=every)
    plan = plan_extract(cfg)
    if not plan.sequences:
        _fail(f"{raw}: holds no sequence (no S<n>/MyPoseFeatures/D3_Positions/*.cdf or S<n>/Videos/*.mp4)")
    console = _console()
    todo = plan.todo
    frames = sum(s.pose_frames or 0 for s in todo)
    console.print(f"extract {raw} -> {out}: part {cfg.part[0]}/{cfg.part[1]}, {cfg.workers} workers, crops "
                  f"{size}x{size} from {bbox} boxes x{margin}{f', every {every}-th frame' if every > 1 else ''}; "
                  f"{len(todo)} sequences to do ({frames} pose frames)",
                  soft_wrap=True, markup=False)
    console.print(_extract_plan_table(plan))
    for line in plan.left_out:
        click.echo(f"note: {line}")
    results = []
    if todo:
        with _progress(console) as progress:
            task = progress.add_task("sequences", total=len(todo))
            results = run_extract(cfg, plan, on_progress=lambda ev: progress.advance(task))
    else:
        results = run_extract(cfg, plan)
    if results:
        console.print(_extract_summary_table(results))
    for r in results:
        if r.status == "skipped":
            _echo(f"skipped {r.key}: {r.reason}")
        for note in r.notes:
            _echo(f"note {r.key}: {note}")
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        _echo(f"error: {r.key}: {r.reason}", err=True)
    done = [r for r in results if r.status == "done"]
    console.print(f"{len(done)} extracted ({sum(r.frames for r in done)} frames), "
                  f"{sum(r.status == 'skipped' for r in results)} skipped, {len(failed)} failed; "
                  f"already done before: {sum(s.status == 'done' for s in plan.sequences)}; "
                  f"manifest: {Path(out) / 'manifest.json'}", soft_wrap=True, markup=False)
    if failed and not keep_going:
        sys.exit(1)



# ----- shard, verify, show ------------------------------------------------------------------------------------
@main.command()
@click.argument("extracted", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--frames", required=True, type=click.IntRange(1), help="Frames per clip (F).")
@click.option("--stride", default=None, type=click.IntRange(1), help="Frames between clip starts [default: F].")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="Names the shards; picks the subjects (train S1,S5,S6,S7,S8; test S9,S11).")
@subjects_option(None, "Comma-separated subjects instead of the split's.")
@click.option("--shard-mb", default=256.0, show_default=True, type=click.FloatRange(0.001), help="Shard size limit.")
@click.option("--shuffle-seed", default=0, show_default=True, help="Seed of the clip order across shards.")
@click.option("--no-shuffle", is_flag=True, help="Keep clips in sequence order (e.g. for evaluation).")
@click.option("--tail", type=click.Choice(["drop", "pad"]), default="drop", show_default=True,
              help="Frames at a sequence's end that do not fill a clip: drop them, or pad one clip by repeating "
                   "the last frame (meta.json real_frames says how many are real).")
@workers_option(help="Processes writing shards [default: all cores]; the output is the same for any number.")
def shard(extracted, out, frames, stride, split, subjects, shard_mb, shuffle_seed, no_shuffle, tail, workers):
    """Write WebDataset shards OUT/{split}-NNNNNN.tar of F-frame multi-view clips of EXTRACTED, and
    OUT/{split}-index.json. Deterministic and resumable; both splits can share OUT."""
    import os

    from h36m.h36m_tools.names import parse_subjects
    from h36m.pipelines.shards.writer import ShardConfig, plan_clips, write_shards

    cfg = ShardConfig(extracted=extracted, out=out, frames=frames, stride=stride, split=split,
                      subjects=parse_subjects(subjects) if subjects else None, shard_mb=shard_mb,
                      shuffle_seed=None if no_shuffle else shuffle_seed, tail=tail,
                      workers=workers or os.cpu_count() or 1)
    plan = plan_clips(cfg)
    console = _console()
    console.print(f"shard {extracted} -> {out}: {split} split ({','.join(cfg.chosen_subjects)}), {len(plan.clips)} "
                  f"clips of {frames} frames every {cfg.step} from {len(plan.sequences)} sequences, tail {tail}, "
                  f"shards <= {shard_mb:g} MB", soft_wrap=True, markup=False)
    for path, reason in plan.skipped.items():
        _echo(f"skipped {path}: {reason}", err=True)
    with _progress(console) as progress:
        task = progress.add_task("clips", total=len(plan.clips))
        res = write_shards(cfg, on_progress=lambda ev: progress.update(task, completed=ev.clips), plan=plan)
    size = sum(e["bytes"] for e in res.shards)
    console.print(f"[green]done[/]: {res.samples} clips from {res.sequences} sequences in {len(res.shards)} shards "
                  f"({size / 1e6:.1f} MB); index {_lit(res.index)}" +
                  (f"; resumed after {res.resumed_shards} shards" if res.resumed_shards else "") +
                  (f"; removed stale {_lit(', '.join(res.removed))}" if res.removed else ""), soft_wrap=True)


@main.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--no-decode", is_flag=True, help="Skip decoding the JPEGs (schema, shapes and checksums only).")
@workers_option(1, "Processes.")
def verify(shards, no_decode, workers):
    """Read every sample of SHARDS (files, folders or brace patterns): schema, shapes, values, JPEGs, keys, and
    each shard's count, size and sha256 against {split}-index.json. Lists every problem; exit 1 on any."""
    from h36m.pipelines.shards.urls import shard_files
    from h36m.pipelines.shards.verify import verify as run_verify

    paths = shard_files(shards)
    if not paths:
        _fail(f"no shards in {' '.join(map(str, shards))}")
    console = _console()
    with _progress(console) as progress:
        task = progress.add_task("shards", total=len(paths))
        report = run_verify(paths, decode=not no_decode, workers=workers,
                            on_progress=lambda ev: progress.advance(task))
    for p in report.problems:
        _echo(f"problem: {p}")
    if report.ok:
        console.print(f"[green]ok[/]: {report.shards} shards, {report.samples} samples, no problems")
    else:
        console.print(f"[red]{len(report.problems)} problems[/] in {report.shards} shards ({report.samples} samples)")
        sys.exit(1)


@main.command()
@click.argument("shard_file", metavar="[SHARD]", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", default=None, help="SHARD: sample key, e.g. S1/Directions_1/000128 [default: the first].")
@click.option("--out", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="SHARD: the PNG [default: clip.png]; --run / --pred: a .gif or .mp4 [default: <sequence>.gif].")
@click.option("--max-frames", default=None, type=click.IntRange(0),
              help="SHARD: columns [default: 8]; --run / --pred: frames, 0 for all [default: 0].")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help="A lift or joint run: its lifter's 3-D.")
@click.option("--pred", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Predictions to draw: a VideoPose3D 2-D file (h36m predict, import-2d) and / or a 3-D file "
                   "(h36m triangulate's, or VideoPose3D's positions_3d); may be repeated.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path),
              help="--run / --pred: the extracted dataset [default: the run's].")
@click.option("--sequence", help="--run / --pred: e.g. S9/Walking_1 [default: the first test sequence].")
@click.option("--camera", help="--run / --pred: the camera of the 3-D panels [default: the sequence's first].")
@click.option("--keypoints", default="gt", show_default=True, help="--run: the lifter's 2-D, gt or a 2-D file.")
@click.option("--fps", default=25.0, show_default=True, type=click.FloatRange(1, 100))
@click.option("--still", type=click.IntRange(0), help="--run / --pred: also write this frame as a PNG beside --out.")
def show(shard_file, key, out, max_frames, run_dir, pred, data, sequence, camera, keypoints, fps, still):
    """Draw one clip of SHARD as a PNG grid of views x frames with the skeleton (left blue, right red); or, with
    --run / --pred, render one sequence as an animated GIF or MP4: the four crops with true (green) and predicted 2-D,
    the true and predicted 3-D skeletons side by side in a fixed view, the frame counter and per-frame MPJPE."""
    if run_dir is None and not pred:
        if shard_file is None:
            raise click.UsageError("give SHARD, or --run RUN / --pred FILE")
        from h36m.pipelines.shards.show import ShowConfig, show as run_show

        path, clip = run_show(ShowConfig(shard_file, out or Path("clip.png"), key,
                                         8 if max_frames is None else max(1, max_frames)))
        _console().print(f"{clip.key}: {clip.views} views x {clip.frames} frames -> {path}", markup=False)
        return
    if shard_file is not None or key is not None:
        raise click.UsageError("SHARD and --key draw shard clips; --run / --pred draw a sequence of --data")
    from h36m.pipelines.evaluate.sequence_video import SequenceVideoConfig, write_sequence_video

    console = _console()
    out = out or Path(f"{(sequence or 'sequence').replace('/', '_')}.gif")
    cfg = SequenceVideoConfig(out=out, data=None if data is None else str(data),
                              run=None if run_dir is None else str(run_dir), pred=tuple(str(p) for p in pred),
                              sequence=sequence, camera=camera, keypoints=keypoints, max_frames=max_frames or 0,
                              fps=fps, still=still)
    progress, on_progress = _late_progress(console, "frames")
    try:
        res = write_sequence_video(cfg, on_progress=on_progress)
    finally:
        progress.stop()
    err = f", mean per-frame MPJPE {res.mpjpe:.1f} mm" if res.mpjpe == res.mpjpe else ""
    console.print(f"{_lit(res.key)}: {res.frames} frames{err} -> {_lit(res.out)}"
                  + (f", frame {still} -> {_lit(res.still)}" if res.still else ""), soft_wrap=True)


# ----- train, evaluate, demo ----------------------------------------------------------------------------------

def _openmp_env():
    """Shorter OpenMP spin-waits unless the user set them: torch's libgomp threads spin for 300k rounds before
    sleeping, which on a CPU shared with other work (the loader's workers, other jobs) slows training steps
    about 2x; 20000 keeps the idle-machine speed (bench/RESULTS_train.md). Must run before torch is imported."""
    import os

    if "torch" not in sys.modules:
        os.environ.setdefault("GOMP_SPINCOUNT", "20000")


def _train_progress(console):
    """A rich progress bar fed by h36m.pipelines.train.loop.TrainEvent (loss, lr, images/s, share of time waiting
    for data)."""
    progress = _progress(console, "loss {task.fields[loss]}", "lr {task.fields[lr]}", "{task.fields[ips]} img/s",
                         "wait {task.fields[wait]}", unit="steps")
    state = {}

    def on_event(e):
        if e.kind == "start":
            console.print(f"train: {e.message}; step {e.step} of {e.total_steps}", soft_wrap=True, markup=False)
            state["task"] = progress.add_task(f"epoch {e.epoch + 1}/{e.epochs}", total=e.total_steps, completed=e.step,
                                              loss="-", lr=f"{e.lr:.2e}", ips="-", wait="-")
        elif e.kind == "step":
            progress.update(state["task"], completed=e.step, description=f"epoch {e.epoch + 1}/{e.epochs}",
                            loss=f"{e.loss:.4f}", lr=f"{e.lr:.2e}", ips=f"{e.images_per_s:.0f}",
                            wait=f"{e.data_wait:.0%}")
        elif e.kind == "note":
            console.print(e.message, soft_wrap=True, markup=False)
        elif e.kind in ("end", "interrupted"):
            progress.stop()
            head = "[yellow]interrupted[/]: " if e.kind == "interrupted" else "[green]train[/]: "
            console.print(head + _lit(e.message))

    return progress, on_event


@main.command()
@click.option("--shards", help="Training shard URLs: paths, brace patterns ('SH/train-{000000..000009}.tar'), "
              "globs, pipe:..., http(s)://...")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder.")
@click.option("--preset", help="Model preset: tiny (64 px crops, CPU-sized, its own short recipe), paper (Swin-T "
              "224, the paper's recipe), paper_f8, paper_f32, paper_f128 (clip frames), paper_rf9, paper_rf27 (the "
              "lifter's receptive field), paper_baseline, paper_no_time, paper_no_3d (the paper's ablations) "
              "[default: tiny].")
@click.option("--stage", type=click.Choice(["2d", "lift", "joint", "triangulate"]),
              help="What to train [default: 2d].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file of TrainConfig fields (and [model] overrides); options given here win.")
@click.option("--init", help="Run folder or checkpoint to start from (e.g. the 2d run for --stage lift).")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path),
              help="Lift stage: the extracted dataset whose whole sequences it trains on (no shards).")
@click.option("--keypoints", help="Lift stage 2-D inputs: gt, or a VideoPose3D 2-D .npz (h36m predict) [default: gt].")
@click.option("--train-subjects", help="Lift stage training subjects [default: S1,S5,S6,S7,S8].")
@click.option("--flip/--no-flip", default=None, help="Lift stage: mirrored copies of every window [default: on].")
@click.option("--epochs", type=click.IntRange(1))
@batch_size_option(help="Clips per process per micro-batch.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Peak learning rate.")
@click.option("--grad-accum", type=click.IntRange(1), help="Micro-batches per optimiser step.")
@workers_option(help="Loader processes per rank.", low=0)
@click.option("--seed", type=int)
@click.option("--max-steps", type=click.IntRange(1), help="Stop with a checkpoint after this many steps.")
@click.option("--checkpoint-every", type=click.IntRange(0), help="Steps between checkpoints (and every epoch end).")
@device_option()
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the training step.")
@click.option("--pretrained-spatial", type=click.Path(dir_okay=False),
              help="Local timm Swin checkpoint (e.g. swin_tiny_patch4_window7_224's) for the spatial module.")
@click.option("--pretrained-relations", type=click.Path(dir_okay=False),
              help="Local timm ViT checkpoint (e.g. vit_base_patch16_224's) for the relation blocks.")
@click.option("--affine", type=click.Choice(["mmpose", "mild", "off"]),
              help="Random crop transform of the 2d stage [default: the preset's recipe: paper mmpose, tiny mild].")
@click.option("--no-augment", "no_augment", is_flag=True, default=None, help="No flip and no crop transform.")
@click.option("--resume", is_flag=True, help="Continue the run in --out at its last checkpoint.")
def train(shards, out, preset, stage, config_file, init, data, keypoints, train_subjects, flip, epochs, batch_size, lr,
          grad_accum, workers, seed, max_steps, checkpoint_every, device, compile_, pretrained_spatial,
          pretrained_relations, affine, no_augment, resume):
    """Train the pose network (one stage) on shards; several processes through torchrun.

    \b
      h36m train --shards 'SH/train-*.tar' --out runs/2d --stage 2d
      h36m train --data EXTRACTED --out runs/lift --stage lift --keypoints gt
      h36m train --data EXTRACTED --out runs/lift --stage lift --keypoints pred.npz --init runs/2d
      torchrun --nproc_per_node 2 -m h36m train --shards 'SH/train-*.tar' --out runs/2d
    """
    _openmp_env()
    import os

    from h36m.pipelines.train import loop as T
    from h36m.pipelines.train.config import build_config

    console = _console()
    quiet = int(os.environ.get("RANK", "0")) != 0
    progress, on_event = _train_progress(console)
    with progress:
        if resume:
            result = T.resume(out, on_progress=None if quiet else on_event, max_steps=max_steps, shards=shards,
                              workers=workers, checkpoint_every=checkpoint_every, device=device, compile=compile_)
        else:
            cfg = build_config(config_file, shards=shards, out=str(out), preset=preset, stage=stage, init=init,
                               data=str(data) if data else None, keypoints=keypoints, subjects=train_subjects,
                               flip=flip, epochs=epochs, batch_size=batch_size, lr=lr,
                               grad_accum=grad_accum, workers=workers, seed=seed, max_steps=max_steps,
                               checkpoint_every=checkpoint_every, device=device, compile=compile_,
                               pretrained_spatial=pretrained_spatial, pretrained_relations=pretrained_relations,
                               affine=affine, augment=False if no_augment else None)
            result = T.train(cfg, on_progress=None if quiet else on_event)
    if not quiet:
        state = "complete" if result.done else "stopped (continue with --resume)"
        console.print(f"run {result.run}: step {result.steps}/{result.total_steps}, {state}", soft_wrap=True,
                      markup=False)


def _print_report(console, report):
    from h36m.pipelines.evaluate.report import rich_tables, settings_lines, stage_note

    for table in rich_tables(report, width=console.width):
        console.print(table)
    for line in settings_lines(report)[1:3] + stage_note(report):
        console.print(line, soft_wrap=True, markup=False)
    if report.files:
        console.print(f"report: {', '.join(report.files)}", soft_wrap=True, markup=False)
    if report.plots:
        console.print(f"plots: {Path(report.plots[0]).parent}/ ({len(report.plots)} PNG)", soft_wrap=True,
                      markup=False)


@main.command()
@click.option("--run", "run_dirs", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Run folder (or checkpoint file) of h36m train; repeat it to compare runs (Table I / III).")
@click.option("--shards", help="Test shard URLs (S9/S11), e.g. 'SH/test-*.tar' (2d and joint runs).")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path),
              help="Table II (lift and joint runs): the extracted dataset holding S9/S11 [default: a lift run's "
                   "--data].")
@click.option("--keypoints", multiple=True, help="Table II: a 2-D source, gt or a VideoPose3D 2-D .npz; one row "
              "each; repeat it [default: gt and the file the run trained on].")
@click.option("--flip/--no-flip", default=None, help="Table II: test-time flip averaging [default: on].")
@click.option("--triangulate/--no-triangulate", default=None,
              help="Table II: also the rows of the four views triangulated (4, 3, 2 views, robust) and lifted "
                   "then fused (docs/triangulation.md) [default: on].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Report folder [default: RUN/eval]; with several runs, the comparison's folder [default: "
                   "eval-compare] (each run's own report still goes to RUN/eval).")
@click.option("--exclude-damaged", is_flag=True, help="Leave out the test sequences with damaged ground truth "
              "(S9 Greeting, SittingDown 1, Waiting 1).")
@click.option("--every", default=1, show_default=True, type=click.IntRange(1), help="Count every N-th frame only.")
@batch_size_option(2)
@workers_option(2, "Loader processes.", low=0)
@device_option("auto")
@click.option("--no-plots", is_flag=True, help="Skip the PNG figures.")
@click.option("--clips", default=0, show_default=True, type=click.IntRange(0),
              help="Table II: also one MP4 of this many frames per action (its first test sequence, h36m show --run), "
                   "linked from results.md; 0: none.")
def evaluate(run_dirs, shards, data, keypoints, flip, triangulate, out, exclude_damaged, every, batch_size, workers,
             device, no_plots, clips):
    """Evaluate runs: each run is read once and gives the tables it can. A 2d or joint run, on test shards: Table I
    (2-D OKS AP/AR, PCK, MSE, time per epoch) and 3-D MPJPE, P-MPJPE, N-MPJPE, MPJVE per action, with a mean-pose
    baseline. A lift run, and a joint run given --data: Table II (MPJPE, P-MPJPE per action) on whole S9/S11
    sequences of an extracted dataset, for ground-truth 2-D and each keypoints file, flip-averaged. An option that
    does not apply to a run is refused. Writes results.json/.csv/.md (and plots) per run (a joint run's Table II in
    RUN/eval/table2). Several 2d/joint runs: then one table with a row per run (Table I / III), compare.md/.csv."""
    _openmp_env()
    from h36m.pipelines.evaluate.report import compare_table, write_comparison

    console = _console()
    several = len(run_dirs) > 1
    reports = [_evaluate_run(console, run, shards, data, keypoints, flip, None if several else out, exclude_damaged,
                             every, batch_size, workers, device, no_plots, quiet=several, triangulate=triangulate,
                             clips=clips)
               for run in run_dirs]
    reports = [r for r in reports if r is not None]          # lift runs print their own Table II
    if len(reports) > 1:
        console.print(compare_table(reports))
        files = write_comparison(reports, out or Path("eval-compare"))
        console.print(f"comparison: {', '.join(files)}", soft_wrap=True, markup=False)


def _evaluate_run(console, run_dir, shards, data, keypoints, flip, out, exclude_damaged, every, batch_size, workers,
                  device, no_plots, quiet: bool, triangulate: bool | None = None, clips: int = 0):
    """One run's evaluation (evaluate.run) with its progress bars; prints its tables (the shard tables unless
    `quiet`; Table II always); returns the shard report of a 2d / joint run, else None."""
    from h36m.pipelines.evaluate.evaluate import default_out
    from h36m.pipelines.evaluate.report import write_lift_report, write_report
    from h36m.pipelines.evaluate.run import RunEvalConfig, evaluate_run

    cfg = RunEvalConfig(run=str(run_dir), shards=shards, data=str(data) if data else None, keypoints=tuple(keypoints),
                        flip=flip, triangulate=triangulate, out=str(out) if out else None,
                        exclude_damaged=exclude_damaged, every=every, batch_size=batch_size, workers=workers,
                        device=device, plots=not no_plots)
    progress, update = _late_progress(console, f"test clips ({_lit(Path(run_dir).name)})" if quiet else "test clips")
    lift_progress, lift_update = _late_progress(console, "view sequences")
    try:
        result = evaluate_run(cfg, on_clips=lambda e: update(e.clips, e.total),
                              on_sequences=lambda done, total: (progress.stop(), lift_update(done, total)))
    finally:
        progress.stop()
        lift_progress.stop()
    folder = default_out(cfg.run, cfg.out)
    report = result.shards
    if report is not None:
        write_report(report, folder, plots=cfg.plots)
        if quiet:
            console.print(f"{run_dir}: report in {folder}", soft_wrap=True, markup=False)
        else:
            _print_report(console, report)
        from h36m.h36m_tools.names import TRAIN_SUBJECTS

        trained = [s for s in report.subjects if s in TRAIN_SUBJECTS]
        if trained:
            click.echo(f"note: {shards}: holds training subjects ({', '.join(trained)}); the test subjects are S9, "
                       f"S11", err=True)
    if result.table2 is not None:
        table2_folder = folder / "table2" if report is not None else folder
        if clips:
            from h36m.pipelines.evaluate.sequence_video import action_clips

            bar, on_clip = _late_progress(console, "clips")
            try:
                made = action_clips(str(run_dir), result.table2.data, table2_folder / "clips", max_frames=clips,
                                    on_progress=on_clip)
            finally:
                bar.stop()
            result.table2.clips = {a: f"clips/{r.out.name}" for a, r in made.items()}
        write_lift_report(result.table2, table2_folder)
        _print_lift_report(console, result.table2)
    return report


def _print_lift_report(console, report):
    from h36m.pipelines.evaluate.report import lift_rich_tables, lift_settings_lines

    for table in lift_rich_tables(report, width=console.width):
        console.print(table)
    lines = lift_settings_lines(report)
    multiview = [x for x in lines if x.startswith(("Fused rows", "Triangulated rows"))]
    for line in lines[1:4] + multiview:
        console.print(line, soft_wrap=True, markup=False)
    if report.files:
        console.print(f"report: {', '.join(report.files)}", soft_wrap=True, markup=False)


# ----- predict, export --------------------------------------------------------------------------------------------
@main.command()
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path),
              help="Run folder (or checkpoint) with a trained 2-D network (a 2d or joint run).")
@click.option("--shards", required=True, help="Shard URLs; every clip is predicted, e.g. 'SH/test-*.tar'.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The .npz to write.")
@click.option("--flip/--no-flip", default=True, show_default=True,
              help="Average with the prediction of the mirrored clip.")
@batch_size_option(2)
@workers_option(1, "Loader processes.", low=0)
@device_option("auto")
def predict(run_dir, shards, out, flip, batch_size, workers, device):
    """The 2-D network of RUN over every clip of SHARDS, stitched into whole sequences (overlapping clips averaged),
    full-frame pixels, written as a VideoPose3D 2-D keypoints file (positions_2d[subject][action][camera index])
    that VideoPose3D's and PoseFormer's code read, and `h36m train --stage lift --keypoints` too."""
    _openmp_env()
    from h36m.pipelines.predict.predict import PredictConfig, predict as run_predict

    console = _console()
    cfg = PredictConfig(run=str(run_dir), shards=shards, out=out, flip=flip, batch_size=batch_size, workers=workers,
                        device=device)
    with _progress(console) as progress:
        task = progress.add_task("clips", total=None)
        res = run_predict(cfg, on_progress=lambda done, total: progress.update(task, completed=done, total=total))
    for key, why in res.skipped.items():
        _echo(f"left out {key}: {why}")
    held = f"; {res.held} past the last clip hold its last frame" if res.held else ""
    console.print(f"[green]done[/]: {res.clips} clips -> {res.sequences} sequences x 4 cameras, {res.frames} "
                  f"(view, frame) predictions{' (flip-averaged)' if flip else ''}{held} in {_lit(res.out)}",
                  soft_wrap=True)


@main.command()
@click.argument("predictions", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The extracted dataset the 2-D was predicted from: its cameras (and world joints to compare).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The .npz to write.")
@subjects_option(None, "Comma-separated subjects [default: all in PREDICTIONS].")
@click.option("--method", type=click.Choice(["robust", "dlt"]), default="robust", show_default=True,
              help="robust: every pair of views a hypothesis, the inliers re-triangulated (survives a bad view); "
                   "dlt: the weighted linear solution over all views.")
@click.option("--weighted/--unweighted", default=True, show_default=True,
              help="Weigh each view by the file's confidence_2d (where it has one).")
def triangulate(predictions, data, out, subjects, method, weighted):
    """World joints (mm) from the 2-D of all four cameras: PREDICTIONS (a VideoPose3D 2-D file, e.g. h36m predict's)
    undistorted with H36M's model and triangulated with the cameras of the extracted dataset --data. Writes
    triangulated_3d[subject][action] (N, 17, 3) world mm (docs/triangulation.md)."""
    from h36m.pipelines.predict.triangulate import TriangulateConfig, triangulate as run_triangulate

    console = _console()
    cfg = TriangulateConfig(predictions=predictions, data=data, out=out, subjects=subjects, method=method,
                            weighted=weighted)
    progress, on_progress = _late_progress(console, "sequences")

    try:
        res = run_triangulate(cfg, on_progress=on_progress)
    finally:
        progress.stop()
    for key in res.skipped:
        _echo(f"left out {key}: fewer than two cameras in {predictions}")
    console.print(f"[green]done[/]: {res.sequences} sequences, {res.frames} frames, {method}"
                  f"{', confidence-weighted' if res.weighted else ''} -> {_lit(res.out)}; against the dataset's "
                  f"world joints: MPJPE {res.mpjpe:.1f} mm root-aligned, {res.mpjpe_abs:.1f} mm absolute",
                  soft_wrap=True)


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@subjects_option(None, "Comma-separated subjects [default: all in SRC].")
@click.option("--format", "fmt", type=click.Choice(["videopose3d", "motionbert"]), default="videopose3d",
              show_default=True, help="videopose3d: data_3d_h36m.npz and data_2d_h36m_gt.npz; motionbert: the "
                                      "h36m_sh_conf_cam_source_final.pkl of MotionBERT's DataReaderH36M.")
@click.option("--keypoints", type=click.Path(dir_okay=False, path_type=Path),
              help="motionbert: the 2-D inputs and confidences from this VideoPose3D 2-D file (nominal pixels) "
                   "instead of the ground truth's projection.")
def export(src, out, subjects, fmt, keypoints):
    """Write VideoPose3D's data_3d_h36m.npz (world metres) and data_2d_h36m_gt.npz (px) into OUT from a raw release
    or an extracted dataset SRC, named and ordered as VideoPose3D's prepare_data_h36m.py writes them; or, with
    --format motionbert, the pickle MotionBERT's DataReaderH36M reads (docs/interchange.md)."""
    from h36m.h36m_tools.names import parse_subjects

    console = _console()
    subjects = parse_subjects(subjects) if subjects else None
    if fmt == "videopose3d" and keypoints is not None:
        raise click.UsageError("--keypoints applies to --format motionbert only")
    progress, on_progress = _late_progress(console, "sequences")
    done = [0]

    def advance(key):
        done[0] += 1
        on_progress(done[0], None)

    try:
        if fmt == "motionbert":
            from h36m.pipelines.interchange.motionbert import MotionBertConfig, export_motionbert

            res = export_motionbert(MotionBertConfig(src=src, out=out, subjects=subjects,
                                                     keypoints=None if keypoints is None else str(keypoints)),
                                    on_progress=advance)
        else:
            from h36m.pipelines.interchange.export import ExportConfig, export as run_export

            res = run_export(ExportConfig(src=src, out=out, subjects=subjects), on_progress=advance)
    finally:
        progress.stop()
    for key, why in res.skipped.items():
        _echo(f"left out {key}: {why}")
    if fmt == "motionbert":
        console.print(f"[green]done[/]: {res.sequences} sequences from the {res.source}, {res.rows['train']} train "
                      f"and {res.rows['test']} test camera frames -> {_lit(res.file)}", soft_wrap=True)
    else:
        console.print(f"[green]done[/]: {res.sequences} sequences, {res.frames} frames from the {res.source} "
                      f"-> {', '.join(_lit(f) for f in res.files)}", soft_wrap=True)


@main.command("import-2d")
@click.argument("results", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The .npz to write.")
@click.option("--images", type=click.Path(dir_okay=False, path_type=Path),
              help="A COCO annotation file whose 'images' name the results' image ids (e.g. mmpose's H36M json).")
@click.option("--layout", type=click.Choice(["h36m", "coco"]), default="h36m", show_default=True,
              help="The detector's 17 joints: h36m (mmpose's H36M-17) or coco (COCO-17, with --derive only).")
@click.option("--derive", is_flag=True, help="coco: derive the hip centre, spine, thorax, neck/nose and head, which "
                                             "COCO-17 lacks, from the hips, shoulders, nose and eyes.")
def import_2d(results, out, images, layout, derive):
    """Turn a COCO-style keypoint results file RESULTS (mmpose's, or any detector's) into a VideoPose3D 2-D file with
    confidence_2d, in each camera's nominal pixel frame, matched by image names such as
    S1_Directions_1.54138969_000001.jpg (subject, sequence, camera, frame + 1); for h36m train --keypoints,
    evaluate --keypoints, triangulate and export --format motionbert (docs/interchange.md)."""
    from h36m.pipelines.interchange.coco import Import2DConfig, import_2d as run_import

    console = _console()
    res = run_import(Import2DConfig(results=results, out=out, images=images, layout=layout, derive=derive))
    for why, names in res.unmatched.items():
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        _echo(f"unmatched: {len(names)} detections, {why}: {shown}")
    for key, why in res.skipped.items():
        _echo(f"left out {key}: {why}")
    console.print(f"[green]done[/]: {res.used} of {res.detections} detections ({res.duplicates} duplicates, "
                  f"{res.unmatched_count} unmatched) -> {res.sequences} sequences x 4 cameras, {res.filled} "
                  f"camera frames without a detection interpolated (confidence 0) -> {_lit(res.out)}",
                  soft_wrap=True)


@main.command()
@click.option("--out", default="h36m-demo", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@subjects_option("S1,S5,S9,S11", "Training and test (S9, S11) subjects.")
@actions_option(None, "Comma-separated actions every subject performs [default: synth's, "
                "Directions,Eating,Walking].")
@click.option("--frames", default=150, show_default=True, type=click.IntRange(16), help="Frames per sequence.")
@click.option("--epochs-2d", default=14, show_default=True, type=click.IntRange(1),
              help="2d epochs (the tiny recipe's batch and rate; the tour trains 20).")
@click.option("--epochs-lift", default=6, show_default=True, type=click.IntRange(1),
              help="Lift epochs (the tiny lift recipe's batch and rate; the tour trains 20).")
@click.option("--epochs-triangulate", default=8, show_default=True, type=click.IntRange(1),
              help="Epochs of the triangulate stage from the 2d run (lr 1e-3).")
def demo(out, subjects, actions, frames, epochs_2d, epochs_lift, epochs_triangulate):
    """The whole chain on a synthetic release in minutes on a CPU: synth -> extract -> shard -> train (tiny, 2d) ->
    predict (whole sequences) -> train lift (whole sequences, predicted 2-D) -> train triangulate (the 2d run through
    the views' triangulation) -> predict -> Table II on S9/S11 against a mean-pose baseline, with the triangulated and
    lift-then-fused rows. Run it again to continue where it stopped."""
    _openmp_env()
    from h36m.h36m_tools.names import parse_subjects
    from h36m.pipelines.demo import DemoConfig, run_demo

    console = _console()
    cfg = DemoConfig(out=out, subjects=parse_subjects(subjects), actions=_parse_actions(actions), frames=frames,
                     epochs_2d=epochs_2d, epochs_lift=epochs_lift, epochs_triangulate=epochs_triangulate)
    bars = {}

    def on_event(e):
        if e.kind == "start":
            console.print(f"[bold]{e.step}[/] ...")
        elif e.kind == "end":
            bar = bars.pop(e.step, None)
            if bar:
                bar[0].stop()
            console.print(f"[bold]{e.step}[/]: {_lit(e.message)}", soft_wrap=True)
        elif e.kind == "train":
            if e.step not in bars:
                bars[e.step] = _train_progress(console)
                bars[e.step][0].start()
            bars[e.step][1](e.train)

    try:
        result = run_demo(cfg, on_progress=on_event)
    finally:
        for bar in bars.values():
            bar[0].stop()
    _print_lift_report(console, result.report)
    for i in result.improvement:
        console.print(f"Ours vs mean-pose baseline, {i.metric}: {i.ours:.1f} vs {i.baseline:.1f} "
                      f"({-100 * i.reduction:+.0f} %)", soft_wrap=True)
    for g, what in zip(result.geometry, ("the 2d run triangulated after the fact", "the lifter")):
        console.print(f"Trained through triangulation vs {what}, MPJPE: {g.ours:.1f} vs {g.baseline:.1f} "
                      f"({-100 * g.reduction:+.0f} %)", soft_wrap=True)
    took = sum(result.seconds.values())
    verdict = "[green]beats the baseline[/]" if result.beats_baseline else "[red]does not beat the baseline[/]"
    console.print(f"demo: the model {verdict} on {_lit(', '.join(result.report.subjects))}; {took:.0f} s; "
                  f"report in {_lit(result.report_dir)}", soft_wrap=True)


if __name__ == "__main__":
    main()
