"""`strictmx scan` over a population of >= 1,000 loopback test domains with known ground
truth (issue 5, "Tests and benchmark"); the JSON lines validated against
docs/checker-schema.json; the HTML report rendered in headless Chromium.

The population (tests/integration/scanpop.py): 4 DNSSEC-signed zones on NSD 127.0.2.53,
7 listeners on 127.0.2.1..7:25 (5 Postfix variants: may, encrypt, none, expired,
self-signed; a second Postfix may; strictmxd enforcing), each shared by ~60-200 domains:
valid PKIX, enforcing (Postfix encrypt / strictmxd), no STARTTLS, expired, wrong name,
self-signed, DANE-EE 3 1 1 match, TLSA mismatch, two MXs (first without STARTTLS), null
MX, no such domain. Every domain's line is compared with its category's ground truth;
the rate is printed, not asserted (`make bench` reports it for the release build).

The main scan runs with the default --jobs (one worker process per core); a second
scan with --jobs 1 checks that one loop, with all of the concurrency on one resolver,
classifies the same way. Results shared
between domains (the enforcement probe per address, docs/checker.md) are checked through
the summary's "probes:" line.

TestSharedMxPopulation: a second, small population (200 domains, 70 % of them at a few
providers' MX hosts, `scanpop.py --shared-mx`) on 127.0.3.x: every domain's
classification, and the TLS probes shared between a provider's customer domains.

SMX_SCANPOP_DOMAINS=N changes the population size (default 1000). Run time on 2 cores
with the ASan build: ~25 s to build the bed, ~15 s per 1,000-domain scan.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import smxtest  # noqa: E402
import scanpop  # noqa: E402

N = int(os.environ.get("SMX_SCANPOP_DOMAINS", "1000"))
SCAN_BOUND = 600  # seconds: the whole scan (the ASan build takes ~15 s for 1,000)

ENV = {}


def setUpModule():
    smxtest.require_binaries()
    pop = scanpop.Population(N)
    pop.start()
    ENV["pop"] = pop
    tmp = tempfile.mkdtemp(prefix="smx-scanpop-out-")
    ENV["tmp"] = tmp
    out = os.path.join(tmp, "out.jsonl")
    html = os.path.join(tmp, "report.html")
    pf = os.path.join(tmp, "tls_policy")
    r = scanpop.run_scan(smxtest.STRICTMX, pop.conf, pop.domains_file, out, concurrency=200,
                         timeout=10, extra=["--html", html, "--postfix-policy", pf],
                         bound=SCAN_BOUND)
    ENV.update(scan=r, out=out, html=html, pf=pf)
    print("\nscan population: %d domains in %.2f s = %.0f domains/s (ASan build %s, "
          "concurrency 200, scanner CPU %.1f s; bed built in %.1f s)"
          % (len(r.lines), r.seconds, len(r.lines) / max(r.seconds, 1e-6),
             smxtest.STRICTMX, r.cpu, pop.setup_seconds), file=sys.stderr)


def tearDownModule():
    errors = []
    if ENV.get("pop"):
        errors = ENV["pop"].stop()
    if ENV.get("tmp") and not os.environ.get("SMX_KEEP_TMP"):
        shutil.rmtree(ENV["tmp"], ignore_errors=True)
    if errors:
        raise AssertionError("\n".join(errors))


def figure(text, label):
    m = re.search(r"(?m)^\s+%s\s+(\d+)\s" % re.escape(label), text)
    return int(m.group(1)) if m else None


class TestPopulation(unittest.TestCase):
    def setUp(self):
        self.pop, self.r = ENV["pop"], ENV["scan"]

    def test_scan_exit_and_one_line_per_domain(self):
        self.assertEqual(self.r.rc, 0, self.r.stderr[-3000:])
        self.assertEqual(self.r.stderr, "", "not a terminal: no progress output")
        self.assertGreaterEqual(len(self.pop.domains), N)
        self.assertEqual(sorted(j["domain"] for j in self.r.lines),
                         sorted(d for d, _c in self.pop.domains))

    def test_every_domain_classified_as_ground_truth(self):
        problems = self.pop.verify(self.r.lines)
        by_cat = {}
        for p in problems:
            cat = p.split("(", 1)[1].split(")", 1)[0] if "(" in p else "?"
            by_cat[cat] = by_cat.get(cat, 0) + 1
        self.assertEqual(problems, [], "misclassified per category %s; first ones:\n%s"
                         % (by_cat, "\n".join(problems[:20])))
        # every category is present, so that the comparison above is not vacuous
        self.assertEqual(set(self.pop.counts()), {c for c, _w in scanpop.WEIGHTS})

    def test_ground_truth_details(self):
        """Details that the category comparison does not look at, on one domain each."""
        by = {}
        for j in self.r.lines:
            by.setdefault(self.pop.truth[j["domain"]], j)
        a = by["dane-ee"]["mx"][0]["addresses"][0]
        self.assertEqual(a["dane"]["ok"], True, a)
        self.assertEqual(a["pkix"], {"ok": False, "error": "certificate is self-signed"})
        self.assertIn("single TLSA record", by["dane-ee"]["mx"][0]["tlsa_rollover_warning"])
        a = by["tlsa-mismatch"]["mx"][0]["addresses"][0]
        self.assertEqual(a["pkix"]["ok"], True, a)  # PKIX would pass; DANE decides
        self.assertEqual(a["dane"]["ok"], False, a)
        a = by["expired"]["mx"][0]["addresses"][0]
        self.assertLess(a["certificates"][0]["days_left"], 0)
        self.assertEqual(a["certificates"][0]["not_after"], "2020-01-31")
        for cat in ("enforce-pf", "enforce-smx"):
            inb = by[cat]["mx"][0]["addresses"][0]["inbound"]
            self.assertEqual(inb["enforces"], True, inb)
            self.assertRegex(inb["reply"], r"^530[ -]", inb)
        inb = by["valid"]["mx"][0]["addresses"][0]["inbound"]
        self.assertEqual((inb["enforces"], inb["reply"][:3]), (False, "250"), inb)
        self.assertEqual(by["mixed"]["mx"][0]["addresses"][0]["starttls"], False)
        self.assertEqual(by["nxdomain"]["mx"], [])
        self.assertEqual(by["nullmx"]["mx"], [])
        # the listeners are shared: 7 addresses serve every MX in the population
        ips = {a["ip"] for j in self.r.lines for m in j["mx"] for a in m["addresses"]}
        self.assertEqual(ips, {addr for addr, _k in scanpop.LISTENERS.values()})

    def test_json_lines_match_schema(self):
        schema = scanpop.load_schema()
        bad = []
        for j in self.r.lines:
            e = scanpop.schema_errors(j, schema)
            if e:
                bad.append("%s: %s" % (j["domain"], "; ".join(e[:3])))
        self.assertEqual(bad, [], "\n".join(bad[:10]))

    def test_shared_results(self):
        """Every probe is either run or answered by another domain's result; the
        enforcement probe, which depends on the address only, runs about once per
        listener and job (7 listeners) instead of once per MX address."""
        m = re.search(r"probes: (\d+) TLS \(\+(\d+) answered by a shared result\), (\d+) "
                      r"enforcement \(\+(\d+) shared\); (\d+) jobs?", self.r.stdout)
        self.assertIsNotNone(m, self.r.stdout)
        tls_run, tls_shared, enf_run, enf_shared, jobs = map(int, m.groups())
        addrs = [(mx, a) for j in self.r.lines for mx in j["mx"] for a in mx["addresses"]]
        connected = sum(1 for _mx, a in addrs if a["connect"]["ok"])
        # one handshake per address: a DANE MX's PKIX result (for information) comes
        # from its DANE handshake, the TLSA base being the MX host name here (same SNI)
        self.assertEqual(tls_run + tls_shared, len(addrs))
        for mx, a in addrs:
            if mx["method"] == "dane" and mx["tlsa"] and a["connect"]["ok"]:
                self.assertIn("ok", a["pkix"], a)
        self.assertEqual(enf_run + enf_shared, connected)
        self.assertGreaterEqual(jobs, 1)
        # at most once per listener and job, plus a retry should one get no answer
        self.assertLessEqual(enf_run, 2 * len(scanpop.LISTENERS) * jobs)
        for _mx, a in addrs:
            if a["connect"]["ok"]:
                self.assertIn(a["inbound"]["result"], ("enforced", "accepted"), a)

    def test_shared_tls_probe_same_result(self):
        """`check` does not drop repeated names: the second check of a domain finds the
        first one's probes under way (same address, SNI, names, TLSA set) and waits for
        them; both results must be the same, and the ground truth."""
        pop = ENV["pop"]
        pick = {}
        for d, cat in pop.domains:
            if cat not in ("nullmx", "nxdomain"):
                pick.setdefault(cat, d)
        names = [d for d in pick.values() for _twice in (0, 1)]
        p = subprocess.run([smxtest.STRICTMX, "-c", pop.conf, "check", "--json", "--timeout",
                            "10"] + names, capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, ASAN_OPTIONS="detect_leaks=1"))
        self.assertIn(p.returncode, (0, 1), p.stderr)
        lines = [json.loads(l) for l in p.stdout.splitlines()]
        self.assertEqual([j["domain"] for j in lines], names)
        for a, b in zip(lines[0::2], lines[1::2]):
            a.pop("elapsed_ms")
            b.pop("elapsed_ms")
            self.assertEqual(a, b, a["domain"])
            self.assertEqual(scanpop.domain_problems(a, pop.expected(a["domain"])), [])

    def test_one_job_classifies_the_same(self):
        """--jobs 1 (one event loop, no worker processes) on the whole population at the
        default concurrency (200): one resolver with hundreds of queries in flight over
        TCP to NSD. With libunbound's library default of 2 TCP streams it closed streams
        with queries on them, then took NSD for dead: ~70 % of the domains came back
        "tempfail" (SERVFAIL)."""
        pop = ENV["pop"]
        part = pop.domains
        src = pop.domains_file
        out = os.path.join(ENV["tmp"], "part.jsonl")
        r = scanpop.run_scan(smxtest.STRICTMX, pop.conf, src, out, concurrency=200,
                             timeout=10, extra=["--jobs", "1"], bound=SCAN_BOUND)
        self.assertEqual(r.rc, 0, r.stderr[-3000:])
        self.assertIn("; 1 job\n", r.stdout)
        self.assertEqual(sorted(j["domain"] for j in r.lines), sorted(d for d, _c in part))
        problems = []
        for j in r.lines:
            problems += ["%s: %s" % (j["domain"], p)
                         for p in scanpop.domain_problems(j, pop.expected(j["domain"]))]
        self.assertEqual(problems, [], "\n".join(problems[:20]))

    def test_summary_figures(self):
        c = self.pop.counts()
        out = self.r.stdout
        self.assertIn("summary: %d domains (%d could not be checked)" % (N, c["nxdomain"]),
                      out)
        want = {
            "with MX": N - c["nullmx"] - c["nxdomain"],
            "enforcing STARTTLS inbound": c["enforce-pf"] + c["enforce-smx"],
            "DANE-valid (every MX)": c["dane-ee"],
            "every MX verifies": c["valid"] + c["enforce-pf"] + c["enforce-smx"] + c["dane-ee"],
            "strictmx would deliver": (c["valid"] + c["enforce-pf"] + c["enforce-smx"]
                                       + c["dane-ee"] + c["mixed"]),
            "citable (STARTTLS)": c["enforce-pf"] + c["enforce-smx"],
            "MTA-STS enforce": 0,
        }
        got = {k: figure(out, k) for k in want}
        self.assertEqual(got, want, out)

    def test_postfix_policy_lines(self):
        with open(ENV["pf"]) as f:
            got = sorted(f.read().splitlines())
        want = []
        for d, cat in self.pop.domains:
            if cat in ("valid", "enforce-pf", "enforce-smx"):
                want.append("%s secure match=mx.%s" % (d, d))
            elif cat == "dane-ee":
                want.append("%s dane-only" % d)
        self.assertEqual(got, sorted(want))

    def test_html_report_renders_in_chromium(self):
        with open(ENV["html"]) as f:
            page = f.read()
        svgs = re.findall(r"<svg\b[^>]*>", page)
        self.assertGreaterEqual(len(svgs), 3, "charts: Domains, TLS versions, reasons")
        self.assertEqual(page.count("<rect "), 2 * page.count("</text><rect "))  # bars drawn
        self.assertNotRegex(page, r"(src|href)=\"https?:")
        self.assertEqual(page.count("<tr><td>"), N)
        png = os.path.join(ENV["tmp"], "report.png")
        p = scanpop.screenshot(ENV["html"], png, 1280, 2000)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertTrue(os.path.isfile(png), p.stdout + p.stderr)
        self.assertEqual(scanpop.png_info(png), (1280, 2000))
        # a blank page compresses to a few kB; charts and a table of text do not
        self.assertGreater(os.path.getsize(png), 40000)
        if os.environ.get("SMX_SCREENSHOT_DIR"):
            shutil.copy(png, os.environ["SMX_SCREENSHOT_DIR"])


class TestSharedMxPopulation(unittest.TestCase):
    """A small population where 70 % of the domains point their MX records at a few
    providers' MX hosts (scanpop.PROVIDERS: valid PKIX, enforcing, DANE-EE, no STARTTLS,
    expired), as real domains mostly do (`scanpop.py --shared-mx`). Its own listeners and
    NSD on 127.0.3.x, so it runs beside the module's population. Asserts every domain's
    classification and that the TLS probes of the providers' hosts were shared between
    their customer domains. Served the way `make bench` serves its populations: strictmxd
    daemons for every listener that offers STARTTLS (`require_tls = no` where the
    scenario takes plaintext mail; the no-STARTTLS one is Postfix), each on 3 addresses
    over which the domains' own MX hosts are spread. ~20 s with the ASan build."""

    N_SHARED = 200
    FRACTION = 0.7

    @classmethod
    def setUpClass(cls):
        cls.pop = scanpop.Population(cls.N_SHARED, shared=cls.FRACTION, net="127.0.3.",
                                     servers="strictmxd", addrs=3)
        cls.pop.start()
        cls.tmp = tempfile.mkdtemp(prefix="smx-scanpop-shared-")
        out = os.path.join(cls.tmp, "out.jsonl")
        cls.r = scanpop.run_scan(smxtest.STRICTMX, cls.pop.conf, cls.pop.domains_file, out,
                                 concurrency=100, timeout=10, bound=120)

    @classmethod
    def tearDownClass(cls):
        errors = cls.pop.stop()
        if not os.environ.get("SMX_KEEP_TMP"):
            shutil.rmtree(cls.tmp, ignore_errors=True)
        if errors:
            raise AssertionError("\n".join(errors))

    def test_every_domain_classified_as_ground_truth(self):
        self.assertEqual(self.r.rc, 0, self.r.stderr[-3000:])
        self.assertEqual(sorted(j["domain"] for j in self.r.lines),
                         sorted(d for d, _c in self.pop.domains))
        self.assertEqual(len(self.pop.provider), round(self.N_SHARED * self.FRACTION))
        self.assertEqual(set(self.pop.provider_counts()), {p[0] for p in scanpop.PROVIDERS})
        problems = self.pop.verify(self.r.lines)
        self.assertEqual(problems, [], "\n".join(problems[:20]))
        # a provider's customers really use its hosts: the MX names in the output
        for j in self.r.lines:
            prov = self.pop.provider.get(j["domain"])
            if prov:
                self.assertEqual([m["host"] for m in j["mx"]],
                                 [h for _p, h, _lk in scanpop.provider_hosts(prov)], j["domain"])

    def test_tls_probes_shared(self):
        m = re.search(r"probes: (\d+) TLS \(\+(\d+) answered by a shared result\), (\d+) "
                      r"enforcement \(\+(\d+) shared\); (\d+) jobs?", self.r.stdout)
        self.assertIsNotNone(m, self.r.stdout)
        tls_run, tls_shared, _enf_run, _enf_shared, jobs = map(int, m.groups())

        def probes(j):  # TLS probes a domain needs: one per address (DANE MXs too)
            return sum(1 for mx in j["mx"] for a in mx["addresses"])
        need_prov = sum(probes(j) for j in self.r.lines if j["domain"] in self.pop.provider)
        need_own = sum(probes(j) for j in self.r.lines if j["domain"] not in self.pop.provider)
        self.assertEqual(tls_run + tls_shared, need_prov + need_own)
        # each provider host and address (and method) is probed about once per job (a
        # retry allowed); everything else its customers need comes from the shared result
        keys = len(self.pop.provider_mx_addresses())
        self.assertLessEqual(tls_run, need_own + 2 * keys * jobs, self.r.stdout)
        self.assertGreaterEqual(tls_shared, need_prov - 2 * keys * jobs, self.r.stdout)
        self.assertGreater(tls_shared, need_prov // 2, self.r.stdout)

    def test_served_on_many_addresses(self):
        """The domains' own MX hosts are spread over their listener's 3 addresses, and
        every address answered (Postfix's and strictmxd's extra listen addresses work)."""
        used = {}
        for j in self.r.lines:
            if j["domain"] in self.pop.provider:
                continue
            for mx in j["mx"]:
                for a in mx["addresses"]:
                    used.setdefault(a["ip"], []).append(a["connect"]["ok"])
        for lk, addrs in self.pop.addrs.items():
            self.assertEqual(len(addrs), 3)
            for addr in addrs:
                self.assertIn(addr, used, (lk, addr))
                self.assertTrue(all(used[addr]), (lk, addr))


class TestSchemaEdges(unittest.TestCase):
    """The short form of a line for an input that is not a domain name, and the
    validator itself (so that a passing schema check means something)."""

    def test_invalid_input_line_matches_schema(self):
        pop = ENV["pop"]
        first = pop.domains[0][0]
        p = subprocess.run([smxtest.STRICTMX, "-c", pop.conf, "scan", "-", "--timeout", "10"],
                           input="bad..name\n%s\n" % first, capture_output=True, text=True,
                           timeout=120, env=dict(os.environ, ASAN_OPTIONS="detect_leaks=1"))
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = [json.loads(l) for l in p.stdout.splitlines()]
        self.assertEqual(sorted(j["status"] for j in lines), ["invalid", "ok"])
        schema = scanpop.load_schema()
        for j in lines:
            self.assertEqual(scanpop.schema_errors(j, schema), [], j)

    def test_validator_rejects_wrong_shapes(self):
        schema = scanpop.load_schema()
        good = ENV["scan"].lines[0]
        self.assertEqual(scanpop.schema_errors(good, schema), [])
        for mutate in (lambda j: j.pop("verdict"),
                       lambda j: j.update(exit=3),
                       lambda j: j.update(status="weird"),
                       lambda j: j["verdict"].update(would_deliver="yes"),
                       lambda j: j.update(extra_field=1),
                       lambda j: j["mx"].append({"host": "x"})):
            j = json.loads(json.dumps(good))
            mutate(j)
            self.assertNotEqual(scanpop.schema_errors(j, schema), [], mutate)


if __name__ == "__main__":
    unittest.main(verbosity=2)
