"""Arrays out of pickle files without unpickling them (peers' test data sets, issue 19)."""

from __future__ import annotations

import lzma
import os
import pickle

import numpy as np
import pytest

from hpc_adept.errors import DataError
from hpc_adept.io.formats.numpy_pickle import read_pickled_arrays


def _values():
    rng = np.random.default_rng(0)
    return [
        (rng.standard_normal((3, 4, 5)) + 1j * rng.standard_normal((3, 4, 5))).astype(
            np.complex64),
        np.linspace(0, 6.0, 7, dtype=np.float32),
        np.asfortranarray(rng.integers(-9, 9, (4, 3)).astype(np.int16)),
        rng.standard_normal(6).astype(">f8"),
        np.zeros((0, 3), np.uint8),
        1.0471975511965976, 7, "name", b"raw", None, True,
        (np.float64(2.5), np.int32(-3)),
        {"theta": np.arange(3.0), "n": 2},
    ]


def _assert_same(read, expected):
    assert type(read) is type(expected) or isinstance(expected, np.generic)
    if isinstance(expected, np.ndarray):
        assert read.shape == expected.shape and read.dtype == expected.dtype.newbyteorder("=")
        np.testing.assert_array_equal(read, expected)
    elif isinstance(expected, list | tuple):
        assert len(read) == len(expected)
        for a, b in zip(read, expected, strict=True):
            _assert_same(a, b)
    elif isinstance(expected, dict):
        assert read.keys() == expected.keys()
        for key in expected:
            _assert_same(read[key], expected[key])
    else:
        assert read == expected


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_pickles_are_read_as_written(tmp_path, protocol):
    values = _values()
    path = tmp_path / "set.pickle"
    path.write_bytes(pickle.dumps(values, protocol=protocol))
    _assert_same(read_pickled_arrays(path), values)
    with lzma.open(tmp_path / "set.pickle.lzma", "wb") as f:  # as tike keeps its data sets
        pickle.dump(values, f, protocol=protocol)
    _assert_same(read_pickled_arrays(tmp_path / "set.pickle.lzma"), values)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps([np.zeros(3), _Payload(marker)], protocol=4))
    with pytest.raises(DataError, match=r"system.*refused \(nothing was run\)"):
        read_pickled_arrays(path)
    assert not marker.exists()
    # protocol 0 (GLOBAL opcode) too
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=0))
    with pytest.raises(DataError, match="refused"):
        read_pickled_arrays(path)
    assert not marker.exists()


def test_object_arrays_and_inconsistent_arrays_are_refused(tmp_path):
    path = tmp_path / "obj.pickle"
    path.write_bytes(pickle.dumps(np.array([1, "a"], dtype=object), protocol=4))
    with pytest.raises(DataError):
        read_pickled_arrays(path)
    # a shape that does not match the bytes (4 float64 declared as 5)
    raw = pickle.dumps(np.arange(4.0), protocol=4)
    assert raw.count(b"K\x04\x85") == 1
    path.write_bytes(raw.replace(b"K\x04\x85", b"K\x05\x85"))
    with pytest.raises(DataError, match="32 bytes for an array"):
        read_pickled_arrays(path)


def test_missing_truncated_and_foreign_files_are_one_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_pickled_arrays(tmp_path / "absent.pickle")
    raw = pickle.dumps([np.arange(100.0)], protocol=4)
    (tmp_path / "cut.pickle").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.pickle").write_bytes(b"not a pickle at all\n")
    (tmp_path / "bad.lzma").write_bytes(b"\xfd7zXZ\x00garbage")
    for name in ("cut.pickle", "text.pickle", "bad.lzma"):
        with pytest.raises(DataError, match=name):
            read_pickled_arrays(tmp_path / name)


def _raw(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name, data", [
    ("cycle", b"\x80\x04]\x94h\x00a."),                      # a list holding itself
    ("deep", b"\x80\x04" + b"]" * 5000 + b"a" * 4999 + b"."),  # 5000 nested lists
    ("underflow", b"\x80\x04K\x01\x87."),                      # TUPLE3 of one item
    ("empty-stack", b"\x80\x04a."),
])
def test_malformed_streams_are_one_error(tmp_path, name, data):
    with pytest.raises(DataError):
        read_pickled_arrays(_raw(tmp_path, name, data))


def test_shared_references_are_converted_once(tmp_path):
    """A value referenced many times through the memo is built once (no copies), and a
    doubling chain of shared tuples does not explode."""
    a = np.arange(1000.0)
    read = read_pickled_arrays(_raw(tmp_path, "many", pickle.dumps([a] * 2000, protocol=4)))
    assert len(read) == 2000 and all(x is read[0] for x in read)
    chain: tuple = ()
    for _ in range(60):  # 2**60 leaves if expanded
        chain = (chain, chain)
    assert read_pickled_arrays(_raw(tmp_path, "chain", pickle.dumps(chain, protocol=4)))


def test_dtype_specs_beyond_plain_numbers_never_reach_numpy(tmp_path):
    raw = pickle.dumps(np.arange(2.0), protocol=4)
    assert raw.count(b"\x8c\x02f8") == 1
    bad = raw.replace(b"\x8c\x02f8", b"\x8c\x04f8,(")  # numpy would try to parse it
    with pytest.raises(DataError, match="not a plain numeric dtype"):
        read_pickled_arrays(_raw(tmp_path, "dtype", bad))


def test_corrupt_gzip_is_one_error(tmp_path):
    import gzip

    good = gzip.compress(pickle.dumps(np.arange(1000.0), protocol=4))
    bad = good[:20] + bytes(b ^ 0xFF for b in good[20:60]) + good[60:]
    with pytest.raises(DataError, match="cannot be read or decompressed"):
        read_pickled_arrays(_raw(tmp_path, "bad.gz", bad))
