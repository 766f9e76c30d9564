"""Known-answer tests for both backends: NIST AES-GCM, GB/T 32907 SM4, RFC 8998 SM4-GCM."""

from __future__ import annotations

import os

import pytest

import kmsenv
from kmsenv.crypto import get_backend
from kmsenv.crypto.sm4_gcm_fallback import Sm4Fallback

cryptography_vectors = pytest.importorskip("cryptography_vectors")


def _load_nist(name: str) -> list[dict]:
    path = os.path.join(os.path.dirname(cryptography_vectors.__file__), "ciphers", "AES", "GCM", name)
    cases, cur = [], {}
    with open(path, encoding="ascii") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith(("#", "[")):
                continue
            if line == "FAIL":
                cur["fail"] = True
                continue
            k, _, v = (part.strip() for part in line.partition("="))
            if k == "Count" and cur:
                cases.append(cur)
                cur = {}
            cur[k] = v
    if cur:
        cases.append(cur)
    # The format uses 96-bit IVs and 128-bit tags only.
    return [c for c in cases if len(c["IV"]) == 24 and len(c["Tag"]) == 32]


NIST = {
    name: _load_nist(name)
    for name in ("gcmEncryptExtIV128.rsp", "gcmEncryptExtIV256.rsp", "gcmDecrypt128.rsp", "gcmDecrypt256.rsp")
}


@pytest.mark.parametrize("name", sorted(NIST))
def test_nist_aes_gcm(name, backend):
    cases = NIST[name]
    assert len(cases) > 100
    for c in cases:
        key = bytes.fromhex(c["Key"])
        k = get_backend().new_key("AES", key)
        try:
            iv, aad, tag = bytes.fromhex(c["IV"]), bytes.fromhex(c["AAD"]), bytes.fromhex(c["Tag"])
            ct = bytes.fromhex(c["CT"])
            if c.get("fail"):
                with pytest.raises(kmsenv.AuthenticationError):
                    k.gcm_open(iv, aad, ct, tag)
                continue
            pt = bytes.fromhex(c["PT"])
            if "Encrypt" in name:
                assert k.gcm_seal(iv, aad, pt) == (ct, tag)
            assert k.gcm_open(iv, aad, ct, tag) == pt
        finally:
            k.close()


SM4_KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")


def test_sm4_block_gbt32907(backend):
    # GB/T 32907-2016 example 1: one block, key = plaintext. Through CTR with the
    # plaintext as counter and a zero input, the keystream is E_K(block).
    k = get_backend().new_key("SM4", SM4_KEY)
    try:
        ks = k.legacy_encrypt("CTR", SM4_KEY, bytes(16))
    finally:
        k.close()
    assert ks.hex() == "681edf34d206965e86b3e94f536e4246"
    assert Sm4Fallback(SM4_KEY).block(SM4_KEY).hex() == "681edf34d206965e86b3e94f536e4246"


RFC8998 = dict(
    key=bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"),
    iv=bytes.fromhex("00001234567800000000ABCD"),
    aad=bytes.fromhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2"),
    pt=bytes.fromhex(
        "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD"
        "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA"
    ),
    ct=bytes.fromhex(
        "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
        "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
    ),
    tag=bytes.fromhex("83DE3541E4C2B58177E065A9BF7B62EC"),
)


def test_rfc8998_sm4_gcm(backend):
    v = RFC8998
    k = get_backend().new_key("SM4", v["key"])
    try:
        assert k.gcm_seal(v["iv"], v["aad"], v["pt"]) == (v["ct"], v["tag"])
        assert k.gcm_open(v["iv"], v["aad"], v["ct"], v["tag"]) == v["pt"]
        with pytest.raises(kmsenv.AuthenticationError):
            k.gcm_open(v["iv"], v["aad"], v["ct"], bytes(16))
    finally:
        k.close()


def test_rfc8998_sm4_gcm_gmssl_fallback():
    v = RFC8998
    f = Sm4Fallback(v["key"])
    assert f.gcm_seal(v["iv"], v["aad"], v["pt"]) == (v["ct"], v["tag"])
    assert f.gcm_open(v["iv"], v["aad"], v["ct"], v["tag"]) == v["pt"]
