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


# ----- the fault-injection suite's summary (tests/test_faults.py) ----------------------------------------------
_FAULT_CASES: dict[str, tuple[str, str]] = {}     # test id -> (outcome, what it checked)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if item.module is None or not item.module.__name__.endswith("test_faults"):
        return
    if rep.when == "call" or rep.outcome != "passed":     # setup failures and skips count too
        doc = (item.function.__doc__ or "").strip().split("\n\n")[0]
        what = " ".join(doc.split())
        if item.nodeid not in _FAULT_CASES or rep.outcome != "passed":
            _FAULT_CASES[item.nodeid] = (rep.outcome, what)


def pytest_terminal_summary(terminalreporter):
    """Cases of the fault-injection suite, how many passed, and what each checked."""
    if not _FAULT_CASES:
        return
    tr = terminalreporter
    counts = {o: sum(v[0] == o for v in _FAULT_CASES.values()) for o in ("passed", "failed", "skipped")}
    tr.section("fault injection")
    tr.write_line(f"{len(_FAULT_CASES)} cases: {counts['passed']} passed, {counts['failed']} failed, "
                  f"{counts['skipped']} skipped")
    for nodeid, (outcome, what) in _FAULT_CASES.items():
        tr.write_line(f"  {outcome:7} {nodeid.split('::', 1)[1]}: {what}")
