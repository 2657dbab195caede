"""``adept report RUN_DIR``: one self-contained HTML page and a Markdown twin.

The report is built from the run directory's files alone, so it can be written at any time
(also for a run that stopped halfway: sections whose files are missing say so). The files are
untrusted: a section whose file cannot be read or makes no sense says "Unreadable <file>:
<reason>" (and logs a warning) and the rest of the report is written. Figures are
drawn headless into ``RUN_DIR/figures/`` and embedded in ``report.html`` as base64 PNGs, so
the page can be mailed or archived on its own; ``report.md`` links the same PNGs.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hpc_adept.config import ONE_WAY_RATIO, OUTLIER_RESIDUAL_RATIO, SMOOTH_CHECK_LIMIT
from hpc_adept.errors import DataError
from hpc_adept.io import read_projections, read_volume, write_text_atomic
from hpc_adept.io.h5read import open_h5
from hpc_adept.io.runfiles import HISTORY_NAME
from hpc_adept.report.figures import pyplot, save_figure
from hpc_adept.report.render import Section, render_html, render_markdown

log = logging.getLogger(__name__)


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{digits}e}"
        return f"{value:.{digits}f}"
    return str(value)


def _value(value: Any, digits: int = 3) -> str:
    """A metric that may be undefined (null in metrics.json)."""
    return "n/a" if value is None else _fmt(float(value), digits)


class Unreadable(Exception):  # noqa: N818 - a report note, not an error of the command
    """A run file that cannot be read or interpreted; its section becomes a note.

    Parameters
    ----------
    name : str
        The file, relative to the run directory.
    reason : str
        Why, in a few words.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def _reason(exc: BaseException) -> str:
    """One line saying what was wrong with a file, from the exception that reading it gave."""
    if isinstance(exc, KeyError):
        return f"missing key {exc.args[0]!r}" if exc.args else "missing key"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file: None when missing; :class:`Unreadable` when it is not one."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise Unreadable(path.name, _reason(exc)) from None
    if not isinstance(doc, dict):
        raise Unreadable(path.name, f"expected a JSON object, got {type(doc).__name__}")
    return doc


def _mapping(doc: dict[str, Any], key: str, name: str) -> dict[str, Any]:
    """``doc[key]`` when it is a mapping ({} when absent); :class:`Unreadable` otherwise."""
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise Unreadable(name, f"{key!r} is a {type(value).__name__}, not a mapping")
    return value


def _run_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` as a dict ({} when missing or unreadable: it only helps
    find the reference; the Configuration section reports an unreadable file)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        log.warning("report: ignoring unreadable %s (%s)", path, _reason(exc))
        return {}
    return doc if isinstance(doc, dict) else {}


# ------------------------------------------------------------------------------ sections


def section_config(run_dir: Path, config: dict[str, Any]) -> Section:
    sec = Section("Configuration")
    path = run_dir / "config.yaml"
    if path.is_symlink():  # adept writes a regular file; a link could show any text file
        raise Unreadable(path.name, "a symbolic link, not the file adept wrote; not shown")
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise Unreadable(path.name, _reason(exc)) from None
        sec.text("The fully resolved configuration of the last command run here "
                 "(`config.yaml`).").code(text)
    else:
        sec.text("No `config.yaml` in the run directory.")
    return sec


def section_timing(run_dir: Path, config: dict[str, Any]) -> Section:
    sec = Section("Timing breakdown")
    doc = _read_json(run_dir / "timing.json")
    if doc is None or not doc.get("regions"):
        return sec.text("No `timing.json` (run with `runtime.timing: true`).")
    run = _mapping(doc, "run", "timing.json")
    regions = _mapping(doc, "regions", "timing.json")
    stages = _mapping(doc, "stages", "timing.json")
    for name, entry in [*regions.items(), *stages.items()]:
        missing = [k for k in ("min_s", "mean_s", "max_s")
                   if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise Unreadable("timing.json", f"region {name!r} lacks {', '.join(missing)}")
    sec.text("{} rank(s) on {} node(s); devices: {}; revision {}; SLURM job {}. "
             "Wall time of the commands: {} s. "
             "Seconds per rank (min / mean / max over ranks); imbalance = max / mean - 1; "
             "share = mean / wall time of the command that ran the stage.",
             doc.get("n_ranks", "?"), run.get("n_nodes", "?"),
             ", ".join(map(str, doc.get("devices", []))) or "?", run.get("git_revision", "?"),
             run.get("slurm_job_id") or "-", _fmt(float(doc.get("wall_s", 0.0)), 1))
    rows, indent = [], []
    for name, entry in regions.items():
        # A part of a stage ("stage/part") is shown by its part's name, indented.
        indent.append(1 if "/" in name else 0)
        rows.append([name.split("/", 1)[1] if "/" in name else name,
                     _fmt(float(entry.get("count", 0)), 1),
                     _fmt(float(entry["min_s"]), 2), _fmt(float(entry["mean_s"]), 2),
                     _fmt(float(entry["max_s"]), 2), f"{100 * entry.get('imbalance', 0):.0f}%",
                     f"{100 * entry.get('share', 0):.0f}%",
                     _fmt(float(entry["device_mean_s"]), 2) if "device_mean_s" in entry else "-"])
    sec.table(["region", "count", "min s", "mean s", "max s", "imbalance", "share",
               "GPU s (events)"], rows, indent)
    if stages:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6.5, 0.5 + 0.45 * len(stages)))
        names = list(stages)
        means = [stages[n]["mean_s"] for n in names]
        lo = [stages[n]["mean_s"] - stages[n]["min_s"] for n in names]
        hi = [stages[n]["max_s"] - stages[n]["mean_s"] for n in names]
        ax.barh(names, means, xerr=[lo, hi], color="tab:blue", capsize=3)
        ax.invert_yaxis()
        ax.set_xlabel("seconds (mean over ranks; bars: min-max)")
        fig.tight_layout()
        sec.figure(save_figure(fig, run_dir / "figures" / "timing_stages.png"),
                   "Time per stage over ranks.")
    return sec


def _reference_volume(config: dict[str, Any]) -> tuple[np.ndarray | None, str]:
    def key(section: str, name: str) -> Any:
        value = config.get(section)
        return value.get(name) if isinstance(value, dict) else None

    candidates = [key("evaluate", "reference")]
    data = key("data", "path")
    if isinstance(data, str) and data:
        candidates.append(str(Path(data) / "ground_truth.h5"))
    for candidate in candidates:
        if isinstance(candidate, str) and candidate and Path(candidate).is_file():
            try:
                volume, _ = read_volume(candidate)
            except DataError as exc:
                log.warning("report: ignoring reference %s (%s)", candidate, exc)
                continue
            return volume, str(candidate)
    return None, ""


def center_crop(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """The central ``shape`` block of ``volume`` (None when ``volume`` is smaller)."""
    if any(s > v for s, v in zip(shape, volume.shape, strict=True)):
        return None
    starts = [(v - s) // 2 for s, v in zip(shape, volume.shape, strict=True)]
    return volume[tuple(slice(a, a + s) for a, s in zip(starts, shape, strict=True))]


def section_volumes(run_dir: Path, config: dict[str, Any]) -> Section:
    from hpc_adept.report.figures import save_orthoslices

    sec = Section("Reconstructions")
    volumes: dict[str, np.ndarray] = {}
    for path in sorted(run_dir.glob("volume_*.h5")):
        try:
            volumes[path.stem.removeprefix("volume_").upper()], _ = read_volume(path)
        except DataError as exc:
            sec.text("Unreadable {}: {}", path.name, exc)
    if not volumes:
        return sec.text("No reconstructed volume yet.")
    shape = next(iter(volumes.values())).shape
    panels: dict[str, np.ndarray] = {}
    reference, source = _reference_volume(config)
    if reference is not None:
        cropped = center_crop(reference, shape)
        if cropped is not None:
            panels["reference"] = cropped
    panels.update({k: v for k, v in volumes.items() if v.shape == shape})
    path = save_orthoslices(run_dir / "figures" / "report_orthoslices.png", panels,
                            title="xy slices at the reference's busiest depths, central xz/yz")
    caption = (f"Orthoslices with one colour scale; reference: {source} (central crop)."
               if "reference" in panels else "Orthoslices with one colour scale.")
    sec.figure(path, caption)
    sec.table(["volume", "shape [z, y, x]", "min", "max"],
              [[k, str(list(v.shape)), _fmt(float(v.min())), _fmt(float(v.max()))]
               for k, v in volumes.items()])
    return sec


def section_metrics(run_dir: Path, config: dict[str, Any]) -> Section:
    sec = Section("Evaluation")
    doc = _read_json(run_dir / "metrics.json")
    if doc is None:
        return sec.text("No `metrics.json` (set `evaluate.reference` and run "
                        "`adept evaluate`).")
    methods = _mapping(doc, "methods", "metrics.json") if "methods" in doc else doc
    rows = []
    for method, entry in methods.items():
        if not isinstance(entry, dict) or "ber" not in entry:
            continue
        ranges = _mapping(entry, "ranges", "metrics.json")
        extra = "; ".join(
            f"{name}: BER {_value(r.get('ber'))}, PCC {_value(r.get('pcc'))}"
            for name, r in ranges.items() if isinstance(r, dict))
        rows.append([str(method).upper(), _value(entry.get("ber"), 4),
                     _value(entry.get("pcc"), 4),
                     extra or "-"])
    if rows:
        sec.text("Bit error rate (BER) of the Gaussian-mixture binarisations and Pearson "
                 "correlation (PCC) against the reference, over all evaluated voxels and "
                 "per depth range.")
        sec.table(["method", "BER", "PCC", "per range"], rows)
    return sec


def _count(value: Any) -> str:
    """A count from metrics.json ("-" when absent)."""
    return "-" if value is None else str(int(value))


def _circuit_rows(circuit: dict[str, Any]) -> tuple[list[list[str]], list[int]]:
    """One method's circuit table: the whole volume, then each metal and cut layer."""
    rows = [["all layers", _count(circuit.get("opens")), _count(circuit.get("shorts")),
             _count(circuit.get("missing")), _count(circuit.get("spurious")),
             "-", _value(circuit.get("via_recall")), "-"]]
    for name, e in _mapping(circuit, "layers", "metrics.json").items():
        rows.append([str(name), _count(e.get("opens")), _count(e.get("shorts")),
                     _count(e.get("missing")), _count(e.get("spurious")), "-", "-", "-"])
    for name, v in _mapping(circuit, "vias", "metrics.json").items():
        if not v.get("vias"):
            continue  # a cut layer without vias in the volume
        rows.append([str(name), "-", "-", "-", "-",
                     f"{_count(v.get('recovered'))} / {_count(v.get('vias'))}",
                     _value(v.get("recall")), _value(v.get("precision"))])
    return rows, [0] + [1] * (len(rows) - 1)


def section_circuit(run_dir: Path, config: dict[str, Any]) -> Section:
    sec = Section("Circuit")
    doc = _read_json(run_dir / "metrics.json")
    methods = {} if doc is None else (
        _mapping(doc, "methods", "metrics.json") if "methods" in doc else doc)
    circuits = {m: e["circuit"] for m, e in methods.items()
                if isinstance(e, dict) and isinstance(e.get("circuit"), dict)}
    if not circuits:
        return sec.text("No circuit figures in `metrics.json` (run `adept evaluate`).")
    sec.text("The binarised reconstruction's 3-D connected components against the true nets "
             "(or the reference's own components): an open is a true wire piece split over "
             "several components, a short a component joining several nets; missing and "
             "spurious structures touch nothing; a via is recovered when enough of its "
             "voxels are metal (settings evaluate.circuit_* and evaluate.via_min_fraction).")
    sec.table(["method", "labels", "opens", "shorts", "missing", "spurious",
               "VI split (bits)", "VI merge (bits)", "via recall"],
              [[str(m).upper(), str(c.get("labels", "-")), _count(c.get("opens")),
                _count(c.get("shorts")), _count(c.get("missing")), _count(c.get("spurious")),
                _value(c.get("vi_split_bits")), _value(c.get("vi_merge_bits")),
                _value(c.get("via_recall"))] for m, c in circuits.items()])
    for method, circuit in circuits.items():
        rows, indent = _circuit_rows(circuit)
        sec.text("{}: per layer.", str(method).upper())
        sec.table(["layer", "opens", "shorts", "missing", "spurious", "vias recovered",
                   "via recall", "via precision"], rows, indent)
    figure = run_dir / "figures" / "circuit_errors.png"
    if _is_png_file(figure):
        sec.figure(figure, "Circuit errors on xy slices of the layers where they occur: "
                           "missed vias (red circles), opens (orange x, the gap), shorts "
                           "(magenta +, the bridge); grey: reconstructed metal, blue: the "
                           "true metal's outline.")
    return sec


# a chip's metal stack is ~10 um thick: an offset beyond this is a broken record
MAX_STACK_OFFSET_UM = 100.0

# how adept align treats each kind of sample (aligned.h5's root attribute sample)
SAMPLE_METHODS = {
    "extended": "a chip around the region: widened volume, blind to phase offsets and ramps",
    "isolated": "a sample in vacuum: the region alone",
}


def section_alignment(run_dir: Path, config: dict[str, Any]) -> Section:
    sec = Section("Alignment")
    path = run_dir / "aligned.h5"
    if not path.is_file():
        return sec.text("No `aligned.h5`.")
    try:
        ps = read_projections(path)
    except DataError as exc:
        return sec.text("Unreadable aligned.h5: {}", exc)
    shifts = ps.shifts_px
    if shifts is None:
        return sec.text("aligned.h5 holds no `/shifts_px`.")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.0))
    order = np.argsort(ps.angles_deg)
    ax.plot(ps.angles_deg[order], shifts[order, 0], ".-", label="row shift")
    ax.plot(ps.angles_deg[order], shifts[order, 1], ".-", label="column shift")
    ax.set_xlabel("rotation angle (deg)")
    ax.set_ylabel("shift (px)")
    ax.legend()
    fig.tight_layout()
    sec.figure(save_figure(fig, run_dir / "figures" / "report_shifts.png"),
               "Shift found in each measured projection (measured[r, c] = "
               "ideal[r - s_r, c - s_c]).")
    rms = np.sqrt(np.mean(shifts**2, axis=0))
    sec.text("{} projections; RMS shift {} px (rows), {} px (columns); largest |shift| {} px.",
             len(shifts), f"{rms[0]:.2f}", f"{rms[1]:.2f}", f"{np.abs(shifts).max():.2f}")
    if ps.sample_kind is not None:
        sec.text("Sample: {} ({}).", ps.sample_kind, SAMPLE_METHODS.get(ps.sample_kind, "?"))
    try:  # a bad history costs its own paragraphs, not the shifts above
        paragraphs = _alignment_trust(_read_json(run_dir / HISTORY_NAME), len(shifts))
    except Unreadable as exc:
        log.warning("report: Alignment section: unreadable %s (%s)", run_dir / exc.name,
                    exc.reason)
        return sec.text("Unreadable {}: {}", exc.name, exc.reason)
    for template, values in paragraphs:
        sec.text(template, *values)
    return sec


def _alignment_trust(history: dict[str, Any] | None, n_angles: int
                     ) -> list[tuple[str, tuple[Any, ...]]]:
    """The paragraphs (template, values) of what ``align_history.json`` says about how far
    the ``n_angles`` shifts can be trusted: how one-way the projections' structure is,
    where the data's layers sat against the chip's stack, the projections on a wrong match
    and the smooth-pattern check (``align.smooth_check_px``);
    :class:`Unreadable` when a value is missing, out of range or contradicts another (no
    verdict from a broken record)."""
    if history is None:
        return [("No `{}`: nothing on how far the shifts hold.", (HISTORY_NAME,))]
    if history.get("enabled") is False:
        return [("The alignment was off (`align.enabled: false`): the projections were "
                 "cropped, no shifts estimated.", ())]
    paragraphs = []
    ratio = history.get("structure_ratio")
    if ratio is not None:
        ratio = _in_range(ratio, "structure_ratio", high=1.0)
        verdict = ("mostly one way: the shifts along the wires are poorly determined"
                   if ratio < ONE_WAY_RATIO else "structure in both directions")
        paragraphs.append(("Structure of the projections: median eigenvalue ratio {} ({}; "
                           "below {} counts as one way).",
                           (f"{ratio:.2f}", verdict, f"{ONE_WAY_RATIO:g}")))
    paragraphs += _stack_placement(history)
    moved = _angle_indices(history.get("reregistered_angles"), "reregistered_angles",
                           n_angles)
    if moved:
        paragraphs.append(("{} of {} projections (indices {}) ended the last level at {} "
                           "times the median residual or more and were searched again and "
                           "moved to a better match (`align.reregister_outliers`); the last "
                           "level then ran once more.",
                           (len(moved), n_angles, _listed(moved),
                            f"{OUTLIER_RESIDUAL_RATIO:g}")))
    outliers = _angle_indices(history.get("outlier_angles"), "outlier_angles", n_angles)
    if outliers:
        paragraphs.append(("{} of {} projections (indices {}) ended the last iteration at "
                           "{} times the median residual or more: probably registered onto "
                           "a wrong match; their shifts are not to be trusted.",
                           (len(outliers), n_angles, _listed(outliers),
                            f"{OUTLIER_RESIDUAL_RATIO:g}")))
    check = history.get("smooth_check")
    if check is None:
        return paragraphs + [("No smooth-pattern check (it runs after the joint last level of "
                              "an extended sample's alignment; `align.smooth_check_px: 0` "
                              "turns it off).", ())]
    if not isinstance(check, dict):
        raise Unreadable(HISTORY_NAME, f"smooth_check is a {type(check).__name__}")
    pattern = _in_range(check.get("pattern_px"), "smooth_check.pattern_px")
    distance = _in_range(check.get("smooth_distance"), "smooth_check.smooth_distance")
    held = check.get("determined")
    if not isinstance(held, bool):
        raise Unreadable(HISTORY_NAME, "smooth_check.determined is not true or false")
    if held != (distance <= SMOOTH_CHECK_LIMIT):
        raise Unreadable(HISTORY_NAME, "smooth_check.determined contradicts its distance")
    verdict = ("taken back: the method holds such patterns near its estimate" if held else
               "NOT taken back: the shifts may be off by a pattern smooth over the angles of "
               "up to a few pixels; prefer a region with structure in both directions")
    return paragraphs + [("Smooth-pattern check: the last level, rerun from the estimate plus "
                          "a {} px shift pattern smooth over the angles, stopped {} times the "
                          "pattern from the estimate (limit {}): {}.",
                          (f"{pattern:.2f}", f"{distance:.2f}", f"{SMOOTH_CHECK_LIMIT:g}",
                           verdict))]


def _stack_placement(history: dict[str, Any]) -> list[tuple[str, tuple[Any, ...]]]:
    """Where the data's layers sat against the chip's layer stack (``stack_offset_um``) and
    whether the shifts put them onto it (``placed_on_stack``; records from before that
    option did not); nothing without a stack."""
    offset = history.get("stack_offset_um")
    if offset is None:
        return []
    offset = _in_range(offset, "stack_offset_um", high=MAX_STACK_OFFSET_UM,
                       low=-MAX_STACK_OFFSET_UM)
    placed = history.get("placed_on_stack", False)
    if not isinstance(placed, bool):
        raise Unreadable(HISTORY_NAME, "placed_on_stack is not true or false")
    if placed:
        return [("Chip's layer stack, fitted on the last level: the data's layers sat {} um "
                 "along z from it; the shifts keep that translation, so the aligned "
                 "projections and the volumes hold the layers at the stack's heights "
                 "(`align.place_on_stack`).", (f"{offset:+.4f}",))]
    return [("Chip's layer stack, fitted on the last level: the data's layers sat {} um "
             "along z from it; the shifts left them there (`align.place_on_stack` off, or "
             "an offset that looked like a wrong stack height: see the log): lowering "
             "`align.layer_base_um` by it puts the stack onto them.", (f"{offset:+.4f}",))]


def _listed(indices: list[int]) -> str:
    """The first ten ``indices``, comma separated ("..." after them where there are more)."""
    return ", ".join(str(i) for i in indices[:10]) + (" ..." if len(indices) > 10 else "")


def _shown(value: Any) -> str:
    """``repr(value)`` cut to 40 characters, for a refusal's message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _angle_indices(value: Any, name: str, n_angles: int) -> list[int]:
    """``value`` as a list of indices of the ``n_angles`` projections (ints in
    [0, n_angles); None: an older history without it, empty); :class:`Unreadable`
    (align_history.json) otherwise."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n_angles
            for i in value):
        raise Unreadable(HISTORY_NAME, f"{name} is not a list of projection indices: "
                         f"{_shown(value)}")
    return value


def _in_range(value: Any, name: str, high: float = math.inf, low: float = 0.0) -> float:
    """``value`` as a number in [``low``, ``high``]; :class:`Unreadable`
    (align_history.json) otherwise (also for a bool, a string, NaN, infinity or an int too
    large for a float)."""
    number = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            pass
    if not (math.isfinite(number) and low <= number <= high):
        raise Unreadable(HISTORY_NAME, f"{name} is not a number in [{low:g}, {high:g}]: "
                         f"{_shown(value)}")
    return number


def section_ptycho(run_dir: Path, config: dict[str, Any]) -> Section:
    sec = Section("Ptychography (LSQ-ML) convergence")
    files = sorted((run_dir / "ptycho").glob("scan_*.h5"))
    curves, unreadable = [], []
    for path in files:
        try:
            curves.append(_fourier_error(path))
        except Unreadable as exc:
            log.warning("report: unreadable %s (%s)", path, exc.reason)
            unreadable.append(f"{path.name} ({exc.reason})")
    if unreadable:
        sec.text("Unreadable ptycho/: {}", "; ".join(unreadable))
    if not curves:
        return sec.text("No per-scan LSQ-ML results in `ptycho/`.")
    length = min(len(c) for c in curves)
    stack = np.stack([c[:length] for c in curves])
    stack = stack / np.maximum(stack[:, :1], 1e-30)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.0))
    it = np.arange(1, length + 1)
    ax.fill_between(it, stack.min(0), stack.max(0), alpha=0.3, label="range over scans")
    ax.plot(it, np.median(stack, axis=0), label="median")
    ax.set_yscale("log")
    ax.set_xlabel("LSQ-ML iteration")
    ax.set_ylabel("Fourier error / first")
    ax.legend()
    fig.tight_layout()
    sec.figure(save_figure(fig, run_dir / "figures" / "report_lsqml.png"),
               f"Relative Fourier error of {len(curves)} scans.")
    return sec


def _fourier_error(path: Path) -> np.ndarray:
    """The LSQ-ML error curve of one ``ptycho/scan_*.h5`` (float64, 1-D, not empty)."""
    try:
        with open_h5(path) as f:
            curve = np.asarray(f["fourier_error"], dtype=np.float64)
    except DataError as exc:  # its message names the file already: keep the reason
        raise Unreadable(path.name, _reason(exc).removeprefix(f"{path}: ")) from None
    except (KeyError, ValueError, TypeError) as exc:
        raise Unreadable(path.name, f"fourier_error: {_reason(exc)}") from None
    if curve.ndim != 1 or curve.size == 0:
        raise Unreadable(path.name, f"fourier_error: expected a 1-D curve, got shape "
                                    f"{list(curve.shape)}")
    return curve


def section_dip(run_dir: Path, config: dict[str, Any]) -> Section:
    sec = Section("Deep image prior training")
    doc = _read_json(run_dir / "dip_history.json")
    loss = doc.get("loss") if doc else None
    if loss is None or (isinstance(loss, list) and not loss):
        return sec.text("No DIP loss history (`dip_history.json`).")
    try:
        loss = np.asarray(loss, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise Unreadable("dip_history.json", f"loss: {_reason(exc)}") from None
    if loss.ndim != 1 or loss.size == 0:
        raise Unreadable("dip_history.json", f"loss: expected a list of numbers, got "
                                             f"shape {list(loss.shape)}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.0))
    ax.plot(np.arange(1, len(loss) + 1), loss)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    fig.tight_layout()
    sec.figure(save_figure(fig, run_dir / "figures" / "report_dip_loss.png"),
               f"DIP loss over {len(loss)} iterations (final {_fmt(float(loss[-1]))}).")
    return sec


SECTIONS: tuple[tuple[Callable[[Path, dict[str, Any]], Section], str, str], ...] = (
    (section_timing, "Timing breakdown", "timing.json"),
    (section_volumes, "Reconstructions", "volume_*.h5"),
    (section_metrics, "Evaluation", "metrics.json"),
    (section_circuit, "Circuit", "metrics.json"),
    (section_alignment, "Alignment", "aligned.h5"),
    (section_ptycho, "Ptychography (LSQ-ML) convergence", "ptycho/scan_*.h5"),
    (section_dip, "Deep image prior training", "dip_history.json"),
    (section_config, "Configuration", "config.yaml"),
)
"""Every section: its builder, its title, and the file it reads (for the note when the
builder fails on it)."""


def _build_section(build: Callable[[Path, dict[str, Any]], Section], title: str, name: str,
                   run_dir: Path, config: dict[str, Any]) -> Section:
    """Run one section's builder; a file it cannot read or interpret becomes a note."""
    try:
        return build(run_dir, config)
    except Unreadable as exc:
        name, reason = exc.name, exc.reason
    except Exception as exc:  # noqa: BLE001 - a malformed file can fail any way it likes
        # Why so broad: the files are untrusted and a section interprets them freely
        # (KeyError, TypeError, IndexError, ...); one bad file must not cost the report.
        reason = f"{type(exc).__name__}: {_reason(exc)}"
    log.warning("report: %s section: unreadable %s (%s)", title, run_dir / name, reason)
    return Section(title).text("Unreadable {}: {}", name, reason)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_png_file(path: Path) -> bool:
    """A regular file (not a link) that starts like a PNG.

    Why: the page embeds the bytes of every figure, so a crafted run directory with
    ``figures/x.png`` linked to another file (a key, a password file) must not copy that
    file into a report that may be mailed around.
    """
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with path.open("rb") as fh:
            return fh.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False


def _other_figures(run_dir: Path, used: set[Path]) -> Section | None:
    """The stages' figures (``figures/*.png``) that no section has shown."""
    extra = [p for p in sorted((run_dir / "figures").glob("*.png"))
             if p.resolve() not in used and _is_png_file(p)]
    if not extra:
        return None
    sec = Section("Stage figures")
    for path in extra:
        sec.figure(path, path.name)
    return sec


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` into ``run_dir``.

    Raises
    ------
    DataError
        When ``run_dir`` is not a directory, holds no result of any stage, or is not
        writable (checked before any work), or when a report file cannot be written.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"report: run directory not found: {run_dir}")
    known = ("projections.h5", "aligned.h5", "timing.json", "metrics.json", "config.yaml")
    if not any((run_dir / k).is_file() for k in known) and not list(run_dir.glob("volume_*.h5")):
        raise DataError(f"report: {run_dir} holds no results of adept (no projections.h5, "
                        f"volume_*.h5, timing.json, ...)")
    _check_writable(run_dir)
    config = _run_config(run_dir)
    sections = [_build_section(build, title, name, run_dir, config)
                for build, title, name in SECTIONS]
    used = {Path(v[0]).resolve() for s in sections for k, v in s.blocks if k == "figure"}
    extra = _other_figures(run_dir, used)
    if extra is not None:
        sections.insert(len(sections) - 1, extra)
    title = f"ADePt run report: {run_dir.resolve().name}"
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    html_text = render_html(title, sections)
    md_text = render_markdown(title, sections, run_dir)
    for path, text in ((html_path, html_text), (md_path, md_text)):
        try:
            write_text_atomic(path, text)
        except OSError as exc:  # e.g. a directory in its place, a full or read-only disk
            raise DataError(f"report: cannot write {path}: {_reason(exc)}") from None
    return html_path, md_path


def _check_writable(run_dir: Path) -> None:
    """DataError unless the report and its figures can be written into ``run_dir``."""
    figures = run_dir / "figures"
    for directory in (run_dir, figures):
        if directory == figures and not directory.exists():
            continue  # made by the first figure, inside the writable run directory
        if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
            raise DataError(f"report: {directory} is not a writable directory; the report "
                            f"cannot be written")
