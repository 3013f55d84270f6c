"""STARTTLS injection, the pre-TLS gate, state reset after TLS, non-SMTP clients.

security-anchors.md §8 A.1-A.5, E.32.
"""

import os
import socket
import ssl
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smxtest  # noqa: E402
from smxtest import Client, Daemon, TLS_FIRST, INFO_URL, GREETING  # noqa: E402

CLOSE_BOUND = 10.0  # seconds within which a violating connection must be closed


def read_raw_until_closed(sock, timeout):
    """Read a plain socket until EOF/reset within the bound: (data, closed)."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        sock.settimeout(left)
        try:
            d = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return data, False
        except OSError:
            return data, True
        if not d:
            return data, True
        data += d


def start_daemon(test, **kw):
    d = Daemon(**kw)
    test.addCleanup(d.stop)
    return d


def connect(test, d, **kw):
    c = Client(d.port, **kw)
    test.addCleanup(c.close)
    return c


class Injection(unittest.TestCase):
    def setUp(self):
        self.d = start_daemon(self)

    def assert_no_reply_to_injected(self, lines, data=b""):
        for l in lines:
            self.assertFalse(l.startswith("250"), "a 250 was sent after STARTTLS injection: %r" % lines)
            self.assertFalse(l.startswith("354"), "354 after injection: %r" % lines)

    def _one_write(self, payload):
        c = connect(self, self.d)
        self.assertEqual(c.ehlo().code, 250)
        c.send(payload)
        lines, closed, rest = c.replies_until_closed(CLOSE_BOUND)
        self.assertTrue(closed, "connection not closed within %ss; got %r" % (CLOSE_BOUND, lines))
        self.assertTrue(lines, "no reply at all before close")
        self.assertTrue(lines[0].startswith("554 5.5.0 "), "expected 554 5.5.0, got %r" % lines)
        self.assertFalse(any(l.startswith("220") for l in lines), "220 sent despite injection: %r" % lines)
        self.assert_no_reply_to_injected(lines)
        self.assertEqual(rest, b"", "partial/binary data (TLS?) after 554: %r" % rest[:100])
        self.assertEqual(self.d.all_mail_files(), [])

    def test_injection_same_write_mail(self):
        """A.1: STARTTLS and a command in one write -> 554 5.5.0 and close, no TLS."""
        self._one_write(b"STARTTLS\r\nMAIL FROM:<a@b>\r\n")

    def test_injection_same_write_ehlo(self):
        self._one_write(b"STARTTLS\r\nEHLO inj\r\n")

    def test_injection_same_write_partial(self):
        """Bytes after STARTTLS in the same read, even without a line end."""
        self._one_write(b"STARTTLS\r\nMAIL FROM:<a@")

    def _split(self, second):
        """A.2: STARTTLS, then (before reading 220) a second plaintext write."""
        c = connect(self, self.d)
        self.assertEqual(c.ehlo().code, 250)
        c.send(b"STARTTLS\r\n")
        c.send(second)
        t0 = time.monotonic()
        # Either the server saw both writes in one read (554 + close), or it answered
        # 220 and the plaintext bytes hit its TLS handshake (failure + close).
        first = None
        try:
            first = c.read_reply(CLOSE_BOUND)
        except smxtest.Closed:
            pass
        if first is None:
            return  # closed without any reply: fine, nothing was accepted
        self.assertFalse(first.code == 250, "250 to injected data: %s" % first)
        if first.code == 554:
            lines, closed, _ = c.replies_until_closed(CLOSE_BOUND)
            self.assertTrue(closed, "not closed after 554")
            self.assert_no_reply_to_injected(lines)
            return
        self.assertEqual(first.code, 220, "unexpected reply to STARTTLS: %s" % first)
        self.assertEqual(c.buf, b"", "plaintext bytes after 220: %r" % c.buf)
        # The injected plaintext is what the server's TLS layer reads as ClientHello:
        # our handshake must fail, and no SMTP reply may follow in any form.
        raw = c.sock.dup()  # the TCP stream itself, to see the close after a failed handshake
        self.addCleanup(raw.close)
        handshake_ok = False
        try:
            c.upgrade()
            handshake_ok = True
        except (ssl.SSLError, OSError) as e:
            pass
        if handshake_ok:
            # Should not happen (the spec says the handshake fails). At the very least the
            # injected command must never be answered inside TLS.
            try:
                c.send(b"NOOP\r\n")
                r = c.read_reply(5)
                self.fail("TLS handshake succeeded after plaintext injection; first TLS reply %s" % r)
            except (smxtest.Closed, OSError, socket.timeout) as e:
                self.fail("TLS handshake succeeded after plaintext injection (then %r)" % e)
        data, closed = read_raw_until_closed(raw, CLOSE_BOUND)
        self.assertTrue(closed, "connection still open %.1fs after failed handshake" % (time.monotonic() - t0))
        self.assertNotIn(b"250 ", data)
        self.assertEqual(self.d.all_mail_files(), [])

    def test_injection_split_writes(self):
        self._split(b"MAIL FROM:<a@b>\r\n")

    def test_injection_split_partial_line(self):
        self._split(b"MAIL FROM:<a@b>")

    def test_injection_after_220_unread(self):
        """The 220 has arrived (not read yet) when the plaintext command is written."""
        import select
        c = connect(self, self.d)
        self.assertEqual(c.ehlo().code, 250)
        c.send(b"STARTTLS\r\n")
        r, _, _ = select.select([c.sock], [], [], CLOSE_BOUND)
        self.assertTrue(r, "no 220 within %ss" % CLOSE_BOUND)
        c.send(b"MAIL FROM:<a@b>\r\n")
        first = c.read_reply(CLOSE_BOUND)
        self.assertEqual(first.code, 220, first)
        data, closed = c.read_until_closed(CLOSE_BOUND)
        self.assertTrue(closed, "not closed after plaintext injected behind the 220: %r" % data)
        self.assertNotIn(b"250 ", data)
        self.assertEqual(self.d.all_mail_files(), [])

    def test_garbage_after_220(self):
        """A.5: after 220 Ready, plaintext SMTP (not a ClientHello): never continues in plaintext."""
        c = connect(self, self.d)
        c.ehlo()
        r = c.cmd("STARTTLS")
        self.assertEqual(r.code, 220)
        c.send(b"EHLO plain\r\n")
        data, closed = c.read_until_closed(CLOSE_BOUND)
        self.assertTrue(closed, "connection not closed after plaintext instead of ClientHello")
        self.assertNotIn(b"250", data)

    def test_truncated_clienthello(self):
        c = connect(self, self.d)
        c.ehlo()
        self.assertEqual(c.cmd("STARTTLS").code, 220)
        # A TLS record header announcing 512 bytes, then a few bytes, then the client closes
        # its sending side: the server must give up and close.
        c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        c.sock.shutdown(socket.SHUT_WR)
        data, closed = c.read_until_closed(CLOSE_BOUND)
        self.assertTrue(closed)
        self.assertNotIn(b"250", data)


class TlsShutdown(unittest.TestCase):
    """A.6: close_notify in the middle of a transaction, then one cleartext byte."""

    def setUp(self):
        self.d = start_daemon(self)

    def _shutdown_mid(self, start):
        c = smxtest.tls_session(self.d.port)
        self.addCleanup(c.close)
        self.assertEqual(c.mail("sender@client.example").code, 250)
        self.assertEqual(c.rcpt("u@example.org").code, 250)
        start(c)
        raw = socket.socket(fileno=os.dup(c.sock.fileno()))  # the TCP stream under TLS
        self.addCleanup(raw.close)
        try:
            c.sock.settimeout(5)
            c.sock.unwrap()  # sends close_notify (and reads the peer's, if any)
        except (ssl.SSLError, OSError, ValueError):
            pass
        try:
            raw.sendall(b"X")
        except OSError:
            pass
        data, closed = read_raw_until_closed(raw, CLOSE_BOUND)
        self.assertTrue(closed, "socket still open after close_notify + cleartext")
        self.assertNotIn(b"250 ", data)
        self.assertTrue(self.d.alive())
        self.assertEqual(self.d.all_mail_files(), [], "a truncated transaction was stored")

    def test_bdat(self):
        def start(c):
            c.send(b"BDAT 1000\r\n" + b"0123456789")
        self._shutdown_mid(start)

    def test_data(self):
        def start(c):
            self.assertEqual(c.cmd("DATA").code, 354)
            c.send(b"Subject: cut\r\n\r\n0123456789")
        self._shutdown_mid(start)


class StateReset(unittest.TestCase):
    def setUp(self):
        self.d = start_daemon(self)

    def test_mail_without_ehlo_after_tls(self):
        """A.3: after TLS the session is reset: MAIL without a new EHLO -> 503."""
        c = connect(self, self.d)
        self.assertEqual(c.ehlo().code, 250)
        c.starttls()
        r = c.mail("sender@client.example")
        self.assertEqual(r.code, 503, r)

    def test_mail_attempt_before_tls_then_after(self):
        c = connect(self, self.d)
        c.ehlo()
        self.assertEqual(str(c.mail("sender@client.example")), TLS_FIRST)
        c.starttls()
        self.assertEqual(c.mail("sender@client.example").code, 503)
        self.assertEqual(c.ehlo().code, 250)
        self.assertEqual(c.mail("sender@client.example").code, 250)

    def test_ehlo_after_tls_no_starttls(self):
        c = connect(self, self.d)
        r = c.ehlo()
        self.assertIn("STARTTLS", c.extensions)
        c.starttls()
        r = c.ehlo()
        self.assertEqual(r.code, 250)
        self.assertNotIn("STARTTLS", c.extensions, r)
        self.assertIn("PIPELINING", c.extensions)

    def test_second_starttls(self):
        c = connect(self, self.d)
        c.ehlo()
        c.starttls()
        r = c.cmd("STARTTLS")
        self.assertEqual(r.code, 503, r)
        c.ehlo()
        r = c.cmd("STARTTLS")
        self.assertEqual(r.code, 503, r)
        # still a working TLS session
        self.assertEqual(c.cmd("NOOP").code, 250)

    def test_tls_session_delivers(self):
        """Sanity: the TLS path works end to end (so the rejections above mean something)."""
        r = smxtest.send_mail(self.d.port, "state-reset sanity")
        self.assertRegex(str(r), smxtest.QUEUED_RE)
        self.assertEqual(len(self.d.wait_mail("example.org", "u", 1)), 1)


class PreTlsGate(unittest.TestCase):
    """A.4: the plaintext gate, verb by verb, with the exact text."""

    GATED = ["MAIL FROM:<sender@client.example>", "RCPT TO:<u@example.org>", "DATA",
             "BDAT 0 LAST", "AUTH PLAIN AGFiYwBkZWY=", "VRFY postmaster",
             "mail from:<sender@client.example>"]

    def _gate(self, d, expect):
        for verb in self.GATED:
            with self.subTest(verb=verb):
                c = connect(self, d)
                self.assertEqual(c.ehlo().code, 250)
                r = c.cmd(verb)
                self.assertEqual(str(r), expect, "reply to %r" % verb)
                # the session goes on: NOOP still works
                self.assertEqual(c.cmd("NOOP").code, 250)
                c.close()
        self.assertEqual(d.all_mail_files(), [])

    def test_gate(self):
        d = start_daemon(self)
        self._gate(d, TLS_FIRST)

    def test_gate_with_info_url(self):
        d = start_daemon(self, server={"info_url": INFO_URL})
        self._gate(d, TLS_FIRST + " (see %s)" % INFO_URL)

    def test_gate_without_ehlo(self):
        d = start_daemon(self)
        c = connect(self, d)
        self.assertEqual(str(c.cmd("MAIL FROM:<sender@client.example>")), TLS_FIRST)


class PlainCommands(unittest.TestCase):
    def setUp(self):
        self.d = start_daemon(self)
        self.c = connect(self, self.d)

    def test_greeting(self):
        self.assertEqual(str(self.c.greeting), GREETING)

    def test_ehlo_extensions(self):
        r = self.c.ehlo()
        self.assertEqual(r.code, 250)
        self.assertTrue(r.texts[0].startswith("mx.test.example"), r)
        ext = self.c.extensions
        for e in ("STARTTLS", "PIPELINING", "SIZE 36700160", "8BITMIME", "SMTPUTF8", "CHUNKING",
                  "ENHANCEDSTATUSCODES"):
            self.assertIn(e, ext, r)
        self.assertFalse([e for e in ext if e.startswith("AUTH")], "AUTH advertised: %s" % r)

    def test_helo(self):
        r = self.c.cmd("HELO client.test.example")
        self.assertEqual(r.code, 250, r)

    def test_noop_rset_help_quit(self):
        self.assertEqual(self.c.cmd("NOOP").code, 250)
        self.assertEqual(self.c.cmd("RSET").code, 250)
        self.assertEqual(self.c.cmd("HELP").code, 214)
        self.assertEqual(self.c.cmd("QUIT").code, 221)
        self.assertTrue(self.c.is_closed(CLOSE_BOUND), "not closed after QUIT")

    def test_starttls_with_argument(self):
        self.c.ehlo()
        self.assertEqual(self.c.cmd("STARTTLS x").code, 501)
        # no TLS started: plaintext NOOP still answered
        self.assertEqual(self.c.cmd("NOOP").code, 250)

    def test_expn(self):
        self.c.ehlo()
        self.assertEqual(self.c.cmd("EXPN staff").code, 502)


class NonSmtp(unittest.TestCase):
    """E.32: HTTP and friends -> 221 and close."""

    def setUp(self):
        self.d = start_daemon(self)

    def _http(self, payload):
        c = connect(self, self.d)
        c.send(payload)
        lines, closed, _ = c.replies_until_closed(CLOSE_BOUND)
        self.assertTrue(closed, "not closed after %r; got %r" % (payload[:20], lines))
        self.assertTrue(lines and lines[0].startswith("221"), "expected 221, got %r" % lines)
        self.assertEqual(len([l for l in lines if l[:1] in "2345"]), 1,
                         "more than one reply to an HTTP request: %r" % lines)

    def test_get(self):
        self._http(b"GET / HTTP/1.1\r\n")

    def test_get_with_headers(self):
        self._http(b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n")

    def test_post(self):
        self._http(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")

    def test_connect(self):
        self._http(b"CONNECT 127.0.0.1:25 HTTP/1.1\r\n\r\n")


if __name__ == "__main__":
    unittest.main()
