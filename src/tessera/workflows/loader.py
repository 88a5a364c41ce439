"""Reading flow files: YAML → schema check (``flow.schema.json``) → semantic checks → a compiled
``Flow`` whose version is the SHA-256 of its RFC 8785 canonical form. Every error names the file and
the line."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rfc8785
import yaml
from jsonschema import Draft202012Validator

from tessera.federation.cel import CelError, compile_expression

from .model import HIGH_RISK_TRIGGERS, KINDS, Condition, Flow, Step

__all__ = ["FlowError", "load_dir", "load_file", "load_text", "parse_flow", "schema", "version_of"]

SCHEMA_PATH = Path(__file__).with_name("flow.schema.json")
#: the context a flow may read (docs/flows.md); a CEL reference to anything else is refused
CONTEXT_ROOTS = ("client", "request", "federation", "person", "source", "now")
_FIELDS = {
    "client": {"id", "name", "contacts", "grant_types", "scope", "metadata", "quarantined"},
    "request": {"grant", "scope", "audience", "lifetime", "authorization_details", "selector", "via"},
    "federation": {"issuer", "subject", "claims", "attributes", "trust"},
    "person": {"id", "groups"},
    "source": {"ip", "network", "hour", "new"},
}
_REFERENCE = re.compile(r"\b(client|request|federation|person|source)\.([A-Za-z_][A-Za-z0-9_]*)")


class FlowError(ValueError):
    """A flow that cannot be used. ``problems`` lists every finding as (line or None, message)."""

    def __init__(self, source: str, problems: list[tuple[int | None, str]]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}:{line or '?'}: {msg}" for line, msg in problems))


@dataclass
class _Lines:
    """Line numbers (1-based) of the YAML nodes, by JSON path."""

    by_path: dict[tuple[Any, ...], int]

    def of(self, path: Iterable[Any]) -> int | None:
        p = tuple(path)
        while p:
            if p in self.by_path:
                return self.by_path[p]
            p = p[:-1]
        return self.by_path.get((), None)


def _index(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            k = key.value
            out[(*path, k)] = key.start_mark.line + 1
            _index(value, (*path, k), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _index(value, (*path, i), out)


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. (YAML 1.1 reads the key ``on`` — the trigger — as True.)"""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def schema() -> dict[str, Any]:
    return dict(json.loads(SCHEMA_PATH.read_text()))


_VALIDATOR = Draft202012Validator(schema())


def version_of(document: Mapping[str, Any]) -> str:
    """The content address of a flow: SHA-256 of its RFC 8785 form, base64url (no padding)."""
    digest = hashlib.sha256(rfc8785.dumps(dict(document))).digest()
    return "sha256:" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def load_text(text: str, source: str = "<flow>") -> Flow:
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
    return parse_flow(document, source, lines)


def load_file(path: Path) -> Flow:
    return load_text(path.read_text(), str(path))


def load_dir(directory: Path) -> list[Flow]:
    """Every ``*.yaml`` / ``*.yml`` flow of a directory (not ``*.test.yaml``), ids unique, sorted by id."""
    flows: list[Flow] = []
    problems: list[str] = []
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        if path.name.endswith((".test.yaml", ".test.yml")):
            continue
        try:
            flows.append(load_file(path))
        except FlowError as e:
            problems.append(str(e))
    seen: dict[str, str] = {}
    for f in flows:
        if f.id in seen:
            problems.append(f"{f.source}: flow id {f.id!r} is also used by {seen[f.id]}")
        seen[f.id] = f.source
    if problems:
        raise FlowError(str(directory), [(None, p) for p in problems])
    return sorted(flows, key=lambda f: f.id)


def parse_flow(document: Any, source: str = "<flow>", lines: _Lines | None = None) -> Flow:
    lines = lines or _Lines({})
    problems: list[tuple[int | None, str]] = []
    if not isinstance(document, dict):
        raise FlowError(source, [(1, "a flow is a YAML mapping")])
    for err in sorted(_VALIDATOR.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in err.absolute_path) or "(top)"
        message = err.message
        if err.validator == "additionalProperties" and "steps" in err.absolute_path:
            message = f"unknown step kind or field ({err.message})"
        problems.append((lines.of(err.absolute_path), f"{where}: {message}"))
    if problems:
        raise FlowError(source, problems)

    def condition(raw: Any, path: tuple[Any, ...]) -> Condition | None:
        if raw is None:
            return None
        if isinstance(raw, str):
            try:
                expr = compile_expression(raw)
            except CelError as e:
                problems.append((lines.of(path), str(e)))
                return None
            for root, name in _REFERENCE.findall(raw):
                if name not in _FIELDS[root]:
                    problems.append((lines.of(path), f"{root}.{name} is not a field of the context (docs/flows.md)"))
            return Condition("cel", expr)
        ((op, value),) = raw.items()
        if op == "not":
            inner = condition(value, (*path, "not"))
            return Condition("not", parts=(inner,) if inner else ())
        parts = tuple(c for i, v in enumerate(value) if (c := condition(v, (*path, op, i))) is not None)
        return Condition(op, parts=parts)

    steps: list[Step] = []
    ids: set[str] = set()
    ended_at: str | None = None
    for i, raw in enumerate(document["steps"]):
        path = ("steps", i)
        kinds = [k for k in KINDS if k in raw]
        if len(kinds) != 1:
            problems.append((lines.of(path), f"step {raw.get('id')!r} must have exactly one of {', '.join(KINDS)}"))
            continue
        kind = kinds[0]
        if raw["id"] in ids:
            problems.append((lines.of((*path, "id")), f"step id {raw['id']!r} is used twice"))
        ids.add(raw["id"])
        if ended_at is not None:
            problems.append(
                (lines.of(path), f"step {raw['id']!r} is unreachable: step {ended_at!r} always ends the flow")
            )
        if kind in ("allow", "deny") and "when" not in raw:
            ended_at = raw["id"]
        if kind == "approve" and not (raw["approve"].get("people") or raw["approve"].get("groups")):
            problems.append((lines.of((*path, "approve")), "an approve step names people or groups"))
        steps.append(
            Step(
                id=raw["id"],
                kind=kind,
                spec=raw[kind] if kind != "require" else {},
                when=condition(raw.get("when"), (*path, "when")),
                condition=condition(raw["require"], (*path, "require")) if kind == "require" else None,
                reason=raw.get("reason"),
                line=lines.of(path),
            )
        )
    if document.get("grants") and document["on"] != "token.issue":
        problems.append((lines.of(("grants",)), "grants applies only to the token.issue trigger"))
    risk = document.get("risk", "low")
    if (
        risk == "high"
        and document["on"] in HIGH_RISK_TRIGGERS
        and not any(s.kind in ("approve", "limit") for s in steps)
    ):
        problems.append((lines.of(("risk",)), "a high-risk flow needs an approve or a limit step"))
    guard = condition(document.get("when"), ("when",))
    if problems:
        raise FlowError(source, problems)
    sources = [
        src for c in [guard, *(s.when for s in steps), *(s.condition for s in steps)] if c for src in c.sources()
    ]
    roots = frozenset(r for r in CONTEXT_ROOTS if any(re.search(rf"\b{r}\b", src) for src in sources))
    return Flow(
        roots=roots,
        id=document["id"],
        on=document["on"],
        steps=tuple(steps),
        description=document.get("description", ""),
        grants=tuple(document.get("grants", ())),
        when=guard,
        risk=risk,
        document=document,
        version=version_of(document),
        source=source,
    )
