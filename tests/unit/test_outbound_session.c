/*
 * test_outbound_session - the client SMTP session against scripted servers:
 * the normal flow with and without PIPELINING, STARTTLS stripping and
 * refusal (EAST Negotiation O_1..O_4, D_1), response injection (EAST
 * Buffering B_1, CVE-2021-38371), hostile replies (security-anchors §8 B
 * 7-11), per-recipient results, and the body stuffer (§2.3, §8 D 18).
 * Every script checks that nothing but EHLO, STARTTLS and QUIT was written
 * before the handshake.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outbound/session.h"
#include "smtp/replyparse.h"

#define NO_STARTTLS "Recipient's Mail eXchanger does not offer STARTTLS capability"

static const char *const two_rcpts[] = {"a@y.example", "b@y.example"};

static const char *body_text = "Subject: t\r\n\r\n.hello\r\nbye";

/* What the fake I/O layer saw. */
struct transcript {
	char *sent; /* everything the client wrote, body included */
	size_t sent_len;
	size_t pre_tls_len; /* how much of it was written before tls_started() */
	bool starttls_raised;
	bool tls;
	unsigned body_sends;
	enum outbound_action last;
};

static void append(struct transcript *t, const char *p, size_t n)
{
	t->sent = realloc(t->sent, t->sent_len + n + 1);
	assert_non_null(t->sent);
	memcpy(t->sent + t->sent_len, p, n);
	t->sent_len += n;
	t->sent[t->sent_len] = '\0';
}

static void collect(struct outbound_session *s, struct transcript *t)
{
	size_t n;
	const char *o = outbound_session_output(s, &n);

	if (n > 0)
		append(t, o, n);
	outbound_session_output_clear(s);
	if (!t->tls)
		t->pre_tls_len = t->sent_len;
}

static void params(struct outbound_params *p, const char *const *rcpts, size_t n)
{
	memset(p, 0, sizeof(*p));
	p->helo_name = "me.example";
	p->mx_host = "mx.y.example";
	p->sender = "s@x.example";
	p->rcpts = rcpts;
	p->n_rcpts = n;
	p->size = 123;
	p->body_8bit = true;
	p->require_tls = true;
	p->id = 1;
}

/* send_body - what the I/O layer does on SEND_BODY */
static void send_body(struct outbound_session *s, struct transcript *t)
{
	struct outbound_stuffer st;
	char out[OUTBOUND_STUFF_MAX(256)];
	size_t n, len = strlen(body_text);

	outbound_stuffer_init(&st);
	n = outbound_body_stuff(&st, body_text, len, out, sizeof(out));
	append(t, out, n);
	n = outbound_body_stuff_end(&st, out, sizeof(out));
	append(t, out, n);
	t->body_sends++;
	outbound_session_body_done(s);
}

/*
 * run - feed the chunks as the server's writes (one input call each, with
 * what was left unconsumed before), carrying out actions like the I/O
 * layer; a NULL chunk is EOF. Returns the final action.
 */
static enum outbound_action run(struct outbound_session *s, struct transcript *t,
                                const char *const *chunks, size_t n)
{
	char *pend = NULL;
	size_t plen = 0;

	memset(t, 0, sizeof(*t));
	for (size_t i = 0; i < n; i++) {
		if (chunks[i] == NULL) {
			outbound_session_eof(s);
			collect(s, t);
			break;
		}
		size_t cl = strlen(chunks[i]);
		pend = realloc(pend, plen + cl + 1);
		assert_non_null(pend);
		memcpy(pend + plen, chunks[i], cl);
		plen += cl;
		for (;;) {
			size_t used = outbound_session_input(s, pend, plen);
			enum outbound_action a;

			assert_true(used <= plen);
			memmove(pend, pend + used, plen - used);
			plen -= used;
			collect(s, t);
			a = outbound_session_action(s);
			if (a == OUTBOUND_STARTTLS) {
				/* the session never raises it with bytes left over */
				assert_int_equal(plen, 0);
				t->starttls_raised = true;
				t->tls = true;
				outbound_session_tls_started(s);
				collect(s, t);
				continue;
			}
			if (a == OUTBOUND_SEND_BODY) {
				send_body(s, t);
				collect(s, t);
				continue;
			}
			if (a == OUTBOUND_DONE || a == OUTBOUND_CLOSE)
				goto out;
			break;
		}
	}
out:
	free(pend);
	t->last = outbound_session_action(s);
	if (t->sent == NULL)
		append(t, "", 0);
	return t->last;
}

/* only EHLO, STARTTLS and QUIT before TLS */
static void assert_pre_tls_clean(const struct transcript *t)
{
	size_t i = 0;

	while (i < t->pre_tls_len) {
		const char *line = t->sent + i;
		const char *end = memchr(line, '\n', t->pre_tls_len - i);

		assert_non_null(end);
		if (!(strncmp(line, "EHLO ", 5) == 0 || strncmp(line, "STARTTLS\r\n", 10) == 0 ||
		      strncmp(line, "QUIT\r\n", 6) == 0)) {
			fail_msg("written before TLS: %.*s", (int)(end - line), line);
		}
		i = (size_t)(end - t->sent) + 1;
	}
	if (!t->tls)
		assert_null(strstr(t->sent, "MAIL"));
}

static void free_t(struct transcript *t)
{
	free(t->sent);
	t->sent = NULL;
}

static void assert_host_error(struct outbound_session *s, const char *want, bool temporary)
{
	const char *reason = NULL;
	bool temp = !temporary;

	assert_true(outbound_session_host_error(s, &reason, &temp));
	assert_non_null(reason);
	assert_string_equal(reason, want);
	assert_int_equal(temp, temporary);
}

static void assert_rcpt(struct outbound_session *s, size_t i, enum outbound_rcpt_state st, int code,
                        const char *text)
{
	const struct outbound_result *r = outbound_session_result(s, i);

	assert_non_null(r);
	assert_int_equal(r->state, st);
	assert_int_equal(r->reply.code, code);
	if (text != NULL)
		assert_string_equal(r->reply.text, text);
}

#define GREET       "220 mx.y.example ESMTP\r\n"
#define EHLO_TLS    "250-mx.y.example\r\n250-SIZE 1000\r\n250 STARTTLS\r\n"
#define STARTTLS_OK "220 2.0.0 Ready to start TLS\r\n"

static void test_outbound_normal_no_pipelining(void **state)
{
	/* before TLS the server offers PIPELINING and 8BITMIME; after TLS only
	 * SIZE: what was offered in plaintext must be forgotten (RFC 3207 §4.2) */
	static const char *const script[] = {
	    GREET,
	    "250-mx.y.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 STARTTLS\r\n",
	    STARTTLS_OK,
	    "250-mx.y.example\r\n250 SIZE 1000\r\n",
	    "250 2.1.0 Ok\r\n",
	    "250 2.1.5 Ok\r\n",
	    "250 2.1.5 Ok\r\n",
	    "354 End data with <CR><LF>.<CR><LF>\r\n",
	    "250 2.0.0 Ok: queued as ABC\r\n",
	};
	struct outbound_params p;
	struct transcript t;
	struct outbound_session *s;

	(void)state;
	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, script, 9), OUTBOUND_DONE);
	assert_string_equal(t.sent, "EHLO me.example\r\n"
	                            "STARTTLS\r\n"
	                            "EHLO me.example\r\n"
	                            "MAIL FROM:<s@x.example> SIZE=123\r\n"
	                            "RCPT TO:<a@y.example>\r\n"
	                            "RCPT TO:<b@y.example>\r\n"
	                            "DATA\r\n"
	                            "Subject: t\r\n\r\n..hello\r\nbye\r\n"
	                            ".\r\n"
	                            "QUIT\r\n");
	assert_true(t.starttls_raised);
	assert_int_equal(t.body_sends, 1);
	assert_pre_tls_clean(&t);
	assert_true(outbound_session_tls_active(s));
	assert_false(outbound_session_host_error(s, NULL, NULL));
	assert_rcpt(s, 0, OUTBOUND_RCPT_DELIVERED, 250, "Ok: queued as ABC");
	assert_rcpt(s, 1, OUTBOUND_RCPT_DELIVERED, 250, "Ok: queued as ABC");
	assert_string_equal(outbound_session_result(s, 0)->reply.enhanced, "2.0.0");
	assert_null(outbound_session_result(s, 2));
	free_t(&t);
	outbound_session_free(&s);
	assert_null(s);
}

static void test_outbound_normal_pipelining(void **state)
{
	struct outbound_params p;
	struct outbound_session *s;
	const char *o;
	size_t n;

	(void)state;
	params(&p, two_rcpts, 2);
	p.body_8bit = true;
	s = outbound_session_new(&p);
	assert_int_equal(outbound_session_input(s, GREET, strlen(GREET)), strlen(GREET));
	o = outbound_session_output(s, &n);
	assert_int_equal(n, strlen("EHLO me.example\r\n"));
	outbound_session_output_clear(s);
	assert_int_equal(outbound_session_input(s, EHLO_TLS, strlen(EHLO_TLS)), strlen(EHLO_TLS));
	outbound_session_output_clear(s);
	assert_int_equal(outbound_session_input(s, STARTTLS_OK, strlen(STARTTLS_OK)),
	                 strlen(STARTTLS_OK));
	assert_int_equal(outbound_session_action(s), OUTBOUND_STARTTLS);
	o = outbound_session_output(s, &n);
	assert_int_equal(n, 0);
	/* nothing is consumed while the handshake is pending */
	assert_int_equal(outbound_session_input(s, "250 x\r\n", 7), 0);
	outbound_session_tls_started(s);
	assert_int_equal(outbound_session_action(s), OUTBOUND_NONE);
	o = outbound_session_output(s, &n);
	assert_int_equal(n, strlen("EHLO me.example\r\n"));
	assert_memory_equal(o, "EHLO me.example\r\n", n);
	outbound_session_output_clear(s);

	static const char ehlo2[] =
	    "250-mx.y.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n";
	assert_int_equal(outbound_session_input(s, ehlo2, strlen(ehlo2)), strlen(ehlo2));
	/* RFC 2920: MAIL, every RCPT and DATA in one write */
	o = outbound_session_output(s, &n);
	static const char group[] = "MAIL FROM:<s@x.example> SIZE=123 BODY=8BITMIME\r\n"
	                            "RCPT TO:<a@y.example>\r\n"
	                            "RCPT TO:<b@y.example>\r\n"
	                            "DATA\r\n";
	assert_int_equal(n, strlen(group));
	assert_memory_equal(o, group, n);
	outbound_session_output_clear(s);

	/* the replies in one segment, read in order */
	static const char replies[] = "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n";
	assert_int_equal(outbound_session_input(s, replies, strlen(replies)), strlen(replies));
	assert_int_equal(outbound_session_action(s), OUTBOUND_SEND_BODY);
	outbound_session_body_done(s);
	o = outbound_session_output(s, &n);
	assert_int_equal(n, 3);
	assert_memory_equal(o, ".\r\n", 3);
	outbound_session_output_clear(s);
	static const char fin[] = "250 2.0.0 Ok: queued\r\n";
	assert_int_equal(outbound_session_input(s, fin, strlen(fin)), strlen(fin));
	assert_int_equal(outbound_session_action(s), OUTBOUND_DONE);
	o = outbound_session_output(s, &n);
	assert_memory_equal(o, "QUIT\r\n", 6);
	assert_rcpt(s, 0, OUTBOUND_RCPT_DELIVERED, 250, "Ok: queued");
	assert_rcpt(s, 1, OUTBOUND_RCPT_DELIVERED, 250, "Ok: queued");
	outbound_session_free(&s);
}

static void test_outbound_no_starttls(void **state)
{
	/* EAST O_1: STARTTLS hidden */
	static const char *const script[] = {
	    GREET,
	    "250-mx.y.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
	    "250 ok\r\n",
	};
	struct outbound_params p;
	struct transcript t;
	struct outbound_session *s;

	(void)state;
	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, script, 3), OUTBOUND_CLOSE);
	assert_string_equal(t.sent, "EHLO me.example\r\nQUIT\r\n");
	assert_false(t.starttls_raised);
	assert_pre_tls_clean(&t);
	assert_host_error(s, NO_STARTTLS, true);
	assert_rcpt(s, 0, OUTBOUND_RCPT_NOT_TRIED, 0, NULL);
	assert_rcpt(s, 1, OUTBOUND_RCPT_NOT_TRIED, 0, NULL);
	free_t(&t);
	outbound_session_free(&s);
}

/* one STARTTLS reply; expect the reason and whether QUIT follows */
static void starttls_answer(const char *reply, const char *reason, bool quit)
{
	const char *script[] = {GREET, EHLO_TLS, reply, "250 ok\r\n"};
	struct outbound_params p;
	struct transcript t;
	struct outbound_session *s;

	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, script, 4), OUTBOUND_CLOSE);
	assert_false(t.starttls_raised);
	assert_pre_tls_clean(&t);
	assert_string_equal(t.sent, quit ? "EHLO me.example\r\nSTARTTLS\r\nQUIT\r\n"
	                                 : "EHLO me.example\r\nSTARTTLS\r\n");
	assert_host_error(s, reason, true);
	free_t(&t);
	outbound_session_free(&s);
}

static void test_outbound_starttls_refused(void **state)
{
	(void)state;
	/* EAST O_3, O_2, O_4 and others/starttls */
	starttls_answer("454 4.7.0 TLS not available\r\n",
	                "STARTTLS refused by MX: 454 4.7.0 TLS not available", true);
	starttls_answer("502 5.5.1 Command not implemented\r\n",
	                "STARTTLS refused by MX: 502 5.5.1 Command not implemented", true);
	starttls_answer("554 5.7.0 no\r\n", "STARTTLS refused by MX: 554 5.7.0 no", true);
	starttls_answer("354 do something else\r\n",
	                "STARTTLS refused by MX: 354 do something else", true);
	starttls_answer("250 ok\r\n", "STARTTLS refused by MX: 250 ok", true);
	starttls_answer("421 4.3.2 bye\r\n", "STARTTLS refused by MX: 421 4.3.2 bye", false);
	/* 8-bit text is reduced to printable ASCII */
	starttls_answer("454 TLS \xc3\xa9t\xe9\r\n", "STARTTLS refused by MX: 454 TLS ??t?", true);
	starttls_answer("HTTP/1.1 400 Bad Request\r\n",
	                "protocol error: malformed reply line while waiting for the STARTTLS "
	                "reply",
	                false);
	starttls_answer("220\r\n\r\n", "response injection after STARTTLS (bytes after 220)",
	                false);
}

static void test_outbound_ehlo_refused(void **state)
{
	/* EAST D_1: a non-ESMTP server; a HELO reply cannot offer STARTTLS */
	static const char *const script[] = {GREET, "502 5.5.1 EHLO not implemented\r\n",
	                                     "250 mx.y.example\r\n", "250 ok\r\n"};
	static const char *const one[] = {"a@y.example"};
	struct outbound_params p;
	struct transcript t;
	struct outbound_session *s;

	(void)state;
	params(&p, one, 1);
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, script, 4), OUTBOUND_CLOSE);
	assert_string_equal(t.sent, "EHLO me.example\r\nQUIT\r\n");
	assert_pre_tls_clean(&t);
	assert_host_error(s, NO_STARTTLS " (EHLO refused: 502 5.5.1 EHLO not implemented)", true);
	free_t(&t);
	outbound_session_free(&s);

	/* tests only: without require_tls, the HELO path in plaintext */
	static const char *const plain[] = {GREET,
	                                    "502 5.5.1 EHLO not implemented\r\n",
	                                    "250 mx.y.example\r\n",
	                                    "250 ok\r\n",
	                                    "250 ok\r\n",
	                                    "354 go\r\n",
	                                    "250 queued\r\n"};
	params(&p, one, 1);
	p.require_tls = false;
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, plain, 7), OUTBOUND_DONE);
	assert_non_null(strstr(t.sent, "HELO me.example\r\nMAIL FROM:<s@x.example>\r\n"));
	assert_rcpt(s, 0, OUTBOUND_RCPT_DELIVERED, 250, "queued");
	free_t(&t);
	outbound_session_free(&s);
}

static void test_outbound_response_injection(void **state)
{
	/* EAST B_1 / security-anchors §8 B 7: forged capabilities after the 220 */
	static const char *const script[] = {
	    GREET, EHLO_TLS, "220 Ready to start TLS\r\n250-evil\r\n250 AUTH PLAIN\r\n"};
	/* a partial line after the 220 is injection too */
	static const char *const partial[] = {GREET, EHLO_TLS, "220-Ready\r\n220 go\r\n2"};
	struct outbound_params p;
	struct transcript t;
	struct outbound_session *s;

	(void)state;
	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, script, 3), OUTBOUND_CLOSE);
	assert_false(t.starttls_raised);
	assert_string_equal(t.sent, "EHLO me.example\r\nSTARTTLS\r\n");
	assert_host_error(s, "response injection after STARTTLS (bytes after 220)", true);
	/* a late tls_started() (I/O layer bug) changes nothing */
	outbound_session_tls_started(s);
	assert_int_equal(outbound_session_action(s), OUTBOUND_CLOSE);
	assert_false(outbound_session_tls_active(s));
	free_t(&t);
	outbound_session_free(&s);

	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, partial, 3), OUTBOUND_CLOSE);
	assert_false(t.starttls_raised);
	assert_host_error(s, "response injection after STARTTLS (bytes after 220)", true);
	free_t(&t);
	outbound_session_free(&s);
}

static void test_outbound_endless_continuation(void **state)
{
	struct outbound_params p;
	struct outbound_session *s;
	char *big;
	size_t n = 100000, used;

	(void)state;
	/* 10^5 "250-x" lines in one input: stops after SMTP_REPLY_MAX_LINES */
	big = malloc(n * 7 + 1);
	assert_non_null(big);
	for (size_t i = 0; i < n; i++)
		memcpy(big + i * 7, "250-xx\n", 7), big[i * 7 + 5] = '\r';
	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	assert_int_equal(outbound_session_input(s, GREET, strlen(GREET)), strlen(GREET));
	used = outbound_session_input(s, big, n * 7);
	assert_true(used <= (SMTP_REPLY_MAX_LINES + 1) * 7);
	assert_int_equal(outbound_session_action(s), OUTBOUND_CLOSE);
	assert_host_error(s,
	                  "protocol error: reply of more than 64 lines while waiting for "
	                  "the EHLO reply",
	                  true);
	outbound_session_free(&s);

	/* the same, fed one line at a time */
	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	outbound_session_input(s, GREET, strlen(GREET));
	for (size_t i = 0; i < n && outbound_session_action(s) == OUTBOUND_NONE; i++) {
		assert_true(i <= SMTP_REPLY_MAX_LINES);
		assert_int_equal(outbound_session_input(s, big, 7), 7);
	}
	assert_int_equal(outbound_session_action(s), OUTBOUND_CLOSE);
	outbound_session_free(&s);
	free(big);
}

static void test_outbound_long_line(void **state)
{
	struct outbound_params p;
	struct outbound_session *s;
	size_t n = 65536 + 6;
	char *line = malloc(n + 1);

	(void)state;
	assert_non_null(line);
	memcpy(line, "250-", 4);
	memset(line + 4, 'A', n - 6);
	memcpy(line + n - 2, "\r\n", 2);
	/* complete, then without its CRLF (the server never ends it) */
	for (int complete = 1; complete >= 0; complete--) {
		params(&p, two_rcpts, 2);
		s = outbound_session_new(&p);
		outbound_session_input(s, GREET, strlen(GREET));
		outbound_session_input(s, line, complete ? n : n - 2);
		assert_int_equal(outbound_session_action(s), OUTBOUND_CLOSE);
		assert_host_error(s,
		                  "protocol error: reply line longer than 2048 octets while "
		                  "waiting for the EHLO reply",
		                  true);
		outbound_session_free(&s);
	}
	free(line);
}

static void hostile_reply(const char *ehlo_reply, const char *reason)
{
	const char *script[] = {GREET, ehlo_reply};
	struct outbound_params p;
	struct transcript t;
	struct outbound_session *s;

	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, script, 2), OUTBOUND_CLOSE);
	assert_pre_tls_clean(&t);
	assert_host_error(s, reason, true);
	free_t(&t);
	outbound_session_free(&s);
}

static void test_outbound_malformed_replies(void **state)
{
	(void)state;
	/* mixed codes in one reply */
	hostile_reply("250-mx\r\n250-STARTTLS\r\n550 no\r\n",
	              "protocol error: malformed reply line while waiting for the EHLO reply");
	/* a code without a separator */
	hostile_reply("250STARTTLS\r\n",
	              "protocol error: malformed reply line while waiting for the EHLO reply");
	hostile_reply("250-mx\n250 STARTTLS\r\n",
	              "protocol error: bare <LF> in a reply while waiting for the EHLO reply");
	hostile_reply("250-mx\rx\r\n",
	              "protocol error: bare <CR> in a reply while waiting for the EHLO reply");
	/* a NUL in a reply line */
	struct outbound_params p;
	struct outbound_session *s;
	static const char nul[] = "250-mx\r\n250 START\0TLS\r\n";

	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	outbound_session_input(s, GREET, strlen(GREET));
	outbound_session_input(s, nul, sizeof(nul) - 1);
	assert_int_equal(outbound_session_action(s), OUTBOUND_CLOSE);
	assert_host_error(s, "protocol error: NUL in a reply while waiting for the EHLO reply",
	                  true);
	outbound_session_free(&s);
	hostile_reply("199 what\r\n",
	              "protocol error: malformed reply line while waiting for the EHLO reply");
}

/* the TLS part of a script, after STARTTLS */
#define PRE    GREET, EHLO_TLS, STARTTLS_OK
#define EHLO_2 "250-mx.y.example\r\n250 8BITMIME\r\n"

static void test_outbound_rcpt_partly_rejected(void **state)
{
	static const char *const script[] = {PRE,
	                                     EHLO_2,
	                                     "250 2.1.0 Ok\r\n",
	                                     "550 5.1.1 <a@y.example>: no such user\r\n",
	                                     "250 2.1.5 Ok\r\n",
	                                     "354 go\r\n",
	                                     "250 2.0.0 Ok: queued as Q1\r\n"};
	struct outbound_params p;
	struct transcript t;
	struct outbound_session *s;

	(void)state;
	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, script, 9), OUTBOUND_DONE);
	assert_pre_tls_clean(&t);
	assert_non_null(strstr(t.sent, "MAIL FROM:<s@x.example> BODY=8BITMIME\r\n"));
	assert_rcpt(s, 0, OUTBOUND_RCPT_FAILED, 550, "<a@y.example>: no such user");
	assert_string_equal(outbound_session_result(s, 0)->reply.enhanced, "5.1.1");
	assert_rcpt(s, 1, OUTBOUND_RCPT_DELIVERED, 250, "Ok: queued as Q1");
	free_t(&t);
	outbound_session_free(&s);
}

static void test_outbound_all_rcpts_rejected(void **state)
{
	static const char *const script[] = {PRE, EHLO_2, "250 Ok\r\n", "550 no\r\n",
	                                     "450 4.2.0 later\r\n"};
	static const char *const piped[] = {
	    PRE, "250-mx\r\n250 PIPELINING\r\n",
	    /* a broken server says 354 with no recipient (RFC 2920 §3.1) */
	    "250 Ok\r\n550 no\r\n450 later\r\n354 go\r\n"};
	struct outbound_params p;
	struct transcript t;
	struct outbound_session *s;

	(void)state;
	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, script, 7), OUTBOUND_DONE);
	assert_null(strstr(t.sent, "DATA"));
	assert_rcpt(s, 0, OUTBOUND_RCPT_FAILED, 550, "no");
	assert_rcpt(s, 1, OUTBOUND_RCPT_DEFERRED, 450, "later");
	assert_false(outbound_session_host_error(s, NULL, NULL));
	free_t(&t);
	outbound_session_free(&s);

	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, piped, 5), OUTBOUND_DONE);
	assert_int_equal(t.body_sends, 0);
	assert_non_null(strstr(t.sent, "DATA\r\n.\r\nQUIT\r\n"));
	assert_rcpt(s, 0, OUTBOUND_RCPT_FAILED, 550, "no");
	assert_rcpt(s, 1, OUTBOUND_RCPT_DEFERRED, 450, "later");
	free_t(&t);
	outbound_session_free(&s);
}

static void test_outbound_final_451(void **state)
{
	static const char *const script[] = {PRE,
	                                     EHLO_2,
	                                     "250 Ok\r\n",
	                                     "250 Ok\r\n",
	                                     "250 Ok\r\n",
	                                     "354 go\r\n",
	                                     "451 4.3.0 Error: queue file write error\r\n"};
	static const char *const data5[] = {PRE,          EHLO_2,
	                                    "250 Ok\r\n", "250 Ok\r\n",
	                                    "250 Ok\r\n", "554 5.5.1 no valid recipients\r\n"};
	struct outbound_params p;
	struct transcript t;
	struct outbound_session *s;

	(void)state;
	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, script, 9), OUTBOUND_DONE);
	assert_rcpt(s, 0, OUTBOUND_RCPT_DEFERRED, 451, "Error: queue file write error");
	assert_rcpt(s, 1, OUTBOUND_RCPT_DEFERRED, 451, "Error: queue file write error");
	assert_false(outbound_session_host_error(s, NULL, NULL));
	free_t(&t);
	outbound_session_free(&s);

	/* a 5xx to DATA itself fails the accepted recipients */
	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, data5, 8), OUTBOUND_DONE);
	assert_int_equal(t.body_sends, 0);
	assert_rcpt(s, 0, OUTBOUND_RCPT_FAILED, 554, "no valid recipients");
	assert_rcpt(s, 1, OUTBOUND_RCPT_FAILED, 554, "no valid recipients");
	free_t(&t);
	outbound_session_free(&s);
}

static void test_outbound_421_mid_session(void **state)
{
	static const char *const script[] = {PRE, EHLO_2, "250 Ok\r\n", "550 5.1.1 unknown\r\n",
	                                     "421 4.3.2 Service shutting down\r\n"};
	static const char *const after_dot[] = {
	    PRE,          EHLO_2,       "250 Ok\r\n",           "250 Ok\r\n",
	    "250 Ok\r\n", "354 go\r\n", "421 4.4.2 timeout\r\n"};
	struct outbound_params p;
	struct transcript t;
	struct outbound_session *s;

	(void)state;
	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, script, 7), OUTBOUND_CLOSE);
	assert_host_error(s, "MX closed the session: 421 4.3.2 Service shutting down", true);
	/* the 550 stands; the other was not decided here */
	assert_rcpt(s, 0, OUTBOUND_RCPT_FAILED, 550, "unknown");
	assert_rcpt(s, 1, OUTBOUND_RCPT_NOT_TRIED, 0, NULL);
	/* no QUIT after a 421 */
	assert_int_equal(strcmp(t.sent + t.sent_len - strlen("RCPT TO:<b@y.example>\r\n"),
	                        "RCPT TO:<b@y.example>\r\n"),
	                 0);
	free_t(&t);
	outbound_session_free(&s);

	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, after_dot, 9), OUTBOUND_CLOSE);
	assert_host_error(s, "MX closed the session: 421 4.4.2 timeout", true);
	assert_rcpt(s, 0, OUTBOUND_RCPT_NOT_TRIED, 0, NULL);
	assert_rcpt(s, 1, OUTBOUND_RCPT_NOT_TRIED, 0, NULL);
	free_t(&t);
	outbound_session_free(&s);
}

static void test_outbound_greeting_and_mail_refused(void **state)
{
	static const char *const g554[] = {"554 5.7.1 go away\r\n"};
	static const char *const mail5[] = {PRE, EHLO_2, "553 5.7.1 sender rejected\r\n"};
	struct outbound_params p;
	struct transcript t;
	struct outbound_session *s;

	(void)state;
	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, g554, 1), OUTBOUND_CLOSE);
	assert_string_equal(t.sent, "QUIT\r\n");
	assert_host_error(s, "MX refused the session: 554 5.7.1 go away", false);
	free_t(&t);
	outbound_session_free(&s);

	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, mail5, 5), OUTBOUND_CLOSE);
	assert_host_error(s, "MAIL FROM refused: 553 5.7.1 sender rejected", false);
	assert_rcpt(s, 0, OUTBOUND_RCPT_NOT_TRIED, 0, NULL);
	free_t(&t);
	outbound_session_free(&s);
}

static void test_outbound_eof_timeout_tls_failed(void **state)
{
	static const char *const eof[] = {GREET, NULL};
	static const char *const eof_quit[] = {PRE,          EHLO_2,       "250 Ok\r\n",
	                                       "250 Ok\r\n", "250 Ok\r\n", "354 go\r\n",
	                                       "250 ok\r\n", NULL};
	struct outbound_params p;
	struct transcript t;
	struct outbound_session *s;
	size_t n;

	(void)state;
	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, eof, 2), OUTBOUND_CLOSE);
	assert_host_error(s, "MX closed the connection while waiting for the EHLO reply", true);
	free_t(&t);
	outbound_session_free(&s);

	/* after the final reply, EOF changes nothing */
	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, eof_quit, 10), OUTBOUND_DONE);
	outbound_session_eof(s);
	assert_false(outbound_session_host_error(s, NULL, NULL));
	assert_rcpt(s, 1, OUTBOUND_RCPT_DELIVERED, 250, "ok");
	free_t(&t);
	outbound_session_free(&s);

	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	outbound_session_timeout(s);
	assert_host_error(s, "timeout while waiting for the greeting", true);
	outbound_session_free(&s);

	/* the I/O layer's verification failed: no EHLO inside that TLS */
	params(&p, two_rcpts, 2);
	s = outbound_session_new(&p);
	outbound_session_input(s, GREET, strlen(GREET));
	outbound_session_input(s, EHLO_TLS, strlen(EHLO_TLS));
	outbound_session_input(s, STARTTLS_OK, strlen(STARTTLS_OK));
	outbound_session_output_clear(s);
	assert_int_equal(outbound_session_action(s), OUTBOUND_STARTTLS);
	outbound_session_tls_failed(s, "certificate has expired (notAfter 2020-01-31)");
	assert_int_equal(outbound_session_action(s), OUTBOUND_CLOSE);
	outbound_session_output(s, &n);
	assert_int_equal(n, 0);
	assert_host_error(s, "certificate has expired (notAfter 2020-01-31)", true);
	outbound_session_tls_started(s); /* too late: ignored */
	outbound_session_output(s, &n);
	assert_int_equal(n, 0);
	outbound_session_free(&s);
}

static void test_outbound_bad_addresses(void **state)
{
	static const char *const rc[] = {"a@y.example\r\nRCPT TO:<evil@z>", "b@y.example",
	                                 "<c@y.example>"};
	static const char *const script[] = {PRE,          EHLO_2,       "250 Ok\r\n",
	                                     "250 Ok\r\n", "354 go\r\n", "250 ok\r\n"};
	struct outbound_params p;
	struct transcript t;
	struct outbound_session *s;

	(void)state;
	params(&p, rc, 3);
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, script, 8), OUTBOUND_DONE);
	assert_null(strstr(t.sent, "evil"));
	assert_null(strstr(t.sent, "c@y"));
	assert_rcpt(s, 0, OUTBOUND_RCPT_FAILED, 553, NULL);
	assert_rcpt(s, 1, OUTBOUND_RCPT_DELIVERED, 250, "ok");
	assert_rcpt(s, 2, OUTBOUND_RCPT_FAILED, 553, NULL);
	free_t(&t);
	outbound_session_free(&s);

	/* the null sender */
	params(&p, two_rcpts, 1);
	p.sender = "";
	s = outbound_session_new(&p);
	assert_int_equal(run(s, &t, script, 8), OUTBOUND_DONE);
	assert_non_null(strstr(t.sent, "MAIL FROM:<> BODY=8BITMIME\r\n"));
	free_t(&t);
	outbound_session_free(&s);
}

/* the answers of the reply-code matrices below: every code, garbage, EOF */
static const char *const matrix_answers[] = {
    "220 x\r\n",          "221 x\r\n",   "250 x\r\n", "354 x\r\n", "421 x\r\n", "454 x\r\n",
    "500 x\r\n",          "501 x\r\n",   "502 x\r\n", "504 x\r\n", "530 x\r\n", "550 x\r\n",
    "554 x\r\n",          "garbage\r\n", "\r\n",      "250-x\r\n", "220-x\r\n", "250 x\n",
    "220 x\r\n250 y\r\n", "2",           NULL,
};
#define N_MATRIX (sizeof(matrix_answers) / sizeof(matrix_answers[0]))

/*
 * matrix_ok - the answer is a 250 reply: "250 x", or "250-x", which the
 * scripts complete with "250 y" ("250 x\n" is not: a bare LF in a reply is
 * a protocol error)
 */
static bool matrix_ok(size_t a)
{
	const char *m = matrix_answers[a];
	return m != NULL && (strcmp(m, "250 x\r\n") == 0 || strcmp(m, "250-x\r\n") == 0);
}

/*
 * The reply-code matrix (security-anchors §8 B 9): greeting, EHLO and
 * STARTTLS each answered with every code, with garbage or with EOF. The
 * session must end (never hang in a pre-TLS state), and MAIL never goes out.
 */
static void test_outbound_hostile_matrix(void **state)
{
	static const char *const tail[] = {"250-a\r\n250 STARTTLS\r\n", "250 ok\r\n", "250 ok\r\n",
	                                   "354 go\r\n", "250 ok\r\n"};

	(void)state;
	for (int step = 0; step < 3; step++) {
		for (size_t a = 0; a < N_MATRIX; a++) {
			const char *script[8];
			size_t n = 0;
			struct outbound_params p;
			struct transcript t;
			struct outbound_session *s;

			if (step > 0)
				script[n++] = GREET;
			if (step > 1)
				script[n++] = EHLO_TLS;
			script[n++] = matrix_answers[a];
			for (size_t k = 0; k < 5; k++)
				script[n++] = tail[k];
			params(&p, two_rcpts, 2);
			s = outbound_session_new(&p);
			run(s, &t, script, n);
			/* only a successful STARTTLS exchange may lead past it */
			if (!t.starttls_raised)
				assert_null(strstr(t.sent, "MAIL"));
			assert_pre_tls_clean(&t);
			free_t(&t);
			outbound_session_free(&s);
		}
	}
}

/* a whole transaction for two recipients over TLS, after the greeting */
static const char *const whole_tls[] = {
    GREET,
    EHLO_TLS,
    STARTTLS_OK,
    "250-mx.y.example\r\n250 SIZE 1000\r\n",
    "250 2.1.0 Ok\r\n",
    "250 2.1.5 Ok\r\n",
    "250 2.1.5 Ok\r\n",
    "354 go\r\n",
    "250 2.0.0 Ok: queued as A\r\n",
};

/*
 * The matrix for RSET (security case 9): on a reused connection (keep_open)
 * the next message begins with RSET; only 250 lets MAIL follow. Anything
 * else ends the host temporarily (QUIT unless 421), the new recipients are
 * NOT_TRIED (tried again elsewhere), and nothing after RSET is written.
 */
static void test_outbound_rset_matrix(void **state)
{
	static const char *const one[] = {"c@y.example"};
	static const char *const tail[] = {"250 ok\r\n", "250 ok\r\n", "354 go\r\n",
	                                   "250 2.0.0 Ok: queued as B\r\n"};

	(void)state;
	for (size_t a = 0; a < N_MATRIX; a++) {
		const char *script[8];
		size_t n = 0, len;
		struct outbound_params p;
		struct transcript t;
		struct outbound_session *s;

		params(&p, two_rcpts, 2);
		p.keep_open = true;
		s = outbound_session_new(&p);
		assert_int_equal(run(s, &t, whole_tls, 9), OUTBOUND_DONE);
		assert_null(strstr(t.sent, "QUIT")); /* kept open */
		assert_true(outbound_session_idle(s));
		assert_rcpt(s, 0, OUTBOUND_RCPT_DELIVERED, 250, "Ok: queued as A");
		free_t(&t);

		assert_int_equal(outbound_session_next(s, "s2@x.example", one, 1, 50, 2), 0);
		const char *o = outbound_session_output(s, &len);
		assert_int_equal(len, 6);
		assert_memory_equal(o, "RSET\r\n", 6);
		outbound_session_output_clear(s);

		script[n++] = matrix_answers[a];
		if (matrix_answers[a] != NULL && strcmp(matrix_answers[a], "250-x\r\n") == 0)
			script[n++] = "250 y\r\n";
		for (size_t k = 0; k < 4; k++)
			script[n++] = tail[k];
		enum outbound_action last = run(s, &t, script, n);
		bool ok = matrix_ok(a);
		if (ok) {
			if (last != OUTBOUND_DONE)
				fail_msg("answer %zu (%s): sent %s", a, matrix_answers[a], t.sent);
			assert_non_null(strstr(t.sent, "MAIL FROM:<s2@x.example>"));
			assert_rcpt(s, 0, OUTBOUND_RCPT_DELIVERED, 250, "Ok: queued as B");
		} else {
			/* a multi-line reply still waiting for its last line: EOF ends it */
			assert_true(last == OUTBOUND_CLOSE || last == OUTBOUND_NONE);
			if (last == OUTBOUND_NONE) {
				outbound_session_eof(s);
				assert_int_equal(outbound_session_action(s), OUTBOUND_CLOSE);
			}
			assert_null(strstr(t.sent, "MAIL"));
			assert_true(outbound_session_host_error(s, NULL, NULL));
			assert_rcpt(s, 0, OUTBOUND_RCPT_NOT_TRIED, 0, NULL);
		}
		free_t(&t);
		outbound_session_free(&s);
	}
}

/*
 * QUIT (security case 9): the session does not wait for the answer to QUIT
 * (DONE means "send QUIT and close"); whatever the server says after it,
 * or not, changes no result and writes nothing more.
 */
static void test_outbound_quit_answer_ignored(void **state)
{
	(void)state;
	for (size_t a = 0; a < N_MATRIX; a++) {
		struct outbound_params p;
		struct transcript t;
		struct outbound_session *s;
		size_t len;

		params(&p, two_rcpts, 2);
		s = outbound_session_new(&p);
		assert_int_equal(run(s, &t, whole_tls, 9), OUTBOUND_DONE);
		assert_non_null(strstr(t.sent, ".\r\nQUIT\r\n"));
		free_t(&t);
		if (matrix_answers[a] == NULL)
			outbound_session_eof(s);
		else
			(void)outbound_session_input(s, matrix_answers[a],
			                             strlen(matrix_answers[a]));
		(void)outbound_session_output(s, &len);
		assert_int_equal(len, 0);
		assert_int_equal(outbound_session_action(s), OUTBOUND_DONE);
		assert_false(outbound_session_host_error(s, NULL, NULL));
		assert_rcpt(s, 0, OUTBOUND_RCPT_DELIVERED, 250, "Ok: queued as A");
		assert_rcpt(s, 1, OUTBOUND_RCPT_DELIVERED, 250, "Ok: queued as A");
		outbound_session_free(&s);
	}
}

/*
 * HELO (security case 9): strictmx sends HELO only without require_tls (a
 * test mode; with require_tls a refused EHLO ends the host). There, every
 * answer to HELO but 250 ends the session without MAIL.
 */
static void test_outbound_helo_matrix(void **state)
{
	static const char *const one[] = {"a@y.example"};

	(void)state;
	for (size_t a = 0; a < N_MATRIX; a++) {
		static const char *const tail[] = {"250 ok\r\n", "250 ok\r\n", "354 go\r\n",
		                                   "250 queued\r\n"};
		const char *script[8] = {GREET, "502 5.5.1 EHLO not implemented\r\n",
		                         matrix_answers[a]};
		size_t n = 3;
		struct outbound_params p;
		struct transcript t;
		struct outbound_session *s;

		params(&p, one, 1);
		p.require_tls = false;
		s = outbound_session_new(&p);
		if (matrix_answers[a] != NULL && strcmp(matrix_answers[a], "250-x\r\n") == 0)
			script[n++] = "250 y\r\n";
		for (size_t k = 0; k < 4; k++)
			script[n++] = tail[k];
		enum outbound_action last = run(s, &t, script, n);
		assert_non_null(strstr(t.sent, "HELO me.example\r\n"));
		bool ok = matrix_ok(a);
		if (ok) {
			if (last != OUTBOUND_DONE)
				fail_msg("answer %zu (%s): sent %s", a, matrix_answers[a], t.sent);
			assert_rcpt(s, 0, OUTBOUND_RCPT_DELIVERED, 250, "queued");
		} else {
			if (last == OUTBOUND_NONE) {
				outbound_session_eof(s);
				last = outbound_session_action(s);
			}
			assert_int_equal(last, OUTBOUND_CLOSE);
			assert_null(strstr(t.sent, "MAIL"));
			assert_rcpt(s, 0, OUTBOUND_RCPT_NOT_TRIED, 0, NULL);
		}
		free_t(&t);
		outbound_session_free(&s);
	}
}

/* --- the body stuffer -------------------------------------------------- */

/* stuff - whole input, then the end; returns a malloc'd string */
static char *stuff_split(const char *in, size_t len, const size_t *cuts, size_t ncuts,
                         size_t *outlen)
{
	struct outbound_stuffer st;
	char *out = malloc(OUTBOUND_STUFF_MAX(len) + 2 + 1);
	size_t o = 0, from = 0;

	assert_non_null(out);
	outbound_stuffer_init(&st);
	for (size_t c = 0; c <= ncuts; c++) {
		size_t to = c < ncuts ? cuts[c] : len;
		o += outbound_body_stuff(&st, in + from, to - from, out + o,
		                         OUTBOUND_STUFF_MAX(to - from));
		from = to;
	}
	o += outbound_body_stuff_end(&st, out + o, 2);
	out[o] = '\0';
	*outlen = o;
	return out;
}

static void assert_canonical(const char *out, size_t n)
{
	/* every CR is followed by LF and every LF preceded by CR; no NUL */
	for (size_t i = 0; i < n; i++) {
		if (out[i] == '\r')
			assert_true(i + 1 < n && out[i + 1] == '\n');
		if (out[i] == '\n')
			assert_true(i > 0 && out[i - 1] == '\r');
		assert_true(out[i] != '\0');
	}
	if (n > 0)
		assert_true(n >= 2 && out[n - 2] == '\r' && out[n - 1] == '\n');
}

/* the stream as sent: "DATA\r\n" then the body, then ".\r\n": exactly one end */
static void assert_one_eod(const char *body, size_t n)
{
	size_t tl = 6 + n + 3, count = 0;
	char *w = malloc(tl);

	assert_non_null(w);
	memcpy(w, "DATA\r\n", 6);
	memcpy(w + 6, body, n);
	memcpy(w + 6 + n, ".\r\n", 3);
	for (size_t i = 0; i + 5 <= tl; i++)
		if (memcmp(w + i, "\r\n.\r\n", 5) == 0)
			count++;
	/* an empty body: the CRLF of DATA itself precedes the terminator */
	assert_int_equal(count, 1);
	assert_memory_equal(w + tl - 5, "\r\n.\r\n", 5);
	free(w);
}

static void check_stuff(const char *in, size_t len, const char *want, size_t wantlen)
{
	size_t n, n2;
	char *whole = stuff_split(in, len, NULL, 0, &n);

	if (want != NULL) {
		assert_int_equal(n, wantlen);
		assert_memory_equal(whole, want, n);
	}
	assert_canonical(whole, n);
	assert_one_eod(whole, n);
	/* split-point invariance: every single cut, and byte by byte */
	for (size_t c = 0; c <= len; c++) {
		char *o = stuff_split(in, len, &c, 1, &n2);
		assert_int_equal(n2, n);
		assert_memory_equal(o, whole, n);
		free(o);
	}
	size_t *cuts = malloc((len + 1) * sizeof(*cuts));
	assert_non_null(cuts);
	for (size_t c = 0; c < len; c++)
		cuts[c] = c;
	char *o = stuff_split(in, len, cuts, len, &n2);
	assert_int_equal(n2, n);
	assert_memory_equal(o, whole, n);
	free(o);
	free(cuts);
	free(whole);
}

#define CS(in, want) check_stuff(in, sizeof(in) - 1, want, sizeof(want) - 1)

static void test_outbound_stuffer_basics(void **state)
{
	(void)state;
	CS("", "");
	CS(".x\r\n", "..x\r\n");
	CS("a\r\n.\r\nb\r\n", "a\r\n..\r\nb\r\n");
	CS("..\r\n", "...\r\n");
	CS("a.b\r\n. x\r\n", "a.b\r\n.. x\r\n");
	CS("no end", "no end\r\n");
	CS("bare\nlf\n", "bare\r\nlf\r\n");
	CS("bare\rcr\r", "bare\r\ncr\r\n");
	CS("\r\r\n", "\r\n\r\n");
	CS("\n.\n", "\r\n..\r\n");
	CS("x\r.y", "x\r\n..y\r\n");
	CS("a\0b\r\n\0.\r\n", "ab\r\n..\r\n");
	CS(".", "..\r\n");
}

/* §8 D.19: a body line over 998 octets (text_line_length raised) is flagged,
 * whatever the input split and line ending; 998 and dot-stuffed 998 are not */
static void stuff_line(size_t n, char first, const char *end, size_t piece, bool want)
{
	static char in[6000], out[OUTBOUND_STUFF_MAX(sizeof(in))];
	struct outbound_stuffer st;
	size_t len = 0;

	in[len++] = 'a';
	in[len++] = '\r';
	in[len++] = '\n';
	memset(in + len, 'x', n);
	in[len] = first;
	len += n;
	memcpy(in + len, end, strlen(end));
	len += strlen(end);
	memcpy(in + len, "short\r\n", 7);
	len += 7;
	outbound_stuffer_init(&st);
	for (size_t i = 0; i < len; i += piece) {
		size_t k = len - i < piece ? len - i : piece;
		outbound_body_stuff(&st, in + i, k, out, sizeof(out));
	}
	assert_int_equal(st.too_long, want);
	outbound_stuffer_init(&st);
	assert_false(st.too_long);
}

static void test_outbound_stuffer_long_line(void **state)
{
	(void)state;
	static const size_t pieces[] = {1, 7, 999, 6000};
	for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++) {
		stuff_line(998, 'x', "\r\n", pieces[i], false);
		stuff_line(998, '.', "\r\n", pieces[i], false); /* the stuffing dot is free */
		stuff_line(998, 'x', "\n", pieces[i], false);
		stuff_line(999, 'x', "\r\n", pieces[i], true);
		stuff_line(999, '.', "\r\n", pieces[i], true);
		stuff_line(5000, 'x', "\r\n", pieces[i], true);
		stuff_line(5000, 'x', "", pieces[i], true); /* no line end at all */
	}
}

/* security-anchors §2.3: each end-of-data trick inside a body */
static void test_outbound_stuffer_smuggling(void **state)
{
	static const char *const seqs[] = {
	    "\n.\n",       "\n.\r\n",       "\r.\r",     "\r.\n",       "\n.\r",
	    "\r.\r\n",     "\r\n.\n",       "\r\n.\r",   "\r\n\0.\r\n", "\r\n.\0\r\n",
	    "\r\n.\r\r\n", "\r\r\n.\r\r\n", "\r\n.\r\n",
	};
	static const char smuggled[] =
	    "MAIL FROM:<spoof@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nSubject: s\r\n\r\nB\r\n.\r\n";

	(void)state;
	for (size_t i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++) {
		char in[256];
		size_t sl = (i == 8 || i == 9) ? 6 : strlen(seqs[i]);
		size_t n = 0;

		in[n++] = 'A';
		memcpy(in + n, seqs[i], sl);
		n += sl;
		memcpy(in + n, smuggled, sizeof(smuggled) - 1);
		n += sizeof(smuggled) - 1;
		check_stuff(in, n, NULL, 0);
		/* the sequence alone, at the very start and at the very end */
		check_stuff(seqs[i], sl, NULL, 0);
		memcpy(in, seqs[i], sl);
		check_stuff(in, sl, NULL, 0);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_outbound_normal_no_pipelining),
	    cmocka_unit_test(test_outbound_normal_pipelining),
	    cmocka_unit_test(test_outbound_no_starttls),
	    cmocka_unit_test(test_outbound_starttls_refused),
	    cmocka_unit_test(test_outbound_ehlo_refused),
	    cmocka_unit_test(test_outbound_response_injection),
	    cmocka_unit_test(test_outbound_endless_continuation),
	    cmocka_unit_test(test_outbound_long_line),
	    cmocka_unit_test(test_outbound_malformed_replies),
	    cmocka_unit_test(test_outbound_rcpt_partly_rejected),
	    cmocka_unit_test(test_outbound_all_rcpts_rejected),
	    cmocka_unit_test(test_outbound_final_451),
	    cmocka_unit_test(test_outbound_421_mid_session),
	    cmocka_unit_test(test_outbound_greeting_and_mail_refused),
	    cmocka_unit_test(test_outbound_eof_timeout_tls_failed),
	    cmocka_unit_test(test_outbound_bad_addresses),
	    cmocka_unit_test(test_outbound_hostile_matrix),
	    cmocka_unit_test(test_outbound_rset_matrix),
	    cmocka_unit_test(test_outbound_quit_answer_ignored),
	    cmocka_unit_test(test_outbound_helo_matrix),
	    cmocka_unit_test(test_outbound_stuffer_basics),
	    cmocka_unit_test(test_outbound_stuffer_smuggling),
	    cmocka_unit_test(test_outbound_stuffer_long_line),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
