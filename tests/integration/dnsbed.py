"""A DNS test bed on loopback: NSD serving a parent zone (default `lab.`) and
its child zones, optionally DNSSEC-signed, for the resolver tests and for any
test that needs MX, A/AAAA and TLSA answers with a known DNSSEC status.

Python 3 standard library only; import it with this directory on sys.path:

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from dnsbed import DnsBed

    zones = {"example.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.21"]}
    with DnsBed(zones, signed=True, bogus=[("example.lab.", "mx1.example.lab.", "A")],
                dead=["down.lab."]) as bed:
        bed.stub               # "lab.@127.0.0.5:PORT", for [dns] stub
        bed.trust_anchor_file  # the parent's KSK DS (signed beds), for [dns] trust_anchor
        bed.port

Zone records are zone-file lines relative to the zone ($ORIGIN and $TTL 300
are set; the SOA and the NS are added). Every zone is served by the same NSD,
which answers for the children directly; the parent holds their delegations
(NS, and DS when signed), so a validator walks parent DS -> child DNSKEY.

- `signed`: sign every zone (ECDSAP256SHA256, NSEC3 with 0 iterations) except
  those in `unsigned` (delegated without DS: insecure under a secure parent).
- `bogus`: (zone, owner, type) triples whose rdata is changed after signing,
  so the RRSIG no longer matches: the validator says bogus.
- `dead`: child zones delegated to a name server address where nothing
  listens: lookups below them end in SERVFAIL only after the resolver's
  retries (about 30 s with libunbound), so callers bound them with a timeout.
- `lame`: child zones delegated to a name server name that does not exist:
  a quick SERVFAIL.
- SilentServer: a stub target that reads queries and never answers
  (a timeout rather than a refusal).

Rules: only 127.0.0.0/8; every wait is a bounded poll; NSD runs in the
foreground (`nsd -d`) in a scratch directory and is stopped by stop()/exit.
"""

import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

NSD = shutil.which("nsd") or "/usr/sbin/nsd"
LDNS_KEYGEN = shutil.which("ldns-keygen") or "/usr/bin/ldns-keygen"
LDNS_SIGNZONE = shutil.which("ldns-signzone") or "/usr/bin/ldns-signzone"

DEFAULT_ADDR = "127.0.0.5"
DEAD_ADDR = "127.0.0.254"  # nothing listens on port 53 there
ALG = "ECDSAP256SHA256"


def free_port(host=DEFAULT_ADDR):
    """A port free for both UDP and TCP on host."""
    for _ in range(50):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            t.bind((host, 0))
            port = t.getsockname()[1]
            u.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise RuntimeError("no free port on %s" % host)


def fqdn(name):
    return name if name.endswith(".") else name + "."


def _wire_name(name):
    out = b""
    for label in fqdn(name).rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def dns_query_packet(name, qtype, qid=None):
    """A minimal query (RD off) for name/qtype, class IN."""
    qid = random.randrange(65536) if qid is None else qid
    return struct.pack(">HHHHHH", qid, 0, 1, 0, 0, 0) + _wire_name(name) + \
        struct.pack(">HH", qtype, 1)


def udp_ask(addr, port, name, qtype, timeout=0.3):
    """Send one query; the raw response or None."""
    pkt = dns_query_packet(name, qtype)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(pkt, (addr, port))
        data, _ = s.recvfrom(65535)
        if data[:2] == pkt[:2]:
            return data
    except OSError:
        return None
    finally:
        s.close()
    return None


class DnsBed:
    def __init__(self, zones, signed=True, parent="lab.", unsigned=(), bogus=(), dead=(),
                 lame=(), addr=DEFAULT_ADDR, port=None, keep=False):
        self.parent = fqdn(parent).lower()
        self.zones = {fqdn(z).lower(): list(v) for z, v in zones.items()}
        self.zones.setdefault(self.parent, [])
        for z in self.zones:
            if z != self.parent and not z.endswith("." + self.parent):
                raise ValueError("zone %s is not below %s" % (z, self.parent))
        self.signed = signed
        self.unsigned = {fqdn(z).lower() for z in unsigned}
        self.bogus = [(fqdn(z).lower(), fqdn(o).lower(), t.upper()) for z, o, t in bogus]
        self.dead = [fqdn(z).lower() for z in dead]
        self.lame = [fqdn(z).lower() for z in lame]
        self.addr = addr
        self.port = port or free_port(addr)
        self.keep = keep
        self.dir = tempfile.mkdtemp(prefix="dnsbed-")
        os.chmod(self.dir, 0o755)
        self.proc = None
        self.ds = {}  # zone -> DS lines of its KSK
        self.trust_anchor_file = None
        self.stub = "%s@%s:%d" % (self.parent, self.addr, self.port)
        self.zonefiles = {}

    # ---- building ----

    def _run(self, *argv):
        r = subprocess.run(list(argv), cwd=self.dir, capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0:
            raise RuntimeError("%s failed (%d): %s%s" % (argv[0], r.returncode, r.stdout,
                                                        r.stderr))
        return r.stdout

    def _zone_text(self, zone, extra):
        ns = "ns." + self.parent
        lines = ["$ORIGIN %s" % zone, "$TTL 300",
                 "@ IN SOA %s hostmaster.%s 1 3600 900 604800 300" % (ns, self.parent),
                 "@ IN NS %s" % ns]
        if zone == self.parent:
            lines.append("ns IN A %s" % self.addr)
        lines += self.zones[zone]
        lines += extra
        return "\n".join(lines) + "\n"

    def _keygen(self, zone):
        ksk = self._run(LDNS_KEYGEN, "-a", ALG, "-k", zone).strip()
        zsk = self._run(LDNS_KEYGEN, "-a", ALG, zone).strip()
        with open(os.path.join(self.dir, ksk + ".ds")) as f:
            ds = [ln.strip() for ln in f if ln.strip() and not ln.startswith(";")]
        return ksk, zsk, ds

    def _sign(self, zone, path):
        ksk, zsk, ds = self._keygen(zone)
        self._run(LDNS_SIGNZONE, "-n", "-t", "0", "-o", zone, path, zsk, ksk)
        self.ds[zone] = ds
        return path + ".signed"

    def _make_bogus(self, zone, path):
        """Change the rdata of one RRset after signing: its RRSIG no longer matches."""
        with open(path) as f:
            lines = f.read().splitlines()
        for bz, owner, rtype in self.bogus:
            if bz != zone:
                continue
            for i, ln in enumerate(lines):
                f = ln.split()
                if len(f) < 5 or f[0].lower() != owner or f[3].upper() != rtype:
                    continue
                if rtype == "A":
                    f[4] = "127.0.0.99" if f[4] != "127.0.0.99" else "127.0.0.98"
                elif rtype == "AAAA":
                    f[4] = "::99" if f[4] != "::99" else "::98"
                elif rtype == "MX":
                    f[4] = str((int(f[4]) + 1) % 65536)
                elif rtype == "TLSA":
                    f[-1] = f[-1][:-1] + ("0" if f[-1][-1] != "0" else "1")
                elif rtype == "TXT":
                    f[-1] = '"bogus"'
                else:
                    raise ValueError("cannot make %s bogus" % rtype)
                lines[i] = "\t".join(f)
                break
            else:
                raise ValueError("no %s %s record in %s" % (owner, rtype, zone))
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def build(self):
        children = sorted(z for z in self.zones if z != self.parent)
        parent_extra = []
        for d in self.dead:
            rel = d[: -len(self.parent) - 1]
            parent_extra += ["%s IN NS ns.%s" % (rel, d), "ns.%s IN A %s" % (d, DEAD_ADDR)]
        for d in self.lame:
            rel = d[: -len(self.parent) - 1]
            parent_extra.append("%s IN NS ns.does-not-exist.%s" % (rel, self.parent))
        for z in children:
            rel = z[: -len(self.parent) - 1]
            parent_extra.append("%s IN NS ns.%s" % (rel, self.parent))
            path = os.path.join(self.dir, z + "zone")
            with open(path, "w") as f:
                f.write(self._zone_text(z, []))
            if self.signed and z not in self.unsigned:
                path = self._sign(z, path)
                self._make_bogus(z, path)
                parent_extra += self.ds[z]
            self.zonefiles[z] = path
        path = os.path.join(self.dir, self.parent + "zone")
        with open(path, "w") as f:
            f.write(self._zone_text(self.parent, parent_extra))
        if self.signed:
            path = self._sign(self.parent, path)
            self._make_bogus(self.parent, path)
            self.trust_anchor_file = os.path.join(self.dir, "trust-anchor.ds")
            with open(self.trust_anchor_file, "w") as f:
                f.write("\n".join(self.ds[self.parent]) + "\n")
        self.zonefiles[self.parent] = path

        conf = ["server:",
                "    ip-address: %s@%d" % (self.addr, self.port),
                "    do-ip6: no",
                '    username: ""',
                '    chroot: ""',
                '    database: ""',
                "    zonesdir: %s" % self.dir,
                "    pidfile: %s/nsd.pid" % self.dir,
                "    xfrdfile: %s/xfrd.state" % self.dir,
                "    zonelistfile: %s/zone.list" % self.dir,
                "    logfile: %s/nsd.log" % self.dir,
                "    server-count: 1",
                "    verbosity: 1",
                # no response rate limiting (NSD's default: 200 answers/s of a kind per
                # zone and /24): every client here is 127.0.0.x, and a scan of a
                # 1,000-domain population got NXDOMAIN answers dropped or truncated,
                # so libunbound waited ~1 s for each retry
                "    rrl-ratelimit: 0",
                "    rrl-whitelist-ratelimit: 0",
                "remote-control:",
                "    control-enable: no"]
        for z, p in sorted(self.zonefiles.items()):
            conf += ["zone:", "    name: %s" % z, "    zonefile: %s" % p]
        self.conf = os.path.join(self.dir, "nsd.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join(conf) + "\n")

    # ---- running ----

    def start(self, timeout=15):
        self.build()
        self.log = open(os.path.join(self.dir, "nsd.out"), "w")
        self.proc = subprocess.Popen([NSD, "-d", "-c", self.conf], cwd=self.dir,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            r = udp_ask(self.addr, self.port, self.parent, 6)  # SOA
            if r is not None and (r[3] & 0x0F) == 0:
                return self
            time.sleep(0.05)
        out = self.output()
        self.stop()
        raise RuntimeError("nsd did not answer on %s@%d: %s" % (self.addr, self.port, out))

    def output(self):
        text = ""
        for name in ("nsd.out", "nsd.log"):
            try:
                with open(os.path.join(self.dir, name)) as f:
                    text += f.read()
            except OSError:
                pass
        return text

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if getattr(self, "log", None) is not None:
            self.log.close()
            self.log = None
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


class SilentServer:
    """UDP and TCP on addr:port that take queries and never answer: the stub
    for a zone whose lookups can only time out."""

    def __init__(self, zone="silent.", addr="127.0.0.6", port=None):
        self.addr = addr
        self.port = port or free_port(addr)
        self.zone = fqdn(zone)
        self.stub = "%s@%s:%d" % (self.zone, self.addr, self.port)
        self.udp = self.tcp = None

    def start(self):
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((self.addr, self.port))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((self.addr, self.port))
        self.tcp.listen(16)  # connections wait in the backlog, unanswered
        return self

    def stop(self):
        for s in (self.udp, self.tcp):
            if s is not None:
                s.close()
        self.udp = self.tcp = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


# --------------------------------------------------------------------------------------
# A validating recursive resolver in front of a bed, for libc-resolver programs
# --------------------------------------------------------------------------------------

UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"
RESOLVER_ADDR = "127.0.0.53"


class ValidatingResolver:
    """unbound on ADDR:53 (UDP and TCP) with a stub-zone for the bed's parent zone and
    the bed's trust anchor: validated answers carry AD, bogus ones are SERVFAIL.

    For programs that use the libc resolver (Postfix's smtp, posttls-finger), which can
    only ask port 53 of a `nameserver` line: run_with_resolver(argv) runs a command in a
    private mount namespace where /etc/resolv.conf is this resolver's file (`nameserver
    ADDR`, `options edns0 trust-ad`, so glibc keeps the AD bit); the machine's own
    /etc/resolv.conf is untouched.

        with DnsBed(zones, signed=True) as bed, ValidatingResolver(bed) as res:
            res.ask("mx1.example.lab", "TLSA")   # dig output through the resolver
            res.run_with_resolver(["posttls-finger", ...], env=...)
    """

    def __init__(self, bed, addr=RESOLVER_ADDR, keep=False):
        self.bed, self.addr, self.keep = bed, addr, keep
        self.dir = tempfile.mkdtemp(prefix="dnsbed-unbound-")
        os.chmod(self.dir, 0o755)
        self.proc = None
        self.resolv_conf = os.path.join(self.dir, "resolv.conf")
        with open(self.resolv_conf, "w") as f:
            f.write("nameserver %s\noptions edns0 trust-ad attempts:1 timeout:5\n" % addr)
        os.chmod(self.resolv_conf, 0o644)
        conf = ["server:",
                "    interface: %s" % addr,
                "    port: 53",
                "    do-ip6: no",
                "    do-ip4: yes",
                '    username: ""',
                '    chroot: ""',
                "    directory: %s" % self.dir,
                "    pidfile: %s/unbound.pid" % self.dir,
                "    use-syslog: no",
                "    logfile: %s/unbound.log" % self.dir,
                "    verbosity: 1",
                "    val-log-level: 2",
                "    num-threads: 1",
                "    so-reuseport: no",
                "    access-control: 127.0.0.0/8 allow",
                "    do-not-query-localhost: no",
                "    qname-minimisation: no",
                "    harden-referral-path: no",
                "    module-config: \"validator iterator\"",
                "    cache-max-ttl: 5",
                "    cache-max-negative-ttl: 5",
                "remote-control:",
                "    control-enable: no",
                "stub-zone:",
                '    name: "%s"' % bed.parent,
                "    stub-addr: %s@%d" % (bed.addr, bed.port)]
        if bed.signed and bed.trust_anchor_file:
            conf.insert(1, "    trust-anchor-file: %s" % bed.trust_anchor_file)
        self.conf = os.path.join(self.dir, "unbound.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join(conf) + "\n")

    def start(self, timeout=15):
        for proto in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            s = socket.socket(socket.AF_INET, proto)
            try:
                s.bind((self.addr, 53))
            except OSError as e:
                raise RuntimeError("%s:53 is not free (%s): another resolver runs there"
                                   % (self.addr, e))
            finally:
                s.close()
        self._out = open(os.path.join(self.dir, "unbound.out"), "w")
        self.proc = subprocess.Popen([UNBOUND, "-d", "-c", self.conf], cwd=self.dir,
                                     stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            pkt = dns_query_packet(self.bed.parent, 6)
            pkt = pkt[:2] + b"\x01\x00" + pkt[4:]  # RD on
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(0.5)
            try:
                s.sendto(pkt, (self.addr, 53))
                data, _ = s.recvfrom(65535)
                if data[:2] == pkt[:2] and (data[3] & 0x0F) == 0:
                    return self
            except OSError:
                pass
            finally:
                s.close()
            time.sleep(0.1)
        out = self.output()
        self.stop()
        raise RuntimeError("unbound did not answer on %s:53: %s" % (self.addr, out))

    def output(self):
        text = ""
        for name in ("unbound.out", "unbound.log"):
            try:
                with open(os.path.join(self.dir, name)) as f:
                    text += f.read()
            except OSError:
                pass
        return text

    def ask(self, name, rtype="A", timeout=20):
        """`dig +dnssec` through this resolver: the output text."""
        r = subprocess.run(["dig", "+dnssec", "+time=5", "+tries=1", "@" + self.addr,
                            name, rtype], capture_output=True, text=True, timeout=timeout)
        return r.stdout + r.stderr

    def run_with_resolver(self, argv, timeout=60, env=None):
        """Run argv with this resolver as /etc/resolv.conf (private mount namespace:
        `unshare -m sh -c 'mount --bind FILE /etc/resolv.conf && exec "$@"'`).
        Returns a CompletedProcess (text)."""
        script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
        return subprocess.run(["unshare", "-m", "sh", "-c", script, self.resolv_conf]
                              + list(argv), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", timeout=timeout, env=env)

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            self.proc = None
            self._out.close()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
