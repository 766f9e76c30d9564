"""A local Alibaba Cloud KMS server for tests, demos and benchmarks.

from kmsenv.localkms import LocalKms
with LocalKms(regions=["cn-hangzhou", "cn-shanghai"]) as kms:
    arn = kms.create_key("cn-hangzhou")
    kms.endpoints   # {"cn-hangzhou": "http://127.0.0.1:PORT", ...}
"""

from .errors import KmsError
from .faults import Faults
from .server import LocalKms

__all__ = ["LocalKms", "Faults", "KmsError"]
