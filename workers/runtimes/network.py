"""A network namespace per notebook: the public Internet, and nothing private.

Each editor runs in a network namespace of its own (`ip netns`), so it sees
neither the host's loopback (the broker, the database, the API, Flower, the
metrics, other notebooks' editors and kernels) nor its interfaces. pasta
(Debian package `passt`) connects the namespace to the outside: it relays the
namespace's connections through ordinary sockets of the host, and it forwards
exactly one port of the host's loopback, the editor's, into the namespace, so
that only the gateway (on the host) reaches the editor.

pasta runs as the notebook's uid, so every socket it opens on the notebook's
behalf carries that uid. The host's nftables (table `inet nbcloud`, which
nothing inside a notebook can change) reject every new connection from a
sandbox uid to an address of the host itself or of a private, shared,
link-local, loopback or multicast range (NBCLOUD_NOTEBOOK_BLOCKED_NETWORKS adds
more, e.g. the host's own LAN when it is public), except DNS to the resolvers
the sandbox is given.
"""

import contextlib
import ipaddress
import logging
import os
import stat
import subprocess
import time
from pathlib import Path

import psutil
from django.conf import settings

from .base import StartError

log = logging.getLogger(__name__)

TABLE = "nbcloud"
NETNS_DIR = Path("/run/netns")
# The launcher's own environment: fixed, never the notebook's.
LAUNCH_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
BLOCKED_V4 = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # RFC 1918
    "100.64.0.0/10",  # carrier-grade NAT (RFC 6598)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, cloud metadata services
    "172.16.0.0/12",  # RFC 1918
    "192.0.0.0/24",  # IETF protocol assignments
    "192.168.0.0/16",  # RFC 1918
    "198.18.0.0/15",  # benchmarking
    "224.0.0.0/3",  # multicast and reserved, broadcast
)
BLOCKED_V6 = (
    "::/127",  # unspecified, loopback
    "::ffff:0:0/96",  # IPv4-mapped: the IPv4 rules decide
    "64:ff9b:1::/48",  # local-use NAT64
    "100::/64",  # discard
    "fc00::/7",  # unique local (ULA)
    "fe80::/10",  # link-local
    "ff00::/8",  # multicast
)
PASTA_CAPS = "+sys_admin,+net_admin"


def netns_name(notebook_id: str) -> str:
    return f"nbcloud-{notebook_id}"


def netns_path(notebook_id: str) -> Path:
    return NETNS_DIR / netns_name(notebook_id)


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, env=LAUNCH_ENV, capture_output=True, text=True, timeout=30, check=False, **kwargs
    )


def resolvers() -> list[str]:
    """The name servers notebooks use: NBCLOUD_NOTEBOOK_DNS, else the host's own
    that a namespace can reach (a loopback stub resolver is not one of them)."""
    configured = settings.NBCLOUD_NOTEBOOK_DNS
    if configured:
        return list(configured)
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    if not ipaddress.ip_address(parts[1].split("%")[0]).is_loopback:
                        found.append(parts[1])
    return found


def resolv_conf() -> Path:
    """The sandbox's /etc/resolv.conf (written once per worker; world-readable)."""
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
    """The nftables table that keeps sandbox uids to public addresses (atomic reload)."""
    first = settings.NBCLOUD_SANDBOX_UID_BASE
    last = first + settings.NBCLOUD_SANDBOX_UID_COUNT - 1
    extra = settings.NBCLOUD_NOTEBOOK_BLOCKED_NETWORKS
    v4 = [*BLOCKED_V4, *(str(n) for n in extra if n.version == 4)]
    v6 = [*BLOCKED_V6, *(str(n) for n in extra if n.version == 6)]
    dns = [ipaddress.ip_address(ns.split("%")[0]) for ns in resolvers()]
    dns4 = [str(a) for a in dns if a.version == 4]
    dns6 = [str(a) for a in dns if a.version == 6]

    def elements(items: list[str]) -> str:
        return f"elements = {{ {', '.join(items)} }}" if items else ""

    return f"""table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
  set blocked4 {{ type ipv4_addr; flags interval; auto-merge; {elements(v4)} }}
  set blocked6 {{ type ipv6_addr; flags interval; auto-merge; {elements(v6)} }}
  set dns4 {{ type ipv4_addr; {elements(dns4)} }}
  set dns6 {{ type ipv6_addr; {elements(dns6)} }}
  chain output {{
    type filter hook output priority filter; policy accept;
    meta skuid {first}-{last} jump sandbox
  }}
  chain sandbox {{
    ct state established,related accept
    meta l4proto {{ tcp, udp }} th dport 53 ip daddr @dns4 accept
    meta l4proto {{ tcp, udp }} th dport 53 ip6 daddr @dns6 accept
    fib daddr type {{ local, broadcast, multicast, anycast }} counter reject with icmpx admin-prohibited
    ip daddr @blocked4 counter reject with icmpx admin-prohibited
    ip6 daddr @blocked6 counter reject with icmpx admin-prohibited
  }}
}}
"""


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


def ensure_firewall() -> None:
    """Load (or reload) the rules; a host that cannot enforce them starts no notebook."""
    try:
        done = _run(["nft", "-f", "-"], input=ruleset())
    except FileNotFoundError as exc:
        raise StartError(
            "This host cannot isolate notebooks' network (nftables is missing).",
            f"{exc}; install it with: apt-get install nftables",
        ) from exc
    if done.returncode != 0:
        raise StartError(
            "This host cannot isolate notebooks' network.",
            f"nft -f failed: {done.stderr.strip()}",
        )


def _tun_usable() -> None:
    """pasta, running as the notebook's uid, opens /dev/net/tun: the device's usual
    mode is 0666 (opening it grants nothing; making an interface needs privileges)."""
    tun = Path("/dev/net/tun")
    try:
        mode = tun.stat().st_mode
    except FileNotFoundError as exc:
        raise StartError(
            "This host cannot give notebooks a network (/dev/net/tun is missing).",
            "load the tun module: modprobe tun",
        ) from exc
    if stat.S_IMODE(mode) & 0o006 != 0o006:
        log.warning("/dev/net/tun was mode %o: set to 0666, its usual mode", stat.S_IMODE(mode))
        tun.chmod(0o666)


def _process(pid: int | None, create_time: float | None) -> psutil.Process | None:
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        if create_time and abs(proc.create_time() - create_time) > 1:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return None
        return proc
    except psutil.NoSuchProcess:
        return None


def relay_running(state: dict) -> bool:
    return _process(state.get("pasta_pid"), state.get("pasta_create_time")) is not None


def create(notebook_id: str, uid: int, port: int, log_path: Path) -> dict:
    """A fresh namespace for the notebook, connected through pasta (see `connect`).
    Returns the runtime state to keep: {"netns", "pasta_pid", "pasta_create_time"}."""
    ensure_firewall()
    name = netns_name(notebook_id)
    if netns_path(notebook_id).exists():  # left by a host that went down
        _run(["ip", "netns", "delete", name])
    done = _run(["ip", "netns", "add", name])
    if done.returncode != 0:
        raise StartError(
            "This host cannot give notebooks a network namespace.",
            f"ip netns add {name}: {done.stderr.strip()}",
        )
    try:
        return {"netns": name, **connect(netns_path(notebook_id), uid, port, log_path)}
    except BaseException:
        destroy({"netns": name})
        raise


def connect(netns: Path, uid: int, port: int, log_path: Path) -> dict:
    """Connect the namespace at `netns` (a /run/netns file, or a process's
    /proc/<pid>/ns/net) to the outside through pasta running as `uid`, with host
    127.0.0.1:`port` forwarded to the namespace's 127.0.0.1:`port`. Returns
    {"pasta_pid", "pasta_create_time"}."""
    first = settings.NBCLOUD_SANDBOX_UID_BASE
    if not first <= uid < first + settings.NBCLOUD_SANDBOX_UID_COUNT:
        raise StartError(
            "This notebook's uid is outside the sandbox range; it cannot be isolated.",
            f"uid {uid} is not in NBCLOUD_SANDBOX_UID_BASE={first} + "
            f"NBCLOUD_SANDBOX_UID_COUNT={settings.NBCLOUD_SANDBOX_UID_COUNT}",
        )
    check_uid_range()
    ensure_firewall()
    _tun_usable()
    argv = [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        f"--inh-caps={PASTA_CAPS}",
        f"--ambient-caps={PASTA_CAPS}",
        "pasta",
        "--foreground",
        "--quiet",
        "--config-net",
        "--netns",
        str(netns),
        # Only the editor's port comes in, on the host's loopback; nothing of the
        # host's loopback goes out (pasta's defaults forward every bound port both
        # ways), and the gateway address is not mapped to the host.
        "--tcp-ports",
        f"127.0.0.1/{port}",
        "--udp-ports",
        "none",
        "--tcp-ns",
        "none",
        "--udp-ns",
        "none",
        "--no-map-gw",
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        try:
            proc = psutil.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=LAUNCH_ENV,
                cwd="/",
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise StartError(
                "This host cannot give notebooks a network (pasta is missing).",
                f"{exc}; install it with: apt-get install passt",
            ) from exc
    state = {"pasta_pid": proc.pid, "pasta_create_time": proc.create_time()}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(
                "This host could not connect the notebook's network.",
                f"pasta exited with status {proc.returncode}; see {log_path}",
            )
        addresses = _run(
            ["nsenter", f"--net={netns}", "ip", "-4", "-o", "addr", "show", "scope", "global"]
        )
        if addresses.stdout.strip() and _listening(proc, port):
            return state
        time.sleep(0.02)
    destroy(state)
    raise StartError("This host could not connect the notebook's network in time.", str(netns))


def _listening(proc: psutil.Process, port: int) -> bool:
    with contextlib.suppress(psutil.Error):
        return any(c.laddr and c.laddr.port == port for c in proc.net_connections("tcp"))
    return False


def enter_argv(notebook_id: str, argv: list[str]) -> list[str]:
    """`argv` run inside the notebook's namespace."""
    return ["nsenter", f"--net={netns_path(notebook_id)}", "--", *argv]


def destroy(state: dict) -> None:
    """Stop the relay and remove the namespace (nothing to do when they are gone)."""
    proc = _process(state.get("pasta_pid"), state.get("pasta_create_time"))
    if proc is not None:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
            try:
                proc.wait(5)
            except psutil.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    name = state.get("netns")
    if name and (NETNS_DIR / name).exists():
        _run(["ip", "netns", "delete", name])
