"""Real TLS client: openssl s_client -starttls smtp.

Which protocols and ciphers strictmxd accepts, and which certificate it shows.
Each refusal is paired with a control: the same client command succeeds against a
permissive fake server, so the refusal is the daemon's doing, not the client's.
"""

import os
import re
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smxtest  # noqa: E402
from smxtest import Daemon  # noqa: E402

S_CLIENT_TIMEOUT = 30

TLS11 = ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]
TLS12_CBC_RSA = ["-tls1_2", "-cipher", "AES256-SHA:AES128-SHA"]
TLS12_CBC_ECDHE = ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA:"
                                         "ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA256"]
TLS12_GCM = ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"]
TLS12_CHACHA = ["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"]
TLS13 = ["-tls1_3"]


def s_client(port, args, extra=()):
    """Handshake, then QUIT inside TLS; returns (rc, combined output)."""
    argv = ["openssl", "s_client", "-starttls", "smtp", "-connect", "127.0.0.1:%d" % port,
            "-crlf", "-ign_eof", "-servername", "mx.test.example"] + list(args) + list(extra)
    p = smxtest.run(argv, timeout=S_CLIENT_TIMEOUT, input="QUIT\n")
    return p.returncode, p.stdout + p.stderr


def negotiated(out):
    """('TLSv1.3', 'TLS_AES_256_GCM_SHA384') or None when the handshake failed."""
    # "New, X, Cipher is Y": X is the cipher's own version, not the session's; the
    # negotiated protocol is the SSL-Session "Protocol  :" line (also printed on failure).
    m = re.search(r"^New, \S+, Cipher is (\S+)", out, re.M)
    p = re.search(r"^\s*Protocol\s*: (\S+)", out, re.M)
    if not m or m.group(1) == "(NONE)" or not p:
        return None
    return p.group(1), m.group(1)


class Control(unittest.TestCase):
    """The client side can do the old things on this machine (else the refusals below
    would prove nothing)."""

    @classmethod
    def setUpClass(cls):
        cls.fake = FakeHolder.get()

    def test_client_can_do_tls11(self):
        rc, out = s_client(self.fake.port, TLS11)
        self.assertEqual(negotiated(out)[0] if negotiated(out) else None, "TLSv1.1", out[-1500:])

    def test_client_can_do_cbc_rsa(self):
        rc, out = s_client(self.fake.port, TLS12_CBC_RSA)
        n = negotiated(out)
        self.assertTrue(n and n[1] in ("AES256-SHA", "AES128-SHA"), out[-1500:])

    def test_client_can_do_cbc_ecdhe(self):
        rc, out = s_client(self.fake.port, TLS12_CBC_ECDHE)
        n = negotiated(out)
        self.assertTrue(n and n[0] == "TLSv1.2", out[-1500:])


class FakeHolder:
    fake = None

    @classmethod
    def get(cls):
        if cls.fake is None:
            cls.fake = smxtest.FakeStarttlsServer()
        return cls.fake


def tearDownModule():
    if FakeHolder.fake:
        FakeHolder.fake.stop()


class Protocols(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon()

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def refused(self, args):
        rc, out = s_client(self.d.port, args)
        self.assertIsNone(negotiated(out), "handshake accepted with %s:\n%s" % (args, out[-2000:]))
        self.assertNotEqual(rc, 0, out[-1500:])
        self.assertNotIn("221 2.0.0", out)
        return out

    def accepted(self, args, proto, cipher=None):
        rc, out = s_client(self.d.port, args)
        n = negotiated(out)
        self.assertIsNotNone(n, "handshake refused with %s:\n%s" % (args, out[-2000:]))
        self.assertEqual(n[0], proto, out[-1500:])
        if cipher:
            self.assertEqual(n[1], cipher)
        self.assertRegex(out, r"Protocol\s*: %s" % re.escape(proto))
        # the SMTP session works inside TLS: our QUIT got the 221
        self.assertRegex(out, r"(?m)^221 ")
        return out

    def test_tls11_refused(self):
        self.refused(TLS11)

    def test_tls10_refused(self):
        self.refused(["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"])

    def test_tls12_cbc_rsa_refused(self):
        self.refused(TLS12_CBC_RSA)

    def test_tls12_cbc_ecdhe_refused(self):
        self.refused(TLS12_CBC_ECDHE)

    def test_tls12_gcm_accepted(self):
        self.accepted(TLS12_GCM, "TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")

    def test_tls12_chacha_accepted(self):
        self.accepted(TLS12_CHACHA, "TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305")

    def test_tls13_accepted(self):
        out = self.accepted(TLS13, "TLSv1.3")
        self.assertIn("New, TLSv1.3, Cipher is TLS_", out)

    def test_certificate_ecdsa_p256(self):
        out = self.accepted(TLS13 + ["-showcerts"], "TLSv1.3")
        self.assertIn("Server public key is 256 bit", out)
        pems = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
        self.assertTrue(pems, "no certificate in s_client output")
        with tempfile.NamedTemporaryFile("w", suffix=".pem") as f:
            f.write(pems[0] + "\n")
            f.flush()
            text = smxtest.run(["openssl", "x509", "-in", f.name, "-noout", "-text"], timeout=30).stdout
            served_fp = smxtest.run(["openssl", "x509", "-in", f.name, "-noout", "-fingerprint",
                                     "-sha256"], timeout=30).stdout
        self.assertIn("id-ecPublicKey", text)
        self.assertRegex(text, r"ASN1 OID: prime256v1|NIST CURVE: P-256")
        self.assertIn("CN = mx.test.example", text)
        # it is the one generated into data_dir/tls
        crt = os.path.join(self.d.data_dir, "tls", "selfsigned.crt")
        file_fp = smxtest.run(["openssl", "x509", "-in", crt, "-noout", "-fingerprint", "-sha256"],
                              timeout=30).stdout
        self.assertTrue(served_fp.strip() and served_fp == file_fp, (served_fp, file_fp))

    def test_no_ssl3_compression_renegotiation_insecure(self):
        out = self.accepted(TLS12_GCM, "TLSv1.2")
        self.assertIn("Compression: NONE", out)
        self.assertNotIn("Secure Renegotiation IS NOT supported", out)


if __name__ == "__main__":
    unittest.main()
