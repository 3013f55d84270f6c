/*
 * smtp/line - command line framing. Only CRLF ends a line (RFC 5321 §2.3.8);
 * a bare CR, a bare LF or a NUL is reported, never guessed around, because
 * lenient framing is what SMTP smuggling and command injection feed on.
 * Pure, no I/O.
 */
#include <string.h>

#include "smtp/line.h"

enum smtp_line_status smtp_line_next(const char *buf, size_t len, size_t max, size_t *line_len,
                                     size_t *consumed)
{
	const unsigned char *p = (const unsigned char *)buf;
	const unsigned char *crlf;
	size_t i;

	*line_len = 0;
	*consumed = 0;
	for (i = 0; i < len; i++) {
		unsigned char c = p[i];

		if (c == '\r') {
			if (i + 1 == len)
				return SMTP_LINE_NEED_MORE; /* the LF may follow */
			if (p[i + 1] != '\n') {
				*consumed = i + 1;
				return SMTP_LINE_BARE_CR;
			}
			*line_len = i;
			*consumed = i + 2;
			/* RFC 5321 §4.5.3.1.4: the limit counts the CRLF */
			return i + 2 > max ? SMTP_LINE_TOO_LONG : SMTP_LINE_OK;
		}
		if (c == '\n') {
			*consumed = i + 1;
			return SMTP_LINE_BARE_LF;
		}
		if (c == '\0') {
			*consumed = i + 1;
			return SMTP_LINE_NUL;
		}
		/* i + 1 content bytes plus CRLF no longer fit */
		if (i + 3 > max)
			break;
	}
	if (i == len)
		return SMTP_LINE_NEED_MORE;

	/* too long: report the whole line if its CRLF is here */
	crlf = NULL;
	for (const unsigned char *q = p + i; q < p + len;) {
		const unsigned char *lf = memchr(q, '\n', (size_t)(p + len - q));

		if (lf == NULL)
			break;
		if (lf[-1] == '\r') { /* lf > p + i >= p: lf[-1] is in buf */
			crlf = lf - 1;
			break;
		}
		q = lf + 1;
	}
	if (crlf != NULL) {
		*line_len = (size_t)(crlf - p);
		*consumed = *line_len + 2;
	} else {
		*consumed = len;
	}
	return SMTP_LINE_TOO_LONG;
}

size_t smtp_line_skip(const char *buf, size_t len, int *pending_cr, int *found)
{
	const char *q = buf;
	const char *end = buf + len;

	*found = 0;
	if (len == 0)
		return 0;
	if (*pending_cr && buf[0] == '\n') {
		*pending_cr = 0;
		*found = 1;
		return 1;
	}
	*pending_cr = 0;
	while (q < end) {
		const char *lf = memchr(q, '\n', (size_t)(end - q));

		if (lf == NULL)
			break;
		if (lf > buf && lf[-1] == '\r') {
			*found = 1;
			return (size_t)(lf - buf) + 1;
		}
		q = lf + 1;
	}
	*pending_cr = buf[len - 1] == '\r';
	return len;
}
