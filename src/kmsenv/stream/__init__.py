"""Streaming encryption with bounded memory: kmsenv's framed key-committing
format, the Java SDK's stream layout, and file objects over both."""

from ._buffers import release as release_buffers
from .api import (
    FORMATS,
    DecryptingReader,
    EncryptingWriter,
    StreamResult,
    decrypt_stream,
    detect_format,
    encrypt_stream,
    open,
)
from .framed import DEFAULT_FRAME_SIZE, MAX_FRAME_SIZE, MIN_FRAME_SIZE, FramedHeader

__all__ = [
    "StreamResult",
    "FramedHeader",
    "encrypt_stream",
    "decrypt_stream",
    "open",
    "detect_format",
    "EncryptingWriter",
    "DecryptingReader",
    "FORMATS",
    "DEFAULT_FRAME_SIZE",
    "MIN_FRAME_SIZE",
    "MAX_FRAME_SIZE",
    "release_buffers",
]
