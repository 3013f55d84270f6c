"""A STARTTLS man-in-the-middle for the outbound (client-side) tests.

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from mitm import StartTLSStripProxy

    with StartTLSStripProxy(listen=("127.0.0.31", 25), upstream=("127.0.0.21", 25),
                            mode="strip") as px:
        ...                                  # the MX record points at 127.0.0.31
        px.client_data()                     # every byte any client sent (bytes)
        px.client_sent(b"MAIL FROM")         # case-insensitive search in those bytes
        px.connections                       # number of accepted client connections

Modes (security-anchors.md §1.2, §8 B 7-8; EAST O_1, O_2, O_3, B_1):
  "strip"        remove the 250-STARTTLS / 250 STARTTLS line from every EHLO reply (the
                 line before a removed final line gets "250 "); a STARTTLS sent anyway is
                 answered "502 5.5.1 Command not implemented" by the proxy (never forwarded)
  "502"          STARTTLS is advertised, the proxy answers it "502 5.5.1 ..."
  "454"          STARTTLS is advertised, the proxy answers it "454 4.7.0 TLS not available"
  "inject"       STARTTLS is forwarded; the upstream's 220 is replaced by
                 "220 Ready\\r\\n250-evil\\r\\n" in ONE segment (response injection); after
                 that the proxy relays raw bytes both ways (the TLS handshake, if any, then
                 reaches the real upstream)
  "passthrough"  nothing changed (control): after the 220 to STARTTLS, raw relay

Plaintext replies are relayed reply by reply (a multi-line reply is sent as one unit),
matched to the client's commands in order, so pipelining keeps working.

Rules: only 127.0.0.0/8; every socket has a timeout (idle_timeout), so each connection
ends by itself; stop() closes everything and joins the threads with a bound.
"""

import re
import socket
import threading
import time

MODES = ("strip", "502", "454", "inject", "passthrough")
INJECTED_220 = b"220 Ready\r\n250-evil\r\n"
REPLY_454 = b"454 4.7.0 TLS not available\r\n"
REPLY_502 = b"502 5.5.1 Command not implemented\r\n"
STARTTLS_LINE_RE = re.compile(rb"^250[ -]STARTTLS\s*\r\n$", re.I)


class _Conn:
    def __init__(self, proxy, csock):
        self.proxy = proxy
        self.c = csock
        self.u = None
        self.pending = ["GREETING"]  # verbs whose replies are still due, oldest first
        self.lock = threading.Lock()  # serialises writes to the client and self.pending
        self.raw = threading.Event()  # both directions relay raw bytes
        self.closed = threading.Event()
        self.client_bytes = bytearray()
        self.upstream_bytes = bytearray()   # what the upstream sent
        self.to_client = bytearray()        # what the proxy sent to the client

    # ---- helpers ----
    def send_client(self, data):
        self.to_client += data
        self.c.sendall(data)

    def close(self):
        self.closed.set()
        for s in (self.c, self.u):
            if s is None:
                continue
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    # ---- client -> upstream ----
    def client_pump(self):
        buf = b""
        try:
            while not self.closed.is_set():
                d = self.c.recv(65536)
                if not d:
                    break
                with self.proxy.lock:
                    self.proxy.client_bytes += d
                self.client_bytes += d
                if self.raw.is_set():
                    self.u.sendall(d)
                    continue
                buf += d
                while b"\n" in buf and not self.raw.is_set():
                    i = buf.index(b"\n") + 1
                    line, buf = buf[:i], buf[i:]
                    self.on_client_line(line)
                if self.raw.is_set() and buf:
                    self.u.sendall(buf)
                    buf = b""
        except OSError:
            pass
        finally:
            self.close()

    def on_client_line(self, line):
        verb = line.split(b" ", 1)[0].strip().upper()
        mode = self.proxy.mode
        if verb == b"STARTTLS" and mode in ("strip", "502", "454"):
            with self.lock:
                if not self.pending:  # nothing outstanding: answer now
                    self.send_client(REPLY_454 if mode == "454" else REPLY_502)
                else:  # answer after the replies still due (pipelining order)
                    self.pending.append(("LOCAL", REPLY_454 if mode == "454" else REPLY_502))
            return
        with self.lock:
            self.pending.append(verb.decode("ascii", "replace"))
        self.u.sendall(line)
        if verb == b"STARTTLS":
            # after STARTTLS the client's next bytes are a TLS handshake: never parse them
            self.raw.set()

    # ---- upstream -> client ----
    def upstream_pump(self):
        buf = b""
        reply = []
        try:
            while not self.closed.is_set():
                d = self.u.recv(65536)
                if not d:
                    break
                self.upstream_bytes += d
                if self.raw.is_set() and not self._starttls_outstanding():
                    with self.lock:
                        self.send_client(d)
                    continue
                buf += d
                while b"\n" in buf:
                    i = buf.index(b"\n") + 1
                    line, buf = buf[:i], buf[i:]
                    reply.append(line)
                    if len(line) >= 4 and line[3:4] == b"-":
                        continue
                    done = self.on_reply(reply)
                    reply = []
                    if done:  # switched to raw relay: pass the rest through
                        if buf:
                            with self.lock:
                                self.send_client(buf)
                            buf = b""
                        break
        except OSError:
            pass
        finally:
            self.close()

    def _starttls_outstanding(self):
        with self.lock:
            return "STARTTLS" in self.pending

    def on_reply(self, reply):
        """Handle one complete upstream reply; True when the connection turned raw."""
        mode = self.proxy.mode
        with self.lock:
            verb = self.pending.pop(0) if self.pending else "?"
            out = b"".join(reply)
            if verb == "EHLO" and mode == "strip":
                out = strip_starttls(reply)
            if verb == "STARTTLS":
                if reply[-1].startswith(b"220") and mode == "inject":
                    out = INJECTED_220
                self.send_client(out)
                return True
            self.send_client(out)
            # locally answered STARTTLS queued behind this reply
            while self.pending and isinstance(self.pending[0], tuple):
                self.send_client(self.pending.pop(0)[1])
        return False

    def run(self):
        try:
            self.u = socket.create_connection(self.proxy.upstream,
                                              timeout=self.proxy.connect_timeout)
        except OSError:
            self.proxy.upstream_failures += 1
            self.close()
            return
        for s in (self.c, self.u):
            s.settimeout(self.proxy.idle_timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = threading.Thread(target=self.upstream_pump, daemon=True)
        t.start()
        self.client_pump()
        t.join(self.proxy.idle_timeout + 5)


def strip_starttls(reply_lines):
    """An EHLO reply (list of lines with CRLF) without its STARTTLS line; when the removed
    line was the last one, the new last line gets the "250 " separator."""
    kept = [l for l in reply_lines if not STARTTLS_LINE_RE.match(l)]
    if not kept:
        return b""
    last = kept[-1]
    if len(last) >= 4 and last[3:4] == b"-":
        kept[-1] = last[:3] + b" " + last[4:]
    return b"".join(kept)


class StartTLSStripProxy:
    """Threaded TCP proxy listen -> upstream with a STARTTLS attack (see module doc)."""

    def __init__(self, listen=("127.0.0.31", 25), upstream=("127.0.0.21", 25),
                 mode="strip", idle_timeout=30.0, connect_timeout=5.0, start=True):
        if mode not in MODES:
            raise ValueError("mode must be one of %s" % (MODES,))
        for addr in (listen[0], upstream[0]):
            if not addr.startswith("127."):
                raise ValueError("loopback addresses only")
        self.listen = tuple(listen)
        self.upstream = tuple(upstream)
        self.mode = mode
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.lock = threading.Lock()
        self.client_bytes = bytearray()
        self.conns = []
        self.connections = 0
        self.upstream_failures = 0
        self._stop = threading.Event()
        self._threads = []
        self.lsock = None
        if start:
            self.start()

    def start(self):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(self.listen)
        self.lsock.listen(32)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                csock, _ = self.lsock.accept()
            except (socket.timeout, OSError):
                continue
            conn = _Conn(self, csock)
            with self.lock:
                self.conns.append(conn)
                self.connections += 1
            t = threading.Thread(target=conn.run, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout=10.0):
        self._stop.set()
        if self.lsock is not None:
            try:
                self.lsock.close()
            except OSError:
                pass
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            c.close()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    # ---- observation ----
    def client_data(self):
        with self.lock:
            return bytes(self.client_bytes)

    def client_sent(self, needle):
        """True when any client ever sent `needle` (bytes, case-insensitive)."""
        return needle.lower() in self.client_data().lower()

    def to_client_data(self):
        with self.lock:
            return b"".join(bytes(c.to_client) for c in self.conns)
