"""initial schema: clients, signing keys, issued tokens, assertion jtis, audit chain

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "clients",
        sa.Column("client_id", sa.String(256), primary_key=True),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("secret_hash", sa.String(128)),
        sa.Column("registration_token_hash", sa.String(128)),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "signing_keys",
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
    op.create_table(
        "issued_tokens",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(256), nullable=False),
        sa.Column("sub", sa.String(256), nullable=False),
        sa.Column("aud", sa.JSON, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("kid", sa.String(128), nullable=False),
        sa.Column("grant_type", sa.String(128), nullable=False),
        sa.Column("iat", sa.BigInteger, nullable=False),
        sa.Column("exp", sa.BigInteger, nullable=False),
        sa.Column("revoked_at", sa.BigInteger),
    )
    op.create_index("ix_issued_tokens_client_id", "issued_tokens", ["client_id"])
    op.create_index("ix_issued_tokens_sub", "issued_tokens", ["sub"])
    op.create_index("ix_issued_tokens_exp", "issued_tokens", ["exp"])
    op.create_table(
        "assertion_jtis",
        sa.Column("client_id", sa.String(256), primary_key=True),
        sa.Column("jti", sa.String(256), primary_key=True),
        sa.Column("exp", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_assertion_jtis_exp", "assertion_jtis", ["exp"])
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(256)),
        sa.Column("subject", sa.String(256)),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("prev", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_log_event", "audit_log", ["event"])
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.execute(sa.text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '" + "0" * 64 + "')"))


def downgrade() -> None:
    for t in ("audit_head", "audit_log", "assertion_jtis", "issued_tokens", "signing_keys", "clients"):
        op.drop_table(t)
