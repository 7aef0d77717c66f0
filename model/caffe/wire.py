"""Protobuf's wire format as a ``.caffemodel`` needs it, walked with seeks: keys, varints,
lengths and skipped fields, and runs of float or double values located (``Segment``) and
later read into float32 memory, so no value is held until it is wanted."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

import numpy as np

from model.errors import FCNError

# Wire types of the protobuf encoding.
VARINT, FIXED64, LENGTH_DELIMITED, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5

# A layer name longer than this means we are not reading a Caffe file.
MAX_NAME_BYTES = 4096
# Values per read when a blob cannot be read straight into its array (doubles, unpacked).
CHUNK_VALUES = 1 << 20


class WireError(FCNError, ValueError):
    """Bytes that are not the message expected; the message names the file and the byte."""


@dataclass(frozen=True)
class Segment:
    """A run of values in the file: packed (``stride`` = item size) or one field per value
    (``stride`` = 1 + item size, ``offset`` at the first value's one-byte key)."""

    offset: int
    count: int
    dtype: str  # "<f4" or "<f8"
    stride: int

    @property
    def packed(self) -> bool:
        return self.stride == np.dtype(self.dtype).itemsize


class WireReader:
    """Reads keys, lengths, names and shapes only; ``context`` names the message being read
    for error messages."""

    def __init__(self, f: BinaryIO, path: Path, size: int):
        self.f = f
        self.path = path
        self.size = size
        self.pos = 0
        self.key_start = 0
        self.context = "the net"

    # -- errors ---------------------------------------------------------------------------

    def fail(self, problem: str) -> NoReturn:
        raise WireError(
            f"{self.path}: not a readable Caffe model: {problem} in {self.context} "
            f"at byte {self.pos}"
        )

    def advance(self, n: int, end: int, what: str) -> int:
        """Check that ``n`` bytes of ``what`` fit before ``end``; return where they end."""
        stop = self.pos + n
        if stop > end:
            if stop > self.size:
                raise WireError(
                    f"{self.path}: truncated (an incomplete download?): {what} in "
                    f"{self.context} at byte {self.pos} needs {n} bytes, the file ends at "
                    f"byte {self.size}"
                )
            self.fail(f"{what} of {n} bytes runs past its message")
        return stop

    # -- primitives -----------------------------------------------------------------------

    def seek(self, pos: int) -> None:
        self.pos = pos
        self.f.seek(pos)

    def read(self, n: int, end: int, what: str) -> bytes:
        self.advance(n, end, what)
        data = self.f.read(n)
        if len(data) != n:
            raise WireError(f"{self.path}: the file changed while being read")
        self.pos += n
        return data

    def varint(self, end: int) -> int:
        result = shift = 0
        while True:
            byte = self.read(1, end, "a varint")[0]
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7
            if shift >= 70:
                self.fail("a varint longer than 10 bytes")

    def int64(self, end: int) -> int:
        value = self.varint(end)
        return value - (1 << 64) if value >= 1 << 63 else value

    def length(self, end: int) -> int:
        """Read a length prefix; return where the value it announces ends."""
        n = self.varint(end)
        return self.advance(n, end, "a length-delimited field")

    def fields(self, end: int) -> Iterator[tuple[int, int]]:
        """Yield (field number, wire type) until ``end``; the caller consumes each value."""
        while self.pos < end:
            self.key_start = self.pos
            key = self.varint(end)
            field, wire = key >> 3, key & 7
            if field == 0:
                self.fail("field number 0")
            yield field, wire

    def skip(self, field: int, wire: int, end: int) -> None:
        """Step over one value of any wire type, groups included."""
        if wire == VARINT:
            self.varint(end)
        elif wire == FIXED64:
            self.seek(self.advance(8, end, "a fixed64 value"))
        elif wire == LENGTH_DELIMITED:
            self.seek(self.length(end))
        elif wire == FIXED32:
            self.seek(self.advance(4, end, "a fixed32 value"))
        elif wire == START_GROUP:
            for inner, inner_wire in self.fields(end):
                if inner_wire == END_GROUP:
                    if inner != field:
                        self.fail(f"group {field} closed as group {inner}")
                    return
                self.skip(inner, inner_wire, end)
            self.fail(f"group {field} not closed")
        elif wire == END_GROUP:
            self.fail(f"an unopened group {field} closed")
        else:
            self.fail(f"wire type {wire}")

    def string(self, end: int) -> str:
        n = self.varint(end)
        if n > MAX_NAME_BYTES:
            self.fail(f"a name of {n} bytes")
        return self.read(n, end, "a name").decode("utf-8", errors="replace")

    # -- repeated float and double values -------------------------------------------------

    def values(self, field: int, wire: int, end: int, dtype: str) -> Segment:
        """Locate float or double values: packed, or a run of one-value fields."""
        size = np.dtype(dtype).itemsize
        if wire == LENGTH_DELIMITED:
            stop = self.length(end)
            if (stop - self.pos) % size:
                self.fail(f"packed {dtype[1:]} values of {stop - self.pos} bytes")
            segment = Segment(self.pos, (stop - self.pos) // size, dtype, size)
            self.seek(stop)
            return segment
        if self.pos - self.key_start != 1:
            # A key in more bytes than needed: take just this one value.
            segment = Segment(self.pos, 1, dtype, size)
            self.seek(self.advance(size, end, "a value"))
            return segment
        return self.run((field << 3) | wire, end, dtype)

    def run(self, key: int, end: int, dtype: str) -> Segment:
        """Values stored one field each (key byte, value, key byte, value, ...), counted in
        chunks with numpy: the run ends at the first record with another key."""
        start = self.key_start
        stride = 1 + np.dtype(dtype).itemsize
        self.seek(start)
        count = 0
        while True:
            n = min(CHUNK_VALUES, (end - self.pos) // stride)
            if n == 0:
                break
            data = self.read(n * stride, end, "values")
            keys = np.frombuffer(data, dtype=np.uint8)[::stride]
            others = np.flatnonzero(keys != key)
            taken = int(others[0]) if others.size else n
            count += taken
            if taken < n:
                break
        if count == 0:
            self.advance(stride, end, "a value")
        self.seek(start + count * stride)
        return Segment(start, count, dtype, stride)


def read_segment(f: io.FileIO, segment: Segment, out: np.ndarray, path: Path) -> None:
    """Fill ``out`` (float32, ``segment.count`` values) from the file."""
    f.seek(segment.offset)
    if segment.packed and segment.dtype == "<f4":
        # The stored bytes are the array's bytes: read them in place, no copy.
        view = out.data.cast("B")
        done = 0
        while done < len(view):
            n = f.readinto(view[done:])
            if not n:
                raise WireError(f"{path}: the file changed or shrank while being read")
            done += n
        if sys.byteorder == "big":
            out.byteswap(inplace=True)
        return
    item = np.dtype(segment.dtype)
    record = item if segment.packed else np.dtype([("key", "u1"), ("value", item)])
    key = None
    for start in range(0, segment.count, CHUNK_VALUES):
        n = min(CHUNK_VALUES, segment.count - start)
        data = f.read(n * segment.stride)
        if len(data) != n * segment.stride:
            raise WireError(f"{path}: the file changed or shrank while being read")
        values = np.frombuffer(data, dtype=record)
        if not segment.packed:
            key = values["key"][0] if key is None else key
            if (values["key"] != key).any():
                raise WireError(f"{path}: the file changed while being read")
            values = values["value"]
        out[start : start + n] = values
