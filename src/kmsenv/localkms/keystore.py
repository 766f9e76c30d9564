"""Keys, key versions, aliases and instance metadata for every region.

Running state lives in dictionaries (the request path never waits on disk reads).
With a state directory every mutation is also written to SQLite, and lookups that miss
the cache fall back to the database, so a key created by ``create-key`` in another
process becomes usable by a running server without a restart.

Key material is stored in clear: this is a test/development server.  Asymmetric key
versions keep their private key as PKCS#8 DER in the same column as symmetric material
(:mod:`kmsenv.localkms.asymmetric`).  Secrets (Secrets Manager) are stored as one JSON
document per secret whose values are sealed under the secret's CMK by
:mod:`kmsenv.localkms.secrets`; this module only keeps the documents.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..exceptions import ConfigurationError
from . import asymmetric

log = logging.getLogger("kmsenv.localkms")

DB_FILENAME = "localkms.sqlite3"
# SQLite's side files replay into the database when it is opened: a planted WAL is as
# good as a planted database, so they pass the same checks.
_DB_SIDE_FILES = ("-wal", "-shm", "-journal")

# CMK spec -> material length.  Aliyun_SM4 uses SM4-GCM if OpenSSL has it (probed below),
# else AES-128-GCM as a stand-in so the server still works on such builds.
KEY_SPECS = {"Aliyun_AES_256": 32, "Aliyun_AES_192": 24, "Aliyun_AES_128": 16, "Aliyun_SM4": 16}
KEY_STATES = ("Enabled", "Disabled", "PendingDeletion", "PendingImport")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    region TEXT NOT NULL, key_id TEXT NOT NULL, key_spec TEXT NOT NULL,
    key_usage TEXT NOT NULL, state TEXT NOT NULL, origin TEXT NOT NULL,
    protection_level TEXT NOT NULL, description TEXT NOT NULL,
    creation_date TEXT NOT NULL, primary_version TEXT NOT NULL,
    PRIMARY KEY (region, key_id));
CREATE TABLE IF NOT EXISTS key_versions (
    region TEXT NOT NULL, version_id TEXT NOT NULL, key_id TEXT NOT NULL,
    material BLOB NOT NULL, creation_date TEXT NOT NULL,
    PRIMARY KEY (region, version_id));
CREATE TABLE IF NOT EXISTS secrets (
    region TEXT NOT NULL, name TEXT NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (region, name));
CREATE TABLE IF NOT EXISTS aliases (
    region TEXT NOT NULL, alias_name TEXT NOT NULL, key_id TEXT NOT NULL,
    creation_date TEXT NOT NULL, PRIMARY KEY (region, alias_name));
"""
_KEY_COLS = (
    "region, key_id, key_spec, key_usage, state, origin, protection_level, description, creation_date, primary_version"
)


class _Sm4Gcm:
    """AESGCM-shaped wrapper, because cryptography has no SM4 AEAD class."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def encrypt(self, nonce: bytes, data: bytes, associated_data: Optional[bytes]) -> bytes:
        enc = Cipher(algorithms.SM4(self._key), modes.GCM(nonce)).encryptor()
        if associated_data:
            enc.authenticate_additional_data(associated_data)
        return enc.update(data) + enc.finalize() + enc.tag

    def decrypt(self, nonce: bytes, data: bytes, associated_data: Optional[bytes]) -> bytes:
        if len(data) < 16:
            raise ValueError("truncated")
        dec = Cipher(algorithms.SM4(self._key), modes.GCM(nonce, data[-16:])).decryptor()
        if associated_data:
            dec.authenticate_additional_data(associated_data)
        return dec.update(data[:-16]) + dec.finalize()


def _probe_sm4() -> bool:
    try:
        _Sm4Gcm(bytes(16)).encrypt(bytes(12), b"x", b"a")
        return True
    except Exception:
        return False


SM4_GCM_AVAILABLE = _probe_sm4()


def make_aead(key_spec: str, material: bytes) -> Any:
    """The object that uses a version's material: an AEAD for a symmetric spec, an
    :class:`~kmsenv.localkms.asymmetric.AsymmetricKey` for an asymmetric one."""
    if key_spec in asymmetric.ASYMMETRIC_SPECS:
        return asymmetric.load(key_spec, material)
    if key_spec == "Aliyun_SM4" and SM4_GCM_AVAILABLE:
        return _Sm4Gcm(material)
    return AESGCM(material)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Key:
    region: str
    key_id: str
    key_spec: str
    key_usage: str
    state: str
    origin: str
    protection_level: str
    description: str
    creation_date: str
    primary_version: str  # "" for asymmetric keys: they have no primary version

    @property
    def asymmetric(self) -> bool:
        return self.key_spec in asymmetric.ASYMMETRIC_SPECS


@dataclass(frozen=True)
class KeyVersion:
    region: str
    version_id: str
    key_id: str
    creation_date: str
    material: bytes = field(repr=False)
    # What uses the material: an AEAD for a symmetric key version, an
    # asymmetric.AsymmetricKey (the key pair) for an asymmetric one (see make_aead).
    aead: Any = field(repr=False, compare=False)


# -- state directory ownership and permissions -----------------------------------------
# The database holds key material and the access key secret, and whoever can write it can
# plant their own access key or keys.  As ssh does with ~/.ssh and its keys, refuse a
# directory or file that another user owns or could write, and create ours private
# whatever the umask is.


def _describe_mode(st: os.stat_result) -> str:
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}"


def _check_private(path: str, st: os.stat_result, what: str, fix: str) -> None:
    euid = os.geteuid()
    if st.st_uid != euid:
        raise ConfigurationError(
            f"localkms {what} {path} belongs to another user ({_describe_mode(st)}; you are "
            f"uid {euid}): it may hold keys or an access key that user planted, and they can "
            f"read yours. Use a {what} you created yourself (remove this one, or pick a new "
            "path and localkms creates it private)."
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigurationError(
            f"localkms {what} {path} is writable by group or others ({_describe_mode(st)}): "
            f"another user could plant keys or an access key in it. Fix: {fix} (and remove "
            "anything in it you did not create)."
        )


def secure_state_dir(state_dir: str) -> str:
    """Create ``state_dir`` (mode 0700) or check an existing one; return the database path.

    Raises :class:`~kmsenv.exceptions.ConfigurationError` naming the path and the fix if
    the directory, the database or one of SQLite's side files is another user's or is
    group/world-writable.  A database of ours that others may read is narrowed to 0600.
    """
    state_dir = os.path.abspath(state_dir)
    try:
        os.mkdir(state_dir, 0o700)
        os.chmod(state_dir, 0o700)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        pass
    except FileNotFoundError:  # parents are ordinary directories: default permissions
        os.makedirs(os.path.dirname(state_dir), exist_ok=True)
        return secure_state_dir(state_dir)
    try:
        st = os.stat(state_dir)
    except FileNotFoundError:  # mkdir found a name, stat found nothing behind it
        raise ConfigurationError(
            f"localkms state directory {state_dir} is a dangling symbolic link; remove it or point it at a directory"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigurationError(f"localkms state directory {state_dir} is not a directory")
    _check_private(state_dir, st, "state directory", f"chmod 700 {state_dir}")
    db_path = os.path.join(state_dir, DB_FILENAME)
    for path in [db_path] + [db_path + suffix for suffix in _DB_SIDE_FILES]:
        _secure_db_file(path, create=path == db_path)
    return db_path


def _secure_db_file(path: str, create: bool) -> None:
    if create:
        try:
            # Created here rather than by sqlite3.connect, which would make it 0666 & ~umask
            # and leave a window in which another user could open it.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            pass
        else:
            try:
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
            return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ConfigurationError(f"localkms database {path} is a dangling symbolic link; remove it") from None
        return  # side files exist only while a database is open
    if not stat.S_ISREG(st.st_mode):
        raise ConfigurationError(f"localkms database {path} is not a regular file")
    _check_private(path, st, "database", f"chmod 600 {path}")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("localkms database %s was readable by others (mode %04o); now 0600", path, stat.S_IMODE(st.st_mode))
        os.chmod(path, 0o600)


class KeyStore:
    """Thread-safe store; ``state_dir=None`` keeps everything in memory.

    A ``state_dir`` must be private to the current user (see :func:`secure_state_dir`).
    """

    def __init__(self, state_dir: Optional[str] = None) -> None:
        self._lock = threading.RLock()
        self._db: Optional[sqlite3.Connection] = None
        self._meta: dict[str, str] = {}
        self._keys: dict[tuple[str, str], Key] = {}
        self._versions: dict[tuple[str, str], KeyVersion] = {}
        self._aliases: dict[tuple[str, str], str] = {}
        self._secrets: dict[tuple[str, str], str] = {}  # without a state dir: JSON docs
        if state_dir is not None:
            path = secure_state_dir(state_dir)
            # One shared connection guarded by self._lock; autocommit so each write is
            # durable immediately; WAL + busy_timeout let a CLI process write concurrently.
            # SQLite gives its -wal/-shm files the database file's mode (0600).
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    @property
    def persistent(self) -> bool:
        return self._db is not None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- metadata (account uid, credentials, ports) --------------------------------

    def get_meta(self, name: str) -> Optional[str]:
        with self._lock:
            if self._db is None:
                return self._meta.get(name)
            row = self._db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
            return row[0] if row else None

    def set_meta(self, name: str, value: str) -> None:
        with self._lock:
            if self._db is None:
                self._meta[name] = value
            else:
                self._db.execute("INSERT OR REPLACE INTO meta(name, value) VALUES (?, ?)", (name, value))

    def meta_setdefault(self, name: str, value: str) -> str:
        """Store ``value`` unless already set (by us or another process); return the winner."""
        with self._lock:
            if self._db is None:
                return self._meta.setdefault(name, value)
            self._db.execute("INSERT OR IGNORE INTO meta(name, value) VALUES (?, ?)", (name, value))
            row = self._db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
            return str(row[0])

    # -- keys ----------------------------------------------------------------------

    def create_key(self, region: str, key_spec: str, description: str = "", key_usage: str = "ENCRYPT/DECRYPT") -> Key:
        """A new Enabled key with its first version (the primary one if symmetric)."""
        if key_spec not in KEY_SPECS and key_spec not in asymmetric.ASYMMETRIC_SPECS:
            raise ValueError(f"unsupported key spec {key_spec!r}")
        now = utc_now()
        version_id = str(uuid.uuid4())
        is_asymmetric = key_spec in asymmetric.ASYMMETRIC_SPECS
        key = Key(
            region=region,
            key_id=str(uuid.uuid4()),
            key_spec=key_spec,
            key_usage=key_usage,
            state="Enabled",
            origin="Aliyun_KMS",
            protection_level="SOFTWARE",
            description=description,
            creation_date=now,
            primary_version="" if is_asymmetric else version_id,
        )
        version = self._new_version(key, version_id, now)
        material = version.material
        with self._lock:
            if self._db is not None:
                with self._db:  # one transaction: never a key without its version
                    self._db.execute("BEGIN")
                    self._db.execute(
                        f"INSERT INTO keys({_KEY_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (
                            key.region,
                            key.key_id,
                            key.key_spec,
                            key.key_usage,
                            key.state,
                            key.origin,
                            key.protection_level,
                            key.description,
                            key.creation_date,
                            key.primary_version,
                        ),
                    )
                    self._db.execute(
                        "INSERT INTO key_versions(region, version_id, key_id, "
                        "material, creation_date) VALUES (?,?,?,?,?)",
                        (region, version.version_id, key.key_id, material, now),
                    )
            self._keys[(region, key.key_id)] = key
            self._versions[(region, version.version_id)] = version
        return key

    @staticmethod
    def _new_version(key: Key, version_id: str, now: str) -> KeyVersion:
        if key.asymmetric:
            pair = asymmetric.generate(key.key_spec)
            return KeyVersion(key.region, version_id, key.key_id, now, pair.private_der(), pair)
        material = os.urandom(KEY_SPECS[key.key_spec])
        return KeyVersion(key.region, version_id, key.key_id, now, material, make_aead(key.key_spec, material))

    def create_version(self, region: str, key_id: str) -> tuple[Key, KeyVersion]:
        """A new version of a key (CreateKeyVersion, §14.3): its own key pair for an
        asymmetric key; new material that becomes the primary version for a symmetric one."""
        with self._lock:
            key = self.get_key(region, key_id)
            if key is None:
                raise KeyError(key_id)
            now = utc_now()
            version = self._new_version(key, str(uuid.uuid4()), now)
            if not key.asymmetric:
                key = replace(key, primary_version=version.version_id)
            if self._db is not None:
                with self._db:
                    self._db.execute("BEGIN")
                    self._db.execute(
                        "INSERT INTO key_versions(region, version_id, key_id, "
                        "material, creation_date) VALUES (?,?,?,?,?)",
                        (region, version.version_id, key_id, version.material, now),
                    )
                    self._db.execute(
                        "UPDATE keys SET primary_version=? WHERE region=? AND key_id=?",
                        (key.primary_version, region, key_id),
                    )
            self._keys[(region, key_id)] = key
            self._versions[(region, version.version_id)] = version
            return key, version

    def list_versions(self, region: str, key_id: str) -> list[KeyVersion]:
        """A key's versions, oldest first."""
        with self._lock:
            if self._db is None:
                return [v for (r, _), v in self._versions.items() if r == region and v.key_id == key_id]
            self._load_keys(region, "AND key_id=?", (key_id,))
            rows = self._db.execute(
                "SELECT version_id FROM key_versions WHERE region=? AND key_id=? ORDER BY rowid", (region, key_id)
            ).fetchall()
            return [self._versions[(region, vid)] for (vid,) in rows if (region, vid) in self._versions]

    def get_key(self, region: str, key_id: str) -> Optional[Key]:
        key = self._keys.get((region, key_id))  # dict reads are atomic under the GIL
        if key is None and self._db is not None:
            with self._lock:
                self._load_keys(region, "AND key_id=?", (key_id,))
                key = self._keys.get((region, key_id))
        return key

    def get_version(self, region: str, version_id: str) -> Optional[KeyVersion]:
        version = self._versions.get((region, version_id))
        if version is None and self._db is not None:
            with self._lock:
                row = self._db.execute(
                    "SELECT key_id FROM key_versions WHERE region=? AND version_id=?", (region, version_id)
                ).fetchone()
                if row:
                    self._load_keys(region, "AND key_id=?", (row[0],))
                version = self._versions.get((region, version_id))
        return version

    def set_state(self, region: str, key_id: str, state: str) -> Key:
        if state not in KEY_STATES:
            raise ValueError(state)
        with self._lock:
            key = self.get_key(region, key_id)
            if key is None:
                raise KeyError(key_id)
            key = replace(key, state=state)
            if self._db is not None:
                self._db.execute("UPDATE keys SET state=? WHERE region=? AND key_id=?", (state, region, key_id))
            self._keys[(region, key_id)] = key
            return key

    def list_keys(self, region: str) -> list[Key]:
        with self._lock:
            if self._db is None:  # dicts keep insertion order: oldest first
                return [k for (r, _), k in self._keys.items() if r == region]
            ids = self._load_keys(region, "", ())
            return [self._keys[(region, key_id)] for key_id in ids]

    def regions(self) -> list[str]:
        """Regions that hold keys or aliases (lets ``serve --state`` default its regions)."""
        with self._lock:
            if self._db is not None:
                rows = self._db.execute(
                    "SELECT region FROM keys UNION SELECT region FROM aliases UNION SELECT region FROM secrets"
                )
                return sorted(r for (r,) in rows)
            return sorted({r for r, _ in self._keys} | {r for r, _ in self._aliases} | {r for r, _ in self._secrets})

    def _load_keys(self, region: str, where: str, args: tuple[str, ...]) -> list[str]:
        """Refresh matching keys (and their versions) from the database, oldest first."""
        assert self._db is not None
        ids = []
        for row in self._db.execute(
            f"SELECT {_KEY_COLS} FROM keys WHERE region=? {where} ORDER BY rowid", (region, *args)
        ).fetchall():
            key = Key(*row)
            ids.append(key.key_id)
            self._keys[(region, key.key_id)] = key
            for vid, material, created in self._db.execute(
                "SELECT version_id, material, creation_date FROM key_versions "
                "WHERE region=? AND key_id=? ORDER BY rowid",
                (region, key.key_id),
            ).fetchall():
                if (region, vid) not in self._versions:
                    self._versions[(region, vid)] = KeyVersion(
                        region, vid, key.key_id, created, bytes(material), make_aead(key.key_spec, bytes(material))
                    )
        return ids

    # -- aliases -------------------------------------------------------------------

    def create_alias(self, region: str, alias_name: str, key_id: str) -> bool:
        """Return False if the alias already exists in the region."""
        with self._lock:
            if self.alias_target(region, alias_name) is not None:
                return False
            if self._db is not None:
                try:
                    self._db.execute(
                        "INSERT INTO aliases(region, alias_name, key_id, creation_date) VALUES (?,?,?,?)",
                        (region, alias_name, key_id, utc_now()),
                    )
                except sqlite3.IntegrityError:
                    return False
            self._aliases[(region, alias_name)] = key_id
            return True

    def alias_target(self, region: str, alias_name: str) -> Optional[str]:
        target = self._aliases.get((region, alias_name))
        if target is None and self._db is not None:
            with self._lock:
                row = self._db.execute(
                    "SELECT key_id FROM aliases WHERE region=? AND alias_name=?", (region, alias_name)
                ).fetchone()
                if row:
                    target = self._aliases[(region, alias_name)] = row[0]
        return target

    def list_aliases(self, region: str) -> list[tuple[str, str]]:
        """(alias name, key id) pairs, oldest first."""
        with self._lock:
            if self._db is not None:
                rows = self._db.execute(
                    "SELECT alias_name, key_id FROM aliases WHERE region=? ORDER BY creation_date, rowid", (region,)
                ).fetchall()
                for name, key_id in rows:
                    self._aliases[(region, name)] = key_id
                return [(n, k) for n, k in rows]
            return [(n, k) for (r, n), k in self._aliases.items() if r == region]

    # -- secrets (documents owned by kmsenv.localkms.secrets) ------------------------

    @property
    def lock(self) -> threading.RLock:
        """Held around a secret's read-modify-write (one process: the server)."""
        return self._lock

    def get_secret_doc(self, region: str, name: str) -> Optional[dict[str, Any]]:
        with self._lock:
            if self._db is None:
                raw = self._secrets.get((region, name))
            else:
                row = self._db.execute("SELECT doc FROM secrets WHERE region=? AND name=?", (region, name)).fetchone()
                raw = row[0] if row else None
            return None if raw is None else dict(json.loads(raw))

    def list_secret_docs(self, region: str) -> list[dict[str, Any]]:
        """Every secret document of a region, oldest first."""
        with self._lock:
            if self._db is None:
                raws = [d for (r, _), d in self._secrets.items() if r == region]
            else:
                raws = [
                    d for (d,) in self._db.execute("SELECT doc FROM secrets WHERE region=? ORDER BY rowid", (region,))
                ]
            return [dict(json.loads(raw)) for raw in raws]

    def count_secrets(self, region: str) -> int:
        with self._lock:
            if self._db is None:
                return sum(1 for r, _ in self._secrets if r == region)
            return int(self._db.execute("SELECT COUNT(*) FROM secrets WHERE region=?", (region,)).fetchone()[0])

    def put_secret_doc(self, region: str, name: str, doc: dict[str, Any]) -> None:
        """Insert or replace; a replaced secret keeps its place in the listing order."""
        raw = json.dumps(doc, separators=(",", ":"), sort_keys=True)
        with self._lock:
            if self._db is None:
                self._secrets[(region, name)] = raw
                return
            updated = self._db.execute(
                "UPDATE secrets SET doc=? WHERE region=? AND name=?", (raw, region, name)
            ).rowcount
            if not updated:
                self._db.execute("INSERT INTO secrets(region, name, doc) VALUES (?,?,?)", (region, name, raw))

    def delete_secret_doc(self, region: str, name: str) -> None:
        with self._lock:
            if self._db is None:
                self._secrets.pop((region, name), None)
            else:
                self._db.execute("DELETE FROM secrets WHERE region=? AND name=?", (region, name))
