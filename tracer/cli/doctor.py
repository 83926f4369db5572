"""`cttrace doctor`: checks over the host's (or a capture's) state, with
evidence and the exact fix commands. Reads only."""

from __future__ import annotations

import json
import os

import click

from tracer.cli import abort


@click.command()
@click.option("--netns", "-n", metavar="NAME|PID", help="Check another network namespace's table.")
@click.option("--window", type=click.FloatRange(min=0.1, max=60), default=1.0, show_default=True,
              metavar="S", help="Watch the kernel's counters for S seconds (are drops happening now?).")
@click.option("--capture", "capture_path", metavar="FILE", help="Diagnose a capture file instead of this host.")
@click.option("--json", "as_json", is_flag=True, help="Print {findings: [...], state: {...}} as JSON.")
def doctor(netns, window, capture_path, as_json):
    """Check the conntrack table and its settings, and say exactly how to
    fix what is wrong. Reads only; never changes the system.

    \b
    Examples:
      sudo cttrace doctor
      sudo cttrace doctor --netns 4242 --json
      cttrace doctor --capture incident.ctcap
    """
    from dataclasses import asdict

    from tracer.doctor import diagnose

    if capture_path is not None:
        from tracer.capture import CaptureError, read_capture
        try:
            cap = read_capture(capture_path)
            state = cap.host_state()
        except CaptureError as e:
            abort(str(e))
        except Exception as e:
            abort(f"{capture_path}: cannot read the host's state from this capture ({e})")
    else:
        if os.geteuid() != 0:
            abort("doctor reads the live table through ctnetlink and needs root: run with sudo, "
                  "or diagnose a capture with --capture FILE")
        from tracer import ctnetlink
        from tracer import netns as ns
        from tracer.attribution import collect
        from tracer.hoststate import read_live
        try:
            state = read_live(netns, window, names=collect())
        except (ns.NetnsError, ctnetlink.NetlinkError) as e:
            abort(str(e))
    findings = diagnose(state)
    if as_json:
        st = asdict(state)
        st.pop("rules", None)
        click.echo(json.dumps({"findings": [f.to_dict() for f in findings], "state": st}))
        return
    from rich.console import Console
    from tracer.views.doctor import render
    Console().print(render(findings, state))
