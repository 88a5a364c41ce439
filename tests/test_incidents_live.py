"""Incident responses on a live server (docs/alerts.md): a token request from a source network never
seen for a client alerts its owner, who answers suspend and later resume on the alert page, confirmed
with a passkey on the approval page; the status list shows the client's tokens SUSPENDED and VALID
again; an operator's revoke quarantines the client; a trusted issuer's quarantine refuses its tokens
until an approval lifts it. Every step is in the audit chain, which verifies at the end.

A different source network is real: the test binds its HTTP client to 127.1.0.1 (all of 127/8 is
loopback on Linux), which is outside the 127.0.0.0/24 the other requests come from.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from approval_support import Mailbox, approval_server, form_fields
from federation_support import FakeIssuer, github_actions_claims
from flows_support import FlowWorld
from status_support import status_of, wait_for_status
from support import assert_oauth_error

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples" / "flows"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
AUD = "tessera"
VALID, INVALID, SUSPENDED = 0, 1, 2


@pytest.fixture(scope="module")
def ci() -> Iterator[FakeIssuer]:
    idp = FakeIssuer(algs=("RS256",)).start()
    yield idp
    idp.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, ci: FakeIssuer) -> Iterator[FlowWorld]:
    base = tmp_path_factory.mktemp("incidents-live")
    trusted = [
        {
            "name": "ci",
            "issuer": ci.issuer,
            "algorithms": ["RS256"],
            "audiences": [AUD],
            "shared": True,
            "condition": 'assertion.repository_owner_id == "1234567"',
            "bindings": [{"audiences": ["https://deploy.example.com"], "scopes": ["read"], "max_lifetime": 600}],
        }
    ]
    srv = approval_server(
        base / "data",
        TESSERA_KEY_REFRESH_INTERVAL="1",
        TESSERA_TRUSTED_ISSUERS=json.dumps(trusted),
        TESSERA_DEV_MODE="true",
    )
    flows = base / "flows"
    flows.mkdir()
    shutil.copy(EXAMPLES / "new-context-alert.yaml", flows)
    shutil.copy(EXAMPLES / "new-context-alert.test.yaml", flows)
    srv.start()
    w: FlowWorld | None = None
    try:
        with srv.admin() as admin:
            w = FlowWorld(srv, Mailbox(srv.outbox_file), admin)  # type: ignore[attr-defined]
            w.approver("olga", ["platform"])
            w.approver("keeper", ["security"])
            out = w.publish(flows)
            assert "published new-context-alert " in out, out
            yield w
    finally:
        if w is not None:
            w.close()
        srv.stop()
    r = srv.cli("audit", "verify")
    assert r.returncode == 0, "audit chain broken: " + r.stdout + r.stderr


def owned_client(w: FlowWorld, client_id: str, owner: str) -> tuple[str, str]:
    r = w.admin.put(f"/people/{owner}", json={"name": owner.title(), "channels": ["file"], "owns": [client_id]})
    assert r.status_code == 200, r.text
    return w.client(client_id, scope="read")


def from_elsewhere(w: FlowWorld) -> httpx.Client:
    """An HTTP client whose requests leave from 127.1.0.1: another /24 than the tests' usual 127.0.0.1."""
    return httpx.Client(timeout=15, transport=httpx.HTTPTransport(local_address="127.1.0.1"))


def alerts_for(w: FlowWorld, person: str) -> list[dict[str, Any]]:
    return [m for m in w.mb.all() if m["kind"] == "alert.opened" and m["data"].get("person_id") == person]


def alert_link(w: FlowWorld, person: str, client_id: str) -> str:
    """The response link of the latest alert about ``client_id`` sent to ``person`` (waits for the outbox)."""
    deadline = time.monotonic() + 15
    while True:
        found = [m for m in alerts_for(w, person) if f"Client: {client_id}\n" in m["text"]]
        if found:
            return str(found[-1]["data"]["link"])
        assert time.monotonic() < deadline, f"no alert about {client_id} for {person}"
        time.sleep(0.1)


def answer(w: FlowWorld, person: str, alert_link: str, response: str) -> httpx.Response:
    """On the alert page choose ``response``, then confirm it with the passkey on the approval page."""
    a = w.people[person]
    page = a.page.get(alert_link)
    assert page.status_code == 200, page.text
    assert f'id="respond-{response}"' in page.text, page.text
    fields = form_fields(page.text, "respond")
    fields["response"] = response
    r = a.page.post_form(alert_link, fields)
    assert r.status_code == 303, r.text
    approve_url = r.headers["location"]
    assert "/approve/" in approve_url
    done = a.page.decide_with_passkey(approve_url, "approve", a.device)
    assert done.status_code == 200 and 'id="outcome"' in done.text, done.text
    return done


def test_a_new_network_alert_answered_with_suspend_then_resume(world: FlowWorld) -> None:
    creds = owned_client(world, "deploy-bot", "olga")
    first = world.token(creds)  # the first context of a client is learnt, not news
    assert first.status_code == 200, first.text
    again = world.token(creds)
    assert again.status_code == 200
    assert alerts_for(world, "olga") == []

    with from_elsewhere(world) as other:
        stranger = other.post(world.srv.token_endpoint, data={"grant_type": "client_credentials"}, auth=creds)
    assert stranger.status_code == 200, stranger.text  # an alert does not hold the request back
    [message] = world.mb.wait("alert.opened", "olga")
    assert message["data"]["new"] == ["network"]
    assert "127.1.0.0/24" in message["text"]
    link = message["data"]["link"]
    assert re.search(r"/alert/[A-Za-z0-9_-]{40,}$", link)
    tokens = [first.json()["access_token"], again.json()["access_token"], stranger.json()["access_token"]]
    assert all(status_of(t) == VALID for t in tokens)

    # The same new network again is known now: no second alert.
    with from_elsewhere(world) as other:
        assert other.post(world.srv.token_endpoint, data={"grant_type": "client_credentials"}, auth=creds).is_success
    assert len(alerts_for(world, "olga")) == 1

    # A link alone changes nothing: the choice is confirmed with the owner's passkey.
    page = world.people["olga"].page.get(link)
    assert "127.1.0.0/24" in page.text and 'id="respond-acknowledge"' in page.text
    answer(world, "olga", link, "suspend")

    [alert] = world.admin.get("/alerts", params={"status": "suspended"}).json()
    assert alert["client_id"] == "deploy-bot" and alert["history"][0]["by"] == "person:olga"
    assert all(wait_for_status(t, SUSPENDED) == SUSPENDED for t in tokens)
    refused = world.token(creds)
    assert_oauth_error(refused, 400, "unauthorized_client")
    assert "suspended" in refused.json()["error_description"]
    # A suspension is not the client's to undo (RFC 7592 update keeps the server's markers).
    assert "suspended" in world.admin.get("/clients/deploy-bot").json()

    page = world.people["olga"].page.get(link)
    assert 'id="respond-resume"' in page.text and 'id="respond-acknowledge"' not in page.text
    answer(world, "olga", link, "resume")
    assert all(wait_for_status(t, VALID) == VALID for t in tokens)
    assert world.token(creds).status_code == 200
    assert world.admin.get(f"/alerts/{alert['alert_id']}").json()["status"] == "resumed"

    events = [e["event"] for e in world.audit() if e["subject"] == "deploy-bot"]
    for event in ("alert.opened", "client.suspended", "alert.suspended", "client.resumed", "alert.resumed"):
        assert event in events, events
    assert events.index("client.suspended") < events.index("client.resumed")


def test_an_owner_is_needed_to_answer_and_a_bad_choice_changes_nothing(world: FlowWorld) -> None:
    creds = owned_client(world, "report-bot", "olga")
    assert world.token(creds).status_code == 200
    with from_elsewhere(world) as other:
        assert other.post(world.srv.token_endpoint, data={"grant_type": "client_credentials"}, auth=creds).is_success
    link = alert_link(world, "olga", "report-bot")
    a = world.people["olga"]
    page = a.page.get(link)
    fields = form_fields(page.text, "respond")

    # Not a choice this alert offers now: refused, nothing opened.
    before = len(world.admin.get("/approvals").json())
    r = a.page.post_form(link, {**fields, "response": "resume"})
    assert r.status_code == 409, r.text
    # A forged form (no CSRF token bound to this session and link) is refused.
    r = httpx.post(link, data={"response": "suspend"}, headers={"Origin": world.srv.issuer})
    assert r.status_code == 403, r.text
    # An unknown link.
    assert httpx.get(link[:-4] + "AAAA").status_code == 404
    # The choice opened an approval only for the person whose link it was; not answering it changes nothing.
    r = a.page.post_form(link, {**fields, "response": "suspend"})
    assert r.status_code == 303
    assert world.token(creds).status_code == 200
    after = world.admin.get("/approvals").json()
    assert len(after) == before + 1
    assert world.admin.get("/clients/report-bot").json().get("suspended") is None


def test_an_operator_revokes_from_an_alert_and_the_client_is_quarantined(world: FlowWorld) -> None:
    creds = owned_client(world, "batch-bot", "olga")
    token = world.token(creds).json()["access_token"]
    with from_elsewhere(world) as other:
        assert other.post(world.srv.token_endpoint, data={"grant_type": "client_credentials"}, auth=creds).is_success
    alert = next(a for a in world.admin.get("/alerts").json() if a["client_id"] == "batch-bot")

    r = world.admin.post(f"/alerts/{alert['alert_id']}/respond", json={"response": "resume"})
    assert r.status_code == 409, r.text  # not suspended
    r = world.admin.post(f"/alerts/{alert['alert_id']}/respond", json={"response": "explode"})
    assert r.status_code == 400, r.text
    r = world.admin.post(f"/alerts/{alert['alert_id']}/respond", json={"response": "revoke"})
    assert r.status_code == 200 and r.json()["status"] == "revoked", r.text
    assert r.json()["choices"] == []

    assert wait_for_status(token, INVALID) == INVALID
    refused = world.token(creds)
    assert_oauth_error(refused, 400, "unauthorized_client")
    assert "quarantined" in refused.json()["error_description"]
    events = [e for e in world.audit() if e["subject"] == "batch-bot"]
    revoked = [e for e in events if e["event"] == "alert.revoked"]
    assert revoked and revoked[0]["actor"] != "flows"

    listed = world.srv.cli("alerts", "list", "--status", "revoked")
    assert listed.returncode == 0 and f"{alert['alert_id']}\tbatch-bot\trevoked\tnetwork" in listed.stdout, listed
    again = world.srv.cli("alerts", "respond", alert["alert_id"], "suspend")
    assert again.returncode != 0 and "cannot be answered" in again.stderr, again


def exchange(w: FlowWorld, subject_token: str) -> httpx.Response:
    return w.http.post(
        w.srv.token_endpoint,
        data={"grant_type": TOKEN_EXCHANGE, "subject_token": subject_token, "subject_token_type": JWT_TYPE},
    )


def test_a_quarantined_issuer_is_refused_until_an_approval_lifts_it(world: FlowWorld, ci: FakeIssuer) -> None:
    claims = github_actions_claims(AUD)
    assert exchange(world, ci.mint(claims)).status_code == 200

    r = world.admin.post("/issuers/ci/quarantine", json={"reason": "signing key leaked"})
    assert r.status_code == 200 and r.json()["reason"] == "signing key leaked", r.text
    refused = exchange(world, ci.mint(claims))
    assert_oauth_error(refused, 400, "invalid_request")  # RFC 8693 §2.2.2: the subject token is refused
    assert "quarantined" in refused.json()["error_description"]
    assert world.admin.post("/issuers/nope/quarantine", json={}).status_code == 404

    r = world.admin.post("/issuers/ci/quarantine/lift", json={"approvers": ["keeper"], "quorum": 1})
    assert r.status_code == 200, r.text
    rid = r.json()["request_id"]
    assert exchange(world, ci.mint(claims)).status_code == 400  # not before the approval
    world.decide("keeper", rid, "approve")
    assert exchange(world, ci.mint(claims)).status_code == 200
    assert world.admin.get("/issuers/ci/quarantine").status_code == 404
    events = [e["event"] for e in world.audit() if e["subject"] == "ci"]
    for event in ("issuer.quarantined", "issuer.quarantine_lift_requested", "issuer.quarantine_lifted"):
        assert event in events, events
