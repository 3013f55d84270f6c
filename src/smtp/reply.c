/*
 * smtp/reply - fill and render SMTP replies (RFC 5321 §4.2). Pure, no I/O.
 *
 * The renderer is the last line of defence against reply splitting: whatever
 * a text holds, the output is exactly one line ending in the only CRLF.
 */
#include <stdio.h>
#include <string.h>

#include "smtp/reply.h"

void smtp_reply_vset(struct smtp_reply *r, int code, const char *enhanced, const char *fmt,
                     va_list ap)
{
	size_t n;

	r->code = code;
	n = enhanced != NULL ? strnlen(enhanced, sizeof(r->enhanced) - 1) : 0;
	memcpy(r->enhanced, enhanced != NULL ? enhanced : "", n);
	r->enhanced[n] = '\0';
	/* vsnprintf truncates and always terminates */
	if (vsnprintf(r->text, sizeof(r->text), fmt, ap) < 0)
		r->text[0] = '\0';
}

void smtp_reply_set(struct smtp_reply *r, int code, const char *enhanced, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	smtp_reply_vset(r, code, enhanced, fmt, ap);
	va_end(ap);
}

/* append n bytes of s to buf at *pos, turning CR/LF/NUL into SP */
static void put_clean(char *buf, size_t *pos, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		buf[(*pos)++] = (c == '\r' || c == '\n' || c == '\0') ? ' ' : c;
	}
}

/*
 * RFC 5321 §4.2: Reply-line = Reply-code [ SP textstring ] CRLF, with the
 * enhanced code (RFC 2034 §4) first in the text. The output is also
 * NUL-terminated, so buflen must leave room for that byte. A code outside
 * 200..599 (0 = "no reply decided") is a caller bug and renders nothing.
 */
size_t smtp_reply_format(const struct smtp_reply *r, char *buf, size_t buflen)
{
	size_t elen = strnlen(r->enhanced, sizeof(r->enhanced));
	size_t tlen = strnlen(r->text, sizeof(r->text));
	size_t need, pos = 0;
	char code[4];

	if (r->code < 200 || r->code > 599)
		return 0;
	code[0] = (char)('0' + r->code / 100);
	code[1] = (char)('0' + r->code / 10 % 10);
	code[2] = (char)('0' + r->code % 10);
	code[3] = '\0';

	need = 3 + (elen ? 1 + elen : 0) + (tlen ? 1 + tlen : 0) + 2;
	if (buf == NULL || buflen < need + 1)
		return 0;
	put_clean(buf, &pos, code, 3);
	if (elen) {
		buf[pos++] = ' ';
		put_clean(buf, &pos, r->enhanced, elen);
	}
	if (tlen) {
		buf[pos++] = ' ';
		put_clean(buf, &pos, r->text, tlen);
	}
	buf[pos++] = '\r';
	buf[pos++] = '\n';
	buf[pos] = '\0';
	return pos;
}
