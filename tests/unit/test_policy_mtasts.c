/*
 * test_policy_mtasts - the MTA-STS parsers (policy/mtasts.h): the TXT record
 * (RFC 8461 §3.1), the policy file (§3.2) with the RFC's own examples and
 * hostile inputs, and MX pattern matching (§4.1, with Postfix's vectors).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "policy/mtasts.h"
#include "policy/policy.h"

/* ---- TXT ---- */

static enum mtasts_txt_status txt1(const char *s, char *id)
{
	const char *t[1] = {s};
	size_t l[1] = {strlen(s)};
	char err[200];

	return mtasts_parse_txt(t, l, 1, id, err, sizeof(err));
}

static void test_txt_rfc_example(void **state)
{
	char id[MTASTS_ID_MAX + 1];

	/* RFC 8461 §3.1 */
	assert_int_equal(txt1("v=STSv1; id=20160831085700Z;", id), MTASTS_TXT_OK);
	assert_string_equal(id, "20160831085700Z");
	assert_int_equal(txt1("v=STSv1; id=20160831085700Z", id), MTASTS_TXT_OK);
	assert_int_equal(txt1("v=STSv1;id=abc", id), MTASTS_TXT_OK);
	assert_string_equal(id, "abc");
	assert_int_equal(txt1("v=STSv1 ; id=abc ; ext=v!@#", id), MTASTS_TXT_OK);
	assert_int_equal(txt1("v=STSv1; foo=bar; id=x1", id), MTASTS_TXT_OK);
	assert_string_equal(id, "x1");
	assert_int_equal(txt1("v=STSv1; id=12345678901234567890123456789012", id), MTASTS_TXT_OK);
}

static void test_txt_bad(void **state)
{
	char id[MTASTS_ID_MAX + 1];

	assert_int_equal(txt1("v=spf1 -all", id), MTASTS_TXT_NONE);
	assert_int_equal(txt1("v=STSv10; id=1", id), MTASTS_TXT_NONE);
	assert_int_equal(txt1("V=STSv1; id=1", id), MTASTS_TXT_NONE);
	assert_int_equal(txt1("", id), MTASTS_TXT_NONE);
	assert_int_equal(txt1("v=STSv1", id), MTASTS_TXT_INVALID);
	assert_int_equal(txt1("v=STSv1;", id), MTASTS_TXT_INVALID);
	assert_int_equal(txt1("v=STSv1; id=", id), MTASTS_TXT_INVALID);
	assert_int_equal(txt1("v=STSv1; id=a-b", id), MTASTS_TXT_INVALID);
	assert_int_equal(txt1("v=STSv1; id=a b", id), MTASTS_TXT_INVALID);
	assert_int_equal(txt1("v=STSv1; id=123456789012345678901234567890123", id),
	                 MTASTS_TXT_INVALID);
	assert_int_equal(txt1("v=STSv1; id=1; id=2", id), MTASTS_TXT_INVALID);
	assert_int_equal(txt1("v=STSv1; id=1;; x=y", id), MTASTS_TXT_INVALID);
	assert_int_equal(txt1("v=STSv1 id=1", id), MTASTS_TXT_INVALID);
	assert_int_equal(txt1("v=STSv1; id=1; =x", id), MTASTS_TXT_INVALID);
	assert_int_equal(txt1("v=STSv1; id=1; x==y", id), MTASTS_TXT_INVALID);
	assert_int_equal(txt1("v=STSv1; ID=1", id), MTASTS_TXT_INVALID);
	assert_int_equal(id[0], '\0');
}

static void test_txt_several(void **state)
{
	const char *t[3] = {"v=spf1 -all", "v=STSv1; id=1", "v=STSv1; id=2"};
	size_t l[3] = {strlen(t[0]), strlen(t[1]), strlen(t[2])};
	char id[MTASTS_ID_MAX + 1], err[200];

	/* §3.1: other TXT records are ignored; two STS records are no policy */
	assert_int_equal(mtasts_parse_txt(t, l, 2, id, err, sizeof(err)), MTASTS_TXT_OK);
	assert_string_equal(id, "1");
	assert_int_equal(mtasts_parse_txt(t, l, 3, id, err, sizeof(err)), MTASTS_TXT_INVALID);
	/* a NUL inside the record */
	const char nul[] = "v=STSv1; id=1\0x";
	const char *tn[1] = {nul};
	size_t ln[1] = {sizeof(nul) - 1};
	assert_int_equal(mtasts_parse_txt(tn, ln, 1, id, err, sizeof(err)), MTASTS_TXT_INVALID);
}

/* ---- policy ---- */

static int parse(const char *s, struct mtasts_policy *p)
{
	char err[200];

	return mtasts_parse_policy(s, strlen(s), p, err, sizeof(err));
}

static void test_policy_rfc_example(void **state)
{
	struct mtasts_policy p;

	/* RFC 8461 §3.2 */
	assert_int_equal(parse("version: STSv1\r\n"
	                       "mode: enforce\r\n"
	                       "mx: mail.example.com\r\n"
	                       "mx: *.example.net\r\n"
	                       "mx: backupmx.example.com\r\n"
	                       "max_age: 604800\r\n",
	                       &p),
	                 0);
	assert_string_equal(p.mode, "enforce");
	assert_int_equal(p.n_mx, 3);
	assert_string_equal(p.mx[1], "*.example.net");
	assert_int_equal(p.max_age, 604800);
	assert_true(mtasts_policy_covers(&p, "mail.example.com"));
	assert_true(mtasts_policy_covers(&p, "MX1.Example.NET."));
	assert_false(mtasts_policy_covers(&p, "example.net"));
	assert_false(mtasts_policy_covers(&p, "a.b.example.net"));
	mtasts_policy_free(&p);
}

static void test_policy_variants(void **state)
{
	struct mtasts_policy p;

	/* LF lines, no final newline, extensions ignored, blanks tolerated at ends */
	assert_int_equal(
	    parse("version: STSv1\nmode: testing\nmx: MX.Example.org\nfoo_bar: x y z\nmax_age: 0",
	          &p),
	    0);
	assert_string_equal(p.mode, "testing");
	assert_string_equal(p.mx[0], "mx.example.org");
	assert_int_equal(p.max_age, 0);
	mtasts_policy_free(&p);
	assert_int_equal(parse("version:STSv1\nmode:   none\nmax_age: 31557600  \n\n\r\n", &p), 0);
	assert_string_equal(p.mode, "none");
	assert_int_equal(p.n_mx, 0);
	assert_int_equal(p.max_age, 31557600);
	mtasts_policy_free(&p);
}

static void test_policy_bad(void **state)
{
	static const char *const bad[] = {
	    "",
	    "\n",
	    "mode: enforce\nversion: STSv1\nmx: a.example\nmax_age: 1\n", /* version not first */
	    "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
	    "version: stsv1\nmode: enforce\nmx: a.example\nmax_age: 1\n",
	    "version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n",
	    "version: STSv1\nmode: enforce\nmax_age: 1\n",    /* no mx */
	    "version: STSv1\nmode: enforce\nmx: a.example\n", /* no max_age */
	    "version: STSv1\nmx: a.example\nmax_age: 1\n",    /* no mode */
	    "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n",
	    "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 99999999999\n",
	    "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
	    "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1d\n",
	    "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\nmax_age: 2\n",
	    "version: STSv1\nmode: enforce\nmode: none\nmx: a.example\nmax_age: 1\n",
	    "version: STSv1\nversion: STSv1\nmode: none\nmax_age: 1\n",
	    "version: STSv1\nmode: enforce\nmx: *\nmax_age: 1\n",
	    "version: STSv1\nmode: enforce\nmx: mx*.example\nmax_age: 1\n",
	    "version: STSv1\nmode: enforce\nmx: a.*.example\nmax_age: 1\n",
	    "version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n",
	    "version: STSv1\nmode: enforce\nmx: .example\nmax_age: 1\n",
	    "version: STSv1\nmode: enforce\nmx: a.example.\nmax_age: 1\n",
	    "version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1\n",
	    "version: STSv1\nmode: enforce\nmx: -a.example\nmax_age: 1\n",
	    "version: STSv1\nmode: enforce\nmx: a_b.example\nmax_age: 1\n",
	    "version: STSv1\nmode: enforce\nmx: a.example b.example\nmax_age: 1\n",
	    "version: STSv1\nmode: enforce\n\nmx: a.example\nmax_age: 1\n", /* blank line inside */
	    "version: STSv1\nmode: enforce\nmx a.example\nmax_age: 1\n",
	    "version: STSv1\nmode: enforce\nmx :a.example\nmax_age: 1\n",
	    "version: STSv1\nmode: enforce\nmx: a.example\x01\nmax_age: 1\n",
	    "version: STSv1\nmode: enforce\nmx: \nmax_age: 1\n",
	    " version: STSv1\nmode: none\nmax_age: 1\n",
	    "<html><body>hello</body></html>\n",
	};
	struct mtasts_policy p;
	char err[200];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc = mtasts_parse_policy(bad[i], strlen(bad[i]), &p, err, sizeof(err));

		if (rc != -1)
			fail_msg("accepted bad policy %zu: %s", i, bad[i]);
		assert_null(p.mx);
		assert_int_equal(p.n_mx, 0);
	}
	/* NUL in the middle */
	const char nul[] = "version: STSv1\nmode: none\0\nmax_age: 1\n";
	assert_int_equal(mtasts_parse_policy(nul, sizeof(nul) - 1, &p, err, sizeof(err)), -1);
}

static void test_policy_limits(void **state)
{
	struct mtasts_policy p;
	char err[200];
	size_t cap = MTASTS_MAX_POLICY + 100, n;
	char *big = malloc(cap + 1);

	/* too many patterns */
	n = (size_t)snprintf(big, cap, "version: STSv1\nmode: enforce\nmax_age: 1\n");
	for (int i = 0; i <= MTASTS_MAX_PATTERNS; i++)
		n += (size_t)snprintf(big + n, cap - n, "mx: mx%d.example\n", i);
	assert_int_equal(mtasts_parse_policy(big, n, &p, err, sizeof(err)), -1);
	/* over 64 KiB */
	memset(big, 'a', cap);
	memcpy(big, "version: STSv1\nmode: none\nmax_age: 1\nx: ", 40);
	assert_int_equal(mtasts_parse_policy(big, cap, &p, err, sizeof(err)), -1);
	/* a label of 64 octets */
	n = (size_t)snprintf(big, cap,
	                     "version: STSv1\nmode: enforce\nmax_age: 1\nmx: %064d.example\n", 0);
	assert_int_equal(mtasts_parse_policy(big, n, &p, err, sizeof(err)), -1);
	n = (size_t)snprintf(big, cap,
	                     "version: STSv1\nmode: enforce\nmax_age: 1\nmx: %063d.example\n", 0);
	assert_int_equal(mtasts_parse_policy(big, n, &p, err, sizeof(err)), 0);
	mtasts_policy_free(&p);
	free(big);
}

/* ---- matching: Postfix smtp_tls_policy_test.c test_hostname_authorization ---- */

static void test_match(void **state)
{
	assert_true(mtasts_mx_match("example.com", "example.com"));
	assert_true(mtasts_mx_match("*.example.com", "mail.example.com"));
	assert_false(mtasts_mx_match("*.example.com", ".example.com"));
	assert_false(mtasts_mx_match("*.example.com", "foo.bar.example.com"));
	assert_false(mtasts_mx_match("*.example.com", "example.com"));
	assert_true(mtasts_mx_match("example.com", "EXAMPLE.com."));
	assert_false(mtasts_mx_match("example.com", "xexample.com"));
	assert_false(mtasts_mx_match("mail.example.com", "mail.example.co"));
	assert_false(mtasts_mx_match("*.example.com", "mailexample.com"));
	assert_false(mtasts_mx_match("example.com", ""));
	assert_false(mtasts_mx_match("example.com", "."));
}

static void test_names(void **state)
{
	assert_string_equal(policy_method_name(POLICY_DANE), "dane");
	assert_string_equal(policy_method_name(POLICY_MTASTS_PKIX), "mta-sts+pkix");
	assert_string_equal(policy_method_name(POLICY_PKIX), "pkix");
	assert_string_equal(policy_method_name(POLICY_ENCRYPT_ONLY), "encrypt-only");
	assert_string_equal(policy_method_name(POLICY_DEFER), "defer");
	assert_string_equal(policy_method_name(POLICY_SKIP), "skip");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_txt_rfc_example), cmocka_unit_test(test_txt_bad),
	    cmocka_unit_test(test_txt_several),     cmocka_unit_test(test_policy_rfc_example),
	    cmocka_unit_test(test_policy_variants), cmocka_unit_test(test_policy_bad),
	    cmocka_unit_test(test_policy_limits),   cmocka_unit_test(test_match),
	    cmocka_unit_test(test_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
