/*
 * tls-sink - an SMTP sink that accepts and discards mail over STARTTLS, for the
 * outbound relay benchmark (bench/relay.py): the "recipient MX" both relays deliver to.
 *
 * One epoll loop per thread (--threads, SO_REUSEPORT listeners). Per connection:
 * 220, EHLO/HELO (STARTTLS, PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES and, with
 * --chunking, CHUNKING), STARTTLS (TLS 1.2/1.3 with the given certificate; bytes
 * pipelined after STARTTLS are discarded), MAIL/RCPT/DATA/BDAT/RSET/NOOP/QUIT. MAIL,
 * RCPT, DATA and BDAT before STARTTLS get "530 5.7.0 Must issue a STARTTLS command
 * first": nothing is accepted in plaintext. The message text is read and thrown
 * away; "250" after the final "." (or BDAT LAST) counts one message.
 *
 * SIGUSR2 pauses the sink (and the next SIGUSR2 resumes it): while paused no event is
 * served, neither on listeners nor on open connections: new connections wait in the
 * listen backlog without a greeting. The relay benchmark uses it to let a relay queue
 * messages, then measures how fast the relay empties its queue once the sink resumes.
 *
 * Statistics: a one-line JSON object written to --stats FILE (temporary file, then
 * rename) every 100 ms, on SIGUSR1 and at exit:
 *   {"messages":N,"recipients":R,"bytes":B,"connections":C,"open":O,"tls":T,"resumed":S,
 *    "tls_failed":F,"plaintext_refused":P,"errors":E,"paused":0|1,"first":T0,"last":T1,"now":T,
 *    "cpu_s":X}
 * first/last/now: CLOCK_REALTIME seconds of the first and last accepted message.
 *
 * Bounded: exits after --max-time seconds (default 3600), on SIGTERM or SIGINT;
 * idle connections are closed after --timeout seconds (default 60).
 *
 * Build: make -C bench   (links -lssl -lcrypto -lpthread)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define MAX_LISTEN 8
#define INBUF      16384
#define OUTBUF     4096

static struct {
	struct sockaddr_in listen[MAX_LISTEN];
	int n_listen;
	const char *cert, *key, *stats, *hostname;
	int threads;
	double max_time, timeout;
	bool chunking, no_tickets;
} opt = {.hostname = "sink.bench.test", .threads = 1, .max_time = 3600, .timeout = 60};

static atomic_long n_open, n_msgs, n_rcpts, n_bytes, n_conns, n_tls, n_resumed, n_tls_failed,
    n_plain_refused, n_errors;
static _Atomic double t_first, t_last;
static volatile sig_atomic_t sig_stop, sig_dump, sig_pause;
static atomic_int paused;
static SSL_CTX *ctx;

static double mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double wall(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------------ */

enum mode { M_CMD, M_DATA, M_BDAT, M_HANDSHAKE };

struct conn {
	int fd;
	SSL *ssl;
	enum mode mode;
	bool tls, quit, mid_line, has_mail;
	int rcpts;
	long bdat_left; /* bytes of the current BDAT chunk still to read */
	bool bdat_last; /* the current chunk is the LAST one */
	bool bdat_bad;  /* chunk after a refused BDAT: read and refuse */
	uint32_t ev;
	double t_active;
	char in[INBUF];
	size_t inlen;
	char out[OUTBUF];
	size_t outlen;
	struct conn *prev, *next;
};

struct worker {
	int epfd;
	int lfd[MAX_LISTEN];
	struct conn *conns;
	pthread_t th;
};

static void reply(struct conn *c, const char *s)
{
	size_t n = strlen(s);
	if (c->outlen + n > sizeof c->out) { /* cannot happen with these replies */
		c->quit = true;
		return;
	}
	memcpy(c->out + c->outlen, s, n);
	c->outlen += n;
}

static void conn_free(struct worker *w, struct conn *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		w->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	if (c->ssl)
		SSL_free(c->ssl);
	close(c->fd);
	free(c);
	atomic_fetch_sub(&n_open, 1);
}

/* Write pending output. 1 all written, 0 would block, -1 error. */
static int flush_out(struct conn *c)
{
	while (c->outlen > 0) {
		ssize_t n;
		if (c->tls) {
			int r = SSL_write(c->ssl, c->out, (int)c->outlen);
			if (r <= 0) {
				int e = SSL_get_error(c->ssl, r);
				if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
					return 0;
				return -1;
			}
			n = r;
		} else {
			n = write(c->fd, c->out, c->outlen);
			if (n < 0) {
				if (errno == EAGAIN || errno == EINTR)
					return 0;
				return -1;
			}
		}
		memmove(c->out, c->out + n, c->outlen - (size_t)n);
		c->outlen -= (size_t)n;
	}
	return 1;
}

static void reset_tx(struct conn *c)
{
	c->has_mail = false;
	c->rcpts = 0;
}

static void message_done(struct conn *c)
{
	atomic_fetch_add(&n_msgs, 1);
	atomic_fetch_add(&n_rcpts, c->rcpts);
	double t = wall();
	double zero = 0;
	atomic_compare_exchange_strong(&t_first, &zero, t);
	atomic_store(&t_last, t);
	reset_tx(c);
}

static bool verb(const char *line, size_t len, const char *v)
{
	size_t n = strlen(v);
	return len >= n && strncasecmp(line, v, n) == 0 &&
	       (len == n || line[n] == ' ' || line[n] == '\r' || line[n] == '\n' || line[n] == ':');
}

static void ehlo(struct conn *c, bool extended)
{
	char b[512];
	if (!extended) {
		snprintf(b, sizeof b, "250 %s\r\n", opt.hostname);
		reply(c, b);
		return;
	}
	snprintf(b, sizeof b,
	         "250-%s\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n"
	         "%s%s250 ENHANCEDSTATUSCODES\r\n",
	         opt.hostname, c->tls ? "" : "250-STARTTLS\r\n",
	         opt.chunking ? "250-CHUNKING\r\n" : "");
	reply(c, b);
}

static void bdat_chunk_end(struct conn *c);

/* One command line (without the line end). Returns false to stop reading input
 * now (STARTTLS: what follows belongs to the TLS layer). */
static bool command(struct conn *c, const char *l, size_t len)
{
	bool need_tls = verb(l, len, "MAIL") || verb(l, len, "RCPT") || verb(l, len, "DATA") ||
	                verb(l, len, "BDAT");
	if (need_tls && !c->tls) {
		atomic_fetch_add(&n_plain_refused, 1);
		reply(c, "530 5.7.0 Must issue a STARTTLS command first\r\n");
		if (verb(l, len, "BDAT")) { /* its octets follow: read and drop them */
			c->mode = M_BDAT;
			c->bdat_left = strtol(l + 5, NULL, 10);
			c->bdat_bad = true;
			c->bdat_last = false;
			if (c->bdat_left <= 0) {
				c->bdat_left = 0;
				c->mode = M_CMD;
			}
		}
		return true;
	}
	if (verb(l, len, "EHLO")) {
		reset_tx(c);
		ehlo(c, true);
	} else if (verb(l, len, "HELO")) {
		reset_tx(c);
		ehlo(c, false);
	} else if (verb(l, len, "STARTTLS")) {
		if (c->tls) {
			reply(c, "503 5.5.1 TLS already active\r\n");
			return true;
		}
		reply(c, "220 2.0.0 Ready to start TLS\r\n");
		c->mode = M_HANDSHAKE;
		c->inlen = 0; /* anything pipelined after STARTTLS is dropped (RFC 3207 §4.2) */
		return false;
	} else if (verb(l, len, "MAIL")) {
		if (c->has_mail) {
			reply(c, "503 5.5.1 Error: nested MAIL command\r\n");
		} else {
			c->has_mail = true;
			reply(c, "250 2.1.0 Ok\r\n");
		}
	} else if (verb(l, len, "RCPT")) {
		if (!c->has_mail) {
			reply(c, "503 5.5.1 Error: need MAIL command\r\n");
		} else {
			c->rcpts++;
			reply(c, "250 2.1.5 Ok\r\n");
		}
	} else if (verb(l, len, "DATA")) {
		if (c->rcpts == 0) {
			reply(c, "554 5.5.1 Error: no valid recipients\r\n");
		} else {
			reply(c, "354 End data with <CR><LF>.<CR><LF>\r\n");
			c->mode = M_DATA;
			c->mid_line = false;
		}
	} else if (verb(l, len, "BDAT")) {
		char *end;
		long n = strtol(l + 5, &end, 10);
		bool last = false;
		while (*end == ' ')
			end++;
		if (strncasecmp(end, "LAST", 4) == 0)
			last = true;
		c->mode = M_BDAT;
		c->bdat_left = n < 0 ? 0 : n;
		c->bdat_last = last;
		c->bdat_bad = !opt.chunking || c->rcpts == 0;
		if (c->bdat_left == 0)
			bdat_chunk_end(c);
	} else if (verb(l, len, "RSET")) {
		reset_tx(c);
		reply(c, "250 2.0.0 Ok\r\n");
	} else if (verb(l, len, "NOOP")) {
		reply(c, "250 2.0.0 Ok\r\n");
	} else if (verb(l, len, "QUIT")) {
		reply(c, "221 2.0.0 Bye\r\n");
		c->quit = true;
		return false;
	} else {
		atomic_fetch_add(&n_errors, 1);
		reply(c, "502 5.5.2 Error: command not recognized\r\n");
	}
	return true;
}

static void bdat_chunk_end(struct conn *c)
{
	c->mode = M_CMD;
	if (c->bdat_bad) {
		if (c->tls)
			reply(c, opt.chunking ? "503 5.5.1 Error: no valid recipients\r\n"
			                      : "502 5.5.1 BDAT not offered\r\n");
		return;
	}
	if (c->bdat_last) {
		message_done(c);
		reply(c, "250 2.0.0 Ok: message accepted\r\n");
	} else {
		reply(c, "250 2.0.0 Ok: chunk received\r\n");
	}
}

/* Consume c->in. */
static void process_input(struct conn *c)
{
	size_t off = 0;
	while (off < c->inlen && !c->quit && c->mode != M_HANDSHAKE) {
		char *p = c->in + off;
		size_t avail = c->inlen - off;
		if (c->mode == M_BDAT) {
			size_t take = avail < (size_t)c->bdat_left ? avail : (size_t)c->bdat_left;
			c->bdat_left -= (long)take;
			off += take;
			atomic_fetch_add(&n_bytes, (long)take);
			if (c->bdat_left == 0)
				bdat_chunk_end(c);
			continue;
		}
		char *nl = memchr(p, '\n', avail);
		if (!nl)
			break;
		size_t len = (size_t)(nl - p) + 1;
		off += len;
		if (c->mode == M_DATA) {
			atomic_fetch_add(&n_bytes, (long)len);
			bool start = !c->mid_line;
			c->mid_line = false;
			if (start && ((len == 3 && p[0] == '.' && p[1] == '\r') ||
			              (len == 2 && p[0] == '.'))) {
				c->mode = M_CMD;
				message_done(c);
				reply(c, "250 2.0.0 Ok: queued\r\n");
			}
			continue;
		}
		size_t l = len - 1;
		if (l > 0 && p[l - 1] == '\r')
			l--;
		p[l] = 0;
		if (!command(c, p, l))
			break;
	}
	if (c->mode == M_HANDSHAKE || c->quit) {
		c->inlen = 0;
		return;
	}
	if (off < c->inlen) {
		memmove(c->in, c->in + off, c->inlen - off);
		c->inlen -= off;
	} else {
		c->inlen = 0;
	}
	if (c->inlen == sizeof c->in) { /* no line end in a full buffer */
		if (c->mode == M_DATA) {
			atomic_fetch_add(&n_bytes, (long)c->inlen);
			c->mid_line = true;
			c->inlen = 0;
		} else {
			reply(c, "500 5.5.2 Error: line too long\r\n");
			c->quit = true;
		}
	}
}

/* Drive one connection after an event. Returns false when it is to be closed. */
static bool drive(struct worker *w, struct conn *c)
{
	c->t_active = mono();
	for (;;) {
		int f = flush_out(c);
		if (f < 0)
			return false;
		if (f == 0)
			break;
		if (c->quit)
			return false;
		if (c->mode == M_HANDSHAKE) {
			if (!c->ssl) {
				c->ssl = SSL_new(ctx);
				if (!c->ssl || !SSL_set_fd(c->ssl, c->fd))
					return false;
				SSL_set_accept_state(c->ssl);
			}
			int r = SSL_do_handshake(c->ssl);
			if (r <= 0) {
				int e = SSL_get_error(c->ssl, r);
				if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
					break;
				atomic_fetch_add(&n_tls_failed, 1);
				ERR_clear_error();
				return false;
			}
			c->tls = true;
			c->mode = M_CMD;
			reset_tx(c);
			atomic_fetch_add(&n_tls, 1);
			if (SSL_session_reused(c->ssl))
				atomic_fetch_add(&n_resumed, 1);
			continue;
		}
		/* read */
		ssize_t n;
		if (c->tls) {
			int r = SSL_read(c->ssl, c->in + c->inlen, (int)(sizeof c->in - c->inlen));
			if (r <= 0) {
				int e = SSL_get_error(c->ssl, r);
				if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
					break;
				ERR_clear_error();
				return false; /* close_notify, EOF or error */
			}
			n = r;
		} else {
			n = read(c->fd, c->in + c->inlen, sizeof c->in - c->inlen);
			if (n == 0)
				return false;
			if (n < 0) {
				if (errno == EAGAIN || errno == EINTR)
					break;
				return false;
			}
		}
		c->inlen += (size_t)n;
		process_input(c);
	}
	uint32_t want = EPOLLIN;
	if (c->outlen > 0 || (c->ssl && SSL_want_write(c->ssl)))
		want |= EPOLLOUT;
	if (want != c->ev) {
		struct epoll_event ev = {.events = want, .data.ptr = c};
		if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
			return false;
		c->ev = want;
	}
	return true;
}

static void accept_all(struct worker *w, int lfd)
{
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		struct conn *c = calloc(1, sizeof *c);
		if (!c) {
			close(fd);
			continue;
		}
		c->fd = fd;
		c->mode = M_CMD;
		c->ev = EPOLLIN;
		c->t_active = mono();
		c->next = w->conns;
		if (w->conns)
			w->conns->prev = c;
		w->conns = c;
		atomic_fetch_add(&n_conns, 1);
		atomic_fetch_add(&n_open, 1);
		char b[300];
		snprintf(b, sizeof b, "220 %s ESMTP tls-sink\r\n", opt.hostname);
		reply(c, b);
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
		if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 || !drive(w, c))
			conn_free(w, c);
	}
}

static void write_stats(void)
{
	if (!opt.stats)
		return;
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", opt.stats);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return;
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	             (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
	fprintf(
	    f,
	    "{\"messages\":%ld,\"recipients\":%ld,\"bytes\":%ld,\"connections\":%ld,\"open\":%ld,"
	    "\"tls\":%ld,\"resumed\":%ld,\"tls_failed\":%ld,\"plaintext_refused\":%ld,"
	    "\"errors\":%ld,\"paused\":%d,\"first\":%.6f,\"last\":%.6f,\"now\":%.6f,\"cpu_s\":%"
	    ".3f}\n",
	    atomic_load(&n_msgs), atomic_load(&n_rcpts), atomic_load(&n_bytes),
	    atomic_load(&n_conns), atomic_load(&n_open), atomic_load(&n_tls),
	    atomic_load(&n_resumed), atomic_load(&n_tls_failed), atomic_load(&n_plain_refused),
	    atomic_load(&n_errors), atomic_load(&paused), atomic_load(&t_first),
	    atomic_load(&t_last), wall(), cpu);
	if (fclose(f) == 0)
		rename(tmp, opt.stats);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct epoll_event evs[128];
	double t_end = mono() + opt.max_time, t_sweep = mono() + 1;
	bool was_paused = false;
	while (!sig_stop && mono() < t_end) {
		if (atomic_load(&paused)) {
			struct timespec ts = {0, 5 * 1000 * 1000};
			nanosleep(&ts, NULL);
			was_paused = true;
			continue;
		}
		if (was_paused) { /* the pause is not idleness */
			was_paused = false;
			for (struct conn *c = w->conns; c; c = c->next)
				c->t_active = mono();
		}
		int n = epoll_wait(w->epfd, evs, 128, 100);
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			bool listener = false;
			for (int k = 0; k < opt.n_listen; k++)
				if (p == &w->lfd[k]) {
					accept_all(w, w->lfd[k]);
					listener = true;
				}
			if (!listener) {
				struct conn *c = p;
				if (!drive(w, c))
					conn_free(w, c);
			}
		}
		double t = mono();
		if (t >= t_sweep) { /* idle timeout */
			t_sweep = t + 1;
			for (struct conn *c = w->conns, *nx; c; c = nx) {
				nx = c->next;
				if (t - c->t_active > opt.timeout)
					conn_free(w, c);
			}
		}
	}
	while (w->conns)
		conn_free(w, w->conns);
	return NULL;
}

static void on_signal(int s)
{
	if (s == SIGUSR1)
		sig_dump = 1;
	else if (s == SIGUSR2)
		sig_pause = 1;
	else
		sig_stop = 1;
}

static int listener(const struct sockaddr_in *a)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
	if (bind(fd, (const struct sockaddr *)a, sizeof *a) < 0 || listen(fd, 1024) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: tls-sink --listen ADDR:PORT [--listen ...] --cert FILE --key FILE\n"
	        "  --stats FILE      JSON counters, rewritten every 100 ms, on SIGUSR1, at exit\n"
	        "  --hostname NAME   in the greeting and EHLO (sink.bench.test)\n"
	        "  --threads N       event loops (1)\n"
	        "  --chunking        advertise CHUNKING (BDAT)\n"
	        "  --no-tickets      no TLS session tickets\n"
	        "  --max-time S      exit after S seconds (3600)\n"
	        "  --timeout S       close connections idle for S seconds (60)\n");
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
	    {"listen", required_argument, 0, 'l'},   {"cert", required_argument, 0, 'c'},
	    {"key", required_argument, 0, 'k'},      {"stats", required_argument, 0, 's'},
	    {"hostname", required_argument, 0, 'H'}, {"threads", required_argument, 0, 't'},
	    {"chunking", no_argument, 0, 'C'},       {"no-tickets", no_argument, 0, 'N'},
	    {"max-time", required_argument, 0, 'm'}, {"timeout", required_argument, 0, 'T'},
	    {"help", no_argument, 0, 'h'},           {0, 0, 0, 0}};
	int ch;
	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (ch) {
		case 'l': {
			char host[64];
			const char *colon = strrchr(optarg, ':');
			if (!colon || opt.n_listen == MAX_LISTEN ||
			    (size_t)(colon - optarg) >= sizeof host) {
				usage(stderr);
				return 2;
			}
			memcpy(host, optarg, (size_t)(colon - optarg));
			host[colon - optarg] = 0;
			struct sockaddr_in *a = &opt.listen[opt.n_listen++];
			a->sin_family = AF_INET;
			a->sin_port = htons((uint16_t)atoi(colon + 1));
			if (inet_pton(AF_INET, host, &a->sin_addr) != 1) {
				fprintf(stderr, "tls-sink: bad address %s\n", host);
				return 2;
			}
			break;
		}
		case 'c':
			opt.cert = optarg;
			break;
		case 'k':
			opt.key = optarg;
			break;
		case 's':
			opt.stats = optarg;
			break;
		case 'H':
			opt.hostname = optarg;
			break;
		case 't':
			opt.threads = atoi(optarg);
			break;
		case 'C':
			opt.chunking = true;
			break;
		case 'N':
			opt.no_tickets = true;
			break;
		case 'm':
			opt.max_time = atof(optarg);
			break;
		case 'T':
			opt.timeout = atof(optarg);
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (!opt.n_listen || !opt.cert || !opt.key || opt.threads < 1 || opt.threads > 64) {
		usage(stderr);
		return 2;
	}

	ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
	    SSL_CTX_use_certificate_chain_file(ctx, opt.cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, opt.key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		fprintf(stderr, "tls-sink: TLS set-up failed (%s, %s)\n", opt.cert, opt.key);
		ERR_print_errors_fp(stderr);
		return 1;
	}
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
	                          SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
	                             SSL_OP_CIPHER_SERVER_PREFERENCE |
	                             (opt.no_tickets ? SSL_OP_NO_TICKET : 0));
	static const unsigned char sid[] = "tls-sink";
	SSL_CTX_set_session_id_context(ctx, sid, sizeof sid - 1);

	struct sigaction sa = {.sa_handler = on_signal};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	struct worker *ws = calloc((size_t)opt.threads, sizeof *ws);
	sigset_t block, old;
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &block, &old); /* workers: signals go to the main thread */
	for (int t = 0; t < opt.threads; t++) {
		struct worker *w = &ws[t];
		w->epfd = epoll_create1(EPOLL_CLOEXEC);
		for (int k = 0; k < opt.n_listen; k++) {
			w->lfd[k] = listener(&opt.listen[k]);
			if (w->lfd[k] < 0) {
				char a[64];
				inet_ntop(AF_INET, &opt.listen[k].sin_addr, a, sizeof a);
				fprintf(stderr, "tls-sink: cannot listen on %s:%d: %s\n", a,
				        ntohs(opt.listen[k].sin_port), strerror(errno));
				return 1;
			}
			struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &w->lfd[k]};
			epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->lfd[k], &ev);
		}
	}
	for (int t = 0; t < opt.threads; t++)
		pthread_create(&ws[t].th, NULL, worker_main, &ws[t]);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	write_stats();
	fprintf(stderr, "tls-sink: listening (%d address(es), %d thread(s))\n", opt.n_listen,
	        opt.threads);

	double t_end = mono() + opt.max_time;
	while (!sig_stop && mono() < t_end) {
		struct timespec ts = {0, 100 * 1000 * 1000};
		nanosleep(&ts, NULL);
		if (sig_pause) {
			sig_pause = 0;
			atomic_store(&paused, !atomic_load(&paused));
		}
		if (sig_dump) {
			sig_dump = 0;
			fprintf(stderr,
			        "tls-sink: messages=%ld connections=%ld tls=%ld resumed=%ld\n",
			        atomic_load(&n_msgs), atomic_load(&n_conns), atomic_load(&n_tls),
			        atomic_load(&n_resumed));
		}
		write_stats();
	}
	sig_stop = 1;
	for (int t = 0; t < opt.threads; t++)
		pthread_join(ws[t].th, NULL);
	write_stats();
	SSL_CTX_free(ctx);
	free(ws);
	return 0;
}
