"""Real sending MTA: a private Postfix instance relays to strictmxd.

swaks --(plain SMTP)--> Postfix smtpd 127.0.0.1:P1 --(relayhost)--> strictmxd 127.0.0.1:P2

Positive: smtp_tls_security_level = encrypt -> delivered over TLS.
Negative: smtp_tls_security_level = none    -> refused with 530, nothing delivered.
The instance follows /work/shared/research/testbed-notes.md (private instance recipe).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smxtest  # noqa: E402
from smxtest import Daemon, TLS_FIRST, RECEIVED_TLS_RE  # noqa: E402
from mxbed import MASTER_CF  # noqa: E402  (one smtpd service on {listen})

DELIVERY_BOUND = 60.0


class Postfix:
    """A private Postfix instance in its own scratch directory."""

    def __init__(self, relay_port, tls_level):
        self.dir = tempfile.mkdtemp(prefix="smx-postfix-")
        os.chmod(self.dir, 0o755)
        self.port = smxtest.free_port()
        self.conf_dir = os.path.join(self.dir, "etc")
        self.queue = os.path.join(self.dir, "queue")
        self.data = os.path.join(self.dir, "data")
        self.maillog = os.path.join(self.dir, "maillog")
        for d in (self.conf_dir, self.queue, self.data):
            os.mkdir(d)
            os.chmod(d, 0o755)
        shutil.chown(self.data, "postfix")
        main = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue,
            "data_directory": self.data,
            "maillog_file": self.maillog,
            "maillog_file_prefixes": os.path.dirname(self.dir),
            "myhostname": "sender.test.example",
            "mydomain": "test.example",
            "myorigin": "sender.test.example",
            "mydestination": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtpd_peername_lookup": "no",
            "relayhost": "[127.0.0.1]:%d" % relay_port,
            "smtp_tls_security_level": tls_level,
            "smtp_tls_loglevel": "1",
            "smtp_host_lookup": "native",
            "smtp_dns_support_level": "disabled",
            "smtputf8_enable": "no",
            "biff": "no",
            "notify_classes": "",
            "bounce_queue_lifetime": "0",
            "maximal_queue_lifetime": "0",
        }
        with open(os.path.join(self.conf_dir, "main.cf"), "w") as f:
            for k, v in main.items():
                f.write("%s = %s\n" % (k, v))
        with open(os.path.join(self.conf_dir, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(listen="127.0.0.1:%d" % self.port))
        self.started = False

    def postfix(self, *args, timeout=60):
        return subprocess.run(["postfix", "-c", self.conf_dir] + list(args),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)

    def start(self):
        p = self.postfix("start")
        if p.returncode != 0:
            raise RuntimeError("postfix start failed (%d): %s\nmaillog:\n%s"
                               % (p.returncode, p.stdout, self.log_text()))
        self.started = True
        if not smxtest.poll(lambda: smxtest.can_connect(self.port), 30, 0.1):
            raise RuntimeError("postfix smtpd not listening on %d; maillog:\n%s"
                               % (self.port, self.log_text()))

    def master_pid(self):
        try:
            with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def stop(self):
        if not self.started:
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        self.started = False
        pid = self.master_pid()
        try:
            self.postfix("stop", timeout=60)
        except subprocess.TimeoutExpired:
            pass

        def gone():
            if pid is None:
                return True
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                return True

        if not smxtest.poll(gone, 30, 0.2):
            # last resort, only the master process this test started
            try:
                self.postfix("abort", timeout=30)
            except subprocess.TimeoutExpired:
                pass
            if not smxtest.poll(gone, 10, 0.2):
                os.kill(pid, 9)
            raise AssertionError("private postfix (master pid %s) did not stop in time" % pid)
        if not os.environ.get("SMX_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self):
        try:
            with open(self.maillog, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern, timeout):
        rx = re.compile(pattern)
        return smxtest.poll(lambda: rx.search(self.log_text()), timeout, 0.2)

    def submit(self, subject, to="u@example.org"):
        p = smxtest.run(["swaks", "--server", "127.0.0.1", "--port", str(self.port),
                         "--to", to, "--from", "sender@sender.test.example",
                         "--helo", "client.test.example", "--timeout", "20",
                         "--header", "Subject: " + subject], timeout=60)
        out = p.stdout + p.stderr
        if p.returncode != 0 or not re.search(r"<-  250 2\.0\.0 Ok: queued as", out):
            raise AssertionError("postfix did not accept the message from swaks:\n%s\nmaillog:\n%s"
                                 % (out, self.log_text()))
        return out


class PostfixRelay(unittest.TestCase):
    def setUp(self):
        self.d = Daemon()
        self.addCleanup(self.d.stop)

    def postfix(self, tls_level):
        pf = Postfix(self.d.port, tls_level)
        self.addCleanup(pf.stop)
        self.addCleanup(self.dump_on_failure, pf)  # runs before stop (LIFO)
        pf.start()
        return pf

    def dump_on_failure(self, pf):
        if os.environ.get("SMX_VERBOSE"):
            print("---- postfix maillog ----\n" + pf.log_text())

    def test_encrypt_delivers_over_tls(self):
        pf = self.postfix("encrypt")
        pf.submit("via postfix encrypt")
        files = self.d.wait_mail("example.org", "u", 1, timeout=DELIVERY_BOUND)
        self.assertEqual(len(files), 1, "not delivered within %ss\npostfix maillog:\n%s\nstrictmxd log:\n%s"
                         % (DELIVERY_BOUND, pf.log_text()[-3000:], self.d.log_text()[-3000:]))
        raw = smxtest.read_file(files[0])
        headers, _body = smxtest.split_message(raw)
        self.assertTrue(headers[0].startswith(b"Received: from sender.test.example"), headers[0])
        self.assertIn(b"with ESMTPS", headers[0])
        self.assertRegex(headers[0], RECEIVED_TLS_RE)
        self.assertIn(b"Subject: via postfix encrypt", headers)
        # Postfix's own view: a TLS connection to strictmx, and status=sent
        m = pf.wait_log(r"(Anonymous|Untrusted) TLS connection established to "
                        r"127\.0\.0\.1\[127\.0\.0\.1\]:%d" % self.d.port, 30)
        self.assertTrue(m, "no TLS connection in postfix maillog:\n%s" % pf.log_text()[-3000:])
        m = pf.wait_log(r"relay=127\.0\.0\.1\[127\.0\.0\.1\]:%d.*status=sent \(250 2\.0\.0 Ok: "
                        r"queued as" % self.d.port, 30)
        self.assertTrue(m, "no status=sent in postfix maillog:\n%s" % pf.log_text()[-3000:])

    def test_plaintext_refused(self):
        pf = self.postfix("none")
        pf.submit("via postfix plaintext")
        m = pf.wait_log(re.escape(TLS_FIRST), DELIVERY_BOUND)
        self.assertTrue(m, "no 530 in postfix maillog:\n%s" % pf.log_text()[-3000:])
        self.assertRegex(pf.log_text(), r"status=(bounced|deferred) .*530 5\.7\.0 Must issue a "
                         r"STARTTLS command first \(in reply to MAIL FROM command\)")
        self.assertEqual(self.d.all_mail_files(), [])
        self.assertNotIn("TLS connection established", pf.log_text())


if __name__ == "__main__":
    unittest.main()
