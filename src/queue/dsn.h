/*
 * queue/dsn - delivery status notifications (RFC 3464 multipart/report with
 * message/delivery-status, RFC 3462/6522). Pure text building, no I/O.
 *
 * The human part says what failed and what the recipient's mail admin can
 * do about it, in plain words: most refusals from strictmx are about TLS,
 * and the fix lives on the other side.
 */
#ifndef STRICTMX_QUEUE_DSN_H
#define STRICTMX_QUEUE_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

struct dsn_rcpt {
	const char *addr;
	const char *status;     /* enhanced code "5.7.4" */
	const char *diagnostic; /* "smtp; 550 5.1.1 no such user" or NULL */
	const char *remote_mta; /* host name or NULL */
	const char *detail;     /* our words: why */
	time_t last_attempt;
};

struct dsn_input {
	bool delayed; /* a delay warning (Action: delayed), else a failure */
	const char *reporting_mta;
	const char *queue_id;
	const char *sender;   /* the envelope sender the DSN goes to */
	const char *info_url; /* or NULL */
	time_t arrival;
	const struct dsn_rcpt *rcpts;
	size_t n_rcpts;
	const char *orig_headers; /* the original header block, CRLF lines, or NULL */
	size_t orig_headers_len;
	const char *message_id; /* for the DSN itself, without <> */
	const char *boundary;   /* MIME boundary to use */
	time_t now;
};

/* dsn_build - the whole message (headers and body, CRLF lines); caller frees */
char *dsn_build(const struct dsn_input *in, size_t *len);

/* dsn_advice - plain words for the recipient's admin, from our detail text */
const char *dsn_advice(const char *detail);

#endif
