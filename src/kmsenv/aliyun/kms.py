"""``AliyunConfig`` and its backoff strategy (``aliyun_encryption_sdk.kms``).

The configuration becomes one :class:`kmsenv.Kms` per :class:`AliyunCrypto`
(connections reused across calls and regions).  Unlike the official SDK its
retries work: ``max_retries`` retries after the first attempt on throttling and
transient server errors, with full-jitter exponential backoff whose base and cap
come from :class:`FullJitterBackoffStrategy` (milliseconds, as in the official API).
Endpoints: ``https://kms.<region>.aliyuncs.com`` unless ``endpoints=`` or the
``KMSENV_KMS_ENDPOINTS`` environment variable (``region=url,...``) say otherwise.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Mapping

from kmsenv.exceptions import ConfigurationError

if TYPE_CHECKING:
    from kmsenv.kms import Kms

__all__ = ["AliyunConfig", "BackoffStrategy", "FullJitterBackoffStrategy", "MAX_RETRIES"]

MAX_RETRIES = 5


def _int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an int >= {minimum}")
    return value


class BackoffStrategy(abc.ABC):
    @abc.abstractmethod
    def wait_time_exponential(self, retry_times: int) -> float:
        """The longest wait (milliseconds) before retry number ``retry_times``."""


class FullJitterBackoffStrategy(BackoffStrategy):
    """Waits a uniformly random time in ``[0, min(capacity, 2**n * retry_initial_interval_mills)]`` ms."""

    def __init__(self, retry_initial_interval_mills: int = 200, capacity: int = 10000) -> None:
        self.retry_initial_interval_mills = _int(retry_initial_interval_mills, "retry_initial_interval_mills", 0)
        self.capacity = _int(capacity, "capacity", 0)

    def wait_time_exponential(self, retry_times: int) -> float:
        return float(min(self.capacity, 2**retry_times * self.retry_initial_interval_mills))

    def __repr__(self) -> str:
        return f"FullJitterBackoffStrategy({self.retry_initial_interval_mills}, {self.capacity})"


class AliyunConfig:
    """``AliyunConfig(access_key_id, access_key_secret, region=None, max_retries=5, backoff_strategy=...)``.

    ``None`` for both keys uses kmsenv's credential chain (environment, profile,
    RAM role).  ``region`` is kept for compatibility; every call goes to its
    CMK's region.  ``endpoints={region: url}`` is a kmsenv extension.
    """

    def __init__(
        self,
        access_key_id: str | None,
        access_key_secret: str | None,
        region: str | None = None,
        max_retries: int = MAX_RETRIES,
        backoff_strategy: BackoffStrategy | None = None,
        *,
        endpoints: Mapping[str, str] | None = None,
    ) -> None:
        for name, value in (("access_key_id", access_key_id), ("access_key_secret", access_key_secret)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigurationError(f"{name} must be a non-empty str (or None for the default credential chain)")
        if (access_key_id is None) != (access_key_secret is None):
            raise ConfigurationError("access_key_id and access_key_secret must be given together")
        if region is not None and not isinstance(region, str):
            raise ConfigurationError("region must be a str or None")
        if backoff_strategy is None:
            backoff_strategy = FullJitterBackoffStrategy(200, 10000)
        if not isinstance(backoff_strategy, FullJitterBackoffStrategy):
            raise ConfigurationError("backoff_strategy must be a FullJitterBackoffStrategy")
        self.access_key_id = access_key_id
        self.access_key_secret = access_key_secret
        self.region = region
        self.max_retries = _int(max_retries, "max_retries", 0)
        self.backoff_strategy = backoff_strategy
        self.endpoints = dict(endpoints) if endpoints is not None else None

    def make_kms(self) -> Kms:
        """A new :class:`kmsenv.Kms` for this configuration."""
        from kmsenv.kms import Kms

        strategy = self.backoff_strategy
        return Kms(
            access_key_id=self.access_key_id,
            access_key_secret=self.access_key_secret,
            endpoints=self.endpoints,
            max_attempts=self.max_retries + 1,
            backoff_base=strategy.retry_initial_interval_mills / 1000.0,
            backoff_max=strategy.capacity / 1000.0,
        )

    def __repr__(self) -> str:  # never the secret
        return (
            f"AliyunConfig(access_key_id={self.access_key_id!r}, access_key_secret=<redacted>, "
            f"region={self.region!r}, max_retries={self.max_retries})"
        )
