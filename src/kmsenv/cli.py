"""The ``kmsenv`` command.

    kmsenv encrypt -k ARN [-k ARN ...] [-c KEY=VALUE ...] [--format F] [-a ALG] -i IN -o OUT [-r]
    kmsenv encrypt -k ARN [-k ARN ...] --secret NAME [--create-secret] [-c ...] [-a ALG] -i IN -o OUT [-r]
    kmsenv decrypt [-k ARN ... | --discovery] [-c KEY=VALUE ...] -i IN -o OUT [-r]
    kmsenv decrypt -k ARN [-k ARN ...] --secret NAME -i IN -o OUT [-r]
    kmsenv sign -k ARN [...] [-o OUT] [IN] | verify --signature FILE (--public-key PEM | -k ARN ...) [IN]
    kmsenv inspect FILE
    kmsenv demo | info | kms serve | kms create-key

Output to a regular file (or a new one) is written to a temporary file beside
the target and renamed into place only when the whole message has been
written (encrypt) or verified (decrypt), so a failed or interrupted run never
leaves a partial file, never replaces a good one and never touches its input.
An output that exists and is not a regular file (a device such as /dev/null,
a FIFO, a socket, /dev/stdout, /dev/fd/N) is written directly as a stream and
never replaced; a decrypt only ever writes verified plaintext to it.
SIGTERM, SIGINT and SIGHUP remove the temporary file before the process exits
with 128 + the signal number; a closed pipe on the output ends the run quietly,
as SIGPIPE ends other Unix tools.

Symbolic links: paths named on the command line are followed (except that an
output path which is itself a link to a regular file is refused, never
replaced); inside a tree (-r) links are skipped with a warning unless
--follow-symlinks, and nothing is ever written through a link in the output
tree. Text taken from a message (ARNs, context, errors quoting them) is printed
with control characters escaped. Every error is one line on stderr.
See docs/cli.md.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import re
import secrets
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, NoReturn

from . import _process
from ._version import __version__

EXIT_OK = 0
EXIT_FAILED = 1  # anything not covered below (I/O errors, a refused path in a tree, ...)
EXIT_USAGE = 2  # bad arguments or configuration (no credentials, an -o kmsenv will not write)
EXIT_KMS = 3  # KMS unreachable, throttled, denied; no usable key
EXIT_AUTH = 4  # the message failed authentication or is malformed
EXIT_INTERRUPTED = 130  # 128 + SIGINT (Ctrl-C); SIGTERM 143, SIGHUP 129
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what the shell reports for a reader that went away

SUFFIX = ".kmsenv"
PROGRESS_MIN_BYTES = 4 * 1024 * 1024


class UsageError(Exception):
    """A mistake in the command line; reported with exit code 2."""


class UnsafePathError(Exception):
    """A path the CLI will not read or write through (a symbolic link, a loop, a
    file that is not regular); reported for that file with exit code 1."""


class OutputError(OSError):
    """Creating or writing an output failed. It names the output as the user gave
    it, never the hidden temporary file the bytes were going to."""

    def __init__(self, exc: OSError, shown: str, doing: str = "write"):
        super().__init__(exc.errno, exc.strerror or str(exc), shown)
        self.doing = doing

    def __str__(self) -> str:
        return f"cannot {self.doing} {self.filename}: {self.strerror}"


class _BrokenPipe(Exception):
    """The reader of the output went away (``kmsenv decrypt ... -o - | head``)."""


# Output errors that every later file of a tree would hit as well: a tree stops at
# the first (one line), instead of repeating it for each file.
_TREE_FATAL_ERRNOS = frozenset(
    getattr(errno, n) for n in ("EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT") if hasattr(errno, n)
)


# ---------------------------------------------------------------- printing

# What a terminal may act on instead of showing: C0 controls, DEL, C1 controls
# (U+009B is a CSI on some terminals) and the Unicode bidi controls that reorder
# the text around them (marks, embeddings, overrides, isolates, line/paragraph
# separators). Any of them in an ARN or a context value of a crafted message
# could otherwise rewrite what the user sees.
_UNSAFE_BEYOND_C0 = "\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNSAFE_CHARS = re.compile(f"[\x00-\x1f{_UNSAFE_BEYOND_C0}]")
# json.dumps escapes C0 inside strings itself; the C0 left in its output (indent's
# newlines) is layout.
_JSON_UNSAFE_CHARS = re.compile(f"[{_UNSAFE_BEYOND_C0}]")
_NAMED_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escaped_char(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    return _NAMED_ESCAPES.get(ch) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape(text: object) -> str:
    """``str(text)`` safe to print on a terminal: the characters above become
    Python-style escapes (``\\x1b``, ``\\u202e``); everything else, non-ASCII
    letters included, is kept as is."""
    return _UNSAFE_CHARS.sub(_escaped_char, str(text))


def _json_text(record: Any, **kwargs: Any) -> str:
    """``json.dumps`` with the characters :func:`escape` escapes written as JSON
    ``\\uXXXX`` escapes. json.dumps escapes C0 controls itself but leaves DEL
    and (with ensure_ascii=False) C1 and bidi controls raw; those only ever occur
    inside JSON strings, so the output still parses to the same values."""
    return _JSON_UNSAFE_CHARS.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(record, **kwargs))


# kmsenv.providers' warning for a CMK that failed (its last argument: "; trying
# the next CMK", or "" for the last one).
_LAST_CMK_FAILED = "kmsenv: decrypting the data key under %s failed (code=%s, region=%s, request_id=%s)%s"

# Back to the start of the line, then erase it: a terminal's way to take the
# progress bar off its line before a log line is written there.
_CLEAR_LINE = "\r\x1b[K"


class _Console:
    """stderr, shared by the progress bar and every line the command prints.

    The bar is one line redrawn in place (``\\r``) without a newline; a line
    written while it shows used to land after it (``0.0 MB/skmsenv: ...``).
    Here a line first clears the bar's line, is written whole, and the bar is
    drawn again below it. Lines come from the main thread and from the
    library's threads (log records of concurrent region calls): one lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.bar = ""  # the bar's text while it is on the terminal
        self.bar_stream: IO[str] | None = None

    def line(self, text: str) -> None:
        stream = sys.stderr
        with self.lock:
            try:
                covering = bool(self.bar) and self.bar_stream is stream
                if covering:
                    stream.write(_CLEAR_LINE)
                stream.write(text + "\n")
                if covering:
                    stream.write(self.bar)
                stream.flush()
            except (OSError, ValueError):  # stderr closed: nobody to tell
                pass

    def draw(self, stream: IO[str], text: str) -> None:
        with self.lock:
            # Recorded first: a signal's exit path (another thread) reads it to end the bar's line.
            self.bar, self.bar_stream = text, stream
            stream.write("\r" + text)
            stream.flush()

    def end_bar(self) -> None:
        """Leave the bar's last state on its own line."""
        with self.lock:
            if self.bar and self.bar_stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    self.bar_stream.write("\n")
                    self.bar_stream.flush()
            self.bar, self.bar_stream = "", None

    def _after_fork_in_child(self) -> None:
        # A parent thread may have held the lock at fork time; no bar is the child's.
        self.lock = threading.RLock()
        self.bar, self.bar_stream = "", None


_CONSOLE = _Console()
_process.register(__name__, ("_CONSOLE",), lambda: _CONSOLE._after_fork_in_child())


def _say(text: str) -> None:
    """One line on stderr, escaped (paths and message text can carry controls)."""
    _CONSOLE.line(f"kmsenv: {escape(text)}")


class _EscapingFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))


class _ConsoleHandler(logging.Handler):
    """Log records as console lines (so they never collide with the bar)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # INFO only for the one line a user must see: an input of unknown length
        # (a pipe) that the alibaba format spools before writing.
        if record.levelno < logging.WARNING and record.msg != _spool_note():
            return False
        # The provider warns for each CMK that failed; for the last one (nothing
        # more to try: no "; trying the next CMK") the error line that follows
        # says the same, so the warning would only make one error two lines.
        if record.msg == _LAST_CMK_FAILED and isinstance(record.args, tuple) and record.args and not record.args[-1]:
            return False
        return super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        _CONSOLE.line(text)


@contextlib.contextmanager
def _escaped_log_warnings() -> Iterator[None]:
    """The library's warnings (a CMK that failed, before the next is tried) as
    Python's last-resort handler would print them, but escaped: they quote ARNs
    and KMS error texts. An application that configured logging keeps its own."""
    logger = logging.getLogger("kmsenv")
    if logger.hasHandlers():
        yield
        return
    handler = _ConsoleHandler(logging.INFO)
    handler.setFormatter(_EscapingFormatter("%(message)s"))
    logger.addHandler(handler)
    level = logger.level
    if level == logging.NOTSET:
        logger.setLevel(logging.INFO)  # the handler's filter lets one INFO line through
    try:
        yield
    finally:
        logger.setLevel(level)
        logger.removeHandler(handler)


def _spool_note() -> str:
    from .stream.der_stream import UNKNOWN_LENGTH_NOTE

    return UNKNOWN_LENGTH_NOTE


# ---------------------------------------------------------------- helpers


def _pairs(values: Sequence[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} must look like KEY=VALUE, got {item!r}")
        if key in out:
            raise UsageError(f"{what} names {key!r} twice")
        out[key] = value
    return out


def _endpoints(args: argparse.Namespace) -> dict[str, str]:
    """KMSENV_KMS_ENDPOINTS, then --endpoint on top: a flag replaces the
    variable's entry for its region only, so a region named in neither still
    has its variable entry (it used to go to the public endpoint as soon as any
    --endpoint was given)."""
    from .kms import ENDPOINTS_ENV, parse_endpoints_env

    merged = {region: ep.url for region, ep in parse_endpoints_env(os.environ.get(ENDPOINTS_ENV, "")).items()}
    merged.update(_pairs(args.endpoint, "--endpoint"))
    return merged


def _kms(args: argparse.Namespace) -> Any:
    from .kms import Kms, parse_instances_file

    args.endpoints = _endpoints(args)  # _explain tells a configured endpoint from a default one
    instances_file = getattr(args, "instances", None)
    instances = parse_instances_file(instances_file) if instances_file else None  # else KMSENV_KMS_INSTANCES
    ca = _pairs(getattr(args, "ca", None), "--ca") or None
    return Kms(endpoints=args.endpoints, instances=instances, ca=ca)


def _replicas(args: argparse.Namespace) -> dict[str, Any]:
    """``replica_regions=`` for KmsKeyProvider from --replica-region (none: {})."""
    regions = getattr(args, "replica_region", None)
    return {"replica_regions": regions} if regions else {}


def _algorithm(name: str | None) -> Any:
    from .algorithms import Algorithm

    if name is None:
        return None
    try:
        return Algorithm[name.upper().replace("-", "_")]
    except KeyError:
        choices = ", ".join(a.name for a in Algorithm if a.authenticated)
        raise UsageError(f"unknown algorithm {name!r}; choose one of {choices}") from None


class Progress:
    """A one-line progress bar on stderr, drawn only on a terminal and only for
    inputs large enough to be worth watching. Drawn through the console, so
    lines printed meanwhile (log warnings) never run into it."""

    def __init__(self, label: str, total: int | None, stream: IO[str] | None = None):
        stream = sys.stderr if stream is None else stream
        self.enabled = bool(total and total >= PROGRESS_MIN_BYTES and stream.isatty())
        self.label, self.total, self.stream = escape(label), total, stream
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.1 and done < (self.total or 0):
            return
        self.last = now
        total = self.total or 1
        frac = min(done / total, 1.0)
        rate = done / max(now - self.started, 1e-6) / 1e6
        bar = "#" * int(frac * 30)
        _CONSOLE.draw(self.stream, f"{self.label[-40:]:40s} [{bar:30s}] {frac * 100:5.1f}% {rate:8.1f} MB/s")

    def finish(self) -> None:
        if self.enabled:
            _CONSOLE.end_bar()


# ---------------------------------------------------------------- temporary files and signals

# Every temporary output file that exists (or is being created), as (directory
# fd, name): what SIGTERM/SIGINT/SIGHUP remove before the process exits.
_TEMPS: set[tuple[int, str]] = set()
# Held while a temporary file is registered and created, and taken for good by
# the exit path: so the exit path sees every file that exists and no new one is
# created after it looked. Re-entrant because the main thread's handler can run
# in the middle of a creation (between two bytecodes of that same thread).
_TEMPS_LOCK = threading.RLock()
# SIGHUP does not exist on Windows.
_CLEANUP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, n))


def _forget_temps_after_fork() -> None:
    # The parent's temporary files are the parent's to remove, not a child's.
    global _TEMPS_LOCK
    _TEMPS_LOCK = threading.RLock()
    _TEMPS.clear()


_process.register(__name__, ("_TEMPS", "_TEMPS_LOCK"), _forget_temps_after_fork)


def _terminate(signum: int) -> None:
    """Remove the temporary files and exit 128+signum (never returns).

    os._exit: nothing may write to an output after this, and unwinding could
    wait behind the very I/O being interrupted. Whichever of the two paths below
    gets here first wins; the other blocks on the lock until the process ends."""
    _TEMPS_LOCK.acquire()
    for dir_fd, name in list(_TEMPS):
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
    with contextlib.suppress(OSError):
        if _CONSOLE.bar:  # end the bar's line (read without its lock: the holder may be the interrupted thread)
            os.write(2, b"\n")
        if signum == signal.SIGINT:
            os.write(2, b"kmsenv: interrupted; no partial output was left\n")
    os._exit(128 + signum)


def _on_signal(signum: int, frame: Any) -> None:
    _terminate(signum)


def _watch_signals(wakeup_fd: int) -> None:
    """Act on a signal as soon as it arrives. A Python handler only runs in the
    main thread between bytecodes: a signal landing while the main thread is in C
    code (copying a pipe's data in BufferedReader) before it blocks in read()
    would wait as long as the input stalls. CPython's C handler writes the
    signal number to the wakeup fd at once, from any thread; this thread reads
    it (its blocking read holds no GIL) and exits. Byte 0 stops the watch."""
    while True:
        for signum in os.read(wakeup_fd, 64):
            if signum == 0:
                return
            if signum in _CLEANUP_SIGNALS:
                _terminate(signum)


@contextlib.contextmanager
def _cleanup_on_signals() -> Iterator[None]:
    """Remove temporary outputs and exit 128+signum on SIGTERM, SIGINT, SIGHUP.

    A signal the caller set to be ignored stays ignored (``nohup kmsenv ...``
    keeps running after a hang-up). Outside the main thread (main() called from
    a thread of another program) handlers cannot be set: nothing is changed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in _CLEANUP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, _on_signal)
    read_end, write_end = os.pipe()  # non-inheritable (PEP 446); os.pipe2 is Linux-only
    os.set_blocking(write_end, False)  # set_wakeup_fd requires it
    previous_wakeup = signal.set_wakeup_fd(write_end)
    watcher = threading.Thread(target=_watch_signals, args=(read_end,), name="kmsenv-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.write(write_end, b"\0")
        watcher.join()
        os.close(read_end)
        os.close(write_end)


# POSIX flags; where one is missing (Windows) it is 0 and the import still works.
_O_DIRECTORY, _O_NOFOLLOW, _O_CLOEXEC, _O_NONBLOCK, _O_NOCTTY = (
    getattr(os, n, 0) for n in ("O_DIRECTORY", "O_NOFOLLOW", "O_CLOEXEC", "O_NONBLOCK", "O_NOCTTY")
)
_DIR_FLAGS = os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC


def _open_dir(path: str) -> int:
    """A directory named on the command line (a link to a directory is followed)."""
    return os.open(path, _DIR_FLAGS)


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _output_dir(root_fd: int, parts: Sequence[str], shown: str) -> int:
    """A new fd for ``root/parts[0]/.../parts[-1]``, creating missing directories.
    Each step is opened with O_NOFOLLOW: a symbolic link planted in the output tree
    is refused, so nothing is ever written outside it."""
    fd = os.dup(root_fd)
    try:
        for name in parts:
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o777, dir_fd=fd)
                sub = os.open(name, _DIR_FLAGS | _O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(fd, name):
                    raise UnsafePathError(
                        f"refusing to write {shown}: {name} in its directory path is a symbolic link"
                    ) from None
                raise OutputError(exc, shown, "create") from None
            os.close(fd)
            fd = sub
        return fd
    except BaseException:
        os.close(fd)
        raise


def _refuse_link(dir_fd: int, name: str, shown: str) -> None:
    """Refuse to rename over anything but a regular file. os.replace would
    replace a link itself (its target untouched), but a link at the output path
    is not ours to remove either; nor is a FIFO, socket or device (an -o named
    on the command line is written to as a stream instead; in a tree, the file
    fails)."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputError(exc, shown, "create") from None
    if stat.S_ISLNK(mode):
        raise UnsafePathError(f"refusing to replace {shown}: it is a symbolic link (remove it or name its target)")
    if not stat.S_ISREG(mode):
        raise UnsafePathError(
            f"refusing to replace {shown}: it is not a regular file (a directory, FIFO, socket or device)"
        )


def _create_temp(dir_fd: int, name: str) -> tuple[int, str]:
    """(fd, name) of a new 0600 file ``.NAME.XXXXXXXX.partial`` in ``dir_fd``.

    O_CREAT|O_EXCL|O_NOFOLLOW: never an existing file, never through a link. The
    name is registered for the signal handlers before the file exists, under
    _TEMPS_LOCK, so there is no moment at which a signal leaves it behind; the
    random part (64 bits) keeps a handler from ever matching somebody else's file."""
    for _ in range(100):
        tmp = f".{os.fsdecode(os.fsencode(name)[:200])}.{secrets.token_hex(8)}.partial"  # within NAME_MAX
        with _TEMPS_LOCK:
            _TEMPS.add((dir_fd, tmp))
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600, dir_fd=dir_fd)
            except FileExistsError:
                _TEMPS.discard((dir_fd, tmp))
                continue
            except BaseException:
                _TEMPS.discard((dir_fd, tmp))
                raise
        return fd, tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", name)


class _Sink:
    """The output as the stream functions see it: counts the bytes written (what
    an error message must own up to on a stream output), and reports a failed
    write under the user's path, not the temporary file's."""

    def __init__(self, raw: BinaryIO, shown: str):
        self.raw, self.shown = raw, shown
        self.written = 0

    def write(self, data: Any) -> int:
        try:
            n = self.raw.write(data)
        except OSError as exc:
            raise OutputError(exc, self.shown) from None
        n = len(memoryview(data).cast("B")) if n is None else n
        self.written += n
        return n

    def flush(self) -> None:
        try:
            self.raw.flush()
        except OSError as exc:
            raise OutputError(exc, self.shown) from None

    def fileno(self) -> int:  # an OS-level sink: the stream code may write it from a helper thread
        return self.raw.fileno()


class _AtomicOutput:
    """A temp file beside the target, renamed over it only on commit().

    ``parts`` are the directories below ``root_fd`` (created as needed, never
    through a link) and the file name."""

    streamed = False

    def __init__(self, root_fd: int, parts: Sequence[str], shown: str, private: bool):
        self.shown, self.name = shown, parts[-1]
        self.tmp: str | None = None
        self.file: _Sink | None = None
        self.dir_fd = _output_dir(root_fd, parts[:-1], shown)
        try:
            _refuse_link(self.dir_fd, self.name, shown)  # before any work is done for it
            try:
                fd, self.tmp = _create_temp(self.dir_fd, self.name)
            except OSError as exc:  # named after the output, not the hidden temporary file
                raise OutputError(exc, shown, "create") from None
            # The file is 0600: kept for decrypted plaintext; ciphertext gets the
            # usual umask-based mode.
            if not private:
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(fd, 0o666 & ~umask)
            self.file = _Sink(os.fdopen(fd, "wb"), shown)
        except BaseException:
            self.discard()
            raise

    def commit(self) -> None:
        assert self.file is not None and self.tmp is not None
        try:
            self.file.raw.flush()
            os.fsync(self.file.raw.fileno())
            self.file.raw.close()
            _refuse_link(self.dir_fd, self.name, self.shown)  # planted while we worked
            os.replace(self.tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except OSError as exc:
            raise OutputError(exc, self.shown) from None
        _TEMPS.discard((self.dir_fd, self.tmp))
        self.tmp = None
        self.discard()

    def discard(self) -> None:
        try:
            if self.file is not None:
                with contextlib.suppress(OSError):  # a failed write's data is going away anyway
                    self.file.raw.close()
        finally:
            if self.tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.tmp, dir_fd=self.dir_fd)
                _TEMPS.discard((self.dir_fd, self.tmp))
                self.tmp = None
            if self.dir_fd >= 0:
                os.close(self.dir_fd)
                self.dir_fd = -1


class _StreamOutput:
    """An output written as it is produced: stdout, or an -o that exists and is
    not a regular file (a device such as /dev/null, a FIFO, a socket,
    /dev/stdout, /dev/fd/N). Nothing is renamed over it, so nothing replaces
    it; and nothing written can be taken back, which is why a decrypt only
    ever writes verified plaintext (the stream functions release nothing else)."""

    streamed = True

    def __init__(self, raw: BinaryIO, shown: str, owned: bool):
        self.file = _Sink(raw, shown)
        self.owned = owned  # stdout is the process's: flushed, never closed

    def commit(self) -> None:
        try:
            self.file.flush()
        finally:
            self.discard()

    def discard(self) -> None:
        if self.owned:
            self.owned = False
            with contextlib.suppress(OSError):
                self.file.raw.close()


_FD_PATH = re.compile(r"/dev/std(?P<std>out|err)|/dev/fd/(?P<fd>\d+)|/proc/(?P<pid>self|\d+)/fd/(?P<pfd>\d+)")


def _named_fd(path: str) -> int | None:
    """The descriptor that /dev/stdout, /dev/stderr, /dev/fd/N or /proc/self/fd/N
    names, if it is open in this process and the path leads to it. Written
    through directly: it is what the shell set up (a pipe from ``>(cmd)``, a
    file opened with ``>>``), which opening the path again would not always
    reach (a socket) or would reach differently (no append)."""
    m = _FD_PATH.fullmatch(path)
    if m is None or m["pid"] not in (None, "self", str(os.getpid())):
        return None
    fd = (1 if m["std"] == "out" else 2) if m["std"] else int(m["fd"] or m["pfd"])
    try:
        return fd if os.path.samestat(os.fstat(fd), os.stat(path)) else None
    except (OSError, ValueError, OverflowError):
        return None


def _open_device(path: str, follow: bool) -> BinaryIO:
    """An existing output that is not a regular file, opened for writing as it
    is: never created, truncated or replaced. A socket is connected to
    (AF_UNIX stream sockets only). ``follow``: the user named a link to it."""
    st = os.stat(path) if follow else os.lstat(path)
    if stat.S_ISSOCK(st.st_mode):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        fd = sock.detach()
    else:
        # No O_CREAT/O_TRUNC: if the path went away or became a file meanwhile,
        # nothing is created or truncated. A FIFO's open waits for its reader.
        fd = os.open(path, os.O_WRONLY | _O_NOCTTY | _O_CLOEXEC | (0 if follow else _O_NOFOLLOW))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
            raise UnsafePathError(f"{path} became a regular file or directory while it was opened; not written")
        return os.fdopen(fd, "wb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


# ---------------------------------------------------------------- jobs


@dataclass
class Job:
    src: str  # path as shown, or "-"
    dst: str  # path as shown, or "-"
    open_src: Callable[[], BinaryIO] | None = None  # None: stdin
    out_root: int | None = None  # directory fd the output's parts are under (a file renamed into place)
    out_parts: tuple[str, ...] = ()  # directories below out_root, then the file name
    # Otherwise a stream output: returns (file, whether kmsenv closes it when done).
    open_stream: Callable[[], tuple[BinaryIO, bool]] | None = None
    # Filled in by _run_job, for the error line: was the output a stream, and
    # how many bytes reached it.
    streamed: bool = False
    written: int = 0


def _output_name(name: str, encrypting: bool) -> str | None:
    if encrypting:
        return name + SUFFIX
    if name.endswith(SUFFIX) and len(name) > len(SUFFIX):
        return name[: -len(SUFFIX)]
    return None  # not ours: leave it alone


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class _Outcome:
    """The worst exit code so far, and the lines that explain it."""

    def __init__(self) -> None:
        self.worst = EXIT_OK

    def warn(self, text: str) -> None:
        _say(f"warning: {text}")

    def fail(self, text: str, code: int = EXIT_FAILED) -> None:
        _say(text)
        self.worst = max(self.worst, code)


def _open_regular(dir_fd: int, name: str, follow: bool, shown: str) -> BinaryIO:
    """An input file of a tree, opened relative to its directory's fd. Without
    ``follow``, O_NOFOLLOW: a file swapped for a link after the listing is refused.
    O_NONBLOCK so that a FIFO swapped in cannot hang the open; only a regular file
    is read."""
    flags = os.O_RDONLY | _O_CLOEXEC | _O_NONBLOCK | (0 if follow else _O_NOFOLLOW)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise UnsafePathError(f"{shown} became a symbolic link; not followed") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(f"{shown} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _TreeWalk:
    """The regular files of an input tree, as jobs writing into an output tree.

    Listing and opening go through directory fds, so a directory swapped for a
    link mid-walk is not followed either. With ``follow``, links are followed but
    a directory that is one of its own ancestors (a loop) or the output directory
    is refused."""

    def __init__(self, src: str, dst: str, out_root: int, encrypting: bool, follow: bool, outcome: _Outcome):
        self.src, self.dst, self.out_root = src, dst, out_root
        self.encrypting, self.follow, self.outcome = encrypting, follow, outcome
        st = os.fstat(out_root)
        self.out_id = (st.st_dev, st.st_ino)

    def jobs(self) -> Iterator[Job]:
        fd = _open_dir(self.src)
        try:
            st = os.fstat(fd)
            yield from self._walk(fd, self.src, (), frozenset({(st.st_dev, st.st_ino)}))
        finally:
            os.close(fd)

    def _walk(self, fd: int, shown: str, rel: tuple[str, ...], ancestors: frozenset[tuple[int, int]]) -> Iterator[Job]:
        try:
            with os.scandir(fd) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.outcome.fail(f"{shown}: cannot list the directory: {exc.strerror}")
            return
        for entry in entries:
            path = os.path.join(shown, entry.name)
            try:
                if entry.is_symlink() and not self.follow:
                    self.outcome.warn(f"skipping symbolic link {path} (pass --follow-symlinks to follow links)")
                elif entry.is_dir(follow_symlinks=self.follow):
                    yield from self._enter(fd, entry.name, path, rel, ancestors)
                elif entry.is_file(follow_symlinks=self.follow):
                    out_name = _output_name(entry.name, self.encrypting)
                    if out_name is not None:
                        yield self._job(fd, entry.name, path, rel + (out_name,))
                elif entry.is_symlink():
                    self.outcome.fail(f"{path}: broken symbolic link")
                else:
                    self.outcome.warn(f"skipping {path}: not a regular file or directory")
            except OSError as exc:
                self.outcome.fail(f"{path}: {exc.strerror or exc}")

    def _enter(
        self, fd: int, name: str, path: str, rel: tuple[str, ...], ancestors: frozenset[tuple[int, int]]
    ) -> Iterator[Job]:
        flags = _DIR_FLAGS | (0 if self.follow else _O_NOFOLLOW)
        try:
            sub = os.open(name, flags, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and not self.follow:
                self.outcome.fail(f"{path} became a symbolic link; not followed")
                return
            raise
        try:
            st = os.fstat(sub)
            ident = (st.st_dev, st.st_ino)
            if ident in ancestors:
                self.outcome.fail(f"{path}: symbolic link loop (it leads back to {os.path.realpath(path)}); skipped")
            elif ident == self.out_id:
                self.outcome.fail(f"{path}: leads into the output directory {self.dst}; skipped")
            else:
                yield from self._walk(sub, path, rel + (name,), ancestors | {ident})
        finally:
            os.close(sub)

    def _job(self, fd: int, name: str, path: str, parts: tuple[str, ...]) -> Job:
        # The job runs while this generator is suspended at its yield, so ``fd``
        # is still open when open_src is called.
        return Job(
            path,
            os.path.join(self.dst, *parts),
            open_src=lambda: _open_regular(fd, name, self.follow, path),
            out_root=self.out_root,
            out_parts=parts,
        )


def _jobs(args: argparse.Namespace, encrypting: bool, outcome: _Outcome) -> Iterator[Job]:
    src, dst = args.input, args.output
    if not args.recursive:
        yield from _single_job(src, dst)
        return
    if src == "-" or dst == "-" or not os.path.isdir(src):
        raise UsageError("-r needs a directory for -i and a directory path for -o")
    # Real paths: a link (or a path through one) to somewhere under the input is
    # still under the input.
    if _inside(os.path.realpath(dst), os.path.realpath(src)):
        raise UsageError(
            "with -r the output directory must not be inside the input directory (symbolic links resolved)"
        )
    try:
        os.makedirs(dst, exist_ok=True)  # -r creates the output tree, its parents included
        out_root = _open_dir(dst)
    except OSError as exc:
        raise OutputError(exc, dst, "create the output directory") from None
    try:
        yield from _TreeWalk(src, dst, out_root, encrypting, args.follow_symlinks, outcome).jobs()
    finally:
        os.close(out_root)


def _stdout() -> tuple[BinaryIO, bool]:
    return sys.stdout.buffer, False


def _single_job(src: str, dst: str) -> Iterator[Job]:
    """One file. Paths the user typed are followed (a link named as -i is read;
    -o may be reached through linked directories). How -o is written depends on
    what it is:

    * ``-``, /dev/stdout, /dev/stderr, /dev/fd/N: that descriptor, as a stream;
    * an existing device, FIFO or socket (or a link to one, /dev/null included):
      opened and written as a stream, never replaced;
    * a regular file, or nothing yet: a temporary file renamed over it at the
      end; its directory must exist (only -r creates directories);
    * a link to a regular file (or a broken link): refused, not replaced;
    * a directory: refused (``-r`` processes trees)."""
    if src != "-" and os.path.isdir(src):
        raise UsageError(f"{src} is a directory: add -r to process a tree")
    open_src = None if src == "-" else (lambda: open(src, "rb"))
    if dst == "-":
        yield Job(src, dst, open_src, open_stream=_stdout)
        return
    fd = _named_fd(dst)
    if fd is not None:
        yield Job(src, dst, open_src, open_stream=lambda: (os.fdopen(os.dup(fd), "wb", buffering=0), True))
        return
    try:
        lst: os.stat_result | None = os.lstat(dst)
    except FileNotFoundError:
        lst = None
    if lst is not None and not stat.S_ISREG(lst.st_mode):
        link = stat.S_ISLNK(lst.st_mode)
        st = _stat_or_none(dst) if link else lst
        if link and (st is None or stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise UsageError(f"{dst} is a symbolic link: kmsenv does not replace links (name its target, or remove it)")
        assert st is not None
        if stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{dst} is a directory: name a file in it, or add -r to process a tree")
        yield Job(src, dst, open_src, open_stream=lambda: (_open_device(dst, follow=link), True))
        return
    if src != "-" and lst is not None and os.path.samefile(src, dst):
        raise UsageError("input and output are the same file")
    target = os.path.abspath(dst)
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise UsageError(
            f"cannot write {dst}: the directory {os.path.dirname(dst)} does not exist "
            "(kmsenv creates directories only with -r)"
        )
    try:
        out_root = _open_dir(directory)
    except OSError as exc:
        raise OutputError(exc, dst, "write") from None
    try:
        yield Job(src, dst, open_src, out_root, (os.path.basename(target),))
    finally:
        os.close(out_root)


def _stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _open_output(job: Job, private: bool) -> _AtomicOutput | _StreamOutput:
    if job.open_stream is None:
        assert job.out_root is not None
        return _AtomicOutput(job.out_root, job.out_parts, job.dst, private)
    try:
        raw, owned = job.open_stream()
    except OSError as exc:
        raise OutputError(exc, job.dst, "open") from None
    return _StreamOutput(raw, job.dst, owned)


def _refuse_same_file(src: BinaryIO, out: _AtomicOutput | _StreamOutput, job: Job) -> None:
    """A stream output that is the input file (``-o /dev/stdout >> IN``): it would
    read what it writes. (A named -o is checked before; this catches descriptors.)"""
    if not out.streamed or out.file is None:
        return
    with contextlib.suppress(OSError, ValueError, AttributeError):
        a, b = os.fstat(src.fileno()), os.fstat(out.file.fileno())
        if stat.S_ISREG(a.st_mode) and os.path.samestat(a, b):
            raise UsageError(f"input and output are the same file ({job.dst} is {job.src})")


def _run_job(
    job: Job, action: Callable[[Any, Any, Callable[[int], None]], Any], encrypting: bool, label: str | None = None
) -> Any:
    """Run ``action(src, out, progress)`` for one job; ``encrypting``: the
    output is not private (umask mode) and an error calls it a message.
    ``label`` names stdin on the progress bar."""
    label = label or ("encrypting" if encrypting else "decrypting")
    src = sys.stdin.buffer if job.open_src is None else job.open_src()
    out = None
    try:
        total = None if job.open_src is None else os.fstat(src.fileno()).st_size
        progress = Progress(label if job.open_src is None else job.src, total)
        try:
            out = _open_output(job, private=not encrypting)
            job.streamed = out.streamed
            _refuse_same_file(src, out, job)
            result = action(src, out.file, progress)
            out.commit()
            return result
        finally:
            progress.finish()
    finally:
        if out is not None:
            job.written = out.file.written if out.file is not None else 0
            out.discard()
        if src is not sys.stdin.buffer:
            src.close()


@dataclass(frozen=True)
class _SecretResult:
    """What a --secret encrypt or decrypt of one file did (the body-only stream
    layout names no CMK or context: they are in the secret)."""

    secret: str
    bytes_out: int
    format: str = "secret-manager-stream"


def _metadata(job: Job, result: Any, error: BaseException | None) -> dict[str, Any]:
    record: dict[str, Any] = {"input": job.src, "output": job.dst, "status": "ok" if error is None else "error"}
    if isinstance(result, _SecretResult):
        record.update(format=result.format, secret=result.secret, bytes_out=result.bytes_out)
    elif result is not None:
        header = result.header
        record.update(
            format=result.format,
            algorithm=header.algorithm.name,
            cmk_arns=[e.key_arn for e in header.encrypted_data_keys],
            encryption_context=dict(header.encryption_context),
            bytes_in=result.bytes_in,
            bytes_out=result.bytes_out,
        )
    if error is not None:
        record["error"] = f"{type(error).__name__}: {error}"
    return record


def _each(args: argparse.Namespace, encrypting: bool, action: Callable[..., Any]) -> int:
    meta = open(args.metadata_output, "a", encoding="utf-8") if args.metadata_output else None
    outcome = _Outcome()
    try:
        with _cleanup_on_signals(), _escaped_log_warnings():
            for job in _jobs(args, encrypting, outcome):
                result, error = None, None
                try:
                    result = _run_job(job, action, encrypting)
                except Exception as exc:
                    if _is_broken_pipe(exc):
                        raise _BrokenPipe() from None
                    error = exc
                    stop = args.recursive and _stops_the_tree(exc)
                    line = _job_line(job, exc, encrypting, getattr(args, "endpoints", None))
                    _say(line + ("; stopping here: every other file would fail the same way" if stop else ""))
                    outcome.worst = max(outcome.worst, _exit_code(exc))
                    if not args.recursive or stop:
                        return outcome.worst
                finally:
                    if meta is not None:
                        meta.write(_json_text(_metadata(job, result, error)) + "\n")
                        meta.flush()
    finally:
        if meta is not None:
            meta.close()
    return outcome.worst


# ---------------------------------------------------------------- errors


def _exit_code(exc: BaseException) -> int:
    from . import exceptions as E

    if isinstance(exc, UsageError | E.ConfigurationError | E.UnsupportedAlgorithmError):
        return EXIT_USAGE
    if isinstance(exc, E.KmsError | E.NoUsableKeyError):
        return EXIT_KMS
    if isinstance(
        exc,
        E.AuthenticationError
        | E.MessageFormatError
        | E.EncryptionContextMismatchError
        | E.UnauthenticatedAlgorithmError,
    ):
        return EXIT_AUTH
    return EXIT_FAILED


def _is_broken_pipe(exc: BaseException) -> bool:
    return isinstance(exc, BrokenPipeError | _BrokenPipe) or (isinstance(exc, OutputError) and exc.errno == errno.EPIPE)


def _stops_the_tree(exc: BaseException) -> bool:
    """An error every later file of a tree would repeat: the output cannot be
    written (permissions, a read-only or full file system), or there are no
    credentials."""
    from .kms import NoCredentialsError

    return isinstance(exc, NoCredentialsError) or (isinstance(exc, OutputError) and exc.errno in _TREE_FATAL_ERRNOS)


_CREDENTIALS_VARS = "ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET"
# Secrets Manager's code for a secret (or version) that does not exist.
_SECRET_NOT_FOUND = "Forbidden.ResourceNotFound"
_CREDENTIAL_CODES = frozenset(
    {
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId.NotFound",
        "InvalidAccessKeyId.Inactive",
        "InvalidAccessKeyId",
        "IncompleteSignature",
    }
)
# Kms's codes for a request that never got a KMS answer (kmsenv.kms._translate).
_CONNECTION_CODES = frozenset(
    {"ConnectionError", "ConnectTimeout", "ReadTimeout", "SSLError", "ProxyError", "InvalidResponse"}
)
_BUSY_CODES = frozenset({"Rejected.Throttling", "Throttling", "ServiceUnavailableTemporary", "InternalFailure"})


def _credentials_text(exc: Any) -> str:
    """The CLI's one line for missing credentials: what to set, in its terms (the
    library's text speaks of kmsenv.Kms arguments)."""
    if getattr(exc, "missing", None):
        return f"{exc.missing} is not set: set both {_CREDENTIALS_VARS}"
    return (
        f"no Alibaba Cloud credentials: set {_CREDENTIALS_VARS} (and ALIBABA_CLOUD_SECURITY_TOKEN for STS), "
        "or ALIBABA_CLOUD_PROFILE to use a profile of ~/.aliyun/config.json, or run on ECS with a RAM role"
    )


def _kms_hint(err: Any, endpoints: dict[str, str] | None) -> str:
    """What to do about one KMS failure ('' when KMS's own text says it all)."""
    code = getattr(err, "code", None)
    region = getattr(err, "region", None)
    if code in _CREDENTIAL_CODES:
        return f"KMS rejected the credentials: check {_CREDENTIALS_VARS.replace(' and ', ' / ')}"
    if code == "Forbidden.KeyNotFound":
        return "the key does not exist in that region: check the ARN"
    if code == "Forbidden.KeyVersionNotFound":
        return "the key has no such version: check --key-version-id"
    if code == "Rejected.UnsupportedOperation":
        return (
            "the key's type or usage does not allow this: sign and verify need an asymmetric SIGN/VERIFY key, "
            "encrypt and decrypt a symmetric ENCRYPT/DECRYPT CMK"
        )
    if code in _CONNECTION_CODES:
        if region and endpoints is not None and region not in endpoints:
            # The library's text names the default URL; say how to set another.
            return f"to use another endpoint for {region}: --endpoint {region}=URL or KMSENV_KMS_ENDPOINTS"
        return "check the KMS endpoint (--endpoint REGION=URL or KMSENV_KMS_ENDPOINTS) and that it is reachable"
    if code in _BUSY_CODES or getattr(err, "retryable", False):
        return "KMS is busy or throttling: try again later"
    if isinstance(code, str) and code.startswith("Rejected."):
        return "the key's state does not allow it: is it disabled or pending deletion?"
    if isinstance(code, str) and code.startswith("Forbidden"):
        return "KMS refused: check that these credentials may use the key (RAM policy)"
    return ""


def _explain(exc: BaseException, endpoints: dict[str, str] | None = None) -> str:
    """One line: what went wrong and what to do. Nothing here claims anything
    about an output: see :func:`_job_line`."""
    from . import exceptions as E
    from .kms import NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return _credentials_text(exc)
    if isinstance(exc, OutputError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename is not None else exc.strerror
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    hint = ""
    if isinstance(exc, E.NoUsableKeyError):
        hints = {_kms_hint(e, endpoints) for _, e in exc.errors}
        if not exc.errors:
            hint = "check -k names a CMK in the message (kmsenv inspect shows them)"
        elif len(hints) == 1:
            hint = hints.pop()
        else:
            hint = "each CMK failed differently: see the lines above"
    elif isinstance(exc, E.KmsError) and getattr(exc, "code", None) == _SECRET_NOT_FOUND:
        hint = "check --secret NAME: it is read in the first -k's region"
    elif isinstance(exc, E.KmsError):
        hint = _kms_hint(exc, endpoints)
    elif _is_secret_header_mismatch(exc):
        # Its text ends with advice for the Python API (algorithm=, rotate()).
        text = text.rsplit(" (", 1)[0] if text.endswith(")") else text
        hint = "the secret's header fixes the algorithm and the context: leave -a out and give the -c it was made with"
    elif isinstance(exc, E.AuthenticationError | E.MessageFormatError):
        hint = "the input is damaged, truncated or not a kmsenv/Alibaba message"
    elif isinstance(exc, E.EncryptionContextMismatchError):
        hint = "the message was encrypted under another context (kmsenv inspect shows it)"
    elif isinstance(exc, E.UnauthenticatedAlgorithmError):
        text = text.replace("pass allow_unauthenticated=True", "pass --allow-unauthenticated")
        hint = "legacy CBC/CTR messages need --allow-unauthenticated"
    return f"{text} ({hint})" if hint else text


def _is_secret_header_mismatch(exc: BaseException) -> bool:
    from .secretmanager import SecretHeaderMismatchError

    return isinstance(exc, SecretHeaderMismatchError)


def _job_line(job: Job, exc: BaseException, encrypting: bool, endpoints: dict[str, str] | None) -> str:
    """The error line for one file: its input, what went wrong, and what became
    of its output. A file output was never touched (its temporary file is gone);
    a stream output keeps what was written before the error: nothing but
    verified plaintext (decrypt) or the start of a message that will not
    decrypt (encrypt)."""
    text = _explain(exc, endpoints)
    if isinstance(exc, OSError) and not isinstance(exc, OutputError) and exc.filename == job.src:
        text = exc.strerror or text  # "IN: IN: No such file or directory" otherwise
    if job.streamed and job.written:
        what = "an incomplete message" if encrypting else "verified plaintext only"
        text += f"; {job.written} bytes had been written to {_shown(job.dst, 'stdout')} ({what})"
    elif not isinstance(exc, UsageError):
        text += "; nothing was written"
    return f"{_shown(job.src, 'stdin')}: {text}"


def _shown(path: str, dash: str) -> str:
    return dash if path == "-" else path


# ---------------------------------------------------------------- commands


def _encrypt(args: argparse.Namespace) -> int:
    from .providers import KmsKeyProvider
    from .stream import encrypt_stream

    if not args.key:  # argparse requires -k; main() may be given a hand-made Namespace
        raise UsageError("encrypt needs at least one -k ARN (the first is the primary CMK)")
    if getattr(args, "secret", None) is not None:
        return _encrypt_secret(args)
    if getattr(args, "create_secret", False):
        raise UsageError("--create-secret goes with --secret NAME")
    context = _pairs(args.context, "-c")
    provider = KmsKeyProvider(
        *args.key, kms=_kms(args), data_key_source=args.data_key_source or "kms", **_replicas(args)
    )
    algorithm = _algorithm(args.algorithm)
    fmt = getattr(args, "format", None) or "framed"

    def action(src: Any, dst: Any, progress: Callable[[int], None]) -> Any:
        return encrypt_stream(
            src,
            dst,
            provider,
            encryption_context=context,
            algorithm=algorithm,
            format=fmt,
            progress=progress,
        )

    return _each(args, True, action)


def _decrypt(args: argparse.Namespace) -> int:
    from .providers import KmsKeyProvider
    from .stream import decrypt_stream

    if getattr(args, "secret", None) is not None:
        return _decrypt_secret(args)
    if args.discovery and args.key:
        raise UsageError("use either -k ARN ... or --discovery, not both")
    if not args.discovery and not args.key:
        raise UsageError("decrypt needs -k ARN (a CMK in the message) or --discovery")
    kms = _kms(args)
    if args.discovery and getattr(args, "replica_region", None):
        raise UsageError("--replica-region goes with -k ARN (the CMKs whose replicas to try), not --discovery")
    provider = (
        KmsKeyProvider.discovery(kms=kms) if args.discovery else KmsKeyProvider(*args.key, kms=kms, **_replicas(args))
    )
    context = _pairs(args.context, "-c")

    def action(src: Any, dst: Any, progress: Callable[[int], None]) -> Any:
        return decrypt_stream(
            src,
            dst,
            provider,
            expected_encryption_context=context or None,
            allow_unauthenticated=args.allow_unauthenticated,
            progress=progress,
        )

    return _each(args, False, action)


def _secret_provider(args: argparse.Namespace) -> Any:
    """The Secrets-Manager provider of --secret NAME: the data key's header is in
    that secret (read in the first -k's region, failing over to the others),
    its EDKs under the -k CMKs."""
    from .providers import KmsKeyProvider
    from .secretmanager import SecretManagerDataKeyProvider

    name = args.secret
    if not name or name != name.strip():
        raise UsageError("--secret needs a secret name without surrounding blanks")
    source = getattr(args, "data_key_source", None) or "kms"
    return SecretManagerDataKeyProvider(KmsKeyProvider(*args.key, kms=_kms(args), data_key_source=source), name)


def _encrypt_secret(args: argparse.Namespace) -> int:
    """encrypt --secret: body-only messages in the Secrets-Manager stream layout
    (u32 LE IV length || IV || ciphertext || tag), as the official SDKs'
    SecretManagerDataKeyProvider writes them. A missing secret is created only
    with --create-secret: a mistyped name would otherwise make a new data key
    that no reader looks for."""
    from .secretmanager import SecretNotFoundError, encrypt_stream

    if getattr(args, "format", None) is not None:
        raise UsageError(
            "--format does not apply to --secret: a Secrets-Manager message has one layout (the stream layout "
            "of the official SDKs; the header is in the secret)"
        )
    context = _pairs(args.context, "-c")
    algorithm = _algorithm(args.algorithm)
    provider = _secret_provider(args)
    if not args.create_secret:
        try:
            with _escaped_log_warnings():
                provider.secrets.get_secret_value(args.secret)
        except SecretNotFoundError as exc:
            raise SecretNotFoundError(
                f"secret {args.secret!r} does not exist; pass --create-secret to create it",
                code=exc.code,
                region=exc.region,
                request_id=exc.request_id,
            ) from None

    def action(src: Any, dst: Any, progress: Callable[[int], None]) -> Any:
        written = encrypt_stream(src, dst, provider, encryption_context=context, algorithm=algorithm)
        return _SecretResult(args.secret, written)

    return _each(args, True, action)


def _decrypt_secret(args: argparse.Namespace) -> int:
    """decrypt --secret: only the tag-verified plaintext is written (the stream
    is verified in a first pass); a message under an older secret version is
    found by trying the versions (the input must be a file for that)."""
    from .secretmanager import decrypt_stream

    if args.discovery or not args.key:
        raise UsageError("decrypt --secret needs -k ARN (the CMKs the secret's data key is encrypted under)")
    if args.context:
        raise UsageError(
            "decrypt --secret does not take -c: the context is in the secret, and the message is decrypted with it"
        )
    provider = _secret_provider(args)

    def action(src: Any, dst: Any, progress: Callable[[int], None]) -> Any:
        written = decrypt_stream(src, dst, provider, allow_unauthenticated=args.allow_unauthenticated)
        return _SecretResult(args.secret, written)

    return _each(args, False, action)


def _inspect(args: argparse.Namespace) -> int:
    from .inspect import inspect_stream

    src = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")
    try:
        fmt, header = inspect_stream(src)
        size = None if args.file == "-" else os.fstat(src.fileno()).st_size
    finally:
        if src is not sys.stdin.buffer:
            src.close()
    record: dict[str, Any] = {
        "format": fmt,
        "algorithm": header.algorithm.name,
        "algorithm_id": int(header.algorithm),
        "version": header.version,
        "cmk_arns": [e.key_arn for e in header.encrypted_data_keys],
        "encrypted_data_key_sizes": [len(e.ciphertext_blob) for e in header.encrypted_data_keys],
        "encryption_context": dict(header.encryption_context),
        "header_bytes": len(header.encoded),
        "file_bytes": size,
        "authenticated": False,
    }
    if hasattr(header, "frame_size"):
        record["frame_size"] = header.frame_size
    # Everything here comes from an unauthenticated header: escaped for the terminal.
    print(_json_text(record, indent=2, ensure_ascii=False))
    sys.stdout.flush()  # a closed pipe (| head -1) shows here, not at interpreter exit
    return EXIT_OK


def _info(args: argparse.Namespace) -> int:
    import kmsenv

    print(json.dumps({"kmsenv": kmsenv.__version__, **kmsenv.backend_info()}, indent=2))
    sys.stdout.flush()
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(sys.stdout, instances=getattr(args, "instances", False))


_EXIT_CODES = (
    "exit codes: 0 ok; 1 other failure (I/O, a refused path in a tree); 2 usage or configuration (bad "
    "arguments, no credentials, an -o kmsenv will not write); 3 KMS unreachable, throttled or refusing, or no "
    "usable CMK; 4 the message failed authentication, is malformed or has another encryption context, or "
    "(verify) the signature does not verify; "
    "130 Ctrl-C (SIGINT), 143 SIGTERM, 129 SIGHUP (temporary files removed); 141 the reader of the output "
    "went away (SIGPIPE, as for other Unix tools)."
)
_ENVIRONMENT = (
    "environment: ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET (+ ALIBABA_CLOUD_SECURITY_TOKEN) "
    "or the default credential chain (ALIBABA_CLOUD_PROFILE, ECS RAM role); KMSENV_KMS_ENDPOINTS="
    "region=url,... sets endpoints (--endpoint REGION=URL overrides it per region; other regions use "
    "https://kms.REGION.aliyuncs.com); KMSENV_KMS_INSTANCES=FILE names KMS 3.0 instance gateways (--instances)."
)
_OUTPUT_NOTE = (
    "OUT, a regular file or a new one: written to a hidden temporary file and renamed into place only when "
    "complete (encrypt) or verified (decrypt); its directory must exist. OUT that exists and is not a regular "
    "file (/dev/null, a FIFO, a socket, /dev/stdout, /dev/fd/N) or -: written as a stream, never replaced; a "
    "decrypt writes verified plaintext only, but what was written before an error stays. A symbolic link to a "
    "regular file is refused."
)


_SECRET_NOTE = (
    "--secret NAME: the data key's header (its EDKs under the -k CMKs, the algorithm and the context) is kept in "
    "the KMS Secrets Manager secret NAME, in the first -k's region (copied to the other -k regions, read from "
    "them when the first is down), and each OUT is only the body: u32 little-endian IV length, IV, ciphertext, "
    "GCM tag, the layout the official SDKs' SecretManagerDataKeyProvider writes and reads. encrypt --secret "
    "creates a missing secret only with --create-secret; an existing secret fixes the algorithm and the context "
    "(-a and -c must match it, or leave -a out). decrypt --secret writes only plaintext whose tag verified, and "
    "tries older versions of the secret (after a rotation) when IN is a file."
)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (argparse prints the whole usage
    block first) that says where the options are listed."""

    def error(self, message: str) -> NoReturn:
        _say(f"{self.prog.removeprefix('kmsenv').strip() or 'usage'}: {message} (see {self.prog} --help)")
        sys.exit(EXIT_USAGE)


class _Paragraphs(argparse.HelpFormatter):
    """Descriptions and epilogs wrapped paragraph by paragraph (argparse joins
    them into one)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(super(_Paragraphs, self)._fill_text(part, width, indent) for part in text.split("\n\n"))


def _add_io(p: argparse.ArgumentParser, encrypting: bool) -> None:
    p.add_argument("-i", "--input", required=True, metavar="IN", help="input file, directory (-r) or - for stdin")
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="output file, directory (-r) or - for stdout (see below)"
    )
    p.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="process a directory tree, mirrored into OUT (created, with its parents, if missing)",
    )
    if encrypting:
        p.add_argument(
            "-c",
            "--context",
            action="append",
            metavar="KEY=VALUE",
            help="an encryption context entry, bound to the message (repeatable)",
        )
    else:
        p.add_argument(
            "-c",
            "--context",
            action="append",
            metavar="KEY=VALUE",
            help="check that the message's encryption context has this entry (repeatable; entries not "
            "named are not checked); a missing or different value fails with exit 4, nothing written",
        )
    p.add_argument(
        "--endpoint",
        action="append",
        metavar="REGION=URL",
        help="KMS endpoint for a region (repeatable); merged over KMSENV_KMS_ENDPOINTS, this wins for its region",
    )
    p.add_argument(
        "--ca",
        action="append",
        metavar="REGION=FILE",
        help="the CA certificate for a region's --endpoint (repeatable): a KMS instance's private CA when "
        "--endpoint REGION=https://kst-....cryptoservice.kms.aliyuncs.com reaches it with RAM credentials",
    )
    p.add_argument(
        "--instances",
        metavar="FILE",
        help="KMS 3.0 instance gateways: a JSON file {REGION: {endpoint, client_key_file, password_file, "
        "ca_file}} (instead of KMSENV_KMS_INSTANCES); those regions' data-key calls go to the instance",
    )
    p.add_argument(
        "--replica-region",
        action="append",
        metavar="REGION",
        help="a region where each -k CMK also exists with the same key ID (a KMS instance's replica; "
        "repeatable, in failover order): encrypt falls back to it, decrypt tries it after the CMK's region",
    )
    p.add_argument("--metadata-output", metavar="FILE", help="append one JSON line per file to FILE")
    p.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="with -r, follow symbolic links in the input tree (default: skip them with a warning)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kmsenv",
        formatter_class=_Paragraphs,
        description="Multi-region envelope encryption for Alibaba Cloud KMS: a file encrypted under CMKs in "
        "several regions decrypts through any one of them.",
        epilog=f"{_ENVIRONMENT}\n\n{_EXIT_CODES}\n\nkmsenv COMMAND --help describes a command; docs/cli.md has "
        "the details.",
    )
    parser.add_argument("--version", action="version", version=f"kmsenv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    enc = sub.add_parser(
        "encrypt",
        formatter_class=_Paragraphs,
        help="encrypt files under one or more CMKs",
        description="Encrypt IN under every CMK given with -k (one encrypted data key per CMK; any one of them "
        "decrypts it). The first -k is the primary: it makes the data key.",
        epilog=f"{_OUTPUT_NOTE}\n\n{_SECRET_NOTE}\n\n{_ENVIRONMENT}\n\n{_EXIT_CODES}",
    )
    enc.add_argument(
        "-k",
        "--key",
        action="append",
        metavar="ARN",
        required=True,
        help="CMK ARN, acs:kms:REGION:ACCOUNT:key/ID (required; repeatable; the first is the primary)",
    )
    enc.add_argument(
        "--format",
        choices=["framed", "alibaba", "alibaba-stream"],
        help="framed (default; bounded memory), alibaba (one DER message, interop), "
        "alibaba-stream (the Java SDK's stream layout); not with --secret",
    )
    enc.add_argument(
        "-a", "--algorithm", metavar="ALG", help="e.g. AES_GCM_NOPADDING_256 (default), SM4_GCM_NOPADDING_128"
    )
    enc.add_argument(
        "--data-key-source",
        choices=["kms", "local"],
        help="kms (default): GenerateDataKey in the first -k's region, then Encrypt in the others; local: the "
        "data key from this machine's CSPRNG, then Encrypt under every -k at once (one round trip for any "
        "number of regions; the EDKs are what KMS Encrypt returns, readable by every reader)",
    )
    enc.add_argument(
        "--secret",
        metavar="NAME",
        help="keep the data key's header in the KMS Secrets Manager secret NAME and write body-only messages "
        "(the official SDKs' SecretManagerDataKeyProvider stream layout; see below)",
    )
    enc.add_argument(
        "--create-secret",
        action="store_true",
        help="with --secret: create the secret (a new data key under the -k CMKs) if it does not exist; "
        "without it a missing secret is an error",
    )
    _add_io(enc, encrypting=True)
    enc.set_defaults(func=_encrypt)

    dec = sub.add_parser(
        "decrypt",
        formatter_class=_Paragraphs,
        help="decrypt files (any kmsenv or Alibaba format)",
        description="Decrypt IN (framed, alibaba or alibaba-stream, told apart from its first bytes) through one of "
        "its CMKs: those given with -k, tried in order, or with --discovery any CMK the message names. Only "
        "verified plaintext is ever written.",
        epilog=f"{_OUTPUT_NOTE}\n\n{_SECRET_NOTE}\n\n{_ENVIRONMENT}\n\n{_EXIT_CODES}",
    )
    keys = dec.add_mutually_exclusive_group(required=True)
    keys.add_argument("-k", "--key", action="append", metavar="ARN", help="CMK ARN to try (repeatable, in order)")
    keys.add_argument("--discovery", action="store_true", help="use any CMK the message names")
    dec.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="accept legacy CBC/CTR messages, whose body nothing authenticates",
    )
    dec.add_argument(
        "--secret",
        metavar="NAME",
        help="IN is a body-only message whose data key's header is in the Secrets Manager secret NAME "
        "(encrypt --secret; needs -k, not -c; see below)",
    )
    _add_io(dec, encrypting=False)
    dec.set_defaults(func=_decrypt)

    from ._cli_sign import add_commands as add_sign_commands

    add_sign_commands(sub, _Paragraphs, _ENVIRONMENT)

    ins = sub.add_parser(
        "inspect",
        formatter_class=_Paragraphs,
        help="print a message's header as JSON (no KMS call, nothing verified)",
        description="Print the header of a message (format, algorithm, CMK ARNs, encryption context) as JSON. "
        "No KMS call is made and nothing is verified: the header may have been altered. Control characters "
        "are printed as \\uXXXX escapes.",
    )
    ins.add_argument("file", metavar="FILE", help="the message, or - for stdin")
    ins.set_defaults(func=_inspect)

    demo = sub.add_parser(
        "demo",
        formatter_class=_Paragraphs,
        help="run the multi-region demo on an embedded local KMS",
        description="Start a local KMS with two regions, encrypt under a CMK in each, decrypt through each alone, "
        "take one region down and decrypt again, tamper with the message. Needs no credentials or network.",
    )
    demo.add_argument(
        "--instances",
        action="store_true",
        help="the KMS 3.0 instance demo instead: one CMK in a primary instance with a replica region "
        "against one CMK per region, then the primary down and decrypt from the replica",
    )
    demo.set_defaults(func=_demo)
    info = sub.add_parser(
        "info",
        formatter_class=_Paragraphs,
        help="show the active crypto backend, OpenSSL and CPU features",
        description="Print kmsenv's version, crypto backend, OpenSSL and CPU features as JSON.",
    )
    info.set_defaults(func=_info)
    kms = sub.add_parser(
        "kms",
        formatter_class=_Paragraphs,
        help="the local KMS server for development and tests",
        description="A local KMS (the KMS 2016-01-20 API on loopback ports) for development and "
        "tests: never for real keys.",
    )
    kms_sub = kms.add_subparsers(dest="kms_command", metavar="KMS_COMMAND")
    from .localkms.cli import add_subcommands

    add_subcommands(kms_sub)
    kms.set_defaults(func=lambda a: _missing(kms))
    return parser


def _missing(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _die_of_sigpipe() -> NoReturn:
    """End as a Unix tool ends when its reader goes away: silently, killed by
    SIGPIPE (the shell shows 141). Python ignores SIGPIPE and raises
    BrokenPipeError instead; anything it would still flush to the closed pipe at
    exit would print a traceback-like complaint, so the process does not exit
    normally. Temporary files are already gone: the error unwound through them."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGPIPE)
    os._exit(EXIT_BROKEN_PIPE)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        return _missing(parser)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _say("interrupted; no partial output was left")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if _is_broken_pipe(exc):
            _die_of_sigpipe()
        _say(_explain(exc, getattr(args, "endpoints", None)))
        return _exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
