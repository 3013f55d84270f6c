"""DANE (RFC 7672) and MTA-STS (RFC 8461) outbound delivery, end to end, against real
peers, with a posttls-finger cross-check of every decision (issue 4, "Test bed").

    swaks --tls --> strictmxd 127.0.0.1:P (relay_networks 127.0.0.0/8)
        --> DNS: NSD on 127.0.0.5 serving lab. and its children, DNSSEC-signed with
            ldns-signzone (dnsbed.DnsBed); strictmx gets the lab. trust anchor through
            [dns] trust_anchor
        --> MX: private Postfix instances on 127.0.0.6N/7N:25 (mxbed.PostfixMX)
        --> MTA-STS: a private nginx on 127.0.0.80:443 (mxbed.NginxHTTPS), TestCA cert
    posttls-finger --> unbound on 127.0.0.53:53 (dnsbed.ValidatingResolver: stub-zone
            lab. -> the NSD, same trust anchor), via a private mount namespace whose
            /etc/resolv.conf says `nameserver 127.0.0.53` + `options edns0 trust-ad`

Case -> domain -> MX (address, PostfixMX tls variant) -> records:
  ee           daneee.lab        mx1 .61 valid       TLSA 3 1 1 (leaf SPKI)
  ee-expired   daneexpired.lab   mx1 .62 expired     TLSA 3 1 1
  ee-self      daneself.lab      mx1 .63 selfsigned  TLSA 3 1 1
  ee-mismatch  danemis.lab       MX 10 mx1 .64 valid TLSA 3 1 1 of ANOTHER key,
                                 MX 20 mx2 .65 valid TLSA 3 1 1 (match)
  ta           daneta.lab        mx1 .66 valid       TLSA 2 0 1 (TestCA cert; the chain
                                                     the MX sends ends with the CA)
  ta-wrongname danetawrong.lab   mx1 .67 wrongname   TLSA 2 0 1 (leaf is for other.lab)
  bogus        tlsabogus.lab     mx1 .68 valid       TLSA 3 1 1 (match) made BOGUS
  insecure     tlsainsecure.lab  (zone unsigned, no DS) mx1 .69 valid, TLSA 3 1 1 that
                                                     would not match
  usage01      usage01.lab       mx1 .70 valid       TLSA 0 0 1 (CA) + 1 1 1 (leaf)
  usage01-self usage01self.lab   mx1 .71 selfsigned  TLSA 0 0 1 + 1 1 1 (its own cert)
  sts-enforce  stsenforce.lab    MX 10 mx1 .72 valid, MX 5 mx2 .73 valid (not in the
                                 policy); mta-sts A .80; _mta-sts TXT; mode enforce
  sts-testing  ststesting.lab    MX 10 mx1 .74, MX 5 mx2 .75, both valid; mode testing
  dane+sts     danests.lab       mx1 .76 selfsigned  TLSA 3 1 1; MTA-STS enforce (mx1)
  cname        cname.lab         MX 10 mx -> CNAME real.cname.lab (A .77, valid cert for
                                 real.cname.lab); TLSA at _25._tcp.real.cname.lab 3 1 1
  ee-mismatch-single danemisone.lab  MX 10 mx1.danemis.lab only (the mis1 host: PKIX-valid,
                                 TLSA of another key): defer 4.7.5, never PKIX
  bogus-one-of-two tlsabogustwo.lab  MX 10 mx1.tlsabogus.lab (TLSA bogus), MX 20
                                 mx1.daneee.lab (TLSA 3 1 1 match): the first is skipped
  ta-recipient-domain danetadom.lab  mx1 127.0.4.36 valid, certificate for danetadom.lab
                                 only (the recipient domain); TLSA 2 0 1 (TestCA)
Submitted by their tests (issue 6): danetadom2.lab and tadominsecure.lab (unsigned) with
MX mx1.danetadom.lab, eeinsecure.lab (unsigned) with MX mx1.daneee.lab: connection
reuse; snidane.lab (MX mx CNAME xn--bcher-kva, TLSA 3 1 1) and snists.lab (MX mx CNAME
real, MTA-STS enforce for mx.snists.lab) on SniMX 127.0.4.37:25, which records SNI.

Expected results follow the spec of issue 4 (log keys: `event=delivery ... verified=dane|
mta-sts|pkix result=...`, `event=result ... result=delivered|deferred|failed detail="..."`;
plan: `strictmx -c CONF policy DOMAIN --json`). One strictmxd serves every case: every
message is submitted in setUpModule, each test then waits (bounded) for its own
recipient. TestFixtures checks the bed without strictmx (dig, openssl, curl); TestCrossCheck
runs posttls-finger (-l dane / -l secure) per case and asserts that it agrees with
strictmx. Run time: about 50 s (Postfix starts dominate; up to ~2 min on a busy machine).
"""

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
IT = HERE  # tests/integration
sys.path.insert(0, IT)
sys.path.insert(0, HERE)
import smxtest  # noqa: E402
from smxtest import Daemon  # noqa: E402
from dnsbed import DnsBed, ValidatingResolver  # noqa: E402
from mxbed import (TestCA, PostfixMX, NginxHTTPS, tlsa_rdata, tlsa_data,  # noqa: E402
                   tlsa_digest_openssl)

SENDER = "a@example.org"
RESULT_BOUND = 60.0      # first result line for a recipient (DNS + TLSA + connect + TLS)
DELIVERY_BOUND = 75.0
STS_ADDR = "127.0.0.80"
POSTTLS_FINGER = shutil.which("posttls-finger") or "/usr/sbin/posttls-finger"


def policy_text(mode, mx):
    return "".join("%s\r\n" % l for l in
                   ["version: STSv1", "mode: %s" % mode] + ["mx: %s" % m for m in mx]
                   + ["max_age: 86400"])


# Every MX peer: key -> (address, PostfixMX tls variant, host name)
MXS = {
    "ee": ("127.0.0.61", "valid", "mx1.daneee.lab"),
    "ee-expired": ("127.0.0.62", "expired", "mx1.daneexpired.lab"),
    "ee-self": ("127.0.0.63", "selfsigned", "mx1.daneself.lab"),
    "mis1": ("127.0.0.64", "valid", "mx1.danemis.lab"),
    "mis2": ("127.0.0.65", "valid", "mx2.danemis.lab"),
    "ta": ("127.0.0.66", "valid", "mx1.daneta.lab"),
    "ta-wrongname": ("127.0.0.67", "wrongname", "mx1.danetawrong.lab"),
    "bogus": ("127.0.0.68", "valid", "mx1.tlsabogus.lab"),
    "insecure": ("127.0.0.69", "valid", "mx1.tlsainsecure.lab"),
    "usage01": ("127.0.0.70", "valid", "mx1.usage01.lab"),
    "usage01-self": ("127.0.0.71", "selfsigned", "mx1.usage01self.lab"),
    "enf1": ("127.0.0.72", "valid", "mx1.stsenforce.lab"),
    "enf2": ("127.0.0.73", "valid", "mx2.stsenforce.lab"),
    "tst1": ("127.0.0.74", "valid", "mx1.ststesting.lab"),
    "tst2": ("127.0.0.75", "valid", "mx2.ststesting.lab"),
    "danests": ("127.0.0.76", "selfsigned", "mx1.danests.lab"),
    "cname": ("127.0.0.77", "valid", "real.cname.lab"),
    "ta-dom": ("127.0.4.36", "valid", "danetadom.lab"),  # SAN = the recipient domain
}

# Each case: domain; expected strictmx outcome; the MX (key) that must get the message
# (None: none may); verified= of the delivery; per-MX plan methods; posttls-finger checks
# [(MX key, connect name, level, expected verdict, compare)] where verdict is "verified"
# (the chain or a TLSA record authenticated the peer: "Verified TLS connection
# established"), "fail" (no authenticated TLS: Untrusted/Trusted/Anonymous, a failed
# verification, or no connection) or "tlsa-error" (TLSA lookup failed: posttls-finger
# does not connect). compare=False: informative only, not comparable with strictmx's
# decision for that host, because
#   - insecure -l dane: posttls-finger falls back to unauthenticated TLS (dane level), the
#     -l secure run is the comparable one (strictmx: PKIX decides);
#   - sts-enforce mx2 -l secure: posttls-finger knows no MTA-STS: PKIX passes, the policy
#     (enforce) skips the host in strictmx;
#   - dane+sts -l secure: PKIX alone refuses the self-signed certificate; DANE decides;
#   - usage01* -l dane: Postfix treats a TLSA RRset with only unusable records (usages
#     0/1) as "encrypt" (TLS without authentication, RFC 7672 §2.2 as Postfix reads it);
#     strictmx requires PKIX there (issue 4: stricter on purpose), so the -l secure run
#     is the comparable one. The -l dane run shows Postfix's "unsupported TLSA
#     certificate usage" warnings for both records.
CASES = {
    "ee": dict(domain="daneee.lab", expect="delivered", via="ee", verified="dane",
               plan={"mx1.daneee.lab": "dane"},
               ptf=[("ee", "mx1.daneee.lab", "dane", "verified", True)]),
    "ee-expired": dict(domain="daneexpired.lab", expect="delivered", via="ee-expired",
                       verified="dane", plan={"mx1.daneexpired.lab": "dane"},
                       ptf=[("ee-expired", "mx1.daneexpired.lab", "dane", "verified", True)]),
    "ee-self": dict(domain="daneself.lab", expect="delivered", via="ee-self",
                    verified="dane", plan={"mx1.daneself.lab": "dane"},
                    ptf=[("ee-self", "mx1.daneself.lab", "dane", "verified", True)]),
    "ee-mismatch": dict(domain="danemis.lab", expect="delivered", via="mis2",
                        verified="dane", untouched=["mis1"],
                        plan={"mx1.danemis.lab": "dane", "mx2.danemis.lab": "dane"},
                        ptf=[("mis1", "mx1.danemis.lab", "dane", "fail", True),
                             ("mis2", "mx2.danemis.lab", "dane", "verified", True)]),
    "ta": dict(domain="daneta.lab", expect="delivered", via="ta", verified="dane",
               plan={"mx1.daneta.lab": "dane"},
               ptf=[("ta", "mx1.daneta.lab", "dane", "verified", True)]),
    "ta-wrongname": dict(domain="danetawrong.lab", expect="deferred", via=None,
                         untouched=["ta-wrongname"], plan={"mx1.danetawrong.lab": "dane"},
                         ptf=[("ta-wrongname", "mx1.danetawrong.lab", "dane", "fail", True)]),
    "bogus": dict(domain="tlsabogus.lab", expect="deferred", via=None,
                  untouched=["bogus"], no_connect=["bogus"],
                  plan={"mx1.tlsabogus.lab": "defer"},
                  ptf=[("bogus", "mx1.tlsabogus.lab", "dane", "tlsa-error", True)]),
    "insecure": dict(domain="tlsainsecure.lab", expect="delivered", via="insecure",
                     verified="pkix", plan={"mx1.tlsainsecure.lab": "pkix"},
                     ptf=[("insecure", "mx1.tlsainsecure.lab", "dane", "fail", False),
                          ("insecure", "mx1.tlsainsecure.lab", "secure", "verified", True)]),
    "usage01": dict(domain="usage01.lab", expect="delivered", via="usage01",
                    verified="pkix", plan={"mx1.usage01.lab": "pkix"},
                    ptf=[("usage01", "mx1.usage01.lab", "secure", "verified", True),
                         ("usage01", "mx1.usage01.lab", "dane", "fail", False)]),
    "usage01-self": dict(domain="usage01self.lab", expect="deferred", via=None,
                         untouched=["usage01-self"], plan={"mx1.usage01self.lab": "pkix"},
                         ptf=[("usage01-self", "mx1.usage01self.lab", "secure", "fail", True),
                              ("usage01-self", "mx1.usage01self.lab", "dane", "fail",
                               False)]),
    "sts-enforce": dict(domain="stsenforce.lab", sts_mode="enforce", expect="delivered",
                        via="enf1",
                        verified="mta-sts", untouched=["enf2"], no_connect=["enf2"],
                        plan={"mx1.stsenforce.lab": "mta-sts+pkix",
                              "mx2.stsenforce.lab": "skip"},
                        ptf=[("enf1", "mx1.stsenforce.lab", "secure", "verified", True),
                             ("enf2", "mx2.stsenforce.lab", "secure", "verified", False)]),
    "sts-testing": dict(domain="ststesting.lab", sts_mode="testing", expect="delivered",
                        via="tst2",
                        verified="pkix",
                        plan={"mx1.ststesting.lab": "pkix", "mx2.ststesting.lab": "pkix"},
                        ptf=[("tst2", "mx2.ststesting.lab", "secure", "verified", True)]),
    "dane+sts": dict(domain="danests.lab", sts_mode="enforce", expect="delivered",
                     via="danests",
                     verified="dane", plan={"mx1.danests.lab": "dane"},
                     ptf=[("danests", "mx1.danests.lab", "dane", "verified", True),
                          ("danests", "mx1.danests.lab", "secure", "fail", False)]),
    "cname": dict(domain="cname.lab", expect="delivered", via="cname", verified="dane",
                  via_name="mx.cname.lab",
                  plan={"mx.cname.lab": "dane"}, tlsa_base={"mx.cname.lab": "real.cname.lab"},
                  ptf=[("cname", "mx.cname.lab", "dane", "verified", True)]),
    # security-anchors §8 cases 34, 39, 36 (issue 6)
    "ee-mismatch-single": dict(domain="danemisone.lab", expect="deferred", via=None,
                               status="4.7.5", untouched=["mis1"],
                               plan={"mx1.danemis.lab": "dane"},
                               ptf=[("mis1", "mx1.danemis.lab", "dane", "fail", True)]),
    "bogus-one-of-two": dict(domain="tlsabogustwo.lab", expect="delivered", via="ee",
                             verified="dane", no_connect=["bogus"],
                             plan={"mx1.tlsabogus.lab": "defer", "mx1.daneee.lab": "dane"},
                             ptf=[("bogus", "mx1.tlsabogus.lab", "dane", "tlsa-error", True),
                                  ("ee", "mx1.daneee.lab", "dane", "verified", True)]),
    # posttls-finger "[host]:25" has no recipient domain to match: no cross-check
    "ta-recipient-domain": dict(domain="danetadom.lab", expect="delivered", via="ta-dom",
                                via_name="mx1.danetadom.lab", verified="dane",
                                plan={"mx1.danetadom.lab": "dane"}, ptf=[]),
}

SNI_ADDR = "127.0.4.37"
SNI_NAMES = ["xn--bcher-kva.snidane.lab", "mx.snists.lab"]  # the certificate's SANs


class SniMX:
    """A minimal SMTP MX on SNI_ADDR:25 that records the SNI of every STARTTLS
    handshake and takes every message (250). One thread per connection, bounded
    timeouts; stop() closes the listener."""

    def __init__(self, crt, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(crt, key)
        self.ctx.sni_callback = self._sni
        self.sni = []      # every SNI seen (None: none sent), in order
        self.messages = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((SNI_ADDR, 25))
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _sni(self, sslobj, name, ctx):
        with self.lock:
            self.sni.append(name)

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(20)
        f = None
        try:
            c.sendall(b"220 sni.lab ESMTP\r\n")
            f = c.makefile("rb")
            tls = False
            while True:
                line = f.readline(4096)
                if not line:
                    return
                cmd = line.strip().upper()
                if cmd.startswith(b"EHLO"):
                    c.sendall(b"250-sni.lab\r\n" + (b"" if tls else b"250-STARTTLS\r\n")
                              + b"250 8BITMIME\r\n")
                elif cmd == b"STARTTLS" and not tls:
                    c.sendall(b"220 go ahead\r\n")
                    f.close()
                    c = self.ctx.wrap_socket(c, server_side=True)
                    f = c.makefile("rb")
                    tls = True
                elif cmd == b"DATA" and tls:
                    c.sendall(b"354 go\r\n")
                    body = b""
                    while not body.endswith(b"\r\n.\r\n"):
                        chunk = f.readline(65536)
                        if not chunk:
                            return
                        body += chunk
                    with self.lock:
                        self.messages.append(body)
                    c.sendall(b"250 2.0.0 taken\r\n")
                elif cmd == b"QUIT":
                    c.sendall(b"221 bye\r\n")
                    return
                elif tls and (cmd.startswith(b"MAIL") or cmd.startswith(b"RCPT")
                              or cmd == b"RSET" or cmd == b"NOOP"):
                    c.sendall(b"250 ok\r\n")
                else:
                    c.sendall(b"503 no\r\n")
        except (OSError, ssl.SSLError):
            return
        finally:
            if f is not None:
                f.close()
            c.close()

    def stop(self):
        self.sock.close()


# posttls-finger verdicts as strictmx decisions: the MX-level decision strictmx must make
# for the same host ("deliver" = authenticated TLS, then mail; "refuse" = not to this MX)
PTF_MEANS = {"verified": "deliver", "fail": "refuse", "tlsa-error": "refuse"}


class Bed:
    """Everything the cases share: TestCA, Postfix MXs, DNS bed, nginx, unbound,
    one strictmxd with every case's message submitted."""

    def __init__(self):
        self.cleanups = []
        self.ca = TestCA()
        self.cleanups.append(self.ca.close)
        self.other_crt, _ = self.ca.leaf("other-key.lab", ["other-key.lab"])
        self.sni_crt, sni_key = self.ca.leaf(SNI_NAMES[0], SNI_NAMES)
        self.sni_mx = SniMX(self.sni_crt, sni_key)
        self.cleanups.append(self.sni_mx.stop)
        self.mx = {}
        for key, (addr, tls, host) in MXS.items():
            self.mx[key] = PostfixMX(addr, self.ca, tls=tls, host=host)
        self.cleanups.append(self._stop_mxs)  # also removes the scratch dirs
        self.tlsa = {}  # owner (fqdn) -> [rdata]
        self.zones = self._zones()
        self.dns = DnsBed(self.zones, signed=True,
                          unsigned=["tlsainsecure.lab.", "tadominsecure.lab.",
                                    "eeinsecure.lab."],
                          bogus=[("tlsabogus.lab.", "_25._tcp.mx1.tlsabogus.lab.", "TLSA")])
        self.dns.start()
        self.cleanups.append(self.dns.stop)
        errors = {}

        def start(key, m):
            try:
                m.start()
            except Exception as e:
                errors[key] = str(e)
        # in parallel: `postfix start` takes ~3 s of CPU each
        threads = [threading.Thread(target=start, args=kv) for kv in self.mx.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for key, m in self.mx.items():
            if not m.started or key in errors:
                raise RuntimeError("Postfix MX %s (%s) did not start: %s\n%s"
                                   % (key, m.addr, errors.get(key, ""), m.log()[-2000:]))
        self.policies = {
            "mta-sts.stsenforce.lab": policy_text("enforce", ["mx1.stsenforce.lab"]),
            "mta-sts.ststesting.lab": policy_text("testing", ["mx1.ststesting.lab"]),
            "mta-sts.danests.lab": policy_text("enforce", ["mx1.danests.lab"]),
            "mta-sts.snists.lab": policy_text("enforce", ["mx.snists.lab"]),
        }
        self.nginx = NginxHTTPS(STS_ADDR, self.ca, {
            h: {"/.well-known/mta-sts.txt": ("text/plain", t)}
            for h, t in self.policies.items()})
        self.nginx.start()
        self.cleanups.append(self.nginx.stop)
        self.resolver = None
        self.resolver_error = None
        try:
            self.resolver = ValidatingResolver(self.dns)
            self.resolver.start()
            self.cleanups.append(self.resolver.stop)
        except Exception as e:  # posttls-finger cross-check only; strictmx tests go on
            self.resolver_error = str(e)
            self.resolver = None
        self.pf_conf = tempfile.mkdtemp(prefix="dane-ptf-")
        os.chmod(self.pf_conf, 0o755)
        self.cleanups.append(lambda: shutil.rmtree(self.pf_conf, ignore_errors=True))
        with open(os.path.join(self.pf_conf, "main.cf"), "w") as f:
            # posttls-finger reads main.cf (MAIL_CONFIG); it needs nothing else
            f.write("compatibility_level = 3.6\nsmtp_dns_support_level = dnssec\n"
                    "smtp_tls_dane_insecure_mx_policy = dane\ninet_protocols = ipv4\n"
                    "dnssec_probe =\n")  # no root here: the probe could only warn
        self.daemon = None
        self.msg = {}       # case -> (rcpt, subject, queue id)
        self._ptf_cache = {}
        self.ptf_sessions = {}  # MX key -> SMTP sessions posttls-finger had with it
        self.table = {}     # case -> (strictmx, posttls-finger)

    def _stop_mxs(self):
        """Stop every Postfix MX at once (each stop is bounded by PostfixMX.stop)."""
        threads = [threading.Thread(target=m.stop) for m in self.mx.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)

    def _zones(self):
        z = {}

        def leaf(key):
            return self.mx[key].cert

        def tl(owner, rdata):
            self.tlsa.setdefault(owner, []).append(rdata)
            return "%s TLSA %s" % (owner, rdata)

        def one(dom, key, *tlsa_rdatas, extra=()):
            addr = MXS[key][0]
            lines = ["@ MX 10 mx1", "mx1 A %s" % addr]
            lines += [tl("_25._tcp.mx1.%s." % dom, r) for r in tlsa_rdatas]
            return lines + list(extra)

        sts = lambda: ["mta-sts A %s" % STS_ADDR, '_mta-sts TXT "v=STSv1; id=1"']  # noqa
        z["daneee.lab."] = one("daneee.lab", "ee", tlsa_rdata(leaf("ee"), 3, 1, 1))
        z["daneexpired.lab."] = one("daneexpired.lab", "ee-expired",
                                    tlsa_rdata(leaf("ee-expired"), 3, 1, 1))
        z["daneself.lab."] = one("daneself.lab", "ee-self", tlsa_rdata(leaf("ee-self"), 3, 1, 1))
        z["danemis.lab."] = ["@ MX 10 mx1", "@ MX 20 mx2", "mx1 A %s" % MXS["mis1"][0],
                             "mx2 A %s" % MXS["mis2"][0],
                             tl("_25._tcp.mx1.danemis.lab.", tlsa_rdata(self.other_crt, 3, 1, 1)),
                             tl("_25._tcp.mx2.danemis.lab.", tlsa_rdata(leaf("mis2"), 3, 1, 1))]
        z["daneta.lab."] = one("daneta.lab", "ta", tlsa_rdata(self.ca.ca_cert, 2, 0, 1))
        z["danetawrong.lab."] = one("danetawrong.lab", "ta-wrongname",
                                    tlsa_rdata(self.ca.ca_cert, 2, 0, 1))
        z["tlsabogus.lab."] = one("tlsabogus.lab", "bogus", tlsa_rdata(leaf("bogus"), 3, 1, 1))
        z["tlsainsecure.lab."] = one("tlsainsecure.lab", "insecure",
                                     tlsa_rdata(self.other_crt, 3, 1, 1))
        z["usage01.lab."] = one("usage01.lab", "usage01", tlsa_rdata(self.ca.ca_cert, 0, 0, 1),
                                tlsa_rdata(leaf("usage01"), 1, 1, 1))
        z["usage01self.lab."] = one("usage01self.lab", "usage01-self",
                                    tlsa_rdata(leaf("usage01-self"), 0, 0, 1),
                                    tlsa_rdata(leaf("usage01-self"), 1, 1, 1))
        z["stsenforce.lab."] = ["@ MX 10 mx1", "@ MX 5 mx2", "mx1 A %s" % MXS["enf1"][0],
                                "mx2 A %s" % MXS["enf2"][0]] + sts()
        z["ststesting.lab."] = ["@ MX 10 mx1", "@ MX 5 mx2", "mx1 A %s" % MXS["tst1"][0],
                                "mx2 A %s" % MXS["tst2"][0]] + sts()
        z["danests.lab."] = one("danests.lab", "danests", tlsa_rdata(leaf("danests"), 3, 1, 1),
                                extra=sts())
        z["cname.lab."] = ["@ MX 10 mx", "mx CNAME real", "real A %s" % MXS["cname"][0],
                           tl("_25._tcp.real.cname.lab.", tlsa_rdata(leaf("cname"), 3, 1, 1))]
        z["danemisone.lab."] = ["@ MX 10 mx1.danemis.lab."]
        z["tlsabogustwo.lab."] = ["@ MX 10 mx1.tlsabogus.lab.", "@ MX 20 mx1.daneee.lab."]
        z["danetadom.lab."] = ["@ MX 10 mx1", "mx1 A %s" % MXS["ta-dom"][0],
                               tl("_25._tcp.mx1.danetadom.lab.",
                                  tlsa_rdata(self.ca.ca_cert, 2, 0, 1))]
        # case 48: other destinations on the same MX host (DANE-TA, and PKIX through an
        # insecure MX RRset); the certificate names neither of them
        z["danetadom2.lab."] = ["@ MX 10 mx1.danetadom.lab."]
        z["tadominsecure.lab."] = ["@ MX 10 mx1.danetadom.lab."]
        # ... and the reverse: PKIX (insecure MX RRset) to the DANE host mx1.daneee.lab
        z["eeinsecure.lab."] = ["@ MX 10 mx1.daneee.lab."]
        # case 46: SNI. DANE through a CNAME to an A-label name: the TLSA base domain;
        # MTA-STS through a CNAME: the MX host name as published, not the expansion
        z["snidane.lab."] = ["@ MX 10 mx", "mx CNAME xn--bcher-kva",
                             "xn--bcher-kva A %s" % SNI_ADDR,
                             tl("_25._tcp.xn--bcher-kva.snidane.lab.",
                                tlsa_rdata(self.sni_crt, 3, 1, 1))]
        z["snists.lab."] = ["@ MX 10 mx", "mx CNAME real", "real A %s" % SNI_ADDR] + sts()
        return z

    # -- strictmx --
    def start_daemon(self):
        d = Daemon(start=False)
        extra = ["", "[server]", "relay_networks = 127.0.0.0/8",
                 "", "[dns]", "stub = %s" % self.dns.stub,
                 "trust_anchor = %s" % self.dns.trust_anchor_file,
                 "", "[outbound]", "ca_file = %s" % self.ca.ca_file, "smtp_port = 25",
                 "connect_timeout = 5", "command_timeout = 10",
                 "", "[queue]", "retry_min = 1", "retry_max = 2", ""]
        with open(d.conf, "a") as f:
            f.write("\n".join(extra))
        d.start()
        self.daemon = d
        for case, c in CASES.items():
            rcpt = "user@" + c["domain"]
            subject = "dane-case-" + case
            mid = swaks_submit(d.port, rcpt, subject, "BODYMARKER " + case)
            self.msg[case] = (rcpt, subject, mid)

    def close(self):
        errors = []
        if self.daemon is not None:
            try:
                self.daemon.stop()
            except AssertionError as e:
                errors.append(str(e)[:3000])
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # keep stopping the rest
                errors.append("cleanup: %s" % e)
        return errors

    # -- posttls-finger --
    def posttls_finger(self, name, level, mx_key=None):
        """posttls-finger -c -l LEVEL "[NAME]:25" through the validating resolver:
        -l secure with -F <TestCA> (PKIX), -l dane WITHOUT any CA file, so that
        "Verified" can only come from a TLSA record. Returns (verdict, output), verdict
        in verified/fail/tlsa-error. mx_key: the PostfixMX it talks to; its finished
        SMTP sessions caused by posttls-finger are counted in self.ptf_sessions."""
        key = (name, level)
        if key in self._ptf_cache:
            return self._ptf_cache[key]
        if self.resolver is None:
            raise unittest.SkipTest("no validating resolver: %s" % self.resolver_error)
        env = dict(os.environ, MAIL_CONFIG=self.pf_conf)
        argv = [POSTTLS_FINGER, "-c", "-l", level]
        if level != "dane":
            argv += ["-F", self.ca.ca_file]
        argv += ["-o", "smtp_tls_loglevel=1", "[%s]:25" % name]
        mx = self.mx.get(mx_key)
        before = ehlo_sessions(mx) if mx else 0
        p = self.resolver.run_with_resolver(argv, timeout=60, env=env)
        out = p.stdout + p.stderr
        if p.returncode != 0 and re.search(r"^(unshare|mount|sh): ", out, re.M):
            # no private mount namespace here: the cross-check cannot run (not a verdict)
            raise unittest.SkipTest("cannot give posttls-finger a private resolv.conf: %s"
                                    % out.strip()[:300])
        v = ptf_verdict(out)
        if mx is not None and v != "tlsa-error":
            # its session ends with QUIT: wait (bounded) for smtpd's disconnect line
            smxtest.poll(lambda: ehlo_sessions(mx) > before, 10, 0.1)
            self.ptf_sessions[mx_key] = (self.ptf_sessions.get(mx_key, 0)
                                         + ehlo_sessions(mx) - before)
        self._ptf_cache[key] = (v, out)
        return v, out


def ehlo_sessions(mx):
    """Finished smtpd sessions of a PostfixMX in which the client said EHLO."""
    return len([s for s in mx.sessions() if "ehlo" in s[1]])


def ptf_detail(out):
    """The words of posttls-finger's output that matter, for the table."""
    words = []
    for rx in (r"TLSA lookup error", r"Matched DANE \w+ certificate",
               r"unsupported TLSA certificate usage",
               r"verification failed for \S+: (?:num=\d+:)?([^\n]*)",
               r"\b(Verified|Trusted|Untrusted|Anonymous) TLS connection established"):
        m = re.search(rx, out)
        if m:
            words.append(m.group(m.lastindex or 0))
    return ", ".join(dict.fromkeys(words)) or out.strip().splitlines()[-1:][0][:80]


def ptf_verdict(out):
    if re.search(r"TLSA lookup error", out):
        return "tlsa-error"
    if re.search(r"\bVerified TLS connection established", out):
        return "verified"
    return "fail"


def swaks_submit(port, rcpt, subject, body="hello", timeout=60):
    argv = ["swaks", "--tls", "--server", "127.0.0.1:%d" % port, "--from", SENDER,
            "--to", rcpt, "--header", "Subject: %s" % subject, "--body", body,
            "--timeout", "20"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    m = re.search(r"<~  250 2\.0\.0 Ok: queued as (\S+)", p.stdout)
    if p.returncode != 0 or not m:
        raise AssertionError("submission failed (rc %d):\n%s%s" % (p.returncode, p.stdout,
                                                                    p.stderr))
    return m.group(1)


def result_lines(daemon, rcpt):
    rx = re.compile(r"^.*event=result .*rcpt=<%s>.*$" % re.escape(rcpt), re.M)
    return rx.findall(daemon.log_text())


def delivery_lines(daemon, rcpt):
    rx = re.compile(r"^.*event=delivery .*rcpt=<%s>.*$" % re.escape(rcpt), re.M)
    return rx.findall(daemon.log_text())


def wait_result(daemon, rcpt, result=None, timeout=RESULT_BOUND):
    def find():
        for ln in result_lines(daemon, rcpt):
            if result is None or re.search(r"\bresult=%s\b" % result, ln):
                return ln
        return None
    return smxtest.poll(find, timeout, 0.2)


BED = None
SETUP_ERROR = None


def setUpModule():
    global BED
    smxtest.require_binaries()
    bed = Bed.__new__(Bed)
    try:
        bed.__init__()
        bed.start_daemon()
    except BaseException:
        if getattr(bed, "cleanups", None) is not None:
            Bed.close(bed)
        raise
    BED = bed


def tearDownModule():
    if BED is None:
        return
    if BED.table:
        print("\n\nposttls-finger cross-check (case: strictmx | posttls-finger):",
              file=sys.stderr)
        for case in CASES:
            if case in BED.table:
                s, p = BED.table[case]
                print("  %-13s %-34s | %s" % (case, s, p), file=sys.stderr)
    errors = BED.close()
    if errors:
        raise AssertionError("\n".join(errors))


class BedCase(unittest.TestCase):
    @property
    def bed(self):
        return BED


# --------------------------------------------------------------------------------------
# The bed itself, without strictmx
# --------------------------------------------------------------------------------------

class TestTrustAnchorCheck(BedCase):
    """Security case 49: a trust anchor that does not validate leaves every answer
    insecure, so DANE is silently off. At its first remote delivery strictmxd asks for
    each anchor's DNSKEY set and says in its log whether it validates."""

    def anchor_daemon(self, anchor_lines):
        d = Daemon(start=False)
        extra = ["", "[server]", "relay_networks = 127.0.0.0/8",
                 "", "[dns]", "stub = %s" % self.bed.dns.stub]
        if anchor_lines is not None:
            ta = os.path.join(d.tmp, "anchor.key")
            with open(ta, "w") as f:
                f.write("\n".join(anchor_lines) + "\n")
            extra.append("trust_anchor = %s" % ta)
        extra += ["", "[outbound]", "ca_file = %s" % self.bed.ca.ca_file, "smtp_port = 25",
                  "connect_timeout = 5", "command_timeout = 10", ""]
        with open(d.conf, "a") as f:
            f.write("\n".join(extra))
        d.start()
        self.addCleanup(d.stop)
        # a name the bed does not have: no MX of the bed is contacted
        swaks_submit(d.port, "user@no-such-domain.lab", "anchor check")
        return d

    def test_bed_anchor_validates(self):
        d = self.bed.daemon
        self.assertTrue(d.wait_log(r"event=dnssec_ready anchor=lab\.", 60),
                        d.log_text()[-3000:])
        self.assertNotIn("event=dnssec_unvalidated", d.log_text())

    def test_wrong_anchor_is_reported(self):
        # a DS that matches no key of lab.: the zone's keys do not validate
        d = self.anchor_daemon(["; a wrong key", "lab. IN DS 4711 13 2 " + "00" * 32])
        self.assertTrue(d.wait_log(r"event=dnssec_unvalidated anchor=lab\. status=\w+ "
                                   r"sec=bogus .*effect=\"DANE cannot be used", 60),
                        d.log_text()[-3000:])
        self.assertNotIn("event=dnssec_ready", d.log_text())

    def test_no_anchor_is_reported(self):
        d = self.anchor_daemon(None)
        self.assertTrue(d.wait_log(r"event=dnssec_unvalidated reason=\"no trust_anchor "
                                   r"configured\"", 60), d.log_text()[-3000:])


class TestFixtures(BedCase):
    def dig(self, name, rtype):
        r = subprocess.run(["dig", "+dnssec", "+norec", "+time=3", "+tries=1",
                            "@%s" % self.bed.dns.addr, "-p", str(self.bed.dns.port),
                            name, rtype], capture_output=True, text=True, timeout=30)
        return r.stdout

    def test_tlsa_digests_agree_with_openssl(self):
        for key in ("ee", "ee-expired", "ee-self"):
            crt = self.bed.mx[key].cert
            self.assertEqual(tlsa_data(crt, 1, 1), tlsa_digest_openssl(crt, 1, 1))
        self.assertEqual(tlsa_data(self.bed.ca.ca_cert, 0, 1),
                         tlsa_digest_openssl(self.bed.ca.ca_cert, 0, 1))
        # the negative DANE cases have PKIX-valid certificates: a refusal is DANE's doing
        for key in ("mis1", "bogus", "insecure", "usage01", "enf1", "enf2", "tst2"):
            ok, out = self.bed.ca.verify(self.bed.mx[key].cert, MXS[key][2])
            self.assertTrue(ok, "%s: %s" % (key, out))
        for key in ("ee-expired", "ee-self", "ta-wrongname", "usage01-self", "danests"):
            ok, out = self.bed.ca.verify(self.bed.mx[key].cert, MXS[key][2])
            self.assertFalse(ok, "%s: %s" % (key, out))
        # the served certificate is the one the record was computed from
        crt = self.bed.mx["ee"].cert
        p = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect",
                            "127.0.0.61:25", "-showcerts"], input="QUIT\n",
                           capture_output=True, text=True, timeout=30)
        first = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----",
                          p.stdout, re.S).group(0)
        with open(crt) as f:
            self.assertEqual(first.strip(), f.read().strip())
        # the DANE-TA MX sends the CA in its chain
        p = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect",
                            "127.0.0.66:25", "-showcerts"], input="QUIT\n",
                           capture_output=True, text=True, timeout=30)
        with open(self.bed.ca.ca_cert) as f:
            self.assertIn(f.read().strip(), p.stdout)

    def test_signed_zone_has_tlsa_and_rrsig(self):
        out = self.dig("_25._tcp.mx1.daneee.lab", "TLSA")
        self.assertIn("status: NOERROR", out)
        want = self.bed.tlsa["_25._tcp.mx1.daneee.lab."][0].split()[-1]
        self.assertIn(want.upper(), out.replace(" ", "").upper())
        self.assertRegex(out, r"RRSIG\s+TLSA\s+13 ")
        out = self.dig("daneee.lab", "DS")  # the parent (lab.) holds the DS
        self.assertRegex(out, r"daneee\.lab\.\s+\d+\s+IN\s+DS\s")
        out = self.dig("tlsainsecure.lab", "DS")  # delegated without DS: insecure
        self.assertIn("ANSWER: 0,", out)
        self.assertRegex(out, r"IN\s+NSEC3\s")  # ... provably (signed denial)
        out = self.dig("_25._tcp.mx1.tlsainsecure.lab", "TLSA")
        self.assertIn("TLSA", out)
        self.assertNotRegex(out, r"RRSIG\s+TLSA")

    def test_validating_resolver_sees_secure_bogus_insecure(self):
        if self.bed.resolver is None:
            self.skipTest(self.bed.resolver_error)
        out = self.bed.resolver.ask("_25._tcp.mx1.daneee.lab", "TLSA")
        self.assertRegex(out, r"flags:[^;]*\bad\b", out)
        out = self.bed.resolver.ask("_25._tcp.mx1.tlsabogus.lab", "TLSA")
        self.assertIn("status: SERVFAIL", out)
        out = self.bed.resolver.ask("mx1.tlsabogus.lab", "A")  # only the TLSA is bogus
        self.assertRegex(out, r"flags:[^;]*\bad\b", out)
        out = self.bed.resolver.ask("_25._tcp.mx1.tlsainsecure.lab", "TLSA")
        self.assertIn("status: NOERROR", out)
        self.assertNotRegex(out, r"flags:[^;]*\bad\b", out)
        out = self.bed.resolver.ask("mx.cname.lab", "A")
        self.assertRegex(out, r"CNAME\s+real\.cname\.lab\.")
        self.assertRegex(out, r"flags:[^;]*\bad\b", out)
        out = self.bed.resolver.ask("_mta-sts.stsenforce.lab", "TXT")
        self.assertIn('"v=STSv1; id=1"', out)

    def test_nginx_serves_policies(self):
        for host, text in self.bed.policies.items():
            rc, body, err = self.bed.nginx.curl(host, "/.well-known/mta-sts.txt")
            self.assertEqual(rc, 0, err)
            content, _, status = body.rpartition("\n")
            self.assertEqual(content, text)
            self.assertRegex(status, r"^200 text/plain")
        rc, body, err = self.bed.nginx.curl("mta-sts.stsenforce.lab", "/other")
        self.assertTrue(body.endswith("404 text/html"), body)

    def test_posttls_finger_runs(self):
        v, out = self.bed.posttls_finger("mx1.daneee.lab", "dane", "ee")
        self.assertEqual(v, "verified", out)
        # the same host without TLSA and without a CA file is not verified
        v2, out2 = self.bed.posttls_finger("mx1.stsenforce.lab", "dane", "enf1")
        self.assertEqual(v2, "fail", out2)
        self.assertRegex(out2, r"(Untrusted|Anonymous) TLS connection established", out2)


# --------------------------------------------------------------------------------------
# strictmx
# --------------------------------------------------------------------------------------

class TestDelivery(BedCase):
    def outcome(self, case):
        """Wait for the case's first result line: (result, line)."""
        rcpt = self.bed.msg[case][0]
        line = wait_result(self.bed.daemon, rcpt, None, RESULT_BOUND)
        self.assertIsNotNone(line, "no result line for %s; log:\n%s"
                             % (rcpt, self.bed.daemon.log_text()[-4000:]))
        return re.search(r"\bresult=(\w+)", line).group(1), line

    def check(self, case):
        c = CASES[case]
        d = self.bed.daemon
        rcpt, subject, mid = self.bed.msg[case]
        if c["expect"] == "delivered":
            line = wait_result(d, rcpt, "delivered", DELIVERY_BOUND)
            self.assertIsNotNone(line, "no result=delivered for %s; log:\n%s"
                                 % (rcpt, log_for(d, mid, rcpt)))
            mx = self.bed.mx[c["via"]]
            self.assertRegex(line, r"\bmx=%s\b" % re.escape(c.get("via_name",
                                                                 MXS[c["via"]][2])))
            msgs = mx.wait_messages(1, 30)
            mine = [m for m in msgs if ("Subject: %s" % subject).encode() in m]
            self.assertEqual(len(mine), 1, "MX %s mailbox: %r" % (c["via"], msgs))
            self.assertIn(("BODYMARKER " + case).encode(), mine[0])
            dl = [ln for ln in delivery_lines(d, rcpt) if "result=delivered" in ln]
            self.assertTrue(dl, log_for(d, mid, rcpt))
            self.assertRegex(dl[0], r"\bverified=%s\b" % re.escape(c["verified"]),
                             log_for(d, mid, rcpt))
        else:
            line = wait_result(d, rcpt, None, RESULT_BOUND)
            self.assertIsNotNone(line, "no result line for %s; log:\n%s"
                                 % (rcpt, log_for(d, mid, rcpt)))
            self.assertRegex(line, r"\bresult=%s\b" % c["expect"])
            if "status" in c:
                self.assertRegex(line, r"\bstatus=%s\b" % re.escape(c["status"]))
            # a retry (retry_min = 1) gets the chance to go wrong too
            smxtest.poll(lambda: len(result_lines(d, rcpt)) >= 2, 10, 0.2)
            for ln in result_lines(d, rcpt) + delivery_lines(d, rcpt):
                self.assertNotRegex(ln, r"\bresult=delivered\b")
        for key in c.get("untouched", []):
            m = self.bed.mx[key]
            self.assertFalse([x for x in m.messages() if subject.encode() in x],
                             "%s got the message" % key)
            self.assertEqual(m.mail_commands(), 0, m.log()[-3000:])
            self.assertEqual(m.accepted_from(), [], m.log()[-3000:])
        for key in c.get("no_connect", []):
            # sessions posttls-finger had (TestCrossCheck) are not strictmx's
            m = self.bed.mx[key]
            self.assertEqual(ehlo_sessions(m) - self.bed.ptf_sessions.get(key, 0), 0,
                             "strictmx talked to %s: %s (posttls-finger: %d)"
                             % (key, m.sessions(), self.bed.ptf_sessions.get(key, 0)))
        return line

    def test_ee_match(self):
        self.check("ee")

    def test_ee_match_expired_certificate(self):
        self.check("ee-expired")

    def test_ee_match_self_signed(self):
        self.check("ee-self")

    def test_ee_mismatch_next_mx(self):
        self.check("ee-mismatch")
        d = self.bed.daemon
        self.assertRegex(d.log_text(),
                         r"TLSA records do not match the certificate of mx1\.danemis\.lab")
        mis1 = self.bed.mx["mis1"]
        self.assertTrue(mis1.wait_sessions_with("starttls", 10),
                        "pref 10 MX never tried: %s" % mis1.sessions())

    def test_ta_right_name(self):
        self.check("ta")

    def test_ee_mismatch_single_mx_defers_4_7_5(self):
        # case 34: the only MX does not match its TLSA record: 451 4.7.5, and the
        # certificate, PKIX-valid for mx1.danemis.lab, is never accepted by PKIX
        line = self.check("ee-mismatch-single")
        self.assertRegex(line, r"TLSA records do not match the certificate of "
                               r"mx1\.danemis\.lab")
        rcpt = self.bed.msg["ee-mismatch-single"][0]
        self.assertEqual(delivery_lines(self.bed.daemon, rcpt), [])  # no RCPT was sent
        for ln in result_lines(self.bed.daemon, rcpt):  # the first attempt and the retry
            self.assertRegex(ln, r"\bresult=deferred status=4\.7\.5\b")

    def test_tlsa_bogus_one_mx_of_two_skipped(self):
        # case 39: the TLSA lookup of the first MX fails: that host is skipped (never
        # contacted), the second, DANE-verified, takes the message
        self.check("bogus-one-of-two")

    def test_ta_recipient_domain_name(self):
        # case 36: under DANE-TA, a certificate for the recipient domain (not the MX
        # name) is accepted (RFC 7672 §3.2.2; Postfix: "nexthop, hostname")
        self.check("ta-recipient-domain")

    def test_sni_dane_and_mta_sts(self):
        # case 46: a test MX records the SNI of each handshake. Under DANE it is the
        # TLSA base domain (the CNAME expansion, an A-label); under MTA-STS the MX
        # host name as published (RFC 8461 §4.2 / Postfix), not the expansion
        d, mx = self.bed.daemon, self.bed.sni_mx
        for rcpt, sni, verified in (("user@snidane.lab", "xn--bcher-kva.snidane.lab", "dane"),
                                    ("user@snists.lab", "mx.snists.lab", "mta-sts")):
            with mx.lock:
                seen = len(mx.sni)
            mid = swaks_submit(d.port, rcpt, "sni-" + rcpt)
            line = wait_result(d, rcpt, "delivered", DELIVERY_BOUND)
            self.assertIsNotNone(line, log_for(d, mid, rcpt))
            dl = [ln for ln in delivery_lines(d, rcpt) if "result=delivered" in ln]
            self.assertTrue(dl, log_for(d, mid, rcpt))
            self.assertRegex(dl[0], r"\bverified=%s\b" % verified)
            with mx.lock:
                self.assertEqual(mx.sni[seen:], [sni], mx.sni)
                self.assertTrue([m for m in mx.messages if ("sni-" + rcpt).encode() in m])

    def test_reuse_only_when_the_new_destination_verifies(self):
        # case 48 (Exim 5801): right after a DANE-TA delivery to danetadom.lab, whose
        # certificate names only danetadom.lab, mail for two other domains with the
        # same MX host: DANE-TA for danetadom2.lab, PKIX (insecure MX) for
        # tadominsecure.lab. The idle verified connection must not carry either:
        # both defer, the MX never sees them.
        d, mx = self.bed.daemon, self.bed.mx["ta-dom"]
        self.check("ta-recipient-domain")
        mid = swaks_submit(d.port, "again@danetadom.lab", "dane-reuse-first")
        line = wait_result(d, "again@danetadom.lab", "delivered", DELIVERY_BOUND)
        self.assertIsNotNone(line, log_for(d, mid, "again@danetadom.lab"))
        # now, within the pool's idle time (5 s)
        others = {"user@danetadom2.lab": "dane-reuse-other-ta",
                  "user@tadominsecure.lab": "dane-reuse-other-pkix"}
        for rcpt, subject in others.items():
            swaks_submit(d.port, rcpt, subject)
        for rcpt, subject in others.items():
            line = wait_result(d, rcpt, None, RESULT_BOUND)
            self.assertIsNotNone(line, d.log_text()[-4000:])
            self.assertRegex(line, r"\bresult=deferred\b")
            self.assertRegex(line, r"certificate name does not match mx1\.danetadom\.lab")
            for ln in result_lines(d, rcpt) + delivery_lines(d, rcpt):
                self.assertNotRegex(ln, r"\bresult=delivered\b")
            self.assertFalse([x for x in mx.messages() if subject.encode() in x],
                             "%s was delivered over a reused connection" % rcpt)

    def test_reuse_pkix_then_dane(self):
        # case 48, the reverse: a PKIX-verified connection to mx1.daneee.lab (the MX
        # RRset of eeinsecure.lab is insecure) is not reused for daneee.lab, where
        # DANE must verify: the second delivery says verified=dane, on its own
        d = self.bed.daemon
        self.check("ee")
        mid = swaks_submit(d.port, "user@eeinsecure.lab", "pkix-then-dane-first")
        line = wait_result(d, "user@eeinsecure.lab", "delivered", DELIVERY_BOUND)
        self.assertIsNotNone(line, log_for(d, mid, "user@eeinsecure.lab"))
        dl = [ln for ln in delivery_lines(d, "user@eeinsecure.lab") if "delivered" in ln]
        self.assertRegex(dl[0], r"\bmx=mx1\.daneee\.lab .*\bverified=pkix\b")
        mid2 = swaks_submit(d.port, "again@daneee.lab", "pkix-then-dane-second")
        line = wait_result(d, "again@daneee.lab", "delivered", DELIVERY_BOUND)
        self.assertIsNotNone(line, log_for(d, mid2, "again@daneee.lab"))
        dl = [ln for ln in delivery_lines(d, "again@daneee.lab") if "delivered" in ln]
        self.assertRegex(dl[0], r"\bverified=dane\b")
        # it may reuse a DANE-verified connection (check("ee") leaves one in the pool
        # for a few seconds), never the PKIX one
        self.assertNotRegex(d.log_text(),
                            r"event=conn_reused id=%s .*verified=pkix" % re.escape(mid2))

    def test_ta_wrong_name(self):
        line = self.check("ta-wrongname")
        self.assertTrue(self.bed.mx["ta-wrongname"].wait_sessions_with("starttls", 10))
        self.assertNotRegex(line, r"verified=pkix")

    def test_tlsa_bogus_deferred_no_pkix(self):
        line = self.check("bogus")
        self.assertRegex(line, r"(?i)TLSA")
        mx = self.bed.mx["bogus"]
        self.assertNotIn("from=<%s>" % SENDER, mx.log())

    def test_tlsa_insecure_ignored(self):
        self.check("insecure")

    def test_usage_0_1_only_pkix_valid(self):
        self.check("usage01")

    def test_usage_0_1_only_pkix_selfsigned(self):
        line = self.check("usage01-self")
        self.assertRegex(line, r"(?i)self.signed|certificate")
        self.assertTrue(self.bed.mx["usage01-self"].wait_sessions_with("starttls", 10))

    def test_mta_sts_enforce(self):
        self.check("sts-enforce")
        d = self.bed.daemon
        # issue 4: "the rest are skipped with a logged reason" (also when the next MX
        # then takes the message)
        self.assertTrue(smxtest.poll(lambda: re.search(
            r"mx2\.stsenforce\.lab[^\n]*(skip|not in (the )?MTA-STS)|"
            r"(skip|not in (the )?MTA-STS)[^\n]*mx2\.stsenforce\.lab", d.log_text()), 5),
            "no log line says mx2 was skipped:\n"
            + log_for(d, self.bed.msg["sts-enforce"][2], "stsenforce.lab"))
        self.assertTrue(any(re.search(r"mta-sts\.stsenforce\.lab\S* /\.well-known/mta-sts\.txt"
                                      r" 200", l) for l in self.bed.nginx.access_log()),
                        self.bed.nginx.access_log())

    def test_mta_sts_testing(self):
        self.check("sts-testing")

    def test_dane_and_mta_sts_dane_decides(self):
        self.check("dane+sts")

    def test_cname_mx_host(self):
        self.check("cname")

    # -- the plan --
    def policy(self, domain):
        p = subprocess.run([smxtest.STRICTMX, "-c", self.bed.daemon.conf, "policy", domain,
                            "--json"], capture_output=True, text=True, timeout=90)
        if p.returncode != 0 and re.search(r"(?i)usage|unknown command", p.stdout + p.stderr):
            self.fail("`strictmx policy` is not implemented yet: %s" % (p.stdout + p.stderr))
        try:
            return json.loads(p.stdout)
        except ValueError:
            self.fail("policy %s: rc %d, not JSON:\n%s%s" % (domain, p.returncode, p.stdout,
                                                              p.stderr))

    def test_policy_plans(self):
        for case, c in CASES.items():
            with self.subTest(case=case):
                plan = self.policy(c["domain"])
                got = {m["host"].rstrip(".").lower(): m for m in plan.get("mx", [])}
                for host, method in c["plan"].items():
                    self.assertIn(host, got, plan)
                    self.assertEqual(got[host]["method"], method, json.dumps(plan, indent=1))
                    self.assertTrue(got[host].get("why"), plan)
                if "sts_mode" in c:
                    sts = plan.get("mta_sts", {})
                    self.assertTrue(sts.get("valid"), plan)
                    self.assertEqual(sts.get("mode"), c["sts_mode"], plan)
                for host, base in c.get("tlsa_base", {}).items():
                    self.assertEqual(got[host]["tlsa_base"].rstrip("."), base, plan)


def log_for(d, mid, rcpt):
    lines = [ln for ln in d.log_text().splitlines() if mid in ln or rcpt in ln]
    return "\n".join(lines[-40:]) or d.log_text()[-4000:]


# --------------------------------------------------------------------------------------
# posttls-finger against the same bed
# --------------------------------------------------------------------------------------

class TestCrossCheck(BedCase):
    """For each case: posttls-finger's verdict per MX host agrees with strictmx's decision
    for that host (delivered there, or not)."""

    def strictmx_side(self, case):
        c = CASES[case]
        d = self.bed.daemon
        rcpt, _subject, _mid = self.bed.msg[case]
        line = wait_result(d, rcpt, "delivered" if c["expect"] == "delivered" else None,
                           DELIVERY_BOUND if c["expect"] == "delivered" else RESULT_BOUND)
        if line is None:
            line = wait_result(d, rcpt, None, 1) or ""
        res = re.search(r"\bresult=(\w+)", line)
        res = res.group(1) if res else "none"
        dl = [ln for ln in delivery_lines(d, rcpt) if "result=delivered" in ln]
        ver = re.search(r"\bverified=(\S+)", dl[0]).group(1) if dl else "-"
        mxm = re.search(r"\bmx=(\S+)", dl[0]).group(1) if dl else "-"
        return res, ver, mxm

    def cross(self, case):
        c = CASES[case]
        res, ver, mxm = self.strictmx_side(case)
        if res == "delivered":
            s_text = "delivered via %s (verified=%s)" % (mxm.split(".")[0], ver)
        else:
            s_text = res
        parts, problems = [], []
        for key, name, level, expected, compare in c["ptf"]:
            v, out = self.bed.posttls_finger(name, level, key)
            parts.append("[%s] -l %s: %s (%s)%s" % (name.split(".")[0], level, v,
                                                    ptf_detail(out),
                                                    "" if compare else " [info]"))
            if v == "verified" and level == "dane" and "Matched DANE" not in out:
                problems.append("posttls-finger -l dane [%s]:25 verified without a DANE "
                                "match:\n%s" % (name, out[-2500:]))
            if v != expected:
                problems.append("posttls-finger -l %s [%s]:25 says %s, expected %s:\n%s"
                                % (level, name, v, expected, out[-2500:]))
            if not compare:
                continue
            # agreement: posttls-finger authenticates this host <=> strictmx delivered
            # there (for the MX strictmx must use) / did not deliver there
            here = res == "delivered" and mxm.rstrip(".") == name
            if PTF_MEANS[v] == "deliver" and not here:
                problems.append("[%s]: posttls-finger -l %s authenticates it, strictmx: %s"
                                % (name, level, s_text))
            if PTF_MEANS[v] == "refuse" and here:
                problems.append("[%s]: posttls-finger -l %s refuses it, strictmx delivered "
                                "there" % (name, level))
        self.bed.table[case] = (s_text, "; ".join(parts))
        self.assertEqual(problems, [], "case %s" % case)
        self.assertEqual(res, c["expect"], "strictmx side of case %s" % case)
        if res == "delivered":
            self.assertEqual(ver, c["verified"])


def _make_cross(case):
    def t(self):
        self.cross(case)
    t.__name__ = "test_" + re.sub(r"\W", "_", case)
    return t


for _case in CASES:
    setattr(TestCrossCheck, "test_" + re.sub(r"\W", "_", _case), _make_cross(_case))


if __name__ == "__main__":
    unittest.main(verbosity=2)
