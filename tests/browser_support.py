"""Browser test support: Debian's Chromium driven by Playwright, with a WebAuthn virtual authenticator
attached through the DevTools protocol (CDP ``WebAuthn`` domain), one browser context per person.

A ``Device`` is one person's browser profile (cookies, storage) and the platform authenticator
built into it. Network stays on loopback: the browser resolves ``localhost`` only and Playwright
never downloads a browser of its own (``executable_path`` is the system Chromium).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Response, sync_playwright

__all__ = ["ARTIFACTS", "CHROMIUM", "TIMEOUT_MS", "Device", "chromium", "csp_violations", "skip_without_chromium"]

CHROMIUM = pathlib.Path("/usr/bin/chromium")
ARTIFACTS = pathlib.Path(
    os.environ.get("TESSERA_ARTIFACTS", pathlib.Path(__file__).resolve().parent.parent / "test-artifacts")
)
#: Bounded waits: every Playwright action and navigation gives up after this many milliseconds.
TIMEOUT_MS = 10_000

skip_without_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)"
)


def _launch_args() -> list[str]:
    args = [
        # Only localhost resolves: nothing the browser does leaves the machine.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    if os.geteuid() == 0:  # Chromium refuses to start its sandbox as root (containers, CI)
        args.append("--no-sandbox")
    return args


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One headless Chromium per test module. Not per session: Playwright's sync API keeps an event loop
    running in the main thread while it is started, and later tests on the same worker that call
    ``asyncio.run`` would fail."""
    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=_launch_args())
        try:
            yield browser
        finally:
            browser.close()
    finally:
        pw.stop()


def csp_violations(messages: list[str]) -> list[str]:
    """The console messages Chromium writes when the Content Security Policy blocks something."""
    return [m for m in messages if "Content Security Policy" in m or "Refused to" in m]


class Device:
    """One person's browser: a context of its own, one page, and a virtual platform authenticator
    (CTAP2, internal transport, resident keys, user verification that always succeeds).

    ``backup_eligible`` makes it a synced passkey provider (BE and BS flags set): its passkeys reach
    AAL2, not AAL3 (``tessera.approvals.assurance``).
    """

    def __init__(self, browser: Browser, name: str, *, backup_eligible: bool = True) -> None:
        self.name = name
        self.context = browser.new_context(viewport={"width": 900, "height": 900})
        self.context.set_default_timeout(TIMEOUT_MS)
        self.context.set_default_navigation_timeout(TIMEOUT_MS)
        self.page: Page = self.context.new_page()
        #: every console message of type error or warning, and uncaught page errors, as text
        self.console: list[str] = []
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.cdp = self.context.new_cdp_session(self.page)
        self.cdp.send("WebAuthn.enable")
        options = {
            "protocol": "ctap2",
            "transport": "internal",
            "hasResidentKey": True,
            "hasUserVerification": True,
            "isUserVerified": True,
            "automaticPresenceSimulation": True,
            "defaultBackupEligibility": backup_eligible,
            "defaultBackupState": backup_eligible,
        }
        self.authenticator_id: str = self.cdp.send("WebAuthn.addVirtualAuthenticator", {"options": options})[
            "authenticatorId"
        ]

    def _on_console(self, msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            self.console.append(f"{msg.type}: {msg.text}")

    def open(self, url: str) -> Response:
        response = self.page.goto(url, wait_until="load")
        assert response is not None, f"no response for {url}"
        return response

    def credentials(self) -> list[dict[str, Any]]:
        """The credentials the virtual authenticator holds (CDP ``WebAuthn.getCredentials``)."""
        return list(self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": self.authenticator_id})["credentials"])

    def screenshot(self, name: str) -> pathlib.Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()
