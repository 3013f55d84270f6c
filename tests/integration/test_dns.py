"""The resolver (src/dns) against real DNS: NSD on loopback serving a signed
`lab.` tree (and an unsigned copy), driven through tests/tools/dns_probe.

What must hold (RFC 5321 §5.1, RFC 7505, RFC 7672 §2.1.1):
- MX hosts by preference, with the DNSSEC status of the MX RRset;
- a bogus answer, a SERVFAIL or a timeout is a temporary failure, never a
  fallback to the domain's addresses;
- a null MX is a permanent "no mail"; a missing domain is NXDOMAIN;
- no MX records: the domain itself is the MX host when it has an address.

Environment (CTest): DNS_PROBE = path of dns_probe. Every run is bounded.
"""
import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dnsbed import DnsBed, SilentServer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("STRICTMX_SRC") or os.path.dirname(os.path.dirname(HERE))
DNS_PROBE = os.environ.get("DNS_PROBE") or os.path.join(SRC, "build-test", "tests", "dns_probe")

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                     "runtime error:")

TLSA_HASH = "0123456789abcdef" * 4

ZONES = {
    "example.lab.": [
        "@ MX 10 mx1", "@ MX 20 mx2", "@ MX 20 mx3",
        "mx1 A 127.0.0.21",
        "mx2 A 127.0.0.22", "mx2 AAAA ::1",
        "mx3 A 127.0.0.23", "mx3 AAAA ::3",
        "_25._tcp.mx1 TLSA 3 1 1 " + TLSA_HASH,
        '@ TXT "v=spf1 " "-all"',
        "www CNAME mx1",
    ],
    "bogus.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.31"],
    "nullmx.lab.": ["@ MX 0 ."],
    "amx.lab.": ["@ A 127.0.0.41"],
    "nohost.lab.": ['@ TXT "no mail here"'],
    "insecure.lab.": ["@ MX 10 mx", "mx A 127.0.0.51"],
}
BOGUS = [("bogus.lab.", "bogus.lab.", "MX"), ("example.lab.", "mx3.example.lab.", "AAAA")]


def probe(bed, *args, ta=True, timeout_ms=None, extra_stubs=(), limit=40):
    """Run dns_probe; (list of JSON objects, stderr, seconds)."""
    argv = [DNS_PROBE, "--deadline", str(limit - 5)]
    if bed is not None:
        argv += ["--stub", bed.stub]
        if ta and bed.trust_anchor_file:
            argv += ["--ta", bed.trust_anchor_file]
    for s in extra_stubs:
        argv += ["--stub", s]
    if timeout_ms is not None:
        argv += ["--timeout", str(timeout_ms)]
    argv += list(args)
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
    took = time.monotonic() - t0
    for m in SANITIZER_MARKERS:
        if m in r.stderr:
            raise AssertionError("sanitizer report from %s:\n%s" % (argv, r.stderr))
    out = [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip()]
    if r.returncode not in (0, 1):
        raise AssertionError("dns_probe exit %d: %s %s" % (r.returncode, r.stdout, r.stderr))
    return out, r.stderr, took


def one(bed, *args, **kw):
    out, _, _ = probe(bed, *args, **kw)
    assert len(out) == 1, out
    return out[0]


def dig(bed, name, rtype):
    r = subprocess.run(["dig", "+dnssec", "+norec", "+time=2", "+tries=1", "-p",
                        str(bed.port), "@" + bed.addr, name, rtype],
                       capture_output=True, text=True, timeout=20)
    return r.stdout


class TestDns(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not (os.path.isfile(DNS_PROBE) and os.access(DNS_PROBE, os.X_OK)):
            raise RuntimeError("dns_probe not found: %s (set DNS_PROBE)" % DNS_PROBE)
        cls.signed = DnsBed(ZONES, signed=True, unsigned=["insecure.lab."], bogus=BOGUS,
                            dead=["down.lab."], lame=["lame.lab."]).start()
        cls.plain = DnsBed({"example.lab.": ZONES["example.lab."]}, signed=False).start()
        cls.t0 = time.monotonic()

    @classmethod
    def tearDownClass(cls):
        cls.signed.stop()
        cls.plain.stop()

    # ---- the bed itself, seen with dig ----

    def test_bed_serves_signed_tree(self):
        out = dig(self.signed, "example.lab.", "MX")
        self.assertIn("status: NOERROR", out)
        self.assertIn("RRSIG\tMX", out)
        self.assertRegex(dig(self.signed, "example.lab.", "DS"), r"IN\s+DS\s+\d+ 13 2 ")
        # the unsigned child has no DS in the parent: insecure delegation
        self.assertNotRegex(dig(self.signed, "insecure.lab.", "DS"), r"IN\s+DS\s+\d+")
        with open(self.signed.trust_anchor_file) as f:
            self.assertRegex(f.read(), r"^lab\.\s+(\d+\s+)?IN\s+DS\s+\d+ 13 2 [0-9a-f]{64}")
        self.assertNotIn("RRSIG", dig(self.plain, "example.lab.", "MX"))
        self.assertIsNone(self.plain.trust_anchor_file)

    # ---- MX ----

    def test_mx_secure(self):
        r = one(self.signed, "mx", "example.lab")
        self.assertEqual((r["status"], r["sec"]), ("ok", "secure"))
        self.assertEqual([(h["name"], h["pref"], h["implicit"]) for h in r["hosts"]][0],
                         ("mx1.example.lab", 10, False))
        self.assertEqual(sorted(h["name"] for h in r["hosts"][1:]),
                         ["mx2.example.lab", "mx3.example.lab"])
        self.assertEqual([h["pref"] for h in r["hosts"]], [10, 20, 20])

    def test_mx_equal_preference_shuffled(self):
        out, _, _ = probe(self.signed, *(["mx", "example.lab"] * 24))
        self.assertEqual(len(out), 24)
        orders = {tuple(h["name"] for h in r["hosts"][1:]) for r in out}
        self.assertEqual(len(orders), 2, orders)
        self.assertTrue(all(r["hosts"][0]["name"] == "mx1.example.lab" for r in out))

    def test_mx_insecure_unsigned_bed(self):
        r = one(self.plain, "mx", "example.lab")
        self.assertEqual((r["status"], r["sec"]), ("ok", "insecure"))
        self.assertEqual(r["hosts"][0]["name"], "mx1.example.lab")

    def test_mx_insecure_child_of_signed_parent(self):
        r = one(self.signed, "mx", "insecure.lab")
        self.assertEqual((r["status"], r["sec"]), ("ok", "insecure"))
        self.assertEqual(r["hosts"], [{"name": "mx.insecure.lab", "pref": 10,
                                       "implicit": False}])

    def test_mx_without_trust_anchor_is_insecure(self):
        r = one(self.signed, "mx", "example.lab", ta=False)
        self.assertEqual((r["status"], r["sec"]), ("ok", "insecure"))

    def test_mx_bogus_is_tempfail(self):
        r = one(self.signed, "mx", "bogus.lab")
        self.assertEqual(r["status"], "tempfail")
        self.assertEqual(r["hosts"], [])
        self.assertIn("DNS lookup of MX for bogus.lab failed: DNSSEC validation failed",
                      r["reason"])

    def test_null_mx(self):
        r = one(self.signed, "mx", "nullmx.lab")
        self.assertEqual((r["status"], r["sec"]), ("null", "secure"))
        self.assertEqual(r["hosts"], [])

    def test_implicit_mx(self):
        r = one(self.signed, "mx", "amx.lab")
        self.assertEqual((r["status"], r["sec"]), ("ok", "secure"))
        self.assertEqual(r["hosts"], [{"name": "amx.lab", "pref": 0, "implicit": True}])

    def test_no_mx_no_address(self):
        r = one(self.signed, "mx", "nohost.lab")
        self.assertEqual(r["status"], "nxdomain")
        self.assertIn("no MX, A or AAAA record", r["reason"])

    def test_nxdomain(self):
        r = one(self.signed, "mx", "nonexistent.lab")
        self.assertEqual((r["status"], r["sec"]), ("nxdomain", "secure"))
        r = one(self.signed, "mx", "nx.example.lab")
        self.assertEqual((r["status"], r["sec"]), ("nxdomain", "secure"))

    def test_servfail_delegation_is_tempfail(self):
        out, _, took = probe(self.signed, "mx", "lame.lab", "addrs", "mx.lame.lab")
        by = {r["cmd"]: r for r in out}
        self.assertEqual(by["mx"]["status"], "tempfail")
        self.assertEqual(by["mx"]["reason"], "DNS lookup of MX for lame.lab failed: SERVFAIL")
        self.assertEqual(by["addrs"]["status"], "tempfail")
        self.assertLess(took, 30)

    def test_unreachable_server_times_out(self):
        # nothing listens where down.lab is delegated: bounded by our timeout
        out, _, took = probe(self.signed, "mx", "down.lab", "addrs", "mx.down.lab",
                             timeout_ms=2000)
        by = {r["cmd"]: r for r in out}
        self.assertEqual(by["mx"]["status"], "tempfail")
        self.assertEqual(by["mx"]["reason"], "DNS lookup of MX for down.lab failed: timeout")
        self.assertEqual(by["addrs"]["status"], "tempfail")
        self.assertLess(took, 15)

    def test_silent_stub_times_out(self):
        with SilentServer("silent.") as s:
            r = one(None, "mx", "x.silent", extra_stubs=[s.stub], timeout_ms=1500)
        self.assertEqual(r["status"], "tempfail")
        self.assertIn("timeout", r["reason"])

    # ---- addresses ----

    def test_addrs(self):
        r = one(self.signed, "addrs", "mx2.example.lab", "2525")
        self.assertEqual((r["status"], r["sec"], r["partial"]), ("ok", "secure", False))
        self.assertEqual(r["addrs"], ["[::1]:2525", "127.0.0.22:2525"])
        r = one(self.signed, "addrs", "mx1.example.lab")
        self.assertEqual(r["addrs"], ["127.0.0.21:25"])
        self.assertEqual(r["sec"], "secure")
        r = one(self.plain, "addrs", "mx1.example.lab")
        self.assertEqual((r["status"], r["sec"]), ("ok", "insecure"))

    def test_addrs_one_family_bogus(self):
        # AAAA bogus, A secure: the A addresses, flagged partial, still secure
        r = one(self.signed, "addrs", "mx3.example.lab")
        self.assertEqual((r["status"], r["sec"], r["partial"]), ("ok", "secure", True))
        self.assertEqual(r["addrs"], ["127.0.0.23:25"])
        self.assertIn("AAAA", r["reason"])

    def test_addrs_missing(self):
        r = one(self.signed, "addrs", "nothere.example.lab")
        self.assertEqual((r["status"], r["sec"]), ("nxdomain", "secure"))
        r = one(self.signed, "addrs", "bogus.lab")  # exists, has no address
        self.assertEqual(r["status"], "nxdomain")
        self.assertIn("no A or AAAA", r["reason"])

    # ---- raw queries ----

    def test_query_tlsa(self):
        r = one(self.signed, "query", "_25._tcp.mx1.example.lab", "TLSA")
        self.assertEqual((r["status"], r["sec"]), ("ok", "secure"))
        self.assertEqual(r["rrs"], ["3 1 1 " + TLSA_HASH])
        r = one(self.signed, "query", "_25._tcp.mx2.example.lab", "52")
        self.assertEqual((r["status"], r["sec"]), ("nxdomain", "secure"))
        r = one(self.signed, "query", "mx2.example.lab", "TLSA")
        self.assertEqual((r["status"], r["sec"]), ("nodata", "secure"))

    def test_query_cname_and_txt(self):
        r = one(self.signed, "query", "WWW.Example.Lab", "A")
        self.assertEqual((r["status"], r["sec"]), ("ok", "secure"))
        self.assertEqual((r["owner"], r["cnames"], r["rrs"]), ("mx1.example.lab", 1,
                                                               ["127.0.0.21"]))
        r = one(self.signed, "query", "example.lab", "TXT")
        self.assertEqual(r["rrs"], ["v=spf1 -all"])

    def test_query_bogus(self):
        r = one(self.signed, "query", "bogus.lab", "MX")
        self.assertEqual((r["status"], r["sec"]), ("bogus", "bogus"))
        self.assertIn("validation failure", r["why_bogus"])

    def test_local_answer_is_delivered_later(self):
        # libunbound answers localhost before ub_resolve_event returns
        out, _, _ = probe(self.signed, "query", "localhost", "A", "query", "localhost",
                          "AAAA", "mx", "example.lab")
        self.assertEqual(len(out), 3)
        loc = [r for r in out if r["cmd"] == "query"]
        self.assertEqual({r["status"] for r in loc}, {"ok"})

    def test_cancel(self):
        out, _, _ = probe(self.signed, "cancel-mx", "example.lab", "cancel-mx", "amx.lab",
                          "mx", "nullmx.lab")
        self.assertEqual([r["cmd"] for r in out], ["cancel-mx", "cancel-mx", "mx"])
        self.assertEqual(out[2]["status"], "null")

    def test_setup_errors(self):
        r = one(None, "--ta", "/nonexistent/ta.ds", "query", "localhost", "A")
        self.assertEqual(r, {"error": "dns: trust anchor file /nonexistent/ta.ds: "
                                      "No such file or directory"})


if __name__ == "__main__":
    unittest.main(verbosity=2)
