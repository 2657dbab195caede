"""Ablation and sparsity studies: run a set of variants, tabulate BER / PCC side by side.

    python profiling/ablation.py STUDY.yaml [--ranks N] [--only NAME ...]

The study file (example: ``jobs/configs/ablations.yaml``)::

    config: jobs/configs/ablation_base.yaml   # base config of every variant
    output: runs/ablation                     # one run directory per variant below it
    variants:
      - name: dense FBP                       # label in the table
        set: {simulate.n_angles: 128, recon.methods: [fbp]}
      - name: 1/8 DIP without TV
        set: {simulate.n_angles: 16, recon.methods: [dip], dip.tv_weights: [0.0, 0.0]}

For each variant: ``adept simulate`` (into a dataset directory per distinct simulation
setting, reused between variants that share it; its ``projections.h5`` is linked into each
variant's run directory, so the base config reads ``recon.input: projections``),
``adept recon`` and ``adept evaluate``
into ``OUTPUT/<slug>``; then ``OUTPUT/ablation.md`` (a table like the paper's Fig. 5: BER
and PCC overall and per depth range, and, when ``metrics.json`` has the circuit figures,
via recall, opens and shorts, per variant and method), ``ablation.json`` and
``ablation.png`` (bar charts). Runs whose ``metrics.json`` is newer than their config are
reused, so an interrupted study continues.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from _args import positive_int

KNOWN_KEYS = {"config", "output", "variants", "ranks"}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def load_study(path: Path) -> dict[str, Any]:
    try:
        study = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"ablation: cannot read {path}: {exc}") from None
    if not isinstance(study, dict) or "config" not in study or not study.get("variants"):
        raise SystemExit(f"ablation: {path} needs 'config' and a list of 'variants'")
    unknown = set(study) - KNOWN_KEYS
    if unknown:
        raise SystemExit(f"ablation: {path}: unknown keys {sorted(unknown)}")
    names = [v.get("name") for v in study["variants"]]
    if None in names or len(set(names)) != len(names):
        raise SystemExit(f"ablation: {path}: every variant needs a unique name")
    return study


def _sets(values: dict[str, Any]) -> list[str]:
    return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items()]


def _adept(args: list[str], ranks: int, log: Path) -> None:
    cmd = ["adept", *args]
    if ranks > 1:
        cmd = ["mpiexec", "-n", str(ranks), *cmd]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False,
                              env={**os.environ, "MPIEXEC_TIMEOUT": "86400"})
    if done.returncode != 0:
        raise SystemExit(f"ablation: {shlex.join(cmd)} failed (exit {done.returncode}); "
                         f"see {log}")


def run_variant(study: dict[str, Any], variant: dict[str, Any], ranks: int) -> dict[str, Any]:
    """Simulate (or reuse), reconstruct and evaluate one variant; its metrics.json."""
    base = Path(study["config"])
    out = Path(study.get("output", "runs/ablation"))
    sets = dict(variant.get("set") or {})
    sim_sets = {k: v for k, v in sets.items() if k.startswith("simulate.")}
    key = hashlib.sha256(json.dumps(sim_sets, sort_keys=True).encode()).hexdigest()[:10]
    dataset = out / "data" / key
    run_dir = out / slug(variant["name"])
    sets.update({"data.path": str(dataset), "output.dir": str(run_dir),
                 "evaluate.reference": str(dataset / "ground_truth.h5")})
    log = run_dir / "ablation.log"
    metrics = run_dir / "metrics.json"
    stamp = run_dir / "ablation_sets.json"
    wanted = json.dumps(sets, sort_keys=True)
    if metrics.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        print(f"{variant['name']}: reusing {metrics}", flush=True)
        return json.loads(metrics.read_text())
    if not (dataset / "projections.h5").is_file():
        print(f"{variant['name']}: simulate -> {dataset}", flush=True)
        # The simulated projections.h5 goes to the dataset, shared by its variants.
        _adept(["simulate", "-c", str(base), "--set", *_sets({**sets, "output.dir": str(dataset)})],
               ranks, log)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / "projections.h5"
    target.unlink(missing_ok=True)
    try:
        os.link(dataset / "projections.h5", target)
    except OSError:
        shutil.copyfile(dataset / "projections.h5", target)
    print(f"{variant['name']}: recon + evaluate -> {run_dir}", flush=True)
    _adept(["recon", "-c", str(base), "--set", *_sets(sets)], ranks, log)
    _adept(["evaluate", "-c", str(base), "--set", *_sets(sets)], 1, log)
    stamp.write_text(wanted)
    return json.loads(metrics.read_text())


CIRCUIT_COLUMNS = (("via recall", "via_recall"), ("opens", "opens"), ("shorts", "shorts"))


def _row(name: str, method: str, entry: dict[str, Any], range_names: list[str]
         ) -> dict[str, Any]:
    """One (variant, method) row; ``range_names`` collects the depth ranges seen."""
    row = {"variant": name, "method": method, "ber": entry["ber"], "pcc": entry["pcc"]}
    for rname, r in entry.get("ranges", {}).items():
        row[f"ber {rname}"] = r["ber"]
        row[f"pcc {rname}"] = r["pcc"]
        if rname not in range_names:
            range_names.append(rname)
    circuit = entry.get("circuit")
    if isinstance(circuit, dict):
        row.update({column: circuit.get(key) for column, key in CIRCUIT_COLUMNS})
    return row


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def table(results: list[tuple[str, dict[str, Any]]]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table and rows: one row per (variant, method)."""
    range_names: list[str] = []
    rows = [_row(name, method, entry, range_names)
            for name, metrics in results for method, entry in metrics.items()]
    circuit = [c for c, _ in CIRCUIT_COLUMNS if any(c in row for row in rows)]
    header = ["variant", "method", "BER", "PCC"]
    for rname in range_names:
        header += [f"BER {rname}", f"PCC {rname}"]
    header += circuit
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for row in rows:
        cells = [row["variant"], row["method"].upper(), _cell(row["ber"]), _cell(row["pcc"])]
        for rname in range_names:
            cells += [_cell(row.get(f"ber {rname}")), _cell(row.get(f"pcc {rname}"))]
        cells += [_cell(row.get(c)) for c in circuit]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['variant']}\n{r['method'].upper()}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.1 * len(rows) * 2), 3.8))
    for ax, key, title in ((axes[0], "ber", "BER (lower is better)"),
                           (axes[1], "pcc", "PCC (higher is better)")):
        values = [r[key] if r[key] is not None else 0.0 for r in rows]
        ax.bar(range(len(rows)), values, color="tab:blue")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--ranks", type=positive_int, default=None,
                        help="MPI ranks per command")
    parser.add_argument("--only", nargs="+", help="run only these variants (by name)")
    args = parser.parse_args(argv)
    study = load_study(args.study)
    known = [v["name"] for v in study["variants"]]
    unknown = [name for name in args.only or [] if name not in known]
    if unknown:
        parser.error(f"--only: no variant {', '.join(map(repr, unknown))} in {args.study}; "
                     f"its variants: {', '.join(map(repr, known))}")
    ranks = args.ranks or int(study.get("ranks", 1))
    variants = [v for v in study["variants"] if not args.only or v["name"] in args.only]
    results = [(v["name"], run_variant(study, v, ranks)) for v in variants]
    text, rows = table(results)
    out = Path(study.get("output", "runs/ablation"))
    (out / "ablation.md").write_text(
        f"# Ablation study `{args.study}`\n\nBase config `{study['config']}`; BER and PCC "
        "against the simulation's ground truth (adept evaluate).\n\n" + text)
    (out / "ablation.json").write_text(json.dumps(rows, indent=1))
    plot(rows, out / "ablation.png")
    print(text, end="")
    print(f"wrote {out / 'ablation.md'}, ablation.json, ablation.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
