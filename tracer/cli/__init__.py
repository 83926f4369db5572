"""cttrace command line: a thin click group. Each command is a module of
this package (loaded when used) that wires edge -> core -> view:

    snapshot   the table now, or an export          tracer/cli/snapshot.py
    features   what this kernel and BCC offer        tracer/cli/features.py
    drops      netfilter drops as they happen        tracer/cli/drops.py
    top        the live table                        tracer/cli/top.py
    capture    record a diagnostic capture           tracer/cli/capture.py
    report     analyse a capture or an export        tracer/cli/report.py
    doctor     checks and concrete fixes             tracer/cli/doctor.py
    serve      Prometheus exporter                   tracer/cli/serve.py

Data goes to stdout, diagnostics to stderr; every expected failure goes
through abort(): one line, non-zero exit, no traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from contextlib import contextmanager
from typing import NoReturn

import click

from tracer import version

EXIT_ERROR = 1
COMMANDS = ("snapshot", "features", "drops", "top", "capture", "report", "doctor", "serve")


def abort(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"cttrace: error: {message}", err=True)
    sys.exit(code)


def warn(message: str) -> None:
    click.echo(f"cttrace: warning: {message}", err=True)


def say(message: str) -> None:
    click.echo(f"cttrace: {message}", err=True)


@contextmanager
def session(what: str, opts):
    """A tracing session (tracer/live/session.py) whose start-up failures abort
    in one line; it is closed on every way out."""
    from tracer.live.session import SessionError, TracingSession
    try:
        s = TracingSession(what, opts).__enter__()
    except SessionError as e:
        abort(str(e))
    try:
        yield s
    finally:
        s.close()


class _Group(click.Group):
    """Commands loaded from their modules; one line for every failure:
    usage errors, a closed pipe, a full disk."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        return getattr(importlib.import_module(f"tracer.cli.{name}"), name)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx else "cttrace"
            abort(f"{e.format_message()} (see '{where} --help')", 2)
        except click.ClickException as e:
            abort(e.format_message(), e.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("cttrace: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_ERROR)
        except OSError as e:
            if e.filename is None and e.errno in (28, 5):     # ENOSPC, EIO on output
                abort(f"cannot write the output: {e.strerror}")
            raise
        sys.exit(rv if isinstance(rv, int) else 0)


def _show_version(ctx, param, value) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version.describe())
        ctx.exit()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_show_version,
              help="Show the version (and the git commit it was built from) and exit.")
def main() -> None:
    """Trace and analyse the Linux connection-tracking table (nf_conntrack).

    \b
    Examples:
      sudo cttrace top               # who fills the table, live
      sudo cttrace drops             # which packets are dropped now, and why
      sudo cttrace doctor            # what is wrong, and the fix
      cttrace snapshot --file F.gz   # analyse an export from another machine
    """
