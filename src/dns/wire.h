/*
 * dns/wire - parse a DNS response packet (RFC 1035 §4) into the records a
 * mail transfer agent asks for. Pure, no I/O: the packet comes from the
 * network (through libunbound), so every length is checked against the packet
 * bounds and the parser is fuzzed (tests/fuzz/fuzz_dns_wire.c).
 *
 * Only the answer section is read. Starting at the question name, CNAME
 * records of the answer are followed (at most DNS_WIRE_MAX_CNAME links); the
 * records of the asked type whose owner is the final name are returned.
 * Names are rendered in presentation format, lowercase, without the trailing
 * dot ("." for the root), with RFC 4343 escapes (\. \\ \DDD) for bytes that
 * are not plain printable ASCII.
 */
#ifndef STRICTMX_DNS_WIRE_H
#define STRICTMX_DNS_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* RR types used by strictmx */
#define DNS_T_A      1
#define DNS_T_NS     2
#define DNS_T_CNAME  5
#define DNS_T_SOA    6
#define DNS_T_MX     15
#define DNS_T_TXT    16
#define DNS_T_AAAA   28
#define DNS_T_DNSKEY 48
#define DNS_T_TLSA   52

/* header RCODEs */
#define DNS_RCODE_NOERROR  0
#define DNS_RCODE_SERVFAIL 2
#define DNS_RCODE_NXDOMAIN 3

/* a CNAME chain longer than this is an error (loops end here too) */
#define DNS_WIRE_MAX_CNAME 8
/* a name in presentation format: 255 wire octets, each at most 4 characters */
#define DNS_NAME_TEXT_MAX 1024
/* the text of all TXT records of one answer together */
#define DNS_WIRE_MAX_TXT 65536

struct dns_rr_mx {
	uint16_t pref;
	char *exchange; /* "." for a null MX (RFC 7505) */
};

struct dns_rr_addr {
	struct sockaddr_storage ss; /* AF_INET or AF_INET6, port 0 */
	char text[46];              /* INET6_ADDRSTRLEN */
};

struct dns_rr_tlsa {
	uint8_t usage, selector, mtype;
	uint8_t *data; /* certificate association data, may be empty */
	size_t len;
};

struct dns_rr_txt {
	char *text; /* the character-strings of one RR, concatenated; NUL added */
	size_t len; /* without the added NUL (the text may contain NUL bytes) */
};

struct dns_rr {
	uint16_t type;
	uint32_t ttl;
	union {
		struct dns_rr_mx mx;
		struct dns_rr_addr addr;
		struct dns_rr_tlsa tlsa;
		struct dns_rr_txt txt;
		char *cname; /* target */
	};
};

struct dns_answer {
	int rcode;        /* header RCODE (4 bits) */
	bool aa, tc, ad;  /* header flags */
	char *qname;      /* question name */
	char *owner;      /* final owner name after the CNAME chain (= qname if none) */
	unsigned n_cname; /* CNAME links followed */
	struct dns_rr *rrs;
	size_t n_rrs;
	const char *error; /* static text when dns_wire_parse failed */
};

/*
 * dns_wire_parse - parse pkt[0..len) and keep the records of qtype (class IN)
 * at the end of the CNAME chain. With qtype CNAME, no chain is followed: the
 * CNAME record of the question name is returned.
 * Returns 0, or -1 for a malformed packet (out->error says why). In both
 * cases *out must be released with dns_answer_free.
 */
int dns_wire_parse(const uint8_t *pkt, size_t len, uint16_t qtype, struct dns_answer *out);

/* dns_answer_free - release what dns_wire_parse allocated; *a becomes empty */
void dns_answer_free(struct dns_answer *a);

/* dns_type_name - "MX", "A", ... or "TYPEnnn" in buf */
const char *dns_type_name(uint16_t type, char *buf, size_t len);

#endif
