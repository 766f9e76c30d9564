"""A picklable recipe for a :class:`~kmsenv.kms.Kms`, for worker processes.

Spark executors, Dask workers and Ray actors must build their own KMS clients:
a ``Kms`` holds HTTP connections and possibly credentials, and neither may
travel in a task closure. A :class:`KmsSpec` carries only public settings
(endpoint overrides, region preference, retry and timeout values); each process
turns it into one shared ``Kms`` with :meth:`KmsSpec.kms`, taking credentials
from its own environment (``ALIBABA_CLOUD_ACCESS_KEY_ID`` / ``..._SECRET`` /
``..._SECURITY_TOKEN``, or the default chain: profile, OIDC, ECS/EMR RAM role).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from kmsenv import _process
from kmsenv.exceptions import ConfigurationError

if TYPE_CHECKING:
    from kmsenv.kms import Kms

__all__ = ["KmsSpec", "REGION_ENV"]

#: Comma-separated regions a worker prefers for Decrypt, nearest first.
REGION_ENV = "KMSENV_PREFER_REGIONS"


def _pairs(endpoints: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> tuple[tuple[str, str], ...]:
    if endpoints is None:
        return ()
    items = endpoints.items() if isinstance(endpoints, Mapping) else endpoints
    out = []
    for region, url in items:
        if not isinstance(region, str) or not isinstance(url, str):
            raise ConfigurationError("KmsSpec endpoints must map region names to URLs (str to str)")
        out.append((region, url))
    return tuple(sorted(out))


@dataclass(frozen=True)
class KmsSpec:
    """Public settings from which every process builds the same ``Kms``.

    ``endpoints``: region -> URL overrides (``None`` = the worker's
    ``KMSENV_KMS_ENDPOINTS`` or the public endpoints). ``prefer_regions``:
    regions to try first on Decrypt, nearest first (``None`` = the worker's
    ``KMSENV_PREFER_REGIONS``, else the writer's CMK order). ``instances_file``:
    the path of a KMS-instances file (the ``KMSENV_KMS_INSTANCES`` format) that
    every worker reads, so the files it names must be at the same paths there
    (``None`` = the worker's ``KMSENV_KMS_INSTANCES``). The remaining fields
    are passed to ``Kms`` as they are. Holds no credentials, ever: an instances
    file names ClientKey and password files, it does not hold them.
    """

    endpoints: tuple[tuple[str, str], ...] | None = None
    prefer_regions: tuple[str, ...] | None = None
    max_attempts: int = 4
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    backoff_base: float = 0.2
    backoff_max: float = 5.0
    instances_file: str | None = None

    def __post_init__(self) -> None:
        if self.instances_file is not None and (not isinstance(self.instances_file, str) or not self.instances_file):
            raise ConfigurationError("instances_file must be the path of a KMS-instances JSON file, or None")
        if self.endpoints is not None:
            object.__setattr__(self, "endpoints", _pairs(self.endpoints))
        if self.prefer_regions is not None:
            if isinstance(self.prefer_regions, str):
                raise ConfigurationError("prefer_regions must be a list of region names, not one string")
            object.__setattr__(self, "prefer_regions", tuple(str(r) for r in self.prefer_regions))

    @classmethod
    def from_kms(cls, kms: Any, *, prefer_regions: Iterable[str] | None = None) -> KmsSpec:
        """The public settings of an existing ``Kms`` (never its credentials)."""
        overrides = getattr(kms, "_endpoints", None)
        endpoints = {r: e.url for r, e in overrides.items()} if overrides else None
        return cls(
            endpoints=_pairs(endpoints) if endpoints else None,
            prefer_regions=tuple(prefer_regions) if prefer_regions is not None else None,
            max_attempts=getattr(kms, "max_attempts", 4),
            connect_timeout=getattr(kms, "connect_timeout", 5.0),
            read_timeout=getattr(kms, "read_timeout", 10.0),
            backoff_base=getattr(kms, "backoff_base", 0.2),
            backoff_max=getattr(kms, "backoff_max", 5.0),
            instances_file=getattr(kms, "instances_file", None),
        )

    def preferred_regions(self) -> tuple[str, ...]:
        """Regions to try first, nearest first: the spec's, else the environment's."""
        if self.prefer_regions is not None:
            return self.prefer_regions
        env = os.environ.get(REGION_ENV, "")
        return tuple(r.strip() for r in env.split(",") if r.strip())

    def kms(self) -> Kms:
        """This process's ``Kms`` for this spec (built once, rebuilt after a fork)."""
        key = (
            self.endpoints,
            self.max_attempts,
            self.connect_timeout,
            self.read_timeout,
            self.backoff_base,
            self.backoff_max,
            self.instances_file,
        )
        with _LOCK:
            kms = _CLIENTS.get(key)
            if kms is None:
                from kmsenv.kms import Kms, parse_instances_file

                kms = Kms(
                    endpoints=dict(self.endpoints) if self.endpoints is not None else None,
                    instances=parse_instances_file(self.instances_file) if self.instances_file else None,
                    max_attempts=self.max_attempts,
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                    backoff_base=self.backoff_base,
                    backoff_max=self.backoff_max,
                )
                _CLIENTS[key] = kms
            return kms


_LOCK = threading.Lock()
# (endpoints, max_attempts, connect_timeout, read_timeout, backoff_base, backoff_max, instances_file)
_ClientKey = tuple[tuple[tuple[str, str], ...] | None, int, float, float, float, float, str | None]
_CLIENTS: dict[_ClientKey, Kms] = {}


def _forget_after_fork() -> None:
    # A child must not share the parent's HTTP connections (or its lock state).
    global _LOCK
    _LOCK = _process.new_lock()
    _CLIENTS.clear()


_process.register(__name__, ("_LOCK", "_CLIENTS"), _forget_after_fork)
