"""Fixtures of the train / evaluate tests: tiny shards made by the real chain (synth -> extract -> shard) and tiny
runs of the 2d and lift stages, each built once per session.

The release: S1 (training) and S9, S11 (test), 3 sequences each, 24 frames: S9's include the damaged `Greeting`,
S11's the `Directions` whose first camera is truncated (kept with 3 views). 8-frame clips, 64 px crops.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

FRAMES = 24
CLIP = 8
TRAIN_KW = dict(preset="tiny", epochs=2, batch_size=2, workers=1, seed=0, checkpoint_every=0)


@dataclass(frozen=True)
class TrainData:
    raw: Path
    extracted: Path
    shards: Path

    @property
    def train(self) -> str:
        return str(self.shards / "train-*.tar")

    @property
    def test(self) -> str:
        return str(self.shards / "test-*.tar")


def cli(*args: str):
    """Run an `h36m` command in-process (click's runner); fail the test with its output if it exits non-zero."""
    from h36m.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if result.exit_code != 0:
        pytest.fail(f"h36m {' '.join(map(str, args))} exited {result.exit_code}:\n{result.output}")
    return result


def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> TrainData:
    root = tmp_path_factory.mktemp("train_data")
    raw, ex, sh = root / "raw", root / "ex", root / "sh"
    cli("synth", raw, "--subjects", "S1,S9,S11", "--sequences-per-subject", 3, "--frames", FRAMES, "--workers", 2)
    cli("extract", raw, ex, "--size", 64, "--min-views", 3, "--workers", 2)
    for split in ("train", "test"):
        cli("shard", ex, sh, "--frames", CLIP, "--split", split, "--shard-mb", 0.3)
    return TrainData(raw, ex, sh)


def train_config(data: TrainData, out: Path, **kw):
    from h36m.pipelines.train.config import TrainConfig

    return TrainConfig(shards=data.train, out=str(out), **{**TRAIN_KW, **kw})


@pytest.fixture(scope="session")
def run2d(train_data, tmp_path_factory) -> Path:
    """A finished 2d run: 2 epochs of 4 steps (9 training clips, batch 2)."""
    from h36m.pipelines.train.loop import train

    out = tmp_path_factory.mktemp("runs") / "2d"
    train(train_config(train_data, out, stage="2d"))
    return out


#: A small lifter that learns the tiny release in seconds (the tiny preset's is 4x wider and deeper).
SMALL_LIFTER = {"lifter": {"joint_dim": 8, "depth_spatial": 1, "depth_temporal": 1, "num_heads": 2}}
LIFT_KW = dict(stage="lift", subjects="S1", epochs=14, lr=5e-3, batch_size=32, lr_decay=0.9, model=SMALL_LIFTER)


@pytest.fixture(scope="session")
def runlift(train_data, run2d) -> Path:
    """A finished lift run started from run2d: whole S1 sequences of the extracted dataset, ground-truth 2-D."""
    from h36m.pipelines.train.loop import train

    out = run2d.parent / "lift"
    from h36m.pipelines.train.config import TrainConfig

    train(TrainConfig(out=str(out), data=str(train_data.extracted), init=str(run2d), **{**TRAIN_KW, **LIFT_KW}))
    return out


def replace(cfg, **kw):
    return dataclasses.replace(cfg, **kw)
