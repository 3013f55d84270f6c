/*
 * smtp/reply - an SMTP reply decided somewhere, carried to where it is written.
 *
 * A decision (parser, session, store) fills a struct smtp_reply; nobody
 * re-derives the code later (docs/ARCHITECTURE.md, "Errors carry their SMTP
 * code"). Texts are static strings or copied into the fixed buffer.
 */
#ifndef STRICTMX_SMTP_REPLY_H
#define STRICTMX_SMTP_REPLY_H

#include <stdarg.h>
#include <stddef.h>

#define SMTP_REPLY_TEXT_MAX 400

struct smtp_reply {
	int code;          /* 250, 501, ... ; 0 = no reply decided */
	char enhanced[16]; /* "5.5.4" or "" */
	char text[SMTP_REPLY_TEXT_MAX];
};

/* smtp_reply_set - fill r; text is printf-formatted and truncated to fit */
void smtp_reply_set(struct smtp_reply *r, int code, const char *enhanced, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void smtp_reply_vset(struct smtp_reply *r, int code, const char *enhanced, const char *fmt,
                     va_list ap) __attribute__((format(printf, 4, 0)));

/*
 * smtp_reply_format - render "CODE ENH TEXT\r\n" (single line) into buf;
 * returns the length, or 0 if buf is too small. CR, LF and NUL in the text
 * are replaced by spaces so a reply can never be split. The output is also
 * NUL-terminated (buflen counts that byte); a code outside 200..599 (e.g. 0,
 * "no reply decided") renders nothing and returns 0.
 */
size_t smtp_reply_format(const struct smtp_reply *r, char *buf, size_t buflen);

#endif
