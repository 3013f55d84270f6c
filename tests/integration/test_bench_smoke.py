"""`make bench` builds, and a 2-second smoke run of the load generator works.

Benchmarks are not tests (issue 7): this only checks the tooling. smtp-load is built
from bench/ into the test's temp directory; it runs against a strictmxd started here
with a certificate from a test CA, verifying chain and name, STARTTLS on every
connection. The full benchmark (`make bench`) is not run: it takes minutes.
Bound: well under 60 s.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smxtest  # noqa: E402
from smxtest import Daemon, HOSTNAME  # noqa: E402

BENCH = os.path.join(smxtest.SRC, "bench")


def make_ca_and_cert(d, name):
    """Test CA and an ECDSA P-256 server certificate for name, as bench/bench.py does."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]

    def ossl(*a):
        smxtest.run(["openssl"] + list(a), timeout=30).check_returncode()
    ossl("req", "-x509", "-new", "-nodes", *ec, "-keyout", d + "/ca.key", "-out", d + "/ca.crt",
         "-days", "2", "-subj", "/CN=smoke CA")
    ossl("req", "-new", "-nodes", *ec, "-keyout", d + "/mx.key", "-out", d + "/mx.csr",
         "-subj", "/CN=" + name)
    with open(d + "/ext.cnf", "w") as f:
        f.write("subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n" % name)
    ossl("x509", "-req", "-in", d + "/mx.csr", "-CA", d + "/ca.crt", "-CAkey", d + "/ca.key",
         "-CAcreateserial", "-days", "2", "-extfile", d + "/ext.cnf", "-out", d + "/mx.crt")
    os.chmod(d + "/mx.key", 0o644)  # the daemon reads it after dropping privileges
    return d + "/ca.crt", d + "/mx.crt", d + "/mx.key"


def result(p):
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise AssertionError("smtp-load printed no JSON line (rc %d):\n%s\n%s"
                             % (p.returncode, p.stdout, p.stderr))
    return json.loads(lines[-1])


class BenchSmoke(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="smx-bench-smoke-")
        os.chmod(cls.tmp, 0o755)
        p = smxtest.run(["make", "--no-print-directory", "-C", BENCH, "OUT=" + cls.tmp],
                        timeout=60)
        if p.returncode != 0:
            raise AssertionError("make -C bench failed:\n%s\n%s" % (p.stdout, p.stderr))
        cls.load_bin = os.path.join(cls.tmp, "smtp-load")
        cls.ca, cls.crt, cls.key = make_ca_and_cert(cls.tmp, HOSTNAME)

    @classmethod
    def tearDownClass(cls):
        if not os.environ.get("SMX_KEEP_TMP"):
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def daemon(self):
        d = Daemon(server={"tls_cert": self.crt, "tls_key": self.key},
                   limits={"connections_per_ip": 200})
        self.addCleanup(d.stop)
        return d

    def load(self, port, *args, timeout=40):
        argv = [self.load_bin, "--host", "127.0.0.1", "--port", str(port), "--cafile", self.ca,
                "--servername", HOSTNAME, "--rcpt", "u@example.org"] + list(args)
        return smxtest.run(argv, timeout=timeout)

    def test_make_bench_target(self):
        """The bench target exists and runs bench/run.sh; the scripts parse."""
        p = smxtest.run(["make", "-n", "-C", smxtest.SRC, "bench"], timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("bench/run.sh", p.stdout)
        p = smxtest.run(["sh", "-n", os.path.join(BENCH, "run.sh")], timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        for f in ("bench.py", "report.py"):
            with open(os.path.join(BENCH, f)) as fh:
                compile(fh.read(), f, "exec")

    def test_report_renders(self):
        """report.py turns a result file into the markdown section (synthetic numbers)."""
        thr = []
        for srv in ("strictmxd", "postfix"):
            for m, conns, res in ((1, 1, False), (20, 1, False), (1, 4, False), (1, 1, True)):
                thr.append({"server": srv, "messages_per_conn": m, "conns": conns,
                            "resume": res,
                            "msgs_per_s": (400.0 if conns == 4 and srv == "strictmxd"
                                           else 350.0 if res and srv == "strictmxd"
                                           else 100.0),
                            "handshakes": 10, "resumed": 9 if res else 0,
                            "handshakes_per_s": 10.0, "p50_ms": 1.0, "p99_ms": 2.0,
                            "errors": 0, "server_cpu_s": 1.0, "server_cpu_ms_per_msg": 1.0,
                            "load_before": "0 0 0", "load_after": "0 0 0", "round": 1})
        hs = [{"server": s, "mode": "direct-tls" if s.startswith("openssl") else "smtp",
               "handshakes_per_s": 50.0, "server_cpu_ms_per_hs": 0.5, "errors": 0,
               "server_cpu_s": 1.0, "load_before": "0", "load_after": "0", "round": 1}
              for s in ("strictmxd", "postfix", "openssl s_server")]
        raw = {"machine": {"date": "d", "nproc": 2, "cpu_model": "cpu", "mem_gib": 1,
                           "kernel": "k", "openssl": "o", "postfix": "p", "load_start": "0",
                           "load_end": "0"},
               "config": {"rounds": 1, "dur": 1, "conns": 1, "conns_hi": 4, "hs_dur": 1,
                          "idle_k": 10,
                          "pf_idle_k": 2, "nofile": 100},
               "throughput": thr, "handshake": hs, "s_time": [],
               "memory": [{"server": "strictmxd", "k": 10, "ready": 10, "kib_per_session_rss": 20.0},
                          {"server": "postfix", "k": 2, "ready": 2, "kib_per_session_rss": 1800.0}]}
        rawf = os.path.join(self.tmp, "raw.json")
        out = os.path.join(self.tmp, "B.md")
        with open(rawf, "w") as f:
            json.dump(raw, f)
        with open(out, "w") as f:
            f.write("# Benchmarks\n\nprose kept\n")
        for _ in range(2):  # the second run replaces the section, not appends
            p = smxtest.run([sys.executable, os.path.join(BENCH, "report.py"), rawf, out],
                            timeout=30)
            self.assertEqual(p.returncode, 0, p.stderr)
        with open(out) as f:
            text = f.read()
        self.assertIn("prose kept", text)
        self.assertEqual(text.count("<!-- bench:begin"), 1)
        self.assertIn("| 1 msg/conn, 1 conns", text)
        self.assertIn("| 1 msg/conn, 4 conns | strictmxd | 400.0", text)
        # the target row names both concurrencies and says where it was met
        self.assertIn("1.00× at 1 connections; 4.00× at 4 | **met at 4 connections**, not at 1",
                      text)
        # the resumed-session scenario: its own row, the share resumed, and its ratio
        self.assertIn("| 1 msg/conn, 1 conns, sessions resumed (90% of handshakes) | strictmxd "
                      "| 350.0", text)
        self.assertIn("| (the same, the sender resuming TLS sessions) | (≥ 3× Postfix) | 3.50×",
                      text)

    def test_smoke_run(self):
        """2 s of STARTTLS sessions with 2 messages each: messages > 0, errors == 0."""
        d = self.daemon()
        p = self.load(d.port, "--connections", "4", "--messages", "2", "--size", "4096",
                      "--duration", "2", "--tls13")
        r = result(p)
        self.assertEqual(r["errors"], 0, p.stdout + p.stderr)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertGreater(r["messages"], 0, p.stdout)
        self.assertGreater(r["handshakes"], 0)
        self.assertTrue(r["verified"])
        self.assertGreater(r["p99_ms"], 0)
        self.assertIn("msg/s", p.stdout)  # the human line
        # every accepted message was really queued and delivered
        n = r["messages"] + r["messages_after_window"]
        files = d.wait_mail("example.org", "u", n, timeout=20)
        self.assertGreaterEqual(len(files), n)

    def test_idle_and_handshake_modes(self):
        """--idle holds sessions after the second EHLO; --messages 0 only handshakes."""
        d = self.daemon()
        p = self.load(d.port, "--connections", "20", "--idle", "0.5", "--max-time", "20")
        self.assertEqual(p.stdout.splitlines()[0].split()[:2], ["READY", "20"], p.stdout + p.stderr)
        self.assertEqual(result(p)["errors"], 0, p.stderr)
        p = self.load(d.port, "--connections", "2", "--messages", "0", "--duration", "1")
        r = result(p)
        self.assertEqual(r["errors"], 0, p.stderr)
        self.assertGreater(r["handshakes"], 0)
        self.assertEqual(r["messages"], 0)

    def test_wrong_name_is_an_error(self):
        """Verification is real: another server name fails every handshake."""
        d = self.daemon()
        argv = [self.load_bin, "--host", "127.0.0.1", "--port", str(d.port), "--cafile", self.ca,
                "--servername", "other.example", "--connections", "1", "--duration", "1"]
        p = smxtest.run(argv, timeout=30)
        r = result(p)
        self.assertGreater(r["errors"], 0)
        self.assertEqual(r["messages"], 0)
        self.assertNotEqual(p.returncode, 0)


if __name__ == "__main__":
    unittest.main()
