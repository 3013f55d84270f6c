/*
 * fuzz_smtp_data - libFuzzer target for smtp/data.h. The first input byte
 * picks literal (BDAT) or DATA mode, a piece size and a line limit; the rest
 * is fed in pieces and, separately, in one piece. Output and flags must not
 * depend on the split, and the contract's invariants must hold: consumed <=
 * len, octets == bytes emitted, only CRLF "." CRLF ends DATA (RFC 5321
 * §4.1.1.4), no stray CR/LF/NUL in the output unless its flag is set.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
	do {                                                                                       \
		if (!(x))                                                                          \
			abort();                                                                   \
	} while (0)

struct sink {
	unsigned char *buf;
	size_t cap;
	size_t len;
	size_t total;
};

static void emit(void *ctx, const void *p, size_t n)
{
	struct sink *s = ctx;

	CHECK(n > 0);
	if (s->len + n <= s->cap) {
		memcpy(s->buf + s->len, p, n);
		s->len += n;
	}
	s->total += n;
}

struct outcome {
	struct smtp_data d;
	size_t consumed;
	bool done;
};

static void decode(const uint8_t *in, size_t len, bool literal, size_t max_line, size_t piece,
                   struct sink *s, struct outcome *o)
{
	size_t pos = 0;

	smtp_data_init(&o->d, max_line, literal);
	o->done = false;
	while (pos < len) {
		size_t n = len - pos < piece ? len - pos : piece;
		bool done = false;
		size_t c = smtp_data_feed(&o->d, in + pos, n, emit, s, &done);

		CHECK(c <= n);
		pos += c;
		if (done) {
			CHECK(!literal);
			CHECK(pos >= 3 && memcmp(in + pos - 3, ".\r\n", 3) == 0);
			CHECK(pos == 3 || (pos >= 5 && in[pos - 5] == '\r' && in[pos - 4] == '\n'));
			o->done = true;
			break;
		}
		CHECK(c == n);
	}
	if (!o->done)
		smtp_data_flush(&o->d, emit, s);
	o->consumed = pos;
	CHECK(o->d.octets == s->total);
	CHECK(s->total <= pos);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sink a, b;
	struct outcome oa, ob;
	bool literal;
	size_t piece, max_line;

	if (size < 1)
		return 0;
	literal = data[0] & 1;
	piece = 1 + ((data[0] >> 1) & 15);
	max_line = (data[0] >> 5) == 0 ? 0 : (size_t)(data[0] >> 5) * 4;
	data++;
	size--;

	a.cap = b.cap = size;
	a.buf = malloc(size ? size : 1);
	b.buf = malloc(size ? size : 1);
	CHECK(a.buf != NULL && b.buf != NULL);
	a.len = a.total = b.len = b.total = 0;

	decode(data, size, literal, max_line, piece, &a, &oa);
	decode(data, size, literal, max_line, size ? size : 1, &b, &ob);

	/* the split does not matter */
	CHECK(oa.consumed == ob.consumed && oa.done == ob.done);
	CHECK(a.total == b.total && a.len == b.len && memcmp(a.buf, b.buf, a.len) == 0);
	CHECK(oa.d.bare_cr == ob.d.bare_cr && oa.d.bare_lf == ob.d.bare_lf &&
	      oa.d.nul == ob.d.nul && oa.d.long_line == ob.d.long_line &&
	      oa.d.eight_bit == ob.d.eight_bit);

	/* BDAT is literal: every byte comes out unchanged */
	if (literal)
		CHECK(a.len == size && memcmp(a.buf, data, size) == 0);
	/* the flags tell the truth about the output */
	for (size_t i = 0; i < a.len; i++) {
		unsigned char c = a.buf[i];

		if (c == '\0')
			CHECK(oa.d.nul);
		if (c >= 0x80)
			CHECK(oa.d.eight_bit);
		if (c == '\n' && (i == 0 || a.buf[i - 1] != '\r'))
			CHECK(oa.d.bare_lf);
		if (c == '\r' && (i + 1 == a.len || a.buf[i + 1] != '\n'))
			CHECK(oa.d.bare_cr);
	}
	free(a.buf);
	free(b.buf);
	return 0;
}
