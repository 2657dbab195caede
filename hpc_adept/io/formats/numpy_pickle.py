"""Numeric arrays out of a pickle file, parsed and never unpickled.

Some peers keep their test data sets as pickles of numpy arrays (tike: ``tests/data/
lamino_setup.pickle.lzma`` = ``[data, original, theta, tilt]``, its reconstructions
``lamino_<algorithm>.pickle.lzma``). ``pickle.load`` on such a file runs whatever callables
the file names, so it is never called here. Instead the opcode stream is decoded with
:func:`pickletools.genops` (which only parses) and evaluated by a small interpreter that
knows containers, numbers, strings and bytes and, of the globals, only the names numpy's
own array pickles use (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``,
``numpy.dtype``, ``numpy.core.multiarray.scalar``, protocol 5's
``numpy.core.numeric._frombuffer`` with in-band buffers, and ``_codecs.encode`` /
``bytes`` for protocol 2's bytes): nothing named in the file is imported or called. Any
other global or opcode is one :class:`~hpc_adept.errors.DataError`. An array is built from
its recorded shape, dtype (a plain numeric code such as ``<f4``, checked before numpy
parses it) and raw bytes, whose length is checked. Malformed streams, nesting, containers
holding themselves and value or size bombs end in the same one-line error.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
import os
import pickletools
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpc_adept.errors import DataError

__all__ = ["read_pickled_arrays"]

MAX_BYTES = 4 << 30  # a test data set, not a beamtime: refuse larger streams
_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct")}
_SCALAR = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}
_FROMBUFFER = {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}
_BYTES = {("_codecs", "encode"), ("__builtin__", "bytes"), ("builtins", "bytes")}
_ALLOWED = _RECONSTRUCT | _SCALAR | _FROMBUFFER | _BYTES | {("numpy", "ndarray"),
                                                            ("numpy", "dtype")}
_PUSH_ARG = {"BININT", "BININT1", "BININT2", "LONG1", "LONG4", "BINFLOAT", "SHORT_BINUNICODE",
             "BINUNICODE", "BINUNICODE8", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8",
             "SHORT_BINSTRING", "BINSTRING", "BYTEARRAY8"}
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_TUPLE_N = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_SKIP = {"PROTO", "FRAME"}
_DTYPE_CODE = re.compile(r"[<>=|]?[biufc][0-9]{1,2}")
MAX_DIMS = 32
MAX_DEPTH = 100          # nesting of containers
MAX_NODES = 10_000_000   # values visited while building the result


@dataclass
class _Global:
    name: tuple[str, str]


@dataclass
class _Call:
    """A REDUCE of an allowed global, kept as data; BUILD records its state."""

    func: tuple[str, str]
    args: tuple
    state: Any = field(default=None)


def _open_stream(path: Path) -> bytes:
    """The file's bytes, decompressed when it starts with an xz, gzip or bzip2 magic."""
    with open(path, "rb") as f:
        magic = f.read(6)
    opener = {b"\xfd7zXZ\x00": lzma.open, b"\x1f\x8b": gzip.open, b"BZh": bz2.open}
    for prefix, fn in opener.items():
        if magic.startswith(prefix):
            with fn(path, "rb") as f:
                data = f.read(MAX_BYTES + 1)
            break
    else:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise DataError(f"{path}: more than {MAX_BYTES >> 30} GiB once decompressed")
    return data


def _dtype(value: Any, where: str) -> np.dtype:
    """``numpy.dtype(code, False, True)`` with its BUILD state ``(3, endian, ...)``."""
    if not (isinstance(value, _Call) and value.func == ("numpy", "dtype") and value.args
            and isinstance(value.args[0], str)):
        raise DataError(f"{where}: an array whose dtype is not a plain numpy dtype")
    code = value.args[0]
    # only plain numeric codes reach numpy's parser (which evaluates structured specs)
    if not _DTYPE_CODE.fullmatch(code):
        raise DataError(f"{where}: dtype {code[:40]!r} is not a plain numeric dtype")
    try:
        dtype = np.dtype(code)
    except TypeError:
        raise DataError(f"{where}: unknown dtype {code!r}") from None
    if dtype.kind not in "biufc" or dtype.fields is not None:
        raise DataError(f"{where}: dtype {dtype} is not numeric")
    state = value.state
    if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "=", "|"):
        dtype = dtype.newbyteorder(state[1]) if state[1] != "|" else dtype
    return dtype


def _raw_bytes(value: Any, where: str) -> bytes:
    """Bytes as protocols 2-5 write them (``_codecs.encode(text, 'latin1')``, ``bytes()``)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, _Call) and value.func == ("_codecs", "encode") and \
            len(value.args) == 2 and isinstance(value.args[0], str) and \
            value.args[1] == "latin1":
        return _latin1(value.args[0], where)
    if isinstance(value, _Call) and value.func in _BYTES and value.args == ():
        return b""
    if isinstance(value, str):  # protocol 0/1 strings
        return _latin1(value, where)
    raise DataError(f"{where}: expected raw bytes")


def _latin1(text: str, where: str) -> bytes:
    try:
        return text.encode("latin1")
    except UnicodeEncodeError:
        raise DataError(f"{where}: raw bytes stored as text outside latin-1") from None


def _from_buffer(value: _Call, where: str) -> np.ndarray:
    """Protocol 5: ``numpy._core.numeric._frombuffer(buffer, dtype, shape, order)``."""
    if len(value.args) != 4:
        raise DataError(f"{where}: malformed numpy buffer")
    raw, dtype_call, shape, order = value.args
    return _checked_array(_raw_bytes(raw, where), _dtype(dtype_call, where), shape,
                          order == "F", where)


def _checked_array(data: bytes, dtype: np.dtype, shape: Any, fortran: bool,
                   where: str) -> np.ndarray:
    """The array of ``shape`` from ``data``, after checking that they agree."""
    if not (isinstance(shape, tuple) and len(shape) <= MAX_DIMS
            and all(type(n) is int and 0 <= n <= MAX_BYTES for n in shape)):
        raise DataError(f"{where}: bad array shape (a {type(shape).__name__} of "
                        f"{len(shape) if isinstance(shape, tuple) else '?'} entries)")
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise DataError(f"{where}: {len(data)} bytes for an array {shape} of {dtype}")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C"
                                                    ).astype(dtype.newbyteorder("="), copy=True)


def _array(value: _Call, where: str) -> np.ndarray:
    """``_reconstruct(ndarray, (0,), b'b')`` + BUILD ``(1, shape, dtype, fortran, raw)``."""
    state = value.state
    if not (value.args and isinstance(value.args[0], _Global)
            and value.args[0].name == ("numpy", "ndarray")
            and isinstance(state, tuple) and len(state) == 5):
        raise DataError(f"{where}: not a plain numpy array")
    _, shape, dtype_call, fortran, raw = state
    return _checked_array(_raw_bytes(raw, where), _dtype(dtype_call, where), shape,
                          bool(fortran), where)


class _Converter:
    """Evaluated data: arrays for the recorded calls, containers rebuilt. A value shared
    through the memo is converted once (no blow-up by repeated references); nesting
    deeper than :data:`MAX_DEPTH`, a container holding itself, more than
    :data:`MAX_NODES` values or more than :data:`MAX_BYTES` of arrays stop the parse."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.done: dict[int, Any] = {}
        self.open: set[int] = set()
        self.nodes = 0
        self.array_bytes = 0

    def __call__(self, obj: Any, depth: int = 0) -> Any:
        key = id(obj)
        if key in self.done:
            return self.done[key]
        if key in self.open or depth > MAX_DEPTH:
            raise DataError(f"{self.where}: containers nested deeper than {MAX_DEPTH} or "
                            "holding themselves")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise DataError(f"{self.where}: more than {MAX_NODES} values")
        self.open.add(key)
        value = self._convert(obj, depth)
        self.open.discard(key)
        self.done[key] = value
        if isinstance(value, np.ndarray):
            self.array_bytes += value.nbytes
            if self.array_bytes > MAX_BYTES:
                raise DataError(f"{self.where}: more than {MAX_BYTES >> 30} GiB of arrays")
        return value

    def _convert(self, obj: Any, depth: int) -> Any:
        where = self.where
        if isinstance(obj, _Call):
            return _call_value(obj, where)
        if isinstance(obj, _Global):
            raise DataError(f"{where}: a bare global {'.'.join(obj.name)}")
        if isinstance(obj, list | tuple):
            values = [self(item, depth + 1) for item in obj]
            return values if isinstance(obj, list) else tuple(values)
        if isinstance(obj, dict):
            return {self(k, depth + 1): self(v, depth + 1) for k, v in obj.items()}
        return obj


def _call_value(obj: _Call, where: str) -> Any:
    """The array, bytes or number one recorded call of an allowed global stands for."""
    if obj.func in _RECONSTRUCT:
        return _array(obj, where)
    if obj.func in _FROMBUFFER:
        return _from_buffer(obj, where)
    if obj.func in _BYTES:
        return _raw_bytes(obj, where)
    if obj.func in _SCALAR and len(obj.args) == 2:
        dtype = _dtype(obj.args[0], where)
        data = _raw_bytes(obj.args[1], where)
        if len(data) != dtype.itemsize:
            raise DataError(f"{where}: a {dtype} scalar of {len(data)} bytes")
        return np.frombuffer(data, dtype=dtype)[0].item()
    raise DataError(f"{where}: {'.'.join(obj.func)} outside an array")


class _Machine:
    """The pickle machine's stack, marks and memo, with data-only opcode handlers."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.stack: list = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.current = ""  # the opcode being handled (some handlers serve two)
        self.handlers = {
            "MARK": self._mark, "EMPTY_LIST": lambda _: self.stack.append([]),
            "EMPTY_DICT": lambda _: self.stack.append({}), "TUPLE": self._tuple,
            "LIST": self._tuple, "APPEND": self._append, "APPENDS": self._append,
            "SETITEM": self._setitems, "SETITEMS": self._setitems, "GLOBAL": self._global,
            "STACK_GLOBAL": self._global, "REDUCE": self._reduce, "BUILD": self._build,
            **{n: self._put for n in ("MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT")},
            **{n: self._get for n in ("BINGET", "LONG_BINGET", "GET")},
        }

    def error(self, what: str) -> DataError:
        return DataError(f"{self.where}: {what}")

    def step(self, name: str, arg: Any) -> None:
        if name in _PUSH_ARG:
            self.stack.append(arg)
        elif name in _CONSTANTS:
            self.stack.append(_CONSTANTS[name])
        elif name in _TUPLE_N:
            n = _TUPLE_N[name]
            if n > len(self.stack) - (self.marks[-1] if self.marks else 0):
                raise self.error("malformed pickle (stack underflow)")
            items = tuple(self.stack[len(self.stack) - n:]) if n else ()
            del self.stack[len(self.stack) - n:]
            self.stack.append(items)
        elif name in self.handlers:
            self.current = name
            self.handlers[name](arg)
        else:
            raise self.error(f"pickle opcode {name} is not supported (refused)")

    def _mark(self, _: Any) -> None:
        self.marks.append(len(self.stack))

    def _pop_mark(self) -> list:
        if not self.marks:
            raise self.error("malformed pickle (no MARK)")
        start = self.marks.pop()
        if start > len(self.stack):
            raise self.error("malformed pickle (a MARK below the stack)")
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def _tuple(self, _: Any) -> None:
        items = self._pop_mark()
        self.stack.append(tuple(items) if self.current == "TUPLE" else items)

    def _append(self, _: Any) -> None:
        items = self._pop_mark() if self.current == "APPENDS" else [self.stack.pop()]
        if not isinstance(self.stack[-1], list):
            raise self.error("malformed pickle (append to a non-list)")
        self.stack[-1].extend(items)

    def _setitems(self, _: Any) -> None:
        items = self._pop_mark() if self.current == "SETITEMS" else self.stack[-2:]
        if self.current == "SETITEM":
            del self.stack[-2:]
        if not isinstance(self.stack[-1], dict) or len(items) % 2:
            raise self.error("malformed pickle (set item of a non-dict)")
        self.stack[-1].update(zip(items[::2], items[1::2], strict=True))

    def _put(self, arg: Any) -> None:
        self.memo[len(self.memo) if self.current == "MEMOIZE" else int(arg)] = self.stack[-1]

    def _get(self, arg: Any) -> None:
        self.stack.append(self.memo[int(arg)])

    def _global(self, arg: Any) -> None:
        if self.current == "GLOBAL":
            module, _, qualname = str(arg).partition(" ")
        else:
            qualname, module = self.stack.pop(), self.stack.pop()
        if (module, qualname) not in _ALLOWED:
            raise self.error(f"names {module}.{qualname}, which no array pickle needs; "
                             "refused (nothing was run)")
        self.stack.append(_Global((module, qualname)))

    def _reduce(self, _: Any) -> None:
        args, func = self.stack.pop(), self.stack.pop()
        if not (isinstance(func, _Global) and isinstance(args, tuple)):
            raise self.error("malformed pickle (REDUCE)")
        self.stack.append(_Call(func.name, args))

    def _build(self, _: Any) -> None:
        state = self.stack.pop()
        if not isinstance(self.stack[-1], _Call):
            raise self.error("malformed pickle (BUILD)")
        self.stack[-1].state = state


def _interpret(data: bytes, where: str) -> Any:
    machine = _Machine(where)
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in _SKIP:
                continue
            if op.name == "STOP":
                if len(machine.stack) != 1:
                    raise machine.error("malformed pickle (stack at STOP)")
                return machine.stack[0]
            machine.step(op.name, arg)
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise DataError(f"{where}: not a readable pickle ({exc})") from None
    raise DataError(f"{where}: truncated pickle (no STOP)")


def read_pickled_arrays(path: str | os.PathLike) -> Any:
    """The numbers, strings, arrays, lists, tuples and dicts a pickle file holds.

    Parameters
    ----------
    path : path
        A pickle (protocol 2-5), optionally xz/lzma-, gzip- or bzip2-compressed.

    Returns
    -------
    object
        The pickled value with every numpy array as an ``ndarray`` (native byte order, a
        copy) and every numpy scalar as a Python number.

    Raises
    ------
    DataError
        Missing file, a stream that is not a pickle, or any global or opcode outside numpy's
        array pickles (nothing named in the file is imported or called).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    try:
        data = _open_stream(p)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise DataError(f"{p}: cannot be read or decompressed ({exc})") from None
    try:
        return _Converter(str(p))(_interpret(data, str(p)))
    except (RecursionError, MemoryError, OverflowError, ValueError, TypeError) as exc:
        raise DataError(f"{p}: not a readable array pickle ({type(exc).__name__})") from None
