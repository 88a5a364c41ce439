"""``tessera people``, ``tessera approvals``, ``tessera outbox``: the same operations as the admin API,
for the operator's shell. What the CLI writes, a running server acts on (its outbox worker sends the
messages the CLI queued). Links and codes are never printed."""

from __future__ import annotations

import json
import pathlib
import subprocess

from approval_support import Mailbox, approval_server
from support import LiveServer


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return r.stdout


def _failed(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr


def test_people_and_approvals_from_the_shell_reach_a_running_server(tmp_path: pathlib.Path) -> None:
    srv: LiveServer = approval_server(tmp_path / "data")
    _ok(srv.cli("people", "put", "carol", "--name", "Carol", "--group", "ops", "--channel", "file"))
    _ok(srv.cli("people", "put", "dave", "--name", "Dave", "--group", "ops", "--owns", "deploy-bot"))
    out = _ok(srv.cli("people", "list"))
    assert "carol\tCarol\tops\tnone\tok\tadmin" in out
    shown = json.loads(_ok(srv.cli("people", "show", "dave")))
    assert shown["owns"] == ["deploy-bot"] and shown["channels"] == ["file"] and shown["authenticators"] == []

    # Refusals are one readable line, no state change.
    assert "invalid_request" in _failed(srv.cli("people", "put", "Bad Id!", "--name", "x"))
    assert "not_found" in _failed(srv.cli("people", "show", "nobody"))
    assert "no channel named" in _failed(srv.cli("people", "put", "erin", "--channel", "webhook:nope"))

    srv.start()
    try:
        box = Mailbox(srv.outbox_file)  # type: ignore[attr-defined]
        out = _ok(srv.cli("people", "enrol", "carol"))
        assert "enrolment link sent to carol" in out
        link = box.link("enrolment.link", "carol")
        assert link.split("/")[-1] not in out  # the link goes to the person, never to the operator's terminal

        # dave owns the requester: separation of duties leaves carol alone eligible.
        out = _ok(
            srv.cli(
                "approvals",
                "create",
                "--requester",
                "deploy-bot",
                "--action",
                "deploy",
                "--resource",
                "prod",
                "--group",
                "ops",
                "--assurance",
                "aal1",
                "--json",
                '{"scope": ["deploy"]}',
            )
        )
        rid = out.split("\t")[0]
        assert rid.startswith("apr_") and "check code" in out
        shown = json.loads(_ok(srv.cli("approvals", "show", rid)))
        assert shown["eligible"] == ["carol"] and shown["status"] == "pending"
        assert shown["transaction"]["scope"] == ["deploy"]
        first = box.link("approval.requested", "carol")
        assert f"{rid}\tpending\t0/1\tdeploy-bot\tdeploy\tprod" in _ok(srv.cli("approvals", "list"))

        _ok(srv.cli("approvals", "resend", rid))
        second = box.link("approval.requested", "carol", 2)
        assert second != first
        assert _ok(srv.cli("approvals", "cancel", rid)).strip() == f"{rid}\tcancelled"
        assert "conflict" in _failed(srv.cli("approvals", "cancel", rid))
        assert _ok(srv.cli("approvals", "list", "--status", "cancelled")).startswith(rid)

        # A request nobody may approve is refused at once.
        err = _failed(
            srv.cli(
                "approvals",
                "create",
                "--requester",
                "deploy-bot",
                "--action",
                "a",
                "--resource",
                "r",
                "--approver",
                "dave",
            )
        )
        assert "quorum 1 cannot be reached" in err

        listed = _ok(srv.cli("outbox", "list"))
        assert listed.count("\tdelivered\tfile\t") >= 3
        assert first.split("/")[-1] not in listed and second.split("/")[-1] not in listed
        assert "no dead-lettered message" in _failed(srv.cli("outbox", "retry", "msg_nope"))
    finally:
        srv.stop()
    _ok(srv.cli("people", "remove", "dave"))
    assert "dave" not in _ok(srv.cli("people", "list"))
    _ok(srv.cli("audit", "verify"))
