"""CEL expressions for attribute mapping and conditions, as Google Cloud workload identity federation
uses them: ``assertion.*`` is the external token's claims, mapped attributes are ``attributes.*``.

The library is ``common-expression-language`` (Python bindings of the Rust ``cel`` interpreter).
cel-python (``celpy``, pure Python) was measured first: about 450 µs to evaluate a condition, an
attribute and the subject of one token, more than the request's two signatures together; the
Rust-backed runtime does the same in about 60 µs (``bench/exchange.py`` prints the figure).
Expressions are compiled once, when the configuration is loaded; a compile error is a configuration
error naming the expression. Evaluation errors (a missing claim, a type mismatch, a division by
zero, an unknown function) are never a value: they become ``CelError`` and the caller denies.

Caps: an expression is at most ``MAX_EXPRESSION_CHARS`` characters; a mapped value converts to
JSON types only (string, number, bool, null, lists and maps of them), at most ``MAX_VALUE_BYTES``
once serialised. CEL has no loops or recursion, so with both caps an evaluation's cost is bounded
by the expression and the (size-capped) token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cel
import orjson

__all__ = [
    "MAX_EXPRESSION_CHARS",
    "MAX_VALUE_BYTES",
    "CelError",
    "Expression",
    "activation",
    "add_variables",
    "claims_used",
    "compile_expression",
]

MAX_EXPRESSION_CHARS = 2048
MAX_VALUE_BYTES = 2048


class CelError(Exception):
    """An expression that does not compile, or an evaluation that did not produce a usable value."""


@dataclass(frozen=True)
class Expression:
    source: str
    program: Any

    def evaluate(self, activation: Any) -> Any:
        """The expression's value as plain JSON-shaped Python; ``CelError`` on any evaluation error."""
        try:
            value = self.program.execute(activation)
        except Exception as e:  # KeyError for a missing member, TypeError, RuntimeError, ZeroDivisionError …
            raise CelError(f"{self.source[:120]!r} failed: {_describe(e)}") from None
        plain = _to_plain(value, 0)
        if len(orjson.dumps(plain)) > MAX_VALUE_BYTES:
            raise CelError(f"{self.source[:120]!r} produced a value larger than {MAX_VALUE_BYTES} bytes")
        return plain

    def evaluate_bool(self, activation: Any) -> bool:
        value = self.evaluate(activation)
        if not isinstance(value, bool):
            raise CelError(f"{self.source[:120]!r} is not a boolean (got {type(value).__name__})")
        return value


_VARIABLE = re.compile(r"\bassertion\b")
_MEMBER = re.compile(r"""\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()|\[\s*(?:'([^'\\]*)'|"([^"\\]*)")\s*\])""")


def claims_used(sources: Iterable[str]) -> frozenset[str] | None:
    """The top-level claims the expressions can read, or None when that cannot be told for sure.

    Converting claims to CEL values is most of an evaluation's cost, so only these are converted.
    Conservative: every occurrence of ``assertion`` must be a member access with a literal name
    (``assertion.sub``, ``assertion['kubernetes.io']``) and not a macro or method call on the map
    (``assertion.exists(…)``); anything else — the whole map, a computed key, the word inside a string
    literal — answers None and every claim is converted."""
    names: set[str] = set()
    for source in sources:
        if "//" in source or "\\" in source or "`" in source:
            return None  # comments, escapes, quoted field names: not worth a tokenizer — use every claim
        for m in _VARIABLE.finditer(source):
            member = _MEMBER.match(source, m.end())
            if member is None:
                return None
            names.add(next(g for g in member.groups() if g is not None))
    return frozenset(names)


def activation(**variables: Any) -> Any:
    """The variables of several evaluations, converted to CEL values once (a plain dict passed to each
    evaluation is converted again every time: for a 30-claim token, four times the cost of three evaluations)."""
    context = cel.Context()
    for name, value in variables.items():
        context.add_variable(name, value)
    return context


def add_variables(context: Any, **variables: Any) -> None:
    for name, value in variables.items():
        context.add_variable(name, value)


def compile_expression(source: Any) -> Expression:
    if not isinstance(source, str) or not source.strip():
        raise CelError("an expression must be a non-empty string")
    if len(source) > MAX_EXPRESSION_CHARS:
        raise CelError(f"an expression is at most {MAX_EXPRESSION_CHARS} characters")
    try:
        program = cel.compile(source)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise CelError(f"{source[:120]!r} does not compile: {first[:200]}") from None
    return Expression(source, program)


def _describe(e: BaseException) -> str:
    args = getattr(e, "args", ())
    return str(args[0])[:200] if args else e.__class__.__name__


def _to_plain(value: Any, depth: int) -> Any:
    if depth > 16:
        raise CelError("a mapped value is nested too deeply")
    if value is None or isinstance(value, bool | str | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_to_plain(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_plain(v, depth + 1) for k, v in value.items()}
    raise CelError(f"a mapped value must be JSON-shaped, not {type(value).__name__}")
