/*
 * check/probe - connections of the checker; see probe.h. The TLS switch
 * mirrors src/outbound/delivery.c: when the session raises STARTTLS,
 * reading stops; once our STARTTLS has left, the plain bufferevent is
 * replaced by a TLS one on the same socket; bytes already buffered then
 * came with the 220 (response injection) and fail the host.
 */
#include "check/probe.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "check/enforce.h"
#include "common/xmalloc.h"
#include "outbound/session.h"

#define IN_CHUNK    65536
#define NO_STARTTLS "Recipient's Mail eXchanger does not offer STARTTLS capability"

struct check_probe {
	struct event_base *base;
	SSL_CTX *tls;
	char *helo, *host, *tlsa_base;
	bool dane, verify_required, enforce;
	const struct tls_tlsa *tlsa;
	size_t n_tlsa;
	const char *const *extra;
	size_t n_extra;
	struct sockaddr_storage addr;
	unsigned timeout;

	struct check_tls *out;
	struct check_tls *pkix_out; /* DANE: the PKIX verdict of the same handshake */
	int pkix_verify;            /* -1 not run, 0 failed, 1 verified */
	char pkix_why[400];
	struct check_addr *aout;
	struct outbound_session *sess;
	struct check_enforce_session *es;

	struct bufferevent *bev;
	evutil_socket_t fd;
	bool fd_owned_by_bev;
	bool connecting, tls_pending, handshaking, closing, finished, timed_out;
	struct event *later; /* delivers an early failure from the loop */
	check_probe_cb cb;
	void *arg;
};

static void process(struct check_probe *p);

static void set_timeouts(struct check_probe *p)
{
	struct timeval tv = {.tv_sec = p->timeout ? p->timeout : 10};
	bufferevent_set_timeouts(p->bev, &tv, &tv);
}

static void close_conn(struct check_probe *p)
{
	if (p->bev != NULL) {
		bufferevent_free(p->bev);
		p->bev = NULL;
	}
	if (p->fd >= 0 && !p->fd_owned_by_bev)
		evutil_closesocket(p->fd);
	p->fd = -1;
	p->fd_owned_by_bev = false;
}

/*
 * definite - a TLS probe's outcome that other domains may share (check.c):
 * it completed, or the server does not offer STARTTLS, or its certificate
 * failed the verification we required. Not a timeout, a closed connection,
 * a refusal (a 421 may be the load of the moment) or a failed handshake.
 */
static bool definite(const struct check_probe *p)
{
	const struct check_tls *o = p->out;

	if (!o->connected || p->timed_out)
		return false;
	if (o->error[0] == '\0' || strcmp(o->error, NO_STARTTLS) == 0)
		return true;
	return o->handshake && o->verify == 0 && p->verify_required;
}

/* finish - the probe is over: close, then tell the owner (who may free p) */
/*
 * pkix_fill - what a PKIX probe of the same host would have reported: the
 * same connection facts, the PKIX verdict on the same chain; a PKIX failure
 * ends that session with its reason (as tls_done does), a PKIX success
 * after a DANE failure is taken to go on to EHLO and QUIT as this session
 * would have.
 */
static void pkix_fill(struct check_probe *p)
{
	struct check_tls *k = p->pkix_out;

	*k = *p->out;
	k->dane_match[0] = '\0';
	if (p->pkix_verify < 0)
		return;
	k->verify = p->pkix_verify;
	snprintf(k->verify_error, sizeof(k->verify_error), "%s", p->pkix_verify ? "" : p->pkix_why);
	if (p->pkix_verify == 0)
		snprintf(k->error, sizeof(k->error), "%s", p->pkix_why);
	else if (p->out->verify == 0)
		k->error[0] = '\0';
}

static void finish(struct check_probe *p)
{
	if (p->finished)
		return;
	p->finished = true;
	if (!p->enforce)
		p->out->definite = definite(p);
	if (p->pkix_out != NULL)
		pkix_fill(p);
	close_conn(p);
	p->cb(p->arg);
}

static void later_cb(evutil_socket_t fd, short what, void *arg)
{
	finish(arg);
}

/* fail_early - no connection: record why (what: detail), finish from the loop */
static void fail_early(struct check_probe *p, const char *what, const char *detail)
{
	char buf[300];

	snprintf(buf, sizeof(buf), "%s%s%s", what, *what ? ": " : "", detail);
	if (p->enforce) {
		p->aout->enforce = CHECK_ENFORCE_ERROR;
		snprintf(p->aout->enforce_error, sizeof(p->aout->enforce_error), "%s", buf);
	} else {
		snprintf(p->out->error, sizeof(p->out->error), "%s", buf);
	}
	close_conn(p);
	struct timeval zero = {0, 0};
	evtimer_add(p->later, &zero);
}

/* ---- certificates ---- */

static void clean(char *t)
{
	for (; *t; t++)
		if ((unsigned char)*t < 0x20 || (unsigned char)*t >= 0x7f)
			*t = '?';
}

static void name_text(const X509_NAME *n, char *buf, size_t len)
{
	BIO *b = BIO_new(BIO_s_mem());
	int r = 0;

	buf[0] = '\0';
	if (b == NULL)
		return;
	if (X509_NAME_print_ex(b, n, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) >= 0)
		r = BIO_read(b, buf, (int)len - 1);
	buf[r > 0 ? r : 0] = '\0';
	BIO_free(b);
	clean(buf);
}

static void san_text(X509 *x, char *buf, size_t len)
{
	GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	size_t pos = 0;

	buf[0] = '\0';
	for (int i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens); i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
		if (g->type != GEN_DNS)
			continue;
		const unsigned char *d = ASN1_STRING_get0_data(g->d.dNSName);
		int n = ASN1_STRING_length(g->d.dNSName);
		if (n <= 0 || pos + (size_t)n + 3 >= len)
			continue;
		if (pos > 0) {
			memcpy(buf + pos, ", ", 2);
			pos += 2;
		}
		memcpy(buf + pos, d, (size_t)n);
		pos += (size_t)n;
		buf[pos] = '\0';
	}
	GENERAL_NAMES_free(gens);
	clean(buf);
}

static void cert_info(X509 *x, struct check_cert *c)
{
	const ASN1_TIME *na = X509_get0_notAfter(x);
	struct tm tm;
	int day = 0, sec = 0;

	name_text(X509_get_subject_name(x), c->subject, sizeof(c->subject));
	name_text(X509_get_issuer_name(x), c->issuer, sizeof(c->issuer));
	san_text(x, c->san, sizeof(c->san));
	if (na != NULL && ASN1_TIME_to_tm(na, &tm))
		snprintf(c->not_after, sizeof(c->not_after), "%04d-%02d-%02d", tm.tm_year + 1900,
		         tm.tm_mon + 1, tm.tm_mday);
	else
		snprintf(c->not_after, sizeof(c->not_after), "unknown");
	if (na != NULL && ASN1_TIME_diff(&day, &sec, NULL, na)) {
		long total = (long)day * 86400 + sec;
		c->days_left = total >= 0 ? total / 86400 : -((-total + 86399) / 86400);
	}
}

static void tls_facts(struct check_probe *p, SSL *ssl)
{
	struct check_tls *o = p->out;
	STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl);
	int gid = (int)SSL_get_negotiated_group(ssl);
	const char *gname = gid > 0 ? SSL_group_to_name(ssl, gid) : NULL;

	o->handshake = true;
	snprintf(o->protocol, sizeof(o->protocol), "%s", SSL_get_version(ssl));
	snprintf(o->cipher, sizeof(o->cipher), "%s", SSL_get_cipher_name(ssl));
	snprintf(o->group, sizeof(o->group), "%s", gname ? gname : "");
	o->n_chain = 0;
	if (chain != NULL) {
		for (int i = 0; i < sk_X509_num(chain) && o->n_chain < CHECK_MAX_CHAIN; i++)
			cert_info(sk_X509_value(chain, i), &o->chain[o->n_chain++]);
	} else if (SSL_get0_peer_certificate(ssl) != NULL) {
		cert_info(SSL_get0_peer_certificate(ssl), &o->chain[o->n_chain++]);
	}
}

/* ---- the TLS probe ---- */

static void read_cb(struct bufferevent *bev, void *arg);
static void write_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);

static void flush_output(struct check_probe *p)
{
	size_t len;
	const char *out;

	if (p->enforce) {
		out = check_enforce_output(p->es, &len);
		if (len) {
			bufferevent_write(p->bev, out, len);
			check_enforce_output_clear(p->es);
		}
		return;
	}
	out = outbound_session_output(p->sess, &len);
	if (len) {
		/* the session sends STARTTLS only when the EHLO reply offered it */
		if (len >= 10 && memcmp(out + len - 10, "STARTTLS\r\n", 10) == 0)
			p->out->starttls = 1;
		bufferevent_write(p->bev, out, len);
		outbound_session_output_clear(p->sess);
	}
}

/* closing - the session is over: let the QUIT leave, then finish */
static void closing(struct check_probe *p)
{
	p->closing = true;
	if (p->bev == NULL || evbuffer_get_length(bufferevent_get_output(p->bev)) == 0)
		finish(p);
	/* else write_cb finishes once the output has left (bounded by the timeouts) */
}

static void session_over(struct check_probe *p)
{
	const char *reason = NULL;

	if (outbound_session_host_error(p->sess, &reason, NULL) && reason != NULL) {
		snprintf(p->out->error, sizeof(p->out->error), "%s", reason);
		if (strncmp(reason, NO_STARTTLS, strlen(NO_STARTTLS)) == 0)
			p->out->starttls = 0;
	}
	closing(p);
}

static void start_tls(struct check_probe *p)
{
	char why[300] = "cannot set up TLS for this host name";
	SSL *ssl;

	p->tls_pending = false;
	if (evbuffer_get_length(bufferevent_get_input(p->bev)) > 0) {
		outbound_session_tls_failed(p->sess,
		                            "response injection after STARTTLS (bytes after 220)");
		process(p);
		return;
	}
	if (p->dane) {
		const char *names[1] = {p->host};
		ssl = tls_client_new_dane(p->tls, p->tlsa_base, names,
		                          strcmp(p->host, p->tlsa_base) ? 1 : 0, p->tlsa, p->n_tlsa,
		                          NULL, why, sizeof(why));
	} else {
		ssl = tls_client_new_pkix(p->tls, p->host, p->extra, p->n_extra);
	}
	if (ssl == NULL) {
		outbound_session_tls_failed(p->sess, why);
		process(p);
		return;
	}
	/*
	 * The TLS bufferevent gets its own descriptor of the same socket: the
	 * plain one closes its descriptor only once libevent has removed its
	 * events. Closing a descriptor by hand while its events are still
	 * registered (bufferevent_free is deferred inside a callback) lets the
	 * next socket with the same number go unwatched by epoll: its connect
	 * is never reported and it times out.
	 */
	evutil_socket_t fd2 = fcntl(p->fd, F_DUPFD_CLOEXEC, 0);
	if (fd2 < 0) {
		SSL_free(ssl);
		outbound_session_tls_failed(p->sess, "cannot start TLS (dup)");
		process(p);
		return;
	}
	bufferevent_free(p->bev);
	p->fd = fd2;
	p->bev = bufferevent_openssl_socket_new(p->base, p->fd, ssl, BUFFEREVENT_SSL_CONNECTING,
	                                        BEV_OPT_CLOSE_ON_FREE);
	if (p->bev == NULL) {
		SSL_free(ssl);
		p->fd_owned_by_bev = false;
		outbound_session_tls_failed(p->sess, "cannot start TLS");
		session_over(p);
		return;
	}
	p->fd_owned_by_bev = true;
	bufferevent_openssl_set_allow_dirty_shutdown(p->bev, 1);
	p->handshaking = true;
	bufferevent_setcb(p->bev, read_cb, write_cb, event_cb, p);
	set_timeouts(p);
	bufferevent_enable(p->bev, EV_READ | EV_WRITE);
}

static void tls_done(struct check_probe *p)
{
	SSL *ssl = bufferevent_openssl_get_ssl(p->bev);
	char why[400] = "";
	int r;

	p->handshaking = false;
	tls_facts(p, ssl);
	if (p->dane) {
		r = tls_client_verify_dane(ssl, why, sizeof(why), p->out->dane_match,
		                           sizeof(p->out->dane_match));
		if (p->pkix_out != NULL)
			p->pkix_verify =
			    tls_client_verify_pkix_after(p->tls, ssl, p->host, p->extra, p->n_extra,
			                                 p->pkix_why, sizeof(p->pkix_why)) == 0;
	} else
		r = tls_client_verify(ssl, why, sizeof(why));
	p->out->verify = r == 0 ? 1 : 0;
	snprintf(p->out->verify_error, sizeof(p->out->verify_error), "%s", r == 0 ? "" : why);
	if (r < 0 && p->verify_required)
		outbound_session_tls_failed(p->sess, why);
	else
		outbound_session_tls_started(p->sess);
	process(p);
}

static void process_enforce(struct check_probe *p)
{
	struct evbuffer *in = bufferevent_get_input(p->bev);

	flush_output(p);
	while (!check_enforce_done(p->es)) {
		size_t len = evbuffer_get_length(in);
		if (len == 0)
			break;
		size_t n = len < IN_CHUNK ? len : IN_CHUNK;
		const char *d = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
		size_t used = check_enforce_input(p->es, d, n);
		evbuffer_drain(in, used);
		flush_output(p);
		if (used == 0)
			break;
	}
	if (check_enforce_done(p->es)) {
		const char *reply = NULL, *error = NULL;
		p->aout->enforce = check_enforce_result(p->es, &reply, &error);
		snprintf(p->aout->enforce_reply, sizeof(p->aout->enforce_reply), "%s", reply);
		snprintf(p->aout->enforce_error, sizeof(p->aout->enforce_error), "%s", error);
		closing(p);
	}
}

static void process(struct check_probe *p)
{
	struct evbuffer *in;

	if (p->closing || p->finished)
		return;
	if (p->enforce) {
		process_enforce(p);
		return;
	}
	in = bufferevent_get_input(p->bev);
	flush_output(p);
	for (;;) {
		enum outbound_action act = outbound_session_action(p->sess);
		if (act == OUTBOUND_NONE) {
			size_t len = evbuffer_get_length(in);
			if (len == 0)
				break;
			size_t n = len < IN_CHUNK ? len : IN_CHUNK;
			const char *d = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
			size_t used = outbound_session_input(p->sess, d, n);
			evbuffer_drain(in, used);
			act = outbound_session_action(p->sess);
			if (used == 0 && act == OUTBOUND_NONE)
				break;
		}
		flush_output(p);
		switch (act) {
		case OUTBOUND_NONE:
			continue;
		case OUTBOUND_STARTTLS:
			if (p->tls_pending || p->handshaking)
				return;
			p->tls_pending = true;
			bufferevent_disable(p->bev, EV_READ);
			if (evbuffer_get_length(bufferevent_get_output(p->bev)) == 0)
				start_tls(p);
			return; /* write_cb switches once STARTTLS has left */
		case OUTBOUND_SEND_BODY:
			/* never in probe mode: there is no MAIL */
			outbound_session_eof(p->sess);
			session_over(p);
			return;
		case OUTBOUND_DONE:
		case OUTBOUND_CLOSE:
			session_over(p);
			return;
		}
	}
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	struct check_probe *p = arg;

	if (p->tls_pending || p->handshaking || p->closing)
		return;
	process(p);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	struct check_probe *p = arg;

	if (p->closing) {
		finish(p);
		return;
	}
	if (p->tls_pending)
		start_tls(p);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct check_probe *p = arg;

	if (what & BEV_EVENT_CONNECTED) {
		if (p->handshaking) {
			tls_done(p);
		} else {
			p->connecting = false;
			if (p->out != NULL)
				p->out->connected = true;
			set_timeouts(p);
		}
		return;
	}
	if (p->closing) {
		finish(p);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT)
		p->timed_out = true;
	if (p->connecting) {
		char why[200];
		if (what & BEV_EVENT_TIMEOUT)
			snprintf(why, sizeof(why), "connection timed out");
		else
			snprintf(why, sizeof(why), "connect: %s",
			         evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		if (p->enforce) {
			p->aout->enforce = CHECK_ENFORCE_ERROR;
			snprintf(p->aout->enforce_error, sizeof(p->aout->enforce_error), "%s", why);
		} else {
			snprintf(p->out->error, sizeof(p->out->error), "%s", why);
		}
		finish(p);
		return;
	}
	if (p->enforce) {
		if (what & BEV_EVENT_TIMEOUT)
			check_enforce_timeout(p->es);
		else
			check_enforce_eof(p->es);
		process_enforce(p);
		return;
	}
	if (p->handshaking) {
		char buf[256] = "the connection was closed";
		char why[320];
		unsigned long e = bufferevent_get_openssl_error(bev);
		p->handshaking = false;
		if (what & BEV_EVENT_TIMEOUT)
			snprintf(buf, sizeof(buf), "timed out");
		else if (e)
			ERR_error_string_n(e, buf, sizeof(buf));
		snprintf(why, sizeof(why), "TLS handshake failed: %s", buf);
		outbound_session_tls_failed(p->sess, why);
	} else if (what & BEV_EVENT_TIMEOUT) {
		outbound_session_timeout(p->sess);
	} else {
		outbound_session_eof(p->sess);
	}
	process(p);
}

/* same_host - a and b name the same host (case and a trailing dot aside) */
static bool same_host(const char *a, const char *b)
{
	size_t na = strlen(a), nb = strlen(b);

	if (na > 0 && a[na - 1] == '.')
		na--;
	if (nb > 0 && b[nb - 1] == '.')
		nb--;
	return na > 0 && na == nb && strncasecmp(a, b, na) == 0;
}

static struct check_probe *probe_new(const struct check_probe_params *pp, check_probe_cb cb,
                                     void *arg)
{
	struct check_probe *p = xcalloc(1, sizeof(*p));

	p->base = pp->base;
	p->tls = pp->tls;
	p->helo = xstrdup(pp->helo);
	p->host = xstrdup(pp->host ? pp->host : "");
	p->tlsa_base = xstrdup(pp->tlsa_base && *pp->tlsa_base ? pp->tlsa_base : p->host);
	p->dane = pp->dane;
	p->verify_required = pp->verify_required;
	p->tlsa = pp->tlsa;
	p->n_tlsa = pp->n_tlsa;
	p->extra = pp->extra_names;
	p->n_extra = pp->n_extra;
	p->addr = *pp->addr;
	p->timeout = pp->timeout;
	p->fd = -1;
	p->cb = cb;
	p->arg = arg;
	p->later = evtimer_new(p->base, later_cb, p);
	return p;
}

static void connect_start(struct check_probe *p)
{
	const struct sockaddr_storage *ss = &p->addr;
	socklen_t len =
	    ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);

	p->fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (p->fd < 0) {
		fail_early(p, "socket", strerror(errno));
		return;
	}
	/* CLOSE_ON_FREE: the TLS bufferevent gets a dup of the socket (start_tls) */
	p->bev = bufferevent_socket_new(p->base, p->fd, BEV_OPT_CLOSE_ON_FREE);
	if (p->bev == NULL) {
		fail_early(p, "", "cannot create a bufferevent");
		return;
	}
	p->fd_owned_by_bev = true;
	bufferevent_setcb(p->bev, read_cb, write_cb, event_cb, p);
	p->connecting = true;
	set_timeouts(p);
	bufferevent_enable(p->bev, EV_READ | EV_WRITE);
	if (bufferevent_socket_connect(p->bev, (struct sockaddr *)ss, (int)len) < 0)
		fail_early(p, "connect", strerror(errno));
}

struct check_probe *check_probe_tls(const struct check_probe_params *pp, struct check_tls *out,
                                    check_probe_cb cb, void *arg)
{
	struct check_probe *p = probe_new(pp, cb, arg);
	struct outbound_params op = {
	    .helo_name = p->helo,
	    .mx_host = p->host,
	    .sender = "",
	    .rcpts = NULL,
	    .n_rcpts = 0,
	    .require_tls = true,
	    .probe = true,
	};

	memset(out, 0, sizeof(*out));
	out->ran = true;
	out->starttls = -1;
	out->verify = -1;
	p->out = out;
	p->pkix_verify = -1;
	if (pp->pkix_out != NULL && p->dane && same_host(p->host, p->tlsa_base))
		p->pkix_out = pp->pkix_out;
	p->sess = outbound_session_new(&op);
	connect_start(p);
	return p;
}

struct check_probe *check_probe_enforce(const struct check_probe_params *pp, struct check_addr *out,
                                        check_probe_cb cb, void *arg)
{
	struct check_probe *p = probe_new(pp, cb, arg);

	p->enforce = true;
	p->aout = out;
	out->enforce = CHECK_ENFORCE_NOT_RUN;
	out->enforce_reply[0] = out->enforce_error[0] = '\0';
	p->es = check_enforce_new(p->helo);
	connect_start(p);
	return p;
}

void check_probe_free(struct check_probe **pp)
{
	struct check_probe *p = *pp;

	if (p == NULL)
		return;
	close_conn(p);
	if (p->later != NULL)
		event_free(p->later);
	outbound_session_free(&p->sess);
	check_enforce_free(&p->es);
	free(p->helo);
	free(p->host);
	free(p->tlsa_base);
	free(p);
	*pp = NULL;
}
