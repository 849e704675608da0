"""Fixtures of the shard and loader tests: the real chain `h36m synth` -> `h36m extract` -> `h36m shard`, small."""
from __future__ import annotations

from pathlib import Path

import pytest

CROP = 64
FRAMES = 8          # clip length used by the tests
SHARD_MB = 0.25     # small shards: several per split (a clip of 4 views x 8 frames of 64 px crops is ~0.1 MB)


#: Built once per session even though each test module that imports the fixtures registers its own copy of them.
_BUILT: dict[str, Path] = {}


def run_cli(*args) -> "click.testing.Result":
    from click.testing import CliRunner

    from h36m.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="session")
def extracted(small_release, tmp_path_factory) -> Path:
    """The shared small release (S1, S5, S9, S11 x 1 sequence x 40 frames) extracted by `h36m extract` to 64 px
    crops, S11 `Directions` with its 3 readable cameras. Read-only."""
    if "extracted" not in _BUILT:
        out = tmp_path_factory.mktemp("extracted")
        res = run_cli("extract", small_release, out, "--size", CROP, "--min-views", 3, "--workers", 2)
        assert res.exit_code == 0, res.output
        _BUILT["extracted"] = out
    return _BUILT["extracted"]


@pytest.fixture(scope="session")
def shards(extracted, tmp_path_factory) -> Path:
    """Train and test shards of `extracted` written by `h36m shard` into one folder: 8-frame clips (stride 8, tail
    dropped: 5 clips a sequence), several small shards per split. Read-only."""
    if "shards" not in _BUILT:
        out = tmp_path_factory.mktemp("shards")
        for split in ("train", "test"):
            res = run_cli("shard", extracted, out, "--frames", FRAMES, "--split", split, "--shard-mb", SHARD_MB)
            assert res.exit_code == 0, res.output
        _BUILT["shards"] = out
    return _BUILT["shards"]
