#!/usr/bin/env python3
"""relay.py - outbound relay benchmark: strictmxd vs a private Postfix, relaying 4 KiB
messages to a STARTTLS sink whose certificate they must verify (PKIX and DANE).

Called by bench/run.sh (`make bench`; `BENCH_ONLY=relay bench/run.sh` runs only this
part) after the binaries are built. The set-up, all on loopback:

    smtp-load --STARTTLS--> relay (strictmxd 127.0.0.111:2587 | Postfix 127.0.0.112:2587
                                   | Postfix with TLS connection reuse 127.0.0.115:2587)
        --MX lookup, DNSSEC--> NSD 127.0.0.113 (signed zone rbench.lab and children)
        --STARTTLS, verified--> tls-sink 127.0.0.110:25 (accepts and discards)

  pkix.rbench.lab  MX mx.pkix.rbench.lab -> 127.0.0.110; signed, securely no TLSA:
                   strictmx verifies PKIX against the MX name (plan "pkix"); Postfix has
                   `smtp_tls_policy_maps`: `secure match=hostname`, smtp_tls_CAfile = test CA
  dane.rbench.lab  MX mx.dane.rbench.lab -> 127.0.0.110; TLSA 3 1 1 (the sink's key) at
                   _25._tcp.mx.dane.rbench.lab: strictmx "dane"; Postfix level `dane`

strictmx validates DNSSEC in-process ([dns] stub + trust_anchor); Postfix uses the libc
resolver, so it runs in a private mount namespace whose /etc/resolv.conf names a
validating unbound on 127.0.0.114 (`options edns0 trust-ad`), with
`smtp_dns_support_level = dnssec` (tests/integration/dnsbed.py). The machine's own
/etc/resolv.conf is not touched.

One run ("end to end"): the sink idle (no connection left from the previous run),
smtp-load injects RELAY_N messages (RELAY_CONNS connections, RELAY_MSGS messages per
connection, STARTTLS and verification on every connection, 4 KiB) as fast as the relay
accepts them; the sink's counters are sampled every 0.1 s. Relay rate = messages / (last
arrival at the sink - start of injection); the steady rate is the arrival rate between
10 % and 90 % of the messages. A "drain" run pauses the sink (SIGUSR2) during the
injection and counts from its resume: the outbound side alone. Alternation per round,
mode and measure: strictmxd, then Postfix, then Postfix with reuse (A B A B).

Environment (defaults in brackets):
  RELAY_ROUNDS [ROUNDS or 3]  alternation rounds
  RELAY_N [2000]              messages injected per run
  RELAY_CONNS [CONNS or 16]   concurrent injecting connections
  RELAY_MSGS [5]              messages per injecting connection
  RELAY_MODES [pkix,dane]
  RELAY_DRAIN_N [RELAY_N]     messages per drain run (0: no drain runs): the sink is
                              paused while they are injected, then resumed; the rate
                              counts from the resume (outbound alone)
  RELAY_PF_REUSE [1]          1: also a Postfix with smtp_tls_connection_reuse = yes
                              (tlsproxy), labelled "postfix (TLS reuse)"
  RELAY_RUN_TIMEOUT [600]     bound per run (injection + delivery), seconds
  BENCH_OUT [docs/BENCHMARKS.md], BENCH_KEEP=1 keeps the scratch directory
  STRICTMXD, SMTP_LOAD, TLS_SINK  binaries
"""

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import bench  # noqa: E402  (helpers only: poll, run, proc_stat, certificates, machine)
from bench import poll, run, can_connect, proc_stat, children, loadavg  # noqa: E402
from dnsbed import DnsBed, ValidatingResolver  # noqa: E402
from mxbed import tlsa_rdata  # noqa: E402

STRICTMXD = os.environ.get("STRICTMXD") or os.path.join(ROOT, "build", "strictmxd")
SMTP_LOAD = os.environ.get("SMTP_LOAD") or os.path.join(HERE, "smtp-load")
TLS_SINK = os.environ.get("TLS_SINK") or os.path.join(HERE, "tls-sink")
OUT = os.environ.get("BENCH_OUT") or os.path.join(ROOT, "docs", "BENCHMARKS.md")

ROUNDS = int(os.environ.get("RELAY_ROUNDS") or os.environ.get("ROUNDS") or "3")
N = int(os.environ.get("RELAY_N", "2000"))
CONNS = int(os.environ.get("RELAY_CONNS") or os.environ.get("CONNS") or "16")
MSGS = int(os.environ.get("RELAY_MSGS", "5"))
MODES = [m for m in os.environ.get("RELAY_MODES", "pkix,dane").split(",") if m]
PF_REUSE = os.environ.get("RELAY_PF_REUSE", "1") == "1"
RUN_TIMEOUT = float(os.environ.get("RELAY_RUN_TIMEOUT", "600"))
DRAIN_N = int(os.environ.get("RELAY_DRAIN_N", str(N)))

SINK_ADDR, SMX_ADDR, PF_ADDR, PF2_ADDR = "127.0.0.110", "127.0.0.111", "127.0.0.112", "127.0.0.115"
NSD_ADDR, RESOLVER_ADDR = "127.0.0.113", "127.0.0.114"
PORT = 2587
NAME = bench.NAME  # the relays' own (inbound) certificate name: mx.bench.test
PARENT = "rbench.lab."
BIND = bench.BIND

T0 = time.time()


def log(msg):
    print("[relay %6.1fs] %s" % (time.time() - T0, msg), flush=True)


def stop_proc(p, sig=signal.SIGTERM, timeout=20):
    if p is not None and p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def sink_cert(work):
    """The sink's certificate: both MX names, signed by the bench CA (bench.make_certs)."""
    names = ["mx.pkix." + PARENT.rstrip("."), "mx.dane." + PARENT.rstrip(".")]
    d = work
    p = run(["openssl", "req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:P-256", "-keyout", d + "/sink.key", "-out", d + "/sink.csr",
             "-subj", "/CN=" + names[0]], 60)
    if p.returncode:
        raise RuntimeError(p.stderr)
    with open(d + "/sink.ext", "w") as f:
        f.write("subjectAltName=%s\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
                "basicConstraints=CA:FALSE\n" % ",".join("DNS:" + n for n in names))
    p = run(["openssl", "x509", "-req", "-in", d + "/sink.csr", "-CA", d + "/ca.crt", "-CAkey",
             d + "/ca.key", "-CAcreateserial", "-days", "2", "-extfile", d + "/sink.ext",
             "-out", d + "/sink.crt"], 60)
    if p.returncode:
        raise RuntimeError(p.stderr)
    return d + "/sink.crt", d + "/sink.key"


class Sink:
    def __init__(self, work, crt, key):
        self.stats = os.path.join(work, "sink.json")
        self.log = os.path.join(work, "sink.log")
        self.proc = subprocess.Popen(
            [TLS_SINK, "--listen", "%s:25" % SINK_ADDR, "--cert", crt, "--key", key,
             "--stats", self.stats, "--hostname", "sink.rbench.lab", "--max-time", "7200"],
            stdin=subprocess.DEVNULL, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        if not poll(lambda: self.proc.poll() is not None or (
                can_connect(SINK_ADDR, 25) and os.path.exists(self.stats)), 20) \
                or self.proc.poll() is not None:
            raise RuntimeError("tls-sink did not start: " + open(self.log).read()[-1000:])

    def read(self):
        for _ in range(20):
            try:
                with open(self.stats) as f:
                    return json.loads(f.read())
            except (OSError, ValueError):
                time.sleep(0.02)
        raise RuntimeError("cannot read %s" % self.stats)

    def pause(self, on):
        """SIGUSR2 toggles the pause; wait (bounded) until the stats file shows it."""
        if bool(self.read().get("paused")) != on:
            self.proc.send_signal(signal.SIGUSR2)
        if not poll(lambda: bool(self.read().get("paused")) == on, 10, 0.02):
            raise RuntimeError("tls-sink did not %s" % ("pause" if on else "resume"))

    def stop(self):
        stop_proc(self.proc)


class StrictmxRelay:
    label = "strictmxd"

    def __init__(self, work, bed):
        self.dir = os.path.join(work, "smx-relay")
        os.mkdir(self.dir)
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "var")
        self.conf = os.path.join(self.dir, "strictmx.conf")
        with open(self.conf, "w") as f:
            f.write("[server]\nhostname = %s\nlisten = %s:%d\ndata_dir = %s\n"
                    "tls_cert = %s/mx.crt\ntls_key = %s/mx.key\nlocal_domains = bench.test\n"
                    "relay_networks = 127.0.0.0/8\n"
                    "\n[limits]\nconnections = 1000\nconnections_per_ip = 1000\n"
                    "\n[dns]\nstub = %s\ntrust_anchor = %s\n"
                    "\n[outbound]\nca_file = %s/ca.crt\nsmtp_port = 25\n"
                    "\n[queue]\nretry_min = 1\nretry_max = 2\n"
                    % (NAME, SMX_ADDR, PORT, self.data, work, work, bed.stub,
                       bed.trust_anchor_file, work))
        os.chmod(self.conf, 0o644)
        self.log = os.path.join(self.dir, "daemon.log")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([STRICTMXD, "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     cwd=self.dir)
        if not poll(lambda: self.proc.poll() is not None or can_connect(SMX_ADDR, PORT), 30) \
                or self.proc.poll() is not None:
            raise RuntimeError("strictmxd did not start:\n" + self.log_tail())
        self.pid = self.proc.pid

    def log_tail(self, n=3000):
        try:
            return open(self.log, errors="replace").read()[-n:]
        except OSError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        stop_proc(self.proc, timeout=30)

    def cpu(self):
        st = proc_stat(self.pid)
        return st[2] + st[3] if st else 0.0

    def queued(self):
        try:
            return len(os.listdir(os.path.join(self.data, "queue")))
        except FileNotFoundError:
            return 0

    def verified_counts(self):
        """event=delivery lines by verified= method (the proof of what was checked)."""
        out = {}
        try:
            with open(self.log, errors="replace") as f:
                for line in f:
                    if "event=delivery " in line:
                        for tok in line.split():
                            if tok.startswith("verified="):
                                out[tok[9:]] = out.get(tok[9:], 0) + 1
        except OSError:
            pass
        return out


class PostfixRelay:
    """A private Postfix that relays for 127.0.0.0/8, in its own mount namespace whose
    /etc/resolv.conf points at the validating unbound."""

    def __init__(self, work, resolver, addr=PF_ADDR, reuse=False):
        self.label = "postfix (TLS reuse)" if reuse else "postfix"
        self.addr = addr
        self.resolver = resolver
        self.dir = os.path.join(work, "pf-reuse" if reuse else "pf-relay")
        self.conf_dir = os.path.join(self.dir, "etc")
        self.queue = os.path.join(self.dir, "queue")
        self.data = os.path.join(self.dir, "data")
        self.maillog = os.path.join(self.dir, "maillog")
        for d in (self.dir, self.conf_dir, self.queue, self.data):
            os.mkdir(d)
            os.chmod(d, 0o755)
        shutil.chown(self.data, "postfix")
        policy = os.path.join(self.conf_dir, "tls_policy")
        with open(policy, "w") as f:
            f.write("pkix.%s secure match=hostname\ndane.%s dane\n"
                    % (PARENT.rstrip("."), PARENT.rstrip(".")))
        main = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue,
            "data_directory": self.data,
            "maillog_file": self.maillog,
            "maillog_file_prefixes": os.path.dirname(self.dir),
            "myhostname": "pf-relay.bench.test",
            "mydomain": "bench.test",
            "myorigin": "bench.test",
            "mydestination": "",
            "relay_domains": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "inet_interfaces": "loopback-only",  # the smtpd line in master.cf binds addr
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtpd_peername_lookup": "no",
            "smtpd_tls_security_level": "encrypt",
            "smtpd_tls_chain_files": os.path.join(work, "mx.pem"),
            "smtpd_tls_loglevel": "0",
            "smtpd_client_connection_count_limit": "0",
            # the outbound side under test
            "smtp_dns_support_level": "dnssec",
            "smtp_tls_security_level": "dane",
            "smtp_tls_policy_maps": "texthash:" + policy,
            "smtp_tls_CAfile": os.path.join(work, "ca.crt"),
            "smtp_tls_loglevel": "1",  # one "Verified TLS connection" line per connection
            "dnssec_probe": "",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "queue_run_delay": "1s",
            "smtputf8_enable": "no",
            "biff": "no",
            "notify_classes": "",
        }
        if reuse:
            main["smtp_tls_connection_reuse"] = "yes"
        with open(os.path.join(self.conf_dir, "main.cf"), "w") as f:
            for k, v in main.items():
                f.write("%s = %s\n" % (k, v))
        with open(os.path.join(self.conf_dir, "master.cf"), "w") as f:
            f.write(bench.MASTER_CF.format(listen="%s:%d" % (addr, PORT)))
            f.write("tlsproxy  unix  -       -       n       -       0       tlsproxy\n")
        self.started = False

    def postfix(self, *args, timeout=60):
        return run(["postfix", "-c", self.conf_dir] + list(args), timeout)

    def start(self):
        p = self.resolver.run_with_resolver(["postfix", "-c", self.conf_dir, "start"], 90)
        if p.returncode != 0:
            raise RuntimeError("postfix start failed: %s %s" % (p.stdout, p.stderr))
        self.started = True
        if not poll(lambda: can_connect(self.addr, PORT), 30):
            raise RuntimeError("postfix not listening on %s:%d" % (self.addr, PORT))
        with open(os.path.join(self.queue, "pid", "master.pid")) as f:
            self.pid = int(f.read().strip())

    def alive(self):
        try:
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def stop(self):
        # also after a failed or timed-out `postfix start`: a master may be up anyway
        if not self.started and not os.path.exists(os.path.join(self.queue, "pid",
                                                                "master.pid")):
            return
        self.started = False
        if not getattr(self, "pid", None):
            try:
                with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                    self.pid = int(f.read().strip())
            except (OSError, ValueError):
                self.pid = None
        try:
            self.postfix("stop")
        except subprocess.TimeoutExpired:
            pass
        if self.pid and not poll(lambda: not self.alive(), 30, 0.2):
            try:
                self.postfix("abort")
            except subprocess.TimeoutExpired:
                pass

    def cpu(self):
        st = proc_stat(self.pid)
        total = st[2] + st[3] if st else 0.0
        for _pid, cst in children(self.pid):
            total += cst[2] + cst[3]
        return total

    def queued(self):
        n = 0
        for sub in ("incoming", "active", "deferred", "maildrop", "hold"):
            for _dp, _dn, files in os.walk(os.path.join(self.queue, sub)):
                n += len(files)
        return n

    def verified_counts(self):
        out = {}
        try:
            with open(self.maillog, errors="replace") as f:
                for line in f:
                    m = re.search(r"(\w+) TLS connection established to", line)
                    if m:
                        out[m.group(1)] = out.get(m.group(1), 0) + 1
        except OSError:
            pass
        return out

    def log_tail(self, n=3000):
        try:
            return open(self.maillog, errors="replace").read()[-n:]
        except OSError:
            return ""


def relay_run(srv, sink, mode, n, res_pid=None, drain=False):
    """Inject n messages for user@MODE.rbench.lab; wait until the sink has them all.
    drain: the sink is paused during the injection and resumed after it; the rates
    then count from the resume (the relay's queue emptying, outbound only)."""
    rcpt = "user@%s.%s" % (mode, PARENT.rstrip("."))
    # the previous run's relay may still hold idle connections (strictmxd keeps verified
    # ones 5 s, Postfix's scache 2 s): wait until they are gone, so that every run starts
    # with an idle sink and the sink's counters belong to this relay alone
    settled = poll(lambda: sink.read().get("open", 0) == 0, 20, 0.1) is not None
    la = loadavg()
    if drain:
        sink.pause(True)
    s0 = sink.read()
    c0, k0 = srv.cpu(), sink_cpu(sink)
    r0 = proc_cpu(res_pid)
    v0 = srv.verified_counts()
    samples = []
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            try:
                s = sink.read()
                samples.append((s["now"], s["messages"] - s0["messages"], s.get("open", 0)))
            except RuntimeError:
                pass
            stop.wait(0.1)
    th = threading.Thread(target=sampler, daemon=True)
    t_start = t_inj0 = time.time()
    held = None
    th.start()
    argv = [SMTP_LOAD, "--host", SMX_ADDR if isinstance(srv, StrictmxRelay) else srv.addr,
            "--port", str(PORT), "--cafile", bench_ca, "--servername", NAME, "--rcpt", rcpt,
            "--quiet", "--connections", str(min(CONNS, max(1, n // max(1, MSGS)))),
            "--messages", str(MSGS), "--size", "4096", "--total", str(n),
            "--max-time", str(int(RUN_TIMEOUT)), "--timeout", "60"] + BIND
    try:
        p = run(argv, RUN_TIMEOUT + 60)
        js = [l for l in p.stdout.splitlines() if l.startswith("{")]
        if not js:
            raise RuntimeError("smtp-load gave no result (rc %d): %s %s"
                               % (p.returncode, p.stdout[-800:], p.stderr[-800:]))
        ld = json.loads(js[-1])
        t_inj = time.time()
        accepted = ld["messages"] + ld["messages_after_window"]
        if drain:  # let the relays reach the paused sink, then open the gate
            time.sleep(1.0)
            t_start = time.time()
            c0, k0, r0 = srv.cpu(), sink_cpu(sink), proc_cpu(res_pid)
            held = srv.queued()
            sink.pause(False)
        deadline = t_start + RUN_TIMEOUT
        done = poll(lambda: sink.read()["messages"] - s0["messages"] >= accepted
                    or not srv.alive(), max(1.0, deadline - time.time()), 0.05)
        all_in = sink.read()["messages"] - s0["messages"] >= accepted
        drained = poll(lambda: srv.queued() == 0, 30 if all_in else 1, 0.2) is not None
    finally:
        stop.set()
        th.join(5)
        if drain:
            sink.pause(False)
    s1 = sink.read()
    c1, k1 = srv.cpu(), sink_cpu(sink)
    r1 = proc_cpu(res_pid)
    v1 = srv.verified_counts()
    arrived = s1["messages"] - s0["messages"]
    t_last = s1["last"] if arrived else None
    span = (t_last - t_start) if t_last else None

    def cross(frac):
        """Interpolated time at which `frac` of the accepted messages had arrived."""
        target = frac * accepted
        prev = (t_start, 0)
        for t, k, _o in samples:
            if k >= target:
                if k == prev[1]:
                    return t
                return prev[0] + (t - prev[0]) * (target - prev[1]) / (k - prev[1])
            prev = (t, k)
        return None
    t10, t90 = cross(0.1), cross(0.9)
    steady = 0.8 * accepted / (t90 - t10) if t10 and t90 and t90 > t10 and accepted >= 50 else None
    out = {
        "server": srv.label, "mode": mode, "n": n, "phase": "drain" if drain else "relay",
        "sink_idle_at_start": settled,
        "held_in_queue": held if drain else None, "accepted": accepted, "arrived": arrived,
        "complete": bool(done) and arrived >= accepted, "drained": drained,
        "inject_s": round(t_inj - t_inj0, 3), "inject_msgs_per_s": ld["msgs_per_s"],
        "inject_p50_ms": ld["p50_ms"], "inject_p99_ms": ld["p99_ms"],
        "inject_errors": ld["errors"], "span_s": round(span, 3) if span else None,
        "relay_msgs_per_s": round(arrived / span, 1) if span and arrived >= accepted else None,
        "steady_msgs_per_s": round(steady, 1) if steady else None,
        "sink_connections": s1["connections"] - s0["connections"],
        # the most connections the sink had open at once (sampled every 0.1 s)
        "sink_peak_open": max([o for _t, _k, o in samples] or [0]),
        # (seconds since the start of injection, or of the drain, messages arrived)
        "arrivals": [[round(t - t_start, 2), k] for t, k, _o in samples if t >= t_start],
        "sink_tls": s1["tls"] - s0["tls"], "sink_resumed": s1["resumed"] - s0["resumed"],
        "sink_tls_failed": s1["tls_failed"] - s0["tls_failed"],
        "sink_plaintext_refused": s1["plaintext_refused"] - s0["plaintext_refused"],
        "server_cpu_s": round(c1 - c0, 3),
        "server_cpu_ms_per_msg": round((c1 - c0) * 1000 / arrived, 3) if arrived else None,
        "sink_cpu_ms_per_msg": round((k1 - k0) * 1000 / arrived, 3) if arrived else None,
        "resolver_cpu_s": round(r1 - r0, 3) if res_pid else None,
        "verified": {k: v1.get(k, 0) - v0.get(k, 0) for k in v1 if v1.get(k, 0) - v0.get(k, 0)},
        "load_before": la, "load_after": loadavg(),
    }
    if not srv.alive():
        out["died"] = True
        out["log_tail"] = srv.log_tail(1500)
    return out


def proc_cpu(pid):
    if not pid:
        return 0.0
    st = proc_stat(pid)
    return st[2] + st[3] if st else 0.0


def sink_cpu(sink):
    return sink.read()["cpu_s"]


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def main():
    global bench_ca
    if os.geteuid() != 0:
        sys.exit("relay bench: run as root (port 25, private Postfix, mount namespace)")
    for b in (STRICTMXD, SMTP_LOAD, TLS_SINK):
        if not os.access(b, os.X_OK):
            sys.exit("relay bench: missing binary %s" % b)
    for tool in ("nsd", "unbound", "ldns-signzone", "ldns-keygen", "dig", "unshare", "postfix"):
        if not shutil.which(tool) and not os.path.exists("/usr/sbin/" + tool):
            sys.exit("relay bench: %s is not installed (make test installs the test bed)" % tool)
    # a SIGTERM (timeout, Ctrl-C of a parent) still runs the clean-up below
    signal.signal(signal.SIGTERM, lambda *_a: sys.exit(143))
    work = tempfile.mkdtemp(prefix="smx-relay-")
    os.chmod(work, 0o755)
    bench_ca = os.path.join(work, "ca.crt")
    results = {"machine": bench.machine(), "config": {
        "rounds": ROUNDS, "n": N, "drain_n": DRAIN_N, "conns": CONNS, "msgs_per_conn": MSGS,
        "modes": MODES,
        "pf_reuse": PF_REUSE, "sink": "%s:25" % SINK_ADDR, "smx": "%s:%d" % (SMX_ADDR, PORT),
        "postfix": "%s:%d" % (PF_ADDR, PORT)}, "runs": [], "warmup": []}
    log("work dir %s; %d rounds, %d messages per run, %d connections x %d messages"
        % (work, ROUNDS, N, CONNS, MSGS))
    bench.make_certs(work)
    crt, key = sink_cert(work)
    for p in (crt, key):
        os.chmod(p, 0o644)
    zones = {}
    for mode in ("pkix", "dane"):
        z = ["@ MX 10 mx", "mx A %s" % SINK_ADDR]
        if mode == "dane":
            z.append("_25._tcp.mx TLSA %s" % tlsa_rdata(crt, 3, 1, 1))
        zones["%s.%s" % (mode, PARENT)] = z
    bed = res = sink = smx = None
    pfs = []
    try:
        bed = DnsBed(zones, signed=True, parent=PARENT, addr=NSD_ADDR)
        bed.start()
        res = ValidatingResolver(bed, addr=RESOLVER_ADDR)
        res.start()
        for mode in MODES:  # the bed is what we think it is
            out = res.ask("_25._tcp.mx.%s.%s" % (mode, PARENT), "TLSA")
            flags = out.split("flags:")[1].split(";")[0] if "flags:" in out else ""
            results.setdefault("dns_check", {})[mode] = " ad" in flags
        log("DNS: NSD %s:%d, unbound %s:53; AD bit on the TLSA answers: %s"
            % (NSD_ADDR, bed.port, RESOLVER_ADDR, results.get("dns_check")))
        sink = Sink(work, crt, key)
        smx = StrictmxRelay(work, bed)
        smx.start()
        pfs = [PostfixRelay(work, res)]
        if PF_REUSE:
            pfs.append(PostfixRelay(work, res, addr=PF2_ADDR, reuse=True))
        for pf in pfs:
            pf.start()
        servers = [smx] + pfs
        log("tls-sink pid %d on %s:25, strictmxd pid %d, postfix master %s"
            % (sink.pid, SINK_ADDR, smx.pid, ", ".join(str(p.pid) for p in pfs)))
        for mode in MODES:  # warm-up: DNS caches, process pools, policy caches
            for srv in servers:
                w = relay_run(srv, sink, mode, 50, res.proc.pid)
                results["warmup"].append(w)
                log("warm-up %s %s: %s/50 arrived, verified %s"
                    % (srv.label, mode, w["arrived"], w["verified"]))
                if not w["complete"]:
                    raise RuntimeError("warm-up %s %s: only %d of %d messages reached the "
                                       "sink; log:\n%s" % (srv.label, mode, w["arrived"],
                                                           w["accepted"], srv.log_tail()))
        phases = [("relay", N)] + ([("drain", DRAIN_N)] if DRAIN_N > 0 else [])
        for r in range(ROUNDS):
            for mode, (phase, n) in [(m, p) for m in MODES for p in phases]:
                for srv in servers:
                    js = relay_run(srv, sink, mode, n, res.proc.pid, drain=phase == "drain")
                    js["round"] = r + 1
                    results["runs"].append(js)
                    log("round %d %s %s %s: %s msg/s relayed (steady %s), inject %.1f msg/s, "
                        "%d/%d arrived in %s s, server CPU %s ms/msg, sink conns %d, "
                        "verified %s, load %s"
                        % (r + 1, phase, mode, srv.label, js["relay_msgs_per_s"],
                           js["steady_msgs_per_s"], js["inject_msgs_per_s"], js["arrived"],
                           js["accepted"], js["span_s"], js["server_cpu_ms_per_msg"],
                           js["sink_connections"], js["verified"], js["load_after"]))
                    if js.get("died"):
                        raise RuntimeError("%s died:\n%s" % (srv.label, js["log_tail"]))
    finally:
        for pf in pfs:
            pf.stop()
        if smx:
            smx.stop()
        if sink:
            sink.stop()
        if res:
            res.stop()
        if bed:
            bed.stop()
        results["machine"]["load_end"] = loadavg()
        raw = os.path.join(HERE, "last-relay.json")
        with open(raw, "w") as f:
            json.dump(results, f, indent=1)
        log("raw results: %s" % raw)
        if os.environ.get("BENCH_KEEP"):
            log("kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    subprocess.run([sys.executable, os.path.join(HERE, "report.py"), "--relay", raw, OUT],
                   check=True, timeout=60)
    log("wrote %s" % OUT)


bench_ca = None

if __name__ == "__main__":
    main()
