"""Asymmetric key versions for localkms: RSA, ECDSA (P-256, secp256k1) and SM2.

One :class:`AsymmetricKey` is one key version's key pair, with the operations KMS offers
on it (kms-local-server.md §14.4): sign/verify a precomputed 32-byte digest, encrypt /
decrypt, and the public key as the PEM ``GetPublicKey`` returns.

RSA and ECDSA go through ``cryptography``.  ``cryptography`` has no SM2 (neither keys
nor the SPKI), so SM2 (GB/T 32918: signatures over ``e = Digest``, public-key
encryption with the SM3 KDF) is implemented here on Python integers, with SM3 from
``cryptography`` (``hashes.SM3``).  Python integer arithmetic is not constant-time:
that is acceptable for a loopback test server, not for production keys.

Private keys are kept as PKCS#8 DER (what the key store persists); the SM2 PKCS#8 is
the 138-byte form OpenSSL 3 writes, built and parsed by template (§14.12).
"""

from __future__ import annotations

import base64
import hmac
import os
from typing import Optional, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

SIGN_ALGORITHMS: dict[str, tuple[str, ...]] = {
    "RSA_2048": ("RSA_PSS_SHA_256", "RSA_PKCS1_SHA_256"),
    "RSA_3072": ("RSA_PSS_SHA_256", "RSA_PKCS1_SHA_256"),
    "EC_P256": ("ECDSA_SHA_256",),
    "EC_P256K": ("ECDSA_SHA_256",),
    "EC_SM2": ("SM2DSA",),
}
ENCRYPT_ALGORITHMS: dict[str, tuple[str, ...]] = {
    "RSA_2048": ("RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1"),
    "RSA_3072": ("RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1"),
    "EC_SM2": ("SM2PKE",),
}
ASYMMETRIC_SPECS = tuple(SIGN_ALGORITHMS)
DIGEST_LEN = 32
SM2_MAX_PLAINTEXT = 6047  # KMS's documented limit: ciphertext (plaintext + 97) <= 6144
SM2_DEFAULT_ID = b"1234567812345678"

_RSA_BITS = {"RSA_2048": 2048, "RSA_3072": 3072}
_EC_CURVES: dict[str, ec.EllipticCurve] = {"EC_P256": ec.SECP256R1(), "EC_P256K": ec.SECP256K1()}


class DecryptError(ValueError):
    """The ciphertext does not decrypt under this key (wrong key, size or check value)."""


def usages(spec: str) -> tuple[str, ...]:
    """The KeyUsage values a spec allows, default first (§14.2)."""
    return ("SIGN/VERIFY", "ENCRYPT/DECRYPT") if spec in ENCRYPT_ALGORITHMS else ("SIGN/VERIFY",)


# -- SM3 and SM2 -------------------------------------------------------------------------


def sm3(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


# GB/T 32918.5 curve sm2p256v1.
_P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
_A = _P - 3
_B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
_N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
_GX = 0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7
_GY = 0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0

_Jacobian = tuple[int, int, int]  # (X, Y, Z); Z == 0 is the point at infinity
_INF: _Jacobian = (1, 1, 0)


def _double(pt: _Jacobian) -> _Jacobian:
    x, y, z = pt
    if z == 0 or y == 0:
        return _INF
    # a = -3: M = 3 (X - Z^2)(X + Z^2)
    zz = z * z % _P
    m = 3 * (x - zz) * (x + zz) % _P
    yy = y * y % _P
    s = 4 * x * yy % _P
    x3 = (m * m - 2 * s) % _P
    y3 = (m * (s - x3) - 8 * yy * yy) % _P
    z3 = 2 * y * z % _P
    return x3, y3, z3


def _add(p1: _Jacobian, p2: _Jacobian) -> _Jacobian:
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    if z1 == 0:
        return p2
    if z2 == 0:
        return p1
    z1z1 = z1 * z1 % _P
    z2z2 = z2 * z2 % _P
    u1 = x1 * z2z2 % _P
    u2 = x2 * z1z1 % _P
    s1 = y1 * z2 * z2z2 % _P
    s2 = y2 * z1 * z1z1 % _P
    if u1 == u2:
        return _double(p1) if s1 == s2 else _INF
    h = (u2 - u1) % _P
    r = (s2 - s1) % _P
    hh = h * h % _P
    hhh = h * hh % _P
    v = u1 * hh % _P
    x3 = (r * r - hhh - 2 * v) % _P
    y3 = (r * (v - x3) - s1 * hhh) % _P
    z3 = h * z1 * z2 % _P
    return x3, y3, z3


def _mul(k: int, point: tuple[int, int]) -> Optional[tuple[int, int]]:
    """k * point in affine coordinates (None for infinity).  A Montgomery ladder: the same
    sequence of operations for every k of the same length (Python ints still leak)."""
    r0, r1 = _INF, (point[0], point[1], 1)
    for i in range(_N.bit_length() - 1, -1, -1):
        if (k >> i) & 1:
            r0, r1 = _add(r0, r1), _double(r1)
        else:
            r0, r1 = _double(r0), _add(r0, r1)
    x, y, z = r0
    if z == 0:
        return None
    zi = pow(z, -1, _P)
    zi2 = zi * zi % _P
    return x * zi2 % _P, y * zi2 * zi % _P


def _on_curve(x: int, y: int) -> bool:
    return 0 <= x < _P and 0 <= y < _P and (y * y - (x * x * x + _A * x + _B)) % _P == 0


def _i2b(v: int) -> bytes:
    return v.to_bytes(32, "big")


def sm2_z(public: tuple[int, int], user_id: bytes = SM2_DEFAULT_ID) -> bytes:
    """Z_A = SM3(ENTL || ID || a || b || xG || yG || xA || yA) (GB/T 32918.2 §5.5)."""
    entl = (len(user_id) * 8).to_bytes(2, "big")
    return sm3(entl + user_id + b"".join(_i2b(v) for v in (_A, _B, _GX, _GY, *public)))


def _der_int(v: int) -> bytes:
    body = v.to_bytes(v.bit_length() // 8 + 1, "big")  # a leading 0 keeps it positive
    return b"\x02" + bytes([len(body)]) + body


def _der_seq(body: bytes) -> bytes:
    if len(body) < 0x80:
        return b"\x30" + bytes([len(body)]) + body
    if len(body) < 0x100:
        return b"\x30\x81" + bytes([len(body)]) + body
    return b"\x30\x82" + len(body).to_bytes(2, "big") + body


def _der_read(data: bytes, pos: int, tag: int) -> tuple[bytes, int]:
    """One strict-DER TLV of ``tag`` at ``pos``: (contents, next position)."""
    if pos + 2 > len(data) or data[pos] != tag:
        raise ValueError("unexpected tag")
    length, pos = data[pos + 1], pos + 2
    if length & 0x80:
        n = length & 0x7F
        if n not in (1, 2) or pos + n > len(data):
            raise ValueError("bad length")
        length = int.from_bytes(data[pos : pos + n], "big")
        if length < (0x80 if n == 1 else 0x100):
            raise ValueError("non-minimal length")
        pos += n
    if pos + length > len(data):
        raise ValueError("truncated")
    return data[pos : pos + length], pos + length


def _der_uint(body: bytes) -> int:
    if not body or body[0] & 0x80 or (len(body) > 1 and body[0] == 0 and not body[1] & 0x80):
        raise ValueError("not a minimal non-negative INTEGER")
    return int.from_bytes(body, "big")


def sm2_sign(d: int, digest: bytes) -> bytes:
    """DER SEQUENCE{r, s} over e = digest (the caller's SM3(Z || M))."""
    e = int.from_bytes(digest, "big")
    while True:
        k = int.from_bytes(os.urandom(40), "big") % (_N - 1) + 1
        point = _mul(k, (_GX, _GY))
        assert point is not None  # 1 <= k < n
        r = (e + point[0]) % _N
        if r == 0 or r + k == _N:
            continue
        s = pow(1 + d, -1, _N) * (k - r * d) % _N
        if s:
            return _der_seq(_der_int(r) + _der_int(s))


def sm2_verify(public: tuple[int, int], digest: bytes, signature: bytes) -> bool:
    try:
        body, end = _der_read(signature, 0, 0x30)
        if end != len(signature):
            return False
        rb, pos = _der_read(body, 0, 0x02)
        sb, pos = _der_read(body, pos, 0x02)
        if pos != len(body):
            return False
        r, s = _der_uint(rb), _der_uint(sb)
    except ValueError:
        return False
    if not (1 <= r < _N and 1 <= s < _N):
        return False
    t = (r + s) % _N
    if t == 0:
        return False
    sum_ = _add(_jac(_mul(s, (_GX, _GY))), _jac(_mul(t, public)))
    x1 = _affine_x(sum_)
    return x1 is not None and (int.from_bytes(digest, "big") + x1) % _N == r


def _jac(point: Optional[tuple[int, int]]) -> _Jacobian:
    return _INF if point is None else (point[0], point[1], 1)


def _affine_x(pt: _Jacobian) -> Optional[int]:
    x, _, z = pt
    if z == 0:
        return None
    zi = pow(z, -1, _P)
    return x * zi * zi % _P


def _sm3_kdf(z: bytes, length: int) -> bytes:
    out = bytearray()
    counter = 1
    while len(out) < length:
        out += sm3(z + counter.to_bytes(4, "big"))
        counter += 1
    return bytes(out[:length])


def sm2_encrypt(public: tuple[int, int], plaintext: bytes) -> bytes:
    """C1 (04 || x1 || y1) || C3 (SM3(x2 || M || y2)) || C2 (GB/T 32918.4-2016 order)."""
    while True:
        k = int.from_bytes(os.urandom(40), "big") % (_N - 1) + 1
        c1 = _mul(k, (_GX, _GY))
        shared = _mul(k, public)
        assert c1 is not None and shared is not None  # n is prime and public != infinity
        x2, y2 = _i2b(shared[0]), _i2b(shared[1])
        t = _sm3_kdf(x2 + y2, len(plaintext))
        if any(t):
            c2 = bytes(a ^ b for a, b in zip(plaintext, t))
            c3 = sm3(x2 + plaintext + y2)
            return b"\x04" + _i2b(c1[0]) + _i2b(c1[1]) + c3 + c2


def _sm2_candidates(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(C1 x||y, C3, C2) readings of a ciphertext, in the order §14.4 accepts them: DER
    SM2Cipher, C1C3C2 with 04, C1C2C3 with 04, C1C3C2 without 04 (gmssl)."""
    found = []
    if data[:1] == b"\x30":
        try:
            body, end = _der_read(data, 0, 0x30)
            xb, pos = _der_read(body, 0, 0x02)
            yb, pos = _der_read(body, pos, 0x02)
            c3, pos = _der_read(body, pos, 0x04)
            c2, pos = _der_read(body, pos, 0x04)
            if end == len(data) and pos == len(body) and len(c3) == 32:
                x, y = _der_uint(xb), _der_uint(yb)
                if x < _P and y < _P:
                    found.append((_i2b(x) + _i2b(y), c3, c2))
        except ValueError:
            pass
    if data[:1] == b"\x04" and len(data) > 97:
        found.append((data[1:65], data[65:97], data[97:]))
        found.append((data[1:65], data[-32:], data[65:-32]))
    if len(data) > 96:
        found.append((data[:64], data[64:96], data[96:]))
    return found


def sm2_decrypt(d: int, ciphertext: bytes) -> bytes:
    for c1, c3, c2 in _sm2_candidates(ciphertext):
        x1, y1 = int.from_bytes(c1[:32], "big"), int.from_bytes(c1[32:], "big")
        if not _on_curve(x1, y1):
            continue
        shared = _mul(d, (x1, y1))
        if shared is None:
            continue
        x2, y2 = _i2b(shared[0]), _i2b(shared[1])
        t = _sm3_kdf(x2 + y2, len(c2))
        if not any(t):
            continue
        plaintext = bytes(a ^ b for a, b in zip(c2, t))
        if hmac.compare_digest(sm3(x2 + plaintext + y2), c3):
            return plaintext
    raise DecryptError("SM2 ciphertext does not decrypt under this key")


# id-ecPublicKey + sm2p256v1: the SPKI KMS's GetPublicKey returns for EC_SM2 (§14.4), and
# the PKCS#8 OpenSSL 3 writes for an SM2 private key (§14.12).
SM2_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a811ccf5501822d03420004")
_SM2_PKCS8_PREFIX = bytes.fromhex("308187020100301306072a8648ce3d020106082a811ccf5501822d046d306b0201010420")
_SM2_PKCS8_MIDDLE = bytes.fromhex("a14403420004")
_SM2_PKCS8_LEN = len(_SM2_PKCS8_PREFIX) + 32 + len(_SM2_PKCS8_MIDDLE) + 64


def _pem(der: bytes, label: str) -> str:
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


# -- key versions ----------------------------------------------------------------------


class AsymmetricKey:
    """One key version's key pair."""

    spec: str

    def public_pem(self) -> str:
        raise NotImplementedError

    def private_der(self) -> bytes:
        """PKCS#8 DER, what the key store keeps."""
        raise NotImplementedError

    def sign(self, algorithm: str, digest: bytes) -> bytes:
        raise NotImplementedError

    def verify(self, algorithm: str, digest: bytes, signature: bytes) -> bool:
        raise NotImplementedError

    def max_plaintext(self, algorithm: str) -> int:
        raise NotImplementedError

    def encrypt(self, algorithm: str, plaintext: bytes) -> bytes:
        raise NotImplementedError

    def decrypt(self, algorithm: str, ciphertext: bytes) -> bytes:
        raise NotImplementedError

    def __repr__(self) -> str:  # never the private key
        return f"<{type(self).__name__} {self.spec}>"


class _RsaKey(AsymmetricKey):
    def __init__(self, spec: str, key: rsa.RSAPrivateKey) -> None:
        if key.key_size != _RSA_BITS[spec]:
            raise ValueError("RSA key size does not match its spec")
        self.spec = spec
        self._key = key

    def public_pem(self) -> str:
        return (
            self._key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode("ascii")
        )

    def private_der(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @staticmethod
    def _sign_padding(algorithm: str) -> padding.AsymmetricPadding:
        if algorithm == "RSA_PSS_SHA_256":
            # Salt 32 = the digest length, as KMS signs (§14.4).
            return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        return padding.PKCS1v15()

    def sign(self, algorithm: str, digest: bytes) -> bytes:
        return self._key.sign(digest, self._sign_padding(algorithm), utils.Prehashed(hashes.SHA256()))

    def verify(self, algorithm: str, digest: bytes, signature: bytes) -> bool:
        pad: padding.AsymmetricPadding = self._sign_padding(algorithm)
        if algorithm == "RSA_PSS_SHA_256":  # KMS verifies any salt length
            pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
        try:
            self._key.public_key().verify(signature, digest, pad, utils.Prehashed(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True

    @staticmethod
    def _oaep(algorithm: str) -> padding.OAEP:
        h: Union[hashes.SHA1, hashes.SHA256] = hashes.SHA1() if algorithm == "RSAES_OAEP_SHA_1" else hashes.SHA256()
        return padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)

    def max_plaintext(self, algorithm: str) -> int:
        hash_len = 20 if algorithm == "RSAES_OAEP_SHA_1" else 32
        return self._key.key_size // 8 - 2 * hash_len - 2

    def encrypt(self, algorithm: str, plaintext: bytes) -> bytes:
        return self._key.public_key().encrypt(plaintext, self._oaep(algorithm))

    def decrypt(self, algorithm: str, ciphertext: bytes) -> bytes:
        if len(ciphertext) != self._key.key_size // 8:
            raise DecryptError("ciphertext length is not the modulus length")
        try:
            return self._key.decrypt(ciphertext, self._oaep(algorithm))
        except ValueError:
            raise DecryptError("OAEP decryption failed") from None


class _EcKey(AsymmetricKey):
    def __init__(self, spec: str, key: ec.EllipticCurvePrivateKey) -> None:
        if key.curve.name != _EC_CURVES[spec].name:
            raise ValueError("EC curve does not match its spec")
        self.spec = spec
        self._key = key

    def public_pem(self) -> str:
        return (
            self._key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode("ascii")
        )

    def private_der(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign(self, algorithm: str, digest: bytes) -> bytes:
        return self._key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))

    def verify(self, algorithm: str, digest: bytes, signature: bytes) -> bool:
        try:
            self._key.public_key().verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        except (InvalidSignature, ValueError):
            return False
        return True


class Sm2Key(AsymmetricKey):
    spec = "EC_SM2"

    def __init__(self, d: int) -> None:
        if not 1 <= d <= _N - 2:
            raise ValueError("SM2 private key out of range")
        self._d = d
        public = _mul(d, (_GX, _GY))
        assert public is not None  # d < n
        self.public = public

    def public_der(self) -> bytes:
        return SM2_SPKI_PREFIX + _i2b(self.public[0]) + _i2b(self.public[1])

    def public_pem(self) -> str:
        return _pem(self.public_der(), "PUBLIC KEY")

    def private_der(self) -> bytes:
        return _SM2_PKCS8_PREFIX + _i2b(self._d) + _SM2_PKCS8_MIDDLE + _i2b(self.public[0]) + _i2b(self.public[1])

    @classmethod
    def from_der(cls, der: bytes) -> "Sm2Key":
        start = len(_SM2_PKCS8_PREFIX)
        if (
            len(der) != _SM2_PKCS8_LEN
            or not der.startswith(_SM2_PKCS8_PREFIX)
            or der[start + 32 : start + 32 + len(_SM2_PKCS8_MIDDLE)] != _SM2_PKCS8_MIDDLE
        ):
            raise ValueError("not an SM2 PKCS#8 private key")
        key = cls(int.from_bytes(der[start : start + 32], "big"))
        if not hmac.compare_digest(key.private_der(), der):  # stored point must match d
            raise ValueError("SM2 PKCS#8 public point does not match the private key")
        return key

    def sign(self, algorithm: str, digest: bytes) -> bytes:
        return sm2_sign(self._d, digest)

    def verify(self, algorithm: str, digest: bytes, signature: bytes) -> bool:
        return sm2_verify(self.public, digest, signature)

    def max_plaintext(self, algorithm: str) -> int:
        return SM2_MAX_PLAINTEXT

    def encrypt(self, algorithm: str, plaintext: bytes) -> bytes:
        return sm2_encrypt(self.public, plaintext)

    def decrypt(self, algorithm: str, ciphertext: bytes) -> bytes:
        return sm2_decrypt(self._d, ciphertext)


def generate(spec: str) -> AsymmetricKey:
    """A fresh key pair for ``spec`` (one of :data:`ASYMMETRIC_SPECS`)."""
    if spec in _RSA_BITS:
        return _RsaKey(spec, rsa.generate_private_key(65537, _RSA_BITS[spec]))
    if spec in _EC_CURVES:
        return _EcKey(spec, ec.generate_private_key(_EC_CURVES[spec]))
    if spec == "EC_SM2":
        return Sm2Key(int.from_bytes(os.urandom(40), "big") % (_N - 2) + 1)
    raise ValueError(f"unsupported asymmetric key spec {spec!r}")


def load(spec: str, der: bytes) -> AsymmetricKey:
    """The key pair stored as PKCS#8 DER by :meth:`AsymmetricKey.private_der`."""
    if spec == "EC_SM2":
        return Sm2Key.from_der(der)
    key = serialization.load_der_private_key(der, password=None)
    if spec in _RSA_BITS and isinstance(key, rsa.RSAPrivateKey):
        return _RsaKey(spec, key)
    if spec in _EC_CURVES and isinstance(key, ec.EllipticCurvePrivateKey):
        return _EcKey(spec, key)
    raise ValueError(f"stored key does not match spec {spec!r}")
