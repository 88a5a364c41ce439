"""``SqlAuthCodes`` on SQLite and PostgreSQL: what must happen once happens once (a code redeemed, a
refresh token rotated, a WebAuthn challenge used), even with parallel callers; revoking a grant revokes
its refresh tokens and the access tokens issued with them; every change is in the audit chain."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Awaitable, Iterator
from typing import TypeVar

import pytest

from tessera.audit import AuditEvent
from tessera.clock import FrozenClock
from tessera.oauth.authcode import CodeRecord, ConsentGrant, RefreshRecord, digest
from tessera.oauth.tokens import IssuedToken
from tessera.store.sql import repo
from tessera.store.sql.authcode import SqlAuthCodes, list_grants, revoke_grant_now
from tessera.store.sql.store import SqlStore

T = TypeVar("T")
T0 = 1_800_000_000


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[SqlStore]:
    url = (
        f"sqlite:///{tmp_path / 'tessera.db'}"
        if request.param == "sqlite"
        else str(request.getfixturevalue("postgres").create_database())
    )
    s = SqlStore(url, FrozenClock(T0), client_cache_ttl=60)
    s.migrate()
    s.start()
    yield s
    s.close()


def token(jti: str) -> IssuedToken:
    return IssuedToken(
        jti=jti, client_id="agent", sub="alice", aud=["https://mcp.example.com"], scope="read", kid="k1",
        grant_type="authorization_code", iat=T0, exp=T0 + 600,
    )  # fmt: skip


def code(name: str, grant: str = "g1") -> CodeRecord:
    return CodeRecord(
        code_hash=digest(name), client_id="agent", person_id="alice", grant_id=grant, redirect_uri="https://a/cb",
        redirect_uri_sent=True, scope=["read"], resource=["https://mcp.example.com"], code_challenge="c" * 43,
        acr="urn:tessera:aal2", auth_time=T0, created_at=T0, expires_at=T0 + 60,
    )  # fmt: skip


def refresh(name: str, family: str = "f1", grant: str = "g1", access: str = "a1") -> RefreshRecord:
    return RefreshRecord(
        token_hash=digest(name), family_id=family, grant_id=grant, client_id="agent", person_id="alice",
        scope=["read"], resource=["https://mcp.example.com"], acr="urn:tessera:aal2", auth_time=T0, created_at=T0,
        expires_at=T0 + 3600, family_expires_at=T0 + 86400, access_jti=access,
    )  # fmt: skip


GRANT = ConsentGrant("g1", "alice", "agent", ["read"], ["https://mcp.example.com"], T0)


def is_revoked(store: SqlStore, jti: str) -> bool:
    t = run(store.find_token(jti))
    assert t is not None
    return t.revoked_at is not None


def test_a_code_is_redeemed_once_of_many_parallel_attempts(store: SqlStore) -> None:
    codes = SqlAuthCodes(store)

    async def scenario() -> list[bool]:
        await codes.issue_code(code("c1"), GRANT, True, [AuditEvent("authorize.code_issued", subject="alice")])
        attempts = [
            codes.redeem_code(digest("c1"), T0 + 1, [token(f"t{i}")], refresh(f"r{i}", family=f"f{i}"), [])
            for i in range(8)
        ]
        return list(await asyncio.gather(*attempts))

    results = run(scenario())
    assert results.count(True) == 1
    winner = results.index(True)
    rec = run(codes.get_code(digest("c1")))
    assert rec is not None and rec.used_at == T0 + 1 and rec.issued == [f"t{winner}"]
    # The replay revokes what the winner issued: its access token and its refresh family.
    revoked = run(codes.revoke_code_family(digest("c1"), "agent", T0 + 2))
    assert [t.jti for t in revoked] == [f"t{winner}"] and is_revoked(store, f"t{winner}")
    r = run(codes.get_refresh(digest(f"r{winner}")))
    assert r is not None and r.revoked_at == T0 + 2
    events = [e.event for e in store.read(lambda c: list(repo.iter_audit(c)))]
    assert "authorize.code_issued" in events and "authorize.code_replayed" in events


def test_a_refresh_token_rotates_once_and_reuse_revokes_the_family(store: SqlStore) -> None:
    codes = SqlAuthCodes(store)

    async def scenario() -> list[bool]:
        await codes.issue_code(code("c2"), GRANT, True, [])
        assert await codes.redeem_code(digest("c2"), T0, [token("a1")], refresh("r1"), [])
        attempts = [
            codes.rotate_refresh(digest("r1"), T0 + 5, [token(f"a2-{i}")], refresh(f"r2-{i}", access=f"a2-{i}"), [])
            for i in range(6)
        ]
        return list(await asyncio.gather(*attempts))

    results = run(scenario())
    assert results.count(True) == 1
    i = results.index(True)
    old = run(codes.get_refresh(digest("r1")))
    assert old is not None and old.used_at == T0 + 5
    revoked = run(codes.revoke_family("f1", "agent", T0 + 6, "refresh_reuse"))
    assert {t.jti for t in revoked} == {"a1", f"a2-{i}"}
    new = run(codes.get_refresh(digest(f"r2-{i}")))
    assert new is not None and new.revoked_at == T0 + 6


def test_revoking_a_grant_revokes_its_tokens_and_is_scoped_to_the_person(store: SqlStore) -> None:
    codes = SqlAuthCodes(store)
    run(codes.issue_code(code("c3"), GRANT, True, []))
    assert run(codes.redeem_code(digest("c3"), T0, [token("a3")], refresh("r3", family="f3", access="a3"), []))
    found = run(codes.find_grant("alice", "agent", ["read"], ["https://mcp.example.com"]))
    assert found is not None and found.grant_id == "g1" and found.last_used_at == T0
    assert run(codes.find_grant("alice", "agent", ["read", "write"], ["https://mcp.example.com"])) is None
    assert run(codes.revoke_grant("g1", "mallory", T0 + 1, person_id="mallory")) is None  # not theirs
    assert not is_revoked(store, "a3")
    revoked = revoke_grant_now(store, "g1", "admin")
    assert revoked is not None and [t.jti for t in revoked] == ["a3"]
    assert run(codes.grant_live("g1")) is False
    assert run(codes.find_grant("alice", "agent", ["read"], ["https://mcp.example.com"])) is None
    assert store.read(lambda c: list_grants(c, "alice", None))[0].revoked_at == T0
    # A code of a revoked grant cannot be redeemed.
    run(codes.issue_code(code("c4"), GRANT, False, []))
    assert run(codes.redeem_code(digest("c4"), T0 + 2, [token("a4")], None, [])) is False
    events = [e.event for e in store.read(lambda c: list(repo.iter_audit(c)))]
    assert "grant.revoked" in events and "token.revoked" in events


def test_a_sign_in_challenge_is_used_once(store: SqlStore) -> None:
    codes = SqlAuthCodes(store)

    async def scenario() -> list[str | None]:
        await codes.new_session("s1", T0, T0 + 900)
        assert await codes.set_challenge("s1", "challenge-1")
        return list(await asyncio.gather(*[codes.take_challenge("s1") for _ in range(5)]))

    taken = run(scenario())
    assert taken.count("challenge-1") == 1 and taken.count(None) == 4
    run(codes.signed_in("s1", "s2", "alice", "urn:tessera:aal3", T0 + 1, T0 + 901))
    assert run(codes.get_session("s1", T0 + 2)) is None  # replaced at sign-in: no fixation
    s = run(codes.get_session("s2", T0 + 2))
    assert s is not None and s["person_id"] == "alice"
    assert run(codes.get_session("s2", T0 + 902)) is None  # expired


def test_two_consents_to_the_same_thing_make_one_grant(store: SqlStore) -> None:
    codes = SqlAuthCodes(store)
    run(codes.issue_code(code("c5"), GRANT, True, []))
    twin = ConsentGrant("g2", "alice", "agent", ["read"], ["https://mcp.example.com"], T0)
    run(codes.issue_code(code("c6", grant="g2"), twin, True, []))
    assert [g.grant_id for g in store.read(lambda c: list_grants(c, "alice", "agent"))] == ["g1"]
    rec = run(codes.get_code(digest("c6")))
    assert rec is not None and rec.grant_id == "g1"  # revoking g1 stops both codes
