"""`h36m`: the command line. Commands stay thin: they parse options, call the Python API, and own all output.

Heavy imports (torch, timm, cv2, cdflib) happen inside the commands so `h36m --help` is instant.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def _fail(message: str, code: int = 1):
    from rich.console import Console

    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}")
    sys.exit(code)


def _progress(console):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


class _Group(click.Group):
    """Turns the library's input errors into one-line messages instead of tracebacks."""

    def invoke(self, ctx):
        from h36m_tools.errors import H36MError

        try:
            return super().invoke(ctx)
        except H36MError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted", 130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="h36m")
def main():
    """h36m: from the raw Human3.6M release to a trained, evaluated multi-view 3-D pose model.

    \b
    Typical flow:
      h36m synth RAW                      # or use your own H36M tree as RAW
      h36m extract RAW EXTRACTED
      h36m shard EXTRACTED SHARDS --frames 128
      h36m train --shards 'SHARDS/train-{000000..000009}.tar' --out RUN
      h36m evaluate --run RUN --shards 'SHARDS/test-*.tar'
    """


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--subjects", default="S1,S5,S9,S11", show_default=True, help="Comma-separated subjects.")
@click.option("--sequences-per-subject", default=3, show_default=True, type=click.IntRange(1, 30))
@click.option("--frames", default=150, show_default=True, type=click.IntRange(2), help="Pose frames per sequence.")
@click.option("--scale", default=0.25, show_default=True, type=click.FloatRange(0.05, 1.0),
              help="Video size as a fraction of the real 1000x1000 / 1000x1002.")
@click.option("--seed", default=0, show_default=True)
@click.option("--no-quirks", is_flag=True, help="Leave out the real release's quirks (extra frames, a truncated "
              "video, a subject without D2/masks).")
@click.option("--workers", default=None, type=click.IntRange(1), help="Processes (default: all cores).")
def synth(out, subjects, sequences_per_subject, frames, scale, seed, no_quirks, workers):
    """Write a synthetic release in the exact H36M layout and formats to OUT."""
    import os

    from h36m_tools.names import parse_subjects
    from pipelines.synth import SynthConfig, choose_sequences, run_synth

    try:
        cfg = SynthConfig(out=out, subjects=parse_subjects(subjects), sequences_per_subject=sequences_per_subject,
                          frames=frames, scale=scale, seed=seed, quirks=not no_quirks,
                          workers=workers or os.cpu_count() or 1)
        jobs = choose_sequences(cfg)
    except ValueError as e:
        _fail(str(e))
    console = _console()
    console.print(f"synth: {len(jobs)} sequences x 4 cameras x {frames} frames at scale {scale} -> {out}")
    with _progress(console) as progress:
        task = progress.add_task("sequences", total=len(jobs))
        results = run_synth(cfg, on_done=lambda r: progress.advance(task))
    extra = sum(v - r["poses"] for r in results for v in r["video_frames"].values())
    notes = [f"{extra} extra video frames past the poses"]
    if not no_quirks and cfg.no_2d_subject in cfg.subjects:
        notes.append(f"{cfg.no_2d_subject} has no D2_Positions or masks")
    if not no_quirks and "S11" in cfg.subjects:
        notes.append("S11 'Directions' camera 54138969 is truncated")
    console.print(f"[green]done[/]: {len(results)} sequences; " + "; ".join(notes))


# --- extract commands (issue 3) ---


# --- shard, verify, show commands (issue 4) ---


# --- train, evaluate, demo commands (issue 6) ---


if __name__ == "__main__":
    main()
