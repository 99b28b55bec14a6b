"""One lease per store (``store:<name>``, names up to 64 characters) and one heartbeat row per
``serve`` replica (``replica:<id>``): ``lease.name`` grows from 32 to 80 characters. The rows
are made when first asked for; the old ``sweep`` row is left alone (nothing takes it now).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lease") as batch:
        batch.alter_column("name", existing_type=sa.String(32), type_=sa.String(80),
                           existing_nullable=False)


def downgrade() -> None:
    op.execute("delete from lease where name <> 'sweep'")
    with op.batch_alter_table("lease") as batch:
        batch.alter_column("name", existing_type=sa.String(80), type_=sa.String(32),
                           existing_nullable=False)
