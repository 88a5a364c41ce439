"""Replay of recorded decisions against a candidate flow set (``tessera flows replay``), on a decision
log of 10,000 records: the exact decisions that would flip, grouped; records that cannot be replayed
listed apart; and ``tessera flows publish`` refusing a change that turns recorded denials into allows
on a high-risk trigger unless an approved approval request is named."""

from __future__ import annotations

import json
import pathlib
import random
import subprocess
import textwrap

import pytest

from support import LiveServer
from tessera.audit import AuditEvent
from tessera.clock import FrozenClock
from tessera.flow_gate import redact
from tessera.store.sql.store import SqlStore
from tessera.workflows.engine import Recorded, evaluate
from tessera.workflows.loader import load_text
from tessera.workflows.replay import recorded_results, replay

CURRENT = textwrap.dedent(
    """
    id: deploys
    on: token.issue
    grants: [client_credentials]
    risk: high
    steps:
      - id: no-admin-at-night
        when: '"admin" in request.scope && source.hour < 6'
        deny: {}
        reason: no admin tokens at night
      - id: deploy-approval
        when: '"deploy" in request.scope'
        approve: {groups: [leads], quorum: 1, assurance: aal2}
      - id: cap
        limit: {lifetime: 600}
    """
)
# The candidate: admin tokens are refused all day; deploys no longer need an approval.
CANDIDATE = textwrap.dedent(
    """
    id: deploys
    on: token.issue
    grants: [client_credentials]
    risk: high
    steps:
      - id: no-admin
        when: '"admin" in request.scope'
        deny: {}
        reason: no admin tokens
      - id: cap
        limit: {lifetime: 600}
    """
)
T0 = 1_800_000_000 - (1_800_000_000 % 86400)  # midnight UTC


def decision_log(n: int, seed: int = 7) -> list[dict]:
    """n decisions as the gate records them (inputs, outcome, trace, approvals), from the current flow."""
    rng = random.Random(seed)
    flow = load_text(CURRENT, "current.yaml")
    out = []
    for i in range(n):
        scope = sorted(rng.sample(["read", "deploy", "admin", "write"], rng.randint(1, 3)))
        hour = rng.randrange(24)
        approved = rng.random() < 0.5
        context = {
            "client": {"id": f"c{i % 50}", "name": "", "contacts": [], "grant_types": [], "scope": [], "metadata": {}},
            "request": {"grant": "client_credentials", "scope": scope, "audience": ["https://api"], "lifetime": 900},
            "source": {"hour": hour},
        }
        recorded = Recorded(approvals={"deploys/deploy-approval": "approved"} if approved else {})
        d = evaluate([flow], "token.issue", context, recorded, T0 + hour * 3600, "client_credentials")
        out.append(
            {
                "seq": i + 1,
                "ts": (T0 + hour * 3600) * 1000,
                "data": {
                    "trigger": "token.issue",
                    "grant": "client_credentials",
                    **d.to_json(),
                    "inputs": redact(context),
                },
                "_scope": scope,
                "_hour": hour,
                "_approved": approved,
            }
        )
    return out


def test_replay_finds_exactly_the_decisions_that_flip() -> None:
    log = decision_log(10_000)
    report = replay(log, [load_text(CANDIDATE, "candidate.yaml")])

    # Expected from the generator's own parameters, not from the engine: before, night-time admin was
    # denied and an unapproved deploy pending; the candidate denies admin always and asks no approval.
    def pending_before(r: dict) -> bool:
        return "deploy" in r["_scope"] and not r["_approved"] and not ("admin" in r["_scope"] and r["_hour"] < 6)

    admin_day = [r for r in log if "admin" in r["_scope"] and r["_hour"] >= 6]
    assert report.total == 10_000
    assert report.changes["allow→deny (high-risk trigger)"] == [r["seq"] for r in admin_day if not pending_before(r)]
    assert report.changes["pending→deny (high-risk trigger)"] == [r["seq"] for r in admin_day if pending_before(r)]
    assert report.changes["pending→allow (high-risk trigger)"] == [
        r["seq"] for r in log if pending_before(r) and "admin" not in r["_scope"]
    ]
    assert report.changes["approvals removed"] == [r["seq"] for r in log if pending_before(r)]
    assert "deny→allow (high-risk trigger)" not in report.changes  # night-time admin denials stay denied
    flipped = {s for seqs in report.changes.values() for s in seqs}
    assert report.unchanged == 10_000 - len(flipped) > 1000


def test_unreplayable_records_are_listed_apart_and_replay_is_deterministic() -> None:
    log = decision_log(200, seed=3)
    log[10]["data"].pop("inputs")
    log[20]["data"]["inputs"] = "not a context"
    candidate = [load_text(CANDIDATE, "candidate.yaml")]
    first, second = replay(log, candidate), replay(log, candidate)
    assert [s for s, _ in first.unreplayable] == [11, 21]
    assert first.to_json() == second.to_json()
    assert first.total == 200


def test_recorded_results_come_from_the_trace() -> None:
    r = recorded_results(["f/a:approved", "f/b:denied", "f/hook:passed", "f/c:skipped", "g/h:failed"])
    assert r.approvals == {"f/a": "approved", "f/b": "denied"}
    assert r.hooks["f/hook"] == {"allow": True} and r.hooks["g/h"]["allow"] is False


@pytest.fixture
def cli_env(tmp_path: pathlib.Path) -> LiveServer:
    srv = LiveServer(tmp_path / "data")
    return srv


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_cli_replay_and_the_publish_guard(cli_env: LiveServer, tmp_path: pathlib.Path) -> None:
    srv = cli_env
    current_dir = tmp_path / "current"
    current_dir.mkdir()
    (current_dir / "deploys.yaml").write_text(CURRENT)
    _ok(srv.cli("flows", "publish", str(current_dir), "--yes"))
    # Record 300 decisions in the server's own audit log, as the gate would.
    log = decision_log(300, seed=11)
    store = SqlStore(f"sqlite:///{srv.data_dir / 'tessera.db'}", FrozenClock(T0))
    try:
        store.write(lambda c: None, [AuditEvent("flow.decision", actor="c", subject="c", data=r["data"]) for r in log])
    finally:
        store.close()

    # A candidate that opens night-time admin tokens: deny → allow on a high-risk trigger.
    opener = tmp_path / "opener"
    opener.mkdir()
    (opener / "deploys.yaml").write_text(CURRENT.replace("source.hour < 6", "source.hour < 0"))
    report = json.loads(_ok(srv.cli("flows", "replay", "--candidate", str(opener), "--json")))
    night_admin = [r for r in log if "admin" in r["_scope"] and r["_hour"] < 6]
    assert report["total"] == 300
    opened = report["changes"].get("deny→allow (high-risk trigger)", []) + report["changes"].get(
        "deny→pending (high-risk trigger)", []
    )
    assert len(opened) == len(night_admin) > 0

    r = srv.cli("flows", "publish", str(opener), "--yes")
    assert r.returncode == 1 and "--approval" in r.stderr, r.stdout + r.stderr
    r = srv.cli("flows", "publish", str(opener), "--yes", "--approval", "apr_nonexistent")
    assert r.returncode == 1
    listed = _ok(srv.cli("flows", "list"))
    assert load_text(CURRENT, "x").version in listed  # nothing changed

    # A tightening candidate publishes without an approval.
    tight = tmp_path / "tight"
    tight.mkdir()
    (tight / "deploys.yaml").write_text(CANDIDATE)
    out = _ok(srv.cli("flows", "publish", str(tight), "--yes"))
    assert "published deploys" in out
    _ok(srv.cli("audit", "verify"))
