"""``tessera demo --scenario mcp`` from the outside, as a newcomer and CI run it: a subprocess in an
empty directory. The demo starts ``tessera serve``, the phone and an MCP tool server (the ``mcp`` SDK
under uvicorn, protected by ``tessera.verify.mcp``), and an agent on the SDK's client calls its tools
(see src/tessera/demo/mcp.py); these tests check the exit status, the JSON summary of every step, the
failure paths (Sam denies; the ``mcp`` extra missing) and that nothing is left behind.
"""

from __future__ import annotations

import json
import pathlib
import re
import signal
import subprocess
import sys
from typing import Any

import httpx
import pytest

from approval_support import form_fields
from test_demo import TESSERA, assert_cleaned_up, demo, port_closed

STORY = ["setup", "tool-server", "connect", "challenge", "approval", "used-once"]
TRANSFER = {"to": "ACME Supplies", "amount": 12.0, "currency": "EUR"}


def assert_tool_server_stopped(summary: dict[str, Any]) -> None:
    steps = {s["id"]: s for s in summary["steps"]}
    if "tool-server" in steps:
        resource = steps["tool-server"]["details"]["resource"]
        assert port_closed(resource.removesuffix("/mcp")), "the MCP tool server still listens after the demo exited"


def test_auto_approve_plays_the_mcp_story(tmp_path: pathlib.Path) -> None:
    r, summary = demo(tmp_path, "--scenario", "mcp", "--auto-approve")
    assert r.returncode == 0, r.stderr[-4000:]
    assert summary["ok"] is True and summary["failed_step"] is None and summary["scenario"] == "mcp"
    steps = {s["id"]: s for s in summary["steps"]}
    assert list(steps) == STORY
    assert all(s["ok"] and s["error"] is None for s in steps.values()), summary

    issuer = steps["setup"]["details"]["issuer"]
    server = steps["tool-server"]["details"]
    resource = server["resource"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/mcp", resource)
    # RFC 9728 §2: the metadata names Tessera; the anonymous call got the MCP 401 challenge.
    assert server["metadata"]["resource"] == resource and server["metadata"]["authorization_servers"] == [issuer]
    assert "tool_invocation" in server["metadata"]["authorization_details_types_supported"]
    assert server["anonymous"] == 401

    connect = steps["connect"]["details"]
    assert connect["tools"] == ["balance", "transfer_funds"] and connect["scope"] == "tools"
    assert connect["balance"] == "operations: 1,250.00 EUR"

    challenge = steps["challenge"]["details"]
    assert challenge["status"] == 403 and challenge["reason"] == "approval_required"
    entry = challenge["authorization_details"]
    assert entry["type"] == "tool_invocation" and entry["tool"] == "transfer_funds"
    assert entry["locations"] == [resource] and entry["arguments"] == TRANSFER

    approval = steps["approval"]["details"]
    assert approval["answer"] == "sent 12.00 EUR to ACME Supplies" and approval["mode"] == "auto"
    assert approval["sub"] == "sam" and approval["act"] == {"sub": connect["client_id"]}

    used = steps["used-once"]["details"]
    assert used["replay"] == "approval_replayed" and used["other_arguments"] == "approval_mismatch"
    assert used["ledger"] == [TRANSFER]

    for title in (s["title"] for s in summary["steps"]):
        assert f"✓ {title}" in r.stderr or re.search(rf"✓ \d\. {re.escape(title)}", r.stderr), title
    assert "/approve/" in r.stderr
    assert "HTTP Request:" not in r.stderr  # the SDK's request logging stays out of the story
    assert_cleaned_up(tmp_path, steps["setup"])
    assert_tool_server_stopped(summary)


def test_sam_denies_the_tool_call_and_nothing_is_paid(tmp_path: pathlib.Path) -> None:
    r, summary = demo(tmp_path, "--scenario", "mcp", "--auto-approve", "--break", "approval")
    assert r.returncode == 1
    assert summary["ok"] is False and summary["failed_step"] == "approval"
    assert "access_denied" in summary["error"] and "nothing was paid" in summary["error"], summary["error"]
    assert [s["id"] for s in summary["steps"]] == STORY[:5]  # nothing after the failed step
    assert "tessera demo failed at step 'approval'" in r.stderr
    assert_cleaned_up(tmp_path, summary["steps"][0])
    assert_tool_server_stopped(summary)


def test_without_the_mcp_extra_it_says_what_to_install(tmp_path: pathlib.Path) -> None:
    """The ``mcp`` SDK made unimportable (as when ``tessera[mcp]`` is not installed)."""
    hide = (
        "import sys; sys.modules['mcp'] = None\n"
        "from tessera.cli.main import main\n"
        "sys.exit(main(['demo', '--scenario', 'mcp', '--auto-approve', '--json'], prog_name='tessera'))"
    )
    r = subprocess.run(
        [sys.executable, "-c", hide], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 1, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["ok"] is False and summary["failed_step"] == "setup"
    assert "pip install 'tessera[mcp]'" in summary["error"] and "mcp" in summary["error"]
    assert "pip install 'tessera[mcp]'" in r.stderr
    assert_cleaned_up(tmp_path, summary["steps"][0])


def test_a_break_the_scenario_has_not_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    r = subprocess.run(
        [TESSERA, "demo", "--scenario", "mcp", "--break", "audit"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2 and "only --break approval" in r.stderr, r.stderr


def test_interactive_a_person_approves_the_tool_call(tmp_path: pathlib.Path) -> None:
    """No --auto-approve: the person opens the printed link, reads the tool call on the page and types
    the authenticator code the demo displays."""
    proc = subprocess.Popen(
        [TESSERA, "demo", "--scenario", "mcp", "--json", "--timeout", "120"],
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
            assert page.status_code == 200, page.text[-2000:]
            assert '<strong class="tool-name">transfer_funds</strong>' in page.text
            assert "Approve transfer_funds" in page.text
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
    assert summary["steps"][4]["details"]["mode"] == "interactive"
    assert_cleaned_up(tmp_path, summary["steps"][0])
    assert_tool_server_stopped(summary)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_while_waiting_for_sam_it_stops_everything(tmp_path: pathlib.Path, sig: signal.Signals) -> None:
    """^C or SIGTERM while the agent waits for the approval (its MCP session's stream still open):
    exit 130, Tessera and the tool server stopped, nothing left behind."""
    proc = subprocess.Popen(
        [TESSERA, "demo", "--scenario", "mcp", "--json"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    issuer = resource = data_dir = None
    try:
        for line in proc.stderr:  # interactive mode: it waits for a person at step 4
            found = re.search(r"issuer=(http://127\.0\.0\.1:\d+)\s+data=(\S+)", line)
            if found:
                issuer, data_dir = found.groups()
            found = re.search(r"resource=(http://127\.0\.0\.1:\d+)/mcp", line)
            resource = found.group(1) if found else resource
            if "approval link" in line:
                break
        assert issuer and resource and data_dir, "the demo never printed the approval link"
        assert not port_closed(resource)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 130, err[-3000:]
    assert json.loads(out)["error"] == "interrupted"
    assert port_closed(issuer) and port_closed(resource)
    assert not pathlib.Path(data_dir).exists()
    assert list(tmp_path.iterdir()) == []
