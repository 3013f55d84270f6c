"""`strictmx check` and `strictmx scan` against real peers (issue 5).

    strictmx check/scan --> DNS: NSD on 127.0.0.5 (dnsbed.DnsBed, lab. DNSSEC-signed,
                            trust anchor through [dns] trust_anchor)
                        --> MX: Postfix (mxbed.PostfixMX) and strictmxd on 127.0.0.41..48:25

Domain -> MX -> address (peer):
  enforce.lab    mx1.enforce.lab    .41  strictmxd (STARTTLS required), TestCA cert
  valid.lab      mx1.valid.lab      .42  Postfix valid, smtpd_tls_security_level = may
  expired.lab    mx1.expired.lab    .43  Postfix expired
  wrongname.lab  mx1.wrongname.lab  .44  Postfix wrongname (leaf for other.lab)
  none.lab       mx1.none.lab       .45  Postfix tls=none (no STARTTLS)
  dane.lab       mx1.dane.lab       .46  Postfix selfsigned, TLSA 3 1 1 of its key (signed
                                         zone), TLS-RPT record
  danebad.lab    mx1.danebad.lab    .47  Postfix valid, TLSA 3 1 1 of ANOTHER key
  encrypt.lab    mx1.encrypt.lab    .48  Postfix valid, smtpd_tls_security_level = encrypt
  twomx.lab      MX 10 -> .45 (none), MX 20 -> .42 (valid)
  nosuch.lab     NXDOMAIN;  down.lab: delegated to a dead server (SERVFAIL)

What must hold: the verdict lines and JSON fields per domain (STARTTLS offered, inbound
enforcement, PKIX ok / failed with the check named, DANE matched, TLS-RPT parsed, the
rollover warning), exit codes 0/1/2, the checker's "would deliver" agrees with what a
relaying strictmxd does for the same domains, and scan (JSON lines, --resume, --html,
--postfix-policy). Every wait is bounded; only 127.0.0.0/8 is used.
"""

import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import smxtest  # noqa: E402
from smxtest import Daemon  # noqa: E402
from dnsbed import DEAD_ADDR, DnsBed, SilentServer  # noqa: E402
from mxbed import TestCA, PostfixMX, tlsa_rdata, can_connect  # noqa: E402

TIMEOUT = "5"
CHECK_BOUND = 120
SENDER = "a@example.org"

ENV = {}  # filled by setUpModule: ca, dns, mxs, daemon_mx, conf, tmp


def zones(certs, other_cert):
    z = {
        "enforce.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.41"],
        "valid.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.42"],
        "expired.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.43"],
        "wrongname.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.44"],
        "none.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.45"],
        "dane.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.46",
                      "_25._tcp.mx1 TLSA " + tlsa_rdata(certs["dane"], 3, 1, 1),
                      '_smtp._tls TXT "v=TLSRPTv1; rua=mailto:tlsrpt@dane.lab"'],
        "danebad.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.47",
                         "_25._tcp.mx1 TLSA " + tlsa_rdata(other_cert, 3, 1, 1),
                         '_smtp._tls TXT "v=TLSRPTv1; rua=ftp://nope"'],
        "encrypt.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.48"],
        "twomx.lab.": ["@ MX 10 mx1", "@ MX 20 mx2", "mx1 A 127.0.0.45", "mx2 A 127.0.0.42"],
    }
    return z


def setUpModule():
    smxtest.require_binaries()
    tmp = tempfile.mkdtemp(prefix="smx-check-")
    os.chmod(tmp, 0o755)
    ENV["tmp"] = tmp
    ca = TestCA()
    ENV["ca"] = ca
    # the valid MX is also MX 20 of twomx.lab: its certificate names both
    vcrt, vkey = ca.leaf("mx1.valid.lab", ["mx1.valid.lab", "mx2.twomx.lab"])
    vchain = os.path.join(tmp, "valid-chain.pem")
    with open(vchain, "w") as out:
        for part in (vkey, vcrt, ca.ca_cert):
            with open(part) as f:
                out.write(f.read())
    os.chmod(vchain, 0o644)
    mxs = {
        "valid": PostfixMX("127.0.0.42", ca, tls="valid", host="mx1.valid.lab",
                           extra_main={"smtpd_tls_chain_files": vchain}),
        "expired": PostfixMX("127.0.0.43", ca, tls="expired", host="mx1.expired.lab"),
        "wrongname": PostfixMX("127.0.0.44", ca, tls="wrongname", host="mx1.wrongname.lab"),
        "none": PostfixMX("127.0.0.45", ca, tls="none", host="mx1.none.lab"),
        "dane": PostfixMX("127.0.0.46", ca, tls="selfsigned", host="mx1.dane.lab"),
        "danebad": PostfixMX("127.0.0.47", ca, tls="valid", host="mx1.danebad.lab"),
        "encrypt": PostfixMX("127.0.0.48", ca, tls="valid", host="mx1.encrypt.lab",
                             extra_main={"smtpd_tls_security_level": "encrypt"}),
    }
    ENV["mxs"] = mxs
    other_cert, _ = ca.leaf("unrelated.lab")
    certs = {k: m.cert for k, m in mxs.items() if m.cert}
    dns = DnsBed(zones(certs, other_cert), signed=True, dead=["down.lab."])
    dns.start()
    ENV["dns"] = dns
    for m in mxs.values():
        m.start()
    # strictmxd as an MX that enforces STARTTLS, on 127.0.0.41:25
    crt, key = ca.leaf("mx1.enforce.lab")
    d = Daemon(server={"listen": "127.0.0.41:25", "tls_cert": crt, "tls_key": key,
                       "local_domains": "enforce.lab"}, start=False)
    d.start()
    if not smxtest.poll(lambda: can_connect("127.0.0.41", 25), 20):
        raise RuntimeError("strictmxd not listening on 127.0.0.41:25:\n" + d.log_text())
    ENV["daemon_mx"] = d
    conf = os.path.join(tmp, "check.conf")
    with open(conf, "w") as f:
        f.write("\n".join([
            "[server]", "hostname = checker.test.example",
            "data_dir = %s" % os.path.join(tmp, "var"),
            "", "[dns]", "stub = %s" % dns.stub, "trust_anchor = %s" % dns.trust_anchor_file,
            "", "[outbound]", "ca_file = %s" % ca.ca_file, "smtp_port = 25", ""]))
    ENV["conf"] = conf


def tearDownModule():
    errors = []
    d = ENV.get("daemon_mx")
    if d:
        try:
            d.stop()
        except AssertionError as e:
            errors.append(str(e))
    for m in ENV.get("mxs", {}).values():
        m.stop()
    if ENV.get("dns"):
        ENV["dns"].stop()
    if ENV.get("ca"):
        ENV["ca"].close()
    if ENV.get("tmp") and not os.environ.get("SMX_KEEP_TMP"):
        shutil.rmtree(ENV["tmp"], ignore_errors=True)
    if errors:
        raise AssertionError("\n".join(errors))


def strictmx(*args, timeout=CHECK_BOUND, input=None, conf=None):
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1"
    p = subprocess.run([smxtest.STRICTMX, "-c", conf or ENV["conf"]] + list(args), input=input,
                       capture_output=True, text=True, timeout=timeout, env=env,
                       stdin=None if input is not None else subprocess.DEVNULL)
    for m in smxtest.SANITIZER_MARKERS:
        if m in p.stderr:
            raise AssertionError("sanitizer report from strictmx %s:\n%s"
                                 % (args, smxtest.sanitizer_excerpt(p.stderr)))
    return p


def check_json(domain):
    p = strictmx("check", domain, "--json", "--timeout", TIMEOUT)
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    if len(lines) != 1:
        raise AssertionError("expected one JSON line for %s, got rc %d:\n%s\n%s"
                             % (domain, p.returncode, p.stdout, p.stderr))
    return p.returncode, json.loads(lines[0])


def addr(j, mx=0, a=0):
    return j["mx"][mx]["addresses"][a]


class TestCheck(unittest.TestCase):
    def test_enforcing_strictmxd_is_citable(self):
        rc, j = check_json("enforce.lab")
        a = addr(j)
        self.assertEqual(a["starttls"], True, j)
        self.assertEqual(a["pkix"]["ok"], True, a)
        self.assertEqual(a["inbound"]["result"], "enforced", a)
        self.assertTrue(a["inbound"]["reply"].startswith("530 5.7.0"), a)
        self.assertEqual(j["mx"][0]["method"], "pkix")
        self.assertTrue(j["verdict"]["citable"], j["verdict"])
        self.assertEqual(j["verdict"]["campaign"].split(":")[0],
                         "may be cited as user@enforce.lab (STARTTLS)")
        self.assertEqual(rc, 0)

    def test_probe_never_sends_mail(self):
        """The checker never gets a message queued: strictmxd queues nothing, Postfix sees
        MAIL and RSET on the plaintext connection, never RCPT or DATA."""
        d = ENV["daemon_mx"]
        queued = d.log_text().count("event=queued")
        pf = ENV["mxs"]["valid"]
        n = len(pf.sessions())
        for dom in ("enforce.lab", "valid.lab"):
            check_json(dom)
        self.assertEqual(d.log_text().count("event=queued"), queued)
        new = smxtest.poll(lambda: pf.sessions()[n:] if len(pf.sessions()) >= n + 2 else None,
                           15)
        self.assertTrue(new, pf.log()[-2000:])
        plain = [c for _cl, c in new if "starttls" not in c]
        self.assertEqual(len(plain), 1, new)
        self.assertEqual(plain[0].get("mail"), 1, plain)
        self.assertEqual(plain[0].get("rset"), 1, plain)
        self.assertNotIn("rcpt", plain[0])
        self.assertNotIn("data", plain[0])
        tls = [c for _cl, c in new if "starttls" in c]
        self.assertEqual(len(tls), 1, new)
        self.assertNotIn("mail", tls[0])  # probe mode: QUIT right after the EHLO inside TLS

    def test_encrypt_postfix_enforces(self):
        rc, j = check_json("encrypt.lab")
        self.assertEqual(addr(j)["inbound"]["result"], "enforced", addr(j))
        self.assertEqual(addr(j)["inbound"]["enforces"], True)
        self.assertTrue(j["verdict"]["citable"])
        self.assertEqual(rc, 0)

    def test_valid_may_postfix_does_not_enforce(self):
        rc, j = check_json("valid.lab")
        a = addr(j)
        self.assertEqual(a["starttls"], True)
        self.assertEqual(a["pkix"], {"ok": True, "error": ""})
        self.assertEqual(a["inbound"]["result"], "accepted", a)
        self.assertTrue(a["inbound"]["reply"].startswith("250"), a)
        self.assertIsNone(a["dane"])
        self.assertIn(a["tls"]["protocol"], ("TLSv1.2", "TLSv1.3"))
        self.assertTrue(a["tls"]["cipher"])
        self.assertEqual(a["certificates"][0]["san"], ["mx1.valid.lab", "mx2.twomx.lab"])
        self.assertGreater(a["certificates"][0]["days_left"], 20)
        self.assertEqual(j["verdict"]["text"], "yes, verified by PKIX (mx1.valid.lab)")
        self.assertFalse(j["verdict"]["citable"])
        self.assertIn("accepts mail without STARTTLS", j["verdict"]["campaign"])
        self.assertEqual(rc, 0)

    def test_expired(self):
        rc, j = check_json("expired.lab")
        a = addr(j)
        self.assertEqual(a["pkix"]["ok"], False)
        self.assertTrue(a["pkix"]["error"].startswith("certificate has expired (notAfter 2020-01-31)"), a)
        self.assertLess(a["certificates"][0]["days_left"], 0)
        self.assertEqual(j["verdict"]["text"],
                         "no: certificate has expired (notAfter 2020-01-31) (mx1.expired.lab)")
        self.assertEqual(rc, 1)

    def test_wrongname(self):
        rc, j = check_json("wrongname.lab")
        self.assertIn("certificate name does not match mx1.wrongname.lab",
                      addr(j)["pkix"]["error"])
        self.assertEqual(rc, 1)

    def test_no_starttls(self):
        rc, j = check_json("none.lab")
        a = addr(j)
        self.assertEqual(a["starttls"], False, a)
        self.assertIsNone(a["tls"])
        self.assertIn("does not offer STARTTLS", j["mx"][0]["verdict"])
        self.assertEqual(a["inbound"]["result"], "accepted")
        self.assertEqual(rc, 1)

    def test_dane_matched_with_rollover_warning_and_tlsrpt(self):
        rc, j = check_json("dane.lab")
        m = j["mx"][0]
        a = addr(j)
        self.assertEqual(m["method"], "dane", m)
        self.assertEqual(a["dane"]["ok"], True, a)
        self.assertEqual(a["dane"]["matched"], "3 1 1 matched the server certificate")
        self.assertEqual(a["pkix"]["ok"], False)
        self.assertEqual(a["pkix"]["error"], "certificate is self-signed")
        self.assertIn("single TLSA record", m["tlsa_rollover_warning"] or "")
        self.assertEqual(j["tls_rpt"]["status"], "ok")
        self.assertEqual(j["tls_rpt"]["rua"], ["mailto:tlsrpt@dane.lab"])
        self.assertEqual(j["verdict"]["text"], "yes, verified by DANE (mx1.dane.lab)")
        self.assertTrue(j["verdict"]["dane_all"])
        self.assertEqual(rc, 0)

    def test_dane_mismatch(self):
        rc, j = check_json("danebad.lab")
        a = addr(j)
        self.assertEqual(a["dane"]["ok"], False)
        self.assertEqual(a["dane"]["error"],
                         "TLSA records do not match the certificate of mx1.danebad.lab")
        self.assertEqual(a["pkix"]["ok"], True)  # PKIX would pass, but DANE decides
        self.assertEqual(j["tls_rpt"]["status"], "invalid")
        self.assertFalse(j["verdict"]["would_deliver"])
        self.assertEqual(rc, 1)

    def test_two_mx_one_bad(self):
        rc, j = check_json("twomx.lab")
        self.assertEqual([m["verified"] for m in j["mx"]], [False, True])
        self.assertEqual(j["verdict"]["text"], "yes, verified by PKIX (mx2.twomx.lab)")
        self.assertEqual(rc, 1)  # not every MX verifies

    def test_text_output(self):
        p = strictmx("check", "dane.lab", "expired.lab", "--timeout", TIMEOUT)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertNotIn("\033[", p.stdout)  # not a terminal: no colour
        self.assertIn("strictmx would deliver: yes, verified by DANE (mx1.dane.lab)", p.stdout)
        self.assertIn("strictmx would deliver: no: certificate has expired", p.stdout)
        self.assertRegex(p.stdout, r"(?m)^      DANE\s+ok: 3 1 1 matched the server certificate$")
        self.assertRegex(p.stdout, r"(?m)^    warning\s+a single TLSA record")
        self.assertRegex(p.stdout, r"(?m)^  TLS-RPT\s+v=TLSRPTv1, rua mailto:tlsrpt@dane.lab$")

    def test_exit_2(self):
        rc, j = check_json("nosuch.lab")
        self.assertEqual(rc, 2)
        self.assertEqual(j["status"], "nxdomain")
        t0 = time.monotonic()
        p = strictmx("check", "down.lab", "--timeout", "3")
        self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
        self.assertIn("the check could not run", p.stderr)
        self.assertLess(time.monotonic() - t0, 60)
        p = strictmx("check", "--port")
        self.assertEqual(p.returncode, 2)
        self.assertIn("usage:", p.stderr)
        p = strictmx("check")
        self.assertEqual(p.returncode, 2)
        p = strictmx("check", "-x", "valid.lab")
        self.assertEqual(p.returncode, 2)

    def test_port_option_and_timeout_bound(self):
        # nothing listens on port 2 there: connect refused, quickly, exit 1
        rc_p = strictmx("check", "valid.lab", "--json", "--port", "2", "--timeout", TIMEOUT)
        j = json.loads(rc_p.stdout)
        self.assertEqual(addr(j)["port"], 2)
        self.assertEqual(addr(j)["connect"]["ok"], False)
        self.assertIn("connect", addr(j)["connect"]["error"])
        self.assertEqual(rc_p.returncode, 1)


def wait_result(daemon, rcpt, timeout=90):
    rx = re.compile(r"^.*event=result .*rcpt=<%s>.*result=(delivered|deferred|failed).*$"
                    % re.escape(rcpt), re.M)
    m = smxtest.poll(lambda: rx.search(daemon.log_text()), timeout, 0.2)
    return m.group(1) if m else None


class TestAgreesWithDelivery(unittest.TestCase):
    """The checker's "would deliver" against a relaying strictmxd with the same [dns] and
    [outbound] settings, delivering one message to each domain."""

    # twomx.lab: MX 10 offers no STARTTLS, MX 20 verifies. This case found a bug in
    # delivery (the connection to MX 20 timed out: the first socket was closed by hand
    # while its events were still registered, so the next one was never watched).
    DOMAINS = ["enforce.lab", "valid.lab", "expired.lab", "wrongname.lab", "none.lab",
               "dane.lab", "danebad.lab", "twomx.lab"]

    def relay(self):
        d = Daemon(start=False)
        extra = ["", "[server]", "relay_networks = 127.0.0.0/8",
                 "", "[dns]", "stub = %s" % ENV["dns"].stub,
                 "trust_anchor = %s" % ENV["dns"].trust_anchor_file,
                 "", "[outbound]", "ca_file = %s" % ENV["ca"].ca_file, "smtp_port = 25",
                 "connect_timeout = 5", "command_timeout = 10",
                 "", "[queue]", "retry_min = 60", "retry_max = 120", ""]
        with open(d.conf, "a") as f:
            f.write("\n".join(extra))
        d.start()
        self.addCleanup(d.stop)
        return d

    def agree(self, domains):
        d = self.relay()
        p = strictmx("check", *domains, "--json", "--timeout", TIMEOUT)
        verdicts = {}
        for line in p.stdout.splitlines():
            j = json.loads(line)
            verdicts[j["domain"]] = j["verdict"]["would_deliver"]
        self.assertEqual(sorted(verdicts), sorted(domains), p.stderr)
        for dom in domains:
            argv = ["swaks", "--tls", "--server", "127.0.0.1:%d" % d.port, "--from", SENDER,
                    "--to", "agree@%s" % dom, "--header", "Subject: agree %s" % dom,
                    "--timeout", "20"]
            s = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            self.assertEqual(s.returncode, 0, s.stdout + s.stderr)
        for dom in domains:
            res = wait_result(d, "agree@%s" % dom)
            self.assertIsNotNone(res, "no delivery result for %s:\n%s"
                                 % (dom, d.log_text()[-3000:]))
            self.assertEqual(res == "delivered", verdicts[dom],
                             "%s: checker says would_deliver=%s, strictmxd: %s\n%s"
                             % (dom, verdicts[dom], res,
                                "\n".join(l for l in d.log_text().splitlines()
                                          if dom in l)))
        # the expected split, so that the comparison above is not vacuous
        self.assertEqual(sorted(k for k, v in verdicts.items() if v),
                         sorted(k for k in ("enforce.lab", "valid.lab", "dane.lab",
                                            "twomx.lab") if k in domains))

    def test_would_deliver_matches_strictmxd(self):
        self.agree(self.DOMAINS)


class TestScan(unittest.TestCase):
    DOMAINS = ["enforce.lab", "valid.lab", "expired.lab", "none.lab", "dane.lab",
               "danebad.lab", "twomx.lab", "nosuch.lab"]

    def test_scan_resume_html_postfix(self):
        tmp = tempfile.mkdtemp(prefix="smx-scan-")
        self.addCleanup(shutil.rmtree, tmp, True)
        inp = os.path.join(tmp, "domains.txt")
        out = os.path.join(tmp, "out.jsonl")
        html = os.path.join(tmp, "report.html")
        pf = os.path.join(tmp, "tls_policy")
        first = self.DOMAINS[:3]
        with open(inp, "w") as f:
            f.write("# a comment\n\n" + "\n".join(first) + "\n")
        p = strictmx("scan", inp, "--output", out, "--timeout", TIMEOUT)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stderr, "")  # not a terminal: no progress bar
        with open(out) as f:
            lines = [json.loads(l) for l in f]
        self.assertEqual(sorted(l["domain"] for l in lines), sorted(first))
        # resume: the full list; the first three are not checked again
        with open(inp, "w") as f:
            f.write("\n".join(self.DOMAINS) + "  # trailing comment\n")
        p = strictmx("scan", inp, "--output", out, "--resume", "--html", html,
                     "--postfix-policy", pf, "--concurrency", "3", "--timeout", TIMEOUT)
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(out) as f:
            lines = [json.loads(l) for l in f]
        doms = [l["domain"] for l in lines]
        self.assertEqual(sorted(doms), sorted(self.DOMAINS))
        self.assertEqual(len(doms), len(set(doms)))
        self.assertIn("summary: 8 domains", p.stdout)
        self.assertRegex(p.stdout, r"with MX\s+7\s+87\.5%")
        self.assertRegex(p.stdout, r"enforcing STARTTLS inbound\s+1\s")
        self.assertRegex(p.stdout, r"DANE-valid \(every MX\)\s+1\s")
        self.assertIn("certificate has expired", p.stdout)
        with open(html) as f:
            page = f.read()
        self.assertIn("<svg", page)
        self.assertIn("<table", page)
        self.assertIn("<script>", page)
        self.assertNotRegex(page, r"(src|href)=\"https?:")
        for dom in self.DOMAINS:
            self.assertIn(dom, page)
        with open(pf) as f:
            policy = sorted(f.read().splitlines())
        self.assertEqual(policy, ["dane.lab dane-only", "enforce.lab secure match=mx1.enforce.lab",
                                  "valid.lab secure match=mx1.valid.lab"])

    def test_late_pilot_holds_its_parent_back_one_second(self):
        """down.lab is the first domain under lab., so it is the pilot; its name server
        (dnsbed.DEAD_ADDR) is made silent for this test: it takes the queries and never
        answers, so down.lab's first answer is the 5 s of --timeout. valid.lab waits for
        it, but one second at most (PILOT_WAIT_MS in src/check/check.c)."""
        with SilentServer(addr=DEAD_ADDR, port=53):
            p = strictmx("scan", "-", "--jobs", "1", "--concurrency", "2", "--timeout", "5",
                         input="down.lab\nvalid.lab\n")
        self.assertEqual(p.returncode, 0, p.stderr)
        res = {json.loads(l)["domain"]: json.loads(l) for l in p.stdout.splitlines()}
        self.assertEqual(res["down.lab"]["status"], "tempfail", res["down.lab"])
        self.assertEqual(res["valid.lab"]["verdict"]["text"],
                         "yes, verified by PKIX (mx1.valid.lab)")
        self.assertGreaterEqual(res["valid.lab"]["elapsed_ms"], 900)  # it waited
        self.assertLess(res["valid.lab"]["elapsed_ms"], 4000)

    def test_scan_stdin_to_stdout(self):
        p = strictmx("scan", "-", "--timeout", TIMEOUT, input="valid.lab\nVALID.lab.\n")
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = p.stdout.splitlines()
        self.assertEqual(len(lines), 1, p.stdout)  # duplicates removed
        self.assertEqual(json.loads(lines[0])["domain"], "valid.lab")
        self.assertIn("summary: 1 domain", p.stderr)
        p = strictmx("scan", "--resume")
        self.assertEqual(p.returncode, 2)


class TcpRelay:
    """A TCP-only DNS path: accepts on 127.0.0.6 (no UDP socket there) and relays each
    connection to the bed's NSD over TCP, counting connections and bytes asked."""

    def __init__(self, target):
        self.target = target
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.6", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.conns = 0
        self.bytes_in = 0
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.lsock.settimeout(0.2)
        while not self.stop_ev.is_set():
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            self.conns += 1
            threading.Thread(target=self._pump, args=(c,), daemon=True).start()

    def _pump(self, c):
        u = socket.create_connection(self.target, timeout=5)
        deadline = time.monotonic() + 60
        try:
            while not self.stop_ev.is_set() and time.monotonic() < deadline:
                r, _, _ = select.select([c, u], [], [], 0.2)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is c:
                        self.bytes_in += len(data)
                    (u if s is c else c).sendall(data)
        except OSError:
            return
        finally:
            c.close()
            u.close()

    def close(self):
        self.stop_ev.set()
        self.thread.join(5)
        self.lsock.close()


class TestDnsTransport(unittest.TestCase):
    """--dns-transport: with a stub zone the check asks over TCP by default (auto), and
    over UDP only when told; a resolver reachable only over TCP shows which was used."""

    def setUp(self):
        zone, _, hostport = ENV["dns"].stub.partition("@")
        host, _, port = hostport.rpartition(":")
        self.relay = TcpRelay((host, int(port)))
        self.addCleanup(self.relay.close)
        with open(ENV["conf"]) as f:
            text = f.read()
        self.conf = os.path.join(ENV["tmp"], "check-tcp-only.conf")
        with open(self.conf, "w") as f:
            f.write(text.replace("stub = %s" % ENV["dns"].stub,
                                 "stub = %s@127.0.0.6:%d" % (zone, self.relay.port)))

    def test_auto_and_tcp_use_tcp(self):
        for opt in ([], ["--dns-transport", "auto"], ["--dns-transport", "tcp"]):
            before = self.relay.bytes_in
            p = strictmx("check", "valid.lab", "--json", "--timeout", TIMEOUT, *opt,
                         conf=self.conf)
            self.assertEqual(p.returncode, 0, "%s: %s%s" % (opt, p.stdout, p.stderr))
            j = json.loads(p.stdout)
            self.assertEqual(j["status"], "ok")
            self.assertEqual(j["plan"]["mx_sec"], "secure", j["plan"])
            self.assertEqual(j["verdict"]["text"], "yes, verified by PKIX (mx1.valid.lab)")
            self.assertGreater(self.relay.bytes_in, before, opt)
        self.assertGreaterEqual(self.relay.conns, 3)
        p = strictmx("scan", "-", "--timeout", TIMEOUT, input="valid.lab\ndane.lab\n",
                     conf=self.conf)
        self.assertEqual(p.returncode, 0, p.stderr)
        verdicts = {json.loads(l)["domain"]: json.loads(l)["verdict"]["text"]
                    for l in p.stdout.splitlines()}
        self.assertEqual(verdicts, {"valid.lab": "yes, verified by PKIX (mx1.valid.lab)",
                                    "dane.lab": "yes, verified by DANE (mx1.dane.lab)"},
                         p.stdout)

    def test_udp_on_request(self):
        before = self.relay.bytes_in
        t0 = time.monotonic()
        p = strictmx("check", "valid.lab", "--dns-transport", "udp", "--timeout", "3",
                     conf=self.conf)
        self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
        self.assertIn("the check could not run", p.stderr)
        self.assertEqual(self.relay.bytes_in, before)
        self.assertLess(time.monotonic() - t0, 60)

    def test_bad_value(self):
        for cmd in ("check", "scan"):
            p = strictmx(cmd, "valid.lab", "--dns-transport", "quic")
            self.assertEqual(p.returncode, 2)
            self.assertIn("--dns-transport: expected auto, udp or tcp, got 'quic'", p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
