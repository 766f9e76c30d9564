"""ClientKey credentials of a KMS instance (an AAP's ClientKey, spec §2.1-§2.2).

The console hands out two files: ``clientKey_KAAP.<uuid>.json``
(``{"KeyId": "KAAP.<uuid>", "PrivateKeyData": "<base64 PKCS#12>"}``) and
``clientKey_KAAP.<uuid>_Password.txt``.  The official client opens the PKCS#12 with
pyOpenSSL (which pins ``cryptography<42``); this module uses ``cryptography``'s own
``pkcs12.load_key_and_certificates``, which reads the same files (PBES2/AES and the
legacy RC2/3DES encryptions, or none).

Nothing here puts key material or the password in a repr or an error message.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from typing import Optional, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from .errors import ClientKeyError

__all__ = ["ClientKey", "load_client_key", "read_password_file", "create_client_key"]

# A real ClientKey file is ~2.5 KB (RSA-2048 plus a certificate); 64 KiB leaves room for
# RSA-4096 and chains while refusing anything absurd before it is parsed.
MAX_FILE_BYTES = 64 * 1024
MAX_PASSWORD_BYTES = 4096
MIN_RSA_BITS = 2048
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

Password = Union[str, bytes, None]


@dataclass(frozen=True)
class ClientKey:
    """A loaded ClientKey: its ID (``KAAP.<uuid>``) and RSA private key.

    ``not_after`` is the certificate's expiry when the PKCS#12 carries one (informative:
    the gateway decides).  The repr shows the ID only.
    """

    key_id: str
    private_key: rsa.RSAPrivateKey = field(repr=False)
    not_after: Optional[datetime.datetime] = None

    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    def sign(self, data: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 with SHA-256: the only method the gateway defines."""
        return self.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def _password_bytes(password: Password) -> Optional[bytes]:
    if password is None:
        return None
    if isinstance(password, str):
        password = password.encode("utf-8")
    if not isinstance(password, bytes):
        raise ClientKeyError("the ClientKey password must be str or bytes")
    if len(password) > MAX_PASSWORD_BYTES:
        raise ClientKeyError(f"the ClientKey password is over {MAX_PASSWORD_BYTES} bytes")
    return password or None  # "" means an unprotected PKCS#12, as in the official client


def read_password_file(path: str) -> str:
    """The password in a ``..._Password.txt`` file (one trailing newline removed)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PASSWORD_BYTES + 2)
    except OSError as exc:
        raise ClientKeyError(f"cannot read the ClientKey password file {path}: {exc.strerror}") from None
    if len(raw) > MAX_PASSWORD_BYTES + 1:
        raise ClientKeyError(f"the ClientKey password file {path} is over {MAX_PASSWORD_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientKeyError(f"the ClientKey password file {path} is not UTF-8 text") from None
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ClientKeyError(f"cannot read the ClientKey file {path}: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ClientKeyError(f"the ClientKey file {path} is over {MAX_FILE_BYTES} bytes")
    return raw


def load_client_key(
    *, path: Optional[str] = None, content: Union[str, bytes, None] = None, password: Password = None
) -> ClientKey:
    """Load a ClientKey from its JSON file (``path``) or text (``content``) and password."""
    if (path is None) == (content is None):
        raise ClientKeyError("give exactly one of path= and content= for the ClientKey")
    where = f"the ClientKey file {path}" if path is not None else "the ClientKey content"
    raw = _read_file(path) if path is not None else content
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if not isinstance(raw, bytes):
        raise ClientKeyError("the ClientKey content must be str or bytes")
    if len(raw) > MAX_FILE_BYTES:
        raise ClientKeyError(f"{where} is over {MAX_FILE_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ClientKeyError(f"{where} is not JSON") from None
    if not isinstance(doc, dict):
        raise ClientKeyError(f"{where} is not a JSON object")
    key_id, data = doc.get("KeyId"), doc.get("PrivateKeyData")
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise ClientKeyError(f"{where} has no valid KeyId")
    if not isinstance(data, str) or not data:
        raise ClientKeyError(f"{where} has no PrivateKeyData")
    try:
        p12 = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ClientKeyError(f"{where}: PrivateKeyData is not base64") from None
    try:
        private_key, cert, _ = pkcs12.load_key_and_certificates(p12, _password_bytes(password))
    except ValueError:
        # cryptography does not say whether the password or the structure is wrong.
        raise ClientKeyError(
            f"{where} ({key_id}): the PKCS#12 does not open with this password (wrong password, or a damaged file)"
        ) from None
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise ClientKeyError(f"{where} ({key_id}): the key is not RSA (the gateway signs with RSA PKCS#1 v1.5 only)")
    if private_key.key_size < MIN_RSA_BITS:
        raise ClientKeyError(f"{where} ({key_id}): RSA-{private_key.key_size} is under {MIN_RSA_BITS} bits")
    not_after = cert.not_valid_after_utc if cert is not None else None
    return ClientKey(key_id, private_key, not_after)


def create_client_key(
    password: Password, *, key_id: Optional[str] = None, valid_days: int = 365, key_size: int = 2048
) -> tuple[str, ClientKey]:
    """A new ClientKey as the console makes them: ``(JSON text, loaded key)``.

    For test gateways (LocalKms) and tests: RSA, a self-signed certificate, PKCS#12
    encrypted with ``cryptography``'s best available scheme (PBES2/AES-256).
    """
    key_id = key_id or f"KAAP.{uuid.uuid4()}"
    if not _KEY_ID.fullmatch(key_id):
        raise ClientKeyError("invalid ClientKey ID")
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, key_id)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(int.from_bytes(os.urandom(16), "big") >> 1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .sign(private_key, hashes.SHA256())
    )
    secret = _password_bytes(password)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(secret) if secret else serialization.NoEncryption()
    )
    p12 = pkcs12.serialize_key_and_certificates(key_id.encode("ascii"), private_key, cert, None, encryption)
    content = json.dumps({"KeyId": key_id, "PrivateKeyData": base64.b64encode(p12).decode("ascii")})
    return content, ClientKey(key_id, private_key, cert.not_valid_after_utc)
