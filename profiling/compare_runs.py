"""Timing of several runs side by side (like the paper's Table 1: dense vs sparse).

    python profiling/compare_runs.py LABEL=RUN_DIR [LABEL=RUN_DIR ...] [--out FILE.md]

For every stage in any run's ``timing.json``: the slowest rank's time (``max_s``) and its
share of the run's wall time, per run; the last row is the wall time. Prints the Markdown
table and writes it to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(run_dir: Path) -> dict:
    path = run_dir / "timing.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"compare_runs: cannot read {path}: {exc}") from None


def table(runs: dict[str, dict]) -> str:
    stages: list[str] = []
    for doc in runs.values():
        stages += [s for s in doc.get("stages", {}) if s not in stages]
    labels = list(runs)
    lines = ["| stage | " + " | ".join(labels) + " |",
             "|---|" + "---:|" * len(labels)]
    for stage in stages:
        cells = []
        for label in labels:
            doc = runs[label]
            entry = doc.get("stages", {}).get(stage)
            wall = float(doc.get("wall_s") or 0.0)
            if entry is None:
                cells.append("-")
            else:
                share = f" ({100 * entry['max_s'] / wall:.0f}%)" if wall > 0 else ""
                cells.append(f"{entry['max_s']:.1f} s{share}")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append("| wall | " + " | ".join(f"{float(runs[k].get('wall_s', 0)):.1f} s"
                                         for k in labels) + " |")
    lines.append("| ranks | " + " | ".join(str(runs[k].get("n_ranks", "?"))
                                          for k in labels) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        label, sep, path = item.partition("=")
        if not sep:
            label, path = Path(item).name, item
        runs[label] = load(Path(path))
    text = table(runs)
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
