"""SMTP smuggling, line endings, dot transparency, BDAT literalness.

security-anchors.md §2.3 (every sequence) and §8 C.12-C.17, E.27.
"""

import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smxtest  # noqa: E402
from smxtest import Daemon, QUEUED_RE  # noqa: E402

CLOSE_BOUND = 10.0

SMUGGLED = (b"MAIL FROM:<spoof@x.example>\r\nRCPT TO:<v@example.org>\r\nDATA\r\n"
            b"Subject: s\r\n\r\nB\r\n.\r\n")

# §2.3: name -> (bytes after the last content line, expected enhanced code)
SEQUENCES = {
    "lf_dot_lf": (b"\n.\n", "5.5.2"),
    "lf_dot_crlf": (b"\n.\r\n", "5.5.2"),
    "cr_dot_cr": (b"\r.\r", "5.5.2"),
    "cr_dot_lf": (b"\r.\n", "5.5.2"),
    "lf_dot_cr": (b"\n.\r", "5.5.2"),
    "cr_dot_crlf": (b"\r.\r\n", "5.5.2"),
    "crlf_dot_lf": (b"\r\n.\n", "5.5.2"),
    "crlf_dot_cr": (b"\r\n.\r", "5.5.2"),
    "nul_before_dot": (b"\r\n\x00.\r\n", "5.6.0"),
    "nul_after_dot": (b"\r\n.\x00\r\n", "5.6.0"),
    "crlf_dot_cr_crlf": (b"\r\n.\r\r\n", "5.5.2"),
    "cr_crlf_dot_cr_crlf": (b"\r\r\n.\r\r\n", "5.5.2"),
}


class Base(unittest.TestCase):
    def setUp(self):
        self.d = Daemon()
        self.addCleanup(self.d.stop)

    def session(self, rcpt="v@example.org"):
        c = smxtest.tls_session(self.d.port)
        self.addCleanup(c.close)
        self.assertEqual(c.mail("sender@client.example").code, 250)
        self.assertEqual(c.rcpt(rcpt).code, 250)
        return c

    def assert_no_spoof(self):
        for path, raw in self.d.all_mail_bytes():
            self.assertNotIn(b"spoof@x.example", raw, "smuggled message stored in %s" % path)
            headers, _body = smxtest.split_message(raw)
            self.assertNotIn(b"Subject: s", headers, "smuggled content stored in %s" % path)

    def assert_nothing_stored(self):
        self.assertEqual(self.d.all_mail_files(), [], "something was stored")

    def rejected_and_closed(self, c, enhanced):
        """After the real CRLF.CRLF: exactly one 550 <enhanced> reply, then close."""
        lines, closed, rest = c.replies_until_closed(CLOSE_BOUND)
        self.assertFalse([l for l in lines if QUEUED_RE.match(l)], "queued: %r" % lines)
        self.assertFalse([l for l in lines if l.startswith("250")],
                         "a 250 reply (smuggled command accepted?): %r" % lines)
        self.assertTrue(lines, "no reply before close (closed=%s)" % closed)
        self.assertTrue(lines[0].startswith("550 %s " % enhanced),
                        "expected 550 %s, got %r" % (enhanced, lines))
        self.assertTrue(closed, "connection not closed within %ss after 550: %r" % (CLOSE_BOUND, lines))
        return lines


class Smuggling(Base):
    def _smuggle(self, seq, enhanced):
        c = self.session()
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(b"From: <sender@client.example>\r\nSubject: legit\r\n\r\nA" + seq + SMUGGLED)
        self.rejected_and_closed(c, enhanced)
        self.assert_no_spoof()
        self.assert_nothing_stored()


def _make(name, seq, enhanced):
    def t(self):
        self._smuggle(seq, enhanced)
    t.__name__ = "test_" + name
    t.__doc__ = "§2.3 %s: %r" % (name, seq)
    return t


for _n, (_s, _e) in SEQUENCES.items():
    setattr(Smuggling, "test_" + _n, _make(_n, _s, _e))


class Pipelining(Base):
    def test_pipelining_smuggle(self):
        """§2.3 'pipelining': a proper end-of-data, then a whole transaction with its
        content in the same write (no wait for 354)."""
        c = self.session()
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(b"From: <sender@client.example>\r\nSubject: legit\r\n\r\nA\r\n.\r\n" + SMUGGLED)
        lines, closed, _ = c.replies_until_closed(CLOSE_BOUND)
        self.assertLessEqual(len([l for l in lines if QUEUED_RE.match(l)]), 1,
                             "second message queued: %r" % lines)
        self.assertFalse([l for l in lines if l.startswith("354")],
                         "354 for the smuggled DATA whose content was already sent: %r" % lines)
        self.assertTrue([l for l in lines if l.startswith("554 5.5.0")],
                        "no 554 5.5.0 synchronization error: %r" % lines)
        self.assertTrue(closed, "not closed: %r" % lines)
        self.assert_no_spoof()
        # at most the legit message
        for path, raw in self.d.all_mail_bytes():
            self.assertIn(b"Subject: legit", raw)

    def test_content_before_354(self):
        """C.15: MAIL, RCPT, DATA and the headers in one write -> 554 5.5.0 and close."""
        c = smxtest.tls_session(self.d.port)
        self.addCleanup(c.close)
        c.send(b"MAIL FROM:<sender@client.example>\r\nRCPT TO:<v@example.org>\r\nDATA\r\n"
               b"Subject: early\r\n\r\nbody\r\n.\r\n")
        lines, closed, _ = c.replies_until_closed(CLOSE_BOUND)
        sync = [l for l in lines if l.startswith("554")]
        self.assertTrue(sync, "no 554: %r" % lines)
        self.assertTrue(sync[0].startswith("554 5.5.0 Error: SMTP protocol synchronization"), lines)
        self.assertFalse([l for l in lines if QUEUED_RE.match(l)], lines)
        self.assertTrue(closed, "not closed: %r" % lines)
        self.assert_nothing_stored()

    def test_content_right_after_data(self):
        c = self.session()
        c.send(b"DATA\r\nSubject: early\r\n\r\nbody\r\n.\r\n")
        lines, closed, _ = c.replies_until_closed(CLOSE_BOUND)
        self.assertTrue(lines and lines[0].startswith("554 5.5.0 Error: SMTP protocol synchronization"),
                        lines)
        self.assertTrue(closed)
        self.assert_nothing_stored()

    def test_pipelined_envelope_is_fine(self):
        """Control: RFC 2920 pipelining of MAIL/RCPT/DATA (waiting for 354) is accepted."""
        c = smxtest.tls_session(self.d.port)
        self.addCleanup(c.close)
        c.send(b"MAIL FROM:<sender@client.example>\r\nRCPT TO:<v@example.org>\r\nDATA\r\n")
        self.assertEqual(c.read_reply().code, 250)
        self.assertEqual(c.read_reply().code, 250)
        self.assertEqual(c.read_reply().code, 354)
        c.send(smxtest.simple_message("pipelined ok", rcpt="v@example.org"))
        self.assertRegex(str(c.read_reply()), QUEUED_RE)
        self.assertEqual(len(self.d.wait_mail("example.org", "v", 1)), 1)


class LineEndings(Base):
    def _bare_in_command(self, line, tls):
        if tls:
            c = smxtest.tls_session(self.d.port)
        else:
            c = smxtest.Client(self.d.port)
        self.addCleanup(c.close)
        c.send(line)
        lines, closed, _ = c.replies_until_closed(CLOSE_BOUND)
        self.assertTrue(lines, "no reply, closed=%s" % closed)
        self.assertEqual(lines[0], "550 5.5.2 Error: bare <LF> received", lines)
        self.assertTrue(closed, "not closed after bare LF: %r" % lines)

    def test_bare_lf_ehlo(self):
        """C.13: EHLO x<LF>"""
        self._bare_in_command(b"EHLO x\n", tls=False)

    def test_bare_lf_mail_in_tls(self):
        self._bare_in_command(b"MAIL FROM:<a@b>\n", tls=True)

    def _stray_in_data(self, content_line, enhanced):
        c = self.session()
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(b"Subject: stray\r\n\r\n" + content_line + b"after\r\n.\r\n")
        self.rejected_and_closed(c, enhanced)
        self.assert_nothing_stored()

    def test_stray_cr_in_data(self):
        """C.14: abc<CR>def<CRLF>"""
        self._stray_in_data(b"abc\rdef\r\n", "5.5.2")

    def test_stray_lf_in_data(self):
        self._stray_in_data(b"abc\ndef\r\n", "5.5.2")

    def test_nul_in_data(self):
        self._stray_in_data(b"abc\x00def\r\n", "5.6.0")

    def test_bare_lf_in_header(self):
        self._stray_in_data(b"X-H: a\nb\r\n\r\n", "5.5.2")

    def test_rejected_data_no_second_transaction(self):
        """E.28 spirit: the rejection kills the session, so no RCPT/DATA can follow."""
        c = self.session()
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(b"Subject: x\r\n\r\nA\n.\r\nB\r\n.\r\n")
        self.rejected_and_closed(c, "5.5.2")
        self.assert_nothing_stored()


class DotTransparency(Base):
    def test_dot_lines(self):
        """C.16: ..x -> .x ; .. -> . ; '. ' -> ' ' ; only a lone dot ends DATA."""
        c = self.session()
        self.assertEqual(c.cmd("DATA").code, 354)
        r = c.cmd(b"From: <sender@client.example>\r\nSubject: dots\r\n\r\n"
                  b"first\r\n..x\r\n..\r\n. \r\n...\r\nlast\r\n.")
        self.assertRegex(str(r), QUEUED_RE)
        files = self.d.wait_mail("example.org", "v", 1)
        self.assertEqual(len(files), 1)
        headers, body = smxtest.split_message(smxtest.read_file(files[0]))
        self.assertEqual(body, [b"first", b".x", b".", b" ", b"..", b"last"])
        self.assertEqual(self.d.mail_files("example.org", "v", "tmp"), [])


class Bdat(Base):
    def test_bdat_literal(self):
        """C.17: a chunk containing CRLF.CRLF and ..y is stored literally."""
        c = self.session()
        chunk1 = b"From: <sender@client.example>\r\nSubject: bdat\r\n\r\nline1\r\n.\r\n..y\r\nline2\r\n"
        chunk2 = b"tail\r\n"
        c.send(b"BDAT %d\r\n" % len(chunk1) + chunk1)
        r = c.read_reply()
        self.assertEqual(str(r), "250 2.0.0 Ok: %d octets received" % len(chunk1))
        c.send(b"BDAT %d LAST\r\n" % len(chunk2) + chunk2)
        r = c.read_reply()
        self.assertRegex(str(r), QUEUED_RE)
        files = self.d.wait_mail("example.org", "v", 1)
        self.assertEqual(len(files), 1)
        headers, body = smxtest.split_message(smxtest.read_file(files[0]))
        self.assertEqual(body, [b"line1", b".", b"..y", b"line2", b"tail"])
        self.assertTrue(headers[0].startswith(b"Received:"), headers[:2])
        self.assertRegex(headers[0], smxtest.RECEIVED_TLS_RE)

    def test_bdat_pipelined_chunks(self):
        """Several chunks in one write (BDAT may be pipelined)."""
        c = self.session()
        msg = b"Subject: chunks\r\n\r\n" + b"".join(b"l%d\r\n" % i for i in range(50))
        parts = [msg[:7], msg[7:100], msg[100:]]
        out = b""
        for i, p in enumerate(parts):
            out += b"BDAT %d%s\r\n" % (len(p), b" LAST" if i == len(parts) - 1 else b"") + p
        c.send(out)
        for p in parts[:-1]:
            self.assertEqual(str(c.read_reply()), "250 2.0.0 Ok: %d octets received" % len(p))
        self.assertRegex(str(c.read_reply()), QUEUED_RE)
        files = self.d.wait_mail("example.org", "v", 1)
        self.assertEqual(len(files), 1)
        _h, body = smxtest.split_message(smxtest.read_file(files[0]))
        self.assertEqual(body, [b"l%d" % i for i in range(50)])

    def test_bdat_before_mail(self):
        c = smxtest.tls_session(self.d.port)
        self.addCleanup(c.close)
        r = c.cmd("BDAT 0 LAST")
        self.assertEqual(r.code, 503, r)
        self.assert_nothing_stored()

    def test_data_after_bdat(self):
        c = self.session()
        c.send(b"BDAT 5\r\nhello")
        self.assertEqual(str(c.read_reply()), "250 2.0.0 Ok: 5 octets received")
        r = c.cmd("DATA")
        self.assertEqual(r.code, 503, r)
        self.assertEqual(c.cmd("RSET").code, 250)
        self.assert_nothing_stored()

    def test_bdat_bare_lf(self):
        """C.17: a bare LF in BDAT text gets the same policy as in DATA (no message stored)."""
        c = self.session()
        chunk = b"Subject: bdat lf\r\n\r\nA\n.\nMAIL FROM:<spoof@x.example>\r\n"
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        lines, closed, _ = c.replies_until_closed(CLOSE_BOUND)
        self.assertFalse([l for l in lines if QUEUED_RE.match(l)], lines)
        self.assertTrue(lines and lines[0].startswith("550 5.5.2"), lines)
        self.assert_nothing_stored()


if __name__ == "__main__":
    unittest.main()
