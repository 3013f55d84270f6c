"""Outbound delivery (relay) against real MX peers: TLS with a verified certificate
(PKIX against the MX host name) or no delivery at all, never plaintext.

    swaks --tls --> strictmxd 127.0.0.1:P (relay_networks 127.0.0.0/8)
        --> DNS: NSD on 127.0.0.5 serving lab. (dnsbed.DnsBed, unsigned: PKIX)
        --> MX: private Postfix on 127.0.0.2N:25 (mxbed.PostfixMX), or the STARTTLS
            attack proxy on 127.0.0.3N:25 (mitm.StartTLSStripProxy) in front of one

Domain -> MX host -> address (one domain per case, all in one DNS bed):
  valid.example.lab       mx1.valid.example.lab       127.0.0.21  Postfix tls=valid
  nostarttls.example.lab  mx2.nostarttls.example.lab  127.0.0.22  Postfix tls=none
  selfsigned.example.lab  mx3...                      127.0.0.23  Postfix tls=selfsigned
  expired.example.lab     mx4...                      127.0.0.24  Postfix tls=expired
  wrongname.example.lab   mx5...                      127.0.0.25  Postfix tls=wrongname
  tls10.example.lab       mx6...                      127.0.0.26  Postfix tls=tls10
  twomx-none.example.lab  MX 10 mx7 (.27, none), MX 20 mx8 (.28, valid)
  twomx-name.example.lab  MX 10 mx7 (.27, wrongname), MX 20 mx8 (.28, valid)
  nullmx.example.lab      MX 0 .   (+ @ A 127.0.0.29 with a valid Postfix: no fallback)
  down.example.lab        delegated to a dead server (SERVFAIL)
  stripped/454/inject/proxied.example.lab  mx1.<d> A 127.0.0.31..34 (proxy) -> Postfix .21
  restart.example.lab     mx1.restart.example.lab     127.0.0.21  Postfix tls=valid

Expected outcomes follow the outbound specification (log keys as the daemon writes them:
`event=result ... result=delivered|deferred|failed ... detail="..."`, `verified=pkix` on the
delivery/tls_out lines, `event=outbound_response_injection`; queue via
`strictmx -c CONF queue list --json`). Every wait is a bounded poll; peers are stopped in cleanups.
"""

import email
import email.policy
import json
import os
import re
import signal
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import smxtest  # noqa: E402
from smxtest import Daemon, HOSTNAME  # noqa: E402
from dnsbed import DnsBed  # noqa: E402
from mxbed import TestCA, PostfixMX  # noqa: E402
from mitm import StartTLSStripProxy  # noqa: E402

SIGNED = False          # PKIX now; DANE tests will use a signed bed with TLSA records
RESULT_BOUND = 45.0     # first result line for a recipient (DNS + connect + TLS)
DELIVERY_BOUND = 60.0
SENDER = "a@example.org"

ZONES = {
    "valid.example.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.21"],
    "nostarttls.example.lab.": ["@ MX 10 mx2", "mx2 A 127.0.0.22"],
    "selfsigned.example.lab.": ["@ MX 10 mx3", "mx3 A 127.0.0.23"],
    "expired.example.lab.": ["@ MX 10 mx4", "mx4 A 127.0.0.24"],
    "wrongname.example.lab.": ["@ MX 10 mx5", "mx5 A 127.0.0.25"],
    "tls10.example.lab.": ["@ MX 10 mx6", "mx6 A 127.0.0.26"],
    "twomx-none.example.lab.": ["@ MX 10 mx7", "@ MX 20 mx8", "mx7 A 127.0.0.27",
                                "mx8 A 127.0.0.28"],
    "twomx-name.example.lab.": ["@ MX 10 mx7", "@ MX 20 mx8", "mx7 A 127.0.0.27",
                                "mx8 A 127.0.0.28"],
    "nullmx.example.lab.": ["@ MX 0 .", "@ A 127.0.0.29"],
    "stripped.example.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.31"],
    "starttls454.example.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.32"],
    "inject.example.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.33"],
    "proxied.example.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.34"],
    "restart.example.lab.": ["@ MX 10 mx1", "mx1 A 127.0.0.21"],
}
DEAD = ["down.example.lab."]


def swaks_submit(port, rcpt, subject, body="hello", timeout=60):
    """Submit one message to strictmx over STARTTLS; returns the queue id (asserts 250)."""
    argv = ["swaks", "--tls", "--server", "127.0.0.1:%d" % port, "--from", SENDER,
            "--to", rcpt, "--header", "Subject: %s" % subject, "--body", body,
            "--timeout", "20"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    m = re.search(r"<~  250 2\.0\.0 Ok: queued as (\S+)", p.stdout)
    if p.returncode != 0 or not m:
        raise AssertionError("submission failed (rc %d):\n%s%s" % (p.returncode, p.stdout,
                                                                    p.stderr))
    return m.group(1)


def result_lines(daemon, rcpt):
    rx = re.compile(r"^.*event=result .*rcpt=<%s>.*$" % re.escape(rcpt), re.M)
    return rx.findall(daemon.log_text())


def wait_result(daemon, rcpt, result=None, timeout=RESULT_BOUND):
    """Bounded poll for a result line for rcpt (optionally with result=RESULT)."""
    def find():
        for ln in result_lines(daemon, rcpt):
            if result is None or re.search(r"\bresult=%s\b" % result, ln):
                return ln
        return None
    return smxtest.poll(find, timeout, 0.1)


def queue_entries(daemon):
    """`strictmx -c CONF queue list --json` -> list, or None when the CLI cannot say."""
    try:
        p = subprocess.run([smxtest.STRICTMX, "-c", daemon.conf, "queue", "list", "--json"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    out = p.stdout.strip()
    if out == "":
        return []
    try:
        v = json.loads(out)
    except ValueError:
        return None
    if isinstance(v, dict):
        for k in ("messages", "entries", "queue"):
            if isinstance(v.get(k), list):
                return v[k]
        return None
    return v if isinstance(v, list) else None


def queue_empty(daemon, msg_ids):
    """True when the queue holds none of msg_ids (CLI, or event=removed in the log)."""
    q = queue_entries(daemon)
    if q is not None:
        text = json.dumps(q)
        return not any(i in text for i in msg_ids)
    log = daemon.log_text()
    return all(re.search(r"event=removed id=%s\b" % re.escape(i), log) for i in msg_ids)


def restart_daemon(d, timeout=20.0):
    """SIGTERM strictmxd, assert exit 0 and no sanitizer report, start it again on the same
    config and data_dir. (Daemon.stop() would remove the data_dir on success.)"""
    d.proc.send_signal(signal.SIGTERM)
    try:
        rc = d.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        d._kill()
        raise AssertionError("strictmxd did not exit within %.0f s of SIGTERM" % timeout)
    d._log.close()
    log = d.log_text()
    bad = [m for m in smxtest.SANITIZER_MARKERS if m in log]
    if bad:
        raise AssertionError("sanitizer report before restart:\n%s"
                             % smxtest.sanitizer_excerpt(log))
    if rc != 0:
        raise AssertionError("strictmxd exit code %s after SIGTERM; log:\n%s"
                             % (rc, log[-4000:]))
    if not os.path.isdir(d.data_dir):
        raise AssertionError("data_dir %s gone after stop" % d.data_dir)
    d.start()


class OutboundBase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        smxtest.require_binaries()
        cls.ca = TestCA()
        cls.dns = DnsBed(ZONES, signed=SIGNED, dead=DEAD)
        try:
            cls.dns.start()
        except Exception:
            cls.ca.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.dns.stop()
        cls.ca.close()

    # -- peers --
    def daemon(self, start=True):
        d = Daemon(start=False)
        extra = ["", "[server]", "relay_networks = 127.0.0.0/8",
                 "", "[dns]", "stub = %s" % self.dns.stub]
        if SIGNED:
            extra.append("trust_anchor = %s" % self.dns.trust_anchor_file)
        extra += ["", "[outbound]", "ca_file = %s" % self.ca.ca_file, "smtp_port = 25",
                  "connect_timeout = 5", "command_timeout = 10",
                  "", "[queue]", "retry_min = 1", "retry_max = 2", ""]
        with open(d.conf, "a") as f:
            f.write("\n".join(extra))
        if start:
            d.start()
        self.addCleanup(d.stop)  # SIGTERM; asserts exit 0 and a sanitizer-clean log
        return d

    def mx(self, addr, tls, host, start=True):
        m = PostfixMX(addr, self.ca, tls=tls, host=host)
        self.addCleanup(m.stop)
        if start:
            m.start()
        return m

    def proxy(self, listen_addr, upstream_addr, mode):
        px = StartTLSStripProxy((listen_addr, 25), (upstream_addr, 25), mode=mode)
        self.addCleanup(px.stop)
        return px

    # -- assertions --
    def assertDelivered(self, d, mx, rcpt, subject, msg_id):
        line = wait_result(d, rcpt, "delivered", DELIVERY_BOUND)
        self.assertIsNotNone(line, "no result=delivered for %s; log:\n%s"
                             % (rcpt, d.log_text()[-4000:]))
        msgs = mx.wait_messages(1, 30)
        mine = [m for m in msgs if ("Subject: %s" % subject).encode() in m]
        self.assertEqual(len(mine), 1, "MX mailbox: %r\nMX log:\n%s" % (msgs, mx.log()[-3000:]))
        headers, _body = smxtest.split_message(mine[0])
        # strictmx's own Received line (from the submission) travelled with the message
        self.assertTrue(any(h.startswith(b"Received:") and (b"by " + HOSTNAME.encode()) in h
                            for h in headers), headers)
        # the MX saw TLS (its Received line names the protocol) and PKIX was the check
        self.assertTrue(mx.tls_sessions(), mx.log())
        self.assertRegex(d.log_text(), r"id=%s\b[^\n]*\bverified=pkix\b" % re.escape(msg_id))
        self.assertTrue(smxtest.poll(lambda: queue_empty(d, [msg_id]), 15),
                        "message %s still queued: %r" % (msg_id, queue_entries(d)))
        return mine[0]

    def assertNotDelivered(self, d, rcpt, result="deferred", detail=None, mxs=(),
                           proxies=()):
        line = wait_result(d, rcpt, None, RESULT_BOUND)
        self.assertIsNotNone(line, "no result line for %s; log:\n%s"
                             % (rcpt, d.log_text()[-4000:]))
        self.assertRegex(line, r"\bresult=%s\b" % result)
        if detail:
            self.assertRegex(line, detail)
        # give a retry (retry_min = 1) the chance to go wrong too
        smxtest.poll(lambda: len(result_lines(d, rcpt)) >= 2, 10, 0.2)
        for ln in result_lines(d, rcpt):
            self.assertNotRegex(ln, r"\bresult=delivered\b")
        for m in mxs:
            self.assertEqual(m.messages(), [], m.log()[-3000:])
            self.assertEqual(m.accepted_from(), [], m.log()[-3000:])
            self.assertEqual(m.mail_commands(), 0, m.log()[-3000:])
        for px in proxies:
            self.assertGreaterEqual(px.connections, 1, "strictmx never reached the proxy")
            self.assertFalse(px.client_sent(b"MAIL FROM"), px.client_data()[-2000:])
            self.assertFalse(px.client_sent(b"RCPT TO"), px.client_data()[-2000:])
            self.assertFalse(px.client_sent(b"BODYMARKER"), px.client_data()[-2000:])
        return line


class TestConfig(OutboundBase):
    def test_server_section_again_at_the_end(self):
        d = self.daemon(start=False)
        p = subprocess.run([smxtest.STRICTMXD, "-t", "-c", d.conf], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        d.start()
        # relay to an outside domain is accepted (relay_networks took effect)
        swaks_submit(d.port, "user@down.example.lab", "relay-accepted")


class TestPKIX(OutboundBase):
    def test_valid_delivered(self):
        d = self.daemon()
        mx = self.mx("127.0.0.21", "valid", "mx1.valid.example.lab")
        rcpt = "user@valid.example.lab"
        mid = swaks_submit(d.port, rcpt, "valid-1", "BODYMARKER valid")
        msg = self.assertDelivered(d, mx, rcpt, "valid-1", mid)
        self.assertIn(b"BODYMARKER valid", msg)
        self.assertRegex(wait_result(d, rcpt, "delivered"), r"mx=mx1\.valid\.example\.lab")
        s = mx.wait_sessions_with("mail", 10)
        self.assertTrue(s and all(c.get("starttls", 0) == 1 for _cl, c in s), mx.sessions())

    def test_no_starttls(self):
        d = self.daemon()
        mx = self.mx("127.0.0.22", "none", "mx2.nostarttls.example.lab")
        rcpt = "user@nostarttls.example.lab"
        swaks_submit(d.port, rcpt, "nostarttls", "BODYMARKER")
        self.assertNotDelivered(
            d, rcpt, "deferred",
            r"Recipient's Mail eXchanger does not offer STARTTLS capability", mxs=[mx])
        self.assertTrue(mx.wait_sessions_with("ehlo", 15), "strictmx never talked to the MX")
        self.assertEqual(mx.mail_commands(), 0, mx.log())
        self.assertNotIn("from=<%s>" % SENDER, mx.log())

    def _bad_cert(self, tls, n, word):
        d = self.daemon()
        dom = "%s.example.lab" % tls
        mx = self.mx("127.0.0.2%d" % n, tls, "mx%d.%s" % (n, dom))
        rcpt = "user@" + dom
        swaks_submit(d.port, rcpt, tls, "BODYMARKER")
        line = self.assertNotDelivered(d, rcpt, "deferred", mxs=[mx])
        self.assertRegex(line, r"(?i)" + word)
        self.assertTrue(mx.wait_sessions_with("starttls", 15), mx.sessions())

    def test_selfsigned(self):
        self._bad_cert("selfsigned", 3, "self-signed")

    def test_expired(self):
        self._bad_cert("expired", 4, "expired")

    def test_wrongname(self):
        self._bad_cert("wrongname", 5, "does not match")

    def test_tls10_only(self):
        d = self.daemon()
        mx = self.mx("127.0.0.26", "tls10", "mx6.tls10.example.lab")
        rcpt = "user@tls10.example.lab"
        swaks_submit(d.port, rcpt, "tls10", "BODYMARKER")
        line = self.assertNotDelivered(d, rcpt, "deferred", mxs=[mx])
        self.assertRegex(line, r"(?i)handshake|protocol version|unsupported protocol")

    def _two_mx(self, first_tls):
        d = self.daemon()
        dom = "twomx-%s.example.lab" % ("none" if first_tls == "none" else "name")
        bad = self.mx("127.0.0.27", first_tls, "mx7." + dom)
        good = self.mx("127.0.0.28", "valid", "mx8." + dom)
        rcpt = "user@" + dom
        mid = swaks_submit(d.port, rcpt, "twomx-" + first_tls)
        self.assertDelivered(d, good, rcpt, "twomx-" + first_tls, mid)
        self.assertRegex(wait_result(d, rcpt, "delivered"), r"mx=mx8\.")
        self.assertTrue(bad.wait_sessions_with("ehlo", 10), "pref 10 MX never tried")
        self.assertEqual(bad.messages(), [])
        self.assertEqual(bad.mail_commands(), 0, bad.log())

    def test_two_mx_first_without_starttls(self):
        self._two_mx("none")

    def test_two_mx_first_wrong_name(self):
        self._two_mx("wrongname")


class TestNullMXAndDNS(OutboundBase):
    def test_null_mx_bounces_at_once(self):
        d = self.daemon()
        a_host = self.mx("127.0.0.29", "valid", "nullmx.example.lab")
        rcpt = "user@nullmx.example.lab"
        mid = swaks_submit(d.port, rcpt, "nullmx-1", "BODYMARKER")
        line = wait_result(d, rcpt, None, RESULT_BOUND)
        self.assertIsNotNone(line, d.log_text()[-4000:])
        self.assertRegex(line, r"\bresult=failed\b")
        files = d.wait_mail("example.org", "a", 1, 30)
        self.assertEqual(len(files), 1, d.log_text()[-4000:])
        dsn = email.message_from_bytes(smxtest.read_file(files[0]), policy=email.policy.default)
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        self.assertEqual(dsn.get_param("report-type"), "delivery-status")
        self.assertIn(SENDER, str(dsn["To"]))
        parts = [p for p in dsn.iter_parts()]
        self.assertGreaterEqual(len(parts), 2)
        self.assertEqual(parts[0].get_content_type(), "text/plain")
        ds = [p for p in parts if p.get_content_type() == "message/delivery-status"]
        self.assertEqual(len(ds), 1, [p.get_content_type() for p in parts])
        blocks = ds[0].get_payload()  # [per-message fields, per-recipient fields...]
        self.assertGreaterEqual(len(blocks), 2, blocks)
        rcpt_blocks = [b for b in blocks if b.get("Final-Recipient")]
        self.assertEqual(len(rcpt_blocks), 1, blocks)
        rb = rcpt_blocks[0]
        self.assertEqual(re.sub(r"\s+", " ", str(rb["Final-Recipient"])).strip().lower(),
                         "rfc822; " + rcpt)
        self.assertEqual(str(rb["Action"]).strip().lower(), "failed")
        self.assertRegex(str(rb["Status"]).strip(), r"^5\.\d{1,3}\.\d{1,3}$")
        # bounced at once: one result, never deferred; no A-record fallback
        smxtest.poll(lambda: queue_empty(d, [mid]), 15)
        self.assertTrue(queue_empty(d, [mid]), queue_entries(d))
        self.assertEqual(len(result_lines(d, rcpt)), 1, result_lines(d, rcpt))
        self.assertEqual(a_host.messages(), [])
        self.assertEqual([s for s in a_host.sessions() if "ehlo" in s[1]], [],
                         "strictmx fell back to the A record of a null-MX domain")

    def test_servfail_deferred(self):
        d = self.daemon()
        rcpt = "user@down.example.lab"
        mid = swaks_submit(d.port, rcpt, "servfail-1", "BODYMARKER")
        # the resolver gives up on the dead delegation after its timeouts: allow longer
        line = wait_result(d, rcpt, None, 90)
        self.assertIsNotNone(line, d.log_text()[-4000:])
        self.assertRegex(line, r"\bresult=deferred\b")
        for ln in result_lines(d, rcpt):
            self.assertNotRegex(ln, r"\bresult=(delivered|failed)\b")
        self.assertEqual(d.mail_files("example.org", "a"), [], "no bounce for a SERVFAIL")
        q = queue_entries(d)
        if q is not None:
            self.assertIn(mid, json.dumps(q))
        else:
            self.assertNotRegex(d.log_text(), r"event=removed id=%s\b" % re.escape(mid))


class TestStartTLSAttacks(OutboundBase):
    def _via_proxy(self, dom, addr, mode):
        d = self.daemon()
        mx = self.mx("127.0.0.21", "valid", "mx1." + dom)  # cert matches the MX name
        px = self.proxy(addr, "127.0.0.21", mode)
        return d, mx, px

    def test_stripped(self):
        d, mx, px = self._via_proxy("stripped.example.lab", "127.0.0.31", "strip")
        rcpt = "user@stripped.example.lab"
        swaks_submit(d.port, rcpt, "stripped", "BODYMARKER stripped")
        self.assertNotDelivered(
            d, rcpt, "deferred",
            r"Recipient's Mail eXchanger does not offer STARTTLS capability",
            mxs=[mx], proxies=[px])
        self.assertTrue(px.client_sent(b"EHLO"), px.client_data())

    def test_starttls_454(self):
        d, mx, px = self._via_proxy("starttls454.example.lab", "127.0.0.32", "454")
        rcpt = "user@starttls454.example.lab"
        swaks_submit(d.port, rcpt, "starttls454", "BODYMARKER 454")
        self.assertNotDelivered(d, rcpt, "deferred", mxs=[mx], proxies=[px])
        self.assertTrue(px.client_sent(b"STARTTLS"), px.client_data())

    def test_response_injection(self):
        d, mx, px = self._via_proxy("inject.example.lab", "127.0.0.33", "inject")
        rcpt = "user@inject.example.lab"
        swaks_submit(d.port, rcpt, "inject", "BODYMARKER inject")
        self.assertNotDelivered(d, rcpt, "deferred", mxs=[mx], proxies=[px])
        self.assertRegex(d.log_text(), r"event=outbound_response_injection")

    def test_proxy_control_passthrough_delivers(self):
        """Control: the same proxy in passthrough mode does not prevent delivery."""
        d, mx, px = self._via_proxy("proxied.example.lab", "127.0.0.34", "passthrough")
        rcpt = "user@proxied.example.lab"
        mid = swaks_submit(d.port, rcpt, "proxied", "BODYMARKER proxied")
        self.assertDelivered(d, mx, rcpt, "proxied", mid)
        self.assertTrue(px.client_sent(b"STARTTLS"))
        self.assertFalse(px.client_sent(b"BODYMARKER"))  # only inside TLS


class TestRestart(OutboundBase):
    N = 50

    def test_queue_survives_restart_delivered_once(self):
        d = self.daemon()
        mx = self.mx("127.0.0.21", "valid", "mx1.restart.example.lab", start=False)
        rcpt = "user@restart.example.lab"
        ids = []
        for i in range(self.N):
            ids.append(swaks_submit(d.port, rcpt, "restart-%03d" % i, "BODYMARKER %d" % i))
        self.assertEqual(len(set(ids)), self.N)
        restart_daemon(d)  # SIGTERM, exit 0, same config and data_dir, start again
        mx.start()
        want = {"restart-%03d" % i for i in range(self.N)}

        def all_there():
            return want <= set(mx.subjects())
        smxtest.poll(all_there, DELIVERY_BOUND, 0.5)
        got = mx.subjects()
        missing = sorted(want - set(got))
        self.assertEqual(missing, [], "missing after %.0f s; log:\n%s"
                         % (DELIVERY_BOUND, d.log_text()[-4000:]))
        # exactly once: wait a little for stray duplicates, then count
        time.sleep(3)
        got = mx.subjects()
        dups = sorted(s for s in set(got) if got.count(s) > 1)
        self.assertEqual(dups, [])
        self.assertEqual(len(got), self.N)
        self.assertTrue(smxtest.poll(lambda: queue_empty(d, ids), 20), queue_entries(d))


if __name__ == "__main__":
    unittest.main(verbosity=2)
