"""A local Alibaba Cloud KMS server for tests, demos and benchmarks.

from kmsenv.localkms import LocalKms
with LocalKms(regions=["cn-hangzhou", "cn-shanghai"]) as kms:
    arn = kms.create_key("cn-hangzhou")
    kms.endpoints   # {"cn-hangzhou": "http://127.0.0.1:PORT", ...}

KMS 3.0 instance gateways (HTTPS, ClientKeys): ``LocalKms(regions, instances={"kst-a":
"cn-hangzhou"})``, then ``kms.instances["kst-a"]`` (see :mod:`kmsenv.localkms.instance`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import KmsError
from .faults import Faults

if TYPE_CHECKING:
    from .instance import InstanceSpec
    from .server import LocalKms

__all__ = ["LocalKms", "Faults", "KmsError", "InstanceSpec"]

# The server and the instance gateways (TLS, x509, protobuf: about 0.1 s to
# import) load on first use: the kmsenv command builds its `kms` subcommands
# from this package on every start, and most commands never serve.
_LAZY = {"LocalKms": ".server", "InstanceSpec": ".instance"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
