/*
 * outbound/session - client SMTP session state machine (RFC 5321, RFC 3207,
 * RFC 2920, RFC 1870, RFC 6152). Pure: see session.h.
 *
 * Security rules kept here:
 *  - With require_tls, before tls_started() only EHLO, STARTTLS and QUIT
 *    are written: no HELO fallback (a HELO reply cannot offer STARTTLS),
 *    never MAIL/RCPT/DATA. Postfix smtp_proto.c: "When TLS is required we
 *    must never, ever, end up in plain-text mode".
 *  - The 220 to STARTTLS must be the last thing the server sent: any byte
 *    after it was not protected by TLS yet would be read as if it were -
 *    response injection (Exim CVE-2021-38371, EAST Buffering/B_1). The host
 *    fails and the STARTTLS action is never raised.
 *  - After the handshake every capability from before is forgotten and
 *    EHLO is sent again (RFC 3207 §4.2).
 *  - Replies are bounded: OUTBOUND_LINE_MAX per line, SMTP_REPLY_MAX_LINES
 *    per reply; only CRLF ends a line; anything else is a protocol error
 *    that fails the host (OpenSMTPD CVE-2020-8794 was an unbounded
 *    multi-line reply).
 *  - Addresses are checked before they are put in a command: no CR, LF or
 *    other control byte, no angle bracket, at most 254 octets (RFC 5321
 *    §4.5.3.1.3 path limit minus the brackets).
 */
#include "outbound/session.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "smtp/line.h"
#include "smtp/replyparse.h"

#define NO_STARTTLS "Recipient's Mail eXchanger does not offer STARTTLS capability"
#define ADDR_MAX    254
#define REASON_MAX  512

enum state {
	ST_GREETING, /* waiting for the 220 greeting */
	ST_EHLO,     /* EHLO sent before TLS */
	ST_HELO,     /* HELO sent (only without require_tls) */
	ST_STARTTLS, /* STARTTLS sent */
	ST_TLS_WAIT, /* action STARTTLS pending */
	ST_EHLO_TLS, /* EHLO sent inside TLS */
	ST_MAIL,     /* MAIL sent */
	ST_RCPT,     /* RCPT replies being read */
	ST_DATA,     /* DATA sent */
	ST_BODY,     /* action SEND_BODY pending */
	ST_DOT,      /* end of data sent */
	ST_IDLE,     /* transaction over, TLS up, kept open for the next message */
	ST_RSET,     /* RSET sent before the next message on a reused connection */
	ST_FINISHED, /* DONE or CLOSE raised: nothing more is read */
};

static const char *const state_names[] = {
    "greeting", "ehlo", "helo", "starttls", "tls_wait", "ehlo_tls", "mail",
    "rcpt",     "data", "body", "dot",      "idle",     "rset",     "finished",
};

/* what was being waited for, for "timeout waiting for ..." */
static const char *const waiting_for[] = {
    "the greeting",      "the EHLO reply",   "the HELO reply",        "the STARTTLS reply",
    "the TLS handshake", "the EHLO reply",   "the MAIL FROM reply",   "a RCPT TO reply",
    "the DATA reply",    "the message body", "the end-of-data reply", "nothing (idle)",
    "the RSET reply",    "nothing",
};

struct caps {
	bool starttls;
	bool pipelining;
	bool size;
	bool eightbit;
};

struct outbound_session {
	struct outbound_params p; /* strings below are owned copies */
	char *helo_name, *mx_host, *sender;
	char **rcpts;
	bool sender_ok;

	enum state state;
	enum outbound_action action;
	bool tls;
	struct caps caps;     /* of the last complete EHLO reply */
	struct caps new_caps; /* being collected from the current reply */
	struct smtp_reply_parser rp;

	struct outbound_result *res;
	size_t *sent;  /* indices of the recipients whose RCPT was sent, in order */
	size_t n_sent; /* how many RCPT were sent */
	size_t n_read; /* how many RCPT replies were read */
	size_t n_accepted;
	bool pipelined; /* MAIL, RCPTs and DATA went in one write */

	bool host_failed;
	bool host_temporary;
	char host_reason[REASON_MAX];

	struct buf out;
};

static void enter_state(struct outbound_session *s, enum state st)
{
	if (s->state != st)
		log_debug("event=outbound_state sid=%016" PRIx64 " from=%s to=%s", s->p.id,
		          state_names[s->state], state_names[st]);
	s->state = st;
}

static void out_append(struct outbound_session *s, const char *p, size_t n)
{
	buf_append(&s->out, p, n);
}

static void out_cmd(struct outbound_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void out_cmd(struct outbound_session *s, const char *fmt, ...)
{
	char buf[ADDR_MAX + 128];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	/* every argument is checked for length before: truncation is a bug */
	if (n < 0 || (size_t)n >= sizeof(buf))
		fatal("outbound: command too long");
	out_append(s, buf, (size_t)n);
}

/* clean_text - printable ASCII only: replies end up in DSNs and logs */
static void clean_text(char *t)
{
	for (; *t != '\0'; t++) {
		unsigned char c = (unsigned char)*t;
		if (c < 0x20 || c >= 0x7f)
			*t = '?';
	}
}

/* reply_str - "454 4.7.0 TLS not available" */
static void reply_str(const struct smtp_reply *r, char *buf, size_t len)
{
	if (r->enhanced[0] != '\0')
		snprintf(buf, len, "%d %s %s", r->code, r->enhanced, r->text);
	else
		snprintf(buf, len, "%d %s", r->code, r->text);
	clean_text(buf);
	/* no trailing blank when the text is empty */
	for (size_t n = strlen(buf); n > 0 && buf[n - 1] == ' '; n--)
		buf[n - 1] = '\0';
}

/*
 * finish - end the session. Recipients accepted (or not reached) when the
 * host fails are NOT_TRIED: nothing was delivered there.
 */
static void finish(struct outbound_session *s, enum outbound_action a, bool quit)
{
	if (quit)
		out_cmd(s, "QUIT\r\n");
	enter_state(s, ST_FINISHED);
	s->action = a;
}

static void host_fail(struct outbound_session *s, bool temporary, bool quit, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void host_fail(struct outbound_session *s, bool temporary, bool quit, const char *fmt, ...)
{
	va_list ap;
	char esc[REASON_MAX * 4];

	if (s->state == ST_FINISHED)
		return;
	va_start(ap, fmt);
	vsnprintf(s->host_reason, sizeof(s->host_reason), fmt, ap);
	va_end(ap);
	clean_text(s->host_reason);
	s->host_failed = true;
	s->host_temporary = temporary;
	for (size_t i = 0; i < s->p.n_rcpts; i++) {
		if (s->res[i].state != OUTBOUND_RCPT_FAILED &&
		    s->res[i].state != OUTBOUND_RCPT_DEFERRED)
			s->res[i].state = OUTBOUND_RCPT_NOT_TRIED;
		if (s->res[i].state == OUTBOUND_RCPT_NOT_TRIED)
			memset(&s->res[i].reply, 0, sizeof(s->res[i].reply));
	}
	log_info("event=outbound_host_failed sid=%016" PRIx64 " mx=%s state=%s temporary=%s "
	         "reason=\"%s\"",
	         s->p.id, s->mx_host, state_names[s->state], temporary ? "yes" : "no",
	         log_escape(s->host_reason, strlen(s->host_reason), esc, sizeof(esc)));
	finish(s, OUTBOUND_CLOSE, quit);
}

/* addr_ok - safe to put between angle brackets in a command */
static bool addr_ok(const char *a, bool empty_ok)
{
	size_t n = strlen(a);

	if (n == 0)
		return empty_ok;
	if (n > ADDR_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)a[i];
		if (c < 0x20 || c == 0x7f || c == '<' || c == '>')
			return false;
	}
	return true;
}

/* helo_ok - a host name or address literal, nothing that could split a line */
static bool helo_ok(const char *h)
{
	size_t n = h != NULL ? strlen(h) : 0;

	if (n == 0 || n > 255)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)h[i];
		if (c <= 0x20 || c >= 0x7f)
			return false;
	}
	return true;
}

/* free_envelope - the copies of sender and recipients of one transaction */
static void free_envelope(struct outbound_session *s)
{
	for (size_t i = 0; i < s->p.n_rcpts; i++)
		free(s->rcpts[i]);
	free(s->rcpts);
	free(s->res);
	free(s->sent);
	free(s->sender);
	s->rcpts = NULL;
	s->res = NULL;
	s->sent = NULL;
	s->sender = NULL;
}

/*
 * set_envelope - own copies of sender and recipients for one transaction;
 * recipients (or a sender) that cannot be sent are failed here, unsent.
 */
static void set_envelope(struct outbound_session *s, const char *sender, const char *const *rcpts,
                         size_t n_rcpts)
{
	s->p.n_rcpts = n_rcpts;
	s->sender = xstrdup(sender != NULL ? sender : "");
	s->sender_ok = addr_ok(s->sender, true);
	s->rcpts = xcalloc(n_rcpts + 1, sizeof(*s->rcpts));
	s->res = xcalloc(n_rcpts + 1, sizeof(*s->res));
	s->sent = xcalloc(n_rcpts + 1, sizeof(*s->sent));
	for (size_t i = 0; i < n_rcpts; i++) {
		s->rcpts[i] = xstrdup(rcpts[i] != NULL ? rcpts[i] : "");
		if (!addr_ok(s->rcpts[i], false)) {
			s->res[i].state = OUTBOUND_RCPT_FAILED;
			smtp_reply_set(&s->res[i].reply, 553, "5.1.3",
			               "invalid recipient address (not sent)");
		} else if (!s->sender_ok) {
			s->res[i].state = OUTBOUND_RCPT_FAILED;
			smtp_reply_set(&s->res[i].reply, 553, "5.1.7",
			               "invalid sender address (not sent)");
		}
	}
	s->p.sender = s->sender;
	s->p.rcpts = (const char *const *)s->rcpts;
}

struct outbound_session *outbound_session_new(const struct outbound_params *p)
{
	struct outbound_session *s = xcalloc(1, sizeof(*s));

	if (!helo_ok(p->helo_name))
		fatal("outbound_session_new: unusable helo_name");
	s->p = *p;
	s->helo_name = xstrdup(p->helo_name);
	s->mx_host = xstrdup(p->mx_host != NULL ? p->mx_host : "");
	set_envelope(s, p->sender, p->rcpts, p->n_rcpts);
	s->p.helo_name = s->helo_name;
	s->p.mx_host = s->mx_host;
	s->state = ST_GREETING;
	smtp_reply_parser_init(&s->rp);
	return s;
}

bool outbound_session_idle(const struct outbound_session *s)
{
	return s->state == ST_IDLE;
}

int outbound_session_next(struct outbound_session *s, const char *sender, const char *const *rcpts,
                          size_t n_rcpts, uint64_t size, uint64_t id)
{
	if (s->state != ST_IDLE)
		return -1;
	free_envelope(s);
	s->p.size = size;
	s->p.id = id;
	set_envelope(s, sender, rcpts, n_rcpts);
	s->n_sent = s->n_read = s->n_accepted = 0;
	s->action = OUTBOUND_NONE;
	/* RFC 5321 §4.1.1.5: a clean slate before the next transaction */
	out_cmd(s, "RSET\r\n");
	enter_state(s, ST_RSET);
	return 0;
}

void outbound_session_quit(struct outbound_session *s)
{
	if (s->state == ST_IDLE)
		finish(s, OUTBOUND_CLOSE, true);
}

void outbound_session_free(struct outbound_session **sp)
{
	struct outbound_session *s = *sp;

	if (s == NULL)
		return;
	free_envelope(s);
	free(s->helo_name);
	free(s->mx_host);
	buf_free(&s->out);
	free(s);
	*sp = NULL;
}

enum outbound_action outbound_session_action(const struct outbound_session *s)
{
	return s->action;
}

const char *outbound_session_output(const struct outbound_session *s, size_t *len)
{
	*len = s->out.len;
	return s->out.p;
}

void outbound_session_output_clear(struct outbound_session *s)
{
	s->out.len = 0;
}

bool outbound_session_tls_active(const struct outbound_session *s)
{
	return s->tls;
}

const struct outbound_result *outbound_session_result(const struct outbound_session *s, size_t i)
{
	if (i >= s->p.n_rcpts)
		return NULL;
	return &s->res[i];
}

bool outbound_session_host_error(const struct outbound_session *s, const char **reason,
                                 bool *temporary)
{
	if (reason != NULL)
		*reason = s->host_failed ? s->host_reason : NULL;
	if (temporary != NULL)
		*temporary = s->host_failed ? s->host_temporary : false;
	return s->host_failed;
}

/* set_result - a per-recipient verdict from reply r */
static void set_result(struct outbound_session *s, size_t i, const struct smtp_reply *r)
{
	struct outbound_result *res = &s->res[i];

	res->reply = *r;
	clean_text(res->reply.text);
	clean_text(res->reply.enhanced);
	if (r->code >= 200 && r->code < 300)
		res->state = OUTBOUND_RCPT_DELIVERED;
	else if (r->code >= 500)
		res->state = OUTBOUND_RCPT_FAILED;
	else
		res->state = OUTBOUND_RCPT_DEFERRED;
}

static void send_ehlo(struct outbound_session *s, enum state st)
{
	memset(&s->new_caps, 0, sizeof(s->new_caps));
	out_cmd(s, "EHLO %s\r\n", s->helo_name);
	enter_state(s, st);
}

/*
 * quit_done - the transaction is over (or had nothing to do): QUIT, DONE;
 * or, with keep_open and TLS up, DONE without QUIT: the connection may carry
 * the next message to this host (outbound_session_next()).
 */
static void quit_done(struct outbound_session *s)
{
	if (s->p.keep_open && s->tls && !s->host_failed) {
		enter_state(s, ST_IDLE);
		s->action = OUTBOUND_DONE;
		return;
	}
	finish(s, OUTBOUND_DONE, true);
}

static void send_rcpt(struct outbound_session *s, size_t i)
{
	out_cmd(s, "RCPT TO:<%s>\r\n", s->rcpts[i]);
	s->sent[s->n_sent++] = i;
}

/* next_rcpt - the index of the next recipient to send from, or n_rcpts */
static size_t next_rcpt(const struct outbound_session *s, size_t from)
{
	while (from < s->p.n_rcpts && s->res[from].state != OUTBOUND_RCPT_NOT_TRIED)
		from++;
	return from;
}

/*
 * start_transaction - MAIL FROM (with SIZE and BODY when offered), then the
 * RCPTs and DATA: all at once with PIPELINING (RFC 2920 §3.1: DATA may be
 * the last command of a group), else MAIL alone.
 */
static void start_transaction(struct outbound_session *s)
{
	char size[40] = "";
	const char *body = "";
	size_t first = next_rcpt(s, 0);

	if (!s->sender_ok || first == s->p.n_rcpts) {
		/* no recipient can be sent (all refused locally) */
		quit_done(s);
		return;
	}
	if (s->caps.size && s->p.size > 0)
		snprintf(size, sizeof(size), " SIZE=%" PRIu64, s->p.size);
	if (s->caps.eightbit && s->p.body_8bit)
		body = " BODY=8BITMIME";
	out_cmd(s, "MAIL FROM:<%s>%s%s\r\n", s->sender, size, body);
	s->n_sent = s->n_read = s->n_accepted = 0;
	s->pipelined = s->caps.pipelining;
	if (s->pipelined) {
		for (size_t i = first; i < s->p.n_rcpts; i = next_rcpt(s, i + 1))
			send_rcpt(s, i);
		out_cmd(s, "DATA\r\n");
	}
	enter_state(s, ST_MAIL);
}

static void on_greeting(struct outbound_session *s, const struct smtp_reply *r, const char *rs)
{
	if (r->code == 220) {
		send_ehlo(s, ST_EHLO);
		return;
	}
	if (r->code >= 400 && r->code < 600)
		host_fail(s, r->code < 500, true, "MX refused the session: %s", rs);
	else
		host_fail(s, true, false, "protocol error: unexpected greeting from MX: %s", rs);
}

static void on_ehlo(struct outbound_session *s, const struct smtp_reply *r, const char *rs)
{
	if (r->code >= 500 && r->code < 600) {
		/*
		 * EHLO refused: only HELO would be left, and a HELO reply
		 * carries no STARTTLS. With TLS required this is the end.
		 */
		if (s->p.require_tls) {
			host_fail(s, true, true, NO_STARTTLS " (EHLO refused: %s)", rs);
			return;
		}
		out_cmd(s, "HELO %s\r\n", s->helo_name);
		enter_state(s, ST_HELO);
		return;
	}
	if (r->code != 250) {
		host_fail(s, r->code < 500, true, "EHLO refused: %s", rs);
		return;
	}
	s->caps = s->new_caps;
	if (s->caps.starttls) {
		out_cmd(s, "STARTTLS\r\n");
		enter_state(s, ST_STARTTLS);
		return;
	}
	if (s->p.require_tls) {
		host_fail(s, true, true, NO_STARTTLS);
		return;
	}
	start_transaction(s);
}

static void on_helo(struct outbound_session *s, const struct smtp_reply *r, const char *rs)
{
	if (r->code != 250) {
		host_fail(s, r->code < 500, true, "HELO refused: %s", rs);
		return;
	}
	memset(&s->caps, 0, sizeof(s->caps));
	start_transaction(s);
}

static void on_starttls(struct outbound_session *s, const struct smtp_reply *r, const char *rs,
                        size_t rest)
{
	if (r->code != 220) {
		host_fail(s, true, true, "STARTTLS refused by MX: %s", rs);
		return;
	}
	if (rest > 0) {
		/* CVE-2021-38371 class: these bytes would be taken as sent inside TLS */
		log_info("event=outbound_response_injection sid=%016" PRIx64 " mx=%s bytes=%zu",
		         s->p.id, s->mx_host, rest);
		host_fail(s, true, false, "response injection after STARTTLS (bytes after 220)");
		return;
	}
	enter_state(s, ST_TLS_WAIT);
	s->action = OUTBOUND_STARTTLS;
}

void outbound_session_tls_started(struct outbound_session *s)
{
	if (s->state != ST_TLS_WAIT || s->action != OUTBOUND_STARTTLS)
		return;
	/* RFC 3207 §4.2: discard all knowledge obtained before TLS */
	memset(&s->caps, 0, sizeof(s->caps));
	smtp_reply_parser_init(&s->rp);
	s->tls = true;
	s->action = OUTBOUND_NONE;
	send_ehlo(s, ST_EHLO_TLS);
}

void outbound_session_tls_failed(struct outbound_session *s, const char *why)
{
	host_fail(s, true, false, "%s", why != NULL && *why != '\0' ? why : "TLS failure");
}

static void on_ehlo_tls(struct outbound_session *s, const struct smtp_reply *r, const char *rs)
{
	if (r->code != 250) {
		host_fail(s, r->code < 500, true, "EHLO after STARTTLS refused: %s", rs);
		return;
	}
	s->caps = s->new_caps;
	if (s->p.probe) {
		/* strictmx check: everything delivery would prove is proven; no MAIL */
		finish(s, OUTBOUND_DONE, true);
		return;
	}
	start_transaction(s);
}

/* after_rcpts - all RCPT replies are in: DATA, or nothing to send */
static void after_rcpts(struct outbound_session *s)
{
	if (s->pipelined) {
		enter_state(s, ST_DATA); /* DATA was sent with the group */
		return;
	}
	if (s->n_accepted == 0) {
		quit_done(s);
		return;
	}
	out_cmd(s, "DATA\r\n");
	enter_state(s, ST_DATA);
}

static void on_mail(struct outbound_session *s, const struct smtp_reply *r, const char *rs)
{
	if (r->code != 250) {
		/* the pipelined RCPT and DATA replies that follow mean nothing now */
		host_fail(s, r->code < 500, true, "MAIL FROM refused: %s", rs);
		return;
	}
	if (s->pipelined) {
		enter_state(s, ST_RCPT);
		if (s->n_sent == 0)
			after_rcpts(s);
		return;
	}
	send_rcpt(s, next_rcpt(s, 0));
	enter_state(s, ST_RCPT);
}

static void on_rcpt(struct outbound_session *s, const struct smtp_reply *r, const char *rs)
{
	size_t i = s->sent[s->n_read++];

	if (r->code >= 300 && r->code < 400) {
		host_fail(s, true, true, "protocol error: unexpected reply to RCPT TO: %s", rs);
		return;
	}
	if (r->code >= 200 && r->code < 300) {
		s->n_accepted++;
		/* accepted, not delivered: the reply is kept, the state waits */
		s->res[i].reply = *r;
		clean_text(s->res[i].reply.text);
		clean_text(s->res[i].reply.enhanced);
	} else {
		set_result(s, i, r);
	}
	if (s->n_read < s->n_sent)
		return;
	if (!s->pipelined) {
		size_t n = next_rcpt(s, i + 1);
		if (n < s->p.n_rcpts) {
			send_rcpt(s, n);
			return;
		}
	}
	after_rcpts(s);
}

/* accepted_result - the DATA / end-of-data reply applies to every accepted recipient */
static void accepted_result(struct outbound_session *s, const struct smtp_reply *r)
{
	for (size_t k = 0; k < s->n_sent; k++) {
		size_t i = s->sent[k];
		if (s->res[i].state == OUTBOUND_RCPT_NOT_TRIED && s->res[i].reply.code / 100 == 2)
			set_result(s, i, r);
	}
}

static void on_data(struct outbound_session *s, const struct smtp_reply *r, const char *rs)
{
	if (r->code == 354) {
		if (s->n_accepted == 0) {
			/*
			 * Pipelined DATA accepted with no recipient (RFC 2920
			 * §3.1 says it must not be): send an empty message's end.
			 */
			out_cmd(s, ".\r\n");
			quit_done(s);
			return;
		}
		enter_state(s, ST_BODY);
		s->action = OUTBOUND_SEND_BODY;
		return;
	}
	if (r->code < 400) {
		host_fail(s, true, true, "protocol error: unexpected reply to DATA: %s", rs);
		return;
	}
	/* 4xx / 5xx: the transaction ends here for the accepted recipients */
	accepted_result(s, r);
	quit_done(s);
}

void outbound_session_body_done(struct outbound_session *s)
{
	if (s->state != ST_BODY || s->action != OUTBOUND_SEND_BODY)
		return;
	s->action = OUTBOUND_NONE;
	out_cmd(s, ".\r\n");
	enter_state(s, ST_DOT);
}

static void on_dot(struct outbound_session *s, const struct smtp_reply *r, const char *rs)
{
	if (r->code >= 300 && r->code < 400) {
		host_fail(s, true, true, "protocol error: unexpected reply to end of data: %s", rs);
		return;
	}
	accepted_result(s, r);
	log_info("event=outbound_transaction sid=%016" PRIx64 " mx=%s reply=\"%s\"", s->p.id,
	         s->mx_host, rs);
	quit_done(s);
}

static void on_reply(struct outbound_session *s, size_t rest)
{
	struct smtp_reply r = s->rp.r;
	char rs[SMTP_REPLY_TEXT_MAX + 32];

	reply_str(&r, rs, sizeof(rs));
	smtp_reply_parser_init(&s->rp);
	if (r.code == 421) {
		/* RFC 5321 §3.8: the server is closing; no QUIT */
		if (s->state == ST_STARTTLS)
			host_fail(s, true, false, "STARTTLS refused by MX: %s", rs);
		else
			host_fail(s, true, false, "MX closed the session: %s", rs);
		return;
	}
	switch (s->state) {
	case ST_GREETING:
		on_greeting(s, &r, rs);
		break;
	case ST_EHLO:
		on_ehlo(s, &r, rs);
		break;
	case ST_HELO:
		on_helo(s, &r, rs);
		break;
	case ST_STARTTLS:
		on_starttls(s, &r, rs, rest);
		break;
	case ST_EHLO_TLS:
		on_ehlo_tls(s, &r, rs);
		break;
	case ST_MAIL:
		on_mail(s, &r, rs);
		break;
	case ST_RCPT:
		on_rcpt(s, &r, rs);
		break;
	case ST_DATA:
		on_data(s, &r, rs);
		break;
	case ST_DOT:
		on_dot(s, &r, rs);
		break;
	case ST_RSET:
		if (r.code == 250)
			start_transaction(s);
		else
			host_fail(s, true, true, "RSET refused on a reused connection: %s", rs);
		break;
	case ST_IDLE:
		host_fail(s, true, true, "protocol error: reply while idle: %s", rs);
		break;
	case ST_TLS_WAIT:
	case ST_BODY:
	case ST_FINISHED:
		break;
	}
}

/* ehlo_keyword - collect the capabilities we use from one EHLO line's text */
static void ehlo_keyword(struct caps *c, const char *t, size_t n)
{
	size_t k = 0;

	while (k < n && t[k] != ' ')
		k++;
	if (k == 8 && strncasecmp(t, "STARTTLS", 8) == 0)
		c->starttls = true;
	else if (k == 10 && strncasecmp(t, "PIPELINING", 10) == 0)
		c->pipelining = true;
	else if (k == 4 && strncasecmp(t, "SIZE", 4) == 0)
		c->size = true;
	else if (k == 8 && strncasecmp(t, "8BITMIME", 8) == 0)
		c->eightbit = true;
}

/* one complete reply line; rest = bytes that follow it in this input */
static void on_line(struct outbound_session *s, const char *line, size_t len, size_t rest)
{
	enum smtp_rp_status st = smtp_reply_parser_line(&s->rp, line, len);

	if (st == SMTP_RP_ERROR) {
		if (s->rp.lines >= SMTP_REPLY_MAX_LINES)
			host_fail(
			    s, true, false,
			    "protocol error: reply of more than %d lines while waiting for %s",
			    SMTP_REPLY_MAX_LINES, waiting_for[s->state]);
		else
			host_fail(s, true, false,
			          "protocol error: malformed reply line while waiting for %s",
			          waiting_for[s->state]);
		return;
	}
	/* the first line of an EHLO reply is the server's name, then keywords */
	if ((s->state == ST_EHLO || s->state == ST_EHLO_TLS) && s->rp.lines > 1 && len > 4)
		ehlo_keyword(&s->new_caps, line + 4, len - 4);
	if (st == SMTP_RP_DONE)
		on_reply(s, rest);
}

size_t outbound_session_input(struct outbound_session *s, const char *buf, size_t len)
{
	size_t used = 0;

	while (used < len && s->action == OUTBOUND_NONE && s->state != ST_FINISHED) {
		size_t line_len = 0, consumed = 0;
		enum smtp_line_status st =
		    smtp_line_next(buf + used, len - used, OUTBOUND_LINE_MAX, &line_len, &consumed);

		switch (st) {
		case SMTP_LINE_NEED_MORE:
			return used;
		case SMTP_LINE_OK:
			used += consumed;
			on_line(s, buf + used - consumed, line_len, len - used);
			break;
		case SMTP_LINE_BARE_LF:
		case SMTP_LINE_BARE_CR:
		case SMTP_LINE_NUL:
			host_fail(s, true, false,
			          "protocol error: %s in a reply while waiting for %s",
			          st == SMTP_LINE_BARE_LF   ? "bare <LF>"
			          : st == SMTP_LINE_BARE_CR ? "bare <CR>"
			                                    : "NUL",
			          waiting_for[s->state]);
			return len;
		case SMTP_LINE_TOO_LONG:
			host_fail(
			    s, true, false,
			    "protocol error: reply line longer than %d octets while waiting for %s",
			    OUTBOUND_LINE_MAX, waiting_for[s->state]);
			return len;
		}
	}
	return used;
}

void outbound_session_timeout(struct outbound_session *s)
{
	if (s->state == ST_FINISHED)
		return;
	host_fail(s, true, false, "timeout while waiting for %s", waiting_for[s->state]);
}

void outbound_session_eof(struct outbound_session *s)
{
	if (s->state == ST_FINISHED)
		return;
	host_fail(s, true, false, "MX closed the connection while waiting for %s",
	          waiting_for[s->state]);
}

/* --- body canonicalization ---------------------------------------------- */

void outbound_stuffer_init(struct outbound_stuffer *st)
{
	st->mid_line = false;
	st->pending_cr = false;
	st->line_len = 0;
	st->too_long = false;
}

size_t outbound_body_stuff(struct outbound_stuffer *st, const char *in, size_t len, char *out,
                           size_t outcap)
{
	size_t o = 0;

	if (outcap < OUTBOUND_STUFF_MAX(len))
		fatal("outbound_body_stuff: output buffer too small");
	for (size_t i = 0; i < len; i++) {
		char c = in[i];

		if (c == '\0')
			continue; /* RFC 6152 §3; see session.h */
		if (st->pending_cr) {
			/* the CR is written: complete it to CRLF either way */
			out[o++] = '\n';
			st->pending_cr = false;
			st->mid_line = false;
			st->line_len = 0;
			if (c == '\n')
				continue;
		}
		if (c == '\r') {
			out[o++] = '\r';
			st->pending_cr = true;
			continue;
		}
		if (c == '\n') { /* bare LF */
			out[o++] = '\r';
			out[o++] = '\n';
			st->mid_line = false;
			st->line_len = 0;
			continue;
		}
		if (c == '.' && !st->mid_line)
			out[o++] = '.'; /* RFC 5321 §4.5.2 */
		out[o++] = c;
		st->mid_line = true;
		if (++st->line_len > OUTBOUND_BODY_LINE_MAX)
			st->too_long = true;
	}
	return o;
}

size_t outbound_body_stuff_end(struct outbound_stuffer *st, char *out, size_t outcap)
{
	size_t o = 0;

	if (outcap < 2)
		fatal("outbound_body_stuff_end: output buffer too small");
	if (st->pending_cr) {
		out[o++] = '\n';
	} else if (st->mid_line) {
		out[o++] = '\r';
		out[o++] = '\n';
	}
	st->pending_cr = false;
	st->mid_line = false;
	st->line_len = 0;
	return o;
}
