"""Publication and rollback of flows under an approval (TESSERA_FLOW_PUBLISH_APPROVAL, docs/flows.md):
the first run opens an approval request and changes nothing (exit status 3); the approval covers
exactly the versions it was asked for and is used once; a rollback needs its own approval. The
approver decides on the approval page with a passkey, against a live server."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
from collections.abc import Iterator

import pytest

from approval_support import Mailbox, approval_server
from flows_support import FlowWorld

FLOW = """\
id: deploy-cap
on: token.issue
grants: [client_credentials]
when: 'client.id.startsWith("deploy-")'
steps:
  - id: cap
    limit: {lifetime: LIFETIME}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowWorld]:
    base = tmp_path_factory.mktemp("publication-approval")
    srv = approval_server(
        base / "data",
        TESSERA_KEY_REFRESH_INTERVAL="1",
        TESSERA_FLOW_PUBLISH_APPROVAL=json.dumps({"groups": ["flow-owners"], "quorum": 1, "assurance": "aal2"}),
    )
    srv.start()
    w: FlowWorld | None = None
    try:
        with srv.admin() as admin:
            w = FlowWorld(srv, Mailbox(srv.outbox_file), admin)  # type: ignore[attr-defined]
            w.approver("fiona", ["flow-owners"])
            yield w
    finally:
        if w is not None:
            w.close()
        srv.stop()
    r = srv.cli("audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr


def flow_dir(base: pathlib.Path, lifetime: int) -> pathlib.Path:
    d = base / f"cap-{lifetime}"
    d.mkdir(exist_ok=True)
    (d / "deploy-cap.yaml").write_text(FLOW.replace("LIFETIME", str(lifetime)))
    return d


def requested(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 3, r.stdout + r.stderr
    found = re.findall(r"approval requested: (apr_[A-Za-z0-9_-]+)", r.stdout)
    assert len(found) == 1, r.stdout
    assert f"--approval {found[0]}" in r.stderr
    return found[0]


def published_version(w: FlowWorld) -> str | None:
    r = w.flows("list", "--json")
    assert r.returncode == 0, r.stderr
    rows = {e["flow"]: e for e in json.loads(r.stdout)}
    return rows["deploy-cap"]["version"] if "deploy-cap" in rows else None


def test_publication_and_rollback_need_their_own_approval(world: FlowWorld, tmp_path: pathlib.Path) -> None:
    first = flow_dir(tmp_path, 300)
    rid = requested(world.flows("publish", str(first), "--yes"))
    assert published_version(world) is None  # nothing changed
    assert world.approval(rid)["transaction"]["action"] == "publish flows"

    # Not before the approval; not with an unknown request.
    r = world.flows("publish", str(first), "--yes", "--approval", rid)
    assert r.returncode == 1 and "pending, not approved" in r.stderr, r.stderr
    r = world.flows("publish", str(first), "--yes", "--approval", "apr_unknown")
    assert r.returncode == 1 and "no approval request" in r.stderr
    assert published_version(world) is None

    world.decide("fiona", rid, "approve")
    # The approval covers exactly the versions it was asked for: other content is refused.
    other = flow_dir(tmp_path, 120)
    r = world.flows("publish", str(other), "--yes", "--approval", rid)
    assert r.returncode == 1 and "not given for these flow versions" in r.stderr, r.stderr
    r = world.flows("publish", str(first), "--yes", "--approval", rid)
    assert r.returncode == 0 and f"published under approval {rid}" in r.stdout, r.stdout + r.stderr
    v300 = published_version(world)
    assert v300 is not None

    # Used once: publishing something new with the same approval is refused.
    r = world.flows("publish", str(other), "--yes", "--approval", rid)
    assert r.returncode == 1 and "not given for these flow versions" in r.stderr
    rid2 = requested(world.flows("publish", str(other), "--yes"))
    world.decide("fiona", rid2, "approve")
    assert world.flows("publish", str(other), "--yes", "--approval", rid2).returncode == 0
    v120 = published_version(world)
    assert v120 not in (None, v300)

    # A rollback is a publication too.
    rid3 = requested(world.flows("rollback", "deploy-cap"))
    assert published_version(world) == v120
    r = world.flows("rollback", "deploy-cap", "--approval", rid2)
    assert r.returncode == 1 and "not given for these flow versions" in r.stderr, r.stderr
    world.decide("fiona", rid3, "approve")
    r = world.flows("rollback", "deploy-cap", "--approval", rid3)
    assert r.returncode == 0, r.stdout + r.stderr
    assert published_version(world) == v300

    records = [e for e in world.audit() if e["subject"] == "deploy-cap"]
    approvals = [e["data"].get("approval") for e in records if e["event"] in ("flow.published", "flow.rolled_back")]
    assert approvals == [rid, rid2, rid3]
