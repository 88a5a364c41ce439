"""Flows in force on a live server (docs/flows.md): published with the CLI, applied at registration and
at the token endpoint, approved by people on the approval page, recorded in the audit chain.

One module server (SQLite) carries the examples of ``examples/flows`` (people and groups as the
examples name them), a hook flow calling a loopback HTTP server and a GitHub-Actions-shaped fake
issuer; each test uses its own clients. The server reloads published flows every second. A second
server on PostgreSQL makes the decision record fail to be written (a trigger) and has a record
tampered with, so the main server's chain stays intact and is verified at the end.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import psycopg
import pytest

from approval_support import Mailbox, approval_server
from federation_support import FakeIssuer, github_actions_claims
from flows_support import FlowWorld, HookServer, approval_id, write_flows
from support import Postgres, assert_oauth_error

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples" / "flows"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
AUD = "tessera"  # what the fake CI issuer's tokens are issued for
DEPLOY = "https://deploy.example.com"
PROD = "https://prod.payments.example"
STAGING = "https://staging.payments.example"
LIFETIME = 900  # TESSERA_ACCESS_TOKEN_LIFETIME
HOOK_TIMEOUT = 1


@pytest.fixture(scope="module")
def hooks() -> Iterator[HookServer]:
    h = HookServer().start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def ci() -> Iterator[FakeIssuer]:
    idp = FakeIssuer(algs=("RS256",)).start()
    yield idp
    idp.stop()


def hook_flow(hooks: HookServer) -> dict[str, Any]:
    """Clients named hook-<name> are checked by the loopback hook <name> (no reason of its own: the
    record keeps the hook's)."""
    steps = [
        {
            "id": name,
            "when": f'client.id == "hook-{name}"',
            "call": {"url": f"{hooks.url}/{name}", "timeout": HOOK_TIMEOUT},
        }
        for name in ("slow", "allow", "deny")
    ]
    return {
        "id": "hook-check",
        "description": "clients named hook-* are checked by a loopback risk hook",
        "on": "token.issue",
        "grants": ["client_credentials"],
        "when": 'client.id.startsWith("hook-")',
        "steps": steps,
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, hooks: HookServer, ci: FakeIssuer) -> Iterator[FlowWorld]:
    base = tmp_path_factory.mktemp("flows-live")
    trusted = [
        {
            "name": "ci",
            "issuer": ci.issuer,
            "algorithms": ["RS256"],
            "audiences": [AUD],
            "shared": True,
            "condition": 'assertion.repository_owner_id == "1234567"',
            "bindings": [
                {
                    "when": 'assertion.ref.startsWith("refs/")',
                    "audiences": [DEPLOY],
                    "scopes": ["deploy", "read"],
                    "max_lifetime": LIFETIME,
                }
            ],
        }
    ]
    srv = approval_server(
        base / "data",
        TESSERA_KEY_REFRESH_INTERVAL="1",
        TESSERA_DEV_MODE="true",  # the hook is on loopback
        TESSERA_TRUSTED_ISSUERS=json.dumps(trusted),
        TESSERA_ACCESS_TOKEN_LIFETIME=str(LIFETIME),
    )
    flows = pathlib.Path(shutil.copytree(EXAMPLES, base / "flows"))
    write_flows(flows, hook_flow(hooks))
    srv.start()
    w: FlowWorld | None = None
    try:
        with srv.admin() as admin:
            w = FlowWorld(srv, Mailbox(srv.outbox_file), admin)  # type: ignore[attr-defined]
            # The groups the examples name: team-leads (onboarding), payments-leads (two approvers).
            w.approver("lead", ["team-leads"])
            w.approver("pay1", ["payments-leads"])
            w.approver("pay2", ["payments-leads"])
            w.approver("keeper", ["security"])
            w.onboarding_approver = "lead"
            out = w.publish(flows)
            for fid in ("agent-onboarding", "payments-production", "branch-workloads", "hook-check"):
                assert f"published {fid} " in out, out
            yield w
    finally:
        if w is not None:
            w.close()
        srv.stop()
    r = srv.cli("audit", "verify")
    assert r.returncode == 0, "audit chain broken: " + r.stdout + r.stderr


def in_force(w: FlowWorld) -> dict[str, dict[str, Any]]:
    r = w.flows("list", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return {e["flow"]: e for e in json.loads(r.stdout)}


def lifetime(r: httpx.Response) -> int:
    assert r.status_code == 200, r.text
    claims = jwt.decode(r.json()["access_token"], options={"verify_signature": False})
    assert r.json()["expires_in"] == claims["exp"] - claims["iat"]
    return int(claims["exp"] - claims["iat"])


def versions(record: dict[str, Any]) -> dict[str, str]:
    return {f["id"]: f["version"] for f in record["data"]["flows"]}


def trace(record: dict[str, Any], flow: str) -> list[str]:
    """The steps of one flow that a decision record's trace shows."""
    return [t for t in record["data"]["trace"] if t.startswith(flow + "/")]


def denied(r: httpx.Response, error: str, reason: str) -> None:
    assert_oauth_error(r, 400, error)
    assert reason in r.json().get("error_description", ""), r.text


# -- 1. onboarding ------------------------------------------------------------------------------------------


def test_onboarding_needs_an_owner_and_the_team_leads_approval(world: FlowWorld) -> None:
    r = world.register(client_name="stray-agent")
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_client_metadata"
    assert "owner" in r.json()["error_description"], r.text

    r = world.register(client_name="invoice-agent", contacts=["alice@example.com"])
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["onboarding"]["status"] == "pending"
    (rid,) = body["onboarding"]["approvals"]
    creds = (body["client_id"], body["client_secret"])
    assert world.approval(rid)["status"] == "pending"
    (decision,) = world.decisions(body["client_id"])
    assert decision["data"]["trigger"] == "client.register"
    assert decision["data"]["outcome"] == "pending" and decision["data"]["approval_requests"] == [rid]

    r = world.token(creds)
    assert_oauth_error(r, 400, "authorization_pending")

    world.decide("lead", rid, "approve")
    r = world.token(creds)
    assert r.status_code == 200, r.text
    assert "onboarding" not in world.admin.get(f"/clients/{creds[0]}").json()
    assert any(e["event"] == "client.onboarded" and e["subject"] == creds[0] for e in world.audit())

    r = world.register(client_name="rogue-agent", contacts=["mallory@example.com"])
    assert r.status_code == 201, r.text
    (rid2,) = r.json()["onboarding"]["approvals"]
    rogue = (r.json()["client_id"], r.json()["client_secret"])
    world.decide("lead", rid2, "deny")
    assert world.approval(rid2)["status"] == "denied"
    denied(world.token(rogue), "unauthorized_client", "onboarding")


def test_onboarding_flows_apply_to_clients_the_operator_creates(world: FlowWorld) -> None:
    r = world.admin.post(
        "/clients",
        json={"client_name": "side-door-agent", "grant_types": ["client_credentials"], "scope": "read"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_client_metadata", r.text


# -- 2. two approvers for production payments -----------------------------------------------------------------


def test_production_payments_need_two_approvers_for_each_issuance(world: FlowWorld) -> None:
    creds = world.client(
        "billing-agent", "payments.write read", contacts=["alice@example.com"], allowed_resources=[PROD, STAGING]
    )
    prod = {"scope": "payments.write", "resource": PROD}
    rid = approval_id(world.token(creds, **prod))
    request = world.approval(rid)
    assert request["quorum"] == 2 and request["assurance"] == "aal2"
    assert sorted(request["eligible"]) == ["pay1", "pay2"]

    world.decide("pay1", rid, "approve")
    assert approval_id(world.token(creds, **prod)) == rid  # the same request, still waiting for the second
    world.decide("pay2", rid, "approve")
    assert world.approval(rid)["status"] == "approved"

    r = world.token(creds, **prod)
    assert lifetime(r) == 300  # the flow's limit
    assert r.json()["scope"] == "payments.write"
    allowed = world.decisions("billing-agent")[-1]
    assert allowed["data"]["outcome"] == "allow"
    assert trace(allowed, "payments-production") == [
        "payments-production/owner:passed",
        "payments-production/prod-approval:approved",
        "payments-production/short-lived:applied",
    ]

    # One approval covers one issuance: the identical request waits for a new one.
    again = approval_id(world.token(creds, **prod))
    assert again != rid
    assert world.approval(again)["status"] == "pending"

    # Not production: no approval, still short-lived; not payments: not this flow's business.
    assert lifetime(world.token(creds, scope="payments.write", resource=STAGING)) == 300
    assert lifetime(world.token(creds, scope="read", resource=PROD)) == LIFETIME


# -- 3. federated CI tokens from branches ----------------------------------------------------------------------


def exchange(w: FlowWorld, subject_token: str) -> httpx.Response:
    return w.http.post(
        w.srv.token_endpoint,
        data={"grant_type": TOKEN_EXCHANGE, "subject_token": subject_token, "subject_token_type": JWT_TYPE},
    )


def test_branches_other_than_main_get_five_minutes_of_read(world: FlowWorld, ci: FakeIssuer) -> None:
    main = exchange(world, ci.mint(github_actions_claims(AUD, ref="refs/heads/main")))
    assert lifetime(main) == LIFETIME
    assert main.json()["scope"] == "deploy read"

    head = world.head()
    branch = exchange(world, ci.mint(github_actions_claims(AUD, ref="refs/heads/feature-x")))
    assert lifetime(branch) <= 300
    assert branch.json()["scope"] == "read"
    records = [e for e in world.audit(head) if e["event"] == "flow.decision"]
    assert any("branch-workloads/branch-cap:applied" in e["data"]["trace"] for e in records), records

    tag = exchange(world, ci.mint(github_actions_claims(AUD, ref="refs/tags/v1.2.0")))
    assert lifetime(tag) <= 300 and tag.json()["scope"] == "read"


# -- 4. revocation cancels pending approvals ------------------------------------------------------------------


def test_revoking_a_client_cancels_its_pending_approvals(world: FlowWorld) -> None:
    creds = world.client("refund-agent", "payments.write", contacts=["bob@example.com"], allowed_resources=[PROD])
    rid = approval_id(world.token(creds, scope="payments.write", resource=PROD))
    link = world.link("pay1", rid)

    r = world.admin.post("/tokens/revoke", json={"client_id": "refund-agent"})
    assert r.status_code == 200, r.text
    assert r.json()["approvals_cancelled"] == 1

    assert world.approval(rid)["status"] == "cancelled"
    page = world.people["pay1"].page.get(link)
    assert 'data-reason="cancelled"' in page.text or "was cancelled" in page.text, page.text
    assert 'id="decide"' not in page.text  # nothing left to decide
    assert any(e["event"] == "approval.cancelled" and e["data"].get("request_id") == rid for e in world.audit())


# -- 5. quarantine lifted by an approval ----------------------------------------------------------------------


def quarantine_and_approve_the_lift(w: FlowWorld, client_id: str) -> tuple[str, str]:
    """A client that had a token, quarantined, refused, and the lift approved (not yet used)."""
    creds = w.client(client_id, contacts=["carol@example.com"])
    assert w.token(creds).status_code == 200

    r = w.admin.post(f"/clients/{client_id}/quarantine", json={"reason": "secret seen in a public log"})
    assert r.status_code == 200, r.text
    denied(w.token(creds), "unauthorized_client", "quarantined")

    r = w.admin.post(f"/clients/{client_id}/quarantine/lift", json={"approvers": ["keeper"], "quorum": 1})
    assert r.status_code == 200, r.text
    rid = r.json()["request_id"]
    denied(w.token(creds), "unauthorized_client", "quarantined")  # not before the approval
    w.decide("keeper", rid, "approve")
    assert w.approval(rid)["status"] == "approved"
    return creds


def test_quarantine_is_lifted_by_an_approval(world: FlowWorld) -> None:
    creds = quarantine_and_approve_the_lift(world, "export-agent")
    # The next request lifts the quarantine (see the test below for the answer it gets itself).
    world.token(creds)
    for _ in range(2):
        r = world.token(creds)
        assert r.status_code == 200, r.text  # lifted for good, not for one token
    events = [e["event"] for e in world.audit() if e["subject"] == "export-agent"]
    for event in ("client.quarantined", "client.quarantine_lift_requested", "client.quarantine_lifted"):
        assert event in events, events
    assert events.index("client.quarantined") < events.index("client.quarantine_lifted")
    assert events.count("client.quarantine_lifted") == 1
    assert "quarantined" not in world.admin.get("/clients/export-agent").json()


def test_the_request_that_lifts_a_quarantine_gets_its_token(world: FlowWorld) -> None:
    creds = quarantine_and_approve_the_lift(world, "import-agent")
    r = world.token(creds)
    assert r.status_code == 200, r.text


# -- 6. a pending request finishes on the version it started on --------------------------------------------


def release_flow(*, frozen: bool) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [
        {
            "id": "release-manager",
            "approve": {"people": ["lead"], "quorum": 1, "assurance": "aal2", "timeout": 600},
            "reason": "the release manager did not approve",
        }
    ]
    if frozen:
        steps.insert(
            0, {"id": "freeze", "when": '"release" in request.scope', "deny": {}, "reason": "releases are frozen"}
        )
    return {
        "id": "release-gate",
        "description": "release tokens need the release manager",
        "on": "token.issue",
        "grants": ["client_credentials"],
        "when": '"release" in request.scope',
        "steps": steps,
    }


def test_a_pending_request_completes_under_the_version_it_started_on(world: FlowWorld, tmp_path: pathlib.Path) -> None:
    world.publish(write_flows(tmp_path / "a", release_flow(frozen=False)))
    version_a = in_force(world)["release-gate"]["version"]
    creds = world.client("release-agent", "release read")
    rid = approval_id(world.token(creds, scope="release"))
    assert versions(world.decisions("release-agent")[-1])["release-gate"] == version_a

    world.publish(write_flows(tmp_path / "b", release_flow(frozen=True)))
    version_b = in_force(world)["release-gate"]["version"]
    assert version_b != version_a

    # A new request is decided by B at once.
    denied(world.token(creds, scope="release read"), "unauthorized_client", "releases are frozen")
    assert versions(world.decisions("release-agent")[-1])["release-gate"] == version_b
    # The pending one is still pending under A (B would deny it), then completes under A.
    assert approval_id(world.token(creds, scope="release")) == rid
    world.decide("lead", rid, "approve")
    r = world.token(creds, scope="release")
    assert r.status_code == 200, r.text
    record = world.decisions("release-agent")[-1]
    assert record["data"]["outcome"] == "allow"
    assert versions(record)["release-gate"] == version_a
    assert trace(record, "release-gate") == ["release-gate/release-manager:approved"]

    # The approval was used: the same request again is B's.
    denied(world.token(creds, scope="release"), "unauthorized_client", "releases are frozen")
    assert versions(world.decisions("release-agent")[-1])["release-gate"] == version_b


def retry_flow(approver: str) -> dict[str, Any]:
    return {
        "id": "retry-gate",
        "description": "retry tokens need a manager",
        "on": "token.issue",
        "grants": ["client_credentials"],
        "when": '"retry" in request.scope',
        "steps": [{"id": "manager", "approve": {"people": [approver], "quorum": 1, "assurance": "aal2"}}],
    }


def test_a_refused_request_is_decided_by_the_version_in_force(world: FlowWorld, tmp_path: pathlib.Path) -> None:
    world.publish(write_flows(tmp_path / "a", retry_flow("lead")))
    creds = world.client("retry-agent", "retry")
    rid = approval_id(world.token(creds, scope="retry"))
    world.decide("lead", rid, "deny")
    denied(world.token(creds, scope="retry"), "unauthorized_client", "approval denied")

    # Another manager now: nothing is open or granted for this request, so the new version decides it
    # (a new approval request, to the new manager).
    world.publish(write_flows(tmp_path / "b", retry_flow("keeper")))
    version_b = in_force(world)["retry-gate"]["version"]
    r = world.token(creds, scope="retry")
    assert versions(world.decisions("retry-agent")[-1])["retry-gate"] == version_b, r.text
    fresh = approval_id(r)
    assert fresh != rid and world.approval(fresh)["eligible"] == ["keeper"]


# -- 7. rollback -------------------------------------------------------------------------------------------


def cap_flow(seconds: int) -> dict[str, Any]:
    return {
        "id": "cap-agent-lifetime",
        "description": "the cap agent's tokens are short-lived",
        "on": "token.issue",
        "when": 'client.id == "cap-agent"',
        "steps": [{"id": "cap", "limit": {"lifetime": seconds}}],
    }


def test_rollback_restores_the_previous_version(world: FlowWorld, tmp_path: pathlib.Path) -> None:
    creds = world.client("cap-agent")
    world.publish(write_flows(tmp_path / "a", cap_flow(120)), wait=False)
    version_a = in_force(world)["cap-agent-lifetime"]["version"]
    world.publish(write_flows(tmp_path / "b", cap_flow(60)))
    version_b = in_force(world)["cap-agent-lifetime"]["version"]
    assert lifetime(world.token(creds)) == 60
    assert versions(world.decisions("cap-agent")[-1])["cap-agent-lifetime"] == version_b

    r = world.flows("rollback", "cap-agent-lifetime")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"rolled back cap-agent-lifetime to {version_a}" in r.stdout
    assert in_force(world)["cap-agent-lifetime"] == {
        "flow": "cap-agent-lifetime",
        "on": "token.issue",
        "version": version_a,
        "source": "published",
    }
    time.sleep(1.6)
    assert lifetime(world.token(creds)) == 120
    assert versions(world.decisions("cap-agent")[-1])["cap-agent-lifetime"] == version_a
    rolled = [e for e in world.audit() if e["event"] == "flow.rolled_back" and e["subject"] == "cap-agent-lifetime"]
    assert [e["data"] for e in rolled] == [{"flow": "cap-agent-lifetime", "version": version_a, "previous": version_b}]


# -- 8. hooks fail closed ----------------------------------------------------------------------------------


def test_a_hook_that_times_out_denies(world: FlowWorld, hooks: HookServer) -> None:
    hooks.delays["slow"] = HOOK_TIMEOUT + 2
    creds = world.client("hook-slow")
    started = time.monotonic()
    denied(world.token(creds), "unauthorized_client", "timeout")
    assert time.monotonic() - started < HOOK_TIMEOUT + 1.5  # the hook's timeout, not its delay
    record = world.decisions("hook-slow")[-1]
    assert record["data"]["outcome"] == "deny"
    assert trace(record, "hook-check") == ["hook-check/slow:failed"]
    assert record["data"]["reasons"] == ["hook-check/slow: timeout"]
    assert [name for name, _ in hooks.calls].count("slow") == 1


def test_a_hook_that_allows_allows_and_one_that_refuses_denies_with_its_reason(
    world: FlowWorld, hooks: HookServer
) -> None:
    hooks.answers["allow"] = {"allow": True}
    hooks.answers["deny"] = {"allow": False, "reason": "risk score 97 is above 80"}
    r = world.token(world.client("hook-allow"))
    assert r.status_code == 200, r.text
    assert trace(world.decisions("hook-allow")[-1], "hook-check") == [
        "hook-check/slow:skipped",
        "hook-check/allow:passed",
        "hook-check/deny:skipped",
    ]
    body = next(b for name, b in reversed(hooks.calls) if name == "allow")
    assert body["flow"] == "hook-check" and body["step"] == "allow"
    assert body["context"]["client"]["id"] == "hook-allow"

    denied(world.token(world.client("hook-deny")), "unauthorized_client", "risk score 97 is above 80")
    record = world.decisions("hook-deny")[-1]
    assert record["data"]["outcome"] == "deny"
    assert trace(record, "hook-check")[-1] == "hook-check/deny:failed"
    assert record["data"]["reasons"] == ["hook-check/deny: risk score 97 is above 80"]


# -- 9, 10. the decision record on PostgreSQL: unwritable, tampered ----------------------------------------


@pytest.fixture(scope="module")
def pg_world(tmp_path_factory: pytest.TempPathFactory, postgres: Postgres) -> Iterator[FlowWorld]:
    srv = approval_server(tmp_path_factory.mktemp("flows-pg") / "data", TESSERA_DATABASE_URL=postgres.create_database())
    # A flow that decides every token request of one client (no default flow applies to client credentials).
    audited = tmp_path_factory.mktemp("flows-pg-flows")
    (audited / "audited.yaml").write_text(
        "id: audited\non: token.issue\nwhen: 'client.id.startsWith(\"audited-\")'\nsteps:\n"
        "  - id: cap\n    limit: {lifetime: 900}\n"
    )
    published = srv.cli("flows", "publish", str(audited), "--yes")
    assert published.returncode == 0, published.stdout + published.stderr
    srv.start()
    try:
        with srv.admin() as admin:
            w = FlowWorld(srv, Mailbox(srv.outbox_file), admin)  # type: ignore[attr-defined]
            yield w
            w.close()
    finally:
        srv.stop()


def sql(w: FlowWorld, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(w.srv.env["TESSERA_DATABASE_URL"], autocommit=True) as conn:
        cur = conn.execute(query, params)
        return list(cur.fetchall()) if cur.description else []


REFUSE_DECISIONS = """
CREATE FUNCTION refuse_flow_decision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.event = 'flow.decision' THEN RAISE EXCEPTION 'decision records refused by the test'; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_flow_decision BEFORE INSERT ON audit_log
  FOR EACH ROW EXECUTE FUNCTION refuse_flow_decision();
"""


@pytest.mark.postgres
def test_a_decision_that_cannot_be_recorded_denies(pg_world: FlowWorld) -> None:
    # The "audited" flow applies to every token request of this client: each one is a flow decision.
    creds = pg_world.client("audited-agent")
    assert pg_world.token(creds).status_code == 200
    assert pg_world.decisions("audited-agent")[-1]["data"]["flows"][0]["id"] == "audited"
    issued = sql(pg_world, "SELECT count(*) FROM issued_tokens WHERE client_id = 'audited-agent'")[0][0]

    sql(pg_world, REFUSE_DECISIONS)
    try:
        denied(pg_world.token(creds), "unauthorized_client", "could not be recorded")
        assert sql(pg_world, "SELECT count(*) FROM issued_tokens WHERE client_id = 'audited-agent'")[0][0] == issued
    finally:
        sql(pg_world, "DROP TRIGGER refuse_flow_decision ON audit_log; DROP FUNCTION refuse_flow_decision()")
    assert pg_world.token(creds).status_code == 200
    assert pg_world.srv.cli("audit", "verify").returncode == 0


@pytest.mark.postgres
def test_a_tampered_decision_record_breaks_the_chain(pg_world: FlowWorld) -> None:
    creds = pg_world.client("audited-tampered")
    assert pg_world.token(creds).status_code == 200
    seq = pg_world.decisions("audited-tampered")[-1]["seq"]
    assert pg_world.srv.cli("audit", "verify").returncode == 0

    sql(pg_world, "UPDATE audit_log SET data = replace(data, '\"allow\"', '\"deny\"') WHERE seq = %s", seq)
    assert json.loads(sql(pg_world, "SELECT data FROM audit_log WHERE seq = %s", seq)[0][0])["outcome"] == "deny"
    r = pg_world.srv.cli("audit", "verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"BROKEN at record {seq}" in r.stderr, r.stderr
