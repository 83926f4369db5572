"""`cttrace top`: the live table, rendered from the session's state on its
own timer (tracer/views/top.py); events are taken in every 50 ms between."""

from __future__ import annotations

import json
import os
import select
import sys
import time
import termios
import tty

import click
from rich.console import Console
from rich.live import Live

from tracer.core.aggregate import GROUPS, SORTS
from tracer.core.frame import top_frame
from tracer.cli import session
from tracer.cli.options import flow_filters, netns_option, ready_file_option, tracing_options
from tracer.core.filters import Filter
from tracer.live.session import FORGET_IDLE, Options
from tracer.views.top import render


@click.command()
@netns_option()
@click.option("--interval", "-i", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              metavar="S", help="Refresh every S seconds (rates are per interval).")
@click.option("--group", "-g", type=click.Choice(GROUPS), default="src", show_default=True,
              help="Group entries by.")
@click.option("--sort", type=click.Choice(SORTS), default="entries", show_default=True, help="Sort groups by.")
@click.option("--top", "-t", "top_n", type=click.IntRange(min=1), default=15, show_default=True,
              metavar="N", help="Rows in the main table.")
@flow_filters()
@click.option("--once", is_flag=True, help="Print one frame after one interval and exit.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per interval, one per line.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="S", help="Stop after S seconds.")
@ready_file_option()
@tracing_options
def top(netns, interval, group, sort, top_n, proto, port, src, dst, once, as_json, duration, ready_file,
        backend, rate):
    """Live view of the conntrack table: how full it is, who fills it
    (sources, containers), how fast, and what is being dropped.

    \b
    Keys: g group, s sort, p pause, h help, q quit.
    Examples:
      sudo cttrace top                        # this namespace's table
      sudo cttrace top --netns 4242 -g container
      sudo cttrace top --json --interval 5    # for scripts
    """
    opts = Options(backend=backend, rate=rate, netns=netns, follow_entries=True, only_followed_netns=True,
                   ready_file=ready_file, flt=Filter(protos=proto, ports=port, src=src, dst=dst),
                   forget_idle=FORGET_IDLE)
    view = {"group": group, "sort": sort, "paused": False, "help": False}
    with session("top", opts) as s:
        end = time.monotonic() + duration if duration else None
        if sys.stdout.isatty() and sys.stdin.isatty() and not (as_json or once):
            _interactive(s, view, interval, top_n, end)
        else:
            _lines(s, view, interval, top_n, end, as_json, once)


def _lines(s, view, interval, top_n, end, as_json, once) -> None:
    """Not a terminal (or --json/--once): a frame per interval."""
    console = Console()
    while not s.stopping:
        s.wait(interval if end is None else max(0.0, min(interval, end - time.monotonic())))
        if s.stopping:
            break
        s.sample()
        f = top_frame(s.live_state(), view["group"], view["sort"], top_n)
        if as_json:
            f.pop("history", None)
            click.echo(json.dumps(f))
            sys.stdout.flush()
        else:
            console.print(render(f, full_screen=False))
        if once or (end is not None and time.monotonic() >= end):
            break


def _interactive(s, view, interval, top_n, end) -> None:
    """Full screen, keys read unbuffered between pumps."""
    fd = sys.stdin.fileno()
    term = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    keys_open = True

    def key() -> bool:
        """Handle a key if one is waiting; True if the view must be redrawn now."""
        nonlocal keys_open
        if not keys_open or not select.select([fd], [], [], 0)[0]:
            return False
        k = os.read(fd, 1).decode("latin-1")          # unbuffered: no key waits in Python
        if not k:
            keys_open = False                          # end of input: no more keys
        elif k == "q":
            s.request_stop()
        elif k == "g":
            view["group"] = GROUPS[(GROUPS.index(view["group"]) + 1) % len(GROUPS)]
        elif k == "s":
            view["sort"] = SORTS[(SORTS.index(view["sort"]) + 1) % len(SORTS)]
        elif k == "p":
            view["paused"] = not view["paused"]
        elif k in "h?":
            view["help"] = not view["help"]
        else:
            return False
        return True

    try:
        with Live(console=Console(), screen=True, auto_refresh=False) as live:
            shown, shape = None, None
            next_sample = time.monotonic() + interval
            while not s.stopping and (end is None or time.monotonic() < end):
                # paused: the numbers stay, but a new grouping or sort is applied
                if not view["paused"] or shown is None or shape != (view["group"], view["sort"]):
                    shown = top_frame(s.live_state(), view["group"], view["sort"], top_n, view["paused"])
                    shape = (view["group"], view["sort"])
                shown["paused"] = view["paused"]
                live.update(render(shown, show_help=view["help"]), refresh=True)
                due = next_sample if end is None else min(next_sample, end)
                s.wait(max(0.0, due - time.monotonic()), on_tick=key)
                if time.monotonic() >= next_sample:     # on schedule, whatever the keys
                    s.sample()
                    next_sample += interval
                    if next_sample < time.monotonic():
                        next_sample = time.monotonic() + interval
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, term)
