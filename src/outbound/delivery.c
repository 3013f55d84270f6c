/*
 * outbound/delivery - MX iteration and the I/O of outbound sessions; see
 * delivery.h.
 *
 * The TLS upgrade mirrors the inbound side: when the session accepts the
 * 220 to STARTTLS, reading stops; once our STARTTLS is written, the plain
 * bufferevent is replaced by a TLS one on the same socket. Bytes already in
 * our input buffer at that point came with the 220: response injection, the
 * host fails. The handshake result is checked by tls_client_verify() before
 * the session may go on; MAIL is never written before that.
 */
#include "outbound/delivery.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/config.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "dns/dns.h"
#include "outbound/session.h"
#include "policy/policy.h"
#include "tls/client.h"

#define OUT_LOW  ((size_t)64 * 1024) /* body is pumped while less than this waits */
#define IN_CHUNK 65536

#define POOL_IDLE_SECS 5 /* an idle verified connection waits this long for more mail */

/*
 * A connection kept open after a completed transaction, for the next message
 * to the same host and address with the same verification requirement: the
 * certificate was verified for that host, so a reused connection needs no
 * new proof (and resumption never carries a verification result across).
 */
struct pooled {
	struct pooled *next;
	struct outbound_ctx *ctx;
	struct bufferevent *bev;
	struct outbound_session *sess;
	char host[256], ip[INET6_ADDRSTRLEN], key[300];
	uint16_t port;
	char tls_desc[128];
	const char *verified;
	struct event *timer;
	bool closing;
};

struct outbound_ctx {
	struct event_base *base;
	const struct config *cfg;
	struct dns_ctx *dns;
	SSL_CTX *tls;
	struct outbound_delivery *all;
	uint64_t next_id;
	struct pooled *pool;
	struct policy_ctx *policy;
};

/* one MX host of the plan, with what must be proven before MAIL */
struct target {
	char host[256];
	char tlsa_base[256];
	enum policy_method method;
	char why[300];
	struct tls_tlsa *tlsa;
	unsigned char **tlsa_data;
	size_t n_tlsa;
	struct sockaddr_storage *addrs;
	size_t n_addrs;
};

enum fail_kind {
	FK_NONE,
	FK_DNS,
	FK_CONNECT,
	FK_STARTTLS,
	FK_CERT,
	FK_TLS,
	FK_PROTOCOL,
	FK_POLICY
};

struct outbound_delivery {
	struct outbound_ctx *ctx;
	struct outbound_delivery *prev, *next;
	char *msg_id, *domain, *sender, *body_path;
	char **rcpts;
	size_t n_rcpts;
	uint64_t size;
	const struct config_domain *dom;
	struct outbound_rcpt_outcome *res;
	bool *final;
	outbound_done_fn done;
	void *arg;

	/* where to go: the policy plan's MX hosts (targets), or a route */
	struct target *targets;
	size_t n_targets, target_i;
	const struct target *cur; /* NULL on a route */
	enum policy_method method;
	int policy_id;
	bool policy_pending;
	struct dns_mx_host *mx;
	size_t n_mx, mx_i;
	uint16_t port;
	struct sockaddr_storage *addrs;
	size_t n_addrs, addr_i;
	char host[256];
	int dns_id;
	bool dns_pending;

	/* the connection in progress */
	struct bufferevent *bev;
	evutil_socket_t fd;
	struct outbound_session *sess;
	bool session_ran; /* a session with this host started: host_done reads it */
	char ip[INET6_ADDRSTRLEN];
	bool tls_pending, handshaking, connecting;
	bool fd_owned_by_bev; /* the TLS bufferevent closes the socket */
	char tls_desc[128];
	const char *verified; /* "pkix", "encrypt-only" */
	int body_fd;
	struct outbound_stuffer stuffer;
	bool body_sending;

	/* why hosts failed, for the final reason */
	char reasons[1400];
	enum fail_kind last_fail;
};

static void next_addr(struct outbound_delivery *d);
static void next_mx(struct outbound_delivery *d);
static void conn_process(struct outbound_delivery *d);
static void conn_close(struct outbound_delivery *d);

/* ---- results ---- */

static void add_reason(struct outbound_delivery *d, enum fail_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void add_reason(struct outbound_delivery *d, enum fail_kind kind, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	size_t n = strlen(d->reasons);
	if (n < sizeof(d->reasons) - 1)
		snprintf(d->reasons + n, sizeof(d->reasons) - n, "%s%s", n ? "; " : "", buf);
	d->last_fail = kind;
}

static void delivery_free(struct outbound_delivery *d)
{
	if (d->dns_pending)
		dns_cancel(d->ctx->dns, d->dns_id);
	conn_close(d);
	if (d->prev)
		d->prev->next = d->next;
	else if (d->ctx->all == d)
		d->ctx->all = d->next;
	if (d->next)
		d->next->prev = d->prev;
	for (size_t i = 0; i < d->n_rcpts; i++)
		free(d->rcpts[i]);
	free(d->rcpts);
	free(d->msg_id);
	free(d->domain);
	free(d->sender);
	free(d->body_path);
	free(d->res);
	free(d->final);
	free(d->mx);
	free(d->addrs);
	if (d->policy_pending)
		policy_cancel(d->ctx->policy, d->policy_id);
	for (size_t i = 0; i < d->n_targets; i++) {
		for (size_t k = 0; k < d->targets[i].n_tlsa; k++)
			free(d->targets[i].tlsa_data[k]);
		free(d->targets[i].tlsa);
		free(d->targets[i].tlsa_data);
		free(d->targets[i].addrs);
	}
	free(d->targets);
	free(d);
}

/* finish - every recipient not final yet gets outcome o with this reply */
static void finish(struct outbound_delivery *d, enum outbound_outcome o, int code, const char *enh,
                   const char *detail)
{
	for (size_t i = 0; i < d->n_rcpts; i++) {
		if (d->final[i])
			continue;
		struct outbound_rcpt_outcome *r = &d->res[i];
		r->outcome = o;
		smtp_reply_set(&r->reply, code, enh, "%s", detail);
		snprintf(r->detail, sizeof(r->detail), "%s", detail);
		d->final[i] = true;
	}
	outbound_done_fn done = d->done;
	void *arg = d->arg;
	size_t n = d->n_rcpts;
	struct outbound_rcpt_outcome *res = d->res;
	d->res = NULL;
	delivery_free(d);
	done(arg, res, n);
	free(res);
}

/* all_hosts_failed - no MX took the remaining recipients */
static void all_hosts_failed(struct outbound_delivery *d)
{
	const char *enh = "4.4.1";
	switch (d->last_fail) {
	case FK_STARTTLS:
		enh = "4.7.4"; /* RFC 3463: security features not supported */
		break;
	case FK_CERT:
	case FK_TLS:
		enh = "4.7.5"; /* cryptographic failure */
		break;
	case FK_DNS:
		enh = "4.4.3";
		break;
	case FK_POLICY:
		enh = "4.7.5";
		break;
	default:
		break;
	}
	char detail[sizeof(d->reasons) + 64];
	snprintf(detail, sizeof(detail), "%s", d->reasons[0] ? d->reasons : "no MX host answered");
	bool tls_problem =
	    d->last_fail == FK_STARTTLS || d->last_fail == FK_CERT || d->last_fail == FK_TLS;
	if (tls_problem && d->ctx->cfg->tls_failure_bounce) {
		char perm[8];
		snprintf(perm, sizeof(perm), "5%s", enh + 1);
		finish(d, OUT_FAIL, 550, perm, detail);
		return;
	}
	finish(d, OUT_DEFER, 451, enh, detail);
}

/* ---- one connection ---- */

static void conn_close(struct outbound_delivery *d)
{
	if (d->bev) {
		/* the socket goes with it (CLOSE_ON_FREE), once libevent has
		 * removed its events: never close it ourselves before that */
		bufferevent_free(d->bev);
		d->bev = NULL;
	} else if (d->fd >= 0) {
		evutil_closesocket(d->fd);
	}
	d->fd = -1;
	d->fd_owned_by_bev = false;
	if (d->body_fd >= 0) {
		close(d->body_fd);
		d->body_fd = -1;
	}
	outbound_session_free(&d->sess);
	d->session_ran = false;
	d->tls_pending = d->handshaking = d->connecting = d->body_sending = false;
	d->tls_desc[0] = '\0';
	d->verified = NULL;
}

static void pool_free(struct pooled *p)
{
	struct outbound_ctx *ctx = p->ctx;
	for (struct pooled **pp = &ctx->pool; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	if (p->bev)
		bufferevent_free(p->bev);
	outbound_session_free(&p->sess);
	event_free(p->timer);
	free(p);
}

static void pool_read_cb(struct bufferevent *bev, void *arg)
{
	/* the server spoke while idle (a 421, say): drop the connection */
	pool_free(arg);
}

static void pool_write_cb(struct bufferevent *bev, void *arg)
{
	struct pooled *p = arg;
	if (p->closing)
		pool_free(p); /* the QUIT has left */
}

static void pool_event_cb(struct bufferevent *bev, short what, void *arg)
{
	pool_free(arg);
}

static void pool_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pooled *p = arg;
	size_t len;
	if (p->closing) {
		pool_free(p);
		return;
	}
	outbound_session_quit(p->sess);
	const char *out = outbound_session_output(p->sess, &len);
	p->closing = true;
	if (len == 0) {
		pool_free(p);
		return;
	}
	bufferevent_write(p->bev, out, len);
	struct timeval tv = {.tv_sec = 5};
	evtimer_add(p->timer, &tv); /* bound the wait for the QUIT to leave */
}

/*
 * conn_key - what a pooled connection was verified as: the method, and the
 * recipient domain when the domain's own names took part in the check
 * (DANE-TA, which accepts the next hop; [domain] match names). A connection
 * is reused only where the same check would have passed (security-anchors
 * §3.4, case 48; Exim test 5801).
 */
static void conn_key(const struct outbound_delivery *d, char *key, size_t len)
{
	bool per_domain = d->dom != NULL && d->dom->match.n > 0;
	if (d->method == POLICY_DANE && d->cur != NULL)
		for (size_t i = 0; i < d->cur->n_tlsa; i++)
			if (d->cur->tlsa[i].usage == 2) /* DANE-TA: names are checked */
				per_domain = true;
	snprintf(key, len, "%s%s%s", policy_method_name(d->method), per_domain ? " " : "",
	         per_domain ? d->domain : "");
}

/* pool_put - keep d's idle, verified connection for the next message */
static void pool_put(struct outbound_delivery *d)
{
	struct pooled *p = xcalloc(1, sizeof(*p));
	p->ctx = d->ctx;
	p->bev = d->bev;
	p->sess = d->sess;
	snprintf(p->host, sizeof(p->host), "%s", d->host);
	snprintf(p->ip, sizeof(p->ip), "%s", d->ip);
	conn_key(d, p->key, sizeof(p->key));
	snprintf(p->tls_desc, sizeof(p->tls_desc), "%s", d->tls_desc);
	p->verified = d->verified;
	p->port = d->port;
	d->bev = NULL;
	d->sess = NULL;
	d->fd = -1;
	d->fd_owned_by_bev = false;
	bufferevent_setcb(p->bev, pool_read_cb, pool_write_cb, pool_event_cb, p);
	bufferevent_set_timeouts(p->bev, NULL, NULL);
	p->timer = evtimer_new(d->ctx->base, pool_timer_cb, p);
	struct timeval tv = {.tv_sec = POOL_IDLE_SECS};
	evtimer_add(p->timer, &tv);
	p->next = d->ctx->pool;
	d->ctx->pool = p;
	log_debug("event=conn_pooled mx=%s ip=%s", p->host, p->ip);
}

/* pool_take - an idle connection to this host and address, or NULL */
static struct pooled *pool_take(struct outbound_delivery *d)
{
	char key[sizeof(((struct pooled *)0)->key)];
	conn_key(d, key, sizeof(key));
	for (struct pooled **pp = &d->ctx->pool; *pp; pp = &(*pp)->next) {
		struct pooled *p = *pp;
		if (p->closing || strcmp(p->host, d->host) || strcmp(p->ip, d->ip) ||
		    p->port != d->port || strcmp(p->key, key))
			continue;
		*pp = p->next;
		return p;
	}
	return NULL;
}

/* host_done - the session with this host is over: take its verdicts */
static void host_done(struct outbound_delivery *d)
{
	const char *reason = NULL;
	bool temporary = true;
	bool host_err = outbound_session_host_error(d->sess, &reason, &temporary);
	size_t k = 0, delivered = 0;
	for (size_t i = 0; i < d->n_rcpts && d->session_ran; i++) {
		if (d->final[i])
			continue;
		const struct outbound_result *r = outbound_session_result(d->sess, k);
		struct outbound_rcpt_outcome *o = &d->res[i];
		k++;
		if (r == NULL || r->state == OUTBOUND_RCPT_NOT_TRIED)
			continue;
		o->reply = r->reply;
		snprintf(o->mx, sizeof(o->mx), "%s", d->host);
		if (r->state == OUTBOUND_RCPT_DELIVERED) {
			o->outcome = OUT_DELIVERED;
			delivered++;
			snprintf(o->detail, sizeof(o->detail),
			         "delivered to %s[%s] over %s, certificate verified by %s", d->host,
			         d->ip, d->tls_desc, d->verified ? d->verified : "?");
		} else {
			o->outcome = r->state == OUTBOUND_RCPT_FAILED ? OUT_FAIL : OUT_DEFER;
			snprintf(o->detail, sizeof(o->detail),
			         "%.200s[%.46s] said: %d %.15s %.200s", d->host, d->ip,
			         r->reply.code, r->reply.enhanced, r->reply.text);
		}
		d->final[i] = true;
		log_info("event=delivery id=%s rcpt=<%s> mx=%s ip=%s tls=\"%s\" verified=%s "
		         "result=%s status=%s",
		         d->msg_id, d->rcpts[i], d->host, d->ip, d->tls_desc,
		         d->verified ? d->verified : "none",
		         o->outcome == OUT_DELIVERED ? "delivered"
		         : o->outcome == OUT_FAIL    ? "failed"
		                                     : "deferred",
		         r->reply.enhanced[0] ? r->reply.enhanced : "-");
	}
	if (!host_err && d->sess && outbound_session_idle(d->sess) && d->bev) {
		pool_put(d);
	}
	if (host_err && reason) {
		enum fail_kind kind = FK_PROTOCOL;
		if (strstr(reason, "STARTTLS"))
			kind = FK_STARTTLS;
		if (strstr(reason, "certificate"))
			kind = FK_CERT;
		else if (strstr(reason, "TLS") || strstr(reason, "handshake"))
			kind = kind == FK_STARTTLS ? kind : FK_TLS;
		add_reason(d, kind, "%s[%s] (%s): %s", d->host, d->ip,
		           policy_method_name(d->method), reason);
		log_info("event=mx_failed id=%s mx=%s ip=%s temporary=%s reason=\"%s\"", d->msg_id,
		         d->host, d->ip, temporary ? "yes" : "no", reason);
	}
	conn_close(d);
	bool left = false;
	for (size_t i = 0; i < d->n_rcpts; i++)
		left = left || !d->final[i];
	if (!left) {
		finish(d, OUT_DEFER, 451, "4.4.0", "unreachable");
		return;
	}
	next_addr(d);
}

/*
 * body_line_too_long - the body holds a line over 998 octets (only possible
 * with [limits] text_line_length raised): it is never sent as is. The data
 * queued so far has no end-of-data, so closing the connection leaves the MX
 * nothing to deliver; every recipient left fails with a DSN that says why.
 */
static void body_line_too_long(struct outbound_delivery *d)
{
	log_info("event=body_refused id=%s mx=%s ip=%s reason=line_too_long max=%d", d->msg_id,
	         d->host, d->ip, OUTBOUND_BODY_LINE_MAX);
	finish(d, OUT_FAIL, 550, "5.6.0",
	       "message has a line longer than 998 octets (RFC 5322 2.1.1); strictmx does "
	       "not relay it, and does not fold or cut lines");
}

/* pump_body - returns false when d is gone (finished) */
static bool pump_body(struct outbound_delivery *d)
{
	struct evbuffer *out = bufferevent_get_output(d->bev);
	char in[16384], stuffed[OUTBOUND_STUFF_MAX(sizeof(in))];
	while (d->body_sending && evbuffer_get_length(out) < OUT_LOW) {
		ssize_t n = read(d->body_fd, in, sizeof(in));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			/* our own disk: give up on this attempt for every host */
			log_err("event=queue_error id=%s error=\"read %s: %s\"", d->msg_id,
			        d->body_path, strerror(errno));
			outbound_session_eof(d->sess);
			d->body_sending = false;
			return true;
		}
		if (n == 0) {
			size_t m = outbound_body_stuff_end(&d->stuffer, stuffed, sizeof(stuffed));
			evbuffer_add(out, stuffed, m);
			close(d->body_fd);
			d->body_fd = -1;
			d->body_sending = false;
			outbound_session_body_done(d->sess);
			return true;
		}
		size_t m =
		    outbound_body_stuff(&d->stuffer, in, (size_t)n, stuffed, sizeof(stuffed));
		if (d->stuffer.too_long) {
			body_line_too_long(d);
			return false;
		}
		evbuffer_add(out, stuffed, m);
	}
	return true;
}

static void flush_output(struct outbound_delivery *d)
{
	size_t len;
	const char *out = outbound_session_output(d->sess, &len);
	if (len) {
		bufferevent_write(d->bev, out, len);
		outbound_session_output_clear(d->sess);
	}
}

static void read_cb(struct bufferevent *bev, void *arg);
static void write_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);

static void set_timeouts(struct outbound_delivery *d)
{
	const struct config *c = d->ctx->cfg;
	struct timeval tv = {.tv_sec = d->connecting ? c->connect_timeout : c->out_command_timeout};
	bufferevent_set_timeouts(d->bev, &tv, &tv);
}

/* ldh_name - letters, digits, '-' and '.' only: a name a certificate can hold
 * as it is (a U-label domain is not one; tls_client_new_* would refuse it) */
static bool ldh_name(const char *s)
{
	if (*s == '\0')
		return false;
	for (; *s != '\0'; s++)
		if (!isalnum((unsigned char)*s) && *s != '-' && *s != '.')
			return false;
	return true;
}

/* start_tls - our STARTTLS is out: switch the socket to TLS */
static void start_tls(struct outbound_delivery *d)
{
	d->tls_pending = false;
	if (evbuffer_get_length(bufferevent_get_input(d->bev)) > 0) {
		outbound_session_tls_failed(d->sess, "response injection after STARTTLS (bytes "
		                                     "after 220)");
		conn_process(d);
		return;
	}
	SSL *ssl;
	const char *const *extra = NULL;
	size_t n_extra = 0;
	if (d->dom && d->dom->match.n) {
		extra = (const char *const *)d->dom->match.v;
		n_extra = d->dom->match.n;
	}
	char why[300] = "cannot set up TLS for this host name";
	if (d->method == POLICY_DANE && d->cur) {
		/* RFC 7672 §3.2.3: SNI and the primary name are the TLSA base
		 * domain; the MX name as published and, for DANE-TA, the
		 * recipient domain (the next hop) are accepted too (§3.2.2) */
		const char *names[2];
		size_t n_names = 0, usable = 0;
		if (strcmp(d->cur->host, d->cur->tlsa_base) != 0)
			names[n_names++] = d->cur->host;
		if (strcmp(d->domain, d->cur->tlsa_base) != 0 &&
		    strcmp(d->domain, d->cur->host) != 0 && ldh_name(d->domain))
			names[n_names++] = d->domain;
		ssl = tls_client_new_dane(d->ctx->tls, d->cur->tlsa_base, names, n_names,
		                          d->cur->tlsa, d->cur->n_tlsa, &usable, why, sizeof(why));
	} else if (d->method == POLICY_ENCRYPT_ONLY) {
		ssl = tls_client_new_encrypt_only(d->ctx->tls, d->host);
	} else {
		ssl = tls_client_new_pkix(d->ctx->tls, d->host, extra, n_extra);
	}
	if (ssl == NULL) {
		outbound_session_tls_failed(d->sess, why);
		conn_process(d);
		return;
	}
	/* detach the socket from the plain bufferevent (its events go now) */
	bufferevent_setfd(d->bev, -1);
	bufferevent_free(d->bev);
	d->bev = bufferevent_openssl_socket_new(d->ctx->base, d->fd, ssl,
	                                        BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
	if (d->bev == NULL) {
		SSL_free(ssl);
		outbound_session_tls_failed(d->sess, "cannot start TLS");
		conn_process(d);
		return;
	}
	d->fd_owned_by_bev = true;
	bufferevent_openssl_set_allow_dirty_shutdown(d->bev, 1);
	d->handshaking = true;
	bufferevent_setcb(d->bev, read_cb, write_cb, event_cb, d);
	set_timeouts(d);
	bufferevent_enable(d->bev, EV_READ | EV_WRITE);
}

/* tls_done - handshake complete: verify before anything else is said */
static void tls_done(struct outbound_delivery *d)
{
	SSL *ssl = bufferevent_openssl_get_ssl(d->bev);
	char why[512];
	d->handshaking = false;
	tls_client_describe(ssl, d->tls_desc, sizeof(d->tls_desc));
	char matched[128] = "";
	if (d->method == POLICY_DANE) {
		if (tls_client_verify_dane(ssl, why, sizeof(why), matched, sizeof(matched)) < 0) {
			outbound_session_tls_failed(d->sess, why);
			conn_process(d);
			return;
		}
		d->verified = "dane";
		log_info("event=dane_match id=%s mx=%s ip=%s tlsa_base=%s match=\"%s\"", d->msg_id,
		         d->host, d->ip, d->cur ? d->cur->tlsa_base : d->host, matched);
	} else if (d->method == POLICY_ENCRYPT_ONLY) {
		if (tls_client_verify(ssl, why, sizeof(why)) == 0) {
			d->verified = "pkix";
		} else {
			d->verified = "encrypt-only";
			log_warn("event=tls_unverified id=%s mx=%s ip=%s domain=%s reason=\"%s\" "
			         "msg=\"[domain] tls = encrypt-only: delivering WITHOUT a verified "
			         "certificate\"",
			         d->msg_id, d->host, d->ip, d->domain, why);
		}
	} else if (tls_client_verify(ssl, why, sizeof(why)) < 0) {
		outbound_session_tls_failed(d->sess, why);
		conn_process(d);
		return;
	} else {
		d->verified = d->method == POLICY_MTASTS_PKIX ? "mta-sts" : "pkix";
	}
	log_info("event=tls_out id=%s mx=%s ip=%s tls=\"%s\" verified=%s", d->msg_id, d->host,
	         d->ip, d->tls_desc, d->verified);
	outbound_session_tls_started(d->sess);
	conn_process(d);
}

/* conn_process - feed input, send output, carry out the session's action */
static void conn_process(struct outbound_delivery *d)
{
	struct evbuffer *in = bufferevent_get_input(d->bev);
	flush_output(d); /* e.g. the EHLO queued by tls_started() */
	for (;;) {
		enum outbound_action act = outbound_session_action(d->sess);
		if (act == OUTBOUND_NONE) {
			size_t len = evbuffer_get_length(in);
			if (len == 0)
				break;
			size_t n = len < IN_CHUNK ? len : IN_CHUNK;
			const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
			size_t used = outbound_session_input(d->sess, p, n);
			evbuffer_drain(in, used);
			act = outbound_session_action(d->sess);
			if (used == 0 && act == OUTBOUND_NONE)
				break;
		}
		flush_output(d);
		switch (act) {
		case OUTBOUND_NONE:
			continue;
		case OUTBOUND_STARTTLS:
			if (d->tls_pending || d->handshaking)
				return;
			d->tls_pending = true;
			bufferevent_disable(d->bev, EV_READ);
			if (evbuffer_get_length(bufferevent_get_output(d->bev)) == 0)
				start_tls(d);
			return; /* write_cb switches once STARTTLS has left */
		case OUTBOUND_SEND_BODY:
			if (!d->body_sending && d->body_fd < 0) {
				d->body_fd = open(d->body_path, O_RDONLY | O_CLOEXEC);
				if (d->body_fd < 0) {
					log_err("event=queue_error id=%s error=\"open %s: %s\"",
					        d->msg_id, d->body_path, strerror(errno));
					outbound_session_eof(d->sess);
					continue;
				}
				outbound_stuffer_init(&d->stuffer);
				d->body_sending = true;
				if (!pump_body(d))
					return;
			}
			if (d->body_sending)
				return; /* write_cb pumps the rest */
			flush_output(d);
			continue;
		case OUTBOUND_DONE:
		case OUTBOUND_CLOSE:
			flush_output(d);
			host_done(d);
			return;
		}
	}
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	struct outbound_delivery *d = arg;
	if (d->tls_pending || d->handshaking)
		return;
	conn_process(d);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	struct outbound_delivery *d = arg;
	if (d->tls_pending) {
		start_tls(d);
		return;
	}
	if (d->body_sending) {
		if (!pump_body(d))
			return;
		if (!d->body_sending)
			conn_process(d);
	}
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct outbound_delivery *d = arg;
	if (what & BEV_EVENT_CONNECTED) {
		if (d->handshaking) {
			tls_done(d);
		} else {
			d->connecting = false;
			set_timeouts(d);
		}
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		if (d->connecting) {
			add_reason(d, FK_CONNECT, "%s[%s]: connection timed out", d->host, d->ip);
			conn_close(d);
			next_addr(d);
			return;
		}
		outbound_session_timeout(d->sess);
	} else if (d->connecting) {
		int e = EVUTIL_SOCKET_ERROR();
		add_reason(d, FK_CONNECT, "%s[%s]: connect: %s", d->host, d->ip,
		           evutil_socket_error_to_string(e));
		conn_close(d);
		next_addr(d);
		return;
	} else if (d->handshaking) {
		unsigned long e = bufferevent_get_openssl_error(bev);
		char buf[256] = "the connection was closed";
		if (e)
			ERR_error_string_n(e, buf, sizeof(buf));
		char why[320];
		snprintf(why, sizeof(why), "TLS handshake failed: %s", buf);
		outbound_session_tls_failed(d->sess, why);
	} else {
		outbound_session_eof(d->sess);
	}
	conn_process(d);
}

static void connect_addr(struct outbound_delivery *d, const struct sockaddr_storage *ss)
{
	socklen_t len =
	    ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
	const void *a = ss->ss_family == AF_INET6
	                    ? (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr
	                    : (const void *)&((const struct sockaddr_in *)ss)->sin_addr;
	inet_ntop(ss->ss_family, a, d->ip, sizeof(d->ip));

	/* the recipients still open go to this host */
	const char **rc = xcalloc(d->n_rcpts, sizeof(*rc));
	size_t n = 0;
	for (size_t i = 0; i < d->n_rcpts; i++)
		if (!d->final[i])
			rc[n++] = d->rcpts[i];
	d->session_ran = true;
	struct outbound_params p = {
	    .helo_name = d->ctx->cfg->helo_name,
	    .mx_host = d->host,
	    .sender = d->sender,
	    .rcpts = rc,
	    .n_rcpts = n,
	    .size = d->size,
	    .body_8bit = true,
	    .require_tls = true,
	    .id = ++d->ctx->next_id,
	};
	struct pooled *pc = pool_take(d);
	if (pc != NULL) {
		/* an idle connection to this very host and address, verified the
		 * same way: the next message goes over it (RSET, MAIL, ...) */
		d->bev = pc->bev;
		d->sess = pc->sess;
		d->fd = bufferevent_getfd(d->bev);
		d->fd_owned_by_bev = true;
		snprintf(d->tls_desc, sizeof(d->tls_desc), "%s", pc->tls_desc);
		d->verified = pc->verified;
		pc->bev = NULL;
		pc->sess = NULL;
		pool_free(pc);
		outbound_session_next(d->sess, d->sender, rc, n, d->size, p.id);
		free(rc);
		log_info("event=conn_reused id=%s mx=%s ip=%s verified=%s", d->msg_id, d->host,
		         d->ip, d->verified ? d->verified : "none");
		bufferevent_setcb(d->bev, read_cb, write_cb, event_cb, d);
		set_timeouts(d);
		bufferevent_enable(d->bev, EV_READ | EV_WRITE);
		conn_process(d);
		return;
	}
	p.keep_open = true;
	d->sess = outbound_session_new(&p);
	free(rc);

	d->fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (d->fd < 0) {
		add_reason(d, FK_CONNECT, "%s[%s]: socket: %s", d->host, d->ip, strerror(errno));
		conn_close(d);
		next_addr(d);
		return;
	}
	int one = 1; /* commands are small: no Nagle delay */
	setsockopt(d->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	/* CLOSE_ON_FREE: see conn_close; start_tls detaches it first */
	d->bev = bufferevent_socket_new(d->ctx->base, d->fd, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(d->bev, read_cb, write_cb, event_cb, d);
	d->connecting = true;
	set_timeouts(d);
	bufferevent_enable(d->bev, EV_READ | EV_WRITE);
	log_info("event=connecting id=%s mx=%s ip=%s port=%u", d->msg_id, d->host, d->ip,
	         (unsigned)d->port);
	if (bufferevent_socket_connect(d->bev, (struct sockaddr *)ss, (int)len) < 0) {
		add_reason(d, FK_CONNECT, "%s[%s]: connect: %s", d->host, d->ip, strerror(errno));
		conn_close(d); /* frees the bufferevent, which closes the socket */
		next_addr(d);
	}
}

static void next_addr(struct outbound_delivery *d)
{
	if (d->addr_i >= d->n_addrs) {
		next_mx(d);
		return;
	}
	connect_addr(d, &d->addrs[d->addr_i++]);
}

static void addr_cb(void *arg, const struct dns_addr_result *r)
{
	struct outbound_delivery *d = arg;
	d->dns_pending = false;
	if (r->status != DNS_ADDR_OK) {
		add_reason(d, FK_DNS, "%s: %s", d->host, r->reason);
		next_mx(d);
		return;
	}
	free(d->addrs);
	d->addrs = xcalloc(r->n_addrs, sizeof(*d->addrs));
	memcpy(d->addrs, r->addrs, r->n_addrs * sizeof(*d->addrs));
	d->n_addrs = r->n_addrs;
	d->addr_i = 0;
	next_addr(d);
}

/* next_target - the next MX host of the plan that may be used now */
static void next_target(struct outbound_delivery *d)
{
	while (d->target_i < d->n_targets) {
		const struct target *t = &d->targets[d->target_i++];
		if (t->method == POLICY_SKIP) {
			/* issue 4: a skipped MX is logged with its reason */
			log_info("event=mx_skipped id=%s mx=%s why=\"%s\"", d->msg_id, t->host,
			         t->why);
			add_reason(d, FK_POLICY, "%s skipped: %s", t->host, t->why);
			continue;
		}
		if (t->method == POLICY_DEFER) {
			/* RFC 7672 §2.2: a failed TLSA lookup never downgrades */
			add_reason(d, FK_POLICY, "%s: %s", t->host, t->why);
			continue;
		}
		if (t->n_addrs == 0) {
			add_reason(d, FK_DNS, "%s: %s", t->host, t->why);
			continue;
		}
		d->cur = t;
		d->method = t->method;
		snprintf(d->host, sizeof(d->host), "%s", t->host);
		free(d->addrs);
		d->addrs = xcalloc(t->n_addrs, sizeof(*d->addrs));
		memcpy(d->addrs, t->addrs, t->n_addrs * sizeof(*d->addrs));
		d->n_addrs = t->n_addrs;
		d->addr_i = 0;
		log_info("event=mx_plan id=%s mx=%s method=%s why=\"%s\"", d->msg_id, t->host,
		         policy_method_name(t->method), t->why);
		next_addr(d);
		return;
	}
	all_hosts_failed(d);
}

static void next_mx(struct outbound_delivery *d)
{
	if (d->targets != NULL) {
		next_target(d);
		return;
	}
	if (d->mx_i >= d->n_mx) {
		all_hosts_failed(d);
		return;
	}
	snprintf(d->host, sizeof(d->host), "%s", d->mx[d->mx_i++].name);
	d->n_addrs = d->addr_i = 0;
	d->dns_pending = true;
	if (dns_resolve_addrs(d->ctx->dns, d->host, d->port, addr_cb, d, &d->dns_id) < 0) {
		d->dns_pending = false;
		add_reason(d, FK_DNS, "%s: address lookup could not start", d->host);
		next_mx(d);
	}
}

static void plan_cb(void *arg, const struct policy_plan *plan)
{
	struct outbound_delivery *d = arg;
	d->policy_pending = false;
	switch (plan->status) {
	case POLICY_NULL_MX:
		/* RFC 7505 §4.2: 556 5.1.10 */
		finish(d, OUT_FAIL, 556, "5.1.10",
		       "the recipient's domain publishes a null MX: it accepts no mail");
		return;
	case POLICY_NXDOMAIN:
		finish(d, OUT_FAIL, 550, "5.1.2", plan->reason);
		return;
	case POLICY_TEMPFAIL:
		add_reason(d, FK_DNS, "%s", plan->reason);
		finish(d, OUT_DEFER, 451, "4.4.3", d->reasons);
		return;
	case POLICY_OK:
		break;
	}
	if (plan->sts.policy_valid)
		log_info("event=mta_sts id=%s domain=%s mode=%s id=%s cached=%s", d->msg_id,
		         d->domain, plan->sts.mode, plan->sts.id,
		         plan->sts.from_cache ? "yes" : "no");
	d->n_targets = plan->n_mx;
	d->targets = xcalloc(plan->n_mx ? plan->n_mx : 1, sizeof(*d->targets));
	for (size_t i = 0; i < plan->n_mx; i++) {
		const struct policy_mx *m = &plan->mx[i];
		struct target *t = &d->targets[i];
		snprintf(t->host, sizeof(t->host), "%s", m->host);
		snprintf(t->tlsa_base, sizeof(t->tlsa_base), "%s",
		         m->tlsa_base[0] ? m->tlsa_base : m->host);
		snprintf(t->why, sizeof(t->why), "%s", m->why);
		t->method = m->method;
		/* encrypt-only never weakens DANE (the plan keeps DANE MXs as DANE) */
		t->n_tlsa = m->n_tlsa;
		t->tlsa = xcalloc(m->n_tlsa ? m->n_tlsa : 1, sizeof(*t->tlsa));
		t->tlsa_data = xcalloc(m->n_tlsa ? m->n_tlsa : 1, sizeof(*t->tlsa_data));
		for (size_t k = 0; k < m->n_tlsa; k++) {
			t->tlsa_data[k] = xmalloc(m->tlsa[k].len ? m->tlsa[k].len : 1);
			memcpy(t->tlsa_data[k], m->tlsa[k].data, m->tlsa[k].len);
			t->tlsa[k] = (struct tls_tlsa){.usage = m->tlsa[k].usage,
			                               .selector = m->tlsa[k].selector,
			                               .mtype = m->tlsa[k].mtype,
			                               .data = t->tlsa_data[k],
			                               .len = m->tlsa[k].len};
		}
		t->n_addrs = m->n_addrs;
		t->addrs = xcalloc(m->n_addrs ? m->n_addrs : 1, sizeof(*t->addrs));
		memcpy(t->addrs, m->addrs, m->n_addrs * sizeof(*t->addrs));
	}
	next_target(d);
}

/* start_route - [domain] route = host:port instead of the MX records */
static void start_route(struct outbound_delivery *d)
{
	const char *route = d->dom->route;
	const char *colon = strrchr(route, ':');
	size_t hl = (size_t)(colon - route);
	char host[256];
	snprintf(host, sizeof(host), "%.*s", (int)hl, route);
	d->port = (uint16_t)atoi(colon + 1);
	char bare[256];
	snprintf(bare, sizeof(bare), "%s", host);
	if (bare[0] == '[') { /* [addr] */
		memmove(bare, bare + 1, strlen(bare));
		bare[strlen(bare) - 1] = '\0';
	}
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
	bool literal = false;
	if (inet_pton(AF_INET, bare, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons(d->port);
		literal = true;
	} else if (inet_pton(AF_INET6, bare, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(d->port);
		literal = true;
	}
	if (literal) {
		/* an address: the certificate must carry the match names, or the
		 * domain itself */
		snprintf(d->host, sizeof(d->host), "%s",
		         d->dom->match.n ? d->dom->match.v[0] : d->domain);
		d->addrs = xmalloc(sizeof(ss));
		d->addrs[0] = ss;
		d->n_addrs = 1;
		d->addr_i = 0;
		next_addr(d);
		return;
	}
	d->mx = xcalloc(1, sizeof(*d->mx));
	snprintf(d->mx[0].name, sizeof(d->mx[0].name), "%s", bare);
	d->n_mx = 1;
	next_mx(d);
}

struct outbound_delivery *outbound_deliver(struct outbound_ctx *ctx,
                                           const struct outbound_request *req,
                                           outbound_done_fn done, void *arg)
{
	struct outbound_delivery *d = xcalloc(1, sizeof(*d));
	d->ctx = ctx;
	d->fd = -1;
	d->body_fd = -1;
	d->msg_id = xstrdup(req->msg_id);
	d->domain = xstrdup(req->domain);
	d->sender = xstrdup(req->sender);
	d->body_path = xstrdup(req->body_path);
	d->size = req->size;
	d->n_rcpts = req->n_rcpts;
	d->rcpts = xcalloc(d->n_rcpts, sizeof(char *));
	for (size_t i = 0; i < d->n_rcpts; i++)
		d->rcpts[i] = xstrdup(req->rcpts[i]);
	d->res = xcalloc(d->n_rcpts, sizeof(*d->res));
	d->final = xcalloc(d->n_rcpts, sizeof(*d->final));
	d->done = done;
	d->arg = arg;
	d->port = (uint16_t)ctx->cfg->smtp_port;
	d->dom = config_domain_find(ctx->cfg, d->domain);
	d->next = ctx->all;
	if (ctx->all)
		ctx->all->prev = d;
	ctx->all = d;

	d->method =
	    d->dom && d->dom->tls == CONFIG_TLS_ENCRYPT_ONLY ? POLICY_ENCRYPT_ONLY : POLICY_PKIX;
	if (d->dom && d->dom->route) {
		start_route(d);
		return d;
	}
	d->policy_pending = true;
	if (policy_plan_domain(ctx->policy, d->domain, plan_cb, d, &d->policy_id) < 0) {
		d->policy_pending = false;
		finish(d, OUT_DEFER, 451, "4.4.3", "MX lookup could not start");
		return NULL;
	}
	return d;
}

void outbound_cancel(struct outbound_delivery **dp)
{
	if (*dp) {
		delivery_free(*dp);
		*dp = NULL;
	}
}

struct outbound_ctx *outbound_ctx_new(struct event_base *base, const struct config *c,
                                      struct dns_ctx *dns, char *err, size_t errlen)
{
	SSL_CTX *tls = tls_client_ctx_new(c, err, errlen);
	if (tls == NULL)
		return NULL;
	struct outbound_ctx *ctx = xcalloc(1, sizeof(*ctx));
	ctx->base = base;
	ctx->cfg = c;
	ctx->dns = dns;
	ctx->tls = tls;
	ctx->policy = policy_new(base, c, dns, err, errlen);
	if (ctx->policy == NULL) {
		SSL_CTX_free(tls);
		free(ctx);
		return NULL;
	}
	return ctx;
}

void outbound_ctx_free(struct outbound_ctx **cp)
{
	struct outbound_ctx *ctx = *cp;
	if (ctx == NULL)
		return;
	while (ctx->all)
		/* the callee unlinks the head: no use after free */
		delivery_free(ctx->all); // NOLINT(clang-analyzer-unix.Malloc)
	while (ctx->pool)
		pool_free(ctx->pool); // NOLINT(clang-analyzer-unix.Malloc): unlinks the head
	policy_free(&ctx->policy);
	SSL_CTX_free(ctx->tls);
	free(ctx);
	*cp = NULL;
}
