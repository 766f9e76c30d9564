"""KMS 3.0 instance gateways for LocalKms: HTTPS, a private CA, ClientKeys, protobuf.

Each instance is its own loopback HTTPS port speaking the protocol the unmodified
``alibabacloud-dkms-gcs`` client speaks (kms-instance-gateway.md): ``POST /`` with a
protobuf body, the API named in ``x-kms-apiname``, every request signed with a ClientKey
and verified here before anything else is looked at (:mod:`kmsenv.instance.auth`).

* **TLS**: LocalKms makes one private CA (RSA-2048, like Alibaba's) and per instance a
  server certificate (ECDSA P-256) naming ``IP:<host>``, ``DNS:localhost`` and
  ``DNS:<instance-id>.cryptoservice.kms.aliyuncs.com``.  The CA file and each instance's
  ClientKey files (``clientKey_KAAP.<uuid>.json`` and ``..._Password.txt``) are written to
  ``<state_dir>/instances/`` (or a private temporary directory without a state dir).
* **Keys**: an instance serves the keys of its region's shared gateway (the same key IDs
  and versions: ``LocalKms.create_key(region)`` makes keys for both).  A *replica*
  instance (``replica_of=``) serves its primary's keys under the same IDs, in its own
  region, as Alibaba documents replica synchronization (spec §7: whether real replicas
  keep IDs is unconfirmed).
* **Ciphertexts** (spec §4): plain Encrypt/GenerateDataKey use the key's initial version
  and return ``ct||tag`` plus ``Iv``; Advance* use the primary version and return
  ``'$' 00 02 || version[36] || iv[12] || ct||tag``.  ``Aad`` is opaque GCM AAD.  The
  version used is sent in the ``x-kms-migrationkeyversionid`` response header.
* **Bounded before authentication**: the request line, headers and body sizes, the
  connections served at once and the time a request may take (the shared gateway's
  machinery, :mod:`kmsenv.localkms.server`), plus the TLS handshake's time.

Error codes and statuses follow the spec's §3.6 table; where Alibaba documents none
(disabled keys, expired ClientKeys, a content-sha256 mismatch) the choice is LocalKms's
and docs/kms-instances.md says so.
"""

from __future__ import annotations

import datetime
import email.utils
import ipaddress
import json
import logging
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..instance import auth, proto
from ..instance.clientkey import create_client_key, load_client_key
from ..instance.errors import AuthError, ErrorBody, ProtobufError
from . import asymmetric
from .errors import KmsError, key_not_found, key_state, server_error
from .faults import Faults
from .keystore import Key, KeyStore, KeyVersion
from .listener import Listener, declared_body_length

if TYPE_CHECKING:
    from .server import LocalKms, _Handler

log = logging.getLogger("kmsenv.localkms")

HOST_SUFFIX = ".cryptoservice.kms.aliyuncs.com"
MAX_BODY_BYTES = 256 * 1024  # the real gateway allows 3 MB; no call here needs more than ~10 KB
MAX_DATA_BYTES = 6144  # per-call data limit of symmetric keys (spec §3.4)
HANDSHAKE_TIMEOUT = 10.0
_VERSION_LEN = 36
_IV_LEN = 12
_TAG_LEN = 16
_ADVANCE_HEADER = b"$\x00\x02"  # MAGIC '$', cipher version 0 / no padding, AES-GCM (spec §4.2)
_SERVER_NAME = "kmsenv localkms instance gateway"


@dataclass(frozen=True)
class InstanceSpec:
    """Where an instance is: its ``region`` and, for a replica, the primary's ID."""

    region: str
    replica_of: Optional[str] = None


@dataclass(frozen=True)
class ClientKeyFiles:
    """A ClientKey LocalKms issued: its ID, the two files the console would download, and
    the password (a test credential: shown in the repr only by ID)."""

    key_id: str
    key_file: str
    password_file: str
    password: str
    content: str
    not_after: float  # epoch seconds

    def __repr__(self) -> str:
        return f"ClientKeyFiles(key_id={self.key_id!r}, key_file={self.key_file!r})"


def _invalid(detail: str = "") -> KmsError:
    return KmsError(400, "InvalidParameter", "The specified parameter is not valid." + (f" {detail}" if detail else ""))


def _unsupported() -> KmsError:
    return KmsError(400, "UnsupportedOperation", "This action is not supported.")


# -- certificates ----------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kmsenv localkms"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: Any) -> str:
    return str(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")
    )


def make_ca() -> tuple[str, str]:
    """A self-signed CA: ``(key PEM, certificate PEM)``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.timezone.utc)
    name = _name("kmsenv localkms Private KMS Root CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem_key(key), cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def make_server_cert(ca_key_pem: str, ca_cert_pem: str, instance_id: str, host: str) -> tuple[str, str]:
    """A server certificate for one instance, signed by the CA: ``(key PEM, cert PEM)``."""
    ca_key = serialization.load_pem_private_key(ca_key_pem.encode("ascii"), None)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode("ascii"))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(instance_id + HOST_SUFFIX)]
    try:
        names.insert(0, x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.insert(0, x509.DNSName(host))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(instance_id + HOST_SUFFIX))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]  # an RSA key, made by make_ca
    )
    return _pem_key(key), cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _write_private(path: str, text: str) -> None:
    """Write a file only its owner can read (ClientKeys and passwords are credentials)."""
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


# -- the gateway's operations ----------------------------------------------------------


class InstanceActions:
    """The protobuf API of one instance over the key store: message dicts in, message
    dicts (and the key version used) out.  Knows nothing of HTTP or signatures."""

    def __init__(self, kms: "LocalKms", key_region: str) -> None:
        self.kms = kms
        self.key_region = key_region
        self.handlers: dict[str, tuple[str, str, Callable[..., tuple[dict[str, Any], str]]]] = {
            "Encrypt": ("EncryptRequest", "EncryptResponse", self.encrypt),
            "Decrypt": ("DecryptRequest", "DecryptResponse", self.decrypt),
            "GenerateDataKey": ("GenerateDataKeyRequest", "GenerateDataKeyResponse", self.generate_data_key),
            "AdvanceEncrypt": ("AdvanceEncryptRequest", "AdvanceEncryptResponse", self.advance_encrypt),
            "AdvanceDecrypt": ("AdvanceDecryptRequest", "AdvanceDecryptResponse", self.advance_decrypt),
            "AdvanceGenerateDataKey": (
                "AdvanceGenerateDataKeyRequest",
                "AdvanceGenerateDataKeyResponse",
                self.advance_generate_data_key,
            ),
            "GenerateRandom": ("GenerateRandomRequest", "GenerateRandomResponse", self.generate_random),
            "GetPublicKey": ("GetPublicKeyRequest", "GetPublicKeyResponse", self.get_public_key),
            "Sign": ("SignRequest", "SignResponse", self.sign),
            "Verify": ("VerifyRequest", "VerifyResponse", self.verify),
            "GetSecretValue": ("GetSecretValueRequest", "GetSecretValueResponse", self.get_secret_value),
        }

    # -- key lookups ---------------------------------------------------------------

    @property
    def _store(self) -> KeyStore:
        return self.kms._store

    def _key(self, key_ref: str) -> Key:
        """A key by ID, ``alias/...`` or ARN, in the instance's key region."""
        if not key_ref:
            raise _invalid("KeyId is required.")
        return self.kms._server(self.key_region).actions.resolve(key_ref)

    def _symmetric(self, key: Key) -> Key:
        if key.asymmetric or key.key_usage != "ENCRYPT/DECRYPT":
            raise _unsupported()
        if key.state != "Enabled":
            raise key_state(key.state)
        return key

    def _version(self, key: Key, version_id: str) -> KeyVersion:
        version = self._store.get_version(self.key_region, version_id)
        if version is None or version.key_id != key.key_id:
            raise key_not_found()
        return version

    def _initial(self, key: Key) -> KeyVersion:
        versions = self._store.list_versions(self.key_region, key.key_id)
        if not versions:
            raise server_error("InternalFailure")
        return versions[0]

    def _by_version_id(self, version_id: str) -> tuple[Key, KeyVersion]:
        version = self._store.get_version(self.key_region, version_id)
        key = self._store.get_key(self.key_region, version.key_id) if version is not None else None
        if version is None or key is None:
            raise key_not_found()
        return key, version

    # -- GCM -----------------------------------------------------------------------

    @staticmethod
    def _data(value: Any, what: str) -> bytes:
        if not value:
            raise _invalid(f"{what} is required.")
        if len(value) > MAX_DATA_BYTES:
            raise _invalid(f"{what} is over {MAX_DATA_BYTES} bytes.")
        return bytes(value)

    @staticmethod
    def _algorithm(request: Mapping[str, Any]) -> None:
        if request.get("Algorithm", "") not in ("", "AES_GCM"):
            raise _unsupported()  # AES_CBC/ECB exist on HSM instances only
        if request.get("PaddingMode", ""):
            raise _unsupported()

    @staticmethod
    def _seal(version: KeyVersion, plaintext: bytes, aad: bytes, iv: bytes = b"") -> tuple[bytes, bytes]:
        if iv and len(iv) != _IV_LEN:
            raise _invalid("Iv must be 12 bytes.")
        iv = iv or os.urandom(_IV_LEN)
        return iv, version.aead.encrypt(iv, plaintext, aad or None)

    @staticmethod
    def _open(version: KeyVersion, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        if len(iv) != _IV_LEN or len(ciphertext) < _TAG_LEN:
            raise _invalid("CiphertextBlob or Iv is malformed.")
        try:
            return bytes(version.aead.decrypt(iv, ciphertext, aad or None))
        except Exception:  # InvalidTag: wrong key, Aad or a changed byte
            raise _invalid("The ciphertext does not decrypt with this key, Iv and Aad.") from None

    # -- plain API (initial version) ---------------------------------------------

    def encrypt(self, req: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[dict[str, Any], str]:
        self._algorithm(req)
        key = self._symmetric(self._key(req["KeyId"]))
        plaintext = self._data(req["Plaintext"], "Plaintext")
        version = self._initial(key)
        iv, ct = self._seal(version, plaintext, req["Aad"], req["Iv"])
        return {"KeyId": key.key_id, "CiphertextBlob": ct, "Iv": iv, "Algorithm": "AES_GCM"}, version.version_id

    def decrypt(self, req: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[dict[str, Any], str]:
        self._algorithm(req)
        version_id = headers.get(auth.VERSION_HEADER, "")
        if version_id:
            key, version = self._by_version_id(version_id)
            if req["KeyId"] and self._key(req["KeyId"]).key_id != key.key_id:
                raise key_not_found()
        else:
            key = self._key(req["KeyId"])
            version = self._initial(key)
        self._symmetric(key)
        ciphertext = self._data(req["CiphertextBlob"], "CiphertextBlob")
        plaintext = self._open(version, req["Iv"], ciphertext, req["Aad"])
        return {"KeyId": key.key_id, "Plaintext": plaintext, "Algorithm": "AES_GCM"}, version.version_id

    @staticmethod
    def _number_of_bytes(value: int) -> int:
        size = value or 32
        if not 1 <= size <= 1024:
            raise _invalid("NumberOfBytes must be 1 to 1024.")
        return size

    def generate_data_key(self, req: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[dict[str, Any], str]:
        if req.get("Algorithm", "") not in ("", "AES_GCM"):
            raise _unsupported()
        key = self._symmetric(self._key(req["KeyId"]))
        data_key = os.urandom(self._number_of_bytes(req["NumberOfBytes"]))
        version = self._initial(key)
        iv, ct = self._seal(version, data_key, req["Aad"])
        response = {"KeyId": key.key_id, "Iv": iv, "Plaintext": data_key, "CiphertextBlob": ct, "Algorithm": "AES_GCM"}
        return response, version.version_id

    # -- Advance API (primary version, self-describing blob) ---------------------

    def _advance_seal(self, key: Key, plaintext: bytes, aad: bytes, iv: bytes = b"") -> tuple[bytes, bytes, str]:
        version = self._store.get_version(self.key_region, key.primary_version)
        if version is None:
            raise server_error("InternalFailure")
        iv, ct = self._seal(version, plaintext, aad, iv)
        return _ADVANCE_HEADER + version.version_id.encode("ascii") + iv + ct, iv, version.version_id

    def advance_encrypt(self, req: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[dict[str, Any], str]:
        self._algorithm(req)
        key = self._symmetric(self._key(req["KeyId"]))
        plaintext = self._data(req["Plaintext"], "Plaintext")
        blob, iv, vid = self._advance_seal(key, plaintext, req["Aad"], req["Iv"])
        response = {"KeyId": key.key_id, "CiphertextBlob": blob, "Iv": iv, "Algorithm": "AES_GCM", "KeyVersionId": vid}
        return response, vid

    def advance_decrypt(self, req: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[dict[str, Any], str]:
        self._algorithm(req)
        blob = self._data(req["CiphertextBlob"], "CiphertextBlob")
        head = len(_ADVANCE_HEADER)
        if len(blob) < head + _VERSION_LEN + _IV_LEN + _TAG_LEN or blob[:head] != _ADVANCE_HEADER:
            raise _invalid("CiphertextBlob is not an Advance ciphertext.")
        try:
            version_id = blob[head : head + _VERSION_LEN].decode("ascii")
        except UnicodeDecodeError:
            raise _invalid("CiphertextBlob is not an Advance ciphertext.") from None
        key, version = self._by_version_id(version_id)
        if req["KeyId"] and self._key(req["KeyId"]).key_id != key.key_id:
            raise key_not_found()
        self._symmetric(key)
        iv = blob[head + _VERSION_LEN : head + _VERSION_LEN + _IV_LEN]
        if req["Iv"] and req["Iv"] != iv:
            raise _invalid("Iv does not match the ciphertext.")
        plaintext = self._open(version, iv, blob[head + _VERSION_LEN + _IV_LEN :], req["Aad"])
        response = {"KeyId": key.key_id, "Plaintext": plaintext, "Algorithm": "AES_GCM", "KeyVersionId": version_id}
        return response, version_id

    def advance_generate_data_key(
        self, req: Mapping[str, Any], headers: Mapping[str, str]
    ) -> tuple[dict[str, Any], str]:
        key = self._symmetric(self._key(req["KeyId"]))
        data_key = os.urandom(self._number_of_bytes(req["NumberOfBytes"]))
        blob, iv, vid = self._advance_seal(key, data_key, req["Aad"])
        response = {
            "KeyId": key.key_id,
            "Iv": iv,
            "Plaintext": data_key,
            "CiphertextBlob": blob,
            "Algorithm": "AES_GCM",
            "KeyVersionId": vid,
        }
        return response, vid

    # -- other calls ---------------------------------------------------------------

    def generate_random(self, req: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[dict[str, Any], str]:
        length = req["Length"]
        if not 1 <= length <= 1024:
            raise _invalid("Length must be 1 to 1024.")
        return {"Random": os.urandom(length)}, ""

    def _asymmetric(self, req: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[Key, KeyVersion]:
        key = self._key(req["KeyId"])
        if not key.asymmetric:
            raise _unsupported()
        if key.state != "Enabled":
            raise key_state(key.state)
        version_id = headers.get(auth.VERSION_HEADER, "")
        return key, (self._version(key, version_id) if version_id else self._initial(key))

    def get_public_key(self, req: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[dict[str, Any], str]:
        key, version = self._asymmetric(req, headers)
        return {"KeyId": key.key_id, "PublicKey": version.aead.public_pem()}, version.version_id

    def _digest(self, key: Key, req: Mapping[str, Any]) -> tuple[str, bytes]:
        if key.key_usage != "SIGN/VERIFY":
            raise _unsupported()
        algorithm = req["Algorithm"]
        if algorithm not in asymmetric.SIGN_ALGORITHMS.get(key.key_spec, ()):
            raise _invalid("Algorithm is not valid for this key.")
        message_type = req["MessageType"] or "RAW"
        data = req["Message"] or req["Digest"]
        if message_type == "DIGEST":
            if len(data) != asymmetric.DIGEST_LEN:
                raise _invalid("A DIGEST message must be 32 bytes.")
            return algorithm, bytes(data)
        if message_type != "RAW" or algorithm == "SM2DSA":  # SM2's RAW form needs the Z value: not served
            raise _invalid("MessageType is not valid.")
        h = hashes.Hash(hashes.SHA256())
        h.update(self._data(data, "Message"))
        return algorithm, h.finalize()

    def sign(self, req: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[dict[str, Any], str]:
        key, version = self._asymmetric(req, headers)
        algorithm, digest = self._digest(key, req)
        signature = version.aead.sign(algorithm, digest)
        response = {
            "KeyId": key.key_id,
            "Signature": signature,
            "Algorithm": algorithm,
            "MessageType": req["MessageType"],
        }
        return response, version.version_id

    def verify(self, req: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[dict[str, Any], str]:
        key, version = self._asymmetric(req, headers)
        algorithm, digest = self._digest(key, req)
        valid = bool(version.aead.verify(algorithm, digest, bytes(req["Signature"])))
        response = {"KeyId": key.key_id, "Value": valid, "Algorithm": algorithm, "MessageType": req["MessageType"]}
        return response, version.version_id

    def get_secret_value(self, req: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[dict[str, Any], str]:
        """The key region's Secrets Manager secret (a replica serves its primary's, as the
        newest docs say secrets are synchronized too)."""
        if not req["SecretName"]:
            raise _invalid("SecretName is required.")
        params = {"SecretName": req["SecretName"], "VersionStage": req["VersionStage"], "VersionId": req["VersionId"]}
        found = self.kms._server(self.key_region).actions.secrets.get_secret_value(params)
        response = {k: found[k] for k in ("SecretName", "SecretType", "SecretData", "SecretDataType", "VersionId")}
        response["CreateTime"] = found["CreateTime"]
        response["VersionStages"] = list(found["VersionStages"]["VersionStage"])
        return response, ""


# -- HTTPS front end -------------------------------------------------------------------


def _protobuf_response(status: int, body: bytes, request_id: str, extra: Mapping[str, str], close: bool) -> bytes:
    from .server import _reason

    head = [
        f"HTTP/1.1 {status} {_reason(status)}\r\n",
        "Content-Type: application/x-protobuf\r\n",
        f"Content-Length: {len(body)}\r\n",
        f"x-kms-requestid: {request_id}\r\n",
        f"Date: {email.utils.formatdate(usegmt=True)}\r\n",
    ]
    head += [f"{k}: {v}\r\n" for k, v in extra.items()]
    if close:
        head.append("Connection: close\r\n")
    head.append("\r\n")
    return "".join(head).encode("latin-1") + body


class InstanceGateway(Listener):
    """One instance's HTTPS listener, ClientKeys, faults and counters.

    ``endpoint`` is what the official client's ``Config(endpoint=...)`` wants
    (``127.0.0.1:PORT``); ``ca_file`` its ``ca_file_path``; ``client_key`` the ClientKey
    issued at creation (``key_file``, ``password``, ``password_file``).
    """

    def __init__(
        self,
        kms: "LocalKms",
        instance_id: str,
        spec: InstanceSpec,
        key_region: str,
        files_dir: str,
        ca: tuple[str, str],
        host: str,
    ) -> None:
        self.kms = kms
        self.instance_id = instance_id
        self.region = spec.region
        self.replica_of = spec.replica_of
        self.key_region = key_region
        self.host = host
        self.port = 0
        self.ca_file = os.path.join(files_dir, "instance-ca.pem")
        self.read_timeout = kms._servers[next(iter(kms._servers))].read_timeout
        self.actions = InstanceActions(kms, key_region)
        self.faults = Faults()
        self._fault_generation = 0
        self._fault_timer: Optional[threading.Timer] = None
        self.counts: dict[str, int] = {}
        self._count_lock = threading.Lock()
        self._init_listener()
        self._keys_lock = threading.Lock()
        self._files_dir = files_dir
        self._client_keys: dict[str, tuple[rsa.RSAPublicKey, float]] = {}
        key_pem, cert_pem = make_server_cert(ca[0], ca[1], instance_id, host)
        self._ssl = self._server_context(key_pem, cert_pem, files_dir)
        self.client_key = self._stored_client_key()

    def __repr__(self) -> str:
        return f"InstanceGateway({self.instance_id!r}, region={self.region!r}, endpoint={self.endpoint!r})"

    @staticmethod
    def _server_context(key_pem: str, cert_pem: str, files_dir: str) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # load_cert_chain reads files only; the key file lives as long as the call.
        fd, path = tempfile.mkstemp(dir=files_dir, suffix=".pem")
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(key_pem + cert_pem)
            ctx.load_cert_chain(path)
        finally:
            os.unlink(path)
        return ctx

    # -- addresses -----------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}/"

    @property
    def host_name(self) -> str:
        """The real gateway's host name (its certificate names it too)."""
        return self.instance_id + HOST_SUFFIX

    # -- ClientKeys ----------------------------------------------------------------

    def _stored_client_key(self) -> ClientKeyFiles:
        """The instance's first ClientKey: kept in the state database, so clients
        configured against an earlier run keep working."""
        password = uuid.uuid4().hex
        content, _ = create_client_key(password, valid_days=3650)
        stored = json.loads(
            self.kms._store.meta_setdefault(
                f"instance_client_key:{self.instance_id}", json.dumps({"content": content, "password": password})
            )
        )
        return self._install(stored["content"], stored["password"])

    def _install(self, content: str, password: str) -> ClientKeyFiles:
        key = load_client_key(content=content, password=password)
        not_after = key.not_after.timestamp() if key.not_after is not None else float("inf")
        key_file = os.path.join(self._files_dir, f"clientKey_{key.key_id}.json")
        password_file = os.path.join(self._files_dir, f"clientKey_{key.key_id}_Password.txt")
        _write_private(key_file, content)
        _write_private(password_file, password)
        with self._keys_lock:
            self._client_keys[key.key_id] = (key.public_key(), not_after)
        return ClientKeyFiles(key.key_id, key_file, password_file, password, content, not_after)

    def add_client_key(self, valid_seconds: float = 3650 * 86400.0) -> ClientKeyFiles:
        """Issue another ClientKey (in memory only), valid for ``valid_seconds`` from now
        (a negative value makes one that has already expired)."""
        password = uuid.uuid4().hex
        content, key = create_client_key(password, valid_days=3650)
        files = self._install(content, password)
        expires = self.kms._clock() + valid_seconds
        with self._keys_lock:
            self._client_keys[key.key_id] = (key.public_key(), expires)
        return ClientKeyFiles(files.key_id, files.key_file, files.password_file, password, content, expires)

    def revoke_client_key(self, key_id: str) -> None:
        with self._keys_lock:
            self._client_keys.pop(key_id, None)

    def _public_key_for(self, key_id: str) -> Optional[rsa.RSAPublicKey]:
        entry = self._client_keys.get(key_id)
        if entry is None or self.kms._clock() > entry[1]:
            return None  # unknown, revoked or expired: all "Unauthorized"
        return entry[0]

    # -- faults and statistics -----------------------------------------------------

    def set_fault(
        self,
        down: bool = False,
        latency_ms: float = 0,
        throttle_rate: float = 0.0,
        error_rate: float = 0.0,
        error_code: str = "ServiceUnavailableTemporary",
        *,
        duration: Optional[float] = None,
    ) -> None:
        """Replace this instance's fault settings (no arguments: clear them), as
        :meth:`LocalKms.set_fault` does for a region's shared gateway; with ``duration``
        (seconds) they are cleared again after that long unless changed meanwhile."""
        faults = Faults(down, float(latency_ms), float(throttle_rate), float(error_rate), error_code)
        if duration is not None and not duration > 0:
            raise ValueError("duration must be > 0 seconds")
        with self.kms._fault_lock:  # serialized with stop() and the timed restores
            self._fault_generation += 1
            if self._fault_timer is not None:
                self._fault_timer.cancel()
                self._fault_timer = None
            if faults.down:
                self.faults = faults
                self.close()
            else:
                if self.kms._started and not self.kms._stopped and not self.listening:
                    self.open(self.port)
                self.faults = faults  # after the port is back: "not down" means reachable
            if duration is not None and faults != Faults() and not self.kms._stopped:
                timer = threading.Timer(duration, self._restore, (self._fault_generation,))
                timer.daemon = True
                timer.name = f"localkms-restore-{self.instance_id}"
                self._fault_timer = timer
                timer.start()

    def _restore(self, generation: int) -> None:
        with self.kms._fault_lock:
            if generation != self._fault_generation or self.kms._stopped:
                return
            try:
                self.set_fault()
            except OSError as exc:  # the port was taken meanwhile
                log.warning("%s: cannot listen on port %d again: %s", self.instance_id, self.port, exc)

    def stats(self) -> dict[str, int]:
        """``{api name: count}`` of verified requests naming a served API (injected
        faults included, as for the shared gateway)."""
        with self._count_lock:
            return dict(self.counts)

    def reset_stats(self) -> None:
        with self._count_lock:
            self.counts.clear()

    def _count(self, api: str) -> None:
        with self._count_lock:
            self.counts[api] = self.counts.get(api, 0) + 1

    # -- listener lifecycle (close, listening, _track: listener.Listener) ----------

    def open(self, port: int) -> None:
        with self._life_lock:
            if self._httpd is None:
                self._serve(_TlsHttpServer((self.host, port), self), f"localkms-{self.instance_id}")

    # The attributes and methods below are what server._HttpServer and server._Handler
    # use of a "region server".

    def body_length(self, h: "_Handler") -> int:
        return declared_body_length(h, MAX_BODY_BYTES)

    def refuse_busy(self, sock: socket.socket) -> None:
        """Over the connection bound: closed without a word (no TLS yet to answer in)."""

    def answer_error(self, h: "_Handler", exc: KmsError) -> None:
        h.close_connection = True
        request_id = str(uuid.uuid4())
        try:
            self._write(h, exc.status, self._error_body(exc.status, exc.code, exc.message, request_id), request_id, {})
        except OSError:
            return
        self.kms._request_done(self.instance_id, "-", exc.status, 0.0, request_id)

    @staticmethod
    def _error_body(status: int, code: str, message: str, request_id: str) -> bytes:
        return proto.encode_error(ErrorBody(status, code, message, request_id))

    def _write(self, h: "_Handler", status: int, body: bytes, request_id: str, extra: Mapping[str, str]) -> None:
        h.connection.settimeout(self.read_timeout)
        h.wfile.write(_protobuf_response(status, body, request_id, extra, h.close_connection))

    def handle(self, h: "_Handler") -> None:
        if h.headers.get("x-kms-apiname") is None and (
            h.headers.get("x-acs-action") is not None or "Action=" in h.path
        ):
            # The classic RAM-signed OpenAPI on the same host (spec §1.7: the dedicated
            # gateway serves it to SDK V2 with the instance CA): the key region's shared
            # gateway code answers it, with that region's faults and counters.
            self.kms._server(self.key_region).handle(h)
            return
        started = time.perf_counter()
        request_id = str(uuid.uuid4())
        faults = self.faults
        api = "-"
        extra: dict[str, str] = {}
        try:
            length = self.body_length(h)
            body = h.rfile.read(length) if length > 0 else b""
            if len(body) != length:
                h.close_connection = True
                return
            if getattr(h, "command", "") != "POST":
                raise KmsError(405, "InvalidParameter", "Only POST is served.")
            if faults.latency_ms:
                time.sleep(faults.latency_ms / 1000.0)
            _, headers = auth.verify_request(h.headers.items(), body, self._public_key_for, now=self.kms._clock())
            name = headers.get("x-kms-apiname", "")
            entry = self.actions.handlers.get(name)
            if entry is None:
                raise KmsError(400, "InvalidApiName", f'The ApiName "{name[:64]}" is invalid.')
            api = name
            self._count(api)
            injected = faults.injected_error()
            if injected is not None:
                raise injected
            request_type, response_type, run = entry
            try:
                request = proto.decode(request_type, body)
            except ProtobufError:
                raise _invalid("The request body is not a valid protobuf message.") from None
            result, version_id = run(request, headers)
            result["RequestId"] = request_id
            payload = proto.encode(response_type, result)
            if version_id:
                extra[auth.VERSION_HEADER] = version_id
            status = 200
        except (AuthError, KmsError) as exc:
            status = exc.status
            payload = self._error_body(exc.status, exc.code, exc.message, request_id)
        except (TimeoutError, ConnectionError):
            h.close_connection = True
            return
        except Exception:
            log.exception("%s %s failed", self.instance_id, api)
            status = 500
            payload = self._error_body(500, "InternalFailure", "Internal Failure", request_id)
        self._write(h, status, payload, request_id, extra)
        self.kms._request_done(self.instance_id, api, status, (time.perf_counter() - started) * 1000, request_id)


def _tls_server_class() -> type:
    """``server._HttpServer`` with TLS: the handshake runs in the connection's own thread
    under a deadline (a silent client holds a slot for at most HANDSHAKE_TIMEOUT)."""
    from .server import _HttpServer

    class TlsHttpServer(_HttpServer):
        def __init__(self, address: tuple[str, int], gateway: InstanceGateway) -> None:
            self.tls_context = gateway._ssl
            super().__init__(address, gateway)  # type: ignore[arg-type]  # duck-typed RegionServer

        def _serve_connection(self, request: Any, client_address: Any, slot: Any) -> None:
            raw = request
            try:
                # For the handshake CPython's socket timeout bounds the whole of it, not
                # each recv (Python >= 3.5): a client dribbling bytes is cut at the deadline.
                raw.settimeout(HANDSHAKE_TIMEOUT)
                tls = self.tls_context.wrap_socket(raw, server_side=True)
            except (OSError, ValueError):
                self._slot_of.pop(raw, None)
                self.slots.release(slot)
                try:
                    raw.close()
                except OSError:
                    pass
                return
            slot.sock = tls
            self._slot_of[tls] = slot
            self._slot_of.pop(raw, None)
            super()._serve_connection(tls, client_address, slot)

    return TlsHttpServer


def _TlsHttpServer(address: tuple[str, int], gateway: InstanceGateway) -> Any:
    # A fresh subclass per listener (cheap, and no module-level cache to reset after fork).
    return _tls_server_class()(address, gateway)


# -- the set of instances of one LocalKms ----------------------------------------------


InstancesArg = Mapping[str, Union[str, InstanceSpec]]


def _check_instance_id(instance_id: str) -> None:
    if not (
        isinstance(instance_id, str)
        and 0 < len(instance_id) <= 63
        and all(c.isalnum() or c == "-" for c in instance_id)
        and instance_id[0].isalnum()
    ):
        raise ValueError(f"invalid instance ID {instance_id!r} (letters, digits and '-', like kst-hzz62f...)")


class InstanceGateways:
    """Every instance of one LocalKms (``LocalKms.instances`` is its ``gateways`` dict)."""

    def __init__(self, kms: "LocalKms", instances: InstancesArg, host: str) -> None:
        specs: dict[str, InstanceSpec] = {}
        for instance_id, value in instances.items():
            _check_instance_id(instance_id)
            spec = InstanceSpec(value) if isinstance(value, str) else value
            if not isinstance(spec, InstanceSpec):
                raise ValueError(f"instance {instance_id}: give a region name or an InstanceSpec")
            specs[instance_id] = spec
        for instance_id, spec in specs.items():
            if spec.replica_of is not None:
                primary = specs.get(spec.replica_of)
                if primary is None or primary.replica_of is not None:
                    raise ValueError(
                        f"instance {instance_id}: replica_of must name a primary instance of this LocalKms"
                    )
                if primary.region == spec.region:
                    raise ValueError(f"instance {instance_id}: a replica must be in another region than its primary")
            elif spec.region not in kms.regions:
                raise ValueError(f"instance {instance_id}: region {spec.region!r} is not served by this LocalKms")
        self.kms = kms
        self._temp_dir: Optional[str] = None
        self.gateways: dict[str, InstanceGateway] = {}
        self.files_dir: Optional[str] = None
        self.ca_file: Optional[str] = None
        if not specs:
            return  # nothing written, nothing generated
        if kms.state_dir is not None:
            files_dir = os.path.join(os.path.abspath(kms.state_dir), "instances")
            os.makedirs(files_dir, mode=0o700, exist_ok=True)
            os.chmod(files_dir, 0o700)
        else:
            files_dir = self._temp_dir = tempfile.mkdtemp(prefix="kmsenv-localkms-instances-")
        self.files_dir = files_dir
        stored = kms._store.get_meta("instance_ca")
        if stored is None:  # kept, so that clients given the CA file keep trusting later runs
            stored = kms._store.meta_setdefault("instance_ca", json.dumps(make_ca()))
        ca_key, ca_cert = json.loads(stored)
        self.ca_file = os.path.join(files_dir, "instance-ca.pem")
        _write_private(self.ca_file, ca_cert)
        for instance_id, spec in specs.items():
            key_region = specs[spec.replica_of].region if spec.replica_of else spec.region
            self.gateways[instance_id] = InstanceGateway(
                kms, instance_id, spec, key_region, files_dir, (ca_key, ca_cert), host
            )

    def start(self) -> None:
        remembered: dict[str, int] = json.loads(self.kms._store.get_meta("instance_ports") or "{}")
        for instance_id, gateway in self.gateways.items():
            wanted = remembered.get(instance_id, 0)
            try:
                gateway.open(wanted)
            except OSError:
                if not wanted:
                    raise
                gateway.open(0)
            if gateway.faults.down:
                gateway.close()
        if self.kms._store.persistent and self.gateways:
            remembered.update({i: g.port for i, g in self.gateways.items()})
            self.kms._store.set_meta("instance_ports", json.dumps(remembered, sort_keys=True))

    def stop(self) -> None:
        for gateway in self.gateways.values():
            if gateway._fault_timer is not None:
                gateway._fault_timer.cancel()
            gateway.close()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def describe(self) -> str:
        """What ``kmsenv kms serve`` prints: per instance its endpoint, CA file and
        ClientKey files (paths and the password file, not the password)."""
        lines = []
        for g in self.gateways.values():
            replica = f", replica of {g.replica_of}" if g.replica_of else ""
            lines.append(
                f"instance {g.instance_id} ({g.region}{replica}): https://{g.endpoint}  "
                f"ca={g.ca_file}  client_key={g.client_key.key_file}  password_file={g.client_key.password_file}"
            )
        return "\n".join(lines)
