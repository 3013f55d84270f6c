"""MX peers for the outbound delivery tests: a test CA and private Postfix instances
that RECEIVE mail as MX hosts on 127.0.0.X:25, with TLS variants.

Python 3 standard library plus the openssl CLI, faketime and postfix (Debian 12).

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from mxbed import TestCA, PostfixMX

    with TestCA() as ca:
        ca.ca_file                                  # PEM bundle for [outbound] ca_file
        crt, key = ca.leaf("mx1.example.lab", ["mx1.example.lab"])
        with PostfixMX("127.0.0.21", ca, tls="valid", host="mx1.example.lab") as mx:
            ...                                     # deliver to 127.0.0.21:25
            mx.wait_messages(1, timeout=30)
            mx.messages()                           # [bytes, ...] as stored
            mx.mail_commands()                      # MAIL commands smtpd ever saw
            mx.log()                                # maillog text

TLS variants of PostfixMX (tls=):
  "valid"       leaf from TestCA for `host` (SAN host), chain = leaf + CA certificate
  "selfsigned"  self-signed leaf for `host` (not from the CA)
  "expired"     leaf from TestCA for `host`, valid 2020-01-01 .. 2020-01-31 (faketime)
  "wrongname"   leaf from TestCA for other.lab only
  "none"        smtpd_tls_security_level = none: STARTTLS is not offered
  "tls10"       leaf as "valid", but the server speaks TLS 1.0 only
                (smtpd_tls_protocols = >=TLSv1,<=TLSv1 and @SECLEVEL=0 cipher lists;
                checked: `openssl s_client -tls1 -cipher DEFAULT:@SECLEVEL=0` succeeds,
                `-tls1_2` fails; see tests in pending/test_fixtures.py)
Every TLS variant uses smtpd_tls_security_level = may: if the client under test were
ever to fall back to plaintext, this MX would take the mail, and the tests would see it.

HOW THE MX STORES MAIL (recipe, Postfix 3.7):
  virtual_mailbox_domains = regexp:DIR/etc/domains.regexp   holding `/(^|\.)lab$/ OK`
                         (every domain under lab.; NOTE: "lab, .lab" does NOT match
                          dest.example.lab here, checked with Postfix 3.7.11)
  virtual_transport       = virtual            (master.cf: virtual unix - n n - - virtual)
  virtual_mailbox_base    = DIR/mail           (owned by nobody, mode 755)
  virtual_mailbox_maps    = static:sink/       (every recipient -> one Maildir DIR/mail/sink/;
                                                the trailing slash selects Maildir format)
  virtual_uid_maps        = static:65534       (nobody; >= virtual_minimum_uid = 100)
  virtual_gid_maps        = static:65534
  local_recipient_maps = (empty), mydestination = (empty), relay_domains = (empty),
  default_transport = error (the MX never relays anywhere), notify_classes = (empty).
messages() reads DIR/mail/sink/{new,cur}. smtpd's "disconnect from ... mail=N" command
counters (Postfix >= 3.0) say whether a MAIL command ever arrived.

Rules: only 127.0.0.0/8; every wait is a bounded poll; stop() is bounded and only
stops the master this object started (pid from its own queue directory).
"""

import email
import email.policy
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
FAKETIME = shutil.which("faketime") or "/usr/bin/faketime"
NOBODY_UID = 65534
NOBODY_GID = 65534


def _poll(cond, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def _run(argv, cwd=None, timeout=60, env=None, input=None):
    r = subprocess.run(argv, cwd=cwd, input=input, capture_output=True, text=True,
                       timeout=timeout, env=env)
    if r.returncode != 0:
        raise RuntimeError("%s failed (%d):\n%s%s" % (" ".join(argv), r.returncode, r.stdout,
                                                     r.stderr))
    return r.stdout


def can_connect(host, port, timeout=1.0):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(host, port=25):
    """True when nothing listens on host:port (and we may bind it)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


# --------------------------------------------------------------------------------------
# Test CA
# --------------------------------------------------------------------------------------

class TestCA:
    """A throw-away CA made with the openssl CLI in a temporary directory.

    .ca_cert / .ca_key  the CA (ECDSA P-256, basicConstraints CA:TRUE, 10 years)
    .ca_file            PEM bundle holding the CA certificate ([outbound] ca_file)
    leaf(name, sans, days=30, expired=False, self_signed=False) -> (cert_path, key_path)
    """

    __test__ = False  # not a unittest/pytest class

    def __init__(self, name="strictmx test CA", keep=False):
        self.keep = keep
        self.dir = tempfile.mkdtemp(prefix="mxbed-ca-")
        os.chmod(self.dir, 0o755)
        self.ca_key = os.path.join(self.dir, "ca.key")
        self.ca_cert = os.path.join(self.dir, "ca.crt")
        self.ca_file = os.path.join(self.dir, "ca-bundle.pem")
        self._n = 0
        ext = os.path.join(self.dir, "ca.ext")
        with open(ext, "w") as f:
            f.write("basicConstraints = critical, CA:TRUE\n"
                    "keyUsage = critical, keyCertSign, cRLSign\n"
                    "subjectKeyIdentifier = hash\n")
        _run([OPENSSL, "ecparam", "-name", "prime256v1", "-genkey", "-noout",
              "-out", self.ca_key])
        csr = os.path.join(self.dir, "ca.csr")
        _run([OPENSSL, "req", "-new", "-key", self.ca_key, "-subj", "/CN=" + name,
              "-out", csr])
        _run([OPENSSL, "x509", "-req", "-in", csr, "-signkey", self.ca_key, "-days", "3650",
              "-sha256", "-extfile", ext, "-set_serial", "1", "-out", self.ca_cert])
        shutil.copyfile(self.ca_cert, self.ca_file)
        for p in (self.ca_cert, self.ca_file):
            os.chmod(p, 0o644)

    def leaf(self, name, sans=None, days=30, expired=False, self_signed=False):
        """An ECDSA P-256 server certificate with SAN DNS names (default [name]).

        expired:     made under `faketime 2020-01-01`, valid 30 days from then
        self_signed: signed by its own key, not by this CA
        Returns (cert_path, key_path); both PEM, mode 644, in this CA's directory.
        """
        sans = list(sans) if sans else [name]
        self._n += 1
        base = os.path.join(self.dir, "leaf%d-%s" % (self._n, re.sub(r"[^A-Za-z0-9.-]", "_",
                                                                      name)))
        key, csr, crt, ext = base + ".key", base + ".csr", base + ".crt", base + ".ext"
        with open(ext, "w") as f:
            f.write("basicConstraints = critical, CA:FALSE\n"
                    "keyUsage = critical, digitalSignature\n"
                    "extendedKeyUsage = serverAuth\n"
                    "subjectKeyIdentifier = hash\n"
                    + ("" if self_signed else "authorityKeyIdentifier = keyid\n")
                    + "subjectAltName = " + ", ".join("DNS:" + s for s in sans) + "\n")
        _run([OPENSSL, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key])
        _run([OPENSSL, "req", "-new", "-key", key, "-subj", "/CN=" + name, "-out", csr])
        argv = [OPENSSL, "x509", "-req", "-in", csr, "-sha256", "-extfile", ext,
                "-set_serial", str(1000 + self._n), "-out", crt]
        if self_signed:
            argv += ["-signkey", key]
        else:
            argv += ["-CA", self.ca_cert, "-CAkey", self.ca_key]
        if expired:
            argv = [FAKETIME, "2020-01-01 00:00:00"] + argv + ["-days", "30"]
        else:
            argv += ["-days", str(days)]
        _run(argv)
        for p in (key, crt):
            os.chmod(p, 0o644)
        return crt, key

    def verify(self, cert_path, name=None):
        """`openssl verify` against this CA (optionally -verify_hostname): (ok, output)."""
        argv = [OPENSSL, "verify", "-CAfile", self.ca_file]
        if name:
            argv += ["-verify_hostname", name]
        r = subprocess.run(argv + [cert_path], capture_output=True, text=True, timeout=30)
        return r.returncode == 0, r.stdout + r.stderr

    def close(self):
        if not self.keep and not os.environ.get("SMX_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# --------------------------------------------------------------------------------------
# Postfix as a receiving MX
# --------------------------------------------------------------------------------------

MASTER_CF = """\
{listen} inet n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

TLS_VARIANTS = ("valid", "selfsigned", "expired", "wrongname", "none", "tls10")

DISCONNECT_RE = re.compile(r"postfix/smtpd\[\d+\]: disconnect from (\S+)(.*)$", re.M)


class PostfixMX:
    """A private Postfix instance receiving mail on ADDR:25 (addr e.g. "127.0.0.21").

    ca:    a TestCA (needed for every variant except "none")
    tls:   one of TLS_VARIANTS
    host:  the MX host name (myhostname, and the certificate's SAN); default
           mxN.example.lab with N = last digit of the address
    port:  25 by default (the MX port strictmx uses)
    extra_main: dict of extra/overriding main.cf settings
    more_addrs: further addresses (127.x) with the same smtpd service on PORT
    """

    def __init__(self, addr, ca=None, tls="valid", host=None, port=25, extra_main=None,
                 start=False, keep=False, more_addrs=()):
        if tls not in TLS_VARIANTS:
            raise ValueError("tls must be one of %s" % (TLS_VARIANTS,))
        if tls != "none" and ca is None:
            raise ValueError("tls=%s needs a TestCA" % tls)
        if not all(a.startswith("127.") for a in [addr] + list(more_addrs)):
            raise ValueError("loopback addresses only")
        self.addr = addr
        self.more_addrs = list(more_addrs)  # further ADDR:port smtpd services, same setup
        self.port = port
        self.tls = tls
        self.host = host or "mx%s.example.lab" % addr.rsplit(".", 1)[1][-1]
        self.keep = keep
        self.dir = tempfile.mkdtemp(prefix="mxbed-pf-")
        os.chmod(self.dir, 0o755)
        self.conf_dir = os.path.join(self.dir, "etc")
        self.queue = os.path.join(self.dir, "queue")
        self.data = os.path.join(self.dir, "data")
        self.mail = os.path.join(self.dir, "mail")
        self.maildir = os.path.join(self.mail, "sink")
        self.maillog = os.path.join(self.dir, "maillog")
        self.tls_dir = os.path.join(self.dir, "tls")
        for d in (self.conf_dir, self.queue, self.data, self.mail, self.tls_dir):
            os.mkdir(d)
            os.chmod(d, 0o755)
        shutil.chown(self.data, "postfix")
        os.chown(self.mail, NOBODY_UID, NOBODY_GID)
        self.cert = self.key = None
        main = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue,
            "data_directory": self.data,
            "maillog_file": self.maillog,
            "maillog_file_prefixes": os.path.dirname(self.dir),
            "myhostname": self.host,
            "mydomain": "example.lab",
            "myorigin": self.host,
            "mydestination": "",
            "relay_domains": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            # inet_interfaces must name configured interface addresses (127.0.0.21 is not
            # one: "no local interface found"); master.cf binds ADDR:PORT directly.
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_peername_lookup": "no",
            "smtputf8_enable": "no",
            "biff": "no",
            "notify_classes": "",
            "default_transport": "error:this MX does not relay",
            "bounce_queue_lifetime": "0",
            "maximal_queue_lifetime": "0",
            "virtual_mailbox_domains": "regexp:" + os.path.join(self.conf_dir,
                                                                "domains.regexp"),
            "virtual_transport": "virtual",
            "virtual_mailbox_base": self.mail,
            "virtual_mailbox_maps": "static:sink/",
            "virtual_uid_maps": "static:%d" % NOBODY_UID,
            "virtual_gid_maps": "static:%d" % NOBODY_GID,
            "virtual_minimum_uid": "100",
            "virtual_mailbox_limit": "0",
            "message_size_limit": "52428800",
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_received_header": "yes",
            "smtpd_client_connection_rate_limit": "0",
            "smtpd_client_message_rate_limit": "0",
        }
        if tls == "none":
            main["smtpd_tls_security_level"] = "none"
        else:
            if tls == "selfsigned":
                crt, key = ca.leaf(self.host, [self.host], self_signed=True)
                chain = [crt]
            elif tls == "expired":
                crt, key = ca.leaf(self.host, [self.host], expired=True)
                chain = [crt, ca.ca_cert]
            elif tls == "wrongname":
                crt, key = ca.leaf("other.lab", ["other.lab"])
                chain = [crt, ca.ca_cert]
            else:  # valid, tls10
                crt, key = ca.leaf(self.host, [self.host])
                chain = [crt, ca.ca_cert]
            self.cert, self.key = crt, key
            # smtpd_tls_chain_files: key first, then leaf and chain (Postfix >= 3.4)
            self.chain_file = os.path.join(self.tls_dir, "chain.pem")
            with open(self.chain_file, "w") as out:
                for p in [key] + chain:
                    with open(p) as f:
                        out.write(f.read())
            os.chmod(self.chain_file, 0o600)
            main["smtpd_tls_security_level"] = "may"
            main["smtpd_tls_chain_files"] = self.chain_file
            main["smtpd_tls_session_cache_database"] = ""
            if tls == "tls10":
                main["smtpd_tls_protocols"] = ">=TLSv1, <=TLSv1"
                main["smtpd_tls_mandatory_protocols"] = ">=TLSv1, <=TLSv1"
                main["smtpd_tls_ciphers"] = "medium"
                main["smtpd_tls_mandatory_ciphers"] = "medium"
                main["tls_medium_cipherlist"] = "DEFAULT:@SECLEVEL=0"
                main["tls_high_cipherlist"] = "DEFAULT:@SECLEVEL=0"
        main.update(extra_main or {})
        self.main = main
        with open(os.path.join(self.conf_dir, "main.cf"), "w") as f:
            for k, v in main.items():
                f.write("%s = %s\n" % (k, v))
        with open(os.path.join(self.conf_dir, "domains.regexp"), "w") as f:
            f.write("/(^|\\.)lab$/ OK\n")
        with open(os.path.join(self.conf_dir, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(listen="%s:%d" % (self.addr, self.port)))
            for a in self.more_addrs:
                f.write("%s:%d inet n       -       n       -       -       smtpd\n"
                        % (a, self.port))
        self.started = False
        if start:
            self.start()

    # -- lifecycle --
    def postfix(self, *args, timeout=60):
        return subprocess.run([POSTFIX, "-c", self.conf_dir] + list(args),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)

    def start(self, timeout=30):
        if not port_free(self.addr, self.port):
            raise RuntimeError("%s:%d is already in use (another MX peer still running?)"
                               % (self.addr, self.port))
        p = self.postfix("start")
        if p.returncode != 0:
            raise RuntimeError("postfix start failed (%d): %s\nmaillog:\n%s"
                               % (p.returncode, p.stdout, self.log()))
        self.started = True
        if not _poll(lambda: can_connect(self.addr, self.port), timeout):
            out = self.log()
            self.stop()
            raise RuntimeError("postfix smtpd not listening on %s:%d; maillog:\n%s"
                               % (self.addr, self.port, out))
        return self

    def master_pid(self):
        try:
            with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def stop(self, cleanup=True):
        """Stop the master this object started (bounded); remove the scratch dir."""
        if self.started:
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

            if not _poll(gone, 30, 0.2):
                try:
                    self.postfix("abort", timeout=30)
                except subprocess.TimeoutExpired:
                    pass
                _poll(gone, 10, 0.2)
            # the listener is gone when the master is; smtpd children exit on their own
            _poll(lambda: port_free(self.addr, self.port), 10, 0.1)
        if cleanup and not self.keep and not os.environ.get("SMX_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        if not self.started:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    # -- observation --
    def log(self):
        try:
            with open(self.maillog, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def message_files(self):
        out = []
        for sub in ("new", "cur"):
            d = os.path.join(self.maildir, sub)
            try:
                out += [os.path.join(d, n) for n in os.listdir(d) if not n.startswith(".")]
            except FileNotFoundError:
                pass
        return sorted(out)

    def messages(self):
        """Received messages as stored (bytes, LF line ends, Postfix's Delivered-To,
        Return-Path and Received lines on top)."""
        out = []
        for p in self.message_files():
            try:
                with open(p, "rb") as f:
                    out.append(f.read())
            except FileNotFoundError:
                pass
        return out

    def parsed_messages(self):
        return [email.message_from_bytes(m, policy=email.policy.compat32)
                for m in self.messages()]

    def subjects(self):
        return [str(m.get("Subject", "")) for m in self.parsed_messages()]

    def wait_messages(self, count=1, timeout=30.0):
        """Bounded poll until >= count messages are stored; returns messages()."""
        _poll(lambda: len(self.message_files()) >= count, timeout)
        return self.messages()

    def sessions(self):
        """smtpd disconnect lines as (client, {command: count}) (Postfix >= 3.0 logs
        e.g. `disconnect from unknown[127.0.0.1] ehlo=2 starttls=1 mail=1 ... commands=7`)."""
        out = []
        for m in DISCONNECT_RE.finditer(self.log()):
            counts = {}
            for tok in m.group(2).split():
                k, _, v = tok.partition("=")
                n = v.split("/")[0]
                if n.isdigit():
                    counts[k] = int(n)
            out.append((m.group(1), counts))
        return out

    def wait_sessions_with(self, command="ehlo", timeout=15.0):
        """Bounded poll until a finished smtpd session used `command` (e.g. "ehlo": a
        real SMTP client, not a port probe); returns the matching sessions or None."""
        return _poll(lambda: [s for s in self.sessions() if command in s[1]], timeout)

    def mail_commands(self):
        """How many MAIL commands smtpd received in all finished sessions."""
        return sum(c.get("mail", 0) for _cl, c in self.sessions())

    def accepted_from(self):
        """Envelope senders of messages this MX queued (qmgr `from=<...>` lines)."""
        return re.findall(r"postfix/qmgr\[\d+\]: \w+: from=<([^>]*)>", self.log())

    def tls_sessions(self):
        """smtpd TLS lines: 'Anonymous TLS connection established from ...: TLSv1.3 ...'"""
        return re.findall(r"postfix/smtpd\[\d+\]: (?:\w+ )?TLS connection established from "
                          r"[^:]+: (.*)$", self.log(), re.M)


# --------------------------------------------------------------------------------------
# DANE: TLSA record data computed from certificates (openssl CLI)
# --------------------------------------------------------------------------------------

def cert_der(cert_path):
    """The certificate (first one in a PEM file) in DER form."""
    r = subprocess.run([OPENSSL, "x509", "-in", cert_path, "-outform", "DER"],
                       capture_output=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("openssl x509 failed: %s" % r.stderr.decode("utf-8", "replace"))
    return r.stdout


def spki_der(cert_path):
    """The SubjectPublicKeyInfo of the certificate, DER."""
    pub = subprocess.run([OPENSSL, "x509", "-in", cert_path, "-noout", "-pubkey"],
                         capture_output=True, timeout=30)
    if pub.returncode != 0:
        raise RuntimeError("openssl x509 -pubkey failed: %s"
                           % pub.stderr.decode("utf-8", "replace"))
    r = subprocess.run([OPENSSL, "pkey", "-pubin", "-outform", "DER"], input=pub.stdout,
                       capture_output=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("openssl pkey failed: %s" % r.stderr.decode("utf-8", "replace"))
    return r.stdout


def tlsa_data(cert_path, selector=1, mtype=1):
    """TLSA certificate association data (hex) for cert_path (RFC 6698 §2.1):
    selector 0 = full certificate, 1 = SubjectPublicKeyInfo; mtype 0 = exact,
    1 = SHA-256, 2 = SHA-512."""
    import hashlib
    blob = cert_der(cert_path) if selector == 0 else spki_der(cert_path)
    if mtype == 0:
        return blob.hex()
    return (hashlib.sha256 if mtype == 1 else hashlib.sha512)(blob).hexdigest()


def tlsa_rdata(cert_path, usage, selector=1, mtype=1):
    """'U S M HEX', the rdata of a TLSA zone-file line, e.g. '3 1 1 ab12...'."""
    return "%d %d %d %s" % (usage, selector, mtype, tlsa_data(cert_path, selector, mtype))


def tlsa_digest_openssl(cert_path, selector=1, mtype=1):
    """The same digest as tlsa_data() computed by an openssl pipeline only (the
    self-check cross-reference: `openssl x509 -pubkey | openssl pkey -pubin -outform DER
    | openssl dgst -sha256`)."""
    if selector == 0:
        script = '"%s" x509 -in "%s" -outform DER' % (OPENSSL, cert_path)
    else:
        script = ('"%s" x509 -in "%s" -noout -pubkey | "%s" pkey -pubin -outform DER'
                  % (OPENSSL, cert_path, OPENSSL))
    script += ' | "%s" dgst -%s -r' % (OPENSSL, "sha256" if mtype == 1 else "sha512")
    out = _run(["sh", "-c", script])
    return out.split()[0]


# --------------------------------------------------------------------------------------
# nginx over HTTPS on a loopback address (MTA-STS policy hosts)
# --------------------------------------------------------------------------------------

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class NginxHTTPS:
    """A private nginx (`nginx -c CONF -g 'daemon off;'`, foreground, all paths in a
    temporary directory) serving HTTPS on ADDR:PORT with one TestCA certificate whose
    SANs are the given host names.

        files: {host: {url_path: (content_type, body)}}, e.g.
               {"mta-sts.example.lab": {"/.well-known/mta-sts.txt":
                                        ("text/plain", "version: STSv1\\r\\n...")}}
    Unknown hosts or paths answer 404. access_log() returns the request lines
    ("host path status"). stop() is bounded and only stops the nginx this object started.
    """

    def __init__(self, addr, ca, files, port=443, keep=False):
        if not addr.startswith("127."):
            raise ValueError("loopback addresses only")
        self.addr, self.port, self.ca, self.keep = addr, port, ca, keep
        self.files = files
        self.dir = tempfile.mkdtemp(prefix="mxbed-nginx-")
        os.chmod(self.dir, 0o755)
        self.proc = None
        hosts = sorted(files)
        self.cert, self.key = ca.leaf(hosts[0], hosts)
        self.root = os.path.join(self.dir, "www")
        servers = []
        for i, host in enumerate(hosts):
            hroot = os.path.join(self.root, "h%d" % i)
            locs = []
            for path, (ctype, body) in sorted(files[host].items()):
                fp = os.path.join(hroot, path.lstrip("/"))
                os.makedirs(os.path.dirname(fp), exist_ok=True)
                with open(fp, "w", newline="") as f:
                    f.write(body)
                locs.append("        location = %s { default_type %s; types { } }"
                            % (path, ctype))
            servers.append("""    server {
        listen %(addr)s:%(port)d ssl;
        server_name %(host)s;
        root %(root)s;
%(locs)s
        location / { return 404; }
    }""" % {"addr": addr, "port": port, "host": host, "root": hroot, "locs": "\n".join(locs)})
        d = self.dir
        conf = """worker_processes 1;
pid %(d)s/nginx.pid;
error_log %(d)s/error.log info;
user root;
events { worker_connections 64; }
http {
    log_format combined_host '$host $request_uri $status';
    access_log %(d)s/access.log combined_host;
    client_body_temp_path %(d)s/client_body;
    proxy_temp_path %(d)s/proxy;
    fastcgi_temp_path %(d)s/fastcgi;
    uwsgi_temp_path %(d)s/uwsgi;
    scgi_temp_path %(d)s/scgi;
    ssl_certificate %(cert)s;
    ssl_certificate_key %(key)s;
    ssl_protocols TLSv1.2 TLSv1.3;
    server {
        listen %(addr)s:%(port)d ssl default_server;
        server_name _;
        location / { return 404; }
    }
%(servers)s
}
""" % {"d": d, "cert": self.cert, "key": self.key, "addr": addr, "port": port,
            "servers": "\n".join(servers)}
        self.conf = os.path.join(d, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)

    def start(self, timeout=15):
        if not port_free(self.addr, self.port):
            raise RuntimeError("%s:%d is already in use" % (self.addr, self.port))
        t = subprocess.run([NGINX, "-t", "-c", self.conf, "-g", "daemon off;"],
                           capture_output=True, text=True, timeout=30)
        if t.returncode != 0:
            raise RuntimeError("nginx -t failed: %s%s" % (t.stdout, t.stderr))
        self._out = open(os.path.join(self.dir, "nginx.out"), "w")
        self.proc = subprocess.Popen([NGINX, "-c", self.conf, "-g", "daemon off;"],
                                     stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, cwd=self.dir)
        if not _poll(lambda: self.proc.poll() is not None or can_connect(self.addr, self.port),
                     timeout) or self.proc.poll() is not None:
            out = self.error_log()
            self.stop()
            raise RuntimeError("nginx not listening on %s:%d: %s" % (self.addr, self.port, out))
        return self

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()  # SIGTERM: fast shutdown of master and workers
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            self.proc = None
            self._out.close()
            _poll(lambda: port_free(self.addr, self.port), 10, 0.1)
        if not self.keep and not os.environ.get("SMX_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def error_log(self):
        text = ""
        for n in ("nginx.out", "error.log"):
            try:
                with open(os.path.join(self.dir, n)) as f:
                    text += f.read()
            except OSError:
                pass
        return text

    def access_log(self):
        try:
            with open(os.path.join(self.dir, "access.log")) as f:
                return f.read().splitlines()
        except OSError:
            return []

    def curl(self, host, path, timeout=20):
        """curl --cacert CA --resolve HOST:PORT:ADDR https://HOST/PATH: (rc, body, stderr)."""
        r = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", self.ca.ca_file,
                            "--resolve", "%s:%d:%s" % (host, self.port, self.addr),
                            "-w", "\n%{http_code} %{content_type}",
                            "https://%s:%d%s" % (host, self.port, path)],
                           capture_output=True, timeout=timeout)
        return (r.returncode, r.stdout.decode("utf-8", "replace"),
                r.stderr.decode("utf-8", "replace"))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
