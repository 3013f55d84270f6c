"""strictmxd -t (config check) and the CLI's --version / help."""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smxtest  # noqa: E402
from smxtest import STRICTMXD, STRICTMX, run  # noqa: E402

BASE = """\
# test config
[server]
hostname = mx.test.example
listen = 127.0.0.1:{port}
data_dir = {tmp}/var
local_domains = example.org
"""


class ConfigCheck(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        smxtest.require_binaries()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="smx-cfg-")
        os.chmod(self.tmp, 0o755)
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.port = smxtest.free_port()

    def write(self, text, name="strictmx.conf"):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text.format(port=self.port, tmp=self.tmp))
        return path

    def check(self, path):
        return run([STRICTMXD, "-t", "-c", path], timeout=30)

    def assert_valid(self, text):
        path = self.write(text)
        p = self.check(path)
        self.assertEqual(p.returncode, 0, "valid config rejected:\n%s\nstderr:\n%s" % (text, p.stderr))
        return p

    def assert_error_at(self, text, needle):
        """The config is rejected, and stderr names FILE:LINE: where LINE holds needle."""
        path = self.write(text)
        lines = text.format(port=self.port, tmp=self.tmp).split("\n")
        lineno = [i + 1 for i, l in enumerate(lines) if needle in l]
        self.assertEqual(len(lineno), 1, "test bug: needle %r not unique" % needle)
        p = self.check(path)
        self.assertNotEqual(p.returncode, 0, "invalid config accepted (%r):\n%s" % (needle, text))
        expect = "%s:%d: " % (path, lineno[0])
        self.assertIn(expect, p.stderr,
                      "stderr lacks %r for %r; stderr was:\n%s" % (expect, needle, p.stderr))
        # the message after FILE:LINE: is not empty
        m = re.search(re.escape(expect) + r"(.*)", p.stderr)
        self.assertTrue(m and m.group(1).strip(), "no message after %r: %r" % (expect, p.stderr))
        return p

    # -- valid --
    def test_valid_minimal(self):
        p = self.assert_valid(BASE)
        self.assertNotIn("AddressSanitizer", p.stderr)

    def test_valid_full(self):
        port2 = smxtest.free_port()
        self.assert_valid(BASE + """\
info_url = https://example.org/tls
require_tls = yes

[limits]
line_length = 512
text_line_length = 1000
message_size = 10000
recipients = 3
connections = 10
connections_per_ip = 2
timeout_command = 2
timeout_data = 2
timeout_tls = 2
errors = 3
min_data_rate = 1K
error_delay = 2s
header_size = 64K

[listener "127.0.0.1:%d"]
require_tls = no
""" % port2)

    def test_valid_does_not_start(self):
        # -t only checks: it must not bind the port
        self.assert_valid(BASE)
        self.assertFalse(smxtest.can_connect(self.port, timeout=0.5))

    # -- invalid, with the exact FILE:LINE: --
    def test_unknown_key(self):
        self.assert_error_at(BASE + "bogus = 1\n", "bogus = 1")

    def test_unknown_key_middle(self):
        text = BASE.replace("local_domains", "bogus = 1\nlocal_domains")
        self.assert_error_at(text, "bogus = 1")

    def test_unknown_section(self):
        self.assert_error_at(BASE + "\n[nonsense]\nfoo = bar\n", "[nonsense]")

    def test_unknown_section_empty(self):
        """An unknown section without keys is still an error (docs: unknown sections are errors)."""
        self.assert_error_at(BASE + "\n[nonsense]\n", "[nonsense]")

    def test_bad_bool(self):
        self.assert_error_at(BASE + "require_tls = maybe\n", "require_tls = maybe")

    def test_bad_listen(self):
        text = BASE.replace("listen = 127.0.0.1:{port}", "listen = nonsense")
        self.assert_error_at(text, "listen = nonsense")

    def test_bad_size(self):
        self.assert_error_at(BASE + "\n[limits]\nrecipients = 3\nmessage_size = 12Q\n",
                             "message_size = 12Q")

    def test_valid_limits_off(self):
        self.assert_valid(BASE + "\n[limits]\nmin_data_rate = 0\nerror_delay = 0\n"
                                 "header_size = 0\n")

    def test_bad_new_limits(self):
        for line in ("min_data_rate = fast", "min_data_rate = 2G", "error_delay = -1",
                     "error_delay = 2m", "header_size = 100", "header_size = 2G"):
            with self.subTest(line=line):
                self.assert_error_at(BASE + "\n[limits]\nerrors = 3\n%s\n" % line, line)

    def test_bad_queue_minfree_and_greet_wait(self):
        self.assert_error_at(BASE + "\n[limits]\nerrors = 3\nqueue_minfree = lots\n",
                             "queue_minfree = lots")
        for v in ("forever", "31", "1h"):
            with self.subTest(v=v):
                # BASE ends inside [server]
                self.assert_error_at(BASE + "greet_wait = %s\n" % v, "greet_wait = %s" % v)

    def test_syntax_no_equals(self):
        self.assert_error_at(BASE + "this is not a key value line\n", "this is not a key")

    def test_syntax_unterminated_section(self):
        self.assert_error_at(BASE + "[limits\nerrors = 3\n", "[limits")

    def test_unknown_key_in_limits(self):
        self.assert_error_at(BASE + "\n[limits]\nerrors = 3\nfrobnicate = 7\n", "frobnicate = 7")

    def test_unknown_key_in_listener(self):
        self.assert_error_at(BASE + '\n[listener "127.0.0.1:%d"]\nrequire_tls = no\nbogus = 2\n'
                             % smxtest.free_port(), "bogus = 2")

    def test_missing_file(self):
        p = self.check(os.path.join(self.tmp, "does-not-exist.conf"))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("does-not-exist.conf", p.stderr)


class StartupError(unittest.TestCase):
    """A start-up error ends strictmxd with exit 1 and a startup_error line naming the
    cause, and everything made until then is freed (the sanitizer builds report a leak
    otherwise: the signal events leaked when the listen address was in use)."""

    @classmethod
    def setUpClass(cls):
        smxtest.require_binaries()

    def test_listen_address_in_use(self):
        tmp = tempfile.mkdtemp(prefix="smx-cfg-")
        os.chmod(tmp, 0o755)
        self.addCleanup(shutil.rmtree, tmp, True)
        port = smxtest.free_port()
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", port))
        busy.listen(1)
        path = os.path.join(tmp, "strictmx.conf")
        with open(path, "w") as f:
            f.write(BASE.format(port=port, tmp=tmp) + "require_tls = no\n")
        env = dict(os.environ)
        env["ASAN_OPTIONS"] = "detect_leaks=1"
        p = subprocess.run([STRICTMXD, "-c", path], capture_output=True, text=True,
                           timeout=60, env=env, stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn('event=startup_error error="listen 127.0.0.1:%d: Address already in use"'
                      % port, p.stderr)
        for m in smxtest.SANITIZER_MARKERS:
            self.assertNotIn(m, p.stderr, smxtest.sanitizer_excerpt(p.stderr))


class Cli(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        smxtest.require_binaries()

    def test_version(self):
        p = run([STRICTMX, "--version"], timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("strictmx 0.1.0", p.stdout)

    def test_help(self):
        p = run([STRICTMX, "help"], timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertRegex(p.stdout, r"(?i)usage")


if __name__ == "__main__":
    unittest.main()
