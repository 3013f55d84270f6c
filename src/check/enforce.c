/*
 * check/enforce - the plaintext MAIL FROM probe; see enforce.h.
 *
 * A 530 (RFC 3207 §4: "530 5.7.0 Must issue a STARTTLS command first") or
 * another 5xx that names STARTTLS/TLS means the MX refuses mail without TLS;
 * a 2xx means it would take it. Replies are bounded as in outbound/session.
 */
#include "check/enforce.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/buf.h"
#include "common/xmalloc.h"
#include "smtp/line.h"
#include "smtp/replyparse.h"

#define LINE_MAX_ 2048

enum state { ST_GREETING, ST_EHLO, ST_HELO, ST_MAIL, ST_RSET, ST_DONE };

static const char *const waiting_for[] = {
    "the greeting",        "the EHLO reply", "the HELO reply",
    "the MAIL FROM reply", "the RSET reply", "nothing",
};

struct check_enforce_session {
	char *helo;
	enum state state;
	struct smtp_reply_parser rp;
	struct buf out;
	enum check_enforce result;
	char reply[420];
	char error[300];
};

struct check_enforce_session *check_enforce_new(const char *helo_name)
{
	struct check_enforce_session *s = xcalloc(1, sizeof(*s));

	s->helo = xstrdup(helo_name != NULL && *helo_name ? helo_name : "localhost");
	for (char *p = s->helo; *p; p++)
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
			*p = '-';
	smtp_reply_parser_init(&s->rp);
	return s;
}

void check_enforce_free(struct check_enforce_session **sp)
{
	struct check_enforce_session *s = *sp;

	if (s == NULL)
		return;
	free(s->helo);
	buf_free(&s->out);
	free(s);
	*sp = NULL;
}

static void out_str(struct check_enforce_session *s, const char *a, const char *b)
{
	buf_append(&s->out, a, strlen(a));
	if (b != NULL) {
		buf_append(&s->out, b, strlen(b));
		buf_append(&s->out, "\r\n", 2);
	}
}

static void clean(char *t)
{
	for (; *t; t++)
		if ((unsigned char)*t < 0x20 || (unsigned char)*t >= 0x7f)
			*t = '?';
}

static void reply_str(const struct smtp_reply *r, char *buf, size_t len)
{
	if (r->enhanced[0])
		snprintf(buf, len, "%d %s %s", r->code, r->enhanced, r->text);
	else
		snprintf(buf, len, "%d %s", r->code, r->text);
	clean(buf);
	for (size_t n = strlen(buf); n > 0 && buf[n - 1] == ' '; n--)
		buf[n - 1] = '\0';
}

static void fail(struct check_enforce_session *s, bool quit, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(struct check_enforce_session *s, bool quit, const char *fmt, ...)
{
	va_list ap;

	if (s->state == ST_DONE)
		return;
	if (s->result == CHECK_ENFORCE_NOT_RUN) {
		s->result = CHECK_ENFORCE_ERROR;
		va_start(ap, fmt);
		vsnprintf(s->error, sizeof(s->error), fmt, ap);
		va_end(ap);
		clean(s->error);
	}
	if (quit)
		out_str(s, "QUIT\r\n", NULL);
	s->state = ST_DONE;
}

static bool names_tls(const char *t)
{
	return strcasestr(t, "STARTTLS") != NULL || strcasestr(t, "TLS") != NULL;
}

static void on_reply(struct check_enforce_session *s)
{
	struct smtp_reply r = s->rp.r;
	char rs[SMTP_REPLY_TEXT_MAX + 32];

	reply_str(&r, rs, sizeof(rs));
	smtp_reply_parser_init(&s->rp);
	if (r.code == 421 && s->state != ST_MAIL) {
		fail(s, false, "MX closed the session: %s", rs);
		return;
	}
	switch (s->state) {
	case ST_GREETING:
		if (r.code != 220) {
			fail(s, true, "MX refused the session: %s", rs);
			return;
		}
		out_str(s, "EHLO ", s->helo);
		s->state = ST_EHLO;
		return;
	case ST_EHLO:
		if (r.code >= 500 && r.code < 600) {
			out_str(s, "HELO ", s->helo);
			s->state = ST_HELO;
			return;
		}
		/* fall through */
	case ST_HELO:
		if (r.code != 250) {
			fail(s, true, "EHLO/HELO refused: %s", rs);
			return;
		}
		out_str(s, "MAIL FROM:<>\r\n", NULL);
		s->state = ST_MAIL;
		return;
	case ST_MAIL:
		snprintf(s->reply, sizeof(s->reply), "%.400s", rs);
		if (r.code == 530 || (r.code >= 500 && names_tls(r.text)))
			s->result = CHECK_ENFORCE_YES;
		else if (r.code >= 200 && r.code < 300)
			s->result = CHECK_ENFORCE_NO;
		else
			s->result = CHECK_ENFORCE_UNCLEAR;
		if (r.code == 421) {
			s->state = ST_DONE;
			return;
		}
		/* the issue asks for RSET then QUIT; never RCPT or DATA */
		out_str(s, "RSET\r\n", NULL);
		s->state = ST_RSET;
		return;
	case ST_RSET:
		out_str(s, "QUIT\r\n", NULL);
		s->state = ST_DONE;
		return;
	case ST_DONE:
		return;
	}
}

size_t check_enforce_input(struct check_enforce_session *s, const char *buf, size_t len)
{
	size_t used = 0;

	while (used < len && s->state != ST_DONE) {
		size_t line_len = 0, consumed = 0;
		enum smtp_line_status st =
		    smtp_line_next(buf + used, len - used, LINE_MAX_, &line_len, &consumed);

		switch (st) {
		case SMTP_LINE_NEED_MORE:
			return used;
		case SMTP_LINE_OK: {
			enum smtp_rp_status rs =
			    smtp_reply_parser_line(&s->rp, buf + used, line_len);
			used += consumed;
			if (rs == SMTP_RP_ERROR)
				fail(s, false,
				     "protocol error: malformed reply while waiting for %s",
				     waiting_for[s->state]);
			else if (rs == SMTP_RP_DONE)
				on_reply(s);
			break;
		}
		default:
			fail(s, false, "protocol error: malformed reply line while waiting for %s",
			     waiting_for[s->state]);
			return len;
		}
	}
	return used;
}

const char *check_enforce_output(const struct check_enforce_session *s, size_t *len)
{
	*len = s->out.len;
	return s->out.p;
}

void check_enforce_output_clear(struct check_enforce_session *s)
{
	s->out.len = 0;
}

bool check_enforce_done(const struct check_enforce_session *s)
{
	return s->state == ST_DONE;
}

void check_enforce_timeout(struct check_enforce_session *s)
{
	fail(s, false, "timeout while waiting for %s", waiting_for[s->state]);
}

void check_enforce_eof(struct check_enforce_session *s)
{
	fail(s, false, "MX closed the connection while waiting for %s", waiting_for[s->state]);
}

enum check_enforce check_enforce_result(const struct check_enforce_session *s, const char **reply,
                                        const char **error)
{
	if (reply != NULL)
		*reply = s->reply;
	if (error != NULL)
		*error = s->error;
	return s->result;
}
