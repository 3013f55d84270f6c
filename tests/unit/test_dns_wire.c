/*
 * test_dns_wire - the DNS response parser (dns/wire.h) on hand-built packets:
 * compression pointers (good, looping, out of range), truncation at every
 * byte, CNAME chains (bounded to 8), and the MX, A, AAAA, TLSA, TXT, CNAME
 * rdata formats.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "dns/wire.h"

struct pkt {
	uint8_t b[4096];
	size_t n;
};

static void put8(struct pkt *p, unsigned v)
{
	assert_true(p->n < sizeof(p->b));
	p->b[p->n++] = (uint8_t)v;
}

static void put16(struct pkt *p, unsigned v)
{
	put8(p, v >> 8);
	put8(p, v & 0xff);
}

static void put32(struct pkt *p, uint32_t v)
{
	put16(p, v >> 16);
	put16(p, v & 0xffff);
}

static void putbytes(struct pkt *p, const void *d, size_t n)
{
	assert_true(p->n + n <= sizeof(p->b));
	memcpy(p->b + p->n, d, n);
	p->n += n;
}

/* labels of a dotted name; with ptr >= 0, end with a pointer instead of the root */
static void putname_ptr(struct pkt *p, const char *name, int ptr)
{
	const char *s = name;

	while (*s != '\0') {
		const char *dot = strchr(s, '.');
		size_t l = dot ? (size_t)(dot - s) : strlen(s);

		put8(p, (unsigned)l);
		putbytes(p, s, l);
		s += l;
		if (*s == '.')
			s++;
	}
	if (ptr >= 0)
		put16(p, 0xc000 | (unsigned)ptr);
	else
		put8(p, 0);
}

static void putname(struct pkt *p, const char *name)
{
	putname_ptr(p, name, -1);
}

/* header and question; the question name is at offset 12 */
static void start(struct pkt *p, unsigned rcode, unsigned ancount, const char *qname,
                  unsigned qtype)
{
	p->n = 0;
	put16(p, 0x1234);
	put16(p, 0x8180 | rcode); /* QR RD RA */
	put16(p, 1);
	put16(p, ancount);
	put16(p, 0);
	put16(p, 0);
	putname(p, qname);
	put16(p, qtype);
	put16(p, 1);
}

/* RR header with the owner as a pointer (or a name when ptr < 0); returns rdlength offset */
static size_t rr(struct pkt *p, const char *owner, int ptr, unsigned type)
{
	size_t at;

	if (owner != NULL)
		putname_ptr(p, owner, ptr);
	else
		put16(p, 0xc000 | (unsigned)ptr);
	put16(p, type);
	put16(p, 1);
	put32(p, 3600);
	at = p->n;
	put16(p, 0);
	return at;
}

static void rdlen_fix(struct pkt *p, size_t at)
{
	size_t l = p->n - at - 2;

	p->b[at] = (uint8_t)(l >> 8);
	p->b[at + 1] = (uint8_t)(l & 0xff);
}

/* parse an exact-size heap copy, so a read past the end is caught by ASan */
static int parse(const struct pkt *p, size_t len, uint16_t qtype, struct dns_answer *a)
{
	uint8_t *copy = malloc(len ? len : 1);
	int rc;

	assert_non_null(copy);
	memcpy(copy, p->b, len);
	rc = dns_wire_parse(copy, len, qtype, a);
	free(copy);
	return rc;
}

static void mx_packet(struct pkt *p)
{
	size_t at;

	start(p, 0, 2, "Example.ORG", DNS_T_MX);
	at = rr(p, NULL, 12, DNS_T_MX);
	put16(p, 20);
	putname_ptr(p, "MX2", 12);
	rdlen_fix(p, at);
	at = rr(p, NULL, 12, DNS_T_MX);
	put16(p, 10);
	putname(p, "mx1.example.org");
	rdlen_fix(p, at);
}

static void test_mx(void **state)
{
	struct pkt p;
	struct dns_answer a;

	mx_packet(&p);
	assert_int_equal(parse(&p, p.n, DNS_T_MX, &a), 0);
	assert_int_equal(a.rcode, 0);
	assert_string_equal(a.qname, "example.org");
	assert_string_equal(a.owner, "example.org");
	assert_int_equal(a.n_cname, 0);
	assert_int_equal(a.n_rrs, 2);
	assert_int_equal(a.rrs[0].type, DNS_T_MX);
	assert_int_equal(a.rrs[0].ttl, 3600);
	assert_int_equal(a.rrs[0].mx.pref, 20);
	assert_string_equal(a.rrs[0].mx.exchange, "mx2.example.org");
	assert_int_equal(a.rrs[1].mx.pref, 10);
	assert_string_equal(a.rrs[1].mx.exchange, "mx1.example.org");
	dns_answer_free(&a);

	/* asked for A: the same answer holds none */
	assert_int_equal(parse(&p, p.n, DNS_T_A, &a), 0);
	assert_int_equal(a.n_rrs, 0);
	dns_answer_free(&a);
}

/* every prefix of a packet without authority/additional sections is malformed */
static void test_truncated(void **state)
{
	struct pkt p;
	struct dns_answer a;

	mx_packet(&p);
	for (size_t len = 0; len < p.n; len++) {
		assert_int_equal(parse(&p, len, DNS_T_MX, &a), -1);
		assert_non_null(a.error);
		dns_answer_free(&a);
	}
}

static void test_null_mx(void **state)
{
	struct pkt p;
	struct dns_answer a;
	size_t at;

	start(&p, 0, 1, "nomail.example", DNS_T_MX);
	at = rr(&p, NULL, 12, DNS_T_MX);
	put16(&p, 0);
	put8(&p, 0);
	rdlen_fix(&p, at);
	assert_int_equal(parse(&p, p.n, DNS_T_MX, &a), 0);
	assert_int_equal(a.n_rrs, 1);
	assert_int_equal(a.rrs[0].mx.pref, 0);
	assert_string_equal(a.rrs[0].mx.exchange, ".");
	dns_answer_free(&a);
}

static void test_pointer_loops(void **state)
{
	struct pkt p;
	struct dns_answer a;
	size_t at, self;

	/* an owner name that is a pointer to itself */
	start(&p, 0, 1, "example.org", DNS_T_A);
	self = p.n;
	at = rr(&p, NULL, (int)self, DNS_T_A);
	putbytes(&p, "\x7f\0\0\1", 4);
	rdlen_fix(&p, at);
	assert_int_equal(parse(&p, p.n, DNS_T_A, &a), -1);
	assert_string_equal(a.error, "compression pointer loop");
	dns_answer_free(&a);

	/* two labels pointing at each other: "a" -> "b" -> "a" ... */
	start(&p, 0, 2, "example.org", DNS_T_MX);
	at = rr(&p, NULL, 12, DNS_T_MX);
	put16(&p, 10);
	self = p.n;
	putname_ptr(&p, "a", 0); /* its pointer is set below */
	rdlen_fix(&p, at);
	at = rr(&p, NULL, 12, DNS_T_MX);
	put16(&p, 20);
	putname_ptr(&p, "b", (int)self);
	rdlen_fix(&p, at);
	/* point the first name at the second one, which points back */
	{
		size_t second = at + 2 + 2;

		p.b[self + 2] = (uint8_t)(0xc0 | (second >> 8));
		p.b[self + 3] = (uint8_t)(second & 0xff);
	}
	assert_int_equal(parse(&p, p.n, DNS_T_MX, &a), -1);
	dns_answer_free(&a);

	/* a pointer into the header, and one past the end */
	start(&p, 0, 1, "example.org", DNS_T_A);
	at = rr(&p, NULL, 2, DNS_T_A);
	putbytes(&p, "\x7f\0\0\1", 4);
	rdlen_fix(&p, at);
	assert_int_equal(parse(&p, p.n, DNS_T_A, &a), -1);
	assert_string_equal(a.error, "compression pointer out of range");
	dns_answer_free(&a);
	start(&p, 0, 1, "example.org", DNS_T_A);
	at = rr(&p, NULL, 0x3fff, DNS_T_A);
	putbytes(&p, "\x7f\0\0\1", 4);
	rdlen_fix(&p, at);
	assert_int_equal(parse(&p, p.n, DNS_T_A, &a), -1);
	dns_answer_free(&a);
}

/* a forward pointer is legal as long as it stays in the packet */
static void test_forward_pointer(void **state)
{
	struct pkt p;
	struct dns_answer a;
	size_t at, fix;

	start(&p, 0, 2, "example.org", DNS_T_CNAME);
	at = rr(&p, NULL, 12, DNS_T_CNAME);
	fix = p.n;
	put16(&p, 0); /* pointer, filled in below */
	rdlen_fix(&p, at);
	at = p.n; /* the second RR's owner: "target.example.org" */
	putname(&p, "target.example.org");
	put16(&p, DNS_T_A);
	put16(&p, 1);
	put32(&p, 60);
	put16(&p, 4);
	putbytes(&p, "\xc0\x00\x02\x01", 4);
	p.b[fix] = (uint8_t)(0xc0 | (at >> 8));
	p.b[fix + 1] = (uint8_t)(at & 0xff);
	assert_int_equal(parse(&p, p.n, DNS_T_CNAME, &a), 0);
	assert_int_equal(a.n_rrs, 1);
	assert_string_equal(a.rrs[0].cname, "target.example.org");
	assert_string_equal(a.owner, "example.org");
	dns_answer_free(&a);
	/* asked for A, the CNAME is followed to the A record */
	assert_int_equal(parse(&p, p.n, DNS_T_A, &a), 0);
	assert_int_equal(a.n_cname, 1);
	assert_string_equal(a.owner, "target.example.org");
	assert_int_equal(a.n_rrs, 1);
	assert_string_equal(a.rrs[0].addr.text, "192.0.2.1");
	assert_int_equal(a.rrs[0].ttl, 60);
	dns_answer_free(&a);
}

/* www -> a -> b (A), with a decoy A at www and one at an unrelated name */
static void test_cname_chain(void **state)
{
	struct pkt p;
	struct dns_answer a;
	size_t at;

	start(&p, 0, 5, "www.example.org", DNS_T_A);
	at = rr(&p, NULL, 12, DNS_T_CNAME);
	putname(&p, "a.example.org");
	rdlen_fix(&p, at);
	at = rr(&p, "A.Example.Org", -1, DNS_T_CNAME);
	putname(&p, "b.example.net");
	rdlen_fix(&p, at);
	at = rr(&p, "b.example.net", -1, DNS_T_A);
	putbytes(&p, "\xc0\x00\x02\x07", 4);
	rdlen_fix(&p, at);
	at = rr(&p, NULL, 12, DNS_T_A);
	putbytes(&p, "\xc0\x00\x02\x63", 4);
	rdlen_fix(&p, at);
	at = rr(&p, "c.example.net", -1, DNS_T_A);
	putbytes(&p, "\xc0\x00\x02\x64", 4);
	rdlen_fix(&p, at);
	assert_int_equal(parse(&p, p.n, DNS_T_A, &a), 0);
	assert_int_equal(a.n_cname, 2);
	assert_string_equal(a.qname, "www.example.org");
	assert_string_equal(a.owner, "b.example.net");
	assert_int_equal(a.n_rrs, 1);
	assert_string_equal(a.rrs[0].addr.text, "192.0.2.7");
	{
		const struct sockaddr_in *sin = (const struct sockaddr_in *)&a.rrs[0].addr.ss;

		assert_int_equal(sin->sin_family, AF_INET);
		assert_int_equal(sin->sin_port, 0);
		assert_int_equal(ntohl(sin->sin_addr.s_addr), 0xc0000207);
	}
	dns_answer_free(&a);
}

/* n links c0 -> c1 -> ... -> cn, then an A record at cn */
static void chain_packet(struct pkt *p, unsigned n, int loop)
{
	char name[32], next[32];
	size_t at;

	start(p, 0, n + 1, "c0.example", DNS_T_A);
	for (unsigned i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "c%u.example", i);
		snprintf(next, sizeof(next), "c%u.example", loop && i + 1 == n ? 0 : i + 1);
		at = rr(p, name, -1, DNS_T_CNAME);
		putname(p, next);
		rdlen_fix(p, at);
	}
	snprintf(name, sizeof(name), "c%u.example", n);
	at = rr(p, name, -1, DNS_T_A);
	putbytes(p, "\x0a\0\0\1", 4);
	rdlen_fix(p, at);
}

static void test_cname_bounds(void **state)
{
	struct pkt p;
	struct dns_answer a;

	chain_packet(&p, DNS_WIRE_MAX_CNAME, 0);
	assert_int_equal(parse(&p, p.n, DNS_T_A, &a), 0);
	assert_int_equal(a.n_cname, DNS_WIRE_MAX_CNAME);
	assert_int_equal(a.n_rrs, 1);
	dns_answer_free(&a);

	chain_packet(&p, DNS_WIRE_MAX_CNAME + 1, 0);
	assert_int_equal(parse(&p, p.n, DNS_T_A, &a), -1);
	assert_string_equal(a.error, "CNAME chain too long");
	dns_answer_free(&a);

	/* c0 -> c1 -> c2 -> c0: a loop ends at the bound, not in a hang */
	chain_packet(&p, 3, 1);
	assert_int_equal(parse(&p, p.n, DNS_T_A, &a), -1);
	assert_string_equal(a.error, "CNAME chain too long");
	dns_answer_free(&a);
}

static void test_aaaa(void **state)
{
	struct pkt p;
	struct dns_answer a;
	size_t at;
	static const uint8_t v6[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0,
	                               0,    0,    0,    0,    0, 0, 0, 0x25};

	start(&p, 0, 2, "mx.example", DNS_T_AAAA);
	at = rr(&p, NULL, 12, DNS_T_AAAA);
	putbytes(&p, v6, 16);
	rdlen_fix(&p, at);
	/* a record of another class is not ours */
	put16(&p, 0xc00c);
	put16(&p, DNS_T_AAAA);
	put16(&p, 3); /* CH */
	put32(&p, 1);
	put16(&p, 16);
	putbytes(&p, v6, 16);
	assert_int_equal(parse(&p, p.n, DNS_T_AAAA, &a), 0);
	assert_int_equal(a.n_rrs, 1);
	assert_string_equal(a.rrs[0].addr.text, "2001:db8::25");
	assert_int_equal(a.rrs[0].addr.ss.ss_family, AF_INET6);
	assert_memory_equal(&((struct sockaddr_in6 *)&a.rrs[0].addr.ss)->sin6_addr, v6, 16);
	dns_answer_free(&a);

	/* wrong rdata sizes */
	start(&p, 0, 1, "mx.example", DNS_T_AAAA);
	at = rr(&p, NULL, 12, DNS_T_AAAA);
	putbytes(&p, v6, 15);
	rdlen_fix(&p, at);
	assert_int_equal(parse(&p, p.n, DNS_T_AAAA, &a), -1);
	dns_answer_free(&a);
	start(&p, 0, 1, "mx.example", DNS_T_A);
	at = rr(&p, NULL, 12, DNS_T_A);
	putbytes(&p, v6, 5);
	rdlen_fix(&p, at);
	assert_int_equal(parse(&p, p.n, DNS_T_A, &a), -1);
	dns_answer_free(&a);
}

static void test_tlsa(void **state)
{
	struct pkt p;
	struct dns_answer a;
	size_t at;
	uint8_t hash[32];

	for (int i = 0; i < 32; i++)
		hash[i] = (uint8_t)i;
	start(&p, 0, 2, "_25._tcp.mx.example", DNS_T_TLSA);
	at = rr(&p, NULL, 12, DNS_T_TLSA);
	put8(&p, 3);
	put8(&p, 1);
	put8(&p, 1);
	putbytes(&p, hash, 32);
	rdlen_fix(&p, at);
	at = rr(&p, NULL, 12, DNS_T_TLSA);
	put8(&p, 2);
	put8(&p, 0);
	put8(&p, 0);
	rdlen_fix(&p, at);
	assert_int_equal(parse(&p, p.n, DNS_T_TLSA, &a), 0);
	assert_int_equal(a.n_rrs, 2);
	assert_int_equal(a.rrs[0].tlsa.usage, 3);
	assert_int_equal(a.rrs[0].tlsa.selector, 1);
	assert_int_equal(a.rrs[0].tlsa.mtype, 1);
	assert_int_equal(a.rrs[0].tlsa.len, 32);
	assert_memory_equal(a.rrs[0].tlsa.data, hash, 32);
	assert_int_equal(a.rrs[1].tlsa.usage, 2);
	assert_int_equal(a.rrs[1].tlsa.len, 0);
	assert_string_equal(a.owner, "_25._tcp.mx.example");
	dns_answer_free(&a);

	start(&p, 0, 1, "_25._tcp.mx.example", DNS_T_TLSA);
	at = rr(&p, NULL, 12, DNS_T_TLSA);
	put8(&p, 3);
	put8(&p, 1);
	rdlen_fix(&p, at);
	assert_int_equal(parse(&p, p.n, DNS_T_TLSA, &a), -1);
	dns_answer_free(&a);
}

static void test_txt(void **state)
{
	struct pkt p;
	struct dns_answer a;
	size_t at;

	start(&p, 0, 2, "_mta-sts.example", DNS_T_TXT);
	at = rr(&p, NULL, 12, DNS_T_TXT);
	put8(&p, 7);
	putbytes(&p, "v=STSv1", 7);
	put8(&p, 0);
	put8(&p, 11);
	putbytes(&p, "; id=2024\0x", 11);
	rdlen_fix(&p, at);
	at = rr(&p, NULL, 12, DNS_T_TXT);
	put8(&p, 3);
	putbytes(&p, "two", 3);
	rdlen_fix(&p, at);
	assert_int_equal(parse(&p, p.n, DNS_T_TXT, &a), 0);
	assert_int_equal(a.n_rrs, 2);
	assert_int_equal(a.rrs[0].txt.len, 18);
	assert_memory_equal(a.rrs[0].txt.text, "v=STSv1; id=2024\0x", 19);
	assert_string_equal(a.rrs[1].txt.text, "two");
	dns_answer_free(&a);

	/* a string longer than its rdata */
	start(&p, 0, 1, "_mta-sts.example", DNS_T_TXT);
	at = rr(&p, NULL, 12, DNS_T_TXT);
	put8(&p, 9);
	putbytes(&p, "short", 5);
	rdlen_fix(&p, at);
	put16(&p, 0); /* bytes after the RR, so only the rdlength bounds the string */
	put16(&p, 0);
	assert_int_equal(parse(&p, p.n, DNS_T_TXT, &a), -1);
	assert_string_equal(a.error, "TXT string runs past the rdata");
	dns_answer_free(&a);
}

static void test_rdata_name_bounds(void **state)
{
	struct pkt p;
	struct dns_answer a;
	size_t at;

	/* the exchange name runs past the MX rdlength */
	start(&p, 0, 1, "example.org", DNS_T_MX);
	at = rr(&p, NULL, 12, DNS_T_MX);
	put16(&p, 10);
	putname(&p, "mx.example.org");
	rdlen_fix(&p, at);
	p.b[at + 1] -= 3;
	assert_int_equal(parse(&p, p.n, DNS_T_MX, &a), -1);
	dns_answer_free(&a);

	/* an MX without a name */
	start(&p, 0, 1, "example.org", DNS_T_MX);
	at = rr(&p, NULL, 12, DNS_T_MX);
	put16(&p, 10);
	rdlen_fix(&p, at);
	assert_int_equal(parse(&p, p.n, DNS_T_MX, &a), -1);
	dns_answer_free(&a);
}

static void test_names(void **state)
{
	struct pkt p;
	struct dns_answer a;
	uint8_t label[63];

	/* escapes: a dot and a space inside a label, a non-ASCII byte */
	p.n = 0;
	put16(&p, 1);
	put16(&p, 0x8180);
	put16(&p, 1);
	put16(&p, 0);
	put16(&p, 0);
	put16(&p, 0);
	put8(&p, 5);
	putbytes(&p, "A.b c", 5);
	put8(&p, 2);
	putbytes(&p, "\xc3\xa9", 2);
	put8(&p, 0);
	put16(&p, DNS_T_A);
	put16(&p, 1);
	assert_int_equal(parse(&p, p.n, DNS_T_A, &a), 0);
	assert_string_equal(a.qname, "a\\.b\\032c.\\195\\169");
	dns_answer_free(&a);

	/* 255 octets is the limit: 4 x 63-octet labels is 257 with the root */
	memset(label, 'x', sizeof(label));
	for (int n = 3; n <= 4; n++) {
		p.n = 0;
		put16(&p, 1);
		put16(&p, 0x8180);
		put16(&p, 1);
		put16(&p, 0);
		put16(&p, 0);
		put16(&p, 0);
		for (int i = 0; i < n; i++) {
			put8(&p, 63);
			putbytes(&p, label, 63);
		}
		put8(&p, 0);
		put16(&p, DNS_T_A);
		put16(&p, 1);
		assert_int_equal(parse(&p, p.n, DNS_T_A, &a), n == 3 ? 0 : -1);
		if (n == 3)
			assert_int_equal(strlen(a.qname), 3 * 63 + 2);
		else
			assert_string_equal(a.error, "name longer than 255 octets");
		dns_answer_free(&a);
	}

	/* 0x40 / 0x80 label types are refused */
	start(&p, 0, 0, "example.org", DNS_T_A);
	p.b[12] = 0x41;
	assert_int_equal(parse(&p, p.n, DNS_T_A, &a), -1);
	dns_answer_free(&a);
}

static void test_header(void **state)
{
	struct pkt p;
	struct dns_answer a;

	/* NXDOMAIN: parsed, no records, the RCODE from the header */
	start(&p, 3, 0, "nx.example", DNS_T_MX);
	p.b[3] |= 0x20; /* AD */
	assert_int_equal(parse(&p, p.n, DNS_T_MX, &a), 0);
	assert_int_equal(a.rcode, DNS_RCODE_NXDOMAIN);
	assert_true(a.ad);
	assert_int_equal(a.n_rrs, 0);
	assert_string_equal(a.owner, "nx.example");
	dns_answer_free(&a);

	/* a query, not a response */
	start(&p, 0, 0, "example.org", DNS_T_A);
	p.b[2] &= 0x7f;
	assert_int_equal(parse(&p, p.n, DNS_T_A, &a), -1);
	dns_answer_free(&a);

	/* no question */
	start(&p, 0, 0, "example.org", DNS_T_A);
	p.b[5] = 0;
	assert_int_equal(parse(&p, p.n, DNS_T_A, &a), -1);
	dns_answer_free(&a);

	/* more answers announced than the packet holds */
	start(&p, 0, 0, "example.org", DNS_T_A);
	p.b[6] = 0xff;
	assert_int_equal(parse(&p, p.n, DNS_T_A, &a), -1);
	dns_answer_free(&a);

	assert_int_equal(dns_wire_parse(NULL, 0, DNS_T_A, &a), -1);
	dns_answer_free(&a);
	dns_answer_free(NULL);
}

static void test_type_name(void **state)
{
	char buf[16];

	assert_string_equal(dns_type_name(DNS_T_TLSA, buf, sizeof(buf)), "TLSA");
	assert_string_equal(dns_type_name(65, buf, sizeof(buf)), "TYPE65");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_mx),
	    cmocka_unit_test(test_truncated),
	    cmocka_unit_test(test_null_mx),
	    cmocka_unit_test(test_pointer_loops),
	    cmocka_unit_test(test_forward_pointer),
	    cmocka_unit_test(test_cname_chain),
	    cmocka_unit_test(test_cname_bounds),
	    cmocka_unit_test(test_aaaa),
	    cmocka_unit_test(test_tlsa),
	    cmocka_unit_test(test_txt),
	    cmocka_unit_test(test_rdata_name_bounds),
	    cmocka_unit_test(test_names),
	    cmocka_unit_test(test_header),
	    cmocka_unit_test(test_type_name),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
