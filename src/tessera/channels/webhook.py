"""The webhook channel: signed HTTP POSTs per the Standard Webhooks specification (v1.0.0).

https://www.standardwebhooks.com/ — the content signed is ``{msg_id}.{timestamp}.{payload}``; headers
``webhook-id`` (the outbox message id, the same on every retry: the receiver's idempotency key),
``webhook-timestamp`` (integer seconds, fresh on every attempt) and ``webhook-signature`` (a space
delimited list, one signature per configured key, so that a key can be rotated without downtime).
Symmetric keys are ``whsec_<base64>`` (HMAC-SHA256, ``v1,``); asymmetric keys ``whsk_<base64 seed>``
with public ``whpk_<base64>`` (Ed25519, ``v1a,``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tessera.channels.message import DeliveryError, Message

__all__ = [
    "WebhookChannel",
    "WebhookKeyError",
    "WebhookVerificationError",
    "generate_key",
    "payload",
    "sign",
    "verify",
]

log = logging.getLogger("tessera.channels.webhook")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
#: Spec: "make sure to verify the webhook-timestamp header ... within some allowable tolerance".
TOLERANCE = 300


class WebhookKeyError(ValueError):
    """A key could not be parsed. The message names the key's position, never its material."""


class WebhookVerificationError(Exception):
    """A delivery did not verify; the message names the reason."""


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


@dataclass(frozen=True)
class _Key:
    kind: Literal["v1", "v1a"]
    secret: bytes | None = None
    private: Ed25519PrivateKey | None = None
    public: Ed25519PublicKey | None = None


def _parse_key(key: str, where: str) -> _Key:
    try:
        if key.startswith("whsec_"):
            secret = _b64decode(key[6:])
            # Spec: a symmetric secret is "random, at least 24 bytes (192 bits, 512 maximum)".
            if not 24 <= len(secret) <= 64:
                raise WebhookKeyError(f"{where}: a whsec_ secret must be 24 to 64 bytes")
            return _Key("v1", secret=secret)
        if key.startswith("whsk_"):
            raw = _b64decode(key[5:])
            if len(raw) not in (32, 64):  # the seed, or libsodium's seed || public key
                raise WebhookKeyError(f"{where}: a whsk_ key must be a 32-byte Ed25519 seed")
            private = Ed25519PrivateKey.from_private_bytes(raw[:32])
            return _Key("v1a", private=private, public=private.public_key())
        if key.startswith("whpk_"):
            raw = _b64decode(key[5:])
            if len(raw) != 32:
                raise WebhookKeyError(f"{where}: a whpk_ key must be a 32-byte Ed25519 public key")
            return _Key("v1a", public=Ed25519PublicKey.from_public_bytes(raw))
    except (binascii.Error, ValueError) as e:
        if isinstance(e, WebhookKeyError):
            raise
        raise WebhookKeyError(f"{where}: not valid base64 key material") from None
    raise WebhookKeyError(f"{where}: not a whsec_, whsk_ or whpk_ key")


def _parse_keys(keys: Sequence[str], what: str) -> list[_Key]:
    if isinstance(keys, str) or not keys:
        raise WebhookKeyError(f"{what}: give a non-empty list of keys")
    return [_parse_key(k, f"{what} key {i + 1}") for i, k in enumerate(keys)]


def _content(message_id: str, timestamp: int, body: bytes) -> bytes:
    # Spec: the id and timestamp must not contain "." (they would make the signed content ambiguous).
    if "." in message_id or not message_id:
        raise ValueError("a webhook id must be non-empty and contain no '.'")
    return f"{message_id}.{timestamp}.".encode() + body


def sign(message_id: str, timestamp: int, body: bytes, keys: Sequence[str]) -> str:
    """The ``webhook-signature`` header value: one signature per signing key, space separated."""
    parsed = _parse_keys(keys, "signing")
    return _sign(message_id, timestamp, body, parsed)


def _sign(message_id: str, timestamp: int, body: bytes, keys: Sequence[_Key]) -> str:
    content = _content(message_id, timestamp, body)
    out = []
    for k in keys:
        if k.kind == "v1" and k.secret is not None:
            out.append("v1," + base64.b64encode(hmac.new(k.secret, content, hashlib.sha256).digest()).decode())
        elif k.private is not None:
            out.append("v1a," + base64.b64encode(k.private.sign(content)).decode())
        else:
            raise WebhookKeyError("a whpk_ public key cannot sign")
    return " ".join(out)


def verify(
    headers: Mapping[str, str], body: bytes, keys: Sequence[str], *, now: float, tolerance: int = TOLERANCE
) -> str:
    """Verify a delivery as a receiver must; returns the webhook id (the idempotency key) or raises.

    ``keys``: the receiver's trust list (whsec_ secrets, whpk_ public keys). A signature by any of them
    is enough; signatures of other keys in the header are ignored (a key rotation).
    """
    h = {k.lower(): v for k, v in headers.items()}
    msg_id, ts, header = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    if not (msg_id and ts and header):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    if not ts.isdigit():
        raise WebhookVerificationError("webhook-timestamp is not an integer")
    timestamp = int(ts)
    # Spec: verify the timestamp is within tolerance of the current time, to prevent replay attacks.
    if timestamp < now - tolerance:
        raise WebhookVerificationError("webhook-timestamp is too old")
    if timestamp > now + tolerance:
        raise WebhookVerificationError("webhook-timestamp is in the future")
    try:
        content = _content(msg_id, timestamp, body)
    except ValueError:
        raise WebhookVerificationError("webhook-id is malformed") from None
    trusted = _parse_keys(keys, "verification")
    for item in header.split(" "):
        version, _, value = item.partition(",")
        try:
            sig = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        for k in trusted:
            if version != k.kind:
                continue
            if k.secret is not None:
                if hmac.compare_digest(hmac.new(k.secret, content, hashlib.sha256).digest(), sig):
                    return msg_id
            elif k.public is not None:
                try:
                    k.public.verify(sig, content)
                    return msg_id
                except InvalidSignature:
                    continue
    raise WebhookVerificationError("no signature by a trusted key")


def generate_key(kind: Literal["symmetric", "ed25519"] = "symmetric") -> tuple[str, str | None]:
    """A new signing key: (``whsec_…``, None) or (``whsk_…`` seed, ``whpk_…`` public key for receivers)."""
    if kind == "symmetric":
        return "whsec_" + base64.b64encode(os.urandom(32)).decode(), None
    if kind == "ed25519":
        seed = os.urandom(32)
        public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
        return "whsk_" + base64.b64encode(seed).decode(), "whpk_" + base64.b64encode(public).decode()
    raise ValueError("kind must be 'symmetric' or 'ed25519'")


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def payload(message: Message, now: float) -> bytes:
    """The JSON body: ``{"type", "timestamp", "data"}`` (spec "Payload structure"), minified.

    ``data`` holds the message's own data (the link, if any), then recipient, subject, text and ref.
    """
    data: dict[str, Any] = {
        **message.data,
        "recipient": message.recipient,
        "subject": message.subject,
        "text": message.text,
    }
    if message.ref is not None:
        data["ref"] = message.ref
    when = message.created_at if message.created_at is not None else now
    return orjson.dumps({"type": message.kind, "timestamp": _rfc3339(when), "data": data})


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebhookChannel:
    def __init__(
        self,
        name: str,
        url: str,
        keys: list[str],
        *,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        now: Callable[[], float] = time.time,
        allow_http_loopback: bool = False,
    ) -> None:
        if not _NAME.match(name):
            raise ValueError("a webhook name is 1-63 letters, digits, '_', '.', '-'")
        self.name = f"webhook:{name}"
        parts = urlsplit(url)
        host = parts.hostname or ""
        # Spec "Enforcing HTTPS": the payload carries a link; plain HTTP only to this host, when enabled.
        if parts.scheme != "https" and not (parts.scheme == "http" and allow_http_loopback and _is_loopback(host)):
            raise ValueError(f"webhook {name}: the URL must be https (http only to a loopback host, when allowed)")
        if not host or parts.username or parts.password:
            raise ValueError(f"webhook {name}: the URL needs a host and no credentials")
        self._url = url
        self._keys = _parse_keys(keys, f"webhook {name}")
        if any(k.secret is None and k.private is None for k in self._keys):
            raise WebhookKeyError(f"webhook {name}: a whpk_ public key cannot sign; configure the whsk_ key")
        self._client = client
        self.timeout = timeout
        self._now = now

    def __repr__(self) -> str:
        # The URL can itself be a secret (capability URLs): neither it nor the keys are shown.
        return f"WebhookChannel({self.name!r}, keys={len(self._keys)})"

    async def send(self, message: Message) -> None:
        now = self._now()
        body = payload(message, now)
        timestamp = int(now)
        headers = {
            "webhook-id": message.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": _sign(message.id, timestamp, body, self._keys),
            "content-type": "application/json",
        }
        client = self._client or httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        try:
            r = await client.post(self._url, content=body, headers=headers, timeout=self.timeout)
        except httpx.TimeoutException:
            raise DeliveryError(f"{self.name} did not answer within {self.timeout:g} s") from None
        except httpx.HTTPError as e:
            raise DeliveryError(f"{self.name} could not be reached ({type(e).__name__})") from None
        finally:
            if self._client is None:
                await client.aclose()
        if 200 <= r.status_code < 300:
            log.info("message %s (%s) delivered to %s", message.id, message.kind, self.name)
            return
        # Spec: 410 Gone -- the receiver no longer wants these webhooks; anything else non-2xx is a failure.
        if r.status_code == 410:
            raise DeliveryError(f"{self.name} answered HTTP 410 Gone", permanent=True)
        raise DeliveryError(f"{self.name} answered HTTP {r.status_code}", retry_after=_retry_after(r))


def _retry_after(r: httpx.Response) -> float | None:
    value = r.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None
