"""Channels that reach people (SMTP e-mail, Standard Webhooks, a development file) and the durable outbox.

Channels deliver notices and links, never an approval itself. Every message is an outbox row first
(sealed under the KEK), then delivered at least once under its message id; see docs/channels.md.
"""

from tessera.channels.file import FileChannel
from tessera.channels.message import Channel, DeliveryError, Message, Sealer, new_message_id
from tessera.channels.outbox import OutboxItem, OutboxStore, OutboxWorker, RetryPolicy
from tessera.channels.smtp import SmtpChannel
from tessera.channels.webhook import WebhookChannel, WebhookKeyError, WebhookVerificationError, generate_key

__all__ = [
    "Channel",
    "DeliveryError",
    "FileChannel",
    "Message",
    "OutboxItem",
    "OutboxStore",
    "OutboxWorker",
    "RetryPolicy",
    "Sealer",
    "SmtpChannel",
    "WebhookChannel",
    "WebhookKeyError",
    "WebhookVerificationError",
    "generate_key",
    "new_message_id",
]
