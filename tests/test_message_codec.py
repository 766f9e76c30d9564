"""The DER codec: the spec's worked examples, strictness and bounded reads."""

from __future__ import annotations

import pytest

import kmsenv
from kmsenv.message import codec, der
from kmsenv.model import EncryptedDataKey

from helpers import ARN_BJ, FakeKmsProvider


def test_context_bytes_spec_example():
    got = codec.context_bytes({"b": "x", "a": "yy"})
    assert got.hex() == "00000002000000016100000002797900000001620000000178"


def test_context_sorted_by_utf8_bytes_not_utf16():
    # U+FF46 sorts before U+1F600 by UTF-8 bytes (the reverse of Java String order).
    got = codec.context_bytes({"😀": "1", "ｆ": "2"})
    assert got.index("ｆ".encode()) < got.index("😀".encode())


def test_empty_context_is_empty_bytes():
    assert codec.context_bytes({}) == b""


def test_auth_fields_spec_example():
    edks = [
        EncryptedDataKey("acs:kms:cn-hangzhou:1:key/k2", bytes.fromhex("aabb")),
        EncryptedDataKey("acs:kms:cn-beijing:1:key/k1", bytes.fromhex("010203")),
    ]
    got = codec.auth_fields(1, 2, {"b": "x", "a": "yy"}, edks)
    expected = (
        bytes.fromhex("00000001 00000002 00000002")
        + bytes.fromhex("00000002 00000001 61 00000002 7979 00000001 62 00000001 78")
        + bytes.fromhex("00000002")
        + bytes.fromhex("0000001b")
        + b"acs:kms:cn-beijing:1:key/k1"
        + bytes.fromhex("00000004")
        + b"AQID"
        + bytes.fromhex("0000001c")
        + b"acs:kms:cn-hangzhou:1:key/k2"
        + bytes.fromhex("00000004")
        + b"qrs="
    )
    assert got == expected
    assert len(got) == 120


def test_der_set_orders_shorter_entries_first():
    ctx = {"a": "v" * 50, "b": "x", "tenant": "acme"}
    header = codec.MessageHeader(
        1, kmsenv.Algorithm.AES_GCM_NOPADDING_256, (EncryptedDataKey(ARN_BJ, b"k"),), ctx, bytes(12), bytes(16)
    )
    encoded = codec.encode_header(header)
    assert encoded.index(b"\x04\x01b") < encoded.index(b"tenant") < encoded.index(b"\x04\x01a")


@pytest.mark.parametrize("n", [0, 1, 127, 128, 255, 256, 65535, 65536, 2**24])
def test_length_encoding_is_minimal_and_round_trips(n):
    enc = der.encode_length(n)
    blob = bytes((0x04,)) + enc + bytes(n)
    r = der.Reader(blob)
    assert r.header(0x04, "x") == n
    assert len(enc) == (1 if n < 128 else 1 + (n.bit_length() + 7) // 8)


@pytest.mark.parametrize(
    "blob, fragment",
    [
        (b"\x04\x81\x05hello", "non-minimal"),
        (b"\x04\x82\x00\x85" + bytes(0x85), "non-minimal"),
        (b"\x04\x80hello\x00\x00", "indefinite"),
        (b"\x04\x85\x01\x00\x00\x00\x00", "too large"),
        (b"\x04\x06hello", "claims 6 bytes"),
        (b"\x05\x00", "expected tag"),
        (b"\x04", "missing"),
    ],
)
def test_reader_rejects_bad_lengths(blob, fragment):
    with pytest.raises(kmsenv.MessageFormatError, match=fragment):
        der.Reader(blob).octets("field")


def test_huge_claimed_length_fails_without_allocating():
    # 100 bytes that claim a 4 GB field must fail at once.
    blob = b"\x30\x84\xff\xff\xff\xf0" + bytes(94)
    with pytest.raises(kmsenv.MessageFormatError, match="claims"):
        codec.decode_message(blob)


def _message(**kw):
    provider = FakeKmsProvider(*kw.pop("arns", [ARN_BJ]))
    return kmsenv.encrypt(b"hello", provider, **kw).ciphertext, provider


def test_trailing_bytes_rejected():
    msg, _ = _message()
    with pytest.raises(kmsenv.MessageFormatError, match="unexpected bytes"):
        codec.decode_message(msg + b"\x00")


def test_edk_limit_is_configurable():
    arns = [ARN_BJ.replace("key-bj", f"key-{i:02d}") for i in range(3)]
    msg, provider = _message(arns=arns)
    with pytest.raises(kmsenv.MessageFormatError, match="more than 2 encrypted data keys"):
        kmsenv.parse_header(msg, max_encrypted_data_keys=2)
    assert len(kmsenv.parse_header(msg, max_encrypted_data_keys=3).encrypted_data_keys) == 3
    with pytest.raises(kmsenv.MessageFormatError):
        kmsenv.decrypt(msg, provider, max_encrypted_data_keys=2)
    assert provider.decrypt_calls == 0


def _rebuild(header_fields: bytes, iv=bytes(12), tag=bytes(16), body=None) -> bytes:
    header = der.tlv(der.SEQUENCE, header_fields + der.octet_string(iv) + der.octet_string(tag))
    body = body or codec.encode_body(bytes(12), b"x", bytes(16))
    return codec.encode_message(header, body)


def _edk(arn=ARN_BJ, blob=b"blob"):
    raw = arn if isinstance(arn, bytes) else arn.encode()
    return der.tlv(der.SEQUENCE, der.octet_string(raw) + der.octet_string(blob))


@pytest.mark.parametrize(
    "fields, fragment",
    [
        (der.integer(1) + der.integer(2) + der.tlv(der.SET, b"") + der.tlv(der.SET, b""), "no encrypted data key"),
        (der.integer(1) + der.integer(2) + der.tlv(der.SET, _edk() + _edk()) + der.tlv(der.SET, b""), "same CMK"),
        (der.integer(1) + der.integer(99) + der.tlv(der.SET, _edk()) + der.tlv(der.SET, b""), "unknown algorithm"),
        (
            der.integer(1) + der.integer(2) + der.tlv(der.SET, _edk(arn=b"acs:kms:\xff")) + der.tlv(der.SET, b""),
            "UTF-8",
        ),
        (
            der.integer(1)
            + der.integer(2)
            + der.tlv(der.SET, _edk())
            + der.tlv(der.SET, 2 * der.tlv(der.SEQUENCE, der.octet_string(b"k") + der.octet_string(b"v"))),
            "repeats a key",
        ),
        (
            b"\x02\x02\x00\x01" + der.integer(2) + der.tlv(der.SET, _edk()) + der.tlv(der.SET, b""),
            "non-minimal INTEGER",
        ),
        (b"\x02\x01\xff" + der.integer(2) + der.tlv(der.SET, _edk()) + der.tlv(der.SET, b""), "negative"),
    ],
)
def test_header_strictness(fields, fragment):
    with pytest.raises(kmsenv.MessageFormatError, match=fragment):
        codec.decode_message(_rebuild(fields))


def test_wrong_iv_and_tag_lengths_rejected():
    fields = der.integer(1) + der.integer(2) + der.tlv(der.SET, _edk()) + der.tlv(der.SET, b"")
    with pytest.raises(kmsenv.MessageFormatError, match="header IV"):
        codec.decode_message(_rebuild(fields, iv=bytes(16)))
    with pytest.raises(kmsenv.MessageFormatError, match="header auth tag"):
        codec.decode_message(_rebuild(fields, tag=bytes(12)))
    with pytest.raises(kmsenv.MessageFormatError, match="body IV"):
        codec.decode_message(_rebuild(fields, body=codec.encode_body(bytes(16), b"x", bytes(16))))
    with pytest.raises(kmsenv.MessageFormatError, match="body auth tag"):
        codec.decode_message(_rebuild(fields, body=codec.encode_body(bytes(12), b"x", b"")))


def test_context_limit_on_encrypt():
    provider = FakeKmsProvider()
    with pytest.raises(kmsenv.ConfigurationError, match="32767"):
        kmsenv.encrypt(b"x", provider, encryption_context={"k": "v" * 32767})
    assert provider.generate_calls == 0
    ok = kmsenv.encrypt(b"x", provider, encryption_context={"k": "v" * 32000})
    assert kmsenv.decrypt(ok.ciphertext, provider).plaintext == b"x"


def test_parse_header_makes_no_provider_call():
    msg, provider = _message(encryption_context={"tenant": "acme"})
    header = kmsenv.parse_header(msg)
    assert header.version == 1
    assert header.algorithm is kmsenv.Algorithm.AES_GCM_NOPADDING_256
    assert [e.key_arn for e in header.encrypted_data_keys] == [ARN_BJ]
    assert dict(header.encryption_context) == {"tenant": "acme"}
    assert len(header.header_iv) == 12 and len(header.header_auth_tag) == 16
    assert provider.decrypt_calls == 0
    with pytest.raises(TypeError):
        header.encryption_context["tenant"] = "evil"  # read-only


def test_short_and_odd_framings_are_format_errors():
    """The fast framing path must hand every odd input to the strict reader."""
    msg, provider = _message()
    for n in range(0, 12):
        for prefix in (msg[:n], b"\x30\x84" + msg[2:n], b"\x30\x06\x30\x84\x00\x00"[:n]):
            with pytest.raises(kmsenv.MessageFormatError):
                codec.message_header(prefix)
    for blob in (b"\x30\x08\x30\x84\x00\x00\x01\x00\x00\x00", b"\x30\x81\x05" + bytes(5), bytes(10)):
        with pytest.raises(kmsenv.MessageFormatError):
            kmsenv.decrypt(blob, provider)
