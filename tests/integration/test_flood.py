"""Resource limits under load (issue 6): connection floods, thousands of idle sessions,
many slowloris clients; a well-behaved client gets its mail through every time.

(a) a flood from one address beyond connections_per_ip: exactly the limit is served, the
    rest get "421 4.7.0" at connect and are closed; another loopback address (source
    127.0.0.2) is served and its mail delivered meanwhile.
(b) IDLE_PLAIN idle sessions (after the greeting) plus IDLE_TLS idle sessions (after
    STARTTLS + EHLO) held open at once; a normal client still gets 250 and a Maildir file;
    the daemon's RSS growth per session is printed and held under a ceiling.
(c) SLOW_CLIENTS clients trickling one byte per second inside a command line are each
    cut off with "421 4.4.2" at timeout_command; a normal client is unaffected.
"""
import os
import resource
import selectors
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smxtest  # noqa: E402
from smxtest import Daemon, QUEUED_RE  # noqa: E402

PER_IP = 20
FLOOD = 200
IDLE_PLAIN = 5000
IDLE_TLS = 500
SLOW_CLIENTS = 50
SLOW_TIMEOUT = 3

# RSS ceilings per held session (KiB), measured on 2 cores (Debian 12, OpenSSL 3.0):
#
#                       plaintext (after greeting)   TLS 1.3 (after STARTTLS + EHLO)
#   ASan+UBSan build    24 KiB                       380 KiB
#   non-sanitized build  8 KiB                        44 KiB
#
# Non-sanitized: TLS 64 KiB is the project's target (issue 7); plaintext 16 KiB (each
# session mallocs a 64 KiB spool buffer at accept: a ceiling well below 64 KiB catches it
# being touched before DATA).
# ASan: RSS also holds ASan's redzones and shadow memory and, above all, its quarantine:
# freed chunks are kept (up to quarantine_size_mb = 256 MiB by default) so that a
# use-after-free is caught. A TLS handshake allocates and frees ~340 KiB of temporaries,
# all of which stay quarantined, so under ASan the TLS figure is mostly quarantine, not
# retained session state (500 sessions x 340 KiB = 166 MiB < 256 MiB). The ASan ceilings
# are regression guards against gross growth (a session holding megabytes): plaintext
# 48 KiB (still below the 64 KiB spool buffer), TLS 600 KiB. Under a STRICTMXD_WRAPPER
# (valgrind) the RSS is the tool's, and is printed only.
CEIL_KIB = {True: (48, 600), False: (16, 64)}  # asan -> (plaintext, tls)

GREETING_BOUND = 60.0  # all greetings of one batch of connections, loaded machine


def raise_nofile(need):
    """Raise this process's RLIMIT_NOFILE (the daemon, a child, inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return need
        except (ValueError, OSError):
            raise AssertionError("RLIMIT_NOFILE hard limit %d < %d and cannot be raised"
                                 % (hard, need))
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def nofile_of(pid):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                return line.split()[3]
    return "?"


def is_asan(binary):
    with open(binary, "rb") as f:
        return b"__asan_init" in f.read()


def all_closed(d):
    """The daemon has freed every session it accepted (its log has a disconnect for
    each connect): readiness probes no longer count against a limit."""
    log = d.log_text()
    return log.count("event=connect ") == log.count("event=disconnect ")


def open_many(port, n, source=None, batch=100, want=b"220 "):
    """n plaintext connections, batch by batch (the listen backlog is 128), each read up
    to the end of its first reply line. Returns [(socket, first line bytes, closed)];
    a connection whose line did not arrive within GREETING_BOUND has line b""."""
    out = []
    for start in range(0, n, batch):
        sel = selectors.DefaultSelector()
        group = []
        for _ in range(min(batch, n - start)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if source:
                s.bind((source, 0))
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            rec = [s, b"", False]
            group.append(rec)
            sel.register(s, selectors.EVENT_READ, rec)
        waiting = len(group)
        deadline = time.monotonic() + GREETING_BOUND
        while waiting and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.5):
                rec = key.data
                try:
                    chunk = rec[0].recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    rec[1] += chunk
                if not chunk or b"\r\n" in rec[1]:
                    rec[2] = not chunk
                    sel.unregister(rec[0])
                    waiting -= 1
        sel.close()
        for rec in group:
            rec[0].setblocking(True)
            rec[0].settimeout(20)
        out += [tuple(r) for r in group]
    return out


def eof_within(s, timeout):
    """Reads until EOF; returns (all bytes, closed) within the bound."""
    s.settimeout(0.5)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(4096)
        except socket.timeout:
            continue
        except OSError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def noop(s):
    s.settimeout(30)
    s.sendall(b"NOOP\r\n")
    buf = b""
    while b"\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            return None
        buf += chunk
    return buf


def send_and_check(test, d, subject, source=None, rcpt="good@example.org"):
    """A well-behaved client: STARTTLS, 250 queued, and the file in the Maildir."""
    old = set(d.mail_files("example.org", rcpt.split("@")[0]))
    before = len(old)
    c = smxtest.tls_session(d.port, timeout=60, source=source)
    try:
        test.assertEqual(c.mail("sender@client.example").code, 250)
        test.assertEqual(c.rcpt(rcpt).code, 250)
        r = c.data(smxtest.simple_message(subject, rcpt=rcpt), timeout=60)
        test.assertRegex(str(r), QUEUED_RE)
        c.cmd("QUIT")
    finally:
        c.close()
    files = d.wait_mail("example.org", rcpt.split("@")[0], before + 1, timeout=60)
    test.assertEqual(len(files), before + 1, "the well-behaved client's mail is not in the "
                     "Maildir")
    # the new file (Maildir names do not sort by time within a second)
    new = [f for f in files if f not in old]
    test.assertEqual(len(new), 1, files)
    test.assertIn(b"Subject: " + subject.encode(), smxtest.read_file(new[0]))


class Base(unittest.TestCase):
    def daemon(self, limits):
        d = Daemon(limits=limits)
        self.addCleanup(d.stop)
        return d

    def close_all(self, conns):
        for rec in conns:
            try:
                rec[0].close()
            except OSError:
                pass


class PerIpFlood(Base):
    def test_flood_from_one_address(self):
        d = self.daemon({"connections_per_ip": PER_IP})
        self.assertTrue(smxtest.poll(lambda: all_closed(d), 20), "readiness probe not freed")
        conns = open_many(d.port, FLOOD, batch=FLOOD)
        self.addCleanup(self.close_all, conns)
        served = [c for c in conns if c[1].startswith(b"220 ")]
        refused = [c for c in conns if not c[1].startswith(b"220 ")]
        self.assertEqual(len(served), PER_IP, "sessions served from one address")
        bad = [c[1] for c in refused
               if c[1] != b"421 4.7.0 mx.test.example Error: too many connections from "
                          b"127.0.0.1\r\n"]
        self.assertEqual(bad, [], "refused connections without the 421 4.7.0 greeting")
        for s, _line, closed in refused:
            if not closed:
                _data, closed = eof_within(s, 10)
            self.assertTrue(closed, "a refused connection was not closed")
        self.assertIn("reason=too_many_connections_from_ip", d.log_text())

        # another loopback address is served, its mail delivered, while the flood holds
        send_and_check(self, d, "from the other address", source="127.0.0.2")
        # the limit still holds for the flooding address, the held sessions still work
        again = open_many(d.port, 1)
        self.addCleanup(self.close_all, again)
        self.assertTrue(again[0][1].startswith(b"421 4.7.0 "), again[0][1])
        for s, _line, _closed in served[::5]:
            self.assertEqual(noop(s), b"250 2.0.0 Ok\r\n")
        # closing the flood frees the slots (bounded poll: the close is seen asynchronously)
        self.close_all(served)
        self.assertTrue(smxtest.poll(lambda: all_closed(d), 20), "sessions not freed")
        send_and_check(self, d, "after the flood")


class IdleSessions(Base):
    def test_thousands_idle_and_mail_still_flows(self):
        limit = raise_nofile(IDLE_PLAIN + IDLE_TLS + 1000)
        d = self.daemon({"connections": IDLE_PLAIN + IDLE_TLS + 100,
                         "connections_per_ip": IDLE_PLAIN + IDLE_TLS + 100,
                         "timeout_command": 900, "timeout_tls": 120})
        pid = d.proc.pid
        print("\nflood: test RLIMIT_NOFILE %d, strictmxd 'Max open files' %s"
              % (limit, nofile_of(pid)), flush=True)
        # warm up: the first TLS session and delivery allocate once-only state
        send_and_check(self, d, "warm up")
        self.assertTrue(smxtest.poll(lambda: all_closed(d), 20))
        rss0 = rss_kib(pid)

        t = time.monotonic()
        plain = open_many(d.port, IDLE_PLAIN)
        self.addCleanup(self.close_all, plain)
        bad = [c[1] for c in plain if not c[1].startswith(b"220 ")]
        self.assertEqual(len(bad), 0, "%d of %d connections not greeted, first: %r; "
                         "daemon log tail:\n%s" % (len(bad), IDLE_PLAIN, bad[:3],
                                                   d.log_text()[-2000:]))
        t_plain = time.monotonic() - t
        rss1 = rss_kib(pid)

        t = time.monotonic()
        tls = []
        self.addCleanup(lambda: [c.close() for c in tls])
        for i in range(IDLE_TLS):
            tls.append(smxtest.tls_session(d.port, timeout=60))
        t_tls = time.monotonic() - t
        rss2 = rss_kib(pid)

        per_plain = (rss1 - rss0) / IDLE_PLAIN
        per_tls = (rss2 - rss1) / IDLE_TLS
        asan = is_asan(smxtest.STRICTMXD)
        ceil_plain, ceil_tls = CEIL_KIB[asan]
        print("flood: RSS %d KiB -> %d KiB with %d idle plaintext sessions (opened in %.1f s) "
              "-> %d KiB with %d more idle TLS sessions (%.1f s); per session: plaintext "
              "%.1f KiB (ceiling %d), TLS %.1f KiB (ceiling %d, %s build)"
              % (rss0, rss1, IDLE_PLAIN, t_plain, rss2, IDLE_TLS, t_tls, per_plain,
                 ceil_plain, per_tls, ceil_tls, "ASan" if asan else "non-ASan"),
              flush=True)

        # a well-behaved client gets its mail through while all of them are held
        t = time.monotonic()
        send_and_check(self, d, "through the crowd")
        print("flood: well-behaved client's mail delivered in %.2f s with %d sessions held"
              % (time.monotonic() - t, IDLE_PLAIN + IDLE_TLS), flush=True)
        # the held sessions are alive and in sync (a sample)
        for s, _line, _closed in plain[::250]:
            self.assertEqual(noop(s), b"250 2.0.0 Ok\r\n")
        for c in tls[::50]:
            self.assertEqual(c.cmd("NOOP").code, 250)
        self.assertTrue(d.alive())

        if not os.environ.get("STRICTMXD_WRAPPER"):
            self.assertLess(per_plain, ceil_plain, "RSS per idle plaintext session")
            self.assertLess(per_tls, ceil_tls, "RSS per idle TLS session")

        # everything closed: the daemon frees them all and still serves
        self.close_all(plain)
        for c in tls:
            c.close()
        self.assertTrue(smxtest.poll(lambda: all_closed(d), 60), "sessions not freed")
        send_and_check(self, d, "after the crowd")


class Slowloris(Base):
    def test_many_trickling_clients_cut_off(self):
        d = self.daemon({"timeout_command": SLOW_TIMEOUT,
                         "connections_per_ip": SLOW_CLIENTS + 20})
        t0 = time.monotonic()  # no session can time out before t0 + SLOW_TIMEOUT
        conns = open_many(d.port, SLOW_CLIENTS)
        self.addCleanup(self.close_all, conns)
        self.assertEqual([c[1][:4] for c in conns], [b"220 "] * SLOW_CLIENTS)
        payload = b"NOOP " + b"a" * 200  # never a whole line
        got = {id(c[0]): b"" for c in conns}
        cut_at = {}
        good = {}

        def well_behaved():
            try:
                send_and_check(self, d, "beside the slowloris")
                good["ok"] = time.monotonic() - t0
            except BaseException as e:  # reported by the main thread
                good["error"] = e

        gt = threading.Thread(target=well_behaved, daemon=True)
        started = False
        sel = selectors.DefaultSelector()
        for s, _l, _c in conns:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        i = 0
        next_byte = time.monotonic()
        while len(cut_at) < SLOW_CLIENTS and time.monotonic() - t0 < 30:
            now = time.monotonic()
            if now >= next_byte and i < len(payload):
                for s, _l, _c in conns:
                    if id(s) not in cut_at:
                        try:
                            s.send(payload[i:i + 1])
                        except OSError:
                            pass  # closed: seen as EOF below
                i += 1
                next_byte += 1.0
            if not started and now - t0 > 1.0:
                gt.start()  # a normal client while the trickle is on
                started = True
            for key, _ in sel.select(timeout=max(0.01, min(0.2, next_byte - now))):
                s = key.fileobj
                try:
                    chunk = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                got[id(s)] += chunk
                if not chunk:
                    cut_at[id(s)] = time.monotonic() - t0
                    sel.unregister(s)
        sel.close()
        if not started:
            gt.start()
        gt.join(90)

        kept = SLOW_CLIENTS - len(cut_at)
        self.assertEqual(kept, 0, "%d trickling clients still connected after 30 s" % kept)
        no421 = [v for v in got.values() if not v.startswith(b"421 4.4.2 ")]
        self.assertEqual(no421, [], "cut off without 421 4.4.2")
        times = sorted(cut_at.values())
        print("\nflood: %d trickling clients cut off after %.1f-%.1f s (timeout_command=%d), "
              "%d bytes each at most; well-behaved client done at %s s"
              % (SLOW_CLIENTS, times[0], times[-1], SLOW_TIMEOUT, i,
                 "%.1f" % good["ok"] if "ok" in good else "-"), flush=True)
        # cut off by the command deadline, not earlier, and not much later
        self.assertGreaterEqual(times[0], SLOW_TIMEOUT - 1.0)
        self.assertLessEqual(times[-1], SLOW_TIMEOUT + 12)
        self.assertFalse(gt.is_alive(), "well-behaved client stuck")
        if "error" in good:
            raise good["error"]
        self.assertIn("ok", good)


if __name__ == "__main__":
    unittest.main()
