"""``DefaultDataKeyProvider`` (``aliyun_encryption_sdk.provider.default``).

It names the CMKs (a primary plus any added with :meth:`add_multi_cmk_id`) and
the algorithm; the work is done by :class:`kmsenv.KmsKeyProvider`.  Differences
from the official provider (spec section 15): the caller's list is never
mutated (item 21), decrypt never changes ``algorithm`` (item 8), the KMS client
is the crypto client's on every call rather than the first one ever seen (item
20), ARNs are validated up front and CMKs keep the order they were given in.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kmsenv.algorithms import Algorithm
from kmsenv.arn import Arn
from kmsenv.exceptions import ConfigurationError
from kmsenv.model import DataKeyProvider, algorithm_argument

__all__ = ["DefaultDataKeyProvider"]


def _arn(text: object) -> str:
    if not isinstance(text, str):
        raise ConfigurationError(f"a CMK ARN must be a str, not {type(text).__name__}")
    return str(Arn.parse(text.strip()))  # the official SDK trims surrounding whitespace


class DefaultDataKeyProvider:
    """``DefaultDataKeyProvider(key_arn, kms=None, format_handle=None, algorithm=AES_GCM_NOPADDING_256, keys=None)``.

    ``kms``: a :class:`kmsenv.Kms` to use instead of the crypto client's.
    ``format_handle`` exists for signature compatibility; only the default ASN.1
    format is supported.
    """

    def __init__(
        self,
        key_arn: str,
        kms: Any = None,
        format_handle: Any = None,
        algorithm: Algorithm = Algorithm.AES_GCM_NOPADDING_256,
        keys: Iterable[str] | None = None,
    ) -> None:
        if format_handle is not None:
            raise ConfigurationError(
                "kmsenv.aliyun supports only the default ASN.1 message format (format_handle=None)"
            )
        self._primary = _arn(key_arn)
        self._extra: list[str] = []
        self.kms = kms
        self.algorithm = algorithm
        if keys is not None:
            self.add_multi_cmk_id(keys)

    @property
    def kms(self) -> Any:
        """A :class:`kmsenv.Kms` of this provider's own, or None for the crypto client's."""
        return self._kms

    @kms.setter
    def kms(self, kms: Any) -> None:
        if kms is not None and not all(
            hasattr(kms, m) for m in ("generate_data_key", "encrypt", "re_encrypt", "decrypt")
        ):
            raise ConfigurationError("kms must be a kmsenv.Kms")
        self._kms = kms

    @property
    def algorithm(self) -> Algorithm:
        return self._algorithm

    @algorithm.setter
    def algorithm(self, value: Algorithm) -> None:
        self._algorithm = algorithm_argument(value)

    @property
    def key_arn(self) -> str:
        """The primary CMK (GenerateDataKey runs under it)."""
        return self._primary

    @property
    def key_arns(self) -> tuple[str, ...]:
        """Every CMK, primary first."""
        return (self._primary, *self._extra)

    def add_multi_cmk_id(self, key_arns: Iterable[str]) -> None:
        """Also wrap each data key under these CMKs (the primary and repeats are
        ignored).  ``key_arns`` is only read, never modified."""
        if isinstance(key_arns, (str, bytes)) or not isinstance(key_arns, Iterable):
            raise ConfigurationError("add_multi_cmk_id takes a list or set of CMK ARNs")
        parsed = [_arn(text) for text in list(key_arns)]
        for arn in parsed:
            if arn not in self.key_arns:
                self._extra.append(arn)

    def data_key_provider(self, kms: Any) -> DataKeyProvider:
        """The kmsenv provider that does the work (``kms`` unless this provider
        was given its own).  Subclasses may return another provider."""
        from kmsenv.providers import KmsKeyProvider

        return KmsKeyProvider(*self.key_arns, kms=self.kms if self.kms is not None else kms, algorithm=self.algorithm)

    def __repr__(self) -> str:
        return f"DefaultDataKeyProvider({self._primary!r}, algorithm={self.algorithm.name}, keys={self._extra!r})"
