/*
 * smtp-load - an SMTP load generator with STARTTLS on every connection.
 *
 * Each thread runs one epoll loop over its share of N concurrent connections.
 * A connection does: connect, 220, EHLO, STARTTLS, TLS handshake (certificate
 * and name verified with --cafile/--servername), EHLO, then M x (MAIL FROM,
 * RCPT TO, DATA, S bytes of message, ".") and QUIT; then the slot opens the
 * next connection, until --duration seconds have passed or --total messages
 * were sent. No pipelining: every command waits for its reply.
 *
 * Full handshakes by default (no session cache). --resume makes each slot
 * offer the TLS session ticket its previous connection received, as a sending
 * MTA with a TLS session cache does (Postfix's smtp_tls_session_cache_database);
 * the first handshake of a slot, and any the server declines, are full ones.
 *
 * Other modes:
 *   --messages 0   handshake-bound: EHLO, STARTTLS, EHLO, QUIT per connection
 *   --direct-tls   no SMTP at all: TCP connect, TLS handshake, close_notify,
 *                  close (to compare with `openssl s_server`)
 *   --idle SECS    open N sessions that stop after the second EHLO, print
 *                  "READY <sessions>" on stdout, hold them SECS seconds, QUIT
 *
 * Output: one human line and one JSON line on stdout. Latency is measured from
 * the moment the final "." of a message was written to the socket to the
 * moment its reply (250) was read. Every run is bounded: --duration (or
 * --total with --max-time), and --timeout per reply.
 *
 * Build: make -C bench   (needs libssl-dev; links -lssl -lcrypto -lpthread)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* ------------------------------------------------------------------------ */
/* options */

static struct {
	const char *host;
	int port;
	int connections;
	long messages; /* per connection */
	long size;
	double duration;
	long total;
	double max_time; /* hard bound with --total */
	const char *cafile;
	const char *servername;
	int tls_version; /* 0 any (1.2+), 12, 13 */
	const char *from;
	const char *rcpt;
	const char *helo;
	double timeout;
	int threads;
	bool direct_tls;
	double idle; /* hold time, 0 = not idle mode */
	int max_connecting;
	const char *bind_prefix; /* e.g. "127.0.1." -> bind to .1 .. .bind_n */
	int bind_n;
	bool quiet;
	bool resume;
} opt = {
    .host = "127.0.0.1",
    .port = 25,
    .connections = 16,
    .messages = 1,
    .size = 4096,
    .duration = 10,
    .total = 0,
    .max_time = 300,
    .from = "load@client.bench.test",
    .rcpt = "bench@bench.test",
    .helo = "client.bench.test",
    .timeout = 30,
    .threads = 1,
    .max_connecting = 256,
};

static void usage(FILE *f)
{
	fprintf(f, "usage: smtp-load --host ADDR --port PORT [options]\n"
	           "  --connections N   concurrent connections (16)\n"
	           "  --messages M      messages per connection (1); 0 = handshake only\n"
	           "  --size S          message size in bytes, headers included (4096)\n"
	           "  --duration D      run D seconds (10)  | --total T  stop after T messages\n"
	           "  --max-time S      hard bound for --total runs (300)\n"
	           "  --cafile FILE     verify the server certificate against FILE ...\n"
	           "  --servername NAME ... and its name (also sent as SNI)\n"
	           "  --tls13 | --tls12 only that TLS version (default: 1.2 or 1.3)\n"
	           "  --from A --rcpt A --helo NAME\n"
	           "  --timeout S       per reply / handshake (30)\n"
	           "  --threads T       event loops (1)\n"
	           "  --direct-tls      TLS handshake right after connect, no SMTP\n"
	           "  --idle SECS       hold N sessions after the 2nd EHLO for SECS, print READY\n"
	           "  --max-connecting K  connections in setup at once (256)\n"
	           "  --bind-prefix P --bind-n K  source addresses P1..PK (e.g. 127.0.1. 8)\n"
	           "  --resume          offer the previous connection's session ticket\n"
	           "  --quiet           only the JSON line\n");
}

/* ------------------------------------------------------------------------ */
/* time, stats */

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double t_start, t_deadline, t_hard;
static atomic_long started_msgs;    /* --total accounting */
static atomic_int stop_flag;        /* no new messages/connections */
static atomic_int idle_ready_count; /* idle mode */
static atomic_int idle_settled;     /* idle mode: ready or failed */
static atomic_long err_printed;

struct stats {
	long messages;     /* 250 after end of data, within the window */
	long messages_all; /* including after the window */
	long handshakes;
	long handshakes_win; /* completed within the --duration window */
	long resumed;        /* handshakes that resumed a session */
	long connections;    /* completed with QUIT/221 */
	long errors;
	long rejected; /* non-2xx/3xx replies (subset of errors) */
	float *lat;    /* ms */
	size_t n_lat, cap_lat;
	double last_done;
};

static void lat_add(struct stats *s, float ms)
{
	if (s->n_lat == s->cap_lat) {
		s->cap_lat = s->cap_lat ? s->cap_lat * 2 : 65536;
		s->lat = realloc(s->lat, s->cap_lat * sizeof(float));
		if (!s->lat) {
			perror("realloc");
			exit(2);
		}
	}
	s->lat[s->n_lat++] = ms;
}

static void report_error(const char *fmt, ...)
{
	if (atomic_fetch_add(&err_printed, 1) >= 10)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "smtp-load: error: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
}

/* ------------------------------------------------------------------------ */
/* connections */

enum phase {
	P_FREE = 0,
	P_CONNECT,
	P_GREET,
	P_EHLO1,
	P_STARTTLS,
	P_HANDSHAKE,
	P_EHLO2,
	P_MAIL,
	P_RCPT,
	P_DATA,
	P_DOT,
	P_QUIT,
	P_IDLE,
	P_SHUTDOWN, /* direct TLS: close_notify */
};

struct conn {
	int fd;
	enum phase ph;
	SSL *ssl;
	uint32_t ev; /* registered epoll events */
	char in[8192];
	size_t inlen;
	const char *out; /* pending output (static or obuf) */
	size_t outlen, outoff;
	char obuf[1024];
	long sent; /* messages done on this connection */
	double t_dot;
	double t_phase; /* when the current wait started (timeouts) */
	bool dot_written;
	bool idle_counted;
	int bind_i;
	bool used;         /* idle mode: each slot connects once */
	SSL_SESSION *sess; /* --resume: the last ticket this slot received */
};

struct worker {
	int id;
	int epfd;
	int n; /* slots */
	struct conn *c;
	struct stats st;
	SSL_CTX *ctx;
	int connecting; /* in setup (before MAIL / before idle) */
	int bind_next;
	pthread_t th;
};

static struct sockaddr_in dst;
static char *body;     /* message text incl. final ".\r\n" */
static size_t bodylen; /* */

static void build_body(void)
{
	size_t want = (size_t)opt.size;
	size_t cap = want + 256;
	body = malloc(cap + 8);
	int n = snprintf(body, cap,
	                 "From: <%s>\r\nTo: <%s>\r\nSubject: smtp-load\r\n"
	                 "Message-ID: <smtp-load@client.bench.test>\r\n\r\n",
	                 opt.from, opt.rcpt);
	size_t len = (size_t)n;
	static const char alpha[] =
	    "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-+";
	size_t k = 0;
	while (len + 2 < want) {
		size_t line = want - len - 2;
		if (line > 76)
			line = 76;
		for (size_t i = 0; i < line; i++)
			body[len++] = alpha[(k++) % (sizeof(alpha) - 1)];
		body[len++] = '\r';
		body[len++] = '\n';
	}
	if (len == (size_t)n) { /* tiny size: one body line */
		memcpy(body + len, "x\r\n", 3);
		len += 3;
	}
	memcpy(body + len, ".\r\n", 3);
	len += 3;
	bodylen = len;
}

static void set_events(struct worker *w, struct conn *c, uint32_t ev)
{
	if (c->ev == ev)
		return;
	struct epoll_event e = {.events = ev, .data.ptr = c};
	if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &e) < 0)
		report_error("epoll_ctl: %s", strerror(errno));
	c->ev = ev;
}

static void conn_close(struct worker *w, struct conn *c)
{
	if (c->ssl) {
		SSL_free(c->ssl);
		c->ssl = NULL;
	}
	if (c->fd >= 0) {
		epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, NULL);
		close(c->fd);
		c->fd = -1;
	}
	if (c->ph != P_FREE && (c->ph < P_MAIL || c->ph == P_SHUTDOWN) && c->ph != P_IDLE &&
	    c->ph != P_QUIT)
		w->connecting--;
	c->ph = P_FREE;
}

static void conn_fail(struct worker *w, struct conn *c, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	w->st.errors++;
	report_error("%s", msg);
	if (opt.idle > 0 && !c->idle_counted) {
		c->idle_counted = true;
		atomic_fetch_add(&idle_settled, 1);
	}
	conn_close(w, c);
}

static bool want_new_connection(void)
{
	return !atomic_load(&stop_flag);
}

static void conn_open(struct worker *w, struct conn *c)
{
	memset(c, 0, offsetof(struct conn, bind_i));
	c->used = true;
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		conn_fail(w, c, "socket: %s", strerror(errno));
		return;
	}
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (opt.bind_prefix) {
		struct sockaddr_in src = {.sin_family = AF_INET};
		char a[64];
		snprintf(a, sizeof(a), "%s%d", opt.bind_prefix, 1 + (w->bind_next++ % opt.bind_n));
		inet_pton(AF_INET, a, &src.sin_addr);
		setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
		if (bind(c->fd, (struct sockaddr *)&src, sizeof(src)) < 0) {
			close(c->fd);
			c->fd = -1;
			w->st.errors++;
			report_error("bind %s: %s", a, strerror(errno));
			return;
		}
	}
	c->ph = P_CONNECT;
	w->connecting++;
	c->t_phase = now_s();
	int r = connect(c->fd, (struct sockaddr *)&dst, sizeof(dst));
	if (r < 0 && errno != EINPROGRESS) {
		conn_fail(w, c, "connect: %s", strerror(errno));
		return;
	}
	struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
	c->ev = EPOLLOUT;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->fd, &e) < 0)
		conn_fail(w, c, "epoll_ctl add: %s", strerror(errno));
}

static void queue_out(struct conn *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(c->obuf, sizeof(c->obuf), fmt, ap);
	va_end(ap);
	c->out = c->obuf;
	c->outlen = (size_t)n;
	c->outoff = 0;
}

static void start_tls(struct worker *w, struct conn *c)
{
	c->ssl = SSL_new(w->ctx);
	if (!c->ssl) {
		conn_fail(w, c, "SSL_new failed");
		return;
	}
	SSL_set_fd(c->ssl, c->fd);
	SSL_set_app_data(c->ssl, c);
	if (opt.resume && c->sess)
		SSL_set_session(c->ssl, c->sess);
	if (opt.servername) {
		SSL_set_tlsext_host_name(c->ssl, opt.servername);
		if (opt.cafile)
			SSL_set1_host(c->ssl, opt.servername);
	}
	SSL_set_connect_state(c->ssl);
	c->ph = P_HANDSHAKE;
	c->t_phase = now_s();
}

/* next_message - MAIL of the next message, or QUIT */
static void next_message(struct worker *w, struct conn *c)
{
	bool more = c->sent < opt.messages && !atomic_load(&stop_flag);
	if (more && opt.total > 0) {
		long k = atomic_fetch_add(&started_msgs, 1);
		if (k >= opt.total) {
			more = false;
			atomic_store(&stop_flag, 1);
		}
	}
	if (more) {
		queue_out(c, "MAIL FROM:<%s>\r\n", opt.from);
		c->ph = P_MAIL;
	} else {
		queue_out(c, "QUIT\r\n");
		c->ph = P_QUIT;
	}
}

/* reply_complete - a full reply in c->in? returns its length, sets code and last
 * line; texts of all lines are searched for STARTTLS by the caller */
static size_t reply_complete(struct conn *c, int *code)
{
	size_t pos = 0;
	while (pos < c->inlen) {
		char *nl = memchr(c->in + pos, '\n', c->inlen - pos);
		if (!nl)
			return 0;
		size_t linelen = (size_t)(nl - (c->in + pos)) + 1;
		if (linelen < 4) {
			*code = -1;
			return pos + linelen;
		}
		if (c->in[pos + 3] != '-') {
			*code = atoi(c->in + pos);
			return pos + linelen;
		}
		pos += linelen;
	}
	return 0;
}

static bool has_starttls(const char *r, size_t len)
{
	for (size_t i = 0; i + 8 <= len; i++)
		if (strncasecmp(r + i, "STARTTLS", 8) == 0)
			return true;
	return false;
}

/* on_reply - the state machine; false if the connection was closed */
static bool on_reply(struct worker *w, struct conn *c, int code, const char *r, size_t rlen)
{
	double t = now_s();
	int expect = 250;
	switch (c->ph) {
	case P_GREET:
	case P_STARTTLS:
		expect = 220;
		break;
	case P_DATA:
		expect = 354;
		break;
	case P_QUIT:
		expect = 221;
		break;
	default:
		break;
	}
	if (code != expect) {
		w->st.rejected++;
		int l = (int)(rlen > 200 ? 200 : rlen);
		while (l > 0 && (r[l - 1] == '\n' || r[l - 1] == '\r'))
			l--;
		conn_fail(w, c, "phase %d: expected %d, got: %.*s", c->ph, expect, l, r);
		return false;
	}
	c->t_phase = t;
	switch (c->ph) {
	case P_GREET:
		queue_out(c, "EHLO %s\r\n", opt.helo);
		c->ph = P_EHLO1;
		break;
	case P_EHLO1:
		if (!has_starttls(r, rlen)) {
			conn_fail(w, c, "STARTTLS not offered");
			return false;
		}
		queue_out(c, "STARTTLS\r\n");
		c->ph = P_STARTTLS;
		break;
	case P_STARTTLS:
		if (c->inlen != rlen) {
			conn_fail(w, c, "data after 220 to STARTTLS");
			return false;
		}
		start_tls(w, c);
		break;
	case P_EHLO2:
		w->connecting--;
		if (opt.idle > 0) {
			c->ph = P_IDLE;
			if (!c->idle_counted) {
				c->idle_counted = true;
				atomic_fetch_add(&idle_ready_count, 1);
				atomic_fetch_add(&idle_settled, 1);
			}
			break;
		}
		next_message(w, c);
		break;
	case P_MAIL:
		queue_out(c, "RCPT TO:<%s>\r\n", opt.rcpt);
		c->ph = P_RCPT;
		break;
	case P_RCPT:
		queue_out(c, "DATA\r\n");
		c->ph = P_DATA;
		break;
	case P_DATA:
		c->out = body;
		c->outlen = bodylen;
		c->outoff = 0;
		c->dot_written = false;
		c->ph = P_DOT;
		break;
	case P_DOT:
		if (!c->dot_written) {
			conn_fail(w, c, "reply before the end of data");
			return false;
		}
		c->sent++;
		w->st.messages_all++;
		if (t <= t_deadline) {
			w->st.messages++;
			lat_add(&w->st, (float)((t - c->t_dot) * 1000.0));
			w->st.last_done = t;
		}
		next_message(w, c);
		break;
	case P_QUIT:
		w->st.connections++;
		/* a clean end: OpenSSL would otherwise mark the session, which the
		 * slot keeps for --resume, not resumable (nothing is sent) */
		if (c->ssl)
			SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
		conn_close(w, c);
		return false;
	default:
		conn_fail(w, c, "unexpected reply in phase %d", c->ph);
		return false;
	}
	return true;
}

/* io_write - flush pending output; 1 done, 0 would block, -1 closed */
static int io_write(struct worker *w, struct conn *c)
{
	while (c->outoff < c->outlen) {
		size_t left = c->outlen - c->outoff;
		if (c->ssl) {
			int n = SSL_write(c->ssl, c->out + c->outoff, (int)left);
			if (n <= 0) {
				int e = SSL_get_error(c->ssl, n);
				if (e == SSL_ERROR_WANT_WRITE) {
					set_events(w, c, EPOLLOUT);
					return 0;
				}
				if (e == SSL_ERROR_WANT_READ) {
					set_events(w, c, EPOLLIN);
					return 0;
				}
				conn_fail(w, c, "SSL_write failed (phase %d)", c->ph);
				return -1;
			}
			c->outoff += (size_t)n;
		} else {
			ssize_t n = send(c->fd, c->out + c->outoff, left, MSG_NOSIGNAL);
			if (n < 0) {
				if (errno == EAGAIN || errno == EWOULDBLOCK) {
					set_events(w, c, EPOLLOUT);
					return 0;
				}
				conn_fail(w, c, "send: %s (phase %d)", strerror(errno), c->ph);
				return -1;
			}
			c->outoff += (size_t)n;
		}
	}
	if (c->ph == P_DOT && !c->dot_written) {
		c->dot_written = true;
		c->t_dot = now_s();
	}
	return 1;
}

/* io_read - read more; 1 got data, 0 would block, -1 closed */
static int io_read(struct worker *w, struct conn *c)
{
	size_t room = sizeof(c->in) - c->inlen;
	if (room == 0) {
		conn_fail(w, c, "reply too long");
		return -1;
	}
	if (c->ssl) {
		int n = SSL_read(c->ssl, c->in + c->inlen, (int)room);
		if (n <= 0) {
			int e = SSL_get_error(c->ssl, n);
			if (e == SSL_ERROR_WANT_READ) {
				set_events(w, c, EPOLLIN);
				return 0;
			}
			if (e == SSL_ERROR_WANT_WRITE) {
				set_events(w, c, EPOLLOUT);
				return 0;
			}
			if (c->ph == P_QUIT) { /* closed after 221 was lost? count it */
				w->st.connections++;
				conn_close(w, c);
				return -1;
			}
			unsigned long ee = ERR_get_error();
			conn_fail(w, c, "TLS connection closed in phase %d (%s)", c->ph,
			          ee ? ERR_reason_error_string(ee) : "eof");
			return -1;
		}
		c->inlen += (size_t)n;
	} else {
		ssize_t n = recv(c->fd, c->in + c->inlen, room, 0);
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			set_events(w, c, EPOLLIN);
			return 0;
		}
		if (n <= 0) {
			conn_fail(w, c, "connection closed in phase %d (%s)", c->ph,
			          n == 0 ? "eof" : strerror(errno));
			return -1;
		}
		c->inlen += (size_t)n;
	}
	return 1;
}

/* --resume: keep the newest ticket of the connection for the slot's next one */
static int new_session(SSL *ssl, SSL_SESSION *sess)
{
	struct conn *c = SSL_get_app_data(ssl);
	if (c == NULL)
		return 0;
	if (c->sess)
		SSL_SESSION_free(c->sess);
	c->sess = sess;
	return 1; /* the reference is ours */
}

static bool verify_ok(struct worker *w, struct conn *c)
{
	if (!opt.cafile)
		return true;
	long v = SSL_get_verify_result(c->ssl);
	if (v != X509_V_OK) {
		conn_fail(w, c, "certificate verification: %s", X509_verify_cert_error_string(v));
		return false;
	}
	return true;
}

/* drive - make as much progress as possible without blocking */
static void drive(struct worker *w, struct conn *c, uint32_t revents)
{
	if (c->ph == P_CONNECT) {
		int err = 0;
		socklen_t l = sizeof(err);
		getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
		if (err) {
			conn_fail(w, c, "connect: %s", strerror(err));
			return;
		}
		if (opt.direct_tls) {
			start_tls(w, c);
		} else {
			c->ph = P_GREET;
			set_events(w, c, EPOLLIN);
		}
	}
	for (;;) {
		if (c->ph == P_HANDSHAKE) {
			ERR_clear_error();
			int r = SSL_connect(c->ssl);
			if (r != 1) {
				int e = SSL_get_error(c->ssl, r);
				if (e == SSL_ERROR_WANT_READ) {
					set_events(w, c, EPOLLIN);
					return;
				}
				if (e == SSL_ERROR_WANT_WRITE) {
					set_events(w, c, EPOLLOUT);
					return;
				}
				unsigned long ee = ERR_get_error();
				char buf[256] = "";
				if (ee)
					ERR_error_string_n(ee, buf, sizeof(buf));
				long v = SSL_get_verify_result(c->ssl);
				conn_fail(w, c, "TLS handshake failed: %s%s%s", buf,
				          v != X509_V_OK ? " / verify: " : "",
				          v != X509_V_OK ? X509_verify_cert_error_string(v) : "");
				return;
			}
			if (!verify_ok(w, c))
				return;
			w->st.handshakes++;
			if (SSL_session_reused(c->ssl))
				w->st.resumed++;
			if (now_s() <= t_deadline)
				w->st.handshakes_win++;
			c->t_phase = now_s();
			if (opt.direct_tls) {
				/* close_notify and close: the server's part is done */
				SSL_shutdown(c->ssl);
				w->st.connections++;
				c->ph = P_SHUTDOWN;
				conn_close(w, c);
				return;
			}
			queue_out(c, "EHLO %s\r\n", opt.helo);
			c->ph = P_EHLO2;
		}
		if (c->outoff < c->outlen) {
			int r = io_write(w, c);
			if (r <= 0)
				return;
		}
		int code = 0;
		size_t rl = reply_complete(c, &code);
		if (rl) {
			char r[512];
			size_t cl = rl < sizeof(r) - 1 ? rl : sizeof(r) - 1;
			memcpy(r, c->in, cl);
			r[cl] = 0;
			bool st = c->ph == P_STARTTLS;
			if (!st) {
				memmove(c->in, c->in + rl, c->inlen - rl);
				c->inlen -= rl;
			}
			if (!on_reply(w, c, code, r, rl))
				return;
			if (st) {
				c->inlen = 0; /* checked empty in on_reply */
			}
			continue;
		}
		if (c->ph == P_IDLE) {
			/* anything from the server now is unexpected (a 421) */
			if (c->ssl && SSL_pending(c->ssl) == 0 && !(revents & EPOLLIN)) {
				set_events(w, c, EPOLLIN);
				return;
			}
		}
		int r = io_read(w, c);
		if (r <= 0)
			return;
		revents = 0;
	}
}

static void check_timeouts(struct worker *w, double t)
{
	for (int i = 0; i < w->n; i++) {
		struct conn *c = &w->c[i];
		if (c->ph == P_FREE || c->ph == P_IDLE)
			continue;
		if (t - c->t_phase > opt.timeout)
			conn_fail(w, c, "timeout in phase %d", c->ph);
	}
}

static void fill_slots(struct worker *w)
{
	if (!want_new_connection())
		return;
	for (int i = 0; i < w->n && w->connecting < opt.max_connecting; i++)
		if (w->c[i].ph == P_FREE && w->c[i].fd < 0 && !(opt.idle > 0 && w->c[i].used))
			conn_open(w, &w->c[i]);
}

static int active(struct worker *w)
{
	int n = 0;
	for (int i = 0; i < w->n; i++)
		if (w->c[i].ph != P_FREE)
			n++;
	return n;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct epoll_event evs[256];
	double last_scan = now_s();
	bool quitting = false;
	fill_slots(w);
	for (;;) {
		int n = epoll_wait(w->epfd, evs, 256, 50);
		if (n < 0 && errno != EINTR) {
			perror("epoll_wait");
			break;
		}
		for (int i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;
			if (c->ph == P_FREE)
				continue;
			drive(w, c, evs[i].events);
		}
		double t = now_s();
		if (opt.idle <= 0 && t >= t_deadline)
			atomic_store(&stop_flag, 1);
		if (opt.idle > 0 && !quitting && atomic_load(&stop_flag)) {
			/* hold time over: QUIT every idle session */
			quitting = true;
			for (int i = 0; i < w->n; i++) {
				struct conn *c = &w->c[i];
				if (c->ph == P_IDLE) {
					queue_out(c, "QUIT\r\n");
					c->ph = P_QUIT;
					c->t_phase = t;
					drive(w, c, 0);
				}
			}
		}
		fill_slots(w);
		if (t - last_scan >= 0.5) {
			last_scan = t;
			check_timeouts(w, t);
		}
		if (atomic_load(&stop_flag) && active(w) == 0)
			break;
		if (t >= t_hard) {
			int left = active(w);
			if (left)
				report_error("hard time bound: %d connections abandoned", left);
			for (int i = 0; i < w->n; i++)
				if (w->c[i].ph != P_FREE) {
					w->st.errors++;
					conn_close(w, &w->c[i]);
				}
			break;
		}
	}
	return NULL;
}

/* ------------------------------------------------------------------------ */

static int cmp_float(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return (x > y) - (x < y);
}

static double pct(const float *v, size_t n, double p)
{
	if (n == 0)
		return 0;
	size_t i = (size_t)(p * (double)(n - 1) + 0.5);
	return v[i];
}

int main(int argc, char **argv)
{
	enum {
		OPT_CA = 1000,
		OPT_SN,
		OPT_T13,
		OPT_T12,
		OPT_FROM,
		OPT_RCPT,
		OPT_HELO,
		OPT_TIMEOUT,
		OPT_THREADS,
		OPT_DIRECT,
		OPT_IDLE,
		OPT_MAXC,
		OPT_BP,
		OPT_BN,
		OPT_QUIET,
		OPT_MAXT,
		OPT_RESUME
	};
	static const struct option lo[] = {{"host", required_argument, 0, 'h'},
	                                   {"port", required_argument, 0, 'p'},
	                                   {"connections", required_argument, 0, 'c'},
	                                   {"messages", required_argument, 0, 'm'},
	                                   {"size", required_argument, 0, 's'},
	                                   {"duration", required_argument, 0, 'd'},
	                                   {"total", required_argument, 0, 't'},
	                                   {"max-time", required_argument, 0, OPT_MAXT},
	                                   {"cafile", required_argument, 0, OPT_CA},
	                                   {"servername", required_argument, 0, OPT_SN},
	                                   {"tls13", no_argument, 0, OPT_T13},
	                                   {"tls12", no_argument, 0, OPT_T12},
	                                   {"from", required_argument, 0, OPT_FROM},
	                                   {"rcpt", required_argument, 0, OPT_RCPT},
	                                   {"helo", required_argument, 0, OPT_HELO},
	                                   {"timeout", required_argument, 0, OPT_TIMEOUT},
	                                   {"threads", required_argument, 0, OPT_THREADS},
	                                   {"direct-tls", no_argument, 0, OPT_DIRECT},
	                                   {"idle", required_argument, 0, OPT_IDLE},
	                                   {"max-connecting", required_argument, 0, OPT_MAXC},
	                                   {"bind-prefix", required_argument, 0, OPT_BP},
	                                   {"bind-n", required_argument, 0, OPT_BN},
	                                   {"quiet", no_argument, 0, OPT_QUIET},
	                                   {"resume", no_argument, 0, OPT_RESUME},
	                                   {"help", no_argument, 0, 'H'},
	                                   {0, 0, 0, 0}};
	bool have_duration = false;
	int o;
	while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (o) {
		case 'h':
			opt.host = optarg;
			break;
		case 'p':
			opt.port = atoi(optarg);
			break;
		case 'c':
			opt.connections = atoi(optarg);
			break;
		case 'm':
			opt.messages = atol(optarg);
			break;
		case 's':
			opt.size = atol(optarg);
			break;
		case 'd':
			opt.duration = atof(optarg);
			have_duration = true;
			break;
		case 't':
			opt.total = atol(optarg);
			break;
		case OPT_MAXT:
			opt.max_time = atof(optarg);
			break;
		case OPT_CA:
			opt.cafile = optarg;
			break;
		case OPT_SN:
			opt.servername = optarg;
			break;
		case OPT_T13:
			opt.tls_version = 13;
			break;
		case OPT_T12:
			opt.tls_version = 12;
			break;
		case OPT_FROM:
			opt.from = optarg;
			break;
		case OPT_RCPT:
			opt.rcpt = optarg;
			break;
		case OPT_HELO:
			opt.helo = optarg;
			break;
		case OPT_TIMEOUT:
			opt.timeout = atof(optarg);
			break;
		case OPT_THREADS:
			opt.threads = atoi(optarg);
			break;
		case OPT_DIRECT:
			opt.direct_tls = true;
			break;
		case OPT_IDLE:
			opt.idle = atof(optarg);
			break;
		case OPT_MAXC:
			opt.max_connecting = atoi(optarg);
			break;
		case OPT_BP:
			opt.bind_prefix = optarg;
			break;
		case OPT_BN:
			opt.bind_n = atoi(optarg);
			break;
		case OPT_QUIET:
			opt.quiet = true;
			break;
		case OPT_RESUME:
			opt.resume = true;
			break;
		case 'H':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc || opt.connections < 1 || opt.messages < 0 || opt.size < 16 ||
	    opt.threads < 1 || opt.duration <= 0 || opt.port <= 0 || opt.port > 65535 ||
	    opt.max_connecting < 1 || (opt.bind_prefix && opt.bind_n < 1)) {
		usage(stderr);
		return 2;
	}
	if (opt.total > 0 && have_duration) {
		fprintf(stderr, "smtp-load: --duration and --total exclude each other\n");
		return 2;
	}
	if (opt.threads > opt.connections)
		opt.threads = opt.connections;
	signal(SIGPIPE, SIG_IGN);

	/* file descriptors: one per connection plus a few */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)opt.connections + 64) {
		rl.rlim_cur = rl.rlim_max < (rlim_t)opt.connections + 64
		                  ? rl.rlim_max
		                  : (rlim_t)opt.connections + 64;
		setrlimit(RLIMIT_NOFILE, &rl);
		if (rl.rlim_cur < (rlim_t)opt.connections + 16) {
			fprintf(stderr, "smtp-load: fd limit %ju too low for %d connections\n",
			        (uintmax_t)rl.rlim_cur, opt.connections);
			return 2;
		}
	}

	dst.sin_family = AF_INET;
	dst.sin_port = htons((uint16_t)opt.port);
	if (inet_pton(AF_INET, opt.host, &dst.sin_addr) != 1) {
		fprintf(stderr, "smtp-load: --host must be a numeric IPv4 address\n");
		return 2;
	}
	build_body();

	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	SSL_CTX_set_min_proto_version(ctx, opt.tls_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION);
	if (opt.tls_version)
		SSL_CTX_set_max_proto_version(ctx, opt.tls_version == 13 ? TLS1_3_VERSION
		                                                         : TLS1_2_VERSION);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
	                          SSL_MODE_RELEASE_BUFFERS);
	if (opt.resume) {
		/* tickets kept per slot by new_session(), not in OpenSSL's cache */
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT |
		                                        SSL_SESS_CACHE_NO_INTERNAL_STORE);
		SSL_CTX_sess_set_new_cb(ctx, new_session);
	} else {
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); /* full handshakes */
		SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	}
	if (opt.cafile) {
		if (SSL_CTX_load_verify_locations(ctx, opt.cafile, NULL) != 1) {
			fprintf(stderr, "smtp-load: cannot load CA file %s\n", opt.cafile);
			return 2;
		}
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
		if (!opt.servername)
			fprintf(stderr, "smtp-load: warning: --cafile without --servername: "
			                "chain verified, name not checked\n");
	} else if (!opt.quiet) {
		fprintf(
		    stderr,
		    "smtp-load: warning: no --cafile: the server certificate is not verified\n");
	}

	int nt = opt.threads;
	struct worker *ws = calloc((size_t)nt, sizeof(*ws));
	t_start = now_s();
	double span = opt.total > 0 ? opt.max_time : opt.duration;
	if (opt.idle > 0)
		span = opt.max_time; /* setup bound; hold time counted from READY */
	t_deadline = opt.total > 0 || opt.idle > 0 ? t_start + 1e9 : t_start + opt.duration;
	t_hard = t_start + span + (opt.idle > 0 ? opt.idle : 0) + opt.timeout + 5;
	for (int i = 0; i < nt; i++) {
		struct worker *w = &ws[i];
		w->id = i;
		w->ctx = ctx;
		w->n = opt.connections / nt + (i < opt.connections % nt ? 1 : 0);
		w->c = calloc((size_t)w->n, sizeof(struct conn));
		for (int k = 0; k < w->n; k++)
			w->c[k].fd = -1;
		w->bind_next = i;
		w->epfd = epoll_create1(EPOLL_CLOEXEC);
		if (pthread_create(&w->th, NULL, worker_main, w) != 0) {
			perror("pthread_create");
			return 2;
		}
	}
	if (opt.idle > 0) {
		/* wait until every slot is ready or failed, then hold */
		while (atomic_load(&idle_settled) < opt.connections &&
		       now_s() < t_start + opt.max_time)
			usleep(20000);
		double t_ready = now_s();
		printf("READY %d %.3f\n", atomic_load(&idle_ready_count), t_ready - t_start);
		fflush(stdout);
		while (now_s() < t_ready + opt.idle)
			usleep(20000);
		atomic_store(&stop_flag, 1);
	}
	for (int i = 0; i < nt; i++) {
		pthread_join(ws[i].th, NULL);
		for (int k = 0; k < ws[i].n; k++)
			if (ws[i].c[k].sess)
				SSL_SESSION_free(ws[i].c[k].sess);
	}
	double t_end = now_s();

	struct stats tot = {0};
	for (int i = 0; i < nt; i++) {
		struct stats *s = &ws[i].st;
		tot.messages += s->messages;
		tot.messages_all += s->messages_all;
		tot.handshakes += s->handshakes;
		tot.handshakes_win += s->handshakes_win;
		tot.resumed += s->resumed;
		tot.connections += s->connections;
		tot.errors += s->errors;
		tot.rejected += s->rejected;
		if (s->last_done > tot.last_done)
			tot.last_done = s->last_done;
		for (size_t k = 0; k < s->n_lat; k++)
			lat_add(&tot, s->lat[k]);
	}
	double elapsed;
	if (opt.total > 0 || opt.idle > 0)
		elapsed = t_end - t_start;
	else
		elapsed = opt.duration;
	qsort(tot.lat, tot.n_lat, sizeof(float), cmp_float);
	double p50 = pct(tot.lat, tot.n_lat, 0.50), p99 = pct(tot.lat, tot.n_lat, 0.99);
	double mps = (double)tot.messages / elapsed;
	/* handshakes/connections counted to the end of the run (not the window) */
	double hps =
	    (double)(opt.total > 0 || opt.idle > 0 ? tot.handshakes : tot.handshakes_win) / elapsed;
	const char *mode = opt.direct_tls ? "direct-tls" : opt.idle > 0 ? "idle" : "smtp";
	if (!opt.quiet)
		printf(
		    "smtp-load: %s %s:%d conns=%d msgs/conn=%ld size=%ld: %ld messages in %.2f s "
		    "= %.1f msg/s; %ld TLS handshakes (%ld resumed) = %.1f/s; latency "
		    "end-of-data->250 p50 %.2f ms p99 %.2f ms; errors %ld%s\n",
		    mode, opt.host, opt.port, opt.connections, opt.messages, opt.size, tot.messages,
		    elapsed, mps, tot.handshakes, tot.resumed, hps, p50, p99, tot.errors,
		    opt.idle > 0 ? "" : "");
	printf("{\"tool\":\"smtp-load\",\"mode\":\"%s\",\"host\":\"%s\",\"port\":%d,"
	       "\"connections\":%d,\"messages_per_conn\":%ld,\"size\":%ld,\"threads\":%d,"
	       "\"tls\":\"%s\",\"verified\":%s,\"elapsed_s\":%.3f,\"messages\":%ld,"
	       "\"messages_after_window\":%ld,\"msgs_per_s\":%.1f,\"handshakes\":%ld,"
	       "\"handshakes_per_s\":%.1f,\"resumed\":%ld,\"sessions_completed\":%ld,"
	       "\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"errors\":%ld,\"rejected\":%ld,"
	       "\"idle_ready\":%d}\n",
	       mode, opt.host, opt.port, opt.connections, opt.messages, opt.size, nt,
	       opt.tls_version == 13   ? "1.3"
	       : opt.tls_version == 12 ? "1.2"
	                               : "any",
	       opt.cafile ? "true" : "false", elapsed, tot.messages,
	       tot.messages_all - tot.messages, mps, tot.handshakes, hps, tot.resumed,
	       tot.connections, p50, p99, tot.errors, tot.rejected, atomic_load(&idle_ready_count));
	fflush(stdout);
	SSL_CTX_free(ctx);
	return tot.errors ? 1 : 0;
}
