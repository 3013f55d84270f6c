"""Self-checks of the outbound test bed (mxbed.py, mitm.py) without strictmx:
each PostfixMX TLS variant is probed with `openssl s_client -starttls smtp` and swaks,
and the STARTTLS proxy with swaks through it. If one of these fails, the outbound
tests cannot be trusted.

Addresses: Postfix MX peers on 127.0.0.21..22:25, proxy on 127.0.0.31:25.
"""

import os
import re
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from mxbed import TestCA, PostfixMX  # noqa: E402
from mitm import StartTLSStripProxy, strip_starttls  # noqa: E402

MX_ADDR = "127.0.0.21"
MX_HOST = "mx1.fixture.example.lab"
PROXY_ADDR = "127.0.0.31"


def s_client(addr, ca, name, *extra, timeout=30):
    """openssl s_client -starttls smtp with PKIX verification of `name`: (rc, output)."""
    argv = ["openssl", "s_client", "-starttls", "smtp", "-connect", "%s:25" % addr,
            "-CAfile", ca.ca_file, "-verify_hostname", name, "-verify_return_error",
            "-brief"] + list(extra)
    r = subprocess.run(argv, input="QUIT\n", capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def swaks(addr, *args, subject="fixture", body="hello", timeout=60):
    argv = ["swaks", "--server", "%s:25" % addr, "--from", "a@example.org",
            "--to", "user@fixture.example.lab", "--header", "Subject: %s" % subject,
            "--body", body, "--timeout", "15"] + list(args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


class TestCAChecks(unittest.TestCase):
    def test_leaf_kinds(self):
        with TestCA() as ca:
            crt, _ = ca.leaf(MX_HOST, [MX_HOST])
            ok, out = ca.verify(crt, MX_HOST)
            self.assertTrue(ok, out)
            ok, out = ca.verify(crt, "other.lab")
            self.assertFalse(ok, out)
            crt, _ = ca.leaf(MX_HOST, expired=True)
            ok, out = ca.verify(crt)
            self.assertFalse(ok)
            self.assertIn("expired", out)
            crt, _ = ca.leaf(MX_HOST, self_signed=True)
            ok, out = ca.verify(crt)
            self.assertFalse(ok)
            self.assertIn("self-signed", out)
            text = subprocess.run(["openssl", "x509", "-in", crt, "-noout", "-text"],
                                  capture_output=True, text=True, timeout=30).stdout
            self.assertIn("DNS:" + MX_HOST, text)
            self.assertIn("prime256v1", text)


class TestPostfixVariants(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ca = TestCA()

    @classmethod
    def tearDownClass(cls):
        cls.ca.close()

    def mx(self, tls):
        mx = PostfixMX(MX_ADDR, self.ca, tls=tls, host=MX_HOST)
        self.addCleanup(mx.stop)
        mx.start()
        return mx

    def test_valid_verifies_and_stores(self):
        mx = self.mx("valid")
        rc, out = s_client(MX_ADDR, self.ca, MX_HOST)
        self.assertEqual(rc, 0, out)
        self.assertIn("Verification: OK", out)
        p = swaks(MX_ADDR, "--tls", subject="fixture-valid", body="BODY-valid")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        msgs = mx.wait_messages(1, timeout=30)
        self.assertEqual(len(msgs), 1, mx.log())
        self.assertIn(b"Subject: fixture-valid", msgs[0])
        self.assertIn(b"BODY-valid", msgs[0])
        self.assertEqual(mx.subjects(), ["fixture-valid"])
        self.assertTrue(mx.tls_sessions(), mx.log())
        self.assertTrue(mx.wait_sessions_with("mail", 10), mx.log())
        self.assertEqual(mx.mail_commands(), 1, mx.log())
        self.assertEqual(mx.accepted_from(), ["a@example.org"])

    def _verify_fails(self, tls, word):
        mx = self.mx(tls)
        rc, out = s_client(MX_ADDR, self.ca, MX_HOST)
        self.assertNotEqual(rc, 0, out)
        self.assertIn(word, out)
        self.assertEqual(mx.messages(), [])
        self.assertEqual(mx.mail_commands(), 0)

    def test_selfsigned(self):
        self._verify_fails("selfsigned", "self-signed certificate")

    def test_expired(self):
        self._verify_fails("expired", "certificate has expired")

    def test_wrongname(self):
        self._verify_fails("wrongname", "hostname mismatch")

    def test_none_offers_no_starttls(self):
        mx = self.mx("none")
        p = swaks(MX_ADDR, "--quit-after", "EHLO")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("250", p.stdout)
        self.assertNotIn("STARTTLS", p.stdout)
        p = swaks(MX_ADDR, "--tls")
        self.assertNotEqual(p.returncode, 0, p.stdout)
        self.assertIn("STARTTLS", p.stdout + p.stderr)  # swaks: "Host did not advertise STARTTLS"
        self.assertEqual(mx.messages(), [])

    def test_tls10_only(self):
        self.mx("tls10")
        rc, out = s_client(MX_ADDR, self.ca, MX_HOST, "-tls1", "-cipher", "DEFAULT:@SECLEVEL=0")
        self.assertEqual(rc, 0, out)
        self.assertIn("Protocol version: TLSv1\n", out)
        for proto in ("-tls1_2", "-tls1_3"):
            rc, out = s_client(MX_ADDR, self.ca, MX_HOST, proto)
            self.assertNotEqual(rc, 0, out)


class TestProxy(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ca = TestCA()
        cls.mx = PostfixMX(MX_ADDR, cls.ca, tls="valid", host=MX_HOST)
        cls.mx.start()

    @classmethod
    def tearDownClass(cls):
        cls.mx.stop()
        cls.ca.close()

    def proxy(self, mode):
        px = StartTLSStripProxy((PROXY_ADDR, 25), (MX_ADDR, 25), mode=mode)
        self.addCleanup(px.stop)
        return px

    def test_strip_function(self):
        self.assertEqual(strip_starttls([b"250-mx\r\n", b"250-SIZE 1\r\n", b"250 STARTTLS\r\n"]),
                         b"250-mx\r\n250 SIZE 1\r\n")
        self.assertEqual(strip_starttls([b"250-mx\r\n", b"250-STARTTLS\r\n", b"250 DSN\r\n"]),
                         b"250-mx\r\n250 DSN\r\n")
        self.assertEqual(strip_starttls([b"250-mx\r\n", b"250 starttls\r\n"]), b"250 mx\r\n")

    def test_passthrough_delivers(self):
        px = self.proxy("passthrough")
        n = len(self.mx.messages())
        p = swaks(PROXY_ADDR, "--tls", subject="via-passthrough", body="MARKER-PT")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(len(self.mx.wait_messages(n + 1, 30)), n + 1)
        self.assertIn("via-passthrough", self.mx.subjects())
        self.assertEqual(px.connections, 1)
        self.assertTrue(px.client_sent(b"STARTTLS"))
        self.assertFalse(px.client_sent(b"MARKER-PT"))  # encrypted

    def test_strip_hides_starttls(self):
        px = self.proxy("strip")
        p = swaks(PROXY_ADDR, "--quit-after", "EHLO")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertNotIn("STARTTLS", p.stdout)
        self.assertRegex(p.stdout, r"<-  250 CHUNKING")
        p = swaks(PROXY_ADDR, "--tls", body="MARKER-STRIP")
        self.assertNotEqual(p.returncode, 0, p.stdout)
        self.assertFalse(px.client_sent(b"MAIL FROM"))
        # a client that ignores the stripped capability: plaintext MAIL crosses the proxy
        # and is recorded (shows the recorder works)
        p = swaks(PROXY_ADDR, body="MARKER-PLAIN", subject="plain-through-strip")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertTrue(px.client_sent(b"MAIL FROM"))
        self.assertTrue(px.client_sent(b"MARKER-PLAIN"))

    def test_454(self):
        px = self.proxy("454")
        p = swaks(PROXY_ADDR, "--tls")
        self.assertNotEqual(p.returncode, 0, p.stdout)
        self.assertIn("454 4.7.0 TLS not available", p.stdout)
        self.assertFalse(px.client_sent(b"MAIL FROM"))

    def test_502(self):
        px = self.proxy("502")
        p = swaks(PROXY_ADDR, "--tls")
        self.assertNotEqual(p.returncode, 0, p.stdout)
        self.assertIn("502 5.5.1", p.stdout)
        self.assertFalse(px.client_sent(b"MAIL FROM"))

    def test_inject_one_segment(self):
        px = self.proxy("inject")
        # swaks itself is fooled (it reads "250-evil" inside TLS): proof the injection
        # reaches the client in the same segment as the 220
        p = swaks(PROXY_ADDR, "--tls", subject="via-inject")
        self.assertIn("<-  220 Ready", p.stdout)
        self.assertIn("250-evil", p.stdout)
        self.assertTrue(px.to_client_data().find(b"220 Ready\r\n250-evil\r\n") >= 0)

    def test_stops_by_itself(self):
        px = StartTLSStripProxy((PROXY_ADDR, 25), (MX_ADDR, 25), mode="strip",
                                idle_timeout=2)
        self.addCleanup(px.stop)
        import socket
        s = socket.create_connection((PROXY_ADDR, 25), timeout=5)
        self.addCleanup(s.close)
        s.settimeout(10)
        self.assertTrue(s.recv(100).startswith(b"220"))
        t0 = time.monotonic()
        self.assertEqual(s.recv(100), b"")  # idle: the proxy closes the connection
        self.assertLess(time.monotonic() - t0, 8)


if __name__ == "__main__":
    unittest.main(verbosity=2)
