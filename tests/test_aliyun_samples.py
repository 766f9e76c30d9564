"""The official Python SDK's seven samples, through kmsenv.aliyun, against LocalKms over HTTP.

Each test is a copy of the logic of one sample of
``aliyun/alibabacloud-encryption-sdk-python`` (``examples/src/...``): the same
calls in the same order, with the import changed to ``kmsenv.aliyun`` and the
outside services replaced (LocalKms for KMS, an in-memory bucket for OSS,
sqlite3 for MySQL). Around the sample calls the tests check what the samples
only print: that the plaintext comes back, which KMS calls were made, what was
stored, and that signatures verify independently of kmsenv.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import sqlite3
import time

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import NameOID

import kmsenv
from kmsenv import secretmanager
from kmsenv.aliyun.cache.local import LocalDataKeyMaterialCache
from kmsenv.aliyun.ckm.cache import CachingCryptoKeyManager
from kmsenv.aliyun.client import AliyunCrypto
from kmsenv.aliyun.kms import AliyunConfig, FullJitterBackoffStrategy
from kmsenv.aliyun.model import ContentType, SignatureAlgorithm
from kmsenv.aliyun.provider.default import DefaultDataKeyProvider
from kmsenv.aliyun.provider.secret_manager import SecretManagerDataKeyProvider
from kmsenv.aliyun.provider.signature.base import KmsAsymmetricKeyProvider
from kmsenv.aliyun.provider.signature.verifier import CertificateVerifier, KmsVerifier, PublicKeyVerifier
from kmsenv.arn import Arn
from kmsenv.kms import ENDPOINTS_ENV, Kms
from kmsenv.message.codec import decode_message

from kms_fixtures import *  # noqa: F401,F403
from kms_fixtures import HZ, SH

ENCRYPTION_CONTEXT = {"this": "context", "can help you": "to confirm", "this data": "is your original data"}


@pytest.fixture
def env(local_kms, clean_faults, monkeypatch):
    """What the samples read from the environment: credentials, and LocalKms's endpoints."""
    monkeypatch.setenv(ENDPOINTS_ENV, ",".join(f"{r}={u}" for r, u in local_kms.endpoints.items()))
    return local_kms


def build_aliyun_crypto(local_kms, cache=False):
    config = AliyunConfig(local_kms.access_key_id, local_kms.access_key_secret)
    # The samples keep the default backoff; shortened so that no test waits on it.
    config.backoff_strategy = FullJitterBackoffStrategy(1, 5)
    client = AliyunCrypto(config)
    if cache:
        client.crypto_key_manager = CachingCryptoKeyManager(LocalDataKeyMaterialCache(), 5)
    return client


def calls(local_kms) -> dict[tuple[str, str], int]:
    return {(r, a): n for r, actions in local_kms.stats().items() for a, n in actions.items()}


def delta(before: dict, after: dict) -> dict[tuple[str, str], int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after) if after.get(k, 0) != before.get(k)}


# ---------------------------------------------------------------- basic_encryption.py


def test_basic_encryption_sample(env, cmks):
    local_kms, aes_key_arn, plain_text = env, cmks.hz, "some plaintext"

    def encrypt_sample():
        provider = DefaultDataKeyProvider(aes_key_arn)
        client = build_aliyun_crypto(local_kms, False)
        cipher_text, enc_material = client.encrypt(provider, plain_text.encode("utf-8"), ENCRYPTION_CONTEXT)
        return base64.standard_b64encode(cipher_text).decode("utf-8"), enc_material

    def decrypt_sample(cipher_text):
        cipher_text_bytes = base64.standard_b64decode(cipher_text.encode("utf-8"))
        provider = DefaultDataKeyProvider(aes_key_arn)
        client = build_aliyun_crypto(local_kms, False)
        plain, dec_material = client.decrypt(provider, cipher_text_bytes)
        return plain, dec_material

    before = calls(local_kms)
    cipher_text, enc_material = encrypt_sample()
    plain, dec_material = decrypt_sample(cipher_text)
    assert bytes.decode(plain) == plain_text
    assert dict(enc_material.encryption_context) == ENCRYPTION_CONTEXT
    assert {e.key_arn.decode() for e in dec_material.encrypted_data_keys} == {aes_key_arn}
    assert delta(before, calls(local_kms)) == {(HZ, "GenerateDataKey"): 1, (HZ, "Decrypt"): 1}


# ---------------------------------------------------------------- cache/cache_encrypt_sample.py


def test_cache_encrypt_sample(env, cmks):
    local_kms, aes_key_arn = env, cmks.hz

    def encrypt_with_caching(plain_data):
        config = AliyunConfig(local_kms.access_key_id, local_kms.access_key_secret)
        client = AliyunCrypto(config)
        client.crypto_key_manager = CachingCryptoKeyManager(LocalDataKeyMaterialCache(), 10)
        client.crypto_key_manager.max_encryption_bytes = 1024
        client.crypto_key_manager.max_encryption_messages = 10
        key_provider = DefaultDataKeyProvider(aes_key_arn)
        cipher_text, enc_material = client.encrypt(key_provider, plain_data.encode("utf-8"), ENCRYPTION_CONTEXT)
        return base64.standard_b64encode(cipher_text).decode("utf-8"), client

    def decrypt_with_caching(cipher_text_str):
        cipher_text_bytes = base64.standard_b64decode(cipher_text_str.encode("utf-8"))
        config = AliyunConfig(local_kms.access_key_id, local_kms.access_key_secret)
        client = AliyunCrypto(config)
        client.crypto_key_manager = CachingCryptoKeyManager(LocalDataKeyMaterialCache(), 10)
        client.crypto_key_manager.max_encryption_bytes = 1024
        client.crypto_key_manager.max_encryption_messages = 10
        key_provider = DefaultDataKeyProvider(aes_key_arn)
        plain_text, dec_material = client.decrypt(key_provider, cipher_text_bytes)
        return bytes.decode(plain_text)

    before = calls(local_kms)
    cipher_text, client = encrypt_with_caching("My plaintext data")
    assert decrypt_with_caching(cipher_text) == "My plaintext data"
    assert delta(before, calls(local_kms)) == {(HZ, "GenerateDataKey"): 1, (HZ, "Decrypt"): 1}
    # Beyond the sample: the same client reuses the cached key within its limits.
    provider = DefaultDataKeyProvider(aes_key_arn)
    mid = calls(local_kms)
    for _ in range(5):
        client.encrypt(provider, b"x" * 100, ENCRYPTION_CONTEXT)
    assert delta(mid, calls(local_kms)) == {}
    client.encrypt(provider, b"x" * 600, ENCRYPTION_CONTEXT)  # past max_encryption_bytes: a new key
    assert delta(mid, calls(local_kms)) == {(HZ, "GenerateDataKey"): 1}


# ---------------------------------------------------------------- multi/multi_cmk_sample.py


def test_multi_cmk_sample(env, cmks):
    local_kms, plain_text = env, "test_plain_text"
    aes_key_arn = cmks.hz
    multi_region_key_arns = [cmks.bj, cmks.sh]
    same_region_key_arns = [cmks.hz2]

    def encrypt_sample(multi_keys):
        provider = DefaultDataKeyProvider(aes_key_arn)
        provider.add_multi_cmk_id(multi_keys)
        client = build_aliyun_crypto(local_kms, False)
        cipher_text, enc_material = client.encrypt(provider, plain_text.encode("utf-8"), ENCRYPTION_CONTEXT)
        return base64.standard_b64encode(cipher_text).decode("utf-8")

    def decrypt_sample(cipher_text, key_id):
        cipher_text_bytes = base64.standard_b64decode(cipher_text.encode())
        client = build_aliyun_crypto(local_kms, False)
        provider = DefaultDataKeyProvider(key_id)
        plain, dec_material = client.decrypt(provider, cipher_text_bytes)
        return plain

    keys = multi_region_key_arns[:]
    cipher_text1 = encrypt_sample(keys)
    assert keys == multi_region_key_arns  # the caller's list is only read
    header, _ = decode_message(base64.b64decode(cipher_text1))
    assert {e.key_arn for e in header.encrypted_data_keys} == {aes_key_arn, *multi_region_key_arns}
    for key_arn in multi_region_key_arns:
        before = calls(local_kms)
        assert decrypt_sample(cipher_text1, key_arn) == plain_text.encode()
        region = Arn.parse(key_arn).region
        assert delta(before, calls(local_kms)) == {(region, "Decrypt"): 1}  # the named CMK's own region
    cipher_text2 = encrypt_sample(same_region_key_arns[:])
    for key_arn in same_region_key_arns:
        assert decrypt_sample(cipher_text2, key_arn) == plain_text.encode()


# ---------------------------------------------------------------- oss/oss_encryption_sample.py


class _Object:
    def __init__(self, data: bytes):
        self._data = data

    def read(self) -> bytes:
        return self._data


class MemoryBucket:
    """``oss2.Bucket``'s two calls the sample makes, in memory."""

    def __init__(self):
        self.objects: dict[str, bytes] = {}

    def put_object(self, key: str, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.objects[key] = data

    def get_object(self, key: str) -> _Object:
        return _Object(self.objects[key])


def test_oss_encryption_sample(env, cmks):
    local_kms, aes_key_arn = env, cmks.hz
    content = "jdjfhdus6182042795hlnf12s8yhfs976y2nfoshhnsdfsf235bvsmnhtskbcfd!"
    results = {}

    def upload_with_encrypted(bucket, content, file_path):
        client = build_aliyun_crypto(local_kms)
        provider = DefaultDataKeyProvider(aes_key_arn)
        cipher_text, enc_material = client.encrypt(provider, content.encode("utf-8"), ENCRYPTION_CONTEXT)
        bucket.put_object(file_path, cipher_text)

    def download_with_decrypted(bucket, file_path):
        object_stream = bucket.get_object(file_path)
        cipher_text = object_stream.read()
        client = build_aliyun_crypto(local_kms)
        provider = DefaultDataKeyProvider(aes_key_arn)
        plain_text, dec_material = client.decrypt(provider, cipher_text)
        results["plain"] = bytes.decode(plain_text)

    bucket = MemoryBucket()
    current_date = datetime.datetime.now()
    file_path = f"test/{current_date.year}/{current_date.month}/{current_date.day}/{int(round(time.time() * 1000))}.txt"
    upload_with_encrypted(bucket, content, file_path)
    stored = bucket.objects[file_path]
    assert content.encode() not in stored
    provider = kmsenv.KmsKeyProvider(aes_key_arn, kms=Kms(**_kms_args(local_kms)))
    assert kmsenv.decrypt(stored, provider).plaintext == content.encode()
    download_with_decrypted(bucket, file_path)
    assert results["plain"] == content


def _kms_args(local_kms) -> dict:
    return {
        "access_key_id": local_kms.access_key_id,
        "access_key_secret": local_kms.access_key_secret,
        "endpoints": local_kms.endpoints,
    }


# ---------------------------------------------------------------- rds/rds_sample.py


def test_rds_sample(env, cmks, tmp_path):
    local_kms, aes_key_arn = env, cmks.hz
    db_path = tmp_path / "user.db"
    with sqlite3.connect(db_path) as conn:
        conn.execute("create table user(id integer primary key autoincrement, name text, email text)")

    def build(cache=False):
        return build_aliyun_crypto(local_kms, cache)

    def enc_convert():
        def enc_(func):
            def wrapper(self, plain_text):
                provider = DefaultDataKeyProvider(aes_key_arn)
                client = build(False)
                cipher_text, enc_material = client.encrypt(provider, plain_text.encode("utf-8"), ENCRYPTION_CONTEXT)
                cipher_text_str = base64.standard_b64encode(cipher_text).decode("utf-8")
                return func(self, cipher_text_str)

            return wrapper

        return enc_

    def dec_convert(column_name):
        def dec_(func):
            def wrapper(self):
                user = self.__dict__
                cipher_text = user.get(column_name)
                cipher_text_bytes = base64.standard_b64decode(cipher_text.encode("utf-8"))
                provider = DefaultDataKeyProvider(aes_key_arn)
                client = build(False)
                plain_text, dec_material = client.decrypt(provider, cipher_text_bytes)
                user[column_name] = bytes.decode(plain_text)
                result = User()
                result.__dict__ = user
                return func(result)

            return wrapper

        return dec_

    class User:
        @dec_convert(column_name="name")
        def get_name(self):
            return self.name

        @enc_convert()
        def set_name(self, value):
            self.name = value

        @dec_convert(column_name="email")
        def get_email(self):
            return self.email

        @enc_convert()
        def set_email(self, value):
            self.email = value

    def user_add(user):
        conn = sqlite3.connect(db_path)
        cursor = conn.execute("insert into user(name, email) values(?, ?)", [user.name, user.email])
        conn.commit()
        last_id = cursor.lastrowid
        conn.close()
        return last_id

    def user_select_by_id(id):
        conn = sqlite3.connect(db_path)
        conn.row_factory = sqlite3.Row
        result = dict(conn.execute("select * from user where id = ?", [id]).fetchone())
        conn.close()
        user = User()
        user.__dict__ = result
        return user

    user = User()
    user.set_name("test")
    user.set_email("test@example.com")
    last_insert_id = user_add(user)
    with sqlite3.connect(db_path) as conn:
        stored = conn.execute("select name, email from user").fetchall()
    assert all(b"test" not in base64.b64decode(column) for row in stored for column in row)
    user = user_select_by_id(last_insert_id)
    assert user.get_name() == "test"
    assert user.get_email() == "test@example.com"


# ---------------------------------------------------------------- sign_verify/sign_verify_sample.py


@pytest.fixture(scope="module")
def rsa_sign_key(local_kms):
    arn = local_kms.create_key(HZ, "RSA_2048", key_usage="SIGN/VERIFY")
    (version,) = local_kms.key_versions(arn)
    return arn, version


def _public_pem(local_kms, arn, version) -> str:
    return Kms(**_kms_args(local_kms)).get_public_key(arn, version)


def _certificate_for(public_pem: str) -> bytes:
    """A certificate for the KMS key's public key, issued by a throwaway CA
    (the sample's RSA_SIGN_VERIFY_PUBLIC_CERT)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kmsenv test CA")])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kms signing key")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(name)
        .public_key(serialization.load_pem_public_key(public_pem.encode()))
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())  # the issuer signs with ECDSA: says nothing of the key's algorithm
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_sign_verify_sample(env, rsa_sign_key):
    local_kms = env
    key_arn, key_version = rsa_sign_key
    public_pem = _public_pem(local_kms, key_arn, key_version)
    public_cert = _certificate_for(public_pem).decode()
    plain_text = "test_plain_text"

    def sign_verify_with_kms_sample():
        provider = KmsAsymmetricKeyProvider(key_arn, key_version, SignatureAlgorithm.RSA_PKCS1_SHA_256)
        client = build_aliyun_crypto(local_kms)
        signed_result = client.sign(provider, plain_text.encode("utf-8"), ContentType.MESSAGE)
        verify_result = client.verify(provider, plain_text.encode("utf-8"), signed_result, ContentType.MESSAGE)
        assert verify_result is True
        sha256_digest = hashlib.sha256(plain_text.encode("utf-8")).digest()
        signed_digest = client.sign(provider, sha256_digest, ContentType.DIGEST)
        assert client.verify(provider, sha256_digest, signed_digest, ContentType.DIGEST) is True
        return signed_result, signed_digest

    def public_key_verifier_sample():
        provider = KmsAsymmetricKeyProvider(
            key_arn, key_version_id=key_version, signature_algorithm=SignatureAlgorithm.RSA_PKCS1_SHA_256
        )
        client = build_aliyun_crypto(local_kms)
        signed_result = client.sign(provider, plain_text.encode("utf-8"), ContentType.MESSAGE)
        verifier = PublicKeyVerifier(SignatureAlgorithm.RSA_PKCS1_SHA_256, public_pem.encode())
        before = calls(local_kms)
        assert client.verify(verifier, plain_text.encode("utf-8"), signed_result, ContentType.MESSAGE) is True
        assert delta(before, calls(local_kms)) == {}  # verified locally
        return signed_result

    def certificate_verifier_sample():
        provider = KmsAsymmetricKeyProvider(
            key_arn, key_version_id=key_version, signature_algorithm=SignatureAlgorithm.RSA_PKCS1_SHA_256
        )
        client = build_aliyun_crypto(local_kms)
        signed_result = client.sign(provider, plain_text.encode("utf-8"), ContentType.MESSAGE)
        verifier = CertificateVerifier(public_cert.encode())
        assert verifier.signature_algorithm is SignatureAlgorithm.RSA_PKCS1_SHA_256
        assert client.verify(verifier, plain_text.encode("utf-8"), signed_result, ContentType.MESSAGE) is True
        return signed_result

    before = calls(local_kms)
    signed_message, signed_digest = sign_verify_with_kms_sample()
    made = delta(before, calls(local_kms))
    assert made[(HZ, "AsymmetricSign")] == 2 and made[(HZ, "AsymmetricVerify")] == 2
    signatures = [signed_message, signed_digest, public_key_verifier_sample(), certificate_verifier_sample()]
    # PKCS#1 v1.5 is deterministic: all four are the same, and cryptography (not kmsenv) accepts them.
    assert len(set(signatures)) == 1
    key = serialization.load_pem_public_key(public_pem.encode())
    key.verify(signed_message, plain_text.encode(), padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(InvalidSignature):
        key.verify(signed_message, b"another text", padding.PKCS1v15(), hashes.SHA256())


# ---------------------------------------------------------------- provider/provider_sample.py


def test_provider_sample(env, cmks):
    local_kms, aes_key_arn, plain_text = env, cmks.hz, "test_plain_text"
    secret_name = "test_secret_key_provider_sample"

    def build_default_data_key_provider():
        return DefaultDataKeyProvider(aes_key_arn)

    def build_secret_manager_provider():
        return SecretManagerDataKeyProvider(aes_key_arn, secret_name)

    def encrypt_sample(provider, client):
        cipher_text, enc_material = client.encrypt(provider, plain_text.encode("utf-8"), ENCRYPTION_CONTEXT)
        return base64.standard_b64encode(cipher_text).decode("utf-8"), enc_material

    def decrypt_sample(provider, client, cipher_text):
        cipher_text_bytes = base64.standard_b64decode(cipher_text.encode())
        plain, dec_material = client.decrypt(provider, cipher_text_bytes)
        return plain, dec_material

    crypto_client = build_aliyun_crypto(local_kms, False)
    default_text, _ = encrypt_sample(build_default_data_key_provider(), crypto_client)
    assert decrypt_sample(build_default_data_key_provider(), crypto_client, default_text)[0] == plain_text.encode()

    before = calls(local_kms)
    secret_text, enc_material = encrypt_sample(build_secret_manager_provider(), crypto_client)
    made = delta(before, calls(local_kms))
    assert made[(HZ, "CreateSecret")] == 1 and made[(HZ, "GenerateDataKey")] == 1
    plain, dec_material = decrypt_sample(build_secret_manager_provider(), crypto_client, secret_text)
    assert plain == plain_text.encode()
    assert dec_material.cipher_header == enc_material.cipher_header
    assert dict(dec_material.encryption_context) == ENCRYPTION_CONTEXT

    # The message is the body alone; the header is the secret's value.
    body = base64.b64decode(secret_text)
    assert secretmanager.parse_body(body).iv == enc_material.cipher_body.iv
    kms = Kms(**_kms_args(local_kms))
    stored = secretmanager.KmsSecretStore(kms, [HZ]).get_secret_value(secret_name)
    assert stored.data_type == "text"
    header = secretmanager.parse_stored_header(stored.value)
    assert header.header_auth_tag == enc_material.cipher_header.header_auth_tag
    assert [e.key_arn for e in header.encrypted_data_keys] == [aes_key_arn]
    native = secretmanager.SecretManagerDataKeyProvider(kmsenv.KmsKeyProvider(aes_key_arn, kms=kms), secret_name)
    assert secretmanager.decrypt(body, native) == plain_text.encode()

    # A second run of the sample reuses the secret: no new data key, no new secret.
    before = calls(local_kms)
    again, _ = encrypt_sample(build_secret_manager_provider(), crypto_client)
    assert decrypt_sample(build_secret_manager_provider(), crypto_client, again)[0] == plain_text.encode()
    made = delta(before, calls(local_kms))
    assert (HZ, "CreateSecret") not in made and (HZ, "GenerateDataKey") not in made


# ---------------------------------------------------------------- beyond the samples


def test_secret_provider_refuses_another_context_and_trailing_bytes(env, cmks):
    client = build_aliyun_crypto(env)
    provider = SecretManagerDataKeyProvider(cmks.hz, "test_secret_mismatch")
    cipher_text, _ = client.encrypt(provider, b"data", {"a": "1"})
    # The official SDK would silently write the stored context; kmsenv refuses.
    with pytest.raises(kmsenv.SecretHeaderMismatchError):
        client.encrypt(provider, b"data", {"a": "2"})
    with pytest.raises(kmsenv.MessageFormatError):
        client.decrypt(provider, cipher_text + b"\x00")
    assert client.decrypt(provider, cipher_text)[0] == b"data"


def test_secret_provider_multi_region_header(env, cmks):
    client = build_aliyun_crypto(env)
    provider = SecretManagerDataKeyProvider(cmks.hz, "test_secret_multi", keys=[cmks.bj])
    cipher_text, material = client.encrypt(provider, b"replicated", None)
    assert {e.key_arn.decode() for e in material.encrypted_data_keys} == {cmks.hz, cmks.bj}
    # The secret was written in both regions: a reader that reaches only Beijing decrypts.
    env.set_fault(HZ, "unavailable")
    only_bj = SecretManagerDataKeyProvider(cmks.bj, "test_secret_multi")
    assert build_aliyun_crypto(env).decrypt(only_bj, cipher_text)[0] == b"replicated"


@pytest.mark.parametrize(
    ("spec", "algorithm"),
    [
        ("RSA_2048", SignatureAlgorithm.RSA_PSS_SHA_256),
        ("RSA_3072", SignatureAlgorithm.RSA_PKCS1_SHA_256),
        ("EC_P256", SignatureAlgorithm.ECDSA_P256_SHA_256),
        ("EC_P256K", SignatureAlgorithm.ECDSA_P256K_SHA_256),
        ("EC_SM2", SignatureAlgorithm.SM2DSA),
    ],
)
def test_every_algorithm_signs_and_verifies_three_ways(env, spec, algorithm):
    local_kms = env
    arn = local_kms.create_key(SH, spec, key_usage="SIGN/VERIFY")
    (version,) = local_kms.key_versions(arn)
    pem = _public_pem(local_kms, arn, version)
    client = build_aliyun_crypto(local_kms)
    provider = KmsAsymmetricKeyProvider(arn, version, algorithm)
    message = "签名 message".encode()
    signature = client.sign(provider, message, ContentType.MESSAGE)
    verifiers = [provider, PublicKeyVerifier(algorithm, pem)]
    # cryptography cannot put an SM2 key in a certificate; the other keys get one.
    if algorithm is not SignatureAlgorithm.SM2DSA:
        verifiers.append(CertificateVerifier(_certificate_for(pem), algorithm))
        # The certificate's key decides its default algorithm (not its issuer's ECDSA signature).
        default = CertificateVerifier(_certificate_for(pem)).signature_algorithm
        expected = SignatureAlgorithm.RSA_PKCS1_SHA_256 if spec.startswith("RSA_") else algorithm
        assert default is expected
    for verifier in verifiers:
        assert client.verify(verifier, message, signature, ContentType.MESSAGE) is True
        assert client.verify(verifier, message + b"!", signature, ContentType.MESSAGE) is False


def test_sign_and_verify_arguments(env, rsa_sign_key, cmks):
    client = build_aliyun_crypto(env)
    arn, version = rsa_sign_key
    provider = KmsAsymmetricKeyProvider(arn, version, SignatureAlgorithm.RSA_PSS_SHA_256)
    with pytest.raises(kmsenv.ConfigurationError, match="content_type"):
        client.sign(provider, b"m", "MESSAGE")
    with pytest.raises(kmsenv.ConfigurationError, match="32-byte"):
        client.sign(provider, b"short", ContentType.DIGEST)
    with pytest.raises(kmsenv.ConfigurationError, match="sign_provider"):
        client.sign(DefaultDataKeyProvider(cmks.hz), b"m", ContentType.MESSAGE)
    with pytest.raises(kmsenv.ConfigurationError):
        KmsAsymmetricKeyProvider(arn, version, "RSA_PSS_SHA_256")
    with pytest.raises(kmsenv.ConfigurationError, match="cannot verify"):
        PublicKeyVerifier(SignatureAlgorithm.ECDSA_P256_SHA_256, _public_pem(env, arn, version))
    with pytest.raises(kmsenv.ConfigurationError):
        CertificateVerifier(b"not a certificate")
    signature = client.sign(provider, b"m", ContentType.MESSAGE)
    kms_verifier = KmsVerifier(arn, version, None, SignatureAlgorithm.RSA_PSS_SHA_256)
    assert client.verify(kms_verifier, b"m", signature, ContentType.MESSAGE) is True
    assert client.verify(kms_verifier, b"m", signature[:-1] + bytes([signature[-1] ^ 1]), ContentType.MESSAGE) is False
    assert "PRIVATE" not in repr(provider) and version in repr(provider)
