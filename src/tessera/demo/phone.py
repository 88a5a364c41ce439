"""The approver's "phone": a Standard Webhooks receiver on loopback, an authenticator app, a browser.

- **Receiver.** Tessera's webhook channel posts each notice here. Every delivery is verified as the
  Standard Webhooks specification asks a receiver to (signature by the shared ``whsec_`` key over
  ``id.timestamp.body``, timestamp within 5 minutes; ``tessera.channels.webhook.verify``), answered
  401 if it does not verify, and kept once per ``webhook-id`` (deliveries are at least once).
- **Authenticator app.** The TOTP seed (RFC 6238) the person enrols, held by pyotp — an independent
  implementation of the algorithm Tessera checks.
- **Browser.** The enrolment and approval pages are plain HTML forms: a cookie-keeping HTTP session
  that reads the forms and posts them back with their CSRF fields and the page's ``Origin``, as a
  browser does (no JavaScript is needed on the TOTP path).
"""

from __future__ import annotations

import base64
import html.parser
import json
import threading
import time
from typing import Any

import httpx
import pyotp

from tessera.channels.webhook import WebhookVerificationError, verify
from tessera.demo.loopback import LoopbackServer

__all__ = ["PageError", "Phone", "read_page"]


class PageError(Exception):
    """A page did not show what a person would expect (a form, a confirmation)."""


class _Page(html.parser.HTMLParser):
    """Forms (by id: the fields a browser would submit, before the button) and element texts by id."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: dict[str, dict[str, str]] = {}
        self.texts: dict[str, str] = {}
        self._form: str | None = None
        self._open: list[tuple[str, str]] = []  # (tag, id) of elements whose text is being collected

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._form = a.get("id", "")
            self.forms[self._form] = {}
        elif tag == "input" and self._form is not None and "name" in a and "disabled" not in a:
            self.forms[self._form][a["name"]] = a.get("value", "")
        if "id" in a and tag not in ("input", "form"):
            self._open.append((tag, a["id"]))
            self.texts.setdefault(a["id"], "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        if self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for _, element_id in self._open:
            self.texts[element_id] += data


def read_page(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def _transaction(page: _Page) -> dict[str, str]:
    return {k[3:]: " ".join(v.split()) for k, v in page.texts.items() if k.startswith("tx-")}


class Phone(LoopbackServer):
    name = "phone"

    def __init__(self, webhook_secret: str, origin: str) -> None:
        super().__init__()
        self.url = self.base_url + "/tessera"
        self._secret = webhook_secret
        self.origin = origin
        self.inbox: list[dict[str, Any]] = []
        self.rejected = 0
        self._seen: set[str] = set()
        self._arrived = threading.Condition()
        self.totp: pyotp.TOTP | None = None
        self.last_step = -1  # the last TOTP time step used: RFC 6238 §5.2, a code is accepted once
        self.browser = httpx.Client(timeout=15, follow_redirects=False)

    # -- the webhook receiver ----------------------------------------------------------------------
    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        if method != "POST" or path != "/tessera":
            return 404, {}, b""
        try:
            message_id = verify(headers, body, [self._secret], now=time.time())
        except WebhookVerificationError:
            with self._arrived:
                self.rejected += 1
            return 401, {}, b""
        with self._arrived:
            if message_id not in self._seen:
                self._seen.add(message_id)
                self.inbox.append(json.loads(body))
                self._arrived.notify_all()
        return 204, {}, b""

    def count(self, kind: str) -> int:
        with self._arrived:
            return sum(1 for m in self.inbox if m.get("type") == kind)

    def wait_for(self, kind: str, *, after: int = 0, timeout: float = 20.0) -> dict[str, Any]:
        """The first ``kind`` message beyond the ``after`` already seen (waits up to ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                found = [m for m in self.inbox if m.get("type") == kind]
                if len(found) > after:
                    return found[after]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {kind} message reached the phone within {timeout:.0f} s")
                self._arrived.wait(left)

    # -- the authenticator app ---------------------------------------------------------------------
    def code(self) -> str:
        """The code the app shows for the first time step not used yet (now, or the next one)."""
        assert self.totp is not None
        step = max(int(time.time()) // self.totp.interval, self.last_step + 1)
        return str(self.totp.at(step * self.totp.interval))

    def _use(self) -> str:
        assert self.totp is not None
        code = self.code()
        self.last_step = max(int(time.time()) // self.totp.interval, self.last_step + 1)
        return code

    # -- the browser -------------------------------------------------------------------------------
    def _post(self, url: str, fields: dict[str, str]) -> httpx.Response:
        return self.browser.post(url, data=fields, headers={"Origin": self.origin})

    def _form(self, text: str, form_id: str) -> dict[str, str]:
        page = read_page(text)
        if form_id not in page.forms:
            shown = page.texts.get("error") or page.texts.get("outcome") or "no such form"
            raise PageError(f"the page has no {form_id!r} form ({shown.strip()})")
        return page.forms[form_id]

    def enrol_totp(self, link: str) -> None:
        """Open the enrolment link, add an authenticator app, confirm it with its first code."""
        r = self.browser.get(link)
        if r.status_code != 200:
            raise PageError(f"the enrolment link answered HTTP {r.status_code}")
        r = self._post(link, self._form(r.text, "totp-start"))
        page = read_page(r.text)
        secret = page.texts.get("totp-secret", "").strip()
        if r.status_code != 200 or not secret:
            raise PageError(f"the enrolment page showed no TOTP secret (HTTP {r.status_code})")
        base64.b32decode(secret + "=" * (-len(secret) % 8))  # a base32 seed, or this raises
        self.totp = pyotp.TOTP(secret)
        fields = self._form(r.text, "totp-form")
        fields["code"] = self._use()
        done = self._post(link, fields)
        if done.status_code != 200 or "enrolled" not in read_page(done.text).texts:
            raise PageError(f"the authenticator app was not enrolled (HTTP {done.status_code})")

    def decide(self, link: str, decision: str) -> tuple[dict[str, str], str]:
        """Open the approval link, read the transaction, approve or deny with the app's code; returns what
        the page showed (``requester``, ``action``, ``message``, … from its ``tx-*`` cells) and the outcome."""
        r = self.browser.get(link)
        if r.status_code != 200:
            raise PageError(f"the approval link answered HTTP {r.status_code}")
        tx = _transaction(read_page(r.text))
        fields = self._form(r.text, "decide")
        fields.update(code=self._use(), decision=decision)
        done = self._post(link, fields)
        page = read_page(done.text)
        if done.status_code != 200 or "outcome" not in page.texts:
            why = page.texts.get("error", "").strip() or f"HTTP {done.status_code}"
            raise PageError(f"the approval page did not record the decision: {why}")
        return tx, page.texts["outcome"].strip()

    def close(self) -> None:
        super().close()
        self.browser.close()
