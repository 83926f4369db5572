#!/usr/bin/env python3
"""The package's generated documents, made from the click commands at build
time so that they never drift from the program (debian/rules runs this):

    scripts/package_docs.py man DIR          cttrace.8 and cttrace-<command>.8
    scripts/package_docs.py completion DIR   bash/cttrace and zsh/_cttrace

A man page holds NAME, SYNOPSIS, DESCRIPTION (the command's help), OPTIONS
(every option that is not hidden, with its help), COMMANDS (the main page),
EXAMPLES (the lines after "Examples:" in the help: the same examples
`--help` shows) and SEE ALSO. The shell completions are click's own scripts
(`_CTTRACE_COMPLETE=bash_source cttrace`), which call cttrace back to
complete; nothing is written by hand. The date is SOURCE_DATE_EPOCH's
(set by dpkg-buildpackage from debian/changelog) for reproducible builds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import click

from tracer import __version__
from tracer.cli import COMMANDS, main

SECTION = "8"        # administration: most commands need root


def roff(text: str) -> str:
    """Text safe for roff: backslashes escaped, no line read as a request."""
    out = []
    for line in text.replace("\\", "\\e").split("\n"):
        line = line.replace("-", "\\-")
        if line.startswith((".", "'")):
            line = "\\&" + line
        out.append(line)
    return "\n".join(out)


def split_help(help_text: str) -> tuple[list[str], list[str]]:
    """(description paragraphs, example lines) of a command's help: the
    examples are the indented lines after an "Examples:" line."""
    lines = (help_text or "").expandtabs().split("\n")
    indent = min((len(l) - len(l.lstrip()) for l in lines[1:] if l.strip()), default=0)
    lines = [lines[0].strip()] + [l[indent:] for l in lines[1:]]
    examples, desc = [], lines
    for i, l in enumerate(lines):
        if l.strip() == "Examples:":
            desc, examples = lines[:i], [e.strip() for e in lines[i + 1:] if e.strip()]
            break
    paragraphs, cur = [], []
    for l in desc + [""]:
        if l.strip():
            cur.append(l)
        elif cur:
            paragraphs.append(cur)
            cur = []
    return ["\n".join(p) for p in paragraphs], examples


def _paragraph(p: str) -> list[str]:
    if p.startswith("\b"):          # click's "keep these lines as they are"
        body = p[1:].strip("\n")
        return [".PP", ".nf", roff("\n".join(l.strip() for l in body.split("\n"))), ".fi"]
    return [".PP", roff(" ".join(l.strip() for l in p.split("\n")))]


def page(name: str | None = None) -> str:
    """The man page of `cttrace` (name None) or of `cttrace NAME`."""
    root = click.Context(main, info_name="cttrace")
    cmd, ctx = main, root
    if name:
        cmd = main.get_command(root, name)
        ctx = click.Context(cmd, info_name=name, parent=root)
    title = ctx.command_path.replace(" ", "-")
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    paragraphs, examples = split_help(cmd.help)
    out = [f'.TH {title.upper()} {SECTION} {date} "cttrace {__version__}" "cttrace manual"',
           ".SH NAME", f"{title} \\- {roff(cmd.get_short_help_str(limit=200).rstrip('.'))}",
           ".SH SYNOPSIS", f".B {ctx.command_path}",
           roff(" ".join(cmd.collect_usage_pieces(ctx))),
           ".SH DESCRIPTION"]
    for p in paragraphs:
        out += _paragraph(p)
    opts = [p.get_help_record(ctx) for p in cmd.get_params(ctx)]
    opts = [o for o in opts if o]
    if opts:
        out.append(".SH OPTIONS")
        for switches, text in opts:
            out += [".TP", f"\\fB{roff(switches)}\\fR", roff(text)]
    if name is None:
        out.append(".SH COMMANDS")
        for c in COMMANDS:
            sub = main.get_command(root, c)
            out += [".TP", f"\\fB{c}\\fR",
                    f"{roff(sub.get_short_help_str(limit=200))} See \\fBcttrace\\-{c}\\fR({SECTION})."]
    if not examples:
        raise SystemExit(f"package_docs: {title}'s help has no 'Examples:' block")
    out += [".SH EXAMPLES", ".nf", roff("\n".join(examples)), ".fi"]
    others = ["cttrace"] + [f"cttrace-{c}" for c in COMMANDS]
    see = [f"\\fB{roff(o)}\\fR({SECTION})" for o in others if o != title]
    out += [".SH SEE ALSO", ", ".join(see + ["\\fBconntrack\\fR(8)"])]
    return "\n".join(out) + "\n"


def write_man(directory: str) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    written = []
    for name in (None, *COMMANDS):
        path = os.path.join(directory, f"cttrace{'-' + name if name else ''}.{SECTION}")
        with open(path, "w") as f:
            f.write(page(name))
        written.append(path)
    return written


def completion(shell: str) -> str:
    """click's completion script for SHELL (bash, zsh), as cttrace prints it."""
    env = dict(os.environ, _CTTRACE_COMPLETE=f"{shell}_source")
    code = "import sys; from tracer.cli import main; main(prog_name='cttrace')"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    if "_CTTRACE_COMPLETE" not in r.stdout:
        raise SystemExit(f"package_docs: no {shell} completion script from click: {r.stderr.strip()}")
    return r.stdout


def write_completion(directory: str) -> list[str]:
    written = []
    for shell, rel in (("bash", "bash/cttrace"), ("zsh", "zsh/_cttrace")):
        path = os.path.join(directory, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(completion(shell))
        written.append(path)
    return written


def cli(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("man", "completion"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    for p in (write_man if argv[0] == "man" else write_completion)(argv[1]):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
