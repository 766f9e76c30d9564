"""kmsenv.Kms and KmsKeyProvider on KMS 3.0 instance gateways (issue 16 §1), against
LocalKms's HTTPS instance gateways (private CA, ClientKeys, the protobuf API).

Regions: cn-hangzhou has a primary instance, cn-shanghai its replica, cn-beijing only the
shared gateway. Which gateway answered is read from LocalKms's counters, and every data
key that comes back is checked against the plaintext encrypted, never against kmsenv's
own output alone."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest

import kmsenv
from kmsenv.instance.client import InstanceClient, unpack_transfer_blob
from kmsenv.kms import INSTANCES_ENV, InstanceEndpoint, Kms
from kmsenv.localkms import LocalKms
from kmsenv.localkms.instance import InstanceSpec
from kmsenv.message.codec import decode_message

HZ, SH, BJ = "cn-hangzhou", "cn-shanghai", "cn-beijing"
PRIMARY, REPLICA = "kst-hzz-kmsenv", "kst-sha-kmsenv"
CONTEXT = {"table": "orders", "tenant": "42"}


@pytest.fixture(scope="module")
def local():
    with LocalKms(
        regions=[HZ, SH, BJ], instances={PRIMARY: HZ, REPLICA: InstanceSpec(SH, replica_of=PRIMARY)}
    ) as server:
        yield server


@pytest.fixture
def clean(local):
    for gateway in local.instances.values():
        gateway.set_fault()
    for region in (HZ, SH, BJ):
        local.set_fault(region)
    yield
    for gateway in local.instances.values():
        gateway.set_fault()
    for region in (HZ, SH, BJ):
        local.set_fault(region)


def endpoint(gateway) -> InstanceEndpoint:
    return InstanceEndpoint(
        endpoint=gateway.endpoint,
        client_key_file=gateway.client_key.key_file,
        password_file=gateway.client_key.password_file,
        ca_file=gateway.ca_file,
    )


@pytest.fixture
def kms(local, clean) -> Kms:
    return Kms(
        access_key_id=local.access_key_id,
        access_key_secret=local.access_key_secret,
        endpoints=local.endpoints,
        instances={HZ: endpoint(local.instances[PRIMARY]), SH: endpoint(local.instances[REPLICA])},
        max_attempts=2,
        backoff_base=0.0,
        backoff_max=0.0,
    )


@pytest.fixture(scope="module")
def keys(local) -> dict[str, str]:
    return {"hz": local.create_key(HZ), "hz2": local.create_key(HZ), "bj": local.create_key(BJ)}


def instances_file(tmp_path, gateways) -> Any:
    """A KMSENV_KMS_INSTANCES file for ``{region: gateway}``."""
    conf = tmp_path / "instances.json"
    entries = {
        region: {
            "endpoint": gw.endpoint,
            "client_key_file": gw.client_key.key_file,
            "password_file": gw.client_key.password_file,
            "ca_file": gw.ca_file,
        }
        for region, gw in gateways.items()
    }
    conf.write_text(json.dumps(entries))
    return conf


def shared(local) -> dict[tuple[str, str], int]:
    return {(r, a): n for r, actions in local.stats().items() for a, n in actions.items()}


def instance(local, instance_id: str) -> dict[str, int]:
    return dict(local.instances[instance_id].stats())


def diff(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


def test_round_trip_through_the_instance_gateway(local, kms, keys):
    provider = kmsenv.KmsKeyProvider(keys["hz"], kms=kms)
    before_shared, before_gw = shared(local), instance(local, PRIMARY)
    message = kmsenv.encrypt(b"row 1", provider, encryption_context=CONTEXT).ciphertext
    assert kmsenv.decrypt(message, provider).plaintext == b"row 1"
    assert diff(before_shared, shared(local)) == {}  # the shared gateway saw nothing
    calls = diff(before_gw, instance(local, PRIMARY))
    assert calls.get("GenerateDataKey") == 1 and calls.get("Encrypt") == 1 and calls.get("Decrypt") == 1
    # The EDK is the transfer adapters' blob: version (36 ASCII) || IV || Encrypt of the key's base64 text.
    header, _ = decode_message(message)
    (edk,) = header.encrypted_data_keys
    version_id, iv, ct = unpack_transfer_blob(edk.ciphertext_blob)
    assert len(version_id) == 36 and len(iv) == 12 and len(ct) == 44 + 16


def test_blob_opens_with_the_instance_client_directly(local, kms, keys):
    """What another reader of the instance does: Decrypt with the version header, AAD =
    SHA-256 of the sorted context, and the base64 text of the data key comes out."""
    provider = kmsenv.KmsKeyProvider(keys["hz"], kms=kms)
    data_key = provider.generate_data_key(kmsenv.Algorithm.AES_GCM_NOPADDING_256, dict(CONTEXT))
    try:
        gateway = local.instances[PRIMARY]
        client = InstanceClient(
            gateway.endpoint,
            client_key_file=gateway.client_key.key_file,
            password=gateway.client_key.password,
            ca=gateway.ca_file,
        )
        version_id, iv, ct = unpack_transfer_blob(data_key.encrypted_data_keys[0].ciphertext_blob)
        import hashlib

        aad = hashlib.sha256("&".join(f"{k}={v}" for k, v in sorted(CONTEXT.items())).encode()).digest()
        text = client.decrypt(ct, iv, version_id=version_id, aad=aad)
        assert base64.b64decode(text) == bytes(data_key.plaintext)
        with pytest.raises(kmsenv.KmsError):
            client.decrypt(ct, iv, version_id=version_id, aad=b"")  # the context is bound
    finally:
        data_key.wipe()


def test_mixed_instance_and_shared_gateway_cmks(local, kms, keys):
    provider = kmsenv.KmsKeyProvider(keys["hz"], keys["hz2"], keys["bj"], kms=kms)
    before = shared(local)
    message = kmsenv.encrypt(b"mixed", provider, encryption_context=CONTEXT).ciphertext
    made = diff(before, shared(local))
    # hz2 is in the instance's region: Encrypt there (no ReEncrypt on instances); bj on the shared gateway.
    assert made == {(BJ, "Encrypt"): 1}
    for arn in (keys["hz"], keys["hz2"], keys["bj"]):
        assert kmsenv.decrypt(message, kmsenv.KmsKeyProvider(arn, kms=kms)).plaintext == b"mixed"


def test_reencrypt_is_refused_on_an_instance(kms, keys):
    with pytest.raises(kmsenv.ConfigurationError, match="ReEncrypt is not served"):
        kms.re_encrypt(b"x" * 64, keys["hz2"])


def test_one_cmk_with_a_replica_region(local, kms, keys):
    provider = kmsenv.KmsKeyProvider(keys["hz"], kms=kms, replica_regions=[SH])
    message = kmsenv.encrypt(b"replicated", provider, encryption_context=CONTEXT).ciphertext
    header, _ = decode_message(message)
    assert [e.key_arn for e in header.encrypted_data_keys] == [keys["hz"]]  # one EDK, one KMS data-key call
    # The primary instance down: the replica in cn-shanghai decrypts the same blob.
    local.instances[PRIMARY].set_fault(down=True)
    before = instance(local, REPLICA)
    assert kmsenv.decrypt(message, provider).plaintext == b"replicated"
    assert diff(before, instance(local, REPLICA)).get("Decrypt") == 1
    # Encrypt fails over too; the EDK still names the primary ARN, and the primary reads it once back.
    other = kmsenv.encrypt(b"written during the outage", provider, encryption_context=CONTEXT).ciphertext
    assert [e.key_arn for e in decode_message(other)[0].encrypted_data_keys] == [keys["hz"]]
    local.instances[PRIMARY].set_fault()
    local.instances[REPLICA].set_fault(down=True)
    assert kmsenv.decrypt(other, provider).plaintext == b"written during the outage"


def test_every_replica_down_names_each_region(local, kms, keys):
    provider = kmsenv.KmsKeyProvider(keys["hz"], kms=kms, replica_regions=[SH])
    message = kmsenv.encrypt(b"x", provider).ciphertext
    local.instances[PRIMARY].set_fault(down=True)
    local.instances[REPLICA].set_fault(down=True)
    with pytest.raises(kmsenv.NoUsableKeyError) as caught:
        kmsenv.decrypt(message, provider)
    text = str(caught.value)
    assert HZ in text and SH in text
    with pytest.raises(kmsenv.NoUsableKeyError, match="in any of its regions"):
        kmsenv.encrypt(b"x", provider)


def test_instance_errors_are_kms_errors(local, kms, keys):
    key_id = keys["hz"].rsplit("/", 1)[1]
    unknown = keys["hz"].replace(key_id, "00000000-0000-0000-0000-000000000000")
    with pytest.raises(kmsenv.KmsError) as caught:
        kms.generate_data_key(unknown, number_of_bytes=32)
    assert caught.value.code and caught.value.region == HZ and not caught.value.retryable
    local.instances[PRIMARY].set_fault(throttle_rate=1.0)
    with pytest.raises(kmsenv.KmsError) as caught:
        kms.generate_data_key(keys["hz"], number_of_bytes=32)
    assert caught.value.retryable and caught.value.region == HZ


def test_instance_endpoint_is_checked(local):
    gateway = local.instances[PRIMARY]
    with pytest.raises(kmsenv.ConfigurationError, match="ca_file"):
        InstanceEndpoint(gateway.endpoint, gateway.client_key.key_file, password_file=gateway.client_key.password_file)
    with pytest.raises(kmsenv.ConfigurationError, match="exactly one"):
        InstanceEndpoint(gateway.endpoint, gateway.client_key.key_file, ca_file=gateway.ca_file)
    with pytest.raises(kmsenv.ConfigurationError, match="InstanceEndpoint"):
        Kms(instances={HZ: {"endpoint": gateway.endpoint}})
    # A password no temp path can contain by chance (mkdtemp's random suffix once held "pw").
    password = "Q7#zX!not-in-any-path"
    secret = InstanceEndpoint(gateway.endpoint, gateway.client_key.key_file, ca_file=gateway.ca_file, password=password)
    assert password not in repr(secret) and "Q7#zX" not in repr(secret)


def test_wrong_ca_is_refused(local, keys, tmp_path, clean):
    other = LocalKms(regions=[HZ], instances={"kst-other": HZ})
    with other:
        wrong_ca = other.instances["kst-other"].ca_file
        gateway = local.instances[PRIMARY]
        kms = Kms(
            access_key_id=local.access_key_id,
            access_key_secret=local.access_key_secret,
            instances={
                HZ: InstanceEndpoint(
                    gateway.endpoint,
                    gateway.client_key.key_file,
                    password_file=gateway.client_key.password_file,
                    ca_file=wrong_ca,
                )
            },
            max_attempts=1,
        )
        with pytest.raises(kmsenv.KmsError) as caught:
            kms.generate_data_key(keys["hz"], number_of_bytes=32)
        assert not caught.value.retryable


def test_instances_from_the_environment(local, keys, tmp_path, monkeypatch, clean):
    gateway = local.instances[PRIMARY]
    conf = tmp_path / "instances.json"
    for name in ("key_file", "password_file"):
        src = getattr(gateway.client_key, name)
        (tmp_path / os.path.basename(src)).write_bytes(open(src, "rb").read())
    (tmp_path / "ca.pem").write_bytes(open(gateway.ca_file, "rb").read())
    conf.write_text(
        json.dumps(
            {
                HZ: {
                    "endpoint": gateway.endpoint,
                    "client_key_file": os.path.basename(gateway.client_key.key_file),  # relative to the file
                    "password_file": os.path.basename(gateway.client_key.password_file),
                    "ca_file": "ca.pem",
                }
            }
        )
    )
    monkeypatch.setenv(INSTANCES_ENV, str(conf))
    kms = Kms(access_key_id=local.access_key_id, access_key_secret=local.access_key_secret)
    assert kms.is_instance(HZ) and not kms.is_instance(BJ)
    provider = kmsenv.KmsKeyProvider(keys["hz"], kms=kms)
    assert kmsenv.decrypt(kmsenv.encrypt(b"env", provider).ciphertext, provider).plaintext == b"env"
    conf.write_text(json.dumps({HZ: {"endpoint": gateway.endpoint, "password": "inline"}}))
    with pytest.raises(kmsenv.ConfigurationError, match="known fields"):
        Kms()


def test_replica_regions_are_checked(kms, keys):
    with pytest.raises(kmsenv.ConfigurationError, match="itself"):
        kmsenv.KmsKeyProvider(keys["hz"], kms=kms, replica_regions=[HZ])
    with pytest.raises(kmsenv.ConfigurationError, match="twice"):
        kmsenv.KmsKeyProvider(keys["hz"], kms=kms, replica_regions=[SH, SH])
    with pytest.raises(kmsenv.ConfigurationError, match="list of regions"):
        kmsenv.KmsKeyProvider(keys["hz"], kms=kms, replica_regions=SH)
    assert "replica_regions=['cn-shanghai']" in repr(kmsenv.KmsKeyProvider(keys["hz"], kms=kms, replica_regions=[SH]))


def test_cli_encrypts_on_an_instance_and_decrypts_from_the_replica(local, keys, tmp_path, monkeypatch, clean):
    from kmsenv import cli

    conf = instances_file(tmp_path, {HZ: local.instances[PRIMARY], SH: local.instances[REPLICA]})
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", local.access_key_id)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", local.access_key_secret)
    monkeypatch.setenv("KMSENV_KMS_ENDPOINTS", ",".join(f"{r}={u}" for r, u in local.endpoints.items()))
    monkeypatch.delenv(INSTANCES_ENV, raising=False)
    src, enc, dec = tmp_path / "in.bin", tmp_path / "in.kmsenv", tmp_path / "out.bin"
    src.write_bytes(os.urandom(100_000))
    base = ["--instances", str(conf), "--replica-region", SH]
    assert cli.main(["encrypt", "-k", keys["hz"], *base, "-i", str(src), "-o", str(enc)]) == 0
    local.instances[PRIMARY].set_fault(down=True)
    assert cli.main(["decrypt", "-k", keys["hz"], *base, "-i", str(enc), "-o", str(dec)]) == 0
    assert dec.read_bytes() == src.read_bytes()
    # Without the replica the primary's outage is a KMS failure (exit 3), and nothing is written.
    dec.unlink()
    assert cli.main(["decrypt", "-k", keys["hz"], "--instances", str(conf), "-i", str(enc), "-o", str(dec)]) == 3
    assert not dec.exists()


def test_aliyun_compat_reaches_the_instance_through_the_environment(local, keys, tmp_path, monkeypatch, clean):
    from kmsenv.aliyun import AliyunConfig, AliyunCrypto, DefaultDataKeyProvider

    gateway = local.instances[PRIMARY]
    conf = instances_file(tmp_path, {HZ: gateway})
    monkeypatch.setenv(INSTANCES_ENV, str(conf))
    client = AliyunCrypto(AliyunConfig(local.access_key_id, local.access_key_secret, endpoints=local.endpoints))
    before_shared, before_gw = shared(local), instance(local, PRIMARY)
    cipher_text, _ = client.encrypt(DefaultDataKeyProvider(keys["hz"]), b"official names", CONTEXT)
    assert client.decrypt(DefaultDataKeyProvider(keys["hz"]), cipher_text)[0] == b"official names"
    assert diff(before_shared, shared(local)) == {}
    assert diff(before_gw, instance(local, PRIMARY)).get("Decrypt") == 1


# -- message level, with the unmodified official adapter and the rest of kmsenv ----------------


@pytest.fixture(scope="session")
def transfer_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    import instance_driver

    return instance_driver.official_python(tmp_path_factory, "transfer")


def _transfer(python: str, gateway, *calls) -> list:
    import instance_driver

    return instance_driver.adapter_calls(python, "transfer", gateway, *calls)


class _GivenKey:
    """A provider that hands out one data key with the EDK someone else made."""

    def __init__(self, key: bytes, edk: kmsenv.EncryptedDataKey):
        self.key, self.edk = key, edk

    def generate_data_key(self, algorithm, encryption_context):
        from kmsenv.model import DataKey

        return DataKey(self.key, [self.edk])

    def decrypt_data_key(self, encrypted_data_keys, algorithm, encryption_context):
        raise AssertionError("not used")


def test_messages_interoperate_with_the_official_transfer_adapter(local, kms, keys, transfer_python):
    """A kmsenv message's EDK opens with alibabacloud-dkms-transfer-python (as the official SDKs
    reach an instance), and a data key the adapter generated makes a message kmsenv decrypts
    through the instance."""
    gateway = local.instances[PRIMARY]
    key_id = keys["hz"].rsplit("/", 1)[1]
    provider = kmsenv.KmsKeyProvider(keys["hz"], kms=kms)
    data_key = provider.generate_data_key(kmsenv.Algorithm.AES_GCM_NOPADDING_256, dict(CONTEXT))
    try:
        ours = base64.b64encode(data_key.encrypted_data_keys[0].ciphertext_blob).decode()
        opened, made = _transfer(
            transfer_python,
            gateway,
            {"op": "decrypt", "blob": ours, "context": CONTEXT},
            {"op": "generate_data_key", "key_id": key_id, "context": CONTEXT},
        )
        assert base64.b64decode(opened["ok"]["Plaintext"]) == bytes(data_key.plaintext)
    finally:
        data_key.wipe()
    their_key = base64.b64decode(made["ok"]["Plaintext"])
    their_edk = kmsenv.EncryptedDataKey(keys["hz"], base64.b64decode(made["ok"]["CiphertextBlob"]))
    message = kmsenv.encrypt(b"their data key", _GivenKey(their_key, their_edk), encryption_context=CONTEXT)
    assert kmsenv.decrypt(message.ciphertext, provider).plaintext == b"their data key"


def test_streams_caching_discovery_and_job_keys_on_an_instance(local, kms, keys):
    import io

    import pyarrow as pa

    from kmsenv import arrow as ka
    from kmsenv import jobkey
    from kmsenv.stream import decrypt_stream, encrypt_stream

    provider = kmsenv.KmsKeyProvider(keys["hz"], keys["bj"], kms=kms)
    data = os.urandom(300_000)
    sealed, opened = io.BytesIO(), io.BytesIO()
    encrypt_stream(io.BytesIO(data), sealed, provider, encryption_context=CONTEXT, frame_size=64 * 1024)
    reader = kmsenv.KmsKeyProvider.discovery(regions=[HZ], kms=kms)
    decrypt_stream(io.BytesIO(sealed.getvalue()), opened, reader)
    assert opened.getvalue() == data

    before = instance(local, PRIMARY)
    cached = kmsenv.CachingProvider(provider, kmsenv.DataKeyCache(max_messages=10))
    messages = [kmsenv.encrypt(b"m%d" % i, cached).ciphertext for i in range(5)]
    assert diff(before, instance(local, PRIMARY)).get("GenerateDataKey") == 1  # one data key for five
    assert [kmsenv.decrypt(m, provider).plaintext for m in messages] == [b"m%d" % i for i in range(5)]

    jobkey.clear_cache()
    job = kmsenv.JobKey.create(provider, encryption_context={"job": "instance"})
    column = pa.array([f"row-{i}" for i in range(100)])
    assert ka.decrypt_array(ka.encrypt_array(column, job, format="compact"), job, as_string=True).equals(column)


def _decrypt_in_a_worker(job, encrypted) -> list:
    from kmsenv import arrow as ka

    return ka.decrypt_array(encrypted, job, as_string=True).to_pylist()


def test_worker_processes_get_the_instances_and_replicas_from_the_spec(local, keys, tmp_path, monkeypatch, clean):
    """A job key's WorkerSpec carries the instances file (KmsSpec.instances_file) and the
    replica regions: a spawned worker, whose environment names no instances, decrypts from
    the replica while the primary instance is down."""
    import multiprocessing

    import pyarrow as pa

    from kmsenv import arrow as ka
    from kmsenv.jobkey import WorkerSpec

    conf = instances_file(tmp_path, {HZ: local.instances[PRIMARY], SH: local.instances[REPLICA]})
    monkeypatch.setenv(INSTANCES_ENV, str(conf))
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", local.access_key_id)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", local.access_key_secret)
    kms = Kms(endpoints=local.endpoints)
    assert kms.instances_file == str(conf)
    provider = kmsenv.KmsKeyProvider(keys["hz"], kms=kms, replica_regions=[SH])
    spec = WorkerSpec.from_provider(provider)
    assert spec.kms.instances_file == str(conf) and spec.replica_regions == (SH,)
    job = kmsenv.JobKey.create(provider, spec=spec)
    rows = [f"row-{i}" for i in range(50)]
    encrypted = ka.encrypt_array(pa.array(rows), job, format="compact")

    monkeypatch.delenv(INSTANCES_ENV)  # the worker learns the instances from the spec alone
    local.instances[PRIMARY].set_fault(down=True)
    before = instance(local, REPLICA)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_decrypt_in_a_worker, (job, encrypted)) == rows
    assert diff(before, instance(local, REPLICA)).get("Decrypt") == 1
    with pytest.raises(kmsenv.ConfigurationError, match="replica_regions"):
        WorkerSpec(cmks=None, replica_regions=(SH,))


@pytest.fixture(scope="session")
def kmssdk_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    import instance_driver

    return instance_driver.official_python(tmp_path_factory, "kmssdk")


def test_edks_of_the_kms_python_sdk_adapter_are_read_too(local, kms, keys, kmssdk_python):
    """alibabacloud-kms-python-sdk binds the context as the hex text of its SHA-256 (not the
    raw digest kmsenv writes): a data key it generated still decrypts in a kmsenv message,
    the other AAD rule tried after the configured one failed the tag."""
    import instance_driver

    key_id = keys["hz"].rsplit("/", 1)[1]
    (made,) = instance_driver.adapter_calls(
        kmssdk_python,
        "kmssdk",
        local.instances[PRIMARY],
        {"op": "generate_data_key", "key_id": key_id, "context": CONTEXT},
    )
    their_key = base64.b64decode(made["ok"]["Plaintext"])
    their_edk = kmsenv.EncryptedDataKey(keys["hz"], base64.b64decode(made["ok"]["CiphertextBlob"]))
    message = kmsenv.encrypt(b"advance data key", _GivenKey(their_key, their_edk), encryption_context=CONTEXT)
    before = instance(local, PRIMARY)
    assert kmsenv.decrypt(message.ciphertext, kmsenv.KmsKeyProvider(keys["hz"], kms=kms)).plaintext == (
        b"advance data key"
    )
    assert diff(before, instance(local, PRIMARY)).get("Decrypt") == 2  # the configured rule, then sha256-hex
    # An EDK that no rule opens (another context) is the first rule's error, not the last one's.
    with pytest.raises(kmsenv.KmsError) as caught:
        kms.decrypt(keys["hz"], their_edk.ciphertext_blob, {"another": "context"})
    assert caught.value.code == "InvalidParameter"


def test_ram_credentials_to_an_instance_beside_a_shared_gateway(local, keys, clean):
    """RAM mode: the instance's OpenAPI endpoint with its private CA for that region only
    (ca={region: file}), the shared gateway elsewhere, in one Kms and one provider."""
    gateway = local.instances[PRIMARY]
    endpoints = dict(local.endpoints)
    endpoints[HZ] = f"https://{gateway.endpoint}"
    kms = Kms(
        access_key_id=local.access_key_id,
        access_key_secret=local.access_key_secret,
        endpoints=endpoints,
        ca={HZ: gateway.ca_file},
        max_attempts=1,
    )
    provider = kmsenv.KmsKeyProvider(keys["hz"], keys["bj"], kms=kms)
    message = kmsenv.encrypt(b"ram mode", provider, encryption_context=CONTEXT).ciphertext
    for arn in (keys["hz"], keys["bj"]):
        assert kmsenv.decrypt(message, kmsenv.KmsKeyProvider(arn, kms=kms)).plaintext == b"ram mode"
    # The instance's certificate does not verify against the system roots.
    bare = Kms(
        access_key_id=local.access_key_id,
        access_key_secret=local.access_key_secret,
        endpoints={HZ: f"https://{gateway.endpoint}"},
        max_attempts=1,
    )
    with pytest.raises(kmsenv.KmsError):
        bare.generate_data_key(keys["hz"], number_of_bytes=32)
    # A real instance host is recognised as one (no ReEncrypt there).
    named = Kms(endpoints={HZ: "https://kst-hzz6a7b8c9.cryptoservice.kms.aliyuncs.com"})
    assert named.is_instance(HZ) and not named.is_instance(BJ)
    with pytest.raises(kmsenv.ConfigurationError, match="ca"):
        Kms(ca={HZ: 42})


def test_cli_reaches_an_instance_with_ram_credentials(local, keys, tmp_path, monkeypatch, clean):
    from kmsenv import cli

    gateway = local.instances[PRIMARY]
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", local.access_key_id)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", local.access_key_secret)
    monkeypatch.delenv(INSTANCES_ENV, raising=False)
    monkeypatch.delenv("KMSENV_KMS_ENDPOINTS", raising=False)
    src, enc, dec = tmp_path / "in.bin", tmp_path / "in.kmsenv", tmp_path / "out.bin"
    src.write_bytes(os.urandom(5000))
    ram = ["--endpoint", f"{HZ}=https://{gateway.endpoint}", "--ca", f"{HZ}={gateway.ca_file}"]
    assert cli.main(["encrypt", "-k", keys["hz"], *ram, "-i", str(src), "-o", str(enc)]) == 0
    assert cli.main(["decrypt", "-k", keys["hz"], *ram, "-i", str(enc), "-o", str(dec)]) == 0
    assert dec.read_bytes() == src.read_bytes()
    # Without the instance's CA the gateway is refused: a KMS failure, nothing written.
    dec.unlink()
    assert cli.main(["decrypt", "-k", keys["hz"], *ram[:2], "-i", str(enc), "-o", str(dec)]) == 3
    assert not dec.exists()
