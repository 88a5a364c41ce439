"""Flows (docs/flows.md): the loader's line-numbered errors, the engine's decisions, versions, and the
test-file runner — all in-process, on plain values."""

from __future__ import annotations

import pathlib
import textwrap
from typing import Any

import pytest

from tessera.workflows.engine import Recorded, evaluate
from tessera.workflows.loader import FlowError, load_dir, load_text, version_of
from tessera.workflows.model import Flow
from tessera.workflows.testing import load_tests, run_tests
from tessera.workflows.versions import diff


def flow(text: str, source: str = "f.yaml") -> Flow:
    return load_text(textwrap.dedent(text).lstrip(), source)


def problems(text: str) -> list[tuple[int | None, str]]:
    with pytest.raises(FlowError) as e:
        flow(text)
    return e.value.problems


# -- loader: every error names its line ---------------------------------------------------------------------


def test_bad_yaml_names_the_line() -> None:
    found = problems(
        """
        id: a
        on: token.issue
        steps:
          - id: x
            allow: {
        """
    )
    assert len(found) == 1
    line, msg = found[0]
    assert line is not None and line >= 5 and "not valid YAML" in msg


def test_unknown_step_kind_names_its_line() -> None:
    found = problems(
        """
        id: a
        on: token.issue
        steps:
          - id: x
            require: 'true'
          - id: y
            frobnicate: {}
        """
    )
    assert found == [(6, found[0][1])]
    assert "unknown step kind" in found[0][1] and "frobnicate" in found[0][1]


def test_two_kinds_in_one_step_is_refused() -> None:
    [(line, msg)] = problems(
        """
        id: a
        on: token.issue
        steps:
          - id: x
            require: 'true'
            deny: {}
        """
    )
    assert line == 4 and "exactly one of" in msg


def test_unreachable_step_names_its_line() -> None:
    [(line, msg)] = problems(
        """
        id: a
        on: token.issue
        steps:
          - id: x
            allow: {}
          - id: y
            deny: {}
        """
    )
    assert line == 6 and "'y' is unreachable" in msg


def test_a_step_after_a_guarded_end_is_reachable() -> None:
    f = flow(
        """
        id: a
        on: token.issue
        steps:
          - id: x
            when: 'request.grant == "ciba"'
            deny: {}
          - id: y
            allow: {}
        """
    )
    assert [s.id for s in f.steps] == ["x", "y"]


def test_undefined_context_field_names_its_line() -> None:
    [(line, msg)] = problems(
        """
        id: a
        on: token.issue
        steps:
          - id: x
            require:
              all:
                - 'size(request.scope) > 0'
                - 'request.scopes.exists(s, s == "a")'
        """
    )
    assert line == 8 and "request.scopes is not a field" in msg


def test_schema_violations_name_their_lines() -> None:
    found = problems(
        """
        id: Not_An_Id
        on: token.issue
        steps:
          - id: x
            limit: {lifetime: 5}
          - id: y
            approve: {groups: [leads], assurance: aal9}
        """
    )
    lines = dict((msg.split(":")[0], line) for line, msg in found)
    assert lines["id"] == 1
    assert lines["steps.0.limit.lifetime"] == 5
    assert lines["steps.1.approve.assurance"] == 7


def test_unknown_trigger_and_missing_steps() -> None:
    found = problems("id: a\non: token.mint\n")
    assert any(line == 1 and "steps" in msg for line, msg in found)
    assert any(line == 2 and "token.mint" in msg for line, msg in found)


def test_cel_compile_error_names_its_line() -> None:
    [(line, msg)] = problems(
        """
        id: a
        on: token.issue
        when: 'size(request.scope) > 0'
        steps:
          - id: x
            require: 'request.scope.exists('
        """
    )
    assert line == 6 and "does not compile" in msg


def test_high_risk_needs_approve_or_limit() -> None:
    [(line, msg)] = problems(
        """
        id: a
        on: token.issue
        risk: high
        steps:
          - id: x
            require: 'true'
        """
    )
    assert line == 3 and "high-risk" in msg


def test_grants_only_on_token_issue_and_approve_names_someone() -> None:
    found = problems(
        """
        id: a
        on: client.register
        grants: [ciba]
        steps:
          - id: x
            approve: {quorum: 2}
        """
    )
    assert {line for line, _ in found} == {3, 6}


def test_error_text_is_file_colon_line() -> None:
    with pytest.raises(FlowError) as e:
        load_text("id: a\non: token.issue\nsteps:\n  - id: x\n    allow: {}\n  - id: y\n    allow: {}\n", "x/a.yaml")
    assert str(e.value).startswith("x/a.yaml:6: ")


def test_load_dir_refuses_duplicate_ids_and_skips_tests(tmp_path: pathlib.Path) -> None:
    body = "id: same\non: token.issue\nsteps:\n  - id: x\n    allow: {}\n"
    (tmp_path / "a.yaml").write_text(body)
    (tmp_path / "b.yaml").write_text(body.replace("allow", "deny"))
    (tmp_path / "a.test.yaml").write_text("not: a flow\n")
    with pytest.raises(FlowError, match="also used by"):
        load_dir(tmp_path)
    (tmp_path / "b.yaml").unlink()
    assert [f.id for f in load_dir(tmp_path)] == ["same"]


# -- engine ----------------------------------------------------------------------------------------------

OWNER = """
id: owner
on: token.issue
steps:
  - id: has-owner
    require: 'size(client.contacts) > 0'
    reason: an owner is required
"""


def test_require_passes_and_fails() -> None:
    f = flow(OWNER)
    ok = evaluate([f], "token.issue", {"client": {"contacts": ["alice"]}})
    assert ok.outcome == "allow" and [t.short() for t in ok.trace] == ["owner/has-owner:passed"]
    no = evaluate([f], "token.issue", {"client": {"contacts": []}})
    assert no.outcome == "deny" and no.reasons == ("an owner is required",)
    assert [t.short() for t in no.trace] == ["owner/has-owner:failed"]
    assert no.flows == ((f.id, f.version),)


def test_other_trigger_or_grant_does_not_apply() -> None:
    f = flow(OWNER.replace("steps:", "grants: [ciba]\nsteps:"))
    assert evaluate([f], "client.register", {}).to_json()["flows"] == []
    assert evaluate([f], "token.issue", {}, grant="client_credentials").flows == ()
    assert evaluate([f], "token.issue", {"client": {"contacts": []}}, grant="ciba").outcome == "deny"


def test_deny_allow_and_running_past_the_end() -> None:
    f = flow(
        """
        id: a
        on: token.issue
        steps:
          - id: no-ciba
            when: 'request.grant == "ciba"'
            deny: {}
            reason: no CIBA here
          - id: cc-ok
            when: 'request.grant == "client_credentials"'
            allow: {}
          - id: after
            limit: {lifetime: 60}
        """
    )
    d = evaluate([f], "token.issue", {"request": {"grant": "ciba"}})
    assert (d.outcome, d.reason) == ("deny", "no CIBA here")
    d = evaluate([f], "token.issue", {"request": {"grant": "client_credentials"}})
    assert d.outcome == "allow" and d.limits.to_json() == {}
    assert [t.short() for t in d.trace] == ["a/no-ciba:skipped", "a/cc-ok:allowed"]
    d = evaluate([f], "token.issue", {"request": {"grant": "jwt_bearer"}})
    assert d.outcome == "allow" and d.limits.lifetime == 60  # ran past the last step: allowed


def test_limits_combine_within_a_flow() -> None:
    f = flow(
        """
        id: a
        on: token.issue
        steps:
          - id: one
            limit: {lifetime: 600, scopes: [read, write], audiences: [https://a, https://b]}
          - id: two
            limit: {lifetime: 300, scopes: [read, admin]}
          - id: three
            limit: {lifetime: 900, audiences: [https://b, https://c]}
        """
    )
    d = evaluate([f], "token.issue", {})
    assert d.limits.to_json() == {"lifetime": 300, "scopes": ["read"], "audiences": ["https://b"]}


def test_notify_is_reported_only_when_allowed() -> None:
    f = flow(
        """
        id: a
        on: token.revoke
        steps:
          - id: tell
            notify: {people: [alice], groups: [owners], message: revoked}
          - id: stop-replays
            when: 'request.via == "replay"'
            deny: {}
        """
    )
    d = evaluate([f], "token.revoke", {"request": {"via": "operator"}})
    assert d.outcome == "allow"
    [n] = d.notices
    assert (n.flow, n.step, n.people, n.groups, n.message) == ("a", "tell", ("alice",), ("owners",), "revoked")
    assert evaluate([f], "token.revoke", {"request": {"via": "replay"}}).notices == ()


APPROVE = """
id: prod
on: token.issue
steps:
  - id: leads
    approve: {groups: [payments-leads], quorum: 2, assurance: aal2, timeout: 600}
    reason: not approved
  - id: short
    limit: {lifetime: 300}
"""


def test_approve_pending_then_approved_or_denied() -> None:
    f = flow(APPROVE)
    pending = evaluate([f], "token.issue", {})
    assert pending.outcome == "pending"
    [need] = pending.approvals
    assert (need.key, need.groups, need.quorum, need.assurance, need.timeout, need.version) == (
        "prod/leads",
        ("payments-leads",),
        2,
        "aal2",
        600,
        f.version,
    )
    assert [t.short() for t in pending.trace] == ["prod/leads:pending"]  # stops at the approval

    approved = evaluate([f], "token.issue", {}, Recorded(approvals={"prod/leads": "approved"}))
    assert approved.outcome == "allow" and approved.limits.lifetime == 300 and approved.approvals == ()
    for outcome in ("denied", "expired"):
        d = evaluate([f], "token.issue", {}, Recorded(approvals={"prod/leads": outcome}))
        assert (d.outcome, d.reasons) == ("deny", ("not approved",))
        assert [t.short() for t in d.trace] == [f"prod/leads:{outcome}"]


HOOK = """
id: risk
on: token.issue
steps:
  - id: engine
    call: {url: https://risk.example/check, timeout: 1.5}
"""


@pytest.mark.parametrize(
    ("answer", "outcome", "reason"),
    [
        (None, "pending", None),
        ({"allow": True}, "allow", None),
        ({"allow": False, "reason": "score 97"}, "deny", "risk/engine: score 97"),
        ({"error": "timeout"}, "deny", "risk/engine: timeout"),
        ({"allow": "yes"}, "deny", "risk/engine: the hook did not allow"),  # anything but true denies
    ],
)
def test_call_step(answer: dict[str, Any] | None, outcome: str, reason: str | None) -> None:
    f = flow(HOOK)
    d = evaluate([f], "token.issue", {}, Recorded(hooks={"risk/engine": answer} if answer is not None else {}))
    assert d.outcome == outcome and d.reason == reason
    if outcome == "pending":
        [call] = d.calls
        assert (call.key, call.url, call.timeout) == ("risk/engine", "https://risk.example/check", 1.5)


def test_all_any_not() -> None:
    f = flow(
        """
        id: a
        on: token.issue
        steps:
          - id: ci
            require:
              all:
                - 'client.id.startsWith("ci-")'
                - any: ['request.grant == "token_exchange"', 'request.grant == "jwt_bearer"']
                - not: 'federation.claims.ref != "refs/heads/main"'
        """
    )

    def outcome(client: str, grant: str, ref: str) -> str:
        ctx = {"client": {"id": client}, "request": {"grant": grant}, "federation": {"claims": {"ref": ref}}}
        return evaluate([f], "token.issue", ctx).outcome

    assert outcome("ci-build", "token_exchange", "refs/heads/main") == "allow"
    assert outcome("ci-build", "jwt_bearer", "refs/heads/main") == "allow"
    assert outcome("agent-1", "token_exchange", "refs/heads/main") == "deny"  # all: first part
    assert outcome("ci-build", "client_credentials", "refs/heads/main") == "deny"  # any: neither
    assert outcome("ci-build", "token_exchange", "refs/heads/dev") == "deny"  # not


def test_guard_false_does_not_apply() -> None:
    f = flow(
        """
        id: payments
        on: token.issue
        when: '"payments" in request.scope'
        steps:
          - id: nope
            deny: {}
        """
    )
    d = evaluate([f], "token.issue", {"request": {"scope": ["read"]}})
    assert d.outcome == "allow" and d.trace == () and d.flows == ()
    assert evaluate([f], "token.issue", {"request": {"scope": ["payments"]}}).outcome == "deny"


@pytest.mark.parametrize(
    "expression",
    [
        "federation.claims.ref == 'refs/heads/main'",  # a missing field
        "request.lifetime > 'ten'",  # a type error
        "request.lifetime",  # not a boolean
    ],
)
def test_evaluation_error_denies(expression: str) -> None:
    f = flow(
        f"""
        id: a
        on: token.issue
        steps:
          - id: x
            require: "{expression}"
        """
    )
    d = evaluate([f], "token.issue", {"request": {"lifetime": 10}})
    assert d.outcome == "deny"
    assert d.reasons[0].startswith("a: a condition could not be evaluated")
    assert [t.short() for t in d.trace] == ["a/-:error"]


def test_an_error_in_a_guard_denies_too() -> None:
    f = flow("id: a\non: token.issue\nwhen: 'federation.claims.ref == \"x\"'\nsteps:\n  - id: x\n    allow: {}\n")
    assert evaluate([f], "token.issue", {}).outcome == "deny"


def test_flows_combine_any_deny_denies_and_limits_intersect() -> None:
    a = flow("id: a\non: token.issue\nsteps:\n  - id: l\n    limit: {lifetime: 600, scopes: [read, write]}\n")
    b = flow("id: b\non: token.issue\nsteps:\n  - id: l\n    limit: {lifetime: 300, scopes: [read, admin]}\n")
    c = flow("id: c\non: token.issue\nsteps:\n  - id: d\n    when: 'request.grant == \"ciba\"'\n    deny: {}\n")
    d = evaluate([c, b, a], "token.issue", {"request": {"grant": "client_credentials"}})
    assert d.outcome == "allow" and d.limits.to_json() == {"lifetime": 300, "scopes": ["read"]}
    assert [fid for fid, _ in d.flows] == ["a", "b", "c"]  # in id order, whatever the input order
    d = evaluate([a, b, c], "token.issue", {"request": {"grant": "ciba"}})
    assert d.outcome == "deny" and d.reasons == ("c/d: denied",)


def test_a_denial_beats_a_pending_approval_and_approvals_add_up() -> None:
    p = flow(APPROVE)
    q = flow(APPROVE.replace("id: prod", "id: qa"))
    both = evaluate([p, q], "token.issue", {})
    assert both.outcome == "pending" and [n.key for n in both.approvals] == ["prod/leads", "qa/leads"]
    no = flow("id: zz\non: token.issue\nsteps:\n  - id: d\n    deny: {}\n")
    d = evaluate([p, no], "token.issue", {})
    assert d.outcome == "deny" and d.approvals == ()


def test_same_inputs_same_decision() -> None:
    flows = [flow(APPROVE), flow(HOOK), flow(OWNER)]
    ctx = {"client": {"contacts": ["a"]}, "request": {"scope": ["x"]}}
    rec = Recorded(approvals={"prod/leads": "approved"}, hooks={"risk/engine": {"allow": True}})
    first = evaluate(flows, "token.issue", ctx, rec, now=1_800_000_000)
    for _ in range(5):
        again = evaluate(list(reversed(flows)), "token.issue", ctx, rec, now=1_800_000_000)
        assert again == first and again.to_json() == first.to_json()


def test_now_is_the_injected_clock() -> None:
    f = flow("id: a\non: token.issue\nsteps:\n  - id: t\n    require: 'now < 2000000000'\n")
    assert evaluate([f], "token.issue", {}, now=1_900_000_000).outcome == "allow"
    assert evaluate([f], "token.issue", {}, now=2_100_000_000).outcome == "deny"


# -- versions ---------------------------------------------------------------------------------------------


def test_version_is_stable_under_key_order_and_changes_on_any_edit() -> None:
    one = flow("id: a\non: token.issue\nsteps:\n  - id: l\n    limit: {lifetime: 600, scopes: [read]}\n")
    two = flow("steps:\n  - limit: {scopes: [read], lifetime: 600}\n    id: l\non: token.issue\nid: a\n")
    assert one.version == two.version == version_of({"on": "token.issue", "id": "a", "steps": two.document["steps"]})
    assert one.version.startswith("sha256:")
    edits = [
        "id: a\non: token.issue\nsteps:\n  - id: l\n    limit: {lifetime: 601, scopes: [read]}\n",
        "id: a\non: token.issue\nsteps:\n  - id: l\n    limit: {lifetime: 600, scopes: [reads]}\n",
        "id: a\non: token.issue\nsteps:\n  - id: m\n    limit: {lifetime: 600, scopes: [read]}\n",
        "id: a\non: token.issue\ndescription: x\nsteps:\n  - id: l\n    limit: {lifetime: 600, scopes: [read]}\n",
    ]
    assert len({one.version, *(load_text(e).version for e in edits)}) == 1 + len(edits)


def test_diff_names_added_changed_removed() -> None:
    a1 = flow("id: a\non: token.issue\nsteps:\n  - id: l\n    limit: {lifetime: 600}\n")
    a2 = flow("id: a\non: token.issue\nsteps:\n  - id: l\n    limit: {lifetime: 300}\n")
    b = flow("id: b\non: token.issue\nsteps:\n  - id: l\n    limit: {lifetime: 600}\n")
    c = flow("id: c\non: token.revoke\nsteps:\n  - id: n\n    notify: {groups: [x]}\n")
    changes = {d["flow"]: d for d in diff([a1, b], [a2, b, c])}
    assert changes["a"] == {"flow": "a", "change": "changed", "from": a1.version, "to": a2.version, "on": "token.issue"}
    assert changes["c"]["change"] == "added" and "b" not in changes
    assert diff([a1], [])[0]["change"] == "removed"


# -- the test-file runner -----------------------------------------------------------------------------------


def _write(directory: pathlib.Path, name: str, text: str) -> pathlib.Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _approve_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    _write(tmp_path, "prod.yaml", APPROVE)
    return tmp_path


def test_runner_passes_and_reports_readable_diffs(tmp_path: pathlib.Path) -> None:
    _approve_dir(tmp_path)
    _write(
        tmp_path,
        "prod.test.yaml",
        """
        flow: prod
        cases:
          - name: pending
            expect: {outcome: pending, approvals: [leads], trace: [leads:pending]}
          - name: approved
            approvals: {leads: approved}
            expect: {outcome: allow, limits: {lifetime: 300}, trace: [prod/leads:approved, prod/short:applied]}
          - name: wrong on purpose
            approvals: {leads: denied}
            expect: {outcome: allow, reason: nope, limits: {lifetime: 60}, trace: [leads:approved]}
        """,
    )
    report = run_tests(tmp_path)
    assert not report.ok and report.files == 1 and report.errors == []
    assert [r.passed for r in report.results] == [True, True, False]
    failed = report.results[2]
    assert {m.field for m in failed.mismatches} == {"outcome", "reason", "limits", "trace"}
    assert failed.line == 8
    text = report.render()
    assert f"FAIL  wrong on purpose  ({tmp_path / 'prod.test.yaml'}:8)" in text
    assert "expected: 'allow'\n          got:      'deny'" in text
    assert "expected: [leads:approved]\n          got:      [leads:denied]" in text
    assert "expected: {lifetime: 60}\n          got:      {}" in text
    assert text.endswith("3 case(s) in 1 file(s): 2 passed, 1 failed")


def test_runner_fills_the_grant_and_uses_the_clock(tmp_path: pathlib.Path) -> None:
    _write(
        tmp_path,
        "a.yaml",
        """
        id: a
        on: token.issue
        grants: [token_exchange]
        steps:
          - id: te
            require: 'request.grant == "token_exchange" && now == 1800000000'
        """,
    )
    _write(
        tmp_path,
        "a.test.yaml",
        """
        flow: a
        cases:
          - name: exchange at the right time
            grant: token_exchange
            now: 1800000000
            expect: {outcome: allow, trace: [te:passed]}
          - name: other grants are not concerned
            grant: ciba
            expect: {outcome: allow, trace: []}
          - name: the grant may come from the context
            now: 1800000000
            context: {request: {grant: token_exchange}}
            expect: {outcome: allow, trace: [te:passed]}
        """,
    )
    report = run_tests(tmp_path)
    assert report.ok, report.render()


def test_runner_evaluates_several_flows_together(tmp_path: pathlib.Path) -> None:
    _approve_dir(tmp_path)
    _write(tmp_path, "risk.yaml", HOOK)
    _write(
        tmp_path,
        "both.test.yaml",
        """
        flows: [prod, risk]
        cases:
          - name: both pending
            expect: {outcome: pending, approvals: [prod/leads], calls: [risk/engine]}
          - name: the hook says no
            approvals: {leads: approved}
            hooks: {engine: {allow: false, reason: score 97}}
            expect: {outcome: deny, reason: score 97, trace: [leads:approved, short:applied, engine:failed]}
        """,
    )
    report = run_tests(tmp_path)
    assert report.ok, report.render()
    assert report.untested == []


@pytest.mark.parametrize(
    ("test_text", "line", "message"),
    [
        ("flow: prod\ncases:\n  - name: x\n    expect: {outcome: maybe}\n", 4, "'maybe' is not one of"),
        ("flow: prod\ncases:\n  - name: x\n    expect: {outcome: allow}\n    contxt: {}\n", 3, "contxt"),
        ("cases:\n  - name: x\n    expect: {outcome: allow}\n", 1, "name the flow under test"),
        (
            "flow: prod\ncases:\n  - name: x\n    context: {request: {scopes: [a]}}\n    expect: {outcome: allow}\n",
            4,
            "request.scopes is not a field",
        ),
        (
            "flow: prod\ncases:\n  - name: x\n    expect: {outcome: allow}\n"
            "  - name: x\n    expect: {outcome: allow}\n",
            5,
            "used twice",
        ),
        ("flow: prod\ncases:\n  - name: x\n    expect: {outcome: allow\n", 5, "not valid YAML"),
        ("flow: nope\ncases:\n  - name: x\n    expect: {outcome: allow}\n", 1, "no flow 'nope'"),
        (
            "flow: prod\ncases:\n  - name: x\n    approvals:\n      short: approved\n    expect: {outcome: allow}\n",
            5,
            "'short' is not an approve step",
        ),
        (
            "flow: prod\ncases:\n  - name: x\n    expect:\n      outcome: allow\n      trace: [lead:approved]\n",
            6,
            "trace entry 'lead:approved'",
        ),
    ],
)
def test_runner_errors_name_file_and_line(tmp_path: pathlib.Path, test_text: str, line: int, message: str) -> None:
    _approve_dir(tmp_path)
    path = tmp_path / "prod.test.yaml"
    path.write_text(test_text)
    report = run_tests(tmp_path)
    assert not report.ok and report.results == []
    assert any(e.startswith(f"{path}:{line}: ") and message in e for e in report.errors), report.errors
    assert f"error: {path}:{line}: " in report.render()


def test_load_tests_collects_every_file(tmp_path: pathlib.Path) -> None:
    _write(tmp_path, "a.test.yaml", "flow: a\ncases:\n  - name: x\n    expect: {outcome: allow}\n")
    _write(tmp_path, "b.test.yml", "flows: [a, b]\ncases:\n  - name: y\n    expect: {outcome: deny}\n")
    assert [(t.flows, [c.name for c in t.cases]) for t in load_tests(tmp_path)] == [
        (("a",), ["x"]),
        (("a", "b"), ["y"]),
    ]
    _write(tmp_path, "c.test.yaml", "flow: a\n")
    with pytest.raises(FlowError, match=r"c\.test\.yaml:1: .*cases"):
        load_tests(tmp_path)


def test_runner_reports_broken_flows_and_untested_ones(tmp_path: pathlib.Path) -> None:
    _approve_dir(tmp_path)
    _write(tmp_path, "risk.yaml", HOOK)
    report = run_tests(tmp_path)
    assert report.ok and report.untested == ["prod", "risk"] and "no test file covers flow prod" in report.render()
    _write(
        tmp_path, "bad.yaml", "id: bad\non: token.issue\nsteps:\n  - id: x\n    allow: {}\n  - id: y\n    deny: {}\n"
    )
    report = run_tests(tmp_path)
    assert not report.ok and report.errors == [
        f"{tmp_path / 'bad.yaml'}:6: step 'y' is unreachable: step 'x' always ends the flow"
    ]
