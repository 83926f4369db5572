"""`cttrace drops`: packets dropped by netfilter as they happen, with their
tuple and why; a summary of the exact counts on exit."""

from __future__ import annotations

import json
import sys
import time

import click

from tracer.cli import abort, say, session
from tracer.core.events import REASONS
from tracer.cli.options import flow_filters, ready_file_option, tracing_options
from tracer.backends import BackendError, choose, make
from tracer.core.filters import Filter
from tracer.kernel import features
from tracer.live.session import Options
from tracer.views.drops import interval_line, interval_record, line, summary


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per drop, one per line.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help="Stop after S seconds.")
@ready_file_option()
@click.option("--netns", "-n", multiple=True, metavar="NAME|PID",
              help="Only drops in this network namespace; repeatable.")
@flow_filters()
@click.option("--reason", type=click.Choice(REASONS), multiple=True,
              help="Only drops of this kind; repeatable.")
@tracing_options
@click.option("--summary/--no-summary", "per_interval", default=None,
              help="A line per interval with the drops counted by reason and the top source "
                   "[default: on a terminal]; with --json, a {\"type\": \"interval\"} record.")
@click.option("--every", "every_s", type=click.FloatRange(min=0.1), default=1.0, show_default=True, metavar="S",
              help="The summary's interval.")
@click.option("--dump-bpf", is_flag=True, hidden=True, help="Print the BPF program and its flags, and exit.")
def drops(as_json, duration, ready_file, netns, proto, port, src, dst, reason, backend, rate, per_interval, every_s,
          dump_bpf):
    """Print packets dropped by netfilter as they happen, with the tuple
    their sender used (and, where NAT had changed it, the packet as it was
    dropped) and why: table_full (conntrack refused a new entry: the table
    is full), insert_failed (a clash at confirm: NAT port exhaustion, the
    UDP DNS race), invalid (conntrack refused it with room in the table),
    rule (an iptables/nftables rule), unknown. On exit, exact totals per
    reason go to stderr. On a terminal, a line per second (--every)
    counts the drops shown by reason and names the top source.

    \b
    Examples:
      sudo cttrace drops                          # every netfilter drop, all namespaces
      sudo cttrace drops --reason table_full --json
      sudo cttrace drops --netns 4242 --duration 30
    """
    opts = Options(backend=backend, rate=rate, drop_netns=netns, reasons=reason, ready_file=ready_file,
                   flt=Filter(protos=proto, ports=port, src=src, dst=dst))
    if dump_bpf:
        _dump_bpf(opts)
        return

    if per_interval is None:
        per_interval = sys.stdout.isatty() and not as_json
    window: list = []

    def show(events) -> None:
        for d in events:
            click.echo(json.dumps(d.to_dict()) if as_json else line(d))
        window.extend(events)
        sys.stdout.flush()

    def interval(t0: float, now: float) -> None:
        """The interval's summary line (only when it had drops: quiet seconds print nothing)."""
        if window:
            r = interval_record(time.time(), now - t0, window)
            click.echo(json.dumps(r) if as_json else interval_line(r))
            window.clear()

    with session("tracing drops", opts) as s:
        say(f"backend {s.backend.name} ({s.backend_why}); blind spots: {s.backend.blind_spots}")
        end = time.monotonic() + duration if duration else None
        t0 = time.monotonic()
        while not s.stopping and (end is None or time.monotonic() < end):
            left = 0.1 if end is None else min(0.1, end - time.monotonic())
            show(s.wait(max(left, 0.001)))
            if per_interval and time.monotonic() - t0 >= every_s:
                interval(t0, time.monotonic())
                t0 = time.monotonic()
        try:
            show(s.pump())                    # what is still in the buffers
            if per_interval:
                interval(t0, time.monotonic())
        except BrokenPipeError:
            pass
        c = s.backend.counters()
        for text in summary(c, s.drops_seen, s.backend.stats.name):
            click.echo(text, err=True)
        if as_json:
            click.echo(json.dumps({"summary": {"backend": s.backend.name, "shown": s.drops_seen,
                                               **c.to_dict()}}), err=True)


def _dump_bpf(opts) -> None:
    name, why = choose(features.detect(full=False), opts.backend)
    if name is None:
        abort(why)
    try:
        text, flags = make(name, opts.rate).program()
    except BackendError as e:
        abort(str(e))
    click.echo(f"// backend {name}; cflags: {' '.join(flags)}\n{text}")
