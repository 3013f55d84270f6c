"""`strictmx policy DOMAIN --json` against real DNS and a real MTA-STS host:
NSD on loopback serving a DNSSEC-signed `lab.` tree (with a bogus TLSA RRset
and an unsigned child), and nginx on 127.0.43.7:443 with a test CA serving
MTA-STS policy files.

What must hold (RFC 7672 §2.2, RFC 8461, issue 4):
- secure MX + secure A + secure usable TLSA (3 1 1)   -> dane
- secure MX, TLSA securely absent                       -> pkix
- TLSA bogus                                            -> defer, never pkix
- unsigned zone (MX insecure)                           -> pkix, no TLSA lookup
- TLSA usages 0/1 only                                  -> pkix ("none usable")
- CNAME'd MX host: TLSA at the expanded name first, then the original name
- null MX / NXDOMAIN                                    -> status, no MX
- MTA-STS enforce with a pattern matching only mx1      -> mx1 mta-sts+pkix, mx2 skip,
  and a DANE MX outside the patterns stays dane
- MTA-STS testing -> pkix (noted); redirect / wrong Content-Type -> no policy
- the cache: a fresh cached policy with the same id is used without a fetch; a failed
  refresh (new id, fetch fails) keeps the cached policy; a good fetch is cached
- [domain] tls = dane-only / encrypt-only

Environment (CTest): STRICTMX = path of the strictmx CLI. Every wait is bounded;
only 127.0.0.0/8 is used.
"""
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dnsbed import DnsBed  # noqa: E402
from mxbed import TestCA  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("STRICTMX_SRC") or os.path.dirname(os.path.dirname(HERE))
STRICTMX = os.environ.get("STRICTMX") or os.path.join(SRC, "build-test", "strictmx")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                     "runtime error:")

STS_ADDR = "127.0.43.7"
H = "0123456789abcdef" * 4  # 32 octets: a SHA2-256 association

ZONES = {
    "dane.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.21", "_25._tcp.mx1 TLSA 3 1 1 " + H],
    "pkix.lab.": ["@ MX 10 mx", "mx A 127.0.0.22"],
    "bogustlsa.lab.": ["@ MX 10 mx", "mx A 127.0.0.23", "_25._tcp.mx TLSA 3 1 1 " + H,
                       "@ MX 20 mx2", "mx2 A 127.0.0.24"],
    "insecure.lab.": ["@ MX 10 mx", "mx A 127.0.0.25", "_25._tcp.mx TLSA 3 1 1 " + H],
    "unusable.lab.": ["@ MX 10 mx", "mx A 127.0.0.26",
                      "_25._tcp.mx TLSA 0 0 1 " + H, "_25._tcp.mx TLSA 1 1 1 " + H,
                      "_25._tcp.mx TLSA 3 1 1 abcd",  # wrong length for SHA2-256
                      "_25._tcp.mx TLSA 3 2 1 " + H],  # selector 2 does not exist
    "mixed.lab.": ["@ MX 10 mx", "mx A 127.0.0.27",
                   "_25._tcp.mx TLSA 1 1 1 " + H, "_25._tcp.mx TLSA 2 0 1 " + H],
    "cname.lab.": ["@ MX 10 mx", "@ MX 20 mx2",
                   "mx CNAME real", "real A 127.0.0.28", "_25._tcp.real TLSA 3 1 1 " + H,
                   "mx2 CNAME real2", "real2 A 127.0.0.29", "_25._tcp.mx2 TLSA 3 0 1 " + H],
    "nullmx.lab.": ["@ MX 0 ."],
    "sts.lab.": ["@ MX 10 mx1", "@ MX 20 mx2", "@ MX 30 mx3",
                 "mx1 A 127.0.0.31", "mx2 A 127.0.0.32", "mx3 A 127.0.0.33",
                 "_25._tcp.mx3 TLSA 3 1 1 " + H,
                 '_mta-sts TXT "v=STSv1; id=20240101T000000"', "mta-sts A " + STS_ADDR],
    "ststest.lab.": ["@ MX 10 mx1", "@ MX 20 mx2", "mx1 A 127.0.0.34", "mx2 A 127.0.0.35",
                     '_mta-sts TXT "v=STSv1; id=1"', "mta-sts A " + STS_ADDR],
    "stsredir.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.36",
                      '_mta-sts TXT "v=STSv1; id=1"', "mta-sts A " + STS_ADDR],
    "ststype.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.37",
                     '_mta-sts TXT "v=STSv1; id=1"', "mta-sts A " + STS_ADDR],
    "stsbadtxt.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.38",
                       '_mta-sts TXT "v=STSv1; id=1"', '_mta-sts TXT "v=STSv1; id=2"',
                       "mta-sts A " + STS_ADDR],
    "stscache.lab.": ["@ MX 10 mx1", "@ MX 20 mx2", "mx1 A 127.0.0.39", "mx2 A 127.0.0.40",
                      '_mta-sts TXT "v=STSv1; id=new"', "mta-sts A " + STS_ADDR],
    "stssame.lab.": ["@ MX 10 mx1", "@ MX 20 mx2", "mx1 A 127.0.0.41", "mx2 A 127.0.0.42",
                     '_mta-sts TXT "v=STSv1; id=same"', "mta-sts A " + STS_ADDR],
    "daneonly.lab.": ["@ MX 10 mx", "@ MX 20 mx2", "mx A 127.0.0.43", "mx2 A 127.0.0.44",
                      "_25._tcp.mx2 TLSA 3 1 1 " + H],
    "encrypt.lab.": ["@ MX 10 mx", "@ MX 20 mx2", "mx A 127.0.0.45", "mx2 A 127.0.0.46",
                     "_25._tcp.mx2 TLSA 3 1 1 " + H],
    # security-anchors §8 F (issue 6)
    # 41: dane-only, TLSA in an unsigned zone
    "daneonlyins.lab.": ["@ MX 10 mx", "mx A 127.0.0.47", "_25._tcp.mx TLSA 3 1 1 " + H],
    # 42: MX secure, host A in an unsigned zone; its TLSA names are delegated to a
    # name server that does not exist, so a TLSA query would fail (and defer the MX)
    "hostins.lab.": ["@ MX 10 mx.hostunsigned.lab."],
    "hostunsigned.lab.": ["mx A 127.0.0.49", "_tcp.mx NS ns.does-not-exist.lab."],
    # ... the same trap under a secure host: the query is sent, and defers
    "hosttrap.lab.": ["@ MX 10 mx", "mx A 127.0.0.50", "_tcp.mx NS ns.does-not-exist.lab."],
    # 43: MX insecure (unsigned zone), MX host, A and TLSA secure (dane.lab)
    "mxinsecure.lab.": ["@ MX 10 mx1.dane.lab."],
    # 45: CNAME'd MX host, TLSA at the expanded name bogus, a good one at the original
    "cnamefail.lab.": ["@ MX 10 mx", "mx CNAME real", "real A 127.0.0.51",
                       "_25._tcp.real TLSA 3 1 1 " + H, "_25._tcp.mx TLSA 3 1 1 " + H],
}
UNSIGNED = ["insecure.lab.", "daneonlyins.lab.", "hostunsigned.lab.", "mxinsecure.lab."]
BOGUS = [("bogustlsa.lab.", "_25._tcp.mx.bogustlsa.lab.", "TLSA"),
         ("cnamefail.lab.", "_25._tcp.real.cnamefail.lab.", "TLSA")]

POLICIES = {
    "sts.lab": ("text/plain",
                "version: STSv1\r\nmode: enforce\r\nmx: mx1.sts.lab\r\nmax_age: 86400\r\n"),
    "ststest.lab": ("text/plain; charset=utf-8",
                    "version: STSv1\nmode: testing\nmx: mx1.ststest.lab\nmax_age: 600\n"),
    "ststype.lab": ("text/html",
                    "version: STSv1\nmode: enforce\nmx: mx1.ststype.lab\nmax_age: 600\n"),
    "stsbadtxt.lab": ("text/plain",
                      "version: STSv1\nmode: enforce\nmx: nomatch.lab\nmax_age: 600\n"),
    # stscache.lab and stssame.lab: nothing served (404)
}


def bound_free(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx does: TIME_WAIT is fine
    try:
        s.bind((addr, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class Nginx:
    """nginx in the foreground (no master) on STS_ADDR:443 serving policies."""

    def __init__(self, ca):
        self.dir = tempfile.mkdtemp(prefix="policy-nginx-")
        os.chmod(self.dir, 0o755)
        names = ["mta-sts." + d for d in list(POLICIES) + ["stsredir.lab", "stscache.lab",
                                                             "stssame.lab"]]
        self.crt, self.key = ca.leaf(names[0], names)
        servers = []
        for dom in names:
            dom = dom[len("mta-sts."):]
            www = os.path.join(self.dir, "www", dom, ".well-known")
            os.makedirs(www)
            loc = ""
            if dom in POLICIES:
                ctype, body = POLICIES[dom]
                with open(os.path.join(www, "mta-sts.txt"), "w", newline="") as f:
                    f.write(body)
                loc = ("location = /.well-known/mta-sts.txt { types { } "
                       "default_type \"%s\"; }" % ctype)
            elif dom == "stsredir.lab":
                loc = ("location = /.well-known/mta-sts.txt { "
                       "return 301 https://mta-sts.sts.lab/.well-known/mta-sts.txt; }")
            servers.append(
                "server { listen %s:443 ssl; server_name mta-sts.%s; "
                "ssl_certificate %s; ssl_certificate_key %s; root %s; %s }"
                % (STS_ADDR, dom, self.crt, self.key, os.path.join(self.dir, "www", dom), loc))
        d = self.dir
        conf = ["worker_processes 1;", "master_process off;",
                "pid %s/nginx.pid;" % d, "error_log %s/error.log info;" % d,
                "events { worker_connections 64; }",
                "http {", "access_log %s/access.log;" % d,
                "client_body_temp_path %s/tmp-body;" % d, "proxy_temp_path %s/tmp-proxy;" % d,
                "fastcgi_temp_path %s/tmp-fcgi;" % d, "uwsgi_temp_path %s/tmp-uwsgi;" % d,
                "scgi_temp_path %s/tmp-scgi;" % d] + servers + ["}"]
        self.conf = os.path.join(d, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join(conf) + "\n")
        self.proc = None

    def start(self, timeout=15):
        if not bound_free(STS_ADDR, 443):
            raise RuntimeError("%s:443 is in use" % STS_ADDR)
        self.out = open(os.path.join(self.dir, "nginx.out"), "w")
        self.proc = subprocess.Popen([NGINX, "-p", self.dir, "-e", self.dir + "/error.log",
                                      "-c", self.conf, "-g", "daemon off;"],
                                     stdout=self.out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection((STS_ADDR, 443), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        log = self.log()
        self.stop()
        raise RuntimeError("nginx did not start: %s" % log)

    def log(self):
        text = ""
        for n in ("nginx.out", "error.log"):
            try:
                with open(os.path.join(self.dir, n)) as f:
                    text += f.read()
            except OSError:
                pass
        return text

    def access_log(self):
        try:
            with open(os.path.join(self.dir, "access.log")) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if getattr(self, "out", None) is not None:
            self.out.close()
            self.out = None
        if not os.environ.get("SMX_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)


class PolicyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.access(STRICTMX, os.X_OK):
            raise unittest.SkipTest("no strictmx binary at %s" % STRICTMX)
        for tool in ("nsd", "ldns-signzone", "nginx"):
            if shutil.which(tool) is None and not os.path.exists("/usr/sbin/" + tool):
                raise unittest.SkipTest("%s not installed" % tool)
        r = subprocess.run([STRICTMX, "policy"], capture_output=True, text=True, timeout=30)
        if "unknown command" in r.stderr:
            raise unittest.SkipTest("%s has no policy command yet (dispatch in strictmx.c)"
                                    % STRICTMX)
        cls.tmp = tempfile.mkdtemp(prefix="test-policy-")
        cls.ca = TestCA()
        cls.bed = DnsBed(ZONES, signed=True, unsigned=UNSIGNED, bogus=BOGUS)
        cls.bed.start()
        cls.nginx = Nginx(cls.ca)
        try:
            cls.nginx.start()
        except Exception:
            cls.bed.stop()
            cls.ca.close()
            raise
        cls.data_dir = os.path.join(cls.tmp, "var")
        os.makedirs(cls.data_dir)
        cls.conf = os.path.join(cls.tmp, "strictmx.conf")
        with open(cls.conf, "w") as f:
            f.write("\n".join([
                "[server]", "data_dir = %s" % cls.data_dir, "",
                "[dns]", "stub = %s" % cls.bed.stub,
                "trust_anchor = %s" % cls.bed.trust_anchor_file, "",
                "[outbound]", "ca_file = %s" % cls.ca.ca_file, "",
                '[domain "daneonly.lab"]', "tls = dane-only", "",
                '[domain "daneonlyins.lab"]', "tls = dane-only", "",
                '[domain "encrypt.lab"]', "tls = encrypt-only", ""]))

    @classmethod
    def tearDownClass(cls):
        cls.nginx.stop()
        cls.bed.stop()
        cls.ca.close()
        if not os.environ.get("SMX_KEEP_TMP"):
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def policy(self, domain, json_out=True, expect_rc=0):
        argv = [STRICTMX, "-c", self.conf, "policy", domain] + (["--json"] if json_out else [])
        r = subprocess.run(argv, capture_output=True, text=True, timeout=90)
        for m in SANITIZER_MARKERS:
            if m in r.stderr:
                raise AssertionError("sanitizer report from %s:\n%s" % (argv, r.stderr))
        self.assertEqual(r.returncode, expect_rc, "%s: %s %s" % (argv, r.stdout, r.stderr))
        return json.loads(r.stdout) if json_out else r.stdout

    def mx(self, plan, host):
        for m in plan["mx"]:
            if m["host"] == host:
                return m
        raise AssertionError("no MX %s in %s" % (host, plan))

    # ---- DANE (RFC 7672) ----

    def test_dane_ee(self):
        p = self.policy("dane.lab")
        self.assertEqual(p["status"], "ok")
        self.assertEqual(p["mx_sec"], "secure")
        m = self.mx(p, "mx1.dane.lab")
        self.assertEqual(m["method"], "dane", m)
        self.assertEqual(m["tlsa"], ["3 1 1 " + H])
        self.assertEqual(m["tlsa_base"], "mx1.dane.lab")
        self.assertEqual(m["addrs"], ["127.0.0.21"])
        self.assertEqual(m["addr_sec"], "secure")
        self.assertIn("TLSA 3 1 1 present", m["why"])

    def test_tlsa_absent_pkix(self):
        m = self.mx(self.policy("pkix.lab"), "mx.pkix.lab")
        self.assertEqual(m["method"], "pkix", m)
        self.assertIn("securely absent", m["why"])
        self.assertEqual(m["tlsa"], [])

    def test_tlsa_bogus_defers(self):
        p = self.policy("bogustlsa.lab")
        m = self.mx(p, "mx.bogustlsa.lab")
        self.assertEqual(m["method"], "defer", m)
        self.assertIn("TLSA lookup bogus", m["why"])
        # the other MX, without TLSA, is unaffected
        self.assertEqual(self.mx(p, "mx2.bogustlsa.lab")["method"], "pkix")

    def test_insecure_zone_pkix(self):
        p = self.policy("insecure.lab")
        self.assertEqual(p["mx_sec"], "insecure")
        m = self.mx(p, "mx.insecure.lab")
        self.assertEqual(m["method"], "pkix", m)
        self.assertEqual(m["why"], "MX insecure: no DANE")
        self.assertEqual(m["tlsa"], [])

    def test_unusable_only_pkix(self):
        m = self.mx(self.policy("unusable.lab"), "mx.unusable.lab")
        self.assertEqual(m["method"], "pkix", m)
        self.assertEqual(m["why"], "TLSA records present but none usable: PKIX required")

    def test_mixed_keeps_only_usable(self):
        m = self.mx(self.policy("mixed.lab"), "mx.mixed.lab")
        self.assertEqual(m["method"], "dane", m)
        self.assertEqual(m["tlsa"], ["2 0 1 " + H])
        self.assertIn("unusable records ignored", m["why"])

    def test_cname_mx_host(self):
        p = self.policy("cname.lab")
        # RFC 7672 §2.2.2: TLSA at the secure expansion first...
        m = self.mx(p, "mx.cname.lab")
        self.assertEqual(m["method"], "dane", m)
        self.assertEqual(m["tlsa_base"], "real.cname.lab")
        self.assertEqual(m["addrs"], ["127.0.0.28"])
        # ...then at the original name when the expansion securely has none
        m2 = self.mx(p, "mx2.cname.lab")
        self.assertEqual(m2["method"], "dane", m2)
        self.assertEqual(m2["tlsa_base"], "mx2.cname.lab")
        self.assertEqual(m2["tlsa"], ["3 0 1 " + H])

    def test_null_mx(self):
        p = self.policy("nullmx.lab")
        self.assertEqual(p["status"], "null-mx")
        self.assertEqual(p["mx"], [])

    def test_nxdomain(self):
        p = self.policy("nosuch.lab")
        self.assertEqual(p["status"], "nxdomain")
        self.assertEqual(p["mx"], [])

    # ---- MTA-STS (RFC 8461) ----

    def test_sts_enforce(self):
        p = self.policy("sts.lab")
        sts = p["mta_sts"]
        self.assertTrue(sts["txt"], sts)
        self.assertTrue(sts["valid"], sts)
        self.assertFalse(sts["from_cache"], sts)
        self.assertEqual(sts["error"], "")
        self.assertEqual(sts["id"], "20240101T000000")
        self.assertEqual(sts["mode"], "enforce")
        self.assertEqual(sts["mx"], ["mx1.sts.lab"])
        self.assertEqual(sts["max_age"], 86400)
        self.assertEqual(self.mx(p, "mx1.sts.lab")["method"], "mta-sts+pkix")
        m2 = self.mx(p, "mx2.sts.lab")
        self.assertEqual(m2["method"], "skip")
        self.assertIn("not in MTA-STS policy (enforce)", m2["why"])
        # DANE takes precedence over the policy
        self.assertEqual(self.mx(p, "mx3.sts.lab")["method"], "dane")
        # the fetched policy is cached; the next plan uses it
        p2 = self.policy("sts.lab")
        self.assertTrue(p2["mta_sts"]["from_cache"], p2["mta_sts"])
        self.assertEqual(self.mx(p2, "mx2.sts.lab")["method"], "skip")
        with sqlite3.connect(os.path.join(self.data_dir, "policy.db")) as db:
            row = db.execute("SELECT id, max_age FROM sts WHERE domain='sts.lab'").fetchone()
        self.assertEqual(row, ("20240101T000000", 86400))

    def test_sts_testing(self):
        p = self.policy("ststest.lab")
        self.assertEqual(p["mta_sts"]["mode"], "testing")
        m1, m2 = self.mx(p, "mx1.ststest.lab"), self.mx(p, "mx2.ststest.lab")
        self.assertEqual(m1["method"], "pkix")
        self.assertEqual(m2["method"], "pkix")
        self.assertIn("MTA-STS testing", m2["why"])

    def test_sts_redirect_not_followed(self):
        p = self.policy("stsredir.lab")
        self.assertFalse(p["mta_sts"]["valid"], p["mta_sts"])
        self.assertIn("redirect", p["mta_sts"]["error"])
        self.assertEqual(self.mx(p, "mx1.stsredir.lab")["method"], "pkix")

    def test_sts_content_type(self):
        p = self.policy("ststype.lab")
        self.assertFalse(p["mta_sts"]["valid"], p["mta_sts"])
        self.assertIn("Content-Type", p["mta_sts"]["error"])

    def test_sts_two_txt_records(self):
        p = self.policy("stsbadtxt.lab")
        self.assertFalse(p["mta_sts"]["txt"])
        self.assertFalse(p["mta_sts"]["valid"])
        self.assertIn("more than one", p["mta_sts"]["error"])
        self.assertEqual(self.mx(p, "mx1.stsbadtxt.lab")["method"], "pkix")

    def _cache(self, domain, id_, text, age=86400, fetched=None):
        with sqlite3.connect(os.path.join(self.data_dir, "policy.db"), timeout=5) as db:
            db.execute("CREATE TABLE IF NOT EXISTS sts(domain TEXT PRIMARY KEY, id TEXT NOT "
                       "NULL, policy TEXT NOT NULL, fetched INTEGER NOT NULL, max_age "
                       "INTEGER NOT NULL)")
            db.execute("INSERT OR REPLACE INTO sts VALUES (?, ?, ?, ?, ?)",
                       (domain, id_, text, int(fetched or time.time()), age))

    def test_sts_cache_same_id(self):
        # the TXT id is unchanged: the cached policy is used, nothing is fetched
        self._cache("stssame.lab", "same",
                    "version: STSv1\nmode: enforce\nmx: mx2.stssame.lab\nmax_age: 86400\n")
        p = self.policy("stssame.lab")
        self.assertTrue(p["mta_sts"]["from_cache"], p["mta_sts"])
        self.assertEqual(self.mx(p, "mx1.stssame.lab")["method"], "skip")
        self.assertEqual(self.mx(p, "mx2.stssame.lab")["method"], "mta-sts+pkix")
        self.assertNotIn("mta-sts.stssame.lab", self.nginx.access_log())

    def test_sts_refresh_failure_keeps_cache(self):
        # a new id, but the fetch fails (404): RFC 8461 §5.1 keeps the cached policy
        self._cache("stscache.lab", "old",
                    "version: STSv1\nmode: enforce\nmx: mx1.stscache.lab\nmax_age: 86400\n")
        p = self.policy("stscache.lab")
        sts = p["mta_sts"]
        self.assertTrue(sts["from_cache"], sts)
        self.assertIn("HTTP 404", sts["error"])
        self.assertEqual(self.mx(p, "mx1.stscache.lab")["method"], "mta-sts+pkix")
        self.assertEqual(self.mx(p, "mx2.stscache.lab")["method"], "skip")
        # an expired cached policy is not used
        self._cache("stscache.lab", "old",
                    "version: STSv1\nmode: enforce\nmx: mx1.stscache.lab\nmax_age: 60\n",
                    age=60, fetched=time.time() - 120)
        p = self.policy("stscache.lab")
        self.assertFalse(p["mta_sts"]["valid"], p["mta_sts"])
        self.assertEqual(self.mx(p, "mx2.stscache.lab")["method"], "pkix")

    # ---- [domain] overrides ----

    def test_dane_only(self):
        p = self.policy("daneonly.lab")
        self.assertTrue(p["dane_only"])
        m = self.mx(p, "mx.daneonly.lab")
        self.assertEqual(m["method"], "skip")
        self.assertIn("dane-only: no usable TLSA", m["why"])
        self.assertEqual(self.mx(p, "mx2.daneonly.lab")["method"], "dane")

    def test_encrypt_only(self):
        p = self.policy("encrypt.lab")
        self.assertEqual(self.mx(p, "mx.encrypt.lab")["method"], "encrypt-only")
        self.assertEqual(self.mx(p, "mx2.encrypt.lab")["method"], "dane")

    # ---- security-anchors §8 F, issue 6 ----

    def test_dane_only_insecure_tlsa_skips(self):
        # case 41: TLSA records without DNSSEC are ignored; with dane-only nothing
        # else may be used, so every MX is skipped (the message waits)
        p = self.policy("daneonlyins.lab")
        self.assertTrue(p["dane_only"])
        self.assertEqual(p["mx_sec"], "insecure")
        m = self.mx(p, "mx.daneonlyins.lab")
        self.assertEqual(m["method"], "skip", m)
        self.assertEqual(m["tlsa"], [])
        self.assertIn("dane-only: no usable TLSA", m["why"])

    def test_host_address_insecure_no_tlsa_query(self):
        # case 42: a TLSA query for this host would fail (its _tcp names are delegated
        # to a name server that does not exist) and defer it; pkix shows it was not sent
        p = self.policy("hostins.lab")
        self.assertEqual(p["mx_sec"], "secure")
        m = self.mx(p, "mx.hostunsigned.lab")
        self.assertEqual(m["addr_sec"], "insecure")
        self.assertEqual(m["method"], "pkix", m)
        self.assertEqual(m["why"], "MX secure, A/AAAA insecure: no DANE")
        self.assertEqual(m["tlsa"], [])
        # the trap works: under a secure host address the query is sent and defers
        m = self.mx(self.policy("hosttrap.lab"), "mx.hosttrap.lab")
        self.assertEqual(m["addr_sec"], "secure")
        self.assertEqual(m["method"], "defer", m)
        self.assertIn("TLSA lookup failed for mx.hosttrap.lab", m["why"])

    def test_mx_insecure_host_and_tlsa_secure(self):
        # case 43: the MX RRset is insecure, the host (mx1.dane.lab) and its TLSA are
        # secure. strictmx's choice (src/policy/policy.c, RFC 7672 §2.2.1): the MX
        # name is unauthenticated, so no DANE; PKIX against the MX name is required
        p = self.policy("mxinsecure.lab")
        self.assertEqual(p["mx_sec"], "insecure")
        m = self.mx(p, "mx1.dane.lab")
        self.assertEqual(m["addr_sec"], "secure")
        self.assertEqual(m["method"], "pkix", m)
        self.assertEqual(m["why"], "MX insecure: no DANE")
        self.assertEqual(m["tlsa"], [])

    def test_cname_expanded_tlsa_bogus_defers(self):
        # case 45: the lookup at the expanded name fails: defer, and no fallback to
        # the (good) records at the original name
        p = self.policy("cnamefail.lab")
        m = self.mx(p, "mx.cnamefail.lab")
        self.assertEqual(m["method"], "defer", m)
        self.assertIn("TLSA lookup bogus for real.cnamefail.lab", m["why"])
        self.assertEqual(m["tlsa"], [])

    def test_dane_only_without_trust_anchor(self):
        # case 49: with no trust anchor nothing validates, so nothing is DANE: a
        # dane-only destination gets no MX at all (no unauthenticated delivery)
        conf = os.path.join(self.tmp, "no-anchor.conf")
        with open(conf, "w") as f:
            f.write("\n".join([
                "[server]", "data_dir = %s" % self.data_dir, "",
                "[dns]", "stub = %s" % self.bed.stub, "",
                "[outbound]", "ca_file = %s" % self.ca.ca_file, "",
                '[domain "daneonly.lab"]', "tls = dane-only", ""]))
        r = subprocess.run([STRICTMX, "-c", conf, "policy", "daneonly.lab", "--json"],
                           capture_output=True, text=True, timeout=90)
        for mk in SANITIZER_MARKERS:
            self.assertNotIn(mk, r.stderr)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        p = json.loads(r.stdout)
        self.assertEqual(p["mx_sec"], "insecure")
        self.assertEqual([m["method"] for m in p["mx"]], ["skip", "skip"], p)
        for m in p["mx"]:
            self.assertEqual(m["tlsa"], [])
            self.assertIn("dane-only: no usable TLSA", m["why"])

    # ---- the CLI ----

    def test_text_output(self):
        out = self.policy("dane.lab", json_out=False)
        self.assertIn("mx 10 mx1.dane.lab: dane", out)
        self.assertIn("tlsa 3 1 1 " + H, out)

    def test_bad_args(self):
        r = subprocess.run([STRICTMX, "-c", self.conf, "policy"], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        r = subprocess.run([STRICTMX, "-c", self.conf, "policy", "bad..name"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
