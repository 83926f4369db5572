"""Shared option parsing for the commands: validators and composed
decorators, so that every command spells --backend, --netns, the filters
and --ready-file the same way."""

from __future__ import annotations

import ipaddress

import click

from tracer.backends import NAMES as BACKENDS
from tracer.core.conntrack import DCCP_STATES, SCTP_STATES, TCP_STATES, parse_proto
from tracer.formats.files import ReadyFileError, check_ready_file


def port_numbers(ctx, param, values):
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


def cidrs(ctx, param, values):
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise click.BadParameter(f"{v!r} is not an address or CIDR (e.g. 10.0.0.0/8)") from None
    return values


def protos(ctx, param, values):
    for v in values:
        try:
            parse_proto(v)
        except ValueError:
            raise click.BadParameter(f"{v!r} is not a protocol name or number (e.g. tcp, udp, 17)") from None
    return values


def states(ctx, param, values):
    known = set(TCP_STATES) | set(SCTP_STATES) | set(DCCP_STATES)
    for v in values:
        if v.upper() not in known:
            raise click.BadParameter(
                f"{v!r} is not a conntrack state (TCP: {', '.join(TCP_STATES)})")
    return values


def duration(ctx, param, value):
    """30s, 2m, 1h, 500ms or plain seconds."""
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
    if not secs > 0 or secs == float("inf"):
        raise click.BadParameter("must be a positive, finite duration")
    return secs


def listen_address(ctx, param, value):
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r}: expected HOST:PORT, e.g. 127.0.0.1:9466")
    return host.strip("[]") or "127.0.0.1", int(port)


def _compose(*decorators):
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


def backend_option(f):
    return click.option("--backend", type=click.Choice(("auto", *BACKENDS)), default="auto",
                        show_default=True,
                        help="Force a backend (auto: the best this kernel allows).")(f)


# --jobs: processes that split a big export. Each reads its share in 8 MiB
# blocks and holds its own counts; more than 64 never helped (the split is
# bound by the disk and by merging the parts), and each costs memory.
MAX_JOBS = 64


def rate_option(f):
    return click.option("--rate", type=click.IntRange(min=1), default=2000, show_default=True,
                        help="Most drop events per second and CPU sent to user space "
                             "(counts stay exact).")(f)


def ready_file(ctx, param, value):
    """A --ready-file that can be written, checked before any probe attaches."""
    if value is None:
        return None
    if not value:
        raise click.BadParameter("give a file name")
    try:
        check_ready_file(value)
    except ReadyFileError as e:
        raise click.BadParameter(str(e).removeprefix(f"--ready-file {value} ")) from None
    return value


def ready_file_option(hidden: bool = False):
    return click.option("--ready-file", callback=ready_file, metavar="PATH", hidden=hidden,
                        help="Write this file (our PID) once tracing has started (a new file renamed "
                             "over PATH: never through a symbolic link).")


def netns_option(help_: str = "The table of another network namespace (ip netns name, or a PID in it)."):
    return click.option("--netns", "-n", metavar="NAME|PID", help=help_)


def flow_filters(dst: bool = True):
    """--proto, --port, --src (and --dst): the filter of the tracing commands."""
    opts = [
        click.option("--proto", "-p", multiple=True, callback=protos,
                     help="Only this protocol (name or number); repeatable."),
        click.option("--port", multiple=True, callback=port_numbers, metavar="PORT",
                     help="Only packets/entries from or to this port; repeatable."),
        click.option("--src", multiple=True, callback=cidrs, metavar="CIDR",
                     help="Only original sources in CIDR; repeatable."),
    ]
    if dst:
        opts.append(click.option("--dst", multiple=True, callback=cidrs, metavar="CIDR",
                                 help="Only original destinations in CIDR; repeatable."))
    return _compose(*opts)


def tracing_options(f):
    """--backend and --rate: how the probes run."""
    return _compose(backend_option, rate_option)(f)
