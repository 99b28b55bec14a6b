"""Command-line parsing only. Maps errors to exit codes (SPEC section 1):
0 success, 1 some records or rules failed, 2 usage or policy error, 3 a store or the state
database unreachable, 4 audit verification failed."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from retentiond import __version__, output
from retentiond import log as logsetup
from retentiond.app import App
from retentiond.errors import PolicyError, RetentiondError, UsageError, one_line, shown
from retentiond.timeutil import InstantOutOfRange, in_planning_range, parse_instant

F = TypeVar("F", bound=Callable[..., Any])


def _app(ctx: click.Context, json_flag: bool = False) -> App:
    app: App = ctx.obj
    app.json = app.json or json_flag
    return app


def json_option(fn: F) -> F:
    return click.option("--json", "json_flag", is_flag=True,
                        help="Print exactly one JSON document on stdout.")(fn)


MAX_VALUE = 1024  # characters of a subject id or record key typed on the command line


def _plain_value(_: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A subject id or record key: not blank, one line without control characters, and of a
    length a database column can hold."""
    if value is None:
        return None
    name = param.opts[0] if param.param_type_name == "option" else str(param.human_readable_name)
    problem = ("must not be empty or blank" if not value.strip() else
               "must not contain control characters (newlines, tabs, escapes)"
               if one_line(value) != value else
               f"is longer than {MAX_VALUE} characters" if len(value) > MAX_VALUE else None)
    if problem:
        raise UsageError(f"{name} {shown(value)}: {problem}")
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", metavar="PATH", envvar="RETENTIOND_CONFIG",
              help="Policy file (default $RETENTIOND_CONFIG, "
                   "then /etc/retentiond/retentiond.yaml).")
@click.option("--json", "json_out", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--debug", is_flag=True, help="Debug logs and tracebacks.")
@click.version_option(__version__, prog_name="retentiond")
@click.pass_context
def cli(ctx: click.Context, config: str | None, json_out: bool, debug: bool) -> None:
    """retentiond enforces a data-retention policy on your own data stores."""
    logsetup.setup(debug=debug, stream=sys.stdout if ctx.invoked_subcommand == "serve"
                   else sys.stderr)
    ctx.obj = App(config, json_out=json_out, debug=debug)
    ctx.call_on_close(ctx.obj.close)


# -- config -----------------------------------------------------------------------------------
@cli.group("config")
def config_group() -> None:
    """Check the policy file or print its JSON Schema."""


@config_group.command("validate")
@json_option
@click.pass_context
def config_validate(ctx: click.Context, json_flag: bool) -> None:
    """Schema, cross references and live checks against each store."""
    from retentiond.commands import config

    ctx.exit(config.validate(_app(ctx, json_flag)))


@config_group.command("schema")
@click.pass_context
def config_schema(ctx: click.Context) -> None:
    """Print the JSON Schema of the policy file."""
    from retentiond.commands import config

    ctx.exit(config.schema(_app(ctx)))


# -- plan / run -------------------------------------------------------------------------------
def _as_of(value: str | None, app: App) -> datetime | None:
    if value is None:
        return None
    try:
        when = parse_instant(value, app.policy.tz)
    except InstantOutOfRange:
        when = None
    except ValueError:
        raise UsageError(f"--as-of {shown(value)}: not an ISO 8601 instant "
                         "(e.g. 2026-11-22T03:00:00Z; without an offset it is in `timezone`)"
                         ) from None
    if when is None or not in_planning_range(when):
        raise UsageError(f"--as-of {shown(value)}: must be between 1970-01-01 and 9000-01-01 "
                         "(UTC)")
    return when


@cli.command("plan")
@click.option("--rule", "rules", multiple=True, metavar="ID", help="Only this rule (repeatable).")
@click.option("--as-of", "as_of", metavar="ISO8601", help="Plan as of this instant.")
@json_option
@click.pass_context
def plan_cmd(ctx: click.Context, rules: tuple[str, ...], as_of: str | None,
             json_flag: bool) -> None:
    """The dry run: what a sweep would do now. Writes nothing to any data store."""
    from retentiond.commands import run

    app = _app(ctx, json_flag)
    when = _as_of(as_of, app)
    ctx.exit(run.plan(app, rules, when))


@cli.command("run")
@click.option("--dry-run", is_flag=True, help="Same as plan.")
@click.option("--rule", "rules", multiple=True, metavar="ID", help="Only this rule (repeatable).")
@click.option("--wait", "wait", type=click.FloatRange(min=0, max=86400), default=0.0,
              metavar="SECONDS", help="Wait this long for its stores' leases while another "
              "sweeper holds one (default 0: refuse at once, exit 3).")
@json_option
@click.pass_context
def run_cmd(ctx: click.Context, dry_run: bool, rules: tuple[str, ...], wait: float,
            json_flag: bool) -> None:
    """One sweep now (holding the leases of its stores)."""
    from retentiond.commands import run

    ctx.exit(run.run(_app(ctx, json_flag), rules, dry_run, wait))


@cli.command("serve")
@click.option("--sweep-at-start", is_flag=True, envvar="RETENTIOND_SWEEP_AT_START",
              help="Sweep once as soon as this replica holds the lease "
                   "(env RETENTIOND_SWEEP_AT_START=1).")
@click.pass_context
def serve_cmd(ctx: click.Context, sweep_at_start: bool) -> None:
    """The daemon: sweeps on `schedule`, erasure requests every 15 minutes (systemd notify)."""
    from retentiond import daemon

    ctx.exit(daemon.serve(_app(ctx), sweep_at_start=sweep_at_start))


@cli.command("status")
@json_option
@click.pass_context
def status_cmd(ctx: click.Context, json_flag: bool) -> None:
    """Last and next sweep, open and overdue requests, active holds, ledger head."""
    from retentiond.commands import status

    ctx.exit(status.status(_app(ctx, json_flag)))


# -- audit ------------------------------------------------------------------------------------
@cli.group("audit")
def audit_group() -> None:
    """Verify or export the audit trail."""


@audit_group.command("verify")
@click.option("--checkpoint", "checkpoint_file", metavar="FILE",
              help="A checkpoint exported earlier (audit checkpoint -o FILE) or a "
                   "checkpoints.file of JSON lines.")
@click.option("--public-key", "public_keys", metavar="FILE", multiple=True,
              help="Check signatures against this PEM Ed25519 public key (audit public-key), "
                   "not the policy's signing_key; repeat for rotated keys.")
@json_option
@click.pass_context
def audit_verify(ctx: click.Context, checkpoint_file: str | None, public_keys: tuple[str, ...],
                 json_flag: bool) -> None:
    """Recompute the hash chain and check every checkpoint."""
    from retentiond.commands import audit

    ctx.exit(audit.verify(_app(ctx, json_flag), checkpoint_file, public_keys))


@audit_group.command("export")
@click.option("--format", "fmt", type=click.Choice(["json", "csv", "html"]), required=True)
@click.option("--since", metavar="ISO", help="Entries at or after this instant.")
@click.option("--until", metavar="ISO", help="Entries before this instant.")
@click.option("-o", "--output", "out", metavar="FILE", help="Write here instead of stdout.")
@click.pass_context
def audit_export(ctx: click.Context, fmt: str, since: str | None, until: str | None,
                 out: str | None) -> None:
    """Export the audit trail (json, csv) or the report for a data-protection officer (html)."""
    from retentiond.commands import audit

    ctx.exit(audit.export_cmd(_app(ctx), fmt, since, until, out))


@audit_group.command("checkpoint")
@click.option("-o", "--output", "out", metavar="FILE", help="Write here instead of stdout.")
@click.pass_context
def audit_checkpoint(ctx: click.Context, out: str | None) -> None:
    """Print the latest checkpoint, to keep outside for `audit verify --checkpoint`."""
    from retentiond.commands import audit

    ctx.exit(audit.checkpoint_cmd(_app(ctx), out))


@audit_group.command("public-key")
@json_option
@click.pass_context
def audit_public_key(ctx: click.Context, json_flag: bool) -> None:
    """Print the PEM public key of signing_key, for `audit verify --public-key`."""
    from retentiond.commands import audit

    ctx.exit(audit.public_key_cmd(_app(ctx, json_flag)))


# -- requests, holds, explain -----------------------------------------------------------------
@cli.group("request")
def request_group() -> None:
    """Erasure requests."""


@request_group.command("erase")
@click.argument("subject", callback=_plain_value)
@click.option("--kind", default="user", show_default=True, help="The subject_kind of the rules.")
@click.option("--ref", help="An external reference (ticket number).")
@click.option("--due", metavar="DURATION", help="Deadline from now (default requests.erasure_due).")
@json_option
@click.pass_context
def request_erase(ctx: click.Context, *, subject: str, kind: str, ref: str | None,
                  due: str | None, json_flag: bool) -> None:
    """Record an erasure request for SUBJECT; prints the request id."""
    from retentiond.commands import cases

    ctx.exit(cases.request_erase(_app(ctx, json_flag), subject, kind, ref, due))


@request_group.command("list")
@click.option("--open", "open_only", is_flag=True, help="Only open requests.")
@click.option("--overdue", is_flag=True, help="Only open requests past their due date.")
@json_option
@click.pass_context
def request_list(ctx: click.Context, open_only: bool, overdue: bool, json_flag: bool) -> None:
    """Requests with status, due date and outcome."""
    from retentiond.commands import cases

    ctx.exit(cases.request_list(_app(ctx, json_flag), open_only, overdue))


@cli.group("hold")
def hold_group() -> None:
    """Legal holds."""


@hold_group.command("add")
@click.option("--subject", callback=_plain_value, help="Hold every record of this subject.")
@click.option("--kind", default="user", show_default=True, help="The subject's subject_kind.")
@click.option("--rule", "rule", metavar="ID", help="Hold every record of this rule.")
@click.option("--store", metavar="NAME", help="Hold every record in this store.")
@click.option("--reason", required=True, help="Why (kept in the state database).")
@click.option("--ref", help="An external reference (case number).")
@json_option
@click.pass_context
def hold_add(ctx: click.Context, *, subject: str | None, kind: str, rule: str | None,
             store: str | None, reason: str, ref: str | None, json_flag: bool) -> None:
    """Place a legal hold; prints the hold id."""
    from retentiond.commands import cases

    ctx.exit(cases.hold_add(_app(ctx, json_flag), subject=subject, kind=kind, rule=rule,
                            store=store, reason=reason, ref=ref))


@hold_group.command("release")
@click.argument("hold_id")
@click.option("--reason", required=True, help="Why the hold ends.")
@json_option
@click.pass_context
def hold_release(ctx: click.Context, hold_id: str, reason: str, json_flag: bool) -> None:
    """Release a hold; its records are eligible again at the next sweep."""
    from retentiond.commands import cases

    ctx.exit(cases.hold_release(_app(ctx, json_flag), hold_id, reason))


@hold_group.command("list")
@click.option("--active", "active_only", is_flag=True, help="Only holds in force.")
@json_option
@click.pass_context
def hold_list(ctx: click.Context, active_only: bool, json_flag: bool) -> None:
    """List holds."""
    from retentiond.commands import cases

    ctx.exit(cases.hold_list(_app(ctx, json_flag), active_only))


@cli.command("explain")
@click.option("--rule", "rule_id", required=True, metavar="ID")
@click.option("--key", required=True, metavar="KEY", callback=_plain_value)
@json_option
@click.pass_context
def explain_cmd(ctx: click.Context, rule_id: str, key: str, json_flag: bool) -> None:
    """Why one record is or is not due."""
    from retentiond.commands import explain

    ctx.exit(explain.explain(_app(ctx, json_flag), rule_id, key))


@cli.group("backup")
def backup_group() -> None:
    """Backups of the stores."""


@backup_group.command("restored")
@click.option("--store", required=True, metavar="NAME", help="The store that was restored.")
@click.option("--taken-at", "taken_at", required=True, metavar="ISO8601",
              help="When the restored backup was taken.")
@json_option
@click.pass_context
def backup_restored(ctx: click.Context, store: str, taken_at: str, json_flag: bool) -> None:
    """Re-apply every disposal made in STORE since the backup was taken."""
    from retentiond.commands import backup

    ctx.exit(backup.restored(_app(ctx, json_flag), store, taken_at))


# -- db ---------------------------------------------------------------------------------------
@cli.group("db")
def db_group() -> None:
    """retentiond's own state database."""


@db_group.command("upgrade")
@json_option
@click.pass_context
def db_upgrade(ctx: click.Context, json_flag: bool) -> None:
    """Apply the state-database migrations (every command also does this on start)."""
    from retentiond.commands import db

    ctx.exit(db.upgrade(_app(ctx, json_flag)))


def _database_error(exc: Exception, debug: bool, args: list[str]) -> None:
    """Exit on an error SQLAlchemy raised: 3 with one line for the state database's (SPEC 1),
    else 1 naming only its class. Its text, and so a traceback's last line, can echo values."""
    from sqlalchemy.exc import SQLAlchemyError

    from retentiond.state.faults import state_error

    state = state_error(exc)
    if state is None and not isinstance(exc, SQLAlchemyError):
        return
    if debug:
        print("Traceback (most recent call last):", file=sys.stderr)
        traceback.print_tb(exc.__traceback__, file=sys.stderr)
        print(type(exc).__name__, file=sys.stderr)
    if state is not None:
        click.echo(f"error: {state}", err=True)
        _error_json(args, state.exit_code, [str(state)])
        sys.exit(state.exit_code)
    text = (f"internal error: {type(exc).__name__} in the database layer (run with --debug "
            "for a traceback)")
    click.echo(f"error: {text}", err=True)
    _error_json(args, 1, [text])
    sys.exit(1)


def _error_json(args: list[str], code: int, lines: list[str],
                exc: Exception | None = None) -> None:
    """With ``--json``, a command that fails still prints exactly one JSON document on stdout:
    ``{"ok": false, "exit_code": N, "errors": [...]}``, and for a policy error ``problems``:
    ``[{"path", "rule", "message"}]`` (``rule`` only for paths inside a rule). ``--json``
    (global or the command's) is found in the arguments, as ``--debug`` is."""
    if "--json" not in args:
        return
    doc: dict[str, object] = {"ok": False, "exit_code": code, "errors": lines}
    if isinstance(exc, PolicyError):
        doc["problems"] = exc.documents()
    output.emit_json(doc)


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    debug = "--debug" in args
    try:
        code = cli.main(args=argv, prog_name="retentiond", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {one_line(exc.format_message())}", err=True)
        _error_json(args, 2, [one_line(exc.format_message())])
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        _error_json(args, 130, ["aborted"])
        sys.exit(130)
    except RetentiondError as exc:
        if debug:
            traceback.print_exc()
        for text in exc.lines():
            click.echo(f"error: {text}", err=True)
        _error_json(args, exc.exit_code, exc.lines(), exc)
        sys.exit(exc.exit_code)
    except Exception as exc:  # last resort: one line, traceback with --debug
        _database_error(exc, debug, args)
        if debug:
            traceback.print_exc()
        text = (f"internal error: {type(exc).__name__}: {one_line(str(exc))[:200]} (run with "
                "--debug for a traceback)")
        click.echo(f"error: {text}", err=True)
        _error_json(args, 1, [text])
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
