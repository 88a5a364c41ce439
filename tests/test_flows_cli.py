"""``tessera flows`` as an operator and CI run it: validate, test, list, diff, publish, rollback, schema,
against a data directory (the server is never started)."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
from typing import Any

import pytest

from support import TESSERA, LiveServer

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples" / "flows"


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return r.stdout


def _failed(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return r.stdout + r.stderr


@pytest.fixture
def env(tmp_path: pathlib.Path) -> LiveServer:
    return LiveServer(tmp_path / "data")


@pytest.fixture
def examples(tmp_path: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(EXAMPLES, tmp_path / "flows"))


def _flows(env: LiveServer, *argv: str) -> subprocess.CompletedProcess[str]:
    return env.cli("flows", *argv)


def _rows(out: str) -> dict[str, list[str]]:
    return {line.split("\t")[0]: line.split("\t")[1:] for line in out.splitlines()}


def _flow_audit(env: LiveServer) -> list[dict[str, Any]]:
    records = map(json.loads, _ok(env.cli("audit", "export")).splitlines())
    return [r for r in records if r["event"].startswith("flow.")]


# -- files only ---------------------------------------------------------------------------------------------


def test_validate_and_test_the_shipped_flows_by_default(env: LiveServer) -> None:
    rows = _rows(_ok(_flows(env, "validate")))
    assert {"federated-lifetime-cap"} <= set(rows)
    assert rows["federated-lifetime-cap"][0] == "token.issue"
    assert rows["federated-lifetime-cap"][1].startswith("sha256:")
    out = _ok(_flows(env, "test"))
    assert " passed" in out.splitlines()[-1]
    assert "failed" not in out.splitlines()[-1]
    assert not env.data_dir.exists()  # files only: no store opened


def test_validate_examples(env: LiveServer, examples: pathlib.Path) -> None:
    rows = _rows(_ok(_flows(env, "validate", str(examples))))
    assert rows["agent-onboarding"][0] == "client.register"
    assert rows["revocation-notice"][0] == "token.revoke"


def test_validate_prints_file_line_errors_and_exits_1(env: LiveServer, tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.yaml").write_text("id: a\non: token.issue\nsteps:\n  - id: x\n    require: 'request.scopes == []'\n")
    (bad / "b.yaml").write_text("id: b\non: token.issue\nsteps:\n  - id: x\n    allow: {}\n  - id: y\n    deny: {}\n")
    r = _flows(env, "validate", str(bad))
    out = _failed(r)
    assert f"{bad / 'a.yaml'}:5: request.scopes is not a field of the context" in r.stderr
    assert f"{bad / 'b.yaml'}:6: step 'y' is unreachable" in r.stderr
    assert "2 problem(s)" in out


def test_validate_checks_test_files_too(env: LiveServer, examples: pathlib.Path) -> None:
    path = examples / "payments-production.test.yaml"
    path.write_text(path.read_text().replace("approvals: {prod-approval: approved}", "approvals: {prod: approved}"))
    r = _flows(env, "validate", str(examples))
    _failed(r)
    assert f"{path}:" in r.stderr and "'prod' is not an approve step of payments-production" in r.stderr


def test_test_shows_a_readable_diff_and_exits_1(env: LiveServer, examples: pathlib.Path) -> None:
    flow = examples / "branch-workloads.yaml"
    flow.write_text(flow.read_text().replace("lifetime: 300", "lifetime: 600"))
    out = _failed(_flows(env, "test", str(examples)))
    test_file = examples / "branch-workloads.test.yaml"
    assert f"FAIL  a feature branch gets five minutes of read  ({test_file}:3)" in out
    expected = "          expected: {lifetime: 300, scopes: [read]}"
    assert f"limits:\n{expected}\n          got:      {{lifetime: 600, scopes: [read]}}" in out
    assert out.rstrip().endswith("failed")


def test_schema_is_the_json_schema(env: LiveServer) -> None:
    schema = json.loads(_ok(_flows(env, "schema")))
    assert schema["$id"].endswith("flow.schema.json") and schema["required"] == ["id", "on", "steps"]


# -- against the store --------------------------------------------------------------------------------------


def test_list_shows_the_shipped_defaults_in_force(env: LiveServer) -> None:
    rows = _rows(_ok(_flows(env, "list")))
    assert rows["federated-lifetime-cap"][0] == "token.issue" and rows["federated-lifetime-cap"][2] == "default"
    assert _ok(_flows(env, "list", "--all")) == ""  # nothing stored yet
    assert json.loads(_ok(_flows(env, "list", "--json")))[0]["source"] == "default"


def test_diff_publish_list_and_rollback(env: LiveServer, examples: pathlib.Path) -> None:
    out = _ok(_flows(env, "diff", str(examples)))
    assert "added    payments-production\ttoken.issue\tsha256:" in out
    before = _rows(_ok(_flows(env, "validate", str(examples))))

    out = _ok(_flows(env, "publish", str(examples), "--tag", "c0ffee", "--yes"))
    assert f"published payments-production {before['payments-production'][1]} (was not published)" in out
    rows = _rows(_ok(_flows(env, "list")))
    assert rows["payments-production"] == ["token.issue", before["payments-production"][1], "published"]
    assert rows["federated-lifetime-cap"][2] == "default"  # defaults not overridden stay in force
    assert "nothing to publish" in _ok(_flows(env, "diff", str(examples)))

    flow = examples / "payments-production.yaml"
    flow.write_text(flow.read_text().replace("timeout: 600", "timeout: 900"))
    out = _ok(_flows(env, "diff", str(examples)))
    assert "changed  payments-production" in out
    assert re.search(r"^    -\s+timeout: 600$", out, re.M) and re.search(r"^    \+\s+timeout: 900$", out, re.M)
    unchanged = (
        "agent-onboarding, branch-workloads, mcp-tool-approval, new-context-alert, quarantine, revocation-notice"
    )
    assert "unchanged " + unchanged in out
    _ok(_flows(env, "publish", str(examples), "--yes"))
    second = _rows(_ok(_flows(env, "list")))["payments-production"][1]
    assert second != before["payments-production"][1]

    every = [line.split("\t") for line in _ok(_flows(env, "list", "--all")).splitlines()]
    payments = [row for row in every if row[0] == "payments-production"]
    assert [(v, status, tag) for _, _, v, status, tag in payments] == [
        (before["payments-production"][1], "stored", "c0ffee"),
        (second, "published", "-"),
    ]

    out = _ok(_flows(env, "rollback", "payments-production"))
    assert f"rolled back payments-production to {before['payments-production'][1]} (was {second})" in out
    assert _rows(_ok(_flows(env, "list")))["payments-production"][1] == before["payments-production"][1]
    out = _failed(_flows(env, "rollback", "payments-production"))
    assert "no earlier version" in out
    out = _ok(_flows(env, "rollback", "payments-production", "--to", second))
    assert _rows(_ok(_flows(env, "list")))["payments-production"][1] == second
    assert "no stored version" in _failed(_flows(env, "rollback", "payments-production", "--to", "sha256:nope"))
    assert "no stored version of flow ghost" in _failed(_flows(env, "rollback", "ghost"))

    records = _flow_audit(env)
    events = [(r["event"], r["subject"]) for r in records if r["subject"] == "payments-production"]
    assert events == [
        ("flow.published", "payments-production"),
        ("flow.published", "payments-production"),
        ("flow.rolled_back", "payments-production"),
        ("flow.rolled_back", "payments-production"),
    ]
    assert {r["subject"] for r in records if r["event"] == "flow.published"} == {
        "agent-onboarding",
        "branch-workloads",
        "mcp-tool-approval",
        "new-context-alert",
        "payments-production",
        "quarantine",
        "revocation-notice",
    }
    assert all(r["actor"] == "cli" for r in records)
    assert "audit chain ok" in _ok(env.cli("audit", "verify"))


def test_publish_refuses_failing_tests(env: LiveServer, examples: pathlib.Path) -> None:
    flow = examples / "agent-onboarding.yaml"
    flow.write_text(flow.read_text().replace("a new client needs an owner on record", "contacts are required"))
    r = _flows(env, "publish", str(examples), "--yes")
    _failed(r)
    assert "not published: the flows' tests fail" in r.stderr
    assert "FAIL  no owner, no request to the team lead" in r.stdout
    assert "expected: '…needs an owner…'" in r.stdout
    assert _ok(_flows(env, "list", "--all")) == ""
    assert _flow_audit(env) == []


def test_publish_refuses_invalid_flows(env: LiveServer, examples: pathlib.Path) -> None:
    (examples / "broken.yaml").write_text("id: broken\non: token.issue\nsteps: []\n")
    r = _flows(env, "publish", str(examples), "--yes")
    _failed(r)
    assert f"{examples / 'broken.yaml'}:3: steps" in r.stderr
    assert _ok(_flows(env, "list", "--all")) == ""


def test_publish_asks_first(env: LiveServer, examples: pathlib.Path) -> None:
    r = subprocess.run(
        [TESSERA, "flows", "publish", str(examples)], env=env.env, input="n\n", capture_output=True, text=True
    )
    assert r.returncode == 1 and "publish these flows?" in r.stdout
    assert _ok(_flows(env, "list", "--all")) == ""


def test_publishing_a_default_id_overrides_the_default(env: LiveServer, tmp_path: pathlib.Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "federated-lifetime-cap.yaml").write_text(
        "id: federated-lifetime-cap\non: token.issue\ngrants: [token_exchange]\nsteps:\n  - id: cap\n"
        "    limit: {lifetime: 1800}\n"
    )
    r = _flows(env, "publish", str(mine), "--yes")
    assert "changed  federated-lifetime-cap" in _ok(r) and "no test file" in r.stderr
    rows = _rows(_ok(_flows(env, "list")))
    assert rows["federated-lifetime-cap"][2] == "published"
