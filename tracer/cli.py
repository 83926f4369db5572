"""cttrace command line: a thin click group; each command wires
edge (readers) -> core (pure folding) -> view (rich or JSON).

Data goes to stdout, diagnostics to stderr; every expected failure goes
through abort(): one line, non-zero exit, no traceback.
"""

from __future__ import annotations

import json
import os
import sys
from typing import NoReturn

import click

from tracer import __version__

EXIT_ERROR = 1


def abort(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"cttrace: error: {message}", err=True)
    sys.exit(code)


def warn(message: str) -> None:
    click.echo(f"cttrace: warning: {message}", err=True)


class _Group(click.Group):
    """One line for every failure: usage errors, a closed pipe, a full disk."""

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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cttrace")
def main() -> None:
    """Trace and analyse the Linux connection-tracking table (nf_conntrack).

    \b
    cttrace snapshot                 who fills the table right now
    cttrace snapshot --file F.gz     analyse an export from another machine
    """


def _port(ctx, param, values):
    out = []
    for v in values:
        try:
            n = int(v)
        except ValueError:
            raise click.BadParameter(f"{v!r} is not a port number") from None
        if not 0 <= n <= 65535:
            raise click.BadParameter(f"{v} is not a port number (0-65535)")
        out.append(n)
    return out


def _cidr(ctx, param, values):
    import ipaddress
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise click.BadParameter(f"{v!r} is not an address or CIDR (e.g. 10.0.0.0/8)") from None
    return values


def _proto(ctx, param, values):
    from tracer.conntrack import parse_proto
    for v in values:
        try:
            parse_proto(v)
        except ValueError:
            raise click.BadParameter(f"{v!r} is not a protocol name or number (e.g. tcp, udp, 17)") from None
    return values


def _state(ctx, param, values):
    from tracer.conntrack import DCCP_STATES, SCTP_STATES, TCP_STATES
    known = set(TCP_STATES) | set(SCTP_STATES) | set(DCCP_STATES)
    for v in values:
        if v.upper() not in known:
            raise click.BadParameter(
                f"{v!r} is not a conntrack state (TCP: {', '.join(TCP_STATES)})")
    return values


@main.command()
@click.option("--file", "-f", "path", metavar="PATH|-",
              help="Analyse an export (/proc/net/nf_conntrack or conntrack -L [-o extended] "
                   "output, plain or gzip; '-' for stdin) instead of the live table.")
@click.option("--netns", "-n", metavar="NAME|PID",
              help="Live table of another network namespace (ip netns name, or a PID in it).")
@click.option("--proto", "-p", multiple=True, callback=_proto, help="Only this protocol (name or number); repeatable.")
@click.option("--state", "-s", multiple=True, callback=_state, help="Only entries in this state (e.g. TIME_WAIT); repeatable.")
@click.option("--src", multiple=True, callback=_cidr, metavar="CIDR", help="Only original sources in CIDR; repeatable.")
@click.option("--dst", multiple=True, callback=_cidr, metavar="CIDR", help="Only original destinations in CIDR; repeatable.")
@click.option("--dport", "-d", multiple=True, callback=_port, metavar="PORT", help="Only this destination port; repeatable.")
@click.option("--top", "-t", type=click.IntRange(min=1), metavar="N",
              help="Show the N biggest keys of each breakdown (terminal default: 10; JSON: all).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--source", type=click.Choice(["auto", "netlink", "proc"]), default="auto",
              show_default=True, help="Live table reader: ctnetlink dump, or /proc/net/nf_conntrack.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Processes for big files (default: CPUs).")
def snapshot(path, netns, proto, state, src, dst, dport, top, as_json, source, jobs):
    """Break the conntrack table down by protocol, state, source, destination,
    port, zone, mark and flags, in one pass.

    \b
    Examples:
      sudo cttrace snapshot                           # this namespace's table
      sudo cttrace snapshot --netns 4242 --top 5      # a container's table (by PID)
      cttrace snapshot -f table.txt.gz --json         # an export, for scripts
      conntrack -L -o extended | cttrace snapshot -f - --state TIME_WAIT
    """
    from tracer.snapshot import Filter, Summary

    if path is not None and netns is not None:
        abort("--file and --netns exclude each other: --netns reads a live table")
    if netns is not None and not netns.strip():
        abort("--netns needs a namespace name (ip netns list) or a PID")
    flt = Filter(proto, state, src, dst, dport)
    rep: dict = {}
    if path is not None:
        from tracer.tablefile import InputError, scan
        try:
            res, dec = scan(path, flt, jobs)
        except InputError as e:
            abort(str(e))
        if res.entries == 0 and not (res.trailers and not res.malformed):
            abort(f"{'standard input' if path == '-' else path}: no conntrack entries found in "
                  f"{res.lines:,} lines ({res.malformed:,} malformed): expected "
                  "/proc/net/nf_conntrack or conntrack -L output")
        if res.malformed:
            where = ", ".join(f"line {n}: {t!r}" for n, t in res.samples)
            warn(f"{res.malformed:,} malformed line(s) skipped; first: {where}")
        rep.update(source="standard input" if path == "-" else os.path.abspath(path),
                   format="text", lines=res.lines, entries_read=res.entries,
                   malformed=res.malformed, ignored=res.ignored)
        summary = Summary.from_columns(res.cols, dec)
    else:
        summary = _live(rep, netns, flt, source)
    rep.update(summary.to_dict(top=top if (top or as_json) else 10))
    if path is None and rep["by_src"]:
        from tracer.attribution import collect
        try:
            names = collect()
            rep["containers"] = {ip: names.by_ip[ip] for ip in rep["by_src"] if ip in names.by_ip}
        except Exception as e:        # attribution is best effort
            warn(f"container attribution unavailable: {e}")
    if flt.active:
        rep["filters"] = flt.describe()
    if as_json:
        click.echo(json.dumps(rep))
    else:
        from rich.console import Console
        from tracer.views.snapshot import render
        Console().print(render(rep))


def _live(rep: dict, netns: str | None, flt, source: str):
    """Read the live table (in `netns`) into rep; returns its Summary."""
    from tracer import ctnetlink, netns as ns, table
    from tracer.snapshot import Columns, Summary

    if os.geteuid() != 0:
        abort("reading the live table needs root (CAP_NET_ADMIN): run with sudo, "
              "or analyse an export with --file")
    try:
        with ns.entered(netns):
            rep["netns"] = netns or "current"
            rep["netns_inode"] = ns.inode()
            cols = Columns()
            dec = None
            if source in ("auto", "netlink"):
                try:
                    res = ctnetlink.dump()
                    dec = ctnetlink.NetlinkDecoder()
                    rep["source"] = "ctnetlink"
                    rep["dump_interrupted"] = res.interrupted
                    if res.unreadable:
                        rep["unreadable"] = res.unreadable
                        warn(f"{res.unreadable} entries without an original tuple were skipped")
                    cols.add_rows(flt.apply(res.rows, dec, {}))
                    rep["entries_read"] = len(res.rows)
                except ctnetlink.NetlinkError as e:
                    if source == "netlink" or not os.path.exists("/proc/thread-self/net/nf_conntrack"):
                        abort(str(e))
                    warn(f"{e}; reading /proc/net/nf_conntrack instead")
            if dec is None:
                from tracer.tablefile import InputError, scan
                procfile = "/proc/thread-self/net/nf_conntrack"
                if not os.path.exists(procfile):
                    abort("this kernel has no /proc/net/nf_conntrack (built without "
                          "CONFIG_NF_CONNTRACK_PROCFS): use --source netlink")
                try:
                    res2, dec = scan(procfile, flt, 1)
                except InputError as e:
                    if "empty" not in str(e):
                        abort(str(e))
                    from tracer.tablefile import ScanResult, TextDecoder
                    res2, dec = ScanResult(), TextDecoder()
                rep["source"] = "/proc/net/nf_conntrack"
                rep["entries_read"] = res2.entries
                rep["malformed"] = res2.malformed
                cols = res2.cols
            try:
                rep["table"] = table.read().to_dict()
            except ctnetlink.NetlinkError as e:
                warn(f"table counters unavailable: {e}")
    except ns.NetnsError as e:
        abort(str(e))
    rep.setdefault("malformed", 0)
    return Summary.from_columns(cols, dec)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as one JSON object.")
@click.option("--quick", is_flag=True, help="Skip the checks that compile and load programs.")
def features(as_json, quick):
    """What this kernel and BCC offer cttrace, found by trying each feature.

    \b
    Example:  sudo cttrace features
    """
    from tracer import features as feat
    from tracer.backends import choose
    f = feat.detect(full=not quick)
    backend, why = choose(f)
    try:
        from tracer.backends.kprobe import fentry_status
        ok, fwhy = fentry_status()
        f.checks["fentry_backend"] = feat.Check(ok, fwhy)
    except Exception as e:       # BCC missing: already said by the bcc check
        f.checks["fentry_backend"] = feat.Check(False, str(e))
    if as_json:
        click.echo(json.dumps({"checks": f.to_dict(), "backend": backend, "backend_reason": why}))
        return
    for name, c in f.checks.items():
        click.echo(f"{'yes' if c.ok else 'no ':3s}  {name:22s} {c.detail}")
    click.echo(f"backend: {backend or 'none'} ({why})")


def _tracing_start(what: str, netns: str | None, backend: str) -> tuple[str, str]:
    """Checks common to the tracing commands: root, the namespace, a backend.
    Returns (backend name, why it was chosen); aborts otherwise."""
    from tracer import features as feat
    from tracer import netns as ns
    from tracer.backends import choose
    if os.geteuid() != 0:
        abort(f"{what} needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN): run with sudo")
    if netns is not None:
        try:
            ns.resolve(netns)
        except ns.NetnsError as e:
            abort(str(e))
    name, why = choose(feat.detect(full=False), backend)
    if name is None:
        abort(why)
    return name, why


def _close_tracing(old_handlers: dict, engine, names) -> None:
    """Restore signal handlers; detach the engine (backend, events) and stop attribution."""
    import signal
    for sig, h in old_handlers.items():
        signal.signal(sig, h)
    if engine is not None:
        engine.close()          # closes its attribution too
    else:
        names.stop()


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop()


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per drop, one per line.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help="Stop after S seconds.")
@click.option("--ready-file", type=click.Path(dir_okay=False, writable=True), metavar="PATH",
              help="Write this file once the probes are attached.")
@click.option("--netns", "-n", multiple=True, metavar="NAME|PID",
              help="Only drops in this network namespace; repeatable.")
@click.option("--proto", "-p", multiple=True, callback=_proto, help="Only this protocol; repeatable.")
@click.option("--port", multiple=True, callback=_port, metavar="PORT",
              help="Only packets from or to this port; repeatable.")
@click.option("--src", multiple=True, callback=_cidr, metavar="CIDR", help="Only sources in CIDR.")
@click.option("--dst", multiple=True, callback=_cidr, metavar="CIDR", help="Only destinations in CIDR.")
@click.option("--reason", type=click.Choice(["table_full", "rule"]), multiple=True,
              help="Only drops of this kind; repeatable.")
@click.option("--backend", type=click.Choice(["auto", "kprobe", "fentry", "tracepoint"]), default="auto",
              show_default=True, help="Force a backend (auto: the best this kernel allows).")
@click.option("--rate", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Most drop events per second and CPU sent to user space (counts stay exact).")
@click.option("--dump-bpf", is_flag=True, hidden=True, help="Print the BPF program and its flags, and exit.")
def drops(as_json, duration, ready_file, netns, proto, port, src, dst, reason, backend, rate, dump_bpf):
    """Print packets dropped by netfilter as they happen, with their
    5-tuple and why: table_full (conntrack refused: the table is full) or
    rule (an iptables/nftables rule). On exit, a summary goes to stderr.

    \b
    Examples:
      sudo cttrace drops                          # every netfilter drop, all namespaces
      sudo cttrace drops --reason table_full --json
      sudo cttrace drops --netns 4242 --duration 30
    """
    import signal
    import time as _time

    from tracer import netns as ns
    from tracer.backends import make
    from tracer.backends.restricted import BackendError
    from tracer.top import RowFilter

    name, why = _tracing_start("tracing drops", None, backend)
    try:
        inodes = {os.stat(ns.resolve(n)).st_ino for n in netns}
    except ns.NetnsError as e:
        abort(str(e))
    flt = RowFilter(proto, port, src, dst)

    def wanted(d) -> bool:
        return (not inodes or d.netns in inodes) and (not reason or d.reason in reason) and flt.drop(d)

    be = make(name, rate)
    from tracer.attribution import Attribution
    names = Attribution()
    if dump_bpf:
        try:
            text, flags = be.program()
        except BackendError as e:
            abort(str(e))
        click.echo(f"// backend {be.name}; cflags: {' '.join(flags)}\n{text}")
        return
    old = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    shown = 0
    try:
        try:
            be.start()
        except BackendError as e:
            abort(str(e))
        click.echo(f"cttrace: backend {be.name} ({why}); blind spots: {be.blind_spots}", err=True)
        names.refresh()
        names.start()
        if ready_file:
            with open(ready_file, "w") as f:
                f.write(f"{os.getpid()}\n")
        end = _time.monotonic() + duration if duration else None

        def show(events) -> None:
            nonlocal shown
            for d in events:
                if not wanted(d):
                    continue
                d.container = names.ip(d.src) or names.netns(d.netns) or be.stats.name(d.netns)
                shown += 1
                if as_json:
                    click.echo(json.dumps(d.to_dict()))
                else:
                    t = _time.strftime("%H:%M:%S", _time.localtime(d.ts)) + f".{int(d.ts % 1 * 1e6):06d}"
                    where = d.container or str(d.netns)
                    icmp = d.proto in ("icmp", "icmpv6")
                    sp = f" type {d.sport}" if icmp else f":{d.sport}"
                    dp = f" code {d.dport}" if icmp else f":{d.dport}"
                    click.echo(f"{t} {where:18s} {d.proto:5s} {d.src}{sp} -> {d.dst}{dp}  {d.reason}")
            sys.stdout.flush()

        while end is None or _time.monotonic() < end:
            left = 100 if end is None else max(1, min(100, int((end - _time.monotonic()) * 1000)))
            show(be.poll(left))
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        names.stop()
        for s, h in old.items():
            signal.signal(s, h)
        if be.bpf is not None:
            try:
                try:
                    show(be.poll(0))          # what is still in the buffers
                except (KeyboardInterrupt, _Stop, BrokenPipeError):
                    pass
                _drops_summary(be, shown, as_json)
            finally:
                be.close()


def _drops_summary(be, shown: int, as_json: bool = False) -> None:
    c = be.counters()
    t = c["totals"]
    err = lambda s: click.echo(s, err=True)  # noqa: E731
    if "conntrack" in c:        # kprobe backend: conntrack's own counts, exact
        k = c["conntrack"]
        full = k["table_full"]
        err(f"cttrace drops: {shown} shown; {full} table_full, {k['insert_failed']} insert_failed, "
            f"{t['drops']} rule drops; conntrack: {k['inserts']} inserts, {k['deletes']} deletes, "
            f"{k['early_drops']} early drops, {k['clash_resolved']} clashes resolved; events: "
            f"{t['emitted'] + k['emitted']} sent, {t['sampled_out'] + k['sampled_out']} over the "
            f"rate limit, {c['lost']} lost; kretprobe misses: {c['kretprobe_missed']}; probes: "
            f"{', '.join(c['attached'])}" + (f" (not attached: {', '.join(c['not_attached'])})"
                                              if c["not_attached"] else ""))
    else:
        full = sum(c["table_full_by_netns"].values())
        err(f"cttrace drops: {shown} shown; {t['drops']} netfilter drops in all "
            f"({full} table_full by the kernel's drop counters, {t['drops'] - full} other); "
            f"events: {t['emitted']} sent, {t['sampled_out']} over the rate limit, {c['lost']} lost")
    if as_json:
        err(json.dumps({"summary": {"backend": be.name, "shown": shown, "table_full": full, **c}}))
    top = sorted(c["sources"], key=lambda s: -s["drops"])[:10]
    for s in top:
        where = be.stats.name(s["netns"]) or s["netns"]
        kind = "with conntrack entry" if s["ct_attached"] else "without conntrack entry"
        err(f"  {s['drops']:>8} {s['proto']:5s} from {s['src'] or '?':<39} netns {where} ({kind})")


@main.command()
@click.option("--netns", "-n", metavar="NAME|PID", help="The table of another network namespace.")
@click.option("--interval", "-i", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              metavar="S", help="Refresh every S seconds (rates are per interval).")
@click.option("--group", "-g", type=click.Choice(["src", "dst", "dport", "state", "container"]),
              default="src", show_default=True, help="Group entries by.")
@click.option("--sort", type=click.Choice(["entries", "inserts", "deletes", "drops"]), default="entries",
              show_default=True, help="Sort groups by.")
@click.option("--top", "-t", "top_n", type=click.IntRange(min=1), default=15, show_default=True,
              metavar="N", help="Rows in the main table.")
@click.option("--proto", "-p", multiple=True, callback=_proto, help="Only this protocol; repeatable.")
@click.option("--port", multiple=True, callback=_port, metavar="PORT", help="Only this port; repeatable.")
@click.option("--src", multiple=True, callback=_cidr, metavar="CIDR", help="Only sources in CIDR.")
@click.option("--once", is_flag=True, help="Print one frame after one interval and exit.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per interval, one per line.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="S", help="Stop after S seconds.")
@click.option("--ready-file", type=click.Path(dir_okay=False), metavar="PATH",
              help="Write this file once tracing has started.")
@click.option("--backend", type=click.Choice(["auto", "kprobe", "fentry", "tracepoint"]), default="auto",
              show_default=True, help="Force a backend.")
@click.option("--rate", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Most drop events per second and CPU sent to user space (counts stay exact).")
def top(netns, interval, group, sort, top_n, proto, port, src, once, as_json, duration, ready_file,
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
    import select
    import signal
    import time as _time

    from tracer import netns as ns
    from tracer.aggregate import GROUPS, SORTS
    from tracer.attribution import Attribution
    from tracer.backends import make
    from tracer.backends.restricted import BackendError
    from tracer.top import RowFilter, TopEngine

    name, why = _tracing_start("top", netns, backend)
    names = Attribution()
    names.refresh()
    names.start()
    engine = None
    old = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    interactive = sys.stdout.isatty() and sys.stdin.isatty() and not (as_json or once)
    term = None
    try:
        try:
            engine = TopEngine(make(name, rate), netns, RowFilter(proto, port, src), names)
            engine.be.start()
            engine.start()
        except (BackendError, ctnetlink_error()) as e:
            abort(str(e))
        except ns.NetnsError as e:
            abort(str(e))
        if ready_file:
            with open(ready_file, "w") as f:
                f.write(f"{os.getpid()}\n")
        from rich.console import Console
        from tracer.views.top import render
        console = Console()
        end = _time.monotonic() + duration if duration else None
        state = {"group": group, "sort": sort, "paused": False, "help": False}

        def frame():
            return engine.frame(state["group"], state["sort"], top_n, state["paused"])

        keys = {"open": True}

        def wait_interval(on_key=None, due=None):
            """Pump events until `due` (or a key that needs a redraw)."""
            due = due if due is not None else _time.monotonic() + interval
            while _time.monotonic() < due:
                if end is not None and _time.monotonic() >= end:
                    return
                engine.pump()
                if on_key is not None and keys["open"] and \
                        select.select([sys.stdin.fileno()], [], [], 0.05)[0]:
                    k = os.read(sys.stdin.fileno(), 1)      # unbuffered: no key waits in Python
                    if not k:
                        keys["open"] = False                # end of input: no more keys
                    elif on_key(k.decode("latin-1")):
                        return
                else:
                    _time.sleep(0.05)

        if not interactive:
            while True:
                wait_interval()
                engine.sample()
                f = frame()
                if as_json:
                    f.pop("history", None)
                    click.echo(json.dumps(f))
                    sys.stdout.flush()
                else:
                    console.print(render(f, full_screen=False))
                if once or (end is not None and _time.monotonic() >= end):
                    break
            return

        import termios
        import tty
        from rich.live import Live
        fd = sys.stdin.fileno()
        term = termios.tcgetattr(fd)
        tty.setcbreak(fd)

        def on_key(k: str) -> bool:
            if k == "q":
                raise _Stop()
            if k == "g":
                state["group"] = GROUPS[(GROUPS.index(state["group"]) + 1) % len(GROUPS)]
            elif k == "s":
                state["sort"] = SORTS[(SORTS.index(state["sort"]) + 1) % len(SORTS)]
            elif k == "p":
                state["paused"] = not state["paused"]
            elif k in "h?":
                state["help"] = not state["help"]
            else:
                return False
            return True      # redraw now

        with Live(console=console, screen=True, auto_refresh=False) as live:
            shown = None
            view = (state["group"], state["sort"])
            next_sample = _time.monotonic() + interval
            while end is None or _time.monotonic() < end:
                # paused: the numbers stay, but a new grouping or sort is applied
                if not state["paused"] or shown is None or view != (state["group"], state["sort"]):
                    shown = frame()
                    view = (state["group"], state["sort"])
                shown["paused"] = state["paused"]
                live.update(render(shown, show_help=state["help"]), refresh=True)
                wait_interval(on_key, due=next_sample)
                if _time.monotonic() >= next_sample:     # on schedule, whatever the keys
                    engine.sample()
                    next_sample += interval
                    if next_sample < _time.monotonic():
                        next_sample = _time.monotonic() + interval
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        if term is not None:
            import termios
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, term)
        _close_tracing(old, engine, names)


def ctnetlink_error():
    from tracer.ctnetlink import NetlinkError
    return NetlinkError


SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


@main.command()
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
    _print_findings(findings, state)


def _print_findings(findings, state) -> None:
    from rich.console import Console
    from rich.panel import Panel
    from rich.text import Text
    con = Console()
    fill = f"{state.count:,}/{state.max:,}" if state.count is not None and state.max else "?"
    con.print(f"cttrace doctor: netns {state.netns}, table {fill}, {len(findings)} finding(s)")
    if not findings:
        con.print("nothing to fix")
    for f in findings:
        body = Text()
        body.append(f.message + "\n", style="bold")
        body.append("evidence: " + f.evidence + "\n", style="dim")
        body.append("fix:\n" + f.fix)
        con.print(Panel(body, title=f"{f.severity}: {f.id}", title_align="left",
                        border_style=SEVERITY_STYLE.get(f.severity, "")))


def _parse_duration(ctx, param, value):
    if value is None:
        return None
    v = value.strip().lower()
    mult = 1.0
    for suffix, m in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)):
        if v.endswith(suffix):
            v, mult = v[: -len(suffix)], m
            break
    try:
        secs = float(v) * mult
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a duration (e.g. 30s, 2m)") from None
    if secs <= 0:
        raise click.BadParameter("must be positive")
    return secs


@main.command()
@click.option("--output", "-o", required=True, metavar="FILE", help="The capture file (created mode 0600).")
@click.option("--duration", "-d", default="30s", show_default=True, callback=_parse_duration,
              metavar="TIME", help="How long to record (30s, 2m, ...).")
@click.option("--max-events", type=click.IntRange(min=1), metavar="N", help="Stop after N records.")
@click.option("--netns", "-n", metavar="NAME|PID", help="Record another network namespace's table.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True, metavar="S",
              help="Table counters every S seconds.")
@click.option("--backend", type=click.Choice(["auto", "kprobe", "fentry", "tracepoint"]), default="auto",
              show_default=True)
@click.option("--ready-file", type=click.Path(dir_okay=False), metavar="PATH", hidden=True)
def capture(output, duration, max_events, netns, interval, backend, ready_file):
    """Record inserts, deletes, drops and table counters to a file, with
    the host's settings and rules, for `cttrace report` on any machine.
    Ctrl-C ends it early and keeps what was recorded.

    \b
    Example:  sudo cttrace capture --duration 30s -o incident.ctcap
    """
    import platform
    import signal
    import time as _time
    from dataclasses import asdict

    from tracer import ctnetlink, table
    from tracer import netns as ns
    from tracer.attribution import Attribution
    from tracer.backends import make
    from tracer.backends.restricted import BackendError
    from tracer.capture import CaptureError, Writer, row_record
    from tracer.ctevents import DELETE, CtEvents
    from tracer.hoststate import read_live

    name, why = _tracing_start("capture", netns, backend)
    names = Attribution()
    names.refresh()
    be = make(name, 100000)
    w = ev = None
    old = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    counts = {"insert": 0, "delete": 0, "drop": 0}
    try:
        try:
            be.start()
            ev = CtEvents(netns)
            with ns.entered(netns):
                inum = ns.inode()
            start_state = read_live(netns, 0.1, names=names.names)
            header = {"created": _time.time(), "host": platform.node(), "kernel": platform.release(),
                      "backend": be.name, "netns": netns or "host", "netns_inode": inum,
                      "interval": interval, "state": asdict(start_state)}
            w = Writer(output, header)
        except (BackendError, ctnetlink.NetlinkError, ns.NetnsError, CaptureError) as e:
            abort(str(e))
        names.start()

        def stats():
            with ns.entered(netns):
                st = table.read()
            w.write({"k": "stats", "t": _time.time(), "count": st.count, "max": st.max,
                     "kernel": st.totals})

        stats()
        if ready_file:
            with open(ready_file, "w") as f:
                f.write(f"{os.getpid()}\n")
        end = _time.monotonic() + duration
        next_stats = _time.monotonic() + interval
        progress = None
        if sys.stderr.isatty():
            from rich.progress import Progress
            progress = Progress(transient=True)
            progress.start()
            task = progress.add_task("capturing", total=duration)
        while _time.monotonic() < end and not (max_events and w.records >= max_events):
            for d in be.poll(50):
                if d.netns == inum:
                    d.container = names.ip(d.src) or names.netns(d.netns)
                    w.write({"k": "drop", "t": d.ts, **d.to_dict()})
                    counts["drop"] += 1
            batch = ev.poll(0)
            now = _time.time()
            for kind, row in batch.events:
                k = "delete" if kind is DELETE else "insert"
                w.write(row_record(k, row, now, names.ip))
                counts[k] += 1
            if batch.overrun:
                w.write({"k": "lost", "t": now, "what": "netlink events (receive buffer overrun)", "n": 1})
            if _time.monotonic() >= next_stats:
                stats()
                w.flush()
                next_stats += interval
            if progress:
                progress.update(task, completed=duration - (end - _time.monotonic()),
                                description=f"inserts {counts['insert']:,} deletes {counts['delete']:,} "
                                            f"drops {counts['drop']:,}")
        if progress:
            progress.stop()
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        names.stop()
        if w is not None:
            try:
                stats()
                c = be.counters()
                sources = be.drops_by_src(inum, c)
                end_state = read_live(netns, 0.1, names=names.names)
                w.write({"k": "end", "t": _time.time(), "totals": counts, "sources": sources,
                         "lost": c["lost"], "state": asdict(end_state)})
            finally:
                w.close()
                click.echo(f"cttrace: {w.records:,} records written to {output} "
                           f"({counts['insert']:,} inserts, {counts['delete']:,} deletes, "
                           f"{counts['drop']:,} drops)", err=True)
        if ev is not None:
            ev.close()
        be.close()


@main.command()
@click.argument("path", metavar="FILE")
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as one JSON object.")
@click.option("--html", "html_path", metavar="OUT", help="Also write a self-contained HTML report to OUT.")
@click.option("--top", "-t", type=click.IntRange(min=1), default=10, show_default=True, metavar="N")
def report(path, as_json, html_path, top):
    """Analyse a capture (or a table export) on any machine, no root needed:
    timeline of fill and drops, top sources and containers, state mix, drop
    bursts, and the doctor's findings for the captured host.

    \b
    Examples:
      cttrace report incident.ctcap
      cttrace report incident.ctcap --html incident.html
      cttrace report table-export.txt.gz     # a /proc or conntrack -L export
    """
    from tracer.capture import CaptureError, read_capture
    from tracer.report import analyse, render, to_html

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
        page = to_html(rep) if html_path else None
        view = None if as_json else render(rep)
    except Exception as e:       # records are validated; this is the last net
        abort(f"{path}: cannot analyse this capture ({type(e).__name__}: {e}): it may be corrupted")
    if html_path:
        try:
            with open(html_path, "w") as f:
                f.write(page)
        except OSError as e:
            abort(f"{html_path}: cannot write: {e.strerror}")
    if as_json:
        click.echo(json.dumps(rep))
    else:
        from rich.console import Console
        Console().print(view)


def _listen(ctx, param, value):
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r}: expected HOST:PORT, e.g. 127.0.0.1:9466")
    return host.strip("[]") or "127.0.0.1", int(port)


@main.command()
@click.option("--listen", default="127.0.0.1:9466", show_default=True, callback=_listen,
              metavar="HOST:PORT", help="Where /metrics is served (loopback unless you say otherwise).")
@click.option("--netns", "-n", metavar="NAME|PID", help="Export another network namespace's table.")
@click.option("--top-k", type=click.IntRange(min=1, max=10000), default=20, show_default=True,
              metavar="K", help="Sources with series of their own; the rest are source=\"other\".")
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True, metavar="S",
              help="How often the kernel's counters are read.")
@click.option("--backend", type=click.Choice(["auto", "kprobe", "fentry", "tracepoint"]), default="auto",
              show_default=True)
@click.option("--ready-file", type=click.Path(dir_okay=False), metavar="PATH", hidden=True)
def serve(listen, netns, top_k, interval, backend, ready_file):
    """Export conntrack metrics for Prometheus at http://HOST:PORT/metrics:
    table entries and limit, the kernel's counters, drops by reason, inserts,
    deletes, drops and live entries per source and container (bounded to K+1
    series), events lost, backend and kernel.

    \b
    Examples:
      sudo cttrace serve                               # 127.0.0.1:9466
      sudo cttrace serve --listen 0.0.0.0:9466 --top-k 50
    """
    import platform
    import signal
    import threading

    from tracer import ctnetlink
    from tracer import netns as ns
    from tracer.attribution import Attribution
    from tracer.backends import make
    from tracer.backends.restricted import BackendError
    from tracer.serve import run
    from tracer.top import RowFilter, TopEngine

    name, why = _tracing_start("serve", netns, backend)
    names = Attribution()
    names.refresh()
    names.start()
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    engine = None
    try:
        try:
            engine = TopEngine(make(name, 2000), netns, RowFilter(), names)
            engine.be.start()
            engine.start()
        except (BackendError, ctnetlink.NetlinkError, ns.NetnsError) as e:
            abort(str(e))

        def ready():
            click.echo(f"cttrace: serving http://{listen[0]}:{listen[1]}/metrics (backend {name})", err=True)
            if ready_file:
                with open(ready_file, "w") as f:
                    f.write(f"{os.getpid()}\n")
        try:
            run(engine, listen, top_k, interval, stop, on_ready=ready, kernel=platform.release())
        except OSError as e:
            abort(f"cannot serve on {listen[0]}:{listen[1]}: {e.strerror or e}")
        except Exception as e:      # never a silent stale endpoint: fail loudly
            abort(f"the poll loop failed ({type(e).__name__}: {e}); exiting so that a supervisor restarts it")
    finally:
        _close_tracing(old, engine, names)
