"""Signed checkpoints of the audit chain (``tessera audit checkpoint``, periodic in the server) and the
offline check of an export against the issuer's published keys (``tessera audit verify-export``).

The point of a checkpoint: whoever rewrites history *and* recomputes every hash after it passes the
plain chain check, but not the signed checkpoint that follows — that needs the issuer's private key.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Iterator

import httpx
import pytest

from support import LiveServer
from tessera.audit import AuditEvent, AuditRecord, canonical_json, seal


@pytest.fixture
def srv(tmp_path: pathlib.Path) -> Iterator[LiveServer]:
    s = LiveServer(tmp_path / "data", extra_env={"TESSERA_AUDIT_CHECKPOINT_INTERVAL": "1"}).start()
    yield s
    s.stop()


def _export(srv: LiveServer, path: pathlib.Path) -> list[dict]:
    r = srv.cli("audit", "export", "-o", str(path))
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path: pathlib.Path, records: list[dict]) -> None:
    path.write_bytes(b"".join(canonical_json(r) + b"\n" for r in records))


def _rechain(records: list[dict]) -> list[dict]:
    """Recompute every hash from the first record on, as a forger with database access would."""
    out, prev = [], "0" * 64
    for r in records:
        rec = seal(AuditEvent(r["event"], r.get("actor"), r.get("subject"), r.get("data", {})), r["seq"], r["ts"], prev)
        out.append(rec.as_json())
        prev = rec.hash
    return out


def test_checkpoints_verify_offline_and_catch_a_rewritten_history(srv: LiveServer, tmp_path: pathlib.Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(httpx.get(srv.issuer + "/oauth/jwks").text)
    srv.register()  # some history
    r = srv.cli("audit", "checkpoint")
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["jws"].count(".") == 2 and made["seq"] >= 1
    # The server also writes them on its own (every second here).
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        events = [e["event"] for e in srv.admin().get("/audit", params={"limit": 1000}).json()]
        if events.count("audit.checkpoint") >= 3:
            break
        time.sleep(0.3)
    assert events.count("audit.checkpoint") >= 3

    export = tmp_path / "audit.jsonl"
    records = _export(srv, export)
    ok = srv.cli("audit", "verify-export", str(export), "--jwks", str(jwks), "--issuer", srv.issuer)
    assert ok.returncode == 0 and "signed checkpoint" in ok.stdout, ok.stderr

    # Rewrite an early record and recompute every hash after it: the plain chain check passes …
    forged = [dict(r) for r in records]
    first = next(i for i, r in enumerate(forged) if r["event"] == "client.registered")
    forged[first] = {**forged[first], "data": {**forged[first]["data"], "via": "forged"}}
    forged = _rechain(forged)
    from tessera.audit import verify_chain

    assert verify_chain(AuditRecord(**{k: v for k, v in r.items() if k != "hash"}, hash=r["hash"]) for r in forged).ok
    tampered = tmp_path / "forged.jsonl"
    _write(tampered, forged)
    bad = srv.cli("audit", "verify-export", str(tampered), "--jwks", str(jwks), "--issuer", srv.issuer)
    # … but the signed checkpoints no longer match the records they name.
    assert bad.returncode == 1 and "checkpoint" in bad.stderr and "does not match" in bad.stderr, bad.stderr

    # Keys of another issuer, or another issuer name: refused.
    other = LiveServer(tmp_path / "other").start()
    try:
        (tmp_path / "other.json").write_text(httpx.get(other.issuer + "/oauth/jwks").text)
    finally:
        other.stop()
    r = srv.cli("audit", "verify-export", str(export), "--jwks", str(tmp_path / "other.json"), "--issuer", srv.issuer)
    assert r.returncode == 1 and "bad signature" in r.stderr
    r = srv.cli("audit", "verify-export", str(export), "--jwks", str(jwks), "--issuer", "https://elsewhere.example")
    assert r.returncode == 1


def test_an_export_without_checkpoints_can_be_required_to_have_one(tmp_path: pathlib.Path) -> None:
    srv = LiveServer(tmp_path / "data", extra_env={"TESSERA_AUDIT_CHECKPOINT_INTERVAL": "0"}).start()
    try:
        jwks = tmp_path / "jwks.json"
        jwks.write_text(httpx.get(srv.issuer + "/oauth/jwks").text)
        srv.register()
    finally:
        srv.stop()
    export = tmp_path / "audit.jsonl"
    _export(srv, export)
    assert srv.cli("audit", "verify-export", str(export), "--jwks", str(jwks), "--issuer", srv.issuer).returncode == 0
    r = srv.cli(
        "audit", "verify-export", str(export), "--jwks", str(jwks), "--issuer", srv.issuer, "--require-checkpoint"
    )
    assert r.returncode == 1 and "no checkpoint" in r.stderr
