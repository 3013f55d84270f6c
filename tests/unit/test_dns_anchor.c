/*
 * test_dns_anchor - dns_anchor_owner: the zone a trust anchor file is for.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <unistd.h>

#include "dns/dns.h"

/* anchor_file - a temporary file holding text; the caller unlinks path */
static void anchor_file(char *path, size_t len, const char *text)
{
	snprintf(path, len, "/tmp/smx-anchor-XXXXXX");
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

static void owner_of(const char *text, int want_rc, const char *want)
{
	char path[64], out[32] = "unchanged";
	anchor_file(path, sizeof(path), text);
	assert_int_equal(dns_anchor_owner(path, out, sizeof(out)), want_rc);
	if (want_rc == 0)
		assert_string_equal(out, want);
	unlink(path);
}

static void test_owner(void **state)
{
	(void)state;
	/* Debian's dns-root-data layout */
	owner_of(
	    ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n",
	    0, ".");
	/* comments, blank lines and directives before the first record */
	owner_of("; lab. trust anchor\n\n$TTL 3600\n   \nlab.\t3600 IN DNSKEY 257 3 13 AAAA\n", 0,
	         "lab.");
	owner_of("example.org. IN DS 1 13 2 00;comment\nother. IN DS 2 13 2 00\n", 0,
	         "example.org.");
}

static void test_no_record(void **state)
{
	(void)state;
	owner_of("", -1, NULL);
	owner_of("; only a comment\n\n", -1, NULL);
	/* an owner longer than the buffer is not cut to a different name */
	owner_of("a-name-much-longer-than-thirty-two-octets.example. IN DS 1 13 2 00\n", -1, NULL);
	char out[32];
	assert_int_equal(dns_anchor_owner("/nonexistent/anchor.key", out, sizeof(out)), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_owner),
	    cmocka_unit_test(test_no_record),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
