/*
 * inbound/session - server SMTP session state machine (RFC 5321, RFC 3207,
 * RFC 2920, RFC 3030). Pure: see session.h.
 *
 * Security rules kept here:
 *  - require_tls: MAIL, RCPT, DATA, BDAT, AUTH and VRFY get exactly
 *    "530 5.7.0 Must issue a STARTTLS command first" before TLS.
 *  - STARTTLS is the last command of its read: bytes after it are a command
 *    injection attempt (CVE-2011-0411) and end the session; after the
 *    handshake every piece of state from before is forgotten (RFC 3207 §4.2).
 *  - Only CRLF ends a line and only CRLF.CRLF ends DATA; a bare CR, bare LF
 *    or NUL refuses the message after reading to the real end of DATA, then
 *    closes (SMTP smuggling; like Postfix smtpd_forbid_bare_newline=reject).
 *  - Content sent before our 354 is a synchronization error (RFC 2920 §3.1:
 *    DATA is the last command of a pipelined group).
 */
#include "inbound/session.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/qid.h"
#include "common/xmalloc.h"
#include "delivery/maildir.h"
#include "smtp/data.h"
#include "smtp/line.h"

#define MUST_STARTTLS "Must issue a STARTTLS command first"

enum state {
	ST_CMD,      /* reading command lines */
	ST_SKIPLINE, /* discarding the rest of an over-long command line */
	ST_DATA,     /* reading DATA content up to CRLF.CRLF */
	ST_BDAT,     /* reading a BDAT chunk of known size */
	ST_WAIT,     /* an action is pending (STARTTLS, STORE) */
	ST_CLOSED,   /* nothing more is read */
};

struct tx {
	bool active; /* MAIL accepted */
	struct smtp_path from;
	struct smtp_mail_params params;
	struct smtp_path *rcpts;
	size_t n_rcpts, cap_rcpts;
	bool used_bdat;
	bool used_data;
	bool failed;    /* BDAT: an error; chunks are discarded until LAST/RSET */
	bool sink_open; /* content is going to the sink */
	bool too_big;   /* over size_max: content no longer written */
	uint64_t size;  /* content octets given to the sink */
	/* the client's header block (up to the first empty line), for header_max */
	uint64_t hdr_size;
	size_t hdr_line; /* octets of the current header line before its LF */
	char hdr_last;   /* the last octet seen, across pieces */
	bool hdr_done;   /* the empty line was seen, or the limit was passed */
	bool hdr_too_big;
	struct smtp_data dec;
	unsigned number; /* transaction number in this session */
};

struct inbound_session {
	struct inbound_params p;
	enum state state;
	enum inbound_action action;
	bool tls;
	char tls_desc[128];
	bool helo_done;
	bool esmtp;
	char helo[256];
	size_t errors;
	uint64_t content_rx; /* DATA/BDAT octets read, for the I/O layer's rate check */
	unsigned tx_count;
	struct tx tx;
	/* BDAT chunk in progress */
	uint64_t bdat_left;
	uint64_t bdat_size; /* of the chunk in progress, for its reply (RFC 3030 §2) */
	bool bdat_last;
	bool bdat_discard;            /* the chunk is read and thrown away */
	struct smtp_reply bdat_reply; /* reply decided for a discarded chunk */
	int skip_cr;
	char queue_id[40];
	/* output */
	struct buf out;
	/* replies held back during INBOUND_DELAY; everything after them waits too,
	 * so the order of replies is kept */
	struct buf held;
};

static const char *const state_names[] = {"cmd", "skipline", "data", "bdat", "wait", "closed"};

static void enter_state(struct inbound_session *s, enum state st)
{
	if (s->state != st)
		log_debug("event=state sid=%016" PRIx64 " from=%s to=%s", s->p.id,
		          state_names[s->state], state_names[st]);
	s->state = st;
}

static void out_append(struct inbound_session *s, const char *p, size_t n)
{
	buf_append(&s->out, p, n);
}

static void send_reply(struct inbound_session *s, const struct smtp_reply *r)
{
	char buf[SMTP_REPLY_TEXT_MAX + 32];
	size_t n = smtp_reply_format(r, buf, sizeof(buf));
	if (s->held.len) /* behind a delayed reply */
		buf_append(&s->held, buf, n);
	else
		out_append(s, buf, n);
}

/* release_held - replies held for a delay go out now, in order */
static void release_held(struct inbound_session *s)
{
	if (s->held.len) {
		out_append(s, s->held.p, s->held.len);
		s->held.len = 0;
	}
}

static void close_session(struct inbound_session *s)
{
	release_held(s); /* no tarpit for a session that ends */
	enter_state(s, ST_CLOSED);
	s->action = INBOUND_CLOSE;
}

/*
 * reply_r - queue one reply; errors (4xx/5xx) are counted, and at errors_max
 * the session ends with 421 (RFC 5321 §4.2.2: 421 before closing). Past
 * errors_delay_after errors, an error reply is held and INBOUND_DELAY raised:
 * the I/O layer sends it after a pause, and reads nothing meanwhile (the
 * tarpit of Postfix's smtpd_soft_error_limit / smtpd_error_sleep_time). The
 * reply that reaches errors_max is not delayed: the 421 follows at once.
 */
static void reply_r(struct inbound_session *s, const struct smtp_reply *r)
{
	bool error = r->code >= 400 && r->code != 421 && s->state != ST_CLOSED;
	if (error)
		s->errors++;
	if (error && s->errors < s->p.errors_max && s->p.errors_delay_after &&
	    s->errors > s->p.errors_delay_after && s->action == INBOUND_NONE) {
		char buf[SMTP_REPLY_TEXT_MAX + 32];
		size_t n = smtp_reply_format(r, buf, sizeof(buf));
		buf_append(&s->held, buf, n);
		s->action = INBOUND_DELAY;
		log_debug("event=error_delay sid=%016" PRIx64 " errors=%zu", s->p.id, s->errors);
		return;
	}
	send_reply(s, r);
	if (error && s->errors >= s->p.errors_max) {
		log_info("event=too_many_errors sid=%016" PRIx64 " errors=%zu", s->p.id, s->errors);
		struct smtp_reply bye;
		smtp_reply_set(&bye, 421, "4.7.0", "%s Error: too many errors", s->p.hostname);
		send_reply(s, &bye);
		close_session(s);
	}
}

void inbound_session_delay_done(struct inbound_session *s)
{
	if (s->action != INBOUND_DELAY)
		return;
	s->action = INBOUND_NONE;
	release_held(s);
}

uint64_t inbound_session_content_octets(const struct inbound_session *s)
{
	return s->content_rx;
}

static void reply(struct inbound_session *s, int code, const char *enh, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void reply(struct inbound_session *s, int code, const char *enh, const char *fmt, ...)
{
	struct smtp_reply r;
	va_list ap;
	va_start(ap, fmt);
	smtp_reply_vset(&r, code, enh, fmt, ap);
	va_end(ap);
	reply_r(s, &r);
}

static void tx_reset(struct inbound_session *s)
{
	if (s->tx.sink_open && s->p.sink.abort)
		s->p.sink.abort(s->p.sink.ctx);
	free(s->tx.rcpts);
	memset(&s->tx, 0, sizeof(s->tx));
}

struct inbound_session *inbound_session_new(const struct inbound_params *p)
{
	struct inbound_session *s = xcalloc(1, sizeof(*s));
	s->p = *p;
	s->state = ST_CMD;
	return s;
}

void inbound_session_free(struct inbound_session **sp)
{
	struct inbound_session *s = *sp;
	if (s == NULL)
		return;
	tx_reset(s);
	buf_free(&s->out);
	buf_free(&s->held);
	free(s);
	*sp = NULL;
}

void inbound_session_greet(struct inbound_session *s)
{
	reply(s, 220, "", "%s ESMTP strictmx", s->p.hostname);
}

enum inbound_action inbound_session_action(const struct inbound_session *s)
{
	return s->action;
}

const char *inbound_session_output(const struct inbound_session *s, size_t *len)
{
	*len = s->out.len;
	return s->out.p;
}

void inbound_session_output_clear(struct inbound_session *s)
{
	s->out.len = 0;
}

bool inbound_session_in_data(const struct inbound_session *s)
{
	return s->state == ST_DATA || s->state == ST_BDAT;
}

void inbound_session_timeout(struct inbound_session *s)
{
	if (s->state == ST_CLOSED)
		return;
	tx_reset(s);
	reply(s, 421, "4.4.2", "%s Error: timeout exceeded", s->p.hostname);
	close_session(s);
}

static void must_starttls(struct inbound_session *s)
{
	if (s->p.info_url && *s->p.info_url)
		reply(s, 530, "5.7.0", MUST_STARTTLS " (see %s)", s->p.info_url);
	else
		reply(s, 530, "5.7.0", MUST_STARTTLS);
}

/* tls_gate - true when the command may not run yet (530 sent) */
static bool tls_gate(struct inbound_session *s)
{
	if (s->p.require_tls && !s->tls) {
		must_starttls(s);
		return true;
	}
	return false;
}

/* A HELO name that is not a domain or address literal is still taken when it
 * is one printable word (as Postfix does by default): clients with names
 * like "my_host" are common. It never contains what could break Received:. */
static bool helo_acceptable(const char *arg, size_t len)
{
	struct smtp_reply err;
	if (len == 0 || len > 255)
		return false;
	if (smtp_parse_helo(arg, len, &err) == 0)
		return true;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)arg[i];
		if (c < 0x21 || c > 0x7e || c == '(' || c == ')' || c == ';')
			return false;
	}
	return true;
}

static void cmd_helo(struct inbound_session *s, const struct smtp_cmd *c, bool esmtp)
{
	if (!helo_acceptable(c->arg, c->arg_len)) {
		reply(s, 501, "5.5.4", "Syntax: %s hostname", esmtp ? "EHLO" : "HELO");
		return;
	}
	tx_reset(s);
	memcpy(s->helo, c->arg, c->arg_len);
	s->helo[c->arg_len] = '\0';
	s->helo_done = true;
	s->esmtp = esmtp;
	if (!esmtp) {
		reply(s, 250, "", "%s", s->p.hostname);
		return;
	}
	char buf[1024];
	int n = snprintf(buf, sizeof(buf),
	                 "250-%s\r\n250-PIPELINING\r\n250-SIZE %" PRIu64
	                 "\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n%s"
	                 "250 ENHANCEDSTATUSCODES\r\n",
	                 s->p.hostname, s->p.size_max,
	                 (!s->tls && s->p.tls_available) ? "250-STARTTLS\r\n" : "");
	out_append(s, buf, (size_t)n);
}

static void cmd_starttls(struct inbound_session *s, const struct smtp_cmd *c, size_t rest)
{
	if (c->arg_len) {
		reply(s, 501, "5.5.4", "Syntax: STARTTLS");
		return;
	}
	if (s->tls) {
		reply(s, 503, "5.5.1", "Error: TLS already active");
		return;
	}
	if (!s->p.tls_available) {
		reply(s, 454, "4.7.0", "TLS not available due to local problem");
		return;
	}
	if (rest > 0) {
		/* CVE-2011-0411: whatever follows STARTTLS in the same read would be
		 * taken as if it had come over TLS. Never execute it. */
		log_info("event=starttls_injection sid=%016" PRIx64 " bytes=%zu", s->p.id, rest);
		reply(s, 554, "5.5.0", "Error: command pipelined after STARTTLS; closing");
		close_session(s);
		return;
	}
	tx_reset(s);
	reply(s, 220, "2.0.0", "Ready to start TLS");
	enter_state(s, ST_WAIT);
	s->action = INBOUND_STARTTLS;
}

void inbound_session_tls_started(struct inbound_session *s, const char *desc)
{
	/* RFC 3207 §4.2: discard all knowledge obtained from the client */
	tx_reset(s);
	s->helo_done = false;
	s->esmtp = false;
	s->helo[0] = '\0';
	s->tls = true;
	snprintf(s->tls_desc, sizeof(s->tls_desc), "%s", desc ? desc : "");
	s->action = INBOUND_NONE;
	enter_state(s, ST_CMD);
}

bool inbound_session_local_rcpt(const struct strlist *local_domains, const struct smtp_path *p,
                                char *user, size_t userlen, char *domain, size_t domainlen)
{
	const char *dom = p->domain;
	if (*dom == '\0') { /* <Postmaster> (RFC 5321 §4.5.1) */
		if (local_domains->n == 0)
			return false;
		dom = local_domains->v[0];
	}
	size_t dl = strlen(dom);
	if (dl && dom[dl - 1] == '.')
		dl--;
	if (dl == 0 || dl >= domainlen)
		return false;
	for (size_t i = 0; i < dl; i++)
		domain[i] = (char)tolower((unsigned char)dom[i]);
	domain[dl] = '\0';
	if (!strlist_contains_ci(local_domains, domain))
		return false;
	size_t ul = strlen(p->local);
	if (ul >= userlen)
		ul = userlen - 1;
	for (size_t i = 0; i < ul; i++)
		user[i] = (char)tolower((unsigned char)p->local[i]);
	user[ul] = '\0';
	return true;
}

static void cmd_mail(struct inbound_session *s, const struct smtp_cmd *c)
{
	struct smtp_reply err;
	if (tls_gate(s))
		return;
	if (!s->helo_done) {
		reply(s, 503, "5.5.1", "Error: send HELO/EHLO first");
		return;
	}
	if (s->tx.active) {
		reply(s, 503, "5.5.1", "Error: nested MAIL command");
		return;
	}
	tx_reset(s);
	if (smtp_parse_mail(c->arg, c->arg_len, s->p.size_max, &s->tx.from, &s->tx.params, &err) <
	    0) {
		reply_r(s, &err);
		return;
	}
	if (s->p.sink.space && s->p.sink.space(s->p.sink.ctx, s->tx.params.size) < 0) {
		/* RFC 5321 4.5.3.1.10 / Postfix: not enough room in the queue */
		tx_reset(s);
		reply(s, 452, "4.3.1", "Error: insufficient system storage");
		return;
	}
	s->tx.active = true;
	s->tx.number = ++s->tx_count;
	reply(s, 250, "2.1.0", "Ok");
}

static void cmd_rcpt(struct inbound_session *s, const struct smtp_cmd *c)
{
	struct smtp_reply err;
	struct smtp_path path;
	char user[SMTP_LOCAL_MAX * 2 + 3], domain[SMTP_DOMAIN_MAX + 1];

	if (tls_gate(s))
		return;
	if (!s->tx.active) {
		reply(s, 503, "5.5.1", "Error: need MAIL command");
		return;
	}
	if (s->tx.used_bdat) {
		reply(s, 503, "5.5.1", "Error: RCPT after BDAT");
		return;
	}
	if (smtp_parse_rcpt(c->arg, c->arg_len, s->tx.params.smtputf8, &path, &err) < 0) {
		reply_r(s, &err);
		return;
	}
	if (s->tx.n_rcpts >= s->p.rcpt_max) {
		reply(s, 452, "4.5.3", "Error: too many recipients");
		return;
	}
	bool local = inbound_session_local_rcpt(s->p.local_domains, &path, user, sizeof(user),
	                                        domain, sizeof(domain));
	if (!local && (!s->p.relay_allowed || path.domain[0] == '\0')) {
		reply(s, 554, "5.7.1", "<%s>: Relay access denied", path.addr);
		return;
	}
	if (local && !maildir_user_ok(user)) {
		reply(s, 550, "5.1.1", "<%s>: Recipient address rejected: no such local mailbox",
		      path.addr);
		return;
	}
	for (size_t i = 0; i < s->tx.n_rcpts; i++)
		if (strcasecmp(s->tx.rcpts[i].addr, path.addr) == 0) {
			reply(s, 250, "2.1.5", "Ok");
			return; /* a duplicate is delivered once */
		}
	if (s->tx.n_rcpts == s->tx.cap_rcpts) {
		/* doubling: growing by one copied ~320 MB per 1000 recipients */
		s->tx.cap_rcpts = s->tx.cap_rcpts ? 2 * s->tx.cap_rcpts : 8;
		s->tx.rcpts = xrealloc(s->tx.rcpts, s->tx.cap_rcpts * sizeof(*s->tx.rcpts));
	}
	s->tx.rcpts[s->tx.n_rcpts++] = path;
	reply(s, 250, "2.1.5", "Ok");
}

static void sink_write(struct inbound_session *s, const void *p, size_t n)
{
	if (!s->tx.sink_open || s->tx.too_big || s->tx.hdr_too_big)
		return;
	if (s->tx.size + n > s->p.size_max) {
		s->tx.too_big = true;
		return;
	}
	s->tx.size += n;
	s->p.sink.write(s->p.sink.ctx, p, n);
}

/*
 * header_scan - measure the client's header block: every line up to the
 * first empty one (RFC 5322 §2.1). Past header_max the message is refused
 * at its end and nothing more of it is written.
 */
static void header_scan(struct inbound_session *s, const char *p, size_t n)
{
	struct tx *t = &s->tx;
	if (t->hdr_done || s->p.header_max == 0)
		return;
	for (size_t i = 0; i < n; i++) {
		char c = p[i];
		if (c == '\n' && t->hdr_line == 1 && t->hdr_last == '\r') {
			t->hdr_done = true; /* the empty line: not part of the header */
			return;
		}
		t->hdr_size++;
		if (c == '\n') {
			t->hdr_line = 0;
		} else {
			t->hdr_line++;
			if (t->hdr_line == 1 && c != '\r')
				t->hdr_line = 2; /* a line with text: never the empty line */
		}
		t->hdr_last = c;
		if (t->hdr_size > s->p.header_max) {
			t->hdr_too_big = true;
			t->hdr_done = true;
			return;
		}
	}
}

static void emit_content(void *ctx, const void *p, size_t n)
{
	struct inbound_session *s = ctx;
	header_scan(s, p, n);
	sink_write(s, p, n);
}

/* RFC 5322 date, in UTC, for the Received: header */
static void rfc5322_date(char *buf, size_t len)
{
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(buf, len, "%a, %d %b %Y %H:%M:%S +0000", &tm);
}

/*
 * begin_content - open the sink and write our Received: header (RFC 5321
 * §4.4; "with" protocol names from RFC 3848; the TLS clause as Postfix
 * writes it, so existing tools that read it keep working).
 */
static bool begin_content(struct inbound_session *s)
{
	if (s->p.sink.begin(s->p.sink.ctx) < 0)
		return false;
	s->tx.sink_open = true;
	qid_new(s->queue_id);
	char date[64], hdr[1200], tlsline[200] = "";
	rfc5322_date(date, sizeof(date));
	if (s->tls)
		snprintf(tlsline, sizeof(tlsline), "\r\n\t(using %s)", s->tls_desc);
	const char *proto = s->esmtp ? (s->tls ? "ESMTPS" : "ESMTP") : (s->tls ? "SMTPS" : "SMTP");
	char forclause[SMTP_PATH_MAX + 16] = "";
	if (s->tx.n_rcpts == 1)
		snprintf(forclause, sizeof(forclause), "\r\n\tfor <%s>", s->tx.rcpts[0].addr);
	int n = snprintf(
	    hdr, sizeof(hdr),
	    "Received: from %s ([%s])%s\r\n\tby %s (strictmx) with %s id %s%s;\r\n\t%s\r\n",
	    s->helo, s->p.peer_ip ? s->p.peer_ip : "unknown", tlsline, s->p.hostname, proto,
	    s->queue_id, forclause, date);
	if (n > 0 && (size_t)n < sizeof(hdr))
		sink_write(s, hdr, (size_t)n);
	return true;
}

/* content_check - after the end of the content: the verdict (0 = store) */
static int content_check(struct inbound_session *s)
{
	const struct smtp_data *d = &s->tx.dec;
	if (d->bare_lf || d->bare_cr) {
		const char *what = d->bare_lf ? "LF" : "CR"; /* tx_reset clears d */
		log_info("event=reject sid=%016" PRIx64 " reason=bare_%s", s->p.id,
		         d->bare_lf ? "lf" : "cr");
		tx_reset(s);
		reply(s, 550, "5.5.2", "Error: bare <%s> received", what);
		close_session(s);
		return -1;
	}
	if (d->nul) {
		log_info("event=reject sid=%016" PRIx64 " reason=nul", s->p.id);
		tx_reset(s);
		reply(s, 550, "5.6.0", "Error: NUL character in message");
		close_session(s);
		return -1;
	}
	if (s->tx.too_big) {
		tx_reset(s);
		reply(s, 552, "5.3.4", "Error: message too big (limit %" PRIu64 " octets)",
		      s->p.size_max);
		return -1;
	}
	if (s->tx.hdr_too_big) {
		log_info("event=reject sid=%016" PRIx64 " reason=header_too_big limit=%" PRIu64,
		         s->p.id, s->p.header_max);
		tx_reset(s);
		reply(s, 552, "5.3.4", "Error: message header too big (limit %" PRIu64 " octets)",
		      s->p.header_max);
		return -1;
	}
	if (d->long_line) {
		tx_reset(s);
		reply(s, 550, "5.6.0",
		      "Error: message has a line longer than %zu octets (RFC 5321 4.5.3.1.6)",
		      s->p.text_line_max);
		return -1;
	}
	return 0;
}

static void start_store(struct inbound_session *s)
{
	enter_state(s, ST_WAIT);
	s->action = INBOUND_STORE;
}

static void cmd_data(struct inbound_session *s, const struct smtp_cmd *c, size_t rest)
{
	if (tls_gate(s))
		return;
	if (c->arg_len) {
		reply(s, 501, "5.5.4", "Syntax: DATA");
		return;
	}
	if (s->tx.used_bdat) { /* RFC 3030 §2: 503, the transaction is kept */
		reply(s, 503, "5.5.1", "Error: DATA after BDAT");
		return;
	}
	if (rest > 0) {
		/* RFC 2920 §3.1: DATA ends a pipelined group; content before our 354
		 * is a client that does not wait (the smtpsmug "pipelining" case).
		 * This comes before the checks that refuse DATA (no MAIL, no valid
		 * recipient): a client whose MAIL or every RCPT was refused still
		 * sends its content, which must never run as commands. */
		log_info("event=reject sid=%016" PRIx64 " reason=pipelined_data bytes=%zu", s->p.id,
		         rest);
		tx_reset(s);
		reply(s, 554, "5.5.0", "Error: SMTP protocol synchronization");
		close_session(s);
		return;
	}
	if (!s->tx.active) {
		reply(s, 503, "5.5.1", "Error: need MAIL command");
		return;
	}
	if (s->tx.n_rcpts == 0) {
		reply(s, 554, "5.5.1", "Error: no valid recipients");
		return;
	}
	if (!begin_content(s)) {
		reply(s, 451, "4.3.0", "Error: queue file write error");
		return;
	}
	s->tx.used_data = true;
	smtp_data_init(&s->tx.dec, s->p.text_line_max, false);
	reply(s, 354, "", "End data with <CR><LF>.<CR><LF>");
	enter_state(s, ST_DATA);
}

static void cmd_bdat(struct inbound_session *s, const struct smtp_cmd *c)
{
	struct smtp_reply err;
	uint64_t size;
	bool last;

	if (smtp_parse_bdat(c->arg, c->arg_len, &size, &last, &err) < 0) {
		/* unknown chunk size: we cannot find the next command reliably */
		reply_r(s, &err);
		if (s->state != ST_CLOSED) {
			reply(s, 421, "4.5.0", "%s Error: BDAT framing lost", s->p.hostname);
			close_session(s);
		}
		return;
	}
	s->bdat_left = size;
	s->bdat_size = size;
	s->bdat_last = last;
	s->bdat_discard = true;
	smtp_reply_set(&s->bdat_reply, 0, "", "%s", "");
	/* RFC 3030 §2: the chunk is read whatever the answer, so the byte stream
	 * stays in step; a refused chunk is consumed and thrown away. */
	if (s->p.require_tls && !s->tls) {
		smtp_reply_set(&s->bdat_reply, 530, "5.7.0", "%s%s%s%s", MUST_STARTTLS,
		               s->p.info_url && *s->p.info_url ? " (see " : "",
		               s->p.info_url && *s->p.info_url ? s->p.info_url : "",
		               s->p.info_url && *s->p.info_url ? ")" : "");
	} else if (!s->tx.active) {
		smtp_reply_set(&s->bdat_reply, 503, "5.5.1", "Error: need MAIL command");
	} else if (s->tx.used_data) {
		smtp_reply_set(&s->bdat_reply, 503, "5.5.1", "Error: BDAT after DATA");
	} else if (s->tx.n_rcpts == 0) {
		smtp_reply_set(&s->bdat_reply, 554, "5.5.1", "Error: no valid recipients");
	} else if (s->tx.failed) {
		smtp_reply_set(&s->bdat_reply, 503, "5.5.1",
		               "Error: an earlier chunk was refused; send RSET");
	} else {
		if (!s->tx.used_bdat) {
			if (!begin_content(s)) {
				s->tx.failed = true;
				smtp_reply_set(&s->bdat_reply, 451, "4.3.0",
				               "Error: queue file write error");
				enter_state(s, ST_BDAT);
				return;
			}
			s->tx.used_bdat = true;
			smtp_data_init(&s->tx.dec, s->p.text_line_max, true);
		}
		if (size > s->p.size_max || s->tx.size + size > s->p.size_max) {
			s->tx.failed = true;
			s->tx.too_big = true;
			smtp_reply_set(&s->bdat_reply, 552, "5.3.4",
			               "Error: chunk exceeds message size limit");
		} else {
			s->bdat_discard = false;
		}
	}
	enter_state(s, ST_BDAT);
}

/* bdat_chunk_done - the whole chunk has been read */
static void bdat_chunk_done(struct inbound_session *s)
{
	enter_state(s, ST_CMD);
	if (s->bdat_discard) {
		reply_r(s, &s->bdat_reply);
		if (s->bdat_last && s->tx.active)
			tx_reset(s);
		return;
	}
	const struct smtp_data *d = &s->tx.dec;
	if (d->bare_lf || d->bare_cr || d->nul) {
		content_check(s);
		return;
	}
	if (!s->bdat_last) {
		reply(s, 250, "2.0.0", "Ok: %" PRIu64 " octets received", s->bdat_size);
		return;
	}
	smtp_data_flush(&s->tx.dec, emit_content, s);
	if (content_check(s) == 0)
		start_store(s);
}

static void cmd_dispatch(struct inbound_session *s, const char *line, size_t len, size_t rest)
{
	struct smtp_cmd c;
	smtp_cmd_parse(line, len, &c);
	switch (c.verb) {
	case SMTP_V_EHLO:
		cmd_helo(s, &c, true);
		break;
	case SMTP_V_HELO:
		cmd_helo(s, &c, false);
		break;
	case SMTP_V_STARTTLS:
		cmd_starttls(s, &c, rest);
		break;
	case SMTP_V_MAIL:
		cmd_mail(s, &c);
		break;
	case SMTP_V_RCPT:
		cmd_rcpt(s, &c);
		break;
	case SMTP_V_DATA:
		cmd_data(s, &c, rest);
		break;
	case SMTP_V_BDAT:
		cmd_bdat(s, &c);
		break;
	case SMTP_V_RSET:
		if (c.arg_len) {
			reply(s, 501, "5.5.4", "Syntax: RSET");
			break;
		}
		tx_reset(s);
		reply(s, 250, "2.0.0", "Ok");
		break;
	case SMTP_V_NOOP:
		reply(s, 250, "2.0.0", "Ok");
		break;
	case SMTP_V_QUIT:
		tx_reset(s);
		reply(s, 221, "2.0.0", "Bye");
		close_session(s);
		break;
	case SMTP_V_HELP:
		reply(s, 214, "2.0.0",
		      "Commands: EHLO HELO STARTTLS MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY");
		break;
	case SMTP_V_VRFY:
		if (tls_gate(s))
			break;
		if (c.arg_len == 0) {
			reply(s, 501, "5.5.4", "Syntax: VRFY address");
			break;
		}
		reply(s, 252, "2.0.0",
		      "Cannot VRFY user, but will accept message and attempt delivery");
		break;
	case SMTP_V_EXPN:
		reply(s, 502, "5.5.1", "Error: command not implemented");
		break;
	case SMTP_V_AUTH:
		if (tls_gate(s))
			break;
		reply(s, 503, "5.5.1", "Error: authentication not enabled");
		break;
	case SMTP_V_NONSMTP:
		log_info("event=reject sid=%016" PRIx64 " reason=non_smtp_client", s->p.id);
		reply(s, 221, "2.7.0", "Error: this is an SMTP server; goodbye");
		close_session(s);
		break;
	case SMTP_V_UNKNOWN:
	default:
		reply(s, 500, "5.5.2", "Error: command not recognized");
		break;
	}
}

/* input_cmd - one command line, or nothing if the line is incomplete */
static size_t input_cmd(struct inbound_session *s, const char *buf, size_t len)
{
	size_t line_len = 0, consumed = 0;
	enum smtp_line_status st = smtp_line_next(buf, len, s->p.line_max, &line_len, &consumed);
	switch (st) {
	case SMTP_LINE_NEED_MORE:
		return 0;
	case SMTP_LINE_OK:
		cmd_dispatch(s, buf, line_len, len - consumed);
		return consumed;
	case SMTP_LINE_BARE_LF:
	case SMTP_LINE_BARE_CR:
	case SMTP_LINE_NUL: {
		const char *what = st == SMTP_LINE_BARE_LF   ? "bare <LF>"
		                   : st == SMTP_LINE_BARE_CR ? "bare <CR>"
		                                             : "NUL character";
		log_info("event=reject sid=%016" PRIx64 " reason=command_%s", s->p.id,
		         st == SMTP_LINE_NUL ? "nul" : "bare_newline");
		tx_reset(s);
		reply(s, 550, "5.5.2", "Error: %s received", what);
		close_session(s);
		return len;
	}
	case SMTP_LINE_TOO_LONG:
		reply(s, 500, "5.5.2", "Error: line too long");
		if (line_len == 0 && s->state != ST_CLOSED) {
			s->skip_cr = 0;
			/* the CRLF may have been cut in half at the end of buf */
			if (len > 0 && buf[len - 1] == '\r')
				s->skip_cr = 1;
			enter_state(s, ST_SKIPLINE);
		}
		return consumed;
	}
	return len;
}

size_t inbound_session_input(struct inbound_session *s, const char *buf, size_t len)
{
	size_t used = 0;
	while (used < len && s->action == INBOUND_NONE) {
		const char *p = buf + used;
		size_t n = len - used, k = 0;
		switch (s->state) {
		case ST_CMD:
			k = input_cmd(s, p, n);
			if (k == 0)
				return used;
			break;
		case ST_SKIPLINE: {
			int found = 0;
			k = smtp_line_skip(p, n, &s->skip_cr, &found);
			if (found)
				enter_state(s, ST_CMD);
			break;
		}
		case ST_DATA: {
			bool done = false;
			k = smtp_data_feed(&s->tx.dec, p, n, emit_content, s, &done);
			s->content_rx += k;
			if (done) {
				enter_state(s, ST_CMD);
				if (content_check(s) == 0)
					start_store(s);
			}
			break;
		}
		case ST_BDAT: {
			k = n < s->bdat_left ? n : (size_t)s->bdat_left;
			s->content_rx += k;
			if (!s->bdat_discard) {
				bool done = false;
				smtp_data_feed(&s->tx.dec, p, k, emit_content, s, &done);
			}
			s->bdat_left -= k;
			if (s->bdat_left == 0)
				bdat_chunk_done(s);
			break;
		}
		case ST_WAIT:
		case ST_CLOSED:
			return used;
		}
		used += k;
	}
	/* A chunk of size 0 (BDAT 0 LAST) needs no input to complete. */
	if (s->state == ST_BDAT && s->bdat_left == 0 && s->action == INBOUND_NONE)
		bdat_chunk_done(s);
	return used;
}

void inbound_session_envelope(const struct inbound_session *s, struct inbound_envelope *env)
{
	env->queue_id = s->queue_id;
	env->from = &s->tx.from;
	env->rcpts = s->tx.rcpts;
	env->n_rcpts = s->tx.n_rcpts;
	env->size = s->tx.size;
	env->tls = s->tls;
}

void inbound_session_store_done(struct inbound_session *s, const struct smtp_reply *r)
{
	s->action = INBOUND_NONE;
	enter_state(s, ST_CMD);
	s->tx.sink_open = false; /* committed or aborted by the I/O layer */
	if (r == NULL)
		reply(s, 250, "2.0.0", "Ok: queued as %s", s->queue_id);
	else
		reply_r(s, r);
	tx_reset(s);
}
