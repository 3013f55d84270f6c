/*
 * test_inbound_session - the server SMTP session state machine
 * (inbound/session.h), driven through a simulated I/O layer: STARTTLS
 * handshakes always succeed, stores succeed or fail on demand, content goes
 * to a memory sink. Covers the mandatory TLS gate and STARTTLS injection
 * (security-anchors §8 A), smuggling and line endings (§2.3, §8 C), and the
 * state-machine robustness cases of §8 E; output must not depend on how the
 * input is split (whole reads versus one byte at a time).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/config.h"
#include "common/log.h"
#include "common/qid.h"
#include "inbound/session.h"
#include "smtp/command.h"
#include "smtp/reply.h"
#include "testbuf.h"

#define HOST     "mx.test.example"
#define TLS_DESC "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"

#define R_GREET     "220 " HOST " ESMTP strictmx\r\n"
#define R_530       "530 5.7.0 Must issue a STARTTLS command first\r\n"
#define R_OK        "250 2.0.0 Ok\r\n"
#define R_MAIL_OK   "250 2.1.0 Ok\r\n"
#define R_RCPT_OK   "250 2.1.5 Ok\r\n"
#define R_354       "354 End data with <CR><LF>.<CR><LF>\r\n"
#define R_QUEUED    "250 2.0.0 Ok: queued as "
#define R_NEED_MAIL "503 5.5.1 Error: need MAIL command\r\n"
#define R_TOO_LONG  "500 5.5.2 Error: line too long\r\n"
#define R_451       "451 4.3.0 Error: queue file write error\r\n"
#define R_SYNC      "554 5.5.0 Error: SMTP protocol synchronization\r\n"

#define MAIL_BOB   "MAIL FROM:<bob@example.net>\r\n"
#define RCPT_ALICE "RCPT TO:<alice@example.org>\r\n"

#define SINK_MAX (256 * 1024)

static bool buf_has(const struct buf *b, const char *s)
{
	return b->len && memmem(b->p, b->len, s, strlen(s)) != NULL;
}

/* the memory sink: content of the message being received */
struct sink {
	struct buf content;
	bool open;
	bool fail_begin;
	unsigned begins, aborts;
};

static int sink_begin(void *ctx)
{
	struct sink *k = ctx;

	assert_false(k->open);
	if (k->fail_begin)
		return -1;
	buf_clear(&k->content);
	k->open = true;
	k->begins++;
	return 0;
}

static void sink_write(void *ctx, const void *p, size_t n)
{
	struct sink *k = ctx;

	assert_true(k->open);
	assert_true(k->content.len + n <= SINK_MAX);
	buf_add(&k->content, p, n);
}

static void sink_abort(void *ctx)
{
	struct sink *k = ctx;

	assert_true(k->open);
	k->open = false;
	buf_clear(&k->content);
	k->aborts++;
}

/* the driver: a session plus what a real I/O layer would do around it */
struct drv {
	struct strlist domains;
	struct inbound_params p;
	struct sink sink;
	struct inbound_session *s;
	struct buf out;  /* output since the last expect() */
	struct buf all;  /* output of the whole session */
	struct buf pend; /* input not consumed yet */
	struct buf msg;  /* content of the last stored message */
	unsigned stores, starttls;
	unsigned delays; /* INBOUND_DELAY actions seen */
	bool fail_store;
	bool closed;
	bool bytewise; /* feed one byte per read */
	/* envelope of the last stored message */
	char env_qid[40];
	char env_from[SMTP_PATH_MAX + 1];
	char env_rcpt[8][SMTP_PATH_MAX + 1];
	size_t env_n;
	uint64_t env_size;
	bool env_tls;
	/* test inputs, freed with the driver */
	void *scratch[8];
	size_t n_scratch;
};

/* drivers not freed yet: the teardown frees them when an assertion fails */
static struct drv *live[4];

static struct drv *drv_new(void)
{
	struct drv *d = calloc(1, sizeof(*d));

	assert_non_null(d);
	for (size_t i = 0;; i++) {
		assert_true(i < sizeof(live) / sizeof(live[0]));
		if (live[i] == NULL) {
			live[i] = d;
			break;
		}
	}
	log_set_level(LOG_LVL_ERR);
	strlist_add(&d->domains, "example.org");
	d->p.hostname = HOST;
	d->p.info_url = NULL;
	d->p.require_tls = true;
	d->p.tls_available = true;
	d->p.local_domains = &d->domains;
	d->p.line_max = 512;
	d->p.text_line_max = 1000;
	d->p.size_max = 10000;
	d->p.rcpt_max = 5;
	d->p.errors_max = 10;
	d->p.peer_ip = "192.0.2.1";
	d->p.id = 0x1234;
	d->p.sink.ctx = &d->sink;
	d->p.sink.begin = sink_begin;
	d->p.sink.write = sink_write;
	d->p.sink.abort = sink_abort;
	buf_add(&d->out, "", 0);
	buf_add(&d->all, "", 0);
	buf_add(&d->pend, "", 0);
	buf_add(&d->msg, "", 0);
	buf_add(&d->sink.content, "", 0);
	return d;
}

static void drv_free(struct drv *d)
{
	for (size_t i = 0; i < sizeof(live) / sizeof(live[0]); i++)
		if (live[i] == d)
			live[i] = NULL;
	for (size_t i = 0; i < d->n_scratch; i++)
		free(d->scratch[i]);
	inbound_session_free(&d->s);
	strlist_free(&d->domains);
	buf_free(&d->out);
	buf_free(&d->all);
	buf_free(&d->pend);
	buf_free(&d->msg);
	buf_free(&d->sink.content);
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
	assert_true(d->sink.open);
	assert_true(env.n_rcpts >= 1 && env.n_rcpts <= 8);
	assert_int_equal(env.size, d->sink.content.len);
	snprintf(d->env_qid, sizeof(d->env_qid), "%s", env.queue_id);
	snprintf(d->env_from, sizeof(d->env_from), "%s", env.from->addr);
	for (size_t i = 0; i < env.n_rcpts; i++)
		snprintf(d->env_rcpt[i], sizeof(d->env_rcpt[i]), "%s", env.rcpts[i].addr);
	d->env_n = env.n_rcpts;
	d->env_size = env.size;
	d->env_tls = env.tls;
	buf_clear(&d->msg);
	buf_add(&d->msg, d->sink.content.p, d->sink.content.len);
	d->sink.open = false; /* committed (or, on failure, removed) */
	d->stores++;
	if (d->fail_store) {
		struct smtp_reply r;
		smtp_reply_set(&r, 451, "4.3.0", "Error: queue file write error");
		inbound_session_store_done(d->s, &r);
	} else {
		inbound_session_store_done(d->s, NULL);
	}
}

/* run the session on the pending input until it needs more or closes */
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
			/* the I/O layer refuses pending plaintext (CVE-2011-0411) */
			assert_int_equal(d->pend.len, 0);
			d->starttls++;
			inbound_session_tls_started(d->s, TLS_DESC);
			assert_int_equal(inbound_session_action(d->s), INBOUND_NONE);
			break;
		case INBOUND_STORE:
			do_store(d);
			break;
		case INBOUND_CLOSE:
			d->closed = true;
			return;
		case INBOUND_DELAY:
			d->delays++;
			inbound_session_delay_done(d->s);
			break;
		}
	}
}

static void feedn(struct drv *d, const char *p, size_t n)
{
	if (d->bytewise) {
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

static void feed(struct drv *d, const char *s)
{
	feedn(d, s, strlen(s));
}

static void drv_open(struct drv *d)
{
	d->s = inbound_session_new(&d->p);
	assert_non_null(d->s);
	inbound_session_greet(d->s);
	collect(d);
}

/* assert the output since the last call is exactly want, then forget it */
static void expect(struct drv *d, const char *want)
{
	assert_string_equal(d->out.p, want);
	buf_clear(&d->out);
}

static void expect_prefix(struct drv *d, const char *want)
{
	if (strncmp(d->out.p, want, strlen(want)) != 0)
		fail_msg("output \"%s\" does not start with \"%s\"", d->out.p, want);
	buf_clear(&d->out);
}

/* feed one command and check its whole reply */
static void cmd(struct drv *d, const char *line, const char *want)
{
	feed(d, line);
	expect(d, want);
}

/* a session after EHLO, STARTTLS and EHLO again: ready for MAIL */
static struct drv *tls_session(void)
{
	struct drv *d = drv_new();

	drv_open(d);
	expect(d, R_GREET);
	feed(d, "EHLO client.example\r\n");
	expect_prefix(d, "250-" HOST "\r\n");
	cmd(d, "STARTTLS\r\n", "220 2.0.0 Ready to start TLS\r\n");
	assert_int_equal(d->starttls, 1);
	feed(d, "EHLO client.example\r\n");
	expect_prefix(d, "250-" HOST "\r\n");
	return d;
}

static void start_data(struct drv *d)
{
	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	cmd(d, "DATA\r\n", R_354);
}

static void expect_queued(struct drv *d)
{
	char want[128];

	snprintf(want, sizeof(want), R_QUEUED "%s\r\n", d->env_qid);
	assert_true(d->env_qid[0] != '\0');
	expect(d, want);
}

/* feed content that ends a message and check it was queued */
static void deliver(struct drv *d, const char *content)
{
	unsigned n = d->stores;

	feed(d, content);
	assert_int_equal(d->stores, n + 1);
	expect_queued(d);
}

/* the message content after the Received: header (which holds the date) */
static const char *body_of(const struct drv *d)
{
	const char *p = strstr(d->msg.p, "+0000\r\n");

	assert_non_null(p);
	return p + 7;
}

/* ---- greeting, EHLO, the TLS gate ---- */

static void test_greeting_and_ehlo(void **state)
{
	struct drv *d = drv_new();

	drv_open(d);
	expect(d, "220 mx.test.example ESMTP strictmx\r\n");
	feed(d, "EHLO client.example\r\n");
	assert_true(buf_has(&d->out, "250-STARTTLS\r\n"));
	assert_false(buf_has(&d->out, "AUTH"));
	expect(d, "250-mx.test.example\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n"
	          "250-SMTPUTF8\r\n250-CHUNKING\r\n250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n");
	cmd(d, "NOOP\r\n", R_OK);
	cmd(d, "STARTTLS\r\n", "220 2.0.0 Ready to start TLS\r\n");
	assert_int_equal(d->starttls, 1);
	feed(d, "EHLO client.example\r\n");
	assert_false(buf_has(&d->out, "STARTTLS"));
	assert_false(buf_has(&d->out, "AUTH"));
	expect(d, "250-mx.test.example\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n"
	          "250-SMTPUTF8\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n");
	cmd(d, "QUIT\r\n", "221 2.0.0 Bye\r\n");
	assert_true(d->closed);
	drv_free(d);
}

static void test_no_starttls_without_tls_context(void **state)
{
	struct drv *d = drv_new();

	d->p.tls_available = false;
	drv_open(d);
	feed(d, "EHLO client.example\r\n");
	assert_false(buf_has(&d->out, "STARTTLS"));
	buf_clear(&d->out);
	cmd(d, "STARTTLS\r\n", "454 4.7.0 TLS not available due to local problem\r\n");
	drv_free(d);
}

/* §8 A4: exactly 530 5.7.0 for MAIL, RCPT, DATA, AUTH, VRFY before TLS */
static void test_tls_gate(void **state)
{
	static const char *const cmds[] = {
	    MAIL_BOB,
	    RCPT_ALICE,
	    "DATA\r\n",
	    "AUTH PLAIN\r\n",
	    "AUTH LOGIN dGVzdA==\r\n",
	    "VRFY alice\r\n",
	    "mail from:<bob@example.net>\r\n",
	};
	struct drv *d = drv_new();

	drv_open(d);
	expect(d, R_GREET);
	/* before EHLO too */
	cmd(d, MAIL_BOB, R_530);
	feed(d, "EHLO client.example\r\n");
	buf_clear(&d->out);
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		cmd(d, cmds[i], R_530);
	/* these work without TLS */
	cmd(d, "NOOP\r\n", R_OK);
	cmd(d, "RSET\r\n", R_OK);
	cmd(d, "HELO client.example\r\n", "250 " HOST "\r\n");
	assert_false(d->closed);
	cmd(d, "QUIT\r\n", "221 2.0.0 Bye\r\n");
	assert_true(d->closed);
	assert_int_equal(d->sink.begins, 0);
	drv_free(d);
}

static void test_tls_gate_info_url(void **state)
{
	struct drv *d = drv_new();
	const char *want = "530 5.7.0 Must issue a STARTTLS command first "
	                   "(see https://example.org/tls)\r\n";

	d->p.info_url = "https://example.org/tls";
	drv_open(d);
	feed(d, "EHLO client.example\r\n");
	buf_clear(&d->out);
	cmd(d, MAIL_BOB, want);
	cmd(d, RCPT_ALICE, want);
	cmd(d, "DATA\r\n", want);
	cmd(d, "AUTH PLAIN\r\n", want);
	cmd(d, "VRFY alice\r\n", want);
	cmd(d, "BDAT 3\r\nabc", want);
	drv_free(d);
}

/* an empty info_url is no URL */
static void test_tls_gate_empty_info_url(void **state)
{
	struct drv *d = drv_new();

	d->p.info_url = "";
	drv_open(d);
	feed(d, "EHLO client.example\r\n");
	buf_clear(&d->out);
	cmd(d, MAIL_BOB, R_530);
	cmd(d, "BDAT 3\r\nabc", R_530);
	drv_free(d);
}

/* RFC 3030: a refused chunk is still read; its bytes are not commands */
static void test_bdat_before_tls(void **state)
{
	struct drv *d = drv_new();

	drv_open(d);
	feed(d, "EHLO client.example\r\n");
	buf_clear(&d->out);
	cmd(d, "BDAT 6\r\nQUIT\r\n", R_530);
	assert_false(d->closed);
	cmd(d, "BDAT 6 LAST\r\nQUIT\r\n", R_530);
	assert_false(d->closed);
	/* the chunk split across reads */
	cmd(d, "BDAT 12\r\nQUIT\r\n", "");
	cmd(d, "QUIT\r\n", R_530);
	assert_false(d->closed);
	cmd(d, "NOOP\r\n", R_OK);
	assert_int_equal(d->sink.begins, 0);
	assert_int_equal(d->stores, 0);
	drv_free(d);
}

/* ---- STARTTLS ---- */

/* §8 A1: bytes after STARTTLS in the same read: 554 and close, never 220 */
static void test_starttls_injection(void **state)
{
	static const char *const inj[] = {
	    "STARTTLS\r\nEHLO inj\r\n",
	    "STARTTLS\r\nMAIL FROM:<a@b>\r\n",
	    "STARTTLS\r\nX",
	    "STARTTLS\r\n\r\n",
	    "STARTTLS\r\n\n",
	};

	for (size_t i = 0; i < sizeof(inj) / sizeof(inj[0]); i++) {
		struct drv *d = drv_new();

		drv_open(d);
		feed(d, "EHLO client.example\r\n");
		buf_clear(&d->out);
		feed(d, inj[i]);
		assert_false(buf_has(&d->out, "220"));
		expect(d, "554 5.5.0 Error: command pipelined after STARTTLS; closing\r\n");
		assert_true(d->closed);
		assert_int_equal(d->starttls, 0);
		assert_int_equal(inbound_session_action(d->s), INBOUND_CLOSE);
		drv_free(d);
	}
}

/* while STARTTLS is pending, nothing is consumed (the I/O layer decides) */
static void test_starttls_pending_consumes_nothing(void **state)
{
	struct drv *d = drv_new();
	const char *more = "EHLO inj\r\n";

	drv_open(d);
	assert_int_equal(inbound_session_input(d->s, "STARTTLS\r\n", 10), 10);
	assert_int_equal(inbound_session_action(d->s), INBOUND_STARTTLS);
	assert_int_equal(inbound_session_input(d->s, more, strlen(more)), 0);
	assert_int_equal(inbound_session_action(d->s), INBOUND_STARTTLS);
	collect(d);
	expect(d, R_GREET "220 2.0.0 Ready to start TLS\r\n");
	drv_free(d);
}

/* §8 A3/A4: STARTTLS x → 501; after TLS everything is forgotten */
static void test_starttls_state_reset(void **state)
{
	struct drv *d = drv_new();

	drv_open(d);
	feed(d, "EHLO client.example\r\n");
	buf_clear(&d->out);
	cmd(d, "STARTTLS x\r\n", "501 5.5.4 Syntax: STARTTLS\r\n");
	assert_int_equal(d->starttls, 0);
	cmd(d, "STARTTLS\r\n", "220 2.0.0 Ready to start TLS\r\n");
	assert_int_equal(d->starttls, 1);
	/* EHLO from before TLS is forgotten */
	cmd(d, MAIL_BOB, "503 5.5.1 Error: send HELO/EHLO first\r\n");
	feed(d, "EHLO client.example\r\n");
	buf_clear(&d->out);
	cmd(d, "STARTTLS\r\n", "503 5.5.1 Error: TLS already active\r\n");
	assert_int_equal(d->starttls, 1);
	cmd(d, MAIL_BOB, R_MAIL_OK);
	drv_free(d);
}

/* STARTTLS without EHLO first is allowed, and MAIL after it needs EHLO */
static void test_starttls_without_ehlo(void **state)
{
	struct drv *d = drv_new();

	drv_open(d);
	buf_clear(&d->out);
	cmd(d, "STARTTLS\r\n", "220 2.0.0 Ready to start TLS\r\n");
	cmd(d, MAIL_BOB, "503 5.5.1 Error: send HELO/EHLO first\r\n");
	drv_free(d);
}

/* ---- DATA ---- */

static void test_data_transaction(void **state)
{
	struct drv *d = tls_session();

	start_data(d);
	feed(d, "Subject: t\r\n\r\n..x\r\n..\r\n. \r\nbody\r\n");
	expect(d, "");
	assert_int_equal(d->stores, 0);
	assert_true(inbound_session_in_data(d->s));
	feed(d, ".\r\n");
	assert_int_equal(d->stores, 1);
	expect_queued(d);
	assert_false(inbound_session_in_data(d->s));

	assert_int_equal(strncmp(d->msg.p, "Received: from ", 15), 0);
	assert_true(buf_has(&d->msg, "Received: from client.example ([192.0.2.1])\r\n"));
	assert_true(buf_has(&d->msg, "(using " TLS_DESC ")"));
	assert_true(buf_has(&d->msg, "(using TLSv1.3 with cipher"));
	assert_true(buf_has(&d->msg, "by " HOST " (strictmx) with ESMTPS id "));
	assert_true(buf_has(&d->msg, d->env_qid));
	assert_true(buf_has(&d->msg, "for <alice@example.org>"));
	/* dot-unstuffing (RFC 5321 §4.5.2) */
	assert_string_equal(body_of(d), "Subject: t\r\n\r\n.x\r\n.\r\n \r\nbody\r\n");

	assert_string_equal(d->env_from, "bob@example.net");
	assert_int_equal(d->env_n, 1);
	assert_string_equal(d->env_rcpt[0], "alice@example.org");
	assert_true(d->env_tls);
	assert_int_equal(d->env_size, d->msg.len);

	/* the transaction is over: RCPT needs a new MAIL */
	cmd(d, RCPT_ALICE, R_NEED_MAIL);
	/* a second transaction gets another queue id */
	char first[40];
	snprintf(first, sizeof(first), "%s", d->env_qid);
	start_data(d);
	deliver(d, ".\r\n");
	assert_string_not_equal(first, d->env_qid);
	/* an empty message is the Received: header alone */
	assert_string_equal(body_of(d), "");
	drv_free(d);
}

static void test_data_errors(void **state)
{
	struct drv *d = tls_session();

	cmd(d, "DATA\r\n", R_NEED_MAIL);
	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, MAIL_BOB, "503 5.5.1 Error: nested MAIL command\r\n");
	cmd(d, "DATA\r\n", "554 5.5.1 Error: no valid recipients\r\n");
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	cmd(d, "DATA x\r\n", "501 5.5.4 Syntax: DATA\r\n");
	cmd(d, "DATA\r\n", R_354);
	deliver(d, "x\r\n.\r\n");
	drv_free(d);
}

/* RFC 2920: MAIL, RCPT, DATA in one read, DATA last */
static void test_pipelined_transaction(void **state)
{
	struct drv *d = tls_session();

	feed(d, MAIL_BOB RCPT_ALICE "RCPT TO:<carol@example.org>\r\nDATA\r\n");
	expect(d, R_MAIL_OK R_RCPT_OK R_RCPT_OK R_354);
	/* end of data and the next commands in one read */
	feed(d, "Subject: p\r\n\r\nhi\r\n.\r\n" MAIL_BOB RCPT_ALICE "DATA\r\n");
	assert_int_equal(d->stores, 1);
	assert_int_equal(d->env_n, 2);
	assert_string_equal(d->env_rcpt[1], "carol@example.org");
	assert_false(buf_has(&d->msg, "\tfor <"));
	assert_string_equal(body_of(d), "Subject: p\r\n\r\nhi\r\n");
	char want[256];
	snprintf(want, sizeof(want), R_QUEUED "%s\r\n" R_MAIL_OK R_RCPT_OK R_354, d->env_qid);
	expect(d, want);
	feed(d, "second\r\n.\r\nQUIT\r\n");
	assert_int_equal(d->stores, 2);
	snprintf(want, sizeof(want), R_QUEUED "%s\r\n221 2.0.0 Bye\r\n", d->env_qid);
	expect(d, want);
	assert_true(d->closed);
	drv_free(d);
}

/* §8 C15: content before our 354 is a synchronization error */
static void test_content_with_data_command(void **state)
{
	static const char *const tails[] = {
	    "Subject: x\r\n\r\nhi\r\n.\r\n",
	    ".\r\n",
	    "X",
	};

	for (size_t i = 0; i < sizeof(tails) / sizeof(tails[0]); i++) {
		struct drv *d = tls_session();
		char in[512];

		snprintf(in, sizeof(in), MAIL_BOB RCPT_ALICE "DATA\r\n%s", tails[i]);
		feed(d, in);
		expect(d, R_MAIL_OK R_RCPT_OK R_SYNC);
		assert_true(d->closed);
		assert_int_equal(d->stores, 0);
		assert_int_equal(d->sink.begins, 0);
		drv_free(d);
	}
}

/* §2.3 / §8 C12: fake ends of data never end DATA, and nothing is stored */
static void test_smuggling(void **state)
{
	static const struct {
		const char *seq;
		size_t len;
		const char *reply;
	} seqs[] = {
#define SEQ(s, r) {s, sizeof(s) - 1, r}
	    SEQ("\n.\n", "550 5.5.2 Error: bare <"),
	    SEQ("\n.\r\n", "550 5.5.2 Error: bare <"),
	    SEQ("\r.\r", "550 5.5.2 Error: bare <"),
	    SEQ("\r.\n", "550 5.5.2 Error: bare <"),
	    SEQ("\n.\r", "550 5.5.2 Error: bare <"),
	    SEQ("\r.\r\n", "550 5.5.2 Error: bare <"),
	    SEQ("\r\n.\n", "550 5.5.2 Error: bare <"),
	    SEQ("\r\n.\r", "550 5.5.2 Error: bare <"),
	    SEQ("\r\n\0.\r\n", "550 5.6.0 Error: NUL character in message\r\n"),
	    SEQ("\r\n.\0\r\n", "550 5.6.0 Error: NUL character in message\r\n"),
	    SEQ("\r\n.\r\r\n", "550 5.5.2 Error: bare <"),
	    SEQ("\r\r\n.\r\r\n", "550 5.5.2 Error: bare <"),
	    SEQ("\rX", "550 5.5.2 Error: bare <"),
	    SEQ("\nX", "550 5.5.2 Error: bare <"),
#undef SEQ
	};
	static const char smug[] = "MAIL FROM:<spoof@x.example>\r\nRCPT TO:<alice@example.org>\r\n"
	                           "DATA\r\nSubject: s\r\n\r\nB\r\n.\r\n";

	for (int bw = 0; bw < 2; bw++)
		for (size_t i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++) {
			struct drv *d = tls_session();
			char in[256];
			size_t n = 0;

			d->bytewise = bw;
			start_data(d);
			in[n++] = 'A';
			memcpy(in + n, seqs[i].seq, seqs[i].len);
			n += seqs[i].len;
			memcpy(in + n, smug, sizeof(smug) - 1);
			n += sizeof(smug) - 1;
			feedn(d, in, n);
			assert_int_equal(d->stores, 0);
			assert_false(buf_has(&d->out, "250"));
			assert_false(buf_has(&d->out, "354"));
			expect_prefix(d, seqs[i].reply);
			assert_true(d->closed);
			assert_false(d->sink.open);
			assert_int_equal(d->sink.aborts, 1);
			drv_free(d);
		}
}

/* §2.3 last row: a real end, then a pipelined transaction with its content */
static void test_smuggling_pipelining(void **state)
{
	struct drv *d = tls_session();
	char want[256];

	start_data(d);
	feed(d, "A\r\n.\r\nMAIL FROM:<spoof@x.example>\r\n" RCPT_ALICE
	        "DATA\r\nSubject: s\r\n\r\nB\r\n.\r\n");
	assert_int_equal(d->stores, 1);
	assert_string_equal(d->env_from, "bob@example.net");
	assert_string_equal(body_of(d), "A\r\n");
	snprintf(want, sizeof(want), R_QUEUED "%s\r\n" R_MAIL_OK R_RCPT_OK R_SYNC, d->env_qid);
	expect(d, want);
	assert_true(d->closed);
	drv_free(d);
}

/* §8 C14: stray CR or LF inside a DATA line */
static void test_data_stray_cr_lf(void **state)
{
	struct drv *d = tls_session();

	start_data(d);
	cmd(d, "abc\rdef\r\n.\r\n", "550 5.5.2 Error: bare <CR> received\r\n");
	assert_true(d->closed);
	assert_int_equal(d->stores, 0);
	drv_free(d);

	d = tls_session();
	start_data(d);
	cmd(d, "abc\ndef\r\n.\r\n", "550 5.5.2 Error: bare <LF> received\r\n");
	assert_true(d->closed);
	assert_int_equal(d->stores, 0);
	drv_free(d);
}

/* §8 C13: bare LF in a command line: 550 and close */
static void test_bare_lf_command(void **state)
{
	struct drv *d = drv_new();

	drv_open(d);
	buf_clear(&d->out);
	cmd(d, "EHLO x\n", "550 5.5.2 Error: bare <LF> received\r\n");
	assert_true(d->closed);
	drv_free(d);

	d = tls_session();
	cmd(d, "MAIL FROM:<a@b.example>\nRCPT TO:<alice@example.org>\r\n",
	    "550 5.5.2 Error: bare <LF> received\r\n");
	assert_true(d->closed);
	drv_free(d);

	d = tls_session();
	cmd(d, "NOOP\rNOOP\r\n", "550 5.5.2 Error: bare <CR> received\r\n");
	assert_true(d->closed);
	drv_free(d);

	d = tls_session();
	feedn(d, "NO\0OP\r\n", 7);
	expect(d, "550 5.5.2 Error: NUL character received\r\n");
	assert_true(d->closed);
	drv_free(d);
}

/* ---- limits ---- */

static char *repeat(struct drv *d, char c, size_t n, const char *prefix, const char *suffix)
{
	size_t pl = strlen(prefix), sl = strlen(suffix);
	char *p = malloc(pl + n + sl + 1);

	assert_non_null(p);
	assert_true(d->n_scratch < sizeof(d->scratch) / sizeof(d->scratch[0]));
	d->scratch[d->n_scratch++] = p;
	memcpy(p, prefix, pl);
	memset(p + pl, c, n);
	memcpy(p + pl + n, suffix, sl + 1);
	return p;
}

/* the limit counts the CRLF: 510 + CRLF fits in 512, 511 + CRLF does not */
static void test_line_limit_boundary(void **state)
{
	struct drv *d = tls_session();
	char *ok = repeat(d, 'a', 505, "NOOP ", "\r\n");
	char *bad = repeat(d, 'a', 506, "NOOP ", "\r\nNOOP\r\n");

	assert_int_equal(strlen(ok), 512);
	cmd(d, ok, R_OK);
	cmd(d, bad, R_TOO_LONG R_OK);
	drv_free(d);
}

/* the long line and the next command in one read */
static void test_long_line_then_command_same_read(void **state)
{
	struct drv *d = tls_session();
	char *in = repeat(d, 'a', 600, "NOOP ", "\r\nNOOP\r\n");

	cmd(d, in, R_TOO_LONG R_OK);
	cmd(d, MAIL_BOB, R_MAIL_OK);
	drv_free(d);
}

/* the long line with its CRLF as the whole read, the next command later */
static void test_long_line_with_crlf(void **state)
{
	struct drv *d = tls_session();
	char *in = repeat(d, 'a', 600, "NOOP ", "\r\n");

	cmd(d, in, R_TOO_LONG);
	cmd(d, "NOOP\r\n", R_OK);
	cmd(d, MAIL_BOB, R_MAIL_OK);
	drv_free(d);
}

/* no CRLF in the read: the rest of the line comes later and is skipped */
static void test_long_line_split(void **state)
{
	struct drv *d = tls_session();
	char *in = repeat(d, 'a', 600, "NOOP ", "");
	char *rest = repeat(d, 'b', 300, "", "");

	cmd(d, in, R_TOO_LONG);
	cmd(d, rest, "");
	cmd(d, "MAIL FROM:<x@y>\r\n", "");
	cmd(d, "NOOP\r\n", R_OK);
	/* the CRLF cut in half between reads */
	cmd(d, in, R_TOO_LONG);
	cmd(d, "\r", "");
	cmd(d, "\nNOOP\r\n", R_OK);
	/* the CR at the end of the long read */
	char *in_cr = repeat(d, 'a', 600, "NOOP ", "\r");
	cmd(d, in_cr, R_TOO_LONG);
	cmd(d, "\nNOOP\r\n", R_OK);
	/* a whole megabyte without CRLF */
	char *huge = repeat(d, 'c', 1 << 20, "", "");
	cmd(d, huge, R_TOO_LONG);
	cmd(d, huge, "");
	cmd(d, "\r\nNOOP\r\n", R_OK);
	assert_false(d->closed);
	drv_free(d);
}

/*
 * §8 E22: EHLO + 64 KiB, format strings. The session takes any one printable
 * word as a HELO name (like Postfix), so "%s%n%x" may be accepted: it must
 * then appear literally, never interpreted.
 */
static void test_huge_ehlo(void **state)
{
	struct drv *d = tls_session();
	char *in = repeat(d, 'A', 65536, "EHLO ", "\r\nNOOP\r\n");

	cmd(d, in, R_TOO_LONG R_OK);
	feed(d, "EHLO %s%n%x\r\n");
	assert_false(d->closed);
	if (strncmp(d->out.p, "501 5.5.4 ", 10) == 0) {
		buf_clear(&d->out);
	} else {
		expect_prefix(d, "250-" HOST "\r\n");
		start_data(d);
		deliver(d, ".\r\n");
		assert_true(buf_has(&d->msg, "Received: from %s%n%x ([192.0.2.1])"));
	}
	drv_free(d);
}

static void test_rcpt_limits(void **state)
{
	struct drv *d = tls_session();

	cmd(d, MAIL_BOB, R_MAIL_OK);
	for (int i = 1; i <= 5; i++) {
		char line[64];
		snprintf(line, sizeof(line), "RCPT TO:<u%d@example.org>\r\n", i);
		cmd(d, line, R_RCPT_OK);
	}
	cmd(d, "RCPT TO:<u6@example.org>\r\n", "452 4.5.3 Error: too many recipients\r\n");
	cmd(d, "RCPT TO:<u7@Example.ORG>\r\n", "452 4.5.3 Error: too many recipients\r\n");
	cmd(d, "DATA\r\n", R_354);
	deliver(d, "x\r\n.\r\n");
	assert_int_equal(d->env_n, 5);
	assert_string_equal(d->env_rcpt[4], "u5@example.org");
	drv_free(d);
}

static void test_relay_denied(void **state)
{
	struct drv *d = tls_session();

	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, "RCPT TO:<bob@example.net>\r\n",
	    "554 5.7.1 <bob@example.net>: Relay access denied\r\n");
	cmd(d, "RCPT TO:<x@sub.example.org>\r\n",
	    "554 5.7.1 <x@sub.example.org>: Relay access denied\r\n");
	cmd(d, "RCPT TO:<x@example.org.evil.example>\r\n",
	    "554 5.7.1 <x@example.org.evil.example>: Relay access denied\r\n");
	/* the domain is case-insensitive, a trailing dot is the same domain */
	cmd(d, "RCPT TO:<Alice@EXAMPLE.org>\r\n", R_RCPT_OK);
	cmd(d, "DATA\r\n", "354 End data with <CR><LF>.<CR><LF>\r\n");
	deliver(d, ".\r\n");
	assert_int_equal(d->stores, 1);
	drv_free(d);
}

static void test_mail_size(void **state)
{
	struct drv *d = tls_session();

	feed(d, "MAIL FROM:<bob@example.net> SIZE=10001\r\n");
	expect_prefix(d, "552 5.3.4 ");
	feed(d, "MAIL FROM:<bob@example.net> SIZE=99999999999999999999\r\n");
	expect_prefix(d, "552 5.3.4 ");
	feed(d, "MAIL FROM:<bob@example.net> SIZE=abc\r\n");
	expect_prefix(d, "501 5.5.4 ");
	feed(d, "MAIL FROM:<bob@example.net> FOO=bar\r\n");
	expect_prefix(d, "555 5.5.4 ");
	cmd(d, "MAIL FROM:<bob@example.net> SIZE=10000\r\n", R_MAIL_OK);
	drv_free(d);
}

/* §8 E26: 552 after reading to the end of DATA; nothing stored */
static void test_data_too_big(void **state)
{
	struct drv *d = tls_session();
	char *line = repeat(d, 'x', 98, "", "\r\n");

	start_data(d);
	for (int i = 0; i < 110; i++)
		feed(d, line);
	expect(d, "");
	assert_true(inbound_session_in_data(d->s));
	cmd(d, ".\r\n", "552 5.3.4 Error: message too big (limit 10000 octets)\r\n");
	assert_int_equal(d->stores, 0);
	assert_int_equal(d->sink.aborts, 1);
	assert_false(d->sink.open);
	assert_true(d->sink.content.len <= 10000);
	assert_false(d->closed);
	/* §8 E28: no second message without a new MAIL */
	cmd(d, RCPT_ALICE, R_NEED_MAIL);
	start_data(d);
	deliver(d, "small\r\n.\r\n");
	assert_int_equal(d->stores, 1);
	drv_free(d);
}

/* RFC 5321 §4.5.3.1.6: 1000 with CRLF is fine, 1001 is refused */
static void test_data_long_text_line(void **state)
{
	struct drv *d = tls_session();
	char *ok = repeat(d, 'y', 998, "", "\r\n");
	char *bad = repeat(d, 'z', 999, "", "\r\n");

	start_data(d);
	feed(d, ok);
	deliver(d, ".\r\n");

	start_data(d);
	feed(d, bad);
	cmd(d, ".\r\n",
	    "550 5.6.0 Error: message has a line longer than 1000 octets "
	    "(RFC 5321 4.5.3.1.6)\r\n");
	assert_int_equal(d->stores, 1);
	assert_false(d->closed);
	/* §8 E28 */
	cmd(d, "DATA\r\n", R_NEED_MAIL);
	start_data(d);
	deliver(d, "fine\r\n.\r\n");
	assert_int_equal(d->stores, 2);
	drv_free(d);
}

/* ---- BDAT (RFC 3030) ---- */

static void test_bdat_transaction(void **state)
{
	struct drv *d = tls_session();

	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	cmd(d, "BDAT 5\r\nhello", "250 2.0.0 Ok: 5 octets received\r\n");
	assert_true(inbound_session_in_data(d->s) == false);
	/* a chunk split across reads */
	feed(d, "BDAT 6\r\n wo");
	assert_true(inbound_session_in_data(d->s));
	cmd(d, "rld", "250 2.0.0 Ok: 6 octets received\r\n");
	cmd(d, RCPT_ALICE, "503 5.5.1 Error: RCPT after BDAT\r\n");
	feed(d, "BDAT 2 LAST\r\n\r\n");
	assert_int_equal(d->stores, 1);
	expect_queued(d);
	assert_string_equal(body_of(d), "hello world\r\n");
	assert_true(buf_has(&d->msg, "with ESMTPS"));
	assert_int_equal(d->env_size, d->msg.len);
	cmd(d, RCPT_ALICE, R_NEED_MAIL);
	drv_free(d);
}

static void test_bdat_zero_last(void **state)
{
	struct drv *d = tls_session();

	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	cmd(d, "BDAT 3\r\nabc", "250 2.0.0 Ok: 3 octets received\r\n");
	feed(d, "BDAT 0 LAST\r\n");
	assert_int_equal(d->stores, 1);
	expect_queued(d);
	assert_string_equal(body_of(d), "abc");

	/* BDAT 0 LAST as the only chunk, with more commands in the read */
	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	feed(d, "BDAT 0 LAST\r\nNOOP\r\n");
	assert_int_equal(d->stores, 2);
	assert_string_equal(body_of(d), "");
	assert_true(buf_has(&d->out, R_QUEUED));
	assert_true(buf_has(&d->out, "\r\n" R_OK));
	buf_clear(&d->out);
	/* BDAT 0 (not last) */
	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	cmd(d, "BDAT 0\r\n", "250 2.0.0 Ok: 0 octets received\r\n");
	drv_free(d);
}

/* §8 C17: BDAT content is literal: "\r\n.\r\n" and commands are data */
static void test_bdat_literal(void **state)
{
	struct drv *d = tls_session();
	static const char chunk[] = "a\r\n.\r\nQUIT\r\n..b\r\n";
	char in[128];

	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	snprintf(in, sizeof(in), "BDAT %zu\r\n%s", sizeof(chunk) - 1, chunk);
	feed(d, in);
	expect_prefix(d, "250 2.0.0 Ok: ");
	assert_false(d->closed);
	feed(d, "BDAT 3 LAST\r\n.\r\n");
	assert_int_equal(d->stores, 1);
	expect_queued(d);
	assert_string_equal(body_of(d), "a\r\n.\r\nQUIT\r\n..b\r\n.\r\n");
	drv_free(d);
}

static void test_bdat_state_errors(void **state)
{
	struct drv *d = tls_session();

	/* before MAIL: the chunk is read and refused */
	cmd(d, "BDAT 6\r\nQUIT\r\n", R_NEED_MAIL);
	assert_false(d->closed);
	/* MAIL without RCPT */
	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, "BDAT 6\r\nQUIT\r\n", "554 5.5.1 Error: no valid recipients\r\n");
	assert_false(d->closed);
	/* DATA after BDAT */
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	cmd(d, "BDAT 3\r\nabc", "250 2.0.0 Ok: 3 octets received\r\n");
	cmd(d, "DATA\r\n", "503 5.5.1 Error: DATA after BDAT\r\n");
	cmd(d, "RSET\r\n", R_OK);
	assert_int_equal(d->sink.aborts, 1);
	assert_int_equal(d->stores, 0);
	drv_free(d);
}

static void test_bdat_bad_args(void **state)
{
	static const char *const bad[] = {
	    "BDAT x\r\n",      "BDAT -1\r\n", "BDAT 1e30\r\n",
	    "BDAT 10 FOO\r\n", "BDAT\r\n",    "BDAT 1234567890123456789\r\n",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct drv *d = tls_session();

		cmd(d, MAIL_BOB, R_MAIL_OK);
		cmd(d, RCPT_ALICE, R_RCPT_OK);
		cmd(d, bad[i],
		    "501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n"
		    "421 4.5.0 " HOST " Error: BDAT framing lost\r\n");
		assert_true(d->closed);
		assert_int_equal(d->stores, 0);
		drv_free(d);
	}
}

/* §8 E26/E27: over the limit → 552; later chunks discarded until LAST */
static void test_bdat_too_big(void **state)
{
	struct drv *d = tls_session();
	char *big = repeat(d, 'x', 20000, "BDAT 20000\r\n", "");

	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	cmd(d, big, "552 5.3.4 Error: chunk exceeds message size limit\r\n");
	cmd(d, "BDAT 6\r\nQUIT\r\n",
	    "503 5.5.1 Error: an earlier chunk was refused; send RSET\r\n");
	cmd(d, "BDAT 6 LAST\r\nQUIT\r\n",
	    "503 5.5.1 Error: an earlier chunk was refused; send RSET\r\n");
	assert_int_equal(d->stores, 0);
	assert_false(d->sink.open);
	/* LAST ended the transaction */
	cmd(d, RCPT_ALICE, R_NEED_MAIL);
	assert_false(d->closed);
	/* a LAST chunk over the limit */
	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	big = repeat(d, 'x', 20000, "BDAT 20000 LAST\r\n", "");
	cmd(d, big, "552 5.3.4 Error: chunk exceeds message size limit\r\n");
	cmd(d, RCPT_ALICE, R_NEED_MAIL);
	assert_int_equal(d->stores, 0);
	/* several chunks that add up to too much */
	char *c = repeat(d, 'y', 6000, "BDAT 6000\r\n", "");
	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	cmd(d, c, "250 2.0.0 Ok: 6000 octets received\r\n");
	cmd(d, c, "552 5.3.4 Error: chunk exceeds message size limit\r\n");
	cmd(d, "BDAT 0 LAST\r\n", "503 5.5.1 Error: an earlier chunk was refused; send RSET\r\n");
	assert_int_equal(d->stores, 0);
	assert_false(d->sink.open);
	cmd(d, "NOOP\r\n", R_OK);
	drv_free(d);
}

static void test_bdat_bare_lf(void **state)
{
	struct drv *d = tls_session();

	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	cmd(d, "BDAT 4\r\na\nb\n", "550 5.5.2 Error: bare <LF> received\r\n");
	assert_true(d->closed);
	assert_int_equal(d->stores, 0);
	drv_free(d);

	/* a CR at the end of the last chunk is bare */
	d = tls_session();
	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	cmd(d, "BDAT 2 LAST\r\na\r", "550 5.5.2 Error: bare <CR> received\r\n");
	assert_true(d->closed);
	assert_int_equal(d->stores, 0);
	drv_free(d);

	/* CRLF split between two chunks is fine */
	d = tls_session();
	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	feed(d, "BDAT 2\r\na\r");
	buf_clear(&d->out);
	feed(d, "BDAT 1 LAST\r\n\n");
	assert_int_equal(d->stores, 1);
	assert_string_equal(body_of(d), "a\r\n");
	drv_free(d);
}

/* a sink that cannot begin: one 451 per command, never two */
static void test_bdat_sink_begin_fails(void **state)
{
	struct drv *d = tls_session();

	d->sink.fail_begin = true;
	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	cmd(d, "BDAT 5 LAST\r\nhello", R_451);
	assert_int_equal(d->stores, 0);
	assert_false(d->closed);
	drv_free(d);
}

/* ---- errors, stores, RSET, odd clients ---- */

static void test_errors_max(void **state)
{
	struct drv *d = tls_session();

	for (int i = 0; i < 9; i++)
		cmd(d, "FOO\r\n", "500 5.5.2 Error: command not recognized\r\n");
	assert_false(d->closed);
	cmd(d, "FOO\r\n",
	    "500 5.5.2 Error: command not recognized\r\n"
	    "421 4.7.0 " HOST " Error: too many errors\r\n");
	assert_true(d->closed);
	drv_free(d);
}

#define R_UNKNOWN "500 5.5.2 Error: command not recognized\r\n"

/* the output queued so far, as a string (the driver's collect() is not used) */
static void expect_raw(struct drv *d, const char *want)
{
	size_t n;
	const char *o = inbound_session_output(d->s, &n);

	if (n != strlen(want) || memcmp(o, want, n) != 0)
		fail_msg("output \"%.*s\", expected \"%s\"", (int)n, o, want);
	inbound_session_output_clear(d->s);
}

/* §8 I.61: past errors_delay_after errors, each error reply is held for the
 * I/O layer's delay and nothing is read meanwhile; good replies are not held,
 * and the reply that reaches errors_max goes out at once with the 421 */
static void test_error_delay(void **state)
{
	struct drv *d = drv_new();

	d->p.errors_delay_after = 3;
	drv_open(d);
	expect(d, R_GREET);
	for (int i = 0; i < 3; i++)
		cmd(d, "FOO\r\n", R_UNKNOWN);
	assert_int_equal(d->delays, 0);
	/* the 4th error: NOOP's reply leaves, the 500 after it is held */
	assert_int_equal(inbound_session_input(d->s, "NOOP\r\nFOO\r\nNOOP\r\n", 16), 11);
	assert_int_equal(inbound_session_action(d->s), INBOUND_DELAY);
	expect_raw(d, R_OK);
	assert_int_equal(inbound_session_input(d->s, "NOOP\r\n", 6), 0);
	inbound_session_delay_done(d->s);
	assert_int_equal(inbound_session_action(d->s), INBOUND_NONE);
	expect_raw(d, R_UNKNOWN);
	/* good replies are never delayed */
	assert_int_equal(inbound_session_input(d->s, "NOOP\r\n", 6), 6);
	assert_int_equal(inbound_session_action(d->s), INBOUND_NONE);
	expect_raw(d, R_OK);
	/* a timeout while delayed: the held reply, then the 421, in order */
	assert_int_equal(inbound_session_input(d->s, "FOO\r\n", 5), 5);
	assert_int_equal(inbound_session_action(d->s), INBOUND_DELAY);
	expect_raw(d, "");
	inbound_session_timeout(d->s);
	assert_int_equal(inbound_session_action(d->s), INBOUND_CLOSE);
	expect_raw(d, R_UNKNOWN "421 4.4.2 " HOST " Error: timeout exceeded\r\n");
	drv_free(d);

	/* through the driver (which ends each delay at once): errors 4 to 9 are
	 * delayed, the 10th is answered with the 421 at once */
	d = drv_new();
	d->p.errors_delay_after = 3;
	drv_open(d);
	expect(d, R_GREET);
	for (int i = 0; i < 9; i++)
		cmd(d, "FOO\r\n", R_UNKNOWN);
	assert_int_equal(d->delays, 6);
	assert_int_equal(inbound_session_input(d->s, "FOO\r\n", 5), 5);
	assert_int_equal(inbound_session_action(d->s), INBOUND_CLOSE);
	expect_raw(d, R_UNKNOWN "421 4.7.0 " HOST " Error: too many errors\r\n");
	drv_free(d);
}

/* §8 E.26: a header block over header_max is refused at the end of the
 * content, and no more of it reaches the sink; the body does not count */
static void test_header_too_big(void **state)
{
	for (int bw = 0; bw < 2; bw++) {
		struct drv *d = drv_new();

		d->p.header_max = 1024;
		d->bytewise = bw;
		drv_open(d);
		expect(d, R_GREET);
		feed(d, "EHLO client.example\r\nSTARTTLS\r\n");
		feed(d, "EHLO client.example\r\n");
		buf_clear(&d->out);
		char *hdr = repeat(d, 'h', 30, "X-Long: ", "\r\n"); /* 40 octets */
		start_data(d);
		feed(d, "Subject: big\r\n");
		for (int i = 0; i < 40; i++) /* 40 continuation lines: 1334 octets */
			feed(d, hdr + 7);
		feed(d, "\r\nbody\r\n");
		cmd(d, ".\r\n", "552 5.3.4 Error: message header too big (limit 1024 octets)\r\n");
		assert_int_equal(d->stores, 0);
		assert_false(d->sink.open);
		assert_false(d->closed);
		/* a header under the limit and a body over it: stored */
		start_data(d);
		for (int i = 0; i < 20; i++) /* 800 octets */
			feed(d, hdr);
		feed(d, "\r\n");
		for (int i = 0; i < 100; i++)
			feed(d, hdr);
		deliver(d, ".\r\n");
		/* BDAT: the same limit, at LAST */
		char chunk[2048], line[64];
		size_t n = 0;
		for (int i = 0; i < 30; i++, n += 40) /* 1200 octets */
			memcpy(chunk + n, hdr, 40);
		memcpy(chunk + n, "\r\nbody\r\n", 8);
		n += 8;
		snprintf(line, sizeof(line), "BDAT %zu LAST\r\n", n);
		cmd(d, MAIL_BOB, R_MAIL_OK);
		cmd(d, RCPT_ALICE, R_RCPT_OK);
		feed(d, line);
		feedn(d, chunk, n);
		expect(d, "552 5.3.4 Error: message header too big (limit 1024 octets)\r\n");
		assert_int_equal(d->stores, 1);
		assert_false(d->sink.open);
		drv_free(d);
	}
}

/* errors from pipelined commands count too, and nothing after the 421 runs */
static void test_errors_max_pipelined(void **state)
{
	struct drv *d = tls_session();
	char in[1024] = "";

	for (int i = 0; i < 12; i++)
		strcat(in, RCPT_ALICE);
	strcat(in, MAIL_BOB);
	feed(d, in);
	assert_true(d->closed);
	assert_true(buf_has(&d->out, "421 4.7.0 " HOST " Error: too many errors\r\n"));
	assert_false(buf_has(&d->out, R_MAIL_OK));
	drv_free(d);
}

static void test_store_failure(void **state)
{
	struct drv *d = tls_session();

	d->fail_store = true;
	start_data(d);
	cmd(d, "x\r\n.\r\n", "451 4.3.0 Error: queue file write error\r\n");
	assert_int_equal(d->stores, 1);
	cmd(d, RCPT_ALICE, R_NEED_MAIL);
	d->fail_store = false;
	start_data(d);
	deliver(d, "y\r\n.\r\n");
	assert_int_equal(d->stores, 2);
	assert_string_equal(body_of(d), "y\r\n");
	/* BDAT too */
	d->fail_store = true;
	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	cmd(d, "BDAT 3 LAST\r\nz\r\n", "451 4.3.0 Error: queue file write error\r\n");
	assert_int_equal(d->stores, 3);
	d->fail_store = false;
	cmd(d, MAIL_BOB, R_MAIL_OK);
	drv_free(d);
}

static void test_data_sink_begin_fails(void **state)
{
	struct drv *d = tls_session();

	d->sink.fail_begin = true;
	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	cmd(d, "DATA\r\n", R_451);
	assert_false(inbound_session_in_data(d->s));
	cmd(d, "RSET\r\n", R_OK);
	d->sink.fail_begin = false;
	start_data(d);
	deliver(d, "ok\r\n.\r\n");
	assert_int_equal(d->stores, 1);
	drv_free(d);
}

static void test_rset(void **state)
{
	struct drv *d = tls_session();

	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	cmd(d, "RSET\r\n", R_OK);
	cmd(d, RCPT_ALICE, R_NEED_MAIL);
	cmd(d, "DATA\r\n", R_NEED_MAIL);
	cmd(d, "RSET x\r\n", "501 5.5.4 Syntax: RSET\r\n");
	/* RSET in the middle of BDAT drops the content */
	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	cmd(d, "BDAT 2\r\nab", "250 2.0.0 Ok: 2 octets received\r\n");
	cmd(d, "RSET\r\n", R_OK);
	assert_false(d->sink.open);
	assert_int_equal(d->sink.aborts, 1);
	cmd(d, "BDAT 1 LAST\r\nc", R_NEED_MAIL);
	assert_int_equal(d->stores, 0);
	/* EHLO resets the transaction too */
	cmd(d, MAIL_BOB, R_MAIL_OK);
	feed(d, "EHLO again.example\r\n");
	buf_clear(&d->out);
	cmd(d, RCPT_ALICE, R_NEED_MAIL);
	drv_free(d);
}

/* §8 E32: non-SMTP clients */
static void test_http(void **state)
{
	static const char *const reqs[] = {
	    "GET / HTTP/1.1\r\nHost: mx\r\n\r\n",
	    "POST /x HTTP/1.1\r\n",
	    "CONNECT mx:25 HTTP/1.1\r\n",
	    "Host: x\r\n",
	};

	for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
		struct drv *d = drv_new();

		drv_open(d);
		buf_clear(&d->out);
		cmd(d, reqs[i], "221 2.7.0 Error: this is an SMTP server; goodbye\r\n");
		assert_true(d->closed);
		drv_free(d);
	}
}

static void test_timeout(void **state)
{
	struct drv *d = drv_new();

	drv_open(d);
	buf_clear(&d->out);
	inbound_session_timeout(d->s);
	collect(d);
	expect(d, "421 4.4.2 " HOST " Error: timeout exceeded\r\n");
	assert_int_equal(inbound_session_action(d->s), INBOUND_CLOSE);
	/* a second timer does not answer again */
	inbound_session_timeout(d->s);
	collect(d);
	expect(d, "");
	drv_free(d);

	/* in DATA: the content is dropped */
	d = tls_session();
	start_data(d);
	feed(d, "partial\r\n");
	assert_true(inbound_session_in_data(d->s));
	inbound_session_timeout(d->s);
	collect(d);
	expect(d, "421 4.4.2 " HOST " Error: timeout exceeded\r\n");
	assert_int_equal(inbound_session_action(d->s), INBOUND_CLOSE);
	assert_false(d->sink.open);
	assert_int_equal(d->stores, 0);
	drv_free(d);
}

static void test_helo(void **state)
{
	struct drv *d = drv_new();

	drv_open(d);
	buf_clear(&d->out);
	cmd(d, "HELO my_host\r\n", "250 " HOST "\r\n");
	cmd(d, "HELO a b(\r\n", "501 5.5.4 Syntax: HELO hostname\r\n");
	cmd(d, "EHLO a b(\r\n", "501 5.5.4 Syntax: EHLO hostname\r\n");
	cmd(d, "HELO\r\n", "501 5.5.4 Syntax: HELO hostname\r\n");
	cmd(d, "HELO x;y\r\n", "501 5.5.4 Syntax: HELO hostname\r\n");
	cmd(d, "HELO [192.0.2.9]\r\n", "250 " HOST "\r\n");
	/* HELO after TLS: the Received: header names it */
	cmd(d, "STARTTLS\r\n", "220 2.0.0 Ready to start TLS\r\n");
	cmd(d, "HELO my_host\r\n", "250 " HOST "\r\n");
	cmd(d, MAIL_BOB, R_MAIL_OK);
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	cmd(d, "DATA\r\n", R_354);
	deliver(d, "x\r\n.\r\n");
	assert_int_equal(d->stores, 1);
	assert_true(buf_has(&d->msg, "Received: from my_host ([192.0.2.1])"));
	drv_free(d);
}

static void test_misc_commands(void **state)
{
	struct drv *d = tls_session();

	cmd(d, "VRFY alice\r\n",
	    "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery\r\n");
	cmd(d, "VRFY\r\n", "501 5.5.4 Syntax: VRFY address\r\n");
	cmd(d, "EXPN list\r\n", "502 5.5.1 Error: command not implemented\r\n");
	cmd(d, "AUTH PLAIN\r\n", "503 5.5.1 Error: authentication not enabled\r\n");
	feed(d, "HELP\r\n");
	expect_prefix(d, "214 2.0.0 ");
	cmd(d, "noop\r\n", R_OK);
	cmd(d, "RCPT TO:<nobody!@example.org>\r\n", R_NEED_MAIL);
	cmd(d, MAIL_BOB, R_MAIL_OK);
	feed(d, "RCPT TO:<Not Valid>\r\n");
	expect_prefix(d, "5");
	/* a local part no mailbox can have */
	feed(d, "RCPT TO:<\"a b\"@example.org>\r\n");
	expect_prefix(d, "5");
	/* the same recipient twice is kept once */
	cmd(d, RCPT_ALICE, R_RCPT_OK);
	cmd(d, "RCPT TO:<ALICE@example.org>\r\n", R_RCPT_OK);
	cmd(d, "DATA\r\n", R_354);
	deliver(d, ".\r\n");
	assert_int_equal(d->env_n, 1);
	drv_free(d);
}

/* without require_tls (a port-25 listener that allows plaintext) */
static void test_plaintext_allowed(void **state)
{
	struct drv *d = drv_new();

	d->p.require_tls = false;
	drv_open(d);
	buf_clear(&d->out);
	feed(d, "EHLO client.example\r\n");
	buf_clear(&d->out);
	start_data(d);
	deliver(d, "x\r\n.\r\n");
	assert_int_equal(d->stores, 1);
	assert_false(d->env_tls);
	assert_true(buf_has(&d->msg, "with ESMTP id"));
	assert_false(buf_has(&d->msg, "(using"));
	drv_free(d);
}

/* ---- input split: whole reads and one byte at a time agree ---- */

typedef void (*scenario_fn)(struct drv *d);

static void scenario_pipelining(struct drv *d)
{
	feed(d, "EHLO client.example\r\n");
	feed(d, "STARTTLS\r\n");
	feed(d, "EHLO client.example\r\n");
	feed(d, MAIL_BOB RCPT_ALICE "RCPT TO:<carol@example.org>\r\nRCPT TO:<x@example.net>\r\n"
	                            "DATA\r\n");
	feed(d, "Subject: s\r\n\r\n..dot\r\n..\r\n. x\r\nline\r\n\r\n.\r\n" MAIL_BOB
	        "RCPT TO:<dave@example.org>\r\nDATA\r\n");
	feed(d, "second\r\n.\r\nNOOP\r\nRSET\r\nVRFY x\r\n");
	feed(d, "QUIT\r\n");
}

static void scenario_bdat(struct drv *d)
{
	feed(d, "EHLO client.example\r\n");
	feed(d, "STARTTLS\r\n");
	feed(d, "EHLO client.example\r\n");
	/* chunk 1: 10 octets with a dot line; chunk 2 ends in CR, chunk 3 has its LF */
	feed(d, MAIL_BOB RCPT_ALICE "BDAT 10\r\n0123\r\n.\r\nABDAT 7\r\nab\r\n..\rBDAT 5 LAST\r\n"
	                            "\nxy\r\n" MAIL_BOB RCPT_ALICE "BDAT 0 LAST\r\n");
	feed(d, MAIL_BOB RCPT_ALICE "BDAT 3\r\nabcDATA\r\nBDAT 4 LAST\r\nQUIT");
	feed(d, "RSET\r\nBDAT 1\r\nQQUIT\r\n");
}

/* mask_ids - queue ids are fresh per message: blank them before comparing */
static void mask_ids(char *s)
{
	for (char *p = s; (p = strstr(p, "queued as ")) != NULL;) {
		p += 10;
		for (size_t i = 0; i < QID_LEN && *p && *p != '\r'; i++)
			*p++ = 'X';
	}
}

static void run_both(scenario_fn fn, unsigned want_stores)
{
	struct drv *whole = drv_new(), *bytes = drv_new();

	bytes->bytewise = true;
	drv_open(whole);
	drv_open(bytes);
	fn(whole);
	fn(bytes);
	mask_ids(whole->all.p);
	mask_ids(bytes->all.p);
	assert_string_equal(whole->all.p, bytes->all.p);
	assert_int_equal(whole->stores, want_stores);
	assert_int_equal(bytes->stores, want_stores);
	assert_string_equal(body_of(whole), body_of(bytes));
	assert_int_equal(whole->closed, bytes->closed);
	assert_true(whole->closed);
	drv_free(whole);
	drv_free(bytes);
}

static void test_split_pipelining(void **state)
{
	run_both(scenario_pipelining, 2);
}

static void test_split_bdat(void **state)
{
	run_both(scenario_bdat, 3);
}

/* the BDAT scenario's details, read from the whole-read run */
static void test_bdat_scenario_content(void **state)
{
	struct drv *d = drv_new();

	drv_open(d);
	scenario_bdat(d);
	assert_int_equal(d->stores, 3);
	assert_true(buf_has(&d->all, "250 2.0.0 Ok: 10 octets received\r\n"));
	assert_true(buf_has(&d->all, "503 5.5.1 Error: DATA after BDAT\r\n"));
	assert_true(buf_has(&d->all, R_NEED_MAIL "221 2.0.0 Bye\r\n"));
	/* "QUIT" inside the LAST chunk was content */
	assert_string_equal(body_of(d), "abcQUIT");
	assert_true(d->closed);
	drv_free(d);
}

static int teardown(void **state)
{
	for (size_t i = 0; i < sizeof(live) / sizeof(live[0]); i++)
		if (live[i] != NULL)
			drv_free(live[i]);
	return 0;
}

#define T(f) cmocka_unit_test_teardown(f, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    T(test_greeting_and_ehlo),
	    T(test_no_starttls_without_tls_context),
	    T(test_tls_gate),
	    T(test_tls_gate_info_url),
	    T(test_tls_gate_empty_info_url),
	    T(test_bdat_before_tls),
	    T(test_starttls_injection),
	    T(test_starttls_pending_consumes_nothing),
	    T(test_starttls_state_reset),
	    T(test_starttls_without_ehlo),
	    T(test_data_transaction),
	    T(test_data_errors),
	    T(test_pipelined_transaction),
	    T(test_content_with_data_command),
	    T(test_smuggling),
	    T(test_smuggling_pipelining),
	    T(test_data_stray_cr_lf),
	    T(test_bare_lf_command),
	    T(test_line_limit_boundary),
	    T(test_long_line_then_command_same_read),
	    T(test_long_line_with_crlf),
	    T(test_long_line_split),
	    T(test_huge_ehlo),
	    T(test_rcpt_limits),
	    T(test_relay_denied),
	    T(test_mail_size),
	    T(test_data_too_big),
	    T(test_data_long_text_line),
	    T(test_bdat_transaction),
	    T(test_bdat_zero_last),
	    T(test_bdat_literal),
	    T(test_bdat_state_errors),
	    T(test_bdat_bad_args),
	    T(test_bdat_too_big),
	    T(test_bdat_bare_lf),
	    T(test_bdat_sink_begin_fails),
	    T(test_errors_max),
	    T(test_errors_max_pipelined),
	    T(test_error_delay),
	    T(test_header_too_big),
	    T(test_store_failure),
	    T(test_data_sink_begin_fails),
	    T(test_rset),
	    T(test_http),
	    T(test_timeout),
	    T(test_helo),
	    T(test_misc_commands),
	    T(test_plaintext_allowed),
	    T(test_split_pipelining),
	    T(test_split_bdat),
	    T(test_bdat_scenario_content),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
