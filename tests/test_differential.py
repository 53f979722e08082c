"""Differential tests: the fast readers (scan/members, read_npy, SplitCrops) vs tarfile/webdataset, np.load, zarr."""

import io
import json
import mmap
import tarfile
import tempfile

import numpy as np
import pytest
import webdataset as wds
import zarr
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from numpy.lib import format as npformat
from webdataset.tariterators import group_by_keys, tar_file_iterator

from conftest import FIX_OPTS
from umx import synth
from umx.prep import prepare
from umx.shards import local_tar, records
from umx.shards import webdataset as W
from umx.shards import zarr_store

DIFF = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _outcome(fn):  # fn()'s result, or the type of what it raised
    try:
        return fn()
    except Exception as e:
        return type(e)


# --- tar: scan / members vs tarfile / webdataset --------------------------------------------

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT}
PART = st.text(alphabet="abcXY._-é日0", min_size=1, max_size=45)
SPECIAL = ["__key__", "__meta__/x.txt", "__a__.json", "d/__b__.txt", "noext", "d.e/f", "A.TXT", "a.txt", "a.__",
           "a.__url__", "a.__KEY__"]
MEMBER = st.tuples(st.lists(PART, min_size=1, max_size=4).map("/".join) | st.sampled_from(SPECIAL),
                   st.sampled_from([0, 1, 511, 512, 513, 1024]) | st.integers(0, 1500),
                   st.sampled_from(["plain", "plain", "mtime", "uid", "uname", "atime", "comment"]))


def _build(fmt, members):
    f = io.BytesIO()
    try:
        with tarfile.open(fileobj=f, mode="w", format=FORMATS[fmt]) as t:
            for i, (name, size, extra) in enumerate(members):
                ti = tarfile.TarInfo(name)
                ti.size, ti.mtime = size, 1234.5 if extra == "mtime" else 0  # pax: float mtime, big uid,
                ti.uid, ti.uname = 8**8 if extra == "uid" else 1000, "jörg" if extra == "uname" else "u"  # uname
                if extra in ("atime", "comment"):
                    ti.pax_headers = {extra: "1.25"}  # atime changes nothing; comment is left to tarfile
                t.addfile(ti, io.BytesIO(np.random.default_rng(i).bytes(size)))
    except ValueError:  # ustar: name too long to split, number too big
        assume(False)
    return f.getvalue()


def _tarfile_list(blob):
    return _outcome(lambda: [(m.name, m.offset_data, m.size)
                             for m in tarfile.open(fileobj=io.BytesIO(blob), mode="r:") if m.isreg()])


def _check_scan(blob):
    """scan's list, when it gives one, is exactly tarfile's; returns it (or None)."""
    got = local_tar.scan(io.BytesIO(blob), len(blob))
    if got is not None:
        assert got == _tarfile_list(blob)
    return got


def _fix_checksum(blob, at):
    blob[at + 148:at + 156] = b" " * 8
    blob[at + 148:at + 156] = b"%06o\0 " % sum(blob[at:at + 512])


def _streamed(f):
    return list(group_by_keys({**x, "__url__": "u"} for x in tar_file_iterator(f)))


def _groups(blob, tmp):
    """(ours, webdataset's) records of an archive: [(key, {suffix: bytes})] or the exception type."""
    path = tmp / "a.tar"
    path.write_bytes(blob)

    def ours():
        with open(path, "rb") as f:
            return [(k, {s: local_tar.read_at(f, o, n) for s, (o, n) in files.items()})
                    for k, files in local_tar.members(f)]

    def theirs():
        with open(path, "rb") as f:
            return [(s.pop("__key__"), {k: v for k, v in s.items() if k != "__url__"}) for s in _streamed(f)]

    return _outcome(ours), _outcome(theirs)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("diff")


@DIFF
@given(fmt=st.sampled_from(sorted(FORMATS)), members=st.lists(MEMBER, max_size=6))
def test_scan_and_members_match_tarfile_and_webdataset(fmt, members, tmp):
    blob = _build(fmt, members)
    got = _check_scan(blob)
    long_ustar = fmt == "ustar" and any(len(n.encode()) > 100 for n, _, _ in members)
    if fmt != "gnu" and members and not long_ustar and all(e != "comment" for _, _, e in members):
        assert got is not None  # well-formed ustar/pax of regular files: the fast path is taken
    assert got is None or fmt != "gnu"  # GNU headers (and long names) are tarfile's
    ours, theirs = _groups(blob, tmp)
    assert ours == theirs


@DIFF
@given(members=st.lists(MEMBER, min_size=1, max_size=4), data=st.data())
def test_damaged_archives_scan_as_tarfile_reads_them(members, data):
    blob = bytearray(_build(data.draw(st.sampled_from(["ustar", "pax"])), members))
    at = data.draw(st.sampled_from([i for i in range(0, len(blob), 512) if blob[i + 257:i + 265] == b"ustar\x0000"]))
    how = data.draw(st.sampled_from(["truncate", "flip", "field", "field", "zero"]))
    if how == "truncate":
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            blob[data.draw(st.integers(0, min(len(blob), 4096) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "zero":
        blob[at:at + 512] = bytes(512)
    else:  # rewrite one field of a header, checksum made valid again: only the field itself is wrong
        lo, hi = data.draw(st.sampled_from([(0, 100), (100, 108), (108, 116), (116, 124), (124, 136),
                                            (136, 148), (156, 157), (329, 337), (337, 345), (345, 346)]))
        some = st.sampled_from([b"0", b"\0", b"5", b"x", b"7", b"-1", b"777", b"a/"])
        blob[at + lo:at + hi] = data.draw(st.binary(min_size=hi - lo, max_size=hi - lo)
                                          | some.map(lambda v: v.ljust(hi - lo, b"\0")[:hi - lo]))
        _fix_checksum(blob, at)
    _check_scan(bytes(blob))


@pytest.mark.parametrize("fmt,edits,kept", [  # a bad number field (tarfile parses them all) ends the archive there
    ("ustar", {136: b"not octal\0\0\0"}, 1), ("ustar", {100: b"9999999\0"}, 1), ("ustar", {116: b"-7\0"}, 3),
    ("ustar", {108: b"\x80" * 8}, 3), ("ustar", {329: b"zz\0"}, 1), ("ustar", {337: b"  17   \0"}, 3),
    ("pax", {0: b"dir/\0", 156: b"\0"}, 0)])  # pax path on a V7 directory header ('/', typeflag NUL): a directory
def test_hand_made_headers(fmt, edits, kept):
    first = "d" * 120 + ".txt" if fmt == "pax" else "a.txt"
    blob = bytearray(_build(fmt, [(first, 10, "plain"), ("b.txt", 3, "plain"), ("c.txt", 0, "plain")]))
    for at, value in edits.items():  # the header at 1024: ustar's second member's, pax's first's own
        blob[1024 + at:1024 + at + len(value)] = value
    _fix_checksum(blob, 1024)
    assert len(_tarfile_list(bytes(blob))) == kept
    _check_scan(bytes(blob))


def test_shard_writer_archives_take_the_fast_path_and_read_as_streamed(tmp):
    rng = np.random.default_rng(0)
    (tmp / "sw").mkdir()
    writer = W.ShardWriter(tmp / "sw", "train", max_bytes=40000)  # several shards
    for i in range(7):
        sources = {n: rng.integers(-9999, 9999, (2, int(rng.integers(0, 3000))), dtype=np.int16)
                   for n in ("vocals", "bass")}
        writer.write(records.TrackRecord(f"track{i}-é", {"id": i, "sources": list(sources)}, sources,
                                         sources["bass"] if i % 2 else None))
    assert len(writer.close()) > 1
    for entry in writer.entries:
        path = tmp / "sw" / entry["name"]
        assert _check_scan(path.read_bytes()) is not None
        ours, theirs = _groups(path.read_bytes(), tmp)
        assert isinstance(ours, list) and ours == theirs and [k for k, _ in ours] == entry["track_ids"]
        with open(path, "rb") as f:  # the streaming path, which remote shards take
            streamed = [W.decode_sample(str(path), s) for s in _streamed(f)]
        def rec(r):
            arrays = {**r.sources, **({"mixture": r.mixture} if r.mixture is not None else {})}
            return r.id, r.meta, [(n, a.dtype.str, a.shape, a.tobytes()) for n, a in arrays.items()]
        for views in (False, True):
            assert [rec(r) for r in W.read_shard(str(path), views=views)] == [rec(r) for r in streamed]


@DIFF
@given(samples=st.lists(st.tuples(st.text("abc-_é", min_size=1, max_size=8),
                                  st.dictionaries(st.sampled_from(["txt", "bin", "npy", "json", "TXT"]),
                                                  st.binary(max_size=1100), min_size=1)), max_size=5))
def test_tarwriter_archives(samples, tmp):
    f = io.BytesIO()
    w = wds.TarWriter(f, encoder=False, mtime=0.0)
    for key, files in samples:
        w.write({"__key__": key, **files})
    w.close()  # f stays open: TarWriter closes only files it opened
    assert _check_scan(f.getvalue()) is not None or not samples
    ours, theirs = _groups(f.getvalue(), tmp)
    assert ours == theirs


# --- npy: read_npy / npy_header vs np.load ---------------------------------------------------

DTYPES = ["<i2", ">i2", "|u1", "<f4", ">f4", "<f8", ">f8", "<c8", ">c16", "|b1", "<m8", "<M8[ms]", "|S5", "<U3"]


def _saved(arr, version, pad):
    """np.save's bytes (or write_array's, in a given version), the header padded `pad` more spaces."""
    f = io.BytesIO()
    npformat.write_array(f, arr, version=version) if version else np.save(f, arr)
    raw = f.getvalue()
    n = 2 if raw[6] == 1 else 4
    hlen = int.from_bytes(raw[8:8 + n], "little")
    header = raw[8 + n:8 + n + hlen].rstrip(b"\n") + b" " * pad + b"\n"  # aligned to 64 or not
    return raw[:8] + len(header).to_bytes(n, "little") + header + raw[8 + n + hlen:]


def _load_both(blob, offset, size):
    """np.load's result (or exception type), and ours without and with a memory map."""
    want = _outcome(lambda: np.load(io.BytesIO(blob[offset:offset + size]), allow_pickle=False))
    with tempfile.TemporaryFile() as f:
        f.write(blob)
        f.flush()
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return want, [_outcome(lambda m=m: local_tar.read_npy(f, m, offset, size)) for m in (None, mm)]


def _same(got, want, copied):
    if isinstance(want, type):
        assert isinstance(got, type) and issubclass(got, want), (got, want)  # raises where (as) np.load does
        return
    assert isinstance(got, np.ndarray), got
    assert got.dtype == want.dtype and got.dtype.str == want.dtype.str and got.shape == want.shape
    assert (got.flags.c_contiguous, got.flags.f_contiguous) == (want.flags.c_contiguous, want.flags.f_contiguous)
    assert got.tobytes() == want.tobytes()
    assert got.flags.writeable or not copied  # without a map: a fresh, writable array, as np.load's


@DIFF
@given(dtype=st.sampled_from(DTYPES), shape=st.lists(st.integers(0, 5), max_size=3).map(tuple),
       fortran=st.booleans(), version=st.sampled_from([None, (1, 0), (2, 0)]),
       pad=st.sampled_from([0, 0, 1, 64, 300, 10001]), junk=st.integers(0, 700), cut=st.none() | st.integers(0, 400))
def test_npy_matches_np_load(dtype, shape, fortran, version, pad, junk, cut):
    arr = (np.arange(int(np.prod(shape)), dtype=np.int64) % 100 - 50).reshape(shape).astype(dtype)
    arr = np.asfortranarray(arr) if fortran else arr
    raw = _saved(arr, version, pad)
    size = len(raw) if cut is None else min(cut, len(raw) - 1)  # a cut one: truncated header or data
    want, got = _load_both(b"J" * junk + raw + b"K" * 600, junk, size)
    if cut is None and pad < 10000:  # (numpy's max header size)
        assert isinstance(want, np.ndarray) and np.array_equal(want.astype(arr.dtype), arr)
        n = 10 if raw[6] == 1 else 12
        head = raw[:n + int.from_bytes(raw[8:n], "little")]
        stream = io.BytesIO(head)
        npformat.read_magic(stream)
        read = npformat.read_array_header_1_0 if raw[6] == 1 else npformat.read_array_header_2_0
        assert local_tar.npy_header(head, raw[6:8]) == read(stream)
    for g, copied in zip(got, (True, False)):
        _same(g, want, copied)


def _hdr(descr="<i2", order=False, shape="(6,)", rest=", }"):
    return f"{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}{rest}"


HEADERS = [_hdr(shape="(2, 3)"), _hdr("<i3"), _hdr("<f1", shape="()"), _hdr("|b2"), _hdr("|O"), _hdr("|S0"),
           _hdr("|V0", shape="(2, 2)"), _hdr(order=0), _hdr(shape="(-1,)"), _hdr(shape="(-1, 4)"),
           _hdr(shape="(-2, -3)"), _hdr(shape="(2, 3,)"), _hdr(shape="(03,)"), _hdr(shape="(2.0,)"),
           _hdr(">f8", True, "(2, 3)", ", 'extra': 1}"), _hdr(rest="}"), _hdr(shape="(2, 3)", rest=", }  \n  "),
           "{'shape': (2, 3), 'fortran_order': True, 'descr': '>f8'}"]


@pytest.mark.filterwarnings("ignore:Reading `.npy`")  # numpy's Python 2 header filter, for the odd spacing
@pytest.mark.parametrize("header", HEADERS)
def test_hand_written_npy_headers(header):
    for version, n in ((b"\x01\x00", 2), (b"\x02\x00", 4)):
        body = header.encode() + (b"" if header.endswith(" ") else b"\n")
        raw = b"\x93NUMPY" + version + len(body).to_bytes(n, "little") + body + bytes(range(48))
        want, got = _load_both(raw + b"tail", 0, len(raw))
        for g, copied in zip(got, (True, False)):
            _same(g, want, copied)


# --- zarr: SplitCrops vs zarr slicing ----------------------------------------------------------

CHUNK, PER_OBJECT = 1000, 3


@pytest.fixture(scope="module")
def zarr_set(tmp_path_factory):
    base = tmp_path_factory.mktemp("zdiff")
    data = synth.write_layout("trackfolder_fix", base / "data", n_train=3, n_valid=2, duration=1.3, seed=3)
    with pytest.MonkeyPatch.context() as mp:  # many small chunks and objects: boundaries everywhere
        mp.setattr(zarr_store, "CHUNK_FRAMES", CHUNK)
        mp.setattr(zarr_store, "SHARD_CHUNKS", PER_OBJECT)
        prepare("trackfolder_fix", data, base / "z", progress=False, format="zarr", **FIX_OPTS)
    objects = json.loads((base / "z" / "manifest.json").read_text())["storage"]["objects"]
    reader = zarr_store.ZarrReader(str(base / "z"), objects)
    group = zarr.open_group(str(base / "z" / zarr_store.STORE), mode="r")
    arrays = {(s, n): group[s][n] for s in group.group_keys() for n in group[s].array_keys()}
    assert len(arrays) >= 8 and all(a.shape[1] > 30 * CHUNK for a in arrays.values())
    return reader, arrays


def _compare_window(zarr_set, split, name, start, n):
    reader, arrays = zarr_set
    want = arrays[split, name][:, start:start + n]
    out = np.full((want.shape[0], n), -12345, np.int16)
    assert reader.crops(split).read(name, start, out) is out
    assert out.shape == want.shape and np.array_equal(out, want), (split, name, start, n)


def test_crops_at_every_boundary_kind(zarr_set):
    for (split, name), a in sorted(zarr_set[1].items()):
        total, span = a.shape[1], CHUNK * PER_OBJECT
        last_object = (total - 1) // span * span
        for start, n in [(0, 1), (0, CHUNK), (CHUNK - 1, 2), (CHUNK, CHUNK), (span - 1, 2), (span - 7, 2 * span),
                         (last_object - 1, 2), (last_object, total - last_object), (total - 1, 1),
                         (total - CHUNK - 3, CHUNK + 3), (0, total), (total // 2, 0)]:
            _compare_window(zarr_set, split, name, start, n)


@DIFF
@given(data=st.data())
def test_random_crops_match_zarr(zarr_set, data):
    split, name = data.draw(st.sampled_from(sorted(zarr_set[1])))
    total = zarr_set[1][split, name].shape[1]
    n = min(total, data.draw(st.integers(0, 4 * CHUNK * PER_OBJECT) | st.sampled_from([1, CHUNK, CHUNK + 1])))
    start = data.draw(st.integers(0, total - n) | st.sampled_from([0, total - n]))
    _compare_window(zarr_set, split, name, start, n)
