"""Flow tests: ``<name>.test.yaml`` files beside the flows, run in CI like code (docs/flows.md).

A test file names the flow (or flows) under test and lists cases; each case is a context, the
recorded external results (approval outcomes, hook answers) and the decision expected::

    flow: payments-production
    cases:
      - name: two approvals at aal2 allow
        grant: client_credentials
        context: {client: {contacts: [alice]}, request: {scope: [payments.write]}}
        approvals: {prod-approval: approved}      # step ids of the flow under test
        expect:
          outcome: allow
          trace: [owner:passed, prod-approval:approved]

The flows under test are evaluated alone, by the engine itself: a case is a replay of a decision.
Errors name the file and the line, as the flow loader's do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from .engine import Decision, Recorded, evaluate
from .loader import _FIELDS, FlowError, _index, _Lines, _Loader, load_dir
from .model import TRIGGERS, Flow

__all__ = [
    "Case",
    "CaseResult",
    "Mismatch",
    "Report",
    "TestFile",
    "bind",
    "check_tests",
    "load_test_file",
    "load_tests",
    "run_case",
    "run_tests",
]

_NAMES = {"type": "array", "items": {"type": "string", "minLength": 1}}
_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["cases"],
    "oneOf": [{"required": ["flow"]}, {"required": ["flows"]}],
    "properties": {
        "flow": {"type": "string", "minLength": 1},
        "flows": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"type": "string", "minLength": 1}},
        "cases": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "expect"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "trigger": {"enum": list(TRIGGERS)},
                    "grant": {
                        "enum": [
                            "client_credentials",
                            "token_exchange",
                            "jwt_bearer",
                            "ciba",
                            "authorization_code",
                            "refresh_token",
                        ]
                    },
                    "now": {"type": "integer", "minimum": 0},
                    "context": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {root: {"type": "object"} for root in _FIELDS},
                    },
                    "approvals": {
                        "type": "object",
                        "additionalProperties": {"enum": ["approved", "denied", "expired", "cancelled"]},
                    },
                    "hooks": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "properties": {
                                "allow": {"type": "boolean"},
                                "reason": {"type": "string"},
                                "error": {"type": "string"},
                            },
                            "additionalProperties": False,
                        },
                    },
                    "expect": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["outcome"],
                        "properties": {
                            "outcome": {"enum": ["allow", "deny", "pending"]},
                            "reason": {"type": "string", "minLength": 1},
                            "trace": _NAMES,
                            "limits": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "lifetime": {"type": "integer"},
                                    "scopes": _NAMES,
                                    "audiences": _NAMES,
                                },
                            },
                            "approvals": _NAMES,
                            "calls": _NAMES,
                            "notices": _NAMES,
                        },
                    },
                },
            },
        },
    },
}
_VALIDATOR = Draft202012Validator(_SCHEMA)


@dataclass(frozen=True)
class Case:
    name: str
    line: int | None
    trigger: str | None
    grant: str | None
    now: int
    context: Mapping[str, Any]
    approvals: Mapping[str, str]
    hooks: Mapping[str, Mapping[str, Any]]
    expect: Mapping[str, Any]
    #: line numbers of the case's keys (``approvals.<key>``, ``expect.trace`` …), for errors
    lines: Mapping[str, int] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class TestFile:
    __test__ = False  # not a pytest class

    path: str
    flows: tuple[str, ...]
    cases: tuple[Case, ...]
    line: int | None = None


@dataclass(frozen=True)
class Mismatch:
    field: str
    expected: Any
    got: Any


@dataclass(frozen=True)
class CaseResult:
    file: str
    case: str
    line: int | None
    mismatches: tuple[Mismatch, ...]
    decision: Decision

    @property
    def passed(self) -> bool:
        return not self.mismatches


@dataclass
class Report:
    """The outcome of a test run: per-case results, plus files or flows that could not be used."""

    results: list[CaseResult] = field(default_factory=list)
    #: ``file:line: message`` of every flow or test file that could not be used
    errors: list[str] = field(default_factory=list)
    #: flows no test file names
    untested: list[str] = field(default_factory=list)
    files: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors and all(r.passed for r in self.results)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]

    def extend(self, other: Report) -> None:
        self.results.extend(other.results)
        self.errors.extend(other.errors)
        self.untested.extend(other.untested)
        self.files += other.files

    def render(self) -> str:
        out: list[str] = []
        current = None
        for r in self.results:
            if r.file != current:
                current = r.file
                out.append(r.file)
            if r.passed:
                out.append(f"  ok    {r.case}")
                continue
            out.append(f"  FAIL  {r.case}  ({r.file}:{r.line or '?'})")
            for m in r.mismatches:
                out.append(f"        {m.field}:")
                out.append(f"          expected: {_show(m.expected)}")
                out.append(f"          got:      {_show(m.got)}")
            if r.decision.reasons and not any(m.field == "reason" for m in r.mismatches):
                out.append(f"        (reasons: {'; '.join(r.decision.reasons)})")
        out.extend(f"error: {e}" for e in self.errors)
        out.extend(f"note: no test file covers flow {f}" for f in self.untested)
        failed = len(self.failed)
        summary = f"{len(self.results)} case(s) in {self.files} file(s): {len(self.results) - failed} passed"
        summary += f", {failed} failed" if failed else ""
        summary += f", {len(self.errors)} error(s)" if self.errors else ""
        out.append(summary)
        return "\n".join(out)


def _show(value: Any) -> str:
    if value is None:
        return "(nothing)"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return repr(value) if isinstance(value, str) else str(value)


# -- reading --------------------------------------------------------------------------------------------
def load_test_file(path: Path) -> TestFile:
    """Read and check one test file's structure (its flows and step ids are checked by ``run_tests``)."""
    source = str(path)
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=_Loader)
        document = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise FlowError(
            source, [(mark.line + 1 if mark else None, f"not valid YAML: {getattr(e, 'problem', e)}")]
        ) from None
    lines = _Lines({})
    if node is not None:
        _index(node, (), lines.by_path)
    if not isinstance(document, dict):
        raise FlowError(source, [(1, "a test file is a YAML mapping with flow and cases")])
    problems: list[tuple[int | None, str]] = []
    for err in sorted(_VALIDATOR.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in err.absolute_path) or "(top)"
        message = err.message
        if err.validator == "oneOf" and not err.absolute_path:
            message = "name the flow under test: flow: <id> (or flows: [<id>, ...]), not both"
        problems.append((lines.of(err.absolute_path), f"{where}: {message}"))
    if problems:
        raise FlowError(source, problems)
    cases: list[Case] = []
    names: set[str] = set()
    for i, raw in enumerate(document["cases"]):
        at = ("cases", i)
        if raw["name"] in names:
            problems.append((lines.of((*at, "name")), f"case name {raw['name']!r} is used twice"))
        names.add(raw["name"])
        context = raw.get("context") or {}
        for root, values in context.items():
            for name in values:
                if name not in _FIELDS[root]:
                    problems.append(
                        (lines.of((*at, "context", root, name)), f"{root}.{name} is not a field of the context")
                    )
        keyed = {
            f"{part}.{key}": lines.of((*at, part, key)) or 0
            for part in ("approvals", "hooks")
            for key in raw.get(part) or {}
        }
        keyed.update({f"expect.{k}": lines.of((*at, "expect", k)) or 0 for k in raw["expect"]})
        cases.append(
            Case(
                name=raw["name"],
                line=lines.of(at),
                trigger=raw.get("trigger"),
                grant=raw.get("grant"),
                now=raw.get("now", 0),
                context=context,
                approvals=raw.get("approvals") or {},
                hooks=raw.get("hooks") or {},
                expect=raw["expect"],
                lines=keyed,
            )
        )
    if problems:
        raise FlowError(source, problems)
    flows = (document["flow"],) if "flow" in document else tuple(document["flows"])
    return TestFile(source, flows, tuple(cases), lines.of(("flow",)) or lines.of(("flows",)))


def _test_paths(directory: Path) -> list[Path]:
    return sorted([*directory.glob("*.test.yaml"), *directory.glob("*.test.yml")])


def load_tests(directory: Path) -> list[TestFile]:
    """Every test file of a directory; a ``FlowError`` lists the problems of all of them."""
    out: list[TestFile] = []
    problems: list[str] = []
    for path in _test_paths(directory):
        try:
            out.append(load_test_file(path))
        except FlowError as e:
            problems.append(str(e))
    if problems:
        raise FlowError(str(directory), [(None, p) for p in problems])
    return out


# -- binding a test file to its flows ---------------------------------------------------------------------
def _resolve(key: str, under_test: Sequence[Flow], kinds: tuple[str, ...]) -> str | None:
    """``step`` or ``flow/step`` → ``flow/step`` of a step of one of those kinds, or None."""
    if "/" in key:
        fid, _, sid = key.partition("/")
        candidates = [(f.id, s) for f in under_test if f.id == fid for s in f.steps if s.id == sid]
    else:
        candidates = [(f.id, s) for f in under_test for s in f.steps if s.id == key]
    if len(candidates) != 1 or candidates[0][1].kind not in kinds:
        return None
    return f"{candidates[0][0]}/{key.rpartition('/')[2]}"


def bind(test: TestFile, flows: Sequence[Flow]) -> tuple[list[Flow], list[str]]:
    """The flows a test file names, and ``file:line: message`` for everything that does not fit."""
    by_id = {f.id: f for f in flows}
    problems = [
        f"{test.path}:{test.line or '?'}: no flow {fid!r} here (known: {', '.join(sorted(by_id)) or 'none'})"
        for fid in test.flows
        if fid not in by_id
    ]
    if problems:
        return [], problems
    under_test = [by_id[fid] for fid in test.flows]
    steps = {f"{f.id}/{s.id}" for f in under_test for s in f.steps} | {s.id for f in under_test for s in f.steps}
    steps |= {f"{f.id}/-" for f in under_test} | {"-"}  # an evaluation error's trace entry
    for case in test.cases:

        def where(key: str, case: Case = case) -> str:
            return f"{test.path}:{case.lines.get(key) or case.line or '?'}"

        if case.trigger is None and len({f.on for f in under_test}) > 1:
            problems.append(f"{where('')}: case {case.name!r}: the flows have different triggers; name one")
        for part, recorded, kinds in (("approvals", case.approvals, ("approve",)), ("hooks", case.hooks, ("call",))):
            for key in recorded:
                if _resolve(key, under_test, kinds) is None:
                    problems.append(
                        f"{where(f'{part}.{key}')}: case {case.name!r}: {key!r} is not "
                        f"{'an approve' if part == 'approvals' else 'a call'} step of {', '.join(test.flows)}"
                    )
        for entry in case.expect.get("trace", ()):
            step, sep, _ = entry.rpartition(":")
            if not sep or step not in steps:
                problems.append(
                    f"{where('expect.trace')}: case {case.name!r}: trace entry {entry!r} is not "
                    "<step>:<result> for a step of the flow under test"
                )
    return under_test, problems


# -- running -----------------------------------------------------------------------------------------------
def _strip(entries: Iterable[str], prefixed: bool) -> list[str]:
    return list(entries) if prefixed else [e.partition("/")[2] if "/" in e else e for e in entries]


def _compare(case: Case, decision: Decision) -> list[Mismatch]:
    expect = case.expect
    out: list[Mismatch] = []
    if decision.outcome != expect["outcome"]:
        out.append(Mismatch("outcome", expect["outcome"], decision.outcome))
    if "reason" in expect and expect["reason"] not in (decision.reason or ""):
        out.append(Mismatch("reason", f"…{expect['reason']}…", decision.reason))
    got_json = decision.to_json()
    for name in ("trace", "approvals", "calls", "notices"):
        if name not in expect:
            continue
        wanted = list(expect[name])
        # Entries written with the flow prefix are compared with it; without, against the step id.
        prefixed = any("/" in e.partition(":")[0] for e in wanted)
        got = _strip(got_json[name], prefixed)
        if wanted != got:
            out.append(Mismatch(name, wanted, got))
    if "limits" in expect:
        wanted_limits = {k: sorted(v) if isinstance(v, list) else v for k, v in expect["limits"].items()}
        if wanted_limits != decision.limits.to_json():
            out.append(Mismatch("limits", wanted_limits, decision.limits.to_json()))
    return out


def run_case(case: Case, under_test: Sequence[Flow], path: str = "<test>") -> CaseResult:
    """Evaluate one case against the flows under test, alone, and compare with what it expects."""
    trigger = case.trigger or under_test[0].on
    context = {root: dict(values) for root, values in case.context.items()}
    request = context.setdefault("request", {})
    grant = case.grant or request.get("grant")
    if grant is not None and trigger == "token.issue":
        request.setdefault("grant", grant)
    recorded = Recorded(
        approvals={_resolve(k, under_test, ("approve",)) or k: v for k, v in case.approvals.items()},
        hooks={_resolve(k, under_test, ("call",)) or k: v for k, v in case.hooks.items()},
    )
    decision = evaluate(under_test, trigger, context, recorded, now=case.now, grant=grant)
    return CaseResult(path, case.name, case.line, tuple(_compare(case, decision)), decision)


def _flow_errors(e: FlowError) -> list[str]:
    out: list[str] = []
    for line, msg in e.problems:
        if line is None and Path(e.source).is_dir():
            out.extend(msg.splitlines())
        else:
            out.append(f"{e.source}:{line or '?'}: {msg}")
    return out


def run_tests(directory: Path, flows: Sequence[Flow] | None = None) -> Report:
    """Run every test file of ``directory`` against ``flows`` (default: the flows of that directory)."""
    report = Report()
    if flows is None:
        try:
            flows = load_dir(directory)
        except FlowError as e:
            report.errors.extend(_flow_errors(e))
            return report
    covered: set[str] = set()
    for path in _test_paths(directory):
        report.files += 1
        try:
            test = load_test_file(path)
        except FlowError as e:
            report.errors.extend(_flow_errors(e))
            continue
        under_test, problems = bind(test, flows)
        covered.update(test.flows)
        if problems:
            report.errors.extend(problems)
            continue
        report.results.extend(run_case(case, under_test, test.path) for case in test.cases)
    report.untested = sorted({f.id for f in flows} - covered)
    return report


def check_tests(directory: Path, flows: Sequence[Flow]) -> list[str]:
    """``file:line: message`` for every test file of ``directory`` that cannot run (nothing is evaluated)."""
    problems: list[str] = []
    for path in _test_paths(directory):
        try:
            test = load_test_file(path)
        except FlowError as e:
            problems.extend(_flow_errors(e))
            continue
        problems.extend(bind(test, flows)[1])
    return problems
