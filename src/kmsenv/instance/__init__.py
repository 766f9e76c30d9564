"""KMS 3.0 instance gateways (dedicated gateways): the protobuf protocol and ClientKeys.

Protocol pieces only (:mod:`.proto`, :mod:`.auth`, :mod:`.clientkey`, :mod:`.errors`);
the HTTPS client is :mod:`kmsenv.instance.client`, imported on its own so that the
server side (``kmsenv.localkms``) can use the protocol without the client.  See
docs/kms-instances.md.
"""

from .clientkey import ClientKey, create_client_key, load_client_key, read_password_file
from .errors import AuthError, ClientKeyError, ErrorBody, ProtobufError

__all__ = [
    "ClientKey",
    "load_client_key",
    "read_password_file",
    "create_client_key",
    "AuthError",
    "ClientKeyError",
    "ErrorBody",
    "ProtobufError",
]
