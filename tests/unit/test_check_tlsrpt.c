/*
 * test_check_tlsrpt - the TLS-RPT record parser (check/tlsrpt.c, RFC 8460
 * §3) and the plaintext enforcement probe (check/enforce.c): the RFC's
 * examples, hostile inputs, and that the probe never writes RCPT or DATA.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "check/check.h"
#include "check/enforce.h"

static enum check_tlsrpt_status p1(const char *s, struct check_tlsrpt *out)
{
	const char *t[1] = {s};
	size_t l[1] = {strlen(s)};

	return check_tlsrpt_parse(t, l, 1, out);
}

static void test_rfc_examples(void **state)
{
	struct check_tlsrpt r;

	/* RFC 8460 §3.1 */
	assert_int_equal(p1("v=TLSRPTv1; rua=mailto:reports@example.com", &r), CHECK_TLSRPT_OK);
	assert_int_equal(r.n_rua, 1);
	assert_string_equal(r.rua[0], "mailto:reports@example.com");
	assert_int_equal(p1("v=TLSRPTv1; rua=https://reporting.example.com/v1/tlsrptv1", &r),
	                 CHECK_TLSRPT_OK);
	assert_string_equal(r.rua[0], "https://reporting.example.com/v1/tlsrptv1");
	assert_int_equal(
	    p1("v=TLSRPTv1; "
	       "rua=mailto:reports@example.com,https://reporting.example.com/v1/tlsrptv1",
	       &r),
	    CHECK_TLSRPT_OK);
	assert_int_equal(r.n_rua, 2);
	assert_string_equal(r.rua[1], "https://reporting.example.com/v1/tlsrptv1");
	assert_string_equal(r.record, "v=TLSRPTv1; rua=mailto:reports@example.com,"
	                              "https://reporting.example.com/v1/tlsrptv1");
}

static void test_blanks_and_extensions(void **state)
{
	struct check_tlsrpt r;

	assert_int_equal(p1("v=TLSRPTv1;rua=mailto:a@b.example;", &r), CHECK_TLSRPT_OK);
	assert_int_equal(p1("v=TLSRPTv1 ; rua=mailto:a@b.example , mailto:c@d.example ; x=y", &r),
	                 CHECK_TLSRPT_OK);
	assert_int_equal(r.n_rua, 2);
	assert_string_equal(r.rua[1], "mailto:c@d.example");
	assert_int_equal(p1("v=TLSRPTv1; ext-1=foo; rua=mailto:a@b.example", &r), CHECK_TLSRPT_OK);
}

static void test_not_tlsrpt(void **state)
{
	struct check_tlsrpt r;
	const char *t[3] = {"v=spf1 -all", "v=TLSRPTv10; rua=mailto:a@b.example", "something else"};
	size_t l[3] = {strlen(t[0]), strlen(t[1]), strlen(t[2])};

	assert_int_equal(check_tlsrpt_parse(t, l, 3, &r), CHECK_TLSRPT_NONE);
	assert_int_equal(check_tlsrpt_parse(t, l, 0, &r), CHECK_TLSRPT_NONE);
	assert_int_equal(p1("V=TLSRPTv1; rua=mailto:a@b.example", &r), CHECK_TLSRPT_NONE);
}

static void test_invalid(void **state)
{
	struct check_tlsrpt r;
	const char *two[2] = {"v=TLSRPTv1; rua=mailto:a@b.example",
	                      "v=TLSRPTv1; rua=mailto:c@d.example"};
	size_t l2[2] = {strlen(two[0]), strlen(two[1])};

	assert_int_equal(check_tlsrpt_parse(two, l2, 2, &r), CHECK_TLSRPT_INVALID);
	assert_string_equal(r.error, "more than one v=TLSRPTv1 record");
	assert_int_equal(p1("v=TLSRPTv1", &r), CHECK_TLSRPT_INVALID);
	assert_string_equal(r.error, "no rua= field");
	assert_int_equal(p1("v=TLSRPTv1;", &r), CHECK_TLSRPT_INVALID);
	assert_int_equal(p1("v=TLSRPTv1; rua=ftp://x.example", &r), CHECK_TLSRPT_INVALID);
	assert_int_equal(r.n_rua, 0);
	assert_int_equal(p1("v=TLSRPTv1; rua=mailto:nobody", &r), CHECK_TLSRPT_INVALID);
	assert_int_equal(p1("v=TLSRPTv1; rua=", &r), CHECK_TLSRPT_INVALID);
	assert_int_equal(p1("v=TLSRPTv1; rua=mailto:a@b.example,", &r), CHECK_TLSRPT_INVALID);
	assert_int_equal(p1("v=TLSRPTv1; rua=mailto:a@b.example mailto:c@d.example", &r),
	                 CHECK_TLSRPT_INVALID);
	assert_int_equal(p1("v=TLSRPTv1; rua=mailto:a@b.example; rua=mailto:c@d.example", &r),
	                 CHECK_TLSRPT_INVALID);
	assert_int_equal(p1("v=TLSRPTv1 rua=mailto:a@b.example", &r), CHECK_TLSRPT_INVALID);
	assert_int_equal(p1("v=TLSRPTv1; =x; rua=mailto:a@b.example", &r), CHECK_TLSRPT_INVALID);
	assert_int_equal(p1("v=TLSRPTv1; r?a=x; rua=mailto:a@b.example", &r), CHECK_TLSRPT_INVALID);
}

static void test_hostile_bytes(void **state)
{
	struct check_tlsrpt r;
	const char rec[] = "v=TLSRPTv1; rua=mailto:a@b.example\0\n; x=y";
	const char *t[1] = {rec};
	size_t l[1] = {sizeof(rec) - 1};
	char big[5000];

	assert_int_equal(check_tlsrpt_parse(t, l, 1, &r), CHECK_TLSRPT_INVALID);
	for (size_t i = 0; i < strlen(r.record); i++)
		assert_true(r.record[i] >= 0x20 && r.record[i] < 0x7f);
	/* many URIs: at most CHECK_MAX_RUA kept, the record still valid */
	strcpy(big, "v=TLSRPTv1; rua=");
	for (int i = 0; i < 50; i++)
		sprintf(big + strlen(big), "%smailto:r%d@x.example", i ? "," : "", i);
	assert_int_equal(p1(big, &r), CHECK_TLSRPT_OK);
	assert_int_equal(r.n_rua, CHECK_MAX_RUA);
	assert_true(strlen(r.record) < sizeof(r.record));
}

/* ---- the enforcement probe ---- */

static const char *feed(struct check_enforce_session *s, const char *in)
{
	static char out[4096];
	size_t len;
	const char *o;

	assert_int_equal(check_enforce_input(s, in, strlen(in)), strlen(in));
	o = check_enforce_output(s, &len);
	assert_true(len < sizeof(out));
	memcpy(out, o, len);
	out[len] = '\0';
	check_enforce_output_clear(s);
	return out;
}

static void test_enforce_530(void **state)
{
	struct check_enforce_session *s = check_enforce_new("checker.example");
	const char *reply, *err;

	assert_string_equal(feed(s, "220 mx ESMTP\r\n"), "EHLO checker.example\r\n");
	assert_string_equal(feed(s, "250-mx\r\n250-STARTTLS\r\n250 8BITMIME\r\n"),
	                    "MAIL FROM:<>\r\n");
	assert_string_equal(feed(s, "530 5.7.0 Must issue a STARTTLS command first\r\n"),
	                    "RSET\r\n");
	assert_false(check_enforce_done(s));
	assert_string_equal(feed(s, "250 2.0.0 Ok\r\n"), "QUIT\r\n");
	assert_true(check_enforce_done(s));
	assert_int_equal(check_enforce_result(s, &reply, &err), CHECK_ENFORCE_YES);
	assert_string_equal(reply, "530 5.7.0 Must issue a STARTTLS command first");
	check_enforce_free(&s);
	assert_null(s);
}

static void test_enforce_accepts(void **state)
{
	struct check_enforce_session *s = check_enforce_new("checker.example");
	char all[2048] = "";

	strcat(all, feed(s, "220 mx\r\n"));
	strcat(all, feed(s, "250 mx\r\n"));
	strcat(all, feed(s, "250 2.1.0 Ok\r\n"));
	strcat(all, feed(s, "250 2.0.0 Ok\r\n"));
	assert_int_equal(check_enforce_result(s, NULL, NULL), CHECK_ENFORCE_NO);
	/* never RCPT, never DATA: nothing can be delivered */
	assert_string_equal(all, "EHLO checker.example\r\nMAIL FROM:<>\r\nRSET\r\nQUIT\r\n");
	check_enforce_free(&s);
}

static void test_enforce_helo_and_errors(void **state)
{
	struct check_enforce_session *s = check_enforce_new("bad name\r\nRCPT");
	const char *reply, *err;

	/* control bytes in our own name never reach the wire */
	assert_string_equal(feed(s, "220 mx\r\n"), "EHLO bad-name--RCPT\r\n");
	assert_string_equal(feed(s, "502 no\r\n"), "HELO bad-name--RCPT\r\n");
	assert_string_equal(feed(s, "250 mx\r\n"), "MAIL FROM:<>\r\n");
	feed(s, "451 4.3.0 try later\r\n");
	assert_int_equal(check_enforce_result(s, &reply, &err), CHECK_ENFORCE_UNCLEAR);
	check_enforce_free(&s);

	s = check_enforce_new("c.example");
	assert_string_equal(feed(s, "554 go away\r\n"), "QUIT\r\n");
	assert_true(check_enforce_done(s));
	assert_int_equal(check_enforce_result(s, &reply, &err), CHECK_ENFORCE_ERROR);
	assert_string_equal(err, "MX refused the session: 554 go away");
	check_enforce_free(&s);

	s = check_enforce_new("c.example");
	feed(s, "220 mx\r\n");
	check_enforce_timeout(s);
	assert_int_equal(check_enforce_result(s, &reply, &err), CHECK_ENFORCE_ERROR);
	assert_string_equal(err, "timeout while waiting for the EHLO reply");
	check_enforce_free(&s);

	s = check_enforce_new("c.example");
	assert_int_equal(check_enforce_input(s, "220 mx\n", 7), 7);
	assert_true(check_enforce_done(s));
	assert_int_equal(check_enforce_result(s, &reply, &err), CHECK_ENFORCE_ERROR);
	check_enforce_free(&s);

	/* 5xx naming TLS counts as enforcing */
	s = check_enforce_new("c.example");
	feed(s, "220 mx\r\n");
	feed(s, "250 mx\r\n");
	feed(s, "550 5.7.1 TLS required for this domain\r\n");
	assert_int_equal(check_enforce_result(s, &reply, &err), CHECK_ENFORCE_YES);
	check_enforce_eof(s); /* the MX hangs up after: the result stays */
	assert_int_equal(check_enforce_result(s, &reply, &err), CHECK_ENFORCE_YES);
	check_enforce_free(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_rfc_examples),    cmocka_unit_test(test_blanks_and_extensions),
	    cmocka_unit_test(test_not_tlsrpt),      cmocka_unit_test(test_invalid),
	    cmocka_unit_test(test_hostile_bytes),   cmocka_unit_test(test_enforce_530),
	    cmocka_unit_test(test_enforce_accepts), cmocka_unit_test(test_enforce_helo_and_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
