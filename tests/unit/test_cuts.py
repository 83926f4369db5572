"""Who a fix cuts: grouped by application, then sources and their
covering prefixes; through `doctor --file` on an export whose content the
test makes (3,000 idle PostgreSQL clients from 3,000 addresses)."""

import ipaddress
import json
import random

import pytest

from tests.clirunner import runner

from tests.unit.test_doctor_export import tcp
from tracer.cli import main as cli
from tracer.core import cuts, schema
from tracer.core.doctor import SEVERITIES


def test_prefixes_exact_dense_and_bounded():
    base = ipaddress.ip_address("10.1.0.0")
    assert cuts.prefixes([str(base + i) for i in range(1, 3001)]) == ["10.1.0.0/20"]
    # far apart and sparse: each stays itself
    assert cuts.prefixes(["10.0.0.1", "192.168.1.5", "::1", "not an address"]) == \
        ["10.0.0.1/32", "192.168.1.5/32", "::1/128"]
    # two clusters: two prefixes, each as tight as its addresses
    a = [f"10.2.{i}.{j}" for i in range(4) for j in range(256)] + ["172.16.0.7"]
    assert cuts.prefixes(a) == ["10.2.0.0/22", "172.16.0.7/32"]
    # bounded: many scattered addresses give at most MAX_PREFIXES per family, covering all
    rnd = random.Random(3)
    many = [str(ipaddress.ip_address(rnd.getrandbits(32))) for _ in range(10_000)]
    got = [ipaddress.ip_network(p) for p in cuts.prefixes(many)]
    assert 1 <= len(got) <= cuts.MAX_PREFIXES
    assert all(any(ipaddress.ip_address(x) in n for n in got) for x in many)


def test_group_orders_applications_then_sources():
    g = cuts.group([("10.0.0.1", "udp/53", 5), ("10.0.0.2", "udp/53", 1), ("10.0.0.9", "tcp/443", 2),
                    ("10.0.0.1", "udp/53", 1)])
    assert [x["app"] for x in g] == ["udp/53", "tcp/443"]
    assert g[0] == {"app": "udp/53", "entries": 7, "sources": 2, "prefixes": ["10.0.0.0/30"],
                    "top_sources": [{"src": "10.0.0.1", "entries": 6}, {"src": "10.0.0.2", "entries": 1}],
                    "other_sources": 0}
    # as a capture records it: read back through the schema (tracer/core/schema.py)
    assert schema.check(json.loads(json.dumps(g)), cuts.Cuts) == g
    for bad in ([{"app": 1}], ["x"], [{**g[0], "entries": -1}]):
        with pytest.raises(schema.Invalid):
            schema.check(bad, cuts.Cuts)


def test_postgres_clients_export(tmp_path):
    """3,000 ESTABLISHED PostgreSQL clients idle 2 h, one per address
    10.1.0.1-10.1.11.184, and 50 busy HTTPS flows from one address: a
    shorter established timeout cuts tcp/5432 and its 3,000 sources."""
    base = ipaddress.ip_address("10.1.0.0")
    lines = [tcp("proc", 432000 - 7200, "ESTABLISHED", str(base + i), 40000, "10.9.0.5", 5432)
             for i in range(1, 3001)]
    lines += [tcp("proc", 432000 - 5, "ESTABLISHED", "10.3.0.2", 30000 + i, "10.9.0.6", 443) for i in range(50)]
    random.Random(5).shuffle(lines)
    f = tmp_path / "pg.txt"
    f.write_text("\n".join(lines) + "\n")
    r = runner().invoke(cli, ["doctor", "--file", str(f), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    sev = [x["severity"] for x in out["findings"]]
    assert sev == sorted(sev, key=SEVERITIES.index)
    f = {x["id"]: x for x in out["findings"]}["shorter_tcp_timeout_established"]
    assert f["cuts"][0] == {"app": "tcp/5432", "entries": 3000, "sources": 3000, "prefixes": ["10.1.0.0/20"],
                            "top_sources": f["cuts"][0]["top_sources"], "other_sources": 2997}
    assert len(f["cuts"]) == 1                      # the busy HTTPS flows are not cut
    assert "tcp/5432: 3,000 entries from 3,000 sources in 10.1.0.0/20" in f["evidence"]
    # the text view says the same, in that order
    t = runner().invoke(cli, ["doctor", "--file", str(tmp_path / "pg.txt")])
    assert t.exit_code == 0, t.output
    lines = [x.strip("│ ") for x in t.stdout.splitlines()]
    assert "who it cuts:" in lines
    i = lines.index("tcp/5432: 3,000 entries from 3,000 sources in 10.1.0.0/20")
    assert lines[i + 1].startswith("most: 10.1.0.") and lines[i + 1].endswith("and 2,997 more")
