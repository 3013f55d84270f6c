"""Faults and hostile input across the whole path (issue 6):
- kill -9 right after "250 queued": nothing is lost, the restarted daemon has it;
- the disk fills up during DATA: a 4xx, never a 250, and the daemon goes on;
- SMTP smuggling through strictmx as a relay to a real Postfix: a BDAT chunk may
  legitimately hold "\\r\\n.\\r\\n"; relayed with DATA it must be dot-stuffed, so
  Postfix receives ONE message, never a second, smuggled one."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smxtest  # noqa: E402
from mxbed import PostfixMX, TestCA  # noqa: E402


class session:
    """with session(port) as c: an smxtest.Client that is always closed."""

    def __init__(self, port, timeout=10.0):
        self.c = smxtest.Client(port, timeout=timeout)

    def __enter__(self):
        return self.c

    def __exit__(self, *exc):
        self.c.close()


def cli(d, *args):
    return subprocess.run([smxtest.STRICTMX, "-c", d.conf] + list(args),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


daemon = smxtest.Daemon.with_config


class Durability(unittest.TestCase):
    def test_kill9_after_250_loses_nothing(self):
        dead = smxtest.free_port()
        d = daemon("relay_networks = 127.0.0.0/8\n\n[queue]\nretry_min = 1h\n"
                   '\n[domain "later.lab"]\nroute = 127.0.0.1:%d\n' % dead)
        self.addCleanup(d.stop)
        ids = []
        for i in range(3):
            with session(d.port) as c:
                c.ehlo()
                c.starttls()
                c.ehlo()
                self.assertEqual(c.cmd("MAIL FROM:<a@example.org>").code, 250)
                self.assertEqual(c.cmd("RCPT TO:<z@later.lab>").code, 250)
                self.assertEqual(c.cmd("DATA").code, 354)
                r = c.cmd("Subject: durable %d\r\n\r\nbody\r\n." % i)
                self.assertEqual(r.code, 250, str(r))
                ids.append(str(r).split("queued as ")[1].strip())
        # no SIGTERM, no flush: the process dies at once
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        d._stopped = False
        d.start()
        listing = json.loads(cli(d, "queue", "list", "--json").stdout)
        self.assertEqual(sorted(m["id"] for m in listing), sorted(ids))
        for qid in ids:
            self.assertTrue(os.path.exists(os.path.join(d.data_dir, "queue", qid)))

    def test_disk_full_during_data_is_a_4xx(self):
        mnt = tempfile.mkdtemp(prefix="smx-tmpfs-")
        os.chmod(mnt, 0o755)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs", mnt],
                           capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            self.fail("cannot mount a small tmpfs for the disk-full test: %s" % r.stderr)
        self.addCleanup(lambda: subprocess.run(["umount", "-l", mnt], timeout=20))
        d = daemon(data_dir=os.path.join(mnt, "var"))
        self.addCleanup(d.stop)
        # 4 MB of body (after a header, so [limits] header_size does not apply first):
        # more than the file system holds
        big = "Subject: big\r\n\r\n" + ("x" * 998 + "\r\n") * 4000
        with session(d.port, timeout=60) as c:
            c.ehlo()
            c.starttls()
            c.ehlo()
            self.assertEqual(c.cmd("MAIL FROM:<a@example.org>").code, 250)
            self.assertEqual(c.cmd("RCPT TO:<bob@example.org>").code, 250)
            self.assertEqual(c.cmd("DATA").code, 354)
            c.send(big)
            r = c.cmd(".", timeout=60)
            self.assertEqual(r.code, 451, str(r))
            self.assertTrue(str(r).startswith("451 4.3.0"), str(r))
            # the daemon goes on, and a small message fits again
            self.assertEqual(c.cmd("MAIL FROM:<a@example.org>").code, 250)
            self.assertEqual(c.cmd("RCPT TO:<bob@example.org>").code, 250)
            self.assertEqual(c.cmd("DATA").code, 354)
            self.assertEqual(c.cmd("Subject: small\r\n\r\nfits\r\n.").code, 250)
        self.assertTrue(d.wait_mail("example.org", "bob", 1, timeout=10))
        self.assertIn("event=store_failed", d.log_text())
        # the failed spool file was removed
        spool = os.path.join(d.data_dir, "spool")
        self.assertEqual(os.listdir(spool), [])


class SmugglingThroughRelay(unittest.TestCase):
    def test_bdat_dot_line_relayed_to_postfix_is_one_message(self):
        ca = TestCA()
        self.addCleanup(ca.close)
        mx = PostfixMX("127.0.0.91", ca, tls="valid", host="mx.smuggle.lab")
        mx.start()
        self.addCleanup(mx.stop)
        d = daemon("relay_networks = 127.0.0.0/8\n"
                   "\n[outbound]\nca_file = %s\n"
                   '\n[domain "smuggle.lab"]\nroute = 127.0.0.91:25\nmatch = mx.smuggle.lab\n'
                   % ca.ca_file)
        self.addCleanup(d.stop)
        # BDAT content is literal (RFC 3030): this chunk holds a whole "second
        # message" after a line with a single dot
        chunk = (b"Subject: outer\r\n\r\nfirst part\r\n.\r\n"
                 b"MAIL FROM:<spoof@evil.lab>\r\nRCPT TO:<victim@smuggle.lab>\r\nDATA\r\n"
                 b"Subject: smuggled\r\n\r\nevil\r\n.\r\n"
                 b"QUIT\r\n"
                 b"..leading dot line\r\n"
                 b"last line\r\n")
        with session(d.port) as c:
            c.ehlo()
            c.starttls()
            c.ehlo()
            self.assertEqual(c.cmd("MAIL FROM:<a@example.org>").code, 250)
            self.assertEqual(c.cmd("RCPT TO:<victim@smuggle.lab>").code, 250)
            c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
            r = c.read_reply()
            self.assertEqual(r.code, 250, str(r))
        msgs = mx.wait_messages(1, 60)
        self.assertTrue(msgs, d.log_text())
        # give a smuggled second message every chance to show up, bounded
        smxtest.poll(lambda: len(mx.messages()) > 1, 5)
        msgs = mx.messages()
        self.assertEqual(len(msgs), 1, [m[:200] for m in msgs])
        body = msgs[0].replace(b"\r\n", b"\n")
        self.assertIn(b"Subject: outer", body)
        self.assertIn(b"\n.\nMAIL FROM:<spoof@evil.lab>\n", body)  # content, one message
        self.assertIn(b"Subject: smuggled", body)
        self.assertIn(b"\n..leading dot line\n", body)  # stuffed once, unstuffed once
        log = mx.log()
        self.assertNotIn("spoof@evil.lab", log if isinstance(log, str) else log.decode())


# security-anchors.md §2.3: every end-of-data sequence a smuggler may try
EOD_SEQUENCES = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r.\n", b"\n.\r", b"\r.\r\n",
                 b"\r\n.\n", b"\r\n.\r", b"\r\n\x00.\r\n", b"\r\n.\x00\r\n",
                 b"\r\n.\r\r\n", b"\r\r\n.\r\r\n"]


class SmugglingSequencesThroughRelay(unittest.TestCase):
    """Each sequence, sent to strictmx (relaying to a real Postfix) inside DATA followed by
    a complete second transaction: strictmx refuses the message (never a 250 for it), and
    Postfix never sees a message from the smuggled sender."""

    def test_no_second_message_ever(self):
        ca = TestCA()
        self.addCleanup(ca.close)
        mx = PostfixMX("127.0.0.92", ca, tls="valid", host="mx.smuggle2.lab")
        mx.start()
        self.addCleanup(mx.stop)
        d = daemon("relay_networks = 127.0.0.0/8\n"
                   "\n[outbound]\nca_file = %s\n"
                   '\n[domain "smuggle2.lab"]\nroute = 127.0.0.92:25\nmatch = mx.smuggle2.lab\n'
                   % ca.ca_file)
        self.addCleanup(d.stop)
        for seq in EOD_SEQUENCES:
            with session(d.port) as c:
                c.ehlo()
                c.starttls()
                c.ehlo()
                self.assertEqual(c.cmd("MAIL FROM:<a@example.org>").code, 250)
                self.assertEqual(c.cmd("RCPT TO:<victim@smuggle2.lab>").code, 250)
                self.assertEqual(c.cmd("DATA").code, 354)
                c.send(b"Subject: carrier\r\n\r\nA" + seq +
                       b"MAIL FROM:<spoof@evil.lab>\r\nRCPT TO:<victim@smuggle2.lab>\r\n"
                       b"DATA\r\nSubject: smuggled\r\n\r\nB\r\n.\r\n")
                lines, closed, _ = c.replies_until_closed(15)
                self.assertTrue(lines, "no reply for %r" % seq)
                self.assertTrue(lines[0].startswith("550 "), (seq, lines))
                self.assertFalse(any("queued as" in l for l in lines), (seq, lines))
                self.assertTrue(closed, seq)
        # one clean message after all that: it arrives, and it is the only one
        with session(d.port) as c:
            c.ehlo()
            c.starttls()
            c.ehlo()
            self.assertEqual(c.cmd("MAIL FROM:<a@example.org>").code, 250)
            self.assertEqual(c.cmd("RCPT TO:<victim@smuggle2.lab>").code, 250)
            self.assertEqual(c.cmd("DATA").code, 354)
            self.assertEqual(c.cmd("Subject: clean\r\n\r\nok\r\n.").code, 250)
        self.assertTrue(mx.wait_messages(1, 60), d.log_text())
        smxtest.poll(lambda: len(mx.messages()) > 1, 3)
        msgs = mx.messages()
        self.assertEqual(len(msgs), 1)
        self.assertIn(b"Subject: clean", msgs[0])
        log = mx.log()
        self.assertNotIn("spoof@evil.lab", log if isinstance(log, str) else log.decode())


if __name__ == "__main__":
    unittest.main()
