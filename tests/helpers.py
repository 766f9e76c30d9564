"""Test-only data key providers.

``FakeKmsProvider`` speaks the stand-in KMS wrapping the official vectors were
made with (``fakekms-json-v1``): the EDK is the JSON of {arn, ctx, dk}. It
enforces what a KMS would (its own CMKs only, the same context), so the engine's
error paths behave as with a real KMS. KMS itself is exercised against LocalKms
in the KMS tests.
"""

from __future__ import annotations

import base64
import json
import os

import kmsenv

ARN_BJ = "acs:kms:cn-beijing:1234567890123456:key/key-bj-11111111-2222-3333-4444-555555555555"
ARN_HZ = "acs:kms:cn-hangzhou:1234567890123456:key/key-hz-66666666-7777-8888-9999-000000000000"


def wrap(arn: str, ctx: dict, key: bytes) -> bytes:
    doc = {"arn": arn, "ctx": ctx, "dk": base64.b64encode(bytes(key)).decode(), "fakekms": 1}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class FakeKmsProvider:
    def __init__(self, *arns: str, algorithm=None):
        self.arns = list(arns) or [ARN_BJ]
        if algorithm is not None:
            self.algorithm = algorithm
        self.generate_calls = 0
        self.decrypt_calls = 0

    def generate_data_key(self, algorithm, encryption_context):
        self.generate_calls += 1
        key = os.urandom(kmsenv.Algorithm(algorithm).key_len)
        edks = [kmsenv.EncryptedDataKey(a, wrap(a, encryption_context, key)) for a in self.arns]
        return kmsenv.DataKey(key, edks)

    def decrypt_data_key(self, encrypted_data_keys, algorithm, encryption_context):
        self.decrypt_calls += 1
        for edk in encrypted_data_keys:
            if edk.key_arn not in self.arns:
                continue
            try:  # a KMS rejects a blob it cannot parse; so do we
                doc = json.loads(edk.ciphertext_blob)
                if doc["arn"] == edk.key_arn and doc["ctx"] == encryption_context:
                    return bytearray(base64.b64decode(doc["dk"], validate=True))
            except (ValueError, KeyError, TypeError):
                continue
        raise kmsenv.NoUsableKeyError("none of the encrypted data keys is one of this provider's CMKs")


# ---------------------------------------------------------------- forked children


def start_in_fork(fn):
    """Run ``fn()`` in a child made by a bare ``os.fork()`` (as a prefork server
    does); returns a handle for :func:`join_fork`. A failure in the child comes
    back as its traceback text."""
    import pickle
    import traceback

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(r)
            try:
                payload = pickle.dumps((True, fn()))
            except BaseException:
                payload, code = pickle.dumps((False, traceback.format_exc())), 1
            with os.fdopen(w, "wb") as f:
                f.write(payload)
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def join_fork(handle):
    """The child's result (its exit checked); an AssertionError carries its traceback."""
    import pickle

    pid, r = handle
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    ok, result = pickle.loads(data) if data else (False, "the child wrote nothing")
    assert ok and os.waitstatus_to_exitcode(status) == 0, result
    return result
