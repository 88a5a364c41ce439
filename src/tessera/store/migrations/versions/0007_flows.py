"""flows: immutable, content-addressed flow versions and which one of each flow is published

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "flow_versions",
        sa.Column("version", sa.String(80), primary_key=True),
        sa.Column("flow_id", sa.String(64), nullable=False, index=True),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("document", sa.JSON, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("tag", sa.String(128)),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
    )
    op.create_table(
        "flow_published",
        sa.Column("flow_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.String(80), nullable=False),
        sa.Column("published_at", sa.BigInteger, nullable=False),
        sa.Column("published_by", sa.String(256), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("flow_published")
    op.drop_table("flow_versions")
