"""The flows that ship with Tessera and the examples in ``examples/flows``: each is valid, each has a
test file, and the tests pass. The shipped defaults also leave ordinary requests alone."""

from __future__ import annotations

import pathlib

import pytest

from tessera.flow_runtime import DEFAULT_FLOWS
from tessera.workflows.engine import evaluate
from tessera.workflows.loader import load_dir
from tessera.workflows.testing import run_tests

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples" / "flows"


@pytest.mark.parametrize("directory", [DEFAULT_FLOWS, EXAMPLES], ids=["default", "examples"])
def test_every_flow_is_tested_and_its_tests_pass(directory: pathlib.Path) -> None:
    report = run_tests(directory)
    assert report.ok, report.render()
    assert report.untested == []
    assert report.results and all(r.passed for r in report.results)


def test_the_examples_cover_the_issue() -> None:
    flows = {f.id: f for f in load_dir(EXAMPLES)}
    assert {f: flows[f].on for f in flows} == {
        "agent-onboarding": "client.register",
        "payments-production": "token.issue",
        "branch-workloads": "token.issue",
        "revocation-notice": "token.revoke",
        "quarantine": "token.issue",
        "new-context-alert": "token.issue",
        "mcp-tool-approval": "token.issue",
    }
    kinds = {f: [s.kind for s in flows[f].steps] for f in flows}
    assert kinds["agent-onboarding"] == ["require", "approve"]
    assert "approve" in kinds["payments-production"] and "limit" in kinds["payments-production"]
    assert flows["payments-production"].steps[1].spec["quorum"] == 2
    assert flows["branch-workloads"].grants == ("token_exchange",)
    alert = flows["new-context-alert"].steps[0]
    assert alert.kind == "notify" and alert.spec["owners"] is True
    assert alert.spec["responses"] == ["acknowledge", "suspend", "revoke"]
    # docs/mcp.md: approval of MCP tool calls per tool, per argument pattern and per agent.
    assert kinds["mcp-tool-approval"] == ["deny", "approve", "limit"] and flows["mcp-tool-approval"].grants == ("ciba",)


@pytest.mark.parametrize("grant", ["client_credentials", "token_exchange", "jwt_bearer", "ciba"])
def test_the_defaults_allow_ordinary_requests(grant: str) -> None:
    """Secure by default without getting in the way: an ordinary token request is allowed on every grant,
    never pending, at most capped."""
    context = {
        "client": {"id": "ci-build", "contacts": [], "grant_types": [grant], "scope": ["read"], "quarantined": False},
        "request": {"grant": grant, "scope": ["read"], "audience": [], "lifetime": 900},
        "federation": {"issuer": "https://idp.example", "subject": "s", "claims": {}} if grant != "ciba" else {},
        "person": {"id": "alice"} if grant == "ciba" else {},
        "source": {"hour": 12},
    }
    d = evaluate(load_dir(DEFAULT_FLOWS), "token.issue", context, grant=grant, now=1_800_000_000)
    assert d.outcome == "allow" and d.approvals == () and d.calls == ()
    assert set(d.limits.to_json()) <= {"lifetime"} and (d.limits.lifetime or 3600) >= 3600
    for trigger in ("client.register", "credential.rotate", "token.revoke"):
        assert evaluate(load_dir(DEFAULT_FLOWS), trigger, {"client": context["client"]}).outcome == "allow"


def test_the_quarantine_example_denies_a_quarantined_client() -> None:
    # The server enforces a quarantine itself (flow_gate); the example shows it as a flow.
    quarantine = [f for f in load_dir(EXAMPLES) if f.id == "quarantine"]
    d = evaluate(quarantine, "token.issue", {"client": {"id": "x", "quarantined": True}}, grant="ciba")
    assert (d.outcome, d.reason) == ("deny", "client is quarantined")


def test_the_defaults_cost_nothing_on_client_credentials() -> None:
    """No default flow applies to an ordinary client-credentials request: the hot path asks no flow."""
    flows = load_dir(DEFAULT_FLOWS)
    assert not [f for f in flows if f.on == "token.issue" and f.applies_to_grant("client_credentials")]
