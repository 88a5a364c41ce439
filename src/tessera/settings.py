"""The one place configuration is read.

Precedence, lowest first: built-in defaults, the TOML file named by ``TESSERA_CONFIG`` (top-level
keys are the setting names below), then ``TESSERA_<NAME>`` environment variables. Every setting is
documented in ``docs/configuration.md``; ``tessera config`` prints the effective values (secrets
masked). Nothing else in the code base reads the environment.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["ENV_PREFIX", "Settings", "SettingsError", "is_loopback_host", "load_settings"]

ENV_PREFIX = "TESSERA_"
log = logging.getLogger("tessera.settings")


class SettingsError(Exception):
    """Configuration that cannot be used; the message names the setting and the reason."""


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseModel):
    """Every setting Tessera reads. Field docs are the configuration reference."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: Path | None = Field(None, description="Path of the TOML configuration file.")
    issuer: str = Field(
        "",
        description="Public issuer identifier (URL). Default: http://HOST:PORT. "
        "http:// is accepted only for loopback hosts, with a warning.",
    )
    data_dir: Path = Field(
        Path("tessera-data"), description="Directory for the SQLite database and key material created on first start."
    )
    database_url: str = Field(
        "",
        repr=False,
        description="sqlite:///PATH or postgresql://USER:PASS@HOST/DB. Default: the SQLite file DATA_DIR/tessera.db.",
    )
    host: str = Field("127.0.0.1", description="Address `tessera serve` listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port `tessera serve` listens on.")
    workers: int = Field(1, ge=1, le=64, description="Server processes started by `tessera serve`.")
    kek: str | None = Field(
        None,
        description="Key-encryption key: 32 random bytes, base64url. Encrypts "
        "private signing keys at rest. Without it, a KEK file is created in DATA_DIR "
        "on first start (with a warning).",
        repr=False,
    )
    admin_token: str | None = Field(
        None, description="Bearer token for the admin API. The admin API is disabled while this is unset.", repr=False
    )
    registration_token: str | None = Field(
        None,
        description="RFC 7591 initial access token. Dynamic client registration is disabled while this is unset.",
        repr=False,
    )
    signing_algs: list[str] = Field(
        ["ES256"],
        description="Algorithms with a signing key lifecycle each; the first "
        "signs access tokens. Any of ES256, RS256, EdDSA.",
    )
    access_token_lifetime: int = Field(
        900,
        ge=10,
        le=86400,
        description="Default and maximum access token lifetime in seconds; a client's own cap may only lower it.",
    )
    default_audience: str | None = Field(
        None,
        description="Audience of tokens requested without `resource` by "
        "a client that has no default_resource. Default: the issuer.",
    )
    assertion_max_lifetime: int = Field(
        3600,
        ge=10,
        le=3600,
        description="Longest accepted lifetime (exp - now) of a private_key_jwt client assertion, in seconds. "
        "3600 matches common client libraries (Authlib) and Okta's limit; each assertion is single use anyway.",
    )
    leeway: int = Field(30, ge=0, le=300, description="Clock skew tolerated on every time check, in seconds.")
    dpop_max_age: int = Field(
        300,
        ge=10,
        le=3600,
        description="Oldest accepted DPoP proof (now - iat) at the token endpoint, in seconds (RFC 9449 §11.1). "
        "Each proof's jti is remembered this long (plus leeway) to refuse replays.",
    )
    dpop_nonce: bool = Field(
        False,
        description="Require server-provided nonces in DPoP proofs (RFC 9449 §8): a proof without a current nonce "
        "gets use_dpop_nonce and a DPoP-Nonce header. Nonces change every minute; the previous one stays valid.",
    )
    key_refresh_interval: float = Field(
        5.0,
        gt=0,
        le=300,
        description="How often a server process reloads signing keys from the database (rotation by another process).",
    )
    jwks_max_age: int = Field(300, ge=0, le=86400, description="Cache-Control max-age of the JWKS response.")
    client_cache_ttl: float = Field(
        1.0,
        ge=0,
        le=60,
        description="How long a process caches a client's "
        "registration; a change made by another process is seen within this time.",
    )
    status_lists: bool = Field(
        True,
        description="Give new access tokens a `status` claim (draft-ietf-oauth-status-list) pointing into the "
        "signed status lists served at /oauth/status/{list_id}, so that relying parties see revocations without "
        "calling home. Lists already in use are served either way.",
    )
    status_list_min_lifetime: int = Field(
        0,
        ge=0,
        le=86400,
        description="Only tokens living at least this many seconds get a status list entry; relying parties that "
        "verify locally see the revocation of a shorter-lived token only when it expires. 0: every token.",
    )
    status_list_ttl: int = Field(
        60,
        ge=1,
        le=86400,
        description="Seconds a relying party may cache a status list (its `ttl` claim and Cache-Control max-age); "
        "the list token expires 10 ttl after it was signed.",
    )
    status_list_size: int = Field(
        131072,
        ge=1024,
        le=1 << 24,
        description="Entries per status list (2 bits each), a multiple of 1024. Indices are random and never reused; "
        "a new list starts when one is full.",
    )
    max_body_bytes: int = Field(65536, ge=1024, le=16 * 1024 * 1024, description="Largest request body accepted.")
    log_level: str = Field("info", description="debug, info, warning or error.")
    log_format: str = Field(
        "text",
        description="text, or json: one JSON object per line with ts, level, logger, msg and the request id "
        "(docs/observability.md). Both redact one-time link tokens and anything shaped like a JWT.",
    )
    metrics: str = Field(
        "loopback",
        description="Who may read GET /metrics (Prometheus): loopback (clients connecting from a loopback "
        "address only), token (requests with Authorization: Bearer METRICS_TOKEN), or disabled (404).",
    )
    metrics_token: str | None = Field(
        None, description="Bearer token for GET /metrics when metrics = token. Secret.", repr=False
    )
    readyz_timeout: float = Field(
        2.0, gt=0, le=60, description="Seconds /readyz waits for the database before answering 503."
    )
    readyz_key_max_age: int = Field(
        0,
        ge=0,
        description="Rotation deadline checked by /readyz: 503 when an active signing key is older than this "
        "many seconds (0: no deadline).",
    )
    otel: bool = Field(
        False,
        description="OpenTelemetry traces (spans around requests, store transactions and outbound calls). Needs "
        "the otel extra (opentelemetry-sdk); the exporter is configured by the standard OTEL_* variables.",
    )
    dev_mode: bool = Field(
        False,
        description="Development only: lets clients register http:// jwks_uri on loopback hosts and lets "
        "outbound fetches reach loopback and private addresses. Never in production.",
    )
    clients: list[dict[str, Any]] = Field(
        default_factory=list,
        repr=False,
        description="Clients declared in the config "
        "file (RFC 7591 metadata plus client_id and, for secret methods, "
        "client_secret_sha256 or client_secret). Synced on start.",
    )
    trusted_issuers: list[dict[str, Any]] = Field(
        default_factory=list,
        description="External identity issuers whose tokens Tessera exchanges (RFC 8693, RFC 7523): issuer, key "
        "source, audiences, limits, CEL subject/attributes/condition and bindings. See docs/federation.md.",
    )
    outbound_signing_alg: str = Field(
        "",
        description="Algorithm of tokens minted for outside audiences (requested_token_type jwt); one of "
        "signing_algs. Empty: RS256 if configured (what most cloud STS expect), else the first of signing_algs.",
    )
    max_act_depth: int = Field(
        4, ge=1, le=16, description="Deepest delegation chain (nested act claims, RFC 8693 §4.1) a token may carry."
    )

    # -- human approvals and the channels that reach people (docs/approvals.md, docs/channels.md) --
    people: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Approvers declared in the config file: person_id, name, email, groups, channels, owns, agent. "
        "See docs/approvals.md.",
    )
    approval_link_ttl: int = Field(
        600, ge=60, le=600, description="Lifetime of a one-time approval link, in seconds (at most 10 minutes)."
    )
    approval_max_ttl: int = Field(
        3600, ge=60, le=86400, description="Longest an approval request may stay open; unanswered means denied."
    )
    enrolment_link_ttl: int = Field(
        86400, ge=300, le=7 * 86400, description="Lifetime of a one-time authenticator enrolment link, in seconds."
    )
    approval_max_attempts: int = Field(
        5, ge=1, le=20, description="Failed proofs allowed on one approval or enrolment link before it is locked."
    )
    approval_max_failures: int = Field(
        20,
        ge=1,
        le=100,
        description="Consecutive failed proofs by one person (across links and sessions) before the person is locked "
        "until an operator unlocks them (`tessera people unlock`).",
    )
    messages_per_person_per_minute: int = Field(
        5, ge=1, le=1000, description="Approval and enrolment messages one person may be sent per minute."
    )
    messages_per_requester_per_minute: int = Field(
        20, ge=1, le=10000, description="Approval messages one requester may cause per minute (push-bombing guard)."
    )
    webauthn_rp_id: str = Field(
        "", description="WebAuthn relying party id. Default: the issuer's host name (an IP address cannot be one)."
    )
    smtp_host: str = Field("", description="SMTP server for the e-mail channel; empty disables e-mail.")
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP server port.")
    smtp_tls: str = Field("starttls", description="SMTP transport security: starttls, tls or none (loopback only).")
    smtp_from: str = Field("", description="Sender address of Tessera's e-mails.")
    smtp_username: str = Field("", description="SMTP user name, if the server requires authentication.")
    smtp_password: str = Field("", repr=False, description="SMTP password (secret).")
    webhooks: list[dict[str, Any]] = Field(
        default_factory=list,
        repr=False,
        description="Webhook channels: [{name, url, keys}] with Standard Webhooks keys (whsec_… symmetric, whsk_… "
        "Ed25519); several keys sign together during a rotation. Secret.",
    )
    outbox_file: Path | None = Field(
        None,
        description="Development channel 'file': messages (links included) are appended to this file as JSON lines.",
    )
    outbox_max_attempts: int = Field(
        8, ge=1, le=50, description="Delivery attempts of one message before it is dead-lettered."
    )
    flow_publish_approval: dict[str, Any] | None = Field(
        None,
        description="Who must approve every flow publication and rollback: {groups, approvers, quorum, assurance, "
        "ttl} as in an approval request (docs/flows.md). Unset: only a publication that would turn recorded "
        "denials into allows on a high-risk trigger needs an approval, and then this must be set.",
    )
    context_learning_period: int = Field(
        7 * 86400,
        ge=0,
        le=365 * 86400,
        description="Seconds a client is watched before an hour of day never seen for it counts as new "
        "(source.new.hour; docs/alerts.md). A new network or federated attributes count at once.",
    )
    alert_link_ttl: int = Field(
        7 * 86400, ge=600, le=30 * 86400, description="Lifetime of an alert's response links, in seconds."
    )
    alert_response_assurance: str = Field(
        "aal1",
        pattern="^aal[123]$",
        description="Assurance an owner's answer to an alert needs (acknowledge, suspend, resume, revoke).",
    )
    audit_checkpoint_interval: int = Field(
        3600,
        ge=0,
        le=7 * 86400,
        description="Seconds between signed checkpoints of the audit chain's head (0: none; "
        "`tessera audit checkpoint` makes one on demand).",
    )
    ciba_max_expiry: int = Field(
        600,
        ge=30,
        le=3600,
        description="Longest CIBA authentication request (expires_in), in seconds; "
        "a smaller requested_expiry is honoured.",
    )
    ciba_interval: int = Field(5, ge=1, le=60, description="Minimum seconds between CIBA token polls (interval).")
    ciba_default_acr: str = Field(
        "aal2", description="Assurance a CIBA request needs when it names no acr_values: aal1, aal2 or aal3."
    )
    id_token_lifetime: int = Field(300, ge=60, le=3600, description="Lifetime of ID tokens (CIBA), in seconds.")
    authorization_details_types: list[str] = Field(
        default_factory=lambda: ["payment_initiation", "account_information", "deployment", "tool_invocation"],
        description="RFC 9396 authorization_details types accepted (and advertised).",
    )
    outbox_poll_interval: float = Field(
        1.0, gt=0, le=60, description="How often each server process looks for due outbox messages, in seconds."
    )
    console_admin_group: str = Field(
        "",
        description="People in this group may sign in to the admin console (`/console`) with an enrolled passkey "
        "(empty: only the admin token signs in).",
    )
    console_session_lifetime: int = Field(
        1800, ge=60, le=43200, description="Lifetime of an admin console session, in seconds (no renewal)."
    )
    outbox_lease: float = Field(
        60.0,
        ge=2,
        le=3600,
        description="Seconds a server process holds the outbox messages it claimed; a process that dies holding "
        "them leaves them to another process once the lease runs out (a send is cut off at 0.8 of it).",
    )

    @field_validator("signing_algs")
    @classmethod
    def _algs(cls, v: list[str]) -> list[str]:
        allowed = {"ES256", "RS256", "EdDSA"}
        bad = [a for a in v if a not in allowed]
        if bad or not v or len(set(v)) != len(v):
            raise ValueError(f"must be a non-empty list of distinct values from {sorted(allowed)}, got {v}")
        return v

    @field_validator("status_list_size")
    @classmethod
    def _list_size(cls, v: int) -> int:
        if v % 1024:
            raise ValueError("must be a multiple of 1024")
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return v.lower()

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, v: str) -> str:
        if v.lower() not in {"text", "json"}:
            raise ValueError("must be text or json")
        return v.lower()

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: str) -> str:
        if v.lower() not in {"loopback", "token", "disabled"}:
            raise ValueError("must be loopback, token or disabled")
        return v.lower()

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if self.metrics == "token" and not self.metrics_token:
            raise ValueError("metrics = token needs metrics_token (TESSERA_METRICS_TOKEN)")
        if not self.issuer:
            host = self.host if ":" not in self.host else f"[{self.host}]"
            object.__setattr__(self, "issuer", f"http://{host}:{self.port}")
        try:
            _check_issuer(self.issuer)
        except ValueError as e:
            raise ValueError(f"issuer (TESSERA_ISSUER): {e}") from None
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{(self.data_dir / 'tessera.db').absolute()}")
        if not self.database_url.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
            raise ValueError("database_url (TESSERA_DATABASE_URL): must start with sqlite:/// or postgresql://")
        if not self.outbound_signing_alg:
            alg = "RS256" if "RS256" in self.signing_algs else self.signing_algs[0]
            object.__setattr__(self, "outbound_signing_alg", alg)
        elif self.outbound_signing_alg not in self.signing_algs:
            raise ValueError("outbound_signing_alg must be one of signing_algs")
        if self.ciba_default_acr not in ("aal1", "aal2", "aal3"):
            raise ValueError("ciba_default_acr (TESSERA_CIBA_DEFAULT_ACR): must be aal1, aal2 or aal3")
        if self.smtp_tls not in ("starttls", "tls", "none"):
            raise ValueError("smtp_tls (TESSERA_SMTP_TLS): must be starttls, tls or none")
        if self.smtp_host and self.smtp_tls == "none" and not is_loopback_host(self.smtp_host):
            raise ValueError("smtp_tls (TESSERA_SMTP_TLS): 'none' is accepted only for a loopback SMTP server")
        if self.smtp_host and not self.smtp_from:
            raise ValueError("smtp_from (TESSERA_SMTP_FROM): required when smtp_host is set")
        if self.people:
            from tessera.approvals.people import PersonError, parse_people

            try:
                parse_people(self.people)
            except PersonError as e:
                raise ValueError(f"people: {e}") from None
        if self.trusted_issuers:
            from tessera.federation.config import FederationConfigError

            try:
                self.federation()
            except FederationConfigError as e:
                raise ValueError(str(e)) from None
        return self

    def federation(self) -> dict[str, Any]:
        """The trusted issuers, parsed and compiled (``tessera.federation.config``)."""
        from tessera.federation.config import parse_trusted_issuers

        return parse_trusted_issuers(
            self.trusted_issuers,
            own_issuer=self.issuer,
            max_lifetime=self.access_token_lifetime,
            leeway=self.leeway,
            allow_http=self.dev_mode,
        )

    @property
    def rp_id(self) -> str:
        """The WebAuthn relying party id: configured, else the issuer's host."""
        return self.webauthn_rp_id or (urlsplit(self.issuer).hostname or "")

    @property
    def origin(self) -> str:
        """The web origin of the issuer's pages (approval and enrolment): scheme://host[:port]."""
        parts = urlsplit(self.issuer)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def audience_default(self) -> str:
        return self.default_audience or self.issuer

    def warnings(self) -> list[str]:
        """What an operator should hear about at start-up (not on every CLI command)."""
        out = []
        if self.issuer.startswith("http://"):
            out.append(f"issuer {self.issuer} uses http://: acceptable for local development only")
        if self.dev_mode:
            out.append("TESSERA_DEV_MODE is on: outbound fetches may reach loopback and private addresses")
        if not self.kek:
            out.append("TESSERA_KEK is not set: private keys are sealed with a key file kept in the data directory")
        return out

    def masked(self) -> dict[str, Any]:
        out = self.model_dump(mode="json")
        for k in ("kek", "admin_token", "registration_token", "smtp_password", "metrics_token"):
            if out.get(k):
                out[k] = "***"
        out["webhooks"] = [{**w, "keys": ["***"] * len(w.get("keys") or [])} for w in out["webhooks"]]
        secret_keys = ("client_secret", "client_secret_sha256")
        out["clients"] = [{k: "***" if k in secret_keys and v else v for k, v in c.items()} for c in out["clients"]]
        if "@" in out["database_url"]:
            scheme, rest = out["database_url"].split("://", 1)
            out["database_url"] = f"{scheme}://***@{rest.split('@', 1)[1]}"
        return out


def _check_issuer(issuer: str) -> None:
    # RFC 8414 §2: the issuer is a URL using the https scheme with no query or fragment components.
    parts = urlsplit(issuer)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"issuer must be an absolute https URL, got {issuer!r}")
    if parts.query or parts.fragment or "?" in issuer or "#" in issuer:
        raise ValueError("issuer must not have a query or fragment (RFC 8414 §2)")
    if issuer.endswith("/"):
        raise ValueError("issuer must not end with '/': it is compared as an exact string")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError("issuer must use https; http:// is allowed only for loopback hosts")


def _env_value(name: str, raw: str, annotation: Any) -> Any:
    if name in ("signing_algs",):
        raw = raw.strip()
        return json.loads(raw) if raw.startswith("[") else [p.strip() for p in raw.split(",") if p.strip()]
    if name in (
        "clients",
        "trusted_issuers",
        "people",
        "webhooks",
        "authorization_details_types",
        "flow_publish_approval",
    ):
        return json.loads(raw)
    return raw


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build the settings from the config file, the environment and explicit overrides (CLI flags)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    config_path = overrides.get("config") or env.get(ENV_PREFIX + "CONFIG")
    if config_path:
        path = Path(config_path)
        try:
            values.update(tomllib.loads(path.read_text()))
        except FileNotFoundError as e:
            raise SettingsError(f"TESSERA_CONFIG: no such file {path}") from e
        except tomllib.TOMLDecodeError as e:
            raise SettingsError(f"{path}: not valid TOML: {e}") from e
        values["config"] = path
    fields = Settings.model_fields
    for name, field in fields.items():
        key = ENV_PREFIX + name.upper()
        if key in env and name != "config":
            try:
                values[name] = _env_value(name, env[key], field.annotation)
            except json.JSONDecodeError as e:
                raise SettingsError(f"{key}: not valid JSON: {e}") from e
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            msg = str(err["msg"]).removeprefix("Value error, ")
            if not err["loc"]:  # a check across settings: the message names its setting
                lines.append(msg)
            elif err["type"] == "extra_forbidden":
                lines.append(f"{err['loc'][0]}: not a Tessera setting (config file key)")
            else:
                loc = ".".join(str(p) for p in err["loc"])
                lines.append(f"{loc} (TESSERA_{str(err['loc'][0]).upper()}): {msg}")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def reference_markdown() -> str:
    """The configuration reference (docs/configuration.md), generated from the fields above."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `tessera config --reference`; a test keeps it in step with settings.py. -->",
        "",
        "Every setting can be given as an environment variable `TESSERA_<NAME>` or as a top-level key",
        "`<name>` in the TOML file named by `TESSERA_CONFIG`; the environment wins. Lists are given in the",
        "environment as comma-separated values or a JSON array; `clients` as a JSON array.",
        "",
        "| environment variable | config key | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        default = field.default if field.default_factory is None else field.default_factory()  # type: ignore[call-arg]
        shown = "—" if default in (None, "", []) else f"`{default}`"
        if isinstance(default, list) and default:
            shown = "`" + ",".join(str(d) for d in default) + "`"
        lines.append(f"| `TESSERA_{name.upper()}` | `{name}` | {shown} | {field.description or ''} |")
    lines += [
        "",
        "## Example configuration file",
        "",
        "```toml",
        'issuer = "https://tessera.example.com"',
        'database_url = "postgresql://tessera@db.internal/tessera"',
        "access_token_lifetime = 600",
        'signing_algs = ["ES256", "RS256"]',
        "",
        "[[clients]]",
        'client_id = "deployer"',
        'token_endpoint_auth_method = "private_key_jwt"',
        'jwks_uri = "https://ci.example.com/deployer/jwks.json"',
        'scope = "deploy:staging deploy:production"',
        'allowed_resources = ["https://api.example.com"]',
        'default_resource = "https://api.example.com"',
        "access_token_lifetime = 300",
        "```",
        "",
    ]
    return "\n".join(lines)
