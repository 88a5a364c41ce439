"""``tessera demo`` as a newcomer and CI run it: a subprocess in an empty directory, nothing else running.

The demo itself starts ``tessera serve``, the fake CI issuer, the phone and the agent, and checks each
step (see src/tessera/demo/payments.py); these tests check what it promises from the outside: exit
status, a JSON summary where every step reports success, a clear message naming the step that failed,
and nothing left behind — no process on the server's port, no temporary directory, nothing written
to the working directory — after success, failure and ^C alike.
"""

from __future__ import annotations

import json
import pathlib
import re
import signal
import socket
import subprocess
import sys
from typing import Any

import httpx
import pytest

from approval_support import form_fields
from tessera.demo.world import flows_dir

TESSERA = str(pathlib.Path(sys.executable).parent / "tessera")
EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples" / "flows"
STORY = ["setup", "federation", "agent", "approval", "verification", "revocation", "audit"]


def demo(cwd: pathlib.Path, *args: str, timeout: float = 240) -> tuple[subprocess.CompletedProcess[str], Any]:
    r = subprocess.run(
        [TESSERA, "demo", "--json", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    try:
        summary = json.loads(r.stdout)
    except ValueError:
        raise AssertionError(f"no JSON summary on stdout (exit {r.returncode}): {r.stdout[-500:]} {r.stderr[-3000:]}")
    return r, summary


def port_closed(issuer: str) -> bool:
    port = int(issuer.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


def assert_cleaned_up(cwd: pathlib.Path, setup: dict[str, Any]) -> None:
    assert list(cwd.iterdir()) == [], "the demo wrote into the working directory"
    assert not pathlib.Path(setup["details"]["data_dir"]).exists(), "the temporary data directory was left behind"
    if "issuer" in setup["details"]:
        assert port_closed(setup["details"]["issuer"]), "tessera serve still listens after the demo exited"


def test_auto_approve_plays_the_whole_story(tmp_path: pathlib.Path) -> None:
    r, summary = demo(tmp_path, "--auto-approve")
    assert r.returncode == 0, r.stderr[-4000:]
    assert summary["ok"] is True and summary["failed_step"] is None
    steps = {s["id"]: s for s in summary["steps"]}
    assert list(steps) == STORY
    assert all(s["ok"] and s["error"] is None for s in steps.values()), summary

    assert steps["setup"]["details"]["flows"] == ["agent-payments", "branch-workloads", "revocation-notice"]
    fed = steps["federation"]["details"]
    assert fed["sub"] == "ci/repo:demo-org/payments-service:ref:refs/heads/main"
    assert fed["scope"] == "deploy read" and fed["lifetime"] == 600
    assert fed["branch_scope"] == "read"  # flow branch-workloads
    assert steps["agent"]["details"]["refused"].startswith("unauthorized_client: denied by flow")
    assert steps["approval"]["details"]["polls"][-1] == "200"
    rp = steps["verification"]["details"]
    assert rp["sub"] == "sam" and rp["act"] == {"sub": steps["agent"]["details"]["client_id"]}
    assert rp["acr"] == "urn:tessera:aal1" and rp["lifetime"] == 300  # flow agent-payments
    assert set(rp["fetched"]) <= {"/.well-known/oauth-authorization-server", "/oauth/jwks", "/oauth/status/1"}
    assert steps["revocation"]["details"]["revoked"] >= 1
    events = steps["audit"]["details"]["events"]
    for name in ("flow.decision", "approval.approved", "ciba.redeemed", "token.revoked", "audit.checkpoint"):
        assert events.get(name, 0) >= 1, name

    # The story as a person reads it (stderr when --json), one ✓ per step.
    for title in (s["title"] for s in summary["steps"]):
        assert f"✓ {title}" in r.stderr or re.search(rf"✓ \d\. {re.escape(title)}", r.stderr), title
    assert "/approve/" in r.stderr  # the approver's link is printed
    assert_cleaned_up(tmp_path, steps["setup"])


def test_a_failed_step_exits_non_zero_and_names_it(tmp_path: pathlib.Path) -> None:
    r, summary = demo(tmp_path, "--auto-approve", "--break", "federation")
    assert r.returncode == 1
    assert summary["ok"] is False and summary["failed_step"] == "federation"
    assert "Tessera refused the CI job's token" in summary["error"]
    assert "condition" in summary["error"]  # Tessera's own reason: the trust condition did not hold
    assert "tessera demo failed at step 'federation'" in r.stderr
    assert [s["id"] for s in summary["steps"]] == ["setup", "federation"]  # nothing after the failed step
    assert_cleaned_up(tmp_path, summary["steps"][0])


def test_a_rewritten_audit_record_fails_the_last_step(tmp_path: pathlib.Path) -> None:
    r, summary = demo(tmp_path, "--auto-approve", "--break", "audit")
    assert r.returncode == 1
    assert summary["failed_step"] == "audit"
    assert "audit chain BROKEN" in summary["error"], summary["error"]
    assert all(s["ok"] for s in summary["steps"][:-1])
    assert_cleaned_up(tmp_path, summary["steps"][0])


def test_interrupted_it_stops_everything_it_started(tmp_path: pathlib.Path) -> None:
    proc = subprocess.Popen(
        [TESSERA, "demo", "--json"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    issuer = data_dir = None
    assert proc.stderr is not None
    try:
        for line in proc.stderr:  # interactive mode: it waits for a person at step 3
            found = re.search(r"issuer=(http://127\.0\.0\.1:\d+)\s+data=(\S+)", line)
            if found:
                issuer, data_dir = found.groups()
            if "approval link" in line:
                break
        assert issuer is not None and data_dir is not None, "the demo never printed the approval link"
        assert not port_closed(issuer)
        proc.send_signal(signal.SIGINT)  # what ^C in a terminal does
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert json.loads(out)["error"] == "interrupted"
    assert port_closed(issuer)
    assert not pathlib.Path(data_dir).exists()
    assert list(tmp_path.iterdir()) == []


def test_interactive_a_person_approves_with_the_code_the_demo_shows(tmp_path: pathlib.Path) -> None:
    """No --auto-approve: the person opens the printed link (here: an HTTP client reading the page's
    form as a browser would) and types the authenticator code the demo displays."""
    proc = subprocess.Popen(
        [TESSERA, "demo", "--json", "--timeout", "120"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    link = code = None
    seen: list[str] = []
    try:
        for line in proc.stderr:
            seen.append(line)
            found = re.search(r"(http://127\.0\.0\.1:\d+/approve/[A-Za-z0-9_-]+)", line)
            link = found.group(1) if found else link
            found = re.search(r"authenticator app shows\s+code=(\d{6})", line)
            if found and link:
                code = found.group(1)
                break
        assert link and code, "".join(seen[-20:])
        origin = link.split("/approve/")[0]
        with httpx.Client(timeout=15) as browser:
            page = browser.get(link)
            assert page.status_code == 200 and "Pay ACME Supplies 12.00 EUR" in page.text
            fields = form_fields(page.text, "decide")
            fields.update(code=code, decision="approve")
            done = browser.post(link, data=fields, headers={"Origin": origin})
            assert done.status_code == 200 and 'id="outcome"' in done.text, done.text[-2000:]
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    summary = json.loads(out)
    assert proc.returncode == 0, err[-4000:]
    assert summary["ok"] and [s["id"] for s in summary["steps"]] == STORY
    assert summary["steps"][3]["details"]["mode"] == "interactive"
    assert_cleaned_up(tmp_path, summary["steps"][0])


@pytest.mark.parametrize("name", ["branch-workloads", "revocation-notice"])
def test_the_demo_publishes_the_examples_as_they_are(name: str) -> None:
    for suffix in (".yaml", ".test.yaml"):
        assert (flows_dir() / (name + suffix)).read_text() == (EXAMPLES / (name + suffix)).read_text()
