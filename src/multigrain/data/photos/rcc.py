"""Read files out of a compiled Qt resource bundle (``.rcc``), as GCompris ships its photos.

Format (Qt's ``rcc`` binary output, versions 1-3): a big-endian header ``qres``, version,
tree offset, data offset, names offset; the tree is an array of fixed-size nodes (14 bytes
in version 1, 22 later, the extra 8 bytes being a modification time). A node is a
directory (flag 2: child count, first child index) or a file (data offset); names are
UTF-16BE strings with a 2-byte length and a 4-byte hash. File data is a 4-byte size then the
bytes, zlib-compressed with a 4-byte length prefix when flag 1 is set (qCompress).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from multigrain.runtime.errors import MultiGrainError

_DIRECTORY = 2
_ZLIB = 1
_ZSTD = 4


def read_rcc(path: Path) -> dict[str, bytes]:
    """A ``.rcc`` bundle -> {"/inner/path.webp": file bytes}; zstd-compressed files are skipped."""
    blob = path.read_bytes()
    if blob[:4] != b"qres":
        raise MultiGrainError(f"{path} is not a Qt resource bundle (no 'qres' magic)")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node_size = 14 if version == 1 else 22
    files: dict[str, bytes] = {}

    def name_at(offset: int) -> str:
        (length,) = struct.unpack(">H", blob[names + offset : names + offset + 2])
        start = names + offset + 6
        return blob[start : start + 2 * length].decode("utf-16-be")

    def walk(index: int, prefix: str, depth: int) -> None:
        if depth > 64:
            raise MultiGrainError(f"{path}: resource tree too deep (corrupt bundle?)")
        node = tree + index * node_size
        name_offset, flags = struct.unpack(">IH", blob[node : node + 6])
        name = name_at(name_offset) if index else ""
        if flags & _DIRECTORY:
            count, first = struct.unpack(">II", blob[node + 6 : node + 14])
            for child in range(first, first + count):
                walk(child, f"{prefix}{name}/", depth + 1)
            return
        (offset,) = struct.unpack(">I", blob[node + 10 : node + 14])
        (size,) = struct.unpack(">I", blob[data + offset : data + offset + 4])
        payload = blob[data + offset + 4 : data + offset + 4 + size]
        if flags & _ZSTD:
            return
        files[prefix + name] = zlib.decompress(payload[4:]) if flags & _ZLIB else payload

    try:
        walk(0, "", 0)
    except (struct.error, zlib.error, UnicodeDecodeError) as error:
        raise MultiGrainError(f"{path}: corrupt Qt resource bundle ({error})") from error
    return files
