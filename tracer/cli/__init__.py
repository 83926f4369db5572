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
from click.shell_completion import CompletionItem
from click.utils import make_default_short_help

from tracer import version

EXIT_ERROR = 1
# Each command and the first sentence of its help: `cttrace --help` and
# shell completion list them from here, without importing every command's
# module (with them, `cttrace --help` took 2.4 times as long: 294 ms against
# 120 ms, median of 11). tests/unit/test_cli_help.py checks them against the commands.
COMMANDS = {
    "snapshot": "Break the conntrack table down by protocol, state, source, destination, port, zone, "
                "mark and flags, in one pass.",
    "features": "What this kernel and BCC offer cttrace, found by trying each feature.",
    "drops": "Print packets dropped by netfilter as they happen, with the tuple their sender used (and, "
             "where NAT had changed it, the packet as it was dropped) and why: table_full (conntrack "
             "refused a new entry: the table is full), insert_failed (a clash at confirm: NAT port "
             "exhaustion, the UDP DNS race), invalid (conntrack refused it with room in the table), rule "
             "(an iptables/nftables rule), unknown.",
    "top": "Live view of the conntrack table: how full it is, who fills it (sources, containers), how "
           "fast, and what is being dropped.",
    "capture": "Record inserts, deletes, drops and table counters to a file, with the host's settings "
               "and rules, for `cttrace report` on any machine.",
    "report": "Analyse a capture (or a table export) on any machine, no root needed: timeline of fill "
              "and drops, top sources and containers, state mix, drop bursts, and the doctor's findings "
              "for the captured host.",
    "doctor": "Check the conntrack table and its settings, and say exactly how to fix what is wrong.",
    "serve": "Export conntrack metrics for Prometheus at http://HOST:PORT/metrics: table entries and "
             "limit, the kernel's counters, drops by reason, inserts, deletes, drops and live entries "
             "per source and container (bounded to K+1 series), events lost, backend and kernel.",
}


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
    # here, not at the top: snapshot, report, doctor and features load this
    # module too and need no session (it brings the backends and the kernel edge)
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

    def format_commands(self, ctx, formatter):
        """The commands' list of `cttrace --help`, as click makes it, from COMMANDS."""
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        with formatter.section("Commands"):
            formatter.write_dl([(n, make_default_short_help(h, limit)) for n, h in COMMANDS.items()])

    def shell_complete(self, ctx, incomplete):
        """Command names (from COMMANDS) and the group's own options."""
        return [CompletionItem(n, help=make_default_short_help(h)) for n, h in COMMANDS.items()
                if n.startswith(incomplete)] + click.Command.shell_complete(self, ctx, incomplete)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx else "cttrace"
            hint = ""
            if where.endswith(" doctor") and "unexpected extra argument" in e.format_message():
                hint = ": a file is read with --file EXPORT or --capture FILE"
            abort(f"{e.format_message()}{hint} (see '{where} --help')", 2)
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
