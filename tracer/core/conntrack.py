"""Names and numbers of the conntrack world, shared by every reader.

The values here are kernel UAPI (stable ABI), not struct layouts, so writing
them down is safe:
- protocol numbers: IANA / <netinet/in.h>;
- TCP states: enum tcp_conntrack, include/uapi/linux/netfilter/nf_conntrack_tcp.h
  (names as printed by net/netfilter/nf_conntrack_proto_tcp.c tcp_conntrack_names);
- SCTP states: enum sctp_conntrack, include/uapi/linux/netfilter/nf_conntrack_sctp.h;
- DCCP states: enum ct_dccp_states, include/uapi/linux/netfilter/nf_conntrack_common.h;
- status bits: enum ip_conntrack_status, include/uapi/linux/netfilter/nf_conntrack_common.h.
"""

from __future__ import annotations

import socket

PROTO_NAMES = {
    1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 47: "gre", 58: "icmpv6",
    132: "sctp", 136: "udplite",
}
PROTO_NUMBERS = {name: num for num, name in PROTO_NAMES.items()}
# Protocols whose tuple carries ports (sport/dport).
PORT_PROTOS = frozenset((6, 17, 33, 132, 136))

# Columns of a table reader's raw rows (snapshot.py) and of ctnetlink rows,
# which add the source port as an eighth column.
PROTO, STATE, SRC, DST, DPORT, EXTRA1, EXTRA2, SPORT = range(8)

TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT",
              "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2")
SCTP_STATES = ("NONE", "CLOSED", "COOKIE_WAIT", "COOKIE_ECHOED", "ESTABLISHED",
               "SHUTDOWN_SENT", "SHUTDOWN_RECD", "SHUTDOWN_ACK_SENT",
               "HEARTBEAT_SENT", "HEARTBEAT_ACKED")
DCCP_STATES = ("NONE", "REQUEST", "RESPOND", "PARTOPEN", "OPEN", "CLOSEREQ",
               "CLOSING", "TIMEWAIT", "IGNORE", "INVALID")
STATE_NAMES = {6: TCP_STATES, 132: SCTP_STATES, 33: DCCP_STATES}

# enum ip_conntrack_status bits
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_OFFLOAD = 1 << 14
IPS_HW_OFFLOAD = 1 << 15

# The flags shown by /proc/net/nf_conntrack and conntrack(8), as bits of our own.
F_ASSURED, F_UNREPLIED, F_OFFLOAD, F_HW_OFFLOAD = 1, 2, 4, 8
FLAG_NAMES = {F_ASSURED: "ASSURED", F_UNREPLIED: "UNREPLIED",
              F_OFFLOAD: "OFFLOAD", F_HW_OFFLOAD: "HW_OFFLOAD"}
FLAG_BITS = {name: bit for bit, name in FLAG_NAMES.items()}


def proto_name(num: int) -> str:
    """'tcp' for 6; the number itself for protocols conntrack has no name for."""
    return PROTO_NAMES.get(num) or str(num)


def parse_proto(text: str) -> int:
    """A protocol given by name ('tcp') or number ('6'); ValueError otherwise."""
    t = text.strip().lower()
    if t.isdigit() and 0 <= int(t) <= 255:
        return int(t)
    if t in PROTO_NUMBERS:
        return PROTO_NUMBERS[t]
    try:
        return socket.getprotobyname(t)
    except OSError:
        raise ValueError(f"unknown protocol {text!r}") from None


def canonical_addr(text: str) -> tuple[str, str] | None:
    """(family, canonical text) of an IPv4/IPv6 address, or None if invalid.

    /proc/net/nf_conntrack prints IPv6 in full (0000:...:0001); conntrack(8)
    prints it compressed. Both become inet_ntop's form (::1), the same form
    the netlink reader produces from raw bytes.
    """
    if ":" in text:
        try:
            return "ipv6", socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))
        except (OSError, ValueError):
            return None
    try:
        packed = socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        return None
    return "ipv4", socket.inet_ntop(socket.AF_INET, packed)
