"""The ``kmsenv`` command: ``demo``, ``info`` and ``kms serve|create-key``.

(Encrypt/decrypt of files from the shell arrives with the streaming work.)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_FAILED = 1


def _info(args: argparse.Namespace) -> int:
    import kmsenv

    print(json.dumps({"kmsenv": kmsenv.__version__, **kmsenv.backend_info()}, indent=2))
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kmsenv",
        description="Multi-region envelope encryption for Alibaba Cloud KMS.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
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
        return 130


if __name__ == "__main__":
    sys.exit(main())
