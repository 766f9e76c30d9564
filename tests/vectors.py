"""One loader for the JSON vector files in tests/data."""

from __future__ import annotations

import base64
import json
from pathlib import Path

DATA = Path(__file__).parent / "data"


def official_vectors() -> list[dict]:
    records = json.loads((DATA / "alibaba-official-python.json").read_text(encoding="utf-8"))
    for r in records:
        r["message"] = base64.b64decode(r["message_b64"])
        r["plaintext"] = base64.b64decode(r["plaintext_b64"])
        r["data_key"] = base64.b64decode(r["data_key_b64"])
    return records
