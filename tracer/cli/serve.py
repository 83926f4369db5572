"""`cttrace serve`: a Prometheus exporter (tracer/live/exporter.py) on a session."""

from __future__ import annotations

import platform

import click

from tracer.cli import abort, say, session
from tracer.cli.options import listen_address, netns_option, ready_file_option, tracing_options
from tracer.live.exporter import run
from tracer.live.session import Options, SessionError


@click.command()
@click.option("--listen", default="127.0.0.1:9466", show_default=True, callback=listen_address,
              metavar="HOST:PORT", help="Where /metrics is served (loopback unless you say otherwise).")
@netns_option("Export another network namespace's table.")
@click.option("--top-k", type=click.IntRange(min=1, max=10000), default=20, show_default=True,
              metavar="K", help="Sources with series of their own; the rest are source=\"other\".")
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True, metavar="S",
              help="How often the per-source counters are folded into the series.")
@ready_file_option(hidden=True)
@tracing_options
def serve(listen, netns, top_k, interval, ready_file, backend, rate):
    """Export conntrack metrics for Prometheus at http://HOST:PORT/metrics:
    table entries and limit, the kernel's counters, drops by reason, inserts,
    deletes, drops and live entries per source and container (bounded to K+1
    series), events lost, backend and kernel.

    \b
    Examples:
      sudo cttrace serve                               # 127.0.0.1:9466
      sudo cttrace serve --listen 0.0.0.0:9466 --top-k 50
    """
    opts = Options(backend=backend, rate=rate, netns=netns, follow_entries=True, only_followed_netns=True,
                   ready_file=ready_file, ready_at_open=False)
    with session("serve", opts) as s:
        def ready():                 # once listening
            say(f"serving http://{listen[0]}:{listen[1]}/metrics (backend {s.backend.name})")
            try:
                s.ready()
            except SessionError as e:
                abort(str(e))
        try:
            run(s, listen, top_k, interval, on_ready=ready, kernel=platform.release())
        except OSError as e:
            abort(f"cannot serve on {listen[0]}:{listen[1]}: {e.strerror or e}")
        except Exception as e:      # never a silent stale endpoint: fail loudly
            abort(f"the poll loop failed ({type(e).__name__}: {e}); exiting so that a supervisor "
                  "restarts it")
