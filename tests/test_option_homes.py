"""One home for every option: the config sections (:mod:`hpc_adept.config`) define each
setting's name, default, units and validation once, and the kernels take the sections.

A second dataclass that repeats a config key with its own default (the LSQ-ML and alignment
options classes that shadowed ``ptycho`` and ``align``, the DIP's training settings with
another learning rate) can drift from the config without any test noticing; these tests
catch that.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import typing
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

import hpc_adept
from hpc_adept.config import AlignConfig, Config, PtychoConfig

# Dataclasses another branch of the same issue replaces by their config section; an entry
# is an error once the class is gone (delete it then).
PENDING: dict[str, str] = {}

# Dataclasses whose fields share a config key's name but not its meaning (no shadow of it).
OTHER_MEANING: dict[str, str] = {}

# Values a config key can hold; other defaults (callables, arrays) are not settings.
SETTING_TYPES = (bool, int, float, str, tuple, type(None))


def _sections() -> list[type]:
    return [Config] + [typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)]


def _config_defaults(sections: Iterable[type]) -> dict[str, list[Any]]:
    """Config key -> its defaults (one per section that has the key)."""
    defaults: dict[str, list[Any]] = {}
    for cls in sections:
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                defaults.setdefault(f.name, []).append(f.default)
    return defaults


def _package_dataclasses() -> Iterator[type]:
    """Every dataclass defined in a module of hpc_adept (all modules imported)."""
    for info in pkgutil.walk_packages(hpc_adept.__path__, "hpc_adept."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (inspect.isclass(obj) and dataclasses.is_dataclass(obj)
                    and obj.__module__ == module.__name__):
                yield obj


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same kind (an int default of a float key counts as the same)."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return a == b and (numbers or type(a) is type(b))


def second_defaults(classes: Iterable[type], defaults: dict[str, list[Any]]) -> list[str]:
    """Fields of ``classes`` named like a config key whose default is none of that key's.

    Returns
    -------
    list of str
        ``module.Class.field = default (config: defaults)``, one per conflict.
    """
    found = []
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.name not in defaults or f.default is dataclasses.MISSING:
                continue
            if not isinstance(f.default, SETTING_TYPES):
                continue
            if not any(_same(f.default, d) for d in defaults[f.name]):
                found.append(f"{cls.__module__}.{cls.__qualname__}.{f.name} = {f.default!r} "
                             f"(config: {defaults[f.name]})")
    return found


def test_no_dataclass_repeats_a_config_key_with_another_default():
    sections = _sections()
    classes = [c for c in _package_dataclasses() if c not in sections]
    names = {f"{c.__module__}.{c.__qualname__}" for c in classes}
    stale = sorted(set(PENDING) - names)
    assert not stale, f"PENDING lists classes that no longer exist, delete them: {stale}"
    assert not sorted(set(OTHER_MEANING) - names), "OTHER_MEANING lists a class that is gone"
    skipped = set(PENDING) | set(OTHER_MEANING)
    checked = [c for c in classes if f"{c.__module__}.{c.__qualname__}" not in skipped]
    assert len(checked) > 20  # the walk found the package's dataclasses
    conflicts = second_defaults(checked, _config_defaults(sections))
    assert not conflicts, ("a dataclass repeats a config key with another default; take the "
                           "config section instead:\n" + "\n".join(conflicts))


def test_the_check_catches_a_second_default():
    """The rule above fails on a shadow class with a disagreeing default."""

    @dataclasses.dataclass(frozen=True)
    class Shadow:
        batch_size: int = 16        # ptycho.batch_size is 32
        probe_modes: int = 1        # the same as ptycho.probe_modes: no conflict
        iterations: int = 1500      # dip.iterations: no conflict
        lr: float = 2e-4            # dip.lr is 1e-3
        tilt_deg: float = 61        # simulate.tilt_deg 61.0: an int of the same value is fine

    found = second_defaults([Shadow], _config_defaults(_sections()))
    assert [line.split(" = ")[0].rsplit(".", 1)[1] for line in found] == ["batch_size", "lr"]


@pytest.mark.parametrize(("function", "section"), [
    ("hpc_adept.ptycho.lsqml.reconstruct", PtychoConfig),
    ("hpc_adept.ptycho.fitted_probe.probe_from_scan", PtychoConfig),
    ("hpc_adept.align.matching.projection_matching", AlignConfig),
])
def test_kernels_take_their_config_section(function, section):
    module, name = function.rsplit(".", 1)
    hint = typing.get_type_hints(getattr(importlib.import_module(module), name))["options"]
    assert hint is section or section in typing.get_args(hint), hint


def test_kernel_keywords_agree_with_the_config():
    """A kernel keyword named like a config key (``seed``) defaults to the config's value."""
    from hpc_adept.align.matching import projection_matching
    from hpc_adept.ptycho.fitted_probe import probe_from_scan
    from hpc_adept.ptycho.lsqml import reconstruct

    defaults = _config_defaults(_sections())
    for function in (reconstruct, probe_from_scan, projection_matching):
        for p in inspect.signature(function).parameters.values():
            if p.name in defaults and p.default is not inspect.Parameter.empty:
                assert p.default in defaults[p.name], (function.__name__, p.name, p.default)
