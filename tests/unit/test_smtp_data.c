/*
 * test_smtp_data - the DATA decoder and BDAT literal scanner (smtp/data.h):
 * only CRLF "." CRLF ends DATA (RFC 5321 §4.1.1.4), every fake end of
 * security-anchors §2.3 is content with its flag set, dot-stuffing is removed
 * (§4.5.2), and output and flags do not depend on how input is split.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "smtp/data.h"

#define OUT_MAX 8192

struct res {
	unsigned char out[OUT_MAX];
	size_t outlen;
	size_t emits;
	size_t consumed; /* total input consumed (up to the end of DATA) */
	bool done;
	bool bare_cr, bare_lf, nul, long_line, eight_bit;
	uint64_t octets;
};

static void emit(void *ctx, const void *p, size_t n)
{
	struct res *r = ctx;

	assert_true(n > 0);
	assert_true(r->outlen + n <= OUT_MAX);
	memcpy(r->out + r->outlen, p, n);
	r->outlen += n;
	r->emits++;
}

static void finish(struct res *r, const struct smtp_data *d)
{
	r->bare_cr = d->bare_cr;
	r->bare_lf = d->bare_lf;
	r->nul = d->nul;
	r->long_line = d->long_line;
	r->eight_bit = d->eight_bit;
	r->octets = d->octets;
}

/*
 * Feed in in pieces: split 0 = one piece, 1 = byte by byte, otherwise a
 * pseudo-random split seeded by split. flush: call smtp_data_flush at the end
 * (when DATA did not end).
 */
static void decode(const void *in, size_t len, bool literal, size_t max_line, unsigned split,
                   bool flush, struct res *r)
{
	const unsigned char *p = in;
	struct smtp_data d;
	size_t pos = 0;
	unsigned seed = split;

	memset(r, 0, sizeof(*r));
	smtp_data_init(&d, max_line, literal);
	while (pos < len) {
		size_t n, c;
		bool done = false;

		if (split == 0)
			n = len - pos;
		else if (split == 1)
			n = 1;
		else {
			seed = seed * 1103515245u + 12345u;
			n = 1 + (seed >> 16) % 7;
			if (n > len - pos)
				n = len - pos;
		}
		c = smtp_data_feed(&d, p + pos, n, emit, r, &done);
		assert_true(c <= n);
		pos += c;
		if (done) {
			r->done = true;
			break;
		}
		assert_int_equal(c, n);
	}
	if (len == 0) {
		bool done = true;

		assert_int_equal(smtp_data_feed(&d, "", 0, emit, r, &done), 0);
		assert_false(done);
	}
	if (flush && !r->done)
		smtp_data_flush(&d, emit, r);
	r->consumed = pos;
	finish(r, &d);
	assert_int_equal(r->octets, r->outlen);
}

static void assert_same(const struct res *a, const struct res *b)
{
	assert_int_equal(a->outlen, b->outlen);
	assert_memory_equal(a->out, b->out, a->outlen);
	assert_int_equal(a->consumed, b->consumed);
	assert_int_equal(a->done, b->done);
	assert_int_equal(a->bare_cr, b->bare_cr);
	assert_int_equal(a->bare_lf, b->bare_lf);
	assert_int_equal(a->nul, b->nul);
	assert_int_equal(a->long_line, b->long_line);
	assert_int_equal(a->eight_bit, b->eight_bit);
	assert_int_equal(a->octets, b->octets);
}

/* decode whole, byte by byte and at 40 random split points; all must agree */
static void decode_all_ways(const void *in, size_t len, bool literal, size_t max_line, bool flush,
                            struct res *whole)
{
	static struct res other;

	decode(in, len, literal, max_line, 0, flush, whole);
	decode(in, len, literal, max_line, 1, flush, &other);
	assert_same(whole, &other);
	for (unsigned s = 2; s < 42; s++) {
		decode(in, len, literal, max_line, s, flush, &other);
		assert_same(whole, &other);
	}
}

static struct res R;

#define TAIL "MAIL FROM:<spoof@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nSubject: s\r\n\r\nB\r\n"

/* security-anchors §2.3 / test 12: none of these ends DATA */
static const struct {
	const char *name;
	const char *seq;
	size_t seqlen;
	const char *out; /* what the sequence decodes to */
	size_t outlen;
	bool bare_cr, bare_lf, nul;
} fake_ends[] = {
#define S(s) s, sizeof(s) - 1
    {"LF . LF", S("\n.\n"), S("\n.\n"), false, true, false},
    {"LF . CRLF", S("\n.\r\n"), S("\n.\r\n"), false, true, false},
    {"CR . CR", S("\r.\r"), S("\r.\r"), true, false, false},
    {"CR . LF", S("\r.\n"), S("\r.\n"), true, true, false},
    {"LF . CR", S("\n.\r"), S("\n.\r"), true, true, false},
    {"CR . CRLF", S("\r.\r\n"), S("\r.\r\n"), true, false, false},
    /* after CRLF the "." leads a line and is removed as stuffing */
    {"CRLF . LF", S("\r\n.\n"), S("\r\n\n"), false, true, false},
    {"CRLF . CR", S("\r\n.\r"), S("\r\n\r"), true, false, false},
    {"NUL before dot", S("\r\n\0.\r\n"), S("\r\n\0.\r\n"), false, false, true},
    {"NUL after dot", S("\r\n.\0\r\n"), S("\r\n\0\r\n"), false, false, true},
    {"CRLF . CR CRLF", S("\r\n.\r\r\n"), S("\r\n\r\r\n"), true, false, false},
    {"CR CRLF . CR CRLF", S("\r\r\n.\r\r\n"), S("\r\r\n\r\r\n"), true, false, false},
#undef S
};

static void test_fake_end_of_data(void **state)
{
	for (size_t i = 0; i < sizeof(fake_ends) / sizeof(fake_ends[0]); i++) {
		unsigned char in[512], want[512];
		size_t n = 0, w = 0;

		in[n++] = 'A';
		memcpy(in + n, fake_ends[i].seq, fake_ends[i].seqlen);
		n += fake_ends[i].seqlen;
		memcpy(in + n, TAIL ".\r\n", sizeof(TAIL ".\r\n") - 1);
		n += sizeof(TAIL ".\r\n") - 1;

		want[w++] = 'A';
		memcpy(want + w, fake_ends[i].out, fake_ends[i].outlen);
		w += fake_ends[i].outlen;
		memcpy(want + w, TAIL, sizeof(TAIL) - 1);
		w += sizeof(TAIL) - 1;

		print_message("%s\n", fake_ends[i].name);
		decode_all_ways(in, n, false, 1000, false, &R);
		/* one message: DATA ends only at the real CRLF.CRLF, at the very end */
		assert_true(R.done);
		assert_int_equal(R.consumed, n);
		assert_int_equal(R.outlen, w);
		assert_memory_equal(R.out, want, w);
		assert_int_equal(R.bare_cr, fake_ends[i].bare_cr);
		assert_int_equal(R.bare_lf, fake_ends[i].bare_lf);
		assert_int_equal(R.nul, fake_ends[i].nul);
		assert_false(R.long_line);
		assert_false(R.eight_bit);

		/* and without the real end, DATA is still open */
		decode_all_ways(in, n - 5, false, 1000, false, &R);
		assert_false(R.done);
		assert_int_equal(R.consumed, n - 5);
	}
}

/* smtpsmug "pipelining": the end, then the next commands in the same write */
static void test_pipelined_after_end(void **state)
{
	static const char in[] = "A\r\n.\r\nMAIL FROM:<spoof@x>\r\n";

	decode_all_ways(in, sizeof(in) - 1, false, 1000, false, &R);
	assert_true(R.done);
	assert_int_equal(R.consumed, 6);
	assert_int_equal(R.outlen, 3);
	assert_memory_equal(R.out, "A\r\n", 3);
	assert_false(R.bare_cr || R.bare_lf || R.nul);
}

/* the CRLF ending the DATA command counts: "." alone is an empty message */
static void test_empty_message(void **state)
{
	decode_all_ways(".\r\nQUIT\r\n", 9, false, 1000, false, &R);
	assert_true(R.done);
	assert_int_equal(R.consumed, 3);
	assert_int_equal(R.outlen, 0);
	assert_int_equal(R.octets, 0);
}

/* security-anchors test 16, RFC 5321 §4.5.2 */
static void test_dot_transparency(void **state)
{
	static const char in[] = "..x\r\n..\r\n. \r\n.\r\n";
	static const char want[] = ".x\r\n.\r\n \r\n";

	decode_all_ways(in, sizeof(in) - 1, false, 1000, false, &R);
	assert_true(R.done);
	assert_int_equal(R.consumed, sizeof(in) - 1);
	assert_int_equal(R.outlen, sizeof(want) - 1);
	assert_memory_equal(R.out, want, sizeof(want) - 1);
	assert_false(R.bare_cr || R.bare_lf || R.nul || R.long_line);

	/* a dot inside a line is never touched */
	decode_all_ways("a.b\r\na\r\n.\r\n", 11, false, 1000, false, &R);
	assert_true(R.done);
	assert_int_equal(R.outlen, 8);
	assert_memory_equal(R.out, "a.b\r\na\r\n", 8);
}

/* security-anchors test 14: stray CR or LF inside a line is content + flag */
static void test_stray_cr_lf_nul(void **state)
{
	decode_all_ways("abc\rdef\r\n.\r\n", 12, false, 1000, false, &R);
	assert_true(R.done);
	assert_int_equal(R.outlen, 9);
	assert_memory_equal(R.out, "abc\rdef\r\n", 9);
	assert_true(R.bare_cr);
	assert_false(R.bare_lf || R.nul);

	decode_all_ways("abc\ndef\r\n.\r\n", 12, false, 1000, false, &R);
	assert_true(R.done);
	assert_memory_equal(R.out, "abc\ndef\r\n", 9);
	assert_true(R.bare_lf);
	assert_false(R.bare_cr || R.nul);

	decode_all_ways("a\0b\r\n.\r\n", 8, false, 1000, false, &R);
	assert_true(R.done);
	assert_int_equal(R.outlen, 5);
	assert_memory_equal(R.out, "a\0b\r\n", 5);
	assert_true(R.nul);
	assert_false(R.bare_cr || R.bare_lf);

	/* CR CR LF: the first CR is bare, the second ends the line */
	decode_all_ways("a\r\r\n.\r\n", 7, false, 1000, false, &R);
	assert_true(R.done);
	assert_memory_equal(R.out, "a\r\r\n", 4);
	assert_true(R.bare_cr);
}

/* security-anchors test 17: BDAT is literal, "\r\n.\r\n" is content */
static void test_bdat_literal(void **state)
{
	static const char in[] = "a\r\n.\r\n..b\r\n.\r\nafter\r\n";

	decode_all_ways(in, sizeof(in) - 1, true, 1000, true, &R);
	assert_false(R.done);
	assert_int_equal(R.consumed, sizeof(in) - 1);
	assert_int_equal(R.outlen, sizeof(in) - 1);
	assert_memory_equal(R.out, in, sizeof(in) - 1);
	assert_false(R.bare_cr || R.bare_lf || R.nul);

	/* the same flags as DATA */
	decode_all_ways("x\ny\rz\0", 6, true, 1000, true, &R);
	assert_int_equal(R.outlen, 6);
	assert_true(R.bare_lf && R.bare_cr && R.nul);
}

/* a CR at the end of a chunk is held; the next chunk or the flush decides */
static void test_held_cr(void **state)
{
	struct smtp_data d;
	bool done = true;

	memset(&R, 0, sizeof(R));
	smtp_data_init(&d, 1000, true);
	assert_int_equal(smtp_data_feed(&d, "ab\r", 3, emit, &R, &done), 3);
	assert_false(done);
	assert_int_equal(R.outlen, 2); /* CR held back */
	assert_int_equal(d.octets, 2);
	assert_int_equal(smtp_data_feed(&d, "\ncd\r", 4, emit, &R, &done), 4);
	assert_int_equal(R.outlen, 6);
	assert_memory_equal(R.out, "ab\r\ncd", 6);
	assert_false(d.bare_cr);
	smtp_data_flush(&d, emit, &R);
	assert_int_equal(R.outlen, 7);
	assert_memory_equal(R.out, "ab\r\ncd\r", 7);
	assert_true(d.bare_cr);
	assert_int_equal(d.octets, 7);
	/* nothing held: flush is a no-op */
	smtp_data_flush(&d, emit, &R);
	assert_int_equal(R.outlen, 7);

	/* DATA: ".", then CR at a chunk end, then LF ends the message */
	memset(&R, 0, sizeof(R));
	smtp_data_init(&d, 1000, false);
	assert_int_equal(smtp_data_feed(&d, "x\r\n.\r", 5, emit, &R, &done), 5);
	assert_false(done);
	assert_int_equal(smtp_data_feed(&d, "\nNEXT", 5, emit, &R, &done), 1);
	assert_true(done);
	assert_int_equal(R.outlen, 3);
	/* after the end nothing more is taken */
	assert_int_equal(smtp_data_feed(&d, "NEXT", 4, emit, &R, &done), 0);
	assert_true(done);
}

static void test_long_line(void **state)
{
	/* 8 + CRLF = 10: at the limit */
	decode_all_ways("12345678\r\n.\r\n", 13, false, 10, false, &R);
	assert_true(R.done);
	assert_false(R.long_line);
	/* 9 + CRLF = 11: over, but decoding goes on */
	decode_all_ways("123456789\r\nab\r\n.\r\n", 18, false, 10, false, &R);
	assert_true(R.done);
	assert_true(R.long_line);
	assert_int_equal(R.outlen, 15);
	/* the stuffing dot counts: line_len is measured before unstuffing */
	decode_all_ways("..2345678\r\n.\r\n", 14, false, 10, false, &R);
	assert_true(R.done);
	assert_true(R.long_line);
	assert_memory_equal(R.out, ".2345678\r\n", 10);
	decode_all_ways(".2345678\r\n.\r\n", 13, false, 10, false, &R);
	assert_false(R.long_line);
	/* long without any line end yet (the caller can stop early) */
	decode_all_ways("12345678901", 11, true, 10, false, &R);
	assert_true(R.long_line);
	/* the limit applies per line */
	decode_all_ways("1234567\r\n1234567\r\n1234567\r\n", 27, true, 10, false, &R);
	assert_false(R.long_line);
}

static void test_line_len_and_eight_bit(void **state)
{
	struct smtp_data d;
	bool done;

	memset(&R, 0, sizeof(R));
	smtp_data_init(&d, 1000, false);
	smtp_data_feed(&d, "abc\r\nde", 7, emit, &R, &done);
	assert_int_equal(d.line_len, 2);
	smtp_data_feed(&d, "f\r", 2, emit, &R, &done);
	assert_int_equal(d.line_len, 4);
	smtp_data_feed(&d, "\n", 1, emit, &R, &done);
	assert_int_equal(d.line_len, 0);
	assert_false(d.eight_bit);
	smtp_data_feed(&d, "caf\xc3\xa9\r\n", 7, emit, &R, &done);
	assert_true(d.eight_bit);
	assert_int_equal(d.octets, 17);

	decode_all_ways("0123456789abcdef0123456789\xff\r\n.\r\n", 32, false, 1000, false, &R);
	assert_true(R.eight_bit);
}

static void emit_count(void *ctx, const void *p, size_t n)
{
	(*(size_t *)ctx)++;
}

/* the hot path: plain lines fed in one piece give one emit, not one per byte */
static void test_runs_emitted_in_one_call(void **state)
{
	char buf[100 * 80 + 3];
	size_t n = 0, calls = 0;
	struct smtp_data d;
	bool done;

	for (int l = 0; l < 100; l++) {
		memset(buf + n, 'a' + l % 26, 78);
		n += 78;
		buf[n++] = '\r';
		buf[n++] = '\n';
	}
	memcpy(buf + n, ".\r\n", 3);
	n += 3;
	smtp_data_init(&d, 1000, false);
	assert_int_equal(smtp_data_feed(&d, buf, n, emit_count, &calls, &done), n);
	assert_true(done);
	assert_int_equal(calls, 1);
	assert_int_equal(d.octets, 100 * 80);

	/* and a long run of bare LFs stays linear and flagged */
	static char lfs[1 << 16];
	memset(lfs, '\n', sizeof(lfs));
	calls = 0;
	smtp_data_init(&d, 0, true);
	assert_int_equal(smtp_data_feed(&d, lfs, sizeof(lfs), emit_count, &calls, &done),
	                 sizeof(lfs));
	assert_true(d.bare_lf);
	assert_int_equal(calls, 1);
	assert_int_equal(d.octets, sizeof(lfs));
}

/*
 * Reference model over the whole input (then flush), written as plainly as
 * possible, to compare with the state machine on random inputs.
 */
static void reference(const unsigned char *in, size_t n, bool literal, size_t max_line,
                      struct res *r)
{
	size_t i = 0, line = 0;
	bool bol = true;

	memset(r, 0, sizeof(*r));
#define ADD(k)                                                                                     \
	do {                                                                                       \
		line += (k);                                                                       \
		if (max_line && line > max_line)                                                   \
			r->long_line = true;                                                       \
	} while (0)
	while (i < n) {
		unsigned char c;

		if (!literal && bol && in[i] == '.') {
			if (i + 2 < n && in[i + 1] == '\r' && in[i + 2] == '\n') {
				r->done = true;
				i += 3;
				break;
			}
			ADD(1);
			i++;
			bol = false;
			continue;
		}
		bol = false;
		c = in[i];
		if (c == '\r' && i + 1 < n && in[i + 1] == '\n') {
			r->out[r->outlen++] = '\r';
			r->out[r->outlen++] = '\n';
			ADD(2);
			line = 0;
			bol = true;
			i += 2;
			continue;
		}
		if (c == '\r')
			r->bare_cr = true;
		if (c == '\n')
			r->bare_lf = true;
		if (c == '\0')
			r->nul = true;
		if (c >= 0x80)
			r->eight_bit = true;
		r->out[r->outlen++] = c;
		ADD(1);
		i++;
	}
#undef ADD
	r->consumed = i;
	r->octets = r->outlen;
}

static void test_random_against_reference(void **state)
{
	static const unsigned char alphabet[] = {'\r', '\n', '.', '\0', 'a', 0x80, ' ', '\r', '\n'};
	static struct res ref;
	unsigned seed = 12345;

	for (int iter = 0; iter < 3000; iter++) {
		unsigned char in[48];
		size_t n;
		bool literal = iter % 4 == 0;
		size_t max_line = iter % 3 == 0 ? 0 : 5 + iter % 7;

		seed = seed * 1103515245u + 12345u;
		n = (seed >> 16) % sizeof(in);
		for (size_t i = 0; i < n; i++) {
			seed = seed * 1103515245u + 12345u;
			in[i] = alphabet[(seed >> 16) % sizeof(alphabet)];
		}
		reference(in, n, literal, max_line, &ref);
		decode_all_ways(in, n, literal, max_line, true, &R);
		assert_same(&ref, &R);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_fake_end_of_data),
	    cmocka_unit_test(test_pipelined_after_end),
	    cmocka_unit_test(test_empty_message),
	    cmocka_unit_test(test_dot_transparency),
	    cmocka_unit_test(test_stray_cr_lf_nul),
	    cmocka_unit_test(test_bdat_literal),
	    cmocka_unit_test(test_held_cr),
	    cmocka_unit_test(test_long_line),
	    cmocka_unit_test(test_line_len_and_eight_bit),
	    cmocka_unit_test(test_runs_emitted_in_one_call),
	    cmocka_unit_test(test_random_against_reference),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
