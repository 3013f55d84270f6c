"""strictmx relaying to strictmx: the sending side must verify the receiving
side's certificate (PKIX, test CA) before MAIL is sent; a name mismatch defers
(or bounces with tls_failure = bounce) with the failed check named."""
import email
import re
import email.policy
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smxtest  # noqa: E402


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True,
                   timeout=60, stdin=subprocess.DEVNULL)


class Pki:
    """A throw-away CA and one leaf for mx.b.lab."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="smx-pki-")
        os.chmod(self.dir, 0o755)
        d = self.dir
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "30",
                "-subj", "/CN=strictmx test CA", cwd=d)
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "mx.key", "-out", "mx.csr", "-subj", "/CN=mx.b.lab", cwd=d)
        with open(os.path.join(d, "ext"), "w") as f:
            f.write("subjectAltName=DNS:mx.b.lab\n")
        openssl("x509", "-req", "-in", "mx.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", "mx.crt", "-days", "10", "-extfile", "ext", cwd=d)
        for n in ("mx.key", "mx.crt", "ca.crt"):
            os.chmod(os.path.join(d, n), 0o644)
        self.ca = os.path.join(d, "ca.crt")
        self.cert = os.path.join(d, "mx.crt")
        self.key = os.path.join(d, "mx.key")


def swaks(port, to, frm="x@a.lab", subject="relay test"):
    return subprocess.run(["swaks", "--server", "127.0.0.1:%d" % port, "--tls", "--to", to,
                           "--from", frm, "--header", "Subject: " + subject,
                           "--body", "relay body marker", "--timeout", "20"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def receiver(pki, domains="b.lab"):
    d = smxtest.Daemon(start=False)
    text = open(d.conf).read().replace("local_domains = example.org",
                                       "local_domains = " + domains)
    text += "tls_cert = %s\ntls_key = %s\n" % (pki.cert, pki.key)
    with open(d.conf, "w") as f:
        f.write(text)
    d.start()
    return d


def sender(pki, port, extra=""):
    d = smxtest.Daemon(start=False)
    text = open(d.conf).read().replace("local_domains = example.org", "local_domains = a.lab")
    text += ("relay_networks = 127.0.0.0/8\n"
             "\n[outbound]\nca_file = %s\nconnect_timeout = 5\ncommand_timeout = 10\n"
             "\n[queue]\nretry_min = 1h\n"
             '\n[domain "b.lab"]\nroute = 127.0.0.1:%d\nmatch = mx.b.lab\n'
             '\n[domain "wrong.lab"]\nroute = 127.0.0.1:%d\n' % (pki.ca, port, port)) + extra
    with open(d.conf, "w") as f:
        f.write(text)
    d.start()
    return d


class Relay(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pki = Pki()

    def test_verified_delivery(self):
        b = receiver(self.pki)
        self.addCleanup(b.stop)
        a = sender(self.pki, b.port)
        self.addCleanup(a.stop)
        r = swaks(a.port, "bob@b.lab")
        self.assertIn("250 2.0.0 Ok: queued as", r.stdout, r.stdout)
        files = b.wait_mail("b.lab", "bob", 1, timeout=20)
        self.assertTrue(files, a.log_text())
        msg = open(files[0], "rb").read()
        # two Received lines: the receiving MX's (over TLS from the relay) and the relay's
        self.assertEqual(msg.count(b"Received: from"), 2, msg[:600])
        self.assertIn(b"relay body marker", msg)
        log = a.log_text()
        self.assertRegex(log, r"event=delivery id=\S+ rcpt=<bob@b.lab> mx=mx.b.lab ip=127.0.0.1 "
                              r"tls=\"TLSv1\.3 with cipher \S+ \(\d+/\d+ bits\)\" verified=pkix "
                              r"result=delivered")
        self.assertTrue(smxtest.poll(lambda: "event=removed" in a.log_text(), 10))

    def test_connection_reuse(self):
        b = receiver(self.pki)
        self.addCleanup(b.stop)
        a = sender(self.pki, b.port)
        self.addCleanup(a.stop)
        n = 4
        for i in range(n):
            r = swaks(a.port, "bob@b.lab", subject="reuse %d" % i)
            self.assertIn("250 2.0.0 Ok: queued as", r.stdout)
        files = smxtest.poll(lambda: len(b.mail_files("b.lab", "bob")) >= n and
                             b.mail_files("b.lab", "bob"), 30)
        self.assertTrue(files, a.log_text())
        self.assertEqual(len(files), n)
        # the messages came close together: later ones went over the first
        # verified connection (RSET between), not over new ones
        self.assertGreaterEqual(a.log_text().count("event=conn_reused"), 1, a.log_text())
        connects = b.log_text().count("event=connect ")
        self.assertLess(connects, n + 1, b.log_text())  # +1: the readiness probe
        # the sender records a result after the MX has the message: wait for the last
        self.assertTrue(smxtest.poll(lambda: len(re.findall(
            r"event=result .* result=delivered", a.log_text())) >= n, 10), a.log_text())
        self.assertEqual(len(re.findall(r"event=result .* result=delivered", a.log_text())), n)

    def test_per_domain_connection_limit(self):
        """[outbound] max_connections_per_domain holds when one scan finds many due
        messages for the domain at once (a flush after the MX was down): at most that
        many connections to the MX at any moment; the rest wait and reuse them."""
        b = smxtest.Daemon(start=False)
        text = open(b.conf).read().replace("local_domains = example.org",
                                           "local_domains = b.lab")
        with open(b.conf, "w") as f:
            f.write(text + "tls_cert = %s\ntls_key = %s\n" % (self.pki.cert, self.pki.key))
        a = sender(self.pki, b.port, "\n[outbound]\nmax_connections_per_domain = 2\n")
        self.addCleanup(a.stop)
        n = 12
        for i in range(n):  # the MX is down: every message is deferred for an hour
            r = swaks(a.port, "bob@b.lab", subject="limit %d" % i)
            self.assertIn("250 2.0.0 Ok: queued as", r.stdout)
        self.assertTrue(smxtest.poll(
            lambda: a.log_text().count("result=deferred") >= n, 30), a.log_text()[-2000:])
        b.start()
        self.addCleanup(b.stop)
        # the readiness probe's session runs on an inbound loop: wait until it has been
        # logged and ended, or it is counted as one of the relay's connections
        self.assertTrue(smxtest.poll(
            lambda: b.log_text().count("event=connect ") >= 1 and
            b.log_text().count("event=disconnect ") >= b.log_text().count("event=connect "), 10))
        probe_connects = b.log_text().count("event=connect ")
        r = subprocess.run([smxtest.STRICTMX, "-c", a.conf, "queue", "flush"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(smxtest.poll(lambda: len(b.mail_files("b.lab", "bob")) >= n, 60),
                        a.log_text()[-3000:])
        # the most connections open at once at the MX, from its own log
        open_now, most, seen = set(), 0, 0
        for line in b.log_text().splitlines():
            m = re.search(r"event=(connect|disconnect) sid=(\S+)", line)
            if not m:
                continue
            if m.group(1) == "connect":
                seen += 1
                if seen <= probe_connects:
                    continue
                open_now.add(m.group(2))
                most = max(most, len(open_now))
            else:
                open_now.discard(m.group(2))
        self.assertGreater(seen, probe_connects)
        self.assertLessEqual(most, 2, b.log_text()[-3000:])

    def test_name_mismatch_defers_and_sends_nothing(self):
        b = receiver(self.pki)
        self.addCleanup(b.stop)
        a = sender(self.pki, b.port)
        self.addCleanup(a.stop)
        r = swaks(a.port, "bob@wrong.lab")
        self.assertIn("250 2.0.0 Ok: queued as", r.stdout)
        self.assertTrue(smxtest.poll(lambda: "result=deferred" in a.log_text(), 20),
                        a.log_text())
        self.assertRegex(a.log_text(), r"certificate name does not match wrong.lab "
                                       r"\(certificate names: mx.b.lab\)")
        self.assertRegex(a.log_text(), r"result=deferred status=4\.7\.5")
        # the receiving side saw TLS and then nothing: no MAIL, no message
        self.assertNotIn("event=queued", b.log_text())
        self.assertEqual(b.all_mail_files(), [])

    def test_tls_failure_bounce_gives_dsn(self):
        b = receiver(self.pki)
        self.addCleanup(b.stop)
        a = sender(self.pki, b.port, "\n[outbound]\ntls_failure = bounce\n")
        self.addCleanup(a.stop)
        r = swaks(a.port, "bob@wrong.lab", frm="alice@a.lab")
        self.assertIn("250 2.0.0 Ok: queued as", r.stdout)
        files = a.wait_mail("a.lab", "alice", 1, timeout=20)
        self.assertTrue(files, a.log_text())
        dsn = email.message_from_binary_file(open(files[0], "rb"), policy=email.policy.default)
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        human, status, _hdrs = list(dsn.iter_parts())
        self.assertIn("certificate", human.get_content())
        self.assertIn("could not be verified", human.get_content())
        self.assertIn("Action: failed", status.as_string())
        self.assertIn("Status: 5.7.5", status.as_string())


    def test_long_body_line_not_relayed(self):
        """D.19: with text_line_length raised, a 5000-octet body line is accepted (it could
        be delivered locally) but never relayed as is: no end of data reaches the MX, the
        sender gets a DSN (5.6.0) that says why; a 998-octet line is relayed."""
        b = receiver(self.pki)
        self.addCleanup(b.stop)
        a = sender(self.pki, b.port, "\n[limits]\ntext_line_length = 10000\n")
        self.addCleanup(a.stop)
        c = smxtest.tls_session(a.port)
        self.addCleanup(c.close)
        self.assertEqual(c.mail("alice@a.lab").code, 250)
        self.assertEqual(c.rcpt("bob@b.lab").code, 250)
        r = c.data(smxtest.simple_message("long line", ["before", "L" * 5000, "after"],
                                          sender="alice@a.lab", rcpt="bob@b.lab"))
        self.assertRegex(str(r), smxtest.QUEUED_RE)
        files = a.wait_mail("a.lab", "alice", 1, timeout=20)
        self.assertTrue(files, a.log_text()[-3000:])
        dsn = email.message_from_binary_file(open(files[0], "rb"), policy=email.policy.default)
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        text = dsn.as_string()
        self.assertIn("Action: failed", text)
        self.assertIn("Status: 5.6.0", text)
        self.assertIn("longer than 998 octets", text)
        self.assertRegex(a.log_text(), r"event=body_refused id=\S+ mx=mx.b.lab .*"
                                       r"reason=line_too_long max=998")
        self.assertNotIn("event=accepted", b.log_text())
        self.assertEqual(b.all_mail_files(), [])
        # at the limit: relayed
        r = smxtest.send_mail(a.port, "998 line", rcpt="bob@b.lab", sender="alice@a.lab",
                              body_lines=["z" * 998])
        self.assertRegex(str(r), smxtest.QUEUED_RE)
        files = b.wait_mail("b.lab", "bob", 1, timeout=20)
        self.assertTrue(files, a.log_text()[-3000:])
        self.assertIn(b"\r\n" + b"z" * 998 + b"\r\n", open(files[0], "rb").read())

    def test_encrypt_only_override_delivers_and_warns(self):
        b = receiver(self.pki, "b.lab, loose.lab")
        self.addCleanup(b.stop)
        a = sender(self.pki, b.port,
                   '\n[domain "loose.lab"]\nroute = 127.0.0.1:%d\ntls = encrypt-only\n' % b.port)
        self.addCleanup(a.stop)
        r = swaks(a.port, "bob@loose.lab")
        self.assertIn("250 2.0.0 Ok: queued as", r.stdout)
        # the certificate (mx.b.lab) does not match loose.lab: delivered anyway over TLS,
        # and the log says so loudly on this delivery
        self.assertTrue(smxtest.poll(lambda: "event=tls_unverified" in a.log_text(), 20),
                        a.log_text())
        self.assertRegex(a.log_text(), r"event=tls_unverified id=\S+ mx=loose.lab .*"
                                       r"WITHOUT a verified certificate")
        self.assertTrue(b.wait_mail("loose.lab", "bob", 1, timeout=20), a.log_text())
        self.assertTrue(smxtest.poll(
            lambda: "verified=encrypt-only result=delivered" in a.log_text(), 10))


if __name__ == "__main__":
    unittest.main()
