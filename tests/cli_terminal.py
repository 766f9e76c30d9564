"""Running the real ``kmsenv`` command as a user does: on a terminal (a
pseudo-terminal the test reads), in pipes, and as a normal (non-root) user.

``render`` turns what a terminal received into the lines a person would see,
so tests can assert on the screen (a progress bar redrawn with ``\\r`` and a log
line that cleared it first) rather than on escape sequences.
"""

from __future__ import annotations

import os
import pwd
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import kmsenv

KMSENV = [sys.executable, "-m", "kmsenv"]

# Python code run before kmsenv in the child: a new session whose controlling
# terminal is the pty on stderr, so Ctrl-C typed there reaches the command as
# SIGINT, exactly as in an interactive shell.
_WITH_CTTY = (
    "import fcntl, os, sys, termios; fcntl.ioctl(2, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'kmsenv', *sys.argv[1:]])"
)


@dataclass
class TerminalRun:
    returncode: int
    screen: bytes  # everything written to the terminal (stderr)
    stdout: bytes  # the pipe on stdout (empty when it was not captured)

    @property
    def lines(self) -> list[str]:
        return render(self.screen)


def render(raw: bytes) -> list[str]:
    """The lines a terminal shows after ``raw``: ``\\r`` returns to column 0 (a bar
    redrawn in place), ``ESC [ K`` erases to the end of the line, ``\\n`` ends a
    line (the pty turns it into ``\\r\\n``). Other escapes are kept as text."""
    lines: list[str] = []
    line: list[str] = []
    col = 0
    text = raw.decode("utf-8", errors="replace")
    i = 0
    while i < len(text):
        if text.startswith("\x1b[K", i):
            del line[col:]
            i += 3
            continue
        ch = text[i]
        i += 1
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append("".join(line))
            line, col = [], 0
        else:
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
    if line:
        lines.append("".join(line))
    return lines


def run_on_terminal(
    args: list[str],
    env: dict[str, str],
    *,
    capture_stdout: bool = True,
    stdin: int | None = subprocess.DEVNULL,
    timeout: float = 120,
    controlling: bool = False,
    when: Callable[[bytes], bool] | None = None,
    then: Callable[[int, subprocess.Popen], None] | None = None,
) -> TerminalRun:
    """Run ``kmsenv ARGS`` with stderr on a pseudo-terminal (stdout a pipe, or
    the terminal too). With ``controlling``, the terminal is the command's
    controlling terminal (Ctrl-C works). Once the screen so far satisfies
    ``when``, ``then(master_fd, proc)`` is called once (to type a key, say)."""
    master, slave = os.openpty()
    cmd = [sys.executable, "-c", _WITH_CTTY, *args] if controlling else [*KMSENV, *args]
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE if capture_stdout else slave,
        stderr=slave,
        start_new_session=controlling,
    )
    # The slave stays open here until the end: when the last holder of a
    # terminal closes it, output still in flight may be dropped (the command's
    # last line, written just before it exits, went missing now and then).
    screen, out = b"", b""
    fired = when is None
    deadline = time.monotonic() + timeout
    pipe = proc.stdout.fileno() if capture_stdout else None
    quiet_since: float | None = None
    try:
        while time.monotonic() < deadline:
            streams = [master] + ([pipe] if pipe is not None else [])
            ready, _, _ = select.select(streams, [], [], 0.05)
            for fd in ready:
                chunk = os.read(fd, 65536)
                if fd == master:
                    screen += chunk
                elif chunk:
                    out += chunk
                else:
                    pipe = None  # stdout closed
            if not fired and when is not None and when(screen):
                fired = True
                assert then is not None
                then(master, proc)
            if proc.poll() is None:
                continue
            # Exited: done once the terminal has been quiet for a moment and stdout is at its end.
            if master in ready:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 0.2 and pipe is None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
        if proc.stdout is not None:
            proc.stdout.close()
    return TerminalRun(code, screen, out)


def shell(script: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """``bash -c SCRIPT`` with ``$KMSENV`` the command (pipes, process substitution)."""
    # Expanded unquoted, so split into words: the interpreter's path has no spaces here.
    env = dict(env, KMSENV=" ".join(KMSENV))
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, timeout=timeout, check=False)


# ---------------------------------------------------------------- a normal user


@dataclass(frozen=True)
class NormalUser:
    """How to run kmsenv as a non-root user: ``setpriv`` to that uid, and an
    interpreter that user may execute. The test interpreter often lives under
    /root (mode 0700), so a system Python of the same version is used with
    kmsenv's and its dependencies' directories on PYTHONPATH."""

    uid: int
    gid: int
    python: str
    pythonpath: str

    def command(self, *args: str) -> list[str]:
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            self.python,
            "-m",
            "kmsenv",
            *args,
        ]

    def env(self, base: dict[str, str]) -> dict[str, str]:
        env = dict(base, PYTHONPATH=self.pythonpath, HOME=tempfile.gettempdir())
        env.pop("PYTHONHOME", None)
        return env

    def workdir(self) -> str:
        """A fresh directory the user owns (pytest's tmp_path is root's, 0700)."""
        path = tempfile.mkdtemp(prefix="kmsenv-user-")
        os.chown(path, self.uid, self.gid)
        return path


def normal_user() -> NormalUser | None:
    """A NormalUser, or None where this cannot be done (not root, no setpriv,
    no interpreter the user may run with kmsenv importable)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return None
    import site
    import sysconfig

    roots = [os.path.dirname(os.path.dirname(os.path.abspath(kmsenv.__file__)))]
    roots += [
        p
        for p in [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
        if p not in roots
    ]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    pythonpath = os.pathsep.join(dict.fromkeys(roots))
    for python in (sys.executable, shutil.which(f"python{version}"), f"/usr/bin/python{version}"):
        if not python or not os.path.exists(python):
            continue
        user = NormalUser(nobody.pw_uid, nobody.pw_gid, python, pythonpath)
        # The binary the user really runs (a venv's python may be a link into a
        # directory the user cannot enter), used from then on: a shell running
        # as the user must be able to start it too.
        probe = subprocess.run(
            [
                "setpriv",
                f"--reuid={user.uid}",
                f"--regid={user.gid}",
                "--clear-groups",
                python,
                "-c",
                (
                    f"import os, sys, kmsenv; assert sys.version_info[:2] == {tuple(sys.version_info[:2])}; "
                    "assert kmsenv.backend_name(); print(os.path.realpath('/proc/self/exe'))"
                ),
            ],
            env=user.env(dict(os.environ)),
            capture_output=True,
            timeout=60,
            check=False,
        )
        if probe.returncode != 0:
            continue
        user = NormalUser(user.uid, user.gid, probe.stdout.decode().strip(), pythonpath)
        check = subprocess.run(
            [
                "setpriv",
                f"--reuid={user.uid}",
                f"--regid={user.gid}",
                "--clear-groups",
                "bash",
                "-c",
                f"exec {user.python} -c 'import kmsenv'",
            ],
            env=user.env(dict(os.environ)),
            capture_output=True,
            timeout=60,
            check=False,
        )
        if check.returncode == 0:
            return user
    return None


def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)
