"""A local Alibaba Cloud KMS server for tests, demos and benchmarks.

from kmsenv.localkms import LocalKms
with LocalKms(regions=["cn-hangzhou", "cn-shanghai"]) as kms:
    arn = kms.create_key("cn-hangzhou")
    kms.endpoints   # {"cn-hangzhou": "http://127.0.0.1:PORT", ...}

KMS 3.0 instance gateways (HTTPS, ClientKeys): ``LocalKms(regions, instances={"kst-a":
"cn-hangzhou"})``, then ``kms.instances["kst-a"]`` (see :mod:`kmsenv.localkms.instance`).
"""

from .errors import KmsError
from .faults import Faults
from .instance import InstanceSpec
from .server import LocalKms

__all__ = ["LocalKms", "Faults", "KmsError", "InstanceSpec"]
