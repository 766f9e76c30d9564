"""Read a message's header from a file without reading its body or calling KMS.

Nothing returned here is authenticated: only decryption verifies a header.
"""

from __future__ import annotations

from typing import Any

from .message.codec import DEFAULT_MAX_ENCRYPTED_DATA_KEYS

# A DER header this large is not one kmsenv or the official SDKs write.
MAX_HEADER_BYTES = 16 * 1024 * 1024


def inspect_stream(f: Any, max_encrypted_data_keys: int = DEFAULT_MAX_ENCRYPTED_DATA_KEYS) -> tuple[str, Any]:
    """(format, header) of the message at the start of binary file ``f``."""
    from .stream import alibaba_stream, der_stream, framed
    from .stream._io import Source
    from .stream.api import detect_format

    src = Source(f)
    fmt = detect_format(src.peek(4))
    if fmt == "framed":
        return fmt, framed.read_header(src, max_encrypted_data_keys)
    if fmt == "alibaba-stream":
        return fmt, alibaba_stream.read_header(src, max_encrypted_data_keys)[0]
    return fmt, der_stream.read_header(src, max_encrypted_data_keys, MAX_HEADER_BYTES)[3]
