"""Storage contract (``tessera.store.interfaces``): one suite, run against SQLite and a real PostgreSQL.

``SqlStore`` is exercised only through its public methods: migrations, the signing-key lifecycle
(RFC 7517 keys: bootstrap, rotation, sweep), the client registry (RFC 7591 clients), issuance with
single use of client assertion ``jti`` values (RFC 7523 §3), and the group-commit writer that appends
every event to the audit hash chain.
"""

from __future__ import annotations

import asyncio
import itertools
import pathlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tessera.audit import GENESIS, AuditEvent
from tessera.clock import FrozenClock
from tessera.oauth.client_auth import AssertionUse
from tessera.oauth.clients import Client
from tessera.oauth.keys import KEK, KeyState
from tessera.oauth.tokens import IssuedToken
from tessera.store.interfaces import AssertionReplayed
from tessera.store.sql import repo
from tessera.store.sql.engine import current_revision, head_revision
from tessera.store.sql.store import SqlStore
from tessera.store.sql.tables import assertion_jtis, audit_log, clients, issued_tokens, metadata

T = TypeVar("T")
T0 = 1_800_000_000


def run(coro: Awaitable[T]) -> T:
    """pytest runs no event loop of its own here: each test drives its coroutines with asyncio.run."""

    async def main() -> T:
        return await coro

    return asyncio.run(main())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tessera.db'}"
    return str(request.getfixturevalue("postgres").create_database())


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
def store(url: str, clock: FrozenClock) -> Iterator[SqlStore]:
    s = SqlStore(url, clock, client_cache_ttl=60)
    s.migrate()
    s.start()
    yield s
    s.close()


@pytest.fixture(scope="module")
def kek() -> KEK:
    return KEK.from_text(KEK.generate_text())


# -- helpers: reading what is stored -------------------------------------------------------------------


def audit_trail(store: SqlStore) -> list[tuple[int, str, str | None]]:
    return store.read(lambda c: [(r.seq, r.event, r.subject) for r in repo.iter_audit(c)])


def rows(store: SqlStore, table: sa.Table, *cols: str) -> list[tuple[Any, ...]]:
    q = sa.select(*(table.c[n] for n in cols)).order_by(*(table.c[n] for n in cols))
    return store.read(lambda c: [tuple(r) for r in c.execute(q)])


def assert_chain_ok(store: SqlStore, records: int) -> None:
    report = store.verify_audit()
    assert report.ok, report
    assert report.checked == records
    assert [seq for seq, _, _ in audit_trail(store)] == list(range(1, records + 1))


def client(cid: str, scope: str = "read", **extra: Any) -> Client:
    md = {
        "grant_types": ["client_credentials"],
        "token_endpoint_auth_method": "client_secret_basic",
        "scope": scope,
        **extra,
    }
    return Client(
        client_id=cid,
        metadata=md,
        secret_hash="ab" * 32,
        source="registration",
        created_at=T0,
        updated_at=T0,
        registration_token_hash="cd" * 32,
    )


def token(jti: str, cid: str = "c1") -> IssuedToken:
    return IssuedToken(
        jti=jti,
        client_id=cid,
        sub=cid,
        aud=["https://rs.example", "https://rs2.example"],
        scope="read write",
        kid="kid-1",
        grant_type="client_credentials",
        iat=T0,
        exp=T0 + 900,
    )


def issued(tok: IssuedToken) -> AuditEvent:
    return AuditEvent("token.issued", actor=tok.client_id, subject=tok.client_id, data={"jti": tok.jti})


# -- migrations and schema ---------------------------------------------------------------------------------


def test_migrate_is_idempotent(url: str, clock: FrozenClock) -> None:
    s = SqlStore(url, clock)
    try:
        head = head_revision()
        assert current_revision(s.write_engine) is None
        assert s.migrate() == head
        assert s.migrate() == head
        assert current_revision(s.write_engine) == head
        report = s.verify_audit()
        assert (report.ok, report.checked, report.head) == (True, 0, GENESIS)
    finally:
        s.close()
    again = SqlStore(url, clock)  # a second process starting on the migrated database
    try:
        assert again.migrate() == head
        assert again.verify_audit().ok
    finally:
        again.close()


def test_table_metadata_matches_the_migrations(store: SqlStore) -> None:
    with store.write_engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
        assert diffs == []
        inspector = sa.inspect(conn)
        dialect = conn.dialect
        assert set(inspector.get_table_names()) == set(metadata.tables) | {"alembic_version"}
        for table in metadata.sorted_tables:
            reflected = {c["name"]: c for c in inspector.get_columns(table.name)}
            assert list(reflected) == [c.name for c in table.columns], table.name
            for col in table.columns:
                got = reflected[col.name]
                assert got["nullable"] == col.nullable, (table.name, col.name)
                assert got["type"].compile(dialect) == col.type.compile(dialect), (table.name, col.name)
            pk = inspector.get_pk_constraint(table.name)["constrained_columns"]
            assert pk == [c.name for c in table.primary_key.columns], table.name
            indexes = {(i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table.name)}
            declared = {(i.name, tuple(c.name for c in i.columns)) for i in table.indexes}
            assert indexes == declared, table.name


# -- signing keys --------------------------------------------------------------------------------------------


def test_key_lifecycle(store: SqlStore, clock: FrozenClock, kek: KEK) -> None:
    plan = store.bootstrap_keys(["ES256", "EdDSA"], kek)
    assert len(plan.inserts) == 4
    stored = run(store.load_keys())
    assert stored == plan.inserts, "every field round-trips, the sealed private key included"
    assert store.bootstrap_keys(["ES256", "EdDSA"], kek).inserts == []
    assert [e for _, e, _ in audit_trail(store)] == ["key.created"] * 4

    by_state = {(k.alg, k.state): k for k in stored}
    active, nxt = by_state[("ES256", KeyState.ACTIVE)], by_state[("ES256", KeyState.NEXT)]
    clock.advance(100)
    rotation = store.rotate_keys("ES256", kek, max_token_lifetime=900, refresh_interval=5.0, leeway=30)
    keys = {k.kid: k for k in run(store.load_keys())}
    assert len(keys) == 5
    assert keys[active.kid].state is KeyState.RETIRED
    assert keys[active.kid].retired_at == T0 + 100
    assert keys[active.kid].remove_after == T0 + 100 + 900 + 5 + 1 + 30
    assert keys[active.kid].sealed_private == active.sealed_private
    assert (keys[nxt.kid].state, keys[nxt.kid].activated_at) == (KeyState.ACTIVE, T0 + 100)
    [fresh] = rotation.inserts
    assert keys[fresh.kid] == fresh
    assert [k for k in keys.values() if k.alg == "EdDSA"] == [k for k in stored if k.alg == "EdDSA"]

    clock.set(T0 + 100 + 936 - 1)
    assert store.sweep().updates == []
    assert keys[active.kid] == {k.kid: k for k in run(store.load_keys())}[active.kid]
    clock.set(T0 + 100 + 936)
    swept = store.sweep()
    assert [(k.kid, k.state) for k in swept.updates] == [(active.kid, KeyState.REMOVED)]
    removed = {k.kid: k for k in run(store.load_keys())}[active.kid]
    assert (removed.state, removed.removed_at, removed.sealed_private) == (KeyState.REMOVED, T0 + 1036, None)
    assert store.sweep().updates == []

    assert [(e, s) for _, e, s in audit_trail(store)][4:] == [
        ("key.retired", active.kid),
        ("key.activated", nxt.kid),
        ("key.created", fresh.kid),
        ("key.removed", active.kid),
    ]
    assert_chain_ok(store, 8)


def test_concurrent_bootstrap_creates_one_key_set(url: str, store: SqlStore, clock: FrozenClock, kek: KEK) -> None:
    stores = [store] + [SqlStore(url, clock) for _ in range(3)]  # as if four processes started at once
    barrier = threading.Barrier(len(stores))
    plans: list[Any] = [None] * len(stores)

    def boot(i: int) -> None:
        barrier.wait(10)
        plans[i] = stores[i].bootstrap_keys(["ES256", "EdDSA"], kek)

    threads = [threading.Thread(target=boot, args=(i,)) for i in range(len(stores))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for s in stores[1:]:
            s.close()
    assert sorted(len(p.inserts) for p in plans) == [0, 0, 0, 4]
    keys = run(store.load_keys())
    assert sorted((k.alg, k.state.value) for k in keys) == [
        ("ES256", "active"),
        ("ES256", "next"),
        ("EdDSA", "active"),
        ("EdDSA", "next"),
    ]
    assert_chain_ok(store, 4)


# -- clients ----------------------------------------------------------------------------------------------------


def test_client_create_get_update_delete(store: SqlStore) -> None:
    async def scenario() -> None:
        assert await store.get_client("c1") is None
        c1 = client("c1", client_name="Build agent \u00e9", jwks={"keys": [{"kty": "EC", "crv": "P-256"}]})
        await store.create_client(c1, AuditEvent("client.created", actor="t", subject="c1"))
        got = await store.get_client("c1")
        assert got == c1 and got is not None
        assert (got.metadata, got.secret_hash, got.registration_token_hash) == (
            c1.metadata,
            c1.secret_hash,
            c1.registration_token_hash,
        )

        updated = client("c1", scope="read write")
        await store.update_client(updated, AuditEvent("client.updated", actor="t", subject="c1"))
        got = await store.get_client("c1")
        assert got is not None and got.scopes == frozenset({"read", "write"}), "the cached entry was dropped"

        with pytest.raises(LookupError):
            await store.update_client(client("ghost"), AuditEvent("client.updated", actor="t", subject="ghost"))
        with pytest.raises(sa.exc.IntegrityError):
            await store.create_client(client("c1"), AuditEvent("client.created", actor="t", subject="c1"))

        await store.record_issuance(token("t1"), None, issued(token("t1")))
        assert await store.delete_client("c1", AuditEvent("client.deleted", actor="t", subject="c1")) is True
        assert await store.get_client("c1") is None
        assert await store.delete_client("c1", AuditEvent("client.deleted", actor="t", subject="c1")) is False

    run(scenario())
    # Failed writes leave no audit record; a delete that found nothing records nothing. Deleting a
    # client revokes its unexpired tokens with it.
    assert audit_trail(store) == [
        (1, "client.created", "c1"),
        (2, "client.updated", "c1"),
        (3, "token.issued", "c1"),
        (4, "client.deleted", "c1"),
        (5, "token.revoked", "c1"),
    ]
    assert rows(store, issued_tokens, "jti", "revoked_at") == [("t1", T0)]
    assert_chain_ok(store, 5)


def test_client_cache_sees_other_writers_after_forget(url: str, store: SqlStore, clock: FrozenClock) -> None:
    other = SqlStore(url, clock, client_cache_ttl=0)  # another process, no cache
    other.start()
    try:

        async def scenario() -> None:
            await store.create_client(client("c1"), AuditEvent("client.created", subject="c1"))
            assert (await store.get_client("c1")) == client("c1")
            await other.update_client(client("c1", scope="admin"), AuditEvent("client.updated", subject="c1"))
            assert (await other.get_client("c1")) == client("c1", scope="admin")
            # This process caches for client_cache_ttl (60 s here); forgetting the entry re-reads it.
            assert (await store.get_client("c1")) == client("c1")
            store.forget_client("c1")
            assert (await store.get_client("c1")) == client("c1", scope="admin")

        run(scenario())
    finally:
        other.close()
    assert_chain_ok(store, 2)


# -- issuance and assertion replay ---------------------------------------------------------------------------------


def test_assertion_jti_is_consumed_once_with_its_issuance(store: SqlStore) -> None:
    use = AssertionUse(client_id="c1", jti="assertion-1", exp=T0 + 60)

    async def scenario() -> None:
        await store.record_issuance(token("t1"), use, issued(token("t1")))
        with pytest.raises(AssertionReplayed):
            await store.record_issuance(token("t2"), use, issued(token("t2")))
        # The same jti from another client is another assertion.
        await store.record_issuance(
            token("t3", "c2"), AssertionUse("c2", "assertion-1", T0 + 60), issued(token("t3", "c2"))
        )
        await store.record_issuance(token("t4"), None, issued(token("t4")))

    run(scenario())
    assert rows(store, issued_tokens, "jti", "client_id") == [("t1", "c1"), ("t3", "c2"), ("t4", "c1")]
    assert rows(store, assertion_jtis, "client_id", "jti", "exp") == [
        ("c1", "assertion-1", T0 + 60),
        ("c2", "assertion-1", T0 + 60),
    ]
    [stored] = store.read(lambda c: c.execute(sa.select(issued_tokens).where(issued_tokens.c.jti == "t1")).all())
    assert stored.aud == ["https://rs.example", "https://rs2.example"]
    assert (stored.sub, stored.scope, stored.kid, stored.grant_type, stored.iat, stored.exp, stored.revoked_at) == (
        "c1",
        "read write",
        "kid-1",
        "client_credentials",
        T0,
        T0 + 900,
        None,
    )
    assert [e for _, e, _ in audit_trail(store)] == ["token.issued"] * 3
    assert_chain_ok(store, 3)


def test_failed_issuance_does_not_consume_the_assertion(store: SqlStore) -> None:
    async def scenario() -> None:
        await store.record_issuance(token("t1"), None, issued(token("t1")))
        use = AssertionUse("c1", "assertion-9", T0 + 60)
        with pytest.raises(sa.exc.IntegrityError):  # duplicate token jti: the whole unit is undone
            await store.record_issuance(token("t1"), use, issued(token("t1")))
        await store.record_issuance(token("t2"), use, issued(token("t2")))

    run(scenario())
    assert rows(store, issued_tokens, "jti") == [("t1",), ("t2",)]
    assert rows(store, assertion_jtis, "jti") == [("assertion-9",)]
    assert_chain_ok(store, 2)


def test_sweep_forgets_assertions_that_can_no_longer_be_accepted(store: SqlStore, clock: FrozenClock) -> None:
    async def scenario() -> None:
        await store.record_issuance(token("t1"), AssertionUse("c1", "a1", T0 + 60), issued(token("t1")))
        await store.record_issuance(token("t2"), AssertionUse("c1", "a2", T0 + 120), issued(token("t2")))

    run(scenario())
    clock.set(T0 + 60 + 300 + 1)  # within the largest leeway (300 s) of a1's exp: still remembered
    store.sweep()
    assert rows(store, assertion_jtis, "jti") == [("a1",), ("a2",)]
    clock.set(T0 + 60 + 300 + 2)
    store.sweep()
    assert rows(store, assertion_jtis, "jti") == [("a2",)]
    assert rows(store, issued_tokens, "jti") == [("t1",), ("t2",)], "token records are kept"


# -- the audit chain and group commit ---------------------------------------------------------------------------------


def test_audit_appends_form_a_verifiable_chain(store: SqlStore, clock: FrozenClock) -> None:
    async def scenario() -> None:
        for i in range(5):
            clock.advance(1)
            await store.audit(AuditEvent("test.event", actor="t", subject=f"s{i}", data={"i": i, "name": "\u00fc"}))

    run(scenario())
    records = store.read(lambda c: list(repo.iter_audit(c)))
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev == GENESIS
    assert all(b.prev == a.hash for a, b in itertools.pairwise(records))
    assert [r.ts for r in records] == [(T0 + i) * 1000 for i in range(1, 6)]
    assert [r.data for r in records] == [{"i": i, "name": "\u00fc"} for i in range(5)]
    report = store.verify_audit()
    assert (report.ok, report.checked, report.head) == (True, 5, records[-1].hash)


def test_tampering_is_detected(store: SqlStore) -> None:
    async def scenario() -> None:
        for i in range(3):
            await store.audit(AuditEvent("test.event", subject=str(i)))

    run(scenario())
    assert store.verify_audit().ok
    store.write(lambda c: c.execute(sa.update(audit_log).where(audit_log.c.seq == 2).values(subject="forged")), [])
    report = store.verify_audit()
    assert (report.ok, report.first_bad_seq, report.reason) == (False, 2, "record 2 was altered (hash mismatch)")


def test_concurrent_submits_all_commit_with_contiguous_seqs(store: SqlStore) -> None:
    async def scenario() -> list[Any]:
        works: list[Awaitable[Any]] = []
        for i in range(200):
            if i % 2:
                works.append(
                    store.record_issuance(token(f"t{i}"), AssertionUse("c1", f"a{i}", T0 + 60), issued(token(f"t{i}")))
                )
            else:
                works.append(store.audit(AuditEvent("test.event", subject=f"e{i}")))
        return await asyncio.gather(*works)

    assert run(scenario()) == [None] * 200
    assert len(rows(store, issued_tokens, "jti")) == 100
    assert len(rows(store, assertion_jtis, "jti")) == 100
    assert sorted(s for _, _, s in audit_trail(store)) == sorted(["c1"] * 100 + [f"e{i}" for i in range(0, 200, 2)])
    assert_chain_ok(store, 200)
    assert store.writer.units == 200
    assert store.writer.batches < 200, "concurrent writes were grouped into fewer transactions"


def test_two_stores_on_one_database_append_to_one_chain(url: str, store: SqlStore, clock: FrozenClock) -> None:
    other = SqlStore(url, clock)  # as if in another process: its own engines and writer thread
    other.start()
    try:

        async def scenario() -> list[Any]:
            return await asyncio.gather(
                *(
                    s.record_issuance(
                        token(f"{n}-{i}"), AssertionUse("c1", "shared-" + str(i), T0 + 60), issued(token(f"{n}-{i}"))
                    )
                    for i in range(60)
                    for n, s in (("a", store), ("b", other))
                ),
                return_exceptions=True,
            )

        results = run(scenario())
    finally:
        other.close()
    assert results.count(None) == 60
    assert [type(r) for r in results if r is not None] == [AssertionReplayed] * 60
    # Each assertion jti was offered to both stores: exactly one of them recorded its issuance.
    tokens = [jti for (jti,) in rows(store, issued_tokens, "jti")]
    assert len(tokens) == 60
    assert sorted(jti.split("-")[1] for jti in tokens) == sorted(str(i) for i in range(60))
    assert_chain_ok(store, 60)


async def in_one_batch(store: SqlStore, writes: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Submit ``writes`` so that the writer commits them as one batch; their results or exceptions.

    With a writer thread (PostgreSQL), a first write blocks the thread inside its transaction until
    all the others are queued; the writer then drains them together into the next batch. On SQLite the
    writer commits on the event loop: everything submitted in one loop iteration is one batch.
    """
    if store.writer._inline:
        batches = store.writer.batches

        async def first_write() -> str:
            return await store.writer.submit(lambda conn: ("first", [AuditEvent("test.first")]))

        first_inline = asyncio.ensure_future(first_write())
        tasks = [asyncio.ensure_future(make()) for make in writes]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert await first_inline == "first"
        assert store.writer.batches == batches + 1, "the writes were committed as one batch"
        return results

    started, release = threading.Event(), threading.Event()

    def blocker(conn: sa.Connection) -> tuple[str, list[AuditEvent]]:
        started.set()
        assert release.wait(30)
        return "first", [AuditEvent("test.first")]

    batches = store.writer.batches
    first = asyncio.ensure_future(store.writer.submit(blocker))
    assert await asyncio.to_thread(started.wait, 30)
    tasks = [asyncio.ensure_future(make()) for make in writes]
    await asyncio.sleep(0)  # every task has queued its write
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert await first == "first"
    assert store.writer.batches == batches + 2, "the writes were committed as one batch"
    return results


def test_a_failing_unit_does_not_undo_the_rest_of_its_batch(store: SqlStore) -> None:
    def writes_then_fails(conn: sa.Connection) -> tuple[None, list[AuditEvent]]:
        repo.insert_client(conn, client("doomed"))
        raise RuntimeError("boom")

    async def scenario() -> list[Any]:
        await store.create_client(client("dup"), AuditEvent("client.created", subject="dup"))
        use = AssertionUse("c1", "one-use", T0 + 60)
        return await in_one_batch(
            store,
            [
                lambda: store.record_issuance(token("ok-1"), use, issued(token("ok-1"))),
                lambda: store.record_issuance(token("replay"), use, issued(token("replay"))),  # AssertionReplayed
                lambda: store.writer.submit(writes_then_fails),  # RuntimeError
                lambda: store.create_client(client("dup"), AuditEvent("client.created", subject="dup")),  # unique
                lambda: store.update_client(client("ghost"), AuditEvent("client.updated", subject="ghost")),
                lambda: store.create_client(client("ok-2"), AuditEvent("client.created", subject="ok-2")),
                lambda: store.audit(AuditEvent("test.last")),
            ],
        )

    results = run(scenario())
    assert results[0] is None
    assert isinstance(results[1], AssertionReplayed)
    assert isinstance(results[2], RuntimeError) and str(results[2]) == "boom"
    assert isinstance(results[3], sa.exc.IntegrityError)
    assert isinstance(results[4], LookupError)
    assert results[5:] == [None, None]

    assert rows(store, issued_tokens, "jti") == [("ok-1",)]
    assert rows(store, clients, "client_id") == [("dup",), ("ok-2",)]
    assert [(e, s) for _, e, s in audit_trail(store)] == [
        ("client.created", "dup"),
        ("test.first", None),
        ("token.issued", "c1"),
        ("client.created", "ok-2"),
        ("test.last", None),
    ]
    assert_chain_ok(store, 5)


def test_a_failing_issuance_does_not_undo_the_issuances_batched_with_it(store: SqlStore) -> None:
    async def scenario() -> list[Any]:
        await store.record_issuance(token("taken"), None, issued(token("taken")))
        return await in_one_batch(
            store,
            [
                lambda: store.record_issuance(token("ok-1"), AssertionUse("c1", "a1", T0 + 60), issued(token("ok-1"))),
                # A token jti that exists already: this issuance fails, and its assertion is not consumed.
                lambda: store.record_issuance(
                    token("taken"), AssertionUse("c1", "a2", T0 + 60), issued(token("taken"))
                ),
                lambda: store.record_issuance(token("ok-2"), AssertionUse("c1", "a3", T0 + 60), issued(token("ok-2"))),
                lambda: store.record_issuance(token("ok-3"), None, issued(token("ok-3"))),
                lambda: store.audit(AuditEvent("test.last")),
            ],
        )

    results = run(scenario())
    assert results[0] is None
    assert isinstance(results[1], sa.exc.IntegrityError)
    assert results[2:] == [None, None, None]
    assert rows(store, issued_tokens, "jti") == [("ok-1",), ("ok-2",), ("ok-3",), ("taken",)]
    assert rows(store, assertion_jtis, "jti") == [("a1",), ("a3",)]
    assert [(e, s) for _, e, s in audit_trail(store)] == [
        ("token.issued", "c1"),
        ("test.first", None),
        ("token.issued", "c1"),
        ("token.issued", "c1"),
        ("token.issued", "c1"),
        ("test.last", None),
    ]
    assert_chain_ok(store, 6)

    async def retry() -> None:  # the assertion of the failed issuance is still unused
        await store.record_issuance(token("t-retry"), AssertionUse("c1", "a2", T0 + 60), issued(token("t-retry")))

    run(retry())
    assert rows(store, assertion_jtis, "jti") == [("a1",), ("a2",), ("a3",)]


def test_submit_requires_a_running_writer(url: str, clock: FrozenClock) -> None:
    s = SqlStore(url, clock)
    try:
        s.migrate()
        with pytest.raises(RuntimeError, match="the writer is not running"):
            run(s.audit(AuditEvent("test.event")))
    finally:
        s.close()
