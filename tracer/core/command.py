"""Shell commands that operators paste, built from validated values.

A fix names addresses, chains, interfaces and whole firewall rules that
came from elsewhere: a capture made on another host, or the rules inside
a namespace a tenant controls. Nothing from there is pasted into a
command as text: each value is parsed (an ipaddress, an int, a name of a
known grammar), every argument goes through shlex.quote, and a value that
does not validate gives no command, only a comment saying why (Unsafe).
Comments (`# ...` lines) show such text with control characters escaped,
so a newline cannot end the comment and start a command.
"""

from __future__ import annotations

import ipaddress
import re
import shlex

# iptables chain names: at most 28 characters (XT_EXTENSION_MAXNAMELEN - 1,
# include/uapi/linux/netfilter/x_tables.h); nft's may be longer
# (NFT_NAME_MAXLEN 256). Real chains (POSTROUTING, KUBE-POSTROUTING,
# cali-nat-outgoing, DOCKER) use letters, digits, '_', '-' and '.'.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,255}")
# An interface name: at most 15 bytes (IFNAMSIZ - 1, include/uapi/linux/if.h);
# iptables and nft also accept a trailing '+' / '*' wildcard.
_IFNAME = re.compile(r"[A-Za-z0-9_.@-]{1,15}[+*]?")
_CTRL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
NFT_FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")


class Unsafe(ValueError):
    """A value that cannot go into a command; the message says why."""


def comment(value) -> str:
    """`value` for a `# ...` line: control characters as \\xNN."""
    return _CTRL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def name(value, what: str = "name") -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise Unsafe(f"the {what} {comment(value)[:60]!r} is not a plain name (letters, digits, _ . -)")
    return value


def ifname(value) -> str:
    if not isinstance(value, str) or not _IFNAME.fullmatch(value):
        raise Unsafe(f"the interface name {comment(value)[:60]!r} is not a plain interface name")
    return value


def address(value, what: str = "address") -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """`value` parsed as an IPv4/IPv6 address (no scope, no prefix)."""
    try:
        if not isinstance(value, str) or "%" in value:
            raise ValueError
        return ipaddress.ip_address(value)
    except ValueError:
        raise Unsafe(f"the {what} {comment(value)[:60]!r} is not an IP address") from None


def integer(value, lo: int, hi: int, what: str = "number") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise Unsafe(f"the {what} {comment(value)[:30]!r} is not a whole number in {lo}-{hi}")
    return value


def printable(value: str, what: str = "rule") -> str:
    """`value` if it holds no control character (a newline in an argument
    would make a pasted command span lines)."""
    if _CTRL.search(value):
        raise Unsafe(f"the {what} holds a control character")
    return value


def has_control(value: str) -> bool:
    return bool(_CTRL.search(value))


def join(argv) -> str:
    """One command line: every argument shell-quoted (shlex.quote)."""
    return " ".join(shlex.quote(str(a)) for a in argv)


def no_command(why: str, what: str) -> str:
    """The comment given instead of a command."""
    return f"# no command for {comment(what)}: {comment(why)}"
