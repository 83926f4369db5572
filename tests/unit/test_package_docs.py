"""The generated man pages: one per command, each with its examples and
every visible option, in roff that cannot run requests from help text."""

import importlib.util
import re
from pathlib import Path

import click

from tracer.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("package_docs", ROOT / "scripts" / "package_docs.py")
docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(docs)


def test_every_command_has_a_page_with_examples_and_options(tmp_path):
    written = {Path(p).name for p in docs.write_man(str(tmp_path))}
    assert written == {"cttrace.8"} | {f"cttrace-{c}.8" for c in COMMANDS}
    ctx = click.Context(main, info_name="cttrace")
    for c in COMMANDS:
        page = (tmp_path / f"cttrace-{c}.8").read_text()
        assert page.startswith(f".TH CTTRACE-{c.upper()} 8 ")
        examples = page.split(".SH EXAMPLES\n", 1)[1].split(".SH", 1)[0]
        assert f"cttrace {c}" in examples.replace("\\-", "-"), c
        cmd = main.get_command(ctx, c)
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                assert p.opts[-1].replace("-", "\\-") in page, (c, p.opts)
            if isinstance(p, click.Option) and p.hidden:
                assert p.opts[-1].replace("-", "\\-") not in page, (c, p.opts)


def test_help_text_cannot_inject_roff_requests():
    out = docs.roff(".so /etc/shadow\n'bp\nback\\slash")
    assert out.splitlines() == ["\\&.so /etc/shadow", "\\&'bp", "back\\eslash"]


def test_examples_are_split_from_the_description():
    paras, ex = docs.split_help("Do a thing.\n\n    More text here.\n\n    \b\n    Examples:\n"
                                "      cttrace x --y   # z\n      cttrace x\n")
    assert ex == ["cttrace x --y   # z", "cttrace x"]
    assert paras[0] == "Do a thing." and paras[1] == "More text here."


def test_date_is_the_source_date_epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert re.search(r'^\.TH CTTRACE 8 1970-01-01 "cttrace ', docs.page(None))
