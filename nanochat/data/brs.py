"""Read the compressed text file of the Bible Retrieval System (Debian's bible-kjv-text, /usr/lib/bible.data).

The file starts with the magic "EC02" and a 24-byte description, padded to 0x50 bytes, then big-endian
uint32 fields: at 0x54 the uncompressed block size, at 0x58 the block count N, and from 0x5C N+1 file
offsets delimiting the blocks. Each block is a Unix `compress` (LZW) code stream without its 3-byte
header, 16-bit codes at most, in block mode (code 256 clears the table). The text is one verse per line.

It deliberately does not read the concordance (bible.data.conc) or look verses up; it only decodes text.
"""

from __future__ import annotations

import struct

MAGIC = b"EC02"
MAX_BITS = 16  # what the one compressed header in the file says (0x90: block mode, 16 bits)
CLEAR_CODE = 256


class BrsError(ValueError):
    """The bytes are not a Bible Retrieval System data file this reader understands."""


def decode_brs(data: bytes) -> str:
    """The whole text of a bible.data file, as str."""
    if not data.startswith(MAGIC) or len(data) < 0x5C:
        raise BrsError("not a Bible Retrieval System data file (it does not start with 'EC02')")
    block_size, count = struct.unpack_from(">II", data, 0x54)
    if count < 1 or 0x5C + 4 * (count + 1) > len(data):
        raise BrsError(f"damaged header: {count} blocks do not fit in {len(data)} bytes")
    offsets = struct.unpack_from(f">{count + 1}I", data, 0x5C)
    if list(offsets) != sorted(offsets) or offsets[-1] > len(data):
        raise BrsError("damaged header: block offsets are out of order or past the end of the file")
    blocks = []
    for index in range(count):
        block = lzw_decompress(data[offsets[index] : offsets[index + 1]], MAX_BITS)
        if index < count - 1 and len(block) != block_size:
            raise BrsError(f"block {index} decodes to {len(block)} bytes, expected {block_size}")
        blocks.append(block)
    try:
        return b"".join(blocks).decode("ascii")
    except UnicodeDecodeError as exc:
        raise BrsError(f"decoded text is not ASCII at byte {exc.start}; the file is damaged") from None


def lzw_decompress(codes: bytes, max_bits: int = MAX_BITS) -> bytes:
    """Decode a Unix `compress` code stream (no header, block mode), as `uncompress` does.

    Codes are packed least-significant bit first and start 9 bits wide; the width grows by one when the
    table fills its current range. After a clear code the rest of the current group of 8 codes is
    padding (compress writes codes in groups of 8), and the width starts again at 9 bits.
    """
    table = [bytes([i]) for i in range(256)] + [b""]  # 256 is the clear code, never an entry in use
    limit = 1 << max_bits
    padded = codes + b"\0\0\0"  # a code plus its bit offset spans at most 3 bytes
    total_bits = len(codes) * 8
    width, position, group_start = 9, 0, 0
    mask = (1 << width) - 1
    max_code = mask
    previous: int | None = None
    out = bytearray()

    def end_of_group() -> int:
        unit = width * 8
        return group_start + -(-(position - group_start) // unit) * unit

    while True:
        if len(table) > max_code:
            position = group_start = end_of_group()
            width += 1
            mask = (1 << width) - 1
            max_code = limit if width == max_bits else mask
        if position + width > total_bits:
            return bytes(out)
        byte = position >> 3
        code = (int.from_bytes(padded[byte : byte + 3], "little") >> (position & 7)) & mask
        position += width
        if previous is None:
            if code > 255:
                raise BrsError(f"LZW stream starts with code {code}, expected a byte")
            out += table[code]
            previous = code
            continue
        if code == CLEAR_CODE:
            del table[CLEAR_CODE:]
            position = group_start = end_of_group()
            width = 9
            mask = max_code = (1 << width) - 1
            continue
        if code < len(table):
            entry = table[code]
        elif code == len(table):  # the code being defined right now: previous string + its first byte
            entry = table[previous] + table[previous][:1]
        else:
            raise BrsError(f"LZW code {code} at bit {position - width} is not defined yet; damaged data")
        out += entry
        if len(table) < limit:
            table.append(table[previous] + entry[:1])
        previous = code
