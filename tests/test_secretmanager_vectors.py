"""The official Java SDK's SecretManager vectors (tests/vectors/alibaba-official-java-secretmanager.json,
80 records): every record behaves as its ``kmsenv_expect`` says, on both backends, and
kmsenv's own messages under the Java-written secrets open with an independent AES-GCM.

The vectors' KMS wrapping is the transparent ``fakekms-json-v1`` (see the vectors README),
which LocalKms cannot hold; a small data-key provider opens it here, and an in-memory
secret store returns ``secret_value`` (one version, as the SDK that wrote them never writes
a second one)."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kmsenv.algorithms import Algorithm
from kmsenv.exceptions import (
    AuthenticationError,
    MessageFormatError,
    NoUsableKeyError,
    UnauthenticatedAlgorithmError,
)
from kmsenv.model import DataKey, EncryptedDataKey
from kmsenv.secretmanager import (
    SecretManagerDataKeyProvider,
    SecretNotFoundError,
    SecretExistsError,
    SecretValue,
    SecretVersion,
    decrypt,
    decrypt_stream,
    encrypt,
    encrypt_stream,
    parse_stored_header,
)

VECTORS = Path(__file__).parent / "vectors" / "alibaba-official-java-secretmanager.json"
RECORDS = json.loads(VECTORS.read_text(encoding="utf-8"))
IDS = [r["description"] for r in RECORDS]


def fakekms_blob(arn: str, ctx: dict, key: bytes) -> bytes:
    return json.dumps(
        {"arn": arn, "ctx": ctx, "dk": base64.b64encode(key).decode(), "fakekms": 1},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()


class FakeKmsProvider:
    """kmsenv's data-key provider protocol over ``fakekms-json-v1`` blobs: a blob opens
    only for one of this provider's CMKs and the context it was made with, as KMS would."""

    def __init__(self, *arns: str):
        self.key_arns = arns
        self.decrypts = 0

    def generate_data_key(self, algorithm: Algorithm, encryption_context: dict) -> DataKey:
        key = os.urandom(algorithm.key_len)
        return DataKey(
            key, [EncryptedDataKey(self.key_arns[0], fakekms_blob(self.key_arns[0], encryption_context, key))]
        )

    def decrypt_data_key(self, encrypted_data_keys, algorithm, encryption_context) -> bytearray:
        for edk in encrypted_data_keys:
            if edk.key_arn not in self.key_arns:
                continue
            blob = json.loads(edk.ciphertext_blob)
            if blob["arn"] == edk.key_arn and blob["ctx"] == encryption_context:
                self.decrypts += 1
                return bytearray(base64.b64decode(blob["dk"]))
        raise NoUsableKeyError("no EDK for these CMKs and this context")


class MemoryStore:
    """A SecretStore in memory: name -> versions (oldest first), stages as Secrets Manager moves them."""

    def __init__(self):
        self.secrets: dict[str, list[list]] = {}  # name -> [[version_id, value, stages], ...]
        self.calls: list[str] = []

    def seed(self, name: str, value: str, version_id: str) -> "MemoryStore":
        self.secrets[name] = [[version_id, value, ["ACSCurrent"]]]
        return self

    def get_secret_value(self, name, version_id=None, version_stage=None):
        self.calls.append(f"get {name} {version_id or version_stage or ''}".strip())
        for vid, value, stages in self.secrets.get(name, []):
            if (version_id and vid == version_id) or (not version_id and (version_stage or "ACSCurrent") in stages):
                return SecretValue(value, vid, tuple(stages))
        raise SecretNotFoundError("no such secret", code="Forbidden.ResourceNotFound")

    def create_secret(self, name, value, version_id):
        self.calls.append(f"create {name}")
        if name in self.secrets:
            raise SecretExistsError("exists", code="Rejected.ResourceExist")
        self.seed(name, value, version_id)

    def put_secret_value(self, name, value, version_id):
        self.calls.append(f"put {name}")
        versions = self.secrets[name]
        for v in versions:
            if "ACSPrevious" in v[2]:
                v[2].remove("ACSPrevious")
        for v in versions:
            if "ACSCurrent" in v[2]:
                v[2].remove("ACSCurrent")
                v[2].append("ACSPrevious")
        versions.append([version_id, value, ["ACSCurrent"]])

    def list_secret_versions(self, name):
        self.calls.append(f"list {name}")
        return [SecretVersion(vid, tuple(stages), "") for vid, _, stages in self.secrets.get(name, [])]


def provider_for(record: dict, **kw) -> SecretManagerDataKeyProvider:
    store = MemoryStore().seed(record["secret_name"], record["secret_value"], record["secret_version_id"])
    return SecretManagerDataKeyProvider(FakeKmsProvider(record["cmk_arn"]), record["secret_name"], secrets=store, **kw)


def open_record(
    record: dict, provider, allow_unauthenticated: bool
) -> tuple[bytes | None, BaseException | None, bytes]:
    """(plaintext, error, bytes written before the error) for a message or stream record."""
    message = base64.b64decode(record["message_b64"])
    out = io.BytesIO()
    try:
        if record["kind"] == "secret-manager-message":
            return decrypt(message, provider, allow_unauthenticated=allow_unauthenticated), None, b""
        decrypt_stream(io.BytesIO(message), out, provider, allow_unauthenticated=allow_unauthenticated)
        return out.getvalue(), None, b""
    except Exception as exc:  # noqa: BLE001 - the test checks its type
        return None, exc, out.getvalue()


def test_vector_file_is_the_public_set():
    assert len(RECORDS) == 80
    kinds = {(r["kind"], r["kmsenv_expect"]) for r in RECORDS}
    assert kinds >= {
        ("secret-manager-message", "ok"),
        ("secret-manager-stream", "ok-unauthenticated"),
        ("secret-manager-message", "error:format"),
        ("secret-manager-stream", "error:authentication"),
    }


@pytest.mark.parametrize("record", RECORDS, ids=IDS)
def test_vector(backend, record):
    expect = record["kmsenv_expect"]
    plaintext = base64.b64decode(record["plaintext_b64"])
    provider = provider_for(record)
    if expect == "ok":
        got, err, _ = open_record(record, provider, False)
        assert err is None, repr(err)
        assert got == plaintext
        # As the Java SDK: one secret read, one KMS Decrypt (then cached).
        assert provider.secrets.calls == [f"get {record['secret_name']}"]
        assert provider.key_provider.decrypts == 1
    elif expect == "ok-unauthenticated":
        got, err, leaked = open_record(record, provider, False)
        assert isinstance(err, UnauthenticatedAlgorithmError) and leaked == b""
        got, err, _ = open_record(record, provider, True)
        assert err is None, repr(err)
        assert got == plaintext
    else:
        want = {"error:authentication": AuthenticationError, "error:format": MessageFormatError}[expect]
        got, err, leaked = open_record(record, provider, True)
        assert got is None and isinstance(err, want), repr(err)
        assert leaked == b"", "plaintext released before the error"


def _independent_ctx_bytes(ctx: dict) -> bytes:
    """Spec section 4, written again here: u32be count, then sorted UTF-8 (key, value)."""
    if not ctx:
        return b""
    items = sorted((k.encode(), v.encode()) for k, v in ctx.items())
    out = struct.pack(">I", len(items))
    for k, v in items:
        out += struct.pack(">I", len(k)) + k + struct.pack(">I", len(v)) + v
    return out


def _der_body(message: bytes) -> tuple[bytes, bytes, bytes]:
    """A hand-rolled reader for the Body SEQUENCE (short and long DER lengths)."""

    def tl(buf, pos):
        tag, first = buf[pos], buf[pos + 1]
        pos += 2
        if first & 0x80:
            n = first & 0x7F
            length = int.from_bytes(buf[pos : pos + n], "big")
            pos += n
        else:
            length = first
        return tag, length, pos

    tag, length, pos = tl(message, 0)
    assert tag == 0x30 and pos + length == len(message)
    fields = []
    for _ in range(3):
        tag, length, pos = tl(message, pos)
        assert tag == 0x04
        fields.append(message[pos : pos + length])
        pos += length
    return fields[0], fields[1], fields[2]


GCM_AES = sorted(
    {r["secret_name"]: r for r in RECORDS if r["category"] == "positive" and r["algorithm"]["id"] in (1, 2)}.values(),
    key=lambda r: r["secret_name"],
)


@pytest.mark.parametrize("record", GCM_AES, ids=[r["secret_name"] for r in GCM_AES])
def test_kmsenv_messages_under_java_secrets_open_independently(backend, record):
    """kmsenv -> Java direction: a message under the Java-written secret is the Java layout,
    readable with the record's data key and the context bytes as AAD (what the Java SDK's
    decrypt does), one-shot and stream."""
    provider = provider_for(record)
    key = AESGCM(base64.b64decode(record["data_key_b64"]))
    aad = _independent_ctx_bytes(record["encryption_context"])
    plaintext = b"kmsenv -> java \x00\xff" * 5
    message = encrypt(plaintext, provider, encryption_context=record["encryption_context"])
    iv, ct, tag = _der_body(message)
    assert len(iv) == 12 and len(tag) == 16
    assert key.decrypt(iv, ct + tag, aad) == plaintext
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(plaintext), out, provider, encryption_context=record["encryption_context"])
    raw = out.getvalue()
    assert struct.unpack("<I", raw[:4])[0] == 12
    assert key.decrypt(raw[4:16], raw[16:], aad) == plaintext
    # The secret was only read: nothing was created or rewritten.
    assert not [c for c in provider.secrets.calls if not c.startswith("get")]


def test_stored_headers_parse_as_java_wrote_them():
    for record in RECORDS:
        if record["category"] != "positive":
            continue
        header = parse_stored_header(record["secret_value"])
        assert int(header.algorithm) == record["algorithm"]["id"]
        assert dict(header.encryption_context) == record["encryption_context"]
        assert [e.key_arn for e in header.encrypted_data_keys] == [record["cmk_arn"]]
        assert header.encoded == base64.b64decode(record["secret_value"])
