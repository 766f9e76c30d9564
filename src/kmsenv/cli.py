"""The ``kmsenv`` command.

    kmsenv encrypt -k ARN [-k ARN ...] [-c KEY=VALUE ...] [--format F] [-a ALG] -i IN -o OUT [-r]
    kmsenv decrypt [-k ARN ... | --discovery] [-c KEY=VALUE ...] -i IN -o OUT [-r]
    kmsenv inspect FILE
    kmsenv demo | info | kms serve | kms create-key

Output is written to a temporary file beside the target and renamed into place
only when the whole message has been written (encrypt) or verified (decrypt),
so a failed or interrupted run never leaves a partial file, never replaces a
good one and never touches its input. SIGTERM, SIGINT and SIGHUP remove the
temporary file before the process exits with 128 + the signal number.

Symbolic links: paths named on the command line are followed (except that an
output path which is itself a link is refused, never replaced); inside a tree
(-r) links are skipped with a warning unless --follow-symlinks, and nothing is
ever written through a link in the output tree. Text taken from a message (ARNs,
context, errors quoting them) is printed with control characters escaped.
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
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

from . import _process

EXIT_OK = 0
EXIT_FAILED = 1  # anything not covered below (I/O errors, ...)
EXIT_USAGE = 2  # bad arguments or configuration
EXIT_KMS = 3  # KMS unreachable, throttled, denied; no usable key
EXIT_AUTH = 4  # the message failed authentication or is malformed
EXIT_INTERRUPTED = 130

SUFFIX = ".kmsenv"
PROGRESS_MIN_BYTES = 4 * 1024 * 1024


class UsageError(Exception):
    """A mistake in the command line; reported with exit code 2."""


class UnsafePathError(Exception):
    """A path the CLI will not read or write through (a symbolic link, a loop, a
    file that is not regular); reported for that file with exit code 1."""


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


def _say(text: str) -> None:
    """One line on stderr, escaped (paths and message text can carry controls)."""
    print(f"kmsenv: {escape(text)}", file=sys.stderr)


class _EscapingFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))


@contextlib.contextmanager
def _escaped_log_warnings() -> Iterator[None]:
    """The library's warnings (a CMK that failed, before the next is tried) as
    Python's last-resort handler would print them, but escaped: they quote ARNs
    and KMS error texts. An application that configured logging keeps its own."""
    logger = logging.getLogger("kmsenv")
    if logger.hasHandlers():
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(_EscapingFormatter("%(message)s"))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


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


def _kms(args: argparse.Namespace) -> Any:
    from .kms import Kms

    endpoints = _pairs(args.endpoint, "--endpoint")
    return Kms(endpoints=endpoints) if endpoints else Kms()


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
    inputs large enough to be worth watching."""

    def __init__(self, label: str, total: int | None, stream: IO[str] = sys.stderr):
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
        self.stream.write(f"\r{self.label[-40:]:40s} [{bar:30s}] {frac * 100:5.1f}% {rate:8.1f} MB/s")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


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
_O_DIRECTORY, _O_NOFOLLOW, _O_CLOEXEC, _O_NONBLOCK = (
    getattr(os, n, 0) for n in ("O_DIRECTORY", "O_NOFOLLOW", "O_CLOEXEC", "O_NONBLOCK")
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
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o777, dir_fd=fd)
            try:
                sub = os.open(name, _DIR_FLAGS | _O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(fd, name):
                    raise UnsafePathError(
                        f"refusing to write {shown}: {name} in its directory path is a symbolic link"
                    ) from None
                raise
            os.close(fd)
            fd = sub
        return fd
    except BaseException:
        os.close(fd)
        raise


def _refuse_link(dir_fd: int, name: str, shown: str) -> None:
    # os.replace would replace the link itself (its target untouched), but a
    # link at the output path is not ours to remove either.
    if _is_link(dir_fd, name):
        raise UnsafePathError(f"refusing to replace {shown}: it is a symbolic link (remove it or name its target)")


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
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600,
                             dir_fd=dir_fd)
            except FileExistsError:
                _TEMPS.discard((dir_fd, tmp))
                continue
            except BaseException:
                _TEMPS.discard((dir_fd, tmp))
                raise
        return fd, tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", name)


class _AtomicOutput:
    """A temp file beside the target, renamed over it only on commit().

    ``parts`` are the directories below ``root_fd`` (created as needed, never
    through a link) and the file name."""

    def __init__(self, root_fd: int, parts: Sequence[str], shown: str, private: bool):
        self.shown, self.name = shown, parts[-1]
        self.tmp: str | None = None
        self.file: BinaryIO | None = None
        self.dir_fd = _output_dir(root_fd, parts[:-1], shown)
        try:
            _refuse_link(self.dir_fd, self.name, shown)  # before any work is done for it
            fd, self.tmp = _create_temp(self.dir_fd, self.name)
            # The file is 0600: kept for decrypted plaintext; ciphertext gets the
            # usual umask-based mode.
            if not private:
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(fd, 0o666 & ~umask)
            self.file = os.fdopen(fd, "wb")
        except BaseException:
            self.discard()
            raise

    def commit(self) -> None:
        assert self.file is not None and self.tmp is not None
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        _refuse_link(self.dir_fd, self.name, self.shown)  # planted while we worked
        os.replace(self.tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        _TEMPS.discard((self.dir_fd, self.tmp))
        self.tmp = None
        self.discard()

    def discard(self) -> None:
        try:
            if self.file is not None:
                self.file.close()
        finally:
            if self.tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.tmp, dir_fd=self.dir_fd)
                _TEMPS.discard((self.dir_fd, self.tmp))
                self.tmp = None
            if self.dir_fd >= 0:
                os.close(self.dir_fd)
                self.dir_fd = -1


# ---------------------------------------------------------------- jobs


@dataclass
class Job:
    src: str  # path as shown, or "-"
    dst: str  # path as shown, or "-"
    open_src: Callable[[], BinaryIO] | None = None  # None: stdin
    out_root: int | None = None  # directory fd the output's parts are under; None: stdout
    out_parts: tuple[str, ...] = ()  # directories below out_root, then the file name


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

    def _enter(self, fd: int, name: str, path: str, rel: tuple[str, ...],
               ancestors: frozenset[tuple[int, int]]) -> Iterator[Job]:
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
            path, os.path.join(self.dst, *parts),
            open_src=lambda: _open_regular(fd, name, self.follow, path),
            out_root=self.out_root, out_parts=parts,
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
        raise UsageError("with -r the output directory must not be inside the input directory "
                         "(symbolic links resolved)")
    os.makedirs(dst, exist_ok=True)
    out_root = _open_dir(dst)
    try:
        yield from _TreeWalk(src, dst, out_root, encrypting, args.follow_symlinks, outcome).jobs()
    finally:
        os.close(out_root)


def _single_job(src: str, dst: str) -> Iterator[Job]:
    """One file. Paths the user typed are followed (a link named as -i is read;
    -o may be reached through linked directories), but an -o that is itself a
    symbolic link is refused rather than replaced."""
    if src != "-" and os.path.isdir(src):
        raise UsageError(f"{src} is a directory: add -r to process a tree")
    if src != "-" and dst != "-" and os.path.exists(dst) and os.path.samefile(src, dst):
        raise UsageError("input and output are the same file")
    open_src = None if src == "-" else (lambda: open(src, "rb"))
    if dst == "-":
        yield Job(src, dst, open_src)
        return
    if os.path.islink(dst):
        raise UsageError(f"{dst} is a symbolic link: kmsenv does not replace links (remove it or name its target)")
    target = os.path.abspath(dst)
    directory = os.path.dirname(target)
    os.makedirs(directory, exist_ok=True)
    out_root = _open_dir(directory)
    try:
        yield Job(src, dst, open_src, out_root, (os.path.basename(target),))
    finally:
        os.close(out_root)


def _run_job(job: Job, action: Callable[[Any, Any, Callable[[int], None]], Any], encrypting: bool) -> Any:
    label = "encrypting" if encrypting else "decrypting"
    src = sys.stdin.buffer if job.open_src is None else job.open_src()
    out = None
    try:
        total = None if job.open_src is None else os.fstat(src.fileno()).st_size
        progress = Progress(label if job.open_src is None else job.src, total)
        try:
            if job.out_root is None:
                result = action(src, sys.stdout.buffer, progress)
                sys.stdout.buffer.flush()
            else:
                out = _AtomicOutput(job.out_root, job.out_parts, job.dst, private=not encrypting)
                result = action(src, out.file, progress)
                out.commit()
                out = None
            return result
        finally:
            progress.finish()
    finally:
        if out is not None:
            out.discard()
        if src is not sys.stdin.buffer:
            src.close()


def _metadata(job: Job, result: Any, error: BaseException | None) -> dict[str, Any]:
    record: dict[str, Any] = {"input": job.src, "output": job.dst, "status": "ok" if error is None else "error"}
    if result is not None:
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
                    error = exc
                    code = _exit_code(exc)
                    _say(f"{job.src}: {_explain(exc)}")
                    outcome.worst = max(outcome.worst, code)
                    if not args.recursive:
                        return code
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


def _explain(exc: BaseException) -> str:
    """One line: what went wrong and what to do."""
    from . import exceptions as E

    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    credential_codes = ("SignatureDoesNotMatch", "InvalidAccessKeyId.NotFound", "IncompleteSignature")
    causes = [e for _, e in getattr(exc, "errors", [])]
    if causes and all(getattr(e, "code", None) in credential_codes for e in causes):
        hint = "KMS rejected the credentials: check ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET"
    elif isinstance(exc, E.NoUsableKeyError):
        hint = "check -k names a CMK in the message (kmsenv inspect shows them) and that KMS is reachable"
    elif isinstance(exc, E.KmsError) and exc.code in credential_codes:
        hint = "check ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET"
    elif isinstance(exc, E.KmsError):
        hint = "check the KMS endpoint (--endpoint REGION=URL or KMSENV_KMS_ENDPOINTS) and try again"
    elif isinstance(exc, E.AuthenticationError | E.MessageFormatError):
        hint = "the input is damaged, truncated or not a kmsenv/Alibaba message; nothing was written"
    elif isinstance(exc, E.EncryptionContextMismatchError):
        hint = "the message was encrypted under another context (kmsenv inspect shows it)"
    elif isinstance(exc, E.UnauthenticatedAlgorithmError):
        hint = "legacy CBC/CTR messages need --allow-unauthenticated"
    elif isinstance(exc, UnsafePathError):
        hint = "nothing was written for it"
    elif isinstance(exc, OSError):
        hint = "check the path and permissions"
    else:
        return text
    return f"{text} ({hint})"


# ---------------------------------------------------------------- commands


def _encrypt(args: argparse.Namespace) -> int:
    from .providers import KmsKeyProvider
    from .stream import encrypt_stream

    if not args.key:
        raise UsageError("encrypt needs at least one -k ARN (the first is the primary CMK)")
    context = _pairs(args.context, "-c")
    provider = KmsKeyProvider(*args.key, kms=_kms(args))
    algorithm = _algorithm(args.algorithm)

    def action(src: Any, dst: Any, progress: Callable[[int], None]) -> Any:
        return encrypt_stream(
            src, dst, provider, encryption_context=context, algorithm=algorithm,
            format=args.format, progress=progress,
        )

    return _each(args, True, action)


def _decrypt(args: argparse.Namespace) -> int:
    from .providers import KmsKeyProvider
    from .stream import decrypt_stream

    if args.discovery and args.key:
        raise UsageError("use either -k ARN ... or --discovery, not both")
    if not args.discovery and not args.key:
        raise UsageError("decrypt needs -k ARN (a CMK in the message) or --discovery")
    kms = _kms(args)
    provider = KmsKeyProvider.discovery(kms=kms) if args.discovery else KmsKeyProvider(*args.key, kms=kms)
    context = _pairs(args.context, "-c")

    def action(src: Any, dst: Any, progress: Callable[[int], None]) -> Any:
        return decrypt_stream(
            src, dst, provider, expected_encryption_context=context or None,
            allow_unauthenticated=args.allow_unauthenticated, progress=progress,
        )

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
    return EXIT_OK


def _info(args: argparse.Namespace) -> int:
    import kmsenv

    print(json.dumps({"kmsenv": kmsenv.__version__, **kmsenv.backend_info()}, indent=2))
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(sys.stdout)


def _add_io(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", required=True, metavar="IN", help="input file, directory (-r) or - for stdin")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file, directory (-r) or - for stdout")
    p.add_argument("-r", "--recursive", action="store_true", help="process a directory tree (mirrored into OUT)")
    p.add_argument("-c", "--context", action="append", metavar="KEY=VALUE", help="encryption context entry (repeatable)")
    p.add_argument("--endpoint", action="append", metavar="REGION=URL", help="KMS endpoint for a region (repeatable)")
    p.add_argument("--metadata-output", metavar="FILE", help="append one JSON line per file to FILE")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="with -r, follow symbolic links in the input tree (default: skip them with a warning)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kmsenv",
        description="Multi-region envelope encryption for Alibaba Cloud KMS.",
        epilog="Credentials: ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET (or the default "
        "credential chain). Endpoints: --endpoint or KMSENV_KMS_ENDPOINTS=region=url,...  Exit codes: "
        "0 ok, 1 other failure, 2 usage, 3 KMS / no usable key, 4 authentication or format.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    enc = sub.add_parser("encrypt", help="encrypt files under one or more CMKs")
    enc.add_argument("-k", "--key", action="append", metavar="ARN", help="CMK ARN (repeatable; the first is primary)")
    enc.add_argument("--format", default="framed", choices=["framed", "alibaba", "alibaba-stream"],
                     help="framed (default; bounded memory), alibaba (one DER message, interop), "
                     "alibaba-stream (the Java SDK's stream layout)")
    enc.add_argument("-a", "--algorithm", metavar="ALG", help="e.g. AES_GCM_NOPADDING_256 (default), SM4_GCM_NOPADDING_128")
    _add_io(enc)
    enc.set_defaults(func=_encrypt)

    dec = sub.add_parser("decrypt", help="decrypt files (any kmsenv or Alibaba format)")
    dec.add_argument("-k", "--key", action="append", metavar="ARN", help="CMK ARN to try (repeatable, in order)")
    dec.add_argument("--discovery", action="store_true", help="use any CMK the message names")
    dec.add_argument("--allow-unauthenticated", action="store_true",
                     help="accept legacy CBC/CTR messages, whose body nothing authenticates")
    _add_io(dec)
    dec.set_defaults(func=_decrypt)

    ins = sub.add_parser("inspect", help="print a message's header as JSON (no KMS call, nothing verified)")
    ins.add_argument("file", metavar="FILE")
    ins.set_defaults(func=_inspect)

    demo = sub.add_parser("demo", help="run the multi-region demo on an embedded local KMS")
    demo.set_defaults(func=_demo)
    info = sub.add_parser("info", help="show the active crypto backend, OpenSSL and CPU features")
    info.set_defaults(func=_info)
    kms = sub.add_parser("kms", help="the local KMS server for development and tests")
    kms_sub = kms.add_subparsers(dest="kms_command", metavar="KMS_COMMAND")
    from .localkms.cli import add_subcommands

    add_subcommands(kms_sub)
    kms.set_defaults(func=lambda a: _missing(kms))
    return parser


def _missing(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


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
        _say(_explain(exc))
        return _exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
