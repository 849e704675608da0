"""Shared, session-wide fixtures: a small synthetic H36M release written once per test session."""
from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
REALDATA = SHARED / "realdata"
H36M_FACTS = SHARED / "h36m"


def _synth(out: Path, **kw) -> Path:
    from h36m.pipelines.synth.release import SynthConfig, run_synth

    run_synth(SynthConfig(out=out, **kw))
    return out


@pytest.fixture(scope="session")
def small_release(tmp_path_factory) -> Path:
    """A synthetic release with the quirks: S1, S5 (no D2/masks), S9, S11 (truncated `Directions` camera),
    one sequence each (S11's is `Directions`), 40 pose frames, 250x250 videos. Read-only: copy before changing."""
    return _synth(tmp_path_factory.mktemp("release"), subjects=("S1", "S5", "S9", "S11"),
                  sequences_per_subject=1, frames=40, workers=2)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models run as fast on one thread, and a shared 2-core machine slows two threads down
    (oversubscription) by up to 10x; the previous setting is restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def h36m_facts() -> Path:
    """The official H36M facts (../shared/h36m: metadata.xml, cameras.json, sequences.json)."""
    if not H36M_FACTS.is_dir():
        pytest.skip("../shared/h36m not present")
    return H36M_FACTS


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The real H36M samples (../shared/realdata); tests needing them are skipped where the folder is absent."""
    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata not present")
    return REALDATA
