"""A tiny, strict proto3 codec for the instance gateway's ``api.proto``.

The gateway's messages use four scalar types (``string``, ``bytes``, ``int32``, ``bool``)
and one repeated string, so a schema table and ~150 lines replace a protobuf runtime
(``alibabacloud-dkms-gcs`` pins ``protobuf<4``; kmsenv must not).  The schema below is
the ``api.proto`` of ``alibabacloud-dkms-gcs`` 1.0.2 as reconstructed in the spec
(kms-instance-gateway.md §3.3); it is parsed once at import.

Encoding follows proto3 as the official client does: fields in number order, default
values (``""``, ``b""``, ``0``, ``False``) omitted.  Decoding is strict where protobuf is
lenient only by accident: every length is checked against what is left, varints are at
most 10 bytes, a known field must arrive with its own wire type, strings must be UTF-8,
an int32 must fit, a bool is 0 or 1, groups are refused.  Unknown fields are skipped, as
proto3 requires (newer gateways may add fields); a repeated singular field keeps its last
value, as protobuf does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Union

from .errors import ErrorBody, ProtobufError

__all__ = [
    "MessageType",
    "MESSAGES",
    "message",
    "encode",
    "decode",
    "encode_error",
    "decode_error",
    "MAX_MESSAGE_BYTES",
]

#: The gateway refuses bodies over 3 MB (HTTP 413); nothing legitimate is larger.
MAX_MESSAGE_BYTES = 3 * 1024 * 1024
_MAX_VARINT_BYTES = 10
_MAX_REPEATED = 1024  # VersionStages holds a handful

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_WIRE_TYPE = {"string": _LEN, "bytes": _LEN, "int32": _VARINT, "bool": _VARINT}
_DEFAULTS: dict[str, Any] = {"string": "", "bytes": b"", "int32": 0, "bool": False}

Value = Union[str, bytes, int, bool, list[str]]

API_PROTO = """
message EncryptRequest   { string KeyId=1; bytes Plaintext=2; string Algorithm=3; bytes Aad=4; bytes Iv=5; string PaddingMode=6; }
message EncryptResponse  { string KeyId=1; bytes CiphertextBlob=2; bytes Iv=3; string RequestId=4; string Algorithm=5; string PaddingMode=6; }
message DecryptRequest   { bytes CiphertextBlob=1; string KeyId=2; string Algorithm=3; bytes Aad=4; bytes Iv=5; string PaddingMode=6; }
message DecryptResponse  { string KeyId=1; bytes Plaintext=2; string RequestId=3; string Algorithm=4; string PaddingMode=5; }
message SignRequest      { string KeyId=1; bytes Digest=2; string Algorithm=3; bytes Message=4; string MessageType=5; }
message SignResponse     { string KeyId=1; bytes Signature=2; string RequestId=3; string Algorithm=4; string MessageType=5; }
message VerifyRequest    { string KeyId=1; bytes Digest=2; bytes Signature=3; string Algorithm=4; bytes Message=5; string MessageType=6; }
message VerifyResponse   { string KeyId=1; bool Value=2; string RequestId=3; string Algorithm=4; string MessageType=5; }
message HmacRequest      { string KeyId=1; bytes Message=2; }
message HmacResponse     { string KeyId=1; bytes Signature=2; string RequestId=3; }
message GenerateRandomRequest  { int32 Length=1; }
message GenerateRandomResponse { bytes Random=1; string RequestId=2; }
message HashRequest      { bytes Message=1; string Algorithm=2; }
message HashResponse     { bytes Digest=1; string RequestId=3; }
message GenerateDataKeyRequest  { string KeyId=1; string Algorithm=2; int32 NumberOfBytes=3; bytes Aad=4; }
message GenerateDataKeyResponse { string KeyId=1; bytes Iv=2; bytes Plaintext=3; bytes CiphertextBlob=4; string RequestId=5; string Algorithm=6; }
message GetPublicKeyRequest  { string KeyId=1; }
message GetPublicKeyResponse { string KeyId=1; string PublicKey=2; string RequestId=3; }
message Error { int32 StatusCode=1; string ErrorCode=2; string ErrorMessage=3; string RequestId=4; }
message GetSecretValueRequest  { string SecretName=1; string VersionStage=2; string VersionId=3; bool FetchExtendedConfig=4; }
message GetSecretValueResponse { string SecretName=1; string SecretType=2; string SecretData=3; string SecretDataType=4;
  repeated string VersionStages=5; string VersionId=6; string CreateTime=7; string RequestId=8; string LastRotationDate=9;
  string NextRotationDate=10; string ExtendedConfig=11; string AutomaticRotation=12; string RotationInterval=13; }
message AdvanceEncryptRequest  { string KeyId=1; bytes Plaintext=2; string Algorithm=3; bytes Aad=4; bytes Iv=5; string PaddingMode=6; }
message AdvanceEncryptResponse { string KeyId=1; bytes CiphertextBlob=2; bytes Iv=3; string RequestId=4; string Algorithm=5; string PaddingMode=6; string KeyVersionId=7; }
message AdvanceDecryptRequest  { bytes CiphertextBlob=1; string KeyId=2; string Algorithm=3; bytes Aad=4; bytes Iv=5; string PaddingMode=6; }
message AdvanceDecryptResponse { string KeyId=1; bytes Plaintext=2; string RequestId=3; string Algorithm=4; string PaddingMode=5; string KeyVersionId=6; }
message AdvanceGenerateDataKeyRequest  { string KeyId=1; int32 NumberOfBytes=2; bytes Aad=3; }
message AdvanceGenerateDataKeyResponse { string KeyId=1; bytes Iv=2; bytes Plaintext=3; bytes CiphertextBlob=4; string RequestId=5; string Algorithm=6; string KeyVersionId=7; }
message GenerateDataKeyPairRequest  { string KeyId=1; string Algorithm=2; string KeyPairSpec=3; string KeyFormat=4; bytes Aad=5; }
message GenerateDataKeyPairResponse { string KeyId=1; bytes Iv=2; string KeyPairSpec=3; bytes PrivateKeyPlaintext=4; bytes PrivateKeyCiphertextBlob=5; bytes PublicKey=6; string RequestId=7; string Algorithm=8; }
message GenerateDataKeyPairWithoutPlaintextRequest  { string KeyId=1; string Algorithm=2; string KeyPairSpec=3; string KeyFormat=4; bytes Aad=5; }
message GenerateDataKeyPairWithoutPlaintextResponse { string KeyId=1; bytes Iv=2; string KeyPairSpec=3; bytes PrivateKeyCiphertextBlob=4; bytes PublicKey=5; string RequestId=6; string Algorithm=7; }
message AdvanceGenerateDataKeyPairRequest  { string KeyId=1; string KeyPairSpec=2; string KeyFormat=3; bytes Aad=4; }
message AdvanceGenerateDataKeyPairResponse { string KeyId=1; bytes Iv=2; string KeyPairSpec=3; bytes PrivateKeyPlaintext=4; bytes PrivateKeyCiphertextBlob=5; bytes PublicKey=6; string RequestId=7; string Algorithm=8; string KeyVersionId=9; }
message AdvanceGenerateDataKeyPairWithoutPlaintextRequest  { string KeyId=1; string KeyPairSpec=2; string KeyFormat=3; bytes Aad=4; }
message AdvanceGenerateDataKeyPairWithoutPlaintextResponse { string KeyId=1; bytes Iv=2; string KeyPairSpec=3; bytes PrivateKeyCiphertextBlob=4; bytes PublicKey=5; string RequestId=6; string Algorithm=7; string KeyVersionId=8; }
message KmsEncryptRequest { string KeyId=1; bytes Plaintext=2; bytes Aad=3; }
message KmsEncryptResponse { string KeyId=1; bytes CiphertextBlob=2; string RequestId=3; }
message KmsDecryptRequest { bytes CiphertextBlob=1; bytes Aad=2; }
message KmsDecryptResponse { string KeyId=1; bytes Plaintext=2; string RequestId=3; }
"""


@dataclass(frozen=True)
class Field:
    number: int
    name: str
    kind: str  # "string", "bytes", "int32" or "bool"
    repeated: bool = False


class MessageType:
    """One message of the schema: ``encode(dict) -> bytes``, ``decode(bytes) -> dict``."""

    def __init__(self, name: str, fields: list[Field]) -> None:
        self.name = name
        self.fields = sorted(fields, key=lambda f: f.number)
        self._by_number = {f.number: f for f in self.fields}
        self._by_name = {f.name: f for f in self.fields}
        if len(self._by_number) != len(fields) or len(self._by_name) != len(fields):
            raise ValueError(f"{name}: duplicate field")

    def __repr__(self) -> str:
        return f"MessageType({self.name!r})"

    def defaults(self) -> dict[str, Value]:
        return {f.name: ([] if f.repeated else _DEFAULTS[f.kind]) for f in self.fields}

    def encode(self, values: Mapping[str, Any]) -> bytes:
        unknown = set(values) - set(self._by_name)
        if unknown:
            raise ProtobufError(f"{self.name} has no field {sorted(unknown)[0]!r}")
        out = bytearray()
        for f in self.fields:
            value = values.get(f.name)
            if value is None:
                continue
            items = value if f.repeated else [value]
            if f.repeated and (isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple))):
                raise ProtobufError(f"{self.name}.{f.name} must be a list of strings")
            for item in items:
                _encode_field(out, f, item, self.name)
        return bytes(out)

    def decode(self, data: bytes, max_size: int = MAX_MESSAGE_BYTES) -> dict[str, Value]:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ProtobufError(f"{self.name}: expected bytes")
        view = memoryview(data)
        if len(view) > max_size:
            raise ProtobufError(f"{self.name}: {len(view)} bytes is over the {max_size}-byte limit")
        result = self.defaults()
        pos = 0
        while pos < len(view):
            tag, pos = _read_varint(view, pos, self.name)
            number, wire = tag >> 3, tag & 7
            if number == 0 or number > 0x1FFFFFFF:
                raise ProtobufError(f"{self.name}: invalid field number")
            f = self._by_number.get(number)
            if f is None:
                pos = _skip(view, pos, wire, self.name)
                continue
            if wire != _WIRE_TYPE[f.kind]:
                raise ProtobufError(f"{self.name}.{f.name}: wire type {wire}, expected {_WIRE_TYPE[f.kind]}")
            value, pos = _read_value(view, pos, f, self.name)
            if f.repeated:
                stages = result[f.name]
                assert isinstance(stages, list)
                if len(stages) >= _MAX_REPEATED:
                    raise ProtobufError(f"{self.name}.{f.name}: more than {_MAX_REPEATED} items")
                stages.append(value)
            else:
                result[f.name] = value
        return result


def _encode_varint(out: bytearray, value: int) -> None:
    value &= (1 << 64) - 1  # negative int32s are sign-extended to 64 bits (10 bytes)
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _encode_field(out: bytearray, f: Field, value: Any, message_name: str) -> None:
    where = f"{message_name}.{f.name}"
    if f.kind == "string":
        if not isinstance(value, str):
            raise ProtobufError(f"{where} must be a str")
        if value == "" and not f.repeated:
            return
        payload = value.encode("utf-8")
    elif f.kind == "bytes":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ProtobufError(f"{where} must be bytes")
        payload = bytes(value)
        if not payload:
            return
    elif f.kind == "int32":
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
            raise ProtobufError(f"{where} must be an int32")
        if value:
            _encode_varint(out, (f.number << 3) | _VARINT)
            _encode_varint(out, value)
        return
    else:  # bool
        if not isinstance(value, bool):
            raise ProtobufError(f"{where} must be a bool")
        if value:
            _encode_varint(out, (f.number << 3) | _VARINT)
            out.append(1)
        return
    _encode_varint(out, (f.number << 3) | _LEN)
    _encode_varint(out, len(payload))
    out += payload


def _read_varint(view: memoryview, pos: int, name: str) -> tuple[int, int]:
    result = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos >= len(view):
            raise ProtobufError(f"{name}: truncated varint")
        byte = view[pos]
        pos += 1
        if i == _MAX_VARINT_BYTES - 1 and byte > 1:
            raise ProtobufError(f"{name}: varint over 64 bits")
        result |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return result, pos
    raise ProtobufError(f"{name}: varint longer than {_MAX_VARINT_BYTES} bytes")


def _read_length(view: memoryview, pos: int, name: str) -> tuple[int, int]:
    length, pos = _read_varint(view, pos, name)
    if length > len(view) - pos:
        raise ProtobufError(f"{name}: a field's length runs past the end of the message")
    return pos + length, pos


def _read_value(view: memoryview, pos: int, f: Field, name: str) -> tuple[Any, int]:
    where = f"{name}.{f.name}"
    if f.kind in ("string", "bytes"):
        end, start = _read_length(view, pos, where)
        raw = bytes(view[start:end])
        if f.kind == "bytes":
            return raw, end
        try:
            return raw.decode("utf-8"), end
        except UnicodeDecodeError:
            raise ProtobufError(f"{where}: not UTF-8") from None
    value, pos = _read_varint(view, pos, where)
    if f.kind == "bool":
        if value > 1:
            raise ProtobufError(f"{where}: a bool must be 0 or 1")
        return bool(value), pos
    if value >= 1 << 63:  # sign-extended negative
        value -= 1 << 64
    if not -(2**31) <= value < 2**31:
        raise ProtobufError(f"{where}: out of int32 range")
    return value, pos


def _skip(view: memoryview, pos: int, wire: int, name: str) -> int:
    if wire == _VARINT:
        return _read_varint(view, pos, name)[1]
    if wire == _LEN:
        return _read_length(view, pos, name)[0]
    width = {_I64: 8, _I32: 4}.get(wire)
    if width is None:
        raise ProtobufError(f"{name}: unsupported wire type {wire}")
    if width > len(view) - pos:
        raise ProtobufError(f"{name}: truncated fixed-width field")
    return pos + width


_MESSAGE_RE = re.compile(r"message\s+(\w+)\s*\{([^}]*)\}")
_FIELD_RE = re.compile(r"(repeated\s+)?(string|bytes|int32|bool)\s+(\w+)\s*=\s*(\d+)\s*;")


def _parse_schema(text: str) -> dict[str, MessageType]:
    messages = {}
    for name, body in _MESSAGE_RE.findall(text):
        fields = [Field(int(num), fname, kind, bool(rep)) for rep, kind, fname, num in _FIELD_RE.findall(body)]
        if len(fields) != body.count(";"):
            raise ValueError(f"unparsed field in {name}")
        messages[name] = MessageType(name, fields)
    return messages


MESSAGES: dict[str, MessageType] = _parse_schema(API_PROTO)


def message(name: str) -> MessageType:
    try:
        return MESSAGES[name]
    except KeyError:
        raise ProtobufError(f"no message {name!r} in api.proto") from None


def encode(name: str, values: Mapping[str, Any]) -> bytes:
    return message(name).encode(values)


def decode(name: str, data: bytes, max_size: int = MAX_MESSAGE_BYTES) -> dict[str, Value]:
    return message(name).decode(data, max_size)


def encode_error(error: ErrorBody) -> bytes:
    return encode(
        "Error",
        {
            "StatusCode": error.status_code,
            "ErrorCode": error.error_code,
            "ErrorMessage": error.error_message,
            "RequestId": error.request_id,
        },
    )


def decode_error(data: bytes) -> ErrorBody:
    fields = decode("Error", data, max_size=64 * 1024)
    return ErrorBody(
        int(fields["StatusCode"]),  # type: ignore[arg-type]
        str(fields["ErrorCode"]),
        str(fields["ErrorMessage"]),
        str(fields["RequestId"]),
    )
