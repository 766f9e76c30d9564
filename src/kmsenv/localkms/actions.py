"""The KMS actions of one region: parameters in, response fields out.

Knows nothing about HTTP or signatures; the server passes decoded parameters and turns
:class:`KmsError` into an error response.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import json
import os
import time
from typing import Any, Callable, Mapping, Optional

from . import asymmetric, blob
from .errors import KmsError, alias_not_found, invalid, key_not_found, key_state, missing
from .keystore import KEY_SPECS, Key, KeyStore, KeyVersion

Params = Mapping[str, str]
Response = dict[str, Any]

MAX_PLAINTEXT_BYTES = 6144
_MAX_KEY_VERSIONS = 50  # per key (KMS 1.0, §14.3)
_VERSION_INTERVAL = 7 * 86400  # seconds between versions with strict_version_interval
_DATA_KEY_SPECS = {"AES_256": 32, "AES_128": 16, "SM4_128": 16}
_ALIAS_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-/:")
_LIST_FILTER_FIELDS = {
    "KeyState": "state",
    "KeySpec": "key_spec",
    "KeyUsage": "key_usage",
    "ProtectionLevel": "protection_level",
    "CreatorType": None,
}


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


def flag(params: Params, name: str) -> bool:
    """A boolean parameter: the clients send ``True``/``False`` (Python's ``str(bool)``)
    or whatever the caller typed, so any case of true/false (§14.1 item 3)."""
    raw = params.get(name)
    if raw is None or raw == "":
        return False
    lowered = raw.lower()
    if lowered not in ("true", "false"):
        raise invalid(name)
    return lowered == "true"


def _base64(params: Params, name: str) -> bytes:
    try:
        return base64.b64decode(_required(params, name), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(name) from None


def unsupported() -> KmsError:
    return KmsError(400, "Rejected.UnsupportedOperation", "Unsupported operation.")


def key_version_not_found() -> KmsError:
    return KmsError(404, "Forbidden.KeyVersionNotFound", "The specified Key version is not found.")


def _dry_run(params: Params) -> None:
    if params.get("DryRun", "").lower() == "true":
        raise KmsError(400, "DryRunOperation", "Request validation has been passed with DryRun flag set.")


class RegionActions:
    def __init__(
        self,
        region: str,
        account_uid: str,
        store: KeyStore,
        all_regions: Callable[[], list[str]],
        *,
        clock: Callable[[], float] = time.time,
        strict_version_interval: bool = False,
    ) -> None:
        self.region = region
        self.account_uid = account_uid
        self.store = store
        self._all_regions = all_regions
        self.clock = clock
        # KMS 1.0 allows a new asymmetric key version only 7 days after the last one; off
        # by default because tests rotate many times (§14.3).
        self.strict_version_interval = strict_version_interval
        self.handlers: dict[str, Callable[[Params], Response]] = {
            "CreateKey": self.create_key,
            "DescribeKey": self.describe_key,
            "ListKeys": self.list_keys,
            "CreateAlias": self.create_alias,
            "ListAliases": self.list_aliases,
            "EnableKey": self.enable_key,
            "DisableKey": self.disable_key,
            "GenerateDataKey": self.generate_data_key,
            "GenerateDataKeyWithoutPlaintext": self.generate_data_key_without_plaintext,
            "Encrypt": self.encrypt,
            "Decrypt": self.decrypt,
            "ReEncrypt": self.re_encrypt,
            "DescribeRegions": self.describe_regions,
            "ListKeyVersions": self.list_key_versions,
            "DescribeKeyVersion": self.describe_key_version,
            "CreateKeyVersion": self.create_key_version,
            "GetPublicKey": self.get_public_key,
            "AsymmetricSign": self.asymmetric_sign,
            "AsymmetricVerify": self.asymmetric_verify,
            "AsymmetricEncrypt": self.asymmetric_encrypt,
            "AsymmetricDecrypt": self.asymmetric_decrypt,
        }
        # Imported here: secrets builds on this class's key lookups.
        from .secrets import SecretActions

        self.secrets = SecretActions(self, clock=clock)
        self.handlers.update(self.secrets.handlers)

    # -- helpers -------------------------------------------------------------------

    def key_arn(self, key_id: str) -> str:
        return f"acs:kms:{self.region}:{self.account_uid}:key/{key_id}"

    def alias_arn(self, alias_name: str) -> str:
        return f"acs:kms:{self.region}:{self.account_uid}:{alias_name}"

    def resolve(self, ref: str) -> Key:
        """Key ID, ``alias/name``, key ARN or alias ARN, resolved in this region only."""
        if ref.startswith("acs:kms:"):
            parts = ref.split(":", 4)
            if len(parts) != 5 or parts[2] != self.region or parts[3] != self.account_uid:
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
        """A key for the symmetric operations: symmetric, Enabled, ENCRYPT/DECRYPT."""
        if key.asymmetric:  # §14.5: symmetric operations on an asymmetric key
            raise unsupported()
        if key.state != "Enabled":
            raise key_state(key.state)
        if key.key_usage != "ENCRYPT/DECRYPT":
            raise unsupported()
        return key

    def _seal(self, key: Key, plaintext: bytes, ctx: bytes) -> tuple[str, str]:
        version = self.store.get_version(self.region, key.primary_version)
        if version is None:  # only possible with a hand-edited state database
            raise KmsError(500, "InternalFailure", "Internal Failure.")
        return version.version_id, blob.seal(version.aead, version.version_id, key.key_id, self.region, plaintext, ctx)

    def _unseal(self, ciphertext: str, ctx: bytes) -> tuple[Key, str, bytes]:
        try:
            version_id, raw = blob.split(ciphertext)
        except blob.BlobError:
            raise invalid("CiphertextBlob") from None
        # A blob from another region names a version this region has never seen.
        version = self.store.get_version(self.region, version_id)
        key = self.store.get_key(self.region, version.key_id) if version is not None else None
        if version is None or key is None:
            raise key_not_found()
        self._usable(key)
        try:
            plaintext = blob.open_(version.aead, raw, key.key_id, self.region, ctx)
        except blob.BlobError:
            raise invalid("CiphertextBlob") from None
        return key, version_id, plaintext

    def _metadata(self, key: Key) -> dict[str, str]:
        versions = self.store.list_versions(self.region, key.key_id)
        last_rotation = versions[-1].creation_date if versions else key.creation_date
        if key.asymmetric:
            # No primary version and no rotation fields for asymmetric keys (§14.2).
            return {
                "KeyId": key.key_id,
                "Arn": self.key_arn(key.key_id),
                "CreationDate": key.creation_date,
                "Creator": self.account_uid,
                "Description": key.description,
                "KeySpec": key.key_spec,
                "KeyUsage": key.key_usage,
                "KeyState": key.state,
                "Origin": key.origin,
                "ProtectionLevel": key.protection_level,
                "AutomaticRotation": "Disabled",
                "LastRotationDate": last_rotation,
                "DeleteDate": "",
                "MaterialExpireTime": "",
                "DeletionProtection": "Disabled",
            }
        return {
            "KeyId": key.key_id,
            "Arn": self.key_arn(key.key_id),
            "CreationDate": key.creation_date,
            "Creator": self.account_uid,
            "Description": key.description,
            "KeySpec": key.key_spec,
            "KeyState": key.state,
            "KeyUsage": key.key_usage,
            "Origin": key.origin,
            "PrimaryKeyVersion": key.primary_version,
            "ProtectionLevel": key.protection_level,
            "AutomaticRotation": "Disabled",
            "RotationInterval": "",
            "LastRotationDate": last_rotation,
            "NextRotationDate": "",
            "DeleteDate": "",
            "MaterialExpireTime": "",
            "DeletionProtection": "Disabled",
            "DeletionProtectionDescription": "",
        }

    @staticmethod
    def _page(params: Params, items: list[Any], default_size: int = 10) -> tuple[int, int, list[Any]]:
        number = _int_param(params, "PageNumber", 1, 1, 1 << 31)
        size = _int_param(params, "PageSize", default_size, 1, 100)
        return number, size, items[(number - 1) * size : number * size]

    # -- key management ------------------------------------------------------------

    def create_key(self, params: Params) -> Response:
        spec = params.get("KeySpec") or "Aliyun_AES_256"
        if spec not in KEY_SPECS and spec not in asymmetric.ASYMMETRIC_SPECS:
            raise invalid("KeySpec")
        # The default is SIGN/VERIFY for every spec that can sign (§14.2).
        allowed = asymmetric.usages(spec) if spec in asymmetric.ASYMMETRIC_SPECS else ("ENCRYPT/DECRYPT",)
        usage = params.get("KeyUsage") or allowed[0]
        if usage not in allowed:
            raise invalid("KeyUsage")
        if (params.get("Origin") or "Aliyun_KMS") != "Aliyun_KMS":
            raise invalid("Origin", "Only Aliyun_KMS is supported by localkms.")
        if spec in asymmetric.ASYMMETRIC_SPECS and flag(params, "EnableAutomaticRotation"):
            raise invalid("EnableAutomaticRotation", "Automatic rotation is unavailable for asymmetric keys.")
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
        return {
            "Keys": {"Key": [{"KeyId": k.key_id, "KeyArn": self.key_arn(k.key_id)} for k in page]},
            "TotalCount": len(keys),
            "PageNumber": number,
            "PageSize": size,
        }

    def create_alias(self, params: Params) -> Response:
        name = _required(params, "AliasName")
        if (
            not name.startswith("alias/")
            or len(name) > 255
            or len(name) <= 6
            or name.startswith("alias/acs")
            or not set(name) <= _ALIAS_CHARS
        ):
            raise invalid("AliasName")
        key = self.resolve(_required(params, "KeyId"))
        if not self.store.create_alias(self.region, name, key.key_id):
            raise KmsError(400, "AliasAlreadyExists", "AliasName Already Exists.")
        return {}

    def list_aliases(self, params: Params) -> Response:
        aliases = self.store.list_aliases(self.region)
        number, size, page = self._page(params, aliases)
        return {
            "Aliases": {"Alias": [{"AliasName": n, "AliasArn": self.alias_arn(n), "KeyId": k} for n, k in page]},
            "TotalCount": len(aliases),
            "PageNumber": number,
            "PageSize": size,
        }

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
        response: Response = {"KeyId": key.key_id, "KeyVersionId": version_id, "CiphertextBlob": ciphertext}
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
        return {
            "KeyId": key.key_id,
            "KeyVersionId": version_id,
            "Plaintext": plaintext.decode("utf-8", errors="replace"),
        }

    def re_encrypt(self, params: Params) -> Response:
        ciphertext = _required(params, "CiphertextBlob")
        destination = self._usable(self.resolve(_required(params, "DestinationKeyId")))
        source_ctx = _context(params, "SourceEncryptionContext")
        dest_ctx = _context(params, "DestinationEncryptionContext")
        _, _, plaintext = self._unseal(ciphertext, source_ctx)
        _dry_run(params)
        version_id, new_blob = self._seal(destination, plaintext, dest_ctx)
        return {"KeyId": destination.key_id, "KeyVersionId": version_id, "CiphertextBlob": new_blob}

    # -- key versions and asymmetric keys (§14.3-§14.6) ------------------------------

    @staticmethod
    def _version_info(version: KeyVersion) -> dict[str, str]:
        return {"KeyId": version.key_id, "KeyVersionId": version.version_id, "CreationDate": version.creation_date}

    def _version(self, key: Key, version_id: str) -> KeyVersion:
        version = self.store.get_version(self.region, version_id)
        if version is None or version.key_id != key.key_id:
            raise key_version_not_found()
        return version

    def list_key_versions(self, params: Params) -> Response:
        key = self.resolve(_required(params, "KeyId"))
        versions = self.store.list_versions(self.region, key.key_id)
        number, size, page = self._page(params, versions)
        return {
            "KeyVersions": {"KeyVersion": [self._version_info(v) for v in page]},
            "TotalCount": len(versions),
            "PageNumber": number,
            "PageSize": size,
        }

    def describe_key_version(self, params: Params) -> Response:
        key_ref = _required(params, "KeyId")
        version_id = _required(params, "KeyVersionId")
        return {"KeyVersion": self._version_info(self._version(self.resolve(key_ref), version_id))}

    def create_key_version(self, params: Params) -> Response:
        """Served for asymmetric keys (KMS 1.0) and symmetric ones (KMS 3.0 / §5.2: the
        new version becomes primary).  The 7-day interval is not enforced (§14.3)."""
        key = self.resolve(_required(params, "KeyId"))
        if key.state != "Enabled":
            raise key_state(key.state)
        versions = self.store.list_versions(self.region, key.key_id)
        if self.strict_version_interval and versions:
            newest = calendar.timegm(time.strptime(versions[-1].creation_date, "%Y-%m-%dT%H:%M:%SZ"))
            if self.clock() - newest < _VERSION_INTERVAL:
                raise unsupported()
        if len(versions) >= _MAX_KEY_VERSIONS:
            raise KmsError(400, "Rejected.LimitExceeded", "The key version quota is exceeded.")
        _dry_run(params)
        _, version = self.store.create_version(self.region, key.key_id)
        return {"KeyVersion": self._version_info(version)}

    def _asymmetric(
        self, params: Params, usage: Optional[str], blobs: tuple[str, ...] = ()
    ) -> tuple[Key, KeyVersion, dict[str, bytes]]:
        """The common checks of §14.6 rows 1-7 in order: required parameters, base64,
        key, version, key type and usage (``None``: any asymmetric usage), state."""
        key_ref = _required(params, "KeyId")
        version_id = _required(params, "KeyVersionId")
        if usage is not None:
            _required(params, "Algorithm")
        for name in blobs:
            _required(params, name)
        decoded = {name: _base64(params, name) for name in blobs}
        key = self.resolve(key_ref)
        version = self._version(key, version_id)
        if not key.asymmetric or (usage is not None and key.key_usage != usage):
            raise unsupported()
        if key.state != "Enabled":
            raise key_state(key.state)
        return key, version, decoded

    @staticmethod
    def _algorithm(params: Params, key: Key, table: Mapping[str, tuple[str, ...]]) -> str:
        algorithm = params["Algorithm"]
        if algorithm not in table.get(key.key_spec, ()):
            raise invalid("Algorithm")
        return algorithm

    @staticmethod
    def _pair(version: KeyVersion) -> asymmetric.AsymmetricKey:
        pair = version.aead
        if not isinstance(pair, asymmetric.AsymmetricKey):  # hand-edited state only
            raise KmsError(500, "InternalFailure", "Internal Failure.")
        return pair

    def get_public_key(self, params: Params) -> Response:
        key, version, _ = self._asymmetric(params, None)
        _dry_run(params)
        return {"KeyId": key.key_id, "KeyVersionId": version.version_id, "PublicKey": self._pair(version).public_pem()}

    def _signing(self, params: Params, blobs: tuple[str, ...]) -> tuple[Key, KeyVersion, str, dict[str, bytes]]:
        key, version, decoded = self._asymmetric(params, "SIGN/VERIFY", blobs)
        algorithm = self._algorithm(params, key, asymmetric.SIGN_ALGORITHMS)
        if len(decoded["Digest"]) != asymmetric.DIGEST_LEN:
            raise invalid("Digest", "It must be the base64 of a 32-byte digest.")
        return key, version, algorithm, decoded

    def asymmetric_sign(self, params: Params) -> Response:
        key, version, algorithm, decoded = self._signing(params, ("Digest",))
        _dry_run(params)
        signature = self._pair(version).sign(algorithm, decoded["Digest"])
        return {
            "KeyId": key.key_id,
            "KeyVersionId": version.version_id,
            "Value": base64.b64encode(signature).decode("ascii"),
        }

    def asymmetric_verify(self, params: Params) -> Response:
        key, version, algorithm, decoded = self._signing(params, ("Digest", "Value"))
        _dry_run(params)
        valid = self._pair(version).verify(algorithm, decoded["Digest"], decoded["Value"])
        # A JSON boolean: the V2 client passes a string "false" through, and it is truthy.
        return {"KeyId": key.key_id, "KeyVersionId": version.version_id, "Value": bool(valid)}

    def asymmetric_encrypt(self, params: Params) -> Response:
        key, version, decoded = self._asymmetric(params, "ENCRYPT/DECRYPT", ("Plaintext",))
        algorithm = self._algorithm(params, key, asymmetric.ENCRYPT_ALGORITHMS)
        pair = self._pair(version)
        plaintext = decoded["Plaintext"]
        limit = pair.max_plaintext(algorithm)
        if not plaintext or len(plaintext) > limit:
            raise invalid("Plaintext", f"It must be 1 to {limit} bytes for {algorithm}.")
        _dry_run(params)
        return {
            "KeyId": key.key_id,
            "KeyVersionId": version.version_id,
            "CiphertextBlob": base64.b64encode(pair.encrypt(algorithm, plaintext)).decode("ascii"),
        }

    def asymmetric_decrypt(self, params: Params) -> Response:
        key, version, decoded = self._asymmetric(params, "ENCRYPT/DECRYPT", ("CiphertextBlob",))
        algorithm = self._algorithm(params, key, asymmetric.ENCRYPT_ALGORITHMS)
        _dry_run(params)
        try:
            plaintext = self._pair(version).decrypt(algorithm, decoded["CiphertextBlob"])
        except asymmetric.DecryptError:
            raise invalid("CiphertextBlob") from None
        return {
            "KeyId": key.key_id,
            "KeyVersionId": version.version_id,
            "Plaintext": base64.b64encode(plaintext).decode("ascii"),
        }
