/*
 * inbound/session - the server side of one SMTP session, as a pure state
 * machine: bytes in, replies and actions out. No sockets, no TLS, no files:
 * the I/O layer (inbound/server.c) moves bytes and carries out actions, unit
 * tests and the fuzzer drive it directly.
 *
 * The I/O layer calls inbound_session_input() with the bytes it has; the
 * session consumes what it can, appends replies to its output buffer and may
 * raise one action (see enum inbound_action); the I/O layer sends the output,
 * carries out the action, reports back (tls_started, store_done) and feeds
 * the rest of the input.
 */
#ifndef STRICTMX_INBOUND_SESSION_H
#define STRICTMX_INBOUND_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "smtp/command.h"
#include "smtp/reply.h"

/* Where message content goes while it arrives (a spool file in the daemon). */
struct inbound_sink {
	void *ctx;
	int (*begin)(void *ctx);                           /* 0, or -1: 451 */
	void (*write)(void *ctx, const void *p, size_t n); /* errors surface at commit */
	void (*abort)(void *ctx);                          /* drop the content */
	/* room for a message of size octets (SIZE=, 0 if not given)? 0 yes, -1 no
	 * (452 4.3.1 at MAIL); NULL: not asked */
	int (*space)(void *ctx, uint64_t size);
};

struct inbound_params {
	const char *hostname;
	const char *info_url; /* NULL or "" for none */
	bool require_tls;     /* this listener's require_tls */
	bool tls_available;   /* a TLS context exists: offer STARTTLS */
	const struct strlist *local_domains;
	size_t line_max;      /* command line with CRLF */
	size_t text_line_max; /* DATA line with CRLF */
	uint64_t size_max;
	size_t rcpt_max;
	size_t errors_max;
	/* error replies after this many errors wait for INBOUND_DELAY (a tarpit,
	 * like Postfix's smtpd_soft_error_limit); 0 = never delayed */
	size_t errors_delay_after;
	uint64_t header_max; /* octets of the client's header block; 0 = no limit */
	const char *peer_ip;
	bool relay_allowed; /* the client may send to other domains (relay_networks) */
	uint64_t id;        /* session id, for logs and queue ids */
	struct inbound_sink sink;
};

enum inbound_action {
	INBOUND_NONE = 0,
	INBOUND_STARTTLS, /* send the output (220), then start the TLS handshake */
	INBOUND_STORE,    /* content complete: commit it, then inbound_session_store_done() */
	INBOUND_CLOSE,    /* send the output, then close */
	INBOUND_DELAY,    /* send the output, wait, then inbound_session_delay_done() */
};

struct inbound_session;

struct inbound_envelope {
	const char *queue_id;
	const struct smtp_path *from;
	const struct smtp_path *rcpts;
	size_t n_rcpts;
	uint64_t size; /* content octets, Received: header included */
	bool tls;
};

struct inbound_session *inbound_session_new(const struct inbound_params *p);
void inbound_session_free(struct inbound_session **s);

/* inbound_session_greet - queue the 220 greeting */
void inbound_session_greet(struct inbound_session *s);

/*
 * inbound_session_input - consume bytes. Returns how many were used; stops
 * early (returning less than len) when an action is raised or when a line is
 * not complete yet. While an action is pending, nothing is consumed.
 */
size_t inbound_session_input(struct inbound_session *s, const char *buf, size_t len);

/* inbound_session_action - the pending action (cleared by the calls below) */
enum inbound_action inbound_session_action(const struct inbound_session *s);

/* inbound_session_output - the queued output bytes; _output_clear after sending */
const char *inbound_session_output(const struct inbound_session *s, size_t *len);
void inbound_session_output_clear(struct inbound_session *s);

/*
 * inbound_session_tls_started - the handshake after STARTTLS succeeded:
 * everything learned before is forgotten (RFC 3207 §4.2). desc is the
 * tls_describe() text used in the Received: header.
 */
void inbound_session_tls_started(struct inbound_session *s, const char *desc);

/* inbound_session_envelope - the message to commit, valid during INBOUND_STORE */
void inbound_session_envelope(const struct inbound_session *s, struct inbound_envelope *env);

/*
 * inbound_session_store_done - the commit finished: r is NULL on success (the
 * session answers "250 2.0.0 Ok: queued as ID"), else the 4xx to send.
 */
void inbound_session_store_done(struct inbound_session *s, const struct smtp_reply *r);

/*
 * inbound_session_delay_done - the tarpit delay is over: the held error reply
 * joins the output and input is consumed again
 */
void inbound_session_delay_done(struct inbound_session *s);

/*
 * inbound_session_content_octets - octets of DATA/BDAT content read so far in
 * this session (a counter for the I/O layer's minimum data rate)
 */
uint64_t inbound_session_content_octets(const struct inbound_session *s);

/* inbound_session_timeout - the I/O layer's timer fired: queue 421, close */
void inbound_session_timeout(struct inbound_session *s);

/* inbound_session_in_data - whether the data-phase timeout applies */
bool inbound_session_in_data(const struct inbound_session *s);

/* inbound_session_local_user - is addr@domain a local mailbox? fills user */
bool inbound_session_local_rcpt(const struct strlist *local_domains, const struct smtp_path *p,
                                char *user, size_t userlen, char *domain, size_t domainlen);

#endif
