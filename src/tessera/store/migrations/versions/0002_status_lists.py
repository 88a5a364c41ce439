"""token status lists (draft-ietf-oauth-status-list): status entries of issued tokens, lists, segments

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("issued_tokens", sa.Column("status_list", sa.Integer))
    op.add_column("issued_tokens", sa.Column("status_idx", sa.Integer))
    op.add_column("issued_tokens", sa.Column("status", sa.SmallInteger, nullable=False, server_default=sa.text("0")))
    op.create_index("uq_issued_tokens_status_entry", "issued_tokens", ["status_list", "status_idx"], unique=True)
    op.create_index("ix_issued_tokens_status", "issued_tokens", ["status_list", "status"])
    op.create_table(
        "status_lists",
        sa.Column("list_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("bits", sa.Integer, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("segment_size", sa.Integer, nullable=False),
        sa.Column("segments_claimed", sa.Integer, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "status_segments",
        sa.Column("list_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("segment", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("claimed_at", sa.BigInteger, nullable=False),
        sa.Column("claimed_by", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("status_segments")
    op.drop_table("status_lists")
    op.drop_index("ix_issued_tokens_status", "issued_tokens")
    op.drop_index("uq_issued_tokens_status_entry", "issued_tokens")
    with op.batch_alter_table("issued_tokens") as batch:
        batch.drop_column("status")
        batch.drop_column("status_idx")
        batch.drop_column("status_list")
