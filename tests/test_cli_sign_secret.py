"""`kmsenv sign`, `kmsenv verify`, `kmsenv encrypt/decrypt --secret` and
`kmsenv kms create-key --spec/--usage`, run as a user runs them (a subprocess)
against a LocalKms over real HTTP; no mocks.

Signatures are checked by code independent of kmsenv and of LocalKms's signing
path: `cryptography` for RSA/ECDSA and gmssl for SM2, with public keys fetched
by the official KMS client. Secrets-Manager messages are checked against the
layout (u32 LE IV length || IV || ciphertext || tag) and with
kmsenv.secretmanager called directly, in both directions.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from alibabacloud_kms20160120 import models as M
from alibabacloud_kms20160120.client import Client
from alibabacloud_tea_openapi.models import Config
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from kmsenv.kms import Kms
from kmsenv.localkms import LocalKms
from kmsenv.providers import KmsKeyProvider
from kmsenv import secretmanager

# Reaches no crypto backend, or only through code the backend tests cover: the pure-backend CI pass leaves it out.
pytestmark = pytest.mark.backend_independent

HZ, BJ = "cn-hangzhou", "cn-beijing"
PAIRS = [
    ("RSA_2048", "RSA_PSS_SHA_256"),
    ("RSA_2048", "RSA_PKCS1_SHA_256"),
    ("RSA_3072", "RSA_PSS_SHA_256"),
    ("EC_P256", "ECDSA_SHA_256"),
    ("EC_P256K", "ECDSA_SHA_256"),
    ("EC_SM2", "SM2DSA"),
]
MESSAGE = "签名 this is test.\n".encode() * 1000
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")


class Env:
    def __init__(self, server: LocalKms):
        self.server = server
        self.sign = {spec: server.create_key(HZ, spec) for spec in sorted({s for s, _ in PAIRS})}
        self.ec = {r: server.create_key(r, "EC_P256") for r in (HZ, BJ)}  # failover pair
        self.aes = {r: server.create_key(r) for r in (HZ, BJ)}
        self.vars = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
        self.vars.update(
            KMSENV_KMS_ENDPOINTS=",".join(f"{r}={u}" for r, u in server.endpoints.items()),
            ALIBABA_CLOUD_ACCESS_KEY_ID=server.access_key_id,
            ALIBABA_CLOUD_ACCESS_KEY_SECRET=server.access_key_secret,
        )

    def run(self, *args: str, stdin: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "kmsenv", *args],
            input=stdin,
            capture_output=True,
            env=self.vars if env is None else env,
            timeout=120,
        )

    def version(self, arn: str) -> str:
        (only,) = self.server.key_versions(arn)
        return only

    def pem(self, arn: str) -> str:
        """The public key as the official client fetches it (not through kmsenv)."""
        region = arn.split(":")[2]
        client = Client(
            Config(
                access_key_id=self.server.access_key_id,
                access_key_secret=self.server.access_key_secret,
                endpoint=self.server.hosts[region],
                protocol="http",
                region_id=region,
            )
        )
        request = M.GetPublicKeyRequest(key_id=arn.split("/")[-1], key_version_id=self.version(arn))
        return str(client.get_public_key(request).body.public_key)

    def kms(self) -> Kms:
        return Kms(
            access_key_id=self.server.access_key_id,
            access_key_secret=self.server.access_key_secret,
            endpoints=self.server.endpoints,
            backoff_base=0.001,
            backoff_max=0.005,
        )


@pytest.fixture(scope="module")
def env():
    with LocalKms(regions=[HZ, BJ]) as server:
        yield Env(server)


@pytest.fixture
def healthy(env):
    for r in (HZ, BJ):
        env.server.set_fault(r)
    yield env
    for r in (HZ, BJ):
        env.server.set_fault(r)


def independent_verify(pem: str, algorithm: str, message: bytes, signature: bytes) -> bool:
    """Not kmsenv's code: cryptography for RSA/ECDSA, gmssl (its own Z, ID 1234567812345678) for SM2."""
    if algorithm == "SM2DSA":
        from gmssl import sm2

        der = base64.b64decode("".join(pem.strip().splitlines()[1:-1]))
        assert der[:27].hex() == "3059301306072a8648ce3d020106082a811ccf5501822d03420004"
        crypt = sm2.CryptSM2(private_key=None, public_key="", asn1=True)
        crypt.public_key = der[27:].hex()
        # gmssl's verify_with_sm3 hashes with gmssl's own SM3 (tens of KB/s): the
        # same Z || M (gmssl's curve constants, ID 1234567812345678) through
        # OpenSSL's SM3 instead, then gmssl's verify over that digest.
        t = crypt.ecc_table
        z = sm3(bytes.fromhex("0080" + b"1234567812345678".hex() + t["a"] + t["b"] + t["g"] + crypt.public_key))
        return bool(crypt.verify(signature.hex(), sm3(z + message)))
    key = serialization.load_pem_public_key(pem.encode())
    try:
        if algorithm == "RSA_PSS_SHA_256":
            key.verify(signature, message, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        elif algorithm == "RSA_PKCS1_SHA_256":
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def sm3(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))


def flipped(data: bytes, at: int = -1) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


# ---------------------------------------------------------------- sign and verify


def _sign_file(env, tmp_path: Path, spec: str, algorithm: str) -> tuple[str, Path, Path, str]:
    """Signs MESSAGE with the command; checks it with cryptography/gmssl.
    Returns (arn, data file, signature file, public key PEM)."""
    arn = env.sign[spec]
    data, sig = tmp_path / "data.bin", tmp_path / "data.sig"
    data.write_bytes(MESSAGE)
    out = env.run("sign", "-k", arn, "--algorithm", algorithm, "-o", str(sig), str(data))
    assert out.returncode == 0, out.stderr
    assert out.stdout == b""
    line = out.stderr.decode()
    assert arn in line and env.version(arn) in line and algorithm in line
    signature = sig.read_bytes()
    pem = env.pem(arn)
    assert independent_verify(pem, algorithm, MESSAGE, signature)
    assert not independent_verify(pem, algorithm, MESSAGE + b"!", signature)
    if spec.startswith("RSA_"):
        assert len(signature) == int(spec[4:]) // 8
    return arn, data, sig, pem


def _verify_ways(arn: str, pem_file: Path) -> dict[str, tuple[str, ...]]:
    return {
        "local PEM": ("--public-key", str(pem_file)),
        "KMS public key": ("-k", arn),
        "AsymmetricVerify": ("-k", arn, "--kms-verify"),
    }


def _altered(tmp_path: Path, sig: Path) -> tuple[Path, Path]:
    bad_data = tmp_path / "altered.bin"
    bad_data.write_bytes(flipped(MESSAGE, 7))
    signature = sig.read_bytes()
    bad_sig = tmp_path / "altered.sig"
    bad_sig.write_bytes(flipped(signature, len(signature) // 2))
    return bad_data, bad_sig


def _expect_refused(env, algorithm: str, key_args: tuple[str, ...], sig: Path, data: Path, why: object) -> None:
    bad = env.run("verify", "--signature", str(sig), "-a", algorithm, *key_args, str(data))
    assert bad.returncode == 4, (why, bad.stderr)
    assert b"signature does not verify" in bad.stderr


@pytest.mark.parametrize("spec,algorithm", PAIRS, ids=[f"{s}-{a}" for s, a in PAIRS])
def test_sign_and_verify_each_algorithm(env, tmp_path, spec, algorithm):
    """Every algorithm: signed, verified three ways, and an altered signature
    (checked locally) and altered data (checked by KMS) refused. Every way
    against every alteration: test_each_way_refuses_each_alteration."""
    arn, data, sig, pem = _sign_file(env, tmp_path, spec, algorithm)
    pem_file = tmp_path / "key.pem"
    pem_file.write_text(pem)
    ways = _verify_ways(arn, pem_file)
    for how, key_args in ways.items():
        good = env.run("verify", "--signature", str(sig), "-a", algorithm, *key_args, str(data))
        assert good.returncode == 0, (how, good.stderr)
        assert b"signature verified" in good.stderr
    bad_data, bad_sig = _altered(tmp_path, sig)
    _expect_refused(env, algorithm, ways["local PEM"], bad_sig, data, "local PEM, altered signature")
    _expect_refused(env, algorithm, ways["AsymmetricVerify"], sig, bad_data, "AsymmetricVerify, altered data")


def test_each_way_refuses_each_alteration(env, tmp_path):
    spec, algorithm = "EC_P256", "ECDSA_SHA_256"
    arn, data, sig, pem = _sign_file(env, tmp_path, spec, algorithm)
    pem_file = tmp_path / "key.pem"
    pem_file.write_text(pem)
    bad_data, bad_sig = _altered(tmp_path, sig)
    for how, key_args in _verify_ways(arn, pem_file).items():
        for what, s, d in (("data", sig, bad_data), ("signature", bad_sig, data)):
            _expect_refused(env, algorithm, key_args, s, d, (how, what))


def test_algorithm_defaults_from_the_key(env, tmp_path):
    """No --algorithm: RSA keys sign RSA-PSS (checked independently); a PKCS#1
    signature then needs --algorithm to verify, and the error says so."""
    arn = env.sign["RSA_2048"]
    out = env.run("sign", "-k", arn, stdin=MESSAGE)
    assert out.returncode == 0, out.stderr
    assert b"RSA_PSS_SHA_256" in out.stderr
    pem = env.pem(arn)
    assert independent_verify(pem, "RSA_PSS_SHA_256", MESSAGE, out.stdout)
    assert not independent_verify(pem, "RSA_PKCS1_SHA_256", MESSAGE, out.stdout)

    pkcs1 = env.run("sign", "-k", arn, "-a", "rsa-pkcs1-sha-256", stdin=MESSAGE)
    assert pkcs1.returncode == 0, pkcs1.stderr
    assert independent_verify(pem, "RSA_PKCS1_SHA_256", MESSAGE, pkcs1.stdout)
    sig = tmp_path / "pkcs1.sig"
    sig.write_bytes(pkcs1.stdout)
    default = env.run("verify", "--signature", str(sig), "-k", arn, stdin=MESSAGE)
    assert default.returncode == 4
    assert b"RSA_PKCS1_SHA_256" in default.stderr  # the hint
    assert (
        env.run("verify", "--signature", str(sig), "-k", arn, "-a", "RSA_PKCS1_SHA_256", stdin=MESSAGE).returncode == 0
    )


def test_base64_output_and_stdin(env, tmp_path):
    arn = env.sign["EC_SM2"]
    out = env.run("sign", "-k", arn, "--base64", "-", stdin=MESSAGE)
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode("ascii")
    assert text.endswith("\n") and text.count("\n") == 1
    signature = base64.b64decode(text, validate=False)
    assert base64.b64encode(signature).decode() + "\n" == text
    assert independent_verify(env.pem(arn), "SM2DSA", MESSAGE, signature)

    # inline base64, data on stdin
    inline = env.run("verify", "--signature-base64", text.strip(), "-k", arn, stdin=MESSAGE)
    assert inline.returncode == 0, inline.stderr
    assert env.run("verify", "--signature-base64", text.strip(), "-k", arn, stdin=MESSAGE[:-1]).returncode == 4
    # a base64 file wrapped at 76 columns (`base64`'s layout), data from -i
    data = tmp_path / "m"
    data.write_bytes(MESSAGE)
    wrapped = tmp_path / "sig.b64"
    wrapped.write_text("\n".join(textwrap.wrap(text.strip(), 76)) + "\n")
    ok = env.run("verify", "--signature", str(wrapped), "--base64", "-k", arn, "-i", str(data))
    assert ok.returncode == 0, ok.stderr
    # raw and base64 are never guessed: the base64 file read as raw bytes is no signature
    assert env.run("verify", "--signature", str(wrapped), "-k", arn, str(data)).returncode == 4
    # not base64 at all: a usage error, not "does not verify"
    junk = env.run("verify", "--signature-base64", "not*base64", "-k", arn, str(data))
    assert junk.returncode == 2 and b"not base64" in junk.stderr


def test_digest_mode(env, tmp_path):
    arn = env.sign["EC_P256"]
    digest = hashlib.sha256(MESSAGE).digest()
    out = env.run("sign", "-k", arn, "--digest", "-a", "ECDSA_SHA_256", stdin=digest)
    assert out.returncode == 0, out.stderr
    assert independent_verify(env.pem(arn), "ECDSA_SHA_256", MESSAGE, out.stdout)
    sig = tmp_path / "d.sig"
    sig.write_bytes(out.stdout)
    assert env.run("verify", "--signature", str(sig), "-k", arn, "--digest", stdin=digest).returncode == 0
    assert env.run("verify", "--signature", str(sig), "-k", arn, stdin=MESSAGE).returncode == 0
    assert env.run("verify", "--signature", str(sig), "-k", arn, "--digest", stdin=flipped(digest)).returncode == 4
    short = env.run("sign", "-k", arn, "--digest", stdin=digest[:31])
    assert short.returncode == 2 and b"32-byte digest" in short.stderr
    assert short.stdout == b""


def test_failover_when_the_first_region_is_down(healthy, tmp_path):
    env = healthy
    hz, bj = env.ec[HZ], env.ec[BJ]
    data = tmp_path / "data"
    data.write_bytes(MESSAGE)
    sig = tmp_path / "sig"
    pems = {r: env.pem(arn) for r, arn in env.ec.items()}
    env.server.set_fault(HZ, down=True)
    out = env.run("sign", "-k", hz, "-k", bj, "-o", str(sig), str(data))
    assert out.returncode == 0, out.stderr
    assert bj in out.stderr.decode() and f"signed with {hz}" not in out.stderr.decode()
    signature = sig.read_bytes()
    assert independent_verify(pems[BJ], "ECDSA_SHA_256", MESSAGE, signature)
    assert not independent_verify(pems[HZ], "ECDSA_SHA_256", MESSAGE, signature)
    # Verifying while Hangzhou is still down: Beijing's key verifies it.
    ok = env.run("verify", "--signature", str(sig), "-k", hz, "-k", bj, str(data))
    assert ok.returncode == 0, ok.stderr
    assert bj in ok.stderr.decode()
    # A signature no reachable key verifies: Hangzhou's key might have made it,
    # so the answer is "could not check" (3), not "does not verify" (4).
    bad = env.run("verify", "--signature", str(sig), "-k", hz, "-k", bj, stdin=MESSAGE + b"x")
    assert bad.returncode == 3, bad.stderr
    env.server.set_fault(HZ)
    assert env.run("verify", "--signature", str(sig), "-k", hz, "-k", bj, stdin=MESSAGE + b"x").returncode == 4
    # Every region down: nothing signed, nothing written.
    env.server.set_fault(HZ, down=True)
    env.server.set_fault(BJ, down=True)
    out = env.run("sign", "-k", hz, "-k", bj, "-o", str(tmp_path / "none.sig"), str(data))
    assert out.returncode == 3, out.stderr
    assert not (tmp_path / "none.sig").exists() and leftovers(tmp_path) == []


def test_sign_output_is_safe(healthy, tmp_path):
    env = healthy
    arn = env.sign["EC_P256"]
    data = tmp_path / "data"
    data.write_bytes(MESSAGE)
    # never over the input
    same = env.run("sign", "-k", arn, "-o", str(data), str(data))
    assert same.returncode == 2 and data.read_bytes() == MESSAGE
    # never through a symbolic link
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    (tmp_path / "link").symlink_to(target)
    link = env.run("sign", "-k", arn, "-o", str(tmp_path / "link"), str(data))
    assert link.returncode == 2 and b"symbolic link" in link.stderr
    assert target.read_bytes() == b"keep"
    # a failed sign (a key that cannot sign: symmetric) leaves the old file as it was
    old = tmp_path / "old.sig"
    old.write_bytes(b"previous signature")
    failed = env.run("sign", "-k", env.aes[HZ], "-a", "ECDSA_SHA_256", "-o", str(old), str(data))
    assert failed.returncode == 3, failed.stderr
    assert b"nothing was written" in failed.stderr
    assert old.read_bytes() == b"previous signature"
    assert leftovers(tmp_path) == []
    # a new signature replaces it whole
    assert env.run("sign", "-k", arn, "-o", str(old), str(data)).returncode == 0
    assert independent_verify(env.pem(arn), "ECDSA_SHA_256", MESSAGE, old.read_bytes())
    assert leftovers(tmp_path) == []


def test_verify_usage_errors(env, tmp_path):
    arn = env.sign["EC_P256"]
    sig = tmp_path / "sig"
    sig.write_bytes(b"0" * 70)
    assert env.run("verify", "--signature", str(sig), stdin=MESSAGE).returncode == 2  # neither key nor PEM
    pem = tmp_path / "key.pem"
    pem.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    bad_pem = env.run("verify", "--signature", str(sig), "--public-key", str(pem), stdin=MESSAGE)
    assert bad_pem.returncode == 2, bad_pem.stderr
    pem.write_text(env.pem(arn))
    both = env.run("verify", "--signature", str(sig), "--public-key", str(pem), "-k", arn, stdin=MESSAGE)
    assert both.returncode == 2
    rsa_alg = env.run("verify", "--signature", str(sig), "--public-key", str(pem), "-a", "RSA_PSS_SHA_256")
    assert rsa_alg.returncode == 2  # an EC key cannot verify RSA
    assert env.run("verify", "--signature", str(sig), "--public-key", str(pem), "-a", "DSA").returncode == 2
    assert env.run("verify", "--signature", "-", "--public-key", str(pem), stdin=b"x").returncode == 2


# ---------------------------------------------------------------- encrypt/decrypt --secret


def secret_provider(env, name: str) -> secretmanager.SecretManagerDataKeyProvider:
    return secretmanager.SecretManagerDataKeyProvider(KmsKeyProvider(env.aes[HZ], env.aes[BJ], kms=env.kms()), name)


def test_secret_round_trip(healthy, tmp_path):
    env = healthy
    name = f"cli/{uuid.uuid4().hex[:10]}"
    keys = ("-k", env.aes[HZ], "-k", env.aes[BJ])
    src = tmp_path / "plain.bin"
    plaintext = os.urandom(300_000)
    src.write_bytes(plaintext)
    enc = tmp_path / "plain.bin.kmsenv"
    meta = tmp_path / "meta.jsonl"
    out = env.run(
        "encrypt", *keys, "--secret", name, "--create-secret", "-c", "app=cli",
        "-i", str(src), "-o", str(enc), "--metadata-output", str(meta),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    message = enc.read_bytes()
    # the stream layout: u32 LE IV length (12) || IV || ciphertext || 16-byte tag
    assert struct.unpack("<I", message[:4])[0] == 12
    assert len(message) == 4 + 12 + len(plaintext) + 16
    assert plaintext[:64] not in message
    assert b'"secret-manager-stream"' in meta.read_bytes()

    dec = tmp_path / "plain.out"
    out = env.run("decrypt", "-k", env.aes[BJ], "--secret", name, "-i", str(enc), "-o", str(dec))
    assert out.returncode == 0, out.stderr
    assert dec.read_bytes() == plaintext
    # kmsenv.secretmanager reads the command's message...
    sink = _Sink()
    secretmanager.decrypt_stream(open(enc, "rb"), sink, secret_provider(env, name))
    assert bytes(sink.data) == plaintext
    # ...and the command reads the library's (stdin to stdout).
    provider = secret_provider(env, name)
    body = bytearray()
    lib_sink = _Sink(body)
    secretmanager.encrypt_stream(_Reader(b"from the library"), lib_sink, provider, encryption_context={"app": "cli"})
    out = env.run("decrypt", *keys, "--secret", name, "-i", "-", "-o", "-", stdin=bytes(body))
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"from the library"
    # After a rotation old messages still decrypt (a file input: older versions are tried).
    provider.rotate()
    out = env.run("decrypt", *keys, "--secret", name, "-i", str(enc), "-o", str(tmp_path / "after-rotation"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "after-rotation").read_bytes() == plaintext
    # the existing secret fixes the context: another -c is refused, nothing written
    other = env.run("encrypt", *keys, "--secret", name, "-c", "app=other", "-i", str(src), "-o", str(tmp_path / "x"))
    assert other.returncode == 2 and b"context" in other.stderr
    assert not (tmp_path / "x").exists()
    assert leftovers(tmp_path) == []


class _Sink:
    def __init__(self, data: bytearray | None = None):
        self.data = bytearray() if data is None else data

    def write(self, b) -> int:
        self.data += b
        return len(b)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n is None or n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos : end], min(end, len(self.data))
        return chunk

    def readinto(self, buf) -> int:
        chunk = self.read(len(buf))
        buf[: len(chunk)] = chunk
        return len(chunk)


def test_secret_errors_leave_no_output(healthy, tmp_path):
    env = healthy
    name = f"cli/{uuid.uuid4().hex[:10]}"
    src = tmp_path / "plain"
    src.write_bytes(b"secret data" * 100)
    enc = tmp_path / "enc"
    # a secret that does not exist is not created without --create-secret
    missing = env.run("encrypt", "-k", env.aes[HZ], "--secret", name, "-i", str(src), "-o", str(enc))
    assert missing.returncode == 3, missing.stderr
    assert b"--create-secret" in missing.stderr and name.encode() in missing.stderr
    assert not enc.exists()
    out = env.run("encrypt", "-k", env.aes[HZ], "--secret", name, "--create-secret", "-i", str(src), "-o", str(enc))
    assert out.returncode == 0, out.stderr
    # the wrong secret name on decrypt: a clear error, no output file
    dec = tmp_path / "dec"
    wrong = env.run("decrypt", "-k", env.aes[HZ], "--secret", name + "-typo", "-i", str(enc), "-o", str(dec))
    assert wrong.returncode == 3
    assert b"does not exist" in wrong.stderr and b"--secret" in wrong.stderr
    assert b"nothing was written" in wrong.stderr
    assert not dec.exists()
    # a tampered message: exit 4, the existing output untouched
    dec.write_bytes(b"old")
    tampered = tmp_path / "tampered"
    tampered.write_bytes(flipped(enc.read_bytes(), 40))
    bad = env.run("decrypt", "-k", env.aes[HZ], "--secret", name, "-i", str(tampered), "-o", str(dec))
    assert bad.returncode == 4, bad.stderr
    assert dec.read_bytes() == b"old"
    assert leftovers(tmp_path) == []
    # options that make no sense with --secret
    for args in (
        ("encrypt", "-k", env.aes[HZ], "--secret", name, "--format", "alibaba"),
        ("encrypt", "-k", env.aes[HZ], "--create-secret"),
        ("decrypt", "-k", env.aes[HZ], "--secret", name, "-c", "a=b"),
        ("decrypt", "--discovery", "--secret", name),
    ):
        usage = env.run(*args, "-i", str(src), "-o", str(tmp_path / "never"))
        assert usage.returncode == 2, (args, usage.stderr)
        assert not (tmp_path / "never").exists()


# ---------------------------------------------------------------- kms create-key --spec/--usage


def test_create_key_spec_and_usage(tmp_path):
    state = tmp_path / "state"
    env_vars = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}

    def create(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "kmsenv", "kms", "create-key", "--region", HZ, "--state", str(state), *args],
            capture_output=True,
            env=env_vars,
            timeout=60,
        )

    made = {}
    for spec, usage in (("EC_P256", None), ("EC_SM2", None), ("RSA_2048", "ENCRYPT/DECRYPT"), (None, None)):
        out = create(*(("--spec", spec) if spec else ()), *(("--usage", usage) if usage else ()))
        assert out.returncode == 0, out.stderr
        made[spec] = out.stdout.decode().strip()
        assert made[spec].startswith(f"acs:kms:{HZ}:")
    for spec, usage in (("EC_P256", "ENCRYPT/DECRYPT"), ("Aliyun_AES_256", "SIGN/VERIFY")):
        refused = create("--spec", spec, "--usage", usage)
        assert refused.returncode == 2 and b"cannot have usage" in refused.stderr
    assert create("--spec", "RSA_4096").returncode == 2

    with LocalKms(regions=[HZ], state_dir=str(state)) as server:
        client = Client(
            Config(
                access_key_id=server.access_key_id,
                access_key_secret=server.access_key_secret,
                endpoint=server.hosts[HZ],
                protocol="http",
                region_id=HZ,
            )
        )

        def described(arn: str) -> tuple[str, str]:
            meta = client.describe_key(M.DescribeKeyRequest(key_id=arn.split("/")[-1])).body.key_metadata
            return meta.key_spec, meta.key_usage

        assert described(made["EC_P256"]) == ("EC_P256", "SIGN/VERIFY")
        assert described(made["EC_SM2"]) == ("EC_SM2", "SIGN/VERIFY")
        assert described(made["RSA_2048"]) == ("RSA_2048", "ENCRYPT/DECRYPT")
        assert described(made[None]) == ("Aliyun_AES_256", "ENCRYPT/DECRYPT")
        # the key made by the command signs through the command
        cli_env = dict(
            env_vars,
            KMSENV_KMS_ENDPOINTS=f"{HZ}={server.endpoints[HZ]}",
            ALIBABA_CLOUD_ACCESS_KEY_ID=server.access_key_id,
            ALIBABA_CLOUD_ACCESS_KEY_SECRET=server.access_key_secret,
        )
        run = [sys.executable, "-m", "kmsenv", "sign", "-k", made["EC_SM2"]]
        out = subprocess.run(run, input=MESSAGE, capture_output=True, env=cli_env, timeout=60)
        assert out.returncode == 0, out.stderr
        (version,) = server.key_versions(made["EC_SM2"])
        pem = client.get_public_key(
            M.GetPublicKeyRequest(key_id=made["EC_SM2"].split("/")[-1], key_version_id=version)
        ).body.public_key
        assert independent_verify(pem, "SM2DSA", MESSAGE, out.stdout)


def test_large_input_signed_in_chunks(env, tmp_path):
    """Inputs over the 1 MiB read size: hashed as they stream by (explicit
    SHA-256 algorithm) or held whole (SM2, whose digest needs Z first)."""
    data = tmp_path / "big"
    payload = os.urandom(3 * 1024 * 1024 + 17)
    data.write_bytes(payload)
    for spec, algorithm in (("EC_P256K", "ECDSA_SHA_256"), ("EC_SM2", "SM2DSA")):
        arn = env.sign[spec]
        out = env.run("sign", "-k", arn, "-a", algorithm, str(data))
        assert out.returncode == 0, out.stderr
        assert independent_verify(env.pem(arn), algorithm, payload, out.stdout)
        sig = tmp_path / f"{spec}.sig"
        sig.write_bytes(out.stdout)
        assert env.run("verify", "--signature", str(sig), "-k", arn, str(data)).returncode == 0
        assert env.run("verify", "--signature", str(sig), "-k", arn, stdin=payload[:-1]).returncode == 4


def test_sigterm_while_signing_leaves_no_file(healthy, tmp_path):
    """The temporary output exists while KMS answers slowly; SIGTERM removes it
    and exits 143, as encrypt does."""
    env = healthy
    data = tmp_path / "data"
    data.write_bytes(MESSAGE)
    target = tmp_path / "out.sig"
    env.server.set_fault(HZ, latency_ms=5000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kmsenv", "sign", "-k", env.sign["EC_P256"], "-o", str(target), str(data)],
        env=env.vars,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not leftovers(tmp_path) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert leftovers(tmp_path), "the temporary output never appeared"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert leftovers(tmp_path) == [] and not target.exists()
