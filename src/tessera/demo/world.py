"""The demo's world: Tessera on the embedded default and everything around it, started and stopped together.

- Tessera: ``tessera serve`` on a free loopback port, SQLite in a fresh temporary data directory (keys
  and the key-encryption key created on first start), the demo's flows published before it starts;
- the CI platform's issuer (``ci_issuer``), trusted with a condition pinning the demo organisation;
- Sam, the approver, declared in the configuration, reached on the phone (``phone``) by a signed
  webhook, who enrols an authenticator app through the enrolment link the phone receives.

``World.close()`` stops every process and port it started and removes the temporary directory; the
runner calls it on success, failure, ^C and SIGTERM alike.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from contextlib import ExitStack
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx

from tessera.channels.webhook import generate_key
from tessera.demo.ci_issuer import CiIssuer
from tessera.demo.phone import Phone
from tessera.demo.server import TesseraServer

__all__ = ["APPROVER", "CI_AUDIENCE", "DEMO_ORG_ID", "DEPLOY_API", "PAYMENTS_API", "World", "flows_dir"]

APPROVER = {
    "person_id": "sam",
    "name": "Sam Rivera",
    "email": "sam@demo.example",
    "groups": ["client-owners", "payments-approvers"],
    "channels": ["webhook:phone"],
}
CI_AUDIENCE = "tessera-demo"  # the aud the CI job asks its platform for
DEMO_ORG_ID = "4242"  # the organisation the trust condition pins
DEPLOY_API = "https://deploy.demo.example"
PAYMENTS_API = "https://payments.demo.example"


def flows_dir() -> Path:
    """The flows the demo publishes (copies of ``examples/flows`` plus the demo's ``agent-payments``)."""
    return Path(str(files("tessera.demo") / "flows"))


class World:
    def __init__(self, *, keep: bool = False) -> None:
        self.keep = keep
        self._stack = ExitStack()
        self.data_dir = Path(tempfile.mkdtemp(prefix="tessera-demo-"))
        self.admin_token = secrets.token_urlsafe(24)
        self.registration_token = secrets.token_urlsafe(24)
        self.ci = CiIssuer()
        self._stack.callback(self.ci.close)
        self.webhook_secret, _ = generate_key("symmetric")
        self.server = TesseraServer(self.data_dir, self._settings())
        self._stack.callback(self.server.stop)
        self.phone = Phone(self.webhook_secret, origin=self.server.issuer)
        self._stack.callback(self.phone.close)
        self.admin = httpx.Client(timeout=15, headers={"Authorization": f"Bearer {self.admin_token}"})
        self._stack.callback(self.admin.close)
        # The phone's URL is known only once it is bound: the webhook channel is configured after it.
        self.server.env["TESSERA_WEBHOOKS"] = json.dumps(
            [{"name": "phone", "url": self.phone.url, "keys": [self.webhook_secret]}]
        )

    def _settings(self) -> dict[str, Any]:
        ci_trust = {
            "name": "ci",
            "issuer": self.ci.issuer,
            "audiences": [CI_AUDIENCE],
            "algorithms": ["ES256"],
            "jti_replay": True,
            "max_token_lifetime": 900,
            "condition": f"assertion.repository_owner_id == '{DEMO_ORG_ID}'",
            "attributes": {"repository": "assertion.repository", "ref": "assertion.ref"},
            "bindings": [{"audiences": [DEPLOY_API], "scopes": ["deploy", "read"], "max_lifetime": 600}],
        }
        return {
            "admin_token": self.admin_token,
            "registration_token": self.registration_token,
            "dev_mode": "true",  # http:// on loopback for the webhook and the CI issuer; never in production
            "trusted_issuers": json.dumps([ci_trust]),
            "people": json.dumps([APPROVER]),
            "ciba_interval": 1,
            "status_list_ttl": 5,  # relying parties refetch status lists every 5 s (the SDK's floor)
            "outbox_poll_interval": 0.2,
            "key_refresh_interval": 1,
        }

    @property
    def issuer(self) -> str:
        return self.server.issuer

    def start(self) -> list[str]:
        """Start the fakes, publish the flows, start Tessera; returns the ``flows publish`` lines."""
        self.ci.start()
        self.phone.start()
        published = self.server.cli("flows", "publish", str(flows_dir()), "--yes").stdout.strip().splitlines()
        self.server.start()
        self.phone.origin = self.server.issuer  # the port may have changed if the first was taken
        return published

    def admin_call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return self.admin.request(method, self.issuer + "/admin" + path, json=body)

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            if not self.keep:
                shutil.rmtree(self.data_dir, ignore_errors=True)
