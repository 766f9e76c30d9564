"""kmsenv.secretmanager against LocalKms over real HTTP: a three-region KmsKeyProvider, the
default secret store (KMS Secrets Manager through kmsenv.Kms and the official client),
what the secret holds (the Java SDK's layout, checked with an independent DER walk and
AES-GCM), the refusals the official SDKs lack, trailing bytes, rotation, caching and
fail-over."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import uuid
from pathlib import Path

import pytest
from alibabacloud_kms20160120 import models as M
from alibabacloud_kms20160120.client import Client
from alibabacloud_tea_openapi.models import Config
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import kmsenv
from kms_fixtures import *  # noqa: F401,F403
from kms_fixtures import BJ, HZ, SH, kms_calls, kms_options
from kmsenv.algorithms import Algorithm
from kmsenv.exceptions import (
    AuthenticationError,
    ConfigurationError,
    HeaderAuthenticationError,
    MessageFormatError,
    UnauthenticatedAlgorithmError,
    UnsupportedAlgorithmError,
)
from kmsenv.kms import Kms
from kmsenv.providers import KmsKeyProvider
from kmsenv.secretmanager import (
    KmsSecretStore,
    SecretHeaderMismatchError,
    SecretManagerDataKeyProvider,
    SecretNotFoundError,
    decrypt,
    decrypt_stream,
    encrypt,
    encrypt_stream,
)

JAVA = json.loads(
    (Path(__file__).parent / "vectors" / "alibaba-official-java-secretmanager.json").read_text(encoding="utf-8")
)
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")
CTX = {"tenant": "t-1", "租户": "ｆ😀"}


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


def official_client(server, region: str = HZ) -> Client:
    return Client(
        Config(
            access_key_id=server.access_key_id,
            access_key_secret=server.access_key_secret,
            endpoint=server.hosts[region],
            protocol="http",
            region_id=region,
            read_timeout=30000,
            connect_timeout=2000,
        )
    )


def key_provider(local_kms, cmks, **kw) -> KmsKeyProvider:
    return KmsKeyProvider(cmks.hz, cmks.bj, cmks.sh, kms=Kms(**kms_options(local_kms, **kw)))


def sm(local_kms, cmks, name: str, **kw) -> SecretManagerDataKeyProvider:
    return SecretManagerDataKeyProvider(key_provider(local_kms, cmks), name, **kw)


def unique() -> str:
    return f"kmsenv-test/{uuid.uuid4().hex[:12]}"


# -- an independent reading of what the secret holds ------------------------------------------


def der_walk(buf: bytes, pos: int = 0, end: int | None = None) -> list:
    """A nested [tag, content-or-children] list (SEQUENCE/SET walked), strict about lengths."""
    end = len(buf) if end is None else end
    out = []
    while pos < end:
        tag, first = buf[pos], buf[pos + 1]
        pos += 2
        length = first
        if first & 0x80:
            n = first & 0x7F
            length = int.from_bytes(buf[pos : pos + n], "big")
            pos += n
        assert pos + length <= end
        content = buf[pos : pos + length]
        out.append([tag, der_walk(buf, pos, pos + length) if tag in (0x30, 0x31) else content])
        pos += length
    return out


def shape(node) -> list:
    """The tags and nesting, without the contents."""
    return [[tag, shape(c) if isinstance(c, list) else None] for tag, c in node]


def auth_fields(alg: int, edks: list[tuple[bytes, bytes]], ctx: dict) -> bytes:
    """Spec section 5.1, written again here."""
    u32 = lambda n: struct.pack(">I", n)  # noqa: E731
    items = sorted((k.encode(), v.encode()) for k, v in ctx.items())
    ctx_bytes = b""
    if items:
        ctx_bytes = u32(len(items)) + b"".join(u32(len(k)) + k + u32(len(v)) + v for k, v in items)
    out = u32(1) + u32(alg) + u32(len(ctx)) + ctx_bytes + u32(len(edks))
    for arn, blob in sorted(edks):
        text = base64.b64encode(blob)
        out += u32(len(arn)) + arn + u32(len(text)) + text
    return out, ctx_bytes


def test_round_trip_and_the_stored_form_is_the_java_layout(backend, local_kms, cmks):
    name = unique()
    provider = sm(local_kms, cmks, name)
    plaintext = b"secret-manager body " * 100
    message = encrypt(plaintext, provider, encryption_context=CTX)
    assert decrypt(message, provider) == plaintext
    # A fresh provider (empty cache) reads it through KMS again.
    assert decrypt(message, sm(local_kms, cmks, name)) == plaintext

    stored = official_client(local_kms).get_secret_value(M.GetSecretValueRequest(secret_name=name)).body
    assert stored.secret_data_type == "text"
    assert stored.version_stages.version_stage == ["ACSCurrent"]
    uuid.UUID(stored.version_id)  # a UUID, as the Java SDK's
    raw = base64.b64decode(stored.secret_data, validate=True)
    assert base64.b64encode(raw).decode() == stored.secret_data  # standard, padded, one line
    (header,) = der_walk(raw)
    java = der_walk(
        base64.b64decode(
            next(r for r in JAVA if r["encryption_context"] and r["category"] == "positive")["secret_value"]
        )
    )[0]
    # Same nesting as the Java SDK's header, but with three EDKs (one per region).
    assert shape([header])[0][0] == shape([java])[0][0] == 0x30
    fields = header[1]
    assert [f[0] for f in fields] == [f[0] for f in java[1]] == [0x02, 0x02, 0x31, 0x31, 0x04, 0x04]
    assert fields[0][1] == b"\x01" and fields[1][1] == bytes([int(Algorithm.AES_GCM_NOPADDING_256)])
    edks = [(e[1][0][1], e[1][1][1]) for e in fields[2][1]]
    assert sorted(arn.decode() for arn, _ in edks) == sorted([cmks.hz, cmks.bj, cmks.sh])
    ctx = {e[1][0][1].decode(): e[1][1][1].decode() for e in fields[3][1]}
    assert ctx == CTX
    header_iv, header_tag = fields[4][1], fields[5][1]
    assert (len(header_iv), len(header_tag)) == (12, 16)

    # The data key from KMS itself (each region's EDK), the header tag and the body by AES-GCM.
    kms = Kms(**kms_options(local_kms))
    keys = {bytes(kms.decrypt(arn.decode(), blob, CTX)) for arn, blob in edks}
    assert len(keys) == 1
    aead = AESGCM(keys.pop())
    auth, ctx_bytes = auth_fields(2, edks, CTX)
    assert aead.encrypt(header_iv, b"", auth) == header_tag
    (body,) = der_walk(message)
    iv, ct, tag = (f[1] for f in body[1])
    assert aead.decrypt(iv, ct + tag, ctx_bytes) == plaintext

    # Replicated to the other regions with the same version.
    for region in (BJ, SH):
        copy = official_client(local_kms, region).get_secret_value(M.GetSecretValueRequest(secret_name=name)).body
        assert (copy.secret_data, copy.version_id) == (stored.secret_data, stored.version_id)


def test_secret_holds_cmk_encryption_key(local_kms, cmks):
    name = unique()
    encrypt(b"x", sm(local_kms, cmks, name))
    described = official_client(local_kms).describe_secret(M.DescribeSecretRequest(secret_name=name)).body
    assert described.encryption_key_id in (cmks.hz, cmks.hz.split("key/")[1])


def test_mismatched_context_or_algorithm_is_refused(local_kms, cmks):
    name = unique()
    provider = sm(local_kms, cmks, name)
    encrypt(b"first", provider, encryption_context=CTX)
    local_kms.reset_stats()
    with pytest.raises(SecretHeaderMismatchError) as e:
        encrypt(b"x", provider, encryption_context={"tenant": "t-2"})
    assert e.value.field == "encryption_context" and isinstance(e.value, ConfigurationError)
    with pytest.raises(SecretHeaderMismatchError) as e:
        encrypt(b"x", provider)  # no context against a stored one
    assert e.value.field == "encryption_context"
    with pytest.raises(SecretHeaderMismatchError) as e:
        encrypt(b"x", provider, encryption_context=CTX, algorithm=Algorithm.AES_GCM_NOPADDING_128)
    assert e.value.field == "algorithm"
    # Nothing was written; the same request with the stored values works.
    assert not any(a in ("CreateSecret", "PutSecretValue") for _, a in kms_calls(local_kms))
    m = encrypt(b"ok", provider, encryption_context=dict(CTX), algorithm=Algorithm.AES_GCM_NOPADDING_256)
    assert decrypt(m, provider) == b"ok"


def test_trailing_bytes_and_full_messages_are_rejected(local_kms, cmks):
    provider = sm(local_kms, cmks, unique())
    message = encrypt(b"payload", provider)
    with pytest.raises(MessageFormatError, match="unexpected bytes"):
        decrypt(message + b"\x00", provider)
    with pytest.raises(MessageFormatError):
        decrypt(message[:-1], provider)
    full = kmsenv.encrypt(b"payload", provider.key_provider).ciphertext
    with pytest.raises(MessageFormatError):
        decrypt(full, provider)
    tampered = bytearray(message)
    tampered[-1] ^= 1
    with pytest.raises(AuthenticationError):
        decrypt(bytes(tampered), provider)


def test_rotation_keeps_old_messages_readable(local_kms, cmks):
    name = unique()
    provider = sm(local_kms, cmks, name, max_versions=3)
    m1 = encrypt(b"one", provider, encryption_context=CTX)
    v1 = provider._current_version().version_id
    v2 = provider.rotate()
    m2 = encrypt(b"two", provider, encryption_context=CTX)
    assert v2 != v1
    # Stages moved as Secrets Manager moves them.
    versions = (
        official_client(local_kms)
        .list_secret_version_ids(M.ListSecretVersionIdsRequest(secret_name=name, include_deprecated="true"))
        .body.version_ids.version_id
    )
    assert {v.version_id: v.version_stages.version_stage for v in versions} == {v1: ["ACSPrevious"], v2: ["ACSCurrent"]}
    # m2 is under the new key: the old version cannot open it, and vice versa.
    only_current = sm(local_kms, cmks, name, max_versions=1)
    assert decrypt(m2, only_current) == b"two"
    with pytest.raises(AuthenticationError):
        decrypt(m1, only_current)
    for reader in (provider, sm(local_kms, cmks, name, max_versions=3)):
        assert decrypt(m1, reader) == b"one" and decrypt(m2, reader) == b"two"
    # Two more rotations: with max_versions=3, m1 (now the 4th newest) is out of reach.
    provider.rotate()
    m3 = encrypt(b"three", provider, encryption_context=CTX)
    provider.rotate()
    fresh = sm(local_kms, cmks, name, max_versions=3)
    assert decrypt(m3, fresh) == b"three" and decrypt(m2, fresh) == b"two"
    with pytest.raises(AuthenticationError):
        decrypt(m1, fresh)
    assert decrypt(m1, sm(local_kms, cmks, name, max_versions=4)) == b"one"


def test_rotate_can_change_algorithm_and_context(local_kms, cmks):
    name = unique()
    provider = sm(local_kms, cmks, name)
    old = encrypt(b"old", provider, encryption_context=CTX)
    provider.rotate(algorithm=Algorithm.AES_GCM_NOPADDING_128, encryption_context={"v": "2"})
    new = encrypt(b"new", provider, encryption_context={"v": "2"})
    with pytest.raises(SecretHeaderMismatchError):
        encrypt(b"x", provider, encryption_context=CTX)
    assert decrypt(old, provider) == b"old" and decrypt(new, provider) == b"new"


def test_legacy_algorithms_need_opt_in_and_use_the_current_version_only(local_kms, cmks):
    name = unique()
    provider = sm(local_kms, cmks, name, algorithm=Algorithm.AES_CTR_NOPADDING_256)
    local_kms.reset_stats()
    with pytest.raises(UnauthenticatedAlgorithmError):
        encrypt(b"legacy", provider)
    # Refused before anything was generated or stored.
    assert {a for _, a in kms_calls(local_kms)} == {"GetSecretValue"}
    m = encrypt(b"legacy", provider, allow_unauthenticated=True)
    with pytest.raises(UnauthenticatedAlgorithmError):
        decrypt(m, provider)
    assert decrypt(m, provider, allow_unauthenticated=True) == b"legacy"
    with pytest.raises(UnsupportedAlgorithmError):
        encrypt_stream(io.BytesIO(b"x"), io.BytesIO(), provider)
    provider.rotate()
    # No tag tells the versions apart: the current key yields other bytes, nothing fails.
    assert decrypt(m, provider, allow_unauthenticated=True) != b"legacy"


def test_rotating_to_a_legacy_algorithm_needs_opt_in(local_kms, cmks):
    provider = sm(local_kms, cmks, unique())
    gcm = encrypt(b"gcm", provider)
    with pytest.raises(UnauthenticatedAlgorithmError):
        provider.rotate(algorithm=Algorithm.AES_CBC_PKCS5_256)
    provider.rotate(algorithm=Algorithm.AES_CBC_PKCS5_256, allow_unauthenticated=True)
    cbc = encrypt(b"cbc", provider, allow_unauthenticated=True)
    assert decrypt(cbc, provider, allow_unauthenticated=True) == b"cbc"
    # The GCM message does not fit the (CBC) current version but an older one opens it.
    assert decrypt(gcm, provider) == b"gcm"


def test_cache_saves_kms_calls_and_clears(local_kms, cmks):
    provider = sm(local_kms, cmks, unique())
    encrypt(b"a", provider)
    local_kms.reset_stats()
    for _ in range(5):
        assert decrypt(encrypt(b"b", provider), provider) == b"b"
    assert kms_calls(local_kms) == {}
    cell = provider._current_version().cell
    provider.clear_cache()
    assert cell.wiped
    assert decrypt(encrypt(b"c", provider), provider) == b"c"
    calls = kms_calls(local_kms)
    assert calls == {(HZ, "GetSecretValue"): 1, (HZ, "Decrypt"): 1}


def test_stale_current_pointer_refreshes_after_ttl(local_kms, cmks):
    now = [0.0]
    name = unique()
    reader = sm(local_kms, cmks, name, cache_ttl=60, clock=lambda: now[0])
    writer = sm(local_kms, cmks, name)
    encrypt(b"a", writer)
    encrypt(b"a", reader)
    writer.rotate()
    m = encrypt(b"after rotation", writer)
    # Within the TTL the reader still encrypts under the old key but decrypts the new
    # message by trying the versions; after the TTL it follows the rotation.
    assert decrypt(m, reader) == b"after rotation"
    old_id = reader._current_version().version_id
    now[0] = 61
    assert reader._current_version().version_id != old_id


def test_reads_fail_over_to_the_next_region(local_kms, cmks, clean_faults):
    name = unique()
    provider = sm(local_kms, cmks, name)
    message = encrypt(b"multi-region", provider)
    local_kms.set_fault(HZ, down=True)
    try:
        reader = SecretManagerDataKeyProvider(key_provider(local_kms, cmks, max_attempts=1), name)
        assert decrypt(message, reader) == b"multi-region"
        # Writes need the first region: a new secret is not created elsewhere.
        with pytest.raises(kmsenv.KmsEnvError):
            encrypt(b"x", SecretManagerDataKeyProvider(key_provider(local_kms, cmks, max_attempts=1), unique()))
    finally:
        local_kms.set_fault(HZ)
    assert kms_calls(local_kms).get((BJ, "GetSecretValue"), 0) >= 1


def test_tampered_secret_is_refused(local_kms, cmks):
    name = unique()
    provider = sm(local_kms, cmks, name)
    message = encrypt(b"data", provider)
    client = official_client(local_kms)
    raw = bytearray(
        base64.b64decode(client.get_secret_value(M.GetSecretValueRequest(secret_name=name)).body.secret_data)
    )
    raw[-1] ^= 1  # the header tag's last byte
    client.put_secret_value(
        M.PutSecretValueRequest(secret_name=name, version_id="tampered", secret_data=base64.b64encode(raw).decode())
    )
    fresh = sm(local_kms, cmks, name, max_versions=1)
    with pytest.raises(HeaderAuthenticationError):
        decrypt(message, fresh)
    with pytest.raises(HeaderAuthenticationError):
        encrypt(b"x", fresh)


def test_an_altered_older_version_is_skipped(local_kms, cmks):
    name = unique()
    provider = sm(local_kms, cmks, name)
    m1 = encrypt(b"under v1", provider)
    v2 = provider.rotate()
    client = official_client(local_kms)
    raw = bytearray(
        base64.b64decode(client.get_secret_value(M.GetSecretValueRequest(secret_name=name)).body.secret_data)
    )
    raw[-1] ^= 1
    client.put_secret_value(
        M.PutSecretValueRequest(secret_name=name, version_id="tampered", secret_data=base64.b64encode(raw).decode())
    )
    client.update_secret_version_stage(
        M.UpdateSecretVersionStageRequest(
            secret_name=name, version_stage="ACSCurrent", move_to_version=v2, remove_from_version="tampered"
        )
    )
    # v2 current, the altered copy ACSPrevious, v1 older: v1 is still reached.
    fresh = sm(local_kms, cmks, name, max_versions=3)
    assert decrypt(m1, fresh) == b"under v1"
    assert "tampered" not in fresh._versions


def test_missing_secret(local_kms, cmks):
    message = encrypt(b"x", sm(local_kms, cmks, unique()))
    missing = sm(local_kms, cmks, unique())
    with pytest.raises(SecretNotFoundError) as e:
        decrypt(message, missing)
    assert e.value.code == "Forbidden.ResourceNotFound"
    with pytest.raises(SecretNotFoundError):
        decrypt_stream(io.BytesIO(b""), io.BytesIO(), missing)


def test_default_store_needs_cmks():
    class Bare:
        def generate_data_key(self, *a):  # pragma: no cover
            raise AssertionError

        def decrypt_data_key(self, *a):  # pragma: no cover
            raise AssertionError

    with pytest.raises(ConfigurationError):
        SecretManagerDataKeyProvider(Bare(), "name")
    with pytest.raises(ConfigurationError):
        KmsSecretStore(object(), [HZ])


@pytest.mark.parametrize("size", [0, 1, 100_000])
def test_streams_round_trip_and_release_nothing_unverified(backend, local_kms, cmks, size, tmp_path):
    name = unique()
    provider = sm(local_kms, cmks, name)
    plaintext = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    out = io.BytesIO()
    written = encrypt_stream(io.BytesIO(plaintext), out, provider, encryption_context=CTX)
    stream = out.getvalue()
    assert written == len(stream) == 4 + 12 + size + 16
    assert struct.unpack("<I", stream[:4])[0] == 12
    # A file source (not in memory) goes through the spool.
    path = tmp_path / "msg"
    path.write_bytes(stream)
    for src in (io.BytesIO(stream), open(path, "rb")):
        with src:
            dst = io.BytesIO()
            assert decrypt_stream(src, dst, provider) == size and dst.getvalue() == plaintext
    if size:
        bad = bytearray(stream)
        bad[16 + size // 2] ^= 1
        dst = io.BytesIO()
        with pytest.raises(AuthenticationError):
            decrypt_stream(io.BytesIO(bytes(bad)), dst, provider)
        assert dst.getvalue() == b""
    # After a rotation the old stream still opens (seekable input: older versions are tried).
    provider.rotate()
    dst = io.BytesIO()
    decrypt_stream(io.BytesIO(stream), dst, provider)
    assert dst.getvalue() == plaintext


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_with_an_empty_cache(local_kms, cmks):
    provider = sm(local_kms, cmks, unique())
    message = encrypt(b"before fork", provider)
    parent_cell = provider._current_version().cell
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's teardown
        ok = not provider._versions and provider._current is None
        try:
            ok = ok and decrypt(message, provider) == b"before fork"
        except BaseException:
            ok = False
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert not parent_cell.wiped and decrypt(message, provider) == b"before fork"


class RacingStore(KmsSecretStore):
    """The first read says "not found", as if another writer created the secret just after."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.raced = False

    def get_secret_value(self, name, version_id=None, version_stage=None):
        if not self.raced:
            self.raced = True
            raise SecretNotFoundError("not yet", code="Forbidden.ResourceNotFound")
        return super().get_secret_value(name, version_id, version_stage)


def test_losing_the_create_race_uses_the_winners_key(local_kms, cmks):
    name = unique()
    winner = sm(local_kms, cmks, name)
    m = encrypt(b"winner", winner)
    kp = key_provider(local_kms, cmks)
    loser = SecretManagerDataKeyProvider(kp, name, secrets=RacingStore(kp.kms, [HZ, BJ, SH]))
    mine = encrypt(b"loser", loser)
    assert loser.secrets.raced
    assert decrypt(mine, winner) == b"loser" and decrypt(m, loser) == b"winner"


def test_threads_share_a_provider_through_rotations(local_kms, cmks):
    import threading

    provider = sm(local_kms, cmks, unique(), max_versions=10)
    encrypt(b"init", provider)
    errors: list[BaseException] = []
    done: list[tuple[bytes, bytes]] = []

    def work(i: int) -> None:
        try:
            for j in range(20):
                data = f"{i}-{j}".encode()
                done.append((encrypt(data, provider), data))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for _ in range(3):
        provider.rotate()
    for t in threads:
        t.join()
    assert errors == []
    for message, data in done:
        assert decrypt(message, provider) == data
