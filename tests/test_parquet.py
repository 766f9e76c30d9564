"""kmsenv.parquet: pyarrow Parquet modular encryption with multi-region KMS,
against a real LocalKms over HTTP (and, marked ``dask``, a Dask LocalCluster)."""

from __future__ import annotations

import base64
import logging
import os
import pickle
import re
import subprocess
import sys

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from kms_fixtures import *  # noqa: E402,F401,F403
from kms_fixtures import BJ, HZ, REGIONS, SH  # noqa: E402

import kmsenv.parquet as kp  # noqa: E402
from kmsenv.exceptions import (  # noqa: E402
    ConfigurationError,
    KmsEnvError,
    MessageFormatError,
    NoUsableKeyError,
)
from kmsenv.kmsspec import KmsSpec  # noqa: E402

PII = "alias/pq-pii"
FOOTER = "alias/pq-footer"
COLUMN_KEYS = {PII: ["email", "phone"]}
N_ROWS = 2000


@pytest.fixture(scope="module")
def aliases(local_kms):
    """A CMK per region and alias: the same alias names exist in every region."""
    for region in REGIONS:
        for alias in (PII, FOOTER):
            local_kms.create_alias(region, alias, local_kms.create_key(region))
    return local_kms


@pytest.fixture(scope="module")
def env(local_kms):
    """Credentials in os.environ (as workers get them); restored afterwards."""
    names = (
        "ALIBABA_CLOUD_ACCESS_KEY_ID",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
        "ALIBABA_CLOUD_SECURITY_TOKEN",
        "KMSENV_PREFER_REGIONS",
        "KMSENV_KMS_ENDPOINTS",
    )
    saved = {n: os.environ.get(n) for n in names}
    for n in names:
        os.environ.pop(n, None)
    os.environ["ALIBABA_CLOUD_ACCESS_KEY_ID"] = local_kms.access_key_id
    os.environ["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = local_kms.access_key_secret
    yield local_kms
    for n, v in saved.items():
        if v is None:
            os.environ.pop(n, None)
        else:
            os.environ[n] = v


def make_spec(local_kms, prefer=(HZ, BJ, SH), **kw) -> kp.ParquetKmsSpec:
    kms = KmsSpec(
        endpoints=local_kms.endpoints,
        prefer_regions=prefer,
        backoff_base=0.001,
        backoff_max=0.005,
        connect_timeout=2.0,
        read_timeout=5.0,
    )
    return kp.ParquetKmsSpec(regions=REGIONS, kms=kms, **kw)


@pytest.fixture
def fresh(aliases, env, clean_faults):
    """New process-level factories and zeroed counters, before and after."""
    kp.clear_crypto_factories()
    kp.reset_kms_stats()
    aliases.reset_stats()
    yield aliases
    kp.clear_crypto_factories()


def table(n: int = N_ROWS) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "email": [f"user{i:07d}@example.com" for i in range(n)],
            "phone": [f"+86-{i * 7919 % 10**8:08d}" for i in range(n)],
            "amount": [i * 0.5 for i in range(n)],
        }
    )


def calls(local_kms, action: str) -> dict[str, int]:
    return {r: local_kms.stats()[r].get(action, 0) for r in REGIONS}


def write_files(tmp_path, spec, count: int) -> list[str]:
    paths = []
    for i in range(count):
        p = str(tmp_path / f"f{i}.parquet")
        kp.write_table(table(), p, spec=spec, column_keys=COLUMN_KEYS, footer_key=FOOTER)
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------
# pyarrow round trips and KMS call counts
# ---------------------------------------------------------------------------


def test_round_trip_three_regions_call_counts(fresh, tmp_path):
    spec = make_spec(fresh)
    paths = write_files(tmp_path, spec, 4)
    # Double wrapping: one KEK per master key per process, wrapped once per region.
    assert calls(fresh, "Encrypt") == {HZ: 2, BJ: 2, SH: 2}
    assert sum(calls(fresh, "Decrypt").values()) == 0
    assert kp.kms_stats()["encrypt"] == 6

    fresh.reset_stats()
    kp.clear_crypto_factories()  # a reader with a NEW process-level factory
    for p in paths:
        assert kp.read_table(p, spec=spec).equals(table())
    assert calls(fresh, "Decrypt") == {HZ: 2, BJ: 0, SH: 0}  # 1 per KEK, nearest region
    assert sum(calls(fresh, "Encrypt").values()) == 0
    stats = kp.kms_stats()
    assert stats["decrypt"] == stats["distinct_unwrapped"] == 2

    # A directory goes through pyarrow's dataset reader with the same properties.
    assert kp.read_table(str(tmp_path), spec=spec).num_rows == 4 * N_ROWS

    # The same factory serves later reads from its cache; column projection works.
    fresh.reset_stats()
    got = kp.read_table(paths[0], spec=spec, columns=["id", "email"])
    assert got.column_names == ["id", "email"] and got.column("email").equals(table().column("email"))
    assert sum(calls(fresh, "Decrypt").values()) == 0


def test_columns_and_footer_are_encrypted(fresh, tmp_path):
    spec = make_spec(fresh)
    (path,) = write_files(tmp_path, spec, 1)
    raw = open(path, "rb").read()
    assert raw[-4:] == b"PARE"  # encrypted footer
    assert b"user0000001@example.com" not in raw and b"example.com" not in raw
    with pytest.raises(OSError, match="(?i)decrypt|encrypt"):
        pq.read_table(path)  # no decryption properties
    # Unencrypted columns stay readable with a plaintext footer and no keys.
    p2 = str(tmp_path / "plain_footer.parquet")
    kp.write_table(table(), p2, spec=spec, column_keys=COLUMN_KEYS, footer_key=FOOTER, plaintext_footer=True)
    assert open(p2, "rb").read()[-4:] == b"PAR1"
    assert pq.read_table(p2, columns=["id"]).column("id").equals(table().column("id"))
    with pytest.raises(OSError):
        pq.read_table(p2, columns=["email"])
    assert kp.read_table(p2, spec=spec).equals(table())


def test_single_wrapping(fresh, tmp_path):
    spec = make_spec(fresh, double_wrapping=False)
    paths = write_files(tmp_path, spec, 2)
    # Every DEK goes to KMS: (footer + one per encrypted column) per file, in every region.
    assert calls(fresh, "Encrypt") == {HZ: 6, BJ: 6, SH: 6}
    fresh.reset_stats()
    kp.clear_crypto_factories()
    for p in paths:
        assert kp.read_table(p, spec=spec).equals(table())
    decrypts = calls(fresh, "Decrypt")
    assert decrypts[BJ] == decrypts[SH] == 0
    # At least one per DEK (pyarrow 26 re-unwraps each DEK several times: 30 here).
    assert decrypts[HZ] >= 6


def test_failover_when_preferred_region_down(fresh, tmp_path, caplog):
    spec = make_spec(fresh, prefer=(HZ, BJ, SH))
    paths = write_files(tmp_path, spec, 2)
    fresh.reset_stats()
    kp.clear_crypto_factories()
    kp.reset_kms_stats()
    fresh.set_fault(HZ, down=True)
    with caplog.at_level(logging.WARNING, logger="kmsenv"):
        for p in paths:
            assert kp.read_table(p, spec=spec).equals(table())
    assert calls(fresh, "Decrypt") == {HZ: 0, BJ: 2, SH: 0}
    stats = kp.kms_stats()
    assert stats["decrypt"] == 2 and stats["decrypt_failed"] == 2  # one refused HZ attempt per KEK
    assert HZ in caplog.text
    assert fresh.access_key_secret not in caplog.text


def test_writer_fails_if_any_region_is_down(fresh, tmp_path):
    spec = make_spec(fresh)
    fresh.set_fault(SH, down=True)
    with pytest.raises(Exception) as info:
        write_files(tmp_path, spec, 1)
    text = str(info.value)
    assert "cannot wrap" in text and SH in text and "every configured region" in text
    assert fresh.access_key_secret not in text


def test_every_region_down_gives_clear_error(fresh, tmp_path):
    spec = make_spec(fresh)
    (path,) = write_files(tmp_path, spec, 1)
    kp.clear_crypto_factories()
    for region in REGIONS:
        fresh.set_fault(region, down=True)
    with pytest.raises(Exception) as info:
        kp.read_table(path, spec=spec)
    err = info.value
    assert isinstance(err, (OSError, KmsEnvError))
    text = str(err)
    assert "cannot unwrap the Parquet key" in text and "3 region(s)" in text
    for region in REGIONS:
        assert f"{region}:" in text
    assert "cannot reach" in text
    assert fresh.access_key_secret not in text

    # Same through the client directly: NoUsableKeyError with one error per region.
    client = kp.KmsClient(spec)
    wrapped = "kmsenv1|" + "|".join(f"{r}=QUJD" for r in REGIONS)
    with pytest.raises(NoUsableKeyError) as info2:
        client.unwrap_key(wrapped, PII)
    assert [r for r, _ in info2.value.errors] == [HZ, BJ, SH]


def test_tampered_footer_key_material_surfaces_through_pyarrow(fresh, tmp_path):
    spec = make_spec(fresh)
    (path,) = write_files(tmp_path, spec, 1)
    raw = open(path, "rb").read()
    assert raw.count(b"kmsenv1|") >= 1  # the footer key material is stored in clear
    bad = str(tmp_path / "bad.parquet")
    open(bad, "wb").write(raw.replace(b"kmsenv1|", b"kmsenv9|"))
    kp.clear_crypto_factories()
    with pytest.raises(Exception) as info:
        kp.read_table(bad, spec=spec)
    assert isinstance(info.value, (OSError, KmsEnvError))
    assert "unsupported format version 'kmsenv9'" in str(info.value)


# ---------------------------------------------------------------------------
# KmsClient directly
# ---------------------------------------------------------------------------


def test_wrapped_key_is_ascii_and_hides_the_key(fresh):
    spec = make_spec(fresh)
    client = kp.KmsClient(spec)
    key = bytes(range(1, 17)) * 2
    wrapped = client.wrap_key(key, PII)
    assert isinstance(wrapped, str) and wrapped.isascii() and wrapped.isprintable()
    fields = wrapped.split("|")
    assert fields[0] == "kmsenv1"
    assert [f.split("=", 1)[0] for f in fields[1:]] == list(REGIONS)
    for text in (key.hex(), base64.b64encode(key).decode(), key.decode("latin-1")):
        assert text not in wrapped
    assert re.fullmatch(r"kmsenv1(\|[a-z0-9-]+=[A-Za-z0-9+/]+=*){3}", wrapped)
    assert len(wrapped) <= kp.MAX_WRAPPED_KEY_CHARS
    assert calls(fresh, "Encrypt") == {HZ: 1, BJ: 1, SH: 1}
    assert client.unwrap_key(wrapped, PII) == key
    # Each region's blob alone is enough.
    for region, blob in kp.parse_wrapped_key(wrapped):
        single = kp.format_wrapped_key([(region, blob)])
        assert client.unwrap_key(single, PII) == key
    assert "kmsenv.parquet.KmsClient(regions=" in repr(client) and key.hex() not in repr(client)


def test_wrong_master_key_id_is_refused(fresh):
    client = kp.KmsClient(make_spec(fresh))
    wrapped = client.wrap_key(os.urandom(16), PII)
    # The blob is bound to {"parquet_mkid": PII}: another master key id cannot unwrap it.
    with pytest.raises(NoUsableKeyError) as info:
        client.unwrap_key(wrapped, FOOTER)
    text = str(info.value)
    assert "alias/pq-footer" in text and all(r in text for r in REGIONS)
    assert len(info.value.errors) == 3


def test_tampered_blob_is_refused(fresh):
    client = kp.KmsClient(make_spec(fresh))
    wrapped = client.wrap_key(os.urandom(16), PII)
    entries = kp.parse_wrapped_key(wrapped)
    tampered = kp.format_wrapped_key([(r, b[:-1] + bytes([b[-1] ^ 1])) for r, b in entries])
    with pytest.raises(NoUsableKeyError, match="cannot unwrap the Parquet key for master key 'alias/pq-pii'"):
        client.unwrap_key(tampered, PII)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "does not start with"),
        ("aws1|cn-hangzhou=QUJD", "does not start with"),
        ("kmsenv2|cn-hangzhou=QUJD", "unsupported format version 'kmsenv2'"),
        ("kmsenv1", "no region entries"),
        ("kmsenv1|", "entry 1 is not of the form"),
        ("kmsenv1|cn-hangzhou", "entry 1 is not of the form"),
        ("kmsenv1|cn hangzhou=QUJD", "invalid region name"),
        ("kmsenv1|=QUJD", "invalid region name"),
        ("kmsenv1|cn-hangzhou=QUJD|cn-hangzhou=QUJD", "appears twice"),
        ("kmsenv1|cn-hangzhou=QUJ", "not valid base64"),
        ("kmsenv1|cn-hangzhou=QU!D", "not valid base64"),
        ("kmsenv1|cn-hangzhou=", "not valid base64"),
        ("kmsenv1|cn-hangzhou=" + "A" * (kp.MAX_BLOB_CHARS + 4), "not valid base64"),
        ("kmsenv1|cn-hangzhou=QUJD" + "|r=QUJD" * 40, "more than 32 region entries"),
        ("kmsenv1|" + "x" * kp.MAX_WRAPPED_KEY_CHARS, "more than the limit"),
        ("kmsenv1|cn-hangzhou=QUJD\u00e9", "non-ASCII"),
        ("kmsenv1|cn-hangzhou=QUJD\n", "non-printable"),
    ],
)
def test_malformed_wrapped_keys(fresh, text, message):
    client = kp.KmsClient(make_spec(fresh))
    with pytest.raises(MessageFormatError, match=re.escape(message)) as info:
        client.unwrap_key(text, PII)
    assert str(info.value).startswith("kmsenv.parquet: malformed wrapped key")
    assert sum(calls(fresh, "Decrypt").values()) == 0


def test_master_key_ids_and_columns_are_validated(fresh, tmp_path):
    spec = make_spec(fresh)
    client = kp.KmsClient(spec)
    for bad in ("", "acs:kms:cn-hangzhou:1:key/x", "a,b", "alias/x;y", "alias/ x", "x" * 300):
        with pytest.raises(ConfigurationError, match="master key identifier"):
            client.wrap_key(b"k" * 16, bad)
        with pytest.raises(MessageFormatError):
            client.unwrap_key("kmsenv1|cn-hangzhou=QUJD", bad)
    with pytest.raises(ConfigurationError, match="column name"):
        kp.encryption_properties(spec, column_keys={PII: ["a:b"]}, footer_key=FOOTER)
    with pytest.raises(ConfigurationError, match="more than one master key"):
        kp.encryption_properties(spec, column_keys={PII: ["a"], FOOTER: ["a"]}, footer_key=FOOTER)
    with pytest.raises(ConfigurationError):
        kp.write_table(
            table(),
            str(tmp_path / "x.parquet"),
            spec=spec,
            column_keys=COLUMN_KEYS,
            footer_key=FOOTER,
            encryption_properties=None,
        )
    assert sum(calls(fresh, "Encrypt").values()) == 0


def test_key_ids_override_a_region(fresh, tmp_path):
    # A region whose key has no such alias: map the master key id to its ARN there.
    arn = fresh.create_key(SH)
    spec = make_spec(fresh, key_ids={"alias/pq-noalias": {SH: arn}})
    client = kp.KmsClient(spec)
    assert spec.key_id("alias/pq-noalias", SH) == arn and spec.key_id("alias/pq-noalias", HZ) == "alias/pq-noalias"
    with pytest.raises(KmsEnvError, match="cn-hangzhou"):  # the alias does not exist in HZ
        client.wrap_key(os.urandom(16), "alias/pq-noalias")
    only_sh = kp.ParquetKmsSpec(regions=(SH,), kms=spec.kms, key_ids=spec.key_ids)
    key = os.urandom(16)
    wrapped = kp.KmsClient(only_sh).wrap_key(key, "alias/pq-noalias")
    assert kp.KmsClient(only_sh).unwrap_key(wrapped, "alias/pq-noalias") == key
    assert kp.ParquetKmsSpec.from_conf(only_sh.to_conf()) == only_sh


# ---------------------------------------------------------------------------
# The spec: picklable, no secrets, through custom_kms_conf
# ---------------------------------------------------------------------------


def test_spec_pickles_and_round_trips_through_custom_kms_conf(fresh):
    import pyarrow.parquet.encryption as pe

    spec = make_spec(fresh, cache_lifetime=120, data_key_length_bits=128)
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert hash(pickle.loads(pickle.dumps(spec))) == hash(spec)
    config = kp.connection_config(spec)
    assert isinstance(config, pe.KmsConnectionConfig)
    conf = config.custom_kms_conf
    assert set(conf) == {kp.CONF_KEY}
    assert kp.ParquetKmsSpec.from_conf(conf) == spec
    env_spec = kp.ParquetKmsSpec(regions=[BJ, HZ])  # prefer_regions/endpoints left to the worker
    assert kp.ParquetKmsSpec.from_conf(env_spec.to_conf()) == env_spec
    assert env_spec.kms.prefer_regions is None and env_spec.kms.endpoints is None
    text = conf[kp.CONF_KEY]
    for secret in (fresh.access_key_id, fresh.access_key_secret):
        assert secret not in text and secret not in repr(spec)
    assert kp.crypto_factory(spec) is kp.crypto_factory(pickle.loads(pickle.dumps(spec)))
    assert kp.crypto_factory(spec) is not kp.crypto_factory(env_spec)


@pytest.mark.parametrize(
    "conf, message",
    [
        ({}, "has no 'kmsenv.parquet.spec' entry"),
        ({kp.CONF_KEY: "not json"}, "malformed"),
        ({kp.CONF_KEY: '{"v": 2}'}, "malformed"),
        ({kp.CONF_KEY: "x" * 70000}, "longer than"),
    ],
)
def test_bad_conf(conf, message):
    with pytest.raises(ConfigurationError, match=message):
        kp.ParquetKmsSpec.from_conf(conf)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(regions="cn-hangzhou"), "not one string"),
        (dict(regions=()), "at least one region"),
        (dict(regions=(HZ, HZ)), "twice"),
        (dict(regions=("bad region",)), "invalid region"),
        (dict(regions=(HZ,), cache_lifetime=0), "cache_lifetime"),
        (dict(regions=(HZ,), data_key_length_bits=512), "data_key_length_bits"),
        (dict(regions=(HZ,), double_wrapping="yes"), "double_wrapping"),
        (dict(regions=(HZ,), encryption_algorithm="AES_CBC"), "encryption_algorithm"),
        (dict(regions=(HZ,), kms={"endpoints": None}), "KmsSpec"),
    ],
)
def test_spec_validation(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        kp.ParquetKmsSpec(**kwargs)


def test_import_hygiene():
    src = os.path.join(os.path.dirname(__file__), os.pardir, "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.abspath(src), os.environ.get("PYTHONPATH", "")]))
    code = "import sys, kmsenv; assert 'pyarrow' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
    code = (
        "import sys; sys.modules['pyarrow'] = None\n"
        "try:\n    import kmsenv.parquet\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == 'kmsenv.parquet needs pyarrow: pip install "kmsenv[parquet]"', out.stderr


def test_factory_is_forgotten_after_fork(fresh):
    spec = make_spec(fresh)
    parent = kp.crypto_factory(spec)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            ok = not kp._FACTORIES and kp.crypto_factory(spec) is not parent
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.waitpid(pid, 0)
    assert kp.crypto_factory(spec) is parent


# ---------------------------------------------------------------------------
# Dask LocalCluster
# ---------------------------------------------------------------------------


@pytest.mark.dask
def test_dask_round_trip_per_process_counts(fresh, tmp_path):
    dd = pytest.importorskip("dask.dataframe")
    distributed = pytest.importorskip("distributed")
    import pandas as pd

    spec = make_spec(fresh)
    n = 50_000
    df = pd.DataFrame(
        {
            "id": range(n),
            "email": [f"user{i:07d}@example.com" for i in range(n)],
            "phone": [f"+86-{i * 7919 % 10**8:08d}" for i in range(n)],
            "amount": [i * 0.25 for i in range(n)],
        }
    )
    ddf = dd.from_pandas(df, npartitions=4)
    out = tmp_path / "ds"
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", worker_dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        paths = kp.to_parquet(ddf, str(out), spec=spec, column_keys=COLUMN_KEYS, footer_key=FOOTER)
        assert paths == [str(out / f"part.{i}.parquet") for i in range(4)]
        writers = client.run(kp.kms_stats)
        assert len({s["pid"] for s in writers.values()} | {os.getpid()}) == 3
        wrote = [s for s in writers.values() if s["wrap_key"]]
        assert wrote
        for s in wrote:  # per process: 2 master keys x 3 regions, however many files
            assert s["encrypt"] == 6 and s["wrap_key"] == 2
        assert calls(fresh, "Encrypt") == {r: 2 * len(wrote) for r in REGIONS}
        assert kp.kms_stats()["encrypt"] == 0  # nothing was written in the client process

        fresh.reset_stats()
        client.run(kp.clear_crypto_factories)
        client.run(kp.reset_kms_stats)
        result = kp.read_parquet(str(out), spec=spec)
        assert result.npartitions == 4
        got = result.compute()
        ids = result[["id", "email"]].compute()  # column projection reaches the per-file reader
        assert list(ids.columns) == ["id", "email"] and len(ids) == n
        readers = client.run(kp.kms_stats)
    got = got.sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got.astype(object), df.astype(object))
    local = kp.kms_stats()  # the client read part.0 once for meta
    assert local["decrypt"] == local["distinct_unwrapped"] == 2
    total = local["decrypt"]
    for s in readers.values():
        # 1 Decrypt per KEK per process: KEKs are per (writer process, master key).
        assert s["decrypt"] == s["distinct_unwrapped"] <= 2 * len(wrote)
        assert s["decrypt_failed"] == 0
        total += s["decrypt"]
    assert calls(fresh, "Decrypt")[HZ] == total
    assert calls(fresh, "Decrypt")[BJ] == calls(fresh, "Decrypt")[SH] == 0
    assert sum(calls(fresh, "Encrypt").values()) == 0
