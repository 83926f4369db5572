"""`cttrace doctor`: checks over the host's (or a capture's) state, with
evidence and the exact fix commands. Reads only."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import click

from tracer.cli import abort, warn
from tracer.cli.options import MAX_JOBS
from tracer.core.doctor import diagnose
from tracer.core.report import capture_state
from tracer.formats.capture import CaptureError, read_capture
from tracer.formats.export import InputError
from tracer.kernel import ctnetlink, netns as ns
from tracer.kernel.attribution import collect
from tracer.kernel.host import SettingsError, parse_settings, read_export, read_live


@click.command()
@click.option("--netns", "-n", metavar="NAME|PID", help="Check another network namespace's table.")
@click.option("--window", type=click.FloatRange(min=0.1, max=60), default=1.0, show_default=True,
              metavar="S", help="Watch the kernel's counters for S seconds (are drops happening now?).")
@click.option("--capture", "capture_path", metavar="FILE", help="Diagnose a capture file instead of this host.")
@click.option("--file", "-f", "export_path", metavar="EXPORT|-",
              help="Diagnose a table export (/proc/net/nf_conntrack or conntrack -L [-o extended|xml] "
                   "output, plain or gzip; '-' for stdin): timeouts, NOTRACK, early drop, memory.")
@click.option("--sysctls", "sysctls_path", metavar="FILE",
              help="With --file: the exporting host's settings (`sysctl net.netfilter` output); "
                   "timeouts not given are taken as the kernel's defaults.")
@click.option("--sysctl", "sysctl_values", multiple=True, metavar="NAME=VALUE",
              help="With --file: one setting, e.g. udp_timeout=60 or nf_conntrack_max=262144; repeatable.")
@click.option("--jobs", "-j", type=click.IntRange(min=1, max=MAX_JOBS), help=f"With --file: processes for big files, at most {MAX_JOBS}.")
@click.option("--json", "as_json", is_flag=True, help="Print {findings: [...], state: {...}} as JSON.")
def doctor(netns, window, capture_path, export_path, sysctls_path, sysctl_values, jobs, as_json):
    """Check the conntrack table and its settings, and say exactly how to
    fix what is wrong. Reads only; never changes the system.

    \b
    Examples:
      sudo cttrace doctor
      sudo cttrace doctor --netns 4242 --json
      cttrace doctor --capture incident.ctcap
      cttrace doctor --file table.txt.gz --sysctls sysctls.txt
      conntrack -L | cttrace doctor -f - --sysctl udp_timeout=60
    """
    if export_path is not None and (capture_path is not None or netns is not None):
        abort("--file reads a table export: it excludes --capture and --netns", 2)
    if (export_path is not None or capture_path is not None) and \
            click.get_current_context().get_parameter_source("window") is not click.core.ParameterSource.DEFAULT:
        abort("--window watches this host's counters: it excludes --file and --capture", 2)
    if (sysctls_path or sysctl_values or jobs) and export_path is None:
        abort("--sysctls, --sysctl and --jobs go with --file (a table export)", 2)
    if export_path is not None:
        state = _export(export_path, sysctls_path, sysctl_values, jobs)
    elif capture_path is not None:
        try:
            cap = read_capture(capture_path)
            state = capture_state(cap)
        except CaptureError as e:
            abort(str(e))
        except Exception as e:
            abort(f"{capture_path}: cannot read the host's state from this capture ({e})")
    else:
        if os.geteuid() != 0:
            abort("doctor reads the live table through ctnetlink and needs root: run with sudo, "
                  "or diagnose a capture with --capture FILE")
        try:
            state = read_live(netns, window, names=collect())
        except (ns.NetnsError, ctnetlink.NetlinkError) as e:
            abort(str(e))
    try:
        findings = diagnose(state)
        if as_json:
            st = asdict(state)
            st.pop("rules", None)
            out = json.dumps({"findings": [f.to_dict() for f in findings], "state": st})
        else:
            # rich and the view only for text: at the top they made `snapshot --file
            # --json` (100k lines) ~100 ms slower and 10 MiB bigger
            from tracer.views.doctor import render
            out = render(findings, state)
    except (ValueError, TypeError, KeyError, ArithmeticError, RecursionError, MemoryError) as e:
        # states are validated (tracer/core/schema.py); this is the last net
        where = capture_path or export_path or "this host's state"
        abort(f"{where}: cannot diagnose this state ({type(e).__name__}: {e})")
    if as_json:
        click.echo(out)
        return
    from rich.console import Console      # text only, as the view above
    Console().print(out)


def _export(path: str, sysctls_path, values, jobs):
    """The HostState of a table export, with the settings given."""
    settings: dict = {}
    try:
        if sysctls_path is not None:
            try:
                with open(sysctls_path, "rb") as f:
                    raw = f.read(1 << 20)
            except FileNotFoundError:
                abort(f"{sysctls_path}: no such file")
            except IsADirectoryError:
                abort(f"{sysctls_path} is a directory; give the output of `sysctl net.netfilter`")
            except OSError as e:
                abort(f"{sysctls_path}: cannot read: {e.strerror}")
            if b"\x00" in raw:
                abort(f"{sysctls_path} is a binary file, not `sysctl net.netfilter` output")
            settings.update(parse_settings(raw.decode("utf-8", "replace"), sysctls_path))
            if not settings:
                abort(f"{sysctls_path}: no conntrack setting in it (expected `sysctl net.netfilter` "
                      "output: net.netfilter.nf_conntrack_udp_timeout = 30, ...)")
        for v in values:
            if "=" not in v:
                abort(f"--sysctl {v!r}: expected NAME=VALUE, e.g. udp_timeout=60", 2)
            one = parse_settings(v, f"--sysctl {v}")
            if not one:
                abort(f"--sysctl {v!r}: not a conntrack timeout or nf_conntrack_max/buckets", 2)
            settings.update(one)
    except SettingsError as e:
        abort(str(e), 2)
    try:
        state = read_export(path, settings, jobs)
    except InputError as e:
        abort(str(e))
    if state.malformed:
        where = ", ".join(f"line {n}: {t!r}" for n, t in state.malformed_samples)
        warn(f"{state.malformed:,} malformed line(s) skipped; first: {where}")
    return state
