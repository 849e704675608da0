"""Run the README's tour as a newcomer would and check that it trains models, not mean poses.

    python bench/run_tour.py [--dir DIR] [--readme README.md]

Takes the ```bash block under "## A tour" of the README, runs its commands one by one, as written, with bash in a
fresh folder (DIR, which must not exist; default a new temporary folder, kept), prints each command's wall time
and the last lines of its output, and then checks the two things a tour must show:

* Table I of the 2d run (the tour's `h36m evaluate --run runs/2d ...`, report in report2d/results.json): the 2-D
  network's AP above the mean 2-D pose's;
* Table II of the lift run (report/results.json): the lifter on the tour's own predicted 2-D (the `pred.npz` row)
  at least 10 % below the mean pose's MPJPE (Avg over actions).

Exit status 0 when every command succeeded and both checks pass; the summary names what failed. Nothing else is
read: the numbers come from the reports the tour's own commands wrote.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tour_commands(readme: Path) -> list[str]:
    """The commands of the first ```bash block after the '## A tour' heading (comments stripped)."""
    text = readme.read_text()
    start = text.index("## A tour")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    if block is None:
        sys.exit(f"{readme}: no ```bash block under '## A tour'")
    commands = []
    for line in block.group(1).splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()     # the comments start after two spaces or more
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def _rows(data) -> list[dict]:
    """Every dict holding a 'method' anywhere in a report's JSON."""
    if isinstance(data, dict):
        found = [data] if "method" in data else []
        return found + [r for v in data.values() for r in _rows(v)]
    if isinstance(data, list):
        return [r for v in data for r in _rows(v)]
    return []


def table1(path: Path) -> dict[str, float]:
    """method -> AP from a 2d run's results.json."""
    return {r["method"]: r["ap"] for r in _rows(json.loads(path.read_text())) if "ap" in r}


def table2(path: Path) -> dict[str, float]:
    """method -> MPJPE (Avg over actions) from a lift run's results.json."""
    return {r["method"]: r["avg"] for r in _rows(json.loads(path.read_text()))
            if r.get("metric") == "MPJPE" and "avg" in r}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, help="fresh folder to run in (must not exist) [default: a new temporary one]")
    ap.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = ap.parse_args()
    commands = tour_commands(args.readme)
    work = args.dir or Path(tempfile.mkdtemp(prefix="h36m-tour-"))
    if args.dir:
        work.mkdir(parents=True)
    print(f"tour: {len(commands)} commands in {work}", flush=True)
    took, failed = {}, []
    start = time.perf_counter()
    for cmd in commands:
        t = time.perf_counter()
        proc = subprocess.run(["bash", "-c", cmd], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        took[cmd] = time.perf_counter() - t
        tail = proc.stdout.strip().splitlines()[-3:]
        print(f"$ {cmd}\n  [{took[cmd]:.0f} s, exit {proc.returncode}] " + "\n  ".join(tail), flush=True)
        if proc.returncode != 0:
            failed.append(f"'{cmd}' exited {proc.returncode}")
            break
    total = time.perf_counter() - start
    checks = []
    if not failed:
        t1, t2 = table1(work / "report2d" / "results.json"), table2(work / "report" / "results.json")
        mean2d = t1.get("Mean pose")
        ours2d = {m: v for m, v in t1.items() if m != "Mean pose"}
        mean3d = t2.get("Mean pose")
        pred = {m: v for m, v in t2.items() if "pred.npz" in m}
        ok1 = mean2d is not None and bool(ours2d) and all(v > mean2d for v in ours2d.values())
        ok2 = mean3d is not None and bool(pred) and all(v <= 0.9 * mean3d for v in pred.values())
        checks = [(ok1, f"Table I AP: {', '.join(f'{m} {v:.3f}' for m, v in ours2d.items())} vs mean pose "
                        f"{mean2d}"),
                  (ok2, f"Table II MPJPE: {', '.join(f'{m} {v:.1f}' for m, v in pred.items())} vs mean pose "
                        f"{mean3d} (needs <= {0.9 * (mean3d or 0):.1f}, 10 % below)")]
        failed += [text for ok, text in checks if not ok]
    print(f"\ntour: {total:.0f} s in all ({total / 60:.1f} min); slowest: " +
          ", ".join(f"'{c}' {s:.0f} s" for c, s in sorted(took.items(), key=lambda x: -x[1])[:3]))
    for ok, text in checks:
        print(f"{'ok' if ok else 'FAILED'}: {text}")
    if failed:
        print("tour failed: " + "; ".join(failed))
        return 1
    print("tour: the 2-D network beats the mean 2-D pose and the lifter on its own 2-D the mean pose")
    return 0


if __name__ == "__main__":
    sys.exit(main())
