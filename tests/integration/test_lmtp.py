"""Local delivery to an LMTP next hop: a real Dovecot lmtp service on loopback.

Accepted mail goes through the durable queue; the queue hands local recipients to
Dovecot over LMTP. When the next hop is down the message stays queued (deferred,
retried), and is delivered once it is back.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smxtest  # noqa: E402

DOVECOT_CONF = """\
protocols = lmtp
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
ssl = no
listen = 127.0.0.1
default_internal_user = nobody
default_internal_group = nogroup
default_login_user = nobody
first_valid_uid = 1
mail_location = maildir:{d}/mail/%d/%n
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={d}/home/%d/%n
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""


class Dovecot:
    def __init__(self, port=None):
        self.dir = tempfile.mkdtemp(prefix="smx-dovecot-")
        os.chmod(self.dir, 0o755)
        self.port = port or smxtest.free_port()
        for sub in ("run", "state", "mail", "home"):
            os.mkdir(os.path.join(self.dir, sub))
        for sub in ("mail", "home"):
            shutil.chown(os.path.join(self.dir, sub), "nobody")
        self.conf = os.path.join(self.dir, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(DOVECOT_CONF.format(d=self.dir, port=self.port))
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", self.conf],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        if not smxtest.poll(lambda: smxtest.can_connect(self.port), 20):
            self.stop()
            raise RuntimeError("dovecot lmtp not listening on %d" % self.port)

    def new_files(self, domain, user):
        d = os.path.join(self.dir, "mail", domain, user, "new")
        try:
            return [os.path.join(d, n) for n in os.listdir(d)]
        except FileNotFoundError:
            return []

    def log(self):
        try:
            with open(os.path.join(self.dir, "dovecot.log")) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def daemon_with_lmtp(port):
    d = smxtest.Daemon(start=False)
    with open(d.conf, "a") as f:
        f.write("\n[local_delivery]\nlmtp = 127.0.0.1:%d\n" % port)
    d.start()
    return d


def swaks(port, to, body):
    return subprocess.run(["swaks", "--server", "127.0.0.1:%d" % port, "--tls",
                           "--to", to, "--from", "sender@client.test.example",
                           "--data", body, "--timeout", "20"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


class LmtpTest(unittest.TestCase):
    def test_delivered_to_dovecot_for_every_recipient(self):
        dv = Dovecot()
        self.addCleanup(dv.stop)
        d = daemon_with_lmtp(dv.port)
        self.addCleanup(d.stop)
        r = swaks(d.port, "alice@example.org,bob@example.org",
                  "Subject: via lmtp\n\n.leading dot\nbody\n")
        self.assertIn("250 2.0.0 Ok: queued as", r.stdout, r.stdout + r.stderr)
        for user in ("alice", "bob"):
            files = smxtest.poll(lambda: dv.new_files("example.org", user), 10)
            self.assertTrue(files, "no message for %s in Dovecot; dovecot log:\n%s"
                            % (user, dv.log()))
            with open(files[0], "rb") as f:
                msg = f.read()
            self.assertRegex(msg, smxtest.RECEIVED_TLS_RE)
            self.assertIn(b"\n.leading dot\r\n" if b"\r\n" in msg else b"\n.leading dot\n", msg)
            self.assertIn(b"Subject: via lmtp", msg)
        import re
        pat = re.compile(r"event=result id=\S+ rcpt=<alice@example.org> "
                         r"mx=127\.0\.0\.1:%d result=delivered" % dv.port)
        self.assertTrue(smxtest.poll(lambda: pat.search(d.log_text()), 10), d.log_text())
        self.assertTrue(smxtest.poll(lambda: "event=removed" in d.log_text(), 10))

    def test_next_hop_down_defers_then_delivers(self):
        port = smxtest.free_port()  # nothing listens here yet
        d = smxtest.Daemon(start=False, limits=None)
        with open(d.conf, "a") as f:
            f.write("\n[local_delivery]\nlmtp = 127.0.0.1:%d\n"
                    "\n[queue]\nretry_min = 1\nretry_max = 2\n" % port)
        d.start()
        self.addCleanup(d.stop)
        r = swaks(d.port, "alice@example.org", "Subject: later\n\nbody\n")
        self.assertIn("250 2.0.0 Ok: queued as", r.stdout)
        self.assertTrue(smxtest.poll(lambda: "result=deferred" in d.log_text(), 15),
                        d.log_text())
        self.assertNotIn("result=delivered", d.log_text())
        # the next hop comes up on that port: the retry delivers it, once
        dv = Dovecot(port=port)
        self.addCleanup(dv.stop)
        files = smxtest.poll(lambda: dv.new_files("example.org", "alice"), 20)
        self.assertTrue(files, d.log_text())
        self.assertTrue(smxtest.poll(lambda: "event=removed" in d.log_text(), 10))
        self.assertEqual(len(dv.new_files("example.org", "alice")), 1)


if __name__ == "__main__":
    unittest.main()
