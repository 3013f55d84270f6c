"""Real client: swaks, plaintext (refused) and STARTTLS (delivered)."""

import hashlib
import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smxtest  # noqa: E402
from smxtest import Daemon, TLS_FIRST, INFO_URL, RECEIVED_TLS_RE  # noqa: E402

SWAKS_TIMEOUT = 60


def swaks(port, *args, to="u@example.org", header=None):
    argv = ["swaks", "--server", "127.0.0.1", "--port", str(port), "--to", to,
            "--from", "sender@client.example", "--helo", "client.test.example",
            "--timeout", "20"]
    if header:
        argv += ["--header", header]
    argv += list(args)
    return smxtest.run(argv, timeout=SWAKS_TIMEOUT)


class Swaks(unittest.TestCase):
    def setUp(self):
        self.d = Daemon()
        self.addCleanup(self.d.stop)

    def test_plaintext_refused(self):
        p = swaks(self.d.port, header="Subject: swaks plaintext")
        out = p.stdout + p.stderr
        self.assertIn("<** " + TLS_FIRST, out)
        self.assertNotEqual(p.returncode, 0)
        self.assertNotIn("queued as", out)
        self.assertEqual(self.d.all_mail_files(), [])

    def test_plaintext_quit_after_mail(self):
        p = swaks(self.d.port, "--quit-after", "MAIL")
        self.assertIn(TLS_FIRST, p.stdout + p.stderr)
        self.assertEqual(self.d.all_mail_files(), [])

    def _check_delivered(self, subject):
        files = self.d.wait_mail("example.org", "u", 1, timeout=20)
        self.assertEqual(len(files), 1, "not delivered; log:\n%s" % self.d.log_text()[-2000:])
        raw = smxtest.read_file(files[0])
        self.assertTrue(raw.startswith(b"Received:"), raw[:200])
        headers, body = smxtest.split_message(raw)
        self.assertIn(b"with ESMTPS", headers[0])
        self.assertRegex(headers[0], RECEIVED_TLS_RE)
        self.assertIn(b"Subject: " + subject.encode(), headers)
        self.assertEqual(self.d.mail_files("example.org", "u", "tmp"), [])
        st = os.stat(files[0])
        self.assertEqual(st.st_uid, smxtest.uid_of("nobody"),
                         "delivered file owned by uid %d, not nobody" % st.st_uid)
        return headers, body

    def test_tls_delivered(self):
        p = swaks(self.d.port, "--tls", header="Subject: swaks tls",
                  to="u@example.org")
        out = p.stdout + p.stderr
        self.assertEqual(p.returncode, 0, out)
        self.assertRegex(out, r"<~  250 2\.0\.0 Ok: queued as \S+")
        self.assertIn("<-  220 mx.test.example ESMTP strictmx", out)
        self._check_delivered("swaks tls")

    def test_tls_uppercase_localpart(self):
        p = swaks(self.d.port, "--tls", header="Subject: swaks case", to="U@example.org")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self._check_delivered("swaks case")

    def test_tls_pipeline(self):
        p = swaks(self.d.port, "--tls", "--pipeline", header="Subject: swaks pipeline")
        out = p.stdout + p.stderr
        self.assertEqual(p.returncode, 0, out)
        self.assertRegex(out, r"250 2\.0\.0 Ok: queued as \S+")
        self._check_delivered("swaks pipeline")

    def test_tls_relay_denied(self):
        p = swaks(self.d.port, "--tls", to="user@elsewhere.net", header="Subject: relay")
        out = p.stdout + p.stderr
        self.assertIn("554 5.7.1 <user@elsewhere.net>: Relay access denied", out)
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual(self.d.all_mail_files(), [])

    def test_selfsigned_logged(self):
        crt = os.path.join(self.d.data_dir, "tls", "selfsigned.crt")
        self.assertTrue(os.path.isfile(crt), "no %s" % crt)
        m = self.d.wait_log(r"event=tls_selfsigned.*sha256=([0-9A-Fa-f:]+)", 5)
        self.assertTrue(m, "no event=tls_selfsigned ... sha256= in log:\n%s" % self.d.log_text())
        logged = m.group(1).replace(":", "").lower()
        der = subprocess.run(["openssl", "x509", "-in", crt, "-outform", "DER"],
                             stdout=subprocess.PIPE, check=True, timeout=30).stdout
        spki = subprocess.run("openssl x509 -in '%s' -noout -pubkey | openssl pkey -pubin -outform DER"
                              % crt, shell=True, stdout=subprocess.PIPE, check=True,
                              timeout=30).stdout
        self.assertIn(logged, (hashlib.sha256(der).hexdigest(), hashlib.sha256(spki).hexdigest()),
                      "logged sha256 matches neither the certificate nor its public key")


class SwaksInfoUrl(unittest.TestCase):
    def test_info_url(self):
        d = Daemon(server={"info_url": INFO_URL})
        self.addCleanup(d.stop)
        p = swaks(d.port, header="Subject: info url")
        self.assertIn("<** %s (see %s)" % (TLS_FIRST, INFO_URL), p.stdout + p.stderr)
        self.assertEqual(d.all_mail_files(), [])


if __name__ == "__main__":
    unittest.main()
