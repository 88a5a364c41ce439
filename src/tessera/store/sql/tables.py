"""Table definitions (SQLAlchemy Core). The schema itself is owned by the Alembic migrations in
``tessera/store/migrations``; a test checks that the two agree."""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "alert_links",
    "alerts",
    "approval_links",
    "approval_requests",
    "approval_votes",
    "assertion_jtis",
    "audit_head",
    "audit_log",
    "authenticators",
    "ciba_requests",
    "client_contexts",
    "clients",
    "enrolments",
    "flow_published",
    "flow_versions",
    "issued_tokens",
    "issuer_quarantines",
    "metadata",
    "outbox",
    "people",
    "rate_events",
    "signing_keys",
    "status_lists",
    "status_segments",
    "trusted_issuers",
]

metadata = sa.MetaData()

clients = sa.Table(
    "clients",
    metadata,
    sa.Column("client_id", sa.String(256), primary_key=True),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("secret_hash", sa.String(128)),
    sa.Column("registration_token_hash", sa.String(128)),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.String(128), primary_key=True),
    sa.Column("alg", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("public_jwk", sa.JSON, nullable=False),
    sa.Column("sealed_private", sa.LargeBinary),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("activated_at", sa.BigInteger),
    sa.Column("retired_at", sa.BigInteger),
    sa.Column("remove_after", sa.BigInteger),
    sa.Column("removed_at", sa.BigInteger),
)

issued_tokens = sa.Table(
    "issued_tokens",
    metadata,
    sa.Column("jti", sa.String(64), primary_key=True),
    sa.Column("client_id", sa.String(256), nullable=False, index=True),
    sa.Column("sub", sa.String(256), nullable=False, index=True),
    sa.Column("aud", sa.JSON, nullable=False),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("kid", sa.String(128), nullable=False),
    sa.Column("grant_type", sa.String(128), nullable=False),
    sa.Column("iat", sa.BigInteger, nullable=False),
    sa.Column("exp", sa.BigInteger, nullable=False, index=True),
    sa.Column("revoked_at", sa.BigInteger),
    # draft-ietf-oauth-status-list: the token's entry (list, index) and its Status Type (0 VALID, 1 INVALID).
    sa.Column("status_list", sa.Integer),
    sa.Column("status_idx", sa.Integer),
    sa.Column("status", sa.SmallInteger, nullable=False, server_default=sa.text("0")),
    # RFC 8693: the Tessera token an exchanged token was derived from; revoking it revokes this one.
    sa.Column("parent_jti", sa.String(64), index=True),
    # An entry is never given to two tokens (§13.3: "The Status Issuer MUST prevent any unintended double
    # allocation"); the second index serves the status list build: the entries of one list that are not VALID.
    sa.Index("uq_issued_tokens_status_entry", "status_list", "status_idx", unique=True),
    sa.Index("ix_issued_tokens_status", "status_list", "status"),
)

# One row per status list. Segments of ``segment_size`` entries are claimed by server processes, one
# transaction each, in random order; a process hands out the indices of its segment in random order.
status_lists = sa.Table(
    "status_lists",
    metadata,
    sa.Column("list_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("bits", sa.Integer, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("segment_size", sa.Integer, nullable=False),
    sa.Column("segments_claimed", sa.Integer, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

status_segments = sa.Table(
    "status_segments",
    metadata,
    sa.Column("list_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("segment", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("claimed_at", sa.BigInteger, nullable=False),
    sa.Column("claimed_by", sa.String(128), nullable=False),
)

assertion_jtis = sa.Table(
    "assertion_jtis",
    metadata,
    sa.Column("client_id", sa.String(256), primary_key=True),
    sa.Column("jti", sa.String(256), primary_key=True),
    sa.Column("exp", sa.BigInteger, nullable=False, index=True),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("event", sa.String(64), nullable=False, index=True),
    sa.Column("actor", sa.String(256)),
    sa.Column("subject", sa.String(256)),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("prev", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# One row: the chain head. Writers lock it (FOR UPDATE on PostgreSQL; SQLite's write lock) so that
# records from several processes form one chain.
audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# Identity federation: one trust configuration per external issuer (``tessera.federation.config``),
# declared in the config file (source "config") or through the admin API / CLI (source "admin").
trusted_issuers = sa.Table(
    "trusted_issuers",
    metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

# Human approvals (``tessera.approvals``). People are the approvers; their authenticators are passkeys
# (public key and counters; nothing secret) and TOTP seeds (sealed under the KEK). Enrolment and approval
# links are stored as SHA-256 hashes of the one-time token, never the token.
people = sa.Table(
    "people",
    metadata,
    sa.Column("person_id", sa.String(64), primary_key=True),
    sa.Column("profile", sa.JSON, nullable=False),
    sa.Column("source", sa.String(32), nullable=False),
    # consecutive failed proofs across links and sessions; reset by a success, locked at the limit
    sa.Column("failures", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("locked_at", sa.BigInteger),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

authenticators = sa.Table(
    "authenticators",
    metadata,
    sa.Column("authenticator_id", sa.String(128), primary_key=True),
    sa.Column("person_id", sa.String(64), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("label", sa.String(128), nullable=False),
    sa.Column("public", sa.JSON, nullable=False),
    sa.Column("sealed_secret", sa.LargeBinary),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("last_used_at", sa.BigInteger),
)

enrolments = sa.Table(
    "enrolments",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("person_id", sa.String(64), nullable=False, index=True),
    sa.Column("state", sa.JSON, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("used_at", sa.BigInteger),
)

approval_requests = sa.Table(
    "approval_requests",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("tx", sa.JSON, nullable=False),
    sa.Column("tx_hash", sa.String(64), nullable=False),
    sa.Column("binding_message", sa.String(128), nullable=False),
    sa.Column("requester", sa.String(512), nullable=False, index=True),
    sa.Column("policy", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("origin", sa.String(256)),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("decided_at", sa.BigInteger),
)

approval_links = sa.Table(
    "approval_links",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    sa.Column("person_id", sa.String(64), nullable=False),
    sa.Column("challenge", sa.JSON),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("viewed_at", sa.BigInteger),
    sa.Column("used_at", sa.BigInteger),
    sa.Column("superseded_at", sa.BigInteger),
)

approval_votes = sa.Table(
    "approval_votes",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("person_id", sa.String(64), primary_key=True),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("evidence", sa.JSON, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

# The durable outbox: every message is a row before any delivery is tried. The body (it may hold a
# one-time link) is sealed under the KEK with the message id as AAD; the other columns are not secret.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("message_id", sa.String(64), primary_key=True),
    sa.Column("channel", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("recipient", sa.String(512), nullable=False),
    sa.Column("ref", sa.String(128), index=True),
    sa.Column("sealed_body", sa.LargeBinary, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("next_attempt_at", sa.BigInteger, nullable=False),
    sa.Column("locked_by", sa.String(128)),
    sa.Column("locked_until", sa.BigInteger),
    sa.Column("last_error", sa.String(512)),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("delivered_at", sa.BigInteger),
    sa.Index("ix_outbox_due", "status", "next_attempt_at"),
)

# Sliding-window rate limits (messages per person / per requester per minute): one row per counted event.
rate_events = sa.Table(
    "rate_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("rate_key", sa.String(256), nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Index("ix_rate_events_key_ts", "rate_key", "ts"),
)

# OpenID CIBA: one row per backchannel authentication request. The auth_req_id is kept only as its
# SHA-256; ``grant`` holds what a redemption issues (scope, audience, authorization details, assurance);
# ``issued`` the jtis of what was issued (revoked if the auth_req_id is replayed). Expired rows stay
# until well after expiry so that a late poll gets expired_token rather than invalid_grant.
ciba_requests = sa.Table(
    "ciba_requests",
    metadata,
    sa.Column("auth_req_hash", sa.String(64), primary_key=True),
    sa.Column("client_id", sa.String(256), nullable=False, index=True),
    sa.Column("person_id", sa.String(64), nullable=False, index=True),
    sa.Column("approval_id", sa.String(64), nullable=False, index=True),
    sa.Column("grant", sa.JSON, nullable=False),
    sa.Column("mode", sa.String(8), nullable=False),
    sa.Column("interval", sa.Integer, nullable=False),
    sa.Column("last_poll_at", sa.BigInteger),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("redeemed_at", sa.BigInteger),
    sa.Column("issued", sa.JSON),
)

# Flows (``tessera.workflows``): every version ever stored, keyed by its content address (SHA-256 of
# the RFC 8785 form), immutable; ``flow_published`` names the one version of each flow in force.
flow_versions = sa.Table(
    "flow_versions",
    metadata,
    sa.Column("version", sa.String(80), primary_key=True),
    sa.Column("flow_id", sa.String(64), nullable=False, index=True),
    sa.Column("trigger", sa.String(32), nullable=False),
    sa.Column("document", sa.JSON, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("tag", sa.String(128)),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.String(256), nullable=False),
)

flow_published = sa.Table(
    "flow_published",
    metadata,
    sa.Column("flow_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(80), nullable=False),
    sa.Column("published_at", sa.BigInteger, nullable=False),
    sa.Column("published_by", sa.String(256), nullable=False),
)

# Context alerts (``tessera.alerts``): the request contexts seen per client (source network, federated
# attributes, hour), alerts on a context never seen before, and the owners' response links (hashed).
client_contexts = sa.Table(
    "client_contexts",
    metadata,
    sa.Column("client_id", sa.String(256), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("value", sa.String(128), primary_key=True),
    sa.Column("first_seen", sa.BigInteger, nullable=False),
    sa.Column("last_seen", sa.BigInteger, nullable=False),
)

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("alert_id", sa.String(64), primary_key=True),
    sa.Column("client_id", sa.String(256), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("kinds", sa.JSON, nullable=False),
    sa.Column("context", sa.JSON, nullable=False),
    sa.Column("responses", sa.JSON, nullable=False),
    sa.Column("origin", sa.String(256), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("history", sa.JSON, nullable=False),
)

alert_links = sa.Table(
    "alert_links",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("alert_id", sa.String(64), nullable=False, index=True),
    sa.Column("person_id", sa.String(128), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
)

# An incident quarantine of a trusted issuer: its tokens are refused until an approval lifts it.
issuer_quarantines = sa.Table(
    "issuer_quarantines",
    metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("since", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("lift_request", sa.String(64)),
)
