"""A message to a person, the one error a channel raises, and the channel contract.

A ``Message`` carries notices and links, never an approval itself: whoever receives it still has to
prove who they are on the page the link opens. Its ``text``, ``html`` and ``data`` may hold a one-time
link, so they travel sealed (AES-GCM under the KEK, the message id as associated data) everywhere but
on the wire to the recipient; ``id``, ``channel``, ``kind``, ``recipient`` and ``ref`` are not secret.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import orjson

__all__ = ["Channel", "DeliveryError", "Message", "Sealer", "new_message_id"]

_FIELDS = ("id", "channel", "kind", "recipient", "subject", "text", "html", "data", "ref", "created_at")


def new_message_id() -> str:
    """``msg_`` and 128 bits of randomness (22 base64url characters): the idempotency key of every delivery."""
    return "msg_" + secrets.token_urlsafe(16)


class Sealer(Protocol):
    """Authenticated encryption with associated data (``tessera.oauth.keys.KEK`` is one)."""

    def seal(self, plaintext: bytes, aad: bytes) -> bytes: ...

    def open(self, blob: bytes, aad: bytes) -> bytes: ...


class DeliveryError(Exception):
    """A delivery attempt failed. ``str(e)`` is stored and logged, so it never holds a secret.

    ``permanent``: trying again cannot help (a refused recipient, HTTP 410): the message is dead-lettered.
    ``retry_after``: the receiver asked for at least this many seconds before the next attempt.
    """

    def __init__(self, reason: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.permanent = permanent
        self.retry_after = retry_after


@dataclass(frozen=True)
class Message:
    id: str
    channel: str
    kind: str
    recipient: str
    subject: str
    text: str
    html: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    ref: str | None = None
    #: When the event happened (seconds since the epoch); the same on every retry. None: at sending time.
    created_at: float | None = None

    def __repr__(self) -> str:
        # The body may hold a one-time link: keep it out of tracebacks and debug logs.
        return f"Message(id={self.id!r}, channel={self.channel!r}, kind={self.kind!r}, ref={self.ref!r})"

    def seal(self, sealer: Sealer) -> bytes:
        return sealer.seal(orjson.dumps(asdict(self)), self.id.encode())

    @classmethod
    def unseal(cls, sealer: Sealer, message_id: str, blob: bytes) -> Message:
        """Open a sealed message; DeliveryError(permanent) if the key does not open it or it was altered."""
        try:
            raw = orjson.loads(sealer.open(blob, message_id.encode()))
            msg = cls(**{k: raw[k] for k in _FIELDS if k in raw})
        except Exception as e:  # the reason may quote the blob; keep only the class
            raise DeliveryError(
                f"the sealed message could not be opened ({type(e).__name__}): wrong KEK or altered row",
                permanent=True,
            ) from None
        if msg.id != message_id:
            raise DeliveryError("the sealed message does not belong to its row", permanent=True)
        return msg


class Channel(Protocol):
    """Delivers one message; raises DeliveryError. Sending the same message id twice must be harmless
    for the recipient (a webhook-id, an e-mail Message-ID), as the outbox delivers at least once."""

    name: str

    async def send(self, message: Message) -> None: ...
