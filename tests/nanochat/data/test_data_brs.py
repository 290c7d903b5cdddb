"""The Bible Retrieval System reader: LZW code streams built by hand, cross-checked with real `gzip -d`."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from nanochat.data.brs import BrsError, decode_brs, lzw_decompress

CLEAR = 256
COMPRESS_HEADER = b"\x1f\x9d\x90"  # what `compress -b16` writes first: magic, block mode + 16 bits


def pack(codes: list[tuple[int, int]]) -> bytes:
    """(code, width) pairs -> bytes, least significant bit first (compress's bit order)."""
    value = bits = 0
    for code, width in codes:
        value |= code << bits
        bits += width
    return value.to_bytes((bits + 7) // 8, "little")


def padding(codes_in_group: int, width: int) -> list[tuple[int, int]]:
    """Zero codes that fill the current group of 8 codes: compress pads there after a clear code."""
    return [(0, width)] * (-codes_in_group % 8)


def literals(text: bytes) -> list[tuple[int, int]]:
    """Each byte as its own code, with the widths the decoder's growing table calls for."""
    return [(byte, 9 if i < 256 else 10) for i, byte in enumerate(text)]  # 256 codes fill 9 bits


def gunzip(stream: bytes) -> bytes:
    """The reference: gzip decodes compress's .Z format."""
    gzip = shutil.which("gzip")
    if gzip is None:
        pytest.skip("gzip is not installed (apt-get install -y gzip)")
    return subprocess.run(
        [gzip, "-dc"], input=COMPRESS_HEADER + stream, capture_output=True, check=True
    ).stdout


def test_codes_that_refer_to_the_table():
    # A, B, then 257 = "AB", then 259: the entry being defined ("AB" + "A"), the KwKwK case.
    stream = pack([(65, 9), (66, 9), (257, 9), (259, 9)])
    assert lzw_decompress(stream) == b"ABABABA"
    assert gunzip(stream) == b"ABABABA"


def test_width_grows_to_ten_bits_after_256_codes():
    text = bytes(97 + i % 26 for i in range(300))
    stream = pack(literals(text))
    assert lzw_decompress(stream) == text
    assert gunzip(stream) == text


def test_clear_code_skips_the_rest_of_its_group_and_restarts_at_nine_bits():
    codes = [(65, 9), (66, 9), (CLEAR, 9), *padding(3, 9), (67, 9), (68, 9)]
    assert lzw_decompress(pack(codes)) == b"ABCD"
    assert gunzip(pack(codes)) == b"ABCD"


def test_clear_after_the_width_grew_pads_with_wide_codes():
    text = bytes(97 + i % 26 for i in range(300))
    codes = [*literals(text), (CLEAR, 10), *padding(300 - 256 + 1, 10), (67, 9), (68, 9)]
    assert lzw_decompress(pack(codes)) == text + b"CD"
    assert gunzip(pack(codes)) == text + b"CD"


def test_undefined_code_is_an_error():
    with pytest.raises(BrsError, match="LZW code 300 at bit 9 is not defined yet"):
        lzw_decompress(pack([(65, 9), (300, 9)]))
    with pytest.raises(BrsError, match="starts with code 400"):
        lzw_decompress(pack([(400, 9)]))


def brs_file(text: bytes, block_size: int) -> bytes:
    """A bible.data-style file: header, block offsets, then each block as literal LZW codes."""
    blocks = [pack(literals(text[i : i + block_size])) for i in range(0, len(text), block_size)]
    header = b"EC02Compressed Data File".ljust(0x50, b"\0") + struct.pack(">III", 0, block_size, len(blocks))
    offset = len(header) + 4 * (len(blocks) + 1)
    offsets = [offset]
    for block in blocks:
        offsets.append(offsets[-1] + len(block))
    return header + struct.pack(f">{len(offsets)}I", *offsets) + b"".join(blocks)


def test_decode_brs_joins_the_blocks():
    text = b"Holy Bible, test.\nGe1:1 In the beginning.\nGe1:2 And the earth.\nRev1:1 The end.\n"
    assert decode_brs(brs_file(text, block_size=16)) == text.decode()


def test_decode_brs_rejects_other_files():
    with pytest.raises(BrsError, match="does not start with 'EC02'"):
        decode_brs(b"PK\x03\x04" + bytes(200))
    damaged = bytearray(brs_file(b"x" * 40, block_size=16))
    damaged[0x58:0x5C] = struct.pack(">I", 10_000)
    with pytest.raises(BrsError, match="damaged header"):
        decode_brs(bytes(damaged))
    short = brs_file(b"abcdefgh" * 4, block_size=16)
    wrong_size = short[:0x54] + struct.pack(">I", 20) + short[0x58:]
    with pytest.raises(BrsError, match="block 0 decodes to 16 bytes, expected 20"):
        decode_brs(wrong_size)
