"""Hosts on one machine for multi-host tests: Linux network namespaces,
each with a veth pair into a bridge in the root namespace, so DDS discovery
and traffic cross real interfaces (multicast over the bridge, unicast UDP;
shared memory off). A host's link is cut by taking its bridge-side veth
down. Needs root (CAP_NET_ADMIN) and iproute2."""
import os
import shutil
import subprocess


def available():
    """Why namespaces cannot be made here (None: they can)."""
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) for network namespaces"
    return None


def sh(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Net:
    """A bridge and hosts on 10.<net>.0.0/24."""

    def __init__(self, tag, net):
        self.tag, self.net, self.hosts = tag, net, []
        self.bridge = f"fb{tag}"
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        sh("link", "add", self.bridge, "type", "bridge")
        # no IGMP snooping: multicast (DDS discovery) floods to every port
        sh("link", "set", self.bridge, "type", "bridge", "mcast_snooping", "0")
        sh("link", "set", self.bridge, "up")

    def host(self, name):
        h = Host(self, name, len(self.hosts) + 1)
        self.hosts.append(h)
        return h

    def close(self):
        for h in self.hosts:
            h.close()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class Host:
    def __init__(self, net, name, index):
        self.name = name
        self.ns = f"fp{net.tag}{name}"
        self.veth = f"v{net.tag}{index}"  # bridge side (≤ 15 characters)
        self.addr = f"10.{net.net}.0.{index}"
        # leftovers of a run that was killed before its clean-up
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        sh("netns", "add", self.ns)
        sh("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        sh("link", "set", self.veth, "master", net.bridge, "up")
        sh("-n", self.ns, "addr", "add", f"{self.addr}/24", "dev", "eth0")
        sh("-n", self.ns, "link", "set", "eth0", "up")
        sh("-n", self.ns, "link", "set", "lo", "up")
        # multicast (SPDP discovery) leaves through eth0
        sh("-n", self.ns, "route", "add", "default", "dev", "eth0")

    def env(self, domain, **extra):
        """The environment for a ROS process on this host: DDS over UDP on
        the host's interfaces (no shared memory across hosts)."""
        e = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="SUBNET",
                 FASTDDS_BUILTIN_TRANSPORTS="UDPv4", RUST_LOG="info")
        e.update(extra)
        return e

    def popen(self, args, domain, log, **kw):
        return subprocess.Popen(["ip", "netns", "exec", self.ns, *args], env=self.env(domain),
                                stdout=log, stderr=subprocess.STDOUT, **kw)

    def link(self, up):
        sh("link", "set", self.veth, "up" if up else "down")

    def close(self):
        out = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True).stdout
        for pid in out.split():
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


# --- Random packet loss (nf_tables), for tests/ros/test_estop_loss.py and
# bench/estop_loss.py. While loss is switched on, a host drops at random
# `percent` % of the UDP packets that arrive for it (everything DDS sends:
# discovery, data, heartbeats, acknowledgements), on the input hook: the
# sender's sendto() succeeds as it would on a lossy link. (Dropped on the
# output hook, a packet fails the sender's sendto() with EPERM instead, a
# signal no real lossy link gives.) Loss on two hosts is loss both ways.

LOSS_TABLE = "fploss"


def nft_available():
    """Why random loss cannot be made here (None: it can)."""
    why = available()
    if why:
        return why
    if shutil.which("nft") is None:
        return "nftables ('nft') is not installed"
    return None


def nft(ns, script):
    """Run an nft script inside namespace `ns`."""
    r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"nft in {ns}: {r.stderr.strip()}\n{script}")


def add_loss(host, percent):
    """Install (switched off) random loss of `percent` % of the UDP packets
    arriving at `host`: `meta l4proto udp numgen random mod 100 < P drop`
    on the input hook, gated by a set that `set_loss` fills or empties (so
    the counters survive switching it on and off), after a counter of the
    UDP packets that arrived while loss was on."""
    nft(host.ns, f"""
table inet {LOSS_TABLE} {{
  set lossy {{ type inet_proto; }}
  chain i {{
    type filter hook input priority 0; policy accept;
    meta l4proto @lossy counter comment "seen"
    meta l4proto @lossy numgen random mod 100 < {int(percent)} counter drop comment "dropped"
  }}
}}
""")


def set_loss(host, on):
    """Switch `host`'s random loss on or off (idempotent)."""
    cmd = f"add element inet {LOSS_TABLE} lossy {{ udp }}" if on else f"flush set inet {LOSS_TABLE} lossy"
    nft(host.ns, cmd + "\n")


def loss_counters(host):
    """(UDP packets that arrived at `host` while loss was on, of which dropped)."""
    out = subprocess.run(["ip", "netns", "exec", host.ns, "nft", "list", "table", "inet", LOSS_TABLE],
                         check=True, capture_output=True, text=True).stdout
    seen = dropped = 0
    for line in out.splitlines():
        if "counter packets" not in line:
            continue
        n = int(line.split("counter packets", 1)[1].split()[0])
        if 'comment "seen"' in line:
            seen = n
        elif 'comment "dropped"' in line:
            dropped = n
    return seen, dropped


def ruleset(host):
    """`nft list ruleset` inside the host's namespace."""
    return subprocess.run(["ip", "netns", "exec", host.ns, "nft", "list", "ruleset"],
                          capture_output=True, text=True).stdout
