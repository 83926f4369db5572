"""`cttrace capture`: record inserts, deletes, drops and the table's
counters, with the host's settings and rules, for `cttrace report`."""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import asdict

import click

from tracer.cli import abort, say, session
from tracer.formats.capture import ENTRIES_MAX_COUNT
from tracer.cli.options import backend_option, duration, netns_option, ready_file_option


@click.command()
@click.option("--output", "-o", required=True, metavar="FILE",
              help="The capture file (created mode 0600; never through a symbolic link).")
@click.option("--force", is_flag=True, help="Replace FILE if it exists (a new file renamed over it).")
@click.option("--duration", "-d", "length", default="30s", show_default=True, callback=duration,
              metavar="TIME", help="How long to record (30s, 2m, ...).")
@click.option("--max-events", type=click.IntRange(min=1), metavar="N", help="Stop after N records.")
@netns_option("Record another network namespace's table.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True, metavar="S",
              help="Table counters every S seconds.")
@backend_option
@ready_file_option(hidden=True)
def capture(output, force, length, max_events, netns, interval, backend, ready_file):
    """Record inserts, deletes, drops and table counters to a file, with
    the host's settings and rules, for `cttrace report` on any machine.
    Ctrl-C ends it early and keeps what was recorded.

    \b
    Examples:
      sudo cttrace capture --duration 30s -o incident.ctcap
      sudo cttrace capture --netns 4242 --max-events 100000 -o ns.ctcap
    """
    from tracer.formats.capture import CaptureError, Writer, row_record, write_ready_file
    from tracer.kernel.ctnetlink import NetlinkError
    from tracer.kernel.ctevents import DELETE
    from tracer.live.session import Options

    opts = Options(backend=backend, rate=100000, netns=netns, entry_events=True, only_followed_netns=True)
    counts = {"insert": 0, "delete": 0, "drop": 0}
    mix_due = [0.0]                 # when the next entries record is due (monotonic)
    with session("capture", opts) as s:
        def stats():
            st = s.read_table()
            w.write({"k": "stats", "t": time.time(), "count": st.count, "max": st.max,
                     "kernel": st.totals})
            if time.monotonic() >= mix_due[0] and (st.count or 0) <= ENTRIES_MAX_COUNT:
                t0 = time.monotonic()
                try:
                    w.write(_entries(s.netns_ref, s.names.ip))
                except NetlinkError:
                    mix_due[0] = float("inf")        # not readable here: no entries records
                    return
                # a dump costs time: at most 5% of the capture's (every interval on small tables)
                mix_due[0] = t0 + max(interval, 20 * (time.monotonic() - t0))

        try:
            start_state = _state(s, netns)
            w = Writer(output, {"created": time.time(), "host": platform.node(),
                                "kernel": platform.release(), "backend": s.backend.name,
                                "netns": netns or "host", "netns_inode": s.inum,
                                "interval": interval, "state": asdict(start_state)},
                       overwrite=force)
        except CaptureError as e:
            abort(str(e))
        unnamed: set[str] = set()
        try:
            stats()
            if ready_file:
                try:
                    write_ready_file(ready_file)
                except CaptureError as e:
                    abort(str(e))
            end = time.monotonic() + length
            next_stats = time.monotonic() + interval
            progress = _progress(length)
            while not s.stopping and time.monotonic() < end and \
                    not (max_events and w.records >= max_events):
                for d in s.pump(50):
                    if d.container is None and len(unnamed) < 100_000:
                        unnamed.add(d.src)
                    w.write({"k": "drop", "t": d.ts, **d.to_dict()})
                    counts["drop"] += 1
                batch = s.events.poll(0, max_events=20_000)      # bounded: the loop keeps its schedule
                now = time.time()
                for kind, row in batch.events:
                    k = "delete" if kind is DELETE else "insert"
                    rec = row_record(k, row, now, s.names.ip)
                    if rec["container"] is None and len(unnamed) < 100_000:
                        unnamed.add(rec["src"])      # named at the end, if known by then
                    w.write(rec)
                    counts[k] += 1
                if batch.overrun:
                    w.write({"k": "lost", "t": now, "what": "netlink events (receive buffer overrun)", "n": 1})
                if time.monotonic() >= next_stats:
                    stats()
                    w.flush()
                    next_stats += interval
                if progress:
                    progress(length - (end - time.monotonic()),
                             f"inserts {counts['insert']:,} deletes {counts['delete']:,} "
                             f"drops {counts['drop']:,}")
            if progress:
                progress(None, None)
        finally:
            try:
                stats()
                c = s.backend.counters()
                end_state = _state(s, netns)
                by_src = c.drops_by_src(s.inum)
                # sources that had no name when recorded (a container that had
                # just started), named now (exited ones are remembered a while)
                s.names.refresh()
                late = {a: n for a in set(by_src) | unnamed if (n := s.names.names.by_ip.get(a))}
                w.write({"k": "end", "t": time.time(), "totals": counts,
                         "sources": by_src, "lost": c.lost, "state": asdict(end_state),
                         "names": late})
            finally:
                w.close()
                say(f"{w.records:,} records written to {output} ({counts['insert']:,} inserts, "
                    f"{counts['delete']:,} deletes, {counts['drop']:,} drops)")


def _entries(netns_ref: str, name_of) -> dict:
    """An entries record: the followed table's entries by container (or
    source address), from a ctnetlink dump counted as it streams, in the
    followed namespace through the session's pinned reference (as _state)."""
    from collections import Counter

    from tracer.formats.capture import entries_record
    from tracer.kernel import ctnetlink
    from tracer.kernel import netns as ns
    raw: Counter = Counter()
    with ns.entered(netns_ref):
        res = ctnetlink.dump(sink=lambda rows: raw.update(r[ctnetlink.R_SRC] for r in rows))
    dec = ctnetlink.NetlinkDecoder()
    by: Counter = Counter()
    for a, n in raw.items():
        src = dec.addr(a)[1]
        by[name_of(src) or src] += n
    return entries_record(time.time(), by, res.count)


def _progress(total: float):
    """A transient progress bar on a terminal: update(done, text); (None, None) ends it."""
    if not sys.stderr.isatty():
        return None
    from rich.progress import Progress
    p = Progress(transient=True)
    p.start()
    task = p.add_task("capturing", total=total)

    def update(done, text):
        if done is None:
            p.stop()
        else:
            p.update(task, completed=done, description=text)
    return update


def _state(s, netns):
    """The followed namespace's HostState, read through the session's pinned
    reference (it survives `ip netns del` while recording), named as given."""
    from tracer.kernel.host import read_live
    h = read_live(s.netns_ref, 0.1, names=s.names.names)
    h.netns = netns or "host"
    return h
