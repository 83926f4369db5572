"""`cttrace features`: what this kernel and BCC offer, found by trying."""

from __future__ import annotations

import json

import click
from tracer.backends import choose
from tracer.backends.kprobe import fentry_status
from tracer.kernel import features as feat


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as one JSON object.")
@click.option("--quick", is_flag=True, help="Skip the checks that compile and load programs.")
def features(as_json, quick):
    """What this kernel and BCC offer cttrace, found by trying each feature.

    \b
    Examples:
      sudo cttrace features
      sudo cttrace features --quick --json      # no compile, for scripts
    """
    f = feat.detect(full=not quick)
    backend, why = choose(f)
    try:
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
