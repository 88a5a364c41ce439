"""human approvals: people, authenticators, enrolments, approval requests, links, votes, the outbox, rate limits

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "people",
        sa.Column("person_id", sa.String(64), primary_key=True),
        sa.Column("profile", sa.JSON, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("failures", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("locked_at", sa.BigInteger),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "authenticators",
        sa.Column("authenticator_id", sa.String(128), primary_key=True),
        sa.Column("person_id", sa.String(64), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("label", sa.String(128), nullable=False),
        sa.Column("public", sa.JSON, nullable=False),
        sa.Column("sealed_secret", sa.LargeBinary),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("last_used_at", sa.BigInteger),
    )
    op.create_table(
        "enrolments",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("person_id", sa.String(64), nullable=False, index=True),
        sa.Column("state", sa.JSON, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("used_at", sa.BigInteger),
    )
    op.create_table(
        "approval_requests",
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
    op.create_table(
        "approval_links",
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
    op.create_table(
        "approval_votes",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("person_id", sa.String(64), primary_key=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("evidence", sa.JSON, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "outbox",
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
    )
    op.create_index("ix_outbox_due", "outbox", ["status", "next_attempt_at"])
    op.create_table(
        "rate_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("rate_key", sa.String(256), nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_rate_events_key_ts", "rate_events", ["rate_key", "ts"])


def downgrade() -> None:
    op.drop_index("ix_rate_events_key_ts", "rate_events")
    op.drop_table("rate_events")
    op.drop_index("ix_outbox_due", "outbox")
    for table in (
        "outbox",
        "approval_votes",
        "approval_links",
        "approval_requests",
        "enrolments",
        "authenticators",
        "people",
    ):
        op.drop_table(table)
