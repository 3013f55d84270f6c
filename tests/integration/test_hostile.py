"""Hostile input and faults that no other file covered (issue 6; the case numbers are
those of security-anchors.md §8, the map is docs/security-cases.md):

- H.57: damaged queue entries (a truncated body, a body that is not a message, an
  unreadable body, rows with impossible data) are quarantined at start with
  event=queue_quarantine, and the rest of the queue is delivered;
- H.56: the disk fills up: a 4xx, never a 250, while it is full; mail is accepted again
  and queued mail is delivered, without a restart, when space returns;
- E.23, E.24, E.25, E.26, E.27, E.28, E.30, I.62, A.5, D.19: xtext and quoted parameter
  values, envelope bytes that survive the queue exactly, recipient and error limits under
  a pipelined flood, BDAT floods and resets, NOOP floods, a huge header block, hostile
  SNI, HTTP instead of a ClientHello, a 5000-octet line in BDAT; memory bounded, the
  daemon alive and sanitizer-clean at stop.

Real peers over loopback only (strictmxd on 127.0.0.1, a free port each); every wait is
bounded. The disk-full tests mount small tmpfs file systems (root, as in test_faults.py).
"""
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smxtest  # noqa: E402
from smxtest import QUEUED_RE  # noqa: E402


def cli(d, *args):
    return subprocess.run([smxtest.STRICTMX, "-c", d.conf] + list(args),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


daemon = smxtest.Daemon.with_config


def restart(d, conf_text=None):
    """Stop (clean, sanitizer-checked) and start again on the same data_dir."""
    os.environ["SMX_KEEP_TMP"] = "1"
    try:
        d.stop()
    finally:
        del os.environ["SMX_KEEP_TMP"]
    if conf_text is not None:
        with open(d.conf, "w") as f:
            f.write(conf_text)
    d._stopped = False
    d.start()


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def send(d, subject, rcpt="bob@example.org", sender="a@example.org"):
    c = smxtest.tls_session(d.port)
    try:
        assert c.mail(sender).code == 250
        assert c.rcpt(rcpt).code == 250
        r = c.data(smxtest.simple_message(subject, sender=sender, rcpt=rcpt))
        c.cmd("QUIT")
        return r
    finally:
        c.close()


def mount_tmpfs(test, size):
    mnt = tempfile.mkdtemp(prefix="smx-tmpfs-")
    os.chmod(mnt, 0o755)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "tmpfs", mnt],
                       capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        test.fail("cannot mount a small tmpfs: %s" % r.stderr)
    test.addCleanup(lambda: subprocess.run(["umount", "-l", mnt], timeout=20))
    return mnt


def fill(path):
    """Write a file until the file system is full; returns its path."""
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
        try:  # the last partial pages too
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass
    return path


def blocked_daemon(test):
    """A daemon whose deliveries to bob@example.org are deferred (retried hourly): the
    Maildir is root's and the daemon runs as nobody."""
    d = smxtest.Daemon(start=False)
    os.makedirs(os.path.join(d.data_dir, "mail", "example.org", "bob"))
    with open(d.conf, "a") as f:
        f.write("\n[queue]\nretry_min = 1h\nretry_max = 1h\n")
    d.start()
    test.addCleanup(d.stop)
    return d


def unblock(d):
    subprocess.run(["chown", "-R", "nobody", os.path.join(d.data_dir, "mail")], check=True,
                   timeout=10)


class Quarantine(unittest.TestCase):
    """H.57 and issue 6: 'A corrupted queue entry is quarantined with a log line, the rest
    of the queue keeps flowing.'"""

    def test_damaged_entries_quarantined_rest_delivered(self):
        # bob's Maildir is root's: every delivery is deferred, so the messages
        # wait in the queue while the daemon is stopped and they are damaged
        d = blocked_daemon(self)
        ids = {}
        for name in ("truncated", "garbage", "unreadable", "badrow", "crlf", "state", "badid",
                     "good1", "good2"):
            r = send(d, name)
            self.assertRegex(str(r), QUEUED_RE)
            ids[name] = str(r).split()[-1]
        self.assertTrue(smxtest.poll(lambda: d.log_text().count("result=deferred") >= 9, 20),
                        d.log_text()[-3000:])
        os.environ["SMX_KEEP_TMP"] = "1"
        try:
            d.stop()
        finally:
            del os.environ["SMX_KEEP_TMP"]

        qdir = os.path.join(d.data_dir, "queue")
        body = {k: os.path.join(qdir, v) for k, v in ids.items()}
        with open(body["truncated"], "r+b") as f:
            f.truncate(os.path.getsize(body["truncated"]) // 2)
        size = os.path.getsize(body["garbage"])
        with open(body["garbage"], "wb") as f:  # same length: only the content tells
            f.write((b"\x00\xff\r\n.\r\n" * size)[:size])
        os.chmod(body["unreadable"], 0)  # the daemon runs as nobody
        db = sqlite3.connect(os.path.join(d.data_dir, "queue.db"))
        db.execute("UPDATE rcpt SET local_user = '../../../etc' WHERE msg_id = ?",
                   (ids["badrow"],))
        db.execute("UPDATE message SET sender = 'a@b' || char(13) || char(10) || 'RCPT TO:<x>' "
                   "WHERE id = ?", (ids["crlf"],))
        db.execute("UPDATE rcpt SET state = 7 WHERE msg_id = ?", (ids["state"],))
        # a path for an id (foreign keys are off in this connection): the message row is
        # refused, and its recipients, now without a message, go too
        db.execute("UPDATE message SET id = '../../x' WHERE id = ?", (ids["badid"],))
        db.commit()
        db.close()

        unblock(d)
        d._stopped = False
        d.start()
        self.assertTrue(smxtest.poll(lambda: d.log_text().count("event=queue_recovered") == 2,
                                     30), d.log_text()[-3000:])
        log = d.log_text()
        expect = {"truncated": "size ", "garbage": "not a message",
                  "unreadable": "unreadable: Permission denied", "badrow": "bad local user",
                  "crlf": "bad sender", "state": "bad recipient state",
                  "badid": "recipients without a message"}
        for name, why in expect.items():
            with self.subTest(entry=name):
                line = [l for l in log.splitlines()
                        if "event=queue_quarantine id=%s " % ids[name] in l]
                self.assertEqual(len(line), 1, log[-3000:])
                self.assertIn(why, line[0])
                qpath = os.path.join(d.data_dir, "quarantine", ids[name])
                self.assertTrue(os.path.exists(qpath), qpath)
                self.assertFalse(os.path.exists(body[name]))
                with open(qpath + ".envelope") as f:
                    env = f.read()
                self.assertIn("reason: ", env)
                self.assertIn("rcpt=bob@example.org", env)
        self.assertIn('event=queue_quarantine id=bad-______x reason="bad queue id"', log)
        with open(os.path.join(d.data_dir, "quarantine", "bad-______x.envelope")) as f:
            self.assertIn("message: id=../../x", f.read())
        with open(os.path.join(d.data_dir, "quarantine", ids["crlf"] + ".envelope")) as f:
            self.assertIn("sender=a@b\\x0d\\x0aRCPT TO:<x>", f.read())
        self.assertFalse(os.path.exists(os.path.join(d.data_dir, "..", "x")))
        self.assertIn("quarantined=8", log)
        # nothing of the damaged ones left in the queue, no DSN for them
        r = cli(d, "queue", "flush")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(d.wait_mail("example.org", "bob", 2, timeout=20)), 2,
                         d.log_text()[-3000:])
        got = b"".join(smxtest.read_file(p) for p in d.mail_files("example.org", "bob"))
        self.assertIn(b"Subject: good1", got)
        self.assertIn(b"Subject: good2", got)
        for name in expect:
            self.assertNotIn(b"Subject: " + name.encode(), got)
        self.assertTrue(smxtest.poll(lambda: json.loads(
            cli(d, "queue", "list", "--json").stdout or "[]") == [], 15))
        self.assertNotIn("event=dsn", d.log_text())
        # the queue keeps flowing for new mail, and a second start finds nothing more
        self.assertRegex(str(send(d, "after")), QUEUED_RE)
        self.assertEqual(len(d.wait_mail("example.org", "bob", 3, timeout=20)), 3)
        restart(d)
        self.assertTrue(smxtest.poll(lambda: d.log_text().count("event=queue_recovered") == 3,
                                     30))
        last = [l for l in d.log_text().splitlines() if "event=queue_recovered" in l][-1]
        self.assertIn("messages=0 missing_bodies=0", last)
        self.assertIn("quarantined=0", last)
        self.assertEqual(d.log_text().count("event=queue_quarantine"), 8)

    def test_interrupted_quarantine_is_finished(self):
        """A crash after the body moved but before the rows went: the next start ends the
        move instead of failing the message with a DSN (event=queue_corrupt)."""
        d = blocked_daemon(self)
        r = send(d, "moved")
        self.assertRegex(str(r), QUEUED_RE)
        qid = str(r).split()[-1]
        os.environ["SMX_KEEP_TMP"] = "1"
        try:
            d.stop()
        finally:
            del os.environ["SMX_KEEP_TMP"]
        qdir = os.path.join(d.data_dir, "quarantine")
        os.makedirs(qdir, exist_ok=True)
        os.rename(os.path.join(d.data_dir, "queue", qid), os.path.join(qdir, qid))
        subprocess.run(["chown", "-R", "nobody", qdir], check=True, timeout=10)
        d._stopped = False
        d.start()
        self.assertTrue(smxtest.poll(lambda: d.log_text().count("event=queue_recovered") == 2,
                                     30))
        log = d.log_text()
        self.assertIn("event=queue_quarantine id=%s reason=\"finishing an interrupted "
                      "quarantine\"" % qid, log)
        self.assertNotIn("event=queue_corrupt", log)
        self.assertNotIn("event=dsn", log)
        self.assertEqual(json.loads(cli(d, "queue", "list", "--json").stdout), [])


class DiskFull(unittest.TestCase):
    """H.56 and issue 6: 'data_dir on a small filesystem filled up -> 452 4.3.1 (or 451),
    never 250; delivery resumes when space returns.'"""

    def test_low_space_at_mail(self):
        """H.56 'low free space at MAIL': Postfix's rule, the queue file system must keep
        [limits] queue_minfree plus 1.5 x the announced SIZE free, else 452 4.3.1 at
        MAIL, before any content is sent; the session goes on."""
        mnt = mount_tmpfs(self, "4m")
        d = daemon(data_dir=os.path.join(mnt, "var"))
        self.addCleanup(d.stop)
        c = smxtest.tls_session(d.port)
        self.addCleanup(c.close)
        r = c.cmd("MAIL FROM:<a@x.example> SIZE=3000000")  # 4.5 MB needed, < 4 MB there
        self.assertEqual(str(r), "452 4.3.1 Error: insufficient system storage")
        self.assertEqual(c.cmd("RCPT TO:<u@example.org>").code, 503)  # no transaction
        self.assertEqual(c.cmd("MAIL FROM:<a@x.example> SIZE=1000").code, 250)
        self.assertEqual(c.cmd("RSET").code, 250)
        self.assertTrue(d.wait_log(r"event=low_space .*status=4\.3\.1", 5))
        d.stop()
        # queue_minfree above what the file system has: every MAIL is refused
        d2 = daemon("\n[limits]\nqueue_minfree = 16M\n", data_dir=os.path.join(mnt, "var2"))
        self.addCleanup(d2.stop)
        c2 = smxtest.tls_session(d2.port)
        self.addCleanup(c2.close)
        self.assertEqual(c2.cmd("MAIL FROM:<a@x.example>").code, 452)
        self.assertEqual(d2.all_mail_files(), [])

    def test_full_spool_refuses_then_accepts_when_space_returns(self):
        mnt = mount_tmpfs(self, "4m")
        d = daemon(data_dir=os.path.join(mnt, "var"))
        self.addCleanup(d.stop)
        self.assertRegex(str(send(d, "before")), QUEUED_RE)
        # delivered and its rows gone before the disk fills (see the next test)
        self.assertTrue(d.wait_log(r"event=removed id=", 20), d.log_text()[-2000:])
        filler = fill(os.path.join(mnt, "filler"))
        for i in range(3):
            r = send(d, "while full %d" % i)
            self.assertIn(r.code, (451, 452), str(r))
            self.assertRegex(str(r), r"^45[12] 4\.3\.[01] ")
        self.assertTrue(d.alive())
        self.assertEqual(os.listdir(os.path.join(d.data_dir, "spool")), [])
        os.unlink(filler)
        self.assertRegex(str(send(d, "after")), QUEUED_RE)
        files = d.wait_mail("example.org", "bob", 2, timeout=20)
        got = b"".join(smxtest.read_file(p) for p in files)
        self.assertIn(b"Subject: before", got)
        self.assertIn(b"Subject: after", got)
        self.assertNotIn(b"while full", got)

    def test_results_commit_fails_no_duplicate_storm(self):
        """The disk fills between a delivery and the commit of its result: the message
        must not be delivered again and again while the commit keeps failing: the jobs
        stay active with their results and only the commit is retried (queue.c
        results_done). Expected: at most one copy, and exactly one once space returns."""
        mnt = mount_tmpfs(self, "8m")
        data = os.path.join(mnt, "var")
        bob = os.path.join(data, "mail", "example.org", "bob")
        os.makedirs(bob)  # root's, 0755: the daemon (nobody) cannot deliver yet
        d = daemon("\n[queue]\nretry_min = 1\nretry_max = 1\n", data_dir=data)
        self.addCleanup(d.stop)
        self.assertRegex(str(send(d, "once")), QUEUED_RE)
        self.assertTrue(d.wait_log("result=deferred", 20), d.log_text()[-2000:])
        filler = fill(os.path.join(mnt, "filler"))
        subprocess.run(["chown", "nobody", bob], check=True, timeout=10)
        self.assertTrue(d.wait_log("result=delivered", 20), d.log_text()[-2000:])
        smxtest.poll(lambda: len(d.mail_files("example.org", "bob")) > 1, 3)
        copies_while_full = len(d.mail_files("example.org", "bob"))
        os.unlink(filler)
        self.assertTrue(d.wait_log(r"event=removed id=", 20), d.log_text()[-2000:])
        self.assertLessEqual(copies_while_full, 1)
        self.assertEqual(len(d.mail_files("example.org", "bob")), 1)

    def test_full_maildir_defers_then_delivers_when_space_returns(self):
        mnt = mount_tmpfs(self, "2m")  # the Maildirs only; the queue is elsewhere
        base = os.path.join(mnt, "mail")
        os.makedirs(base)
        d = daemon("\n[local_delivery]\nmaildir = %s\n"
                   "\n[queue]\nretry_min = 1\nretry_max = 2\n" % base)
        self.addCleanup(d.stop)
        subprocess.run(["chown", "-R", "nobody", base], check=True, timeout=10)
        filler = fill(os.path.join(mnt, "filler"))
        for i in range(3):
            self.assertRegex(str(send(d, "queued while full %d" % i)), QUEUED_RE)
        self.assertTrue(smxtest.poll(lambda: d.log_text().count("result=deferred") >= 3, 20),
                        d.log_text()[-3000:])
        new = os.path.join(base, "example.org", "bob", "new")

        def delivered():
            return os.listdir(new) if os.path.isdir(new) else []
        self.assertEqual(delivered(), [])
        os.unlink(filler)
        # no restart, no flush: the retry schedule alone brings them in
        smxtest.poll(lambda: len(delivered()) >= 3, 30)
        self.assertEqual(len(delivered()), 3, d.log_text()[-3000:])
        self.assertTrue(smxtest.poll(lambda: json.loads(
            cli(d, "queue", "list", "--json").stdout or "[]") == [], 15))


class IoError(unittest.TestCase):
    """H.56, what ENOSPC does not cover: the disk answers EIO to a write, an fsync, a
    rename or a link (losefs.py FAULTS rules; a failed fsync leaves nothing durable). A message whose
    spool file or queue row could not be made durable gets a 4xx, never a 250, and is not
    delivered later; a Maildir delivery that fails so is deferred, leaves no message in
    new/, and is delivered once when the disk works again."""

    def setUp(self):
        why = smxtest.fuse_missing()
        if why:
            # make deps-test installs FUSE and python3-fusepy; only a machine without
            # /dev/fuse gets here
            self.skipTest(why)

    def queue_empty(self, d):
        return smxtest.poll(lambda: json.loads(
            cli(d, "queue", "list", "--json").stdout or "[]") == [], 20)

    def test_eio_while_storing_is_a_4xx_and_nothing_refused_is_delivered(self):
        fs = smxtest.LoseFs(self, faults=True)
        d = daemon(data_dir=fs.mnt)
        self.addCleanup(d.stop)
        self.assertRegex(str(send(d, "before")), QUEUED_RE)
        self.assertTrue(d.wait_log(r"event=removed id=", 20), d.log_text()[-2000:])
        rules = ("write EIO /spool/", "rename EIO /queue/", "fsync EIO /queue/", "fsyncdir EIO /queue",
                 "fsync EIO /queue.db", "write EIO /queue.db")
        for rule in rules:
            fs.set_faults(rule)
            r = send(d, "refused: " + rule)
            self.assertRegex(str(r), r"^451 4\.3\.0 ", "%s: %s\n%s"
                             % (rule, r, d.log_text()[-2000:]))
            self.assertTrue(d.alive(), rule)
        self.assertEqual(d.log_text().count("event=store_failed"), len(rules))
        fs.set_faults()
        self.assertRegex(str(send(d, "after")), QUEUED_RE, d.log_text()[-3000:])
        files = d.wait_mail("example.org", "bob", 2, timeout=20)
        self.assertTrue(self.queue_empty(d), cli(d, "queue", "list").stdout)
        got = b"".join(smxtest.read_file(p) for p in d.mail_files("example.org", "bob"))
        self.assertEqual(len(files), 2)
        self.assertIn(b"Subject: before", got)
        self.assertIn(b"Subject: after", got)
        self.assertNotIn(b"refused:", got)

    def test_eio_in_maildir_delivery_defers_then_delivers_once(self):
        fs = smxtest.LoseFs(self, faults=True)
        d = daemon("\n[queue]\nretry_min = 1\nretry_max = 2\n", data_dir=fs.mnt)
        self.addCleanup(d.stop)
        new = os.path.join(fs.mnt, "mail", "example.org", "bob", "new")

        def delivered():
            return sorted(os.listdir(new)) if os.path.isdir(new) else []
        tmp = os.path.join(os.path.dirname(new), "tmp")
        # the queue file is hard-linked into tmp/, renamed into new/, new/ fsync'd; with no
        # hard link (EPERM) it is copied into tmp/ (write, fsync) instead
        rules = (("link EIO /tmp/",), ("rename EIO /new/",), ("fsyncdir EIO /new",),
                 ("link EPERM /tmp/", "write EIO /tmp/"), ("link EPERM /tmp/", "fsync EIO /tmp/"))
        for i, rule in enumerate(rules):
            fs.set_faults(*rule)
            r = str(send(d, "deferred %d" % i))
            self.assertRegex(r, QUEUED_RE, rule)
            qid = r.split()[-1]
            # this message's first attempt, not another's retry
            first = re.compile(r"event=result id=%s .*result=(\w+)" % qid)
            self.assertTrue(d.wait_log(first.pattern, 20), "%s\n%s" % (rule, d.log_text()[-3000:]))
            self.assertEqual(first.search(d.log_text()).group(1), "deferred", rule)
            # what a failed delivery placed is gone: nothing in new/ (it would be a
            # duplicate after the retry), nothing left in tmp/
            self.assertEqual(delivered(), [], rule)
            self.assertEqual(os.listdir(tmp), [], rule)
        fs.set_faults()
        # no restart, no flush: the retry schedule alone brings them in
        smxtest.poll(lambda: len(delivered()) >= len(rules), 30)
        self.assertTrue(self.queue_empty(d), cli(d, "queue", "list").stdout)
        got = [smxtest.read_file(os.path.join(new, n)) for n in delivered()]
        self.assertEqual(len(got), len(rules), d.log_text()[-3000:])
        for i in range(len(rules)):
            self.assertEqual(sum(b"Subject: deferred %d\r\n" % i in g for g in got), 1)


class EnvelopeIntegrity(unittest.TestCase):
    """E.24: envelope fields with every byte the grammar allows reach the queue and come
    back exactly, also after a restart (and are not mistaken for damage); CR, LF and NUL
    never get in."""

    SENDERS = [b'"a b;|$(id)`x`"@x.example', b"-oQ.x@x.example", b'"\\"q\\\\"@x.example',
               b"u+t=%x@[127.0.0.1]", b"", b"\xc3\xa9@x.example"]
    RCPTS = [b'"we ird;|x"@remote.lab', b"u%x=y@remote.lab", b'"a\\\\b"@remote.lab',
             b"-oX@remote.lab"]
    BAD = [b"MAIL FROM:<a\x00b@x.example>\r\n", b"MAIL FROM:<a@x.example> X=\x00\r\n",
           b'MAIL FROM:<"a\rb"@x.example>\r\n', b"MAIL FROM:<a@x.example\n>\r\n"]

    def test_envelope_bytes_survive_the_queue(self):
        dead = smxtest.free_port()
        d = daemon("relay_networks = 127.0.0.0/8\n\n[queue]\nretry_min = 1h\nretry_max = 1h\n"
                   '\n[domain "remote.lab"]\nroute = 127.0.0.1:%d\n' % dead)
        self.addCleanup(d.stop)
        want = {}
        for snd in self.SENDERS:
            c = smxtest.tls_session(d.port)
            try:
                param = b" SMTPUTF8" if any(b > 127 for b in snd) else b""
                self.assertEqual(c.cmd(b"MAIL FROM:<" + snd + b">" + param).code, 250)
                for r in self.RCPTS:
                    self.assertEqual(c.cmd(b"RCPT TO:<" + r + b">").code, 250)
                r = c.data(smxtest.simple_message("e24"))
                self.assertRegex(str(r), QUEUED_RE)
                want[str(r).split()[-1]] = (snd.decode(), sorted(x.decode() for x in self.RCPTS))
            finally:
                c.close()
        for line in self.BAD:
            with self.subTest(line=line):
                c = smxtest.tls_session(d.port)
                try:
                    c.send(line)
                    lines, _closed, _ = c.replies_until_closed(5)
                    self.assertTrue(lines, "no reply to %r" % line)
                    self.assertRegex(lines[0], r"^5\d\d ")
                finally:
                    c.close()

        def listing():
            r = cli(d, "queue", "list", "--json")
            self.assertEqual(r.returncode, 0, r.stderr)
            return {m["id"]: (m["sender"], sorted(x["address"] for x in m["recipients"]))
                    for m in json.loads(r.stdout)}
        self.assertEqual(listing(), want)
        restart(d)
        self.assertTrue(smxtest.poll(lambda: d.log_text().count("event=queue_recovered") == 2,
                                     30))
        self.assertIn("messages=%d missing_bodies=0" % len(want), d.log_text())
        self.assertNotIn("event=queue_quarantine", d.log_text())
        self.assertEqual(listing(), want)


class EsmtpParamValues(unittest.TestCase):
    """E.23, the cases test_parsing.py does not send: xtext and quoted values. strictmx
    offers neither DSN nor AUTH, so ORCPT= and AUTH= are refused, never decoded."""

    def test_orcpt_auth_quoted(self):
        d = daemon()
        self.addCleanup(d.stop)
        c = smxtest.tls_session(d.port)
        self.addCleanup(c.close)
        # E.31 does not apply: no AUTH, not even inside TLS
        self.assertTrue(str(c.cmd("AUTH PLAIN " + "A" * 12289)).startswith("50"))
        self.assertTrue(str(c.cmd("AUTH PLAIN AGFiYwBkZWY=")).startswith("503 5.5.1"))
        for line in ("MAIL FROM:<a@x.example> AUTH=+0A", 'MAIL FROM:<a@x.example> X="a b"',
                     "MAIL FROM:<a@x.example> BODY=8BITMIME+0D+0A"):
            with self.subTest(line=line):
                self.assertIn(c.cmd(line).code, (501, 555))
        self.assertEqual(c.mail("a@x.example").code, 250)
        for line in ("RCPT TO:<u@example.org> ORCPT=rfc822;a+0Ab",
                     "RCPT TO:<u@example.org> NOTIFY=NEVER+0D+0A", 'RCPT TO:<u@example.org> X="q"'):
            with self.subTest(line=line):
                self.assertIn(c.cmd(line).code, (501, 555))
        self.assertEqual(c.rcpt("u@example.org").code, 250)
        self.assertRegex(str(c.data(smxtest.simple_message("params"))), QUEUED_RE)

class HostileSni(unittest.TestCase):
    """E.30: hostile SNI values in the ClientHello (inbound). strictmxd does not select
    by SNI (it is never parsed by our code, only by OpenSSL): the handshake completes
    with the default certificate, nothing crashes. A NUL byte cannot be passed through
    openssl s_client's argv: test_nul_in_sni sends a ClientHello built here."""

    NAMES = ["a\\", "a" * 255, "x" * 63 + "." + "y" * 63, "under_score.example", "é.example",
             "%s%n%x", "-oQ", "a..b"]

    def test_hostile_sni(self):
        d = daemon()
        self.addCleanup(d.stop)
        for name in self.NAMES:
            with self.subTest(sni=name):
                r = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect",
                                    "127.0.0.1:%d" % d.port, "-servername", name,
                                    "-ign_eof"],
                                   input=b"QUIT\r\n", capture_output=True, timeout=30)
                out = r.stdout.decode("utf-8", "replace")
                self.assertIn("221 2.0.0", out, r.stderr.decode("utf-8", "replace")[-500:])
                self.assertTrue(d.alive())
        self.assertNotIn("%n", d.log_text())

    def test_nul_in_sni(self):
        """The name with a NUL (which s_client cannot send) in a ClientHello built here:
        refused by OpenSSL with a fatal alert, no ServerHello, the connection closed, the
        next session served. The same ClientHello with an ordinary name gets a ServerHello,
        so the refusal is the NUL's."""
        d = daemon()
        self.addCleanup(d.stop)
        for name, want in ((b"mx.test.example", "hello"), (b"mx\0.test.example", "alert"),
                           (b"\0", "alert"), (b"mx.test.example\0", "alert")):
            with self.subTest(sni=name):
                c = smxtest.Client(d.port)
                self.addCleanup(c.close)
                self.assertEqual(c.ehlo("client.test.example").code, 250)
                self.assertEqual(c.cmd("STARTTLS").code, 220)
                c.send(client_hello(name))
                if want == "hello":
                    rec = read_record(c)
                    self.assertEqual(rec[:1], b"\x16", rec[:16])  # handshake
                    self.assertEqual(rec[5:6], b"\x02", rec[:16])  # ServerHello
                else:
                    data, closed = c.read_until_closed(10)
                    self.assertTrue(closed, data[:64])
                    # one record, nothing else: a fatal unrecognized_name (112) alert
                    self.assertEqual(data[:1], b"\x15", data[:64])
                    self.assertEqual(len(data), 7, data[:64])
                    self.assertEqual((data[5], data[6]), (2, 112), data)
                c.close()
                self.assertTrue(d.alive())
        c = smxtest.tls_session(d.port)
        self.assertEqual(c.cmd("QUIT").code, 221)
        c.close()
        self.assertNotIn("\0", d.log_text())


def client_hello(sni):
    """A TLS 1.3 ClientHello (TLS 1.2 offered too) whose server_name is sni (bytes, as
    is): X25519 key share, AES-GCM and ChaCha20 suites, ECDSA/RSA-PSS signatures."""
    def vec(n, b):  # a TLS vector: length in n octets, then b
        return len(b).to_bytes(n, "big") + b

    def ext(t, b):
        return t.to_bytes(2, "big") + vec(2, b)
    exts = (ext(0x0000, vec(2, b"\x00" + vec(2, sni)))                    # server_name
            + ext(0x000a, vec(2, b"\x00\x1d\x00\x17"))                     # groups
            + ext(0x000b, vec(1, b"\x00"))                                  # point formats
            + ext(0x000d, vec(2, b"\x04\x03\x08\x04\x08\x09\x04\x01"))     # sig algs
            + ext(0x002b, vec(1, b"\x03\x04\x03\x03"))                     # versions
            + ext(0x0033, vec(2, b"\x00\x1d" + vec(2, os.urandom(32)))))   # key share
    body = (b"\x03\x03" + os.urandom(32) + vec(1, os.urandom(32))
            + vec(2, b"\x13\x01\x13\x02\x13\x03\xc0\x2b\xc0\x2f\xcc\xa9")
            + vec(1, b"\x00") + vec(2, exts))
    hs = b"\x01" + vec(3, body)
    return b"\x16\x03\x01" + vec(2, hs)


def read_record(c, timeout=10):
    """One TLS record (header and body) from the Client's socket, within the bound."""
    deadline = time.monotonic() + timeout
    data = c.buf
    c.buf = b""
    c.sock.settimeout(1)
    while time.monotonic() < deadline:
        if len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[3:5], "big"):
            return data
        try:
            b = c.sock.recv(65536)
        except socket.timeout:
            continue
        if not b:
            break
        data += b
    return data

class Floods(unittest.TestCase):
    """Floods in one session: every limit answers with its code, memory stays bounded
    (RSS growth under RSS_GROWTH_KIB with ASan), the daemon lives."""

    RSS_GROWTH_KIB = 64 * 1024

    def setUp(self):
        self.d = daemon()
        self.addCleanup(self.d.stop)
        self.rss0 = rss_kib(self.d.proc.pid)
        self.peak = self.rss0

    def tearDown(self):
        self.assertTrue(self.d.alive(), self.d.log_text()[-3000:])
        print("%s: RSS %d KiB -> peak %d KiB" % (self.id().split(".")[-1], self.rss0, self.peak),
              file=sys.stderr)
        self.assertLess(self.peak - self.rss0, self.RSS_GROWTH_KIB)

    def sample(self):
        self.peak = max(self.peak, rss_kib(self.d.proc.pid))

    def pipelined(self, c, data, n, stop_code=None):
        """Send data while reading n replies (the peer may answer before it has read
        everything); returns them. One thread: an SSL socket must not be written by
        one thread while another reads it."""
        def tick(k):
            if k % 5000 == 0:
                self.sample()
        stop = (lambda r: r.code != stop_code) if stop_code is not None else None
        out = c.send_reading(data, n, timeout=120, stop=stop, on_reply=tick)
        self.sample()
        return out

    def test_recipient_flood(self):
        """E.25: 1000 recipients pass, the 1001st and later get 452 4.5.3; these count as
        errors, and the 20th error ends the session with 421 (so 10^6 RCPTs cannot grow
        anything)."""
        c = smxtest.tls_session(self.d.port)
        self.addCleanup(c.close)
        data = b"MAIL FROM:<a@x.example>\r\n" + b"".join(
            b"RCPT TO:<u%d@example.org>\r\n" % i for i in range(1019))
        replies = self.pipelined(c, data, 1020)
        self.assertEqual([r.code for r in replies[:1001]], [250] * 1001)
        for r in replies[1001:]:
            self.assertTrue(str(r).startswith("452 4.5.3"), str(r))
        c.send(b"RCPT TO:<one-more@example.org>\r\n")
        lines, closed, _ = c.replies_until_closed(10)
        self.assertTrue(lines and lines[0].startswith("452 4.5.3"), lines)
        self.assertTrue(lines[-1].startswith("421 4.7.0"), lines)
        self.assertTrue(closed)

    def test_noop_flood_one_write(self):
        """I.62: 10^5 pipelined NOOPs in one write: each answered, memory bounded."""
        c = smxtest.tls_session(self.d.port)
        self.addCleanup(c.close)
        replies = self.pipelined(c, b"NOOP\r\n" * 100000, 100000, stop_code=250)
        self.assertEqual(len(replies), 100000)
        self.assertEqual(replies[-1].code, 250)

    def test_bdat_one_byte_chunks(self):
        """E.27: 10^5 one-byte BDAT chunks (a CR and its LF in different chunks): one
        message, exactly the bytes sent, memory bounded."""
        c = smxtest.tls_session(self.d.port)
        self.addCleanup(c.close)
        self.assertEqual(c.mail("a@x.example").code, 250)
        self.assertEqual(c.rcpt("u@example.org").code, 250)
        head = b"Subject: bdat flood\r\n\r\n"
        data = b"BDAT %d\r\n" % len(head) + head + b"".join(
            b"BDAT 1\r\n" + b"a\r\n"[i % 3:i % 3 + 1] for i in range(99999)) + b"BDAT 0 LAST\r\n"
        replies = self.pipelined(c, data, 100001, stop_code=250)
        self.assertRegex(str(replies[-1]), QUEUED_RE)
        files = self.d.wait_mail("example.org", "u", 1, timeout=20)
        self.assertEqual(len(files), 1)
        raw = smxtest.read_file(files[0])
        self.assertTrue(raw.endswith(b"\r\n\r\n" + b"a\r\n" * 33333), raw[-200:])

    def test_bdat_error_then_no_transaction(self):
        """E.27/E.28: after a refused chunk the following chunks, LAST included, are
        refused until RSET; DATA and RCPT without a new MAIL get 503; nothing stored."""
        d = daemon(limits={"message_size": "20000"})
        self.addCleanup(d.stop)
        c = smxtest.tls_session(d.port)
        self.addCleanup(c.close)
        self.assertEqual(c.mail("a@x.example").code, 250)
        self.assertEqual(c.rcpt("u@example.org").code, 250)
        c.send(b"BDAT 30000\r\n" + b"y" * 30000)
        self.assertTrue(str(c.read_reply(10)).startswith("552 5.3.4"))
        c.send(b"BDAT 5\r\nhello")
        self.assertEqual(c.read_reply(10).code, 503)
        c.send(b"BDAT 0 LAST\r\n")
        self.assertEqual(c.read_reply(10).code, 503)
        self.assertEqual(c.cmd("DATA").code, 503)
        self.assertEqual(c.cmd("RCPT TO:<u@example.org>").code, 503)
        self.assertEqual(c.cmd("RSET").code, 250)
        self.assertEqual(d.all_mail_files(), [])
        self.assertNotIn("event=queued", d.log_text())

    def test_long_header_block(self):
        """E.26: [limits] header_size (default 1 MiB). A header of 10^5 continuation lines
        of 23 octets (2.3 MB, under message_size) -> 552 5.3.4 at the end of data, nothing
        stored; 10^5 continuation lines of 4 octets (400 KB) pass; a 200 KiB header line is
        over text_line_length (550)."""
        c = smxtest.tls_session(self.d.port)
        self.addCleanup(c.close)
        self.assertEqual(c.mail("a@x.example").code, 250)
        self.assertEqual(c.rcpt("u@example.org").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        body = (b"Subject: hdr\r\nX-Long: a\r\n" + b" continuation-line-x\r\n" * 100000
                + b"\r\nbody\r\n.\r\n")
        r = self.pipelined(c, body, 1)[0]
        self.assertEqual(str(r), "552 5.3.4 Error: message header too big (limit 1048576 octets)")
        self.assertTrue(self.d.wait_log(r"event=reject .*reason=header_too_big limit=1048576"))
        self.assertEqual(self.d.all_mail_files(), [])
        self.assertNotIn("event=accepted", self.d.log_text())
        self.assertEqual(c.mail("a@x.example").code, 250)
        self.assertEqual(c.rcpt("u@example.org").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        body = b"Subject: hdr\r\nX-Long: a\r\n" + b" b\r\n" * 100000 + b"\r\nbody\r\n.\r\n"
        r = self.pipelined(c, body, 1)[0]
        self.assertRegex(str(r), QUEUED_RE)
        self.assertEqual(c.mail("a@x.example").code, 250)
        self.assertEqual(c.rcpt("u@example.org").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        r = self.pipelined(c, b"X-Huge: " + b"h" * 204800 + b"\r\n\r\nb\r\n.\r\n", 1)[0]
        self.assertTrue(str(r).startswith("550 5.6.0"), str(r))

    def test_bdat_long_line(self):
        """D.19 at the door: a 5000-octet line in BDAT is refused like in DATA, so no line
        over 998 octets can enter the queue and be relayed (default text_line_length)."""
        c = smxtest.tls_session(self.d.port)
        self.addCleanup(c.close)
        self.assertEqual(c.mail("a@x.example").code, 250)
        self.assertEqual(c.rcpt("u@example.org").code, 250)
        chunk = b"Subject: long\r\n\r\n" + b"L" * 5000 + b"\r\n"
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        r = c.read_reply(10)
        self.assertTrue(str(r).startswith("550 5.6.0"), str(r))
        self.assertEqual(self.d.all_mail_files(), [])

    def test_http_after_starttls_220(self):
        """A.5: an HTTP request where the ClientHello should be: closed, never an SMTP
        reply in plaintext."""
        c = smxtest.Client(self.d.port)
        self.addCleanup(c.close)
        c.ehlo()
        self.assertEqual(c.cmd("STARTTLS").code, 220)
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data, closed = c.read_until_closed(70)
        self.assertTrue(closed)
        self.assertNotRegex(data, rb"(^|\n)[2-5]\d\d[ -]")

class Pregreet(unittest.TestCase):
    """E.29: [server] greet_wait holds the 220 back; a client that talks first is
    logged and refused (554) and disconnected; a client that waits is served."""

    def setUp(self):
        self.d = smxtest.Daemon(server={"greet_wait": "1"})
        self.addCleanup(self.d.stop)

    def test_talker_refused(self):
        c = smxtest.Client(self.d.port, read_greeting=False)
        self.addCleanup(c.close)
        c.send(b"EHLO early.example\r\n")
        r = c.read_reply(5)
        self.assertEqual(r.code, 554, str(r))
        self.assertIn("talked before the greeting", str(r))
        self.assertTrue(c.is_closed(5))
        self.assertTrue(self.d.wait_log(r"event=pregreet .*bytes=20 data=\"EHLO early", 5))
        self.assertNotIn("220 ", str(r))

    def test_patient_client_served(self):
        t0 = time.monotonic()
        c = smxtest.Client(self.d.port)  # reads the greeting
        self.addCleanup(c.close)
        self.assertGreaterEqual(time.monotonic() - t0, 0.9)
        self.assertEqual(c.greeting.code, 220)
        c.close()
        r = smxtest.send_mail(self.d.port, "after the wait")
        self.assertRegex(str(r), QUEUED_RE)
        self.assertNotIn("event=pregreet", self.d.log_text())


if __name__ == "__main__":
    unittest.main(verbosity=2)
