/*
 * smtp/line - frame command lines: only CRLF ends a line (RFC 5321 §2.3.8).
 * Pure, no I/O.
 */
#ifndef STRICTMX_SMTP_LINE_H
#define STRICTMX_SMTP_LINE_H

#include <stddef.h>

enum smtp_line_status {
	SMTP_LINE_NEED_MORE = 0, /* no complete line yet (and below the limit) */
	SMTP_LINE_OK,            /* one line: *line_len bytes, then CRLF */
	SMTP_LINE_BARE_LF,       /* an LF not preceded by CR */
	SMTP_LINE_BARE_CR,       /* a CR not followed by LF */
	SMTP_LINE_NUL,           /* a NUL byte in the line */
	SMTP_LINE_TOO_LONG,      /* no CRLF within max bytes (max counts the CRLF) */
};

/*
 * smtp_line_next - look at buf for the first line.
 *   OK:        *line_len = length without CRLF, *consumed = line_len + 2.
 *   NEED_MORE: *consumed = 0. A CR as the very last byte is not yet bare.
 *   BARE_LF, BARE_CR, NUL: *consumed = offset just past the offending byte.
 *   TOO_LONG:  the line (with CRLF) is longer than max. If its CRLF is in buf,
 *              *consumed covers the whole line with CRLF and *line_len is its
 *              length; otherwise *consumed = len and *line_len = 0 and the caller
 *              must skip up to the next CRLF (smtp_line_skip; if the last
 *              byte of buf was a CR, start it with *pending_cr = 1).
 * Checks are made in byte order, so the first problem in the line is reported.
 */
enum smtp_line_status smtp_line_next(const char *buf, size_t len, size_t max, size_t *line_len,
                                     size_t *consumed);

/*
 * smtp_line_skip - discard input up to and including the next CRLF.
 * Returns the number of bytes to drop; *found = 1 when the CRLF was in buf.
 * *pending_cr carries a CR seen as the last byte of the previous call.
 */
size_t smtp_line_skip(const char *buf, size_t len, int *pending_cr, int *found);

#endif
