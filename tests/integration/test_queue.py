"""The durable queue, seen from outside: `strictmx queue` while the daemon runs,
retries, expiry with an RFC 3464 failure DSN to a local sender, and a restart
that loses nothing."""
import email
import email.policy
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smxtest  # noqa: E402


def cli(d, *args):
    return subprocess.run([smxtest.STRICTMX, "-c", d.conf] + list(args),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


def swaks(port, to, frm="a@example.org", subject="queue test"):
    return subprocess.run(["swaks", "--server", "127.0.0.1:%d" % port, "--tls", "--to", to,
                           "--from", frm, "--header", "Subject: " + subject,
                           "--timeout", "20"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


daemon = smxtest.Daemon.with_config


class QueueCli(unittest.TestCase):
    def setUp(self):
        # a local next hop that is down: mail stays queued, retried hourly
        self.dead = smxtest.free_port()
        self.d = daemon("\n[local_delivery]\nlmtp = 127.0.0.1:%d\n"
                        "\n[queue]\nretry_min = 1h\nretry_max = 1h\n" % self.dead)
        self.addCleanup(self.d.stop)

    def queued_ids(self):
        r = cli(self.d, "queue", "list", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        return [m["id"] for m in json.loads(r.stdout)]

    def test_list_show_flush_delete(self):
        r = swaks(self.d.port, "bob@example.org")
        self.assertIn("250 2.0.0 Ok: queued as", r.stdout)
        qid = r.stdout.split("queued as ")[1].split()[0]
        self.assertTrue(smxtest.poll(lambda: "result=deferred" in self.d.log_text(), 15))

        listing = json.loads(cli(self.d, "queue", "list", "--json").stdout)
        self.assertEqual([m["id"] for m in listing], [qid])
        msg = listing[0]
        self.assertEqual(msg["sender"], "a@example.org")
        self.assertEqual(msg["recipients"][0]["address"], "bob@example.org")
        self.assertEqual(msg["recipients"][0]["state"], "queued")
        self.assertEqual(msg["recipients"][0]["attempts"], 1)
        self.assertIn("local delivery failed", msg["recipients"][0]["reason"])

        text = cli(self.d, "queue", "list").stdout
        self.assertIn(qid, text)
        self.assertIn("<bob@example.org> queued", text)
        shown = cli(self.d, "queue", "show", qid)
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertIn("sender:   <a@example.org>", shown.stdout)
        self.assertIn("next attempt", shown.stdout)

        # flush: the daemon retries now (attempt 2), not in an hour
        r = cli(self.d, "queue", "flush")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("notified", r.stdout)
        self.assertTrue(smxtest.poll(lambda: "attempt=2" in self.d.log_text(), 15),
                        self.d.log_text())

        r = cli(self.d, "queue", "delete", qid)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.queued_ids(), [])
        self.assertFalse(os.path.exists(os.path.join(self.d.data_dir, "queue", qid)))
        r = cli(self.d, "queue", "show", qid)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no message", r.stderr)

    def test_restart_keeps_the_queue(self):
        for i in range(5):
            r = swaks(self.d.port, "bob@example.org", subject="restart %d" % i)
            self.assertIn("250 2.0.0 Ok: queued as", r.stdout)
        os.environ["SMX_KEEP_TMP"] = "1"  # the same data_dir is started again
        try:
            self.d.stop()
        finally:
            del os.environ["SMX_KEEP_TMP"]
        self.d._stopped = False
        self.d.start()
        # the daemon listens before it has opened the queue: wait for it
        self.assertTrue(smxtest.poll(lambda: "event=queue_recovered messages=5 missing_bodies=0"
                                     in self.d.log_text(), 30), self.d.log_text())
        self.assertEqual(len(self.queued_ids()), 5)


class ExpiryDsn(unittest.TestCase):
    def test_expired_message_bounces_to_local_sender(self):
        dead = smxtest.free_port()
        d = daemon("relay_networks = 127.0.0.0/8\n"
                   "\n[queue]\nretry_min = 1\nretry_max = 1\nmax_queue_lifetime = 2\n"
                   '\n[domain "remote.lab"]\nroute = 127.0.0.1:%d\n' % dead)
        self.addCleanup(d.stop)
        # the [server] block is written first by smxtest; relay_networks above is
        # appended after the local_domains line, still inside [server]
        r = swaks(d.port, "carol@remote.lab", frm="alice@example.org", subject="will expire")
        self.assertIn("250 2.0.0 Ok: queued as", r.stdout, r.stdout)
        qid = r.stdout.split("queued as ")[1].split()[0]
        files = d.wait_mail("example.org", "alice", 1, timeout=30)
        self.assertTrue(files, d.log_text())
        with open(files[0], "rb") as f:
            dsn = email.message_from_binary_file(f, policy=email.policy.default)
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        self.assertEqual(dsn.get_param("report-type"), "delivery-status")
        self.assertEqual(dsn["To"].addresses[0].addr_spec, "alice@example.org")
        parts = list(dsn.iter_parts())
        self.assertEqual([p.get_content_type() for p in parts],
                         ["text/plain", "message/delivery-status", "text/rfc822-headers"])
        self.assertIn("carol@remote.lab", parts[0].get_content())
        status = parts[1].as_string()
        self.assertIn("Reporting-MTA: dns; mx.test.example", status)
        self.assertIn("Final-Recipient: rfc822; carol@remote.lab", status)
        self.assertIn("Action: failed", status)
        self.assertRegex(status, r"Status: 5\.\d+\.\d+")
        self.assertIn("Subject: will expire", parts[2].as_string())
        self.assertIn(qid, parts[0].get_content())
        # the DSN went out with the null sender, and the original is gone
        self.assertTrue(smxtest.poll(lambda: "event=removed id=%s" % qid in d.log_text(), 10))


class DelayWarning(unittest.TestCase):
    def test_delayed_dsn_once_while_still_queued(self):
        dead = smxtest.free_port()
        d = daemon("relay_networks = 127.0.0.0/8\n"
                   "\n[queue]\nretry_min = 1\nretry_max = 1\ndelay_warning_time = 1\n"
                   '\n[domain "slow.lab"]\nroute = 127.0.0.1:%d\n' % dead)
        self.addCleanup(d.stop)
        r = swaks(d.port, "dave@slow.lab", frm="alice@example.org", subject="slow one")
        self.assertIn("250 2.0.0 Ok: queued as", r.stdout)
        files = d.wait_mail("example.org", "alice", 1, timeout=30)
        self.assertTrue(files, d.log_text())
        dsn = email.message_from_binary_file(open(files[0], "rb"), policy=email.policy.default)
        self.assertIn("Delayed Mail", dsn["Subject"])
        human, status, _ = list(dsn.iter_parts())
        self.assertIn("Action: delayed", status.as_string())
        self.assertIn("do not need to send it again", human.get_content())
        # still queued, and warned only once
        self.assertTrue(smxtest.poll(lambda: d.log_text().count("result=deferred") >= 3, 20))
        self.assertEqual(d.log_text().count("action=delayed"), 1)


class Discard(unittest.TestCase):
    """[local_delivery] discard = yes: accepted durably (250 after the commit),
    then dropped like Postfix's discard transport; no Maildir file, queue empty."""

    def test_discard(self):
        d = daemon("\n[local_delivery]\ndiscard = yes\n")
        self.addCleanup(d.stop)
        for i in range(3):
            r = smxtest.send_mail(d.port, "discard %d" % i)
            self.assertEqual(r.code, 250, r)
        self.assertTrue(smxtest.poll(
            lambda: d.log_text().count("event=removed") >= 3, 15), d.log_text())
        self.assertEqual(d.log_text().count("mx=discard result=delivered"), 3)
        self.assertEqual(d.all_mail_files(), [])
        self.assertEqual(json.loads(cli(d, "queue", "list", "--json").stdout), [])



class ResultsDurability(unittest.TestCase):
    """A delivery's result is committed without an fsync of its own: the body of a
    delivered message leaves data_dir/queue/ once the WAL was fsync'd, by the next
    message's commit or, with no more mail, by the queue within ~100 ms."""

    def queue_files(self, d):
        q = os.path.join(d.data_dir, "queue")
        return [n for n in os.listdir(q) if not n.startswith(".")]

    def test_body_removed_without_further_mail(self):
        d = daemon("")
        self.addCleanup(d.stop)
        r = smxtest.send_mail(d.port, "one")
        self.assertEqual(r.code, 250, r)
        self.assertEqual(len(d.wait_mail("example.org", "u")), 1)
        # nothing else arrives: only the queue's own fsync of the WAL removes it
        self.assertTrue(smxtest.poll(lambda: self.queue_files(d) == [], 5),
                        self.queue_files(d))
        log = d.log_text()
        self.assertLess(log.index("result=delivered"), log.index("event=removed"))
        # a restart neither delivers it again nor finds anything to recover
        os.environ["SMX_KEEP_TMP"] = "1"  # the same data_dir is started again
        try:
            d.stop()
        finally:
            del os.environ["SMX_KEEP_TMP"]
        d._stopped = False
        d.start()
        self.assertTrue(smxtest.poll(lambda: "event=queue_recovered messages=0"
                                     in d.log_text(), 30), d.log_text())
        r = smxtest.send_mail(d.port, "two")
        self.assertEqual(r.code, 250, r)
        files = d.wait_mail("example.org", "u", count=2)
        self.assertEqual(len(files), 2)
        self.assertTrue(smxtest.poll(lambda: self.queue_files(d) == [], 5))
        self.assertEqual(len(d.mail_files("example.org", "u")), 2)



class ArrivingRecovery(unittest.TestCase):
    """The group commit's two stages run at once (docs/queue.md): a crash between a
    commit and its settlement leaves recipients ARRIVING (state 3). At start, a message
    whose body is whole is kept and delivered (its 250 may have been sent); one whose
    body is missing or cut short is dropped: stage 1 never finished, so no 250 was
    sent. Neither is damage: no queue_corrupt, no quarantine, no DSN."""

    BODY = b"Subject: %s\r\nFrom: <a@client.example>\r\n\r\nbody of %s\r\n"

    def test_arriving_rows_settled_at_start(self):
        base = tempfile.mkdtemp(prefix="smx-arriving-")
        os.chmod(base, 0o755)
        self.addCleanup(shutil.rmtree, base, True)
        data = os.path.join(base, "var")
        d = daemon(data_dir=data)
        d.stop()  # the schema and the directories exist, owned by the daemon's user
        db = sqlite3.connect(os.path.join(data, "queue.db"))
        qdir = os.path.join(data, "queue")
        owner = os.stat(qdir)
        cases = {"25XW7KEPT0000000000A": "whole", "25XW7MISSING00000000B": "missing",
                 "25XW7SHORT0000000000C": "short"}
        for qid, kind in cases.items():
            body = self.BODY % (kind.encode(), qid.encode())
            db.execute("INSERT INTO message (id, sender, created, size, client_ip, tls) "
                       "VALUES (?, 'a@client.example', strftime('%s','now'), ?, "
                       "'127.0.0.1', 1)", (qid, len(body)))
            db.execute("INSERT INTO rcpt (msg_id, rcpt, domain, local_user, next_try, state) "
                       "VALUES (?, 'bob@example.org', 'example.org', 'bob', 0, 3)", (qid,))
            if kind != "missing":
                path = os.path.join(qdir, qid)
                with open(path, "wb") as f:
                    f.write(body if kind == "whole" else body[:20])
                os.chown(path, owner.st_uid, owner.st_gid)
        db.commit()
        db.close()
        d2 = daemon(data_dir=data)
        self.addCleanup(d2.stop)
        files = d2.wait_mail("example.org", "bob", 1, timeout=20)
        self.assertTrue(smxtest.poll(lambda: json.loads(
            cli(d2, "queue", "list", "--json").stdout or "[]") == [], 20),
            cli(d2, "queue", "list").stdout)
        log = d2.log_text()
        self.assertRegex(log, r"event=queue_unacknowledged id=25XW7KEPT0000000000A action=kept")
        self.assertRegex(log, r'event=queue_unacknowledged id=25XW7MISSING00000000B '
                              r'action=dropped reason="body file missing"')
        self.assertRegex(log, r'event=queue_unacknowledged id=25XW7SHORT0000000000C '
                              r'action=dropped reason="size \d+, envelope says \d+"')
        self.assertRegex(log, r"unacknowledged_kept=1 unacknowledged_dropped=2")
        for bad in ("event=queue_corrupt", "event=queue_quarantine", "event=dsn"):
            self.assertNotIn(bad, log)
        self.assertEqual(len(d2.mail_files("example.org", "bob")), 1)
        with open(files[0], "rb") as f:
            self.assertIn(b"body of 25XW7KEPT0000000000A", f.read())
        self.assertFalse(os.path.exists(os.path.join(data, "quarantine")) and
                         os.listdir(os.path.join(data, "quarantine")))


if __name__ == "__main__":
    unittest.main()
