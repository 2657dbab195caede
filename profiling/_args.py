"""Argument types shared by the scripts in profiling/.

Each one turns a bad value into argparse's one-line error (``prog: error: argument --x:
...``, exit 2) at parse time, so a benchmark refuses it before any work or output instead
of failing later with a traceback.

    parser.add_argument("--angles", type=positive_int, default=125)
    parser.add_argument("--device", type=device_arg(allow_auto=True), default="auto")
    parser.add_argument("--json", type=writable_file)
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def device_arg(allow_auto: bool = False) -> Callable[[str], str]:
    """A torch device this machine has: ``cpu``, ``cuda`` or ``cuda:N`` (and ``auto``)."""
    names = "cpu, cuda, cuda:N" + (" or auto" if allow_auto else "")

    def check(text: str) -> str:
        if allow_auto and text == "auto":
            return text
        import torch

        try:
            device = torch.device(text)
        except (RuntimeError, ValueError):
            raise argparse.ArgumentTypeError(f"unknown device {text!r} (use {names})") from None
        if device.type == "cpu":
            return text
        if device.type != "cuda":
            raise argparse.ArgumentTypeError(f"unsupported device {text!r} (use {names})")
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: no CUDA device is available here")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text}: this machine has {count} CUDA "
                                             f"device(s) (cuda:0 .. cuda:{count - 1})")
        return text

    check.__name__ = "device"  # argparse names the type in some messages
    return check


def writable_file(text: str) -> Path:
    """A file path that can be written: its folder exists and is writable."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: the directory {parent} is not writable")
    return path


def writable_dir(text: str) -> Path:
    """An existing, writable directory."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text} is not writable")
    return path


def output_dir(text: str) -> Path:
    """A writable directory, made (with its parents) when missing."""
    path = Path(text)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot make {text}: {err.strerror}") from None
    return writable_dir(text)


def existing_file(text: str) -> Path:
    """A readable file."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: not readable")
    return path


def json_list(text: str) -> list[Any]:
    """A JSON list given on the command line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError("must be a JSON list")
    return value
