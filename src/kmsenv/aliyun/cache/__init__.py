"""``aliyun_encryption_sdk.cache``: data key caches."""

from .local import LocalDataKeyMaterialCache

__all__ = ["LocalDataKeyMaterialCache"]
