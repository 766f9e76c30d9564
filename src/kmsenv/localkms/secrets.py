"""Secrets Manager actions (generic secrets) for one region (kms-local-server.md §14.7-§14.9).

A secret is one JSON document in the key store::

    {"name", "description", "encryption_key_id" ("" = the service key), "create_time",
     "update_time", "planned_delete_at" (epoch seconds, 0 = not scheduled), "tags",
     "versions": [{"version_id", "data_type", "create_time", "sealed"}],   # oldest first
     "stages": {"ACSCurrent": "<version id>", "ACSPrevious": ..., "<custom>": ...}}

A stage map (label -> version) keeps every label on at most one version by construction.
``sealed`` is the version's ``SecretData`` encrypted at rest: under the secret's CMK (a
localkms blob bound to the secret name and version ID) or, for secrets created without
``EncryptionKeyId``, under a per-region service key that ListKeys does not show (as KMS
does with its service-managed key).  The plaintext is never logged or put in an error.

Checks run in the order of §14.12: required parameters, syntax, resource lookup (secret,
version, key), key type, state (key state, delete window), semantic checks, DryRun,
execution.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import re
import time
from typing import Any, Callable, Mapping, Optional

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import blob
from .actions import RegionActions, flag
from .errors import KmsError, invalid, key_state, missing
from .keystore import Key

Params = Mapping[str, str]
Response = dict[str, Any]
Secret = dict[str, Any]

CURRENT, PREVIOUS = "ACSCurrent", "ACSPrevious"
MAX_SECRET_DATA_BYTES = 30720
MAX_VERSIONS = 10
MAX_TAGS = 20
DEFAULT_SECRET_QUOTA = 1000
_NAME = re.compile(r"[A-Za-z0-9_/+=.@-]{1,192}")
_FILTER_KEYS = ("SecretName", "Description", "TagKey", "TagValue", "SecretType", "DKMSInstanceId", "Creator")
_SERVICE_KEY_META = "secrets-service-key/"
_SERVICE_AAD = b"kmsenv-localkms-secret-v1\x00"
_SERVICE_NONCE = 12
_DAY = 86400


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _required(params: Params, name: str) -> str:
    value = params.get(name)
    if value is None or value == "":
        raise missing(name)
    return value


def _not_found() -> KmsError:
    return KmsError(404, "Forbidden.ResourceNotFound", "The resource is not found.")


def _exists() -> KmsError:
    return KmsError(409, "Rejected.ResourceExist", "The resource already exists.")


def _in_delete_window() -> KmsError:
    return KmsError(409, "Rejected.ResourceInDeleteWindow", "The secret is planned to be deleted.")


def _json(params: Params, name: str) -> Any:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise invalid(name, "It must be JSON.") from None


def _tags(params: Params) -> list[dict[str, str]]:
    """``Tags``: a JSON array of ``{"TagKey", "TagValue"}`` (§14.1 item 4, §14.7)."""
    value = _json(params, "Tags")
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_TAGS:
        raise invalid("Tags")
    tags = []
    for tag in value:
        if not isinstance(tag, dict):
            raise invalid("Tags")
        k, v = tag.get("TagKey"), tag.get("TagValue", "")
        if (
            not isinstance(k, str)
            or not isinstance(v, str)
            or not 1 <= len(k) <= 128
            or len(v) > 128
            or k.lower().startswith(("aliyun", "acs:"))
        ):
            raise invalid("Tags")
        tags.append({"TagKey": k, "TagValue": v})
    return tags


def _version_stages(params: Params) -> list[str]:
    """``VersionStages``: a JSON array, or the 2021 doc's ``{"VersionStage": [...]}``."""
    value = _json(params, "VersionStages")
    if value is None:
        return [CURRENT]
    if isinstance(value, dict) and set(value) == {"VersionStage"}:
        value = value["VersionStage"]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(s, str) and 1 <= len(s) <= 64 for s in value):
        raise invalid("VersionStages")
    return list(dict.fromkeys(value))


def _secret_data(params: Params) -> tuple[str, str]:
    data = _required(params, "SecretData")
    if len(data.encode("utf-8", errors="surrogatepass")) > MAX_SECRET_DATA_BYTES:
        raise invalid("SecretData", f"It must be at most {MAX_SECRET_DATA_BYTES} bytes.")
    data_type = params.get("SecretDataType") or "text"
    if data_type not in ("text", "binary"):
        raise invalid("SecretDataType")
    return data, data_type


def _version_id(params: Params) -> str:
    version_id = _required(params, "VersionId")
    if len(version_id) > 64:
        raise invalid("VersionId")
    return version_id


def _labels(secret: Secret, version_id: str) -> list[str]:
    return [label for label, vid in secret["stages"].items() if vid == version_id]


def _stage_list(secret: Secret, version_id: str) -> dict[str, list[str]]:
    # Always a JSON array, even with one element or none (§14.1 item 7).
    return {"VersionStage": _labels(secret, version_id)}


def _find_version(secret: Secret, version_id: str) -> Optional[dict[str, Any]]:
    return next((v for v in secret["versions"] if v["version_id"] == version_id), None)


def _move_label(secret: Secret, label: str, version_id: str) -> None:
    """Attach ``label`` to ``version_id`` (off any other version).  Moving ACSCurrent
    hands ACSPrevious to the version that had ACSCurrent (§14.8 PutSecretValue)."""
    stages = secret["stages"]
    if label == CURRENT:
        old = stages.get(CURRENT)
        if old == version_id:
            return
        if old is not None:
            stages[PREVIOUS] = old
        elif stages.get(PREVIOUS) == version_id:
            del stages[PREVIOUS]
    stages[label] = version_id


def _evict(secret: Secret) -> None:
    """At most MAX_VERSIONS versions: the oldest without ACSCurrent/ACSPrevious go, with
    their custom labels (§14.7)."""
    while len(secret["versions"]) > MAX_VERSIONS:
        protected = {secret["stages"].get(CURRENT), secret["stages"].get(PREVIOUS)}
        victim = next((v for v in secret["versions"] if v["version_id"] not in protected), None)
        if victim is None:
            return
        secret["versions"].remove(victim)
        for label in _labels(secret, victim["version_id"]):
            del secret["stages"][label]


class SecretActions:
    """The Secrets Manager actions of one region, on top of its key actions."""

    def __init__(
        self, actions: RegionActions, *, quota: int = DEFAULT_SECRET_QUOTA, clock: Callable[[], float] = time.time
    ) -> None:
        self._actions = actions
        self.region = actions.region
        self.store = actions.store
        self.quota = quota
        self.clock = clock
        self.handlers: dict[str, Callable[[Params], Response]] = {
            "CreateSecret": self.create_secret,
            "GetSecretValue": self.get_secret_value,
            "PutSecretValue": self.put_secret_value,
            "UpdateSecretVersionStage": self.update_secret_version_stage,
            "ListSecretVersionIds": self.list_secret_version_ids,
            "DescribeSecret": self.describe_secret,
            "ListSecrets": self.list_secrets,
            "DeleteSecret": self.delete_secret,
            "RestoreSecret": self.restore_secret,
            "UpdateSecret": self.update_secret,
        }

    # -- helpers -------------------------------------------------------------------

    def secret_arn(self, name: str) -> str:
        return f"acs:kms:{self.region}:{self._actions.account_uid}:secret/{name}"

    def _name(self, params: Params) -> str:
        """``SecretName``: a name or this region's secret ARN."""
        ref = _required(params, "SecretName")
        prefix = f"acs:kms:{self.region}:{self._actions.account_uid}:secret/"
        if ref.startswith("acs:"):
            if not ref.startswith(prefix):
                raise _not_found()
            ref = ref[len(prefix) :]
        return ref

    def _peek(self, name: str) -> Optional[Secret]:
        """The secret, or None; one whose recovery window has ended is purged now."""
        secret = self.store.get_secret_doc(self.region, name)
        if secret is not None and secret["planned_delete_at"] and (self.clock() >= secret["planned_delete_at"]):
            self.store.delete_secret_doc(self.region, name)
            return None
        return secret

    def _load(self, name: str) -> Secret:
        secret = self._peek(name)
        if secret is None:
            raise _not_found()
        return secret

    @staticmethod
    def _not_deleting(secret: Secret) -> None:
        if secret["planned_delete_at"]:
            raise _in_delete_window()

    def _save(self, secret: Secret) -> None:
        secret["update_time"] = _iso(self.clock())
        self.store.put_secret_doc(self.region, secret["name"], secret)

    def _cmk(self, key_id: str) -> Key:
        """The secret's CMK, usable for encryption (symmetric, ENCRYPT/DECRYPT, Enabled)."""
        key = self._actions.resolve(key_id)
        if key.asymmetric or key.key_usage != "ENCRYPT/DECRYPT":
            raise KmsError(400, "Rejected.UnsupportedOperation", "Unsupported operation.")
        if key.state != "Enabled":
            raise key_state(key.state)
        return key

    def _service_aead(self) -> AESGCM:
        fresh = base64.b64encode(os.urandom(32)).decode("ascii")
        stored = self.store.meta_setdefault(_SERVICE_KEY_META + self.region, fresh)
        return AESGCM(base64.b64decode(stored))

    def _context(self, name: str, version_id: str) -> bytes:
        return blob.context_digest({"SecretName": name, "VersionId": version_id})

    def _seal(self, secret: Secret, version_id: str, data: str) -> str:
        plaintext = data.encode("utf-8", errors="surrogatepass")
        ctx = self._context(secret["name"], version_id)
        key_id = secret["encryption_key_id"]
        if not key_id:
            nonce = os.urandom(_SERVICE_NONCE)
            sealed = self._service_aead().encrypt(nonce, plaintext, _SERVICE_AAD + ctx)
            return base64.b64encode(nonce + sealed).decode("ascii")
        key = self._cmk(key_id)
        version = self.store.get_version(self.region, key.primary_version)
        if version is None:  # only with a hand-edited state database
            raise KmsError(500, "InternalFailure", "Internal Failure.")
        return blob.seal(version.aead, version.version_id, key.key_id, self.region, plaintext, ctx)

    def _open(self, secret: Secret, version: dict[str, Any]) -> str:
        ctx = self._context(secret["name"], version["version_id"])
        try:
            if not secret["encryption_key_id"]:
                raw = base64.b64decode(version["sealed"])
                plaintext = self._service_aead().decrypt(raw[:_SERVICE_NONCE], raw[_SERVICE_NONCE:], _SERVICE_AAD + ctx)
            else:
                key = self._cmk(secret["encryption_key_id"])
                key_version_id, raw = blob.split(version["sealed"])
                key_version = self.store.get_version(self.region, key_version_id)
                if key_version is None or key_version.key_id != key.key_id:
                    raise blob.BlobError("key version gone")
                plaintext = blob.open_(key_version.aead, raw, key.key_id, self.region, ctx)
        except KmsError:
            raise
        except Exception:  # tampered state: never echo anything of the value
            raise KmsError(500, "InternalFailure", "Internal Failure.") from None
        return plaintext.decode("utf-8", errors="surrogatepass")

    def _page(self, params: Params, items: list[Any], default_size: int) -> tuple[int, int, list[Any]]:
        return self._actions._page(params, items, default_size)

    def _tag_list(self, secret: Secret) -> dict[str, list[dict[str, str]]]:
        return {"Tag": list(secret["tags"])}

    # -- actions -------------------------------------------------------------------

    def create_secret(self, params: Params) -> Response:
        name = _required(params, "SecretName")
        data, data_type = _secret_data(params)
        version_id = _version_id(params)
        if not _NAME.fullmatch(name) or name.startswith("acs/"):
            raise invalid("SecretName")
        if (params.get("SecretType") or "Generic") != "Generic":
            raise invalid("SecretType", "localkms serves generic secrets only.")
        tags = _tags(params)
        description = params.get("Description", "")
        if len(description) > 1024:
            raise invalid("Description")
        key_ref = params.get("EncryptionKeyId") or ""
        with self.store.lock:
            existing = self._peek(name)
            key_id = self._cmk(key_ref).key_id if key_ref else ""
            if existing is not None:
                raise _in_delete_window() if existing["planned_delete_at"] else _exists()
            if self.store.count_secrets(self.region) >= self.quota:
                raise KmsError(400, "Rejected.LimitExceeded", "The secret quota is exceeded.")
            if params.get("DryRun", "").lower() == "true":
                raise KmsError(400, "DryRunOperation", "Request validation has been passed with DryRun flag set.")
            now = _iso(self.clock())
            secret: Secret = {
                "name": name,
                "description": description,
                "encryption_key_id": key_id,
                "create_time": now,
                "update_time": now,
                "planned_delete_at": 0,
                "tags": tags,
                "versions": [],
                "stages": {},
            }
            secret["versions"].append(
                {
                    "version_id": version_id,
                    "data_type": data_type,
                    "create_time": now,
                    "sealed": self._seal(secret, version_id, data),
                }
            )
            secret["stages"][CURRENT] = version_id
            self._save(secret)
        return {"Arn": self.secret_arn(name), "SecretName": name, "VersionId": version_id, "SecretType": "Generic"}

    def get_secret_value(self, params: Params) -> Response:
        name = self._name(params)
        version_id = params.get("VersionId") or ""
        stage = params.get("VersionStage") or ""
        secret = self._load(name)
        if version_id:
            version = _find_version(secret, version_id)
            if version is None or (stage and secret["stages"].get(stage) != version_id):
                raise _not_found()
        else:
            version = _find_version(secret, secret["stages"].get(stage or CURRENT, ""))
            if version is None:
                raise _not_found()
        self._not_deleting(secret)
        if secret["encryption_key_id"]:
            self._cmk(secret["encryption_key_id"])  # key state before DryRun (§14.12)
        if params.get("DryRun", "").lower() == "true":
            raise KmsError(400, "DryRunOperation", "Request validation has been passed with DryRun flag set.")
        data = self._open(secret, version)
        return {
            "SecretName": name,
            "SecretType": "Generic",
            "SecretData": data,
            "SecretDataType": version["data_type"],
            "VersionId": version["version_id"],
            "VersionStages": _stage_list(secret, version["version_id"]),
            "CreateTime": version["create_time"],
        }

    def put_secret_value(self, params: Params) -> Response:
        name = self._name(params)
        data, data_type = _secret_data(params)
        version_id = _version_id(params)
        stages = _version_stages(params)
        with self.store.lock:
            secret = self._load(name)
            self._not_deleting(secret)
            existing = _find_version(secret, version_id)
            if existing is not None:
                # Idempotent with the same data; a different value under an existing
                # version ID is refused (§14.8; code unconfirmed).
                same = hmac.compare_digest(
                    self._open(secret, existing).encode("utf-8", errors="surrogatepass"),
                    data.encode("utf-8", errors="surrogatepass"),
                )
                if not same:
                    raise _exists()
                return {"SecretName": name, "VersionId": version_id, "VersionStages": _stage_list(secret, version_id)}
            sealed = self._seal(secret, version_id, data)
            secret["versions"].append(
                {"version_id": version_id, "data_type": data_type, "create_time": _iso(self.clock()), "sealed": sealed}
            )
            for label in stages:
                _move_label(secret, label, version_id)
            _evict(secret)
            self._save(secret)
        return {"SecretName": name, "VersionId": version_id, "VersionStages": _stage_list(secret, version_id)}

    def update_secret_version_stage(self, params: Params) -> Response:
        name = self._name(params)
        stage = _required(params, "VersionStage")
        move_to = params.get("MoveToVersion") or ""
        remove_from = params.get("RemoveFromVersion") or ""
        if not move_to and (not remove_from or stage in (CURRENT, PREVIOUS)):
            raise missing("MoveToVersion")
        if len(stage) > 64:
            raise invalid("VersionStage")
        with self.store.lock:
            secret = self._load(name)
            for vid in (move_to, remove_from):
                if vid and _find_version(secret, vid) is None:
                    raise _not_found()
            self._not_deleting(secret)
            if remove_from and secret["stages"].get(stage) != remove_from:
                raise invalid("RemoveFromVersion")
            if remove_from and not move_to:
                del secret["stages"][stage]
            if move_to:
                _move_label(secret, stage, move_to)
            self._save(secret)
        return {"SecretName": name}

    def list_secret_version_ids(self, params: Params) -> Response:
        name = self._name(params)
        include_deprecated = self._actions_flag(params, "IncludeDeprecated")
        secret = self._load(name)
        versions = [v for v in secret["versions"] if include_deprecated or _labels(secret, v["version_id"])]
        number, size, page = self._page(params, versions, 20)
        return {
            "SecretName": name,
            "VersionIds": {
                "VersionId": [
                    {
                        "VersionId": v["version_id"],
                        "CreateTime": v["create_time"],
                        "VersionStages": _stage_list(secret, v["version_id"]),
                    }
                    for v in page
                ]
            },
            "TotalCount": len(versions),
            "PageNumber": number,
            "PageSize": size,
        }

    def _describe(self, secret: Secret, fetch_tags: bool) -> Response:
        planned = secret["planned_delete_at"]
        result: Response = {
            "SecretName": secret["name"],
            "Arn": self.secret_arn(secret["name"]),
            "Description": secret["description"],
            "EncryptionKeyId": secret["encryption_key_id"],
            "CreateTime": secret["create_time"],
            "UpdateTime": secret["update_time"],
            "PlannedDeleteTime": _iso(planned) if planned else "",
            "SecretType": "Generic",
        }
        if fetch_tags:
            result["Tags"] = self._tag_list(secret)
        return result

    def describe_secret(self, params: Params) -> Response:
        name = self._name(params)
        fetch_tags = self._actions_flag(params, "FetchTags")
        return self._describe(self._load(name), fetch_tags)

    def _filters(self, params: Params) -> list[tuple[str, list[str]]]:
        value = _json(params, "Filters")
        if value is None:
            return []
        if not isinstance(value, list) or len(value) > 10:
            raise invalid("Filters")
        filters = []
        for f in value:
            if (
                not isinstance(f, dict)
                or f.get("Key") not in _FILTER_KEYS
                or not isinstance(f.get("Values"), list)
                or not all(isinstance(v, str) for v in f["Values"])
            ):
                raise invalid("Filters")
            filters.append((f["Key"], list(f["Values"])))
        return filters

    def _matches(self, secret: Secret, key: str, values: list[str]) -> bool:
        """Exact match, any of the values (OR within one key; keys are ANDed)."""
        if key == "SecretName":
            found = [secret["name"]]
        elif key == "Description":
            found = [secret["description"]]
        elif key == "TagKey":
            found = [t["TagKey"] for t in secret["tags"]]
        elif key == "TagValue":
            found = [t["TagValue"] for t in secret["tags"]]
        elif key == "SecretType":
            found = ["Generic"]
        elif key == "Creator":
            found = [self._actions.account_uid]
        else:  # DKMSInstanceId: no secret here lives in a KMS instance
            found = []
        return any(v in found for v in values)

    def list_secrets(self, params: Params) -> Response:
        fetch_tags = self._actions_flag(params, "FetchTags")
        filters = self._filters(params)
        now = self.clock()
        secrets = []
        for secret in self.store.list_secret_docs(self.region):
            if secret["planned_delete_at"] and now >= secret["planned_delete_at"]:
                self.store.delete_secret_doc(self.region, secret["name"])
                continue
            if all(self._matches(secret, k, vs) for k, vs in filters):
                secrets.append(secret)
        number, size, page = self._page(params, secrets, 10)
        items = []
        for secret in page:
            planned = secret["planned_delete_at"]
            item: Response = {
                "SecretName": secret["name"],
                "CreateTime": secret["create_time"],
                "UpdateTime": secret["update_time"],
                "PlannedDeleteTime": _iso(planned) if planned else "",
                "SecretType": "Generic",
            }
            if fetch_tags:
                item["Tags"] = self._tag_list(secret)
            items.append(item)
        return {"SecretList": {"Secret": items}, "TotalCount": len(secrets), "PageNumber": number, "PageSize": size}

    def delete_secret(self, params: Params) -> Response:
        name = self._name(params)
        force = self._actions_flag(params, "ForceDeleteWithoutRecovery")
        raw_window = params.get("RecoveryWindowInDays") or "30"
        try:
            window = int(raw_window)
        except ValueError:
            raise invalid("RecoveryWindowInDays") from None
        if not force and not 7 <= window <= 30:
            raise invalid("RecoveryWindowInDays", "It must be 7 to 30 days.")
        with self.store.lock:
            secret = self._load(name)
            now = self.clock()
            if force:
                self.store.delete_secret_doc(self.region, name)
                return {"SecretName": name, "PlannedDeleteTime": _iso(now)}
            self._not_deleting(secret)
            secret["planned_delete_at"] = int(now) + window * _DAY
            self._save(secret)
        return {"SecretName": name, "PlannedDeleteTime": _iso(secret["planned_delete_at"])}

    def restore_secret(self, params: Params) -> Response:
        name = self._name(params)
        with self.store.lock:
            secret = self._load(name)
            if secret["planned_delete_at"]:
                secret["planned_delete_at"] = 0
                self._save(secret)
        return {"SecretName": name}

    def update_secret(self, params: Params) -> Response:
        name = self._name(params)
        description = params.get("Description")
        if description is not None and len(description) > 1024:
            raise invalid("Description")
        with self.store.lock:
            secret = self._load(name)
            self._not_deleting(secret)
            if description is not None:
                secret["description"] = description
            # ExtendedConfig.CustomData.* is unavailable for generic secrets: ignored.
            self._save(secret)
        return {"SecretName": name}

    @staticmethod
    def _actions_flag(params: Params, name: str) -> bool:
        return flag(params, name)
