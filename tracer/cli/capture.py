"""`cttrace capture`: record inserts, deletes, drops and the table's
counters, with the host's settings and rules, for `cttrace report`."""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import asdict

import click
from rich.progress import Progress

from tracer.cli import abort, say, session
from tracer.cli.options import backend_option, duration, netns_option, ready_file_option
from tracer.formats.capture import CaptureError, Writer
from tracer.live.recorder import Recorder
from tracer.live.session import Options, SessionError


@click.command()
@click.option("--output", "-o", required=True, metavar="FILE",
              help="The capture file (created mode 0600; never through a symbolic link).")
@click.option("--force", is_flag=True, help="Replace FILE if it exists (the new capture is renamed over it once complete).")
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
    opts = Options(backend=backend, rate=100000, netns=netns, entry_events=True, only_followed_netns=True,
                   ready_file=ready_file, ready_at_open=False)
    with session("capture", opts) as s:
        rec = Recorder(s, interval, netns or "host")
        try:
            w = Writer(output, {"created": time.time(), "host": platform.node(),
                                "kernel": platform.release(), "backend": s.backend.name,
                                "netns": netns or "host", "netns_inode": s.inum,
                                "interval": interval, "state": asdict(rec.host_state())},
                       overwrite=force)
        except CaptureError as e:
            abort(str(e))
        progress = _progress(length)
        try:
            rec.start(w)
            s.ready()
            rec.run(length, max_events, progress)
            rec.finish()
            w.close()                    # complete and synced: only now it takes FILE's name
        except SessionError as e:        # the ready-file
            w.discard()
            abort(str(e))
        except CaptureError as e:        # close(): the file is discarded, the old one untouched
            abort(str(e))
        except OSError as e:
            w.discard()
            kept = "the old file is unchanged" if force else "nothing was written"
            abort(f"cannot record to {output}: {e.strerror or e}; {kept}")
        except BaseException:
            w.discard()
            raise
        finally:
            if progress:
                progress(None, None)
        c = rec.counts
        say(f"{w.records:,} records written to {output} ({c['insert']:,} inserts, "
            f"{c['delete']:,} deletes, {c['drop']:,} drops)")


def _progress(total: float):
    """A transient progress bar on a terminal: update(done, counts); (None, None) ends it."""
    if not sys.stderr.isatty():
        return None
    p = Progress(transient=True)
    p.start()
    task = p.add_task("capturing", total=total)

    def update(done, counts):
        if done is None:
            p.stop()
        else:
            p.update(task, completed=done, description=f"inserts {counts['insert']:,} "
                     f"deletes {counts['delete']:,} drops {counts['drop']:,}")
    return update