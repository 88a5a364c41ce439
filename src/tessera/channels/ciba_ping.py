"""The CIBA ping callback (OpenID CIBA Core 1.0 §10.2) as an outbox channel.

One ``POST`` to the client's ``backchannel_client_notification_endpoint`` with ``Authorization: Bearer
<client_notification_token>`` and the JSON body ``{"auth_req_id": …}`` exactly. Redirects are not
followed; a 2xx is delivered; 3xx and 4xx are final (the client refused it; a retry would not help);
5xx and network errors are retried by the outbox with backoff. The transport is the server's guarded
one: no private or loopback targets unless development mode allows them.
"""

from __future__ import annotations

import json

import httpx

from .message import DeliveryError, Message

__all__ = ["CibaPingChannel"]


class CibaPingChannel:
    name = "ciba-ping"

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    def __repr__(self) -> str:
        return "CibaPingChannel()"

    async def send(self, message: Message) -> None:
        endpoint = message.data.get("endpoint")
        token = message.data.get("token")
        auth_req_id = message.data.get("auth_req_id")
        if not all(isinstance(v, str) and v for v in (endpoint, token, auth_req_id)):
            raise DeliveryError("the ping message is incomplete", permanent=True)
        body = json.dumps({"auth_req_id": auth_req_id}, separators=(",", ":"))
        try:
            r = await self._client.post(
                str(endpoint),
                content=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                follow_redirects=False,
            )
        except httpx.ConnectError as e:
            if "non-public" in str(e):  # the guarded transport refused a private or loopback target
                raise DeliveryError(
                    "the client notification endpoint is not a public address", permanent=True
                ) from None
            raise DeliveryError(f"the client notification endpoint could not be reached ({type(e).__name__})") from None
        except httpx.HTTPError as e:
            raise DeliveryError(f"the client notification endpoint could not be reached ({type(e).__name__})") from None
        if 200 <= r.status_code < 300:
            return
        if r.status_code < 500:
            raise DeliveryError(f"the client notification endpoint answered {r.status_code}", permanent=True)
        raise DeliveryError(f"the client notification endpoint answered {r.status_code}")
