"""Timing of several runs side by side (like the paper's Table 1: dense vs sparse).

    python profiling/compare_runs.py LABEL=RUN_DIR [LABEL=RUN_DIR ...] [--out FILE.md]

For every stage in any run's ``timing.json``: the slowest rank's time (``max_s``) and its
share of the run's wall time, per run; then the wall time and ranks; then, for every method
evaluated in any run's ``metrics.json`` with circuit figures, its via recall, opens and
shorts. Prints the Markdown table and writes it to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(run_dir: Path) -> dict:
    path = run_dir / "timing.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"compare_runs: cannot read {path}: {exc}") from None
    return {**doc, "circuit": load_circuit(run_dir)}


def load_circuit(run_dir: Path) -> dict[str, dict]:
    """Method -> the ``circuit`` entry of the run's ``metrics.json`` ({} without one)."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"compare_runs: cannot read {path}: {exc}") from None
    return {m: e["circuit"] for m, e in metrics.items()
            if isinstance(e, dict) and isinstance(e.get("circuit"), dict)}


def circuit_rows(runs: dict[str, dict]) -> list[str]:
    """Rows of via recall, opens and shorts per method (none when no run has them)."""
    methods: list[str] = []
    for doc in runs.values():
        methods += [m for m in doc.get("circuit", {}) if m not in methods]
    lines = []
    for method in methods:
        for key, title in (("via_recall", "via recall"), ("opens", "opens"),
                           ("shorts", "shorts")):
            cells = []
            for doc in runs.values():
                value = doc.get("circuit", {}).get(method, {}).get(key)
                cells.append("-" if value is None else
                             f"{value:.3f}" if key == "via_recall" else str(value))
            lines.append(f"| {title} {method.upper()} | " + " | ".join(cells) + " |")
    return lines


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
    lines += circuit_rows(runs)
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
