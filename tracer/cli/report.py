"""`cttrace report`: analyse a capture (or a table export) on any machine."""

from __future__ import annotations

import json
import os

import click

from tracer.cli import abort, warn
from tracer.cli.snapshot import snapshot
from tracer.core.report import analyse
from tracer.formats.capture import CaptureError, read_capture, write_new


@click.command()
@click.argument("path", metavar="FILE")
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as one JSON object.")
@click.option("--html", "html_path", metavar="OUT", help="Also write a self-contained HTML report to OUT.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--top", "-t", type=click.IntRange(min=1), default=10, show_default=True, metavar="N")
def report(path, as_json, html_path, force, top):
    """Analyse a capture (or a table export) on any machine, no root needed:
    timeline of fill and drops, top sources and containers, state mix, drop
    bursts, and the doctor's findings for the captured host.

    \b
    Examples:
      cttrace report incident.ctcap
      cttrace report incident.ctcap --html incident.html
      cttrace report table-export.txt.gz     # a /proc or conntrack -L export
    """
    if html_path is not None and not html_path:
        abort("--html needs a file name", 2)

    try:
        cap = read_capture(path)
    except CaptureError as e:
        if "not a cttrace capture" in str(e) and os.path.isfile(path):
            if html_path:
                warn("--html is for captures; analysing the table export without it")
            ctx = click.get_current_context()
            ctx.invoke(snapshot, path=path, as_json=as_json, top=top)
            return
        abort(str(e))
    if cap.truncated:
        warn(f"{path}: the capture is truncated (cut short while recording): "
             f"analysing the {len(cap.records):,} records it holds")
    if cap.bad_records:
        warn(f"{path}: {cap.bad_records} corrupted records skipped")
    try:
        rep = analyse(cap, top)
        if html_path or not as_json:
            # rich and the view only for text: at the top they made `snapshot --file
            # --json` (100k lines) ~100 ms slower and 10 MiB bigger
            from tracer.views.report import render, to_html
        page = to_html(rep) if html_path else None
        view = None if as_json else render(rep)
    except Exception as e:       # records are validated; this is the last net
        abort(f"{path}: cannot analyse this capture ({type(e).__name__}: {e}): it may be corrupted")
    if html_path:
        try:
            write_new(html_path, page, overwrite=force)
        except CaptureError as e:
            abort(str(e))
    if as_json:
        click.echo(json.dumps(rep))
    else:
        from rich.console import Console      # text only, as the view above
        Console().print(view)
