"""``serve``, ``create-key`` and ``fault`` subcommands (wired into ``kmsenv`` by the main CLI).

Each subcommand sets ``func``: call ``args.func(args)`` and exit with its return value.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, TextIO

from ..exceptions import ConfigurationError
from . import admin
from .asymmetric import ASYMMETRIC_SPECS, usages
from .errors import SERVER_ERRORS
from .keystore import DB_FILENAME, KEY_SPECS

if TYPE_CHECKING:  # loaded by the commands that serve (see kmsenv.localkms)
    from .instance import InstanceGateway, InstanceSpec
    from .server import LocalKms

DEFAULT_REGION = "cn-hangzhou"
INSTANCES_FILENAME = "instances.json"
_REPLICA_OF = "replica-of="
# Symmetric specs first (sorted, as before), then the asymmetric ones in KMS's order.
_SPEC_CHOICES = (*sorted(KEY_SPECS), *ASYMMETRIC_SPECS)
_USAGES = ("SIGN/VERIFY", "ENCRYPT/DECRYPT")


def add_subcommands(subparsers: Any) -> None:
    """Add ``serve`` and ``create-key`` to an ``argparse`` subparsers object."""
    serve = subparsers.add_parser(
        "serve",
        help="run a local KMS server (one loopback port per region)",
        description="Serve the KMS 2016-01-20 API on one loopback port per region until "
        "SIGINT/SIGTERM. Prints the endpoints and the access key pair once "
        "(with --instance also each instance gateway's endpoint, CA file and ClientKey files, "
        "and the KMSENV_KMS_INSTANCES file).",
    )
    serve.add_argument(
        "--region",
        action="append",
        dest="regions",
        metavar="R",
        help=f"region to serve (repeatable; default: the regions found in --state, else {DEFAULT_REGION})",
    )
    serve.add_argument(
        "--state",
        metavar="DIR",
        help="persist keys, aliases, credentials and ports in DIR "
        "(key material is stored in clear; created 0700, and refused "
        "if another user owns it or can write it); default: in memory",
    )
    serve.add_argument(
        "--port",
        type=int,
        metavar="N",
        help="port of the first region, the next regions get N+1, N+2, ... "
        "(0 = ephemeral; default: the ports remembered in --state, "
        "else ephemeral)",
    )
    serve.add_argument(
        "--instance",
        action="append",
        dest="instances",
        metavar="ID=REGION[:replica-of=PRIMARY]",
        help="also serve a KMS 3.0 instance gateway (repeatable): HTTPS under a private CA, "
        "ClientKey authentication, the keys of REGION; a replica (replica-of=PRIMARY, another "
        "--instance) serves its primary's keys in REGION. Prints each instance's endpoint, CA and "
        "ClientKey files and writes instances.json for KMSENV_KMS_INSTANCES",
    )
    serve.add_argument(
        "--log",
        metavar="FILE",
        help="append one line per answered request to FILE (- for stderr): "
        "UTC time, region, action, HTTP status, latency, request ID; "
        "never parameters, signatures or key material",
    )
    serve.set_defaults(func=serve_command)

    create = subparsers.add_parser(
        "create-key",
        help="create a key in a local KMS state directory and print its ARN",
        description="Create an Enabled key in --state (a running `kmsenv kms serve --state DIR` serves it "
        "at once) and print its ARN on stdout. Symmetric specs make ENCRYPT/DECRYPT keys for envelope "
        "encryption; asymmetric specs make a key with one key version (a key pair), SIGN/VERIFY unless "
        "--usage says ENCRYPT/DECRYPT (RSA and SM2 only), as CreateKey does on real KMS.",
    )
    create.add_argument("--region", required=True, metavar="R")
    create.add_argument(
        "--state", required=True, metavar="DIR", help="state directory (created 0700; see serve --state)"
    )
    create.add_argument(
        "--spec",
        default="Aliyun_AES_256",
        choices=_SPEC_CHOICES,
        metavar="SPEC",
        help=f"key spec: {', '.join(_SPEC_CHOICES)} (default Aliyun_AES_256)",
    )
    create.add_argument(
        "--usage",
        choices=_USAGES,
        metavar="USAGE",
        help="SIGN/VERIFY or ENCRYPT/DECRYPT (default: SIGN/VERIFY for asymmetric specs, ENCRYPT/DECRYPT for "
        "symmetric ones; symmetric keys can only be ENCRYPT/DECRYPT, EC_P256 and EC_P256K only SIGN/VERIFY)",
    )
    create.add_argument("--description", default="")
    create.set_defaults(func=create_key_command)

    fault = subparsers.add_parser(
        "fault",
        help="change a region's or an instance's faults on a running `kmsenv kms serve`",
        description="Take a region of a running `kmsenv kms serve` down or up, or slow it, "
        "throttle it or make it fail, through an authenticated call "
        "(KmsenvSetFault) on the server's own ports. Only the settings given "
        "change; --clear resets the others first. Endpoints and credentials come "
        "from the variables `kmsenv kms serve` prints (KMSENV_KMS_ENDPOINTS, "
        "ALIBABA_CLOUD_ACCESS_KEY_ID/SECRET), or from --state. Any port of the "
        "server serves the call for any region, so --up reaches a region that is "
        "down through another region's port; taking the last listening region "
        "down is refused unless --for bounds it. With --instance ID instead of "
        "REGION the call changes that instance gateway's faults (`kmsenv kms serve --instance`).",
    )
    fault.add_argument("region", metavar="REGION", nargs="?", help="the region (or give --instance)")
    fault.add_argument(
        "--instance",
        metavar="ID",
        help="change the faults of this instance gateway instead of a region's (--down closes its HTTPS port)",
    )
    state_change = fault.add_mutually_exclusive_group()
    state_change.add_argument(
        "--down", action="store_true", help="close the region's (instance's) port (clients get connection refused)"
    )
    state_change.add_argument(
        "--up", action="store_true", help="reopen the region's (instance's) port (the same port number)"
    )
    fault.add_argument("--latency-ms", type=float, metavar="N", help="delay every answer N milliseconds (0: none)")
    fault.add_argument(
        "--throttle-rate",
        type=float,
        metavar="R",
        help="answer this fraction (0..1) of requests 429 Rejected.Throttling",
    )
    fault.add_argument(
        "--error-rate", type=float, metavar="R", help="answer this fraction (0..1) of requests with --error-code"
    )
    fault.add_argument(
        "--error-code",
        choices=sorted(SERVER_ERRORS),
        help="ServiceUnavailableTemporary (503, the default) or InternalFailure (500)",
    )
    fault.add_argument(
        "--clear", action="store_true", help="reset every setting first (alone: the region is healthy again)"
    )
    fault.add_argument(
        "--for", dest="duration", type=float, metavar="SECONDS", help="clear the region's faults again after SECONDS"
    )
    fault.add_argument(
        "--endpoint",
        action="append",
        metavar="URL",
        help="a port of the server, http://127.0.0.1:PORT (repeatable; "
        "default: every endpoint in KMSENV_KMS_ENDPOINTS, or --state's)",
    )
    fault.add_argument(
        "--state",
        metavar="DIR",
        help="read the server's endpoints and access key from its --state DIR instead of the environment",
    )
    fault.set_defaults(func=fault_command)


def _regions(args: argparse.Namespace, instances: Mapping[str, InstanceSpec]) -> list[str]:
    """--region as given; else the regions found in --state plus those of the primary
    instances (an instance serves its region's keys, so the region must be served)."""
    if args.regions:
        regions: list[str] = args.regions  # argparse's action="append" of str
        return regions
    found: list[str] = []
    if args.state:
        from .keystore import KeyStore

        store = KeyStore(args.state)
        try:
            found = store.regions()
        finally:
            store.close()
    found += [spec.region for spec in instances.values() if spec.replica_of is None]
    return list(dict.fromkeys(found)) or [DEFAULT_REGION]


def parse_instance_option(value: str) -> tuple[str, InstanceSpec]:
    """``ID=REGION`` or ``ID=REGION:replica-of=PRIMARY`` (``--instance``)."""
    instance_id, sep, rest = value.partition("=")
    region, colon, replica = rest.partition(":")
    if not sep or not instance_id or not region or (colon and not replica.startswith(_REPLICA_OF)):
        raise ConfigurationError(f"--instance {value!r}: use ID=REGION or ID=REGION:{_REPLICA_OF}PRIMARY")
    primary = replica[len(_REPLICA_OF) :] if colon else None
    if colon and not primary:
        raise ConfigurationError(f"--instance {value!r}: {_REPLICA_OF} needs the primary instance's ID")
    from .instance import InstanceSpec

    return instance_id, InstanceSpec(region, replica_of=primary)


def _instance_specs(values: Optional[Sequence[str]]) -> dict[str, InstanceSpec]:
    specs: dict[str, InstanceSpec] = {}
    for value in values or ():
        instance_id, spec = parse_instance_option(value)
        if instance_id in specs:
            raise ConfigurationError(f"--instance {instance_id} is given twice")
        specs[instance_id] = spec
    return specs


def _refusing_unsafe_state(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
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

    specs = _instance_specs(getattr(args, "instances", None))  # before anything is opened or created
    request_log = _open_request_log(args.log)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        from .server import LocalKms

        try:
            kms = LocalKms(
                regions=_regions(args, specs),
                state_dir=args.state,
                port=args.port,
                request_log=request_log,
                instances=specs,
            )
        except ValueError as exc:  # an instance LocalKms cannot serve (unknown primary, region)
            print(f"localkms: {exc}", file=sys.stderr)
            return 2
        try:
            kms.start()
        except OSError as exc:
            kms.stop()
            print(f"localkms: cannot listen: {exc}", file=sys.stderr)
            return 1
        try:
            _print_banner(kms, args, sys.stdout)
            while not stop.wait(0.5):  # timed wait keeps signal delivery prompt
                pass
        finally:
            kms.stop()
        print("localkms stopped.", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if request_log is not None and request_log is not sys.stderr:
            request_log.close()


def _print_banner(kms: LocalKms, args: argparse.Namespace, out: TextIO) -> None:
    """Endpoints, instance gateways and credentials, ending with the "Press Ctrl+C" line
    (scripts read up to it)."""
    endpoints = kms.endpoints
    width = max(len(r) for r in endpoints)
    out.write(f"localkms serving {len(endpoints)} region(s), account {kms.account_uid}:\n")
    for region, url in endpoints.items():
        out.write(f"  {region:<{width}}  {url}\n")
    instances_file = None
    if kms.instances:
        _print_instances(kms.instances, out)
        instances_file = write_instances_file(kms.instances, args.state)
    out.write(
        "state: "
        + (f"{args.state} (key material stored in clear)" if args.state else "in memory (lost on exit)")
        + "\n"
    )
    out.write("# credentials for clients; paste into a shell:\n")
    joined = ",".join(f"{r}={u}" for r, u in endpoints.items())
    out.write(f"export KMSENV_KMS_ENDPOINTS={joined}\n")
    out.write(f"export ALIBABA_CLOUD_ACCESS_KEY_ID={kms.access_key_id}\n")
    # The one place the secret is shown: printing it is this command's purpose.
    out.write(f"export ALIBABA_CLOUD_ACCESS_KEY_SECRET={kms.access_key_secret}\n")
    if instances_file is not None:
        out.write(f"export KMSENV_KMS_INSTANCES={instances_file}\n")
        for region, (chosen, others) in _instances_by_region(kms.instances).items():
            if others:
                out.write(
                    f"# {INSTANCES_FILENAME} names one instance per region: {region} -> {chosen} "
                    f"(not {', '.join(others)}; point InstanceEndpoint at it yourself)\n"
                )
    if args.log:
        out.write(f"request log: {'stderr' if args.log == '-' else args.log}\n")
    out.write("Press Ctrl+C to stop.\n")
    out.flush()


def _print_instances(gateways: Mapping[str, InstanceGateway], out: TextIO) -> None:
    """Per instance: endpoint, ClientKey file and password file (never the password);
    the CA file once, as every instance's certificate is signed by the one CA."""
    out.write(f"{len(gateways)} instance gateway(s), HTTPS under a private CA, ClientKey authentication:\n")
    labels = {i: g.region + (f", replica of {g.replica_of}" if g.replica_of else "") for i, g in gateways.items()}
    id_width = max(len(i) for i in gateways)
    label_width = max(len(label) for label in labels.values())
    for instance_id, g in gateways.items():
        out.write(f"  {instance_id:<{id_width}}  {labels[instance_id]:<{label_width}}  https://{g.endpoint}\n")
        pad = " " * (id_width + 4)
        out.write(f"{pad}client key:    {g.client_key.key_file}\n")
        out.write(f"{pad}password file: {g.client_key.password_file}\n")
    first = next(iter(gateways.values()))
    out.write(f"  CA file (the only trust anchor for these endpoints): {first.ca_file}\n")


def _instances_by_region(gateways: Mapping[str, InstanceGateway]) -> dict[str, tuple[str, list[str]]]:
    """``{region: (the instance named in instances.json, the others)}``: the first
    instance given for a region wins, as ``KMSENV_KMS_INSTANCES`` maps one per region."""
    result: dict[str, tuple[str, list[str]]] = {}
    for instance_id, g in gateways.items():
        if g.region in result:
            result[g.region][1].append(instance_id)
        else:
            result[g.region] = (instance_id, [])
    return result


def instances_file_content(gateways: Mapping[str, InstanceGateway]) -> dict[str, dict[str, str]]:
    """What ``kmsenv.kms.parse_instances_file`` reads: ``{region: {endpoint,
    client_key_file, password_file, ca_file}}`` with absolute paths."""
    content = {}
    for region, (instance_id, _) in _instances_by_region(gateways).items():
        g = gateways[instance_id]
        content[region] = {
            "endpoint": g.endpoint,
            "client_key_file": os.path.abspath(g.client_key.key_file),
            "password_file": os.path.abspath(g.client_key.password_file),
            "ca_file": os.path.abspath(g.ca_file),
        }
    return content


def write_instances_file(gateways: Mapping[str, InstanceGateway], state_dir: Optional[str]) -> str:
    """Write ``instances.json`` into the state directory (without one: beside the
    ClientKey files, in the private directory removed at exit); return its path."""
    import json

    first = next(iter(gateways.values()))
    where = os.path.abspath(state_dir) if state_dir else os.path.dirname(os.path.abspath(first.ca_file))
    path = os.path.join(where, INSTANCES_FILENAME)
    text = json.dumps(instances_file_content(gateways), indent=2, sort_keys=True) + "\n"
    # 0600 like the files it points at: it says where the ClientKeys and passwords are.
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return path


def _open_request_log(path: Optional[str]) -> Optional[TextIO]:
    """``--log``: stderr for ``-``, else FILE opened for appending (created 0600: it
    holds no secrets, but it does show who used which region when)."""
    if path is None:
        return None
    if path == "-":
        return sys.stderr
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigurationError(f"cannot open the request log {path}: {exc.strerror}") from None
    return os.fdopen(fd, "a", encoding="utf-8")


@_refusing_unsafe_state
def create_key_command(args: argparse.Namespace) -> int:
    usage = getattr(args, "usage", None)
    allowed = usages(args.spec) if args.spec in ASYMMETRIC_SPECS else ("ENCRYPT/DECRYPT",)
    if usage is not None and usage not in allowed:
        # Checked before the state directory is touched: nothing is created.
        print(
            f"localkms: a {args.spec} key cannot have usage {usage}; use {' or '.join(allowed)}",
            file=sys.stderr,
        )
        return 2
    from .server import LocalKms

    kms = LocalKms(regions=[args.region], state_dir=args.state)
    try:
        print(kms.create_key(args.region, args.spec, args.description, usage), flush=True)
    finally:
        kms.stop()
    return 0


def _fault_params(args: argparse.Namespace) -> dict[str, str]:
    instance = getattr(args, "instance", None)
    params = {"InstanceId": instance} if instance else {"Region": args.region}
    if args.down or args.up:
        params["Down"] = "true" if args.down else "false"
    for name, value in (
        ("LatencyMs", args.latency_ms),
        ("ThrottleRate", args.throttle_rate),
        ("ErrorRate", args.error_rate),
        ("DurationSeconds", args.duration),
    ):
        if value is not None:
            params[name] = repr(float(value))
    if args.error_code:
        params["ErrorCode"] = args.error_code
    if args.clear:
        params["Clear"] = "true"
    return params


def _server_from_state(state_dir: str) -> tuple[dict[str, str], str, str]:
    """Endpoints and access key of the server that uses ``state_dir``."""
    import json

    from .keystore import KeyStore

    if not os.path.isfile(os.path.join(state_dir, DB_FILENAME)):
        raise ConfigurationError(f"{state_dir} holds no localkms state ({DB_FILENAME})")
    store = KeyStore(state_dir)  # the same ownership and mode checks as serve --state
    try:
        ports = json.loads(store.get_meta("ports") or "{}")
        pair = json.loads(store.get_meta("access_key") or "null")
    finally:
        store.close()
    if not ports or not pair:
        raise ConfigurationError(f"{state_dir}: no server has run with this state yet")
    return ({r: f"http://127.0.0.1:{p}" for r, p in ports.items()}, pair["id"], pair["secret"])


def _fault_target(args: argparse.Namespace) -> tuple[list[str], str, str]:
    """The ports to try, in order, and the access key pair."""
    if args.state:
        by_region, key_id, secret = _server_from_state(args.state)
    else:
        by_region = admin.endpoints_from_env(os.environ.get("KMSENV_KMS_ENDPOINTS", ""))
        env_id, env_secret = admin.credentials_from_env()
        if not env_id or not env_secret:
            raise ConfigurationError(
                "set ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET to the pair "
                "`kmsenv kms serve` printed (or pass --state DIR)"
            )
        key_id, secret = env_id, env_secret
    # An instance's faults travel through the shared ports, which its own state never closes.
    endpoints = list(args.endpoint or admin.ordered_endpoints(args.region or "", by_region))
    if not endpoints:
        raise ConfigurationError(
            "no endpoint: set KMSENV_KMS_ENDPOINTS as `kmsenv kms serve` printed it, or pass "
            "--endpoint http://127.0.0.1:PORT or --state DIR"
        )
    return endpoints, key_id, secret


def _describe_faults(answer: Mapping[str, Any]) -> str:
    faults = answer.get("Faults", {})
    parts = ["down" if faults.get("Down") else "up"]
    if faults.get("LatencyMs"):
        parts.append(f"latency {faults['LatencyMs']:g} ms")
    if faults.get("ThrottleRate"):
        parts.append(f"throttle rate {faults['ThrottleRate']:g}")
    if faults.get("ErrorRate"):
        parts.append(f"error rate {faults['ErrorRate']:g} ({faults.get('ErrorCode')})")
    target = f"{answer['InstanceId']} ({answer.get('Region')})" if answer.get("InstanceId") else answer.get("Region")
    return f"{target}: " + ", ".join(parts)


@_refusing_unsafe_state
def fault_command(args: argparse.Namespace) -> int:
    if (args.region is None) == (getattr(args, "instance", None) is None):
        print("localkms: give a REGION or --instance ID (one of them)", file=sys.stderr)
        return 2
    params = _fault_params(args)
    if len(params) == 1:
        print(
            "localkms: nothing to change: give --down, --up, --latency-ms, --throttle-rate, "
            "--error-rate, --error-code or --clear",
            file=sys.stderr,
        )
        return 2
    endpoints, key_id, secret = _fault_target(args)
    try:
        answer = admin.call(endpoints, params, key_id, secret)
    except admin.AdminCallError as exc:
        print(f"localkms: {exc}", file=sys.stderr)
        return 1
    suffix = f" for {args.duration:g} s" if args.duration else ""
    print(_describe_faults(answer) + suffix, flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kmsenv.localkms", description="Local Alibaba Cloud KMS server.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    args = parser.parse_args(argv)
    status: int = args.func(args)  # every subcommand's func returns an exit status
    return status
