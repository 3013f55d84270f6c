"""A population of test domains with known ground truth for `strictmx scan` (issue 5),
plus a small JSON Schema validator (docs/checker-schema.json) and a headless-Chromium
screenshot helper shared by the checker tests.

    strictmx scan --> DNS: NSD on 127.0.2.53 (dnsbed.DnsBed): zones pop1.lab. .. pop4.lab.,
                           DNSSEC-signed, every domain a name inside one of them
                  --> MX: a FEW listeners on 127.0.2.1 .. 127.0.2.8, port 25, each used by
                          ~50-200 domains whose MX records point at its address

Listener (address)          what it is                               certificate SANs
  .1 Postfix may            PKIX-valid, accepts plaintext mail       valid (half), mixed MX 20
  .2 Postfix may            PKIX-valid, accepts plaintext mail       valid (half), tlsa-mismatch
  .3 Postfix encrypt        PKIX-valid, 530 to plaintext MAIL        enforce-pf
  .4 strictmxd              PKIX-valid, 530 to plaintext MAIL        enforce-smx
  .5 Postfix none           no STARTTLS                              -
  .6 Postfix may            certificate expired (2020-01-31)         expired
  .7 Postfix may            self-signed                              selfsigned, dane-ee
  (wrongname domains point at .1, whose certificate does not name their MX)

Category       MX of <d>                        ground truth (what scan must report)
  valid        mx.<d> -> .1/.2                   delivers: PKIX; not enforcing; exit 0
  enforce-pf   mx.<d> -> .3                      delivers: PKIX; enforcing; citable; exit 0
  enforce-smx  mx.<d> -> .4                      delivers: PKIX; enforcing; citable; exit 0
  nostarttls   mx.<d> -> .5                      no: no STARTTLS; exit 1
  expired      mx.<d> -> .6                      no: certificate has expired; exit 1
  wrongname    mx.<d> -> .1                      no: certificate name does not match; exit 1
  selfsigned   mx.<d> -> .7                      no: self-signed; exit 1
  dane-ee      mx.<d> -> .7 + TLSA 3 1 1 (match) delivers: DANE; exit 0
  tlsa-mismatch mx.<d> -> .2 + TLSA 3 1 1 (other key)  no: TLSA mismatch (PKIX would pass)
  mixed        MX 10 mx1.<d> -> .5, MX 20 mx2.<d> -> .1   delivers via mx2 (PKIX); exit 1
  nullmx       MX 0 .                            status null-mx; exit 1
  nxdomain     (no records)                      status nxdomain; exit 2

Shared MX hosts (--shared-mx FRACTION, Population(n, shared=F)): real MX hosting is
concentrated (a provider's mx1/mx2 serve thousands of customer domains), so that fraction
of the domains have only MX records pointing at the hosts of a few providers (PROVIDERS:
mx1/mx2.prov-*.pop1.lab on the listeners above: valid PKIX, enforcing, DANE-EE with the
TLSA records under the provider's host names, no STARTTLS, expired); their ground truth is
the provider's scenario. The scanner shares TLS probes between them. 0 (default): the
population above, unchanged.

Library use (tests/integration/test_scan_population.py):
    pop = Population(1000, strictmxd=smxtest.STRICTMXD); pop.start()
    res = run_scan(smxtest.STRICTMX, pop.conf, pop.domains_file, out_path, ...)
    problems = pop.verify(res.lines)         # [] when every domain is classified right
    pop.stop()
Command line (bench/scan-bench.sh): python3 scanpop.py --domains 1000 --strictmx BIN
    --strictmxd BIN [--per-ip N] [--concurrency N] [--jobs N] [--runs N]
    [--shared-mx F] [--net 127.0.2.]: builds the
    population, runs the scan, checks every line and prints domains/s, and the CPU time per
    domain of the scanner and of the population's servers (peers_cpu_ticks).

Rules: only 127.0.0.0/8 (127.0.2.x here); every wait is bounded; stop() stops only the
processes this object started.
"""

import argparse
import json
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import smxtest  # noqa: E402
from dnsbed import DnsBed  # noqa: E402
from mxbed import TestCA, PostfixMX, tlsa_rdata, can_connect  # noqa: E402

SCHEMA_PATH = os.path.join(smxtest.SRC, "docs", "checker-schema.json")

NET = "127.0.2."
DNS_ADDR = NET + "53"
ZONES = ["pop1.lab.", "pop2.lab.", "pop3.lab.", "pop4.lab."]

# category -> weight per 1,000 domains
WEIGHTS = [("valid", 180), ("enforce-pf", 80), ("enforce-smx", 80), ("nostarttls", 90),
           ("expired", 90), ("wrongname", 90), ("selfsigned", 70), ("dane-ee", 100),
           ("tlsa-mismatch", 80), ("mixed", 60), ("nullmx", 40), ("nxdomain", 40)]

LISTENER_KINDS = [  # key, last octet, kind
    ("valid-a", 1, "valid"), ("valid-b", 2, "valid"), ("encrypt", 3, "encrypt"),
    ("smx", 4, "strictmxd"), ("none", 5, "none"), ("expired", 6, "expired"),
    ("self", 7, "selfsigned")]


def listeners(net=NET):
    """key -> (address, kind) of the population's listeners on net (e.g. "127.0.2.")."""
    return {k: (net + str(octet), kind) for k, octet, kind in LISTENER_KINDS}


def listener_addrs(net, octet, n):
    """The n addresses a listener serves: net+octet, then octet+10, +20, ... (never
    the DNS server's .53, at most 25 addresses)."""
    octets = [o for o in range(octet, 255, 10) if o != 53]
    if not 1 <= n <= len(octets):
        raise ValueError("addresses per listener must be within 1..%d: %r" % (len(octets), n))
    return [net + str(o) for o in octets[:n]]


LISTENERS = listeners(NET)  # the default population's

# Providers (--shared-mx): a fraction of the domains point their MX records at the MX hosts
# of a few mail providers, as real domains do (a provider's mx1/mx2 serve thousands of
# customer domains). Each provider is a scenario of the mix above; its host names live in
# zone pop1.lab. and its TLSA records (DANE-EE provider) are published once, under its host
# names. A domain using a provider has only its own MX records; its ground truth is the
# provider's scenario. provider -> (category, weight per 100 shared domains,
# [(pref, host label, listener)])
PROVIDERS = [
    ("prov-valid", "valid", 40, [(10, "mx1", "valid-a"), (20, "mx2", "valid-b")]),
    ("prov-enforce", "enforce", 20, [(10, "mx1", "encrypt"), (20, "mx2", "smx")]),
    ("prov-dane", "dane-ee", 15, [(10, "mx1", "self"), (20, "mx2", "self")]),
    ("prov-nostarttls", "nostarttls", 15, [(10, "mx1", "none")]),
    ("prov-expired", "expired", 10, [(10, "mx1", "expired"), (20, "mx2", "expired")]),
]
PROVIDER_ZONE = "pop1.lab."


def provider_hosts(prov):
    """[(pref, host name, listener)] of a provider's MX hosts."""
    for name, _cat, _w, hosts in PROVIDERS:
        if name == prov:
            return [(pref, "%s.%s.%s" % (lab, name, PROVIDER_ZONE.rstrip(".")), lk)
                    for pref, lab, lk in hosts]
    raise KeyError(prov)


# --------------------------------------------------------------------------------------
# JSON Schema (draft 2020-12), the subset docs/checker-schema.json uses
# --------------------------------------------------------------------------------------

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(v, t):
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, _TYPES[t])


def schema_errors(inst, schema, root=None, path="$"):
    """Errors of inst against schema: type, enum, const, required, properties,
    additionalProperties (false), items, maxItems, pattern, anyOf, $ref (#/...).
    Returns a list of 'path: message' strings ([] = valid). Unknown keywords that would
    constrain (oneOf, allOf, not, ...) raise, so the schema cannot silently outgrow this."""
    root = schema if root is None else root
    errs = []
    for kw in schema:
        if kw not in ("$schema", "$id", "$defs", "title", "description", "type", "enum",
                      "const", "required", "properties", "additionalProperties", "items",
                      "maxItems", "pattern", "anyOf", "$ref"):
            raise ValueError("validator does not know keyword %r (at %s)" % (kw, path))
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ValueError("only local $ref: %s" % ref)
        target = root
        for part in ref[2:].split("/"):
            target = target[part]
        errs += schema_errors(inst, target, root, path)
    if "anyOf" in schema:
        subs = [schema_errors(inst, s, root, path) for s in schema["anyOf"]]
        if all(subs):
            best = min(subs, key=len)
            errs.append("%s: matches no alternative of anyOf; closest: %s"
                        % (path, "; ".join(best[:5])))
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(inst, t) for t in types):
            return errs + ["%s: %r is not of type %s" % (path, inst, "/".join(types))]
    if "enum" in schema and not any(inst == e and type(inst) is type(e)
                                    for e in schema["enum"]):
        errs.append("%s: %r not in %r" % (path, inst, schema["enum"]))
    if "const" in schema and not (inst == schema["const"]
                                  and type(inst) is type(schema["const"])):
        errs.append("%s: %r is not %r" % (path, inst, schema["const"]))
    if isinstance(inst, dict):
        for k in schema.get("required", []):
            if k not in inst:
                errs.append("%s: missing required %r" % (path, k))
        props = schema.get("properties", {})
        for k, v in inst.items():
            if k in props:
                errs += schema_errors(v, props[k], root, "%s.%s" % (path, k))
            elif schema.get("additionalProperties") is False:
                errs.append("%s: unexpected property %r" % (path, k))
    if isinstance(inst, list):
        if "maxItems" in schema and len(inst) > schema["maxItems"]:
            errs.append("%s: more than %d items" % (path, schema["maxItems"]))
        if "items" in schema:
            for i, v in enumerate(inst):
                errs += schema_errors(v, schema["items"], root, "%s[%d]" % (path, i))
    if isinstance(inst, str) and "pattern" in schema and not re.search(schema["pattern"], inst):
        errs.append("%s: %r does not match /%s/" % (path, inst, schema["pattern"]))
    return errs


def load_schema():
    with open(SCHEMA_PATH) as f:
        return json.load(f)


# --------------------------------------------------------------------------------------
# Headless Chromium screenshot and PNG header
# --------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def png_info(path):
    """(width, height) from the IHDR of a PNG file; raises ValueError if it is not one."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError("%s is not a PNG file" % path)
    w, h = struct.unpack(">II", head[16:24])
    if zlib.crc32(head[12:29]) != struct.unpack(">I", head[29:33])[0]:
        raise ValueError("%s: IHDR CRC mismatch" % path)
    return w, h


def screenshot(html_path, png_path, width=1280, height=2000, timeout=120):
    """Render a local HTML file in headless Chromium (no network: the report has no
    external asset; --disable-background-networking etc. keep Chromium itself quiet).
    Returns the CompletedProcess; the PNG is at png_path when it worked."""
    if CHROMIUM is None:
        raise RuntimeError("chromium not installed (scripts/deps.sh test installs it)")
    profile = tempfile.mkdtemp(prefix="smx-chromium-")
    try:
        argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-extensions",
                "--disable-dev-shm-usage", "--user-data-dir=" + profile,
                "--screenshot=" + png_path, "--window-size=%d,%d" % (width, height),
                "file://" + os.path.abspath(html_path)]
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=timeout, cwd=profile)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


# --------------------------------------------------------------------------------------
# The population
# --------------------------------------------------------------------------------------

def plan_categories(n):
    """[(domain, category)] for n domains: the weights scaled to n (at least one domain
    per category), interleaved so that every zone and listener is busy throughout."""
    total = sum(w for _c, w in WEIGHTS)
    counts = {c: max(1, round(n * w / total)) for c, w in WEIGHTS}
    diff = n - sum(counts.values())
    counts["valid"] = max(1, counts["valid"] + diff)
    pools = {c: list(range(counts[c])) for c, _w in WEIGHTS}
    out = []
    while any(pools.values()):
        for c, _w in WEIGHTS:
            if pools[c]:
                i = pools[c].pop(0)
                zone = ZONES[len(out) % len(ZONES)]
                out.append(("%s-%04d.%s" % (c, i, zone.rstrip(".")), c))
    return out


def plan_shared(n):
    """[(domain, category, provider)] for n domains using providers' MX hosts: the
    providers' weights scaled to n (at least one domain each when n allows), interleaved."""
    total = sum(w for _p, _c, w, _h in PROVIDERS)
    counts = {p: round(n * w / total) for p, _c, w, _h in PROVIDERS}
    if n >= len(PROVIDERS):
        for p in counts:
            counts[p] = max(1, counts[p])
    first = PROVIDERS[0][0]
    counts[first] = max(0, counts[first] + n - sum(counts.values()))
    cats = {p: c for p, c, _w, _h in PROVIDERS}
    left = dict(counts)
    out = []
    while len(out) < n and any(left.values()):
        for p, _c, _w, _h in PROVIDERS:
            if left[p] and len(out) < n:
                i = counts[p] - left[p]
                left[p] -= 1
                zone = ZONES[len(out) % len(ZONES)]
                out.append(("cust-%s-%04d.%s" % (p[len("prov-"):], i, zone.rstrip(".")),
                            cats[p], p))
    return out


def plan_population(n, shared=0.0):
    """([(domain, category)], {domain: provider}): round(n * shared) domains use a
    provider's MX hosts (plan_shared), the others have their own (plan_categories); the two
    kinds interleaved evenly. shared = 0 gives exactly plan_categories(n)."""
    if not 0.0 <= shared <= 1.0:
        raise ValueError("shared MX fraction must be within 0..1: %r" % shared)
    n_shared = round(n * shared)
    own = plan_categories(n - n_shared) if n - n_shared > 0 else []
    prov = plan_shared(n_shared)
    out, provider = [], {}
    i = j = 0
    for k in range(n):
        # the k-th domain is a provider's one when the shared quota up to k grows
        if j < len(prov) and (i >= len(own) or (k + 1) * n_shared // n > j):
            dom, cat, p = prov[j]
            j += 1
            out.append((dom, cat))
            provider[dom] = p
        else:
            out.append(own[i])
            i += 1
    return out, provider


class Population:
    """The DNS zones, certificates and listeners for n domains, and their ground truth.
    shared: the fraction of domains whose MX records point at a provider's MX hosts
    (PROVIDERS); 0 = every domain has its own MX host names (the default population).
    net: the 127.x.y. prefix of the listeners and NSD (two populations can run at once on
    two prefixes)."""

    def __init__(self, n=1000, strictmxd=None, shared=0.0, net=NET, servers="postfix",
                 addrs=1):
        if servers not in ("postfix", "strictmxd"):
            raise ValueError("servers must be 'postfix' or 'strictmxd': %r" % servers)
        self.servers = servers
        self.n = n
        self.shared = shared
        self.net = net
        self.listeners = listeners(net)
        # every listener serves `addrs` addresses; a domain's own MX hosts are spread
        # over them (providers' hosts use the first), so that a scan's per-address
        # limit applies per address as it would on the Internet
        self.addrs = {k: listener_addrs(net, octet, addrs) for k, octet, _kind in LISTENER_KINDS}
        self.dns_addr = net + "53"
        self.strictmxd = strictmxd or smxtest.STRICTMXD
        self.domains, self.provider = plan_population(n, shared)
        self.truth = dict(self.domains)
        self.tmp = tempfile.mkdtemp(prefix="smx-scanpop-")
        os.chmod(self.tmp, 0o755)
        self.ca = None
        self.mx = {}
        self.daemons = {}  # listener key -> smxtest.Daemon
        self.dns = None
        self.conf = os.path.join(self.tmp, "scan.conf")
        self.domains_file = os.path.join(self.tmp, "domains.txt")
        self.setup_seconds = None

    # where each domain's MX hosts point (host -> listener key)
    def mx_hosts(self, dom, cat, idx):
        if dom in self.provider:
            return provider_hosts(self.provider[dom])
        if cat in ("nullmx", "nxdomain"):
            return []
        if cat == "mixed":
            return [(10, "mx1." + dom, "none"), (20, "mx2." + dom, "valid-a")]
        target = {"valid": "valid-a" if idx % 2 == 0 else "valid-b", "enforce-pf": "encrypt",
                  "enforce-smx": "smx", "nostarttls": "none", "expired": "expired",
                  "wrongname": "valid-a", "selfsigned": "self", "dane-ee": "self",
                  "tlsa-mismatch": "valid-b"}[cat]
        return [(10, "mx." + dom, target)]

    def _layout(self):
        """host -> listener, and the SAN names each listener's certificate carries."""
        self.hosts = {}   # dom -> [(pref, host, listener)]
        self.host_addr = {}  # MX host -> its address (one of its listener's)
        sans = {k: [] for k in self.listeners}
        used = {k: 0 for k in self.listeners}  # round robin over each listener's addresses
        for idx, (dom, cat) in enumerate(self.domains):
            hs = self.mx_hosts(dom, cat, idx)
            self.hosts[dom] = hs
            for _p, host, lk in hs:
                a = self.addrs[lk]
                if dom in self.provider:
                    self.host_addr[host] = a[0]
                else:
                    self.host_addr[host] = a[used[lk] % len(a)]
                    used[lk] += 1
                # wrongname: the listener's cert does not name it
                if cat != "wrongname" and host not in sans[lk]:
                    sans[lk].append(host)
        return sans

    def start(self):
        t0 = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.setup_seconds = time.monotonic() - t0
        return self

    def _start(self):
        self.ca = TestCA()
        sans = self._layout()
        self._keys = {}
        certs = {}
        for lk, (addr, kind) in self.listeners.items():
            if kind == "none":
                continue
            names = sans[lk] or ["unused-%s.pop1.lab" % lk]
            crt, key = self.ca.leaf(names[0], names, expired=(kind == "expired"),
                                    self_signed=(kind == "selfsigned"))
            self._keys[crt] = key
            certs[lk] = (crt, key)
        self.certs = certs
        other_crt, _ = self.ca.leaf("other-key.pop1.lab")
        # zones
        zones = {z: [] for z in ZONES}
        # the providers' MX hosts (only those some domain uses), their TLSA records once
        used = sorted({self.provider[d] for d in self.provider})
        for prov in used:
            cat = dict((p, c) for p, c, _w, _h in PROVIDERS)[prov]
            for _pref, host, lk in provider_hosts(prov):
                hrel = host[: -len(PROVIDER_ZONE)]
                zones[PROVIDER_ZONE].append("%s A %s" % (hrel, self.host_addr[host]))
                if cat == "dane-ee":
                    zones[PROVIDER_ZONE].append("_25._tcp.%s TLSA %s"
                                                % (hrel, tlsa_rdata(certs[lk][0], 3, 1, 1)))
        for dom, cat in self.domains:
            zone = dom.split(".", 1)[1] + "."
            rel = dom.split(".", 1)[0]
            lines = zones[zone]
            if dom in self.provider:  # only its MX records: the hosts are the provider's
                for pref, host, _lk in self.hosts[dom]:
                    lines.append("%s MX %d %s." % (rel, pref, host))
                continue
            if cat == "nxdomain":
                continue
            if cat == "nullmx":
                lines.append("%s MX 0 ." % rel)
                continue
            for pref, host, lk in self.hosts[dom]:
                hrel = host[: -len(zone)]
                lines.append("%s MX %d %s" % (rel, pref, hrel))
                lines.append("%s A %s" % (hrel, self.host_addr[host]))
                if cat == "dane-ee":
                    lines.append("_25._tcp.%s TLSA %s" % (hrel, tlsa_rdata(certs[lk][0], 3, 1, 1)))
                elif cat == "tlsa-mismatch":
                    lines.append("_25._tcp.%s TLSA %s" % (hrel, tlsa_rdata(other_crt, 3, 1, 1)))
        self.dns = DnsBed(zones, signed=True, addr=self.dns_addr)
        self.dns.start()
        # listeners
        for lk, (addr, kind) in self.listeners.items():
            if self._served_by_strictmxd(kind):
                continue
            extra = {}
            tls = "none" if kind == "none" else "valid"
            if kind != "none":
                crt, key = certs[lk]
                chain = [crt] if kind == "selfsigned" else [crt, self.ca.ca_cert]
                extra["smtpd_tls_chain_files"] = self._chain_file(lk, key, chain)
            if kind == "encrypt":
                extra["smtpd_tls_security_level"] = "encrypt"
            # many short sessions at once from one client address
            extra.update({"smtpd_client_connection_count_limit": "0",
                          "default_process_limit": "150", "smtpd_error_sleep_time": "0",
                          "smtpd_soft_error_limit": "100"})
            self.mx[lk] = PostfixMX(addr, self.ca, tls=tls, host="listener-%s.pop.lab" % lk,
                                    extra_main=extra, more_addrs=self.addrs[lk][1:])
        errors = {}

        def start(key, m):
            try:
                m.start(timeout=60)
            except Exception as e:  # reported below
                errors[key] = str(e)
        threads = [threading.Thread(target=start, args=kv) for kv in self.mx.items()]
        for t in threads:
            t.start()
        saved = smxtest.STRICTMXD
        smxtest.STRICTMXD = self.strictmxd  # Daemon runs the module's STRICTMXD
        try:
            for lk, (addr, kind) in self.listeners.items():
                if not self._served_by_strictmxd(kind):
                    continue
                crt, key = certs[lk]
                if kind != "selfsigned":  # the chain in the certificate file, as Postfix's
                    crt = self._chain_file(lk + "-crt", None, [crt, self.ca.ca_cert])
                # one listen line per address (a config line holds at most 200 chars)
                server = {"listen": "\nlisten = ".join(a + ":25" for a in self.addrs[lk]),
                          "tls_cert": crt, "tls_key": key,
                          "local_domains": "pop1.lab"}
                if self.servers == "strictmxd":
                    # six daemons share the machine's cores with the scanner: one
                    # session loop each (~10 % less CPU per session than two here)
                    server["threads"] = "1"
                if kind not in ("strictmxd", "encrypt"):
                    server["require_tls"] = "no"  # RFC 3207 behaviour: plaintext mail taken
                d = smxtest.Daemon(server=server, start=False,
                                   limits={"connections_per_ip": 1000, "connections": 5000})
                self.daemons[lk] = d
                d.start()
        finally:
            smxtest.STRICTMXD = saved
        for t in threads:
            t.join(120)
        for k, m in self.mx.items():
            if not m.started or k in errors:
                raise RuntimeError("Postfix listener %s (%s) did not start: %s\n%s"
                                   % (k, m.addr, errors.get(k, ""), m.log()[-2000:]))
        for lk, d in self.daemons.items():
            for addr in self.addrs[lk]:
                if not smxtest.poll(lambda: can_connect(addr, 25), 20):
                    raise RuntimeError("strictmxd not listening on %s:25:\n%s"
                                       % (addr, d.log_text()))
        for lk, m in self.mx.items():
            for addr in self.addrs[lk][1:]:
                if not smxtest.poll(lambda: can_connect(addr, 25), 20):
                    raise RuntimeError("Postfix listener %s not listening on %s:25:\n%s"
                                       % (lk, addr, m.log()[-2000:]))
        with open(self.conf, "w") as f:
            f.write("\n".join([
                "[server]", "hostname = scanner.test.example",
                "data_dir = %s" % os.path.join(self.tmp, "var"),
                "", "[dns]", "stub = %s" % self.dns.stub,
                "trust_anchor = %s" % self.dns.trust_anchor_file,
                "", "[outbound]", "ca_file = %s" % self.ca.ca_file, "smtp_port = 25", ""]))
        with open(self.domains_file, "w") as f:
            f.write("# strictmx scan population: %d domains (tests/integration/scanpop.py)\n"
                    % len(self.domains))
            f.write("\n".join(d for d, _c in self.domains) + "\n")

    def _served_by_strictmxd(self, kind):
        """strictmxd listener (the "smx" one always; with servers="strictmxd" every
        listener that offers STARTTLS); the others are private Postfix instances."""
        return kind == "strictmxd" or (self.servers == "strictmxd" and kind != "none")

    def _chain_file(self, lk, key, chain):
        path = os.path.join(self.tmp, "chain-%s.pem" % lk)
        with open(path, "w") as out:
            for p in ([key] if key else []) + chain:
                with open(p) as f:
                    out.write(f.read())
        os.chmod(path, 0o644)
        return path

    def stop(self):
        errors = []
        for d in self.daemons.values():
            try:
                d.stop()
            except AssertionError as e:
                errors.append(str(e)[:3000])
        self.daemons = {}
        threads = [threading.Thread(target=m.stop) for m in self.mx.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.mx = {}
        if self.dns is not None:
            self.dns.stop()
            self.dns = None
        if self.ca is not None:
            self.ca.close()
            self.ca = None
        if not os.environ.get("SMX_KEEP_TMP"):
            shutil.rmtree(self.tmp, ignore_errors=True)
        return errors

    # -- ground truth --
    def expected(self, dom):
        cat = self.truth[dom]
        hs = self.hosts[dom]
        e = {"status": "ok", "exit": 0, "would_deliver": True, "has_mx": True,
             "starttls_all": True, "enforce_all": False, "all_mx_verify": True,
             "citable": False, "dane_all": False, "methods": ["pkix"],
             "text": None, "inbound": "accepted"}
        first = hs[0][1] if hs else None
        if cat == "valid":
            e["text"] = "yes, verified by PKIX (%s)" % first
        elif cat in ("enforce-pf", "enforce-smx", "enforce"):
            e.update(text="yes, verified by PKIX (%s)" % first, enforce_all=True,
                     citable=True, inbound="enforced")
        elif cat == "dane-ee":
            e.update(text="yes, verified by DANE (%s)" % first, dane_all=True,
                     methods=["dane"])
        elif cat == "mixed":
            e.update(text="yes, verified by PKIX (%s)" % hs[1][1], exit=1, all_mx_verify=False,
                     starttls_all=False, methods=["pkix", "pkix"])
        elif cat in ("nostarttls", "expired", "wrongname", "selfsigned", "tlsa-mismatch"):
            why = {"nostarttls": "does not offer STARTTLS",
                   "expired": "certificate has expired",
                   "wrongname": "certificate name does not match %s" % first,
                   "selfsigned": "self-signed",
                   "tlsa-mismatch": "TLSA records do not match the certificate of %s"
                   % first}[cat]
            e.update(exit=1, would_deliver=False, all_mx_verify=False, text_has=why,
                     starttls_all=(cat != "nostarttls"),
                     methods=["dane"] if cat == "tlsa-mismatch" else ["pkix"])
        elif cat == "nullmx":
            e.update(status="null-mx", exit=1, would_deliver=False, has_mx=False,
                     all_mx_verify=False, starttls_all=False, methods=[], inbound=None)
        elif cat == "nxdomain":
            e.update(status="nxdomain", exit=2, would_deliver=False, has_mx=False,
                     all_mx_verify=False, starttls_all=False, methods=[], inbound=None)
        if dom in self.provider:  # every MX host of a provider has the same scenario
            e["methods"] = e["methods"][:1] * len(hs)
        return e

    def verify(self, lines):
        """Compare scan output objects with the ground truth: a list of problems."""
        problems = []
        seen = {}
        for j in lines:
            seen.setdefault(j["domain"], []).append(j)
        for dom, _cat in self.domains:
            if dom not in seen:
                problems.append("%s: no output line" % dom)
            elif len(seen[dom]) > 1:
                problems.append("%s: %d output lines" % (dom, len(seen[dom])))
        for dom in seen:
            if dom not in self.truth:
                problems.append("%s: not in the population" % dom)
        for dom, js in seen.items():
            if dom not in self.truth:
                continue
            p = domain_problems(js[0], self.expected(dom))
            problems += ["%s (%s): %s" % (dom, self.truth[dom], x) for x in p]
        return problems

    def counts(self):
        out = {}
        for _d, c in self.domains:
            out[c] = out.get(c, 0) + 1
        return out

    def provider_counts(self):
        """{provider: domains using its MX hosts} (empty for the unique-MX population)."""
        out = {}
        for p in self.provider.values():
            out[p] = out.get(p, 0) + 1
        return out

    def provider_mx_addresses(self):
        """Distinct (MX host, address) pairs of the providers' hosts in use: the TLS
        probes a shared population needs at least once per job."""
        return {(h, self.host_addr[h]) for p in self.provider_counts()
                for _pref, h, lk in provider_hosts(p)}


def domain_problems(j, e):
    """What in one output object j differs from the expectation e."""
    p = []
    v = j.get("verdict", {})

    def eq(what, got, want):
        if got != want:
            p.append("%s = %r, expected %r" % (what, got, want))
    eq("status", j.get("status"), e["status"])
    eq("exit", j.get("exit"), e["exit"])
    for k in ("would_deliver", "has_mx", "all_mx_verify", "starttls_all", "enforce_all",
              "citable", "dane_all"):
        eq("verdict." + k, v.get(k), e[k])
    eq("mx methods", [m.get("method") for m in j.get("mx", [])], e["methods"])
    if e.get("text") is not None:
        eq("verdict.text", v.get("text"), e["text"])
    if e.get("text_has") and e["text_has"] not in v.get("text", ""):
        p.append("verdict.text %r does not say %r" % (v.get("text"), e["text_has"]))
    if e["inbound"] is not None:
        res = [a["inbound"]["result"] for m in j.get("mx", []) for a in m.get("addresses", [])]
        if not res or any(r != e["inbound"] for r in res):
            p.append("inbound results %r, expected all %r" % (res, e["inbound"]))
    return p


class ScanResult:
    def __init__(self, rc, seconds, lines, stdout, stderr):
        self.rc, self.seconds, self.lines = rc, seconds, lines
        self.stdout, self.stderr = stdout, stderr


def _proc_ticks():
    """{pid: (ppid, own ticks, reaped children's ticks)} from /proc."""
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % p) as f:
                st = f.read()
        except OSError:
            continue
        rest = st[st.rindex(")") + 2:].split()
        out[int(p)] = (int(rest[1]), int(rest[11]) + int(rest[12]),
                       int(rest[13]) + int(rest[14]))
    return out


def peers_cpu_ticks(pop):
    """CPU ticks (user + system, clock ticks) used so far by the population's servers: NSD
    and strictmxd (children of this process) and the Postfix masters with every process
    under them, reaped ones included (a master's smtpd processes exit after max_use
    sessions). Only processes this process started; the difference of two calls is what
    the servers spent in between."""
    procs = _proc_ticks()
    kids = {}
    for pid, (ppid, _own, _ch) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    me = os.getpid()
    roots = [c for c in kids.get(me, [])] + [m.master_pid() for m in pop.mx.values()]
    total, todo, seen = 0, [r for r in roots if r in procs], set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid == me:
            continue
        seen.add(pid)
        total += procs[pid][1] + procs[pid][2]
        todo += kids.get(pid, [])
    return total


def run_scan(strictmx, conf, domains_file, out, concurrency=200, per_ip=None, timeout=10,
             extra=(), bound=600):
    """strictmx -c CONF scan FILE --output OUT ...: a ScanResult (lines: parsed JSON)."""
    argv = [strictmx, "-c", conf, "scan", domains_file, "--output", out,
            "--concurrency", str(concurrency), "--timeout", str(timeout)]
    if per_ip:
        argv += ["--per-ip", str(per_ip)]
    argv += list(extra)
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1"
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       errors="replace", timeout=bound, env=env)
    secs = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    lines = []
    if os.path.exists(out):
        with open(out) as f:
            lines = [json.loads(l) for l in f if l.strip()]
    r = ScanResult(p.returncode, secs, lines, p.stdout, p.stderr)
    r.cpu = cpu  # CPU seconds of the strictmx scan process (user + system)
    return r


def main():
    ap = argparse.ArgumentParser(description="strictmx scan over a loopback population")
    ap.add_argument("--domains", type=int, default=1000)
    ap.add_argument("--strictmx", default=smxtest.STRICTMX)
    ap.add_argument("--strictmxd", default=smxtest.STRICTMXD)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--per-ip", type=int, default=0, help="0: the scan default")
    ap.add_argument("--jobs", type=int, default=0, help="0: the scan default (cores)")
    ap.add_argument("--timeout", type=int, default=10)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=0, metavar="N",
                    help="scans before the measured runs, not counted (the servers' "
                    "process pools, page cache), as the inbound bench warms up")
    ap.add_argument("--shared-mx", type=float, default=0.0, metavar="FRACTION",
                    help="fraction of the domains whose MX records point at a few "
                    "providers' MX hosts (PROVIDERS); 0 (default): every domain has its "
                    "own MX host names, the population of the earlier figures")
    ap.add_argument("--servers", choices=("postfix", "strictmxd"), default="postfix",
                    help="what serves the listeners that offer STARTTLS: private Postfix "
                    "instances and one strictmxd (default), or strictmxd daemons only "
                    "(the no-STARTTLS listener is Postfix either way)")
    ap.add_argument("--addrs", type=int, default=1, metavar="N",
                    help="addresses per listener (1..25): the domains' own MX hosts are "
                    "spread over them, so the scan's --per-ip limit is per address as on "
                    "the Internet; 1 (default): 7 addresses in all")
    ap.add_argument("--net", default=NET, help="127.x.y. prefix of listeners and NSD")
    a = ap.parse_args()
    if not 0.0 <= a.shared_mx <= 1.0:
        ap.error("--shared-mx must be within 0..1")
    if not re.fullmatch(r"127\.\d{1,3}\.\d{1,3}\.", a.net):
        ap.error("--net must be a loopback prefix such as 127.0.2.")
    a.strictmx, a.strictmxd = os.path.abspath(a.strictmx), os.path.abspath(a.strictmxd)
    for b in (a.strictmx, a.strictmxd):
        smxtest.require_binaries(b)
    pop = Population(a.domains, strictmxd=a.strictmxd, shared=a.shared_mx, net=a.net,
                     servers=a.servers, addrs=a.addrs)
    label = ("unique-MX" if not pop.provider else "shared-MX %.2f" % a.shared_mx) + (
        ", %s, %d addr/listener" % ("postfix" if a.servers == "postfix" else "smx", a.addrs))
    print("scan-bench: [%s] building %d domains (%s) ..." % (label, a.domains, ", ".join(
        "%s %d" % kv for kv in pop.counts().items())), flush=True)
    if pop.provider:
        print("scan-bench: [%s] %d domains use providers' MX hosts (%s); %d have their own"
              % (label, len(pop.provider), ", ".join(
                  "%s %d" % kv for kv in pop.provider_counts().items()),
                 len(pop.domains) - len(pop.provider)), flush=True)
    pop.start()
    bad = 0
    rates, scpu, pcpu = [], [], []
    try:
        n_addr = sum(len(v) for v in pop.addrs.values())
        print("scan-bench: [%s] population ready in %.1f s: %d listeners (%s) on %d "
              "addresses %s*, NSD on %s" % (label, pop.setup_seconds, len(pop.listeners),
                                            "strictmxd and Postfix" if a.servers == "postfix"
                                            else "strictmxd; no-STARTTLS: Postfix", n_addr,
                                            pop.net, pop.dns_addr), flush=True)
        for w in range(a.warmup):
            out = os.path.join(pop.tmp, "warmup-%d.jsonl" % w)
            r = run_scan(a.strictmx, pop.conf, pop.domains_file, out, a.concurrency,
                         a.per_ip or None, a.timeout,
                         extra=["--jobs", str(a.jobs)] if a.jobs else [])
            print("scan-bench: [%s] warm-up scan %d (not counted): %.0f domains/s"
                  % (label, w + 1, len(r.lines) / r.seconds), flush=True)
        for run in range(a.runs):
            out = os.path.join(pop.tmp, "out-%d.jsonl" % run)
            extra = ["--jobs", str(a.jobs)] if a.jobs else []
            ticks0 = peers_cpu_ticks(pop)
            r = run_scan(a.strictmx, pop.conf, pop.domains_file, out, a.concurrency,
                         a.per_ip or None, a.timeout, extra=extra)
            peers = (peers_cpu_ticks(pop) - ticks0) / os.sysconf("SC_CLK_TCK")
            problems = pop.verify(r.lines)
            bad += len(problems) + (r.rc != 0)
            n = max(1, len(r.lines))
            probes = [l.strip() for l in r.stdout.splitlines() if "probes:" in l]
            rates.append(len(r.lines) / r.seconds)
            scpu.append(1000 * r.cpu / n)
            pcpu.append(1000 * peers / n)
            print("scan-bench: [%s] run %d: %d domains in %.2f s = %.0f domains/s "
                  "(concurrency %d, per-ip %s, jobs %s; CPU per domain: scanner %.2f ms, "
                  "peers %.2f ms; exit %d, %d misclassified)"
                  % (label, run + 1, len(r.lines), r.seconds, len(r.lines) / r.seconds,
                     a.concurrency, a.per_ip or "default", a.jobs or "default",
                     1000 * r.cpu / n, 1000 * peers / n, r.rc, len(problems)), flush=True)
            if probes:
                print("scan-bench:   " + probes[0], flush=True)
            for x in problems[:10]:
                print("  " + x)
            if r.rc != 0:
                print(r.stderr[-2000:])
        if rates:
            med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
            print("scan-bench: [%s] median of %d runs: %.0f domains/s, CPU per domain: "
                  "scanner %.2f ms + servers %.2f ms = %.2f ms; classification: %s"
                  % (label, len(rates), med(rates), med(scpu), med(pcpu),
                     med(scpu) + med(pcpu),
                     "all correct" if not bad else "%d problem(s)" % bad), flush=True)
    finally:
        errs = pop.stop()
        for e in errs:
            print("scan-bench: at stop: " + e)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
