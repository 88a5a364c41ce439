"""The credential.rotate and token.revoke triggers on a live server: a rotation the flows deny (or
send for approval) does not happen; a revocation is never held back, but its flows are recorded and
their notices sent."""

from __future__ import annotations

import pathlib
import textwrap
import time
from collections.abc import Iterator

import httpx
import pytest

from approval_support import Mailbox, approval_server
from support import LiveServer

ROTATE = textwrap.dedent(
    """
    id: rotation-needs-owner
    on: credential.rotate
    risk: high
    steps:
      - id: owner
        require: 'size(client.contacts) > 0'
        reason: a credential is rotated only for a client with an owner on record
      - id: cap
        limit: {lifetime: 900}
    """
)
REVOKE = textwrap.dedent(
    """
    id: revocation-notice
    on: token.revoke
    steps:
      - id: tell
        notify: {people: [keeper], message: a client's tokens were revoked}
    """
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    base = tmp_path_factory.mktemp("ops")
    s = approval_server(base / "data", TESSERA_KEY_REFRESH_INTERVAL="1")
    flows = base / "flows"
    flows.mkdir()
    (flows / "rotate.yaml").write_text(ROTATE)
    (flows / "revoke.yaml").write_text(REVOKE)
    r = s.cli("flows", "publish", str(flows), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    s.start()
    with s.admin() as admin:
        assert admin.put("/people/keeper", json={"name": "Keeper", "channels": ["file"]}).status_code == 201
    time.sleep(1.5)
    yield s
    s.stop()
    assert s.cli("audit", "verify").returncode == 0


def _decisions(srv: LiveServer, trigger: str) -> list[dict]:
    records = srv.admin().get("/audit", params={"limit": 1000}).json()
    return [r for r in records if r["event"] == "flow.decision" and r["data"]["trigger"] == trigger]


def test_a_rotation_the_flows_deny_does_not_happen(srv: LiveServer) -> None:
    admin = srv.admin()
    orphan = admin.post("/clients", json={"client_id": "orphan", "scope": "read"}).json()
    r = admin.post("/clients/orphan/secret")
    assert r.status_code == 400 and r.json()["error"] == "access_denied", r.text
    assert "owner on record" in r.json()["error_description"]
    # The old secret still works: nothing was rotated.
    t = httpx.post(
        srv.token_endpoint, data={"grant_type": "client_credentials"}, auth=("orphan", orphan["client_secret"])
    )
    assert t.status_code == 200, t.text
    owned = admin.post("/clients", json={"client_id": "owned", "scope": "read", "contacts": ["ops@example.com"]})
    assert owned.status_code == 201
    r = admin.post("/clients/owned/secret")
    assert r.status_code == 200 and r.json()["client_secret"] != owned.json()["client_secret"]
    outcomes = [d["data"]["outcome"] for d in _decisions(srv, "credential.rotate")]
    assert outcomes == ["deny", "allow"]


def test_revocation_is_recorded_and_notified_never_held_back(srv: LiveServer, tmp_path: pathlib.Path) -> None:
    admin = srv.admin()
    admin.post("/clients", json={"client_id": "leaky", "scope": "read"})
    r = admin.post("/tokens/revoke", json={"client_id": "leaky"})
    assert r.status_code == 200 and r.json()["revoked"] == 0
    notice = Mailbox(srv.outbox_file).wait("flow.notice", "keeper")[0]  # type: ignore[attr-defined]
    assert "revoked" in notice["text"] and "leaky" in notice["text"]
    assert [d["data"]["outcome"] for d in _decisions(srv, "token.revoke")] == ["allow"]
    assert admin.delete("/clients/leaky").status_code == 204
    assert len(_decisions(srv, "token.revoke")) == 2
