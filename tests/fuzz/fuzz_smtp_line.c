/*
 * fuzz_smtp_line - libFuzzer target for smtp/line.h: frames the input the
 * way a session does (smtp_line_next, then smtp_line_skip after an over-long
 * line), with a line limit taken from the first byte, and checks every
 * result against the contract: only CRLF ends a line (RFC 5321 §2.3.8).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp/line.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
	do {                                                                                       \
		if (!(x))                                                                          \
			abort();                                                                   \
	} while (0)

/* offset just past the first CRLF in p[0..n), or 0 */
static size_t naive_crlf(const char *p, size_t n)
{
	for (size_t i = 0; i + 1 < n; i++)
		if (p[i] == '\r' && p[i + 1] == '\n')
			return i + 2;
	return 0;
}

/* smtp_line_skip in pieces must stop exactly after each CRLF of the stream */
static void check_skip(const char *buf, size_t size, size_t piece)
{
	size_t q = 0, start = 0;
	int pending = 0, found = 0;

	while (q < size) {
		size_t n = size - q < piece ? size - q : piece;
		size_t d = smtp_line_skip(buf + q, n, &pending, &found);

		CHECK(d <= n);
		if (found) {
			CHECK(d > 0 && !pending);
			CHECK(naive_crlf(buf + start, size - start) == q + d - start);
			start = q + d;
		} else {
			CHECK(d == n);
			CHECK(pending == (buf[q + n - 1] == '\r'));
		}
		q += d;
	}
	/* what is left after the last CRLF holds none */
	CHECK(naive_crlf(buf + start, size - start) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	size_t max, pos, piece;

	if (size < 1)
		return 0;
	/* limit 0..254, or the usual 512 */
	max = data[0] == 0xff ? 512 : data[0];
	piece = 1 + data[0] % 13;
	buf++;
	size--;

	check_skip(buf, size, piece);
	pos = 0;
	while (pos < size) {
		size_t rest = size - pos, ll = 7777, c = 7777, k, want;
		enum smtp_line_status st = smtp_line_next(buf + pos, rest, max, &ll, &c);

		CHECK(c <= rest);
		switch (st) {
		case SMTP_LINE_NEED_MORE:
			CHECK(c == 0);
			CHECK(naive_crlf(buf + pos, rest) == 0);
			if (buf[pos + rest - 1] == '\r')
				CHECK(rest == 1 || rest + 1 <= max);
			else
				CHECK(rest + 2 <= max);
			return 0;
		case SMTP_LINE_OK:
			CHECK(c == ll + 2 && c <= max);
			CHECK(naive_crlf(buf + pos, rest) == c);
			for (k = 0; k < ll; k++)
				CHECK(buf[pos + k] != '\r' && buf[pos + k] != '\n' &&
				      buf[pos + k] != '\0');
			break;
		case SMTP_LINE_BARE_LF:
			CHECK(c >= 1 && buf[pos + c - 1] == '\n');
			CHECK(c == 1 || buf[pos + c - 2] != '\r');
			break;
		case SMTP_LINE_BARE_CR:
			CHECK(c >= 1 && c < rest && buf[pos + c - 1] == '\r' &&
			      buf[pos + c] != '\n');
			break;
		case SMTP_LINE_NUL:
			CHECK(c >= 1 && buf[pos + c - 1] == '\0');
			break;
		case SMTP_LINE_TOO_LONG:
			want = naive_crlf(buf + pos, rest);
			if (want != 0) {
				CHECK(c == want && ll == want - 2 && c > max);
			} else {
				/* no CRLF here: all taken, the caller skips on */
				CHECK(ll == 0 && c == rest && rest + 2 > max);
			}
			break;
		default:
			CHECK(0);
		}
		CHECK(c > 0);
		pos += c;
	}
	return 0;
}
