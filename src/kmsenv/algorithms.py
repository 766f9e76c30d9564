"""The official Encryption SDK algorithm table (spec section 2)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .exceptions import MessageFormatError

__all__ = ["Algorithm", "AlgorithmInfo", "algorithm_from_id"]


@dataclass(frozen=True)
class AlgorithmInfo:
    cipher: str  # "AES" or "SM4"
    mode: str  # "GCM", "CBC", "CBC_PKCS7", "CTR"
    key_len: int
    iv_len: int
    tag_len: int

    @property
    def authenticated(self) -> bool:
        return self.mode == "GCM"

    @property
    def kms_key_spec(self) -> str:
        return "SM4_128" if self.cipher == "SM4" else f"AES_{self.key_len * 8}"


class Algorithm(enum.IntEnum):
    """Algorithm IDs as written in the message header, with the official names."""

    AES_GCM_NOPADDING_128 = 1
    AES_GCM_NOPADDING_256 = 2
    AES_CBC_NOPADDING_128 = 3
    AES_CBC_NOPADDING_256 = 4
    AES_CBC_PKCS5_128 = 5
    AES_CBC_PKCS5_256 = 6
    AES_CTR_NOPADDING_128 = 7
    AES_CTR_NOPADDING_256 = 8
    SM4_GCM_NOPADDING_128 = 9
    SM4_CBC_NOPADDING_128 = 10
    SM4_CBC_PKCS5_128 = 11
    SM4_CTR_NOPADDING_128 = 12

    @property
    def info(self) -> AlgorithmInfo:
        return _INFO[self]

    @property
    def key_len(self) -> int:
        return _INFO[self].key_len

    @property
    def authenticated(self) -> bool:
        return _INFO[self].authenticated


_INFO = {
    Algorithm.AES_GCM_NOPADDING_128: AlgorithmInfo("AES", "GCM", 16, 12, 16),
    Algorithm.AES_GCM_NOPADDING_256: AlgorithmInfo("AES", "GCM", 32, 12, 16),
    Algorithm.AES_CBC_NOPADDING_128: AlgorithmInfo("AES", "CBC", 16, 16, 0),
    Algorithm.AES_CBC_NOPADDING_256: AlgorithmInfo("AES", "CBC", 32, 16, 0),
    Algorithm.AES_CBC_PKCS5_128: AlgorithmInfo("AES", "CBC_PKCS7", 16, 16, 0),
    Algorithm.AES_CBC_PKCS5_256: AlgorithmInfo("AES", "CBC_PKCS7", 32, 16, 0),
    Algorithm.AES_CTR_NOPADDING_128: AlgorithmInfo("AES", "CTR", 16, 16, 0),
    Algorithm.AES_CTR_NOPADDING_256: AlgorithmInfo("AES", "CTR", 32, 16, 0),
    Algorithm.SM4_GCM_NOPADDING_128: AlgorithmInfo("SM4", "GCM", 16, 12, 16),
    Algorithm.SM4_CBC_NOPADDING_128: AlgorithmInfo("SM4", "CBC", 16, 16, 0),
    Algorithm.SM4_CBC_PKCS5_128: AlgorithmInfo("SM4", "CBC_PKCS7", 16, 16, 0),
    Algorithm.SM4_CTR_NOPADDING_128: AlgorithmInfo("SM4", "CTR", 16, 16, 0),
}

_BY_ID = {int(a): a for a in Algorithm}


def algorithm_from_id(value: int) -> Algorithm:
    """Map a header algorithm ID to :class:`Algorithm`; unknown IDs are a format error."""
    try:
        return _BY_ID[value]
    except KeyError:
        raise MessageFormatError(f"unknown algorithm id {value}") from None
