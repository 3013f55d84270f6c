/*
 * delivery/lmtp - hand a spooled message to an LMTP next hop (RFC 2033),
 * such as Dovecot's lmtp service, on the daemon's event loop.
 *
 * The spool file is already durable (maildir_spool_finish). The job connects,
 * sends LHLO, MAIL, one RCPT per recipient, DATA with the content
 * dot-stuffed, and reads one reply per accepted recipient (RFC 2033 §4.2).
 * The result is one reply per recipient: the next hop's answer to RCPT when
 * it refused it, else its answer after the content; when the next hop could
 * not be reached or broke off, 451 4.4.0 with a text saying what failed.
 */
#ifndef STRICTMX_DELIVERY_LMTP_H
#define STRICTMX_DELIVERY_LMTP_H

#include <stddef.h>
#include <event2/event.h>

#include "smtp/reply.h"

struct lmtp_job;

/* called once with n_rcpts replies; the job is already freed */
typedef void (*lmtp_done_fn)(void *arg, const struct smtp_reply *replies, size_t n);

struct lmtp_request {
	const char *hostport;   /* "127.0.0.1:24" or "[::1]:24" */
	const char *lhlo_name;  /* our host name */
	const char *spool_path; /* the content, CRLF lines, not dot-stuffed */
	const char *from;       /* reverse path without <>, "" for null */
	const char *const *rcpts;
	size_t n_rcpts;
	unsigned timeout;       /* seconds per step */
	unsigned long long sid; /* for logs */
};

struct lmtp_job *lmtp_deliver(struct event_base *base, const struct lmtp_request *req,
                              lmtp_done_fn done, void *arg);
/* lmtp_cancel - stop without calling done (the session went away) */
void lmtp_cancel(struct lmtp_job **job);

#endif
