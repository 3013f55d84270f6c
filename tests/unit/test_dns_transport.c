/*
 * test_dns_transport - dns_transport_parse and dns_transport_tcp: which transport a
 * check or scan resolver uses for a [dns] section and a --dns-transport value.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include "common/config.h"
#include "dns/dns.h"

static void test_parse(void **state)
{
	enum dns_transport t = DNS_TRANSPORT_UDP;

	(void)state;
	assert_int_equal(dns_transport_parse("auto", &t), 0);
	assert_int_equal(t, DNS_TRANSPORT_AUTO);
	assert_int_equal(dns_transport_parse("tcp", &t), 0);
	assert_int_equal(t, DNS_TRANSPORT_TCP);
	assert_int_equal(dns_transport_parse("udp", &t), 0);
	assert_int_equal(t, DNS_TRANSPORT_UDP);
	assert_int_equal(dns_transport_parse("TCP", &t), -1);
	assert_int_equal(dns_transport_parse("", &t), -1);
	assert_int_equal(dns_transport_parse("tcp ", &t), -1);
	assert_int_equal(dns_transport_parse(NULL, &t), -1);
	assert_int_equal(t, DNS_TRANSPORT_UDP); /* untouched on error */
}

static void test_auto(void **state)
{
	struct config c;
	const char *stub = "lab.@127.0.0.5:5353";

	(void)state;
	memset(&c, 0, sizeof(c));
	/* recursion from the root: UDP, unless told */
	assert_false(dns_transport_tcp(&c, DNS_TRANSPORT_AUTO));
	assert_true(dns_transport_tcp(&c, DNS_TRANSPORT_TCP));
	assert_false(dns_transport_tcp(NULL, DNS_TRANSPORT_AUTO));
	/* the nameservers of resolv.conf: TCP */
	c.dns_forward = true;
	assert_true(dns_transport_tcp(&c, DNS_TRANSPORT_AUTO));
	assert_false(dns_transport_tcp(&c, DNS_TRANSPORT_UDP));
	/* a stub zone: TCP */
	c.dns_forward = false;
	c.stubs.v = (char **)&stub;
	c.stubs.n = 1;
	assert_true(dns_transport_tcp(&c, DNS_TRANSPORT_AUTO));
	assert_false(dns_transport_tcp(&c, DNS_TRANSPORT_UDP));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse),
	    cmocka_unit_test(test_auto),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
