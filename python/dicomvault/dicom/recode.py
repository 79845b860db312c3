"""Re-encoding a data set between the native transfer syntaxes (implicit or explicit VR, little
or big endian, deflated) element by element, as DCMTK's dcmconv does: every value keeps its
bytes, numbers are byte-swapped by the width their VR gives (PS3.5 7.3), and nothing is ever
decoded, so pixels cannot change. Encapsulated Pixel Data is not native: it is refused.

Lengths are recomputed where the encoding changes them (explicit and implicit headers differ);
undefined lengths stay undefined; group lengths, where present, are recomputed.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicomvault import _native

NATIVE = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
# Explicit VR encodings give these a 4-byte length after 2 reserved bytes (PS3.5 7.1.2).
LONG_LENGTH = frozenset(_native.LONG_LENGTH_VRS)
# How many bytes each number of a binary VR has: what a change of byte order swaps.
WIDTH = {
    "AT": 2,
    "OW": 2,
    "US": 2,
    "SS": 2,
    "OF": 4,
    "OL": 4,
    "UL": 4,
    "SL": 4,
    "FL": 4,
    "OD": 8,
    "OV": 8,
    "FD": 8,
    "SV": 8,
    "UV": 8,
}
# The other VRs (text, OB, UN, SQ) never change with the byte order.
_KNOWN_VRS = frozenset(_native.KNOWN_VRS)


# An element put in a data set: its VR, its value in Explicit VR Little Endian, whether it is
# of undefined length (encapsulated Pixel Data: its items, the delimiter written after them).
Replacement = tuple[str, bytes, bool]
Replacements = Mapping[int, Replacement | None] | None


class RecodeError(ValueError):
    """A data set that cannot be re-encoded as it is (malformed, or not native)."""


@dataclass(frozen=True)
class Encoding:
    implicit: bool
    little: bool

    @staticmethod
    def of(syntax: str) -> Encoding:
        if syntax not in NATIVE:
            raise RecodeError(f"{UID(syntax).name} is not a native transfer syntax")
        return Encoding(syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian)

    @property
    def order(self) -> str:
        return "<" if self.little else ">"


@cache
def _dictionary_vr(tag: int) -> str:
    from pydicom.datadict import dictionary_VR

    if tag & 0xFFFF == 0:
        return "UL"  # group length
    if tag >> 16 & 1 and 0x10 <= tag & 0xFFFF <= 0xFF:
        return "LO"  # private creator
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _swap(value: bytes, width: int) -> bytes:
    """``value``'s numbers of ``width`` bytes in the other byte order (a trailing odd byte,
    which a malformed value may have, is left where it is)."""
    if width == 1 or len(value) < width:
        return value
    whole = len(value) - len(value) % width
    swapped = bytearray(value)
    for i in range(width):
        swapped[i:whole:width] = value[width - 1 - i : whole : width]
    return bytes(swapped)


class _Recoder:
    def __init__(self, data: bytes, source: Encoding, target: Encoding) -> None:
        self.data = data
        self.source = source
        self.target = target
        # Context that settles the ambiguous VRs of implicit data sets (PS3.5 A.1).
        self.bits_allocated = 16
        self.pixel_representation = 0

    def _u16(self, at: int) -> int:
        return int(struct.unpack_from(self.source.order + "H", self.data, at)[0])

    def _u32(self, at: int) -> int:
        return int(struct.unpack_from(self.source.order + "I", self.data, at)[0])

    def _need(self, at: int, size: int) -> None:
        if at + size > len(self.data):
            raise RecodeError(f"the data set ends inside an element at byte {at}")

    def _header(self, at: int) -> tuple[int, str | None, int, int]:
        """(tag, VR as written or None, value length, where the value starts)."""
        self._need(at, 8)
        tag = self._u16(at) << 16 | self._u16(at + 2)
        if tag in (ITEM, ITEM_END, SEQUENCE_END) or self.source.implicit:
            return tag, None, self._u32(at + 4), at + 8
        vr = self.data[at + 4 : at + 6].decode("latin-1")
        if vr not in _KNOWN_VRS:
            raise RecodeError(f"unknown VR {vr!r} of ({tag >> 16:04X},{tag & 0xFFFF:04X})")
        if vr in LONG_LENGTH:
            self._need(at, 12)
            return tag, vr, self._u32(at + 8), at + 12
        return tag, vr, self._u16(at + 6), at + 8

    def _vr(self, tag: int, written: str | None, length: int) -> str:
        if written is not None:
            return written
        if length == UNDEFINED and tag != PIXEL_DATA:
            return "SQ"  # an undefined length outside Pixel Data is a sequence (PS3.5 7.5)
        vr = _dictionary_vr(tag)
        if vr == "US or SS":
            return "SS" if self.pixel_representation else "US"
        if vr in ("OB or OW", "US or OW", "US or SS or OW"):
            return "OW"  # Implicit VR Little Endian has OW for these (PS3.5 A.1)
        return vr.split(" or ")[0]

    def _write_header(self, out: bytearray, tag: int, vr: str | None, length: int) -> None:
        order = self.target.order
        out += struct.pack(order + "HH", tag >> 16, tag & 0xFFFF)
        if vr is None or self.target.implicit:
            out += struct.pack(order + "I", length)
        elif vr in LONG_LENGTH:
            out += vr.encode() + struct.pack(order + "HI", 0, length)
        else:
            out += vr.encode() + struct.pack(order + "H", length)

    def data_set(
        self, at: int, end: int, out: bytearray, in_item: bool, replace: Replacements = None
    ) -> int:
        """Re-encodes elements from ``at`` up to ``end`` (or the item's end delimiter when
        ``in_item``); returns where it stopped. ``replace`` (top level only) puts elements
        in place of those of its tags (or inserts them; None removes one)."""
        pending = sorted((replace or {}).items())
        group_length: tuple[int, int] | None = None  # (group, place of its value in out)

        def flush(below: int) -> None:
            while pending and pending[0][0] < below:
                tag, element = pending.pop(0)
                if element is not None:
                    self._write_replacement(out, tag, element)

        while at < end:
            tag, written, length, value_at = self._header(at)
            if tag == ITEM_END and in_item:
                if group_length is not None:
                    self._patch_group_length(out, group_length[1])
                return value_at
            if tag in (ITEM, ITEM_END, SEQUENCE_END):
                raise RecodeError(f"unexpected delimiter at byte {at}")
            if group_length is not None and tag >> 16 != group_length[0]:
                flush((group_length[0] + 1) << 16)
                self._patch_group_length(out, group_length[1])
                group_length = None
            flush(tag)
            if pending and pending[0][0] == tag:
                element = pending.pop(0)[1]
                if element is not None:
                    self._write_replacement(out, tag, element)
                at = self._skip(tag, value_at, length)
                continue
            vr = self._vr(tag, written, length)
            if vr == "SQ" or (vr == "UN" and length == UNDEFINED):
                at = self._sequence(tag, vr, length, value_at, out)
                continue
            if length == UNDEFINED:
                raise RecodeError("encapsulated Pixel Data is not a native encoding")
            self._need(value_at, length)
            value = self.data[value_at : value_at + length]
            at = value_at + length
            if vr in ("US", "SS") and length == 2:
                number = struct.unpack(self.source.order + "H", value)[0]
                if tag == 0x00280100:
                    self.bits_allocated = number
                elif tag == 0x00280103:
                    self.pixel_representation = number
            if self.source.little != self.target.little and vr in WIDTH:
                value = _swap(value, WIDTH[vr])
            if length > 0xFFFF and vr not in LONG_LENGTH and not self.target.implicit:
                vr = "UN"  # an implicit value too long for its explicit VR (PS3.5 6.2.2)
            if tag & 0xFFFF == 0 and length == 4:
                group_length = (tag >> 16, len(out) + 8)
            self._write_header(out, tag, vr, length)
            out += value
        if group_length is not None:
            flush((group_length[0] + 1) << 16)
            self._patch_group_length(out, group_length[1])
        flush(1 << 32)
        if in_item:
            raise RecodeError("an item without its end delimiter")
        return at

    def _skip(self, tag: int, at: int, length: int) -> int:
        """Where the value of ``tag`` starting at ``at`` ends: after its fragments or items
        and their delimiter when of undefined length."""
        if length != UNDEFINED:
            self._need(at, length)
            return at + length
        if tag != PIXEL_DATA:  # a sequence: walked in its own encoding, nothing written
            return _Recoder(self.data, self.source, self.source)._sequence(
                tag, "SQ", UNDEFINED, at, bytearray()
            )
        while True:  # fragments: items of defined length, then the delimiter
            item, _, item_length, value_at = self._header(at)
            if item == SEQUENCE_END:
                return value_at
            if item != ITEM or item_length == UNDEFINED:
                raise RecodeError(f"a malformed fragment at byte {at}")
            self._need(value_at, item_length)
            at = value_at + item_length

    def _write_replacement(self, out: bytearray, tag: int, element: Replacement) -> None:
        """An element given in Explicit VR Little Endian, in the target encoding."""
        vr, value, undefined = element
        if not self.target.little and vr in WIDTH:
            value = _swap(value, WIDTH[vr])
        self._write_header(out, tag, vr, UNDEFINED if undefined else len(value))
        out += value
        if undefined:
            self._write_header(out, SEQUENCE_END, None, 0)

    def _patch_group_length(self, out: bytearray, value_at: int) -> None:
        struct.pack_into(self.target.order + "I", out, value_at, len(out) - value_at - 4)

    def _sequence(self, tag: int, vr: str, length: int, at: int, out: bytearray) -> int:
        """A sequence's items re-encoded; an undefined-length UN (a sequence encoded in
        Implicit VR Little Endian, PS3.5 6.2.2) is copied as it is."""
        if vr == "UN":
            implicit = Encoding(True, True)
            past = _Recoder(self.data, implicit, implicit)._sequence(
                tag, "SQ", UNDEFINED, at, bytearray()
            )
            self._write_header(out, tag, "UN", UNDEFINED)
            out += self.data[at:past]
            return past
        self._write_header(out, tag, "SQ", length)
        start = len(out)
        end = None if length == UNDEFINED else at + length
        if end is not None:
            self._need(at, length)
        while end is None or at < end:
            item_tag, _, item_length, item_at = self._header(at)
            if item_tag == SEQUENCE_END and end is None:
                self._write_header(out, SEQUENCE_END, None, 0)
                return item_at
            if item_tag != ITEM:
                raise RecodeError(f"expected an item at byte {at}")
            self._write_header(out, ITEM, None, item_length)
            item_start = len(out)
            if item_length == UNDEFINED:
                at = self.data_set(item_at, len(self.data), out, in_item=True)
                self._write_header(out, ITEM_END, None, 0)
            else:
                self._need(item_at, item_length)
                self.data_set(item_at, item_at + item_length, out, in_item=False)
                at = item_at + item_length
                struct.pack_into(
                    self.target.order + "I", out, item_start - 4, len(out) - item_start
                )
        struct.pack_into(self.target.order + "I", out, start - 4, len(out) - start)
        return at


def recode(data: bytes, source: str, target: str, replace: Replacements = None) -> bytes:
    """The data set ``data`` (no File Meta) encoded in ``source``, re-encoded in ``target``;
    both native, except that a source's encapsulated Pixel Data may be replaced. ``replace``
    puts top-level elements (VR, Explicit VR Little Endian value, undefined length) in place
    of those of the same tags, or inserts them, or (None) removes them. RecodeError when the
    data set cannot be read as such."""
    if source == target and not replace:
        return data
    if source == DeflatedExplicitVRLittleEndian:
        try:
            data = zlib.decompress(data, -zlib.MAX_WBITS)
        except zlib.error as e:
            raise RecodeError(f"cannot inflate the data set: {e}") from e
        source = ExplicitVRLittleEndian
    deflate = target == DeflatedExplicitVRLittleEndian
    if deflate:
        target = ExplicitVRLittleEndian
    recoder = _Recoder(data, Encoding.of(source), Encoding.of(target))
    out = bytearray()
    try:
        recoder.data_set(0, len(data), out, in_item=False, replace=replace)
    except struct.error as e:
        raise RecodeError(f"the data set ends inside an element: {e}") from e
    if deflate:
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        deflated = compressor.compress(bytes(out)) + compressor.flush()
        # An odd-length deflated stream takes a trailing null byte (PS3.5 A.5).
        return deflated + b"\0" * (len(deflated) % 2)
    return bytes(out)
