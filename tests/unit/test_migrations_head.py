"""The HEAD_REVISION shortcut (skip Alembic when the database is current) must name the real
head of the migration scripts."""

from __future__ import annotations

from alembic.script import ScriptDirectory

from retentiond.state.db import HEAD_REVISION, migrations_dir


def test_head_revision_constant_matches_the_scripts() -> None:
    scripts = ScriptDirectory(str(migrations_dir()))
    assert scripts.get_heads() == [HEAD_REVISION]
