"""``serve`` and ``create-key`` subcommands (wired into ``kmsenv`` by the main CLI).

Each subcommand sets ``func``: call ``args.func(args)`` and exit with its return value.
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
import threading
from typing import Any, Callable, Optional, Sequence

from ..exceptions import ConfigurationError
from .keystore import KEY_SPECS
from .server import LocalKms

DEFAULT_REGION = "cn-hangzhou"


def add_subcommands(subparsers: Any) -> None:
    """Add ``serve`` and ``create-key`` to an ``argparse`` subparsers object."""
    serve = subparsers.add_parser(
        "serve", help="run a local KMS server (one loopback port per region)",
        description="Serve the KMS 2016-01-20 API on one loopback port per region until "
                    "SIGINT/SIGTERM. Prints the endpoints and the access key pair once.")
    serve.add_argument("--region", action="append", dest="regions", metavar="R",
                       help="region to serve (repeatable; default: the regions found in "
                            f"--state, else {DEFAULT_REGION})")
    serve.add_argument("--state", metavar="DIR",
                       help="persist keys, aliases, credentials and ports in DIR "
                            "(key material is stored in clear; created 0700, and refused "
                            "if another user owns it or can write it); default: in memory")
    serve.add_argument("--port", type=int, metavar="N",
                       help="port of the first region, the next regions get N+1, N+2, ... "
                            "(0 = ephemeral; default: the ports remembered in --state, "
                            "else ephemeral)")
    serve.set_defaults(func=serve_command)

    create = subparsers.add_parser(
        "create-key", help="create a key in a local KMS state directory and print its ARN")
    create.add_argument("--region", required=True, metavar="R")
    create.add_argument("--state", required=True, metavar="DIR",
                        help="state directory (created 0700; see serve --state)")
    create.add_argument("--spec", default="Aliyun_AES_256", choices=sorted(KEY_SPECS))
    create.add_argument("--description", default="")
    create.set_defaults(func=create_key_command)


def _regions(args: argparse.Namespace) -> list[str]:
    if args.regions:
        return args.regions
    if args.state:
        from .keystore import KeyStore
        store = KeyStore(args.state)
        try:
            found = store.regions()
        finally:
            store.close()
        if found:
            return found
    return [DEFAULT_REGION]


def _refusing_unsafe_state(command: Callable[[argparse.Namespace], int]
                           ) -> Callable[[argparse.Namespace], int]:
    """Report an unsafe or unusable --state as one line on stderr and exit status 2,
    the same under ``kmsenv kms ...`` and ``python -m kmsenv.localkms ...``."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ConfigurationError as exc:
            print(f"localkms: {exc}", file=sys.stderr)
            return 2

    return run


@_refusing_unsafe_state
def serve_command(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        kms = LocalKms(regions=_regions(args), state_dir=args.state, port=args.port)
        try:
            kms.start()
        except OSError as exc:
            kms.stop()
            print(f"localkms: cannot listen: {exc}", file=sys.stderr)
            return 1
        try:
            endpoints = kms.endpoints
            width = max(len(r) for r in endpoints)
            out = sys.stdout
            out.write(f"localkms serving {len(endpoints)} region(s), "
                      f"account {kms.account_uid}:\n")
            for region, url in endpoints.items():
                out.write(f"  {region:<{width}}  {url}\n")
            out.write("state: " + (f"{args.state} (key material stored in clear)"
                                   if args.state else "in memory (lost on exit)") + "\n")
            out.write("# credentials for clients; paste into a shell:\n")
            joined = ",".join(f"{r}={u}" for r, u in endpoints.items())
            out.write(f"export KMSENV_KMS_ENDPOINTS={joined}\n")
            out.write(f"export ALIBABA_CLOUD_ACCESS_KEY_ID={kms.access_key_id}\n")
            # The one place the secret is shown: printing it is this command's purpose.
            out.write(f"export ALIBABA_CLOUD_ACCESS_KEY_SECRET={kms.access_key_secret}\n")
            out.write("Press Ctrl+C to stop.\n")
            out.flush()
            while not stop.wait(0.5):  # timed wait keeps signal delivery prompt
                pass
        finally:
            kms.stop()
        print("localkms stopped.", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@_refusing_unsafe_state
def create_key_command(args: argparse.Namespace) -> int:
    kms = LocalKms(regions=[args.region], state_dir=args.state)
    try:
        print(kms.create_key(args.region, args.spec, args.description), flush=True)
    finally:
        kms.stop()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kmsenv.localkms",
                                     description="Local Alibaba Cloud KMS server.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    args = parser.parse_args(argv)
    return args.func(args)
