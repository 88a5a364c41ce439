"""What counts as a context never seen for a client (tessera.incidents.ContextWatch), on SQLite and
PostgreSQL: the first context of a client is learnt; a new network or new federated attributes are new
at once; an hour only after the learning period; of several processes that see a new context at the
same time, exactly one reports it."""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Iterator

import pytest

from tessera.clock import FrozenClock
from tessera.incidents import ContextWatch, attributes_digest, network_of
from tessera.store.sql.store import SqlStore

T0 = 1_800_000_000.0
DAY = 86400


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
    s = SqlStore(url, clock)
    s.migrate()
    s.start()
    yield s
    s.close()


def features(ip: str, hour: int, attributes: dict[str, str] | None = None) -> dict[str, str | None]:
    fed = {"trust": "ci", "issuer": "https://ci.example", "attributes": attributes} if attributes else None
    return {"network": network_of(ip), "attributes": attributes_digest(fed), "hour": str(hour)}


def test_networks_are_counted_per_slash_24_and_slash_56() -> None:
    assert network_of("192.0.2.77") == "192.0.2.0/24"
    assert network_of("2001:db8:1:2:3::4") == "2001:db8:1::/56"
    assert network_of("::ffff:198.51.100.9") == "198.51.100.0/24"
    assert network_of("not an address") is None
    assert network_of(None) is None


def test_attribute_digests_depend_on_the_attributes_and_the_trust() -> None:
    a = attributes_digest({"trust": "ci", "issuer": "i", "attributes": {"ref": "main"}})
    assert a == attributes_digest({"trust": "ci", "issuer": "i", "attributes": {"ref": "main"}})
    assert a != attributes_digest({"trust": "ci", "issuer": "i", "attributes": {"ref": "evil"}})
    assert a != attributes_digest({"trust": "gl", "issuer": "i", "attributes": {"ref": "main"}})
    assert attributes_digest(None) is None


def test_the_first_context_is_learnt_and_a_new_network_is_news(store: SqlStore, clock: FrozenClock) -> None:
    watch = ContextWatch(store, clock.now, learning_period=7 * DAY)
    first = watch.observe("c1", features("192.0.2.1", 10))
    assert first == {"network": False, "attributes": False, "hour": False, "any": False}
    assert watch.observe("c1", features("192.0.2.200", 10))["any"] is False  # same /24
    new = watch.observe("c1", features("198.51.100.1", 10))
    assert new["network"] is True and new["any"] is True and new["hour"] is False
    assert watch.observe("c1", features("198.51.100.1", 10))["network"] is False  # known now
    # Another client's history is its own.
    assert watch.observe("c2", features("198.51.100.1", 10))["network"] is False


def test_new_federated_attributes_are_news(store: SqlStore, clock: FrozenClock) -> None:
    watch = ContextWatch(store, clock.now, learning_period=7 * DAY)
    assert not watch.observe("ci", features("192.0.2.1", 10, {"ref": "refs/heads/main"}))["any"]
    got = watch.observe("ci", features("192.0.2.1", 10, {"ref": "refs/heads/evil"}))
    assert got["attributes"] is True and got["network"] is False


def test_an_hour_is_news_only_after_the_learning_period(store: SqlStore, clock: FrozenClock) -> None:
    watch = ContextWatch(store, clock.now, learning_period=7 * DAY)
    watch.observe("c1", features("192.0.2.1", 10))
    clock.advance(DAY)
    assert watch.observe("c1", features("192.0.2.1", 3))["hour"] is False  # still learning: hour 3 learnt
    clock.advance(7 * DAY)
    assert watch.observe("c1", features("192.0.2.1", 3))["hour"] is False  # learnt during the period
    assert watch.observe("c1", features("192.0.2.1", 4))["hour"] is True


def test_a_new_context_seen_by_several_processes_at_once_is_news_once(
    url: str, store: SqlStore, clock: FrozenClock
) -> None:
    ContextWatch(store, clock.now, learning_period=0).observe("c1", features("192.0.2.1", 10))
    stores = [SqlStore(url, clock) for _ in range(4)]
    for s in stores:
        s.start()
    watches = [ContextWatch(s, clock.now, learning_period=0) for s in stores]
    results: list[bool] = []
    barrier = threading.Barrier(len(watches))

    def observe(w: ContextWatch) -> None:
        barrier.wait()
        results.append(w.observe("c1", features("203.0.113.5", 10))["network"])

    threads = [threading.Thread(target=observe, args=(w,)) for w in watches]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        for s in stores:
            s.close()
    assert sorted(results) == [False, False, False, True]
