"""The demo's story: a CI job federates in, an agent asks to pay, Sam approves, a payments API verifies
offline, the agent is revoked, the audit chain verifies.

Each step does the real thing over real HTTP and checks what a user would check; a step that does not
see what it should raises ``StepFailed`` with what it saw instead. ``breaks`` makes one step fail on
purpose, for real (a token from another organisation, a denial, a rewritten audit record), so that the
failure path can be watched and tested.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tessera.demo.agent import Agent, CibaOutcome
from tessera.demo.report import Report, StepFailed
from tessera.demo.server import ServerError
from tessera.demo.world import APPROVER, CI_AUDIENCE, DEMO_ORG_ID, DEPLOY_API, PAYMENTS_API, World
from tessera.verify import Verifier
from tessera.verify.errors import Revoked, VerificationError

__all__ = ["BREAKS", "play"]

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
PAYMENT = {
    "type": "payment_initiation",
    "instructedAmount": {"currency": "EUR", "amount": "12.00"},
    "creditorName": "ACME Supplies",
}
BINDING_MESSAGE = "Pay ACME Supplies 12.00 EUR"

#: Steps that ``tessera demo --break STEP`` makes fail on purpose, and how.
BREAKS = {
    "federation": "the CI job's token comes from another organisation: the trust condition refuses it",
    "approval": "Sam denies the payment on the phone: the agent gets access_denied",
    "audit": "an audit record is rewritten in the database: the hash chain no longer verifies",
}


class _Recording(httpx.BaseTransport):
    """The relying party's only network access: every path it fetches is kept, to show what it asked."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def _claims_unverified(token: str) -> dict[str, Any]:
    """For display only (the verified claims come from ``tessera.verify``)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def _oauth_error(r: httpx.Response) -> str:
    try:
        body = r.json()
        return f"{body.get('error')}: {body.get('error_description', '')}".rstrip(": ")
    except ValueError:
        return f"HTTP {r.status_code}"


def play(world: World, report: Report, *, auto_approve: bool, timeout: float, breaks: str | None) -> None:
    """The whole story; raises ``StepFailed`` at the first step that fails."""
    with report.step("setup", "Tessera starts on the embedded default", numbered=False) as step:
        step.details["data_dir"] = str(world.data_dir)
        published = world.start()
        report.say("tessera serve is up", issuer=world.issuer, data=str(world.data_dir))
        report.say("SQLite database, key-encryption key and signing keys created on first start")
        for line in published:
            if line.startswith("published "):
                report.say("flow " + line.removeprefix("published "))
        report.say("trusted CI issuer", issuer=world.ci.issuer, condition=f"repository_owner_id == '{DEMO_ORG_ID}'")
        before = world.phone.count("enrolment.link")
        r = world.admin_call("POST", f"/people/{APPROVER['person_id']}/enrolment")
        if r.status_code != 202:
            raise StepFailed(f"the enrolment link could not be sent: {_oauth_error(r)}")
        link = world.phone.wait_for("enrolment.link", after=before)["data"]["link"]
        report.say("Sam's phone received a signed enrolment link (Standard Webhooks signature verified)")
        world.phone.enrol_totp(link)
        report.say("Sam enrolled an authenticator app (TOTP) through it")
        step.details.update(issuer=world.issuer, flows=[p.split()[1] for p in published if p.startswith("published")])

    _federation(world, report, broken=breaks == "federation")
    agent = Agent(world.issuer, world.registration_token, PAYMENTS_API)
    try:
        outcome = _agent_asks(world, report, agent, timeout)
        tokens = _approval(
            world, report, outcome, auto_approve=auto_approve, deny=breaks == "approval", timeout=timeout
        )
        verifier, transport = _relying_party(world, agent)
        try:
            _verification(report, verifier, transport, tokens["access_token"], agent.client_id)
            _revocation(world, report, verifier, tokens["access_token"], agent.client_id)
        finally:
            verifier.close()
            transport.close()
    finally:
        agent.close()
    _audit(world, report, tamper=breaks == "audit")


def _exchange(world: World, subject_token: str) -> httpx.Response:
    return httpx.post(
        world.issuer + "/oauth/token",
        data={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": JWT_TYPE,
            "audience": DEPLOY_API,
            "scope": "deploy read",
        },
        timeout=15,
    )


def _federation(world: World, report: Report, *, broken: bool) -> None:
    with report.step("federation", "A CI job federates in (RFC 8693 token exchange)") as step:
        org = "9999" if broken else DEMO_ORG_ID
        repository = "demo-org/payments-service" if not broken else "someone-else/payments-service"
        job = world.ci.job_token(CI_AUDIENCE, repository=repository, owner_id=org)
        report.say("the CI platform minted the job's identity token", sub=_claims_unverified(job)["sub"])
        r = _exchange(world, job)
        if r.status_code != 200:
            raise StepFailed(f"Tessera refused the CI job's token: {_oauth_error(r)}")
        deploy = Verifier(world.issuer, audiences=[DEPLOY_API], require_status=True, background_refresh=False)
        try:
            claims = deploy.verify(r.json()["access_token"])
        finally:
            deploy.close()
        lifetime = claims["exp"] - claims["iat"]
        report.say("exchanged for a Tessera token, no secret stored anywhere", sub=claims["sub"])
        report.say("the deploy API verified it", aud=claims["aud"], scope=claims["scope"], lifetime=f"{lifetime} s")

        again = _exchange(world, job)
        if again.status_code == 200:
            raise StepFailed("the same CI token was accepted twice (jti replay not refused)")
        report.say("the same job token presented again is refused", error=_oauth_error(again).split(":")[0])

        branch = world.ci.job_token(CI_AUDIENCE, repository=repository, owner_id=org, ref="refs/heads/feature-x")
        r = _exchange(world, branch)
        if r.status_code != 200:
            raise StepFailed(f"the feature-branch job was refused: {_oauth_error(r)}")
        body = r.json()
        if body.get("scope") != "read" or int(body.get("expires_in", 0)) > 300:
            raise StepFailed(f"flow branch-workloads did not cap the feature-branch token: {body.get('scope')!r}")
        report.say(
            "a job on a feature branch gets less (flow branch-workloads)",
            scope=body["scope"],
            lifetime=f"{body['expires_in']} s",
        )
        step.details.update(sub=claims["sub"], scope=claims["scope"], lifetime=lifetime, branch_scope=body["scope"])


def _agent_asks(world: World, report: Report, agent: Agent, timeout: float) -> CibaOutcome:
    with report.step("agent", "An agent asks for a payment scope (flow agent-payments, CIBA)") as step:
        client_id = agent.register("payments-agent", contacts=[str(APPROVER["email"])])
        report.say("the agent registered itself (RFC 7591)", client_id=client_id)
        r = agent.client_credentials("payments")
        if r.status_code == 200:
            raise StepFailed("the agent got a payments token on its own authority: flow agent-payments did not apply")
        report.say("on its own authority it is refused", error=_oauth_error(r))
        ack = agent.ask(
            str(APPROVER["person_id"]),
            binding_message=BINDING_MESSAGE,
            details=[PAYMENT],
            acr="urn:tessera:aal1",
        )
        report.say("so it asks Sam through CIBA (/oauth/bc-authorize)", message=BINDING_MESSAGE)
        report.say(
            "acknowledged; the agent polls the token endpoint", expires_in=ack["expires_in"], interval=ack["interval"]
        )
        outcome = agent.poll(ack["auth_req_id"], int(ack["interval"]), timeout=timeout + 30)
        step.details.update(client_id=client_id, refused=_oauth_error(r), interval=ack["interval"])
        return outcome


def _approval(
    world: World, report: Report, outcome: CibaOutcome, *, auto_approve: bool, deny: bool, timeout: float
) -> dict[str, Any]:
    with report.step("approval", "Sam approves on the phone") as step:
        message = world.phone.wait_for("approval.requested")
        link = str(message["data"]["link"])
        report.say("a signed webhook brought Sam a one-time approval link", type=message["type"])
        report.link("Sam's approval link (open it in a browser)", link)
        if auto_approve:
            decision = "deny" if deny else "approve"
            tx, said = world.phone.decide(link, decision)
            report.say("the page showed", requester=tx.get("requester", "?"), message=tx.get("message", "?"))
            report.say(f"Sam entered the authenticator app's code and chose {decision}", page=said)
            if not outcome.done.wait(30):
                raise StepFailed("the agent did not get an answer within 30 s of the decision")
        else:
            _wait_for_a_person(world, report, outcome, link, timeout)
        if outcome.tokens is None:
            raise StepFailed(f"the agent got no token: {outcome.error}: {outcome.description}".rstrip(": "))
        report.say("the agent's poll got its tokens", polls=" → ".join(_squash(outcome.polls)))
        step.details.update(polls=outcome.polls, mode="auto" if auto_approve else "interactive")
        return outcome.tokens


def _squash(polls: list[str]) -> list[str]:
    out: list[str] = []
    for p in polls:
        if out and out[-1].split(" x")[0] == p:
            n = int(out[-1].split(" x")[1]) + 1 if " x" in out[-1] else 2
            out[-1] = f"{p} x{n}"
        else:
            out.append(p)
    return out


def _wait_for_a_person(world: World, report: Report, outcome: CibaOutcome, link: str, timeout: float) -> None:
    """Interactive: a person opens the link and types the code Sam's app shows; the demo waits for the
    agent's answer, at most ``timeout`` seconds."""
    report.say("open the link, check the payment, and approve with the code of Sam's authenticator app:")
    console = report.console
    deadline = time.monotonic() + timeout
    if not console.is_terminal:  # no live line: print each new code as the app would show it
        shown = ""
        while not outcome.done.wait(0.5) and time.monotonic() < deadline:
            if world.phone.code() != shown:
                shown = world.phone.code()
                report.say("Sam's authenticator app shows", code=shown)
    else:
        with console.status("") as status:
            while not outcome.done.wait(0.5) and time.monotonic() < deadline:
                left = 30 - int(time.time()) % 30
                status.update(
                    f"Sam's authenticator app shows [bold]{world.phone.code()}[/] ({left} s) — waiting for you "
                    f"({int(deadline - time.monotonic())} s left)"
                )
    if not outcome.done.is_set():
        raise StepFailed(f"no decision on the approval page within {timeout:.0f} s (--timeout)")


def _relying_party(world: World, agent: Agent) -> tuple[Verifier, _Recording]:
    transport = _Recording()
    verifier = Verifier(
        world.issuer,
        audiences=[PAYMENTS_API],
        max_act_depth=1,
        allowed_actors=[agent.client_id],
        require_status=True,
        background_refresh=False,
        transport=transport,
    )
    return verifier, transport


def _verification(report: Report, verifier: Verifier, transport: _Recording, token: str, client_id: str) -> None:
    with report.step("verification", "The payments API verifies the token offline (tessera.verify)") as step:
        try:
            claims = verifier.verify(token)
        except VerificationError as e:
            raise StepFailed(f"the payments API refused the token: {e}") from None
        expected = {"sub": APPROVER["person_id"], "act": {"sub": client_id}, "authorization_details": [PAYMENT]}
        for name, value in expected.items():
            if claims.get(name) != value:
                raise StepFailed(f"the token's {name} is {claims.get(name)!r}, not {value!r}")
        lifetime = claims["exp"] - claims["iat"]
        if lifetime > 300:
            raise StepFailed(f"flow agent-payments did not cap the token's lifetime ({lifetime} s)")
        report.say("signature, issuer, audience, expiry, delegation and status checked", sub=claims["sub"])
        report.say("acting for Sam", act=claims["act"]["sub"], acr=claims["acr"], lifetime=f"{lifetime} s")
        report.say("what Sam approved travels in the token", amount="12.00 EUR", creditor=PAYMENT["creditorName"])
        fetched = list(transport.paths)
        for _ in range(3):
            verifier.verify(token)
        if transport.paths != fetched:
            raise StepFailed(f"verifying again called the issuer: {transport.paths[len(fetched) :]}")
        report.say(
            "it fetched only public keys and the status list; verifying again made no request",
            fetched=", ".join(fetched),
        )
        step.details.update(sub=claims["sub"], act=claims["act"], acr=claims["acr"], lifetime=lifetime, fetched=fetched)


def _revocation(world: World, report: Report, verifier: Verifier, token: str, client_id: str) -> None:
    with report.step("revocation", "The agent is revoked; the revocation reaches the payments API") as step:
        before = world.phone.count("flow.notice")
        r = world.admin_call("POST", "/tokens/revoke", {"client_id": client_id})
        if r.status_code != 200 or r.json().get("revoked", 0) < 1:
            raise StepFailed(f"the revocation did not revoke the agent's token: HTTP {r.status_code} {r.text[:200]}")
        t0 = time.monotonic()
        report.say(
            "an operator revoked every token of the agent (POST /admin/tokens/revoke)", revoked=r.json()["revoked"]
        )
        cached = 0
        deadline = t0 + 20  # the status list ttl (5 s) plus a margin
        while True:
            try:
                verifier.verify(token)
                cached += 1
            except Revoked:
                break
            except VerificationError as e:
                raise StepFailed(f"the payments API refused the token for another reason: {e}") from None
            if time.monotonic() > deadline:
                raise StepFailed("the payments API still accepts the revoked token 20 s later")
            time.sleep(0.25)
        seen = time.monotonic() - t0
        if cached:
            report.say("its cached status list is still fresh (ttl 5 s): the token passes", times=cached)
        report.say(
            "once it refreshes the status list, the payments API refuses the token: revoked", after=f"{seen:.1f} s"
        )
        notice = world.phone.wait_for("flow.notice", after=before, timeout=15)
        report.say(
            "the owners were told (flow revocation-notice, on Sam's phone)", subject=notice["data"].get("subject", "")
        )
        step.details.update(revoked=r.json()["revoked"], seen_after=round(seen, 2), accepted_from_cache=cached)


def _audit(world: World, report: Report, *, tamper: bool) -> None:
    with report.step("audit", "The audit chain verifies (tessera audit)") as step:
        if tamper:
            db = world.data_dir / "tessera" / "tessera.db"
            with sqlite3.connect(db, timeout=10) as conn:
                conn.execute(
                    "UPDATE audit_log SET actor = 'someone-else' WHERE seq = "
                    "(SELECT MIN(seq) FROM audit_log WHERE event = 'ciba.redeemed')"
                )
            report.say("(--break audit) the record of the token's redemption was rewritten in the database")
        # Two CLI processes at once (each mostly spends its time importing): the chain is checked while
        # its head is signed; the checkpoint then covers at least what was checked.
        with ThreadPoolExecutor(2) as pool:
            verifying = pool.submit(world.server.cli, "audit", "verify")
            signing = pool.submit(world.server.cli, "audit", "checkpoint")
            try:
                out = verifying.result().stdout.strip()
            except ServerError as e:
                raise StepFailed(str(e)) from None
            checkpoint = json.loads(signing.result().stdout)
        report.say(out)
        report.say("the chain's head is signed (tessera audit checkpoint)", seq=checkpoint.get("seq", "?"))
        export = world.data_dir / "audit.jsonl"
        jwks = world.data_dir / "jwks.json"
        world.server.cli("audit", "export", "-o", str(export))
        jwks.write_text(httpx.get(world.issuer + "/oauth/jwks", timeout=10).text)
        verified = world.server.cli(
            "audit", "verify-export", str(export), "--jwks", str(jwks), "--issuer", world.issuer, "--require-checkpoint"
        ).stdout.strip()
        report.say("offline, with only the export and the public keys: " + verified.splitlines()[-1])
        events: dict[str, int] = {}
        for line in export.read_text().splitlines():
            name = json.loads(line)["event"]
            events[name] = events.get(name, 0) + 1
        shown = ["token.issued", "flow.decision", "approval.approved", "ciba.redeemed", "token.revoked"]
        report.say("among the records", **{k: events[k] for k in shown if k in events})
        step.details.update(records=sum(events.values()), events=events)
