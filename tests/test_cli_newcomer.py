"""The ``kmsenv`` command as a newcomer meets it (issue 18): the real command,
run in pipes, on a pseudo-terminal and as root and a normal user, against a
real LocalKms.

* Output targets: a regular file is replaced atomically; anything else that
  exists (a character device, a FIFO, a socket, a link to one of those,
  /dev/stdout, /dev/fd/N) is written as a stream and never replaced; a link
  to a regular file is refused.
* One clean line per error (exit code and stderr line count for each case),
  credentials, endpoints, a closed pipe, Ctrl-C.
* The progress bar and log lines on a terminal; the demo's log order; --help.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading

import pytest
from cli_terminal import KMSENV, NormalUser, normal_user, render, run_on_terminal, shell, wait_for
from kms_fixtures import cli_env  # noqa: F401  (fixture)

# Reaches no crypto backend, or only through code the backend tests cover: the pure-backend CI pass leaves it out.
pytestmark = pytest.mark.backend_independent

PLAINTEXT = os.urandom(300_000)


@pytest.fixture(scope="module")
def kms_env(cli_env):  # noqa: F811
    return cli_env


def kmsenv(*args: str, env=None, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*KMSENV, *args], input=stdin, capture_output=True, env=env, timeout=timeout, check=False)


def lines(stderr: bytes) -> list[str]:
    return stderr.decode(errors="replace").splitlines()


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


@pytest.fixture(scope="module")
def message(kms_env) -> bytes:
    """PLAINTEXT, encrypted (framed) under the first CMK."""
    _, arns, env = kms_env
    out = kmsenv("encrypt", "-k", arns[0], "-i", "-", "-o", "-", env=env, stdin=PLAINTEXT)
    assert out.returncode == 0, out.stderr
    return out.stdout


# ---------------------------------------------------------------- root and a normal user


@pytest.fixture(scope="module")
def the_user() -> NormalUser | None:
    return normal_user()


class As:
    """Runs kmsenv as root or as the normal user, in a directory that user owns."""

    def __init__(self, who: str, env: dict, work: str, user: NormalUser | None):
        self.who, self.env, self.work, self.user = who, env, work, user

    def path(self, name: str) -> str:
        return os.path.join(self.work, name)

    def own(self, path: str) -> str:
        if self.user is not None:
            os.chown(path, self.user.uid, self.user.gid, follow_symlinks=False)
        return path

    def file(self, name: str, data: bytes) -> str:
        path = self.path(name)
        with open(path, "wb") as fh:
            fh.write(data)
        return self.own(path)

    def command(self, *args: str) -> list[str]:
        return self.user.command(*args) if self.user is not None else [*KMSENV, *args]

    def run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), env=self.env, capture_output=True, timeout=120, check=False, **kw)

    def shell(self, script: str) -> subprocess.CompletedProcess:
        """bash -c SCRIPT as this user, with $KMSENV the command."""
        prefix = (
            ["setpriv", f"--reuid={self.user.uid}", f"--regid={self.user.gid}", "--clear-groups"] if self.user else []
        )
        python = self.user.python if self.user else sys.executable
        env = dict(self.env, KMSENV=f"{python} -m kmsenv")  # the shell already runs as the user
        return subprocess.run(
            [*prefix, "bash", "-c", script], env=env, capture_output=True, timeout=120, check=False, cwd=self.work
        )


@pytest.fixture(params=["root", "user"])
def who(request, kms_env, the_user, tmp_path):
    _, _, env = kms_env
    if request.param == "root":
        if os.geteuid() != 0:
            pytest.skip("not running as root")
        yield As("root", env, str(tmp_path), None)
        return
    if the_user is None:
        reason = "cannot run kmsenv as a normal user here (needs root, setpriv and an interpreter that user may run)"
        if os.environ.get("KMSENV_REQUIRE_NORMAL_USER") == "1":  # CI: a skip would hide the normal-user half
            pytest.fail(reason)
        pytest.skip(reason)
    work = the_user.workdir()
    try:
        yield As("user", the_user.env(env), work, the_user)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _device(who: As) -> str:
    """A character device to write to: as root a private copy of /dev/null made
    with mknod (so an old kmsenv replacing it harms nothing); as a user
    /dev/null itself (a user cannot replace it, but an old kmsenv tried)."""
    if who.user is not None:
        return "/dev/null"
    path = who.path("null")
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod is not permitted here")
    return path


def _same_node(before: os.stat_result, path: str) -> None:
    after = os.lstat(path)
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode), f"{path} changed kind"
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev), f"{path} was replaced"


# ---------------------------------------------------------------- 1. the output path


def test_a_character_device_is_written_to_never_replaced(kms_env, message, who):
    _, arns, _ = kms_env
    device = _device(who)
    src = who.file("msg.kmsenv", message)
    before = os.stat(device)
    out = who.run("decrypt", "-k", arns[0], "-i", src, "-o", device)
    assert out.returncode == 0, out.stderr
    assert out.stderr == b""
    _same_node(before, device)
    assert os.stat(device).st_size == 0  # a device: nothing stored in the file system


def test_a_link_to_a_device_is_followed_and_left_alone(kms_env, message, who):
    _, arns, _ = kms_env
    device = _device(who)
    link = who.path("sink")
    os.symlink(device, link)
    who.own(link)
    src = who.file("msg.kmsenv", message)
    before = os.stat(device)
    out = who.run("decrypt", "-k", arns[0], "-i", src, "-o", link)
    assert out.returncode == 0, out.stderr
    assert os.path.islink(link) and os.readlink(link) == device
    _same_node(before, device)


def test_a_fifo_is_written_to_never_replaced(kms_env, message, who):
    _, arns, _ = kms_env
    fifo = who.path("fifo")
    os.mkfifo(fifo, 0o666)
    who.own(fifo)
    src = who.file("msg.kmsenv", message)
    before = os.lstat(fifo)
    got = who.path("got")
    with open(got, "wb") as sink:  # cat must drain the FIFO while kmsenv writes: into a file, not a pipe
        reader = subprocess.Popen(["cat", fifo], stdout=sink)
    try:
        out = who.run("decrypt", "-k", arns[0], "-i", src, "-o", fifo)
        reader.wait(timeout=20)  # the old CLI renamed a file over the FIFO: cat waited on, forever
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert out.returncode == 0, out.stderr
    with open(got, "rb") as fh:
        assert fh.read() == PLAINTEXT
    _same_node(before, fifo)


def test_a_socket_is_connected_to_never_replaced(kms_env, message, who):
    _, arns, _ = kms_env
    path = who.path("sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o777)
    who.own(path)
    server.listen(1)
    server.settimeout(30)
    received: list[bytes] = []

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            chunks = []
            while chunk := conn.recv(1 << 16):
                chunks.append(chunk)
            received.append(b"".join(chunks))

    thread = threading.Thread(target=serve)
    thread.start()
    src = who.file("msg.kmsenv", message)
    before = os.lstat(path)
    try:
        out = who.run("decrypt", "-k", arns[0], "-i", src, "-o", path)
    finally:
        thread.join(40)
        server.close()
    assert out.returncode == 0, out.stderr
    assert received == [PLAINTEXT]
    _same_node(before, path)


def test_process_substitution_dev_fd(kms_env, message, who):
    """``-o >(cmd)``: bash passes /dev/fd/63; it used to fail looking for
    /dev/fd/.63.<random>.partial."""
    _, arns, _ = kms_env
    src = who.file("msg.kmsenv", message)
    got = who.path("got")
    out = who.shell(f'$KMSENV decrypt -k {arns[0]} -i {src} -o >(cat > {got}); echo "rc=$?"')
    assert out.stdout.strip() == b"rc=0", out.stderr
    assert out.stderr == b""
    wait_for(lambda: os.path.exists(got) and os.path.getsize(got) == len(PLAINTEXT), timeout=20)
    with open(got, "rb") as fh:
        assert fh.read() == PLAINTEXT


def test_dev_stdout_is_the_descriptor_the_shell_set_up(kms_env, message, who):
    """/dev/stdout into a pipe, and into a file opened for appending (``>>``): the
    descriptor is written as it is (the file's first line stays).

    As root the test names /proc/self/fd/1 instead: the same descriptor, but an
    older kmsenv given /dev/stdout as root renamed a file over the /dev/stdout
    link itself, breaking it for the whole machine (run against the old code,
    this test did exactly that once). In /proc nothing can be renamed over."""
    _, arns, _ = kms_env
    stdout = "/dev/stdout" if who.user is not None else "/proc/self/fd/1"
    src = who.file("msg.kmsenv", message)
    out = who.run("decrypt", "-k", arns[0], "-i", src, "-o", stdout)
    assert out.returncode == 0, out.stderr
    assert out.stdout == PLAINTEXT
    log = who.file("appended", b"first line\n")
    out = who.shell(f"$KMSENV decrypt -k {arns[0]} -i {src} -o {stdout} >> {log}")
    assert out.returncode == 0, out.stderr
    with open(log, "rb") as fh:
        assert fh.read() == b"first line\n" + PLAINTEXT
    out = who.shell(f"$KMSENV decrypt -k {arns[0]} -i {src} -o /dev/fd/3 3> {who.path('fd3')}")
    assert out.returncode == 0, out.stderr
    with open(who.path("fd3"), "rb") as fh:
        assert fh.read() == PLAINTEXT


def test_a_link_to_a_regular_file_is_refused_and_a_regular_file_replaced(kms_env, message, who):
    _, arns, _ = kms_env
    src = who.file("msg.kmsenv", message)
    target = who.file("target", b"keep me")
    link = who.path("link")
    os.symlink(target, link)
    who.own(link)
    out = who.run("decrypt", "-k", arns[0], "-i", src, "-o", link)
    assert out.returncode == 2 and len(lines(out.stderr)) == 1, out.stderr
    assert b"symbolic link" in out.stderr
    assert os.path.islink(link) and _read(target) == b"keep me"
    # A regular file: replaced atomically (a new inode), created 0600.
    before = os.stat(target)
    out = who.run("decrypt", "-k", arns[0], "-i", src, "-o", target)
    assert out.returncode == 0, out.stderr
    after = os.stat(target)
    assert after.st_ino != before.st_ino and stat.S_IMODE(after.st_mode) == 0o600
    assert _read(target) == PLAINTEXT
    assert not [n for n in os.listdir(who.work) if n.endswith(".partial")]


def test_output_directories_are_created_only_with_r(kms_env, message, who):
    _, arns, _ = kms_env
    src = who.file("msg.kmsenv", message)
    out = who.run("decrypt", "-k", arns[0], "-i", src, "-o", who.path("no/such/dir/x"))
    assert out.returncode == 2, out.stderr
    assert lines(out.stderr) == [
        (
            f"kmsenv: cannot write {who.path('no/such/dir/x')}: the directory "
            f"{who.path('no/such/dir')} does not exist (kmsenv creates directories only with -r)"
        )
    ]
    assert not os.path.exists(who.path("no"))
    out = who.run("decrypt", "-k", arns[0], "-i", src, "-o", who.work)
    assert out.returncode == 2 and len(lines(out.stderr)) == 1, out.stderr
    assert b"is a directory" in out.stderr


def test_a_fifo_planted_in_an_output_tree_is_not_replaced(kms_env, tmp_path):
    """In a tree (-r) nothing but a regular file is renamed over: a FIFO where an
    output file goes fails that file (one line, exit 1); the rest is done."""
    _, arns, env = kms_env
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_bytes(b"a" * 100)
    (tree / "b").write_bytes(b"b" * 100)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    os.mkfifo(out_dir / "a.kmsenv")
    out = kmsenv("encrypt", "-k", arns[0], "-r", "-i", str(tree), "-o", str(out_dir), env=env)
    assert out.returncode == 1
    assert lines(out.stderr) == [
        (
            f"kmsenv: {tree}/a: refusing to replace {out_dir}/a.kmsenv: it is not a regular file "
            "(a directory, FIFO, socket or device); nothing was written"
        )
    ]
    assert stat.S_ISFIFO(os.lstat(out_dir / "a.kmsenv").st_mode)
    assert (out_dir / "b.kmsenv").is_file()


def test_a_read_only_output_tree_stops_at_the_first_error(kms_env, the_user):
    """As a normal user (root writes anywhere): one line naming the user's path,
    not one per file naming hidden temporary files."""
    if the_user is None:
        if os.environ.get("KMSENV_REQUIRE_NORMAL_USER") == "1":
            pytest.fail("needs a normal user, and KMSENV_REQUIRE_NORMAL_USER=1")
        pytest.skip("needs a normal user")
    _, arns, env = kms_env
    work = the_user.workdir()
    try:
        tree = os.path.join(work, "tree")
        os.makedirs(os.path.join(tree, "sub"))
        for name in ("a", "b", "sub/c"):
            with open(os.path.join(tree, name), "wb") as fh:
                fh.write(name.encode())
        read_only = os.path.join(work, "ro")
        os.mkdir(read_only, 0o555)
        for d, dirs, files in os.walk(work):
            for n in dirs + files:
                os.chown(os.path.join(d, n), the_user.uid, the_user.gid)
        os.chmod(read_only, 0o555)
        user_env = the_user.env(env)
        out = subprocess.run(
            the_user.command("encrypt", "-k", arns[0], "-r", "-i", tree, "-o", read_only),
            env=user_env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 1
        assert lines(out.stderr) == [
            (
                f"kmsenv: {tree}/a: cannot create {read_only}/a.kmsenv: Permission denied; nothing was written; "
                "stopping here: every other file would fail the same way"
            )
        ]
        out = subprocess.run(
            the_user.command("encrypt", "-k", arns[0], "-i", f"{tree}/a", "-o", f"{read_only}/x"),
            env=user_env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 1 and len(lines(out.stderr)) == 1
        assert f"cannot create {read_only}/x: Permission denied".encode() in out.stderr
        assert b".partial" not in out.stderr
        assert os.listdir(read_only) == []
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_stream_output_keeps_only_verified_plaintext_and_the_error_says_how_much(kms_env, tmp_path):
    """Damage near the end of a 20 MiB framed message, decrypted to a pipe: the
    batches verified before the damage were written (they cannot be taken
    back), nothing of the damaged one, and the error line says how many bytes."""
    _, arns, env = kms_env
    plaintext = os.urandom(20 << 20)
    enc = kmsenv("encrypt", "-k", arns[0], "-i", "-", "-o", "-", env=env, stdin=plaintext)
    assert enc.returncode == 0, enc.stderr
    damaged = bytearray(enc.stdout)
    damaged[-(1 << 20)] ^= 1
    out = kmsenv("decrypt", "-k", arns[0], "-i", "-", "-o", "-", env=env, stdin=bytes(damaged))
    assert out.returncode == 4
    assert 0 < len(out.stdout) < len(plaintext) and plaintext.startswith(out.stdout)
    assert len(out.stdout) % (8 << 20) == 0  # whole verified batches
    [line] = lines(out.stderr)
    assert (
        line.startswith("kmsenv: stdin: ")
        and "(the input is damaged, truncated or not a kmsenv/Alibaba message)" in line
    )
    assert line.endswith(f"; {len(out.stdout)} bytes had been written to stdout (verified plaintext only)")
    assert "nothing was written" not in line


@pytest.mark.parametrize("fmt", ["alibaba", "alibaba-stream"])
def test_single_tag_formats_write_nothing_to_a_stream_before_the_tag_verified(kms_env, tmp_path, fmt):
    """The DER and Java-stream formats have one tag over the whole body: damage at
    its end means not one byte reaches a stream output (they verify, then
    release), and the error says nothing was written."""
    _, arns, env = kms_env
    plaintext = os.urandom(6 << 20)  # over the 4 MiB in-memory spool: the private spool file is used
    enc = kmsenv("encrypt", "-k", arns[0], "--format", fmt, "-i", "-", "-o", "-", env=env, stdin=plaintext)
    assert enc.returncode == 0, enc.stderr
    damaged = bytearray(enc.stdout)
    damaged[-20] ^= 1  # inside the last ciphertext bytes or the tag
    out = kmsenv("decrypt", "-k", arns[0], "-i", "-", "-o", "-", env=env, stdin=bytes(damaged))
    assert out.returncode == 4
    assert out.stdout == b""
    [line] = lines(out.stderr)
    assert line.endswith("; nothing was written")
    good = kmsenv("decrypt", "-k", arns[0], "-i", "-", "-o", "-", env=env, stdin=enc.stdout)
    assert good.returncode == 0 and good.stdout == plaintext, good.stderr


# ---------------------------------------------------------------- 3. one clean line per error


def _no_credentials_env(env: dict, home) -> dict:
    """No credentials anywhere, and a default chain that fails loudly on this
    machine alone: the ECS metadata probe is off (no network needed) and the
    credentials-URI provider points at a closed port; it logs its traceback
    through the same code as the ECS probes."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    env = {k: v for k, v in env.items() if not k.startswith("ALIBABA_CLOUD_")}
    env.update(
        HOME=str(home),
        ALIBABA_CLOUD_ECS_METADATA_DISABLED="true",
        ALIBABA_CLOUD_CLI_PROFILE_DISABLED="true",
        ALIBABA_CLOUD_CREDENTIALS_URI=f"http://127.0.0.1:{port}/credentials",
    )
    return env


def _proxied(env: dict) -> dict:
    """A proxy that refuses connections: a request to a public endpoint fails at
    once, without DNS or network; loopback endpoints bypass proxies."""
    env = {k: v for k, v in env.items() if k.lower() not in ("no_proxy", "all_proxy")}
    env.update(HTTPS_PROXY="http://127.0.0.1:1", https_proxy="http://127.0.0.1:1")
    return env


def test_missing_credentials_are_one_line_naming_the_variables(kms_env, message, tmp_path):
    _, arns, env = kms_env
    src = tmp_path / "msg.kmsenv"
    src.write_bytes(message)
    out = kmsenv(
        "decrypt", "-k", arns[0], "-i", str(src), "-o", str(tmp_path / "o"), env=_no_credentials_env(env, tmp_path)
    )
    assert out.returncode == 2
    [line] = lines(out.stderr)
    assert "ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET" in line
    assert "kmsenv.Kms" not in line and "Traceback" not in line
    assert not (tmp_path / "o").exists()


def test_the_library_keeps_the_credential_chain_off_stderr(kms_env, tmp_path):
    """Kms with no credentials: one ConfigurationError, no tracebacks on stderr;
    what the chain logged is on kmsenv's logger at DEBUG, one line each."""
    server, arns, env = kms_env
    code = (
        "import logging, sys\n"
        "from kmsenv import Kms\n"
        "from kmsenv.exceptions import ConfigurationError\n"
        "seen = []\n"
        "class Keep(logging.Handler):\n"
        "    def emit(self, record): seen.append(record.getMessage())\n"
        "logging.getLogger('kmsenv.credentials').addHandler(Keep(logging.DEBUG))\n"
        "logging.getLogger('kmsenv.credentials').setLevel(logging.DEBUG)\n"
        f"kms = Kms(endpoints={dict(server.endpoints)!r})\n"
        "try:\n"
        f"    kms.generate_data_key({arns[0]!r})\n"
        "except ConfigurationError as exc:\n"
        "    print(type(exc).__name__)\n"
        "print(len(seen), all(m.startswith('kmsenv: credential chain: ') and '\\n' not in m for m in seen))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=_no_credentials_env(env, tmp_path),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == b""
    name, counts = out.stdout.decode().splitlines()
    assert name == "NoCredentialsError"
    logged, one_line_each = counts.split()
    assert int(logged) >= 1 and one_line_each == "True"


def test_endpoint_flags_merge_with_the_environment(kms_env, tmp_path):
    """--endpoint for one region keeps KMSENV_KMS_ENDPOINTS's others (a region not
    named on the command line used to go to the public endpoint), and a flag
    wins over the variable for its own region."""
    server, arns, env = kms_env
    src = tmp_path / "data"
    src.write_bytes(b"x" * 1000)
    env = _proxied(env)
    urls = dict(server.endpoints)
    out = kmsenv(
        "encrypt",
        "-k",
        arns[1],
        "--endpoint",
        f"cn-beijing={urls['cn-beijing']}",
        "-i",
        str(src),
        "-o",
        str(tmp_path / "hz.kmsenv"),
        env=env,
    )
    assert out.returncode == 0, out.stderr
    broken = dict(env, KMSENV_KMS_ENDPOINTS=f"cn-beijing=http://127.0.0.1:1,cn-hangzhou={urls['cn-hangzhou']}")
    out = kmsenv(
        "encrypt",
        "-k",
        arns[0],
        "--endpoint",
        f"cn-beijing={urls['cn-beijing']}",
        "-i",
        str(src),
        "-o",
        str(tmp_path / "bj.kmsenv"),
        env=broken,
    )
    assert out.returncode == 0, out.stderr


def test_a_broken_pipe_ends_quietly(kms_env, tmp_path):
    """``kmsenv decrypt ... -o - | head -c 10``: no error, no traceback; the status
    is SIGPIPE's, as for cat (141 in the shell)."""
    _, arns, env = kms_env
    enc = kmsenv("encrypt", "-k", arns[0], "-i", "-", "-o", "-", env=env, stdin=os.urandom(4 << 20))
    assert enc.returncode == 0, enc.stderr
    msg = tmp_path / "big.kmsenv"
    msg.write_bytes(enc.stdout)
    err = tmp_path / "err"
    out = shell(
        f'$KMSENV decrypt -k {arns[0]} -i {msg} -o - 2>{err} | head -c 10 | wc -c; echo "${{PIPESTATUS[0]}}"', env
    )
    assert out.stdout.split() == [b"10", b"141"], out.stderr
    assert err.read_bytes() == b""
    # The same through a FIFO-like target: a process substitution that stops reading.
    out = shell(f'$KMSENV decrypt -k {arns[0]} -i {msg} -o >(head -c 10 >/dev/null) 2>{err}; echo "$?"', env)
    assert out.stdout.split() == [b"141"], out.stderr
    assert err.read_bytes() == b""


def _case_usage(ctx):
    return ctx.run("encrypt", "-k", ctx.arns[0], "-o", ctx.tmp("o"))


def _case_both_key_kinds(ctx):
    return ctx.run("decrypt", "-k", ctx.arns[0], "--discovery", "-i", ctx.msg, "-o", ctx.tmp("o"))


def _case_missing_input(ctx):
    return ctx.run("encrypt", "-k", ctx.arns[0], "-i", ctx.tmp("absent"), "-o", ctx.tmp("o"))


def _case_key_not_found(ctx):
    arn = ctx.arns[0].rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000"
    return ctx.run("encrypt", "-k", arn, "-i", ctx.plain, "-o", ctx.tmp("o"))


def _case_key_not_in_message(ctx):
    return ctx.run("decrypt", "-k", ctx.arns[1], "-i", ctx.msg, "-o", ctx.tmp("o"))


def _case_wrong_secret(ctx):
    return ctx.run(
        "decrypt",
        "-k",
        ctx.arns[0],
        "-i",
        ctx.msg,
        "-o",
        ctx.tmp("o"),
        env=dict(ctx.env, ALIBABA_CLOUD_ACCESS_KEY_SECRET="wrong"),
    )


def _case_incomplete_credentials(ctx):
    env = {k: v for k, v in ctx.env.items() if k != "ALIBABA_CLOUD_ACCESS_KEY_SECRET"}
    return ctx.run("decrypt", "-k", ctx.arns[0], "-i", ctx.msg, "-o", ctx.tmp("o"), env=env)


def _case_default_endpoint(ctx):
    return ctx.run(
        "encrypt",
        "-k",
        "acs:kms:cn-shanghai:1234567890:key/key-abc",
        "-i",
        ctx.plain,
        "-o",
        ctx.tmp("o"),
        env=_proxied(ctx.env),
    )


def _case_region_down(ctx):
    region = ctx.arns[0].split(":")[2]
    ctx.server.set_fault(region, down=True)
    try:
        return ctx.run("decrypt", "-k", ctx.arns[0], "-i", ctx.msg, "-o", ctx.tmp("o"))
    finally:
        ctx.server.set_fault(region)


def _case_tampered(ctx):
    blob = bytearray(ctx.message)
    blob[-100] ^= 1
    with open(ctx.tmp("tampered"), "wb") as fh:
        fh.write(blob)
    return ctx.run("decrypt", "-k", ctx.arns[0], "-i", ctx.tmp("tampered"), "-o", ctx.tmp("o"))


def _case_context_mismatch(ctx):
    return ctx.run("decrypt", "-k", ctx.arns[0], "-c", "app=other", "-i", ctx.msg, "-o", ctx.tmp("o"))


def _case_inspect_garbage(ctx):
    return ctx.run("inspect", ctx.plain)


# name: (build, exit code, text the one line must contain, text it must not)
ERROR_CASES = {
    "usage": (_case_usage, 2, "encrypt: the following arguments are required: -i/--input", "usage:"),
    "both -k and --discovery": (_case_both_key_kinds, 2, "not allowed with argument", "usage:"),
    "input missing": (_case_missing_input, 1, "absent: No such file or directory", "Errno"),
    "key not found": (_case_key_not_found, 3, "(the key does not exist in that region: check the ARN)", "endpoint"),
    "key not in message": (_case_key_not_in_message, 3, "kmsenv inspect shows them", "KMS is reachable"),
    "wrong secret": (
        _case_wrong_secret,
        3,
        "check ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET",
        "endpoint",
    ),
    "incomplete credentials": (
        _case_incomplete_credentials,
        2,
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET is not set",
        "kmsenv.Kms",
    ),
    "default endpoint": (_case_default_endpoint, 3, "the default endpoint for cn-shanghai", None),
    "region down": (_case_region_down, 3, "cannot reach", "trying the next CMK"),
    "tampered": (_case_tampered, 4, "; nothing was written", None),
    "context mismatch": (_case_context_mismatch, 4, "another context", None),
    "inspect garbage": (_case_inspect_garbage, 4, "unknown message format", "nothing was written"),
}


class _Ctx:
    def __init__(self, kms_env, message, tmp_path):
        self.server, self.arns, self.env = kms_env
        self.message, self.dir = message, tmp_path
        self.msg = self.tmp("msg.kmsenv")
        with open(self.msg, "wb") as fh:
            fh.write(message)
        self.plain = self.tmp("plain")
        with open(self.plain, "wb") as fh:
            fh.write(b"not a message " * 100)

    def tmp(self, name: str) -> str:
        return str(self.dir / name)

    def run(self, *args: str, env=None) -> subprocess.CompletedProcess:
        return kmsenv(*args, env=self.env if env is None else env)


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_each_error_is_one_line_with_its_exit_code(kms_env, message, tmp_path, case):
    build, code, must, must_not = ERROR_CASES[case]
    ctx = _Ctx(kms_env, message, tmp_path)
    out = build(ctx)
    assert out.returncode == code, out.stderr
    assert len(lines(out.stderr)) == 1, out.stderr  # one line: no usage block, no warnings, no tracebacks
    [line] = lines(out.stderr)
    assert line.startswith("kmsenv: ")
    assert must in line
    if must_not is not None:
        assert must_not not in line
    assert not os.path.exists(ctx.tmp("o"))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_decrypting_under_a_key_that_region_does_not_have(kms_env, message, tmp_path):
    """The message's CMK does not exist at the KMS its region's endpoint points
    to (another LocalKms): one line saying so, not "check the endpoint" (and no
    warning line before it: the provider's warning for the last CMK is the error)."""
    from kmsenv.localkms import LocalKms

    _, arns, env = kms_env
    src = tmp_path / "msg.kmsenv"
    src.write_bytes(message)
    with LocalKms(regions=["cn-beijing", "cn-hangzhou"]) as other:
        other_env = dict(
            env,
            KMSENV_KMS_ENDPOINTS=",".join(f"{r}={u}" for r, u in other.endpoints.items()),
            ALIBABA_CLOUD_ACCESS_KEY_ID=other.access_key_id,
            ALIBABA_CLOUD_ACCESS_KEY_SECRET=other.access_key_secret,
        )
        for args in (["-k", arns[0]], ["--discovery"]):
            out = kmsenv("decrypt", *args, "-i", str(src), "-o", str(tmp_path / "o"), env=other_env)
            assert out.returncode == 3
            [line] = lines(out.stderr)
            assert "Forbidden.KeyNotFound" in line
            assert line.endswith("(the key does not exist in that region: check the ARN); nothing was written")
            assert "endpoint" not in line
    assert not (tmp_path / "o").exists()


def test_a_default_endpoint_is_named_with_the_way_to_set_another(kms_env, message, tmp_path):
    out = _case_default_endpoint(_Ctx(kms_env, message, tmp_path))
    [line] = lines(out.stderr)
    assert "cannot reach https://kms.cn-shanghai.aliyuncs.com, the default endpoint for cn-shanghai" in line
    assert "--endpoint cn-shanghai=URL or KMSENV_KMS_ENDPOINTS" in line


# ---------------------------------------------------------------- the terminal


@pytest.fixture(scope="module")
def big_message(kms_env, tmp_path_factory) -> tuple[bytes, str]:
    """(plaintext, path of its framed message under both CMKs): 6 MiB, so a
    terminal gets a progress bar."""
    _, arns, env = kms_env
    plaintext = os.urandom(6 << 20)
    out = kmsenv("encrypt", "-k", arns[0], "-k", arns[1], "-i", "-", "-o", "-", env=env, stdin=plaintext)
    assert out.returncode == 0, out.stderr
    path = tmp_path_factory.mktemp("big") / "big.kmsenv"
    path.write_bytes(out.stdout)
    return plaintext, str(path)


def test_log_lines_clear_the_progress_bar_first(kms_env, big_message):
    """The first CMK's region is down: the failover warning comes while the bar
    shows. It gets a line of its own and the bar goes on below it; stdout (a
    pipe) holds the plaintext and nothing else."""
    server, arns, env = kms_env
    plaintext, path = big_message
    region = arns[0].split(":")[2]
    server.set_fault(region, down=True)
    try:
        run = run_on_terminal(["decrypt", "-k", arns[0], "-k", arns[1], "-i", path, "-o", "-"], env)
    finally:
        server.set_fault(region)
    assert run.returncode == 0, run.screen
    assert run.stdout == plaintext
    screen = run.lines
    assert len(screen) == 2, screen
    warning, bar = screen
    assert warning.startswith("kmsenv: decrypting the data key under ") and warning.endswith("trying the next CMK")
    assert "100.0%" in bar and "MB/s" in bar and "kmsenv:" not in bar


INTERRUPTS = {
    "ctrl-c": (lambda master, proc: os.write(master, b"\x03"), signal.SIGINT),  # typed: the terminal echoes ^C
    "kill -INT": (lambda master, proc: proc.send_signal(signal.SIGINT), signal.SIGINT),  # nothing echoed
    "kill -TERM": (lambda master, proc: proc.send_signal(signal.SIGTERM), signal.SIGTERM),
}


@pytest.mark.parametrize("how", list(INTERRUPTS))
def test_an_interrupt_while_the_bar_shows_ends_its_line(kms_env, big_message, tmp_path, how):
    """Ctrl-C on the controlling terminal (or SIGINT/SIGTERM from elsewhere) while
    the bar shows and the data key is at a slow KMS: exit 128+N, the bar's line
    ended (a message gets a line of its own), no temporary file left."""
    server, arns, env = kms_env
    _, path = big_message
    then, sig = INTERRUPTS[how]
    region = arns[0].split(":")[2]
    server.set_fault(region, latency_ms=20_000)
    try:
        run = run_on_terminal(
            ["decrypt", "-k", arns[0], "-i", path, "-o", str(tmp_path / "plain")],
            env,
            controlling=True,
            when=lambda screen: b"MB/s" in screen,
            then=then,
            timeout=60,
        )
    finally:
        server.set_fault(region)
    assert run.returncode == 128 + sig, run.screen
    assert run.screen.endswith(b"\r\n")  # the shell's prompt starts on a line of its own
    if sig == signal.SIGINT:
        assert run.lines[-1] == "kmsenv: interrupted; no partial output was left", run.lines
        assert len(run.lines) == 2 and "MB/s" in run.lines[0]
    else:
        assert len(run.lines) == 1 and "MB/s" in run.lines[0]
    assert os.listdir(tmp_path) == []


def test_the_demo_logs_the_failover_under_its_own_step():
    out = kmsenv("demo")
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout.decode().splitlines()
    step6 = next(i for i, line in enumerate(text) if line.startswith("[6/7]"))
    logs = [i for i, line in enumerate(text) if line.lstrip().startswith("log:")]
    assert logs and min(logs) > step6, text
    assert "trying the next CMK" in text[step6 + 1]


# ---------------------------------------------------------------- 4. help


def test_encrypt_help_shows_k_as_required():
    out = kmsenv("encrypt", "--help")
    assert out.returncode == 0
    usage = out.stdout.decode().split("\n\n")[0]
    assert " -k ARN " in usage and "[-k ARN]" not in usage


@pytest.mark.parametrize("command", ["encrypt", "decrypt", "inspect", "demo", "info", "kms"])
def test_every_command_has_a_description(command):
    out = kmsenv(command, "--help")
    assert out.returncode == 0
    blocks = out.stdout.decode().split("\n\n")
    assert not blocks[1].startswith(("options:", "positional arguments:")), blocks[:2]
    assert len(blocks[1].split()) >= 8


def test_decrypt_c_says_it_checks_the_pairs():
    text = " ".join(kmsenv("decrypt", "--help").stdout.decode().split())
    assert "-c KEY=VALUE, --context KEY=VALUE check that the message's encryption context has this entry" in text
    assert "exit 4" in text


def test_version():
    import kmsenv as package

    out = kmsenv("--version")
    assert out.returncode == 0
    assert out.stdout.decode().strip() == f"kmsenv {package.__version__}"


def test_help_lists_every_exit_code():
    text = " ".join(kmsenv("--help").stdout.decode().split())
    for code in (
        "0 ok",
        "1 other failure",
        "2 usage",
        "3 KMS",
        "4 the message",
        "130 Ctrl-C",
        "143 SIGTERM",
        "129 SIGHUP",
        "141 the reader",
    ):
        assert code in text, code


def test_render_handles_the_bar_and_clearing():
    raw = b"\rbar 0%\r\x1b[Kkmsenv: warning\r\nbar 0%\rbar 100%\r\n"
    assert render(raw) == ["kmsenv: warning", "bar 100%"]
    assert render(b"\rbar 0%kmsenv: glued\r\n") == ["bar 0%kmsenv: glued"]
