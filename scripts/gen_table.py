#!/usr/bin/env python3
"""Generate a realistic conntrack table export for benchmarks.

Usage: scripts/gen_table.py [--lines N] [--format proc|extended|default] [--seed S] > FILE

The mix follows a busy container host: most entries come from a few hundred
container addresses (10.x) NATed towards a few thousand peers; TCP in
ESTABLISHED and TIME_WAIT dominates, then UDP (DNS, VXLAN), SYN_SENT to dead
peers, a little ICMP and IPv6, a zone and marks.  Line shapes are the exact
ones the kernel (/proc/net/nf_conntrack) and conntrack-tools print.
"""
import argparse
import random
import sys

TCP_STATES = (["ESTABLISHED"] * 50 + ["TIME_WAIT"] * 30 + ["SYN_SENT"] * 6 +
              ["CLOSE_WAIT"] * 4 + ["FIN_WAIT"] * 3 + ["LAST_ACK"] * 2 +
              ["SYN_RECV"] * 2 + ["CLOSE"] * 3)
TIMEOUT = {"ESTABLISHED": 431999, "TIME_WAIT": 119, "SYN_SENT": 119, "CLOSE_WAIT": 59,
           "FIN_WAIT": 119, "LAST_ACK": 29, "SYN_RECV": 59, "CLOSE": 9}


def v6_proc(addr_bytes):
    return ":".join(addr_bytes[i:i + 2].hex() for i in range(0, 16, 2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--format", choices=("proc", "extended", "default"), default="proc")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    sources = [f"10.{rnd.randrange(0, 4)}.{rnd.randrange(0, 256)}.{rnd.randrange(2, 255)}" for _ in range(400)]
    peers = [f"{rnd.randrange(11, 223)}.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}" for _ in range(3000)]
    hot_peers = peers[:40]
    ports = [443] * 30 + [80] * 15 + [8080] * 5 + [5432] * 5 + [6379] * 5 + [3306] * 3 + [9092] * 2
    node = "192.168.10.5"
    v6src = [bytes.fromhex("fd00000000000000000000000000%04x" % rnd.randrange(1, 0xffff)) for _ in range(50)]
    v6dst = [bytes.fromhex("20010db8%024x" % rnd.randrange(1, 1 << 40)) for _ in range(200)]
    out = sys.stdout
    proc = a.format == "proc"
    ext = a.format in ("proc", "extended")
    buf = []
    for i in range(a.lines):
        r = rnd.random()
        mark = "0" if rnd.random() < 0.9 else str(rnd.choice((1, 0x4000, 42)))
        zone = " zone=%d" % (0 if rnd.random() < 0.97 else 5) if proc else ("" if rnd.random() < 0.97 else " zone=5")
        use = "use=2" if proc else "use=1"
        if r < 0.80:
            st = rnd.choice(TCP_STATES)
            src = rnd.choice(sources)
            dst = rnd.choice(hot_peers) if rnd.random() < 0.6 else rnd.choice(peers)
            dport = rnd.choice(ports)
            sport = rnd.randrange(32768, 61000)
            unrep = st in ("SYN_SENT",)
            flags = " [ASSURED]" if st in ("ESTABLISHED", "TIME_WAIT", "CLOSE_WAIT", "FIN_WAIT", "LAST_ACK", "CLOSE") else ""
            head = ("ipv4     2 " if ext else "") + f"tcp      6 {TIMEOUT[st]} {st} "
            line = (f"{head}src={src} dst={dst} sport={sport} dport={dport} "
                    f"{'[UNREPLIED] ' if unrep else ''}src={dst} dst={node} sport={dport} dport={sport}"
                    f"{flags} mark={mark}{zone} {use}")
        elif r < 0.95:
            src = rnd.choice(sources)
            if rnd.random() < 0.7:
                dst, dport = "10.96.0.10", 53
            else:
                dst, dport = rnd.choice(peers), rnd.choice((4789, 123, 514, 8125))
            sport = rnd.randrange(32768, 61000)
            unrep = rnd.random() < 0.3
            head = ("ipv4     2 " if ext else "") + f"udp      17 {rnd.randrange(1, 180)} "
            line = (f"{head}src={src} dst={dst} sport={sport} dport={dport} "
                    f"{'[UNREPLIED] ' if unrep else ''}src={dst} dst={node} sport={dport} dport={sport}"
                    f"{'' if unrep else ' [ASSURED]'} mark={mark}{zone} {use}")
        elif r < 0.97:
            src, dst = rnd.choice(sources), rnd.choice(peers)
            ident = rnd.randrange(65536)
            head = ("ipv4     2 " if ext else "") + f"icmp     1 {rnd.randrange(1, 30)} "
            line = (f"{head}src={src} dst={dst} type=8 code=0 id={ident} "
                    f"src={dst} dst={node} type=0 code=0 id={ident} mark={mark}{zone} {use}")
        else:
            s, d = rnd.choice(v6src), rnd.choice(v6dst)
            import ipaddress
            if proc:
                ss, dd = v6_proc(s), v6_proc(d)
            else:
                ss, dd = str(ipaddress.IPv6Address(s)), str(ipaddress.IPv6Address(d))
            sport = rnd.randrange(32768, 61000)
            head = ("ipv6     10 " if ext else "") + "tcp      6 431999 ESTABLISHED "
            line = (f"{head}src={ss} dst={dd} sport={sport} dport=443 src={dd} dst={ss} sport=443 dport={sport}"
                    f" [ASSURED] mark={mark}{zone} {use}")
        buf.append(line)
        if len(buf) >= 10000:
            out.write("\n".join(buf) + "\n")
            buf.clear()
    if buf:
        out.write("\n".join(buf) + "\n")


if __name__ == "__main__":
    main()
