/*
 * outbound/session - the client side of one SMTP session to one MX, as a
 * pure state machine: server bytes in, commands and actions out. No
 * sockets, no TLS calls, no files: the I/O layer connects, moves bytes, does
 * the TLS handshake and its verification, streams the body, and reports
 * back; unit tests and the fuzzer drive the session directly.
 *
 * Flow (RFC 5321, RFC 3207, RFC 2920):
 *   220 greeting -> EHLO -> STARTTLS must be offered -> STARTTLS -> 220 ->
 *   action STARTTLS -> [I/O: handshake + verify] -> tls_started() -> EHLO
 *   (all earlier capabilities forgotten, RFC 3207 §4.2) -> MAIL FROM ->
 *   RCPT TO each -> DATA (MAIL+RCPT+DATA in one write when PIPELINING is
 *   offered after TLS) -> 354 -> action SEND_BODY -> [I/O: body through
 *   outbound_body_stuff()] -> body_done() -> "." -> final reply -> QUIT ->
 *   action DONE.
 *
 * With require_tls nothing but EHLO, STARTTLS and QUIT is ever written
 * before tls_started(); a missing or refused STARTTLS, a reply injected
 * after the 220 to STARTTLS, a malformed or over-long reply, a 421, a
 * timeout or a lost connection fail the host (host_error; try the next MX).
 * Only a RCPT reply, and the DATA / end-of-data reply for the recipients
 * accepted, decide per recipient.
 */
#ifndef STRICTMX_OUTBOUND_SESSION_H
#define STRICTMX_OUTBOUND_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smtp/reply.h"

/* a reply line, with CRLF; RFC 5321 §4.5.3.1.5 asks for 512, we allow more */
#define OUTBOUND_LINE_MAX 2048

struct outbound_params {
	const char *helo_name;    /* our name for EHLO; must be a host name */
	const char *mx_host;      /* for messages and logs */
	const char *sender;       /* reverse path without <>; "" = null sender */
	const char *const *rcpts; /* forward paths without <> */
	size_t n_rcpts;
	uint64_t size;    /* message size for SIZE= (RFC 1870); 0 = do not send */
	bool body_8bit;   /* BODY=8BITMIME when the server offers 8BITMIME */
	bool require_tls; /* always true in strictmx; false only in tests */
	bool keep_open;   /* after the transaction, stay connected (no QUIT): reuse */
	bool probe;       /* checker: QUIT and DONE right after the EHLO inside TLS, no MAIL */
	uint64_t id;      /* for logs */
};

enum outbound_action {
	OUTBOUND_NONE = 0,
	OUTBOUND_STARTTLS,  /* send the output, then handshake + verify, then tls_started() */
	OUTBOUND_SEND_BODY, /* send the output, stream the stuffed body, then body_done() */
	OUTBOUND_DONE,      /* send the output (QUIT) and close; results are final */
	OUTBOUND_CLOSE,     /* send the output (maybe QUIT) and close; see host_error */
};

enum outbound_rcpt_state {
	OUTBOUND_RCPT_NOT_TRIED = 0, /* the host failed first: try the next MX */
	OUTBOUND_RCPT_DELIVERED,     /* 2xx to the end of data */
	OUTBOUND_RCPT_FAILED,        /* 5xx to RCPT, DATA or the end of data */
	OUTBOUND_RCPT_DEFERRED,      /* 4xx to RCPT, DATA or the end of data */
};

struct outbound_result {
	enum outbound_rcpt_state state;
	struct smtp_reply reply; /* the server's reply (text as printable ASCII); code 0 if none */
};

struct outbound_session;

/* outbound_session_new - copies everything it needs from p */
struct outbound_session *outbound_session_new(const struct outbound_params *p);
void outbound_session_free(struct outbound_session **s);

/*
 * Connection reuse (keep_open): after a completed transaction over TLS the
 * session raises DONE without QUIT and is idle. outbound_session_next()
 * starts the next message on the same connection (RSET, then MAIL ...): the
 * results then describe the new recipients. outbound_session_quit() ends an
 * idle session (QUIT, then CLOSE).
 */
bool outbound_session_idle(const struct outbound_session *s);
int outbound_session_next(struct outbound_session *s, const char *sender, const char *const *rcpts,
                          size_t n_rcpts, uint64_t size, uint64_t id);
void outbound_session_quit(struct outbound_session *s);

/*
 * outbound_session_input - consume server bytes. Returns how many were
 * used; the I/O layer keeps the rest and feeds it again with what comes
 * next. Give it everything that is buffered: bytes after the 220 to
 * STARTTLS in the same input are response injection and fail the host.
 * While an action is pending nothing is consumed.
 */
size_t outbound_session_input(struct outbound_session *s, const char *buf, size_t len);

/* outbound_session_action - the pending action (cleared by the calls below) */
enum outbound_action outbound_session_action(const struct outbound_session *s);

/* outbound_session_output - commands to send; _output_clear once sent */
const char *outbound_session_output(const struct outbound_session *s, size_t *len);
void outbound_session_output_clear(struct outbound_session *s);

/*
 * outbound_session_tls_started - the handshake after STARTTLS finished AND
 * the certificate was verified as the policy demands. Only valid while the
 * STARTTLS action is pending; ignored otherwise.
 */
void outbound_session_tls_started(struct outbound_session *s);

/* outbound_session_tls_failed - handshake or verification failed: why is the reason */
void outbound_session_tls_failed(struct outbound_session *s, const char *why);

/* outbound_session_body_done - the whole stuffed body was sent: queue ".\r\n" */
void outbound_session_body_done(struct outbound_session *s);

/* outbound_session_timeout - no reply in time: the host fails */
void outbound_session_timeout(struct outbound_session *s);

/* outbound_session_eof - the connection closed or broke: the host fails unless done */
void outbound_session_eof(struct outbound_session *s);

/* outbound_session_tls_active - tls_started() was called */
bool outbound_session_tls_active(const struct outbound_session *s);

/* outbound_session_result - recipient i's outcome (i < n_rcpts) */
const struct outbound_result *outbound_session_result(const struct outbound_session *s, size_t i);

/*
 * outbound_session_host_error - true when the host failed; *reason (valid
 * until free) says why, *temporary is false only for a 5xx the MX gave to
 * the session as a whole (greeting, EHLO after TLS, MAIL).
 */
bool outbound_session_host_error(const struct outbound_session *s, const char **reason,
                                 bool *temporary);

/*
 * Body canonicalization for DATA (RFC 5321 §4.5.2, §2.3.8): a line that
 * starts with "." gets another "."; a bare CR or bare LF becomes CRLF; NUL
 * is dropped (RFC 6152 §3: not in 8bit data, and a NUL-stripping receiver
 * would turn "\r\n\0.\r\n" into an end of data). The output therefore never
 * contains "\r\n.\r\n", whatever the input and wherever it is split.
 */
struct outbound_stuffer {
	bool mid_line;   /* something other than a line end was written last */
	bool pending_cr; /* a CR was written; its LF is not yet */
	size_t line_len; /* octets of the current line, without stuffing */
	bool too_long;   /* a line had more than OUTBOUND_BODY_LINE_MAX octets */
};

/*
 * RFC 5322 §2.1.1: a line MUST be at most 998 characters without its CRLF
 * (RFC 5321 §4.5.3.1.6: 1000 with it, the transparency dot not counted). A
 * queued body can hold longer lines only when [limits] text_line_length was
 * raised above 1000. Such a body is not relayed: the stuffer sets too_long
 * and the caller stops before sending that data. Folding is not done: a
 * CRLF inserted into a body line changes the content (and breaks DKIM
 * signatures and encoded parts) without the sender knowing; a bounce that
 * says why is the honest answer.
 */
#define OUTBOUND_BODY_LINE_MAX 998

/* the most output one call can produce for len bytes of input */
#define OUTBOUND_STUFF_MAX(len) (2 * (len) + 2)

void outbound_stuffer_init(struct outbound_stuffer *st);
/* outbound_body_stuff - returns bytes written to out; outcap >= OUTBOUND_STUFF_MAX(len) */
size_t outbound_body_stuff(struct outbound_stuffer *st, const char *in, size_t len, char *out,
                           size_t outcap);
/*
 * outbound_body_stuff_end - the bytes (0-2, outcap >= 2) that make the body
 * end with CRLF; write them before body_done()'s ".\r\n".
 */
size_t outbound_body_stuff_end(struct outbound_stuffer *st, char *out, size_t outcap);

#endif
