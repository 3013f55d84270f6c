"""Parsing and state-machine robustness (security-anchors.md §8 E.20, E.22, E.23, E.27, E.28).

The specification fixes few exact texts here; the anchors fix reply classes. Every case
also checks that the daemon is alive afterwards and (at stop) sanitizer-clean.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smxtest  # noqa: E402
from smxtest import Daemon, QUEUED_RE  # noqa: E402


class Base(unittest.TestCase):
    def setUp(self):
        self.d = Daemon()
        self.addCleanup(self.d.stop)

    def tls(self):
        c = smxtest.tls_session(self.d.port)
        self.addCleanup(c.close)
        return c

    def tearDown(self):
        self.assertTrue(self.d.alive(), "daemon died; log:\n%s" % self.d.log_text()[-3000:])


class Addresses(Base):
    """E.20: addresses are data: accepted per grammar or 501/553, never interpreted."""

    SENDERS = [b"<;sleep 66;>", b"<$(id)@x.example>", b'<"a;|id"@x.example>', b"<-oQ.x@x.example>",
               b"<@a.example,@b.example:u@d.example>", b"<u@[IPv6:::1]>", b"<u@[127.0.0.1]>",
               b"<\xc3\xa9@x.example>", b"<>"]  # the UTF-8 one without SMTPUTF8
    RCPTS = ["<${run{/bin/true}}@example.org>", "<-oQ@example.org>", "<../../etc@example.org>",
             "<a/b@example.org>", "<.dot@example.org>", "<A%B@example.org>", "<\"q u\"@example.org>"]

    def test_senders(self):
        for s in self.SENDERS:
            with self.subTest(sender=s):
                c = self.tls()
                r = c.cmd(b"MAIL FROM:" + s)
                self.assertIn(r.code, (250, 501, 553), r)
                c.cmd("QUIT")
                c.close()

    def test_recipients(self):
        for rc in self.RCPTS:
            with self.subTest(rcpt=rc):
                c = self.tls()
                self.assertEqual(c.cmd("MAIL FROM:<sender@client.example>").code, 250)
                r = c.cmd("RCPT TO:" + rc)
                self.assertIn(r.code, (250, 501, 550, 553), r)
                if r.code == 250:
                    r = c.data(smxtest.simple_message("odd rcpt"))
                    self.assertRegex(str(r), QUEUED_RE)
                c.cmd("QUIT")
                c.close()
        # whatever was stored is under data_dir/mail, never elsewhere
        root = os.path.realpath(os.path.join(self.d.data_dir, "mail"))
        for p in self.d.all_mail_files():
            self.assertTrue(os.path.realpath(p).startswith(root + os.sep), p)
        self.assertFalse(os.path.exists(os.path.join(self.d.data_dir, "etc")))

    def test_null_sender_delivers(self):
        c = self.tls()
        self.assertEqual(c.cmd("MAIL FROM:<>").code, 250)
        self.assertEqual(c.rcpt("u@example.org").code, 250)
        self.assertRegex(str(c.data(smxtest.simple_message("bounce"))), QUEUED_RE)


class HugeEhlo(Base):
    def test_huge_ehlo(self):
        """E.22: EHLO + 64 KiB -> 500/501, no crash."""
        c = smxtest.Client(self.d.port)
        self.addCleanup(c.close)
        r = c.cmd(b"EHLO " + b"A" * 65536)
        self.assertIn(r.code, (500, 501), r)

    def test_format_string(self):
        c = smxtest.Client(self.d.port)
        self.addCleanup(c.close)
        r = c.cmd("EHLO %s%n%x%p")
        self.assertIn(r.code, (250, 501), r)
        self.assertNotRegex(str(r), r"0x[0-9a-f]{6,}|\(nil\)")


class EsmtpParams(Base):
    """E.23"""

    def mail(self, params):
        c = self.tls()
        return c.cmd("MAIL FROM:<sender@client.example> " + params)

    def test_size_huge(self):
        self.assertTrue(str(self.mail("SIZE=99999999999999999999")).startswith("552 5.3.4"))

    def test_size_abc(self):
        self.assertTrue(str(self.mail("SIZE=abc")).startswith("501 5.5.4"))

    def test_unknown_param(self):
        self.assertEqual(self.mail("FOO=bar").code, 555)

    def test_duplicate_body(self):
        self.assertIn(self.mail("BODY=8BITMIME BODY=7BIT").code, (501, 555))

    def test_duplicate_size(self):
        self.assertIn(self.mail("SIZE=10 SIZE=20").code, (501, 555))

    def test_param_starting_with_equals(self):
        self.assertIn(self.mail("=x").code, (501, 555))

    def test_known_params_ok(self):
        self.assertEqual(self.mail("SIZE=1000 BODY=8BITMIME SMTPUTF8").code, 250)


class BdatStateMachine(Base):
    """E.27, E.28"""

    def transaction(self):
        c = self.tls()
        self.assertEqual(c.mail("sender@client.example").code, 250)
        self.assertEqual(c.rcpt("u@example.org").code, 250)
        return c

    def test_bdat_zero_last(self):
        c = self.transaction()
        c.send(b"BDAT 6\r\nX: y\r\n")
        self.assertEqual(c.read_reply().code, 250)
        r = c.cmd("BDAT 0 LAST")
        self.assertRegex(str(r), QUEUED_RE)
        self.assertEqual(len(self.d.wait_mail("example.org", "u", 1)), 1)

    def test_bdat_bad_sizes(self):
        for arg in ("-1", "1e30", "10 FOO", "", "99999999999999999999999", "0x10"):
            with self.subTest(arg=arg):
                c = self.transaction()
                r = c.cmd("BDAT " + arg)
                self.assertIn(r.code, (501, 552, 521, 554), r)
                c.close()
        self.assertEqual(self.d.all_mail_files(), [])

    def test_short_chunk_then_close(self):
        c = self.transaction()
        c.send(b"BDAT 100 LAST\r\nonly a few bytes")
        c.close()
        # give the daemon a moment to see the close, then: nothing stored
        smxtest.poll(lambda: self.d.log_text().count("event=disconnect") >= 2, 5)
        self.assertEqual(self.d.all_mail_files(), [])

    def test_reset_after_relay_rejection(self):
        """E.28: after a rejected RCPT, DATA without a valid recipient -> 503 (or 554)."""
        c = self.tls()
        self.assertEqual(c.mail("sender@client.example").code, 250)
        self.assertEqual(str(c.rcpt("user@elsewhere.net")),
                         "554 5.7.1 <user@elsewhere.net>: Relay access denied")
        r = c.cmd("DATA")
        self.assertIn(r.code, (503, 554), r)
        self.assertEqual(self.d.all_mail_files(), [])

    def test_rcpt_without_mail(self):
        c = self.tls()
        self.assertEqual(c.rcpt("u@example.org").code, 503)
        self.assertEqual(c.cmd("DATA").code, 503)

    def test_after_queued_needs_new_mail(self):
        c = self.transaction()
        self.assertRegex(str(c.data(smxtest.simple_message("one"))), QUEUED_RE)
        self.assertEqual(c.rcpt("u@example.org").code, 503)
        self.assertEqual(c.cmd("DATA").code, 503)
        self.assertEqual(len(self.d.wait_mail("example.org", "u", 1)), 1)


if __name__ == "__main__":
    unittest.main()
