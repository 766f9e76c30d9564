"""``kmsenv sign`` and ``kmsenv verify``: KMS asymmetric signatures from the command line.

    kmsenv sign -k ARN [-k ARN ...] [--algorithm ALG] [--key-version-id ID] [--digest] [--base64] [-o OUT] [IN]
    kmsenv verify (--signature FILE [--base64] | --signature-base64 TEXT)
                  (--public-key PEM | -k ARN [-k ARN ...] [--key-version-id ID] [--kms-verify])
                  [--algorithm ALG] [--digest] [IN]

``sign`` goes through :class:`kmsenv.signing.KmsSigner` (failing over between
keys in several regions) and writes the signature with the output rules of
``encrypt`` (a temporary file renamed into place, a stream for stdout and
devices). ``verify`` checks locally with a PEM public key or certificate, with
public keys fetched from KMS, or by AsymmetricVerify. Exit codes are the
command's (cli.py): 0 verified, 4 a signature that does not verify, 2 usage,
3 KMS, 1 I/O.

Both read the input in 1 MiB chunks: for a SHA-256 algorithm the digest is
computed as the data streams by (bounded memory); SM2DSA needs the whole
message (its digest SM3(Z || M) depends on the key), which is then held in
memory; ``--digest`` takes the 32-byte digest itself instead.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from . import cli as _cli
from .cli import EXIT_AUTH, EXIT_KMS, EXIT_OK, UsageError, _say

CHUNK = 1024 * 1024
DIGEST_LEN = 32
# A signature is at most a few hundred bytes (RSA-3072: 384; base64: 512); a
# PEM key or certificate a few KiB. Anything far bigger is the wrong file.
MAX_SIGNATURE_FILE = 64 * 1024
MAX_PEM_FILE = 1024 * 1024
_B64_SPACE = b" \t\r\n"


# ---------------------------------------------------------------- arguments


def _signature_algorithm(name: str | None) -> Any:
    """A SignatureAlgorithm from its KMS name (any case, '-' for '_'), or None."""
    from .signing import SignatureAlgorithm

    if name is None:
        return None
    try:
        return SignatureAlgorithm(name.upper().replace("-", "_"))
    except ValueError:
        choices = ", ".join(a.value for a in SignatureAlgorithm)
        raise UsageError(f"unknown signature algorithm {name!r}; choose one of {choices}") from None


def _key_versions(values: Sequence[str] | None, arns: Sequence[str]) -> dict[str, str]:
    """--key-version-id: ``ID`` with one -k, else ``ARN=ID`` per key (an ARN or
    a version ID never contains '=')."""
    from .arn import Arn

    out: dict[str, str] = {}
    for value in values or ():
        arn_text, sep, version = value.rpartition("=")
        if not sep:
            if len(arns) != 1:
                raise UsageError("with several -k, give --key-version-id ARN=ID for each key it pins")
            arn_text, version = arns[0], value
        if not version or any(c.isspace() for c in version):
            raise UsageError(f"--key-version-id {value!r}: a version ID is a non-empty word")
        try:
            arn = str(Arn.parse(arn_text))
        except Exception:
            raise UsageError(f"--key-version-id {value!r}: {arn_text!r} is not a key ARN") from None
        if arn not in {str(Arn.parse(a)) for a in arns}:
            raise UsageError(f"--key-version-id names {arn}, which is not one of the -k keys")
        if arn in out:
            raise UsageError(f"--key-version-id names {arn} twice")
        out[arn] = version
    return out


def _input_path(args: argparse.Namespace) -> str:
    """IN as a positional argument or -i (as encrypt takes it); default stdin."""
    if args.input is not None and args.input_opt is not None:
        raise UsageError("give the input once: as IN or with -i, not both")
    path: str = args.input_opt or args.input or "-"
    if path != "-" and os.path.isdir(path):
        raise UsageError(f"{path} is a directory: sign and verify take one file (or - for stdin)")
    return path


def _read_small(path: str, limit: int, what: str) -> bytes:
    """A whole file of at most ``limit`` bytes (``-``: stdin)."""
    if path == "-":
        data = sys.stdin.buffer.read(limit + 1)
    else:
        if os.path.isdir(path):
            raise UsageError(f"{what} {path} is a directory")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    if len(data) > limit:
        raise UsageError(f"{what} {_cli._shown(path, 'stdin')} is over {limit} bytes: not a {what}")
    return data


def _strict_base64(text: bytes, what: str) -> bytes:
    """Standard base64 (line breaks and surrounding blanks allowed: `base64`
    wraps at 76 columns); anything else is refused, never skipped."""
    compact = text.translate(None, _B64_SPACE)
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{what} is not base64") from None
    if not raw:
        raise UsageError(f"{what} is empty")
    return raw


# ---------------------------------------------------------------- the message


@dataclass
class _Message:
    """What was read of IN: its SHA-256, and the bytes when they were kept."""

    sha256: bytes
    data: bytes | None


def _read_message(src: BinaryIO, keep: bool) -> _Message:
    h = hashlib.sha256()
    kept = bytearray() if keep else None
    while True:
        chunk = src.read(CHUNK)
        if not chunk:
            break
        h.update(chunk)
        if kept is not None:
            kept += chunk
    return _Message(h.digest(), None if kept is None else bytes(kept))


def _read_digest(src: BinaryIO) -> bytes:
    data = src.read(DIGEST_LEN + 1)
    if len(data) != DIGEST_LEN:
        raise UsageError(
            f"with --digest the input is the {DIGEST_LEN}-byte digest that is signed (SHA-256 of the message, "
            "or SM3(Z || M) for SM2DSA), raw bytes; "
            + ("it is longer" if len(data) > DIGEST_LEN else f"it has {len(data)} bytes")
        )
    return bytes(data)


def _open_input(path: str) -> BinaryIO:
    return sys.stdin.buffer if path == "-" else open(path, "rb")


# ---------------------------------------------------------------- sign


def _sign(args: argparse.Namespace) -> int:
    from .signing import KmsSigner, SignatureAlgorithm

    if not args.key:
        raise UsageError("sign needs at least one -k ARN (a SIGN/VERIFY key; more keys are tried in order)")
    src_path = _input_path(args)
    algorithm = _signature_algorithm(args.algorithm)
    versions = _key_versions(args.key_version_id, args.key)
    signer = KmsSigner(*args.key, kms=_cli._kms(args), key_version_id=versions or None, algorithm=algorithm)
    # A SHA-256 algorithm named up front: hash as the input streams by and have
    # KMS sign the digest (the same signature as over the message). SM2's digest
    # depends on the key's public key, and with no --algorithm the key decides.
    streamed = algorithm is not None and algorithm is not SignatureAlgorithm.SM2DSA

    def action(src: Any, dst: Any, progress: Callable[[int], None]) -> Any:
        if args.digest:
            result = signer.sign(_read_digest(src), digest=True)
        elif streamed:
            result = signer.sign(_read_message(src, keep=False).sha256, digest=True)
        else:
            message = _read_message(src, keep=True)
            assert message.data is not None
            result = signer.sign(message.data)
        signature = result.signature
        dst.write(base64.b64encode(signature) + b"\n" if args.base64 else signature)
        return result

    result, code = _run_to_output(args, src_path, args.output, action)
    if result is None:
        return code
    _say(f"signed with {result.key_arn} version {result.key_version_id} ({result.algorithm.value})")
    return EXIT_OK


def _run_to_output(args: argparse.Namespace, src: str, dst: str, action: Callable[..., Any]) -> tuple[Any, int]:
    """Run ``action`` on one input with encrypt's output rules: (its result,
    0), or (None, exit code) after the error line was printed."""
    with _cli._cleanup_on_signals(), _cli._escaped_log_warnings():
        for job in _cli._single_job(src, dst):
            try:
                return _cli._run_job(job, action, True, label="signing"), EXIT_OK
            except Exception as exc:
                if _cli._is_broken_pipe(exc):
                    raise _cli._BrokenPipe() from None
                _say(_cli._job_line(job, exc, True, getattr(args, "endpoints", None)))
                return None, _cli._exit_code(exc)
    raise AssertionError("one input is one job")  # pragma: no cover


# ---------------------------------------------------------------- verify


@dataclass
class _Candidate:
    """One public key the signature is checked under."""

    what: str  # for the messages: "public key FILE" or "ARN version V"
    algorithm: Any  # SignatureAlgorithm
    check: Callable[[bytes, bool], bool]  # (payload, digest) -> verified


def _signature(args: argparse.Namespace, input_path: str) -> bytes:
    if args.signature_base64 is not None:
        return _strict_base64(args.signature_base64.encode("ascii", "replace"), "--signature-base64")
    if args.signature == "-" and input_path == "-":
        raise UsageError("the signature and the input cannot both come from stdin")
    raw = _read_small(args.signature, MAX_SIGNATURE_FILE, "signature")
    if args.base64:
        return _strict_base64(raw, f"signature {_cli._shown(args.signature, 'stdin')}")
    if not raw:
        raise UsageError(f"signature {_cli._shown(args.signature, 'stdin')} is empty")
    return raw


def _local_candidates(args: argparse.Namespace, algorithm: Any, signature: bytes) -> list[_Candidate]:
    from . import signing
    from .crypto.signature import load_public_key

    pem = _read_small(args.public_key, MAX_PEM_FILE, "public key")
    key = load_public_key(pem)  # a malformed key: ConfigurationError, exit 2
    alg = algorithm or signing.default_algorithm(key.key_spec)

    def check(payload: bytes, digest: bool) -> bool:
        return signing.verify(pem, alg, payload, signature, digest=digest)

    return [_Candidate(f"public key {args.public_key}", alg, check)]


def _newest_first(kms: Any, arn: str) -> list[str]:
    versions = kms.list_key_versions(arn)
    ordered = sorted(enumerate(versions), key=lambda iv: (iv[1].creation_date or "", iv[0]), reverse=True)
    return [str(v.key_version_id) for _, v in ordered]


def _kms_candidates(
    args: argparse.Namespace, algorithm: Any, signature: bytes, errors: list[tuple[str, BaseException]]
) -> list[_Candidate]:
    """Each version of each -k key (or the pinned ones), newest first; a key
    whose region cannot be reached is left out and recorded in ``errors``."""
    from .arn import Arn
    from .exceptions import KmsError
    from .signing import KmsVerifier, default_algorithm

    kms = _cli._kms(args)
    verifier = KmsVerifier(*args.key, kms=kms)
    pinned = _key_versions(args.key_version_id, args.key)
    out: list[_Candidate] = []
    for arn in (str(Arn.parse(a)) for a in args.key):
        try:
            versions = [pinned[arn]] if arn in pinned else _newest_first(kms, arn)
            for version in versions:
                alg = algorithm or default_algorithm(verifier.public_key(arn, version).key_spec)
                check = _kms_check(verifier, arn, version, alg, signature, bool(args.kms_verify))
                out.append(_Candidate(f"{arn} version {version}", alg, check))
        except KmsError as exc:
            errors.append((arn, exc))
    return out


def _kms_check(
    verifier: Any, arn: str, version: str, alg: Any, signature: bytes, use_kms: bool
) -> Callable[[bytes, bool], bool]:
    def check(payload: bytes, digest: bool) -> bool:
        return bool(verifier.verify_signature(arn, version, alg, payload, signature, digest=digest, use_kms=use_kms))

    return check


def _verify(args: argparse.Namespace) -> int:
    from .signing import SignatureAlgorithm

    input_path = _input_path(args)
    if args.public_key is not None:
        if args.key or args.key_version_id or args.kms_verify:
            raise UsageError("--public-key verifies locally: leave out -k, --key-version-id and --kms-verify")
        if args.public_key == "-" and input_path == "-":
            raise UsageError("the public key and the input cannot both come from stdin")
    elif not args.key:
        raise UsageError("verify needs --public-key PEM (local, no KMS) or -k ARN (the key that signed)")
    algorithm = _signature_algorithm(args.algorithm)
    signature = _signature(args, input_path)
    errors: list[tuple[str, BaseException]] = []
    with _cli._escaped_log_warnings():
        if args.public_key is not None:
            candidates = _local_candidates(args, algorithm, signature)
        else:
            candidates = _kms_candidates(args, algorithm, signature, errors)
        src = _open_input(input_path)
        try:
            if args.digest:
                digest = _read_digest(src)
                message = _Message(digest, None)
            else:
                needs_message = any(c.algorithm is SignatureAlgorithm.SM2DSA for c in candidates)
                message = _read_message(src, keep=needs_message)
        finally:
            if src is not sys.stdin.buffer:
                src.close()
        for candidate in candidates:
            if args.digest:
                ok = candidate.check(message.sha256, True)
            elif candidate.algorithm is SignatureAlgorithm.SM2DSA:
                assert message.data is not None
                ok = candidate.check(message.data, False)
            else:
                ok = candidate.check(message.sha256, True)
            if ok:
                how = "by AsymmetricVerify" if args.kms_verify else "locally"
                _say(f"signature verified {how}: {candidate.algorithm.value} with {candidate.what}")
                return EXIT_OK
    return _not_verified(args, candidates, errors)


def _not_verified(
    args: argparse.Namespace, candidates: list[_Candidate], errors: list[tuple[str, BaseException]]
) -> int:
    tried = ", ".join(f"{c.what} ({c.algorithm.value})" for c in candidates)
    if errors:
        # Not verified under the keys that answered; the others may have signed.
        failed = "; ".join(_cli._explain(exc, getattr(args, "endpoints", None)) for _, exc in errors)
        if candidates:
            _say(
                f"the signature does not verify under {tried}, and could not be checked under the other keys: {failed}"
            )
        else:
            _say(f"could not check the signature: {failed}")
        return EXIT_KMS
    hint = "the data or the signature was altered, or another key, version or algorithm signed it"
    if args.algorithm is None and any(c.algorithm.value == "RSA_PSS_SHA_256" for c in candidates):
        hint += " (RSA keys default to RSA_PSS_SHA_256: add --algorithm RSA_PKCS1_SHA_256 for PKCS#1 v1.5)"
    _say(f"signature does not verify: tried {tried}; {hint}")
    return EXIT_AUTH


# ---------------------------------------------------------------- the parsers

_SIGN_ALGORITHMS = "RSA_PSS_SHA_256, RSA_PKCS1_SHA_256, ECDSA_SHA_256, SM2DSA"
_DIGEST_HELP = (
    "IN is the 32-byte digest that is signed, raw (SHA-256 of the message; for SM2DSA SM3(Z || M), which "
    "depends on the key), not the message"
)


def _add_input(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", metavar="IN", help="the data: a file, or - (the default) for stdin")
    p.add_argument("-i", "--input", dest="input_opt", metavar="IN", help="the same as IN (as encrypt takes it)")


def _add_kms_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint",
        action="append",
        metavar="REGION=URL",
        help="KMS endpoint for a region (repeatable); merged over KMSENV_KMS_ENDPOINTS, this wins for its region",
    )


def add_commands(sub: Any, formatter: type[argparse.HelpFormatter], environment: str) -> None:
    """Add ``sign`` and ``verify`` to the command's subparsers."""
    sign = sub.add_parser(
        "sign",
        formatter_class=formatter,
        help="sign a file with a KMS asymmetric key",
        description="Sign IN (a file, or stdin) with a KMS asymmetric key (KeyUsage SIGN/VERIFY). The digest is "
        "computed here (SHA-256, or SM3(Z || M) for SM2DSA) and KMS signs it (AsymmetricSign). With several -k "
        "(keys in several regions) the first is used and the next ones take over when it fails; the line on "
        "stderr says which key, version and algorithm signed: keep them with the signature, a key in another "
        "region is another key pair.",
        epilog="The signature is written raw (RSA: modulus-length bytes; ECDSA and SM2: DER) or, with --base64, "
        "as one line of standard base64. OUT, a regular file or a new one: written to a hidden temporary file "
        "and renamed into place when complete, never through a symbolic link, never over IN; - (the default) "
        "or a device, FIFO or socket: written as a stream.\n\n"
        "Memory: with --algorithm other than SM2DSA the input is hashed as it streams by; otherwise (SM2, or "
        "the algorithm taken from the key) the whole input is held in memory.\n\n"
        f"{environment}\n\n"
        "exit codes: 0 signed; 1 I/O; 2 usage (bad arguments, no credentials); 3 KMS (unreachable, refusing, "
        "no key could sign); 130/143/129 interrupted (no partial output left).",
    )
    sign.add_argument(
        "-k",
        "--key",
        action="append",
        metavar="ARN",
        required=True,
        help="key ARN, acs:kms:REGION:ACCOUNT:key/ID (required; repeatable: tried in order)",
    )
    sign.add_argument(
        "-a",
        "--algorithm",
        metavar="ALG",
        help=f"{_SIGN_ALGORITHMS} (default from the key: RSA_PSS_SHA_256 for RSA, ECDSA_SHA_256 for EC_P256 and "
        "EC_P256K, SM2DSA for EC_SM2)",
    )
    sign.add_argument(
        "--key-version-id",
        action="append",
        metavar="ID",
        help="the key version to sign with (default: the key's newest); with several -k, ARN=ID (repeatable)",
    )
    sign.add_argument("--digest", action="store_true", help=_DIGEST_HELP)
    sign.add_argument("--base64", action="store_true", help="write the signature as base64 text (one line)")
    sign.add_argument("-o", "--output", default="-", metavar="OUT", help="where the signature goes (default: stdout)")
    _add_input(sign)
    _add_kms_options(sign)
    sign.set_defaults(func=_sign)

    verify = sub.add_parser(
        "verify",
        formatter_class=formatter,
        help="verify a signature (locally, or through KMS)",
        description="Verify a signature of IN (a file, or stdin). With --public-key the check is local and makes "
        "no KMS call (a PEM public key as GetPublicKey returns it, or a PEM X.509 certificate: only its key is "
        "used, the certificate itself is not checked). With -k the public keys are fetched from KMS "
        "(GetPublicKey, every version of each key newest first unless --key-version-id pins one) and the check "
        "is local, or done by KMS with --kms-verify (AsymmetricVerify). It passes when any of those keys "
        "verifies the signature; stderr names it.",
        epilog="The signature: --signature FILE holds the raw bytes (what `kmsenv sign` writes), or base64 text "
        "with --base64 (what `kmsenv sign --base64` writes; line breaks allowed); --signature-base64 TEXT gives "
        "the base64 on the command line. Raw and base64 are never guessed: say which.\n\n"
        "The algorithm defaults from the key (RSA_PSS_SHA_256 for RSA: a PKCS#1 v1.5 signature needs "
        "--algorithm RSA_PKCS1_SHA_256). Verification is strict where KMS is: RSA-PSS salt 32 bytes, DER "
        "ECDSA/SM2 signatures, SM2 with the ID 1234567812345678.\n\n"
        f"{environment}\n\n"
        "exit codes: 0 the signature verifies; 4 it does not (altered data or signature, another key, version "
        "or algorithm); 2 usage (bad arguments, a malformed public key or signature encoding, a key that "
        "cannot use the algorithm); 3 KMS (unreachable or refusing: the signature could not be checked under "
        "every key); 1 I/O.",
    )
    which = verify.add_mutually_exclusive_group(required=True)
    which.add_argument("--signature", metavar="FILE", help="file holding the signature (raw bytes unless --base64)")
    which.add_argument("--signature-base64", metavar="TEXT", help="the signature as base64 text")
    verify.add_argument("--base64", action="store_true", help="the --signature FILE holds base64 text")
    verify.add_argument("--public-key", metavar="PEM", help="verify locally with this PEM public key or certificate")
    verify.add_argument(
        "-k",
        "--key",
        action="append",
        metavar="ARN",
        help="a KMS key that may have signed (repeatable): its public keys come from KMS",
    )
    verify.add_argument(
        "--key-version-id",
        action="append",
        metavar="ID",
        help="with -k: only this version (with several -k, ARN=ID; repeatable)",
    )
    verify.add_argument(
        "--kms-verify", action="store_true", help="with -k: let KMS decide (AsymmetricVerify) instead of checking here"
    )
    verify.add_argument("-a", "--algorithm", metavar="ALG", help=f"{_SIGN_ALGORITHMS} (default from the key)")
    verify.add_argument("--digest", action="store_true", help=_DIGEST_HELP)
    _add_input(verify)
    _add_kms_options(verify)
    verify.set_defaults(func=_verify)
