/*
 * fuzz_dns_wire - libFuzzer target for dns/wire.h: parses the input as a
 * DNS response with every record type strictmx asks for (and the type of the
 * packet's own question), and checks the result against the contract:
 * names lowercase and bounded, records of the asked type only, the CNAME
 * chain within its bound, addresses of the right family.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "dns/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
	do {                                                                                       \
		if (!(x))                                                                          \
			abort();                                                                   \
	} while (0)

static void check_name(const char *s)
{
	size_t n;

	CHECK(s != NULL);
	n = strlen(s);
	CHECK(n > 0 && n < DNS_NAME_TEXT_MAX);
	CHECK(strcmp(s, ".") == 0 || s[n - 1] != '.' || (n >= 2 && s[n - 2] == '\\'));
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		CHECK(c > 0x20 && c < 0x7f);
		CHECK(!(c >= 'A' && c <= 'Z'));
	}
}

static void parse_as(const uint8_t *data, size_t size, uint16_t qtype)
{
	struct dns_answer a;
	size_t txt = 0;

	if (dns_wire_parse(data, size, qtype, &a) < 0) {
		CHECK(a.error != NULL);
		dns_answer_free(&a);
		CHECK(a.rrs == NULL && a.qname == NULL && a.owner == NULL);
		return;
	}
	CHECK(a.error == NULL);
	CHECK(size >= 12);
	CHECK(a.rcode == (data[3] & 0x0f));
	check_name(a.qname);
	check_name(a.owner);
	CHECK(a.n_cname <= DNS_WIRE_MAX_CNAME);
	CHECK(qtype != DNS_T_CNAME || a.n_cname == 0);
	if (a.n_cname == 0)
		CHECK(strcmp(a.qname, a.owner) == 0);
	/* every RR takes at least 11 octets of the packet */
	CHECK(a.n_rrs <= size / 11);
	for (size_t i = 0; i < a.n_rrs; i++) {
		const struct dns_rr *rr = &a.rrs[i];

		CHECK(rr->type == qtype);
		switch (rr->type) {
		case DNS_T_A:
			CHECK(rr->addr.ss.ss_family == AF_INET);
			CHECK(strlen(rr->addr.text) >= 7);
			break;
		case DNS_T_AAAA:
			CHECK(rr->addr.ss.ss_family == AF_INET6);
			CHECK(strlen(rr->addr.text) >= 2);
			break;
		case DNS_T_MX:
			check_name(rr->mx.exchange);
			break;
		case DNS_T_CNAME:
			check_name(rr->cname);
			break;
		case DNS_T_TLSA:
			CHECK(rr->tlsa.len < size);
			CHECK(rr->tlsa.data != NULL);
			break;
		case DNS_T_TXT:
			CHECK(rr->txt.text != NULL && rr->txt.text[rr->txt.len] == '\0');
			txt += rr->txt.len;
			break;
		default:
			break;
		}
	}
	CHECK(txt <= DNS_WIRE_MAX_TXT && txt < size);
	dns_answer_free(&a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint16_t types[] = {DNS_T_A,  DNS_T_NS,  DNS_T_CNAME, DNS_T_SOA,
	                                 DNS_T_MX, DNS_T_TXT, DNS_T_AAAA,  DNS_T_TLSA};

	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		parse_as(data, size, types[i]);
	/* the question's own type, when the question is a plain name */
	if (size > 12) {
		size_t p = 12;

		while (p < size && data[p] != 0 && data[p] < 64)
			p += 1 + (size_t)data[p];
		if (p < size && data[p] == 0 && size - p >= 3)
			parse_as(data, size, (uint16_t)((data[p + 1] << 8) | data[p + 2]));
	}
	return 0;
}
