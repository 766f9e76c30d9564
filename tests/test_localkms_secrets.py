"""LocalKms Secrets Manager (kms-local-server.md §14.7-§14.9, acceptance §14.13 items 6-8),
driven by the unmodified official clients: alibabacloud-kms20160120 (V2: SecretData in the
form body) and aliyun-python-sdk-kms (V1: everything in the query)."""

from __future__ import annotations

import json
import os
import sqlite3
import uuid

import pytest
from alibabacloud_kms20160120 import models as M
from alibabacloud_kms20160120.client import Client
from alibabacloud_tea_openapi.models import Config
from aliyunsdkcore.acs_exception.exceptions import ClientException, ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkkms.request.v20160120 import (
    CreateSecretRequest,
    DeleteSecretRequest,
    DescribeSecretRequest,
    GetSecretValueRequest,
    ListSecretsRequest,
    ListSecretVersionIdsRequest,
    PutSecretValueRequest,
    RestoreSecretRequest,
    UpdateSecretVersionStageRequest,
)

from kmsenv.localkms import LocalKms

# Reaches no crypto backend, or only through code the backend tests cover: the pure-backend CI pass leaves it out.
pytestmark = pytest.mark.backend_independent

R1, R2 = "cn-hangzhou", "cn-shanghai"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


def new_client(kms: LocalKms, region: str = R1) -> Client:
    return Client(
        Config(
            access_key_id=kms.access_key_id,
            access_key_secret=kms.access_key_secret,
            endpoint=kms.hosts[region],
            protocol="http",
            region_id=region,
            read_timeout=30000,
            connect_timeout=2000,
        )
    )


def legacy_call(kms: LocalKms, request, region: str = R1) -> dict:
    client = AcsClient(kms.access_key_id, kms.access_key_secret, region)
    request.set_endpoint(kms.hosts[region])
    request.set_protocol_type("http")  # the generated request classes force https
    return json.loads(client.do_action_with_exception(request))


def error_of(excinfo) -> tuple[str, int]:
    exc = excinfo.value
    if isinstance(exc, ServerException):
        return exc.get_error_code(), exc.get_http_status()
    return exc.code, int(exc.status_code if exc.status_code else exc.data.get("statusCode"))


def fails(call) -> tuple[str, int]:
    with pytest.raises(Exception) as e:
        call()
    return error_of(e)


@pytest.fixture(scope="module")
def kms():
    with LocalKms(regions=[R1, R2]) as server:
        yield server


@pytest.fixture(scope="module")
def client(kms):
    return new_client(kms)


@pytest.fixture(scope="module")
def cmk(kms):
    return kms.create_key(R1)


def unique(prefix: str = "s") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def create(client, name, data="v1-data", version="v1", **kw):
    return client.create_secret(
        M.CreateSecretRequest(secret_name=name, secret_data=data, version_id=version, **kw)
    ).body


def get(client, name, **kw):
    return client.get_secret_value(M.GetSecretValueRequest(secret_name=name, **kw)).body


def put(client, name, data, version, stages=None):
    return client.put_secret_value(
        M.PutSecretValueRequest(secret_name=name, secret_data=data, version_id=version, version_stages=stages)
    ).body


def version_ids(client, name, include_deprecated=None) -> dict[str, list[str]]:
    body = client.list_secret_version_ids(
        M.ListSecretVersionIdsRequest(secret_name=name, include_deprecated=include_deprecated, page_size=100)
    ).body
    return {v.version_id: v.version_stages.version_stage for v in body.version_ids.version_id}


# -- §14.13 item 6: the lifecycle, V2 -----------------------------------------------------


def test_secret_lifecycle_v2(kms, client, cmk):
    name = unique()
    created = create(client, name, encryption_key_id=cmk)
    assert (created.secret_name, created.version_id, created.secret_type) == (name, "v1", "Generic")
    assert created.arn == f"acs:kms:{R1}:{kms.account_uid}:secret/{name}"
    first = get(client, name)
    assert (first.secret_data, first.version_id, first.secret_data_type) == ("v1-data", "v1", "text")
    assert first.version_stages.version_stage == ["ACSCurrent"]  # a list, one element
    assert put(client, name, "v2-data", "v2").version_stages.version_stage == ["ACSCurrent"]
    assert get(client, name).secret_data == "v2-data"
    previous = get(client, name, version_stage="ACSPrevious")
    assert (previous.secret_data, previous.version_stages.version_stage) == ("v1-data", ["ACSPrevious"])
    assert get(client, name, version_id="v1").secret_data == "v1-data"
    assert get(client, created.arn).secret_data == "v2-data"  # name or ARN
    # Same version ID: same data is idempotent, other data is refused
    assert put(client, name, "v2-data", "v2").version_id == "v2"
    assert fails(lambda: put(client, name, "other", "v2")) == ("Rejected.ResourceExist", 409)
    # Roll back: ACSCurrent to v1; v2 becomes ACSPrevious
    client.update_secret_version_stage(
        M.UpdateSecretVersionStageRequest(
            secret_name=name, version_stage="ACSCurrent", move_to_version="v1", remove_from_version="v2"
        )
    )
    assert get(client, name).version_id == "v1"
    assert version_ids(client, name) == {"v1": ["ACSCurrent"], "v2": ["ACSPrevious"]}
    # Deprecated versions show only with IncludeDeprecated
    put(client, name, "v3-data", "v3")  # v3 current, v1 previous, v2 deprecated
    assert version_ids(client, name) == {"v1": ["ACSPrevious"], "v3": ["ACSCurrent"]}
    assert version_ids(client, name, "true") == {"v1": ["ACSPrevious"], "v2": [], "v3": ["ACSCurrent"]}
    assert get(client, name, version_id="v2").version_stages.version_stage == []
    # 11 more Puts keep 10 versions, the current and previous ones included
    for i in range(4, 15):
        put(client, name, f"v{i}-data", f"v{i}")
    kept = version_ids(client, name, "True")
    assert len(kept) == 10 and kept["v14"] == ["ACSCurrent"] and kept["v13"] == ["ACSPrevious"]
    assert "v1" not in kept and "v5" in kept
    assert fails(lambda: get(client, name, version_id="v1")) == ("Forbidden.ResourceNotFound", 404)
    # Delete with a 7-day window
    deleted = client.delete_secret(M.DeleteSecretRequest(secret_name=name, recovery_window_in_days="7")).body
    assert deleted.planned_delete_time
    assert fails(lambda: get(client, name)) == ("Rejected.ResourceInDeleteWindow", 409)
    described = client.describe_secret(M.DescribeSecretRequest(secret_name=name)).body
    assert described.planned_delete_time == deleted.planned_delete_time
    assert fails(lambda: client.delete_secret(M.DeleteSecretRequest(secret_name=name))) == (
        "Rejected.ResourceInDeleteWindow",
        409,
    )
    assert fails(lambda: create(client, name)) == ("Rejected.ResourceInDeleteWindow", 409)
    client.restore_secret(M.RestoreSecretRequest(secret_name=name))
    assert get(client, name).secret_data == "v14-data"
    assert client.describe_secret(M.DescribeSecretRequest(secret_name=name)).body.planned_delete_time == ""
    # Force delete: gone at once; the name can be reused
    client.delete_secret(M.DeleteSecretRequest(secret_name=name, force_delete_without_recovery="true"))
    assert fails(lambda: get(client, name)) == ("Forbidden.ResourceNotFound", 404)
    assert fails(lambda: client.describe_secret(M.DescribeSecretRequest(secret_name=name))) == (
        "Forbidden.ResourceNotFound",
        404,
    )
    assert fails(lambda: client.restore_secret(M.RestoreSecretRequest(secret_name=name))) == (
        "Forbidden.ResourceNotFound",
        404,
    )
    assert create(client, name, data="again").version_id == "v1"
    assert get(client, name).secret_data == "again"


def test_stage_moves(client):
    name = unique()
    create(client, name)
    # Staging ACSNext leaves the current version alone
    body = put(client, name, "next", "v2", json.dumps(["ACSNext"]))
    assert body.version_stages.version_stage == ["ACSNext"]
    assert get(client, name).version_id == "v1"
    assert get(client, name, version_stage="ACSNext").secret_data == "next"
    # The 2021 doc's object form is accepted too
    put(client, name, "v3", "v3", json.dumps({"VersionStage": ["ACSCurrent", "Custom"]}))
    assert version_ids(client, name, "true") == {
        "v1": ["ACSPrevious"],
        "v2": ["ACSNext"],
        "v3": ["ACSCurrent", "Custom"],
    }
    # Move a custom label, then remove it
    client.update_secret_version_stage(
        M.UpdateSecretVersionStageRequest(secret_name=name, version_stage="ACSNext", move_to_version="v1")
    )
    assert get(client, name, version_stage="ACSNext").version_id == "v1"
    client.update_secret_version_stage(
        M.UpdateSecretVersionStageRequest(secret_name=name, version_stage="ACSNext", remove_from_version="v1")
    )
    assert fails(lambda: get(client, name, version_stage="ACSNext")) == ("Forbidden.ResourceNotFound", 404)
    # A stage that is not on the given version
    assert fails(lambda: get(client, name, version_id="v1", version_stage="ACSCurrent")) == (
        "Forbidden.ResourceNotFound",
        404,
    )

    def stage(**kw):
        return fails(
            lambda: client.update_secret_version_stage(M.UpdateSecretVersionStageRequest(secret_name=name, **kw))
        )

    assert stage(version_stage="Custom") == ("MissingParameter", 400)
    assert stage(version_stage="ACSCurrent", remove_from_version="v3") == ("MissingParameter", 400)
    assert stage(version_stage="Custom", remove_from_version="v1") == ("InvalidParameter", 400)
    assert stage(version_stage="Custom", move_to_version="nope") == ("Forbidden.ResourceNotFound", 404)


# -- §14.13 item 6: V1 (everything in the query), Alibaba SDK call shapes (§14.10) --------


def test_secret_lifecycle_v1(kms, cmk):
    name = unique("v1")
    req = CreateSecretRequest.CreateSecretRequest()
    req.set_SecretName(name)
    req.set_VersionId(uuid.uuid1())  # a UUID object, as Alibaba's Python SDK passes it
    req.set_EncryptionKeyId(cmk)
    req.set_SecretData(b"aGVhZGVy")  # bytes, likewise
    req.set_SecretDataType("text")
    created = legacy_call(kms, req)
    assert created["SecretName"] == name and len(created["VersionId"]) == 36
    got = GetSecretValueRequest.GetSecretValueRequest()
    got.set_SecretName(name)
    got.set_FetchExtendedConfig(True)  # sent as "True"
    body = legacy_call(kms, got)
    assert (body["SecretData"], body["SecretDataType"]) == ("aGVhZGVy", "text")
    assert body["VersionStages"]["VersionStage"] == ["ACSCurrent"]
    put_req = PutSecretValueRequest.PutSecretValueRequest()
    put_req.set_SecretName(name)
    put_req.set_VersionId("two")
    put_req.set_SecretData("second")
    put_req.set_VersionStages('["ACSCurrent"]')
    assert legacy_call(kms, put_req)["VersionStages"]["VersionStage"] == ["ACSCurrent"]
    got.set_VersionStage("ACSPrevious")
    assert legacy_call(kms, got)["SecretData"] == "aGVhZGVy"
    stage = UpdateSecretVersionStageRequest.UpdateSecretVersionStageRequest()
    stage.set_SecretName(name)
    stage.set_VersionStage("ACSCurrent")
    stage.set_MoveToVersion(created["VersionId"])
    legacy_call(kms, stage)
    listed = ListSecretVersionIdsRequest.ListSecretVersionIdsRequest()
    listed.set_SecretName(name)
    versions = legacy_call(kms, listed)["VersionIds"]["VersionId"]
    assert {v["VersionId"]: v["VersionStages"]["VersionStage"] for v in versions} == {
        created["VersionId"]: ["ACSCurrent"],
        "two": ["ACSPrevious"],
    }
    described = DescribeSecretRequest.DescribeSecretRequest()
    described.set_SecretName(name)
    assert legacy_call(kms, described)["EncryptionKeyId"] == cmk.rsplit("/", 1)[1]
    delete = DeleteSecretRequest.DeleteSecretRequest()
    delete.set_SecretName(name)
    delete.set_RecoveryWindowInDays("7")
    assert legacy_call(kms, delete)["PlannedDeleteTime"]
    restore = RestoreSecretRequest.RestoreSecretRequest()
    restore.set_SecretName(name)
    legacy_call(kms, restore)
    delete.set_ForceDeleteWithoutRecovery("True")
    legacy_call(kms, delete)
    # A missing secret: ServerException (not a ClientException: Alibaba's Python SDK's
    # isinstance check misses it, as against real KMS) with the code its Java SDK expects.
    got = GetSecretValueRequest.GetSecretValueRequest()
    got.set_SecretName(name)
    with pytest.raises(ServerException) as e:
        legacy_call(kms, got)
    assert not isinstance(e.value, ClientException)
    assert error_of(e) == ("Forbidden.ResourceNotFound", 404)


# -- §14.13 item 7: sizes and duplicates --------------------------------------------------


def test_create_duplicate(client):
    name = unique()
    create(client, name)
    assert fails(lambda: create(client, name)) == ("Rejected.ResourceExist", 409)


def test_secret_data_size_v2_form_body(client):
    name = unique()
    data = "中" * 10240  # 30 720 bytes of UTF-8, 92 KiB percent-encoded
    create(client, name, data=data)
    assert get(client, name).secret_data == data
    assert fails(lambda: create(client, unique(), data=data + "x")) == ("InvalidParameter", 400)
    assert fails(lambda: put(client, name, data + "x", "v2")) == ("InvalidParameter", 400)


def test_secret_data_size_v1_query(kms):
    # V1 sends SecretData in the request line: ~92 KB here (stdlib http.server says 414).
    name = unique("v1")
    data = "中" * 10240
    req = CreateSecretRequest.CreateSecretRequest()
    req.set_SecretName(name)
    req.set_VersionId("v1")
    req.set_SecretData(data)
    legacy_call(kms, req)
    got = GetSecretValueRequest.GetSecretValueRequest()
    got.set_SecretName(name)
    assert legacy_call(kms, got)["SecretData"] == data
    req.set_SecretName(unique("v1"))
    req.set_SecretData(data + "x")
    with pytest.raises(ServerException) as e:
        legacy_call(kms, req)
    assert error_of(e) == ("InvalidParameter", 400)


# -- §14.13 item 8: binary, JSON parameters, tags, listing --------------------------------


def test_binary_secret_round_trips_the_exact_string(client):
    name = unique()
    data = "not base64 at all: ✓ \x01"  # stored verbatim, not decoded
    create(client, name, data=data, secret_data_type="binary")
    body = get(client, name)
    assert (body.secret_data, body.secret_data_type) == (data, "binary")
    assert fails(lambda: create(client, unique(), secret_data_type="hex")) == ("InvalidParameter", 400)


def test_invalid_json_parameters(client):
    name = unique()
    create(client, name)
    assert fails(lambda: create(client, unique(), tags="[{bad json")) == ("InvalidParameter", 400)
    assert fails(lambda: create(client, unique(), tags=json.dumps([{"TagKey": "aliyun-x", "TagValue": "v"}]))) == (
        "InvalidParameter",
        400,
    )
    assert fails(lambda: client.list_secrets(M.ListSecretsRequest(filters="not json"))) == ("InvalidParameter", 400)
    assert fails(
        lambda: client.list_secrets(M.ListSecretsRequest(filters=json.dumps([{"Key": "Nope", "Values": ["x"]}])))
    ) == ("InvalidParameter", 400)
    assert fails(lambda: put(client, name, "d", "v2", "ACSCurrent")) == ("InvalidParameter", 400)
    assert fails(lambda: put(client, name, "d", "v2", "{}")) == ("InvalidParameter", 400)


def test_tags_and_list_secrets(kms, client):
    tag = uuid.uuid4().hex[:8]
    names = [unique("tagged") for _ in range(3)]
    for i, name in enumerate(names):
        create(client, name, tags=json.dumps([{"TagKey": "team", "TagValue": f"{tag}-{i % 2}"}]), description=f"d{i}")
    described = client.describe_secret(M.DescribeSecretRequest(secret_name=names[0], fetch_tags="true")).body
    assert [(t.tag_key, t.tag_value) for t in described.tags.tag] == [("team", f"{tag}-0")]
    assert described.description == "d0" and described.secret_type == "Generic"
    assert client.describe_secret(M.DescribeSecretRequest(secret_name=names[0])).body.tags is None  # only on request
    filters = json.dumps([{"Key": "TagValue", "Values": [f"{tag}-0", "other"]}])
    body = client.list_secrets(M.ListSecretsRequest(filters=filters, fetch_tags="true")).body
    assert [s.secret_name for s in body.secret_list.secret] == [names[0], names[2]]
    assert body.total_count == 2
    assert body.secret_list.secret[0].tags.tag[0].tag_key == "team"
    filters = json.dumps([{"Key": "TagValue", "Values": [f"{tag}-0"]}, {"Key": "SecretName", "Values": [names[2]]}])
    one = client.list_secrets(M.ListSecretsRequest(filters=filters)).body
    assert [s.secret_name for s in one.secret_list.secret] == [names[2]]
    assert isinstance(one.secret_list.secret, list)
    # Paging: a page past the end is empty with the real total
    filters = json.dumps([{"Key": "TagKey", "Values": ["team"]}])
    page = client.list_secrets(M.ListSecretsRequest(filters=filters, page_size=2, page_number=50)).body
    assert page.secret_list.secret == [] and page.total_count >= 3
    # V1
    req = ListSecretsRequest.ListSecretsRequest()
    req.set_Filters(json.dumps([{"Key": "SecretName", "Values": [names[1]]}]))
    req.set_FetchTags("true")
    listed = legacy_call(kms, req)
    assert listed["SecretList"]["Secret"][0]["Tags"]["Tag"] == [{"TagKey": "team", "TagValue": f"{tag}-1"}]


# -- encryption keys and errors ----------------------------------------------------------


def test_encryption_key_checks(kms, client):
    assert fails(lambda: create(client, unique(), encryption_key_id="alias/none")) == ("Forbidden.AliasNotFound", 404)
    assert fails(lambda: create(client, unique(), encryption_key_id=str(uuid.uuid4()))) == (
        "Forbidden.KeyNotFound",
        404,
    )
    asym = kms.create_key(R1, "RSA_2048", key_usage="ENCRYPT/DECRYPT")
    assert fails(lambda: create(client, unique(), encryption_key_id=asym)) == ("Rejected.UnsupportedOperation", 400)
    cmk = kms.create_key(R1)
    name = unique()
    create(client, name, encryption_key_id=cmk)
    kms.disable_key(cmk)
    try:
        assert fails(lambda: get(client, name)) == ("Rejected.Disabled", 409)
        assert fails(lambda: create(client, unique(), encryption_key_id=cmk)) == ("Rejected.Disabled", 409)
    finally:
        kms.enable_key(cmk)
    assert get(client, name).secret_data == "v1-data"


def test_parameter_errors(kms, client):
    assert fails(lambda: client.get_secret_value(M.GetSecretValueRequest())) == ("MissingParameter", 400)
    assert fails(lambda: create(client, unique(), data="")) == ("MissingParameter", 400)
    assert fails(lambda: create(client, "acs/reserved")) == ("InvalidParameter", 400)
    assert fails(lambda: create(client, "bad name!")) == ("InvalidParameter", 400)
    assert fails(lambda: create(client, unique(), version="x" * 65)) == ("InvalidParameter", 400)
    assert fails(lambda: create(client, unique(), secret_type="Rds")) == ("InvalidParameter", 400)
    name = unique()
    create(client, name)
    for window in ("6", "31", "seven"):
        assert fails(
            lambda: client.delete_secret(M.DeleteSecretRequest(secret_name=name, recovery_window_in_days=window))
        ) == ("InvalidParameter", 400)
    assert fails(
        lambda: client.list_secret_version_ids(
            M.ListSecretVersionIdsRequest(secret_name=name, include_deprecated="maybe")
        )
    ) == ("InvalidParameter", 400)
    assert fails(lambda: get(client, f"acs:kms:{R2}:1:secret/{name}")) == ("Forbidden.ResourceNotFound", 404)
    assert fails(lambda: get(client, name, dry_run="true")) == ("DryRunOperation", 400)
    # Secrets are per region
    assert fails(lambda: get(new_client(kms, R2), name)) == ("Forbidden.ResourceNotFound", 404)


# -- at rest ---------------------------------------------------------------------------


def test_secret_values_encrypted_at_rest_and_persistent(tmp_path):
    state = str(tmp_path / "state")
    marker = "plain-marker-" + uuid.uuid4().hex
    with LocalKms(regions=[R1], state_dir=state) as kms:
        cmk = kms.create_key(R1)
        c = new_client(kms)
        create(c, "with-cmk", data=marker + "-a", encryption_key_id=cmk)
        create(c, "service-key", data=marker + "-b")
        put(c, "with-cmk", marker + "-c", "v2")
    db = os.path.join(state, "localkms.sqlite3")
    with sqlite3.connect(db) as conn:
        dump = "\n".join(conn.iterdump())
    assert "with-cmk" in dump and "service-key" in dump
    assert marker not in dump  # neither value in clear
    with LocalKms(regions=[R1], state_dir=state) as kms:
        c = new_client(kms)
        assert get(c, "with-cmk").secret_data == marker + "-c"
        assert get(c, "with-cmk", version_stage="ACSPrevious").secret_data == marker + "-a"
        assert get(c, "service-key").secret_data == marker + "-b"


# -- recovery window, quota, UpdateSecret --------------------------------------------------


def _region_actions():
    from kmsenv.localkms.actions import RegionActions
    from kmsenv.localkms.errors import KmsError
    from kmsenv.localkms.keystore import KeyStore

    return RegionActions(R1, "1234567890123456", KeyStore(), lambda: [R1]), KmsError


def test_recovery_window_ends_and_the_secret_is_gone():
    actions, KmsError = _region_actions()
    now = [1_700_000_000.0]
    actions.secrets.clock = lambda: now[0]
    h = actions.handlers
    h["CreateSecret"]({"SecretName": "a", "SecretData": "x", "VersionId": "v1"})
    planned = h["DeleteSecret"]({"SecretName": "a", "RecoveryWindowInDays": "7"})
    assert planned["PlannedDeleteTime"] == "2023-11-21T22:13:20Z"  # now + 7 days, UTC
    now[0] += 7 * 86400 - 1
    with pytest.raises(KmsError) as e:
        h["GetSecretValue"]({"SecretName": "a"})
    assert e.value.code == "Rejected.ResourceInDeleteWindow"
    now[0] += 1
    with pytest.raises(KmsError) as e:
        h["GetSecretValue"]({"SecretName": "a"})
    assert (e.value.code, e.value.status) == ("Forbidden.ResourceNotFound", 404)
    assert h["ListSecrets"]({})["TotalCount"] == 0
    h["CreateSecret"]({"SecretName": "a", "SecretData": "y", "VersionId": "v1"})
    assert h["GetSecretValue"]({"SecretName": "a"})["SecretData"] == "y"


def test_secret_quota():
    actions, KmsError = _region_actions()
    actions.secrets.quota = 2
    h = actions.handlers
    for name in ("a", "b"):
        h["CreateSecret"]({"SecretName": name, "SecretData": "x", "VersionId": "v1"})
    with pytest.raises(KmsError) as e:
        h["CreateSecret"]({"SecretName": "c", "SecretData": "x", "VersionId": "v1"})
    assert (e.value.code, e.value.status, e.value.message) == (
        "Rejected.LimitExceeded",
        400,
        "The secret quota is exceeded.",
    )
    h["DeleteSecret"]({"SecretName": "a", "ForceDeleteWithoutRecovery": "TRUE"})
    h["CreateSecret"]({"SecretName": "c", "SecretData": "x", "VersionId": "v1"})


def test_update_secret(client):
    name = unique()
    create(client, name, description="before")
    before = client.describe_secret(M.DescribeSecretRequest(secret_name=name)).body
    client.update_secret(
        M.UpdateSecretRequest(
            secret_name=name,
            description="after",
            extended_config=M.UpdateSecretRequestExtendedConfig(custom_data={"k": "v"}),
        )
    )
    after = client.describe_secret(M.DescribeSecretRequest(secret_name=name)).body
    assert (before.description, after.description) == ("before", "after")
    assert after.update_time >= before.update_time
    assert fails(lambda: client.update_secret(M.UpdateSecretRequest(secret_name=unique()))) == (
        "Forbidden.ResourceNotFound",
        404,
    )
