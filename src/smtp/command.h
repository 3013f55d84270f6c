/*
 * smtp/command - parse one SMTP command line (RFC 5321 §4.1). Pure, no I/O.
 *
 * The caller frames lines (smtp/line.h) and hands over the bytes of one line
 * without its CRLF. Verbs are case-insensitive.
 */
#ifndef STRICTMX_SMTP_COMMAND_H
#define STRICTMX_SMTP_COMMAND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smtp/reply.h"

enum smtp_verb {
	SMTP_V_UNKNOWN = 0,
	SMTP_V_HELO,
	SMTP_V_EHLO,
	SMTP_V_MAIL,
	SMTP_V_RCPT,
	SMTP_V_DATA,
	SMTP_V_BDAT,
	SMTP_V_RSET,
	SMTP_V_NOOP,
	SMTP_V_QUIT,
	SMTP_V_HELP,
	SMTP_V_VRFY,
	SMTP_V_EXPN,
	SMTP_V_STARTTLS,
	SMTP_V_AUTH,
	SMTP_V_NONSMTP, /* "GET ", "POST ", "CONNECT ", "Host:" ...: an HTTP client */
};

struct smtp_cmd {
	enum smtp_verb verb;
	const char *arg; /* points into the line: text after the verb and its spaces */
	size_t arg_len;  /* 0 when no argument */
};

/*
 * smtp_cmd_parse - split a line into verb and argument. Never fails: an
 * unrecognised verb gives SMTP_V_UNKNOWN. The verb must be followed by SP or
 * the end of line ("MAILX" is unknown). Trailing spaces of arg are dropped.
 */
void smtp_cmd_parse(const char *line, size_t len, struct smtp_cmd *cmd);
const char *smtp_verb_name(enum smtp_verb v);

/* Sizes from RFC 5321 §4.5.3.1 */
#define SMTP_LOCAL_MAX  64
#define SMTP_DOMAIN_MAX 255
#define SMTP_PATH_MAX   256

struct smtp_path {
	char addr[SMTP_PATH_MAX +
	          1]; /* "local@domain" without <>, source route dropped; "" = null path */
	char local[SMTP_LOCAL_MAX * 2 + 3]; /* local part as sent (quoted form kept) */
	char domain[SMTP_DOMAIN_MAX + 1];   /* domain or address literal, as sent */
	bool null_path;                     /* MAIL FROM:<> */
	bool utf8;                          /* contains non-ASCII (needs SMTPUTF8) */
};

enum smtp_body { SMTP_BODY_7BIT = 0, SMTP_BODY_8BITMIME };

struct smtp_mail_params {
	bool size_set;
	uint64_t size;
	enum smtp_body body;
	bool smtputf8;
};

/*
 * smtp_parse_mail - parse the argument of MAIL ("FROM:<path> [params]").
 * Checks RFC 5321 §4.1.2 grammar (Mailbox, Reverse-path, esmtp-param) and the
 * known parameters SIZE, BODY=7BIT|8BITMIME, SMTPUTF8; a non-ASCII address
 * without SMTPUTF8 is refused. Returns 0, or -1 with err filled:
 * 501 5.5.4 syntax / bad parameter value, 555 5.5.4 unknown or duplicated
 * parameter, 553 5.1.7 bad sender address, 501 5.5.2 path too long,
 * 552 5.3.4 when SIZE > max_size (max_size 0 = no check).
 */
int smtp_parse_mail(const char *arg, size_t len, uint64_t max_size, struct smtp_path *path,
                    struct smtp_mail_params *params, struct smtp_reply *err);

/*
 * smtp_parse_rcpt - parse the argument of RCPT ("TO:<path> [params]").
 * No parameters are supported (555 for any); "<Postmaster>" without domain is
 * accepted (addr "postmaster", domain ""). smtputf8: whether MAIL said
 * SMTPUTF8. Errors: 501 5.5.4 syntax, 553 5.1.3 bad recipient address,
 * 555 5.5.4 parameters.
 */
int smtp_parse_rcpt(const char *arg, size_t len, bool smtputf8, struct smtp_path *path,
                    struct smtp_reply *err);

/*
 * smtp_parse_bdat - parse "chunk-size [LAST]" (RFC 3030 §3): chunk-size is
 * 1*DIGIT without sign, at most 18 digits. Errors: 501 5.5.4.
 */
int smtp_parse_bdat(const char *arg, size_t len, uint64_t *size, bool *last,
                    struct smtp_reply *err);

/*
 * smtp_parse_helo - check the EHLO/HELO argument: a domain (LDH labels) or
 * an address literal ([1.2.3.4], [IPv6:...]). Errors: 501 5.5.4.
 */
int smtp_parse_helo(const char *arg, size_t len, struct smtp_reply *err);

#endif
