/*
 * test_check_verdict - what the checker concludes (check/verdict.c) from the
 * plan's method and the probe results, and the scan's aggregation
 * (check/summary.c): figures, Postfix policy lines, the HTML report.
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
#include "check/summary.h"
#include "common/xmalloc.h"

/* a result with n MXs of one address each, all verified and enforcing */
static struct check_result *mk(const char *domain, size_t n, enum policy_method m)
{
	struct check_result *r = xcalloc(1, sizeof(*r));

	snprintf(r->domain, sizeof(r->domain), "%s", domain);
	r->status = POLICY_OK;
	r->n_mx = n;
	r->mx = xcalloc(n, sizeof(*r->mx));
	for (size_t i = 0; i < n; i++) {
		struct check_mx *x = &r->mx[i];
		snprintf(x->host, sizeof(x->host), "mx%zu.%s", i + 1, domain);
		x->pref = (uint16_t)(10 * (i + 1));
		x->method = m;
		x->n_addrs = 1;
		x->addrs = xcalloc(1, sizeof(*x->addrs));
		struct check_addr *a = &x->addrs[0];
		snprintf(a->ip, sizeof(a->ip), "192.0.2.%zu", i + 1);
		a->port = 25;
		a->tls = (struct check_tls){
		    .ran = true, .connected = true, .starttls = 1, .handshake = true, .verify = 1};
		snprintf(a->tls.protocol, sizeof(a->tls.protocol), "TLSv1.3");
		a->pkix = (struct check_tls){.ran = m == POLICY_DANE, .verify = 1, .starttls = 1};
		a->enforce = CHECK_ENFORCE_YES;
		snprintf(a->enforce_reply, sizeof(a->enforce_reply),
		         "530 5.7.0 Must issue a STARTTLS command first");
	}
	return r;
}

static void fail_tls(struct check_addr *a, const char *why)
{
	a->tls.verify = 0;
	snprintf(a->tls.verify_error, sizeof(a->tls.verify_error), "%s", why);
	snprintf(a->tls.error, sizeof(a->tls.error), "%s", why);
}

static void test_all_good_dane(void **state)
{
	struct check_result *r = mk("example.org", 2, POLICY_DANE);

	check_verdict(r);
	assert_true(r->would_deliver);
	assert_string_equal(r->deliver, "yes, verified by DANE (mx1.example.org)");
	assert_string_equal(r->mx[1].verdict, "yes, verified by DANE");
	assert_true(r->all_verify && r->starttls_all && r->enforce_all && r->dane_all &&
	            r->pkix_all && r->citable);
	assert_string_equal(r->campaign, "may be cited as user@example.org (STARTTLS): every MX "
	                                 "enforces STARTTLS inbound and verifies");
	assert_int_equal(r->exit_code, 0);
	assert_int_equal(r->n_reasons, 0);
	check_result_free(&r);
	assert_null(r);
}

static void test_second_mx_expired(void **state)
{
	struct check_result *r = mk("example.org", 2, POLICY_PKIX);

	fail_tls(&r->mx[1].addrs[0], "certificate has expired (notAfter 2020-01-31)");
	check_verdict(r);
	assert_true(r->would_deliver); /* through mx1 */
	assert_string_equal(r->deliver, "yes, verified by PKIX (mx1.example.org)");
	assert_false(r->all_verify);
	assert_false(r->pkix_all);
	assert_false(r->dane_all);
	assert_false(r->citable);
	assert_string_equal(r->mx[1].verdict, "no: certificate has expired (notAfter 2020-01-31)");
	assert_int_equal(r->exit_code, 1);
	assert_int_equal(r->n_reasons, 1);
	assert_string_equal(r->reasons[0], "certificate has expired");

	/* the first fails too: nothing would be delivered, both reasons named */
	fail_tls(&r->mx[0].addrs[0], "Recipient's Mail eXchanger does not offer STARTTLS "
	                             "capability");
	r->mx[0].addrs[0].tls.starttls = 0;
	check_verdict(r);
	assert_false(r->would_deliver);
	assert_string_equal(r->deliver,
	                    "no: Recipient's Mail eXchanger does not offer STARTTLS capability "
	                    "(mx1.example.org); certificate has expired (notAfter 2020-01-31) "
	                    "(mx2.example.org)");
	assert_false(r->starttls_all);
	assert_int_equal(r->n_reasons, 2);
	check_result_free(&r);
}

static void test_dane_fails_pkix_would_pass(void **state)
{
	struct check_result *r = mk("example.org", 1, POLICY_DANE);

	fail_tls(&r->mx[0].addrs[0], "TLSA records do not match the certificate of "
	                             "mx1.example.org");
	check_verdict(r);
	/* PKIX is information only for a DANE MX: never a downgrade */
	assert_true(r->pkix_all);
	assert_false(r->would_deliver);
	assert_int_equal(r->exit_code, 1);
	assert_string_equal(r->reasons[0], "TLSA records do not match");
	check_result_free(&r);
}

static void test_not_enforcing(void **state)
{
	struct check_result *r = mk("example.org", 2, POLICY_PKIX);
	struct check_addr *a = &r->mx[1].addrs[0];

	a->enforce = CHECK_ENFORCE_NO;
	snprintf(a->enforce_reply, sizeof(a->enforce_reply), "250 2.1.0 Ok");
	check_verdict(r);
	assert_int_equal(r->exit_code, 0); /* delivery is fine */
	assert_false(r->enforce_all);
	assert_false(r->citable);
	assert_string_equal(r->campaign, "not citable: mx2.example.org [192.0.2.2] accepts mail "
	                                 "without STARTTLS (250 2.1.0 Ok)");
	assert_string_equal(r->reasons[0], "accepts mail without STARTTLS");

	a->enforce = CHECK_ENFORCE_ERROR;
	snprintf(a->enforce_error, sizeof(a->enforce_error),
	         "timeout while waiting for the "
	         "greeting");
	check_verdict(r);
	assert_false(r->citable);
	assert_int_equal(r->n_reasons, 0);
	check_result_free(&r);
}

static void test_skip_defer_and_status(void **state)
{
	struct check_result *r = mk("example.org", 2, POLICY_MTASTS_PKIX);

	r->mx[0].method = POLICY_SKIP;
	snprintf(r->mx[0].why, sizeof(r->mx[0].why), "MTA-STS enforce: not in the policy");
	check_verdict(r);
	assert_string_equal(r->mx[0].verdict, "no: skipped: MTA-STS enforce: not in the policy");
	assert_string_equal(r->deliver,
	                    "yes, verified by PKIX (MTA-STS enforce) (mx2.example.org)");
	assert_int_equal(r->exit_code, 1);

	r->mx[1].method = POLICY_DEFER;
	snprintf(r->mx[1].why, sizeof(r->mx[1].why), "TLSA lookup failed: bogus");
	check_verdict(r);
	assert_false(r->would_deliver);

	r->status = POLICY_TEMPFAIL;
	snprintf(r->reason, sizeof(r->reason), "DNS lookup of MX for example.org failed");
	check_verdict(r);
	assert_int_equal(r->exit_code, 2);
	r->status = POLICY_NXDOMAIN;
	check_verdict(r);
	assert_int_equal(r->exit_code, 2);
	r->status = POLICY_NULL_MX;
	check_verdict(r);
	assert_int_equal(r->exit_code, 1);
	assert_string_equal(r->deliver, "no: the domain publishes a null MX (it accepts no mail)");
	check_result_free(&r);
}

static void test_rollover_and_classes(void **state)
{
	unsigned char h[32] = {0};
	struct policy_tlsa one[1] = {{3, 1, 1, h, 32}};
	struct policy_tlsa two[2] = {{3, 1, 1, h, 32}, {2, 0, 1, h, 32}};
	char out[300], cls[200];

	check_rollover(one, 1, out, sizeof(out));
	assert_non_null(strstr(out, "a single TLSA record (3 1 1)"));
	check_rollover(two, 2, out, sizeof(out));
	assert_string_equal(out, "");

	check_reason_class("certificate name does not match mx.a.example (certificate names: b)",
	                   cls, sizeof(cls));
	assert_string_equal(cls, "certificate name does not match");
	check_reason_class("connect: Connection refused", cls, sizeof(cls));
	assert_string_equal(cls, "connect: Connection refused");
	check_reason_class("certificate is self-signed", cls, sizeof(cls));
	assert_string_equal(cls, "certificate is self-signed");
	check_reason_class("TLS handshake failed: error:0A000410:SSL routines::sslv3 alert", cls,
	                   sizeof(cls));
	assert_string_equal(cls, "TLS handshake failed");
}

/* ---- summary ---- */

static json_t *as_json(struct check_result *r)
{
	check_verdict(r);
	char *s = check_result_json(r);
	json_t *j = json_loads(s, 0, NULL);
	assert_non_null(j);
	free(s);
	check_result_free(&r);
	return j;
}

static void test_summary_postfix_html(void **state)
{
	json_t *d[4];
	struct check_summary s;
	char line[512];

	d[0] = as_json(mk("dane.example", 2, POLICY_DANE));
	d[1] = as_json(mk("pkix.example", 2, POLICY_PKIX));
	struct check_result *bad = mk("bad.example", 1, POLICY_PKIX);
	fail_tls(&bad->mx[0].addrs[0], "certificate is self-signed");
	bad->mx[0].addrs[0].enforce = CHECK_ENFORCE_NO;
	d[2] = as_json(bad);
	struct check_result *nx = mk("<nx>.example", 0, POLICY_PKIX);
	nx->status = POLICY_NXDOMAIN;
	d[3] = as_json(nx);

	check_summary_init(&s);
	for (int i = 0; i < 4; i++)
		check_summary_add(&s, d[i]);
	check_summary_sort(&s);
	assert_int_equal(s.total, 4);
	assert_int_equal(s.not_run, 1);
	assert_int_equal(s.has_mx, 3);
	assert_int_equal(s.starttls_all, 3);
	assert_int_equal(s.enforce_all, 2);
	assert_int_equal(s.pkix_all, 2);
	assert_int_equal(s.dane_all, 1);
	assert_int_equal(s.verify_all, 2);
	assert_int_equal(s.citable, 2);
	assert_int_equal(s.n_versions, 1);
	assert_string_equal(s.versions[0].name, "TLSv1.3");
	assert_int_equal(s.versions[0].n, 3);
	assert_int_equal(s.n_reasons, 3);

	json_t *sj = check_summary_json(&s);
	assert_int_equal(json_integer_value(json_object_get(sj, "domains")), 4);
	json_decref(sj);

	assert_true(check_postfix_policy(d[0], line, sizeof(line)));
	assert_string_equal(line, "dane.example dane-only");
	assert_true(check_postfix_policy(d[1], line, sizeof(line)));
	assert_string_equal(line, "pkix.example secure match=mx1.pkix.example:mx2.pkix.example");
	assert_false(check_postfix_policy(d[2], line, sizeof(line)));
	assert_false(check_postfix_policy(d[3], line, sizeof(line)));
	assert_false(check_postfix_policy(d[1], line, 20)); /* does not fit: nothing */

	char *buf = NULL;
	size_t len = 0;
	struct check_row rows[4];
	for (int i = 0; i < 4; i++)
		check_row_set(&rows[i], d[i]);
	assert_string_equal(rows[0].postfix, "dane.example dane-only");
	assert_null(rows[2].postfix);
	assert_int_equal(rows[1].n_mx, 2);
	assert_true(rows[0].dane_all);
	assert_false(rows[2].would_deliver);
	FILE *f = open_memstream(&buf, &len);
	check_html_write(f, &s, rows, 4);
	fclose(f);
	for (int i = 0; i < 4; i++)
		check_row_free(&rows[i]);
	assert_non_null(strstr(buf, "<svg"));
	assert_non_null(strstr(buf, "<table id=\"domains\">"));
	assert_non_null(strstr(buf, "&lt;nx&gt;.example")); /* escaped */
	assert_null(strstr(buf, "<nx>"));
	free(buf);

	f = open_memstream(&buf, &len);
	check_summary_print(&s, f);
	fclose(f);
	assert_non_null(strstr(buf, "summary: 4 domains (1 could not be checked)"));
	assert_non_null(strstr(buf, "DANE-valid (every MX)             1   25.0%"));
	free(buf);

	check_summary_free(&s);
	for (int i = 0; i < 4; i++)
		json_decref(d[i]);
}

static void test_parent(void **state)
{
	(void)state;
	assert_string_equal(check_parent("valid-0001.pop1.lab"), "pop1.lab");
	assert_string_equal(check_parent("example.com"), "com");
	assert_string_equal(check_parent("com"), "");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parent),
	    cmocka_unit_test(test_all_good_dane),
	    cmocka_unit_test(test_second_mx_expired),
	    cmocka_unit_test(test_dane_fails_pkix_would_pass),
	    cmocka_unit_test(test_not_enforcing),
	    cmocka_unit_test(test_skip_defer_and_status),
	    cmocka_unit_test(test_rollover_and_classes),
	    cmocka_unit_test(test_summary_postfix_html),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
