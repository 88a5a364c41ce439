"""token lineage: the token a token-exchange result was derived from, so revocation reaches it

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.add_column("issued_tokens", sa.Column("parent_jti", sa.String(64)))
    op.create_index("ix_issued_tokens_parent_jti", "issued_tokens", ["parent_jti"])


def downgrade() -> None:
    op.drop_index("ix_issued_tokens_parent_jti", "issued_tokens")
    op.drop_column("issued_tokens", "parent_jti")
