"""Signature primitives for :mod:`kmsenv.signing`: public-key parsing, the
digests KMS signs, and local verification.

RSA and ECDSA go through ``cryptography``. SM2 and SM3 go through the native
core (``csrc/sm2.c``, OpenSSL's SM2) when the native backend is in use, else
through ``gmssl`` (SM2 point arithmetic) with ``cryptography``'s SM3 where its
OpenSSL has it (gmssl's SM3 runs at about 65 KB/s, too slow for files). The
backend follows :func:`kmsenv.crypto.get_backend` (``KMSENV_BACKEND``).

What is signed (docs/signing.md): KMS signs a 32-byte digest, never the
message. RSA and ECDSA: SHA-256(M). SM2DSA: SM3(Z || M), with Z computed from
the public key and the distinguishing ID (``1234567812345678`` by default).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from ..exceptions import ConfigurationError, UnsupportedAlgorithmError

__all__ = [
    "ALGORITHMS",
    "DEFAULT_SM2_ID",
    "DIGEST_LEN",
    "PublicKey",
    "load_public_key",
    "message_digest",
    "sm2_sign_digest",
    "sm3",
    "verify_digest",
]

ALGORITHMS = ("RSA_PSS_SHA_256", "RSA_PKCS1_SHA_256", "ECDSA_SHA_256", "SM2DSA")
DEFAULT_SM2_ID = b"1234567812345678"
DIGEST_LEN = 32
PSS_SALT_LEN = 32  # KMS and the Java SDK's verifier; exactly this length is accepted
SM2_ID_MAX = 8191  # ENTL holds the ID's length in bits in 16 bits

# sm2p256v1 (GB/T 32918.5)
_SM2_N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
_SM2_P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
_SM2_A = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC
_SM2_B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
_SM2_G = bytes.fromhex(
    "32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7"
    "BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0"
)

# SubjectPublicKeyInfo of an SM2 key as KMS GetPublicKey returns it
# (kms-local-server.md 14.4): id-ecPublicKey + namedCurve sm2p256v1, an
# uncompressed point. The structure has one valid DER encoding, so a prefix
# match plus the total length is a strict parse.
_SM2_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a811ccf5501822d03420004")
_SM2_SPKI_LEN = len(_SM2_SPKI_PREFIX) + 64
_OID_SM2_CURVE = "1.2.156.10197.1.301"

_PEM_RE = re.compile(r"-----BEGIN (PUBLIC KEY|CERTIFICATE)-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END \1-----\s*\Z")


@dataclass(frozen=True)
class PublicKey:
    """A parsed signature public key. ``key_spec`` is the KMS KeySpec it
    corresponds to (``RSA_2048``, ``RSA_3072``, ``EC_P256``, ``EC_P256K``,
    ``EC_SM2``; other RSA sizes are ``RSA_<bits>``)."""

    key_spec: str
    key: Any = field(repr=False, default=None)  # cryptography key (RSA / EC)
    sm2_point: bytes = field(repr=False, default=b"")  # x || y for EC_SM2

    @property
    def family(self) -> str:
        return "RSA" if self.key_spec.startswith("RSA_") else self.key_spec


def default_algorithm(key_spec: str) -> str:
    """The algorithm kmsenv signs with when none is given: RSA-PSS for RSA keys
    (randomized, with a security proof; PKCS#1 v1.5 on request), ECDSA for the
    EC curves, SM2DSA for SM2."""
    if key_spec.startswith("RSA_"):
        return "RSA_PSS_SHA_256"
    if key_spec in ("EC_P256", "EC_P256K"):
        return "ECDSA_SHA_256"
    if key_spec == "EC_SM2":
        return "SM2DSA"
    raise UnsupportedAlgorithmError(f"no signature algorithm for key spec {key_spec!r}")


# ---------------------------------------------------------------- parsing


def _pem_body(pem: str | bytes) -> tuple[str, bytes]:
    if isinstance(pem, (bytes, bytearray, memoryview)):
        try:
            text = bytes(pem).decode("ascii")
        except UnicodeDecodeError:
            raise ConfigurationError("public_key must be PEM text (ASCII)") from None
    elif isinstance(pem, str):
        text = pem
    else:
        raise ConfigurationError(f"public_key must be a PEM str or bytes, not {type(pem).__name__}")
    match = _PEM_RE.match(text.strip() + "\n")
    if match is None:
        raise ConfigurationError(
            "public_key must be one PEM block: -----BEGIN PUBLIC KEY----- or -----BEGIN CERTIFICATE-----"
        )
    try:
        der = base64.b64decode("".join(match.group(2).split()), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError("public_key: the PEM body is not valid base64") from None
    return match.group(1), der


def _tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER TLV at ``pos`` (strict lengths)."""
    if end - pos < 2:
        raise ValueError("truncated")
    tag, first = buf[pos], buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or end - pos < count:
            raise ValueError("bad length")
        length = int.from_bytes(buf[pos : pos + count], "big")
        pos += count
        if length < 0x80 or buf[pos - count] == 0:
            raise ValueError("non-minimal length")
    if length > end - pos:
        raise ValueError("truncated")
    return tag, pos, pos + length


def _certificate_spki(tbs: bytes) -> bytes:
    """The subjectPublicKeyInfo TLV of a TBSCertificate (RFC 5280 4.1)."""
    tag, start, end = _tlv(tbs, 0, len(tbs))
    if tag != 0x30 or end != len(tbs):
        raise ValueError("TBSCertificate is not a SEQUENCE")
    pos = start
    tag, _, after = _tlv(tbs, pos, end)
    if tag == 0xA0:  # [0] EXPLICIT version
        pos = after
    for _ in range(5):  # serialNumber, signature, issuer, validity, subject
        _, _, pos = _tlv(tbs, pos, end)
    tag, _, spki_end = _tlv(tbs, pos, end)
    if tag != 0x30:
        raise ValueError("subjectPublicKeyInfo is not a SEQUENCE")
    return tbs[pos:spki_end]


def _from_spki(der: bytes) -> PublicKey:
    if len(der) == _SM2_SPKI_LEN and der.startswith(_SM2_SPKI_PREFIX):
        point = der[len(_SM2_SPKI_PREFIX) :]
        _check_sm2_point(point)
        return PublicKey("EC_SM2", sm2_point=point)
    try:
        key = serialization.load_der_public_key(der)
    except UnsupportedAlgorithm as e:
        raise ConfigurationError(f"public_key: unsupported key type ({e})") from None
    except ValueError:
        if _OID_SM2_CURVE.encode() in der or bytes.fromhex("06082a811ccf5501822d") in der:
            raise ConfigurationError(
                "public_key: an SM2 key must be id-ecPublicKey + sm2p256v1 with an uncompressed point"
            ) from None
        raise ConfigurationError("public_key: not a valid SubjectPublicKeyInfo") from None
    if isinstance(key, rsa.RSAPublicKey):
        return PublicKey(f"RSA_{key.key_size}", key=key)
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return PublicKey("EC_P256", key=key)
        if isinstance(key.curve, ec.SECP256K1):
            return PublicKey("EC_P256K", key=key)
        raise ConfigurationError(f"public_key: curve {key.curve.name} is not a KMS signing curve")
    raise ConfigurationError(f"public_key: {type(key).__name__} is not a KMS signing key type")


def load_public_key(pem: str | bytes) -> PublicKey:
    """Parse a PEM SubjectPublicKeyInfo (as GetPublicKey returns it) or a PEM
    X.509 certificate (its subject key; the certificate's own signature,
    validity and algorithm play no part). :class:`ConfigurationError` when it
    is neither or holds a key KMS cannot sign with."""
    kind, der = _pem_body(pem)
    if kind == "CERTIFICATE":
        from cryptography import x509

        try:
            cert = x509.load_der_x509_certificate(der)
            der = _certificate_spki(cert.tbs_certificate_bytes)
        except ValueError:
            raise ConfigurationError("public_key: not a valid X.509 certificate") from None
    return _from_spki(der)


def _check_sm2_point(point: bytes) -> None:
    impl = _sm2_impl()
    if not impl.point_ok(point):
        raise ConfigurationError("public_key: the SM2 public key is not a point on sm2p256v1")


# ---------------------------------------------------------------- digests


def _as_bytes(data: Any, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise ConfigurationError(f"{what} must be bytes, not {type(data).__name__}")


def _check_uid(uid: Any) -> bytes:
    checked = _as_bytes(uid, "sm2_user_id")
    if len(checked) > SM2_ID_MAX:
        raise ConfigurationError(f"sm2_user_id must be at most {SM2_ID_MAX} bytes")
    return checked


def sm3(data: bytes) -> bytes:
    """SM3 of ``data`` on the current backend."""
    return _sm2_impl().sm3(_as_bytes(data, "data"))


def sm2_z(point: bytes, uid: bytes = DEFAULT_SM2_ID) -> bytes:
    """Z = SM3(ENTL || ID || a || b || xG || yG || xA || yA)."""
    return _sm2_impl().z(point, _check_uid(uid))


def message_digest(key: PublicKey, algorithm: str, message: Any, uid: Any = DEFAULT_SM2_ID) -> bytes:
    """The 32-byte ``Digest`` KMS signs for ``message``: SHA-256(M), or
    SM3(Z || M) for SM2DSA (Z from ``key`` and ``uid``)."""
    check_pair(key, algorithm)
    message = _as_bytes(message, "data")
    if algorithm == "SM2DSA":
        return _sm2_impl().digest(key.sm2_point, _check_uid(uid), message)
    return hashlib.sha256(message).digest()


# ---------------------------------------------------------------- verify


def check_pair(key: PublicKey, algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise ConfigurationError(f"unknown signature algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
    family = key.family
    ok = (
        (algorithm in ("RSA_PSS_SHA_256", "RSA_PKCS1_SHA_256") and family == "RSA")
        or (algorithm == "ECDSA_SHA_256" and family in ("EC_P256", "EC_P256K"))
        or (algorithm == "SM2DSA" and family == "EC_SM2")
    )
    if not ok:
        raise ConfigurationError(f"algorithm {algorithm} cannot be used with a {key.key_spec} key")


def parse_der_signature(sig: bytes) -> tuple[int, int] | None:
    """(r, s) of a strict DER SEQUENCE { INTEGER r, INTEGER s }, or None:
    short-form lengths only (every such signature is below 128 bytes), minimal
    non-negative INTEGERs, nothing after the SEQUENCE."""
    if len(sig) < 8 or len(sig) > 2 + 2 * 35 or sig[0] != 0x30 or sig[1] != len(sig) - 2:
        return None
    values: list[int] = []
    pos = 2
    for _ in range(2):
        if len(sig) - pos < 2 or sig[pos] != 0x02:
            return None
        length = sig[pos + 1]
        pos += 2
        if length == 0 or length >= 0x80 or length > len(sig) - pos:
            return None
        if sig[pos] & 0x80 or (length > 1 and sig[pos] == 0 and not sig[pos + 1] & 0x80):
            return None
        values.append(int.from_bytes(sig[pos : pos + length], "big"))
        pos += length
    if pos != len(sig):
        return None
    return values[0], values[1]


def verify_digest(key: PublicKey, algorithm: str, digest: Any, signature: Any) -> bool:
    """Whether ``signature`` is ``key``'s signature of the 32-byte ``digest``
    under ``algorithm``. False for any signature that does not verify
    (including malformed encodings); :class:`ConfigurationError` for bad
    arguments."""
    check_pair(key, algorithm)
    digest = _as_bytes(digest, "digest")
    signature = _as_bytes(signature, "signature")
    if len(digest) != DIGEST_LEN:
        raise ConfigurationError(f"a {algorithm} digest is {DIGEST_LEN} bytes, not {len(digest)}")
    if algorithm == "SM2DSA":
        return _sm2_impl().verify(key.sm2_point, digest, signature)
    prehashed = utils.Prehashed(hashes.SHA256())
    try:
        if algorithm == "ECDSA_SHA_256":
            rs = parse_der_signature(signature)
            order = _EC_ORDERS[key.key_spec]
            # Both s and n - s verify (KMS does not normalise s); range is checked here.
            if rs is None or not (0 < rs[0] < order and 0 < rs[1] < order):
                return False
            key.key.verify(signature, digest, ec.ECDSA(prehashed))
        elif algorithm == "RSA_PSS_SHA_256":
            if len(signature) != (key.key.key_size + 7) // 8:
                return False
            key.key.verify(signature, digest, padding.PSS(padding.MGF1(hashes.SHA256()), PSS_SALT_LEN), prehashed)
        else:
            if len(signature) != (key.key.key_size + 7) // 8:
                return False
            key.key.verify(signature, digest, padding.PKCS1v15(), prehashed)
    except InvalidSignature:
        return False
    return True


_EC_ORDERS = {
    "EC_P256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "EC_P256K": 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
}


def sm2_sign_digest(private_key: bytes, point: bytes, digest: bytes) -> bytes:
    """An SM2 signature (DER) of ``digest`` with a local private scalar, on
    the current backend. For tests: KMS keeps its own keys, and the pure
    backend's gmssl arithmetic is not constant-time."""
    private_key = _as_bytes(private_key, "private_key")
    if len(private_key) != 32 or len(point) != 64 or len(digest) != DIGEST_LEN:
        raise ConfigurationError("SM2 signing takes a 32-byte scalar, a 64-byte point and a 32-byte digest")
    return _sm2_impl().sign(private_key, point, digest)


# ---------------------------------------------------------------- SM2 backends


class _Sm2(Protocol):
    name: str

    def sm3(self, data: bytes) -> bytes: ...

    def z(self, point: bytes, uid: bytes) -> bytes: ...

    def digest(self, point: bytes, uid: bytes, message: bytes) -> bytes: ...

    def point_ok(self, point: bytes) -> bool: ...

    def verify(self, point: bytes, digest: bytes, signature: bytes) -> bool: ...

    def sign(self, private_key: bytes, point: bytes, digest: bytes) -> bytes: ...


class _NativeSm2:
    """csrc/sm2.c: OpenSSL's SM3 and SM2."""

    name = "native"

    def __init__(self, native: Any) -> None:
        self._lib = native.lib
        self._ffi = native.ffi

    def _check(self, rc: int, what: str) -> None:
        if rc == 0:
            return
        if rc == self._lib.KMSENV_E_ARG:
            raise ConfigurationError(f"{what}: invalid argument (an SM2 key that is not a point on the curve?)")
        if rc == self._lib.KMSENV_E_UNSUPPORTED:
            raise UnsupportedAlgorithmError(f"{what}: this OpenSSL has no SM2/SM3")
        raise ConfigurationError(f"{what} failed: {self._ffi.string(self._lib.kmsenv_strerror(rc)).decode()}")

    def sm3(self, data: bytes) -> bytes:
        out = self._ffi.new("uint8_t[32]")
        self._check(self._lib.kmsenv_sm3(data, len(data), out), "SM3")
        return bytes(self._ffi.buffer(out, 32))

    def z(self, point: bytes, uid: bytes) -> bytes:
        if len(point) != 64:
            raise ConfigurationError("an SM2 public key is 64 bytes (x || y)")
        out = self._ffi.new("uint8_t[32]")
        self._check(self._lib.kmsenv_sm2_z(point, uid, len(uid), out), "SM2 Z")
        return bytes(self._ffi.buffer(out, 32))

    def digest(self, point: bytes, uid: bytes, message: bytes) -> bytes:
        if len(point) != 64:
            raise ConfigurationError("an SM2 public key is 64 bytes (x || y)")
        out = self._ffi.new("uint8_t[32]")
        self._check(self._lib.kmsenv_sm2_digest(point, uid, len(uid), message, len(message), out), "SM2 digest")
        return bytes(self._ffi.buffer(out, 32))

    def point_ok(self, point: bytes) -> bool:
        return len(point) == 64 and self._lib.kmsenv_sm2_check_public_key(point) == 0

    def verify(self, point: bytes, digest: bytes, signature: bytes) -> bool:
        rc = self._lib.kmsenv_sm2_verify_digest(point, digest, signature, len(signature))
        if rc == self._lib.KMSENV_E_AUTH:
            return False
        self._check(rc, "SM2 verify")
        return True

    def sign(self, private_key: bytes, point: bytes, digest: bytes) -> bytes:
        cap = self._lib.KMSENV_SM2_SIG_MAX
        out = self._ffi.new("uint8_t[]", cap)
        outlen = self._ffi.new("size_t *")
        self._check(self._lib.kmsenv_sm2_sign_digest(private_key, point, digest, out, cap, outlen), "SM2 sign")
        return bytes(self._ffi.buffer(out, outlen[0]))


def _cryptography_sm3_two(a: bytes, b: bytes) -> bytes | None:
    """SM3(a || b) through cryptography, without joining the two, or None
    when its OpenSSL has no SM3."""
    try:
        h = hashes.Hash(hashes.SM3())
    except UnsupportedAlgorithm:
        return None
    h.update(a)
    h.update(b)
    return h.finalize()


class _PureSm2:
    """gmssl's SM2 arithmetic; SM3 from cryptography when it has it, else gmssl."""

    name = "pure"

    def sm3(self, data: bytes) -> bytes:
        return self.sm3_two(b"", data)

    def sm3_two(self, a: bytes, b: bytes) -> bytes:
        fast = _cryptography_sm3_two(a, b)
        if fast is not None:
            return fast
        from gmssl import sm3 as gm_sm3

        return bytes.fromhex(gm_sm3.sm3_hash(list(a + b)))

    def z(self, point: bytes, uid: bytes) -> bytes:
        if not self.point_ok(point):
            raise ConfigurationError("the SM2 public key is not a point on sm2p256v1")
        entl = (len(uid) * 8).to_bytes(2, "big")
        curve = _SM2_A.to_bytes(32, "big") + _SM2_B.to_bytes(32, "big") + _SM2_G
        return self.sm3(entl + uid + curve + point)

    def digest(self, point: bytes, uid: bytes, message: bytes) -> bytes:
        return self.sm3_two(self.z(point, uid), message)

    def point_ok(self, point: bytes) -> bool:
        if len(point) != 64:
            return False
        x, y = int.from_bytes(point[:32], "big"), int.from_bytes(point[32:], "big")
        return x < _SM2_P and y < _SM2_P and (y * y - (x * x * x + _SM2_A * x + _SM2_B)) % _SM2_P == 0

    def _crypt(self, point: bytes, private_key: bytes | None = None) -> Any:
        from gmssl import sm2 as gm_sm2

        crypt = gm_sm2.CryptSM2(private_key=private_key.hex() if private_key else None, public_key="")
        # Set after construction: the constructor lstrip()s "04", which eats
        # leading hex digits 0 and 4 of x as well.
        crypt.public_key = point.hex()
        return crypt

    def verify(self, point: bytes, digest: bytes, signature: bytes) -> bool:
        if not self.point_ok(point):
            raise ConfigurationError("the SM2 public key is not a point on sm2p256v1")
        rs = parse_der_signature(signature)
        if rs is None or not (0 < rs[0] < _SM2_N and 0 < rs[1] < _SM2_N):
            return False
        try:
            return bool(self._crypt(point).verify("%064x%064x" % rs, digest))
        except (TypeError, ValueError):  # gmssl reaching the point at infinity
            return False

    def sign(self, private_key: bytes, point: bytes, digest: bytes) -> bytes:
        import secrets

        crypt = self._crypt(point, private_key)
        while True:
            k = secrets.randbelow(_SM2_N - 1) + 1
            raw = crypt.sign(digest, "%064x" % k)
            if raw:
                r, s = int(raw[:64], 16), int(raw[64:], 16)
                return _der_signature(r, s)


def _der_signature(r: int, s: int) -> bytes:
    def integer(v: int) -> bytes:
        body = v.to_bytes(v.bit_length() // 8 + 1, "big")
        return b"\x02" + bytes((len(body),)) + body

    content = integer(r) + integer(s)
    return b"\x30" + bytes((len(content),)) + content


def _sm2_impl() -> _Sm2:
    """The SM2/SM3 implementation of the current backend: native when the
    backend is native and the loaded core has sm2.c (a core built from older
    sources falls back to gmssl), else pure."""
    from . import get_backend

    if get_backend().name == "native":
        from . import native

        if native.lib is not None and hasattr(native.lib, "kmsenv_sm2_verify_digest"):
            return _NativeSm2(native)
    return _PureSm2()


def sm2_backend_name() -> str:
    """Which SM2 implementation the current backend uses ('native' or 'pure')."""
    return _sm2_impl().name
