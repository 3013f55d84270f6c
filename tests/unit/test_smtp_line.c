/*
 * test_smtp_line - command line framing (smtp/line.h): only CRLF ends a line
 * (RFC 5321 §2.3.8); bare LF, bare CR, NUL and over-long lines are reported
 * (security-anchors tests 13 and 21).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "smtp/line.h"

static enum smtp_line_status next(const char *s, size_t len, size_t max, size_t *ll, size_t *c)
{
	*ll = 12345;
	*c = 12345;
	return smtp_line_next(s, len, max, ll, c);
}

#define NEXT(lit, max) next(lit, sizeof(lit) - 1, max, &ll, &c)

static void test_ok(void **state)
{
	size_t ll, c;

	assert_int_equal(NEXT("EHLO x\r\n", 512), SMTP_LINE_OK);
	assert_int_equal(ll, 6);
	assert_int_equal(c, 8);
	/* only the first of two lines */
	assert_int_equal(NEXT("NOOP\r\nQUIT\r\n", 512), SMTP_LINE_OK);
	assert_int_equal(ll, 4);
	assert_int_equal(c, 6);
	/* an empty line */
	assert_int_equal(NEXT("\r\n", 512), SMTP_LINE_OK);
	assert_int_equal(ll, 0);
	assert_int_equal(c, 2);
	/* 8-bit bytes are not the framer's business */
	assert_int_equal(NEXT("\xff\xfe\r\n", 512), SMTP_LINE_OK);
	assert_int_equal(ll, 2);
}

static void test_need_more(void **state)
{
	size_t ll, c;

	assert_int_equal(next("", 0, 512, &ll, &c), SMTP_LINE_NEED_MORE);
	assert_int_equal(c, 0);
	assert_int_equal(NEXT("EHLO x", 512), SMTP_LINE_NEED_MORE);
	assert_int_equal(c, 0);
	/* a CR as the very last byte is not yet bare */
	assert_int_equal(NEXT("EHLO x\r", 512), SMTP_LINE_NEED_MORE);
	assert_int_equal(c, 0);
	assert_int_equal(NEXT("\r", 512), SMTP_LINE_NEED_MORE);
}

/* security-anchors test 13 */
static void test_bare_lf(void **state)
{
	size_t ll, c;

	assert_int_equal(NEXT("EHLO x\n", 512), SMTP_LINE_BARE_LF);
	assert_int_equal(c, 7);
	assert_int_equal(NEXT("MAIL FROM:<a@b>\nRCPT TO:<c@d>\r\n", 512), SMTP_LINE_BARE_LF);
	assert_int_equal(c, 16);
	assert_int_equal(NEXT("\n", 512), SMTP_LINE_BARE_LF);
	assert_int_equal(c, 1);
	/* LF CR LF: the first LF is bare */
	assert_int_equal(NEXT("a\n\r\n", 512), SMTP_LINE_BARE_LF);
	assert_int_equal(c, 2);
}

static void test_bare_cr(void **state)
{
	size_t ll, c;

	assert_int_equal(NEXT("EH\rLO\r\n", 512), SMTP_LINE_BARE_CR);
	assert_int_equal(c, 3);
	/* CR CR LF: the first CR is bare */
	assert_int_equal(NEXT("a\r\r\n", 512), SMTP_LINE_BARE_CR);
	assert_int_equal(c, 2);
}

static void test_nul(void **state)
{
	size_t ll, c;

	assert_int_equal(NEXT("E\0HLO\r\n", 512), SMTP_LINE_NUL);
	assert_int_equal(c, 2);
	/* the first problem in byte order wins */
	assert_int_equal(NEXT("\0\n", 512), SMTP_LINE_NUL);
	assert_int_equal(c, 1);
	assert_int_equal(NEXT("a\n\0", 512), SMTP_LINE_BARE_LF);
	assert_int_equal(c, 2);
}

static void test_too_long(void **state)
{
	size_t ll, c;

	/* max counts the CRLF: 8 + 2 fits in 10 */
	assert_int_equal(NEXT("12345678\r\n", 10), SMTP_LINE_OK);
	assert_int_equal(ll, 8);
	/* 9 + 2 does not; the CRLF is in the buffer, so the whole line goes */
	assert_int_equal(NEXT("123456789\r\nNEXT\r\n", 10), SMTP_LINE_TOO_LONG);
	assert_int_equal(ll, 9);
	assert_int_equal(c, 11);
	/* at the limit, no CRLF yet: still room for it */
	assert_int_equal(NEXT("12345678", 10), SMTP_LINE_NEED_MORE);
	assert_int_equal(NEXT("12345678\r", 10), SMTP_LINE_NEED_MORE);
	/* one byte more: too long whatever follows; no CRLF in the buffer */
	assert_int_equal(NEXT("123456789", 10), SMTP_LINE_TOO_LONG);
	assert_int_equal(ll, 0);
	assert_int_equal(c, 9);
	/* a bare LF after the point where the line became too long is ignored */
	assert_int_equal(NEXT("12345678901\nab\r\nNEXT", 10), SMTP_LINE_TOO_LONG);
	assert_int_equal(ll, 14);
	assert_int_equal(c, 16);
	/* but one before it is reported first */
	assert_int_equal(NEXT("1\n345678901\r\n", 10), SMTP_LINE_BARE_LF);
	assert_int_equal(c, 2);
}

/* security-anchors test 21: 513 B, 2 KiB, 1 MiB without CRLF */
static void test_huge_lines(void **state)
{
	static const size_t sizes[] = {513, 2048, 1 << 20};
	size_t ll, c;

	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		size_t n = sizes[k];
		char *buf = malloc(n + 2);
		int pending = 0, found = 0;
		size_t skipped;

		assert_non_null(buf);
		memset(buf, 'A', n);
		assert_int_equal(next(buf, n, 512, &ll, &c), SMTP_LINE_TOO_LONG);
		assert_int_equal(c, n);
		assert_int_equal(ll, 0);
		/* the caller then skips up to the CRLF arriving later */
		buf[0] = 'B';
		buf[1] = '\r';
		skipped = smtp_line_skip(buf, 2, &pending, &found);
		assert_int_equal(skipped, 2);
		assert_false(found);
		assert_true(pending);
		buf[0] = '\n';
		memcpy(buf + 1, "QUIT\r\n", 6);
		skipped = smtp_line_skip(buf, 7, &pending, &found);
		assert_int_equal(skipped, 1);
		assert_true(found);
		assert_false(pending);
		assert_int_equal(next(buf + 1, 6, 512, &ll, &c), SMTP_LINE_OK);
		assert_int_equal(ll, 4);
		free(buf);
	}
}

static void test_skip(void **state)
{
	int pending = 0, found = 0;

	assert_int_equal(smtp_line_skip("abc\r\nrest", 9, &pending, &found), 5);
	assert_true(found);
	assert_false(pending);
	/* bare LF does not end the skip */
	assert_int_equal(smtp_line_skip("a\nb\r\nc", 6, &pending, &found), 5);
	assert_true(found);
	assert_int_equal(smtp_line_skip("abc", 3, &pending, &found), 3);
	assert_false(found);
	assert_false(pending);
	assert_int_equal(smtp_line_skip("", 0, &pending, &found), 0);
	assert_false(found);
	/* CR at the end, LF at the start of the next call */
	assert_int_equal(smtp_line_skip("abc\r", 4, &pending, &found), 4);
	assert_false(found);
	assert_true(pending);
	assert_int_equal(smtp_line_skip("", 0, &pending, &found), 0);
	assert_true(pending); /* kept over an empty call */
	assert_int_equal(smtp_line_skip("\nNOOP\r\n", 7, &pending, &found), 1);
	assert_true(found);
	assert_false(pending);
	/* a pending CR not followed by LF is forgotten */
	pending = 1;
	assert_int_equal(smtp_line_skip("x\nz\r\n", 5, &pending, &found), 5);
	assert_true(found);
	assert_false(pending);
	pending = 1;
	assert_int_equal(smtp_line_skip("\r\n", 2, &pending, &found), 2);
	assert_true(found);
}

/* a framing loop over a stream in many buffer sizes: same lines every time */
static void test_stream_loop(void **state)
{
	static const char stream[] = "EHLO a\r\nMAIL FROM:<a@b>\r\nbad\nRCPT\rTO\r\n"
	                             "0123456789012345678901234567890123456789\r\n"
	                             "N\0OP\r\nQUIT\r\n";
	static const enum smtp_line_status want[] = {
	    SMTP_LINE_OK,       SMTP_LINE_OK,  SMTP_LINE_BARE_LF, SMTP_LINE_BARE_CR, SMTP_LINE_OK,
	    SMTP_LINE_TOO_LONG, SMTP_LINE_NUL, SMTP_LINE_OK,      SMTP_LINE_OK,
	};
	/* after BARE_LF/BARE_CR/NUL the rest of the line is framed on its own */
	const size_t total = sizeof(stream) - 1;

	for (size_t window = total; window >= 8; window--) {
		size_t pos = 0, k = 0;
		size_t ll, c;

		while (pos < total) {
			size_t n = total - pos < window ? total - pos : window;
			enum smtp_line_status st = smtp_line_next(stream + pos, n, 32, &ll, &c);

			if (st == SMTP_LINE_NEED_MORE) {
				assert_true(n < total - pos || n == 0);
				/* grow the view: the caller keeps bytes and reads more */
				n = total - pos;
				st = smtp_line_next(stream + pos, n, 32, &ll, &c);
			}
			assert_true(k < sizeof(want) / sizeof(want[0]));
			assert_int_equal(st, want[k]);
			k++;
			if (st == SMTP_LINE_TOO_LONG && ll == 0) {
				int pending = stream[pos + c - 1] == '\r', found = 0;

				pos += c;
				pos += smtp_line_skip(stream + pos, total - pos, &pending, &found);
				assert_true(found);
			} else {
				pos += c;
			}
		}
		assert_int_equal(k, sizeof(want) / sizeof(want[0]));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_ok),          cmocka_unit_test(test_need_more),
	    cmocka_unit_test(test_bare_lf),     cmocka_unit_test(test_bare_cr),
	    cmocka_unit_test(test_nul),         cmocka_unit_test(test_too_long),
	    cmocka_unit_test(test_huge_lines),  cmocka_unit_test(test_skip),
	    cmocka_unit_test(test_stream_loop),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
