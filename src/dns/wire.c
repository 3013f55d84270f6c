/* dns/wire - DNS response parser; see wire.h */
#include "dns/wire.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/xmalloc.h"

#define HDR_LEN     12
#define NAME_WIRE   255 /* RFC 1035 §3.1: a name is at most 255 octets */
#define MAX_JUMPS   127 /* compression pointers followed within one name */
#define RR_FIXED    10  /* type, class, ttl, rdlength */
#define RR_MIN_SIZE (1 + RR_FIXED)
#define CLASS_IN    1

/* where one answer RR lies in the packet */
struct rr_ref {
	size_t owner; /* offset of the owner name */
	uint16_t type, class;
	uint32_t ttl;
	size_t rdata, rdlen;
};

struct parser {
	const uint8_t *pkt;
	size_t len;
	const char *error;
};

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static int fail(struct parser *ps, const char *why)
{
	if (ps->error == NULL)
		ps->error = why;
	return -1;
}

/*
 * read_name - the name at off, decompressed into wire[] (lowercase, with the
 * root label; *wlen octets). *next is the offset just past the name where it
 * starts (after its first compression pointer). RFC 1035 §4.1.4: pointers
 * may point anywhere in the message, so they are bounded by count, not
 * direction; the decompressed name is bounded to 255 octets.
 */
static int read_name(struct parser *ps, size_t off, uint8_t wire[NAME_WIRE], size_t *wlen,
                     size_t *next)
{
	size_t pos = off, wl = 0;
	unsigned jumps = 0;
	int jumped = 0;

	for (;;) {
		uint8_t c;

		if (pos >= ps->len)
			return fail(ps, "name runs past the end of the packet");
		c = ps->pkt[pos];
		if ((c & 0xc0) == 0xc0) {
			size_t ptr;

			if (pos + 1 >= ps->len)
				return fail(ps, "compression pointer cut short");
			ptr = ((size_t)(c & 0x3f) << 8) | ps->pkt[pos + 1];
			if (!jumped) {
				*next = pos + 2;
				jumped = 1;
			}
			if (++jumps > MAX_JUMPS)
				return fail(ps, "compression pointer loop");
			if (ptr < HDR_LEN || ptr >= ps->len)
				return fail(ps, "compression pointer out of range");
			pos = ptr;
			continue;
		}
		if (c & 0xc0) /* 01 and 10: extended label types (RFC 6891 §5) */
			return fail(ps, "unsupported label type");
		if (c == 0) {
			wire[wl++] = 0;
			if (!jumped)
				*next = pos + 1;
			*wlen = wl;
			return 0;
		}
		if (c > ps->len - pos - 1)
			return fail(ps, "label runs past the end of the packet");
		if (wl + 1 + c + 1 > NAME_WIRE)
			return fail(ps, "name longer than 255 octets");
		wire[wl++] = c;
		for (size_t i = 0; i < c; i++) {
			uint8_t b = ps->pkt[pos + 1 + i];

			wire[wl++] = (b >= 'A' && b <= 'Z') ? (uint8_t)(b + ('a' - 'A')) : b;
		}
		pos += 1 + (size_t)c;
	}
}

/* name_text - presentation format of a wire name, no trailing dot */
static void name_text(const uint8_t *wire, char out[DNS_NAME_TEXT_MAX])
{
	size_t o = 0, p = 0;

	if (wire[0] == 0) {
		strcpy(out, ".");
		return;
	}
	while (wire[p] != 0) {
		uint8_t n = wire[p++];

		if (o > 0)
			out[o++] = '.';
		for (uint8_t i = 0; i < n; i++, p++) {
			uint8_t b = wire[p];

			/* RFC 4343 §2.1: escape what would be misread */
			if (b <= 0x20 || b >= 0x7f) {
				o += (size_t)snprintf(out + o, DNS_NAME_TEXT_MAX - o, "\\%03u", b);
			} else if (b == '.' || b == '\\' || b == '"' || b == '(' || b == ')' ||
			           b == ';' || b == '@' || b == '$') {
				out[o++] = '\\';
				out[o++] = (char)b;
			} else {
				out[o++] = (char)b;
			}
		}
	}
	out[o] = '\0';
}

static char *name_dup(const uint8_t *wire)
{
	char text[DNS_NAME_TEXT_MAX];

	name_text(wire, text);
	return xstrdup(text);
}

/* does the RR's owner equal the wire name? */
static int owner_is(struct parser *ps, const struct rr_ref *r, const uint8_t *wire, size_t wlen)
{
	uint8_t o[NAME_WIRE];
	size_t ol, next;

	if (read_name(ps, r->owner, o, &ol, &next) < 0)
		return -1;
	return ol == wlen && memcmp(o, wire, wlen) == 0;
}

/* a name that must fill the rest of the rdata exactly (CNAME target, MX exchange) */
static int rdata_name(struct parser *ps, size_t off, size_t end, uint8_t wire[NAME_WIRE],
                      size_t *wlen)
{
	size_t next;

	if (off >= end)
		return fail(ps, "empty name in rdata");
	if (read_name(ps, off, wire, wlen, &next) < 0)
		return -1;
	if (next != end)
		return fail(ps, "name does not match the rdata length");
	return 0;
}

static int parse_rdata(struct parser *ps, const struct rr_ref *r, struct dns_rr *rr,
                       size_t *txt_total)
{
	const uint8_t *d = ps->pkt + r->rdata;
	size_t end = r->rdata + r->rdlen;
	uint8_t wire[NAME_WIRE];
	size_t wl;

	rr->type = r->type;
	rr->ttl = r->ttl;
	switch (r->type) {
	case DNS_T_A: {
		struct sockaddr_in *sin = (struct sockaddr_in *)&rr->addr.ss;

		if (r->rdlen != 4)
			return fail(ps, "A record is not 4 octets");
		memset(&rr->addr, 0, sizeof(rr->addr));
		sin->sin_family = AF_INET;
		memcpy(&sin->sin_addr, d, 4);
		inet_ntop(AF_INET, d, rr->addr.text, sizeof(rr->addr.text));
		return 0;
	}
	case DNS_T_AAAA: {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&rr->addr.ss;

		if (r->rdlen != 16)
			return fail(ps, "AAAA record is not 16 octets");
		memset(&rr->addr, 0, sizeof(rr->addr));
		sin6->sin6_family = AF_INET6;
		memcpy(&sin6->sin6_addr, d, 16);
		inet_ntop(AF_INET6, d, rr->addr.text, sizeof(rr->addr.text));
		return 0;
	}
	case DNS_T_MX:
		if (r->rdlen < 3)
			return fail(ps, "MX record too short");
		if (rdata_name(ps, r->rdata + 2, end, wire, &wl) < 0)
			return -1;
		rr->mx.pref = get16(d);
		rr->mx.exchange = name_dup(wire);
		return 0;
	case DNS_T_CNAME:
		if (rdata_name(ps, r->rdata, end, wire, &wl) < 0)
			return -1;
		rr->cname = name_dup(wire);
		return 0;
	case DNS_T_TLSA:
		if (r->rdlen < 3)
			return fail(ps, "TLSA record too short");
		rr->tlsa.usage = d[0];
		rr->tlsa.selector = d[1];
		rr->tlsa.mtype = d[2];
		rr->tlsa.len = r->rdlen - 3;
		rr->tlsa.data = xmalloc(rr->tlsa.len);
		memcpy(rr->tlsa.data, d + 3, rr->tlsa.len);
		return 0;
	case DNS_T_TXT: {
		size_t p = 0, n = 0;

		/* RFC 1035 §3.3.14: one or more <character-string> */
		while (p < r->rdlen) {
			size_t sl = d[p];

			if (sl > r->rdlen - p - 1)
				return fail(ps, "TXT string runs past the rdata");
			n += sl;
			p += 1 + sl;
		}
		if (n > DNS_WIRE_MAX_TXT - *txt_total)
			return fail(ps, "TXT records too long");
		*txt_total += n;
		rr->txt.text = xmalloc(n + 1);
		rr->txt.len = n;
		for (p = 0, n = 0; p < r->rdlen; p += 1 + (size_t)d[p]) {
			memcpy(rr->txt.text + n, d + p + 1, d[p]);
			n += d[p];
		}
		rr->txt.text[n] = '\0';
		return 0;
	}
	default:
		/* other types: counted, rdata not kept */
		return 0;
	}
}

int dns_wire_parse(const uint8_t *pkt, size_t len, uint16_t qtype, struct dns_answer *out)
{
	struct parser ps = {.pkt = pkt, .len = len, .error = NULL};
	struct rr_ref *refs = NULL;
	uint8_t cur[NAME_WIRE], wire[NAME_WIRE];
	size_t cur_len, wl, pos, qdcount, ancount, n_refs = 0, txt_total = 0;
	int rc = -1;

	memset(out, 0, sizeof(*out));
	if (pkt == NULL || len < HDR_LEN) {
		out->error = "packet shorter than a DNS header";
		return -1;
	}
	out->rcode = pkt[3] & 0x0f;
	out->aa = (pkt[2] & 0x04) != 0;
	out->tc = (pkt[2] & 0x02) != 0;
	out->ad = (pkt[3] & 0x20) != 0;
	if (!(pkt[2] & 0x80)) {
		out->error = "not a response";
		return -1;
	}
	qdcount = get16(pkt + 4);
	ancount = get16(pkt + 6);
	if (qdcount != 1) {
		out->error = "question count is not 1";
		return -1;
	}

	/* the question: QNAME QTYPE QCLASS */
	if (read_name(&ps, HDR_LEN, cur, &cur_len, &pos) < 0)
		goto done;
	if (len - pos < 4) {
		fail(&ps, "question cut short");
		goto done;
	}
	pos += 4;
	out->qname = name_dup(cur);

	/* index the answer section, checking every length */
	if (ancount > (len - pos) / RR_MIN_SIZE) {
		fail(&ps, "more answer records than the packet can hold");
		goto done;
	}
	refs = xcalloc(ancount ? ancount : 1, sizeof(*refs));
	for (size_t i = 0; i < ancount; i++) {
		struct rr_ref *r = &refs[n_refs++];
		size_t next;

		r->owner = pos;
		if (read_name(&ps, pos, wire, &wl, &next) < 0)
			goto done;
		pos = next;
		if (len - pos < RR_FIXED) {
			fail(&ps, "record header cut short");
			goto done;
		}
		r->type = get16(pkt + pos);
		r->class = get16(pkt + pos + 2);
		r->ttl = get32(pkt + pos + 4);
		r->rdlen = get16(pkt + pos + 8);
		pos += RR_FIXED;
		if (r->rdlen > len - pos) {
			fail(&ps, "rdata runs past the end of the packet");
			goto done;
		}
		r->rdata = pos;
		pos += r->rdlen;
	}

	/* follow the CNAME chain from the question name */
	if (qtype != DNS_T_CNAME) {
		for (;;) {
			const struct rr_ref *cn = NULL;

			for (size_t i = 0; i < n_refs && cn == NULL; i++) {
				int m;

				if (refs[i].type != DNS_T_CNAME || refs[i].class != CLASS_IN)
					continue;
				m = owner_is(&ps, &refs[i], cur, cur_len);
				if (m < 0)
					goto done;
				if (m)
					cn = &refs[i];
			}
			if (cn == NULL)
				break;
			if (out->n_cname == DNS_WIRE_MAX_CNAME) {
				fail(&ps, "CNAME chain too long");
				goto done;
			}
			if (rdata_name(&ps, cn->rdata, cn->rdata + cn->rdlen, cur, &cur_len) < 0)
				goto done;
			out->n_cname++;
		}
	}
	out->owner = name_dup(cur);

	/* the records of qtype at the final name */
	for (size_t i = 0; i < n_refs; i++) {
		int m;

		if (refs[i].type != qtype || refs[i].class != CLASS_IN)
			continue;
		m = owner_is(&ps, &refs[i], cur, cur_len);
		if (m < 0)
			goto done;
		if (!m)
			continue;
		out->rrs = xrealloc(out->rrs, (out->n_rrs + 1) * sizeof(*out->rrs));
		memset(&out->rrs[out->n_rrs], 0, sizeof(*out->rrs));
		out->n_rrs++; /* counted first, so dns_answer_free sees a half-made one */
		if (parse_rdata(&ps, &refs[i], &out->rrs[out->n_rrs - 1], &txt_total) < 0)
			goto done;
	}
	rc = 0;
done:
	free(refs);
	if (rc < 0)
		out->error = ps.error ? ps.error : "malformed packet";
	return rc;
}

void dns_answer_free(struct dns_answer *a)
{
	if (a == NULL)
		return;
	for (size_t i = 0; i < a->n_rrs; i++) {
		struct dns_rr *rr = &a->rrs[i];

		switch (rr->type) {
		case DNS_T_MX:
			free(rr->mx.exchange);
			break;
		case DNS_T_CNAME:
			free(rr->cname);
			break;
		case DNS_T_TLSA:
			free(rr->tlsa.data);
			break;
		case DNS_T_TXT:
			free(rr->txt.text);
			break;
		default:
			break;
		}
	}
	free(a->rrs);
	free(a->qname);
	free(a->owner);
	memset(a, 0, sizeof(*a));
}

const char *dns_type_name(uint16_t type, char *buf, size_t len)
{
	static const struct {
		uint16_t type;
		const char *name;
	} names[] = {
	    {DNS_T_A, "A"},   {DNS_T_NS, "NS"},   {DNS_T_CNAME, "CNAME"}, {DNS_T_SOA, "SOA"},
	    {DNS_T_MX, "MX"}, {DNS_T_TXT, "TXT"}, {DNS_T_AAAA, "AAAA"},   {DNS_T_TLSA, "TLSA"},
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (names[i].type == type) {
			snprintf(buf, len, "%s", names[i].name);
			return buf;
		}
	snprintf(buf, len, "TYPE%u", type);
	return buf;
}
