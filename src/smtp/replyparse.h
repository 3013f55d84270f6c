/*
 * smtp/replyparse - parse server replies on the client side (RFC 5321
 * §4.2): "CODE-text" continuation lines, then "CODE text". Pure, no I/O.
 * Used by the LMTP and (later) SMTP clients; bounded in lines and length.
 */
#ifndef STRICTMX_SMTP_REPLYPARSE_H
#define STRICTMX_SMTP_REPLYPARSE_H

#include <stdbool.h>
#include <stddef.h>

#include "smtp/reply.h"

#define SMTP_REPLY_MAX_LINES 64

struct smtp_reply_parser {
	struct smtp_reply r; /* code, enhanced code of the first line, text of the last */
	size_t lines;
	bool starttls;   /* a "STARTTLS" line was seen (EHLO replies) */
	bool pipelining; /* a "PIPELINING" line was seen */
};

enum smtp_rp_status {
	SMTP_RP_MORE = 0, /* a continuation line: feed the next */
	SMTP_RP_DONE,     /* the final line: p->r holds the reply */
	SMTP_RP_ERROR,    /* not a reply line, code changed, too many lines */
};

void smtp_reply_parser_init(struct smtp_reply_parser *p);
/* smtp_reply_parser_line - one line, without its CRLF */
enum smtp_rp_status smtp_reply_parser_line(struct smtp_reply_parser *p, const char *line,
                                           size_t len);

#endif
