"""No-call-home verification end to end (docs/verification.md; IETF draft-ietf-oauth-status-list-20, RFC 6750,
RFC 7009, RFC 7517): a live Tessera and a relying party on loopback, both real HTTP servers.

The relying party is a Starlette app behind ``tessera.verify.asgi.BearerTokenMiddleware``, served by uvicorn in a
background thread. Its ``Verifier`` reaches Tessera over loopback HTTP (a real transport that only records what it
sends) and reads an injected clock that stands still until the test moves it: no test sleeps for time to pass.

- revocation (RFC 7009) reaches the relying party when its cached status list's ``ttl`` runs out, not before, and
  the relying party never calls the issuer about a token (it fetches the metadata, the JWKS and the list only);
- Tessera stopped: the relying party keeps verifying on cached keys and lists, reporting ``stale``, until
  ``status_max_age`` (counted from the list's ``iat``; ``keys_max_stale`` for tokens without a status claim), then
  refuses with ``trust_data_stale``; Tessera restarted: it recovers once its back-off window (5 s, doubling) ends;
- key rotation: tokens of the retired key keep verifying; tokens of the promoted key verify at once (the next key
  was already published); tokens of a key the relying party has not seen are found by one unknown-``kid`` refetch;
  once the retired key is removed and the relying party refreshes its JWKS, its tokens are ``unknown_key``;
- an offline trust bundle (``tessera bundle export``) verifies valid tokens, refuses revoked ones and fails closed
  after its ``exp``, with no network access;
- ``tessera verify`` checks a token against the live issuer and names the reason for a refusal.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from status_support import basic, entry, header, issue, payload, status_of
from support import LiveServer, keys_by_state
from tessera.clock import FrozenClock
from tessera.runtime import open_runtime
from tessera.settings import load_settings
from tessera.verify import Verifier
from tessera.verify.asgi import BearerTokenMiddleware

METADATA = "/.well-known/oauth-authorization-server"
JWKS = "/oauth/jwks"
DENIED = 'Bearer realm="api", error="invalid_token", error_description="{}"'


class Clock:
    """The relying party's time: a wall-clock reading taken once, plus what the test adds. Whole seconds, so that
    the ages the verifier reports are exact."""

    def __init__(self) -> None:
        self.start = float(int(time.time()))
        self.offset = 0.0

    def __call__(self) -> float:
        return self.start + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def set(self, t: float) -> None:
        assert t >= self(), "the relying party's clock only moves forward"
        self.offset = t - self.start


class Recorder(httpx.AsyncHTTPTransport):
    """Real loopback HTTP; remembers every request the verifier makes (connection refused included)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []
        self._seen = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await super().handle_async_request(request)

    def new(self) -> list[str]:
        """Paths requested since the last call."""
        fresh = self.requests[self._seen :]
        self._seen = len(self.requests)
        return [r.url.path for r in fresh]


class RelyingParty:
    """A Starlette API protected by BearerTokenMiddleware, served by uvicorn on a loopback port in a thread."""

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier

        async def whoami(request: Request) -> JSONResponse:
            claims = request.state.claims
            return JSONResponse({"sub": claims["sub"], "jti": claims["jti"], "report": claims.report.as_dict()})

        async def healthz(request: Request) -> PlainTextResponse:
            return PlainTextResponse("ok")

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            await verifier.aclose()  # its async client lives in this event loop

        app = Starlette(
            routes=[Route("/whoami", whoami), Route("/healthz", healthz)],
            middleware=[Middleware(BearerTokenMiddleware, verifier=verifier, public_paths=["/healthz"])],
            lifespan=lifespan,
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", loop="asyncio", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="relying-party", daemon=True)
        self.url = ""

    def start(self, wait: float = 15.0) -> RelyingParty:
        self.thread.start()
        deadline = time.monotonic() + wait
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the relying party did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        assert httpx.get(self.url + "/healthz", timeout=10).status_code == 200
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(15)
        assert not self.thread.is_alive(), "the relying party did not stop"

    def call(self, token: str) -> httpx.Response:
        return httpx.get(self.url + "/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.fixture
def relying_party() -> Iterator[Callable[..., tuple[RelyingParty, Clock, Recorder]]]:
    """Builds relying parties for an issuer: ``make(issuer, **verifier_options)`` or ``make(verifier=...)``."""
    started: list[RelyingParty] = []

    def make(
        issuer: str | None = None,
        *,
        verifier: Verifier | None = None,
        clock: Clock | None = None,
        recorder: Recorder | None = None,
        **options: Any,
    ) -> tuple[RelyingParty, Clock, Recorder]:
        clock = clock or Clock()
        recorder = recorder or Recorder()
        if verifier is None:
            assert issuer is not None
            verifier = Verifier(
                issuer, audiences=[issuer], clock=clock, async_transport=recorder, background_refresh=False, **options
            )
        rp = RelyingParty(verifier)
        started.append(rp)
        return rp.start(), clock, recorder

    yield make
    for rp in started:
        rp.stop()


@contextlib.contextmanager
def live(data_dir: pathlib.Path, **env: str) -> Iterator[LiveServer]:
    srv = LiveServer(data_dir, extra_env=env).start()
    try:
        yield srv
    finally:
        srv.stop()


def ok(response: httpx.Response, token: str) -> dict[str, Any]:
    """The relying party accepted ``token``: its claims reached the app; returns the decision's report."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["sub"], body["jti"]) == (payload(token)["sub"], payload(token)["jti"])
    return dict(body["report"])


def refused(response: httpx.Response, reason: str) -> None:
    """RFC 6750 §3.1: 401, ``error="invalid_token"``, and the verifier's reason."""
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == DENIED.format(reason)
    assert response.json() == {"error": "invalid_token", "reason": reason}


def report(keys_age: float | None, status_age: float | None, stale: bool, source: str = "network") -> dict[str, Any]:
    return {"keys_age": keys_age, "status_age": status_age, "stale": stale, "source": source}


def signed_at(clock: Clock, rep: dict[str, Any]) -> float:
    """When the status list behind a decision was signed, by the relying party's clock: ``status_age`` counts from
    the list token's ``iat`` (never from later than the fetch), not from when the relying party fetched it."""
    return clock() - float(rep["status_age"])


def list_path(token: str) -> str:
    return httpx.URL(entry(token)[0]).path


# -- revocation propagates within one status list ttl ------------------------------------------------------------


def test_revocation_reaches_the_relying_party_within_one_status_ttl(server: LiveServer, relying_party: Any) -> None:
    client = server.register()
    token, neighbour = issue(server, client), issue(server, client)
    rp, clock, rec = relying_party(server.issuer)

    assert rp.call(token).status_code == 200
    assert rec.new() == [METADATA, JWKS, list_path(token)]
    r = httpx.get(rp.url + "/whoami", timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="api"'  # RFC 6750 §3.1

    revoked_at = int(time.time())
    r = httpx.post(server.issuer + "/oauth/revoke", data={"token": token}, auth=basic(client), timeout=10)
    assert r.status_code == 200
    assert status_of(token) == 1  # the issuer's list says INVALID at once …

    clock.advance(59)  # … but the relying party's list is good for ttl = 60 s (TESSERA_STATUS_LIST_TTL default)
    assert ok(rp.call(token), token) == report(59, 59, False)
    assert rec.new() == [], "within the ttl the relying party makes no request at all"

    clock.advance(1)  # exactly one ttl after the fetch: the list is refetched and the revocation seen
    refused(rp.call(token), "revoked")
    assert rec.new() == [list_path(token)]
    rep = ok(rp.call(neighbour), neighbour)
    assert (rep["keys_age"], rep["stale"]) == (60, False)
    assert revoked_at <= signed_at(clock, rep) <= time.time(), "the list now held was signed after the revocation"
    assert rec.new() == []

    # No request ever named a token: the issuer learns nothing about what the relying party verifies.
    for request in rec.requests:
        assert request.method == "GET"
        sent = str(request.url) + json.dumps(dict(request.headers)) + request.content.decode()
        for t in (token, neighbour):
            assert t not in sent and payload(t)["jti"] not in sent


# -- issuer outage: cached data until the limits, then fail closed ----------------------------------------------


def test_issuer_outage_keeps_verifying_recovers_and_fails_closed_at_status_max_age(
    tmp_path: pathlib.Path, relying_party: Any
) -> None:
    with live(tmp_path / "data") as srv:
        client = srv.register()
        token = issue(srv, client)
        status = list_path(token)
        rp, clock, rec = relying_party(srv.issuer, status_max_age=300, keys_max_stale=600)
        assert ok(rp.call(token), token) == report(0, 0, False)
        assert rec.new() == [METADATA, JWKS, status]

        srv.stop()
        clock.advance(60)  # the list's ttl is over; the refetch fails; the cached list is used, reported stale
        assert ok(rp.call(token), token) == report(60, 60, True)
        assert rec.new() == [status]
        clock.advance(4)  # a failed fetch is not retried for 5 s …
        assert ok(rp.call(token), token) == report(64, 64, True)
        assert rec.new() == []
        clock.advance(1)
        assert ok(rp.call(token), token) == report(65, 65, True)
        assert rec.new() == [status]  # … then fails again: the next try waits 10 s

        restarted = int(time.time())
        srv.start()  # the same data directory and port: the same keys and lists
        clock.advance(9)
        assert ok(rp.call(token), token) == report(74, 74, True)
        assert rec.new() == [], "the relying party does not try before its back-off ends, issuer back or not"
        clock.advance(1)  # back-off over: the list is refetched, and the decision is no longer stale
        rep = ok(rp.call(token), token)
        assert (rep["keys_age"], rep["stale"]) == (75, False)
        issued = signed_at(clock, rep)
        assert restarted <= issued <= time.time(), "a list signed by the restarted issuer"
        assert rec.new() == [status]

        # A second outage. status_max_age counts from the held list's iat (the issuer's time): reached, not exceeded …
        srv.stop()
        clock.set(issued + 300)
        assert ok(rp.call(token), token) == report(clock() - clock.start, 300, True)
        assert rec.new() == [JWKS, status]  # the keys' ttl (300 s) is over too: both refetches fail
        clock.advance(1)  # … exceeded: fail closed, although the keys (limit 600 s) are still usable
        refused(rp.call(token), "trust_data_stale")
        assert rec.new() == [], "both are backing off; the decision needs no request"


def test_issuer_outage_without_status_claims_fails_closed_at_keys_max_stale(
    tmp_path: pathlib.Path, relying_party: Any
) -> None:
    with live(tmp_path / "data", TESSERA_STATUS_LISTS="false") as srv:
        token = issue(srv, srv.register())
        assert "status" not in payload(token)
        rp, clock, rec = relying_party(srv.issuer, status_max_age=300, keys_max_stale=600)
        assert ok(rp.call(token), token) == report(0, None, False)
        assert rec.new() == [METADATA, JWKS]

        srv.stop()
        clock.advance(300)  # the JWKS ttl (Cache-Control max-age=300) is over: the refetch fails
        assert ok(rp.call(token), token) == report(300, None, True)
        assert rec.new() == [JWKS]
        clock.advance(300)  # keys_max_stale reached, not exceeded
        assert ok(rp.call(token), token) == report(600, None, True)
        assert rec.new() == [JWKS]
        clock.advance(1)
        refused(rp.call(token), "trust_data_stale")
        assert rec.new() == []  # inside the back-off after the failed fetch at 600 s: refused at once, no fetch


# -- key rotation and removal -------------------------------------------------------------------------------------


def _jwks_kids(srv: LiveServer) -> list[str]:
    return [k["kid"] for k in httpx.get(srv.issuer + JWKS, timeout=10).json()["keys"]]


def _poll(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def _rotate(srv: LiveServer, client: dict[str, Any]) -> tuple[str, str, str]:
    """``tessera keys rotate`` while the server runs; (retired, activated, new next) once the server signs with the
    activated key and publishes the new next key."""
    r = srv.cli("keys", "rotate")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["event"] for e in events] == ["key.retired", "key.activated", "key.created"]
    retired, activated, created = (e["kid"] for e in events)
    _poll(lambda: created in _jwks_kids(srv), "the server publishes the new next key")
    _poll(lambda: header(issue(srv, client))["kid"] == activated, "the server signs with the activated key")
    return retired, activated, created


def test_rotation_and_removal_as_seen_by_the_relying_party(tmp_path: pathlib.Path, relying_party: Any) -> None:
    with live(tmp_path / "data", TESSERA_KEY_REFRESH_INTERVAL="0.5") as srv:
        client = srv.register()
        old = issue(srv, client)
        status = list_path(old)
        keys = keys_by_state(srv)
        first, second = keys["active"][0]["kid"], keys["next"][0]["kid"]
        assert header(old)["kid"] == first and _jwks_kids(srv) == [first, second]
        rp, clock, rec = relying_party(srv.issuer)
        ok(rp.call(old), old)
        assert rec.new() == [METADATA, JWKS, status]

        # Rotation: the promoted key was published before it signed anything, so its tokens verify at once.
        assert _rotate(srv, client)[:2] == (first, second)
        mid = issue(srv, client)
        assert header(mid)["kid"] == second
        assert ok(rp.call(mid), mid) == report(0, 0, False)
        assert ok(rp.call(old), old) == report(0, 0, False), "a retired key's tokens still verify"
        assert rec.new() == [], "no JWKS refetch was needed"

        # A second rotation activates a key the relying party has never seen: one unknown-kid refetch finds it.
        _, third, _ = _rotate(srv, client)
        new = issue(srv, client)
        assert header(new)["kid"] == third
        ok(rp.call(new), new)
        assert rec.new() == [JWKS]

        # Remove the first retired key: a sweep from another process whose clock is at its remove_after.
        retired = {k["kid"]: k["remove_after"] for k in keys_by_state(srv)["retired"]}
        assert set(retired) == {first, second}
        rt = open_runtime(load_settings(srv.env), clock=FrozenClock(retired[first]), migrate=False, bootstrap=False)
        try:
            plan = rt.store.sweep()
        finally:
            rt.close()
        removed = {k.kid for k in plan.updates}
        # Both rotations may fall within one second, and then both keys are due.
        assert removed == {kid for kid, at in retired.items() if at <= retired[first]}
        _poll(lambda: first not in _jwks_kids(srv), "the server stops publishing the removed key")

        # The relying party drops the key at its next JWKS refresh (its ttl: Cache-Control max-age=300), not before.
        assert ok(rp.call(old), old) == report(0, 0, False)
        assert rec.new() == []
        clock.advance(300)
        refused(rp.call(old), "unknown_key")
        assert rec.new() == [JWKS]
        rep = ok(rp.call(new), new)
        assert (rep["keys_age"], rep["stale"]) == (0, False)
        assert rec.new() == [status]
        if second in removed:  # an unknown kid: one refetch (the cooldown has long passed), still unknown
            refused(rp.call(mid), "unknown_key")
            assert rec.new() == [JWKS]
        else:
            assert ok(rp.call(mid), mid) == rep
            assert rec.new() == []


# -- offline trust bundle ------------------------------------------------------------------------------------------


def test_offline_bundle_verifies_refuses_revoked_and_expires(tmp_path: pathlib.Path, relying_party: Any) -> None:
    with live(tmp_path / "data") as srv:
        client = srv.register()
        valid, revoked = issue(srv, client), issue(srv, client)
        trusted = httpx.get(srv.issuer + JWKS, timeout=10).json()  # obtained earlier, out of band
        r = httpx.post(srv.issuer + "/oauth/revoke", data={"token": revoked}, auth=basic(client), timeout=10)
        assert r.status_code == 200
        out = tmp_path / "bundle.jwt"
        exported = srv.cli("bundle", "export", "-o", str(out), "--lifetime", "600")
        assert exported.returncode == 0, exported.stderr
    bundle = out.read_text()
    exp = payload(bundle.strip())["exp"]

    clock, rec = Clock(), Recorder()
    verifier = Verifier.from_bundle(
        bundle,
        issuer=srv.issuer,
        trusted_jwks=trusted,
        audiences=[srv.issuer],
        clock=clock,
        async_transport=rec,
        background_refresh=False,
    )
    rp, _, _ = relying_party(verifier=verifier, clock=clock, recorder=rec)
    assert ok(rp.call(valid), valid)["source"] == "bundle"
    refused(rp.call(revoked), "revoked")
    clock.set(exp - 1)
    assert ok(rp.call(valid), valid)["stale"] is False
    clock.set(exp)
    refused(rp.call(valid), "trust_data_stale")
    assert rec.requests == [], "a bundle verifier never touches the network"


# -- tessera verify --------------------------------------------------------------------------------------------------


def test_cli_verify_against_the_live_issuer(server: LiveServer) -> None:
    token = issue(server, server.register())

    def verify(audience: str) -> tuple[int, dict[str, Any]]:
        r = server.cli("verify", token, "--issuer", server.issuer, "--audience", audience)
        return r.returncode, json.loads(r.stdout)

    code, out = verify(server.issuer)
    assert code == 0, out
    assert out["valid"] is True
    assert out["claims"] == payload(token)
    assert (out["report"]["stale"], out["report"]["source"]) == (False, "network")
    assert out["report"]["status_age"] is not None

    code, out = verify("https://elsewhere.example")
    assert (code, out["valid"], out["reason"]) == (1, False, "wrong_audience")

    with server.admin() as admin:
        assert admin.post("/tokens/revoke", json={"jti": payload(token)["jti"]}).json() == {"revoked": 1}
    code, out = verify(server.issuer)  # a fresh verifier fetches the list: the revocation shows at once
    assert (code, out["valid"], out["reason"]) == (1, False, "revoked")
