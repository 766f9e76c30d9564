"""The KMS actions of one region: parameters in, response fields out.

Knows nothing about HTTP or signatures; the server passes decoded parameters and turns
:class:`KmsError` into an error response.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any, Callable, Mapping

from . import blob
from .errors import KmsError, alias_not_found, invalid, key_not_found, key_state, missing
from .keystore import KEY_SPECS, Key, KeyStore

Params = Mapping[str, str]
Response = dict[str, Any]

MAX_PLAINTEXT_BYTES = 6144
_DATA_KEY_SPECS = {"AES_256": 32, "AES_128": 16, "SM4_128": 16}
_UNSUPPORTED_SPECS = {"RSA_2048", "RSA_3072", "EC_P256", "EC_P256K", "EC_SM2"}
_ALIAS_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-/:")
_LIST_FILTER_FIELDS = {"KeyState": "state", "KeySpec": "key_spec", "KeyUsage": "key_usage",
                       "ProtectionLevel": "protection_level", "CreatorType": None}


def _required(params: Params, name: str) -> str:
    value = params.get(name)
    if value is None or value == "":
        raise missing(name)
    return value


def _int_param(params: Params, name: str, default: int, lo: int, hi: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(name) from None
    if not lo <= value <= hi:
        raise invalid(name)
    return value


def _context(params: Params, name: str = "EncryptionContext") -> bytes:
    """Digest of the context parameter; absent, empty or ``{}`` all mean "no context".

    ``null`` is refused: it is what the official client sends when given a JSON *string*
    instead of a dict, and accepting it would silently drop the caller's context.
    """
    raw = params.get(name)
    if raw is None or raw == "":
        return b""
    try:
        ctx = json.loads(raw)
    except ValueError:
        raise invalid(name, "It must be a JSON object.") from None
    if not isinstance(ctx, dict) or not all(isinstance(v, str) for v in ctx.values()):
        raise invalid(name, "It must be a JSON object whose values are strings.")
    return blob.context_digest(ctx)


def _dry_run(params: Params) -> None:
    if params.get("DryRun", "").lower() == "true":
        raise KmsError(400, "DryRunOperation",
                       "Request validation has been passed with DryRun flag set.")


class RegionActions:
    def __init__(self, region: str, account_uid: str, store: KeyStore,
                 all_regions: Callable[[], list[str]]) -> None:
        self.region = region
        self.account_uid = account_uid
        self.store = store
        self._all_regions = all_regions
        self.handlers: dict[str, Callable[[Params], Response]] = {
            "CreateKey": self.create_key, "DescribeKey": self.describe_key,
            "ListKeys": self.list_keys, "CreateAlias": self.create_alias,
            "ListAliases": self.list_aliases, "EnableKey": self.enable_key,
            "DisableKey": self.disable_key, "GenerateDataKey": self.generate_data_key,
            "GenerateDataKeyWithoutPlaintext": self.generate_data_key_without_plaintext,
            "Encrypt": self.encrypt, "Decrypt": self.decrypt, "ReEncrypt": self.re_encrypt,
            "DescribeRegions": self.describe_regions,
        }

    # -- helpers -------------------------------------------------------------------

    def key_arn(self, key_id: str) -> str:
        return f"acs:kms:{self.region}:{self.account_uid}:key/{key_id}"

    def alias_arn(self, alias_name: str) -> str:
        return f"acs:kms:{self.region}:{self.account_uid}:{alias_name}"

    def resolve(self, ref: str) -> Key:
        """Key ID, ``alias/name``, key ARN or alias ARN, resolved in this region only."""
        if ref.startswith("acs:kms:"):
            parts = ref.split(":", 4)
            if (len(parts) != 5 or parts[2] != self.region
                    or parts[3] != self.account_uid):
                raise key_not_found()
            ref = parts[4]
            if ref.startswith("key/"):
                ref = ref[4:]
            elif not ref.startswith("alias/"):
                raise key_not_found()
        if ref.startswith("alias/"):
            target = self.store.alias_target(self.region, ref)
            if target is None:
                raise alias_not_found()
            ref = target
        key = self.store.get_key(self.region, ref)
        if key is None:
            raise key_not_found()
        return key

    def _usable(self, key: Key) -> Key:
        if key.state != "Enabled":
            raise key_state(key.state)
        if key.key_usage != "ENCRYPT/DECRYPT":
            raise KmsError(400, "Rejected.UnsupportedOperation", "Unsupported operation.")
        return key

    def _seal(self, key: Key, plaintext: bytes, ctx: bytes) -> tuple[str, str]:
        version = self.store.get_version(self.region, key.primary_version)
        if version is None:  # only possible with a hand-edited state database
            raise KmsError(500, "InternalFailure", "Internal Failure.")
        return version.version_id, blob.seal(version.aead, version.version_id, key.key_id,
                                             self.region, plaintext, ctx)

    def _unseal(self, ciphertext: str, ctx: bytes) -> tuple[Key, str, bytes]:
        try:
            version_id, raw = blob.split(ciphertext)
        except blob.BlobError:
            raise invalid("CiphertextBlob") from None
        # A blob from another region names a version this region has never seen.
        version = self.store.get_version(self.region, version_id)
        key = version and self.store.get_key(self.region, version.key_id)
        if version is None or key is None:
            raise key_not_found()
        self._usable(key)
        try:
            plaintext = blob.open_(version.aead, raw, key.key_id, self.region, ctx)
        except blob.BlobError:
            raise invalid("CiphertextBlob") from None
        return key, version_id, plaintext

    def _metadata(self, key: Key) -> dict[str, str]:
        return {
            "KeyId": key.key_id, "Arn": self.key_arn(key.key_id),
            "CreationDate": key.creation_date, "Creator": self.account_uid,
            "Description": key.description, "KeySpec": key.key_spec,
            "KeyState": key.state, "KeyUsage": key.key_usage, "Origin": key.origin,
            "PrimaryKeyVersion": key.primary_version,
            "ProtectionLevel": key.protection_level, "AutomaticRotation": "Disabled",
            "RotationInterval": "", "LastRotationDate": key.creation_date,
            "NextRotationDate": "", "DeleteDate": "", "MaterialExpireTime": "",
            "DeletionProtection": "Disabled", "DeletionProtectionDescription": "",
        }

    @staticmethod
    def _page(params: Params, items: list) -> tuple[int, int, list]:
        number = _int_param(params, "PageNumber", 1, 1, 1 << 31)
        size = _int_param(params, "PageSize", 10, 1, 100)
        return number, size, items[(number - 1) * size:number * size]

    # -- key management ------------------------------------------------------------

    def create_key(self, params: Params) -> Response:
        spec = params.get("KeySpec") or "Aliyun_AES_256"
        if spec not in KEY_SPECS:
            detail = "Asymmetric keys are not supported by localkms." \
                if spec in _UNSUPPORTED_SPECS else ""
            raise invalid("KeySpec", detail)
        usage = params.get("KeyUsage") or "ENCRYPT/DECRYPT"
        if usage != "ENCRYPT/DECRYPT":
            raise invalid("KeyUsage")
        if (params.get("Origin") or "Aliyun_KMS") != "Aliyun_KMS":
            raise invalid("Origin", "Only Aliyun_KMS is supported by localkms.")
        description = params.get("Description", "")
        if len(description) > 8192:
            raise invalid("Description")
        _dry_run(params)
        key = self.store.create_key(self.region, spec, description, usage)
        return {"KeyMetadata": self._metadata(key)}

    def describe_key(self, params: Params) -> Response:
        return {"KeyMetadata": self._metadata(self.resolve(_required(params, "KeyId")))}

    def list_keys(self, params: Params) -> Response:
        keys = self.store.list_keys(self.region)
        raw = params.get("Filters")
        if raw:
            try:
                filters = json.loads(raw)
                if not isinstance(filters, list):
                    raise ValueError
                for f in filters:
                    field_name = _LIST_FILTER_FIELDS[f["Key"]]
                    values = f["Values"]
                    if not isinstance(values, list):
                        raise ValueError
                    if field_name is not None:  # CreatorType: every key here is a user's
                        keys = [k for k in keys if getattr(k, field_name) in values]
            except (ValueError, KeyError, TypeError):
                raise invalid("Filters") from None
        number, size, page = self._page(params, keys)
        return {"Keys": {"Key": [{"KeyId": k.key_id, "KeyArn": self.key_arn(k.key_id)}
                                 for k in page]},
                "TotalCount": len(keys), "PageNumber": number, "PageSize": size}

    def create_alias(self, params: Params) -> Response:
        name = _required(params, "AliasName")
        if (not name.startswith("alias/") or len(name) > 255 or len(name) <= 6
                or name.startswith("alias/acs") or not set(name) <= _ALIAS_CHARS):
            raise invalid("AliasName")
        key = self.resolve(_required(params, "KeyId"))
        if not self.store.create_alias(self.region, name, key.key_id):
            raise KmsError(400, "AliasAlreadyExists", "AliasName Already Exists.")
        return {}

    def list_aliases(self, params: Params) -> Response:
        aliases = self.store.list_aliases(self.region)
        number, size, page = self._page(params, aliases)
        return {"Aliases": {"Alias": [{"AliasName": n, "AliasArn": self.alias_arn(n),
                                       "KeyId": k} for n, k in page]},
                "TotalCount": len(aliases), "PageNumber": number, "PageSize": size}

    def _set_state(self, params: Params, state: str) -> Response:
        key = self.resolve(_required(params, "KeyId"))
        if key.state in ("PendingDeletion", "PendingImport"):
            raise key_state(key.state)
        self.store.set_state(self.region, key.key_id, state)
        return {}

    def enable_key(self, params: Params) -> Response:
        return self._set_state(params, "Enabled")

    def disable_key(self, params: Params) -> Response:
        return self._set_state(params, "Disabled")

    def describe_regions(self, params: Params) -> Response:
        return {"Regions": {"Region": [{"RegionId": r} for r in self._all_regions()]}}

    # -- cryptographic operations --------------------------------------------------

    def _data_key(self, params: Params, with_plaintext: bool) -> Response:
        key = self._usable(self.resolve(_required(params, "KeyId")))
        spec = params.get("KeySpec") or "AES_256"
        if spec not in _DATA_KEY_SPECS:
            raise invalid("KeySpec")
        # NumberOfBytes wins over KeySpec, as documented for KMS.
        size = _int_param(params, "NumberOfBytes", _DATA_KEY_SPECS[spec], 1, 1024)
        ctx = _context(params)
        _dry_run(params)
        # KMS seals the base64 *text* of the data key (that is what makes blobs 144 chars).
        plaintext = base64.b64encode(os.urandom(size)).decode("ascii")
        version_id, ciphertext = self._seal(key, plaintext.encode("ascii"), ctx)
        response: Response = {"KeyId": key.key_id, "KeyVersionId": version_id,
                              "CiphertextBlob": ciphertext}
        if with_plaintext:
            response["Plaintext"] = plaintext
        return response

    def generate_data_key(self, params: Params) -> Response:
        return self._data_key(params, with_plaintext=True)

    def generate_data_key_without_plaintext(self, params: Params) -> Response:
        return self._data_key(params, with_plaintext=False)

    def encrypt(self, params: Params) -> Response:
        key = self._usable(self.resolve(_required(params, "KeyId")))
        plaintext = _required(params, "Plaintext").encode("utf-8")
        if len(plaintext) > MAX_PLAINTEXT_BYTES:
            raise invalid("Plaintext", f"It must be at most {MAX_PLAINTEXT_BYTES} bytes.")
        ctx = _context(params)
        _dry_run(params)
        version_id, ciphertext = self._seal(key, plaintext, ctx)
        return {"KeyId": key.key_id, "KeyVersionId": version_id, "CiphertextBlob": ciphertext}

    def decrypt(self, params: Params) -> Response:
        ciphertext = _required(params, "CiphertextBlob")
        ctx = _context(params)
        key, version_id, plaintext = self._unseal(ciphertext, ctx)
        _dry_run(params)
        return {"KeyId": key.key_id, "KeyVersionId": version_id,
                "Plaintext": plaintext.decode("utf-8", errors="replace")}

    def re_encrypt(self, params: Params) -> Response:
        ciphertext = _required(params, "CiphertextBlob")
        destination = self._usable(self.resolve(_required(params, "DestinationKeyId")))
        source_ctx = _context(params, "SourceEncryptionContext")
        dest_ctx = _context(params, "DestinationEncryptionContext")
        _, _, plaintext = self._unseal(ciphertext, source_ctx)
        _dry_run(params)
        version_id, new_blob = self._seal(destination, plaintext, dest_ctx)
        return {"KeyId": destination.key_id, "KeyVersionId": version_id,
                "CiphertextBlob": new_blob}
