"""The tamper-evident audit log: a SHA-256 hash chain over canonical JSON records.

Each record's ``hash`` is SHA-256 over the canonical JSON (sorted keys, no insignificant white space,
UTF-8; the RFC 8785 form for the values Tessera writes) of the record without ``hash``; ``prev`` is
the previous record's hash, 64 zeros for the first. Editing, removing, reordering or cutting off
records is detected and the first bad record is named, by ``verify_chain`` and ``tessera audit
verify``; ``tessera audit export`` output re-verifies with the independent implementation below.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import pathlib
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from support import LiveServer, ec_jwk, ec_key
from tessera.audit import GENESIS, AuditEvent, AuditRecord, seal, verify_chain

# -- an independent verifier (no Tessera code) ------------------------------------------------------------


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def first_bad(lines: list[dict[str, Any]], prev: str = "0" * 64, first_seq: int = 1) -> int | None:
    """The seq of the first exported record that does not verify, or None."""
    for i, rec in enumerate(lines):
        assert set(rec) == {"seq", "ts", "event", "actor", "subject", "data", "prev", "hash"}
        if rec["seq"] != first_seq + i or rec["prev"] != prev or rec["hash"] != record_hash(rec):
            return first_seq + i
        prev = rec["hash"]
    return None


# -- unit: seal / verify_chain --------------------------------------------------------------------------------


def chain(n: int) -> list[AuditRecord]:
    records, prev = [], GENESIS
    for i in range(1, n + 1):
        rec = seal(
            AuditEvent(f"test.event{i}", actor="tester", subject=f"s{i}", data={"i": i, "name": "Zoë ☃"}),
            seq=i,
            ts=1_700_000_000_000 + i,
            prev=prev,
        )
        records.append(rec)
        prev = rec.hash
    return records


def test_seal_hashes_the_canonical_json_of_the_record() -> None:
    records = chain(3)
    assert records[0].prev == GENESIS == "0" * 64
    for rec in records:
        as_json = rec.as_json()
        assert as_json["hash"] == rec.hash == record_hash(as_json)
    assert [r.prev for r in records[1:]] == [r.hash for r in records[:-1]]


def test_intact_chain_verifies() -> None:
    records = chain(5)
    report = verify_chain(records, expected_head=(5, records[-1].hash))
    assert report.ok and report.checked == 5 and report.head == records[-1].hash
    assert report.first_bad_seq is None and report.reason is None
    assert verify_chain(iter(records)).ok  # any iterable, read once


def test_empty_chain_verifies() -> None:
    report = verify_chain([])
    assert report.ok and report.checked == 0 and report.head == GENESIS
    assert verify_chain([], expected_head=(0, GENESIS)).ok


@pytest.mark.parametrize(
    "field,value",
    [
        ("data", {"i": 3, "name": "Mallory"}),
        ("event", "test.other"),
        ("actor", "mallory"),
        ("subject", None),
        ("ts", 1),
        ("hash", "f" * 64),
    ],
)
def test_altered_record_is_named(field: str, value: Any) -> None:
    records = chain(5)
    records[2] = dataclasses.replace(records[2], **{field: value})
    report = verify_chain(records)
    assert not report.ok
    assert report.first_bad_seq == 3
    assert report.checked == 2
    assert report.head == records[1].hash


def test_resealed_record_breaks_the_link_to_the_next() -> None:
    records = chain(5)
    forged = seal(
        AuditEvent("test.event3", actor="tester", subject="s3", data={"i": 3, "name": "forged"}),
        seq=3,
        ts=records[2].ts,
        prev=records[1].hash,
    )
    records[2] = forged
    report = verify_chain(records)
    assert not report.ok and report.first_bad_seq == 4
    assert "does not link" in (report.reason or "")


def test_removed_record_in_the_middle_is_named() -> None:
    records = chain(5)
    del records[2]
    report = verify_chain(records)
    assert not report.ok and report.first_bad_seq == 3 and report.checked == 2
    assert "missing" in (report.reason or "")


def test_reordered_records_are_named() -> None:
    records = chain(5)
    records[1], records[3] = records[3], records[1]
    report = verify_chain(records)
    assert not report.ok and report.first_bad_seq == 2 and report.checked == 1


def test_renumbered_swap_is_named() -> None:
    # records 2 and 4 swap places and take each other's seq: sequence intact, links broken
    records = chain(5)
    records[1], records[3] = (dataclasses.replace(records[3], seq=2), dataclasses.replace(records[1], seq=4))
    report = verify_chain(records)
    assert not report.ok and report.first_bad_seq == 2


def test_duplicated_record_is_named() -> None:
    records = chain(4)
    records.insert(2, records[1])
    report = verify_chain(records)
    assert not report.ok and report.first_bad_seq == 3


def test_truncated_tail_is_caught_by_the_expected_head() -> None:
    records = chain(6)
    head = (6, records[-1].hash)
    assert verify_chain(records[:4]).ok  # without the head, a cut-off tail looks like a shorter chain
    report = verify_chain(records[:4], expected_head=head)
    assert not report.ok and report.first_bad_seq == 5 and report.checked == 4
    assert "5..6" in (report.reason or "")
    report = verify_chain([], expected_head=head)
    assert not report.ok and report.first_bad_seq == 1


def test_head_that_does_not_match_the_last_record() -> None:
    records = chain(3)
    report = verify_chain(records, expected_head=(3, "0" * 63 + "1"))
    assert not report.ok and report.first_bad_seq == 3
    report = verify_chain(records, expected_head=(2, records[1].hash))  # records past the head
    assert not report.ok


# -- end to end: a real server's database, tampered with, then `tessera audit verify` -------------------------


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A stopped server whose audit log holds registrations, issuances and refusals."""
    srv = LiveServer(tmp_path_factory.mktemp("audit") / "data").start()
    try:
        secret_client = srv.register(client_name="Zürich ☃ builder")
        key = ec_key()
        srv.register(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [ec_jwk(key, "k1")]})
        for _ in range(3):
            r = httpx.post(
                srv.token_endpoint,
                data={"grant_type": "client_credentials"},
                timeout=10,
                auth=(secret_client["client_id"], secret_client["client_secret"]),
            )
            assert r.status_code == 200, r.text
        r = httpx.post(
            srv.token_endpoint,
            data={"grant_type": "client_credentials"},
            timeout=10,
            auth=(secret_client["client_id"], "wrong-secret"),
        )
        assert r.status_code == 401
        r = httpx.post(
            srv.token_endpoint,
            data={"grant_type": "client_credentials", "scope": "admin"},
            timeout=10,
            auth=(secret_client["client_id"], secret_client["client_secret"]),
        )
        assert r.status_code == 400
    finally:
        srv.stop()
    out = srv.cli("audit", "verify")
    assert out.returncode == 0, out.stderr
    yield srv


def _records(srv: LiveServer) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(srv.data_dir / "tessera.db")) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM audit_log ORDER BY seq")]


@pytest.fixture
def db_copy(recorded: LiveServer, tmp_path: pathlib.Path) -> LiveServer:
    """The recorded database and its KEK, copied for one test to tamper with."""
    dst = LiveServer(tmp_path / "data")
    dst.data_dir.mkdir(parents=True)
    shutil.copy(recorded.data_dir / "kek", dst.data_dir / "kek")
    with (
        contextlib.closing(sqlite3.connect(recorded.data_dir / "tessera.db")) as src,
        contextlib.closing(sqlite3.connect(dst.data_dir / "tessera.db")) as out,
    ):
        src.backup(out)
    return dst


def _tamper(srv: LiveServer, *statements: tuple[str, tuple[Any, ...]]) -> None:
    with contextlib.closing(sqlite3.connect(srv.data_dir / "tessera.db")) as db, db:
        for sql, args in statements:
            db.execute(sql, args)


def _broken_at(srv: LiveServer) -> tuple[int, str]:
    r: subprocess.CompletedProcess[str] = srv.cli("audit", "verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    line = next(line for line in r.stderr.splitlines() if line.startswith("audit chain BROKEN"))
    seq = int(line.split("at record ", 1)[1].split(":", 1)[0])
    return seq, line


def test_recorded_log_holds_the_expected_events(recorded: LiveServer) -> None:
    events = [r["event"] for r in _records(recorded)]
    assert events[:2] == ["key.created", "key.created"]
    assert events.count("client.registered") == 2
    assert events.count("token.issued") == 3
    assert events.count("token.refused") == 2
    assert len(events) >= 9


def test_untouched_copy_verifies(db_copy: LiveServer) -> None:
    r = db_copy.cli("audit", "verify")
    assert r.returncode == 0, r.stderr
    n = len(_records(db_copy))
    assert r.stdout.startswith(f"audit chain ok: {n} records, head {_records(db_copy)[-1]['hash']}")


@pytest.mark.parametrize("seq", [1, 5, -1], ids=["first", "middle", "last"])
def test_altered_data_is_named(db_copy: LiveServer, seq: int) -> None:
    rows = _records(db_copy)
    target = rows[seq - 1] if seq > 0 else rows[-1]
    data = json.loads(target["data"])
    data["tampered"] = True
    _tamper(db_copy, ("UPDATE audit_log SET data = ? WHERE seq = ?", (json.dumps(data), target["seq"])))
    bad, line = _broken_at(db_copy)
    assert bad == target["seq"]
    assert "altered" in line


@pytest.mark.parametrize(
    "column,value",
    [("event", "client.deleted"), ("actor", "someone-else"), ("subject", None), ("ts", 0), ("hash", "a" * 64)],
)
def test_altered_column_is_named(db_copy: LiveServer, column: str, value: Any) -> None:
    target = _records(db_copy)[4]
    _tamper(db_copy, (f"UPDATE audit_log SET {column} = ? WHERE seq = ?", (value, target["seq"])))
    assert _broken_at(db_copy)[0] == target["seq"]


def test_refusal_erased_from_the_log_is_named(db_copy: LiveServer) -> None:
    refusal = next(r for r in _records(db_copy) if r["event"] == "token.refused")
    _tamper(db_copy, ("DELETE FROM audit_log WHERE seq = ?", (refusal["seq"],)))
    bad, line = _broken_at(db_copy)
    assert bad == refusal["seq"]
    assert "missing" in line


def test_swapped_data_is_named(db_copy: LiveServer) -> None:
    rows = _records(db_copy)
    a, b = rows[3], rows[6]
    _tamper(
        db_copy,
        ("UPDATE audit_log SET data = ? WHERE seq = ?", (b["data"], a["seq"])),
        ("UPDATE audit_log SET data = ? WHERE seq = ?", (a["data"], b["seq"])),
    )
    assert _broken_at(db_copy)[0] == a["seq"]


def test_reordered_rows_are_named(db_copy: LiveServer) -> None:
    rows = _records(db_copy)
    a, b = rows[2]["seq"], rows[5]["seq"]
    _tamper(
        db_copy,
        ("UPDATE audit_log SET seq = -1 WHERE seq = ?", (a,)),
        ("UPDATE audit_log SET seq = ? WHERE seq = ?", (a, b)),
        ("UPDATE audit_log SET seq = ? WHERE seq = -1", (b,)),
    )
    bad, line = _broken_at(db_copy)
    assert bad == a
    assert "does not link" in line


def test_resealed_record_is_named_at_the_next(db_copy: LiveServer) -> None:
    # A forger who recomputes the altered record's hash still breaks the next record's link.
    rows = _records(db_copy)
    target = rows[4]
    data = json.loads(target["data"])
    data["forged"] = True
    forged = {k: target[k] for k in ("seq", "ts", "event", "actor", "subject", "prev")} | {"data": data}
    _tamper(
        db_copy,
        (
            "UPDATE audit_log SET data = ?, hash = ? WHERE seq = ?",
            (json.dumps(data), record_hash(forged), target["seq"]),
        ),
    )
    assert _broken_at(db_copy)[0] == target["seq"] + 1


def test_truncated_tail_is_named(db_copy: LiveServer) -> None:
    rows = _records(db_copy)
    last = rows[-1]["seq"]
    _tamper(db_copy, ("DELETE FROM audit_log WHERE seq >= ?", (last - 1,)))
    bad, line = _broken_at(db_copy)
    assert bad == last - 1
    assert f"{last - 1}..{last}" in line


def test_verify_does_not_modify_the_database(db_copy: LiveServer) -> None:
    _tamper(db_copy, ("UPDATE audit_log SET actor = 'x' WHERE seq = 3", ()))
    before = _records(db_copy)
    _broken_at(db_copy)
    assert _records(db_copy) == before


# -- export ---------------------------------------------------------------------------------------------------


def test_export_reverifies_independently(recorded: LiveServer, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "audit.jsonl"
    r = recorded.cli("audit", "export", "-o", str(out))
    assert r.returncode == 0, r.stderr
    raw = out.read_bytes()
    assert raw.endswith(b"\n")
    lines = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
    assert first_bad(lines) is None
    rows = _records(recorded)
    assert [rec["hash"] for rec in lines] == [row["hash"] for row in rows]
    with contextlib.closing(sqlite3.connect(recorded.data_dir / "tessera.db")) as db:
        assert db.execute("SELECT seq, hash FROM audit_head").fetchone() == (lines[-1]["seq"], lines[-1]["hash"])
    # non-ASCII metadata is hashed as UTF-8, not \\u escapes
    assert "Zürich ☃ builder" in raw.decode("utf-8")

    stdout = recorded.cli("audit", "export")
    assert stdout.returncode == 0
    assert stdout.stdout.encode("utf-8") == raw

    after = recorded.cli("audit", "export", "--after", "4")
    tail = [json.loads(line) for line in after.stdout.splitlines()]
    assert tail == lines[4:]
    assert first_bad(tail, prev=lines[3]["hash"], first_seq=5) is None


def test_export_of_a_tampered_log_fails_independent_verification(db_copy: LiveServer) -> None:
    _tamper(db_copy, ("UPDATE audit_log SET actor = 'mallory' WHERE seq = 4", ()))
    r = db_copy.cli("audit", "export")
    assert r.returncode == 0
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    with pytest.raises(AssertionError, match="4"):
        assert first_bad(lines) is None


def test_verify_without_a_database_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    env = LiveServer(tmp_path / "data")
    r = env.cli("audit", "verify")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("tessera: ")
    assert not (env.data_dir / "tessera.db").exists()
