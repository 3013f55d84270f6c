/*
 * inbound/server - libevent glue for inbound sessions; see server.h.
 *
 * The session (inbound/session.c) decides everything; this file only moves
 * bytes, starts TLS when asked, and commits messages. The rules that need the
 * socket live here:
 *  - STARTTLS: the input buffer must be empty when the handshake starts
 *    (checked again here, after the session's own check), and the 220 goes
 *    out in plaintext before the TLS filter takes over the connection.
 *  - Backpressure: a client that pipelines without reading replies stops
 *    being read once OUT_HIGH bytes of replies wait for it.
 *  - Connection limits are applied at accept, before any byte is read.
 *
 * Threads (docs/architecture.md): the main loop accepts, applies the limits
 * and hands each connection to one of `[server] threads` inbound loops (a
 * shard, round robin), which runs the session and its TLS. Messages go to the
 * queue on the main loop and the verdict comes back, both through mailboxes
 * (common/mailbox.h). A shard never touches the queue; the main loop never
 * touches a connection.
 */
#include "inbound/server.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/listener.h>
#include <openssl/err.h>

#include "common/config.h"
#include "common/log.h"
#include "common/mailbox.h"
#include "common/xmalloc.h"
#include "delivery/maildir.h"
#include "inbound/session.h"
#include "queue/queue.h"
#include "tls/server.h"

#define IN_CHUNK  65536                /* bytes handed to the session at once */
#define OUT_HIGH  ((size_t)256 * 1024) /* stop reading while this much output waits */
#define SPOOL_BUF 65536                /* spool writes are batched */
/* error replies after this many are delayed by [limits] error_delay (Postfix
 * smtpd_soft_error_limit) */
#define SOFT_ERRORS 10

struct shard;

struct conn {
	struct inbound_server *srv; /* read-only here: cfg, tls, spool_dir */
	struct shard *sh;           /* the loop that owns this connection */
	struct conn *prev, *next;
	struct conn *snext; /* in sh->storing while waiting for the queue */
	struct bufferevent *bev;
	struct inbound_session *sess;
	const struct config_listener *lst;
	uint64_t id;
	char ip[INET6_ADDRSTRLEN];
	evutil_socket_t fd;
	bool tls;
	bool tls_pending; /* 220 sent, waiting for it to leave before the switch */
	bool handshaking;
	bool closing;
	bool read_paused;
	struct maildir_msg *msg;
	bool storing; /* waiting for the queue's group commit */
	/* The idle timeout of the bufferevent restarts with every byte; the
	 * deadline restarts only when a command (or content) makes progress, so
	 * a client trickling one byte at a time is still cut off (slowloris). */
	struct event *deadline;
	/* [limits] min_data_rate: inside DATA/BDAT content the deadline moves
	 * forward only by octets/rate, never past timeout_data from now */
	bool in_content;
	uint64_t content_deadline_us; /* monotonic */
	uint64_t content_octets;      /* the session's counter at the last read */
	uint64_t content_started_us;  /* for the log line */
	uint64_t content_first;       /* the counter when the content began */
	/* [limits] error_delay: the tarpit timer (the session holds the reply) */
	struct event *delay_ev;
	bool delaying;
	/* [server] greet_wait: the greeting is held back; a client that talks
	 * before it is a bot or a pipelining attack (postscreen's pregreet test) */
	struct event *greet_ev;
	bool pregreet;
	char *spool_buf;
	size_t spool_len;
	bool spool_err;
	time_t started;
};

/* one inbound loop and its thread */
struct shard {
	struct inbound_server *srv;
	size_t idx;
	struct event_base *base;
	struct mailbox *mb; /* calls into this loop */
	pthread_t thread;
	bool running;
	bool dead; /* main loop's view: joined, post nothing more (main only) */
	struct conn *conns;
	struct conn *storing;
	size_t n_conns;
};

/* connections per client address, kept by the main loop */
#define IP_BUCKETS 4096
struct ipcount {
	struct ipcount *next;
	size_t n;
	char ip[INET6_ADDRSTRLEN];
};

struct inbound_server {
	struct event_base *base; /* the main loop: accept, limits, queue */
	const struct config *cfg;
	SSL_CTX *tls;
	struct queue *queue;
	struct evconnlistener **listeners;
	const struct config_listener **listener_cfg;
	size_t n_listeners;
	struct mailbox *mb; /* calls into the main loop */
	struct shard *shards;
	size_t n_shards, next_shard;
	size_t n_conns; /* main loop's count: accepted, not yet reported closed */
	struct ipcount *ips[IP_BUCKETS];
	struct event *resume_ev; /* re-enables accepting after EMFILE */
	uint64_t next_id;
	char *spool_dir;
};

static void conn_process(struct conn *c);
static void conn_free(struct conn *c);
static void conn_flush_output(struct conn *c);

/* ---- the spool sink: content goes to a spool file, batched ---- */

/*
 * sink_space - at MAIL: Postfix's rule, the queue file system must keep
 * queue_minfree free plus 1.5 times the size the client announced
 */
static int sink_space(void *ctx, uint64_t size)
{
	struct conn *c = ctx;
	struct statvfs st;
	if (statvfs(c->srv->spool_dir, &st) < 0)
		return 0; /* cannot tell: the commit will say */
	uint64_t avail = (uint64_t)st.f_bavail * (uint64_t)st.f_frsize;
	uint64_t need = c->srv->cfg->queue_minfree + size + size / 2;
	if (avail >= need)
		return 0;
	log_warn("event=low_space sid=%016" PRIx64 " free=%" PRIu64 " needed=%" PRIu64
	         " status=4.3.1",
	         c->id, avail, need);
	return -1;
}

static int sink_begin(void *ctx)
{
	struct conn *c = ctx;
	char err[256];
	maildir_abort(&c->msg);
	c->msg = maildir_begin(c->srv->spool_dir, err, sizeof(err));
	if (c->msg == NULL) {
		log_err("event=spool_error sid=%016" PRIx64 " error=\"%s\"", c->id, err);
		return -1;
	}
	c->spool_len = 0;
	c->spool_err = false;
	return 0;
}

static void spool_flush(struct conn *c)
{
	if (c->spool_len && c->msg && maildir_write(c->msg, c->spool_buf, c->spool_len) < 0)
		c->spool_err = true;
	c->spool_len = 0;
}

static void sink_write(void *ctx, const void *p, size_t n)
{
	struct conn *c = ctx;
	if (c->msg == NULL)
		return;
	if (c->spool_len + n > SPOOL_BUF)
		spool_flush(c);
	if (n >= SPOOL_BUF) {
		if (maildir_write(c->msg, p, n) < 0)
			c->spool_err = true;
		return;
	}
	memcpy(c->spool_buf + c->spool_len, p, n);
	c->spool_len += n;
}

static void sink_abort(void *ctx)
{
	struct conn *c = ctx;
	c->spool_len = 0;
	maildir_abort(&c->msg);
}

/* queue_committed - the group commit that held our message is done */
static void queue_committed(void *arg, bool ok, const char *err)
{
	struct conn *c = arg;
	struct inbound_envelope env;
	inbound_session_envelope(c->sess, &env);
	c->storing = false;
	if (ok) {
		log_info("event=accepted sid=%016" PRIx64 " id=%s rcpts=%zu size=%" PRIu64
		         " tls=%s status=2.0.0",
		         c->id, env.queue_id, env.n_rcpts, env.size, env.tls ? "yes" : "no");
		inbound_session_store_done(c->sess, NULL);
	} else {
		struct smtp_reply rep;
		log_err("event=store_failed sid=%016" PRIx64 " id=%s error=\"%s\" status=4.3.0",
		        c->id, env.queue_id, err);
		smtp_reply_set(&rep, 451, "4.3.0", "Error: queue file write error");
		inbound_session_store_done(c->sess, &rep);
	}
	conn_flush_output(c);
	conn_process(c);
}

/*
 * A message on its way to the queue: built on the shard, submitted on the
 * main loop, its verdict carried back to the shard. The connection may be
 * gone by then; the shard looks it up by pointer and id in its storing list
 * and drops the verdict if it is not there.
 */
struct submit {
	struct shard *sh;
	struct conn *c;
	uint64_t cid;
	char *id, *sender, *client_ip;
	bool tls;
	uint64_t size;
	size_t n;
	struct queue_rcpt_in *rcpts;
	char **strs; /* what rcpts point to */
	size_t n_strs;
	struct maildir_msg *spool;
	bool ok;
	char err[256];
};

static char *submit_keep(struct submit *s, const char *v)
{
	s->strs[s->n_strs] = xstrdup(v);
	return s->strs[s->n_strs++];
}

static void submit_free(struct submit *s)
{
	for (size_t i = 0; i < s->n_strs; i++)
		free(s->strs[i]);
	free(s->strs);
	free(s->rcpts);
	free(s->id);
	free(s->sender);
	free(s->client_ip);
	maildir_abort(&s->spool);
	free(s);
}

static void conn_unstore(struct conn *c)
{
	for (struct conn **pp = &c->sh->storing; *pp; pp = &(*pp)->snext)
		if (*pp == c) {
			*pp = c->snext;
			break;
		}
	c->snext = NULL;
	c->storing = false;
}

/* on the shard: the verdict for a connection that may have gone */
static void verdict_run(void *arg)
{
	struct submit *s = arg;
	for (struct conn *c = s->sh->storing; c; c = c->snext)
		if (c == s->c && c->id == s->cid) {
			conn_unstore(c);
			queue_committed(c, s->ok, s->err);
			break;
		}
	submit_free(s);
}

/* on the main loop: the queue's group commit is done */
static void submit_committed(void *arg, bool ok, const char *err)
{
	struct submit *s = arg;
	s->ok = ok;
	snprintf(s->err, sizeof(s->err), "%s", err ? err : "");
	if (s->sh->dead)
		submit_free(s);
	else
		mailbox_post(s->sh->mb, verdict_run, (mailbox_fn)submit_free, s);
}

/* on the main loop: into the queue (it takes the spool file) */
static void submit_run(void *arg)
{
	struct submit *s = arg;
	struct queue_msg_in m = {
	    .id = s->id,
	    .sender = s->sender,
	    .client_ip = s->client_ip,
	    .tls = s->tls,
	    .size = s->size,
	    .rcpts = s->rcpts,
	    .n_rcpts = s->n,
	};
	queue_submit(s->sh->srv->queue, &m, &s->spool, submit_committed, s);
}

/*
 * conn_store - hand the message to the queue; the answer (250 or 451) is
 * given in queue_committed(), after the group commit made it durable.
 */
static void conn_store(struct conn *c)
{
	struct inbound_envelope env;
	inbound_session_envelope(c->sess, &env);
	spool_flush(c);
	if (c->spool_err) {
		struct smtp_reply rep;
		log_err("event=store_failed sid=%016" PRIx64 " id=%s error=\"spool write failed\"",
		        c->id, env.queue_id);
		maildir_abort(&c->msg);
		smtp_reply_set(&rep, 451, "4.3.0", "Error: queue file write error");
		inbound_session_store_done(c->sess, &rep);
		return;
	}
	struct queue_rcpt_in *r = xcalloc(env.n_rcpts, sizeof(*r));
	char(*users)[SMTP_LOCAL_MAX * 2 + 3] = xcalloc(env.n_rcpts, sizeof(*users));
	char(*domains)[SMTP_DOMAIN_MAX + 1] = xcalloc(env.n_rcpts, sizeof(*domains));
	for (size_t i = 0; i < env.n_rcpts; i++) {
		r[i].addr = env.rcpts[i].addr;
		if (inbound_session_local_rcpt(&c->srv->cfg->local_domains, &env.rcpts[i], users[i],
		                               sizeof(users[i]), domains[i], sizeof(domains[i]))) {
			r[i].local_user = users[i];
		} else {
			snprintf(domains[i], sizeof(domains[i]), "%s", env.rcpts[i].domain);
			for (char *p = domains[i]; *p; p++)
				*p = (char)tolower((unsigned char)*p);
		}
		r[i].domain = domains[i];
	}
	struct submit *sub = xcalloc(1, sizeof(*sub));
	sub->sh = c->sh;
	sub->c = c;
	sub->cid = c->id;
	sub->id = xstrdup(env.queue_id);
	sub->sender = xstrdup(env.from->addr);
	sub->client_ip = xstrdup(c->ip);
	sub->tls = env.tls;
	sub->size = env.size;
	sub->n = env.n_rcpts;
	sub->rcpts = xcalloc(env.n_rcpts + 1, sizeof(*sub->rcpts));
	sub->strs = xcalloc(3 * env.n_rcpts + 1, sizeof(char *));
	for (size_t i = 0; i < env.n_rcpts; i++) {
		sub->rcpts[i].addr = submit_keep(sub, r[i].addr);
		sub->rcpts[i].domain = submit_keep(sub, r[i].domain);
		sub->rcpts[i].local_user =
		    r[i].local_user ? submit_keep(sub, r[i].local_user) : NULL;
	}
	sub->spool = c->msg;
	c->msg = NULL;
	c->storing = true;
	c->snext = c->sh->storing;
	c->sh->storing = c;
	mailbox_post(c->srv->mb, submit_run, (mailbox_fn)submit_free, sub);
	free(r);
	free(users);
	free(domains);
}

/* ---- connection I/O ---- */

static void conn_flush_output(struct conn *c)
{
	size_t len;
	const char *out = inbound_session_output(c->sess, &len);
	if (len) {
		bufferevent_write(c->bev, out, len);
		inbound_session_output_clear(c->sess);
	}
}

/* phase_timeout - seconds allowed in the connection's current phase */
static unsigned phase_timeout(const struct conn *c)
{
	const struct config *cfg = c->srv->cfg;
	return c->handshaking                     ? cfg->timeout_tls
	       : inbound_session_in_data(c->sess) ? cfg->timeout_data
	                                          : cfg->timeout_command;
}

static void conn_set_timeouts(struct conn *c)
{
	unsigned secs = phase_timeout(c);
	struct timeval tv = {.tv_sec = secs};
	bufferevent_set_timeouts(c->bev, &tv, &tv);
}

static void conn_timeout(struct conn *c);

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	conn_timeout(arg);
}

/* delay_cb - the tarpit pause is over: the held error reply goes out */
static void delay_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	c->delaying = false;
	if (c->closing)
		return;
	inbound_session_delay_done(c->sess);
	conn_flush_output(c);
	bufferevent_enable(c->bev, EV_READ);
	conn_process(c);
}

static uint64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/*
 * conn_progress - the peer moved forward: its deadline starts again, except
 * inside DATA/BDAT content with a min_data_rate. There, as with Postfix's
 * smtpd_min_data_rate, the content gets timeout_data to begin with, and each
 * read of N octets moves the deadline N/rate seconds further, never more than
 * timeout_data from now: a client trickling a line before every deadline
 * runs out of time, one at the rate or faster never does. The octets are
 * counted by the session (inbound_session_content_octets).
 */
static void conn_progress(struct conn *c)
{
	unsigned secs = phase_timeout(c);
	uint64_t rate = c->srv->cfg->min_data_rate;
	if (rate == 0 || c->handshaking || !inbound_session_in_data(c->sess)) {
		c->in_content = false;
		struct timeval tv = {.tv_sec = secs};
		evtimer_add(c->deadline, &tv);
		return;
	}
	uint64_t now = mono_us(), cap = now + (uint64_t)secs * 1000000;
	uint64_t octets = inbound_session_content_octets(c->sess);
	if (!c->in_content) {
		c->in_content = true;
		c->content_deadline_us = cap;
		c->content_started_us = now;
		c->content_first = octets;
	} else {
		uint64_t d = c->content_deadline_us + (octets - c->content_octets) * 1000000 / rate;
		c->content_deadline_us = d < cap ? d : cap;
	}
	c->content_octets = octets;
	uint64_t left = c->content_deadline_us > now ? c->content_deadline_us - now : 0;
	struct timeval tv = {.tv_sec = (time_t)(left / 1000000),
	                     .tv_usec = (suseconds_t)(left % 1000000)};
	evtimer_add(c->deadline, &tv);
}

static void conn_close_when_flushed(struct conn *c)
{
	c->closing = true;
	bufferevent_disable(c->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		conn_free(c);
	/* else write_cb frees it once the last reply has left */
}

static void read_cb(struct bufferevent *bev, void *arg);
static void write_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);

/*
 * conn_start_tls - after the 220 has left: replace the plaintext bufferevent
 * by a TLS one on the same socket. Reading was stopped when STARTTLS was
 * accepted, so the client's ClientHello is still in the kernel; bytes that
 * did reach our buffer arrived with STARTTLS itself: injection, never run.
 */
static void conn_start_tls(struct conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	c->tls_pending = false;
	if (evbuffer_get_length(in) > 0) {
		log_info("event=starttls_injection sid=%016" PRIx64 " bytes=%zu", c->id,
		         evbuffer_get_length(in));
		conn_free(c);
		return;
	}
	SSL *ssl = SSL_new(c->srv->tls);
	if (ssl == NULL) {
		log_err("event=tls_error sid=%016" PRIx64 " error=SSL_new", c->id);
		conn_free(c);
		return;
	}
	/* Detach the socket from the plain bufferevent first: its events are
	 * removed now (bufferevent_setfd), not when its deferred destruction
	 * runs, so they can never unregister the TLS bufferevent's events on
	 * the same descriptor, and freeing it does not close the socket. */
	bufferevent_setfd(c->bev, -1);
	bufferevent_free(c->bev);
	/* CLOSE_ON_FREE: libevent frees the SSL (and the socket) only then */
	c->bev = bufferevent_openssl_socket_new(c->sh->base, c->fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
	                                        BEV_OPT_CLOSE_ON_FREE);
	if (c->bev == NULL) {
		log_err("event=tls_error sid=%016" PRIx64 " error=bufferevent", c->id);
		SSL_free(ssl);
		conn_free(c);
		return;
	}
	c->fd = -1; /* owned by the TLS bufferevent now */
	bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
	c->handshaking = true;
	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	conn_set_timeouts(c);
	conn_progress(c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

/* conn_want_tls - the session accepted STARTTLS: stop reading, send the 220 */
static void conn_want_tls(struct conn *c)
{
	bufferevent_disable(c->bev, EV_READ);
	c->tls_pending = true;
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		conn_start_tls(c);
	/* else write_cb switches once the 220 has been written */
}

static void conn_tls_done(struct conn *c)
{
	SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
	char desc[128];
	tls_describe(ssl, desc, sizeof(desc));
	c->handshaking = false;
	c->tls = true;
	log_info("event=tls sid=%016" PRIx64 " ip=%s protocol=%s cipher=%s", c->id, c->ip,
	         SSL_get_version(ssl), SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)));
	inbound_session_tls_started(c->sess, desc);
	conn_set_timeouts(c);
	conn_progress(c);
	conn_process(c);
}

/* conn_process - feed input to the session and carry out its actions */
static void conn_process(struct conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	for (;;) {
		enum inbound_action act = inbound_session_action(c->sess);
		if (act == INBOUND_NONE) {
			size_t len = evbuffer_get_length(in);
			if (len == 0)
				break;
			if (evbuffer_get_length(bufferevent_get_output(c->bev)) > OUT_HIGH) {
				/* the client does not read its replies: wait for it */
				c->read_paused = true;
				bufferevent_disable(c->bev, EV_READ);
				break;
			}
			size_t n = len < IN_CHUNK ? len : IN_CHUNK;
			const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
			size_t used = inbound_session_input(c->sess, p, n);
			evbuffer_drain(in, used);
			if (used > 0)
				conn_progress(c);
			conn_flush_output(c);
			act = inbound_session_action(c->sess);
			if (used == 0 && act == INBOUND_NONE)
				break; /* an incomplete line: wait for more */
		}
		conn_flush_output(c);
		switch (act) {
		case INBOUND_NONE:
			continue;
		case INBOUND_STORE:
			if (c->storing)
				return; /* queue_committed() resumes */
			conn_store(c);
			conn_flush_output(c);
			continue;
		case INBOUND_STARTTLS:
			conn_want_tls(c);
			return;
		case INBOUND_CLOSE:
			conn_close_when_flushed(c);
			return;
		case INBOUND_DELAY:
			/* a timer on this loop, never a sleep: the other sessions
			 * go on; this one reads nothing until delay_cb (not even
			 * into our buffer: a flood would pile up meanwhile) */
			if (!c->delaying) {
				struct timeval tv = {.tv_sec = c->srv->cfg->error_delay};
				c->delaying = true;
				bufferevent_disable(c->bev, EV_READ);
				/* the phase changed (end of a chunk): not the data timeouts */
				conn_set_timeouts(c);
				evtimer_add(c->delay_ev, &tv);
			}
			return;
		}
	}
	conn_set_timeouts(c);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	if (c->closing || c->handshaking || c->tls_pending)
		return;
	if (c->pregreet) {
		/* the client spoke before our greeting: no session for it */
		struct evbuffer *in = bufferevent_get_input(c->bev);
		char buf[512];
		size_t n = evbuffer_get_length(in);
		size_t k = n < 64 ? n : 64;
		evbuffer_copyout(in, buf, k);
		char esc[300];
		log_warn("event=pregreet sid=%016" PRIx64 " ip=%s bytes=%zu data=\"%s\"", c->id,
		         c->ip, n, log_escape(buf, k, esc, sizeof(esc)));
		evbuffer_drain(in, n);
		c->pregreet = false;
		event_del(c->greet_ev);
		int len =
		    snprintf(buf, sizeof(buf),
		             "554 5.5.0 %s Error: SMTP protocol synchronization (talked before "
		             "the greeting)\r\n",
		             c->srv->cfg->hostname);
		bufferevent_write(c->bev, buf, (size_t)len);
		conn_close_when_flushed(c);
		return;
	}
	conn_process(c);
}

/* greet_cb - greet_wait is over and the client kept quiet: the 220 */
static void greet_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	if (!c->pregreet)
		return;
	c->pregreet = false;
	inbound_session_greet(c->sess);
	conn_flush_output(c);
	conn_set_timeouts(c);
	conn_progress(c);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	if (c->closing) {
		conn_free(c);
		return;
	}
	if (c->tls_pending) {
		conn_start_tls(c);
		return;
	}
	if (c->read_paused) {
		c->read_paused = false;
		bufferevent_enable(c->bev, EV_READ);
		conn_process(c);
	}
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;
	if (what & BEV_EVENT_CONNECTED) {
		if (c->handshaking)
			conn_tls_done(c);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		conn_timeout(c);
		return;
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		if (c->handshaking || (what & BEV_EVENT_ERROR)) {
			unsigned long e = bufferevent_get_openssl_error(bev);
			char buf[256] = "";
			if (e)
				ERR_error_string_n(e, buf, sizeof(buf));
			log_info("event=%s sid=%016" PRIx64 " ip=%s%s%s%s",
			         c->handshaking ? "tls_failed" : "conn_error", c->id, c->ip,
			         buf[0] ? " error=\"" : "", buf, buf[0] ? "\"" : "");
		}
		conn_free(c);
	}
}

static void conn_timeout(struct conn *c)
{
	if (c->in_content && !c->handshaking && inbound_session_in_data(c->sess)) {
		uint64_t us = mono_us() - c->content_started_us;
		log_info("event=timeout sid=%016" PRIx64 " ip=%s phase=data reason=min_data_rate "
		         "octets=%" PRIu64 " seconds=%" PRIu64 " min_data_rate=%" PRIu64,
		         c->id, c->ip, c->content_octets - c->content_first, us / 1000000,
		         (uint64_t)c->srv->cfg->min_data_rate);
	} else {
		log_info("event=timeout sid=%016" PRIx64 " ip=%s phase=%s", c->id, c->ip,
		         c->handshaking                     ? "tls"
		         : inbound_session_in_data(c->sess) ? "data"
		                                            : "command");
	}
	if (c->handshaking || c->closing || c->tls_pending) {
		conn_free(c);
		return;
	}
	inbound_session_timeout(c->sess);
	conn_flush_output(c);
	bufferevent_enable(c->bev, EV_WRITE);
	struct timeval tv = {.tv_sec = 10};
	bufferevent_set_timeouts(c->bev, NULL, &tv);
	evtimer_add(c->deadline, &tv); /* the 421 gets 10 s to leave */
	conn_close_when_flushed(c);
}

static void post_closed(struct inbound_server *srv, const char *ip);

static void conn_free(struct conn *c)
{
	struct shard *sh = c->sh;
	log_info("event=disconnect sid=%016" PRIx64 " ip=%s duration=%ld", c->id, c->ip,
	         (long)(time(NULL) - c->started));
	if (c->prev)
		c->prev->next = c->next;
	else
		sh->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	sh->n_conns--;
	if (c->storing)
		conn_unstore(c); /* its verdict, when it comes, finds nobody */
	/* the main loop counts connections per address */
	post_closed(c->srv, c->ip);
	event_free(c->deadline);
	event_free(c->delay_ev);
	event_free(c->greet_ev);
	inbound_session_free(&c->sess);
	maildir_abort(&c->msg);
	if (c->bev) {
		SSL *ssl = c->tls ? bufferevent_openssl_get_ssl(c->bev) : NULL;
		if (ssl)
			SSL_shutdown(ssl); /* close_notify, best effort */
		bufferevent_free(c->bev);  /* closes the socket (CLOSE_ON_FREE) */
	} else if (c->fd >= 0) {
		evutil_closesocket(c->fd);
	}
	free(c->spool_buf);
	free(c);
}

static void reject_connection(evutil_socket_t fd, const char *host, const char *why)
{
	char buf[256];
	int n = snprintf(buf, sizeof(buf), "421 4.7.0 %s Error: %s\r\n", host, why);
	/* best effort: the socket is new, its buffer is empty */
	if (send(fd, buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		(void)0;
	evutil_closesocket(fd);
}

/* ---- connections per address (main loop) ---- */

static size_t ip_hash(const char *ip)
{
	size_t h = 5381;
	for (const unsigned char *p = (const unsigned char *)ip; *p; p++)
		h = h * 33 + *p;
	return h % IP_BUCKETS;
}

static struct ipcount **ip_find(struct inbound_server *srv, const char *ip)
{
	struct ipcount **pp = &srv->ips[ip_hash(ip)];
	while (*pp && strcmp((*pp)->ip, ip) != 0)
		pp = &(*pp)->next;
	return pp;
}

static size_t ip_count(struct inbound_server *srv, const char *ip)
{
	struct ipcount **pp = ip_find(srv, ip);
	return *pp ? (*pp)->n : 0;
}

static void ip_add(struct inbound_server *srv, const char *ip)
{
	struct ipcount **pp = ip_find(srv, ip);
	if (*pp == NULL) {
		*pp = xcalloc(1, sizeof(**pp));
		snprintf((*pp)->ip, sizeof((*pp)->ip), "%s", ip);
	}
	(*pp)->n++;
	srv->n_conns++;
}

static void ip_del(struct inbound_server *srv, const char *ip)
{
	struct ipcount **pp = ip_find(srv, ip);
	if (*pp == NULL)
		return;
	srv->n_conns--;
	if (--(*pp)->n == 0) {
		struct ipcount *e = *pp;
		*pp = e->next;
		free(e);
	}
}

struct closed {
	struct inbound_server *srv;
	char ip[INET6_ADDRSTRLEN];
};

/* a shard's connection ended (main loop) */
static void closed_run(void *arg)
{
	struct closed *cl = arg;
	ip_del(cl->srv, cl->ip);
	free(cl);
}

static void post_closed(struct inbound_server *srv, const char *ip)
{
	struct closed *cl = xcalloc(1, sizeof(*cl));
	cl->srv = srv;
	snprintf(cl->ip, sizeof(cl->ip), "%s", ip);
	mailbox_post(srv->mb, closed_run, free, cl);
}

/* ---- accepting: limits on the main loop, the session on a shard ---- */

struct handoff {
	struct shard *sh;
	evutil_socket_t fd;
	const struct config_listener *lc;
	uint64_t id;
	char ip[INET6_ADDRSTRLEN];
};

static void handoff_drop(void *arg)
{
	struct handoff *h = arg;
	evutil_closesocket(h->fd);
	free(h);
}

/* on the shard: the session starts */
static void handoff_run(void *arg)
{
	struct handoff *h = arg;
	struct shard *sh = h->sh;
	struct inbound_server *srv = sh->srv;
	const struct config *cfg = srv->cfg;
	const struct config_listener *lc = h->lc;
	evutil_socket_t fd = h->fd;
	const char *ip = h->ip;

	struct conn *c = xcalloc(1, sizeof(*c));
	c->srv = srv;
	c->sh = sh;
	c->lst = lc;
	c->id = h->id;
	c->started = time(NULL);
	c->deadline = evtimer_new(sh->base, deadline_cb, c);
	c->delay_ev = evtimer_new(sh->base, delay_cb, c);
	c->greet_ev = evtimer_new(sh->base, greet_cb, c);
	snprintf(c->ip, sizeof(c->ip), "%s", ip);
	c->spool_buf = xmalloc(SPOOL_BUF);
	c->fd = fd;
	/* replies are small and must not wait for the peer's delayed ACK (TLS
	 * 1.3 session tickets are written separately after the handshake) */
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	/*
	 * CLOSE_ON_FREE: the socket is closed when libevent has really destroyed
	 * the bufferevent (that may be deferred past a callback), never earlier:
	 * closing it ourselves first lets a new connection reuse the descriptor
	 * and lose its events when the old bufferevent's are removed.
	 */
	c->bev = bufferevent_socket_new(sh->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (c->bev == NULL) {
		evutil_closesocket(fd);
		free(c->spool_buf);
		event_free(c->deadline);
		event_free(c->delay_ev);
		event_free(c->greet_ev);
		post_closed(srv, c->ip);
		free(c);
		free(h);
		return;
	}
	struct inbound_params p = {
	    .hostname = cfg->hostname,
	    .info_url = cfg->info_url,
	    .require_tls = lc ? lc->require_tls : cfg->require_tls,
	    .tls_available = srv->tls != NULL,
	    .local_domains = &cfg->local_domains,
	    .line_max = cfg->line_length,
	    .text_line_max = cfg->text_line_length,
	    .size_max = cfg->message_size,
	    .rcpt_max = cfg->recipients,
	    .errors_max = cfg->errors,
	    .errors_delay_after = cfg->error_delay ? SOFT_ERRORS : 0,
	    .header_max = cfg->header_size,
	    .peer_ip = c->ip,
	    .relay_allowed = config_net_match(&cfg->relay_networks, ip),
	    .id = c->id,
	    .sink = {.ctx = c,
	             .begin = sink_begin,
	             .write = sink_write,
	             .abort = sink_abort,
	             .space = sink_space},
	};
	c->sess = inbound_session_new(&p);
	c->next = sh->conns;
	if (sh->conns)
		sh->conns->prev = c;
	sh->conns = c;
	sh->n_conns++;
	log_info("event=connect sid=%016" PRIx64 " ip=%s listener=%s:%s require_tls=%s", c->id, ip,
	         lc ? lc->host : "?", lc ? lc->port : "?", p.require_tls ? "yes" : "no");
	free(h);
	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	if (cfg->greet_wait) {
		struct timeval tv = {.tv_sec = cfg->greet_wait};
		c->pregreet = true;
		evtimer_add(c->greet_ev, &tv);
		/* the usual command deadline still bounds the whole wait */
		conn_set_timeouts(c);
		conn_progress(c);
		bufferevent_enable(c->bev, EV_READ | EV_WRITE);
		return;
	}
	inbound_session_greet(c->sess);
	conn_flush_output(c);
	conn_set_timeouts(c);
	conn_progress(c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
	struct inbound_server *srv = arg;
	const struct config *cfg = srv->cfg;
	char ip[INET6_ADDRSTRLEN] = "unknown";

	if (sa->sa_family == AF_INET)
		inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, ip, sizeof(ip));
	else if (sa->sa_family == AF_INET6)
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof(ip));

	if (srv->n_conns >= cfg->connections) {
		log_warn("event=reject ip=%s reason=too_many_connections total=%zu", ip,
		         srv->n_conns);
		reject_connection(fd, cfg->hostname, "too many connections");
		return;
	}
	size_t same = ip_count(srv, ip);
	if (same >= cfg->connections_per_ip) {
		log_warn("event=reject ip=%s reason=too_many_connections_from_ip count=%zu", ip,
		         same);
		char why[128];
		snprintf(why, sizeof(why), "too many connections from %s", ip);
		reject_connection(fd, cfg->hostname, why);
		return;
	}

	struct handoff *h = xcalloc(1, sizeof(*h));
	for (size_t i = 0; i < srv->n_listeners; i++)
		if (srv->listeners[i] == l)
			h->lc = srv->listener_cfg[i];
	h->sh = &srv->shards[srv->next_shard++ % srv->n_shards];
	h->fd = fd;
	h->id = srv->next_id++;
	snprintf(h->ip, sizeof(h->ip), "%s", ip);
	ip_add(srv, ip);
	mailbox_post(h->sh->mb, handoff_run, handoff_drop, h);
}

static void resume_accept_cb(evutil_socket_t fd, short what, void *arg)
{
	struct inbound_server *srv = arg;
	for (size_t i = 0; i < srv->n_listeners; i++)
		evconnlistener_enable(srv->listeners[i]);
	log_info("event=accept_resumed");
}

/*
 * accept_error_cb - EMFILE, ENFILE, ENOBUFS...: the listener stays readable,
 * so accepting again at once would spin. Pause every listener for a second;
 * the sessions that end meanwhile give descriptors back.
 */
static void accept_error_cb(struct evconnlistener *l, void *arg)
{
	struct inbound_server *srv = arg;
	int err = EVUTIL_SOCKET_ERROR();
	log_err("event=accept_error error=\"%s\" action=pause_1s",
	        evutil_socket_error_to_string(err));
	for (size_t i = 0; i < srv->n_listeners; i++)
		evconnlistener_disable(srv->listeners[i]);
	struct timeval tv = {.tv_sec = 1};
	evtimer_add(srv->resume_ev, &tv);
}

static void *shard_main(void *arg)
{
	struct shard *sh = arg;
	event_base_dispatch(sh->base);
	/* what the last sessions left behind (bufferevent finalizers, deferred
	 * callbacks) runs here, on the loop's own thread */
	event_base_loop(sh->base, EVLOOP_NONBLOCK);
	return NULL;
}

/* on the shard, at shutdown: every session ends, then the loop */
static void shard_stop(void *arg)
{
	struct shard *sh = arg;
	while (sh->conns)
		/* the callee unlinks the head: no use after free */
		conn_free(sh->conns); // NOLINT(clang-analyzer-unix.Malloc)
	/* after the callbacks made active meanwhile (finalizers) have run */
	event_base_loopexit(sh->base, NULL);
}

struct inbound_server *inbound_server_new(struct event_base *base, const struct config *c,
                                          SSL_CTX *tls, struct queue *q, char *err, size_t errlen)
{
	struct inbound_server *srv = xcalloc(1, sizeof(*srv));
	srv->queue = q;
	srv->base = base;
	srv->cfg = c;
	srv->tls = tls;
	srv->spool_dir = xasprintf("%s/spool", c->data_dir);
	srv->next_id = ((uint64_t)time(NULL) << 20) ^ ((uint64_t)getpid() << 40);
	srv->listeners = xcalloc(c->n_listeners, sizeof(*srv->listeners));
	srv->listener_cfg = xcalloc(c->n_listeners, sizeof(*srv->listener_cfg));
	srv->resume_ev = evtimer_new(base, resume_accept_cb, srv);
	srv->mb = mailbox_new(base, err, errlen);
	if (srv->mb == NULL) {
		inbound_server_free(&srv);
		return NULL;
	}
	size_t n = c->threads ? c->threads : 1;
	srv->shards = xcalloc(n, sizeof(*srv->shards));
	for (size_t i = 0; i < n; i++) {
		struct shard *sh = &srv->shards[i];
		sh->srv = srv;
		sh->idx = i;
		sh->base = event_base_new();
		if (sh->base == NULL) {
			snprintf(err, errlen, "inbound loop %zu: event_base_new failed", i);
			inbound_server_free(&srv);
			return NULL;
		}
		srv->n_shards++;
		sh->mb = mailbox_new(sh->base, err, errlen);
		if (sh->mb == NULL) {
			inbound_server_free(&srv);
			return NULL;
		}
	}
	for (size_t i = 0; i < c->n_listeners; i++) {
		const struct config_listener *lc = &c->listeners[i];
		struct sockaddr_storage ss;
		int sslen = sizeof(ss);
		char spec[128];
		snprintf(spec, sizeof(spec), strchr(lc->host, ':') ? "[%s]:%s" : "%s:%s", lc->host,
		         lc->port);
		memset(&ss, 0, sizeof(ss));
		if (evutil_parse_sockaddr_port(spec, (struct sockaddr *)&ss, &sslen) < 0) {
			snprintf(err, errlen, "listen %s: bad address", spec);
			inbound_server_free(&srv);
			return NULL;
		}
		/* No LEV_OPT_DEFERRED_ACCEPT: the server speaks first in SMTP. */
		struct evconnlistener *l = evconnlistener_new_bind(
		    base, accept_cb, srv,
		    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, 128,
		    (struct sockaddr *)&ss, sslen);
		if (l == NULL) {
			snprintf(err, errlen, "listen %s: %s", spec, strerror(errno));
			inbound_server_free(&srv);
			return NULL;
		}
		evconnlistener_set_error_cb(l, accept_error_cb);
		srv->listeners[srv->n_listeners] = l;
		srv->listener_cfg[srv->n_listeners++] = lc;
		log_info("event=listening addr=%s port=%s require_tls=%s", lc->host, lc->port,
		         lc->require_tls ? "yes" : "no");
	}
	return srv;
}

void inbound_server_set_queue(struct inbound_server *srv, struct queue *q)
{
	srv->queue = q;
}

int inbound_server_start(struct inbound_server *srv, char *err, size_t errlen)
{
	for (size_t i = 0; i < srv->n_shards; i++) {
		struct shard *sh = &srv->shards[i];
		int rc = pthread_create(&sh->thread, NULL, shard_main, sh);
		if (rc != 0) {
			snprintf(err, errlen, "inbound loop %zu: pthread_create: %s", i,
			         strerror(rc));
			return -1;
		}
		sh->running = true;
	}
	log_info("event=inbound_loops count=%zu", srv->n_shards);
	return 0;
}

void inbound_server_stop(struct inbound_server *srv)
{
	for (size_t i = 0; i < srv->n_listeners; i++)
		evconnlistener_disable(srv->listeners[i]);
	for (size_t i = 0; i < srv->n_shards; i++) {
		struct shard *sh = &srv->shards[i];
		if (sh->running) {
			mailbox_post(sh->mb, shard_stop, NULL, sh);
			pthread_join(sh->thread, NULL);
			sh->running = false;
		} else if (!sh->dead && sh->base) {
			shard_stop(sh);
		}
		/* verdicts not delivered are dropped; connections handed over but
		 * not started are closed */
		mailbox_free(&sh->mb);
		sh->dead = true;
	}
}

void inbound_server_free(struct inbound_server **sp)
{
	struct inbound_server *srv = *sp;
	if (srv == NULL)
		return;
	inbound_server_stop(srv);
	for (size_t i = 0; i < srv->n_shards; i++)
		if (srv->shards[i].base)
			event_base_free(srv->shards[i].base);
	free(srv->shards);
	/* messages on their way to the queue were never acknowledged: dropped */
	mailbox_free(&srv->mb);
	for (size_t i = 0; i < IP_BUCKETS; i++)
		while (srv->ips[i]) {
			struct ipcount *e = srv->ips[i];
			srv->ips[i] = e->next;
			free(e);
		}
	for (size_t i = 0; i < srv->n_listeners; i++)
		evconnlistener_free(srv->listeners[i]);
	if (srv->resume_ev)
		event_free(srv->resume_ev);
	free(srv->listeners);
	free(srv->listener_cfg);
	free(srv->spool_dir);
	free(srv);
	*sp = NULL;
}
