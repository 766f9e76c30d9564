"""Alibaba Cloud KMS key ARNs: ``acs:kms:<region>:<account-id>:key/<key-id>``.

Parsing is strict (spec: alibaba-message-format.md section 12, plus section 15
item 18): exactly five colon-separated parts, ``acs`` and ``kms`` literally, a
non-empty region, account ID and key ID, and resource type ``key``; no
whitespace and no control or format characters (an ARN is printed and logged,
and an ESC or a bidi override in it would reach the terminal).  Nothing is
trimmed or normalised silently, so ``str(Arn.parse(text)) == text`` for every
accepted ``text`` and ARNs can be compared as strings.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from kmsenv.exceptions import ConfigurationError

__all__ = ["Arn", "control_character"]

# A region ends up in a host name (kms.<region>.aliyuncs.com), so keep it to
# host-name-safe characters.  Real region IDs look like "cn-hangzhou",
# "ap-southeast-1", "cn-hangzhou-finance".
_REGION_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z")
# Account UIDs are digits on the real service; accept any token without
# separators or whitespace so emulators with other IDs still work.
_TOKEN_RE = re.compile(r"[^\s:/]+\Z")


# Control (Cc: C0, DEL, C1), format (Cf: bidi overrides and isolates, zero-width
# characters) and surrogate (Cs) code points: none is part of a real ARN, and a
# terminal or a log viewer may act on them instead of showing them.
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})


def control_character(text: str) -> str | None:
    """The first control, format or surrogate character of ``text`` as ``U+XXXX``
    (for an error message that must not echo it), or None."""
    if text.isprintable():  # no Cc/Cf/Cs (nor Co/Cn/Z* but space): the usual case, in C
        return None
    for ch in text:
        if unicodedata.category(ch) in _CONTROL_CATEGORIES:
            return f"U+{ord(ch):04X}"
    return None


def _describe(text: str) -> str:
    shown = text if len(text) <= 200 else text[:200] + "..."
    return repr(shown)


@dataclass(frozen=True)
class Arn:
    """A parsed KMS key ARN.  ``str(arn)`` gives the canonical ARN text."""

    region: str
    account_id: str
    key_id: str

    def __post_init__(self) -> None:
        for name in ("region", "account_id", "key_id"):
            if not isinstance(getattr(self, name), str):
                raise ConfigurationError(f"Arn.{name} must be a str")
            bad = control_character(getattr(self, name))
            if bad:
                raise ConfigurationError(f"Arn.{name} contains the control character {bad}")
        if not _REGION_RE.match(self.region):
            raise ConfigurationError(f"invalid KMS region {self.region!r} in key ARN")
        if not _TOKEN_RE.match(self.account_id):
            raise ConfigurationError(f"invalid account ID {self.account_id!r} in key ARN")
        if not _TOKEN_RE.match(self.key_id):
            raise ConfigurationError(f"invalid key ID {self.key_id!r} in key ARN")

    @classmethod
    def parse(cls, text: object) -> Arn:
        """Parse ``acs:kms:<region>:<account-id>:key/<key-id>``.

        Raises :class:`~kmsenv.exceptions.ConfigurationError` with a message that
        says what is wrong (aliases, bare key IDs, whitespace, wrong part count...).
        """
        if isinstance(text, Arn):
            return text
        if not isinstance(text, str):
            raise ConfigurationError(f"a KMS key ARN must be a str, not {type(text).__name__}")
        if text == "":
            raise ConfigurationError("empty KMS key ARN")
        if text != text.strip():
            raise ConfigurationError(
                f"KMS key ARN {_describe(text)} has leading or trailing whitespace; "
                "remove it (kmsenv does not trim ARNs silently)"
            )
        if any(ch.isspace() for ch in text):
            raise ConfigurationError(f"KMS key ARN {_describe(text)} contains whitespace")
        bad = control_character(text)
        if bad:
            # _describe's repr escapes it: the message never carries the raw character.
            raise ConfigurationError(f"KMS key ARN {_describe(text)} contains the control character {bad}")
        if text.startswith("alias/"):
            raise ConfigurationError(
                f"{_describe(text)} is an alias; a full key ARN "
                "'acs:kms:<region>:<account-id>:key/<key-id>' is required"
            )
        parts = text.split(":")
        if len(parts) != 5:
            if len(parts) == 1:
                raise ConfigurationError(
                    f"{_describe(text)} is not a key ARN (a bare key ID?); a full key ARN "
                    "'acs:kms:<region>:<account-id>:key/<key-id>' is required"
                )
            raise ConfigurationError(
                f"malformed KMS key ARN {_describe(text)}: expected 5 colon-separated parts "
                f"'acs:kms:<region>:<account-id>:key/<key-id>', got {len(parts)}"
            )
        partition, service, region, account_id, resource = parts
        if partition != "acs":
            raise ConfigurationError(f"malformed KMS key ARN {_describe(text)}: must start with 'acs:'")
        if service != "kms":
            raise ConfigurationError(f"malformed KMS key ARN {_describe(text)}: service must be 'kms'")
        if not region:
            raise ConfigurationError(f"malformed KMS key ARN {_describe(text)}: empty region")
        if not account_id:
            raise ConfigurationError(f"malformed KMS key ARN {_describe(text)}: empty account ID")
        rtype, sep, key_id = resource.partition("/")
        if rtype == "alias":
            raise ConfigurationError(
                f"{_describe(text)} is an alias ARN; a key ARN 'acs:kms:<region>:<account-id>:key/<key-id>' is required"
            )
        if rtype != "key" or not sep:
            raise ConfigurationError(
                f"malformed KMS key ARN {_describe(text)}: resource type must be 'key' ('key/<key-id>')"
            )
        if not key_id:
            raise ConfigurationError(f"malformed KMS key ARN {_describe(text)}: empty key ID")
        if "/" in key_id:
            raise ConfigurationError(f"malformed KMS key ARN {_describe(text)}: key ID contains '/'")
        return cls(region, account_id, key_id)

    def __str__(self) -> str:
        return f"acs:kms:{self.region}:{self.account_id}:key/{self.key_id}"
