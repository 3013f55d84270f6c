"""`strictmx check --json` on every scenario of the DANE/MTA-STS issue (issue 4), each
verdict asserted and compared with the delivery decision of a relaying strictmxd for the
same domain (issue 5: "they must agree"); inbound-enforcement detection on DANE MXs
(Postfix encrypt, strictmxd); every JSON object validated against docs/checker-schema.json.

    strictmx check ----+--> DNS: NSD on 127.0.1.53 (dnsbed.DnsBed, lab. DNSSEC-signed,
    strictmxd (relay) -+         tlsainsecure.lab. unsigned, one TLSA made bogus)
                       +--> MX: Postfix / strictmxd on 127.0.1.1..6:25
                       +--> MTA-STS: nginx (mxbed.NginxHTTPS) on 127.0.1.80:443

Listeners (fewer than scenarios: one certificate carries the names of every MX that
points at its listener):
  L1 .1 Postfix may, TestCA leaf (chain: leaf + CA), SANs: mx1.daneee, mx1+mx2.danemis,
        mx1.daneta, mx1.tlsabogus, mx1.tlsainsecure, mx1.usage01, mx1+mx2.stsenforce,
        real.cname
  L2 .2 Postfix may, TestCA leaf for mx1.daneexpired.lab, expired 2020-01-31
  L3 .3 Postfix may, self-signed, SANs mx1.usage01self, mx1.danests
  L4 .4 Postfix may, TestCA leaf for other.lab only (mx1.danetawrong.lab points here)
  L5 .5 Postfix encrypt, TestCA leaf for mx1.daneenc.lab (DANE-EE + enforcing)
  L6 .6 strictmxd, TestCA leaf for mx1.smxdane.lab (DANE-EE + enforcing)

Case -> domain -> records -> expected (checker verdict; strictmxd delivery):
  ee            daneee.lab       L1, TLSA 3 1 1 (match)             yes DANE; delivered
  ee-expired    daneexpired.lab  L2, TLSA 3 1 1 (match)             yes DANE; delivered
  ee-mismatch   danemis.lab      MX 10 mx1 L1 TLSA of another key,  yes DANE via mx2
                                 MX 20 mx2 L1 TLSA 3 1 1 (match)
  ta            daneta.lab       L1, TLSA 2 0 1 (TestCA)            yes DANE; delivered
  ta-wrongname  danetawrong.lab  L4, TLSA 2 0 1 (TestCA)            no; deferred
  bogus         tlsabogus.lab    L1, TLSA 3 1 1 made BOGUS          no (defer); deferred
  insecure      tlsainsecure.lab unsigned zone, TLSA (no match)     yes PKIX; delivered
  usage01       usage01.lab      L1, TLSA 0 0 1 + 1 1 1             yes PKIX; delivered
  usage01-self  usage01self.lab  L3, TLSA 0 0 1 + 1 1 1 (own cert)  no (self-signed); deferred
  sts-enforce   stsenforce.lab   MX 5 mx2 (not in policy), MX 10 mx1; enforce
                                                                    yes PKIX (MTA-STS) via mx1
  dane+sts      danests.lab      L3 self-signed, TLSA 3 1 1; enforce  yes DANE; delivered
  cname         cname.lab        MX mx -> CNAME real, TLSA at _25._tcp.real  yes DANE
  dane-encrypt  daneenc.lab      L5 Postfix encrypt, TLSA 3 1 1     yes DANE; citable
  dane-smx      smxdane.lab      L6 strictmxd, TLSA 3 1 1           yes DANE; citable

Run time: about 40-60 s (six Postfix starts in parallel, one check of all domains, one
message per domain through the relay). Only 127.0.0.0/8; every wait is bounded.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import smxtest  # noqa: E402
import scanpop  # noqa: E402
from smxtest import Daemon  # noqa: E402
from dnsbed import DnsBed  # noqa: E402
from mxbed import TestCA, PostfixMX, NginxHTTPS, tlsa_rdata, can_connect  # noqa: E402

NET = "127.0.1."
DNS_ADDR = NET + "53"
STS_ADDR = NET + "80"
TIMEOUT = "5"
SENDER = "a@example.org"
RESULT_BOUND = 90

L1_NAMES = ["mx1.daneee.lab", "mx1.danemis.lab", "mx2.danemis.lab", "mx1.daneta.lab",
            "mx1.tlsabogus.lab", "mx1.tlsainsecure.lab", "mx1.usage01.lab",
            "mx1.stsenforce.lab", "mx2.stsenforce.lab", "real.cname.lab"]
L3_NAMES = ["mx1.usage01self.lab", "mx1.danests.lab"]

# case -> (domain, would deliver (checker) == delivered (strictmxd), verdict text or a
#          part of it, {mx host: method}, extra expectations)
CASES = {
    "ee": ("daneee.lab", True, "yes, verified by DANE (mx1.daneee.lab)",
           {"mx1.daneee.lab": "dane"}),
    "ee-expired": ("daneexpired.lab", True, "yes, verified by DANE (mx1.daneexpired.lab)",
                   {"mx1.daneexpired.lab": "dane"}),
    "ee-mismatch": ("danemis.lab", True, "yes, verified by DANE (mx2.danemis.lab)",
                    {"mx1.danemis.lab": "dane", "mx2.danemis.lab": "dane"}),
    "ta": ("daneta.lab", True, "yes, verified by DANE (mx1.daneta.lab)",
           {"mx1.daneta.lab": "dane"}),
    "ta-wrongname": ("danetawrong.lab", False, "no: ", {"mx1.danetawrong.lab": "dane"}),
    "bogus": ("tlsabogus.lab", False, "no: ", {"mx1.tlsabogus.lab": "defer"}),
    "insecure": ("tlsainsecure.lab", True, "yes, verified by PKIX (mx1.tlsainsecure.lab)",
                 {"mx1.tlsainsecure.lab": "pkix"}),
    "usage01": ("usage01.lab", True, "yes, verified by PKIX (mx1.usage01.lab)",
                {"mx1.usage01.lab": "pkix"}),
    "usage01-self": ("usage01self.lab", False, "no: certificate is self-signed",
                     {"mx1.usage01self.lab": "pkix"}),
    "sts-enforce": ("stsenforce.lab", True,
                    "yes, verified by PKIX (MTA-STS enforce) (mx1.stsenforce.lab)",
                    {"mx1.stsenforce.lab": "mta-sts+pkix", "mx2.stsenforce.lab": "skip"}),
    "dane+sts": ("danests.lab", True, "yes, verified by DANE (mx1.danests.lab)",
                 {"mx1.danests.lab": "dane"}),
    "cname": ("cname.lab", True, "yes, verified by DANE (mx.cname.lab)",
              {"mx.cname.lab": "dane"}),
    "dane-encrypt": ("daneenc.lab", True, "yes, verified by DANE (mx1.daneenc.lab)",
                     {"mx1.daneenc.lab": "dane"}),
    "dane-smx": ("smxdane.lab", True, "yes, verified by DANE (mx1.smxdane.lab)",
                 {"mx1.smxdane.lab": "dane"}),
}

ENV = {}


def policy_text(mode, mx):
    return "".join("%s\r\n" % l for l in ["version: STSv1", "mode: %s" % mode]
                   + ["mx: %s" % m for m in mx] + ["max_age: 86400"])


def chain_file(tmp, name, key, certs):
    path = os.path.join(tmp, name)
    with open(path, "w") as out:
        for p in [key] + certs:
            with open(p) as f:
                out.write(f.read())
    os.chmod(path, 0o644)
    return path


def stop_all(mxs):
    """Stop Postfix instances at once (each stop is bounded by PostfixMX.stop)."""
    threads = [threading.Thread(target=m.stop) for m in mxs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


def setUpModule():
    smxtest.require_binaries()
    cleanups = []
    ENV["cleanups"] = cleanups
    try:
        _setup(cleanups)
    except BaseException:
        tearDownModule()
        raise


def _setup(cleanups):
    tmp = tempfile.mkdtemp(prefix="smx-checkdane-")
    os.chmod(tmp, 0o755)
    cleanups.append(lambda: shutil.rmtree(tmp, ignore_errors=True)
                    if not os.environ.get("SMX_KEEP_TMP") else None)
    ENV["tmp"] = tmp
    ca = TestCA()
    cleanups.append(ca.close)
    ENV["ca"] = ca
    l1_crt, l1_key = ca.leaf(L1_NAMES[0], L1_NAMES)
    l3_crt, l3_key = ca.leaf(L3_NAMES[0], L3_NAMES, self_signed=True)
    other_crt, _ = ca.leaf("other-key.lab")
    mxs = {
        "L1": PostfixMX(NET + "1", ca, tls="valid", host="mx1.daneee.lab", extra_main={
            "smtpd_tls_chain_files": chain_file(tmp, "l1.pem", l1_key, [l1_crt, ca.ca_cert])}),
        "L2": PostfixMX(NET + "2", ca, tls="expired", host="mx1.daneexpired.lab"),
        "L3": PostfixMX(NET + "3", ca, tls="valid", host="mx1.danests.lab", extra_main={
            "smtpd_tls_chain_files": chain_file(tmp, "l3.pem", l3_key, [l3_crt])}),
        "L4": PostfixMX(NET + "4", ca, tls="wrongname", host="mx1.danetawrong.lab"),
        "L5": PostfixMX(NET + "5", ca, tls="valid", host="mx1.daneenc.lab",
                        extra_main={"smtpd_tls_security_level": "encrypt"}),
    }
    ENV["mxs"] = mxs
    cleanups.append(lambda: stop_all(mxs.values()))
    smx_crt, smx_key = ca.leaf("mx1.smxdane.lab")
    sts = ["mta-sts A %s" % STS_ADDR, '_mta-sts TXT "v=STSv1; id=1"']

    def one(addr, *tlsa, extra=()):
        return (["@ MX 10 mx1", "mx1 A %s" % addr]
                + ["_25._tcp.mx1 TLSA %s" % t for t in tlsa] + list(extra))
    zones = {
        "daneee.lab.": one(NET + "1", tlsa_rdata(l1_crt, 3, 1, 1)),
        "daneexpired.lab.": one(NET + "2", tlsa_rdata(mxs["L2"].cert, 3, 1, 1)),
        "danemis.lab.": ["@ MX 10 mx1", "@ MX 20 mx2", "mx1 A %s" % (NET + "1"),
                         "mx2 A %s" % (NET + "1"),
                         "_25._tcp.mx1 TLSA %s" % tlsa_rdata(other_crt, 3, 1, 1),
                         "_25._tcp.mx2 TLSA %s" % tlsa_rdata(l1_crt, 3, 1, 1)],
        "daneta.lab.": one(NET + "1", tlsa_rdata(ca.ca_cert, 2, 0, 1)),
        "danetawrong.lab.": one(NET + "4", tlsa_rdata(ca.ca_cert, 2, 0, 1)),
        "tlsabogus.lab.": one(NET + "1", tlsa_rdata(l1_crt, 3, 1, 1)),
        "tlsainsecure.lab.": one(NET + "1", tlsa_rdata(other_crt, 3, 1, 1)),
        "usage01.lab.": one(NET + "1", tlsa_rdata(ca.ca_cert, 0, 0, 1),
                            tlsa_rdata(l1_crt, 1, 1, 1)),
        "usage01self.lab.": one(NET + "3", tlsa_rdata(l3_crt, 0, 0, 1),
                                tlsa_rdata(l3_crt, 1, 1, 1)),
        "stsenforce.lab.": ["@ MX 10 mx1", "@ MX 5 mx2", "mx1 A %s" % (NET + "1"),
                            "mx2 A %s" % (NET + "1")] + sts,
        "danests.lab.": one(NET + "3", tlsa_rdata(l3_crt, 3, 1, 1), extra=sts),
        "cname.lab.": ["@ MX 10 mx", "mx CNAME real", "real A %s" % (NET + "1"),
                       "_25._tcp.real TLSA %s" % tlsa_rdata(l1_crt, 3, 1, 1)],
        "daneenc.lab.": one(NET + "5", tlsa_rdata(mxs["L5"].cert, 3, 1, 1)),
        "smxdane.lab.": one(NET + "6", tlsa_rdata(smx_crt, 3, 1, 1)),
    }
    dns = DnsBed(zones, signed=True, unsigned=["tlsainsecure.lab."], addr=DNS_ADDR,
                 bogus=[("tlsabogus.lab.", "_25._tcp.mx1.tlsabogus.lab.", "TLSA")])
    dns.start()
    cleanups.append(dns.stop)
    ENV["dns"] = dns
    errors = {}

    def start(key, m):
        try:
            m.start(timeout=60)
        except Exception as e:  # reported below
            errors[key] = str(e)
    threads = [threading.Thread(target=start, args=kv) for kv in mxs.items()]
    for t in threads:
        t.start()
    nginx = NginxHTTPS(STS_ADDR, ca, {
        "mta-sts.stsenforce.lab": {"/.well-known/mta-sts.txt":
                                   ("text/plain", policy_text("enforce",
                                                              ["mx1.stsenforce.lab"]))},
        "mta-sts.danests.lab": {"/.well-known/mta-sts.txt":
                                ("text/plain", policy_text("enforce", ["mx1.danests.lab"]))}})
    nginx.start()
    cleanups.append(nginx.stop)
    ENV["nginx"] = nginx
    smx = Daemon(server={"listen": NET + "6:25", "tls_cert": smx_crt, "tls_key": smx_key,
                         "local_domains": "smxdane.lab"}, start=False)
    smx.start()
    cleanups.append(smx.stop)
    ENV["smx"] = smx
    for t in threads:
        t.join(120)
    for k, m in mxs.items():
        if not m.started or k in errors:
            raise RuntimeError("Postfix %s (%s) did not start: %s\n%s"
                               % (k, m.addr, errors.get(k, ""), m.log()[-2000:]))
    if not smxtest.poll(lambda: can_connect(NET + "6", 25), 20):
        raise RuntimeError("strictmxd not listening on %s6:25:\n%s" % (NET, smx.log_text()))
    conf = os.path.join(tmp, "check.conf")
    with open(conf, "w") as f:
        f.write("\n".join([
            "[server]", "hostname = checker.test.example",
            "data_dir = %s" % os.path.join(tmp, "var"),
            "", "[dns]", "stub = %s" % dns.stub, "trust_anchor = %s" % dns.trust_anchor_file,
            "", "[outbound]", "ca_file = %s" % ca.ca_file, "smtp_port = 25", ""]))
    ENV["conf"] = conf
    # the relay: one message per case, submitted now; the tests wait for the results
    relay = Daemon(start=False)
    with open(relay.conf, "a") as f:
        f.write("\n".join([
            "", "[server]", "relay_networks = 127.0.0.0/8",
            "", "[dns]", "stub = %s" % dns.stub, "trust_anchor = %s" % dns.trust_anchor_file,
            "", "[outbound]", "ca_file = %s" % ca.ca_file, "smtp_port = 25",
            "connect_timeout = 5", "command_timeout = 10",
            "", "[queue]", "retry_min = 60", "retry_max = 120", ""]))
    relay.start()
    cleanups.append(relay.stop)
    ENV["relay"] = relay
    for case, (dom, *_rest) in CASES.items():
        argv = ["swaks", "--tls", "--server", "127.0.0.1:%d" % relay.port, "--from", SENDER,
                "--to", "agree@%s" % dom, "--header", "Subject: check-dane %s" % case,
                "--timeout", "20"]
        s = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if s.returncode != 0:
            raise RuntimeError("swaks to %s failed:\n%s%s" % (dom, s.stdout, s.stderr))
    # the checker, all domains in one run (they are checked concurrently)
    p = strictmx("check", *[c[0] for c in CASES.values()], "--json", "--timeout", TIMEOUT)
    ENV["check_rc"] = p.returncode
    ENV["check_stderr"] = p.stderr
    ENV["json"] = {}
    for line in p.stdout.splitlines():
        j = json.loads(line)
        ENV["json"][j["domain"]] = j


def tearDownModule():
    errors = []
    for fn in reversed(ENV.get("cleanups", [])):
        try:
            fn()
        except Exception as e:  # keep stopping the rest
            errors.append(str(e)[:3000])
    ENV["cleanups"] = []
    if errors:
        raise AssertionError("\n".join(errors))


def strictmx(*args, timeout=180):
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1")
    p = subprocess.run([smxtest.STRICTMX, "-c", ENV["conf"]] + list(args), capture_output=True,
                       text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    for m in smxtest.SANITIZER_MARKERS:
        if m in p.stderr:
            raise AssertionError("sanitizer report from strictmx %s:\n%s"
                                 % (args, smxtest.sanitizer_excerpt(p.stderr)))
    return p


def delivery_outcome(rcpt):
    """(result, mx, verified) from the relay's log: the first event=result line for rcpt,
    and for a delivery the event=delivery line that delivered it."""
    d = ENV["relay"]
    rx = re.compile(r"^.*event=result .*rcpt=<%s>.*result=(delivered|deferred|failed).*$"
                    % re.escape(rcpt), re.M)
    m = smxtest.poll(lambda: rx.search(d.log_text()), RESULT_BOUND, 0.2)
    if not m:
        return None, None, None
    if m.group(1) != "delivered":
        return m.group(1), None, None
    dl = re.search(r"^.*event=delivery .*rcpt=<%s>.*result=delivered.*$" % re.escape(rcpt),
                   d.log_text(), re.M)
    mx = re.search(r"\bmx=(\S+)", dl.group(0)) if dl else None
    ver = re.search(r"\bverified=(\S+)", dl.group(0)) if dl else None
    return ("delivered", mx.group(1).rstrip(".") if mx else None,
            ver.group(1) if ver else None)


def addr(j, mx=0):
    return j["mx"][mx]["addresses"][0]


def check_case(tc, case):
    """The checker's verdict for the case asserted, and its agreement with the delivery
    decision of the relay for the same domain (delivered <=> would deliver, via the same
    MX, verified the same way)."""
    dom, would, text, methods = CASES[case]
    tc.assertIn(dom, ENV["json"], "no JSON for %s (rc %s):\n%s"
                % (dom, ENV["check_rc"], ENV["check_stderr"][-2000:]))
    j = ENV["json"][dom]
    tc.assertEqual({m["host"].rstrip("."): m["method"] for m in j["mx"]}, methods, j)
    tc.assertEqual(j["verdict"]["would_deliver"], would, j["verdict"])
    if would:
        tc.assertEqual(j["verdict"]["text"], text)
    else:
        tc.assertTrue(j["verdict"]["text"].startswith(text), j["verdict"]["text"])
    res, mx, ver = delivery_outcome("agree@%s" % dom)
    tc.assertIsNotNone(res, "no delivery result for %s:\n%s"
                       % (dom, ENV["relay"].log_text()[-3000:]))
    tc.assertEqual(res == "delivered", j["verdict"]["would_deliver"],
                   "%s: checker says %r, strictmxd: %s" % (dom, j["verdict"]["text"], res))
    tc.assertEqual(res, "delivered" if would else "deferred")
    if res == "delivered":
        # the same MX, verified the same way
        named = re.search(r"\(([^()]+)\)$", j["verdict"]["text"]).group(1)
        tc.assertEqual(mx, named, "checker names %s, strictmxd delivered to %s" % (named, mx))
        how = re.match(r"yes, verified by (DANE|PKIX)( \(MTA-STS enforce\))?",
                       j["verdict"]["text"])
        want = "dane" if how.group(1) == "DANE" else ("mta-sts" if how.group(2) else "pkix")
        tc.assertEqual(ver, want, "delivery verified=%s, checker: %s"
                       % (ver, j["verdict"]["text"]))
    tc.assertEqual(j["exit"], 0 if would and all(m["verified"] for m in j["mx"]) else 1)
    tc.assertEqual(scanpop.schema_errors(j, scanpop.load_schema()), [])
    return j


class TestCheckDane(unittest.TestCase):
    def verdict(self, case):
        return check_case(self, case)

    def test_ee_match(self):
        j = self.verdict("ee")
        self.assertEqual(addr(j)["dane"]["matched"], "3 1 1 matched the server certificate")
        self.assertEqual(addr(j)["pkix"]["ok"], True)
        self.assertTrue(j["verdict"]["dane_all"])

    def test_ee_match_expired_certificate(self):
        j = self.verdict("ee-expired")
        a = addr(j)
        self.assertEqual(a["dane"]["ok"], True, a)
        self.assertEqual(a["pkix"]["ok"], False)
        self.assertTrue(a["pkix"]["error"].startswith("certificate has expired"), a)
        self.assertLess(a["certificates"][0]["days_left"], 0)

    def test_ee_mismatch_mx1_valid_mx2(self):
        j = self.verdict("ee-mismatch")
        self.assertEqual([m["verified"] for m in j["mx"]], [False, True])
        self.assertEqual(addr(j, 0)["dane"]["error"],
                         "TLSA records do not match the certificate of mx1.danemis.lab")
        self.assertEqual(addr(j, 0)["pkix"]["ok"], True)  # PKIX would pass: DANE decides
        self.assertEqual(j["exit"], 1)

    def test_ta_right_name(self):
        j = self.verdict("ta")
        self.assertTrue(addr(j)["dane"]["matched"].startswith("2 0 1"), addr(j))

    def test_ta_wrong_name(self):
        j = self.verdict("ta-wrongname")
        a = addr(j)
        self.assertEqual(a["dane"]["ok"], False, a)
        self.assertEqual(a["starttls"], True)
        self.assertIn("mx1.danetawrong.lab", j["mx"][0]["verdict"])

    def test_tlsa_bogus(self):
        j = self.verdict("bogus")
        self.assertRegex(j["mx"][0]["why"] + j["verdict"]["text"], r"(?i)bogus|TLSA")
        self.assertFalse(j["mx"][0]["verified"])

    def test_tlsa_insecure_zone_pkix(self):
        j = self.verdict("insecure")
        self.assertEqual(j["mx"][0]["tlsa"], [])  # not usable: not DNSSEC-secure
        self.assertIsNone(addr(j)["dane"])
        self.assertEqual(addr(j)["pkix"], {"ok": True, "error": ""})

    def test_usage_0_1_only_pkix(self):
        j = self.verdict("usage01")
        self.assertEqual(addr(j)["pkix"]["ok"], True)
        self.assertIsNone(addr(j)["dane"])

    def test_usage_0_1_only_pkix_self_signed(self):
        j = self.verdict("usage01-self")
        self.assertEqual(addr(j)["pkix"], {"ok": False, "error": "certificate is self-signed"})

    def test_mta_sts_enforce_skips_mx(self):
        j = self.verdict("sts-enforce")
        self.assertEqual(j["mta_sts"]["valid"], True, j["mta_sts"])
        self.assertEqual(j["mta_sts"]["mode"], "enforce")
        self.assertEqual(j["mta_sts"]["mx"], ["mx1.stsenforce.lab"])
        self.assertTrue(j["verdict"]["mta_sts_enforce"])
        by = {m["host"].rstrip("."): m for m in j["mx"]}
        self.assertEqual(by["mx2.stsenforce.lab"]["mta_sts_match"], False)
        self.assertEqual(by["mx1.stsenforce.lab"]["mta_sts_match"], True)
        self.assertFalse(by["mx2.stsenforce.lab"]["verified"])
        self.assertIn("skip", by["mx2.stsenforce.lab"]["verdict"])
        self.assertTrue(any(re.search(r"mta-sts\.stsenforce\.lab\S* /\.well-known/mta-sts\.txt"
                                      r" 200", l) for l in ENV["nginx"].access_log()),
                        ENV["nginx"].access_log())

    def test_dane_and_mta_sts_dane_decides(self):
        j = self.verdict("dane+sts")
        self.assertEqual(j["mta_sts"]["mode"], "enforce")
        self.assertEqual(j["mx"][0]["mta_sts_match"], True)
        self.assertEqual(addr(j)["pkix"]["ok"], False)  # self-signed: only DANE verifies
        self.assertEqual(addr(j)["dane"]["ok"], True)

    def test_cname_mx(self):
        j = self.verdict("cname")
        self.assertEqual(j["plan"]["mx"][0]["tlsa_base"].rstrip("."), "real.cname.lab")
        self.assertEqual(addr(j)["dane"]["ok"], True)


class TestEnforcementOnDane(unittest.TestCase):
    """Inbound enforcement detection next to DANE: Postfix encrypt and strictmxd refuse
    the plaintext MAIL FROM with 530 (reported enforcing, the domain citable); the Postfix
    `may` MXs take it (reported not enforcing). The probe never sends RCPT or DATA."""

    def test_postfix_encrypt_with_dane_is_citable(self):
        j = check_case(self, "dane-encrypt")
        inb = addr(j)["inbound"]
        self.assertEqual((inb["enforces"], inb["result"]), (True, "enforced"), inb)
        self.assertTrue(inb["reply"].startswith("530"), inb)
        self.assertTrue(j["verdict"]["enforce_all"])
        self.assertTrue(j["verdict"]["citable"])
        self.assertTrue(j["verdict"]["campaign"].startswith(
            "may be cited as user@daneenc.lab (STARTTLS)"), j["verdict"]["campaign"])
        self.assertEqual(j["exit"], 0)
        # Postfix saw the plaintext session: MAIL refused, RSET (Postfix refuses it too
        # before STARTTLS under `encrypt`: rset=0/1), QUIT; never RCPT or DATA
        lines = re.findall(r"disconnect from \S+ (.*)$", ENV["mxs"]["L5"].log(), re.M)
        plain = [l for l in lines if "starttls" not in l and "mail=" in l]
        self.assertTrue(plain, lines)
        for l in plain:
            self.assertRegex(l, r"\bmail=0/1\b")
            self.assertRegex(l, r"\brset=(0/)?1\b")
            self.assertNotRegex(l, r"\b(rcpt|data|bdat)=")

    def test_strictmxd_with_dane_is_citable(self):
        j = check_case(self, "dane-smx")
        inb = addr(j)["inbound"]
        self.assertEqual((inb["enforces"], inb["result"]), (True, "enforced"), inb)
        self.assertTrue(inb["reply"].startswith("530 5.7.0"), inb)
        self.assertTrue(j["verdict"]["citable"])
        self.assertEqual(addr(j)["dane"]["ok"], True)
        # the checker queued nothing there: the one queued message is the relay's
        q = ENV["smx"].log_text().count("event=queued")
        self.assertEqual(q, 1, ENV["smx"].log_text()[-2000:])

    def test_may_postfix_not_enforcing(self):
        for case in ("ee", "dane+sts", "ee-expired"):
            inb = addr(ENV["json"][CASES[case][0]])["inbound"]
            self.assertEqual((inb["enforces"], inb["result"]), (False, "accepted"),
                             (case, inb))
            self.assertTrue(inb["reply"].startswith("250"), inb)
            self.assertFalse(ENV["json"][CASES[case][0]]["verdict"]["citable"])

    def test_text_output_shows_enforcement(self):
        p = strictmx("check", "daneenc.lab", "daneee.lab", "--timeout", TIMEOUT)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertNotIn("\033[", p.stdout)
        self.assertRegex(p.stdout, r"(?m)^      inbound\s+enforces STARTTLS \(530[ -]")
        self.assertRegex(p.stdout, r"(?m)^      inbound\s+accepts mail without STARTTLS \(250")
        self.assertIn("campaign: may be cited as user@daneenc.lab (STARTTLS)", p.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
