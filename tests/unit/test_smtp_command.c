/*
 * test_smtp_command - command parsing (smtp/command.h) and reply rendering
 * (smtp/reply.h): verbs (RFC 5321 §4.1.1), paths and ESMTP parameters
 * (§4.1.2, RFC 1870, RFC 6152, RFC 6531), BDAT (RFC 3030 §3), HELO/EHLO,
 * and security-anchors tests 20-23, 27 and 32.
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

#include "smtp/command.h"
#include "smtp/reply.h"

/* ------------------------------------------------------------------ */
/* smtp_cmd_parse */

static void parse(const char *s, struct smtp_cmd *c)
{
	smtp_cmd_parse(s, strlen(s), c);
}

static void assert_arg(const struct smtp_cmd *c, const char *want)
{
	assert_int_equal(c->arg_len, strlen(want));
	assert_memory_equal(c->arg, want, c->arg_len);
}

static void test_cmd_verbs(void **state)
{
	static const struct {
		const char *line;
		enum smtp_verb verb;
		const char *arg;
	} cases[] = {
	    {"HELO x", SMTP_V_HELO, "x"},
	    {"ehlo mx.example.org", SMTP_V_EHLO, "mx.example.org"},
	    {"MAIL FROM:<a@b>", SMTP_V_MAIL, "FROM:<a@b>"},
	    {"Rcpt To:<a@b>", SMTP_V_RCPT, "To:<a@b>"},
	    {"DATA", SMTP_V_DATA, ""},
	    {"BDAT 10 LAST", SMTP_V_BDAT, "10 LAST"},
	    {"RSET", SMTP_V_RSET, ""},
	    {"NOOP hello", SMTP_V_NOOP, "hello"},
	    {"QUIT", SMTP_V_QUIT, ""},
	    {"HELP", SMTP_V_HELP, ""},
	    {"VRFY root", SMTP_V_VRFY, "root"},
	    {"EXPN list", SMTP_V_EXPN, "list"},
	    {"StartTLS", SMTP_V_STARTTLS, ""},
	    {"STARTTLS x", SMTP_V_STARTTLS, "x"},
	    {"AUTH PLAIN", SMTP_V_AUTH, "PLAIN"},
	    /* multiple spaces before the argument, trailing spaces dropped */
	    {"MAIL    FROM:<a@b>   ", SMTP_V_MAIL, "FROM:<a@b>"},
	    {"QUIT   ", SMTP_V_QUIT, ""},
	    /* verb must end at SP or end of line */
	    {"MAILX FROM:<a@b>", SMTP_V_UNKNOWN, "FROM:<a@b>"},
	    {"MAIL\tFROM:<a@b>", SMTP_V_UNKNOWN, ""},
	    {"MAI", SMTP_V_UNKNOWN, ""},
	    {"", SMTP_V_UNKNOWN, ""},
	    {" HELO x", SMTP_V_UNKNOWN, "HELO x"},
	    {"XYZZY", SMTP_V_UNKNOWN, ""},
	    /* security-anchors test 32: HTTP */
	    {"GET / HTTP/1.1", SMTP_V_NONSMTP, "/ HTTP/1.1"},
	    {"post /x HTTP/1.0", SMTP_V_NONSMTP, "/x HTTP/1.0"},
	    {"HEAD /", SMTP_V_NONSMTP, "/"},
	    {"PUT /", SMTP_V_NONSMTP, "/"},
	    {"CONNECT mx:25 HTTP/1.1", SMTP_V_NONSMTP, "mx:25 HTTP/1.1"},
	    {"OPTIONS * HTTP/1.1", SMTP_V_NONSMTP, "* HTTP/1.1"},
	    {"Host: x", SMTP_V_NONSMTP, "x"},
	    {"host:x", SMTP_V_NONSMTP, "x"},
	    {"User-Agent: curl", SMTP_V_NONSMTP, "curl"},
	    {"GET", SMTP_V_UNKNOWN, ""},
	    {"GETTER x", SMTP_V_UNKNOWN, "x"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct smtp_cmd c;

		print_message("%s\n", cases[i].line);
		parse(cases[i].line, &c);
		assert_int_equal(c.verb, cases[i].verb);
		assert_arg(&c, cases[i].arg);
	}
}

static void test_cmd_binary(void **state)
{
	struct smtp_cmd c;

	smtp_cmd_parse("NOOP a\0b", 8, &c);
	assert_int_equal(c.verb, SMTP_V_NOOP);
	assert_int_equal(c.arg_len, 3);
	smtp_cmd_parse(NULL, 0, &c);
	assert_int_equal(c.verb, SMTP_V_UNKNOWN);
	assert_int_equal(c.arg_len, 0);
}

static void test_verb_name(void **state)
{
	assert_string_equal(smtp_verb_name(SMTP_V_EHLO), "EHLO");
	assert_string_equal(smtp_verb_name(SMTP_V_STARTTLS), "STARTTLS");
	assert_string_equal(smtp_verb_name(SMTP_V_UNKNOWN), "UNKNOWN");
	assert_string_equal(smtp_verb_name(SMTP_V_NONSMTP), "NONSMTP");
}

/* ------------------------------------------------------------------ */
/* MAIL / RCPT */

static struct smtp_path P;
static struct smtp_mail_params M;
static struct smtp_reply E;

static int mail(const char *arg, uint64_t max_size)
{
	memset(&E, 0, sizeof(E));
	return smtp_parse_mail(arg, strlen(arg), max_size, &P, &M, &E);
}

static int rcpt(const char *arg, bool utf8)
{
	memset(&E, 0, sizeof(E));
	return smtp_parse_rcpt(arg, strlen(arg), utf8, &P, &E);
}

static void assert_err(int code, const char *enh)
{
	assert_int_equal(E.code, code);
	assert_string_equal(E.enhanced, enh);
	/* error texts never carry line breaks */
	assert_null(strpbrk(E.text, "\r\n"));
}

static void test_mail_ok(void **state)
{
	assert_int_equal(mail("FROM:<a@b.example>", 0), 0);
	assert_string_equal(P.addr, "a@b.example");
	assert_string_equal(P.local, "a");
	assert_string_equal(P.domain, "b.example");
	assert_false(P.null_path);
	assert_false(P.utf8);
	assert_false(M.size_set);
	assert_int_equal(M.body, SMTP_BODY_7BIT);
	assert_false(M.smtputf8);

	assert_int_equal(mail("from:<>", 0), 0);
	assert_true(P.null_path);
	assert_string_equal(P.addr, "");

	/* a space after the colon is tolerated */
	assert_int_equal(mail("FROM: <a@b>", 0), 0);
	assert_string_equal(P.addr, "a@b");

	assert_int_equal(mail("FROM:<a.b+c@x-y.example> SIZE=1000 BODY=8bitmime", 2000), 0);
	assert_true(M.size_set);
	assert_int_equal(M.size, 1000);
	assert_int_equal(M.body, SMTP_BODY_8BITMIME);

	assert_int_equal(mail("FROM:<> body=7BIT size=0", 0), 0);
	assert_int_equal(M.body, SMTP_BODY_7BIT);
	assert_true(M.size_set);
	assert_int_equal(M.size, 0);

	/* SIZE exactly at the limit, and the largest 20-digit value fitting */
	assert_int_equal(mail("FROM:<a@b> SIZE=2000", 2000), 0);
	assert_int_equal(mail("FROM:<a@b> SIZE=18446744073709551615", 0), 0);
	assert_int_equal(M.size, UINT64_MAX);
}

/* security-anchors test 20: addresses are data; grammar decides */
static void test_mail_addresses_are_data(void **state)
{
	/* no "@": not a Mailbox */
	assert_int_equal(mail("FROM:<;sleep 66;>", 0), -1);
	assert_err(553, "5.1.7");
	assert_string_equal(E.text, "Bad sender address syntax");
	/* "{", "}" and "$" are atext, but "(" ")" are not */
	assert_int_equal(mail("FROM:<${run{/bin/true}}@localhost>", 0), 0);
	assert_string_equal(P.local, "${run{/bin/true}}");
	assert_int_equal(mail("FROM:<$(id)@x>", 0), -1);
	assert_err(553, "5.1.7");
	/* quoted local parts are grammatical and kept as sent */
	assert_int_equal(mail("FROM:<\"a;|id\"@x>", 0), 0);
	assert_string_equal(P.local, "\"a;|id\"");
	assert_string_equal(P.addr, "\"a;|id\"@x");
	assert_int_equal(mail("FROM:<\"a\\\"b> c\"@x>", 0), 0);
	assert_string_equal(P.local, "\"a\\\"b> c\"");
	/* a leading "-" is atext; it is the caller's job to never pass it as an option */
	assert_int_equal(mail("FROM:<-oQ.x@x>", 0), 0);
	assert_string_equal(P.local, "-oQ.x");
	/* source route accepted and dropped */
	assert_int_equal(mail("FROM:<@a,@b:u@d>", 0), 0);
	assert_string_equal(P.addr, "u@d");
	assert_string_equal(P.domain, "d");
	assert_int_equal(mail("FROM:<@a:u@d>", 0), 0);
	assert_string_equal(P.addr, "u@d");
	/* address literals */
	assert_int_equal(mail("FROM:<u@[IPv6:::1]>", 0), 0);
	assert_string_equal(P.domain, "[IPv6:::1]");
	assert_int_equal(mail("FROM:<u@[192.0.2.1]>", 0), 0);
	assert_string_equal(P.addr, "u@[192.0.2.1]");
	assert_int_equal(mail("FROM:<u@[ipv6:2001:db8::1]>", 0), 0);
	/* UTF-8 local part without SMTPUTF8: refused; with it: accepted */
	assert_int_equal(mail("FROM:<j\xc3\xb6rg@x.example>", 0), -1);
	assert_err(553, "5.6.7");
	assert_int_equal(mail("FROM:<j\xc3\xb6rg@x.example> SMTPUTF8", 0), 0);
	assert_true(P.utf8);
	assert_true(M.smtputf8);
	assert_int_equal(mail("FROM:<a@\xc3\xa9t\xc3\xa9.example> SMTPUTF8", 0), 0);
	assert_true(P.utf8);
	/* ill-formed UTF-8 is refused even with SMTPUTF8 */
	assert_int_equal(mail("FROM:<j\xc3@x> SMTPUTF8", 0), -1);
	assert_err(553, "5.1.7");
	assert_int_equal(mail("FROM:<\xc0\xaf@x> SMTPUTF8", 0), -1);
	assert_int_equal(mail("FROM:<\xed\xa0\x80@x> SMTPUTF8", 0), -1);
	assert_int_equal(mail("FROM:<\xff@x> SMTPUTF8", 0), -1);
}

static void test_mail_bad_addresses(void **state)
{
	static const char *const bad[] = {
	    "FROM:<a>",
	    "FROM:<@>",
	    "FROM:<a@>",
	    "FROM:<@b>",
	    "FROM:<a@@b>",
	    "FROM:<a@b@c>",
	    "FROM:<.a@b>",
	    "FROM:<a.@b>",
	    "FROM:<a..b@c>",
	    "FROM:<a b@c>",
	    "FROM:<a@b.>",
	    "FROM:<a@.b>",
	    "FROM:<a@b..c>",
	    "FROM:<a@-b>",
	    "FROM:<a@b->",
	    "FROM:<a@b_c>",
	    "FROM:<a@[1.2.3]>",
	    "FROM:<a@[1.2.3.256]>",
	    "FROM:<a@[IPv6:1.2.3.4]>",
	    "FROM:<a@[IPv6:::1%eth0]>",
	    "FROM:<a@[x-tag:stuff]>",
	    "FROM:<a@[1.2.3.4>",
	    "FROM:<\"a\rb\"@c>",
	    "FROM:<\"a\nb\"@c>",
	    "FROM:<\"a\\\rb\"@c>",
	    "FROM:<\"ab@c>",
	    "FROM:<a(b)@c>",
	    "FROM:<@a,b:u@d>",
	    "FROM:<@a:>",
	    "FROM:<@:u@d>",
	    "FROM:<@a,@:u@d>",
	    "FROM:<Postmaster>",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		print_message("%s\n", bad[i]);
		assert_int_equal(mail(bad[i], 0), -1);
		assert_true(E.code == 553 || E.code == 501);
		assert_null(strpbrk(E.text, "\r\n"));
	}
	assert_int_equal(mail("FROM:<a@b_c>", 0), -1);
	assert_err(553, "5.1.7");
	/* a NUL in the address */
	assert_int_equal(smtp_parse_mail("FROM:<a\0b@c>", 12, 0, &P, &M, &E), -1);
	assert_err(553, "5.1.7");
}

static void test_mail_syntax(void **state)
{
	static const char *const bad[] = {
	    "",
	    "FROM",
	    "FROM:",
	    "FROM:a@b",
	    "FRM:<a@b>",
	    "TO:<a@b>",
	    "FROM:<a@b",
	    "FROM :<a@b>",
	    "FROM:\t<a@b>",
	    "FROM:x<a@b>",
	    "FROM:<a@b>x",
	    "FROM:<a@b>SIZE=1",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		print_message("%s\n", bad[i]);
		assert_int_equal(mail(bad[i], 0), -1);
		assert_err(501, "5.5.4");
		assert_string_equal(E.text, "Syntax: MAIL FROM:<address>");
	}
}

/* security-anchors test 21: length limits (RFC 5321 §4.5.3.1) */
static void test_mail_lengths(void **state)
{
	char buf[2048];
	char local[80], domain[300];

	/* 64-octet local part: fine; 65: refused */
	memset(local, 'l', 64);
	local[64] = '\0';
	snprintf(buf, sizeof(buf), "FROM:<%s@x.example>", local);
	assert_int_equal(mail(buf, 0), 0);
	assert_string_equal(P.local, local);
	memset(local, 'l', 65);
	local[65] = '\0';
	snprintf(buf, sizeof(buf), "FROM:<%s@x.example>", local);
	assert_int_equal(mail(buf, 0), -1);
	assert_err(553, "5.1.7");
	/* the limit is on the local part itself: a quoted one may be longer as sent */
	snprintf(buf, sizeof(buf), "FROM:<\"%.63s\\\"\"@x>", local);
	assert_int_equal(mail(buf, 0), 0);
	snprintf(buf, sizeof(buf), "FROM:<\"%.64s\\\"\"@x>", local);
	assert_int_equal(mail(buf, 0), -1);
	assert_err(553, "5.1.7");

	/* 256-octet domain: the path is over 256 octets */
	for (int i = 0; i < 256; i++)
		domain[i] = (i % 50 == 49) ? '.' : 'd';
	domain[256] = '\0';
	snprintf(buf, sizeof(buf), "FROM:<u@%s>", domain);
	assert_int_equal(mail(buf, 0), -1);
	assert_err(501, "5.5.2");
	/* the longest path: 256 octets with "<" and ">" */
	domain[256 - 4] = '\0';
	snprintf(buf, sizeof(buf), "FROM:<u@%s>", domain);
	assert_int_equal(strlen(buf), 5 + 256);
	assert_int_equal(mail(buf, 0), 0);
	assert_int_equal(strlen(P.addr), 254);
	/* 257 octets */
	snprintf(buf, sizeof(buf), "FROM:<uu@%s>", domain);
	assert_int_equal(mail(buf, 0), -1);
	assert_err(501, "5.5.2");
	/* a label over 63 octets */
	memset(domain, 'd', 64);
	domain[64] = '\0';
	snprintf(buf, sizeof(buf), "FROM:<u@%s.example>", domain);
	assert_int_equal(mail(buf, 0), -1);
	assert_err(553, "5.1.7");
	domain[63] = '\0';
	snprintf(buf, sizeof(buf), "FROM:<u@%s.example>", domain);
	assert_int_equal(mail(buf, 0), 0);
}

/* security-anchors test 23 */
static void test_mail_params(void **state)
{
	assert_int_equal(mail("FROM:<a@b> SIZE=99999999999999999999", 10000000), -1);
	assert_err(552, "5.3.4");
	assert_int_equal(mail("FROM:<a@b> SIZE=99999999999999999999", 0), -1);
	assert_err(501, "5.5.4");
	assert_int_equal(mail("FROM:<a@b> SIZE=10000001", 10000000), -1);
	assert_err(552, "5.3.4");
	/* more than 20 digits is not a size-value */
	assert_int_equal(mail("FROM:<a@b> SIZE=000000000000000000001", 0), -1);
	assert_err(501, "5.5.4");
	assert_int_equal(mail("FROM:<a@b> SIZE=abc", 0), -1);
	assert_err(501, "5.5.4");
	assert_int_equal(mail("FROM:<a@b> SIZE=-1", 0), -1);
	assert_err(501, "5.5.4");
	assert_int_equal(mail("FROM:<a@b> SIZE", 0), -1);
	assert_err(501, "5.5.4");
	assert_int_equal(mail("FROM:<a@b> SIZE=", 0), -1);
	assert_err(501, "5.5.4");
	assert_int_equal(mail("FROM:<a@b> FOO=bar", 0), -1);
	assert_err(555, "5.5.4");
	assert_string_equal(E.text, "Unsupported parameter: FOO");
	assert_int_equal(mail("FROM:<a@b> AUTH=+0A", 0), -1);
	assert_err(555, "5.5.4");
	assert_int_equal(mail("FROM:<a@b> BODY=7BIT BODY=8BITMIME", 0), -1);
	assert_err(555, "5.5.4");
	assert_int_equal(mail("FROM:<a@b> SIZE=1 size=2", 0), -1);
	assert_err(555, "5.5.4");
	assert_int_equal(mail("FROM:<a@b> SMTPUTF8 SMTPUTF8", 0), -1);
	assert_err(555, "5.5.4");
	assert_int_equal(mail("FROM:<a@b> =x", 0), -1);
	assert_err(501, "5.5.4");
	assert_int_equal(mail("FROM:<a@b> -X=1", 0), -1);
	assert_err(501, "5.5.4");
	assert_int_equal(mail("FROM:<a@b> BODY=BINARYMIME", 0), -1);
	assert_err(501, "5.5.4");
	assert_int_equal(mail("FROM:<a@b> BODY", 0), -1);
	assert_err(501, "5.5.4");
	assert_int_equal(mail("FROM:<a@b> SMTPUTF8=yes", 0), -1);
	assert_err(501, "5.5.4");
	/* values: no "=", no SP, no controls */
	assert_int_equal(mail("FROM:<a@b> X=a=b", 0), -1);
	assert_err(501, "5.5.4");
	/* quoted values are not decoded: the first word is a value of its own */
	assert_int_equal(mail("FROM:<a@b> X=\"quoted value\"", 0), -1);
	assert_err(555, "5.5.4");
	assert_int_equal(mail("FROM:<a@b> SIZE=\"1 2\"", 0), -1);
	assert_err(501, "5.5.4");
	assert_int_equal(mail("FROM:<a@b> X=a\rb", 0), -1);
	assert_err(501, "5.5.4");
	assert_int_equal(mail("FROM:<a@b> X=\xff", 0), -1);
	assert_err(501, "5.5.4");
	/* several spaces between parameters are tolerated */
	assert_int_equal(mail("FROM:<a@b>  SIZE=5   BODY=8BITMIME  ", 0), 0);
	assert_int_equal(M.size, 5);
	/* a long unknown keyword is shown truncated */
	assert_int_equal(
	    mail("FROM:<a@b> XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
	         0),
	    -1);
	assert_err(555, "5.5.4");
	assert_true(strlen(E.text) < 80);
}

static void test_rcpt(void **state)
{
	assert_int_equal(rcpt("TO:<v@y.example>", false), 0);
	assert_string_equal(P.addr, "v@y.example");
	assert_int_equal(rcpt("to: <v@y>", false), 0);
	assert_int_equal(rcpt("TO:<Postmaster>", false), 0);
	assert_string_equal(P.addr, "postmaster");
	assert_string_equal(P.domain, "");
	assert_int_equal(rcpt("TO:<pOSTMASTER>", false), 0);
	assert_string_equal(P.addr, "postmaster");
	assert_int_equal(rcpt("TO:<postmaster@y.example>", false), 0);
	assert_string_equal(P.addr, "postmaster@y.example");
	assert_int_equal(rcpt("TO:<@relay:v@y>", false), 0);
	assert_string_equal(P.addr, "v@y");

	assert_int_equal(rcpt("TO:<>", false), -1);
	assert_err(553, "5.1.3");
	assert_int_equal(rcpt("TO:<v>", false), -1);
	assert_err(553, "5.1.3");
	assert_string_equal(E.text, "Bad recipient address syntax");
	assert_int_equal(rcpt("FROM:<v@y>", false), -1);
	assert_err(501, "5.5.4");
	assert_string_equal(E.text, "Syntax: RCPT TO:<address>");
	assert_int_equal(rcpt("TO:v@y", false), -1);
	assert_err(501, "5.5.4");
	/* no parameters supported */
	assert_int_equal(rcpt("TO:<v@y> NOTIFY=NEVER", false), -1);
	assert_err(555, "5.5.4");
	assert_int_equal(rcpt("TO:<v@y> ORCPT=rfc822;a+0Ab", false), -1);
	assert_err(555, "5.5.4");
	assert_int_equal(rcpt("TO:<v@y> =x", false), -1);
	assert_err(501, "5.5.4");
	/* UTF-8 only after MAIL ... SMTPUTF8 */
	assert_int_equal(rcpt("TO:<\xe7\x94\xa8\xe6\x88\xb7@y>", false), -1);
	assert_err(553, "5.6.7");
	assert_int_equal(rcpt("TO:<\xe7\x94\xa8\xe6\x88\xb7@y>", true), 0);
	assert_true(P.utf8);
	assert_int_equal(rcpt("TO:<${run{/bin/true}}@localhost>", false), 0);
}

/* ------------------------------------------------------------------ */
/* BDAT, security-anchors test 27 */

static void test_bdat(void **state)
{
	static const char *const bad[] = {
	    "",
	    "-1",
	    "+1",
	    "1e30",
	    "10 FOO",
	    "10 LAST x",
	    "10LAST",
	    "x",
	    "18446744073709551616",
	    "1234567890123456789",
	    " 10",
	    "0x10",
	    "10\tLAST",
	};
	uint64_t size = 7;
	bool last = true;

	assert_int_equal(smtp_parse_bdat("0 LAST", 6, &size, &last, &E), 0);
	assert_int_equal(size, 0);
	assert_true(last);
	assert_int_equal(smtp_parse_bdat("1000", 4, &size, &last, &E), 0);
	assert_int_equal(size, 1000);
	assert_false(last);
	assert_int_equal(smtp_parse_bdat("42 last  ", 9, &size, &last, &E), 0);
	assert_int_equal(size, 42);
	assert_true(last);
	assert_int_equal(smtp_parse_bdat("999999999999999999", 18, &size, &last, &E), 0);
	assert_int_equal(size, UINT64_C(999999999999999999));
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		print_message("BDAT '%s'\n", bad[i]);
		memset(&E, 0, sizeof(E));
		assert_int_equal(smtp_parse_bdat(bad[i], strlen(bad[i]), &size, &last, &E), -1);
		assert_err(501, "5.5.4");
	}
}

/* ------------------------------------------------------------------ */
/* HELO / EHLO, security-anchors test 22 */

static int helo(const char *s)
{
	memset(&E, 0, sizeof(E));
	return smtp_parse_helo(s, strlen(s), &E);
}

static void test_helo(void **state)
{
	static const char *const good[] = {
	    "mx.example.org", "localhost",          "a",       "x-1.example",
	    "[192.0.2.1]",    "[IPv6:2001:db8::1]", "1.2.3.4", "mx.example.org  ",
	};
	static const char *const bad[] = {
	    "",           "mx.example.org.",     ".example", "a..b",      "-a.example",
	    "a-.example", "under_score.example", "[1.2.3]",  "[IPv6:zz]", "two words",
	    "%s%n%x",     "h\xc3\xa9.example",   "[1.2.3.4",
	};
	char big[70000];

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		print_message("good %s\n", good[i]);
		assert_int_equal(helo(good[i]), 0);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		print_message("bad %s\n", bad[i]);
		assert_int_equal(helo(bad[i]), -1);
		assert_err(501, "5.5.4");
		/* the argument is never echoed: no format-string or injection effect */
		assert_null(strchr(E.text, '%'));
	}
	memset(big, 'A', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(helo(big), -1);
	assert_err(501, "5.5.4");
}

/* ------------------------------------------------------------------ */
/* replies */

static void test_reply(void **state)
{
	struct smtp_reply r;
	char buf[512];
	size_t n;

	smtp_reply_set(&r, 250, "2.0.0", "Ok: %s %d", "queued", 7);
	n = smtp_reply_format(&r, buf, sizeof(buf));
	assert_int_equal(n, strlen("250 2.0.0 Ok: queued 7\r\n"));
	assert_string_equal(buf, "250 2.0.0 Ok: queued 7\r\n");

	smtp_reply_set(&r, 354, "", "End data with <CR><LF>.<CR><LF>");
	n = smtp_reply_format(&r, buf, sizeof(buf));
	assert_string_equal(buf, "354 End data with <CR><LF>.<CR><LF>\r\n");

	smtp_reply_set(&r, 221, NULL, "%s", "");
	n = smtp_reply_format(&r, buf, sizeof(buf));
	assert_string_equal(buf, "221\r\n");

	/* CR, LF in the text can never split the reply */
	smtp_reply_set(&r, 550, "5.1.1", "bad\r\n250 ok\nx\ry");
	n = smtp_reply_format(&r, buf, sizeof(buf));
	assert_string_equal(buf, "550 5.1.1 bad  250 ok x y\r\n");
	assert_int_equal(n, strlen(buf));

	/* too small a buffer: 0; exactly enough (with the NUL): the length */
	smtp_reply_set(&r, 250, "2.0.0", "Ok");
	assert_int_equal(smtp_reply_format(&r, buf, 14), 0);
	assert_int_equal(smtp_reply_format(&r, buf, 15), 14);
	assert_string_equal(buf, "250 2.0.0 Ok\r\n");

	/* no reply decided (code 0) renders nothing */
	memset(&r, 0, sizeof(r));
	assert_int_equal(smtp_reply_format(&r, buf, sizeof(buf)), 0);

	/* long texts are truncated to fit, still one line */
	memset(buf, 'x', sizeof(buf) - 1);
	buf[sizeof(buf) - 1] = '\0';
	smtp_reply_set(&r, 500, "5.5.2", "%s", buf);
	assert_int_equal(strlen(r.text), SMTP_REPLY_TEXT_MAX - 1);
	{
		char out[SMTP_REPLY_TEXT_MAX + 32];

		n = smtp_reply_format(&r, out, sizeof(out));
		assert_int_equal(n, 4 + 6 + SMTP_REPLY_TEXT_MAX - 1 + 2);
		assert_memory_equal(out + n - 2, "\r\n", 2);
		assert_null(memchr(out, '\n', n - 1));
	}
	/* an over-long enhanced code is cut to the field */
	smtp_reply_set(&r, 250, "2.0.0.0.0.0.0.0.0.0", "x");
	assert_true(strlen(r.enhanced) < sizeof(r.enhanced));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_cmd_verbs),
	    cmocka_unit_test(test_cmd_binary),
	    cmocka_unit_test(test_verb_name),
	    cmocka_unit_test(test_mail_ok),
	    cmocka_unit_test(test_mail_addresses_are_data),
	    cmocka_unit_test(test_mail_bad_addresses),
	    cmocka_unit_test(test_mail_syntax),
	    cmocka_unit_test(test_mail_lengths),
	    cmocka_unit_test(test_mail_params),
	    cmocka_unit_test(test_rcpt),
	    cmocka_unit_test(test_bdat),
	    cmocka_unit_test(test_helo),
	    cmocka_unit_test(test_reply),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
