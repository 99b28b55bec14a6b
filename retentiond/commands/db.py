"""``db upgrade``: apply the state-database migrations."""

from __future__ import annotations

from retentiond import output
from retentiond.app import App
from retentiond.log import redact_url
from retentiond.state.db import current_revision


def upgrade(app: App) -> int:
    engine = app.state  # opening it upgrades it
    revision = current_revision(engine)
    if app.json:
        output.emit_json({"revision": revision, "state": redact_url(app.policy.state)})
    else:
        output.line(f"state database at revision {revision} ({redact_url(app.policy.state)})")
    return 0
