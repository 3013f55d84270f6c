/*
 * test_inbound_battery - the inbound session state machine, systematically
 * (issue 6, "Hostile input": every command in every state, pipelined and
 * not, BDAT edge cases; no crash, correct codes, state reset after errors).
 *
 * The battery is three tables read together:
 *
 *  - states[]: how a session gets into a state (a script of commands with
 *    their replies) and which "class" of state that is;
 *  - matrix[]: for each state and each state-dependent command, the exact
 *    reply and the class of state the command leaves behind;
 *  - anywhere[]: commands whose reply is the same in every state (NOOP,
 *    HELP, unknown verbs, over-long lines, NUL, QUIT ...).
 *
 * Every (state, command) pair is run as a script: the state's setup, the
 * command, then a probe that proves the class of state afterwards (e.g. for
 * "ready": RCPT gets 503 need MAIL, then a whole transaction is stored; for
 * "in BDAT": RCPT gets 503 RCPT after BDAT, then BDAT LAST stores the chunks
 * so far). Each script is run three ways, and all three must give the same
 * bytes: one command per read (each reply checked as it comes), pipelined
 * (RFC 2920: everything in one read except that a read ends after STARTTLS
 * and after DATA, where a client must wait), and one byte per read. After
 * every script the session is freed and the sink must have seen every
 * opened message either stored or aborted: nothing left half-open.
 *
 * Then: random command sequences (fixed seed; SMX_BATTERY_SEED picks
 * another) that must give the same bytes all three ways; what a client may
 * not pipeline (content after DATA, anything after STARTTLS); BDAT edge
 * cases (sizes that cannot be read, a size nobody sends, over the limit,
 * CRLF.CRLF and commands inside chunks, BDAT 0, BDAT after a refused DATA).
 *
 * Where RFC 5321/3030 allow several codes the table holds what the session
 * answers; the comments in the tables say which choice was made.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <cmocka.h>

#include "common/config.h"
#include "common/log.h"
#include "common/qid.h"
#include "inbound/session.h"
#include "smtp/reply.h"
#include "testbuf.h"

#define HOST         "mx.test.example"
#define TLS_DESC     "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"
#define SIZE_MAX_MSG 10000

/* ---- replies ---- */
#define R_GREET "220 " HOST " ESMTP strictmx\r\n"
#define R_EHLO_T                                                                                   \
	"250-" HOST "\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"     \
	"250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n"
#define R_EHLO_P                                                                                   \
	"250-" HOST "\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"     \
	"250-CHUNKING\r\n250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n"
#define R_HELO        "250 " HOST "\r\n"
#define R_220TLS      "220 2.0.0 Ready to start TLS\r\n"
#define R_530         "530 5.7.0 Must issue a STARTTLS command first\r\n"
#define R_OK          "250 2.0.0 Ok\r\n"
#define R_MAIL_OK     "250 2.1.0 Ok\r\n"
#define R_RCPT_OK     "250 2.1.5 Ok\r\n"
#define R_354         "354 End data with <CR><LF>.<CR><LF>\r\n"
#define R_QUEUED      "250 2.0.0 Ok: queued as #\r\n" /* # stands for the queue id */
#define R_CHUNK4      "250 2.0.0 Ok: 4 octets received\r\n"
#define R_NEED_HELO   "503 5.5.1 Error: send HELO/EHLO first\r\n"
#define R_NEED_MAIL   "503 5.5.1 Error: need MAIL command\r\n"
#define R_NESTED      "503 5.5.1 Error: nested MAIL command\r\n"
#define R_NO_RCPT     "554 5.5.1 Error: no valid recipients\r\n"
#define R_DATA_BDAT   "503 5.5.1 Error: DATA after BDAT\r\n"
#define R_RCPT_BDAT   "503 5.5.1 Error: RCPT after BDAT\r\n"
#define R_CHUNK_REF   "503 5.5.1 Error: an earlier chunk was refused; send RSET\r\n"
#define R_TOO_BIG     "552 5.3.4 Error: chunk exceeds message size limit\r\n"
#define R_VRFY        "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"
#define R_TLS_ACTIVE  "503 5.5.1 Error: TLS already active\r\n"
#define R_NO_AUTH     "503 5.5.1 Error: authentication not enabled\r\n"
#define R_EXPN        "502 5.5.1 Error: command not implemented\r\n"
#define R_UNKNOWN     "500 5.5.2 Error: command not recognized\r\n"
#define R_TOO_LONG    "500 5.5.2 Error: line too long\r\n"
#define R_NUL         "550 5.5.2 Error: NUL character received\r\n"
#define R_BARE_LF     "550 5.5.2 Error: bare <LF> received\r\n"
#define R_BYE         "221 2.0.0 Bye\r\n"
#define R_HTTP        "221 2.7.0 Error: this is an SMTP server; goodbye\r\n"
#define R_SYNC        "554 5.5.0 Error: SMTP protocol synchronization\r\n"
#define R_INJECT      "554 5.5.0 Error: command pipelined after STARTTLS; closing\r\n"
#define R_BDAT_SYNTAX "501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n"
#define R_FRAMING     "421 4.5.0 " HOST " Error: BDAT framing lost\r\n"
#define R_RELAY       "554 5.7.1 <carol@elsewhere.example>: Relay access denied\r\n"
#define R_TIMEOUT     "421 4.4.2 " HOST " Error: timeout exceeded\r\n"
#define R_HELP                                                                                     \
	"214 2.0.0 Commands: EHLO HELO STARTTLS MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY\r\n"

/* ---- commands ---- */
#define C_HELO       "HELO client.example\r\n"
#define C_EHLO       "EHLO client.example\r\n"
#define C_MAIL       "MAIL FROM:<bob@example.net>\r\n"
#define C_MAIL_LC    "mail from:<bob@example.net>\r\n"
#define C_RCPT       "RCPT TO:<alice@example.org>\r\n"
#define C_RCPT_RELAY "RCPT TO:<carol@elsewhere.example>\r\n"
#define C_DATA       "DATA\r\n"
#define C_BDAT       "BDAT 4\r\nabcd"
#define C_BDAT_LAST  "BDAT 4 LAST\r\nabcd"
#define C_BDAT0_LAST "BDAT 0 LAST\r\n"
#define C_RSET       "RSET\r\n"
#define C_VRFY       "VRFY alice\r\n"
#define C_STARTTLS   "STARTTLS\r\n"
#define C_AUTH       "AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n"
#define C_QUIT       "QUIT\r\n"
#define C_NOOP       "NOOP\r\n"

/* the message every probe sends with DATA, and what is stored after Received: */
#define CONTENT      "Subject: battery\r\n\r\nok\r\n.\r\n"
#define CONTENT_BODY "Subject: battery\r\n\r\nok\r\n"

/* ------------------------------------------------------------------ */
/* The simulated I/O layer */

struct drv {
	struct strlist domains;
	struct inbound_params p;
	struct inbound_session *s;
	/* the sink */
	struct buf content;
	bool sink_open;
	bool sink_fail_begin;
	unsigned begins, aborts, stores;
	/* output: since the last take, and whole */
	struct buf out, all;
	struct buf pend;   /* input not consumed yet */
	struct buf bodies; /* every stored body, each followed by '|' */
	bool closed;
	unsigned starttls;
};

static struct drv *live_drv;

static int sink_begin(void *ctx)
{
	struct drv *d = ctx;

	assert_false(d->sink_open);
	if (d->sink_fail_begin)
		return -1;
	buf_clear(&d->content);
	d->sink_open = true;
	d->begins++;
	return 0;
}

static void sink_write(void *ctx, const void *p, size_t n)
{
	struct drv *d = ctx;

	assert_true(d->sink_open);
	assert_true(d->content.len + n <= SIZE_MAX_MSG);
	buf_add(&d->content, p, n);
}

static void sink_abort(void *ctx)
{
	struct drv *d = ctx;

	assert_true(d->sink_open);
	d->sink_open = false;
	d->aborts++;
}

static struct drv *drv_new(bool require_tls)
{
	struct drv *d = calloc(1, sizeof(*d));

	assert_non_null(d);
	assert_null(live_drv);
	live_drv = d;
	log_set_level(LOG_LVL_ERR);
	strlist_add(&d->domains, "example.org");
	d->p.hostname = HOST;
	d->p.require_tls = require_tls;
	d->p.tls_available = true;
	d->p.local_domains = &d->domains;
	d->p.line_max = 512;
	d->p.text_line_max = 1000;
	d->p.size_max = SIZE_MAX_MSG;
	d->p.rcpt_max = 5;
	d->p.errors_max = 10;
	d->p.peer_ip = "192.0.2.1";
	d->p.id = 0xba7;
	d->p.sink.ctx = d;
	d->p.sink.begin = sink_begin;
	d->p.sink.write = sink_write;
	d->p.sink.abort = sink_abort;
	buf_clear(&d->out);
	buf_clear(&d->all);
	buf_clear(&d->pend);
	buf_clear(&d->bodies);
	buf_clear(&d->content);
	d->s = inbound_session_new(&d->p);
	assert_non_null(d->s);
	inbound_session_greet(d->s);
	return d;
}

/* drv_end - free the session; every message begun was stored or aborted */
static void drv_end(struct drv *d)
{
	inbound_session_free(&d->s);
	assert_false(d->sink_open);
	assert_int_equal(d->begins, d->stores + d->aborts);
}

static void drv_free(struct drv *d)
{
	if (d == NULL)
		return;
	inbound_session_free(&d->s);
	strlist_free(&d->domains);
	buf_free(&d->content);
	buf_free(&d->out);
	buf_free(&d->all);
	buf_free(&d->pend);
	buf_free(&d->bodies);
	if (live_drv == d)
		live_drv = NULL;
	free(d);
}

static void collect(struct drv *d)
{
	size_t n;
	const char *o = inbound_session_output(d->s, &n);

	buf_add(&d->out, o, n);
	buf_add(&d->all, o, n);
	inbound_session_output_clear(d->s);
}

static void do_store(struct drv *d)
{
	struct inbound_envelope env;

	inbound_session_envelope(d->s, &env);
	assert_true(d->sink_open);
	assert_true(env.n_rcpts >= 1);
	assert_int_equal(env.size, d->content.len);
	assert_int_equal(strlen(env.queue_id), QID_LEN);
	/* the body: what follows our Received: header (which ends with the date) */
	const char *body = strstr(d->content.p, "+0000\r\n");
	assert_non_null(body);
	buf_adds(&d->bodies, body + 7);
	buf_adds(&d->bodies, "|");
	d->sink_open = false;
	d->stores++;
	inbound_session_store_done(d->s, NULL);
}

/* pump - what the I/O layer does: feed, send, carry out the action */
static void pump(struct drv *d)
{
	for (;;) {
		size_t used = inbound_session_input(d->s, d->pend.p, d->pend.len);

		assert_true(used <= d->pend.len);
		buf_drop(&d->pend, used);
		collect(d);
		switch (inbound_session_action(d->s)) {
		case INBOUND_NONE:
			return;
		case INBOUND_STARTTLS:
			assert_int_equal(d->pend.len, 0);
			d->starttls++;
			inbound_session_tls_started(d->s, TLS_DESC);
			break;
		case INBOUND_STORE:
			do_store(d);
			break;
		case INBOUND_CLOSE:
			d->closed = true;
			return;
		case INBOUND_DELAY: /* errors_delay_after is 0 here */
			inbound_session_delay_done(d->s);
			break;
		}
	}
}

static void feedn(struct drv *d, const char *p, size_t n, bool bytewise)
{
	if (bytewise) {
		for (size_t i = 0; i < n && !d->closed; i++) {
			buf_add(&d->pend, p + i, 1);
			pump(d);
		}
		return;
	}
	if (d->closed)
		return;
	buf_add(&d->pend, p, n);
	pump(d);
}

static void feeds(struct drv *d, const char *s, bool bytewise)
{
	feedn(d, s, strlen(s), bytewise);
}

/* mask_qids - "queued as ID" becomes "queued as #" */
static void mask_qids(struct buf *b)
{
	char *p = b->p;

	while ((p = strstr(p, "queued as ")) != NULL) {
		p += 10;
		size_t n = strcspn(p, "\r");
		if (n > 0) {
			memmove(p + 1, p + n, strlen(p + n) + 1);
			*p = '#';
			b->len -= n - 1;
		}
	}
}

/* take - the output since the last take, queue ids masked */
static const char *take(struct drv *d)
{
	static char copy[64 * 1024];

	mask_qids(&d->out);
	assert_true(d->out.len < sizeof(copy));
	memcpy(copy, d->out.p, d->out.len + 1);
	buf_clear(&d->out);
	return copy;
}

static void expect(struct drv *d, const char *want)
{
	assert_string_equal(take(d), want);
}

/* send one command in its own read and check its whole reply */
static void cmd(struct drv *d, const char *in, const char *want)
{
	feedn(d, in, strlen(in), false);
	expect(d, want);
}

static void cmdn(struct drv *d, const char *in, size_t n, const char *want)
{
	feedn(d, in, n, false);
	expect(d, want);
}

/* ------------------------------------------------------------------ */
/* Scripts */

struct step {
	const char *in; /* bytes sent (NUL-terminated unless len given) */
	size_t len;     /* 0: strlen(in) */
	const char *want;
	const char *body; /* when this step stores a message: its body */
};

#define MAX_STEPS 24

struct script {
	struct step st[MAX_STEPS];
	size_t n;
	bool require_tls;
	bool ends_closed;
};

static void add(struct script *sc, const char *in, const char *want, const char *body)
{
	assert_true(sc->n < MAX_STEPS);
	sc->st[sc->n++] = (struct step){in, 0, want, body};
}

static size_t step_len(const struct step *s)
{
	return s->len ? s->len : strlen(s->in);
}

/* a client must wait for the reply to these (RFC 2920 §3.1, RFC 3207 §4.2) */
static bool step_syncs(const struct step *s)
{
	return strncasecmp(s->in, "DATA", 4) == 0 || strncasecmp(s->in, "STARTTLS", 8) == 0;
}

enum mode { M_STEP, M_PIPE, M_BYTE };
static const char *const mode_names[] = {"one command per read", "pipelined", "one byte per read"};

/* run_script - run sc one way and check replies, bodies and the sink */
static void run_script(const struct script *sc, enum mode m, const char *what)
{
	struct drv *d = drv_new(sc->require_tls);
	struct buf want = {0}, bodies = {0};

	buf_clear(&want);
	buf_clear(&bodies);
	buf_adds(&want, R_GREET);
	for (size_t i = 0; i < sc->n; i++) {
		buf_adds(&want, sc->st[i].want);
		if (sc->st[i].body) {
			buf_adds(&bodies, sc->st[i].body);
			buf_adds(&bodies, "|");
		}
	}
	collect(d);
	if (m == M_STEP) {
		expect(d, R_GREET);
		for (size_t i = 0; i < sc->n; i++) {
			assert_false(d->closed);
			feedn(d, sc->st[i].in, step_len(&sc->st[i]), false);
			const char *got = take(d);
			if (strcmp(got, sc->st[i].want) != 0)
				fail_msg("%s, step %zu (%.40s): got \"%s\", want \"%s\"", what, i,
				         sc->st[i].in, got, sc->st[i].want);
		}
	} else {
		struct buf group = {0};
		buf_clear(&group);
		for (size_t i = 0; i < sc->n; i++) {
			buf_add(&group, sc->st[i].in, step_len(&sc->st[i]));
			if (i + 1 == sc->n || (m == M_PIPE && step_syncs(&sc->st[i]))) {
				feedn(d, group.p, group.len, m == M_BYTE);
				buf_clear(&group);
			}
		}
		buf_free(&group);
	}
	mask_qids(&d->all);
	if (strcmp(d->all.p, want.p) != 0)
		fail_msg("%s (%s):\n got \"%s\"\nwant \"%s\"", what, mode_names[m], d->all.p,
		         want.p);
	if (strcmp(d->bodies.p, bodies.p) != 0)
		fail_msg("%s (%s): stored bodies \"%s\", want \"%s\"", what, mode_names[m],
		         d->bodies.p, bodies.p);
	assert_int_equal(d->closed, sc->ends_closed);
	drv_end(d);
	buf_free(&want);
	buf_free(&bodies);
	drv_free(d);
}

static void run_all_modes(const struct script *sc, const char *what)
{
	run_script(sc, M_STEP, what);
	run_script(sc, M_PIPE, what);
	run_script(sc, M_BYTE, what);
}

/* ------------------------------------------------------------------ */
/* Classes of state, and the probe that proves each */

enum cls {
	A_SAME = 0, /* the class of the state the command was sent in */
	A_GATE,     /* plaintext on a require_tls listener */
	A_NOHELO_T, /* TLS up, no EHLO since */
	A_NOHELO_P, /* plaintext allowed (require_tls = no), no EHLO yet */
	A_READY,    /* EHLO done, no transaction */
	A_MAIL,     /* MAIL accepted, no recipient */
	A_RCPT,     /* MAIL and a recipient, no content yet */
	A_BDAT,     /* inside a BDAT transaction (non-LAST chunks accepted) */
	A_INDATA,   /* after 354: reading DATA content */
	A_CLOSED,   /* the session has ended */
};

static const char *const cls_names[] = {"same", "gate", "nohelo-tls", "nohelo-plain", "ready",
                                        "mail", "rcpt", "in-bdat",    "in-data",      "closed"};

/* a whole DATA transaction from "ready", then QUIT */
static void probe_deliver(struct script *sc)
{
	add(sc, C_MAIL, R_MAIL_OK, NULL);
	add(sc, C_RCPT, R_RCPT_OK, NULL);
	add(sc, C_DATA, R_354, NULL);
	add(sc, CONTENT, R_QUEUED, CONTENT_BODY);
	add(sc, C_QUIT, R_BYE, NULL);
}

/* add_probe - the steps that show the session is in class c and still works.
 * bdat_body: for A_BDAT, the body stored once "xyz" ends the message. */
static void add_probe(struct script *sc, enum cls c, const char *bdat_body)
{
	switch (c) {
	case A_GATE:
		add(sc, C_MAIL, R_530, NULL);
		add(sc, C_STARTTLS, R_220TLS, NULL);
		add(sc, C_MAIL, R_NEED_HELO, NULL); /* RFC 3207 §4.2: EHLO forgotten */
		add(sc, C_EHLO, R_EHLO_T, NULL);
		probe_deliver(sc);
		break;
	case A_NOHELO_T:
	case A_NOHELO_P:
		add(sc, C_MAIL, R_NEED_HELO, NULL);
		add(sc, C_EHLO, c == A_NOHELO_T ? R_EHLO_T : R_EHLO_P, NULL);
		probe_deliver(sc);
		break;
	case A_READY:
		add(sc, C_RCPT, R_NEED_MAIL, NULL);
		probe_deliver(sc);
		break;
	case A_MAIL:
		add(sc, C_MAIL, R_NESTED, NULL);
		add(sc, C_DATA, R_NO_RCPT, NULL);
		add(sc, C_RCPT, R_RCPT_OK, NULL);
		add(sc, C_DATA, R_354, NULL);
		add(sc, CONTENT, R_QUEUED, CONTENT_BODY);
		add(sc, C_QUIT, R_BYE, NULL);
		break;
	case A_RCPT:
		add(sc, C_MAIL, R_NESTED, NULL);
		add(sc, C_DATA, R_354, NULL);
		add(sc, CONTENT, R_QUEUED, CONTENT_BODY);
		add(sc, C_QUIT, R_BYE, NULL);
		break;
	case A_BDAT:
		assert_non_null(bdat_body);
		add(sc, C_RCPT, R_RCPT_BDAT, NULL);
		add(sc, "BDAT 3 LAST\r\nxyz", R_QUEUED, bdat_body);
		add(sc, C_RCPT, R_NEED_MAIL, NULL); /* LAST ended the transaction */
		add(sc, C_QUIT, R_BYE, NULL);
		break;
	case A_INDATA:
		add(sc, CONTENT, R_QUEUED, CONTENT_BODY);
		add(sc, C_RCPT, R_NEED_MAIL, NULL);
		add(sc, C_QUIT, R_BYE, NULL);
		break;
	case A_CLOSED:
		sc->ends_closed = true;
		break;
	case A_SAME:
		fail_msg("A_SAME not resolved");
	}
	if (c != A_CLOSED)
		sc->ends_closed = true; /* every probe ends with QUIT */
}

/* ------------------------------------------------------------------ */
/* The states */

enum st {
	S_GREETED,    /* just connected: greeting sent, nothing read (see note) */
	S_PLAIN_HELO, /* HELO in plaintext */
	S_PLAIN_EHLO, /* EHLO in plaintext */
	S_TLS_NOHELO, /* STARTTLS done, no EHLO since */
	S_TLS_EHLO,   /* EHLO in TLS */
	S_TLS_HELO,   /* HELO in TLS */
	S_TLS_MAIL,   /* + MAIL */
	S_TLS_RCPT,   /* + RCPT */
	S_TLS_BDAT,   /* + BDAT 5 (not LAST) */
	S_TLS_ERROR,  /* + MAIL, then a refused RCPT (554 relay) */
	S_TLS_RSET,   /* + MAIL, RCPT, RSET */
	S_OPEN_NEW,   /* require_tls = no: just connected */
	S_OPEN_EHLO,  /* require_tls = no: EHLO in plaintext */
	S_OPEN_RCPT,  /* require_tls = no: MAIL, RCPT in plaintext */
	S_COUNT
};

/*
 * Note: strictmxd sends the greeting as soon as it accepts a connection
 * (inbound/server.c) and the pure session has no separate "before the
 * greeting" state: a client that talks first is read like one that waited.
 */

struct state_def {
	const char *name;
	bool require_tls;
	enum cls cls;
	const char *bdat_so_far; /* A_BDAT: the chunks accepted in the setup */
	struct step setup[8];
};

#define STEP(in, want)                                                                             \
	{                                                                                          \
		in, 0, want, NULL                                                                  \
	}
#define TLS_UP STEP(C_EHLO, R_EHLO_P), STEP(C_STARTTLS, R_220TLS)

static const struct state_def states[S_COUNT] = {
    [S_GREETED] = {"greeted", true, A_GATE, NULL, {{0}}},
    [S_PLAIN_HELO] = {"plaintext HELO", true, A_GATE, NULL, {STEP(C_HELO, R_HELO)}},
    [S_PLAIN_EHLO] = {"plaintext EHLO", true, A_GATE, NULL, {STEP(C_EHLO, R_EHLO_P)}},
    [S_TLS_NOHELO] = {"TLS before EHLO", true, A_NOHELO_T, NULL, {TLS_UP}},
    [S_TLS_EHLO] = {"TLS EHLO", true, A_READY, NULL, {TLS_UP, STEP(C_EHLO, R_EHLO_T)}},
    [S_TLS_HELO] = {"TLS HELO", true, A_READY, NULL, {TLS_UP, STEP(C_HELO, R_HELO)}},
    [S_TLS_MAIL] =
        {"TLS MAIL", true, A_MAIL, NULL, {TLS_UP, STEP(C_EHLO, R_EHLO_T), STEP(C_MAIL, R_MAIL_OK)}},
    [S_TLS_RCPT] = {"TLS RCPT",
                    true,
                    A_RCPT,
                    NULL,
                    {TLS_UP, STEP(C_EHLO, R_EHLO_T), STEP(C_MAIL, R_MAIL_OK),
                     STEP(C_RCPT, R_RCPT_OK)}},
    [S_TLS_BDAT] = {"TLS in BDAT",
                    true,
                    A_BDAT,
                    "hello",
                    {TLS_UP, STEP(C_EHLO, R_EHLO_T), STEP(C_MAIL, R_MAIL_OK),
                     STEP(C_RCPT, R_RCPT_OK),
                     STEP("BDAT 5\r\nhello", "250 2.0.0 Ok: 5 octets received\r\n")}},
    [S_TLS_ERROR] = {"TLS after an error reply",
                     true,
                     A_MAIL,
                     NULL,
                     {TLS_UP, STEP(C_EHLO, R_EHLO_T), STEP(C_MAIL, R_MAIL_OK),
                      STEP(C_RCPT_RELAY, R_RELAY)}},
    [S_TLS_RSET] = {"TLS after RSET",
                    true,
                    A_READY,
                    NULL,
                    {TLS_UP, STEP(C_EHLO, R_EHLO_T), STEP(C_MAIL, R_MAIL_OK),
                     STEP(C_RCPT, R_RCPT_OK), STEP(C_RSET, R_OK)}},
    [S_OPEN_NEW] = {"require_tls=no greeted", false, A_NOHELO_P, NULL, {{0}}},
    [S_OPEN_EHLO] = {"require_tls=no EHLO", false, A_READY, NULL, {STEP(C_EHLO, R_EHLO_P)}},
    [S_OPEN_RCPT] = {"require_tls=no RCPT",
                     false,
                     A_RCPT,
                     NULL,
                     {STEP(C_EHLO, R_EHLO_P), STEP(C_MAIL, R_MAIL_OK), STEP(C_RCPT, R_RCPT_OK)}},
};

/* ------------------------------------------------------------------ */
/* The matrix: state-dependent commands */

struct row {
	enum st st;
	const char *cmd;
	const char *reply;
	enum cls after;
	const char *body; /* message stored by cmd, or by the A_BDAT probe */
};

/*
 * Each group of rows is one state; columns: the command, the exact reply,
 * the class of state afterwards, and (for a stored message) its body. A
 * table that clang-format would fold into paragraphs is kept as a table.
 */
/* clang-format off */

/* The plaintext states of a require_tls listener answer alike. RFC 3030 §2:
 * a refused BDAT chunk is still read, so its bytes are never commands. */
#define GATE_ROWS(S) \
	{S, C_HELO,       R_HELO,     A_GATE,     NULL}, \
	{S, C_EHLO,       R_EHLO_P,   A_GATE,     NULL}, \
	{S, C_MAIL,       R_530,      A_GATE,     NULL}, \
	{S, C_MAIL_LC,    R_530,      A_GATE,     NULL}, \
	{S, C_RCPT,       R_530,      A_GATE,     NULL}, \
	{S, C_DATA,       R_530,      A_GATE,     NULL}, \
	{S, C_BDAT,       R_530,      A_GATE,     NULL}, \
	{S, C_BDAT_LAST,  R_530,      A_GATE,     NULL}, \
	{S, C_BDAT0_LAST, R_530,      A_GATE,     NULL}, \
	{S, C_RSET,       R_OK,       A_GATE,     NULL}, \
	{S, C_VRFY,       R_530,      A_GATE,     NULL}, \
	{S, C_STARTTLS,   R_220TLS,   A_NOHELO_T, NULL}, \
	{S, C_AUTH,       R_530,      A_GATE,     NULL}

/* EHLO done, no transaction: TLS EHLO, TLS HELO, after RSET, require_tls=no */
#define READY_ROWS(S, EHLO_REPLY, STARTTLS_REPLY, STARTTLS_AFTER) \
	{S, C_HELO,       R_HELO,         A_READY,        NULL}, \
	{S, C_EHLO,       EHLO_REPLY,     A_READY,        NULL}, \
	{S, C_MAIL,       R_MAIL_OK,      A_MAIL,         NULL}, \
	{S, C_MAIL_LC,    R_MAIL_OK,      A_MAIL,         NULL}, \
	{S, C_RCPT,       R_NEED_MAIL,    A_READY,        NULL}, \
	{S, C_DATA,       R_NEED_MAIL,    A_READY,        NULL}, \
	{S, C_BDAT,       R_NEED_MAIL,    A_READY,        NULL}, \
	{S, C_BDAT_LAST,  R_NEED_MAIL,    A_READY,        NULL}, \
	{S, C_BDAT0_LAST, R_NEED_MAIL,    A_READY,        NULL}, \
	{S, C_RSET,       R_OK,           A_READY,        NULL}, \
	{S, C_VRFY,       R_VRFY,         A_READY,        NULL}, \
	{S, C_STARTTLS,   STARTTLS_REPLY, STARTTLS_AFTER, NULL}, \
	{S, C_AUTH,       R_NO_AUTH,      A_READY,        NULL}

/* MAIL accepted, no recipient (also after a refused RCPT). A refused LAST
 * chunk ends the transaction (RFC 3030 §2: the transaction has failed; the
 * client starts again with MAIL); a refused non-LAST chunk does not. */
#define MAIL_ROWS(S) \
	{S, C_HELO,       R_HELO,       A_READY, NULL}, \
	{S, C_EHLO,       R_EHLO_T,     A_READY, NULL}, \
	{S, C_MAIL,       R_NESTED,     A_MAIL,  NULL}, \
	{S, C_MAIL_LC,    R_NESTED,     A_MAIL,  NULL}, \
	{S, C_RCPT,       R_RCPT_OK,    A_RCPT,  NULL}, \
	{S, C_DATA,       R_NO_RCPT,    A_MAIL,  NULL}, \
	{S, C_BDAT,       R_NO_RCPT,    A_MAIL,  NULL}, \
	{S, C_BDAT_LAST,  R_NO_RCPT,    A_READY, NULL}, \
	{S, C_BDAT0_LAST, R_NO_RCPT,    A_READY, NULL}, \
	{S, C_RSET,       R_OK,         A_READY, NULL}, \
	{S, C_VRFY,       R_VRFY,       A_MAIL,  NULL}, \
	{S, C_STARTTLS,   R_TLS_ACTIVE, A_MAIL,  NULL}, \
	{S, C_AUTH,       R_NO_AUTH,    A_MAIL,  NULL}

/* MAIL and RCPT accepted. The same recipient again is accepted (and
 * delivered once). */
#define RCPT_ROWS(S, EHLO_REPLY, STARTTLS_REPLY, STARTTLS_AFTER) \
	{S, C_HELO,       R_HELO,         A_READY,        NULL}, \
	{S, C_EHLO,       EHLO_REPLY,     A_READY,        NULL}, \
	{S, C_MAIL,       R_NESTED,       A_RCPT,         NULL}, \
	{S, C_MAIL_LC,    R_NESTED,       A_RCPT,         NULL}, \
	{S, C_RCPT,       R_RCPT_OK,      A_RCPT,         NULL}, \
	{S, C_DATA,       R_354,          A_INDATA,       NULL}, \
	{S, C_BDAT,       R_CHUNK4,       A_BDAT,         "abcdxyz"}, \
	{S, C_BDAT_LAST,  R_QUEUED,       A_READY,        "abcd"}, \
	{S, C_BDAT0_LAST, R_QUEUED,       A_READY,        ""}, \
	{S, C_RSET,       R_OK,           A_READY,        NULL}, \
	{S, C_VRFY,       R_VRFY,         A_RCPT,         NULL}, \
	{S, C_STARTTLS,   STARTTLS_REPLY, STARTTLS_AFTER, NULL}, \
	{S, C_AUTH,       R_NO_AUTH,      A_RCPT,         NULL}

static const struct row matrix[] = {
	GATE_ROWS(S_GREETED),
	GATE_ROWS(S_PLAIN_HELO),
	GATE_ROWS(S_PLAIN_EHLO),

	/* TLS is up, EHLO not repeated yet (RFC 3207 §4.2): MAIL needs EHLO,
	 * RCPT/DATA/BDAT need MAIL. AUTH is not offered: 503 (RFC 4954 §4). */
	{S_TLS_NOHELO, C_HELO,       R_HELO,       A_READY,    NULL},
	{S_TLS_NOHELO, C_EHLO,       R_EHLO_T,     A_READY,    NULL},
	{S_TLS_NOHELO, C_MAIL,       R_NEED_HELO,  A_NOHELO_T, NULL},
	{S_TLS_NOHELO, C_MAIL_LC,    R_NEED_HELO,  A_NOHELO_T, NULL},
	{S_TLS_NOHELO, C_RCPT,       R_NEED_MAIL,  A_NOHELO_T, NULL},
	{S_TLS_NOHELO, C_DATA,       R_NEED_MAIL,  A_NOHELO_T, NULL},
	{S_TLS_NOHELO, C_BDAT,       R_NEED_MAIL,  A_NOHELO_T, NULL},
	{S_TLS_NOHELO, C_BDAT_LAST,  R_NEED_MAIL,  A_NOHELO_T, NULL},
	{S_TLS_NOHELO, C_BDAT0_LAST, R_NEED_MAIL,  A_NOHELO_T, NULL},
	{S_TLS_NOHELO, C_RSET,       R_OK,         A_NOHELO_T, NULL},
	{S_TLS_NOHELO, C_VRFY,       R_VRFY,       A_NOHELO_T, NULL},
	{S_TLS_NOHELO, C_STARTTLS,   R_TLS_ACTIVE, A_NOHELO_T, NULL},
	{S_TLS_NOHELO, C_AUTH,       R_NO_AUTH,    A_NOHELO_T, NULL},

	READY_ROWS(S_TLS_EHLO, R_EHLO_T, R_TLS_ACTIVE, A_READY),
	READY_ROWS(S_TLS_HELO, R_EHLO_T, R_TLS_ACTIVE, A_READY),
	READY_ROWS(S_TLS_RSET, R_EHLO_T, R_TLS_ACTIVE, A_READY),
	MAIL_ROWS(S_TLS_MAIL),
	MAIL_ROWS(S_TLS_ERROR),
	RCPT_ROWS(S_TLS_RCPT, R_EHLO_T, R_TLS_ACTIVE, A_RCPT),

	/* inside BDAT (chunk "hello" accepted): EHLO, HELO and RSET drop the
	 * content; RFC 3030 §2 leaves the state after DATA-after-BDAT open: the
	 * transaction is kept */
	{S_TLS_BDAT, C_HELO,       R_HELO,       A_READY, NULL},
	{S_TLS_BDAT, C_EHLO,       R_EHLO_T,     A_READY, NULL},
	{S_TLS_BDAT, C_MAIL,       R_NESTED,     A_BDAT,  NULL},
	{S_TLS_BDAT, C_MAIL_LC,    R_NESTED,     A_BDAT,  NULL},
	{S_TLS_BDAT, C_RCPT,       R_RCPT_BDAT,  A_BDAT,  NULL},
	{S_TLS_BDAT, C_DATA,       R_DATA_BDAT,  A_BDAT,  NULL},
	{S_TLS_BDAT, C_BDAT,       R_CHUNK4,     A_BDAT,  "helloabcdxyz"},
	{S_TLS_BDAT, C_BDAT_LAST,  R_QUEUED,     A_READY, "helloabcd"},
	{S_TLS_BDAT, C_BDAT0_LAST, R_QUEUED,     A_READY, "hello"},
	{S_TLS_BDAT, C_RSET,       R_OK,         A_READY, NULL},
	{S_TLS_BDAT, C_VRFY,       R_VRFY,       A_BDAT,  NULL},
	{S_TLS_BDAT, C_STARTTLS,   R_TLS_ACTIVE, A_BDAT,  NULL},
	{S_TLS_BDAT, C_AUTH,       R_NO_AUTH,    A_BDAT,  NULL},

	/* require_tls = no: no gate; STARTTLS still offered and honoured, and in
	 * a transaction it forgets the transaction */
	{S_OPEN_NEW, C_HELO,       R_HELO,      A_READY,    NULL},
	{S_OPEN_NEW, C_EHLO,       R_EHLO_P,    A_READY,    NULL},
	{S_OPEN_NEW, C_MAIL,       R_NEED_HELO, A_NOHELO_P, NULL},
	{S_OPEN_NEW, C_MAIL_LC,    R_NEED_HELO, A_NOHELO_P, NULL},
	{S_OPEN_NEW, C_RCPT,       R_NEED_MAIL, A_NOHELO_P, NULL},
	{S_OPEN_NEW, C_DATA,       R_NEED_MAIL, A_NOHELO_P, NULL},
	{S_OPEN_NEW, C_BDAT,       R_NEED_MAIL, A_NOHELO_P, NULL},
	{S_OPEN_NEW, C_BDAT_LAST,  R_NEED_MAIL, A_NOHELO_P, NULL},
	{S_OPEN_NEW, C_BDAT0_LAST, R_NEED_MAIL, A_NOHELO_P, NULL},
	{S_OPEN_NEW, C_RSET,       R_OK,        A_NOHELO_P, NULL},
	{S_OPEN_NEW, C_VRFY,       R_VRFY,      A_NOHELO_P, NULL},
	{S_OPEN_NEW, C_STARTTLS,   R_220TLS,    A_NOHELO_T, NULL},
	{S_OPEN_NEW, C_AUTH,       R_NO_AUTH,   A_NOHELO_P, NULL},
	READY_ROWS(S_OPEN_EHLO, R_EHLO_P, R_220TLS, A_NOHELO_T),
	RCPT_ROWS(S_OPEN_RCPT, R_EHLO_P, R_220TLS, A_NOHELO_T),
};

/* clang-format on */

/* ------------------------------------------------------------------ */
/* Commands with the same answer in every state */

struct anywhere {
	const char *what;
	const char *cmd;
	size_t len; /* 0: strlen */
	const char *reply;
	enum cls after; /* A_SAME or A_CLOSED */
};

#define LONG_NOOP                                                                                  \
	"NOOP "                                                                                    \
	"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" \
	"xx"                                                                                       \
	"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" \
	"xxxxx"                                                                                    \
	"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" \
	"xxxxx"                                                                                    \
	"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" \
	"xxxxx"                                                                                    \
	"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" \
	"xxxxx"                                                                                    \
	"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" \
	"xxxxx"                                                                                    \
	"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" \
	"xxxxx\r\n"

static const struct anywhere anywhere[] = {
    {"NOOP", "NOOP\r\n", 0, R_OK, A_SAME},
    {"NOOP with a string", "NOOP hello there\r\n", 0, R_OK, A_SAME},
    {"lower-case noop", "noop\r\n", 0, R_OK, A_SAME},
    {"HELP", "HELP\r\n", 0, R_HELP, A_SAME},
    {"HELP MAIL", "HELP MAIL\r\n", 0, R_HELP, A_SAME},
    /* RFC 5321 §3.5.2: 502 when EXPN is not implemented */
    {"EXPN", "EXPN staff\r\n", 0, R_EXPN, A_SAME},
    {"unknown verb", "FOO bar\r\n", 0, R_UNKNOWN, A_SAME},
    {"verb with a suffix", "MAILX FROM:<bob@example.net>\r\n", 0, R_UNKNOWN, A_SAME},
    {"empty line", "\r\n", 0, R_UNKNOWN, A_SAME},
    {"spaces only", "   \r\n", 0, R_UNKNOWN, A_SAME},
    /* TURN (RFC 821, withdrawn) and ETRN (RFC 1985) are not implemented */
    {"TURN", "TURN\r\n", 0, R_UNKNOWN, A_SAME},
    {"ETRN", "ETRN example.org\r\n", 0, R_UNKNOWN, A_SAME},
    /* RFC 5321 §4.1.4: after a refused EHLO the state is what it was */
    {"EHLO without a name", "EHLO\r\n", 0, "501 5.5.4 Syntax: EHLO hostname\r\n", A_SAME},
    {"HELO with two words", "HELO a b\r\n", 0, "501 5.5.4 Syntax: HELO hostname\r\n", A_SAME},
    {"EHLO with a control", "EHLO a\tb\r\n", 0, "501 5.5.4 Syntax: EHLO hostname\r\n", A_SAME},
    {"RSET with an argument", "RSET now\r\n", 0, "501 5.5.4 Syntax: RSET\r\n", A_SAME},
    {"STARTTLS with an argument", "STARTTLS now\r\n", 0, "501 5.5.4 Syntax: STARTTLS\r\n", A_SAME},
    {"over-long line", LONG_NOOP, 0, R_TOO_LONG, A_SAME},
    /* a NUL or bare LF in a command line ends the session (smuggling rule) */
    {"command with NUL", "NOOP\0x\r\n", 8, R_NUL, A_CLOSED},
    {"command with bare LF", "NOOP\nNOOP\r\n", 0, R_BARE_LF, A_CLOSED},
    /* a BDAT size we cannot read loses the framing: 501, then 421 and close */
    {"BDAT non-numeric", "BDAT abc\r\n", 0, R_BDAT_SYNTAX R_FRAMING, A_CLOSED},
    {"BDAT negative", "BDAT -1\r\n", 0, R_BDAT_SYNTAX R_FRAMING, A_CLOSED},
    {"BDAT plus sign", "BDAT +4\r\nabcd", 0, R_BDAT_SYNTAX R_FRAMING, A_CLOSED},
    {"BDAT 19 digits", "BDAT 1234567890123456789\r\n", 0, R_BDAT_SYNTAX R_FRAMING, A_CLOSED},
    {"BDAT 2^64", "BDAT 18446744073709551616 LAST\r\n", 0, R_BDAT_SYNTAX R_FRAMING, A_CLOSED},
    {"BDAT no size", "BDAT\r\n", 0, R_BDAT_SYNTAX R_FRAMING, A_CLOSED},
    {"BDAT bad keyword", "BDAT 4 FIRST\r\nabcd", 0, R_BDAT_SYNTAX R_FRAMING, A_CLOSED},
    {"HTTP request", "GET / HTTP/1.1\r\n", 0, R_HTTP, A_CLOSED},
    {"QUIT", C_QUIT, 0, R_BYE, A_CLOSED},
    {"lower-case quit", "quit\r\n", 0, R_BYE, A_CLOSED},
};

/* ------------------------------------------------------------------ */
/* Running the tables */

static void build(struct script *sc, enum st s, const char *in, size_t len, const char *reply,
                  enum cls after, const char *body)
{
	const struct state_def *sd = &states[s];

	memset(sc, 0, sizeof(*sc));
	sc->require_tls = sd->require_tls;
	for (size_t i = 0; i < sizeof(sd->setup) / sizeof(sd->setup[0]) && sd->setup[i].in; i++)
		add(sc, sd->setup[i].in, sd->setup[i].want, NULL);
	enum cls c = after == A_SAME ? sd->cls : after;
	const char *cmd_body = NULL, *bdat_body = NULL;
	if (strstr(reply, "queued as") != NULL)
		cmd_body = body;
	else if (c == A_BDAT)
		bdat_body = body ? body : sd->bdat_so_far;
	if (c == A_BDAT && bdat_body == NULL)
		fail_msg("state %s: no BDAT body", sd->name);
	if (c == A_BDAT && body == NULL) {
		/* the probe's chunk "xyz" follows what was accepted before */
		static char buf[64];
		snprintf(buf, sizeof(buf), "%sxyz", bdat_body);
		bdat_body = buf;
	}
	assert_true(sc->n < MAX_STEPS);
	sc->st[sc->n++] = (struct step){in, len, reply, cmd_body};
	add_probe(sc, c, bdat_body);
}

static void test_matrix(void **state)
{
	(void)state;
	size_t n = 0;

	for (size_t i = 0; i < sizeof(matrix) / sizeof(matrix[0]); i++) {
		const struct row *r = &matrix[i];
		struct script sc;
		char what[160];

		snprintf(what, sizeof(what), "[%s] %.30s -> %s", states[r->st].name, r->cmd,
		         cls_names[r->after]);
		build(&sc, r->st, r->cmd, 0, r->reply, r->after, r->body);
		run_all_modes(&sc, what);
		n++;
	}
	/* the matrix is complete: each state has one row per command */
	static const char *const cmds[] = {C_HELO, C_EHLO,     C_MAIL,      C_MAIL_LC,    C_RCPT,
	                                   C_DATA, C_BDAT,     C_BDAT_LAST, C_BDAT0_LAST, C_RSET,
	                                   C_VRFY, C_STARTTLS, C_AUTH};
	for (size_t s = 0; s < S_COUNT; s++)
		for (size_t k = 0; k < sizeof(cmds) / sizeof(cmds[0]); k++) {
			unsigned rows = 0;
			for (size_t i = 0; i < sizeof(matrix) / sizeof(matrix[0]); i++)
				rows += matrix[i].st == s && strcmp(matrix[i].cmd, cmds[k]) == 0;
			if (rows != 1)
				fail_msg("state %s: %u rows for %.20s", states[s].name, rows,
				         cmds[k]);
		}
	print_message("matrix: %zu state x command cases, 3 ways each\n", n);
}

static void test_anywhere(void **state)
{
	(void)state;
	size_t n = 0;

	for (size_t s = 0; s < S_COUNT; s++)
		for (size_t i = 0; i < sizeof(anywhere) / sizeof(anywhere[0]); i++) {
			const struct anywhere *a = &anywhere[i];
			struct script sc;
			char what[160];

			snprintf(what, sizeof(what), "[%s] %s", states[s].name, a->what);
			build(&sc, (enum st)s, a->cmd, a->len, a->reply, a->after, NULL);
			run_all_modes(&sc, what);
			n++;
		}
	print_message("anywhere: %zu state x command cases, 3 ways each\n", n);
}

/*
 * Random sequences (fixed seed, so a failure repeats): no expected replies,
 * but the three ways of feeding must agree byte for byte, no message may be
 * left half-open, and the sanitizers must stay quiet.
 */
static const char *const pool[] = {
    C_HELO,
    C_EHLO,
    C_MAIL,
    C_MAIL_LC,
    C_RCPT,
    C_RCPT_RELAY,
    C_DATA,
    C_BDAT,
    C_BDAT_LAST,
    C_BDAT0_LAST,
    C_RSET,
    C_VRFY,
    C_STARTTLS,
    C_AUTH,
    C_QUIT,
    C_NOOP,
    "HELP\r\n",
    "EXPN x\r\n",
    "FOO\r\n",
    "\r\n",
    "EHLO\r\n",
    CONTENT,
    ".\r\n",
    "BDAT 0\r\n",
    "BDAT x\r\n",
    "DATA x\r\n",
    "RSET x\r\n",
    "STARTTLS x\r\n",
    LONG_NOOP,
    "MAIL FROM:<>\r\n",
    "MAIL FROM:<a@b.example> SIZE=99999\r\n",
    "RCPT TO:<Postmaster>\r\n",
    "BDAT 7\r\nDATA\r\n.",
    "BDAT 3 LAST\r\n.\r\n",
    "text line\r\n",
};

static uint64_t rng_state = 0x5eed5eed5eedULL;

static unsigned rnd(unsigned n)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (unsigned)(rng_state % n);
}

static void test_random_sequences(void **state)
{
	(void)state;
	const size_t npool = sizeof(pool) / sizeof(pool[0]);
	unsigned stored = 0, closes = 0, tls = 0;
	const char *seed = getenv("SMX_BATTERY_SEED"); /* to explore locally */

	if (seed != NULL)
		rng_state = strtoull(seed, NULL, 0) | 1;

	for (int i = 0; i < 3000; i++) {
		struct script sc;
		char *outs[3] = {0}, *bodies[3] = {0};
		bool closed[3];

		/* start from one of the states; session-ending commands are rare */
		const struct state_def *sd = &states[rnd(S_COUNT)];
		memset(&sc, 0, sizeof(sc));
		sc.require_tls = sd->require_tls;
		for (size_t k = 0; k < 8 && sd->setup[k].in; k++)
			add(&sc, sd->setup[k].in, "", NULL);
		size_t n = 1 + rnd((unsigned)(MAX_STEPS - sc.n));
		for (size_t k = 0; k < n; k++) {
			const char *c = pool[rnd((unsigned)npool)];
			if ((strcmp(c, C_QUIT) == 0 || strcmp(c, "BDAT x\r\n") == 0) && rnd(8) != 0)
				c = C_NOOP;
			add(&sc, c, "", NULL);
		}
		for (int m = 0; m < 3; m++) {
			struct drv *d = drv_new(sc.require_tls);
			struct buf group = {0};

			collect(d);
			buf_clear(&group);
			for (size_t k = 0; k < sc.n; k++) {
				buf_add(&group, sc.st[k].in, step_len(&sc.st[k]));
				if (k + 1 == sc.n || m == M_STEP ||
				    (m == M_PIPE && step_syncs(&sc.st[k]))) {
					feedn(d, group.p, group.len, m == M_BYTE);
					buf_clear(&group);
				}
			}
			buf_free(&group);
			mask_qids(&d->all);
			outs[m] = strdup(d->all.p);
			bodies[m] = strdup(d->bodies.p);
			closed[m] = d->closed;
			if (m == M_STEP) {
				stored += d->stores;
				closes += d->closed;
				tls += d->starttls;
			}
			drv_end(d);
			drv_free(d);
		}
		for (int m = 1; m < 3; m++)
			if (strcmp(outs[0], outs[m]) != 0 || strcmp(bodies[0], bodies[m]) != 0 ||
			    closed[0] != closed[m]) {
				struct buf in = {0};
				buf_clear(&in);
				for (size_t k = 0; k < sc.n; k++)
					buf_add(&in, sc.st[k].in, step_len(&sc.st[k]));
				fail_msg(
				    "sequence %d (%s) differs from one command per read:\ninput "
				    "\"%.2000s\"\n got \"%s\"\nwant \"%s\"",
				    i, mode_names[m], in.p, outs[m], outs[0]);
			}
		for (int m = 0; m < 3; m++) {
			free(outs[m]);
			free(bodies[m]);
		}
	}
	print_message("random: 3000 sequences, 3 ways each: %u messages stored, %u sessions "
	              "closed, %u TLS upgrades\n",
	              stored, closes, tls);
}

/* ------------------------------------------------------------------ */
/* Pipelining: what a client may not put in one read */

/* a session in TLS after EHLO */
static struct drv *tls_ready(void)
{
	struct drv *d = drv_new(true);

	collect(d);
	expect(d, R_GREET);
	cmd(d, C_EHLO, R_EHLO_P);
	cmd(d, C_STARTTLS, R_220TLS);
	cmd(d, C_EHLO, R_EHLO_T);
	return d;
}

/* a whole transaction, pipelined as RFC 2920 allows, several times over */
static void test_pipelined_groups(void **state)
{
	(void)state;
	struct drv *d = tls_ready();
	static const char group[] =
	    C_MAIL C_RCPT_RELAY C_RCPT "RCPT TO:<bad address>\r\n"
	                               "FOO\r\n" LONG_NOOP "NOOP\r\n" C_DATA;

	/* errors in the middle of a group do not desynchronise it */
	cmd(d, group,
	    R_MAIL_OK R_RELAY R_RCPT_OK
	    "553 5.1.3 Bad recipient address syntax\r\n" R_UNKNOWN R_TOO_LONG R_OK R_354);
	/* content end, a BDAT transaction with its chunk bytes, and the next
	 * commands, all in one read */
	cmd(d, CONTENT C_MAIL C_RCPT "BDAT 4\r\nRSETBDAT 4 LAST\r\nQUIT" C_MAIL C_RCPT C_RSET,
	    R_QUEUED R_MAIL_OK R_RCPT_OK R_CHUNK4 R_QUEUED R_MAIL_OK R_RCPT_OK R_OK);
	assert_int_equal(d->stores, 2);
	assert_string_equal(d->bodies.p, CONTENT_BODY "|RSETQUIT|");
	cmd(d, C_QUIT, R_BYE);
	drv_end(d);
	drv_free(d);
}

/* DATA ends a group: content in the same read is refused, whatever the
 * answer to DATA would have been (RFC 2920 §3.1) */
static void test_pipelined_content_after_data(void **state)
{
	(void)state;
	static const struct {
		const char *what;
		const char *before; /* commands that set up the transaction */
		const char *replies;
	} cases[] = {
	    {"accepted DATA", C_MAIL C_RCPT, R_MAIL_OK R_RCPT_OK},
	    /* every RCPT refused: the content must not be run as commands */
	    {"no valid recipient", C_MAIL C_RCPT_RELAY, R_MAIL_OK R_RELAY},
	    /* MAIL refused (here: never sent) */
	    {"no MAIL", "", ""},
	    {"MAIL refused", "MAIL FROM:<bob@example.net> SIZE=20000\r\n" C_RCPT,
	     "552 5.3.4 Message size exceeds fixed maximum message size\r\n" R_NEED_MAIL},
	};
	static const char content[] =
	    "MAIL FROM:<spoof@x.example>\r\n" C_RCPT C_DATA "Subject: smuggled\r\n\r\nx\r\n.\r\n";

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct drv *d = tls_ready();
		char in[512], want[512];

		snprintf(in, sizeof(in), "%s" C_DATA "%s", cases[i].before, content);
		snprintf(want, sizeof(want), "%s" R_SYNC, cases[i].replies);
		feedn(d, in, strlen(in), false);
		const char *got = take(d);
		if (strcmp(got, want) != 0)
			fail_msg("%s: got \"%s\", want \"%s\"", cases[i].what, got, want);
		assert_true(d->closed);
		assert_int_equal(d->stores, 0);
		drv_end(d);
		drv_free(d);
	}

	/* Inside a BDAT transaction DATA is a 503 (RFC 3030 §2), pipelined or
	 * not, and the transaction goes on: what follows is read as commands,
	 * as BDAT clients pipeline them. Nothing is stored without BDAT LAST. */
	struct drv *d = tls_ready();
	cmd(d, C_MAIL C_RCPT "BDAT 1\r\nx" C_DATA "BDAT 2 LAST\r\nyz",
	    R_MAIL_OK R_RCPT_OK "250 2.0.0 Ok: 1 octets received\r\n" R_DATA_BDAT R_QUEUED);
	assert_string_equal(d->bodies.p, "xyz|");
	drv_end(d);
	drv_free(d);
}

/* STARTTLS ends a group in every state, and the rest is never run */
static void test_pipelined_after_starttls(void **state)
{
	(void)state;
	static const char *const after[] = {C_EHLO, C_MAIL, "x", "\r\n", C_QUIT};
	static const enum st plain[] = {S_GREETED,  S_PLAIN_HELO, S_PLAIN_EHLO,
	                                S_OPEN_NEW, S_OPEN_EHLO,  S_OPEN_RCPT};

	for (size_t s = 0; s < sizeof(plain) / sizeof(plain[0]); s++)
		for (size_t i = 0; i < sizeof(after) / sizeof(after[0]); i++) {
			const struct state_def *sd = &states[plain[s]];
			struct drv *d = drv_new(sd->require_tls);
			char in[128];

			collect(d);
			expect(d, R_GREET);
			for (size_t k = 0; k < 8 && sd->setup[k].in; k++)
				cmd(d, sd->setup[k].in, sd->setup[k].want);
			snprintf(in, sizeof(in), C_STARTTLS "%s", after[i]);
			cmd(d, in, R_INJECT);
			assert_true(d->closed);
			assert_int_equal(d->starttls, 0);
			drv_end(d);
			drv_free(d);
		}
}

/* ------------------------------------------------------------------ */
/* BDAT edge cases */

static void test_bdat_huge_size(void **state)
{
	(void)state;
	/* 18 digits parse; the chunk is far over the limit. RFC 3030 §2: it is
	 * read and thrown away, so nothing is answered until it is all read;
	 * the data-phase timeout ends a client that never sends it. */
	struct drv *d = tls_ready();
	char junk[4096];

	cmd(d, C_MAIL, R_MAIL_OK);
	cmd(d, C_RCPT, R_RCPT_OK);
	cmd(d, "BDAT 999999999999999999 LAST\r\n", "");
	memset(junk, 'Q', sizeof(junk));
	memcpy(junk, C_QUIT, strlen(C_QUIT)); /* commands in the chunk are content */
	for (int i = 0; i < 8; i++)
		cmdn(d, junk, sizeof(junk), "");
	assert_true(inbound_session_in_data(d->s));
	assert_null(strstr(d->content.p, "QQQQ")); /* nothing is kept while discarding */
	inbound_session_timeout(d->s);
	collect(d);
	expect(d, R_TIMEOUT);
	assert_int_equal(inbound_session_action(d->s), INBOUND_CLOSE);
	assert_int_equal(d->stores, 0);
	drv_end(d);
	drv_free(d);

	/* the biggest chunk size, not LAST, then RSET never comes: same */
	d = tls_ready();
	cmd(d, C_MAIL, R_MAIL_OK);
	cmd(d, C_RCPT, R_RCPT_OK);
	cmd(d, "BDAT 999999999999999999\r\nabc", "");
	assert_true(inbound_session_in_data(d->s));
	drv_end(d);
	drv_free(d);
}

/* size limit: the chunk is read, 552, later chunks refused until LAST; then
 * the next transaction works */
static void test_bdat_over_limit(void **state)
{
	(void)state;
	static char big[SIZE_MAX_MSG + 64];
	int n = snprintf(big, sizeof(big), "BDAT %d\r\n", SIZE_MAX_MSG + 1);

	memset(big + n, 'b', SIZE_MAX_MSG + 1);
	for (int bw = 0; bw < 2; bw++) {
		struct drv *d = tls_ready();

		cmd(d, C_MAIL, R_MAIL_OK);
		cmd(d, C_RCPT, R_RCPT_OK);
		feedn(d, big, (size_t)n + SIZE_MAX_MSG + 1, bw);
		expect(d, R_TOO_BIG);
		assert_false(d->closed);
		feedn(d, "BDAT 4\r\nabcd" C_RCPT, strlen("BDAT 4\r\nabcd" C_RCPT), bw);
		expect(d, R_CHUNK_REF R_RCPT_BDAT);
		cmd(d, C_DATA, R_DATA_BDAT);
		cmd(d, "BDAT 4 LAST\r\nabcd", R_CHUNK_REF);
		/* the transaction is over: the next one works */
		cmd(d, C_RCPT, R_NEED_MAIL);
		cmd(d, C_MAIL C_RCPT "BDAT 3 LAST\r\nxyz", R_MAIL_OK R_RCPT_OK R_QUEUED);
		assert_string_equal(d->bodies.p, "xyz|");
		cmd(d, C_QUIT, R_BYE);
		drv_end(d);
		drv_free(d);
	}

	/* a first chunk at exactly the limit counts our Received: header too */
	struct drv *d = tls_ready();
	n = snprintf(big, sizeof(big), "BDAT %d LAST\r\n", SIZE_MAX_MSG);
	memset(big + n, 'c', SIZE_MAX_MSG);
	cmd(d, C_MAIL, R_MAIL_OK);
	cmd(d, C_RCPT, R_RCPT_OK);
	cmdn(d, big, (size_t)n + SIZE_MAX_MSG, R_TOO_BIG);
	cmd(d, C_RCPT, R_NEED_MAIL);
	cmd(d, C_RSET, R_OK);
	drv_end(d);
	drv_free(d);
}

/* BDAT content is literal: CRLF.CRLF, dots and command lines are data */
static void test_bdat_literal_content(void **state)
{
	(void)state;
	static const char chunk[] = "a\r\n.\r\nQUIT\r\n..b\r\nMAIL FROM:<x@y>\r\n";
	char in[256];

	for (int bw = 0; bw < 2; bw++) {
		struct drv *d = tls_ready();

		snprintf(in, sizeof(in),
		         C_MAIL C_RCPT "BDAT %zu\r\n%sBDAT 6 LAST\r\n.\r\n.\r\n" C_RSET,
		         sizeof(chunk) - 1, chunk);
		feedn(d, in, strlen(in), bw);
		char want[256];
		snprintf(want, sizeof(want),
		         R_MAIL_OK R_RCPT_OK "250 2.0.0 Ok: %zu octets received\r\n" R_QUEUED R_OK,
		         sizeof(chunk) - 1);
		expect(d, want);
		snprintf(want, sizeof(want), "%s.\r\n.\r\n|", chunk);
		assert_string_equal(d->bodies.p, want);
		drv_end(d);
		drv_free(d);
	}
}

/* a refused chunk is read and dropped: its bytes never run as commands,
 * not even STARTTLS before TLS; a NUL in a chunk ends the session */
static void test_bdat_refused_chunk_bytes(void **state)
{
	(void)state;
	for (int bw = 0; bw < 2; bw++) {
		struct drv *d = drv_new(true);

		collect(d);
		expect(d, R_GREET);
		feeds(d, C_EHLO "BDAT 10\r\nSTARTTLS\r\n" C_NOOP, bw);
		expect(d, R_EHLO_P R_530 R_OK);
		assert_int_equal(d->starttls, 0);
		feeds(d, "BDAT 10 LAST\r\nSTARTTLS\r\n" C_STARTTLS, bw);
		expect(d, R_530 R_220TLS);
		assert_int_equal(d->starttls, 1);
		/* in TLS, a chunk with a NUL: refused at its end, session closed */
		feeds(d, C_EHLO C_MAIL C_RCPT "BDAT 3\r\na", bw);
		expect(d, R_EHLO_T R_MAIL_OK R_RCPT_OK);
		feedn(d, "\0b" C_NOOP, 8, bw);
		expect(d, "550 5.6.0 Error: NUL character in message\r\n");
		assert_true(d->closed);
		assert_int_equal(d->stores, 0);
		drv_end(d);
		drv_free(d);
	}
}

/* BDAT after a DATA that was refused, and DATA after a refused BDAT */
static void test_bdat_after_data_rejection(void **state)
{
	(void)state;
	struct drv *d = tls_ready();

	/* DATA refused (no recipient, then bad syntax): BDAT then works */
	cmd(d, C_MAIL, R_MAIL_OK);
	cmd(d, C_DATA, R_NO_RCPT);
	cmd(d, C_RCPT, R_RCPT_OK);
	cmd(d, "DATA now\r\n", "501 5.5.4 Syntax: DATA\r\n");
	cmd(d, "BDAT 4 LAST\r\nabcd", R_QUEUED);
	/* DATA content refused (too big): the transaction is gone, BDAT needs MAIL */
	static char big[SIZE_MAX_MSG + 64];
	memset(big, 'd', sizeof(big));
	memcpy(big + sizeof(big) - 7, "\r\n.\r\n", 6);
	cmd(d, C_MAIL, R_MAIL_OK);
	cmd(d, C_RCPT, R_RCPT_OK);
	cmd(d, C_DATA, R_354);
	cmdn(d, big, sizeof(big) - 2, "552 5.3.4 Error: message too big (limit 10000 octets)\r\n");
	cmd(d, "BDAT 4 LAST\r\nabcd", R_NEED_MAIL);
	/* the sink cannot begin: DATA 451, then BDAT is tried afresh */
	cmd(d, C_MAIL, R_MAIL_OK);
	cmd(d, C_RCPT, R_RCPT_OK);
	d->sink_fail_begin = true;
	cmd(d, C_DATA, "451 4.3.0 Error: queue file write error\r\n");
	d->sink_fail_begin = false;
	cmd(d, "BDAT 2 LAST\r\nok", R_QUEUED);
	/* a refused BDAT, then DATA in the same transaction */
	cmd(d, C_MAIL, R_MAIL_OK);
	cmd(d, "BDAT 2\r\nno", R_NO_RCPT);
	cmd(d, C_RCPT, R_RCPT_OK);
	cmd(d, C_DATA, R_354);
	cmd(d, CONTENT, R_QUEUED);
	assert_string_equal(d->bodies.p, "abcd|ok|" CONTENT_BODY "|");
	assert_int_equal(d->stores, 3);
	drv_end(d);
	drv_free(d);
}

/* BDAT 0: an empty chunk, LAST or not, alone or pipelined */
static void test_bdat_zero(void **state)
{
	(void)state;
	struct drv *d = tls_ready();

	cmd(d, C_MAIL C_RCPT "BDAT 0\r\nBDAT 0\r\nBDAT 2\r\nhiBDAT 0 LAST\r\n" C_RSET,
	    R_MAIL_OK R_RCPT_OK "250 2.0.0 Ok: 0 octets received\r\n"
	                        "250 2.0.0 Ok: 0 octets received\r\n"
	                        "250 2.0.0 Ok: 2 octets received\r\n" R_QUEUED R_OK);
	assert_string_equal(d->bodies.p, "hi|");
	/* spelling: lower case, extra spaces, leading zeros */
	cmd(d, C_MAIL C_RCPT "bdat 003   last\r\nabc", R_MAIL_OK R_RCPT_OK R_QUEUED);
	assert_string_equal(d->bodies.p, "hi|abc|");
	drv_end(d);
	drv_free(d);
}

/* errors_max also counts refused chunks; the session closes with 421 */
static void test_bdat_errors_max(void **state)
{
	(void)state;
	struct drv *d = tls_ready();
	struct buf in = {0}, want = {0};

	buf_clear(&in);
	buf_clear(&want);
	for (int i = 0; i < 10; i++) {
		buf_adds(&in, "BDAT 1\r\nx");
		buf_adds(&want, R_NEED_MAIL);
	}
	buf_adds(&in, "NOOP\r\n");
	buf_adds(&want, "421 4.7.0 " HOST " Error: too many errors\r\n");
	cmd(d, in.p, want.p);
	assert_true(d->closed);
	buf_free(&in);
	buf_free(&want);
	drv_end(d);
	drv_free(d);
}

static int teardown(void **state)
{
	(void)state;
	drv_free(live_drv);
	live_drv = NULL;
	return 0;
}

#define T(f) cmocka_unit_test_teardown(f, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    T(test_matrix),
	    T(test_anywhere),
	    T(test_random_sequences),
	    T(test_pipelined_groups),
	    T(test_pipelined_content_after_data),
	    T(test_pipelined_after_starttls),
	    T(test_bdat_huge_size),
	    T(test_bdat_over_limit),
	    T(test_bdat_literal_content),
	    T(test_bdat_refused_chunk_bytes),
	    T(test_bdat_after_data_rejection),
	    T(test_bdat_zero),
	    T(test_bdat_errors_max),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
