"""State-machine battery over real sockets and real TLS (issue 6, "Hostile input").

The pure session is covered command by command in tests/unit/test_inbound_battery.c;
this is the subset that must hold through strictmxd's I/O layer:

  - before STARTTLS every gated command (MAIL, RCPT, DATA, BDAT, AUTH, VRFY) gets exactly
    "530 5.7.0 Must issue a STARTTLS command first", the others their usual answer;
  - after TLS, every command in each state (no EHLO yet, ready, MAIL, RCPT, inside BDAT,
    after an error, after RSET) gets the code the protocol asks for;
  - BDAT edge cases (no MAIL, no RCPT, sizes that cannot be read, over the size limit,
    DATA after BDAT, BDAT after a refused DATA, CRLF.CRLF in a chunk, BDAT 0 LAST, chunk
    bytes and the next command in one write, a size nobody will send);
  - a listener with require_tls = no.

Each sequence runs three ways with the same expected replies: one command per write
(waiting for each reply), pipelined (RFC 2920: one write per group, a group ending after
STARTTLS and after DATA), and one byte per write. After every run the daemon must be
alive and a clean message sent on a new connection must land in the Maildir; messages a
sequence sends itself are looked for in the Maildir too.

Addresses: 127.0.0.95 (require_tls = yes, the default) and 127.0.0.96 (require_tls = no).
The whole test is bounded (well under 60 s).
"""

import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smxtest  # noqa: E402
from smxtest import Client, QUEUED_RE  # noqa: E402

HOST_TLS = "127.0.0.95"
HOST_OPEN = "127.0.0.96"
SIZE_LIMIT = 10000
CLOSE_BOUND = 5.0

GATE = "530 5.7.0 Must issue a STARTTLS command first"
EHLO_T = "\n".join(["250-mx.test.example", "250-PIPELINING", "250-SIZE %d" % SIZE_LIMIT,
                    "250-8BITMIME", "250-SMTPUTF8", "250-CHUNKING", "250 ENHANCEDSTATUSCODES"])
EHLO_P = EHLO_T.replace("250-CHUNKING\n", "250-CHUNKING\n250-STARTTLS\n")
HELO = "250 mx.test.example"
READY_TLS = "220 2.0.0 Ready to start TLS"
OK = "250 2.0.0 Ok"
MAIL_OK = "250 2.1.0 Ok"
RCPT_OK = "250 2.1.5 Ok"
R354 = "354 End data with <CR><LF>.<CR><LF>"
NEED_HELO = "503 5.5.1 Error: send HELO/EHLO first"
NEED_MAIL = "503 5.5.1 Error: need MAIL command"
NESTED = "503 5.5.1 Error: nested MAIL command"
NO_RCPT = "554 5.5.1 Error: no valid recipients"
RELAY = "554 5.7.1 <v@elsewhere.example>: Relay access denied"
DATA_BDAT = "503 5.5.1 Error: DATA after BDAT"
RCPT_BDAT = "503 5.5.1 Error: RCPT after BDAT"
REFUSED = "503 5.5.1 Error: an earlier chunk was refused; send RSET"
TOO_BIG = "552 5.3.4 Error: chunk exceeds message size limit"
VRFY = "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery"
TLS_ACTIVE = "503 5.5.1 Error: TLS already active"
NO_AUTH = "503 5.5.1 Error: authentication not enabled"
EXPN = "502 5.5.1 Error: command not implemented"
UNKNOWN = "500 5.5.2 Error: command not recognized"
TOO_LONG = "500 5.5.2 Error: line too long"
HELP = "214 2.0.0 *"
BYE = "221 2.0.0 Bye"
BDAT_SYNTAX = "501 5.5.4 Syntax: BDAT chunk-size [LAST]"
FRAMING = "421 4.5.0 mx.test.example Error: BDAT framing lost"
SYNC = "554 5.5.0 Error: SMTP protocol synchronization"
QUEUED = "<queued>"  # matches QUEUED_RE
CLOSED = "<closed>"  # the server closes the connection here


class Step:
    """Bytes to send, and the replies they must get, in order."""

    def __init__(self, send, *want, upgrade=False):
        self.send = send.encode() if isinstance(send, str) else send
        self.want = list(want)
        self.upgrade = upgrade  # start TLS after the (220) reply

    def syncs(self):
        """A pipelining client must wait for the reply to this step (RFC 2920 §3.1)."""
        head = self.send[:8].upper()
        return head.startswith(b"DATA") or head.startswith(b"STARTTLS") or self.upgrade


def C(line, *want, **kw):
    """One command line (CRLF added)."""
    return Step(line + "\r\n", *want, **kw)


def message(subject, body=b"hello\r\n"):
    return (b"From: <sender@client.example>\r\nTo: <u@example.org>\r\nSubject: " +
            subject.encode() + b"\r\n\r\n" + body)


def deliver(subject):
    """A whole DATA transaction from the "ready" state."""
    return [C("MAIL FROM:<sender@client.example>", MAIL_OK), C("RCPT TO:<u@example.org>", RCPT_OK),
            C("DATA", R354), Step(message(subject) + b".\r\n", QUEUED)]


def tls_up(helo=True):
    steps = [C("EHLO client.example", EHLO_P), C("STARTTLS", READY_TLS, upgrade=True)]
    if helo:
        steps.append(C("EHLO client.example", EHLO_T))
    return steps


def bdat(payload, *want, last=False):
    return Step(b"BDAT %d%s\r\n" % (len(payload), b" LAST" if last else b"") + payload, *want)


def octets(n):
    return "250 2.0.0 Ok: %d octets received" % n


# Commands whose reply does not depend on the state (checked in many states below)
def anywhere():
    return [C("NOOP", OK), C("noop with text", OK), C("HELP", HELP), C("EXPN staff", EXPN),
            C("FOO bar", UNKNOWN), C("", UNKNOWN), C("TURN", UNKNOWN),
            C("ETRN example.org", UNKNOWN), C("RSET now", "501 5.5.4 Syntax: RSET"),
            C("STARTTLS now", "501 5.5.4 Syntax: STARTTLS"), C("NOOP " + "x" * 600, TOO_LONG)]


GATED = ["MAIL FROM:<sender@client.example>", "mail from:<sender@client.example>",
         "RCPT TO:<u@example.org>", "DATA", "AUTH PLAIN AGJvYgBzZWNyZXQ=", "VRFY u"]


def gated_steps():
    steps = [C(c, GATE) for c in GATED]
    # RFC 3030 §2: a refused chunk is still read; its bytes are never commands
    steps += [bdat(b"abcd", GATE), bdat(b"QUIT\r\n", GATE, last=True),
              Step("BDAT 0 LAST\r\n", GATE), bdat(b"STARTTLS\r\n", GATE)]
    return steps


# --------------------------------------------------------------------------------------
# The sequences: functions of a unique subject, returning (host, steps)
# --------------------------------------------------------------------------------------

def seq_gate_before_tls(s):
    """Plaintext on a require_tls listener, before and after EHLO, then STARTTLS."""
    steps = gated_steps() + anywhere() + [C("RSET", OK)]
    steps += [C("EHLO client.example", EHLO_P)] + gated_steps() + [C("HELO client.example", HELO)]
    steps += gated_steps()
    steps += [C("STARTTLS", READY_TLS, upgrade=True),
              C("MAIL FROM:<sender@client.example>", NEED_HELO),  # RFC 3207 §4.2
              C("EHLO client.example", EHLO_T)]
    return HOST_TLS, steps + deliver(s) + [C("QUIT", BYE)]


def seq_tls_no_ehlo(s):
    steps = tls_up(helo=False) + [
        C("MAIL FROM:<sender@client.example>", NEED_HELO), C("RCPT TO:<u@example.org>", NEED_MAIL),
        C("DATA", NEED_MAIL), bdat(b"abcd", NEED_MAIL), Step("BDAT 0 LAST\r\n", NEED_MAIL),
        C("VRFY u", VRFY), C("AUTH PLAIN AGJvYgBzZWNyZXQ=", NO_AUTH), C("STARTTLS", TLS_ACTIVE),
        C("RSET", OK)] + anywhere() + [C("EHLO client.example", EHLO_T)]
    return HOST_TLS, steps + deliver(s) + [C("QUIT", BYE)]


def seq_tls_ready(s):
    steps = tls_up() + anywhere() + [
        C("RCPT TO:<u@example.org>", NEED_MAIL), C("DATA", NEED_MAIL),
        bdat(b"abcd", NEED_MAIL, last=True), Step("BDAT 0 LAST\r\n", NEED_MAIL),
        C("VRFY u", VRFY), C("AUTH PLAIN AGJvYgBzZWNyZXQ=", NO_AUTH), C("STARTTLS", TLS_ACTIVE),
        C("HELO client.example", HELO), C("RSET", OK)]
    return HOST_TLS, steps + deliver(s) + [C("QUIT", BYE)]


def seq_tls_mail_and_errors(s):
    """MAIL, errors inside the transaction, then the state after each."""
    steps = tls_up() + [
        C("MAIL FROM:<sender@client.example>", MAIL_OK),
        C("MAIL FROM:<sender@client.example>", NESTED),
        C("DATA", NO_RCPT), bdat(b"abcd", NO_RCPT),
        C("RCPT TO:<v@elsewhere.example>", RELAY),  # after an error reply: still in MAIL
        C("RCPT TO:<bad address>", "553 5.1.3 Bad recipient address syntax"),
        C("VRFY u", VRFY), C("STARTTLS", TLS_ACTIVE)] + anywhere() + [
        # a refused LAST chunk ends the transaction
        bdat(b"abcd", NO_RCPT, last=True), C("RCPT TO:<u@example.org>", NEED_MAIL),
        C("MAIL FROM:<sender@client.example>", MAIL_OK), C("RCPT TO:<u@example.org>", RCPT_OK),
        C("RCPT TO:<U@example.org>", RCPT_OK),  # a duplicate, delivered once
        C("MAIL FROM:<sender@client.example>", NESTED), C("DATA", R354),
        Step(message(s) + b".\r\n", QUEUED),
        C("RCPT TO:<u@example.org>", NEED_MAIL), C("QUIT", BYE)]
    return HOST_TLS, steps


def seq_tls_reset(s):
    """RSET, EHLO and HELO each drop a transaction (also one inside BDAT)."""
    steps = tls_up()
    for reset in (C("RSET", OK), C("EHLO client.example", EHLO_T), C("HELO client.example", HELO)):
        steps += [C("MAIL FROM:<sender@client.example>", MAIL_OK),
                  C("RCPT TO:<u@example.org>", RCPT_OK), bdat(b"dropped", octets(7)), reset,
                  C("RCPT TO:<u@example.org>", NEED_MAIL), C("DATA", NEED_MAIL),
                  bdat(b"x", NEED_MAIL, last=True)]
    return HOST_TLS, steps + deliver(s) + [C("QUIT", BYE)]


def seq_bdat_transaction(s):
    """Inside BDAT: what is refused, what goes on; CRLF.CRLF and commands are content."""
    head = message(s, b"")
    body = b"line\r\n.\r\nQUIT\r\n..dots\r\nMAIL FROM:<x@y>\r\n"
    steps = tls_up() + [
        C("MAIL FROM:<sender@client.example>", MAIL_OK), C("RCPT TO:<u@example.org>", RCPT_OK),
        bdat(head, octets(len(head))),
        C("RCPT TO:<u@example.org>", RCPT_BDAT), C("DATA", DATA_BDAT),  # RFC 3030 §2
        C("MAIL FROM:<sender@client.example>", NESTED), C("VRFY u", VRFY),
        C("STARTTLS", TLS_ACTIVE), C("NOOP", OK),
        bdat(body, octets(len(body))), Step("BDAT 0\r\n", octets(0)),
        bdat(b"end\r\n", QUEUED, last=True),
        C("RCPT TO:<u@example.org>", NEED_MAIL), C("QUIT", BYE)]
    return HOST_TLS, steps


def seq_bdat_pipelined_next(s):
    """Chunk bytes and the next commands in one write; BDAT 0 LAST ends a message."""
    m = message(s)
    steps = tls_up() + [
        Step(b"MAIL FROM:<sender@client.example>\r\nRCPT TO:<u@example.org>\r\nBDAT %d\r\n" %
             len(m) + m + b"BDAT 0 LAST\r\nMAIL FROM:<sender@client.example>\r\n"
             b"RCPT TO:<u@example.org>\r\nBDAT 0 LAST\r\nNOOP\r\n",
             MAIL_OK, RCPT_OK, octets(len(m)), QUEUED, MAIL_OK, RCPT_OK, QUEUED, OK),
        C("QUIT", BYE)]
    return HOST_TLS, steps


def seq_bdat_no_mail_no_rcpt(s):
    steps = tls_up() + [
        bdat(b"QUIT\r\n", NEED_MAIL), bdat(b"RSET\r\n", NEED_MAIL, last=True),
        C("MAIL FROM:<sender@client.example>", MAIL_OK),
        bdat(b"QUIT\r\n", NO_RCPT), bdat(b"QUIT\r\n", NO_RCPT, last=True),
        C("RCPT TO:<u@example.org>", NEED_MAIL), C("NOOP", OK)]
    return HOST_TLS, steps + deliver(s) + [C("QUIT", BYE)]


def seq_bdat_over_limit(s):
    steps = tls_up() + [
        C("MAIL FROM:<sender@client.example>", MAIL_OK), C("RCPT TO:<u@example.org>", RCPT_OK),
        bdat(b"y" * (SIZE_LIMIT + 1), TOO_BIG), bdat(b"abcd", REFUSED), C("DATA", DATA_BDAT),
        bdat(b"abcd", REFUSED, last=True), C("RCPT TO:<u@example.org>", NEED_MAIL)]
    return HOST_TLS, steps + deliver(s) + [C("QUIT", BYE)]


def seq_bdat_after_data_refused(s):
    m = message(s)
    steps = tls_up() + [
        C("MAIL FROM:<sender@client.example>", MAIL_OK), C("DATA", NO_RCPT),
        C("RCPT TO:<u@example.org>", RCPT_OK), C("DATA now", "501 5.5.4 Syntax: DATA"),
        bdat(m, QUEUED, last=True), C("QUIT", BYE)]
    return HOST_TLS, steps


def seq_bdat_bad_size(bad):
    def seq(s):
        steps = tls_up() + [
            C("MAIL FROM:<sender@client.example>", MAIL_OK),
            C("RCPT TO:<u@example.org>", RCPT_OK),
            Step(bad, BDAT_SYNTAX, FRAMING), Step(b"", CLOSED)]
        return HOST_TLS, steps
    return seq


def seq_closing(line, reply, tls=True):
    def seq(s):
        steps = (tls_up() if tls else []) + [Step(line, reply), Step(b"", CLOSED)]
        return HOST_TLS, steps
    return seq


def seq_open_listener(s):
    """require_tls = no: plaintext mail works; STARTTLS in a transaction drops it."""
    m = message(s)
    steps = [C("MAIL FROM:<sender@client.example>", NEED_HELO), C("VRFY u", VRFY),
             C("AUTH PLAIN AGJvYgBzZWNyZXQ=", NO_AUTH), C("EHLO client.example", EHLO_P)]
    steps += anywhere() + deliver(s + "p") + [
        C("MAIL FROM:<sender@client.example>", MAIL_OK), C("RCPT TO:<u@example.org>", RCPT_OK),
        bdat(b"dropped", octets(7)), C("STARTTLS", READY_TLS, upgrade=True),
        C("RCPT TO:<u@example.org>", NEED_MAIL), C("MAIL FROM:<sender@client.example>", NEED_HELO),
        C("EHLO client.example", EHLO_T), C("MAIL FROM:<sender@client.example>", MAIL_OK),
        C("RCPT TO:<u@example.org>", RCPT_OK), bdat(m, QUEUED, last=True), C("QUIT", BYE)]
    return HOST_OPEN, steps


SEQUENCES = [
    ("gate before STARTTLS", seq_gate_before_tls, 1),
    ("TLS, no EHLO yet", seq_tls_no_ehlo, 1),
    ("TLS ready", seq_tls_ready, 1),
    ("TLS MAIL and errors", seq_tls_mail_and_errors, 1),
    ("TLS RSET/EHLO/HELO reset", seq_tls_reset, 1),
    ("BDAT transaction", seq_bdat_transaction, 1),
    ("BDAT chunk and next command in one write", seq_bdat_pipelined_next, 1),
    ("BDAT without MAIL/RCPT", seq_bdat_no_mail_no_rcpt, 1),
    ("BDAT over the size limit", seq_bdat_over_limit, 1),
    ("BDAT after refused DATA", seq_bdat_after_data_refused, 1),
    ("BDAT non-numeric", seq_bdat_bad_size(b"BDAT abc\r\n"), 0),
    ("BDAT negative", seq_bdat_bad_size(b"BDAT -5\r\nabcde"), 0),
    ("BDAT 20 digits", seq_bdat_bad_size(b"BDAT 18446744073709551616 LAST\r\n"), 0),
    ("command with NUL", seq_closing(b"NOOP\0\r\n", "550 5.5.2 Error: NUL character received"), 0),
    ("command with bare LF", seq_closing(b"NOOP\nNOOP\r\n", "550 5.5.2 Error: bare <LF> received"),
     0),
    ("HTTP request", seq_closing(b"GET / HTTP/1.1\r\n",
                                 "221 2.7.0 Error: this is an SMTP server; goodbye", tls=False), 0),
    ("QUIT in plaintext", seq_closing(b"QUIT\r\n", BYE, tls=False), 0),
    ("require_tls = no listener", seq_open_listener, 2),
]


# --------------------------------------------------------------------------------------
# The daemon on 127.0.0.95/96
# --------------------------------------------------------------------------------------

class BatteryDaemon(smxtest.Daemon):
    """smxtest.Daemon, listening on HOST_TLS and (require_tls = no) HOST_OPEN."""

    def __init__(self):
        super().__init__(start=False, limits={"message_size": SIZE_LIMIT, "timeout_data": 2,
                                                   # the sequences make many errors on purpose
                                                   "errors": 200,
                                                   # ... so no tarpit (test_limits tests it)
                                                   "error_delay": 0})
        old = "listen = 127.0.0.1:%d" % self.port
        self.port = smxtest.free_port(HOST_TLS)
        self.plain_port = smxtest.free_port(HOST_OPEN)
        assert old in self.config_text
        self.config_text = self.config_text.replace(old, "listen = %s:%d" % (HOST_TLS, self.port))
        self.config_text += ('\n[listener "%s:%d"]\nrequire_tls = no\n'
                             % (HOST_OPEN, self.plain_port))
        with open(self.conf, "w") as f:
            f.write(self.config_text)
        self.start()

    def start(self, ready_timeout=20.0):
        # Daemon.start waits with smxtest.can_connect on 127.0.0.1: point it at our hosts
        hosts = {self.port: HOST_TLS, self.plain_port: HOST_OPEN}
        orig = smxtest.can_connect
        smxtest.can_connect = lambda p, host=None, timeout=1.0: orig(p, hosts[p], timeout)
        try:
            super().start(ready_timeout)
        finally:
            smxtest.can_connect = orig


# --------------------------------------------------------------------------------------
# Running a sequence
# --------------------------------------------------------------------------------------

MODES = ("step", "pipelined", "bytewise")


def match(want, reply):
    if want == QUEUED:
        return QUEUED_RE.match(str(reply)) is not None
    if want.endswith("*"):
        return str(reply).startswith(want[:-1])
    return str(reply) == want


class StateBattery(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.t0 = time.monotonic()
        cls.d = BatteryDaemon()
        cls.n = 0
        cls.subjects = {}  # subject -> path of its Maildir file, once seen
        cls.scanned = set()

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()
        print("state battery: %d runs, %.1f s" % (cls.n, time.monotonic() - cls.t0),
              file=sys.stderr)

    def subject(self):
        type(self).n += 1
        return "battery-%04d" % self.n

    # -- the Maildir --
    def find_subjects(self, subjects, timeout=10.0):
        want = set(subjects)

        def scan():
            for p in self.d.mail_files("example.org", "u"):
                if p in self.scanned:
                    continue
                self.scanned.add(p)
                raw = smxtest.read_file(p)
                m = re.search(rb"^Subject: (battery-\d{4}\w*)\r?$", raw, re.M)
                if m:
                    subj = m.group(1).decode()
                    # one file per message: a duplicate RCPT is delivered once
                    self.assertNotIn(subj, self.subjects, "stored twice: %s" % subj)
                    self.subjects[subj] = p
            return want <= set(self.subjects)

        if not smxtest.poll(scan, timeout):
            self.fail("not in the Maildir after %.0f s: %s"
                      % (timeout, sorted(want - set(self.subjects))))
        return [self.subjects[s] for s in subjects]

    def clean_message(self):
        """The daemon is alive and a clean message on a new connection is stored."""
        self.assertTrue(self.d.alive(), "strictmxd died; log:\n" + self.d.log_text()[-3000:])
        s = self.subject()
        c = Client(self.d.port, host=HOST_TLS)
        try:
            for st in tls_up() + deliver(s) + [C("QUIT", BYE)]:
                c.send(st.send)
                for w in st.want:
                    r = c.read_reply()
                    self.assertTrue(match(w, r), "clean message: %r for %r" % (str(r), w))
                if st.upgrade:
                    c.upgrade()
        finally:
            c.close()
        self.find_subjects([s])

    # -- one run --
    def run_steps(self, host, steps, mode, what):
        port = self.d.port if host == HOST_TLS else self.d.plain_port
        c = Client(port, host=host)
        self.addCleanup(c.close)
        self.assertEqual(str(c.greeting), smxtest.GREETING)
        groups = []
        if mode == "step":
            groups = [[st] for st in steps]
        else:
            cur = []
            for st in steps:
                cur.append(st)
                if st.syncs():
                    groups.append(cur)
                    cur = []
            if cur:
                groups.append(cur)
        for g in groups:
            data = b"".join(st.send for st in g)
            if mode == "bytewise":
                # one byte per write; a big chunk in writes of 97 bytes after its first 200
                i = 0
                while i < len(data):
                    n = 1 if i < 200 else 97
                    c.send(data[i:i + n])
                    i += n
            elif data:
                c.send(data)
            for st in g:
                for w in st.want:
                    if w == CLOSED:
                        lines, closed, rest = c.replies_until_closed(CLOSE_BOUND)
                        self.assertEqual((lines, rest), ([], b""), "%s: after the close" % what)
                        self.assertTrue(closed, "%s: not closed" % what)
                        continue
                    try:
                        r = c.read_reply(CLOSE_BOUND)
                    except (smxtest.Closed, OSError) as e:
                        self.fail("%s: step %r: no reply %r (%s)" % (what, st.send[:40], w, e))
                    self.assertTrue(match(w, r), "%s: step %r: got %r, want %r"
                                    % (what, st.send[:40], str(r), w))
                if st.upgrade:
                    c.upgrade()
        c.close()

    def test_sequences(self):
        for name, fn, stored in SEQUENCES:
            for mode in MODES:
                with self.subTest(sequence=name, mode=mode):
                    s = self.subject()
                    host, steps = fn(s)
                    self.run_steps(host, steps, mode, "%s (%s)" % (name, mode))
                    subjects = ([s + "p", s] if host == HOST_OPEN else [s])[:stored]
                    paths = self.find_subjects(subjects)
                    if fn is seq_open_listener:
                        # the plaintext message says so in its Received: header
                        plain, tls = (smxtest.read_file(p) for p in paths)
                        self.assertIn(b" with ESMTP id ", plain)
                        self.assertNotIn(b"(using TLS", plain)
                        self.assertIn(b" with ESMTPS id ", tls)
                        self.assertRegex(tls, smxtest.RECEIVED_TLS_RE)
                    if fn is seq_bdat_transaction:
                        raw = smxtest.read_file(paths[0])
                        # BDAT content is literal: the lone dot and the command lines stay
                        self.assertRegex(raw, rb"\r?\n\.\r?\nQUIT\r?\n\.\.dots\r?\nMAIL FROM:<x@y>")
                    self.clean_message()

    def test_gate_exact_text(self):
        """Exactly the 530 text for MAIL/RCPT/DATA/BDAT/AUTH, before and after EHLO."""
        c = Client(self.d.port, host=HOST_TLS)
        self.addCleanup(c.close)
        for ehlo in (False, True):
            if ehlo:
                self.assertEqual(str(c.ehlo()), EHLO_P)
            for line in ("MAIL FROM:<a@b.example>", "RCPT TO:<u@example.org>", "DATA",
                         "AUTH PLAIN", "AUTH LOGIN"):
                self.assertEqual(str(c.cmd(line)), GATE)
            c.send(b"BDAT 3\r\nabc")
            self.assertEqual(str(c.read_reply()), GATE)
            c.send(b"BDAT 3 LAST\r\nabc")
            self.assertEqual(str(c.read_reply()), GATE)
        self.clean_message()

    def test_content_after_refused_data(self):
        """DATA ends a group (RFC 2920 §3.1): when every RCPT was refused, content sent
        with DATA is still content: 554 5.5.0 and close, never run as commands."""
        c = Client(self.d.port, host=HOST_TLS)
        self.addCleanup(c.close)
        for st in tls_up():
            c.send(st.send)
            self.assertTrue(match(st.want[0], c.read_reply()))
            if st.upgrade:
                c.upgrade()
        spoof = self.subject()
        c.send(b"MAIL FROM:<sender@client.example>\r\nRCPT TO:<v@elsewhere.example>\r\nDATA\r\n"
               b"RSET\r\nMAIL FROM:<spoof@client.example>\r\nRCPT TO:<u@example.org>\r\n"
               b"BDAT 40 LAST\r\n" + (b"Subject: " + spoof.encode() + b"\r\n\r\n").ljust(40, b"x"))
        lines, closed, _ = c.replies_until_closed(CLOSE_BOUND)
        self.assertEqual(lines, [MAIL_OK, RELAY, SYNC])
        self.assertTrue(closed)
        self.clean_message()
        self.assertNotIn(spoof, self.subjects, "the smuggled message was stored")

    def test_bdat_size_nobody_sends(self):
        """An 18-digit chunk size parses; the chunk is read and thrown away (RFC 3030
        §2) until the data timeout (2 s here) ends the session with 421 4.4.2."""
        c = Client(self.d.port, host=HOST_TLS)
        self.addCleanup(c.close)
        for st in tls_up() + [C("MAIL FROM:<sender@client.example>", MAIL_OK),
                              C("RCPT TO:<u@example.org>", RCPT_OK)]:
            c.send(st.send)
            self.assertTrue(match(st.want[0], c.read_reply()))
            if st.upgrade:
                c.upgrade()
        t0 = time.monotonic()
        c.send(b"BDAT 999999999999999999 LAST\r\n" + b"QUIT\r\n" * 1000)
        lines, closed, _ = c.replies_until_closed(10)
        self.assertEqual(lines, ["421 4.4.2 mx.test.example Error: timeout exceeded"])
        self.assertTrue(closed)
        self.assertLess(time.monotonic() - t0, 8)
        self.clean_message()


if __name__ == "__main__":
    unittest.main(verbosity=2)
