"""A network namespace per notebook: the public Internet, and nothing private.

Each editor runs in a network namespace of its own, so it sees neither the
host's loopback (the broker, the database, the API, Flower, the metrics, other
notebooks' editors and kernels) nor the host's interfaces. A veth pair joins it
to the host: the notebook's end is `eth0` with one address of its own from
NBCLOUD_NOTEBOOK_ADDRESSES (100.64.0.0/10 by default), the host's end
`nbv<notebook>` holds the notebooks' gateway address 169.254.1.1. The host routes
and masquerades the notebook's traffic in the kernel, at the host's own speed.

The host's nftables (table `inet nbcloud`, loaded before each start, which
nothing inside a notebook can change) decide what may pass:
- from a notebook to the host itself (any of its addresses): nothing but the
  replies to the gateway's own connections;
- from a notebook onwards: new connections to the public Internet only, never to
  a private, shared, link-local, loopback or multicast range, another notebook, or
  NBCLOUD_NOTEBOOK_BLOCKED_NETWORKS (e.g. the host's LAN when it is public); DNS
  only to the resolvers the sandbox is given; never with another source address;
- into a notebook: only the host (the gateway) opens connections; nothing is
  forwarded in.
"""

import contextlib
import ipaddress
import logging
import subprocess
import time
from pathlib import Path

from django.conf import settings

from .base import StartError

log = logging.getLogger(__name__)

TABLE = "nbcloud"
NETNS_DIR = Path("/run/netns")
IFACE_PREFIX = "nbv"
GATEWAY = "169.254.1.1"  # the host's end of every notebook's veth pair
# The launcher's own environment: fixed, never the notebook's.
LAUNCH_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
BLOCKED_V4 = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # RFC 1918
    "100.64.0.0/10",  # carrier-grade NAT (RFC 6598), and the notebooks' own addresses
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, cloud metadata services
    "172.16.0.0/12",  # RFC 1918
    "192.0.0.0/24",  # IETF protocol assignments
    "192.168.0.0/16",  # RFC 1918
    "198.18.0.0/15",  # benchmarking
    "224.0.0.0/3",  # multicast and reserved, broadcast
)


def netns_name(notebook_id: str) -> str:
    return f"nbcloud-{notebook_id}"


def netns_path(notebook_id: str) -> Path:
    return NETNS_DIR / netns_name(notebook_id)


def iface_name(notebook_id: str) -> str:
    return IFACE_PREFIX + notebook_id.replace("-", "")[:12]  # at most 15 characters


def address_of(uid: int) -> str:
    """The notebook's address: its uid's place in the sandbox range, in the pool
    (settings make the pool at least as large as the range: uids are unique, so
    addresses are)."""
    pool = settings.NBCLOUD_NOTEBOOK_ADDRESSES
    return str(pool.network_address + (2 + uid - settings.NBCLOUD_SANDBOX_UID_BASE))


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, env=LAUNCH_ENV, capture_output=True, text=True, timeout=30, check=False, **kwargs
    )


def _must(argv: list[str], what: str, **kwargs) -> None:
    try:
        done = _run(argv, **kwargs)
    except FileNotFoundError as exc:
        raise StartError(
            "This host cannot give notebooks a network of their own.",
            f"{exc}; install iproute2 and nftables",
        ) from exc
    if done.returncode != 0:
        raise StartError(
            "This host cannot give notebooks a network of their own.",
            f"{what}: {' '.join(argv)}: {done.stderr.strip()}",
        )


def resolvers() -> list[str]:
    """The name servers notebooks use: NBCLOUD_NOTEBOOK_DNS, else the host's own
    that a namespace can reach (a loopback stub resolver is not one of them)."""
    if settings.NBCLOUD_NOTEBOOK_DNS:
        return list(settings.NBCLOUD_NOTEBOOK_DNS)
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    address = ipaddress.ip_address(parts[1].split("%")[0])
                    if address.version == 4 and not address.is_loopback:
                        found.append(str(address))
    return found


def resolv_conf() -> Path:
    """The sandbox's /etc/resolv.conf (world-readable, rewritten when it changes)."""
    path = settings.NBCLOUD_SANDBOX_DIR / "resolv.conf"
    text = "".join(f"nameserver {ns}\n" for ns in resolvers()) or "# no resolver\n"
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(path)
    return path


def ruleset() -> str:
    """The nftables table that keeps notebooks to the public Internet (atomic reload)."""
    extra = settings.NBCLOUD_NOTEBOOK_BLOCKED_NETWORKS
    v4 = [*BLOCKED_V4, *(str(n) for n in extra if n.version == 4)]
    pool = str(settings.NBCLOUD_NOTEBOOK_ADDRESSES)
    dns = resolvers()
    iface = f'"{IFACE_PREFIX}*"'

    def elements(items: list[str]) -> str:
        return f"elements = {{ {', '.join(items)} }}" if items else ""

    return f"""table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
  set blocked4 {{ type ipv4_addr; flags interval; auto-merge; {elements(v4)} }}
  set dns4 {{ type ipv4_addr; {elements(dns)} }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname {iface} ct state established,related accept
    iifname {iface} counter reject with icmpx admin-prohibited
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname {iface} jump from_notebook
    oifname {iface} ct state established,related accept
    oifname {iface} counter reject with icmpx admin-prohibited
  }}
  chain from_notebook {{
    fib saddr . iif oif missing counter drop
    meta nfproto ipv6 counter reject with icmpx admin-prohibited
    ct state established,related accept
    meta l4proto {{ tcp, udp }} th dport 53 ip daddr @dns4 accept
    ip daddr @blocked4 counter reject with icmpx admin-prohibited
    accept
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {pool} oifname != {iface} masquerade
  }}
}}
"""


# When this process last loaded the rules, and which: a start reloads them only
# when they changed or a few seconds have passed (the host's heartbeat reloads
# them too), so a flushed ruleset comes back within seconds.
_loaded: dict = {"rules": None, "at": 0.0}
RELOAD_AFTER = 5.0


def ensure_firewall(force: bool = False) -> None:
    """Load (or reload) the rules; a host that cannot enforce them starts no notebook."""
    rules = ruleset()
    if not force and _loaded["rules"] == rules and time.monotonic() - _loaded["at"] < RELOAD_AFTER:
        return
    try:
        done = _run(["nft", "-f", "-"], input=rules)
    except FileNotFoundError as exc:
        raise StartError(
            "This host cannot isolate notebooks' network (nftables is missing).",
            f"{exc}; install it with: apt-get install nftables",
        ) from exc
    if done.returncode != 0:
        raise StartError(
            "This host cannot isolate notebooks' network.", f"nft -f: {done.stderr.strip()}"
        )
    forwarding = Path("/proc/sys/net/ipv4/ip_forward")
    if forwarding.read_text().strip() != "1":
        log.warning("net.ipv4.ip_forward was 0: set to 1 so that notebooks reach the Internet")
        forwarding.write_text("1\n")
    _loaded.update(rules=rules, at=time.monotonic())


def check_uid_range() -> None:
    """The sandbox range must not hold the host's users nor the ids its user
    namespaces map (/etc/subuid, /etc/subgid): a notebook would share their files."""
    first = settings.NBCLOUD_SANDBOX_UID_BASE
    last = first + settings.NBCLOUD_SANDBOX_UID_COUNT - 1
    clashes = []
    for table in ("/etc/subuid", "/etc/subgid"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines():
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    start, count = int(parts[1]), int(parts[2])
                    if start <= last and first <= start + count - 1:
                        clashes.append(f"{table}: {line.strip()}")
    for table in ("/etc/passwd", "/etc/group"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines():
                parts = line.split(":")
                if len(parts) > 2 and parts[2].isdigit() and first <= int(parts[2]) <= last:
                    clashes.append(f"{table}: {parts[0]} ({parts[2]})")
    if clashes:
        raise StartError(
            "This host's sandbox uids are not its own; no notebook starts here.",
            f"NBCLOUD_SANDBOX_UID_BASE={first} + NBCLOUD_SANDBOX_UID_COUNT="
            f"{settings.NBCLOUD_SANDBOX_UID_COUNT} overlaps {'; '.join(clashes)}: "
            "move the range",
        )


def create(notebook_id: str, uid: int) -> dict:
    """A fresh namespace for the notebook, joined to the host (see `connect`).
    Returns the runtime state to keep: {"netns", "iface", "address"}."""
    name = netns_name(notebook_id)
    destroy({"netns": name, "iface": iface_name(notebook_id)})  # a previous run's, if any
    _must(["ip", "netns", "add", name], "making the namespace")
    try:
        return {"netns": name, **connect(notebook_id, name, uid)}
    except BaseException:
        destroy({"netns": name, "iface": iface_name(notebook_id)})
        raise


def check_uid(uid: int) -> None:
    first = settings.NBCLOUD_SANDBOX_UID_BASE
    if not first <= uid < first + settings.NBCLOUD_SANDBOX_UID_COUNT:
        raise StartError(
            "This notebook's uid is outside the sandbox range; it cannot be isolated.",
            f"uid {uid} is not in NBCLOUD_SANDBOX_UID_BASE={first} + "
            f"NBCLOUD_SANDBOX_UID_COUNT={settings.NBCLOUD_SANDBOX_UID_COUNT}",
        )
    check_uid_range()


def connect(notebook_id: str, netns: str, uid: int) -> dict:
    """Join the namespace `netns` (a name in /run/netns, or a process id) to the
    host with a veth pair and the notebook's own address. Returns {"iface", "address"}."""
    check_uid(uid)
    ensure_firewall()
    iface, address = iface_name(notebook_id), address_of(uid)
    if Path("/sys/class/net", iface).exists():  # a previous run's
        _run(["ip", "link", "delete", iface])
    # The address is the uid's, and uids are never shared: a link that holds it
    # still is left by an earlier run of this uid (a host that went down).
    holder = _run(["ip", "-o", "route", "show", f"{address}/32"]).stdout.split()
    if "dev" in holder:
        stale = holder[holder.index("dev") + 1]
        log.warning("removing %s, left holding notebook address %s", stale, address)
        _run(["ip", "link", "delete", stale])
    # One `ip` per side (a batch, one step a line): a start waits for these. The
    # host's end gets no IPv6 address (addrgenmode none): notebooks are IPv4 only.
    _must(
        ["ip", "-batch", "-"],
        "the host's end",
        input=f"link add {iface} type veth peer name eth0 netns {netns}\n"
        f"link set {iface} addrgenmode none\n"
        f"addr add {GATEWAY}/32 dev {iface}\n"
        f"link set {iface} up\n"
        f"route add {address}/32 dev {iface}\n",
    )
    inside = (
        ["nsenter", f"--net=/proc/{netns}/ns/net", "ip"] if netns.isdigit() else ["ip", "-n", netns]
    )
    _must(
        [*inside, "-batch", "-"],
        "the notebook's end",
        input=f"addr add {address}/32 dev eth0\n"
        "link set lo up\n"
        "link set eth0 up\n"
        f"route add {GATEWAY} dev eth0 scope link\n"
        f"route add default via {GATEWAY} dev eth0\n",
    )
    return {"iface": iface, "address": address}


def attached(state: dict) -> bool:
    return bool(state.get("iface")) and Path("/sys/class/net", state["iface"]).exists()


def enter_argv(notebook_id: str, argv: list[str]) -> list[str]:
    """`argv` run inside the notebook's namespace."""
    return ["nsenter", f"--net={netns_path(notebook_id)}", "--", *argv]


def destroy(state: dict) -> None:
    """Remove the veth pair and the namespace (nothing to do when they are gone)."""
    iface, name = state.get("iface"), state.get("netns")
    if iface and Path("/sys/class/net", iface).exists():
        _run(["ip", "link", "delete", iface])
    if name and (NETNS_DIR / name).exists():
        _run(["ip", "netns", "delete", name])
