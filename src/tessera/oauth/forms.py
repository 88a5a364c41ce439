"""``application/x-www-form-urlencoded`` request bodies, parsed strictly.

RFC 6749 §3.2: request parameters MUST NOT be included more than once (except those a spec lets
repeat, such as RFC 8707 ``resource``). Invalid percent-encoding, invalid UTF-8 and control
characters are refused rather than replaced.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl

from tessera.oauth.errors import InvalidRequest

__all__ = ["REPEATABLE", "Form", "parse_form"]

REPEATABLE = frozenset({"resource", "audience"})
MAX_PARAMS = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


class Form(Mapping[str, str]):
    """Single-valued parameters as a mapping; repeatable ones through ``getlist``."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._single: dict[str, str] = {}
        self._multi: dict[str, list[str]] = {}
        for name, value in pairs:
            if name in REPEATABLE:
                self._multi.setdefault(name, []).append(value)
            elif name in self._single:
                raise InvalidRequest(f"parameter {name[:40]!r} is repeated (RFC 6749 §3.2)")
            else:
                self._single[name] = value
        for name, values in self._multi.items():
            self._single[name] = values[0]

    # Direct dict lookups: the Mapping mixins go through __getitem__ and a KeyError per miss.
    def __contains__(self, key: object) -> bool:
        return key in self._single

    def get(self, key: str, default: Any = None) -> Any:
        return self._single.get(key, default)

    def getlist(self, name: str) -> list[str]:
        return list(self._multi.get(name, []))

    def __getitem__(self, key: str) -> str:
        return self._single[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._single)

    def __len__(self) -> int:
        return len(self._single)


def parse_form(body: bytes) -> Form:
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidRequest("the form body must be ASCII (percent-encode other characters)") from None
    if _BAD_PERCENT.search(text):  # parse_qsl would keep a malformed escape such as "%zz" as literal text
        raise InvalidRequest("the form body has malformed percent-encoding")
    try:
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=bool(text),
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_PARAMS,
        )
    except UnicodeDecodeError:
        raise InvalidRequest("a form parameter is not valid UTF-8 after percent-decoding") from None
    except ValueError:
        raise InvalidRequest("the form body is not valid application/x-www-form-urlencoded") from None
    for name, value in pairs:
        if _CONTROL.search(name) or _CONTROL.search(value):
            raise InvalidRequest("form parameters must not contain control characters")
    # RFC 6749 §3.1: parameters sent without a value MUST be treated as if they were omitted.
    return Form([(n, v) for n, v in pairs if v != ""])
