"""OpenID CIBA: backchannel authentication requests (auth_req_id stored hashed)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "ciba_requests",
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


def downgrade() -> None:
    op.drop_table("ciba_requests")
