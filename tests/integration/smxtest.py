"""Shared helpers for the strictmx integration tests (real peers over loopback).

Environment (set by CTest, see tests/CMakeLists.txt):
  STRICTMXD     path of the daemon binary
  STRICTMX      path of the CLI binary
  STRICTMX_SRC  repository root

Rules followed here: only 127.0.0.0/8 addresses; every wait is a bounded poll on
a condition; the daemon runs in a fresh temporary directory per Daemon object.
"""

import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("STRICTMX_SRC") or os.path.dirname(os.path.dirname(HERE))
STRICTMXD = os.environ.get("STRICTMXD") or os.path.join(SRC, "build-test", "strictmxd")
STRICTMX = os.environ.get("STRICTMX") or os.path.join(SRC, "build-test", "strictmx")

HOSTNAME = "mx.test.example"
GREETING = "220 mx.test.example ESMTP strictmx"
TLS_FIRST = "530 5.7.0 Must issue a STARTTLS command first"
INFO_URL = "https://example.org/tls"

# The TLS line of the Received header, whatever cipher the client picked.
RECEIVED_TLS_RE = re.compile(rb"\(using TLSv1\.[23] with cipher \S+ \(\d+/\d+ bits\)\)")

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                     "runtime error:")


def require_binaries(*paths):
    """Fail loudly (not skip) when a binary under test is missing."""
    for p in paths or (STRICTMXD, STRICTMX):
        if not (os.path.isfile(p) and os.access(p, os.X_OK)):
            raise RuntimeError("binary under test not found or not executable: %s "
                               "(set STRICTMXD/STRICTMX or build build-test)" % p)


def free_port(host="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def poll(cond, timeout, interval=0.05):
    """Bounded poll: returns cond()'s first truthy value, or None after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def can_connect(port, host="127.0.0.1", timeout=1.0):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def uid_of(user):
    import pwd
    return pwd.getpwnam(user).pw_uid


def sanitizer_excerpt(log, stack_lines=int(os.environ.get("SMX_STACK_LINES", "12"))):
    """The sanitizer part of a log, short: each ERROR/runtime error line with the first
    stack lines after it (SMX_STACK_LINES, default 12), and the SUMMARY lines (full log: set
    SMX_KEEP_TMP=1)."""
    lines = log.splitlines()
    out = []
    for i, l in enumerate(lines):
        if "ERROR: " in l and "Sanitizer" in l or "runtime error:" in l:
            out += lines[i:i + stack_lines] + ["..."]
        elif l.startswith("SUMMARY: "):
            out.append(l)
        elif l.startswith("Direct leak of"):
            out += lines[i:i + 6]
    return "\n".join(out[:200])


# --------------------------------------------------------------------------------------
# Daemon
# --------------------------------------------------------------------------------------

class Daemon:
    """A strictmxd in the foreground with its own config and data_dir.

    server:    extra [server] keys (dict), e.g. {"info_url": INFO_URL}
    limits:    [limits] keys (dict), e.g. {"recipients": 3}
    plain_listener: if true, add [listener "127.0.0.1:PORT2"] require_tls = no;
               its port is .plain_port
    """

    def __init__(self, server=None, limits=None, plain_listener=False, start=True,
                 ready_timeout=20.0):
        require_binaries(STRICTMXD)
        self.tmp = tempfile.mkdtemp(prefix="smx-it-")
        os.chmod(self.tmp, 0o755)
        self.port = free_port()
        self.plain_port = free_port() if plain_listener else None
        self.data_dir = os.path.join(self.tmp, "var")
        self.conf = os.path.join(self.tmp, "strictmx.conf")
        self.log_path = os.path.join(self.tmp, "daemon.log")
        self.proc = None
        self._stopped = False
        self.exit_code = None
        lines = ["[server]",
                 "hostname = %s" % HOSTNAME,
                 "listen = 127.0.0.1:%d" % self.port,
                 "data_dir = %s" % self.data_dir,
                 "local_domains = example.org"]
        for k, v in (server or {}).items():
            lines.append("%s = %s" % (k, v))
        if limits:
            lines += ["", "[limits]"]
            for k, v in limits.items():
                lines.append("%s = %s" % (k, v))
        if plain_listener:
            lines += ["", '[listener "127.0.0.1:%d"]' % self.plain_port, "require_tls = no"]
        self.config_text = "\n".join(lines) + "\n"
        with open(self.conf, "w") as f:
            f.write(self.config_text)
        os.chmod(self.conf, 0o644)
        if start:
            self.start(ready_timeout)

    @classmethod
    def with_config(cls, extra="", data_dir=None, limits=None):
        """A started daemon whose config is the default plus the INI text extra
        (more sections), optionally on another data_dir (a small file system)."""
        d = cls(start=False, limits=limits)
        with open(d.conf) as f:
            text = f.read()
        if data_dir:
            text = text.replace("data_dir = %s" % d.data_dir, "data_dir = %s" % data_dir)
            d.data_dir = data_dir
        with open(d.conf, "w") as f:
            f.write(text + extra)
        d.start()
        return d

    # -- lifecycle --
    def start(self, ready_timeout=20.0):
        env = dict(os.environ)
        # SMX_DIAG_NO_LEAKS=1 is for local diagnosis only (see functional results while a
        # known leak is being fixed); CTest never sets it.
        env["ASAN_OPTIONS"] = "detect_leaks=%d" % (0 if os.environ.get("SMX_DIAG_NO_LEAKS") else 1)
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        self._log = open(self.log_path, "ab")
        argv = [STRICTMXD, "-c", self.conf]
        # STRICTMXD_WRAPPER: a program that runs the daemon, e.g. under valgrind (make
        # memcheck); it must exec the daemon so that proc.pid stays the daemon's pid.
        wrapper = os.environ.get("STRICTMXD_WRAPPER")
        if wrapper:
            argv = [wrapper] + argv
            ready_timeout *= 6  # valgrind is ~20x slower to start
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log, env=env,
                                     cwd=self.tmp)
        ports = [self.port] + ([self.plain_port] if self.plain_port else [])
        deadline = time.monotonic() + ready_timeout
        for p in ports:
            while not can_connect(p, timeout=0.5):
                if self.proc.poll() is not None:
                    raise RuntimeError("strictmxd exited with %s before listening; log:\n%s"
                                       % (self.proc.returncode, self.log_text()))
                if time.monotonic() > deadline:
                    self._kill()
                    raise RuntimeError("strictmxd not listening on %d after %.0f s; log:\n%s"
                                       % (p, ready_timeout, self.log_text()))
                time.sleep(0.05)

    def _kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def stop(self, timeout=20.0):
        """SIGTERM, bounded wait, then assert exit code 0 and a sanitizer-clean log."""
        if self._stopped or self.proc is None:
            return
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                raise AssertionError("strictmxd did not exit within %.0f s of SIGTERM; log:\n%s"
                                     % (timeout, self.log_text()[-4000:]))
        self._log.close()
        self.exit_code = self.proc.returncode
        log = self.log_text()
        bad = [m for m in SANITIZER_MARKERS if m in log]
        if bad:
            raise AssertionError("sanitizer report in daemon log (%s):\n%s"
                                 % (bad, sanitizer_excerpt(log)))
        if self.exit_code != 0:
            raise AssertionError("strictmxd exit code %s after SIGTERM (expected 0); log:\n%s"
                                 % (self.exit_code, log[-4000:]))
        if not os.environ.get("SMX_KEEP_TMP"):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is not None:
            # keep the first failure visible; still stop the process
            try:
                self.stop()
            except AssertionError as e:
                print("(additionally at stop: %s)" % str(e)[:2000])
            return False
        self.stop()
        return False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # -- observation --
    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern, timeout=10.0):
        rx = re.compile(pattern)
        return poll(lambda: rx.search(self.log_text()), timeout)

    def maildir(self, domain, user):
        return os.path.join(self.data_dir, "mail", domain, user.lower())

    def mail_files(self, domain, user, sub="new"):
        d = os.path.join(self.maildir(domain, user), sub)
        try:
            return sorted(os.path.join(d, n) for n in os.listdir(d) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def wait_mail(self, domain, user, count=1, timeout=10.0):
        """Bounded poll until new/ holds >= count files; returns the list (maybe shorter)."""
        poll(lambda: len(self.mail_files(domain, user)) >= count, timeout)
        return self.mail_files(domain, user)

    def all_mail_files(self):
        """Every file under data_dir/mail in any new/, cur/ or tmp/ directory."""
        out = []
        root = os.path.join(self.data_dir, "mail")
        for dirpath, _dirs, files in os.walk(root):
            if os.path.basename(dirpath) in ("new", "cur", "tmp"):
                out += [os.path.join(dirpath, f) for f in files]
        return sorted(out)

    def all_mail_bytes(self):
        out = []
        for p in self.all_mail_files():
            with open(p, "rb") as f:
                out.append((p, f.read()))
        return out


# --------------------------------------------------------------------------------------
# Raw SMTP client
# --------------------------------------------------------------------------------------

class Closed(Exception):
    """The peer closed the connection (data read so far in .data)."""

    def __init__(self, msg, data=b""):
        super().__init__(msg)
        self.data = data


class Reply:
    def __init__(self, lines):
        self.raw_lines = lines  # list of str, without CRLF
        self.code = int(lines[-1][:3])
        self.texts = [l[4:] for l in lines]

    @property
    def last(self):
        return self.raw_lines[-1]

    @property
    def first(self):
        return self.raw_lines[0]

    def __str__(self):
        return "\n".join(self.raw_lines)

    __repr__ = __str__


REPLY_LINE_RE = re.compile(rb"^(\d{3})([ -])(.*)\r\n\Z", re.S)


class Client:
    """Byte-exact SMTP client over a plain socket, upgradable to TLS in place."""

    def __init__(self, port, host="127.0.0.1", timeout=10.0, source=None, read_greeting=True):
        self.port = port
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = b""
        self.tls = False
        self.transcript = []  # ("C"/"S", bytes)
        self.extensions = []
        self.greeting = self.read_reply() if read_greeting else None

    # -- low level --
    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.transcript.append(("C", data))
        self.sock.sendall(data)

    def _recv(self, timeout):
        self.sock.settimeout(max(0.01, timeout))
        try:
            d = self.sock.recv(65536)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionResetError,
                BrokenPipeError):
            d = b""
        except ssl.SSLError as e:
            if "timed out" in str(e):
                raise socket.timeout(str(e))
            d = b""
        if d:
            self.transcript.append(("S", d))
        return d

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out waiting for server data; have %r" % self.buf[-300:])
        d = self._recv(left)
        if not d:
            raise Closed("connection closed by server; pending %r" % self.buf[-300:], self.buf)
        self.buf += d

    def read_line(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        i = self.buf.index(b"\r\n") + 2
        line, self.buf = self.buf[:i], self.buf[i:]
        return line

    def read_reply(self, timeout=None):
        """Read one (possibly multi-line) reply; raises Closed / socket.timeout."""
        deadline = time.monotonic() + (timeout or self.timeout)
        lines = []
        while True:
            line = self.read_line(max(0.01, deadline - time.monotonic()))
            m = REPLY_LINE_RE.match(line)
            if not m:
                raise AssertionError("malformed reply line %r (so far %r)" % (line, lines))
            if lines and m.group(1) != lines[0][:3].encode():
                raise AssertionError("reply code changed inside multi-line reply: %r then %r"
                                     % (lines, line))
            lines.append(line[:-2].decode("utf-8", "replace"))
            if m.group(2) == b" ":
                return Reply(lines)

    def _take_reply(self):
        """One complete reply from the buffer, or None; never reads."""
        lines, pos = [], 0
        while True:
            j = self.buf.find(b"\r\n", pos)
            if j < 0:
                return None
            line = self.buf[pos:j + 2]
            m = REPLY_LINE_RE.match(line)
            if not m:
                raise AssertionError("malformed reply line %r (so far %r)" % (line, lines))
            lines.append(line[:-2].decode("utf-8", "replace"))
            pos = j + 2
            if m.group(2) == b" ":
                self.buf = self.buf[pos:]
                return Reply(lines)

    def send_reading(self, data, n, timeout=60.0, stop=None, on_reply=None):
        """Write data while reading replies, on one thread (an SSL socket must not be
        read and written by two threads at once), until n replies came, or stop(reply)
        is true, or the server closed. The server may answer (and stop reading while
        its replies wait) before it has read everything. Returns the replies."""
        out, sent = [], 0
        deadline = time.monotonic() + timeout
        self.transcript.append(("C", data))
        self.sock.setblocking(False)
        try:
            while len(out) < n:
                if time.monotonic() > deadline:
                    raise socket.timeout("send_reading: %d of %d replies, %d of %d bytes "
                                         "sent" % (len(out), n, sent, len(data)))
                pending = self.tls and self.sock.pending()
                wl = [self.sock] if sent < len(data) else []
                rl, wl, _ = select.select([self.sock], wl, [], 0 if pending else 0.5)
                if wl:
                    try:
                        sent += self.sock.send(data[sent:sent + 65536])
                    except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                        pass
                if rl or pending:
                    try:
                        d = self.sock.recv(65536)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                        continue
                    except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionResetError,
                            BrokenPipeError):
                        d = b""
                    if not d:
                        raise Closed("connection closed by server; pending %r"
                                     % self.buf[-300:], self.buf)
                    self.transcript.append(("S", d))
                    self.buf += d
                while len(out) < n:
                    r = self._take_reply()
                    if r is None:
                        break
                    out.append(r)
                    if on_reply:
                        on_reply(len(out))
                    if stop and stop(r):
                        return out
            return out
        finally:
            self.sock.setblocking(True)
            self.sock.settimeout(self.timeout)

    def cmd(self, line, timeout=None):
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.read_reply(timeout)

    def read_until_closed(self, timeout=10.0):
        """Read everything until EOF. Returns (bytes, closed: bool) within the bound."""
        deadline = time.monotonic() + timeout
        data, self.buf = self.buf, b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return data, False
            try:
                d = self._recv(left)
            except (socket.timeout, TimeoutError):
                return data, False
            except OSError:
                return data, True
            if not d:
                return data, True
            data += d

    def replies_until_closed(self, timeout=10.0):
        """All complete reply lines until EOF. Returns (list of str lines, closed, rest)."""
        data, closed = self.read_until_closed(timeout)
        lines = data.split(b"\r\n")
        rest = lines.pop()  # incomplete tail (b"" if data ended with CRLF)
        return [l.decode("utf-8", "replace") for l in lines], closed, rest

    def is_closed(self, timeout=5.0):
        _data, closed = self.read_until_closed(timeout)
        return closed

    # -- SMTP level --
    def ehlo(self, name="client.test.example"):
        r = self.cmd("EHLO " + name)
        if r.code == 250:
            self.extensions = [t.upper() for t in r.texts[1:]]
        return r

    def starttls(self, server_hostname=HOSTNAME):
        r = self.cmd("STARTTLS")
        if r.code != 220:
            raise AssertionError("STARTTLS refused: %s" % r)
        self.upgrade(server_hostname)
        return r

    def upgrade(self, server_hostname=HOSTNAME, ctx=None):
        if self.buf:
            raise AssertionError("server sent bytes after 220 Ready, before TLS: %r" % self.buf)
        ctx = ctx or client_context()
        self.sock.settimeout(self.timeout)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname,
                                    do_handshake_on_connect=False)
        self.tls = True
        self.sock.do_handshake()

    def tls_version(self):
        return self.sock.version() if self.tls else None

    def tls_cipher(self):
        return self.sock.cipher() if self.tls else None

    def mail(self, sender, params=""):
        return self.cmd("MAIL FROM:<%s>%s" % (sender, (" " + params) if params else ""))

    def rcpt(self, rcpt):
        return self.cmd("RCPT TO:<%s>" % rcpt)

    def data(self, content, timeout=None):
        """DATA; content is sent verbatim (caller supplies dot-stuffing and CRLF.CRLF)."""
        r = self.cmd("DATA")
        if r.code != 354:
            return r
        self.send(content)
        return self.read_reply(timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def client_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_session(port, helo="client.test.example", timeout=10.0, source=None):
    """Connected, greeted, EHLO, STARTTLS, EHLO again: ready for MAIL."""
    c = Client(port, timeout=timeout, source=source)
    assert c.greeting.code == 220, c.greeting
    r = c.ehlo(helo)
    assert r.code == 250, r
    c.starttls()
    r = c.ehlo(helo)
    assert r.code == 250, r
    return c


def simple_message(subject, body_lines=("hello",), sender="sender@client.example",
                   rcpt="u@example.org"):
    """A small RFC 5322 message, CRLF, dot-stuffed, ending with CRLF.CRLF."""
    lines = ["From: <%s>" % sender, "To: <%s>" % rcpt, "Subject: %s" % subject,
             "Message-ID: <%s@client.example>" % re.sub(r"\W", "", subject), ""]
    lines += list(body_lines)
    out = ""
    for l in lines:
        out += ("." + l if l.startswith(".") else l) + "\r\n"
    return (out + ".\r\n").encode()


def send_mail(port, subject, rcpt="u@example.org", sender="sender@client.example",
              body_lines=("hello",)):
    """Full TLS transaction; returns the final reply after the message."""
    c = tls_session(port)
    try:
        r = c.mail(sender)
        assert r.code == 250, r
        r = c.rcpt(rcpt)
        assert r.code == 250, r
        r = c.data(simple_message(subject, body_lines, sender, rcpt))
        c.cmd("QUIT")
        return r
    finally:
        c.close()


QUEUED_RE = re.compile(r"^250 2\.0\.0 Ok: queued as \S+$")


# --------------------------------------------------------------------------------------
# Stored message parsing
# --------------------------------------------------------------------------------------

def split_message(raw):
    """(list of unfolded header lines as bytes, list of body lines as bytes).

    Accepts CRLF or LF storage; a line's trailing CR is removed.
    """
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    lines = [l[:-1] if l.endswith(b"\r") else l for l in lines]
    headers = []
    i = 0
    while i < len(lines) and lines[i] != b"":
        if lines[i][:1] in (b" ", b"\t") and headers:
            headers[-1] += b" " + lines[i].strip()
        else:
            headers.append(lines[i])
        i += 1
    return headers, lines[i + 1:]


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


# --------------------------------------------------------------------------------------
# Certificates and a permissive fake STARTTLS server (controls for the TLS tests)
# --------------------------------------------------------------------------------------

def make_cert(dirpath, name, kind="ec"):
    """Self-signed cert in dirpath: returns (certfile, keyfile). kind: 'ec' or 'rsa'."""
    key = os.path.join(dirpath, name + ".key")
    crt = os.path.join(dirpath, name + ".crt")
    if kind == "ec":
        newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    else:
        newkey = ["-newkey", "rsa:2048"]
    subprocess.run(["openssl", "req", "-x509", "-nodes", "-days", "2", "-subj",
                    "/CN=fake.test.example"] + newkey + ["-keyout", key, "-out", crt],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=60)
    return crt, key


class FakeStarttlsServer:
    """A permissive SMTP+STARTTLS server (TLS 1.0..1.3, every cipher, RSA and ECDSA
    certs). Used as a control: the same client command that the daemon must refuse
    does succeed here, so a refusal is the daemon's doing, not the client's."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="smx-fake-")
        os.chmod(self.tmp, 0o755)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        for kind in ("rsa", "ec"):
            crt, key = make_cert(self.tmp, "fake-" + kind, kind)
            ctx.load_cert_chain(crt, key)
        self.ctx = ctx
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.lsock.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn):
        conn.settimeout(20)
        f = None
        try:
            conn.sendall(b"220 fake.test.example ESMTP\r\n")
            s = conn
            buf = b""
            tls = False
            while True:
                while b"\r\n" not in buf:
                    d = s.recv(4096)
                    if not d:
                        return
                    buf += d
                line, buf = buf.split(b"\r\n", 1)
                verb = line.split(b" ")[0].upper()
                if verb in (b"EHLO", b"HELO"):
                    ext = b"" if tls else b"250-STARTTLS\r\n"
                    s.sendall(b"250-fake.test.example\r\n" + ext + b"250 8BITMIME\r\n")
                elif verb == b"STARTTLS" and not tls:
                    s.sendall(b"220 2.0.0 Ready to start TLS\r\n")
                    s = self.ctx.wrap_socket(conn, server_side=True)
                    tls = True
                    buf = b""
                elif verb == b"QUIT":
                    s.sendall(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    s.sendall(b"250 2.0.0 Ok\r\n")
        except (OSError, ssl.SSLError):
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def stop(self):
        self._stop.set()
        self.thread.join(5)
        self.lsock.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------
# External tools
# --------------------------------------------------------------------------------------

def run(argv, timeout=60, input=None, check_timeout=True):
    """Run a tool with a bound; returns CompletedProcess with text stdout/stderr."""
    return subprocess.run(argv, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                          text=True, errors="replace")


# ---- losefs (tests/integration/losefs.py): power cuts and injected I/O errors ----

LOSEFS = os.path.join(HERE, "losefs.py")
# Debian's interpreter: python3-fusepy is installed for it (not for another python3 on PATH)
FS_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else None


def fuse_missing():
    """Why losefs cannot run here (no /dev/fuse, no python3-fusepy), or None."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    if FS_PYTHON is None:
        return "no /usr/bin/python3 (Debian's, with python3-fusepy)"
    p = subprocess.run([FS_PYTHON, "-c", "import fusepy"], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        return "python3-fusepy/libfuse2 not usable: %s" % p.stderr.strip()[-300:]
    return None


class LoseFs:
    """losefs mounted on a new directory (`mnt`); what a power cut leaves is written to `out`
    by unmount(). With faults=True, set_faults() makes chosen operations fail (losefs.py's
    FAULTS rules). Cleanups (kill, lazy unmount, removal) are registered on `test`."""

    def __init__(self, test, faults=False):
        self.base = tempfile.mkdtemp(prefix="smx-losefs-")
        os.chmod(self.base, 0o755)  # the daemon's own user walks through it
        test.addCleanup(shutil.rmtree, self.base, True)
        self.backing, self.mnt, self.out = (os.path.join(self.base, n)
                                            for n in ("backing", "mnt", "out"))
        for p in (self.backing, self.mnt, self.out):
            os.mkdir(p, 0o700)
        self.faults = os.path.join(self.base, "faults") if faults else None
        self.log_path = os.path.join(self.base, "losefs.log")
        log = open(self.log_path, "wb")
        test.addCleanup(log.close)
        self.proc = subprocess.Popen(
            [FS_PYTHON, LOSEFS, self.backing, self.mnt, self.out]
            + ([self.faults] if self.faults else []),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        test.addCleanup(self._stop)
        if not poll(lambda: os.path.ismount(self.mnt), 20):
            test.fail("losefs did not mount:\n" + self.log_text())
        test.addCleanup(lambda: os.path.ismount(self.mnt)
                        and subprocess.run(["umount", "-l", self.mnt], timeout=60))

    def _stop(self):
        if self.proc.poll() is None:  # unmounted lazily just before (cleanups run LIFO)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def set_faults(self, *rules):
        """Replace the rules ("fsync EIO /spool/", ...); none: nothing fails."""
        tmp = self.faults + ".new"
        with open(tmp, "w") as f:
            f.write("".join(r + "\n" for r in rules))
        os.rename(tmp, self.faults)

    def unmount(self):
        """The power cut: unmount; losefs writes what would survive to `out`. True when it
        finished writing."""
        subprocess.run(["umount", self.mnt], check=True, timeout=60)
        self.proc.wait(60)
        done = os.path.join(self.out, ".losefs-done")
        if not os.path.exists(done):
            return False
        os.unlink(done)
        return True

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-2000:]
