"""Do two versions of jaxal compute the same runs? The "must hold" check of a refactor.

Runs the same commands with the jaxal of a git commit (checked out in a temporary
worktree) and with the working tree, each in its own processes, and compares each run's
metrics.csv (every column the older version writes, the seconds per stage aside) and
queries.jsonl byte for byte. With
``--resume``, the older version's run is killed after round 4 (SIGKILL) and the working
tree resumes its run dir: a run dir of the older format must resume to the same result as
an uninterrupted run of the older version.

    python benchmarks/same_results.py --base 57b3532 [--mnist] [--out /tmp/same]

Writes ``same_results.json`` and a table to ``--out``; exit code 1 if any run differs.
Toy runs take a few minutes; ``--mnist`` adds the default 20-round MNIST run (about 15
minutes a version on 2 cores).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RUNS = {
    "moons-bald-laplace": ["--dataset", "moons", "--acq", "bald", "--posterior", "laplace"],
    "moons-ensemble": ["--dataset", "moons", "--acq", "bald", "--posterior", "ensemble"],
    "moons-mc-dropout-power": ["--dataset", "moons", "--acq", "entropy", "--batch", "power",
                               "--stochastic-beta", "2", "--posterior", "mc-dropout",
                               "--rounds", "5"],
}
RESUMED = ["--dataset", "moons", "--acq", "batchbald", "--posterior", "laplace",
           "--predictive", "mc", "--batchbald-candidates", "200"]
MNIST = ["--dataset", "mnist"]


def run(src: Path, args: list[str], out: Path, kill_after: int | None = None) -> None:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "jaxal.run", *args, "--out", str(out)]
    with open(f"{out}.log", "a") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd="/tmp",
                                start_new_session=True)
        if kill_after is None:
            proc.wait()
            return
        metrics = out / "metrics.jsonl"
        while proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) > kill_after:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.1)
        proc.wait()


def outputs(run_dir: Path, columns: list[str] | None = None) -> tuple[list[dict], str]:
    """(metrics.csv rows without the seconds-per-stage columns, queries.jsonl's text);
    ``columns``: only these (a newer version may add columns)."""
    rows = list(csv.DictReader(io.StringIO((run_dir / "metrics.csv").read_text())))
    rows = [{k: v for k, v in row.items() if not k.endswith("_s")
             and (columns is None or k in columns)} for row in rows]
    return rows, (run_dir / "queries.jsonl").read_text()


def same(base_dir: Path, now_dir: Path) -> bool:
    """Every column the base version writes, and its queries, equal in the new run."""
    base = outputs(base_dir)
    return base == outputs(now_dir, list(base[0][0]) if base[0] else None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the git commit to compare against")
    p.add_argument("--out", default="/tmp/jaxal-same-results")
    p.add_argument("--mnist", action="store_true", help="add the default MNIST run")
    args = p.parse_args()
    out = Path(args.out)
    base = out / "base-src"
    if not base.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base),
                        args.base], check=True, capture_output=True)
    runs = dict(RUNS, **({"mnist-default": MNIST} if args.mnist else {}))
    results = {}
    for name, cmd in runs.items():
        for side, src in (("base", base), ("now", ROOT)):
            if not (out / side / name / "metrics.csv").exists():
                (out / side).mkdir(parents=True, exist_ok=True)
                run(src, cmd, out / side / name)
        results[name] = same(out / "base" / name, out / "now" / name)
    # An older version's run dir, killed after round 4, resumed by the working tree.
    (out / "base").mkdir(parents=True, exist_ok=True)
    (out / "now").mkdir(parents=True, exist_ok=True)
    if not (out / "base" / "resumed-whole" / "metrics.csv").exists():
        run(base, RESUMED, out / "base" / "resumed-whole")
    if not (out / "now" / "resumed" / "metrics.csv").exists():
        run(base, RESUMED, out / "now" / "resumed", kill_after=4)
        run(ROOT, RESUMED, out / "now" / "resumed")
    results["old run dir resumed"] = same(out / "base" / "resumed-whole",
                                          out / "now" / "resumed")
    (out / "same_results.json").write_text(json.dumps(
        {"base": args.base, "identical": results}, indent=1))
    table = ["| run | metrics.csv and queries.jsonl |", "|---|---|"]
    table += [f"| {name} | {'identical' if same else 'DIFFERENT'} |"
              for name, same in results.items()]
    (out / "same_results.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    sys.exit(0 if all(results.values()) else 1)


if __name__ == "__main__":
    main()
