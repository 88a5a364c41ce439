"""The durable outbox on SQLite and a real PostgreSQL: at-least-once delivery under one message id,
backoff driven by an injected clock, dead letters and requeue, leases that survive a crashed worker,
``FOR UPDATE SKIP LOCKED`` sharing between workers, sealed bodies, and the audit trail of each step."""

from __future__ import annotations

import asyncio
import json
import pathlib
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from channel_support import WebhookReceiver
from tessera.audit import AuditRecord, verify_chain
from tessera.channels import (
    FileChannel,
    Message,
    OutboxWorker,
    RetryPolicy,
    WebhookChannel,
    generate_key,
    new_message_id,
)
from tessera.clock import FrozenClock
from tessera.oauth.keys import KEK
from tessera.store.sql import outbox as sql_outbox
from tessera.store.sql import repo
from tessera.store.sql.engine import create_engines, upgrade
from tessera.store.sql.outbox import SqlOutbox

LINK = "https://tessera.example/approve/tok_" + "Zq9" * 12


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tessera.db'}"
    return str(request.getfixturevalue("postgres").create_database())


@pytest.fixture
def engine(url: str) -> Iterator[sa.Engine]:
    write, read = create_engines(url)
    upgrade(write)
    yield write
    write.dispose()
    if read is not write:
        read.dispose()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(time.time())


@pytest.fixture
def store(engine: sa.Engine, clock: FrozenClock) -> SqlOutbox:
    return SqlOutbox(engine, lambda: int(clock.now() * 1000))


@pytest.fixture(scope="module")
def kek() -> KEK:
    return KEK.from_text(KEK.generate_text())


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    secret, _ = generate_key()
    r = WebhookReceiver(secrets=[secret]).start()
    r.key = secret  # type: ignore[attr-defined]
    yield r
    r.stop()


def hook(receiver: WebhookReceiver) -> WebhookChannel:
    # The receiver checks timestamps against the wall clock, so the channel signs with it.
    return WebhookChannel("ops", receiver.url, [receiver.key], allow_http_loopback=True, timeout=2)  # type: ignore[attr-defined]


def message(channel: str = "webhook:ops", **kw: Any) -> Message:
    fields: dict[str, Any] = {
        "id": new_message_id(),
        "channel": channel,
        "kind": "approval.requested",
        "recipient": "alice",
        "subject": "Approve deploy?",
        "text": f"Open {LINK}",
        "data": {"url": LINK},
        "ref": "apr_42",
    }
    fields.update(kw)
    return Message(**fields)


def enqueue(store: SqlOutbox, kek: KEK, msg: Message) -> Message:
    store.enqueue(msg, msg.seal(kek))
    return msg


def worker(store: SqlOutbox, channels: dict[str, Any], kek: KEK, clock: FrozenClock, **kw: Any) -> OutboxWorker:
    kw.setdefault("policy", RetryPolicy(rng=random.Random(7)))
    kw.setdefault("worker_id", "w1")
    return OutboxWorker(store, channels, kek, now=clock.now, **kw)


def audit(engine: sa.Engine) -> list[AuditRecord]:
    with engine.connect() as conn:
        return list(repo.iter_audit(conn))


def events(engine: sa.Engine) -> list[str]:
    return [r.event for r in audit(engine)]


def status(store: SqlOutbox, message_id: str) -> dict[str, Any]:
    [row] = [m for m in store.list_messages(limit=1000) if m["message_id"] == message_id]
    return row


def test_enqueued_message_is_delivered_once(
    store: SqlOutbox, engine: sa.Engine, kek: KEK, clock: FrozenClock, receiver: WebhookReceiver
) -> None:
    msg = enqueue(store, kek, message())
    w = worker(store, {"webhook:ops": hook(receiver)}, kek, clock)
    assert asyncio.run(w.run_once()) == 1
    assert asyncio.run(w.run_once()) == 0
    assert receiver.accepted_ids() == [msg.id]
    row = status(store, msg.id)
    assert row["status"] == "delivered" and row["attempts"] == 1 and row["delivered_at"] == int(clock.now() * 1000)
    assert store.counts() == {"pending": 0, "delivered": 1, "dead": 0}
    [rec] = [r for r in audit(engine) if r.event == "outbox.delivered"]
    assert rec.subject == msg.id
    assert rec.data["ref"] == "apr_42" and rec.data["channel"] == "webhook:ops" and rec.data["attempts"] == 1


def test_outage_is_retried_with_backoff_and_nothing_is_lost_or_duplicated(
    store: SqlOutbox, engine: sa.Engine, kek: KEK, clock: FrozenClock, receiver: WebhookReceiver
) -> None:
    msgs = [enqueue(store, kek, message()) for _ in range(3)]
    policy = RetryPolicy(max_attempts=8, base=2.0, cap=600.0, rng=random.Random(1))
    w = worker(store, {"webhook:ops": hook(receiver)}, kek, clock, policy=policy)
    receiver.stop()

    for attempt in (1, 2, 3):
        t0 = int(clock.now() * 1000)
        assert asyncio.run(w.run_once()) == 3
        for m in msgs:
            row = status(store, m.id)
            assert row["status"] == "pending" and row["attempts"] == attempt
            # full jitter: within [now, now + base * 2**(attempt-1)]
            assert t0 <= row["next_attempt_at"] <= t0 + int(2.0 * 2 ** (attempt - 1) * 1000)
            assert "could not be reached" in row["last_error"]
        clock.advance(2.0 * 2 ** (attempt - 1) + 0.001)

    receiver.start()
    for _ in range(10):  # bounded: everything is due after the last advance
        if store.counts()["delivered"] == 3:
            break
        asyncio.run(w.run_once())
        clock.advance(10)
    assert sorted(receiver.accepted_ids()) == sorted(m.id for m in msgs)
    assert store.counts() == {"pending": 0, "delivered": 3, "dead": 0}
    failed = [r for r in audit(engine) if r.event == "outbox.failed"]
    assert len(failed) >= 9 and {r.subject for r in failed} == {m.id for m in msgs}
    assert all(r.data["retry_at"] >= r.ts for r in failed)


def test_dead_letter_after_max_attempts_then_requeue(
    store: SqlOutbox, engine: sa.Engine, kek: KEK, clock: FrozenClock, receiver: WebhookReceiver
) -> None:
    receiver.state.status = 500
    msg = enqueue(store, kek, message())
    w = worker(
        store, {"webhook:ops": hook(receiver)}, kek, clock, policy=RetryPolicy(max_attempts=3, rng=random.Random(2))
    )
    for _ in range(10):
        asyncio.run(w.run_once())
        clock.advance(700)
        if store.counts()["dead"]:
            break
    [dead] = store.list_messages(status="dead")
    assert dead["message_id"] == msg.id and dead["attempts"] == 3 and dead["ref"] == "apr_42"
    assert dead["last_error"] == "webhook:ops answered HTTP 500"
    assert len(receiver.deliveries) == 3
    assert events(engine).count("outbox.failed") == 2 and events(engine).count("outbox.dead") == 1
    assert asyncio.run(w.run_once()) == 0  # a dead letter is not tried again

    receiver.state.status = 200
    assert store.requeue(msg.id) and not store.requeue(msg.id)
    assert status(store, msg.id)["status"] == "pending" and status(store, msg.id)["attempts"] == 0
    assert asyncio.run(w.run_once()) == 1
    assert receiver.accepted_ids() == [msg.id]
    assert "outbox.requeued" in events(engine)


def test_permanent_failures_dead_letter_at_once(
    store: SqlOutbox, engine: sa.Engine, kek: KEK, clock: FrozenClock, receiver: WebhookReceiver
) -> None:
    receiver.state.status = 410
    gone = enqueue(store, kek, message())
    unknown = enqueue(store, kek, message(channel="webhook:nope"))
    tampered = message()
    store.enqueue(tampered, message(id=tampered.id).seal(KEK.from_text(KEK.generate_text())))
    w = worker(store, {"webhook:ops": hook(receiver)}, kek, clock)
    assert asyncio.run(w.run_once()) == 3
    dead = {m["message_id"]: m["last_error"] for m in store.list_messages(status="dead")}
    assert dead[gone.id] == "webhook:ops answered HTTP 410 Gone"
    assert dead[unknown.id] == "no channel named 'webhook:nope' is configured"
    assert "could not be opened" in dead[tampered.id]
    assert events(engine).count("outbox.dead") == 3


def test_a_crashed_worker_loses_nothing(
    store: SqlOutbox, engine: sa.Engine, kek: KEK, clock: FrozenClock, receiver: WebhookReceiver
) -> None:
    msg = enqueue(store, kek, message())
    [_abandoned] = asyncio.run(store.claim("crashed", 10, 60_000))  # claimed, then the process died
    w2 = worker(store, {"webhook:ops": hook(receiver)}, kek, clock, worker_id="w2", lease=60.0)
    assert asyncio.run(w2.run_once()) == 0  # still leased
    clock.advance(61)
    assert asyncio.run(w2.run_once()) == 1
    assert receiver.accepted_ids() == [msg.id]
    row = status(store, msg.id)
    assert row["status"] == "delivered" and row["attempts"] == 2
    # The late worker's outcome no longer counts: it does not hold the lease, and the row is delivered.
    with engine.begin() as conn:
        assert not sql_outbox.mark_failed(conn, msg.id, "crashed", "late", None, int(clock.now() * 1000))
        assert not sql_outbox.mark_delivered(conn, msg.id, "crashed", int(clock.now() * 1000))
    assert events(engine).count("outbox.delivered") == 1


def test_body_is_sealed_and_never_listed_or_audited(
    url: str, store: SqlOutbox, engine: sa.Engine, kek: KEK, clock: FrozenClock, tmp_path: pathlib.Path
) -> None:
    sent = enqueue(store, kek, message(channel="file"))
    dead = enqueue(store, kek, message(channel="webhook:missing"))
    out = tmp_path / "outbox.jsonl"
    w = worker(store, {"file": FileChannel(out)}, kek, clock)
    assert asyncio.run(w.run_once()) == 2
    [line] = out.read_text().splitlines()
    assert json.loads(line)["data"]["url"] == LINK and json.loads(line)["id"] == sent.id
    assert out.stat().st_mode & 0o777 == 0o600

    secret = LINK.rsplit("/", 1)[1].encode()
    if url.startswith("sqlite"):
        engine.dispose()  # a checkpoint would not matter: look in the WAL as well
        db = pathlib.Path(url[len("sqlite:///") :])
        raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
        assert sent.id.encode() in raw and secret not in raw
    else:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT outbox::text FROM outbox").scalars().all()
        assert len(rows) == 2 and not any(secret.decode() in r for r in rows)
    listed = store.list_messages()
    assert {m["message_id"] for m in listed} == {sent.id, dead.id}
    assert all("sealed_body" not in m and "body" not in m for m in listed)
    assert secret.decode() not in json.dumps(listed)
    records = audit(engine)
    assert {"outbox.delivered", "outbox.dead"} <= {r.event for r in records}
    assert all(secret.decode() not in json.dumps(r.as_json()) for r in records)
    assert verify_chain(records).ok


def test_run_wakes_on_enqueue_and_stops(
    store: SqlOutbox, kek: KEK, clock: FrozenClock, receiver: WebhookReceiver
) -> None:
    w = worker(store, {"webhook:ops": hook(receiver)}, kek, clock, poll_interval=30.0)

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(w.run(stop))
        await asyncio.sleep(0.05)
        msg = enqueue(store, kek, message())
        w.wake()
        for _ in range(200):  # at most 2 s; the poll interval alone would take 30 s
            if store.counts()["delivered"]:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)
        assert receiver.accepted_ids() == [msg.id]

    asyncio.run(go())


def test_retry_policy_full_jitter() -> None:
    p = RetryPolicy(max_attempts=4, base=2.0, cap=5.0, rng=random.Random(3))
    for attempts, upper in ((1, 2.0), (2, 4.0), (3, 5.0)):
        for _ in range(50):
            d = p.delay(attempts)
            assert d is not None and 0 <= d <= upper
    assert p.delay(4) is None
    d = p.delay(1, retry_after=3.0)
    assert d is not None and 3.0 <= d <= 3.0 + 2.0
    assert p.delay(1, retry_after=1e6) == 5.0


@pytest.mark.postgres
def test_postgres_workers_never_claim_the_same_row(postgres: Any, kek: KEK, tmp_path: pathlib.Path) -> None:
    url = str(postgres.create_database())
    engine, _ = create_engines(url)
    upgrade(engine)
    clock = FrozenClock(time.time())
    store = SqlOutbox(engine, lambda: int(clock.now() * 1000))
    ids = [enqueue(store, kek, message(channel="file")).id for _ in range(240)]

    # Claims racing in threads, each its own transaction: disjoint, and together all rows.
    start = threading.Barrier(6)
    claimed: dict[str, list[str]] = {}

    def claimer(name: str) -> None:
        mine = claimed.setdefault(name, [])
        start.wait()
        while True:
            with engine.begin() as conn:
                got = sql_outbox.claim(conn, name, 7, 60_000, int(clock.now() * 1000))
            if not got:
                return
            mine.extend(i.message_id for i in got)

    threads = [threading.Thread(target=claimer, args=(f"t{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    every = [i for got in claimed.values() for i in got]
    assert sorted(every) == sorted(ids) and len(set(every)) == len(every)
    assert sum(1 for got in claimed.values() if got) > 1

    # Then two workers deliver them all after the leases expire: each exactly once.
    clock.advance(61)
    out = tmp_path / "out.jsonl"
    channel = FileChannel(out)

    async def deliver() -> None:
        workers = [
            OutboxWorker(store, {"file": channel}, kek, worker_id=f"w{i}", now=clock.now, batch=16) for i in range(2)
        ]
        for _ in range(40):
            if store.counts()["delivered"] == len(ids):
                return
            await asyncio.gather(*(w.run_once() for w in workers))

    asyncio.run(deliver())
    written = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(written) == sorted(ids)
    assert store.counts() == {"pending": 0, "delivered": len(ids), "dead": 0}
    with engine.connect() as conn:
        records = list(repo.iter_audit(conn))
    assert [r.event for r in records].count("outbox.delivered") == len(ids)
    assert verify_chain(records).ok
    engine.dispose()


def test_channels_exports_exactly_its_public_names() -> None:
    import tessera.channels

    exported = set(tessera.channels.__all__)
    public = {name for name in dir(tessera.channels) if not name.startswith("_")}
    assert exported == public - {"ciba_ping", "file", "message", "outbox", "smtp", "webhook"}
    for name in exported:
        assert getattr(tessera.channels, name).__module__.startswith("tessera.channels")
