"""[limits] and the require_tls = no listener.

security-anchors.md §8 E.21, E.25, E.26, I.58-I.61.
"""

import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smxtest  # noqa: E402
from smxtest import Client, Daemon, QUEUED_RE, TLS_FIRST  # noqa: E402

CLOSE_BOUND = 10.0


def trickle(c, payload, bound):
    """Send payload one byte a second (waiting for a close meanwhile, not sleeping)
    until the server closes or bound seconds pass. Returns (closed, lines, seconds)."""
    t0 = time.monotonic()
    lines = []
    closed = False
    for i in range(len(payload)):
        if time.monotonic() - t0 > bound:
            break
        try:
            c.send(payload[i:i + 1])
        except OSError:
            closed = True
            break
        data, closed = c.read_until_closed(1.0)
        lines += data.decode("latin-1").split("\r\n")
        if closed:
            break
    return closed, lines, time.monotonic() - t0


class Base(unittest.TestCase):
    def daemon(self, **kw):
        d = Daemon(**kw)
        self.addCleanup(d.stop)
        return d

    def client(self, port, **kw):
        c = Client(port, **kw)
        self.addCleanup(c.close)
        return c

    def tls(self, d):
        c = smxtest.tls_session(d.port)
        self.addCleanup(c.close)
        return c


class LineLength(Base):
    def test_command_line_too_long(self):
        d = self.daemon(limits={"line_length": 512})
        c = self.client(d.port)
        r = c.cmd("EHLO " + "a" * 700)
        self.assertEqual(str(r), "500 5.5.2 Error: line too long")
        r = c.cmd("NOOP " + "b" * 2048)
        self.assertEqual(str(r), "500 5.5.2 Error: line too long")

    def test_command_line_boundary(self):
        """line_length counts the CRLF: 512 octets pass, 513 do not."""
        d = self.daemon(limits={"line_length": 512})
        c = self.client(d.port)
        self.assertEqual(c.cmd("NOOP " + "a" * (512 - 7)).code, 250)
        self.assertEqual(str(c.cmd("NOOP " + "a" * (513 - 7))), "500 5.5.2 Error: line too long")
        self.assertEqual(c.cmd("NOOP").code, 250, "not in sync after an over-long line")

    def test_megabyte_without_crlf(self):
        """E.21: 1 MiB with no line end: 500 (or close), bounded, daemon survives."""
        d = self.daemon(limits={"line_length": 512})
        c = self.client(d.port)
        try:
            c.send(b"A" * (1 << 20) + b"\r\n")
        except OSError:
            pass  # the server may close while we are still writing
        lines, closed, _ = c.replies_until_closed(3)
        if lines:
            self.assertEqual(lines[0], "500 5.5.2 Error: line too long", lines)
        else:
            self.assertTrue(closed, "neither a reply nor a close after 1 MiB without CRLF")
        self.assertTrue(d.alive())
        c2 = self.client(d.port)
        self.assertEqual(c2.greeting.code, 220)

    def test_long_line_in_tls(self):
        d = self.daemon(limits={"line_length": 512})
        c = self.tls(d)
        r = c.cmd("MAIL FROM:<%s@client.example>" % ("x" * 600))
        self.assertEqual(str(r), "500 5.5.2 Error: line too long")


class Recipients(Base):
    def test_too_many_recipients(self):
        d = self.daemon(limits={"recipients": 3})
        c = self.tls(d)
        self.assertEqual(c.mail("sender@client.example").code, 250)
        for i in range(3):
            self.assertEqual(c.rcpt("r%d@example.org" % i).code, 250)
        self.assertEqual(str(c.rcpt("r3@example.org")), "452 4.5.3 Error: too many recipients")
        # the transaction goes on with the accepted three
        r = c.data(smxtest.simple_message("three rcpts", rcpt="r0@example.org"))
        self.assertRegex(str(r), QUEUED_RE)
        for i in range(3):
            self.assertEqual(len(d.wait_mail("example.org", "r%d" % i, 1)), 1)
        self.assertEqual(len(d.all_mail_files()), 3, "the 4th recipient got a copy")


class MessageSize(Base):
    def setUp(self):
        self.d = self.daemon(limits={"message_size": 10000})

    def test_ehlo_advertises_size(self):
        c = self.client(self.d.port)
        c.ehlo()
        self.assertIn("SIZE 10000", c.extensions)

    def test_mail_size_param(self):
        c = self.tls(self.d)
        r = c.mail("sender@client.example", "SIZE=20000")
        self.assertEqual(r.code, 552, r)
        self.assertTrue(str(r).startswith("552 5.3.4"), r)
        self.assertEqual(c.mail("sender@client.example", "SIZE=5000").code, 250)

    def test_mail_size_huge(self):
        """E.23: SIZE=99999999999999999999 -> 552 5.3.4 (no overflow to a small number)."""
        c = self.tls(self.d)
        r = c.mail("sender@client.example", "SIZE=99999999999999999999")
        self.assertTrue(str(r).startswith("552 5.3.4"), r)

    def test_body_over_limit(self):
        c = self.tls(self.d)
        self.assertEqual(c.mail("sender@client.example").code, 250)
        self.assertEqual(c.rcpt("u@example.org").code, 250)
        body = ["x" * 70] * 300  # ~21 KB
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(smxtest.simple_message("too big", body))
        r = c.read_reply(CLOSE_BOUND)
        self.assertTrue(str(r).startswith("552 5.3.4"), r)
        self.assertEqual(d_files(self.d), [])
        # the server read to the end: still in sync, a new transaction works
        self.assertEqual(c.cmd("RSET").code, 250)
        self.assertEqual(c.mail("sender@client.example").code, 250)

    def test_body_under_limit(self):
        r = smxtest.send_mail(self.d.port, "small", body_lines=["x" * 70] * 50)
        self.assertRegex(str(r), QUEUED_RE)
        self.assertEqual(len(self.d.wait_mail("example.org", "u", 1)), 1)

    def test_bdat_over_limit(self):
        """E.26: a BDAT chunk over the limit -> 552 5.3.4, nothing stored."""
        c = self.tls(self.d)
        self.assertEqual(c.mail("sender@client.example").code, 250)
        self.assertEqual(c.rcpt("u@example.org").code, 250)
        chunk = b"Subject: big\r\n\r\n" + b"y" * 70 + b"\r\n"
        chunk = chunk * 300
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        r = c.read_reply(CLOSE_BOUND)
        self.assertTrue(str(r).startswith("552 5.3.4"), r)
        self.assertEqual(d_files(self.d), [])


def d_files(d):
    return d.all_mail_files()


class TextLineLength(Base):
    def test_text_line_too_long(self):
        d = self.daemon(limits={"text_line_length": 1000})
        c = self.tls(d)
        self.assertEqual(c.mail("sender@client.example").code, 250)
        self.assertEqual(c.rcpt("u@example.org").code, 250)
        r = c.data(smxtest.simple_message("long line", ["ok", "z" * 1500, "ok"]), CLOSE_BOUND)
        self.assertEqual(r.code, 550, r)
        self.assertTrue(str(r).startswith("550 5.6.0"), r)
        self.assertEqual(d.all_mail_files(), [])

    def test_text_line_at_limit(self):
        d = self.daemon(limits={"text_line_length": 1000})
        r = smxtest.send_mail(d.port, "998", body_lines=["z" * 998])
        self.assertRegex(str(r), QUEUED_RE)
        files = d.wait_mail("example.org", "u", 1)
        self.assertEqual(len(files), 1)
        _h, body = smxtest.split_message(smxtest.read_file(files[0]))
        self.assertEqual(body, [b"z" * 998])


class Errors(Base):
    def test_too_many_errors(self):
        n = 3
        d = self.daemon(limits={"errors": n})
        c = self.client(d.port)
        c.ehlo()
        errors = []
        got421 = None
        for i in range(n + 3):
            try:
                c.send(b"XYZZY%d\r\n" % i)
                r = c.read_reply(CLOSE_BOUND)
            except (smxtest.Closed, OSError) as e:
                self.fail("closed without 421 after %d error replies (%r)" % (len(errors), e))
            if r.code == 421:
                got421 = r
                break
            self.assertGreaterEqual(r.code, 500, r)
            errors.append(str(r))
        self.assertIsNotNone(got421, "no 421 after %d errors: %r" % (len(errors), errors))
        self.assertTrue(str(got421).startswith("421 4.7.0 "), got421)
        self.assertEqual(len(errors), n, "421 after %d error replies, expected %d: %r"
                         % (len(errors), n, errors))
        self.assertTrue(c.is_closed(CLOSE_BOUND), "not closed after 421")

    def test_errors_count_tls_gate(self):
        """530s are errors too: a client hammering MAIL in plaintext is cut off."""
        n = 3
        d = self.daemon(limits={"errors": n})
        c = self.client(d.port)
        c.ehlo()
        replies = []
        for i in range(n + 3):
            try:
                r = c.cmd("MAIL FROM:<a@client.example>")
            except (smxtest.Closed, OSError):
                break
            replies.append(str(r))
            if r.code == 421:
                break
        self.assertTrue(replies and replies[-1].startswith("421 4.7.0"), replies)
        self.assertEqual(replies[:n], [TLS_FIRST] * n)


class ErrorDelay(Base):
    """I.61: after 10 error replies each further error reply waits error_delay (a tarpit like
    Postfix's smtpd_soft_error_limit / smtpd_error_sleep_time); good replies do not wait, and
    the wait is a timer: the loop serves other sessions meanwhile."""

    DELAY = 2

    def timed(self, c, line):
        t0 = time.monotonic()
        r = c.cmd(line, CLOSE_BOUND)
        return r, time.monotonic() - t0

    def test_errors_after_ten_are_delayed(self):
        d = self.daemon(limits={"errors": 20, "error_delay": self.DELAY},
                        server={"threads": 1})
        c = self.client(d.port)
        c.ehlo()
        for i in range(10):
            r, dt = self.timed(c, "XYZZY%d" % i)
            self.assertEqual(r.code, 500, r)
            self.assertLess(dt, 1.0, "error %d delayed (%.2fs)" % (i + 1, dt))
        r, dt = self.timed(c, "XYZZY10")
        self.assertEqual(str(r), "500 5.5.2 Error: command not recognized")
        self.assertGreaterEqual(dt, self.DELAY - 0.1, "11th error not delayed (%.2fs)" % dt)
        r, dt = self.timed(c, "NOOP")
        self.assertEqual(r.code, 250, r)
        self.assertLess(dt, 1.0, "a good reply was delayed (%.2fs)" % dt)
        # while this session waits, another one on the same (single) loop is served
        c.send(b"XYZZY11\r\n")
        t0 = time.monotonic()
        other = self.client(d.port)
        self.assertEqual(other.cmd("NOOP", CLOSE_BOUND).code, 250)
        self.assertLess(time.monotonic() - t0, 1.0, "the loop was blocked by the delay")
        r = c.read_reply(CLOSE_BOUND)
        self.assertEqual(r.code, 500, r)
        self.assertGreaterEqual(time.monotonic() - t0, self.DELAY - 0.1)
        # the errors limit still cuts at its count, with 421
        replies = []
        for i in range(12, 25):
            try:
                r = c.cmd("XYZZY%d" % i, CLOSE_BOUND + self.DELAY)
            except (smxtest.Closed, OSError):
                break
            replies.append(str(r))
            if r.code == 421:
                break
        self.assertTrue(replies and replies[-1].startswith("421 4.7.0"), replies)
        self.assertEqual(len(replies), 20 - 12 + 1, replies)

    def test_error_delay_off(self):
        d = self.daemon(limits={"errors": 20, "error_delay": 0})
        c = self.client(d.port)
        c.ehlo()
        t0 = time.monotonic()
        for i in range(15):
            self.assertEqual(c.cmd("XYZZY%d" % i, CLOSE_BOUND).code, 500)
        self.assertLess(time.monotonic() - t0, 3.0)


class Connections(Base):
    def _greet(self, port, source=None):
        c = Client(port, read_greeting=False, source=source)
        self.addCleanup(c.close)
        try:
            g = c.read_reply(CLOSE_BOUND)
        except smxtest.Closed:
            g = None
        return c, g

    def test_connections_per_ip(self):
        d = self.daemon(limits={"connections_per_ip": 2})
        held = []

        def two_open():
            # (re)open until two sessions are held: the readiness probe may still be counted
            # for an instant after its close
            while len(held) < 2:
                c, g = self._greet(d.port)
                if g is None or g.code != 220:
                    c.close()
                    return False
                held.append(c)
            return True

        self.assertTrue(smxtest.poll(two_open, 10, 0.2), "could not hold 2 sessions")
        c3, g3 = self._greet(d.port)
        self.assertIsNotNone(g3, "third connection closed without a reply")
        self.assertTrue(str(g3).startswith("421 4.7.0 "), g3)
        self.assertTrue(c3.is_closed(CLOSE_BOUND), "third connection not closed after 421")
        # other addresses are not affected
        c4, g4 = self._greet(d.port, source="127.0.0.2")
        self.assertEqual(g4.code, 220, g4)
        c4.close()
        # the held sessions still work
        for c in held:
            self.assertEqual(c.cmd("NOOP").code, 250)
        # closing one frees a slot (bounded poll: the server sees the close asynchronously)
        held[0].cmd("QUIT")
        held[0].close()

        def slot_free():
            c, g = self._greet(d.port)
            ok = g is not None and g.code == 220
            c.close()
            return ok

        self.assertTrue(smxtest.poll(slot_free, 10, 0.2), "slot not freed after QUIT")


class Timeouts(Base):
    def test_idle_command_timeout(self):
        d = self.daemon(limits={"timeout_command": 2})
        c = self.client(d.port)
        t0 = time.monotonic()
        lines, closed, _ = c.replies_until_closed(15)
        dt = time.monotonic() - t0
        self.assertTrue(closed, "idle connection not closed within 15 s")
        self.assertTrue(lines and lines[0].startswith("421 4.4.2 "), lines)
        self.assertGreaterEqual(dt, 1.5, "closed too early (%.1fs)" % dt)
        self.assertLessEqual(dt, 7, "closed too late (%.1fs)" % dt)

    def test_idle_after_ehlo_in_tls(self):
        d = self.daemon(limits={"timeout_command": 2})
        c = self.tls(d)
        t0 = time.monotonic()
        lines, closed, _ = c.replies_until_closed(15)
        dt = time.monotonic() - t0
        self.assertTrue(closed)
        self.assertTrue(lines and lines[0].startswith("421 4.4.2 "), lines)
        self.assertLessEqual(dt, 7, "closed too late (%.1fs)" % dt)

    def test_idle_in_data(self):
        d = self.daemon(limits={"timeout_data": 2, "timeout_command": 30})
        c = self.tls(d)
        self.assertEqual(c.mail("sender@client.example").code, 250)
        self.assertEqual(c.rcpt("u@example.org").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(b"Subject: slow\r\n\r\npartial")
        t0 = time.monotonic()
        lines, closed, _ = c.replies_until_closed(15)
        dt = time.monotonic() - t0
        self.assertTrue(closed, "not closed within 15 s inside DATA")
        self.assertTrue(lines and lines[0].startswith("421 4.4.2 "), lines)
        self.assertLessEqual(dt, 7, "closed too late (%.1fs)" % dt)
        self.assertEqual(d.all_mail_files(), [])

    def test_idle_after_starttls(self):
        """I.60: idle after 220 Ready to start TLS -> closed after timeout_tls."""
        d = self.daemon(limits={"timeout_tls": 2, "timeout_command": 30})
        c = self.client(d.port)
        c.ehlo()
        self.assertEqual(c.cmd("STARTTLS").code, 220)
        t0 = time.monotonic()
        data, closed = c.read_until_closed(15)
        dt = time.monotonic() - t0
        self.assertTrue(closed, "no close within 15 s of an idle TLS handshake")
        self.assertLessEqual(dt, 7, "closed too late (%.1fs)" % dt)
        self.assertNotIn(b"250", data)

    def test_trickle_command(self):
        """I.59: one byte per second inside a command line (never idle for
        timeout_command) -> 421 4.4.2 within a bounded time, not kept alive forever."""
        d = self.daemon(limits={"timeout_command": 2})
        c = self.client(d.port)
        closed, lines, dt = trickle(c, b"NOOP " + b"a" * 400, 20)
        self.assertTrue(closed, "a client trickling one byte per second was kept for %.0fs" % dt)
        self.assertTrue([l for l in lines if l.startswith("421 4.4.2")], lines)


class MinDataRate(Base):
    """I.59: [limits] min_data_rate (like Postfix's smtpd_min_data_rate). Inside DATA or a
    BDAT chunk the deadline moves forward only by octets/rate seconds per read (never more
    than timeout_data ahead): a client trickling content is cut off, although it is never
    idle for timeout_data; a client at a normal speed is not."""

    LIMITS = {"timeout_data": 3, "timeout_command": 30, "min_data_rate": 500}

    def begin(self, d):
        c = self.tls(d)
        self.assertEqual(c.mail("sender@client.example").code, 250)
        self.assertEqual(c.rcpt("u@example.org").code, 250)
        return c

    def test_trickling_data_cut_off(self):
        d = self.daemon(limits=self.LIMITS)
        c = self.begin(d)
        self.assertEqual(c.cmd("DATA").code, 354)
        closed, lines, dt = trickle(c, b"Subject: slow\r\n\r\n" + b"x" * 100, 20)
        self.assertTrue(closed, "a client sending 1 octet/s in DATA was kept for %.0fs" % dt)
        self.assertTrue([l for l in lines if l.startswith("421 4.4.2 ")], lines)
        self.assertGreaterEqual(dt, 2, "cut off before timeout_data (%.1fs)" % dt)
        self.assertLessEqual(dt, 8, "cut off too late (%.1fs)" % dt)
        self.assertTrue(d.wait_log(r"event=timeout .*phase=data reason=min_data_rate octets=\d+"),
                        d.log_text()[-2000:])
        self.assertEqual(d.all_mail_files(), [])

    def test_trickling_bdat_cut_off(self):
        d = self.daemon(limits=self.LIMITS)
        c = self.begin(d)
        c.send(b"BDAT 100 LAST\r\n")
        closed, lines, dt = trickle(c, b"y" * 100, 20)
        self.assertTrue(closed, "a client sending 1 octet/s in BDAT was kept for %.0fs" % dt)
        self.assertTrue([l for l in lines if l.startswith("421 4.4.2 ")], lines)
        self.assertLessEqual(dt, 8, "cut off too late (%.1fs)" % dt)
        self.assertEqual(d.all_mail_files(), [])

    def test_trickling_kept_without_rate(self):
        """min_data_rate = 0: the old rule, each octet restarts timeout_data (so the rate is
        what cuts the trickling clients above)."""
        d = self.daemon(limits=dict(self.LIMITS, min_data_rate=0))
        c = self.begin(d)
        self.assertEqual(c.cmd("DATA").code, 354)
        closed, lines, dt = trickle(c, b"Subject: slow\r\n\r\n" + b"x" * 7, 7)
        self.assertFalse(closed, "closed after %.1fs although never idle: %r" % (dt, lines))
        c.send(b"\r\n.\r\n")
        r = c.read_reply(CLOSE_BOUND)
        self.assertRegex(str(r), QUEUED_RE)

    def test_normal_speed_mebibyte(self):
        """1 MiB at loopback speed, with the same limits: accepted."""
        d = self.daemon(limits=self.LIMITS)
        c = self.begin(d)
        body = ["%07d " % i + "z" * 70 for i in range((1 << 20) // 79 + 1)]
        t0 = time.monotonic()
        r = c.data(smxtest.simple_message("a mebibyte", body), 30)
        self.assertRegex(str(r), QUEUED_RE, "after %.1fs" % (time.monotonic() - t0))
        files = d.wait_mail("example.org", "u", 1)
        self.assertGreater(os.path.getsize(files[0]), 1 << 20)


class PlainListener(Base):
    def test_require_tls_no_listener(self):
        d = self.daemon(plain_listener=True)
        c = self.client(d.plain_port)
        self.assertEqual(c.greeting.code, 220)
        self.assertEqual(c.ehlo().code, 250)
        self.assertEqual(c.mail("sender@client.example").code, 250)
        self.assertEqual(c.rcpt("plain@example.org").code, 250)
        r = c.data(smxtest.simple_message("plaintext ok", rcpt="plain@example.org"))
        self.assertRegex(str(r), QUEUED_RE)
        files = d.wait_mail("example.org", "plain", 1)
        self.assertEqual(len(files), 1)
        headers, body = smxtest.split_message(smxtest.read_file(files[0]))
        self.assertTrue(headers[0].startswith(b"Received:"), headers[0])
        self.assertRegex(headers[0], rb"\bwith ESMTP\b(?!S)")
        self.assertNotIn(b"ESMTPS", headers[0])
        self.assertNotRegex(headers[0], smxtest.RECEIVED_TLS_RE)
        self.assertEqual(body, [b"hello"])
        # the main listener still requires TLS
        c2 = self.client(d.port)
        c2.ehlo()
        self.assertEqual(str(c2.mail("sender@client.example")), TLS_FIRST)

    def test_plain_listener_still_rejects_relay(self):
        d = self.daemon(plain_listener=True)
        c = self.client(d.plain_port)
        c.ehlo()
        self.assertEqual(c.mail("sender@client.example").code, 250)
        r = c.rcpt("user@elsewhere.net")
        self.assertEqual(str(r), "554 5.7.1 <user@elsewhere.net>: Relay access denied")


if __name__ == "__main__":
    unittest.main()
