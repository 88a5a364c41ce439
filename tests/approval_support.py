"""Helpers for the approval tests: a live server with the file channel, reading the messages it
sends, and driving the approval and enrolment pages over plain HTTP (the browser tests drive the
same pages in Chromium)."""

from __future__ import annotations

import html
import json
import pathlib
import re
import time
from typing import Any

import httpx

from support import LiveServer

__all__ = ["Mailbox", "PageClient", "approval_server", "form_fields"]


def approval_server(data_dir: pathlib.Path, **env: str) -> LiveServer:
    outbox = data_dir.parent / f"{data_dir.name}-messages.jsonl"
    extra = {
        "TESSERA_OUTBOX_FILE": str(outbox),
        "TESSERA_OUTBOX_POLL_INTERVAL": "0.2",
        "TESSERA_MESSAGES_PER_PERSON_PER_MINUTE": "50",
        "TESSERA_MESSAGES_PER_REQUESTER_PER_MINUTE": "200",
    }
    extra.update(env)
    srv = LiveServer(data_dir, extra_env=extra)
    srv.outbox_file = outbox  # type: ignore[attr-defined]
    return srv


class Mailbox:
    """The file channel's messages, as the person would receive them."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def all(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def wait(self, kind: str, person: str, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.all() if m["kind"] == kind and m["data"].get("person_id") == person]
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(f"no {kind} message #{count} for {person} within {timeout}s: {self.all()[-3:]}")

    def link(self, kind: str, person: str, count: int = 1) -> str:
        return str(self.wait(kind, person, count)[count - 1]["data"]["link"])


def form_fields(page: str, form_id: str) -> dict[str, str]:
    m = re.search(rf'<form[^>]*id="{form_id}"[^>]*>(.*?)</form>', page, re.S)
    assert m, f"no form {form_id} on the page"
    out = {}
    for inp in re.finditer(r"<input([^>]*)>", m.group(1)):
        attrs = dict(re.findall(r'(\w[\w-]*)="([^"]*)"', inp.group(1)))
        if "name" in attrs and "disabled" not in inp.group(1):
            out[attrs["name"]] = html.unescape(attrs.get("value", ""))
    return out


def data_attr(page: str, form_id: str, name: str) -> str:
    m = re.search(rf'<form[^>]*id="{form_id}"[^>]*data-{name}="([^"]*)"', page) or re.search(
        rf'<form[^>]*data-{name}="([^"]*)"[^>]*id="{form_id}"', page
    )
    assert m, f"no data-{name} on form {form_id}"
    return html.unescape(m.group(1))


class PageClient:
    """One browser-like session (cookies kept) on the approval and enrolment pages."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.http = httpx.Client(timeout=15, follow_redirects=False)

    def get(self, url: str) -> httpx.Response:
        return self.http.get(url)

    def post_form(self, url: str, fields: dict[str, str]) -> httpx.Response:
        return self.http.post(url, data=fields, headers={"Origin": self.origin})

    def options(self, page: str, form_id: str, body: dict[str, Any]) -> httpx.Response:
        url = data_attr(page, form_id, "options")
        csrf = data_attr(page, form_id, "csrf")
        return self.http.post(
            self.origin + url if url.startswith("/") else url,
            json=body,
            headers={"X-CSRF-Token": csrf, "Origin": self.origin},
        )

    # -- enrolment ---------------------------------------------------------------------------------
    def enrol_totp(self, link: str) -> bytes:
        import base64

        page = self.get(link).text
        r = self.post_form(link, form_fields(page, "totp-start"))
        assert r.status_code == 200, r.text
        secret_b32 = re.search(r'id="totp-secret"[^>]*>([A-Z2-7]+)<', r.text)
        assert secret_b32, r.text
        secret = base64.b32decode(secret_b32.group(1) + "=" * (-len(secret_b32.group(1)) % 8))
        from tessera.approvals.totp import code_at

        fields = form_fields(r.text, "totp-form")
        fields["code"] = code_at(secret, time.time())
        done = self.post_form(link, fields)
        assert done.status_code == 200 and 'id="enrolled"' in done.text, done.text
        return secret

    def enrol_passkey(self, link: str, authenticator: Any, **flags: Any) -> None:
        page = self.get(link).text
        opts = self.options(page, "passkey-form", {})
        assert opts.status_code == 200, opts.text
        cred = authenticator.create(opts.json(), self.origin, **flags)
        fields = form_fields(page, "passkey-form")
        fields["credential"] = json.dumps(cred)
        done = self.post_form(link, fields)
        assert done.status_code == 200 and 'id="enrolled"' in done.text, done.text

    # -- approval ----------------------------------------------------------------------------------
    def decide_with_code(self, link: str, decision: str, code: str) -> httpx.Response:
        page = self.get(link)
        assert page.status_code == 200, page.text
        fields = form_fields(page.text, "decide")
        fields.update(code=code, decision=decision)
        return self.post_form(link, fields)

    def decide_with_passkey(self, link: str, decision: str, authenticator: Any, **flags: Any) -> httpx.Response:
        page = self.get(link)
        assert page.status_code == 200, page.text
        opts = self.options(page.text, "decide", {"decision": decision})
        assert opts.status_code == 200, opts.text
        fields = form_fields(page.text, "decide")
        fields.update(credential=json.dumps(authenticator.get(opts.json(), self.origin, **flags)), decision=decision)
        return self.post_form(link, fields)
