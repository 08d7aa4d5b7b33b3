"""Uploads of the HTTP service: stored under a server-chosen name, typed by magic bytes.

Uploads are never decoded from memory: the bytes go to ``<tmp>/<uuid>.upload`` and through
:func:`multigrain.data.images.decode_image`, so the service applies the same safety rules as
the batch tools (pixel budget read from the header, EXIF orientation, clear errors). An
added image is renamed with the extension its magic bytes name. No client-provided name
ever reaches the filesystem; error messages quote it, never the server-side path.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi import UploadFile

from multigrain.service.errors import BadUpload, UploadTooLarge

#: Bytes copied at a time: an upload is never held whole in memory.
COPY_CHUNK = 2**20

# magic bytes -> extension of a stored upload (the format decode_image then reads)
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"GIF8", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)


def store_upload(upload: UploadFile, folder: Path, max_bytes: int) -> Path:
    """Copy an upload to folder/<uuid>.upload, 1 MiB at a time; 413 over `max_bytes`, 400 if
    empty. A copy that fails for any reason (disk full included) leaves no file behind."""
    path = folder / f"{uuid.uuid4().hex}.upload"
    size = 0
    try:
        with path.open("xb") as stored:
            while chunk := upload.file.read(COPY_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise UploadTooLarge(
                        f"upload is over the limit of {max_bytes} bytes: send a smaller file"
                    )
                stored.write(chunk)
        if size == 0:
            raise BadUpload("empty upload: send an image file in the 'image' field")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def extension_of(path: Path) -> str:
    """The image extension that the file's first bytes announce ('.img' if none)."""
    with path.open("rb") as handle:
        head = handle.read(16)
    for signature, extension in _SIGNATURES:
        if head.startswith(signature):
            return extension
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    return ".img"
