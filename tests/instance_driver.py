"""Drive the unmodified official instance client (``alibabacloud-dkms-gcs``) for tests.

Runs under the *separate* virtual environment's Python (never imported by kmsenv's tests:
the official package installs top-level ``sdk``/``openapi`` and pins protobuf<4 and
cryptography<42).  Reads one JSON job on stdin, writes one JSON answer on stdout.

Jobs (``"mode"``):

* ``calls``: build ``openapi.models.Config(**config)`` and ``sdk.client.Client``, then run
  each call ``{"method": "encrypt", "request": "EncryptRequest", "args": {...},
  "headers": {...}}`` with ``RuntimeOptions(**runtime)`` (response header
  ``x-kms-migrationkeyversionid`` always requested).  Bytes travel as ``{"b64": ...}``.
  Each result is ``{"ok": {response fields}}`` or ``{"error": {type, code, message,
  http_code, request_id}}``.
* ``schema``: the official ``api_pb2`` descriptors: ``{message: [[number, name, type, label]]}``.
* ``encode`` / ``decode``: the official protobuf runtime serializes / parses one message
  (``MessageToDict``: bytes in base64, int32 as numbers).
* ``string_to_sign``: the official ``get_string_to_sign`` of the given headers.
* ``versions``: installed versions of the official packages.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any


def _to_json(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _error(exc: BaseException) -> dict[str, Any]:
    data = getattr(exc, "data", None)
    inner = getattr(exc, "inner_exception", None)
    return {
        "type": type(exc).__name__,
        "code": getattr(exc, "code", None),
        "message": str(getattr(exc, "message", "") or exc)[:500],
        "http_code": data.get("httpCode") if isinstance(data, dict) else None,
        "request_id": data.get("requestId") if isinstance(data, dict) else None,
        "inner": type(inner).__name__ if inner is not None else None,
        "text": str(exc)[:500],
    }


def run_calls(job: dict[str, Any]) -> list[dict[str, Any]]:
    from openapi.models import Config
    from openapi_util.models import RuntimeOptions
    from sdk import models
    from sdk.client import Client

    results: list[dict[str, Any]] = []
    try:
        client = Client(Config(**job["config"]))
    except Exception as exc:  # e.g. a wrong ClientKey password
        return [{"error": _error(exc)} for _ in job["calls"]] or [{"error": _error(exc)}]
    runtime_args = dict(job.get("runtime") or {})
    runtime_args.setdefault("response_headers", ["x-kms-migrationkeyversionid"])
    for call in job["calls"]:
        request = getattr(models, call["request"])(**_from_json(call.get("args") or {}))
        if call.get("headers"):
            request.request_headers = dict(call["headers"])
        method = getattr(client, call["method"] + "_with_options")
        try:
            response = method(request, RuntimeOptions(**runtime_args))
        except Exception as exc:
            results.append({"error": _error(exc)})
            continue
        results.append({"ok": _to_json(response.to_map())})
    return results


def schema() -> dict[str, list[list[Any]]]:
    from google.protobuf.descriptor import FieldDescriptor
    from openapi_util.protobuf import api_pb2

    types = {
        FieldDescriptor.TYPE_STRING: "string",
        FieldDescriptor.TYPE_BYTES: "bytes",
        FieldDescriptor.TYPE_INT32: "int32",
        FieldDescriptor.TYPE_BOOL: "bool",
    }
    out = {}
    for name, desc in api_pb2.DESCRIPTOR.message_types_by_name.items():
        out[name] = [
            [f.number, f.name, types.get(f.type, str(f.type)), "repeated" if f.label == f.LABEL_REPEATED else ""]
            for f in desc.fields
        ]
    return out


def run_adapter(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The classic-API adapters over an instance: ``"adapter": "transfer"``
    (alibabacloud-dkms-transfer-python: classic aliyunsdkkms requests) or ``"kmssdk"``
    (alibabacloud-kms-python-sdk's TransferClient, Advance mode, its default).  Calls:
    ``{"op": "encrypt"|"decrypt"|"generate_data_key", "key_id", "plaintext", "blob",
    "context"}``; answers the classic JSON fields."""
    cfg = job["config"]
    results: list[dict[str, Any]] = []
    if job["adapter"] == "transfer":
        from aliyunsdkkms.request.v20160120.DecryptRequest import DecryptRequest
        from aliyunsdkkms.request.v20160120.EncryptRequest import EncryptRequest
        from aliyunsdkkms.request.v20160120.GenerateDataKeyRequest import GenerateDataKeyRequest
        from alibabacloud_dkms_transfer.kms_transfer_acs_client import KmsTransferAcsClient
        from openapi.models import Config

        client = KmsTransferAcsClient(
            config=Config(**cfg), ak="unused", secret="unused", region_id="cn-hangzhou", verify=cfg["ca_file_path"]
        )
        for call in job["calls"]:
            op, ctx = call["op"], call.get("context")
            if op == "encrypt":
                req: Any = EncryptRequest()
                req.set_KeyId(call["key_id"])
                req.set_Plaintext(call["plaintext"])
            elif op == "decrypt":
                req = DecryptRequest()
                req.set_CiphertextBlob(call["blob"])
            else:
                req = GenerateDataKeyRequest()
                req.set_KeyId(call["key_id"])
                req.set_NumberOfBytes(32)
            if ctx:
                req.set_EncryptionContext(json.dumps(ctx))
            try:
                results.append({"ok": json.loads(client.do_action_with_exception(req))})
            except Exception as exc:
                results.append({"error": {"type": type(exc).__name__, "code": getattr(exc, "error_code", None)}})
        return results
    from alibabacloud_kms20160120 import models as classic
    from alibabacloud_kms_kms20160120.models import KmsConfig, KmsRuntimeOptions
    from alibabacloud_kms_kms20160120.transfer_client import TransferClient

    ca = cfg.pop("ca_file_path")
    client = TransferClient(kms_config=KmsConfig(**cfg))
    runtime = KmsRuntimeOptions(ca=ca, autoretry=False)
    for call in job["calls"]:
        op, ctx = call["op"], call.get("context") or None
        try:
            if op == "encrypt":
                request: Any = classic.EncryptRequest(
                    key_id=call["key_id"], plaintext=call["plaintext"], encryption_context=ctx
                )
                body = client.encrypt_with_options(request, runtime).body
            elif op == "decrypt":
                request = classic.DecryptRequest(ciphertext_blob=call["blob"], encryption_context=ctx)
                body = client.decrypt_with_options(request, runtime).body
            else:
                request = classic.GenerateDataKeyRequest(
                    key_id=call["key_id"], number_of_bytes=32, encryption_context=ctx
                )
                body = client.generate_data_key_with_options(request, runtime).body
            results.append({"ok": body.to_map()})
        except Exception as exc:
            results.append({"error": {"type": type(exc).__name__, "code": getattr(exc, "code", None)}})
    return results


# -- used by kmsenv's tests (under kmsenv's Python): the separate virtual environment --

#: What the separate environment holds: the official instance client, pinned.
OFFICIAL_REQUIREMENTS = ("alibabacloud-dkms-gcs==1.0.2",)
VENV_ENV = "KMSENV_INSTANCE_VENV"  # a directory to create the venv in (and reuse)
REQUIRE_ENV = "KMSENV_REQUIRE_INSTANCE_VENV"  # "1": failing to build it fails the tests


#: The adapters, each in its own environment (they pin different classic SDKs).
ADAPTER_REQUIREMENTS = {
    "transfer": ("alibabacloud-dkms-transfer-python==0.1.3",),
    "kmssdk": ("alibabacloud-kms-python-sdk==1.1.3",),
}


def official_venv(directory: str, requirements: tuple[str, ...] = OFFICIAL_REQUIREMENTS) -> tuple[str, float]:
    """Create (once, under a file lock: pytest-xdist workers share it) a virtual
    environment holding OFFICIAL_REQUIREMENTS; return its Python and the seconds spent
    creating it (0 when it was already there)."""
    import fcntl
    import os
    import subprocess
    import time

    os.makedirs(directory, exist_ok=True)
    python = os.path.join(directory, "bin", "python")
    marker = os.path.join(directory, ".kmsenv-ready")
    wanted = "\n".join(requirements)
    with open(os.path.join(directory, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(marker) as f:
                if f.read() == wanted:
                    return python, 0.0
        except FileNotFoundError:
            pass
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", "--clear", directory], check=True, timeout=300)
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
            check=True,
            timeout=900,
            env=clean_env(),
        )
        with open(marker, "w") as f:
            f.write(wanted)
        return python, time.monotonic() - started


def official_python(tmp_path_factory: Any, adapter: str = "") -> str:
    """The session fixture's body: the venv's Python, built in ``$KMSENV_INSTANCE_VENV``
    (``-transfer``/``-kmssdk`` appended for the adapters) or beside pytest's temp dirs; skips the tests when it cannot be built, unless
    ``KMSENV_REQUIRE_INSTANCE_VENV=1`` (CI), where that is a failure."""
    import os

    import pytest

    requirements = ADAPTER_REQUIREMENTS[adapter] if adapter else OFFICIAL_REQUIREMENTS
    base = os.environ.get(VENV_ENV)
    name = f"{adapter}-venv" if adapter else "dkms-gcs-venv"
    # Without $KMSENV_INSTANCE_VENV: next to the session's temp dir, so that both test files
    # and every pytest-xdist worker share one environment (under official_venv's lock).
    shared = os.path.join(str(tmp_path_factory.getbasetemp().parent), f"kmsenv-{name}")
    directory = (base + (f"-{adapter}" if adapter else "")) if base else shared
    try:
        python, seconds = official_venv(directory, requirements)
    except Exception as exc:  # no network, no venv module, ...
        if os.environ.get(REQUIRE_ENV) == "1":
            raise
        pytest.skip(f"cannot build the official client's virtual environment: {exc}")
    if seconds:
        print(f"\n[instance venv] {' '.join(requirements)} installed in {seconds:.1f}s at {directory}")
    return python


def clean_env() -> dict[str, str]:
    """The environment without proxies: Tea sends loopback traffic to HTTPS_PROXY and
    ignores NO_PROXY (spec §1.8)."""
    import os

    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k not in ("SSL_CERT_FILE",)}


def run(python: str, job: dict[str, Any], timeout: float = 120) -> Any:
    """Run one job in a fresh official-client process (one TLS mode per process: the
    official client's session cache leaks CA settings between clients, spec §1.4)."""
    import os
    import subprocess

    done = subprocess.run(
        [python, os.path.abspath(__file__)],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"official client driver failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def adapter_calls(python: str, adapter: str, gateway: Any, *calls: dict[str, Any]) -> list[Any]:
    """Run ``calls`` through one of the classic-API adapters (``"transfer"`` or
    ``"kmssdk"``) in its own environment, against a LocalKms instance gateway."""
    cfg = {
        "protocol": "https",
        "endpoint": gateway.endpoint,
        "client_key_file": gateway.client_key.key_file,
        "password": gateway.client_key.password,
        "ca_file_path": gateway.ca_file,
    }
    answer: list[Any] = run(python, {"mode": "adapter", "adapter": adapter, "config": cfg, "calls": list(calls)})
    return answer


def main() -> None:
    job = json.load(sys.stdin)
    mode = job.get("mode", "calls")
    if mode == "calls":
        answer: Any = run_calls(job)
    elif mode == "schema":
        answer = schema()
    elif mode == "adapter":
        answer = run_adapter(job)
    elif mode == "encode":  # the official protobuf runtime serializes a message
        from openapi_util.protobuf import api_pb2

        msg = getattr(api_pb2, job["message"])()
        for name, value in _from_json(job["fields"]).items():
            if isinstance(value, list):
                getattr(msg, name).extend(value)
            else:
                setattr(msg, name, value)
        answer = _to_json(msg.SerializeToString())
    elif mode == "decode":  # ... and parses one
        from google.protobuf.json_format import MessageToDict
        from openapi_util.protobuf import api_pb2

        msg = getattr(api_pb2, job["message"])()
        msg.ParseFromString(_from_json(job["data"]))
        answer = MessageToDict(msg, preserving_proto_field_name=True)
    elif mode == "string_to_sign":
        from openapi_util.client import Client as Util

        answer = Util.get_string_to_sign("POST", "/", job["headers"], {})
    elif mode == "versions":
        from importlib.metadata import version

        answer = {p: version(p) for p in job["packages"]}
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
