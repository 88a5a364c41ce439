"""authorization code grant: sign-in sessions, consent grants, codes and rotating refresh tokens

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    op.create_table(
        "oauth_sessions",
        sa.Column("session_hash", sa.String(64), primary_key=True),
        sa.Column("person_id", sa.String(64)),
        sa.Column("challenge", sa.String(64)),
        sa.Column("acr", sa.String(64)),
        sa.Column("auth_time", sa.BigInteger),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
    )
    op.create_table(
        "oauth_grants",
        sa.Column("grant_id", sa.String(64), primary_key=True),
        sa.Column("person_id", sa.String(64), nullable=False, index=True),
        sa.Column("client_id", sa.String(256), nullable=False, index=True),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("resource", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("last_used_at", sa.BigInteger),
        sa.Column("revoked_at", sa.BigInteger),
    )
    op.create_table(
        "oauth_codes",
        sa.Column("code_hash", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(256), nullable=False),
        sa.Column("person_id", sa.String(64), nullable=False),
        sa.Column("grant_id", sa.String(64), nullable=False, index=True),
        sa.Column("redirect_uri", sa.Text, nullable=False),
        sa.Column("redirect_uri_sent", sa.Boolean, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("resource", sa.JSON, nullable=False),
        sa.Column("code_challenge", sa.String(64), nullable=False),
        sa.Column("acr", sa.String(64), nullable=False),
        sa.Column("auth_time", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
        sa.Column("used_at", sa.BigInteger),
        sa.Column("family_id", sa.String(64)),
        sa.Column("issued", sa.JSON),
    )
    op.create_table(
        "oauth_refresh_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("family_id", sa.String(64), nullable=False, index=True),
        sa.Column("grant_id", sa.String(64), nullable=False, index=True),
        sa.Column("client_id", sa.String(256), nullable=False),
        sa.Column("person_id", sa.String(64), nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("resource", sa.JSON, nullable=False),
        sa.Column("acr", sa.String(64), nullable=False),
        sa.Column("auth_time", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
        sa.Column("family_expires_at", sa.BigInteger, nullable=False),
        sa.Column("used_at", sa.BigInteger),
        sa.Column("revoked_at", sa.BigInteger),
        sa.Column("access_jti", sa.String(64)),
    )


def downgrade() -> None:
    for name in ("oauth_refresh_tokens", "oauth_codes", "oauth_grants", "oauth_sessions"):
        op.drop_table(name)
