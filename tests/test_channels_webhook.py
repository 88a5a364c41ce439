"""The webhook channel against a loopback receiver that verifies as the Standard Webhooks specification
says: symmetric (v1, HMAC-SHA256) with the reference ``standardwebhooks`` library, Ed25519 (v1a) with
``cryptography``; stale timestamps rejected, key rotation, status handling (2xx, 410, retry)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from channel_support import WebhookReceiver
from tessera.channels import DeliveryError, Message, WebhookChannel, new_message_id
from tessera.channels.webhook import WebhookKeyError, WebhookVerificationError, generate_key, sign, verify

LINK = "https://tessera.example/approve/tok_" + "L1nk" * 8


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    r.start()
    yield r
    r.stop()


def message(**kw: object) -> Message:
    fields: dict[str, object] = {
        "id": new_message_id(),
        "channel": "webhook:ops",
        "kind": "approval.requested",
        "recipient": "alice",
        "subject": "Approve deploy to prod?",
        "text": f"Open {LINK}",
        "data": {"url": LINK, "request_id": "apr_1"},
        "ref": "apr_1",
    }
    fields.update(kw)
    return Message(**fields)  # type: ignore[arg-type]


def channel(url: str, keys: list[str], **kw: object) -> WebhookChannel:
    return WebhookChannel("ops", url, keys, allow_http_loopback=True, **kw)  # type: ignore[arg-type]


def test_symmetric_delivery_verifies_with_the_reference_library(receiver: WebhookReceiver) -> None:
    secret, public = generate_key("symmetric")
    assert public is None and secret.startswith("whsec_")
    receiver.state.secrets = [secret]
    msg = message()
    asyncio.run(channel(receiver.url, [secret]).send(msg))

    [d] = receiver.deliveries
    assert d.verified and d.status == 200, d.reason
    assert d.headers["webhook-id"] == msg.id
    assert d.headers["content-type"] == "application/json"
    assert abs(int(d.headers["webhook-timestamp"]) - time.time()) < 5
    body = json.loads(d.body)
    assert body["type"] == "approval.requested"
    assert body["timestamp"].endswith("Z")
    assert body["data"]["url"] == LINK and body["data"]["subject"] == msg.subject and body["data"]["ref"] == "apr_1"
    # Our own verify() agrees with the reference library.
    assert verify(d.headers, d.body, [secret], now=time.time()) == msg.id


def test_stale_timestamp_is_rejected_by_the_receiver(receiver: WebhookReceiver) -> None:
    secret, _ = generate_key()
    receiver.state.secrets = [secret]
    stale = channel(receiver.url, [secret], now=lambda: time.time() - 600)
    with pytest.raises(DeliveryError) as err:
        asyncio.run(stale.send(message()))
    assert not err.value.permanent and "401" in str(err.value)
    [d] = receiver.deliveries
    assert not d.verified and d.reason == "Message timestamp too old"
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify(d.headers, d.body, [secret], now=time.time())


@pytest.mark.parametrize("receiver_knows", ["old", "new"])
def test_rotation_signs_with_every_key(receiver: WebhookReceiver, receiver_knows: str) -> None:
    old, _ = generate_key()
    new, _ = generate_key()
    receiver.state.secrets = [old if receiver_knows == "old" else new]
    asyncio.run(channel(receiver.url, [new, old]).send(message()))
    [d] = receiver.deliveries
    assert d.verified and d.status == 200, d.reason
    assert [s.split(",")[0] for s in d.headers["webhook-signature"].split(" ")] == ["v1", "v1"]


def test_ed25519_v1a_verifies_with_cryptography(receiver: WebhookReceiver) -> None:
    private, public = generate_key("ed25519")
    assert private.startswith("whsk_") and public is not None and public.startswith("whpk_")
    assert len(base64.b64decode(private[5:])) == 32
    receiver.state.public_keys = [public]
    symmetric, _ = generate_key()
    msg = message()
    asyncio.run(channel(receiver.url, [private, symmetric]).send(msg))
    [d] = receiver.deliveries
    assert d.verified and d.status == 200, d.reason
    assert d.headers["webhook-signature"].startswith("v1a,")
    assert verify(d.headers, d.body, [public], now=time.time()) == msg.id
    # A receiver that trusts another public key rejects it.
    _, other = generate_key("ed25519")
    assert other is not None
    with pytest.raises(WebhookVerificationError, match="no signature"):
        verify(d.headers, d.body, [other], now=time.time())


def test_signature_matches_the_reference_library_for_a_fixed_input() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    from datetime import UTC, datetime

    ts = 1674087231
    body = b'{"type":"contact.created"}'
    expected = Webhook(secret).sign("msg_p5jXN8AQM9LWM0D4loKWxJek", datetime.fromtimestamp(ts, UTC), body.decode())
    assert sign("msg_p5jXN8AQM9LWM0D4loKWxJek", ts, body, [secret]) == expected


def test_5xx_then_2xx_is_retried_under_the_same_id(receiver: WebhookReceiver) -> None:
    secret, _ = generate_key()
    receiver.state.secrets = [secret]
    receiver.state.fail_next, receiver.state.fail_status = 1, 500
    ch, msg = channel(receiver.url, [secret]), message()
    with pytest.raises(DeliveryError) as err:
        asyncio.run(ch.send(msg))
    assert not err.value.permanent and "500" in str(err.value)
    asyncio.run(ch.send(msg))
    assert [d.status for d in receiver.deliveries] == [500, 200]
    assert {d.headers["webhook-id"] for d in receiver.deliveries} == {msg.id}
    assert receiver.accepted_ids() == [msg.id]


def test_410_is_permanent(receiver: WebhookReceiver) -> None:
    secret, _ = generate_key()
    receiver.state.secrets = [secret]
    receiver.state.status = 410
    with pytest.raises(DeliveryError) as err:
        asyncio.run(channel(receiver.url, [secret]).send(message()))
    assert err.value.permanent


def test_unreachable_receiver_is_transient_and_error_names_no_url(receiver: WebhookReceiver) -> None:
    secret, _ = generate_key()
    url = receiver.url + "?token=capability-secret"
    receiver.stop()
    with pytest.raises(DeliveryError) as err:
        asyncio.run(channel(url, [secret], timeout=2).send(message()))
    assert not err.value.permanent
    assert "capability-secret" not in str(err.value) and secret not in str(err.value)


def test_shared_client_is_used_and_redirects_are_not_followed(receiver: WebhookReceiver) -> None:
    secret, _ = generate_key()
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["webhook-id"])
        return httpx.Response(302, headers={"location": "https://elsewhere.example/"})

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            ch = WebhookChannel("ops", "https://hooks.example/x", [secret], client=client)
            with pytest.raises(DeliveryError, match="302"):
                await ch.send(message())

    asyncio.run(go())
    assert len(seen) == 1


def test_configuration_errors_do_not_echo_key_material() -> None:
    bad = "whsec_" + "not*base64*at*all" * 2
    with pytest.raises(WebhookKeyError) as err:
        WebhookChannel("ops", "https://hooks.example/x", [bad])
    assert "not*base64" not in str(err.value) and "key 1" in str(err.value)
    short = "whsec_" + base64.b64encode(b"tooshort").decode()
    with pytest.raises(WebhookKeyError) as err:
        WebhookChannel("ops", "https://hooks.example/x", [short])
    assert short[6:] not in str(err.value)
    with pytest.raises(WebhookKeyError, match="not a whsec_"):
        WebhookChannel("ops", "https://hooks.example/x", ["hunter2"])
    _, public = generate_key("ed25519")
    assert public is not None
    with pytest.raises(WebhookKeyError, match="cannot sign"):
        WebhookChannel("ops", "https://hooks.example/x", [public])


def test_url_must_be_https_unless_loopback_http_is_allowed() -> None:
    secret, _ = generate_key()
    with pytest.raises(ValueError, match="https"):
        WebhookChannel("ops", "http://hooks.example/x", [secret], allow_http_loopback=True)
    with pytest.raises(ValueError, match="https"):
        WebhookChannel("ops", "http://127.0.0.1:9/x", [secret])
    with pytest.raises(ValueError, match="name"):
        WebhookChannel("bad name", "https://hooks.example/x", [secret])
    ch = WebhookChannel("ops", "http://127.0.0.1:9/x", [secret], allow_http_loopback=True)
    assert ch.name == "webhook:ops"
    assert secret not in repr(ch) and "127.0.0.1" not in repr(ch)
