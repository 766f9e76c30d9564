"""The ``kmsenv`` command.

    kmsenv encrypt -k ARN [-k ARN ...] [-c KEY=VALUE ...] [--format F] [-a ALG] -i IN -o OUT [-r]
    kmsenv decrypt [-k ARN ... | --discovery] [-c KEY=VALUE ...] -i IN -o OUT [-r]
    kmsenv inspect FILE
    kmsenv demo | info | kms serve | kms create-key

Output is written to a temporary file beside the target and renamed into place
only when the whole message has been written (encrypt) or verified (decrypt),
so a failed or interrupted run never leaves a partial file, never replaces a
good one and never touches its input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterator, Sequence

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
        self.label, self.total, self.stream = label, total, stream
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


@dataclass
class Job:
    src: str  # path or "-"
    dst: str  # path or "-"


def _jobs(args: argparse.Namespace, encrypting: bool) -> Iterator[Job]:
    src, dst = args.input, args.output
    if not args.recursive:
        if src != "-" and os.path.isdir(src):
            raise UsageError(f"{src} is a directory: add -r to process a tree")
        if src != "-" and dst != "-" and os.path.exists(dst) and os.path.samefile(src, dst):
            raise UsageError("input and output are the same file")
        yield Job(src, dst)
        return
    if src == "-" or dst == "-" or not os.path.isdir(src):
        raise UsageError("-r needs a directory for -i and a directory path for -o")
    src_abs, dst_abs = os.path.abspath(src), os.path.abspath(dst)
    if dst_abs == src_abs or dst_abs.startswith(src_abs + os.sep):
        raise UsageError("with -r the output directory must not be inside the input directory")
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), src)
            if encrypting:
                out_rel = rel + SUFFIX
            elif rel.endswith(SUFFIX):
                out_rel = rel[: -len(SUFFIX)]
            else:
                continue  # not ours: leave it alone
            yield Job(os.path.join(root, name), os.path.join(dst, out_rel))


class _AtomicOutput:
    """A temp file beside the target, renamed over it only on commit()."""

    def __init__(self, path: str, private: bool):
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        # mkstemp makes the file 0600: kept for decrypted plaintext; ciphertext
        # gets the usual umask-based mode.
        fd, self.tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=directory)
        if not private:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        self.file = os.fdopen(fd, "wb")

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        try:
            self.file.close()
        finally:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass


def _run_job(job: Job, action: Callable[[Any, Any, Callable[[int], None]], Any], encrypting: bool) -> Any:
    label = "encrypting" if encrypting else "decrypting"
    src = sys.stdin.buffer if job.src == "-" else open(job.src, "rb")
    total = None if job.src == "-" else os.fstat(src.fileno()).st_size
    progress = Progress(label if job.src == "-" else job.src, total)
    out = None
    try:
        if job.dst == "-":
            result = action(src, sys.stdout.buffer, progress)
            sys.stdout.buffer.flush()
        else:
            out = _AtomicOutput(job.dst, private=not encrypting)
            result = action(src, out.file, progress)
            out.commit()
            out = None
        return result
    finally:
        progress.finish()
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
    worst = EXIT_OK
    try:
        for job in _jobs(args, encrypting):
            result, error = None, None
            try:
                result = _run_job(job, action, encrypting)
            except Exception as exc:
                error = exc
                code = _exit_code(exc)
                print(f"kmsenv: {job.src}: {_explain(exc)}", file=sys.stderr)
                worst = max(worst, code)
                if not args.recursive:
                    return code
            finally:
                if meta is not None:
                    meta.write(json.dumps(_metadata(job, result, error)) + "\n")
                    meta.flush()
    finally:
        if meta is not None:
            meta.close()
    return worst


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
    print(json.dumps(record, indent=2, ensure_ascii=False))
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
        print("kmsenv: interrupted; no partial output was left", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        print(f"kmsenv: {_explain(exc)}", file=sys.stderr)
        return _exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
