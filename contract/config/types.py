"""The value types of the config model, each with the words an error uses to say what it allows.

A type is ``Annotated[python type, Strict(), validators..., Allowed("...")]``; a field adds its
bounds (``Field(ge=1, le=100)``) and ``errors.allowed_text`` joins the two into the end of an
error message: ``expected a whole number from 1 to 100``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Strict

from contract.names import ALERT_RUNBOOKS

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_IMAGE_REPO = re.compile(r"^[a-z0-9]+([._/:-][a-z0-9]+)*$")
_IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


@dataclass(frozen=True)
class Allowed:
    """What a value of the annotated type may be (``expected ...``)."""

    text: str
    unit: str = ""
    """Shown after the bounds of a number (``s`` for durations)."""


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``"90s"``, ``"500ms"``, ``"2m"`` or ``"1h"``; ``ValueError`` else."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError("not a duration")


def _whole(value: Any) -> Any:
    """Pulumi and YAML may hand integral numbers back as floats (2.0): accept those."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _matching(regex: str) -> AfterValidator:
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.match(value):
            raise ValueError("does not match")
        return value

    return AfterValidator(check)


_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def split_image(value: str) -> tuple[str, str | None, str | None]:
    """``repo[:tag][@sha256:...]`` -> (repository, tag, digest); ``ValueError`` when malformed."""
    name, _, digest = value.partition("@")
    if digest and not _DIGEST.match(digest):
        raise ValueError("bad digest")
    tag = None
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
        if not _IMAGE_TAG.match(tag):
            raise ValueError("bad tag")
    if not _IMAGE_REPO.match(name):
        raise ValueError("bad repository")
    return name, tag, digest or None


def _pinned(value: str) -> str:
    _, tag, digest = split_image(value)
    if digest is None and (tag is None or tag == "latest"):
        raise ValueError("not pinned")
    return value


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError:
        raise ValueError("not a network") from None


def _not_latest(value: str) -> str:
    if value == "latest":
        raise ValueError("latest")
    return value


def _duration_text(value: str) -> str:
    parse_duration(value)
    return value


Whole = Annotated[int, BeforeValidator(_whole), Strict(), Allowed("expected a whole number")]
Number = Annotated[float, Strict(), Allowed("expected a number")]
Flag = Annotated[bool, Strict(), Allowed("expected true or false")]
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    Allowed('expected a duration such as 30, "30s", "500ms", "5m" or "1h"', unit="s"),
]
"""Seconds, written as a duration in the stack file."""
DurationText = Annotated[
    str,
    Strict(),
    AfterValidator(_duration_text),
    Allowed('expected a duration string such as "5m"'),
]
"""A duration kept as written (Prometheus reads it: ``for: 5m``)."""

DnsLabel = Annotated[
    str,
    Strict(),
    _matching(_DNS_LABEL),
    Allowed("expected a DNS label (a-z, 0-9 and '-', at most 63 characters)"),
]
Namespace = Annotated[
    str,
    Strict(),
    _matching(_DNS_LABEL),
    Allowed("expected a Kubernetes namespace name (DNS label, max 63 chars)"),
]
KeyId = Annotated[
    str,
    Strict(),
    _matching(r"^(?=.*[0-9])[A-Za-z0-9._-]{1,64}$"),
    Allowed("expected a key id with a digit, like k1 or 2026-12 (1-64 of A-Za-z0-9._-)"),
]
SecretName = Annotated[
    str, Strict(), _matching(_DNS_LABEL), Allowed("expected the name of a Secret (DNS label)")
]
ClassName = Annotated[
    str,
    Strict(),
    _matching(_DNS_LABEL),
    Allowed("expected the name of a cluster object (DNS label)"),
]
Cpu = Annotated[
    str,
    Strict(),
    _matching(r"^(\d+m|\d+(\.\d+)?)$"),
    Allowed('expected a CPU quantity such as "250m" or "1"'),
]
Memory = Annotated[
    str,
    Strict(),
    _matching(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$"),
    Allowed('expected a size such as "256Mi"'),
]
ImageRepository = Annotated[
    str,
    Strict(),
    _matching(_IMAGE_REPO.pattern),
    Allowed('expected an image repository without a tag, e.g. "ghcr.io/acme/portal"'),
]
ImageTag = Annotated[
    str,
    Strict(),
    _matching(_IMAGE_TAG.pattern),
    AfterValidator(_not_latest),
    Allowed('expected an image tag such as "1.4.0" (not "latest")'),
]
PinnedImage = Annotated[
    str,
    Strict(),
    AfterValidator(_pinned),
    Allowed(
        "expected an image pinned by tag or digest (name:tag, name@sha256:<64 hex> or "
        "name:tag@sha256:<64 hex>; not :latest alone)"
    ),
]
Cidr = Annotated[
    str,
    Strict(),
    AfterValidator(_cidr),
    Allowed('expected a network in CIDR notation, such as "10.0.0.0/16" (host bits zero)'),
]
LabelKey = Annotated[
    str,
    Strict(),
    _matching(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"),
    Allowed("expected a Kubernetes label key such as app.kubernetes.io/name"),
]
LabelValue = Annotated[
    str,
    Strict(),
    _matching(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"),
    Allowed("expected a Kubernetes label value (at most 63 letters, digits, '-', '_', '.')"),
]
Host = Annotated[
    str,
    Strict(),
    _matching(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
    Allowed("expected a DNS host name"),
]
SqlIdentifier = Annotated[
    str,
    Strict(),
    _matching(r"^[a-z_][a-z0-9_]{0,62}$"),
    Allowed("expected a lower-case SQL identifier"),
]
Bucket = Annotated[
    str,
    Strict(),
    _matching(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"),
    Allowed("expected an S3 bucket name"),
]
Region = Annotated[
    str, Strict(), _matching(r"^[a-z0-9-]+$"), Allowed("expected an AWS region name")
]
HttpUrl = Annotated[
    str, Strict(), _matching(r"^https?://[^\s]+$"), Allowed("expected an http(s) URL")
]
FolderUrl = Annotated[
    str,
    Strict(),
    _matching(r"^https?://[^\s/]+(/[^\s]*)?$"),
    AfterValidator(lambda v: v.rstrip("/")),
    Allowed("expected an http(s) URL of the folder holding the runbooks"),
]
RedisSize = Annotated[
    str,
    Strict(),
    _matching(r"^\d+(kb|mb|gb)$"),
    Allowed('expected a Redis size such as "256mb" or "1gb"'),
]
Retention = Annotated[
    str, Strict(), _matching(r"^\d+(h|d|w|y)$"), Allowed('expected a retention such as "15d"')
]
EmailAddress = Annotated[
    str,
    Strict(),
    _matching(r"^[^@\s,]+@[^@\s,]+\.[^@\s,]+$"),
    Allowed("expected an email address"),
]
EmailAddresses = Annotated[
    str,
    Strict(),
    _matching(r"^[^@\s,]+@[^@\s,]+\.[^@\s,]+(\s*,\s*[^@\s,]+@[^@\s,]+\.[^@\s,]+)*$"),
    Allowed("expected email addresses separated by commas"),
]
HostPort = Annotated[
    str,
    Strict(),
    _matching(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?:\d{1,5}$"),
    Allowed('expected host:port, e.g. "smtp.example.com:587"'),
]
SlackChannel = Annotated[
    str,
    Strict(),
    _matching(r"^[#@][a-z0-9._-]{1,80}$"),
    Allowed('expected a channel such as "#portal-alerts"'),
]
Text = Annotated[str, Strict(), _matching(r"^\S(.*\S)?$"), Allowed("expected a non-empty string")]
BaseUrl = Annotated[
    str,
    Strict(),
    _matching(r"^https?://[^\s/]+(/[^\s]*)?$"),
    AfterValidator(lambda v: v.rstrip("/")),
    Allowed("expected an http(s) URL"),
]


def _alert_name(value: str) -> str:
    if value not in ALERT_RUNBOOKS:
        raise ValueError("not an alert")
    return value


AlertName = Annotated[
    str,
    Strict(),
    AfterValidator(_alert_name),
    Allowed("expected alert names among " + ", ".join(ALERT_RUNBOOKS)),
]
