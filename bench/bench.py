#!/usr/bin/env python3
"""bench.py - strictmxd vs a private Postfix, on loopback, in alternation.

Called by bench/run.sh (`make bench`) after the binaries are built. Everything it
starts (strictmxd, Postfix, openssl s_server, perf) it stops again by PID; every
step is bounded in time; all scratch files live in one mkdtemp directory that is
removed at the end (BENCH_KEEP=1 keeps it).

Environment (defaults in brackets):
  ROUNDS [3]        alternation rounds A B A B ... per scenario
  DUR [10]          seconds per throughput run
  CONNS [16]        concurrent connections of the load generator
  CONNS_HI [64]     a third throughput scenario: 1 msg/conn at this many
                    connections (0 or = CONNS: none), for a server that is
                    bound by session latency rather than CPU at CONNS
  RESUME [1]        a fourth: 1 msg/conn at CONNS, the generator resuming TLS
                    sessions (smtp-load --resume), as a sender with a session cache
  HS_DUR [5]        seconds per handshake-bound run
  IDLE_K [auto]     idle TLS sessions for strictmxd's memory (10000 if the fd
                    limit allows, else 1000)
  PF_IDLE_K [200]   idle sessions for Postfix (one smtpd process each)
  PERF [1]          perf stat + perf record of strictmxd under load (if perf exists)
  BENCH_OUT         markdown file to update [docs/BENCHMARKS.md]
  STRICTMXD, SMTP_LOAD  binaries [build/strictmxd, bench/smtp-load]
"""

import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STRICTMXD = os.environ.get("STRICTMXD") or os.path.join(ROOT, "build", "strictmxd")
SMTP_LOAD = os.environ.get("SMTP_LOAD") or os.path.join(HERE, "smtp-load")
OUT = os.environ.get("BENCH_OUT") or os.path.join(ROOT, "docs", "BENCHMARKS.md")

ROUNDS = int(os.environ.get("ROUNDS", "3"))
DUR = float(os.environ.get("DUR", "10"))
CONNS = int(os.environ.get("CONNS", "16"))
CONNS_HI = int(os.environ.get("CONNS_HI", "64"))
RESUME = os.environ.get("RESUME", "1") != "0"
HS_DUR = float(os.environ.get("HS_DUR", "5"))
PF_IDLE_K = int(os.environ.get("PF_IDLE_K", "200"))
PERF = os.environ.get("PERF", "1") == "1" and shutil.which("perf") is not None
# BENCH_ONLY=memory,handshake,... : a subset of throughput,handshake,memory,perf (debugging)
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))


def want(part):
    return not ONLY or part in ONLY

SMX_ADDR, PF_ADDR, SSRV_ADDR = "127.0.0.71", "127.0.0.72", "127.0.0.73"
SMX2_ADDR, SINK_ADDR, SINK_PORT = "127.0.0.74", "127.0.0.75", 2424
# BENCH_LMTP=1: a second strictmxd that delivers to bench/lmtp-sink.py instead of a Maildir
LMTP = os.environ.get("BENCH_LMTP", "0") == "1"
# BENCH_MAILDIR=1: strictmxd delivers into an fsync'd Maildir instead of discarding (Postfix
# always discards: `discard` transport); the default compares like with like
MAILDIR = os.environ.get("BENCH_MAILDIR", "0") == "1"
PORT = int(os.environ.get("BENCH_PORT", "2587"))
SSRV_PORT = 4433
NAME = "mx.bench.test"
RCPT = "bench@bench.test"
# Source addresses of the generator: spreads TIME_WAIT over several 4-tuples.
BIND = ["--bind-prefix", "127.0.1.", "--bind-n", "16"]

T0 = time.time()


def log(msg):
    print("[bench %6.1fs] %s" % (time.time() - T0, msg), flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def poll(cond, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def can_connect(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def run(argv, timeout, **kw):
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout, **kw)


# ---------------------------------------------------------------------------
# /proc helpers

def proc_stat(pid):
    """(comm, ppid, utime+stime, cutime+cstime) in seconds, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    comm = s[s.index("(") + 1:s.rindex(")")]
    f = s[s.rindex(")") + 2:].split()
    tck = os.sysconf("SC_CLK_TCK")
    return comm, int(f[1]), (int(f[11]) + int(f[12])) / tck, (int(f[13]) + int(f[14])) / tck


def children(ppid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st and st[1] == ppid:
                out.append((int(d), st))
    return out


def rollup(pid):
    """dict Rss/Pss/Private_* in kB from smaps_rollup."""
    out = {}
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                m = re.match(r"(\w+):\s+(\d+) kB", line)
                if m:
                    out[m.group(1)] = int(m.group(2))
    except OSError:
        pass
    return out


# ---------------------------------------------------------------------------
# certificates

def make_certs(d):
    """Test CA (ECDSA P-256) and a server certificate for NAME signed by it."""
    def ossl(*a):
        p = run(["openssl"] + list(a), 60)
        if p.returncode:
            raise RuntimeError("openssl %s: %s" % (a[0], p.stderr))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    ossl("req", "-x509", "-new", "-nodes", *ec, "-keyout", d + "/ca.key", "-out", d + "/ca.crt",
         "-days", "2", "-subj", "/CN=strictmx bench CA")
    ossl("req", "-new", "-nodes", *ec, "-keyout", d + "/mx.key", "-out", d + "/mx.csr",
         "-subj", "/CN=" + NAME)
    with open(d + "/ext.cnf", "w") as f:
        f.write("subjectAltName=DNS:%s\nkeyUsage=digitalSignature\n"
                "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n" % NAME)
    ossl("x509", "-req", "-in", d + "/mx.csr", "-CA", d + "/ca.crt", "-CAkey", d + "/ca.key",
         "-CAcreateserial", "-days", "2", "-extfile", d + "/ext.cnf", "-out", d + "/mx.crt")
    with open(d + "/mx.pem", "w") as f:  # Postfix chain file: key then cert
        f.write(open(d + "/mx.key").read() + open(d + "/mx.crt").read())
    for n in ("mx.key", "mx.pem"):
        os.chmod(os.path.join(d, n), 0o644)  # test key; the daemons drop privileges


# ---------------------------------------------------------------------------
# servers

class Strictmx:
    def __init__(self, work, max_conns, addr=SMX_ADDR, label="strictmxd", lmtp=None):
        self.addr = addr
        self.label = label
        self.dir = os.path.join(work, "smx" if lmtp is None else "smx-lmtp")
        os.mkdir(self.dir)
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "var")
        self.maildir_new = os.path.join(self.data, "mail", "bench.test", "bench", "new")
        self.conf = os.path.join(self.dir, "strictmx.conf")
        with open(self.conf, "w") as f:
            f.write("[server]\nhostname = %s\nlisten = %s:%d\ndata_dir = %s\n"
                    "tls_cert = %s/mx.crt\ntls_key = %s/mx.key\nlocal_domains = bench.test\n"
                    "\n[local_delivery]\n%s\n"
                    "\n[limits]\nconnections = %d\nconnections_per_ip = %d\n"
                    % (NAME, addr, PORT, self.data, work, work,
                       ("lmtp = " + lmtp) if lmtp is not None
                       else ("maildir = %s/mail" % self.data) if MAILDIR
                       else "discard = yes",
                       max_conns + 100, max_conns + 100))
        self.log = os.path.join(self.dir, "daemon.log")
        self.proc = None
        self.accepted = 0

    def start(self, nofile):
        def pre():
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.proc = subprocess.Popen([STRICTMXD, "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     cwd=self.dir, preexec_fn=pre)
        if not poll(lambda: self.proc.poll() is not None or can_connect(self.addr, PORT), 30):
            raise RuntimeError("strictmxd not listening; log:\n" + self.log_tail())
        if self.proc.poll() is not None:
            raise RuntimeError("strictmxd exited; log:\n" + self.log_tail())
        self.pid = self.proc.pid

    def log_tail(self):
        try:
            return open(self.log, errors="replace").read()[-3000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def cpu(self):
        st = proc_stat(self.pid)
        return st[2] + st[3] if st else 0.0

    def check_alive(self, results, where):
        """Record (and report) a daemon that is gone: exit status and its last log lines."""
        if self.proc.poll() is None:
            return True
        rc = self.proc.returncode
        how = ("killed by signal %d" % -rc) if rc < 0 else ("exit code %d" % rc)
        log("strictmxd %s during %s; log tail:\n%s" % (how, where, self.log_tail()[-1500:]))
        results.setdefault("incidents", []).append(
            {"where": where, "strictmxd": how, "log_tail": self.log_tail()[-1500:]})
        return False

    def delivered(self):
        try:
            return len(os.listdir(self.maildir_new))
        except FileNotFoundError:
            return 0

    def queued(self):
        try:
            return len(os.listdir(os.path.join(self.data, "queue")))
        except FileNotFoundError:
            return 0

    def drain(self, expected, timeout=120):
        """Wait until the queue is empty (every message delivered). The delivered files
        stay until the end: deleting thousands of files between runs makes the next
        run's file creations slower (ext4 skips recently deleted inodes)."""
        return poll(lambda: self.queued() == 0, timeout, 0.2) is not None

    def rss_kb(self):
        r = rollup(self.pid)
        return r.get("Rss", 0), r.get("Pss", 0)


MASTER_CF = """\
{listen} inet n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    label = "postfix"

    def __init__(self, work, max_conns):
        self.dir = os.path.join(work, "postfix")
        os.mkdir(self.dir)
        os.chmod(self.dir, 0o755)
        self.conf_dir = os.path.join(self.dir, "etc")
        self.queue = os.path.join(self.dir, "queue")
        self.data = os.path.join(self.dir, "data")
        self.maillog = os.path.join(self.dir, "maillog")
        for d in (self.conf_dir, self.queue, self.data):
            os.mkdir(d)
            os.chmod(d, 0o755)
        shutil.chown(self.data, "postfix")
        main = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue,
            "data_directory": self.data,
            "maillog_file": self.maillog,
            "maillog_file_prefixes": os.path.dirname(self.dir),
            "myhostname": NAME,
            "mydomain": "bench.test",
            "myorigin": NAME,
            "mydestination": "bench.test",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "default_transport": "discard",
            "relay_transport": "discard",
            "local_transport": "discard",
            "inet_interfaces": "loopback-only",  # the smtpd line binds PF_ADDR
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtpd_peername_lookup": "no",
            "smtpd_tls_security_level": "encrypt",
            "smtpd_tls_chain_files": os.path.join(work, "mx.pem"),
            "smtpd_tls_loglevel": "0",
            "smtpd_client_connection_count_limit": "0",
            "default_process_limit": str(max(100, max_conns + 50)),
            "smtputf8_enable": "no",
            "biff": "no",
            "notify_classes": "",
        }
        with open(os.path.join(self.conf_dir, "main.cf"), "w") as f:
            for k, v in main.items():
                f.write("%s = %s\n" % (k, v))
        with open(os.path.join(self.conf_dir, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(listen="%s:%d" % (PF_ADDR, PORT)))
        self.started = False
        self.accepted = 0

    def postfix(self, *args, timeout=60):
        return run(["postfix", "-c", self.conf_dir] + list(args), timeout)

    def start(self, nofile):
        p = self.postfix("start")
        if p.returncode != 0:
            raise RuntimeError("postfix start failed: %s %s" % (p.stdout, p.stderr))
        self.started = True
        if not poll(lambda: can_connect(PF_ADDR, PORT), 30):
            raise RuntimeError("postfix not listening")
        with open(os.path.join(self.queue, "pid", "master.pid")) as f:
            self.pid = int(f.read().strip())

    def stop(self):
        if not self.started:
            return
        self.started = False
        try:
            self.postfix("stop")
        except subprocess.TimeoutExpired:
            pass

        def gone():
            try:
                os.kill(self.pid, 0)
                return False
            except ProcessLookupError:
                return True
        if not poll(gone, 30, 0.2):
            try:
                self.postfix("abort")
            except subprocess.TimeoutExpired:
                pass

    def cpu(self):
        """master (own + reaped children) + every live child."""
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

    def drain(self, expected, timeout=120):
        return poll(lambda: self.queued() == 0, timeout, 0.2) is not None

    def smtpd_mem(self):
        n = rss = pss = 0
        for pid, st in children(self.pid):
            if st[0] == "smtpd":
                r = rollup(pid)
                n += 1
                rss += r.get("Rss", 0)
                pss += r.get("Pss", 0)
        return n, rss, pss


# ---------------------------------------------------------------------------
# measurements

def load_run(server_addr, args, timeout):
    argv = [SMTP_LOAD, "--host", server_addr, "--port", str(PORT), "--cafile", CA,
            "--servername", NAME, "--rcpt", RCPT, "--quiet"] + BIND + args
    p = run(argv, timeout)
    js = None
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            js = json.loads(line)
    if js is None:
        raise RuntimeError("smtp-load gave no result (rc %d): %s %s"
                           % (p.returncode, p.stdout[-1000:], p.stderr[-1000:]))
    js["stderr"] = p.stderr[-600:]
    return js


def throughput(srv, addr, msgs, dur, conns=None, resume=False):
    conns = conns or CONNS
    la = loadavg()
    c0 = srv.cpu()
    js = load_run(addr, ["--connections", str(conns), "--messages", str(msgs),
                         "--size", "4096", "--duration", str(dur)]
                  + (["--resume"] if resume else []), dur + 120)
    n_all = js["messages"] + js["messages_after_window"]
    srv.accepted += n_all
    drained = srv.drain(0)
    c1 = srv.cpu()
    js.update({"server": srv.label, "conns": conns, "resume": resume, "load_before": la,
               "load_after": loadavg(), "server_cpu_s": round(c1 - c0, 3),
               "server_cpu_ms_per_msg": round((c1 - c0) * 1000 / n_all, 3) if n_all else None,
               "drained": drained})
    return js


def handshake_run(srv, addr, port, direct, dur):
    la = loadavg()
    c0 = srv.cpu()
    # s_server handles one connection at a time: one client is its best case
    args = ["--connections", "1" if direct else str(CONNS), "--duration", str(dur), "--tls13"]
    args += ["--direct-tls"] if direct else ["--messages", "0"]
    argv = [SMTP_LOAD, "--host", addr, "--port", str(port), "--cafile", CA,
            "--servername", NAME, "--quiet"] + BIND + args
    p = run(argv, dur + 120)
    js = json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])
    c1 = srv.cpu()
    js.update({"server": srv.label, "load_before": la, "load_after": loadavg(),
               "server_cpu_s": round(c1 - c0, 3),
               "server_cpu_ms_per_hs": round((c1 - c0) * 1000 / js["handshakes"], 3)
               if js["handshakes"] else None, "stderr": p.stderr[-600:]})
    return js


class SServer:
    label = "openssl s_server"

    def __init__(self, work):
        self.log = os.path.join(work, "s_server.log")
        self.proc = subprocess.Popen(
            ["openssl", "s_server", "-quiet", "-accept", "%s:%d" % (SSRV_ADDR, SSRV_PORT),
             "-cert", os.path.join(work, "mx.crt"), "-key", os.path.join(work, "mx.key"),
             "-no_ticket"],
            stdin=subprocess.DEVNULL, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        if not poll(lambda: can_connect(SSRV_ADDR, SSRV_PORT), 20):
            raise RuntimeError("s_server not listening")

    def cpu(self):
        st = proc_stat(self.pid)
        return st[2] + st[3] if st else 0.0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def s_time(dur):
    p = run(["openssl", "s_time", "-connect", "%s:%d" % (SSRV_ADDR, SSRV_PORT), "-new",
             "-time", str(int(dur)), "-CAfile", CA], dur + 60)
    m = re.search(r"(\d+) connections in ([\d.]+)s; ([\d.]+) connections/user sec", p.stdout)
    m2 = re.search(r"(\d+) connections in (\d+) real seconds", p.stdout)
    if not m or not m2:
        return {"raw": p.stdout[-400:]}
    return {"connections": int(m2.group(1)), "real_s": int(m2.group(2)),
            "per_s": round(int(m2.group(1)) / max(1, int(m2.group(2))), 1),
            "client_user_s": float(m.group(2)), "per_client_user_s": float(m.group(3))}


def idle_memory(srv, k, hold=3.0):
    la = loadavg()
    before = srv.rss_kb() if isinstance(srv, Strictmx) else None
    argv = [SMTP_LOAD, "--host", SMX_ADDR if isinstance(srv, Strictmx) else PF_ADDR,
            "--port", str(PORT), "--cafile", CA, "--servername", NAME, "--quiet",
            "--connections", str(k), "--idle", str(hold + 600), "--max-connecting", "64",
            "--max-time", "240", "--timeout", "60", "--tls13"] + BIND
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    res = {"server": srv.label, "k": k, "load_before": la}
    try:
        line = p.stdout.readline()  # READY n secs (bounded by --max-time)
        m = re.match(r"READY (\d+) ([\d.]+)", line)
        if not m:
            raise RuntimeError("idle run gave no READY: %r" % line)
        res["ready"] = int(m.group(1))
        res["setup_s"] = float(m.group(2))
        time.sleep(hold)
        if isinstance(srv, Strictmx):
            after = srv.rss_kb()
            res.update({"rss_before_kb": before[0], "rss_after_kb": after[0],
                        "pss_before_kb": before[1], "pss_after_kb": after[1],
                        "kib_per_session_rss": round((after[0] - before[0]) / max(1, res["ready"]), 1),
                        "kib_per_session_pss": round((after[1] - before[1]) / max(1, res["ready"]), 1)})
        else:
            n, rss, pss = srv.smtpd_mem()
            res.update({"smtpd_processes": n, "smtpd_rss_sum_kb": rss, "smtpd_pss_sum_kb": pss,
                        # one smtpd process per session (idle leftovers included: per process)
                        "kib_per_session_rss": round(rss / max(1, n), 1),
                        "kib_per_session_pss": round(pss / max(1, n), 1)})
    finally:
        p.send_signal(signal.SIGINT)  # no handler: ends the generator at once
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    res["load_after"] = loadavg()
    return res


def perf_profile(smx, work, dur):
    """perf stat, perf record and perf trace of strictmxd under the 1 msg/conn load."""
    out = {}
    data = os.path.join(work, "perf.data")
    gen = subprocess.Popen([SMTP_LOAD, "--host", SMX_ADDR, "--port", str(PORT), "--cafile", CA,
                            "--servername", NAME, "--rcpt", RCPT, "--quiet", "--connections",
                            str(CONNS), "--messages", os.environ.get("PERF_MSGS", "1"),
                            "--duration", str(dur * 2 + 12)] + BIND,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        p = run(["perf", "stat", "-e", "task-clock,context-switches,cpu-migrations,page-faults",
                 "-p", str(smx.pid), "--", "sleep", str(dur)], dur + 30)
        out["perf_stat"] = p.stderr.strip()
        p = run(["perf", "record", "-F", "999", "-g", "-o", data, "-p", str(smx.pid), "--",
                 "sleep", str(dur)], dur + 60)
        # last: perf trace slows the traced process down the most
        tr = os.path.join(work, "perf-trace.txt")
        run(["perf", "trace", "-s", "-p", str(smx.pid), "-o", tr, "--", "sleep", "3"], 60)
        try:
            rows = []
            for line in open(tr, errors="replace"):
                f = line.split()
                if len(f) >= 8 and re.match(r"^[a-z_0-9]+$", f[0]) and re.match(r"^\d+$", f[1]):
                    rows.append((float(f[3]), line.rstrip()))
            rows.sort(reverse=True)
            out["perf_trace"] = ["   syscall            calls  errors  total(ms)  min  avg  max  stddev%"] + \
                [r[1] for r in rows[:12]]
        except OSError:
            pass
        o, _e = gen.communicate(timeout=dur * 2 + 130)
        js = [l for l in o.splitlines() if l.startswith("{")]
        if js:
            out["load"] = json.loads(js[-1])
        rep = run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort",
                   "dso,symbol", "-g", "none", "--percent-limit", "1"], 120)
        lines = [l for l in rep.stdout.splitlines() if l.strip() and not l.startswith("#")]
        out["perf_top"] = lines[:25]
        rep = run(["perf", "report", "-i", data, "--stdio", "--children", "--sort",
                   "dso,symbol", "-g", "none", "--percent-limit", "4"], 120)
        out["perf_children"] = [l for l in rep.stdout.splitlines()
                                if l.strip() and not l.startswith("#")][:40]
        rep = run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso",
                   "-g", "none"], 120)
        out["perf_dso"] = [l for l in rep.stdout.splitlines()
                           if l.strip() and not l.startswith("#")][:12]
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.wait(10)
    smx.drain(0, timeout=30)
    return out


# ---------------------------------------------------------------------------

def machine():
    model, detail = "", {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            k, v = k.strip(), v.strip()
            if k == "model name" and not model:
                model = v
            elif k in ("cpu family", "model", "cpu MHz") and k not in detail:
                detail[k] = v
    if detail:
        model += " (family %s, model %s, %s MHz)" % (detail.get("cpu family", "?"),
                                                     detail.get("model", "?"),
                                                     detail.get("cpu MHz", "?"))
    ossl = run(["openssl", "version"], 10).stdout.strip()
    pfv = run(["postconf", "-d", "-h", "mail_version"], 10).stdout.strip()
    mem = open("/proc/meminfo").readline().split()[1]
    try:
        rev = run(["git", "-C", ROOT, "describe", "--always", "--dirty"], 10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        rev = ""
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "openssl": ossl, "postfix": pfv, "mem_gib": round(int(mem) / 1048576, 1),
            "load_start": loadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "source": rev}


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def main():
    global CA
    if os.geteuid() != 0:
        sys.exit("bench: run as root (private Postfix instance)")
    for b in (STRICTMXD, SMTP_LOAD):
        if not os.access(b, os.X_OK):
            sys.exit("bench: missing binary %s" % b)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    idle_k = int(os.environ.get("IDLE_K") or (10000 if hard >= 10000 + 200 else 1000))
    nofile = min(hard, max(idle_k + 200, 4096))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    work = tempfile.mkdtemp(prefix="smx-bench-")
    os.chmod(work, 0o755)
    CA = os.path.join(work, "ca.crt")
    results = {"machine": machine(), "config": {
        "rounds": ROUNDS, "dur": DUR, "conns": CONNS, "conns_hi": CONNS_HI, "resume": RESUME, "hs_dur": HS_DUR, "idle_k": idle_k,
        "pf_idle_k": PF_IDLE_K, "nofile": nofile, "smx_addr": SMX_ADDR, "pf_addr": PF_ADDR,
        "port": PORT}, "throughput": [], "handshake": [], "memory": [], "s_time": []}
    log("work dir %s; machine %s" % (work, results["machine"]))
    make_certs(work)
    smx = Strictmx(work, idle_k)
    pf = Postfix(work, PF_IDLE_K)
    smx2 = Strictmx(work, CONNS, SMX2_ADDR, "strictmxd (LMTP sink)",
                    "%s:%d" % (SINK_ADDR, SINK_PORT)) if LMTP else None
    sink = None
    ss = None
    try:
        smx.start(nofile)
        pf.start(nofile)
        if smx2:
            sink = subprocess.Popen([sys.executable, os.path.join(HERE, "lmtp-sink.py"),
                                     SINK_ADDR, str(SINK_PORT)], stdin=subprocess.DEVNULL)
            if not poll(lambda: can_connect(SINK_ADDR, SINK_PORT), 20):
                raise RuntimeError("lmtp-sink not listening")
            smx2.start(nofile)
        log("strictmxd pid %d on %s:%d, postfix master pid %d on %s:%d"
            % (smx.pid, SMX_ADDR, PORT, pf.pid, PF_ADDR, PORT))
        # warm-up (page cache, process pools), not recorded
        servers = [(smx, SMX_ADDR), (pf, PF_ADDR)] + ([(smx2, SMX2_ADDR)] if smx2 else [])
        for srv, addr in servers:
            throughput(srv, addr, 1, 1)

        for r in range(ROUNDS if want("throughput") else 0):
            scenarios = [(1, CONNS, False), (20, CONNS, False)]
            if CONNS_HI and CONNS_HI != CONNS:
                scenarios.append((1, CONNS_HI, False))
            if RESUME:
                scenarios.append((1, CONNS, True))
            for msgs, conns, resume in scenarios:
                for srv, addr in servers:
                    js = throughput(srv, addr, msgs, DUR, conns, resume)
                    js["round"] = r + 1
                    if isinstance(srv, Strictmx) and not srv.check_alive(results, "throughput"):
                        srv.start(nofile)
                    results["throughput"].append(js)
                    log("round %d %s %d msg/conn x %d%s: %.1f msg/s, p50 %.2f ms, p99 %.2f ms, "
                        "errors %d, server CPU %.3f ms/msg, load %s"
                        % (r + 1, srv.label, msgs, conns,
                           " resumed %d/%d" % (js.get("resumed", 0), js["handshakes"])
                           if resume else "", js["msgs_per_s"], js["p50_ms"],
                           js["p99_ms"],
                           js["errors"], js["server_cpu_ms_per_msg"] or 0, js["load_after"]))

        # group commit: how many messages shared one commit (event=queued ... batch=N)
        try:
            batches = [int(m) for m in re.findall(r"event=queued .*? batch=(\d+)",
                                                  open(smx.log, errors="replace").read())]
            if batches:
                results["commit_batch"] = {
                    "messages": len(batches), "mean": round(statistics.mean(batches), 2),
                    "median": statistics.median(batches), "max": max(batches),
                    "share_batch_1": round(sum(1 for b in batches if b == 1) / len(batches), 3)}
                log("group commit batches: %s" % results["commit_batch"])
        except OSError:
            pass
        ss = SServer(work)
        for r in range(ROUNDS if want("handshake") else 0):
            for srv, addr, port, direct in ((smx, SMX_ADDR, PORT, False),
                                            (pf, PF_ADDR, PORT, False),
                                            (ss, SSRV_ADDR, SSRV_PORT, True)):
                js = handshake_run(srv, addr, port, direct, HS_DUR)
                js["round"] = r + 1
                results["handshake"].append(js)
                log("round %d handshakes %s: %.1f/s, server CPU %.3f ms/hs, errors %d, load %s"
                    % (r + 1, srv.label, js["handshakes_per_s"], js["server_cpu_ms_per_hs"] or 0,
                       js["errors"], js["load_after"]))
            st = s_time(HS_DUR)
            st["round"] = r + 1
            results["s_time"].append(st)
            log("round %d s_time -new: %s" % (r + 1, st))
        smx.drain(0, 1)

        for k in sorted({1000, idle_k}) if want("memory") else ():
            # fresh process: memory freed by earlier sessions stays in malloc's pools
            smx.stop()
            smx.start(nofile)
            load_run(SMX_ADDR, ["--connections", "4", "--messages", "1", "--duration", "1"], 60)
            smx.drain(0, 2)
            m = idle_memory(smx, k)
            if not smx.check_alive(results, "memory K=%d" % k):
                m["died"] = True
                smx.start(nofile)
            results["memory"].append(m)
            log("memory strictmxd K=%d: %s" % (k, m))
        if want("memory"):
            m = idle_memory(pf, PF_IDLE_K)
            results["memory"].append(m)
            log("memory postfix K=%d: %s" % (PF_IDLE_K, m))

        if PERF and want("perf"):
            log("perf: strictmxd under 1 msg/conn load")
            results["perf"] = perf_profile(smx, work, 5)
    finally:
        if ss:
            ss.stop()
        if smx2:
            smx2.stop()
        if sink and sink.poll() is None:
            sink.terminate()
            try:
                sink.wait(10)
            except subprocess.TimeoutExpired:
                sink.kill()
        smx.stop()
        pf.stop()
        results["machine"]["load_end"] = loadavg()
        raw = os.path.join(HERE, "last-run.json")
        with open(raw, "w") as f:
            json.dump(results, f, indent=1)
        log("raw results: %s" % raw)
        if os.environ.get("BENCH_KEEP"):
            log("kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    subprocess.run([sys.executable, os.path.join(HERE, "report.py"), raw, OUT], check=True,
                   timeout=60)
    log("wrote %s" % OUT)


if __name__ == "__main__":
    main()
