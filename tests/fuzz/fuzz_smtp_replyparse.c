/*
 * fuzz_smtp_replyparse - libFuzzer target for smtp/replyparse.h, the
 * client-side reply parser used by the LMTP client: the input is split into
 * CRLF lines and fed to the parser; every reply that completes must have a
 * code of 200..599, a NUL-terminated text without control characters, and at
 * most SMTP_REPLY_MAX_LINES lines.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp/replyparse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct smtp_reply_parser p;
	const char *s = (const char *)data;
	size_t start = 0;

	smtp_reply_parser_init(&p);
	for (size_t i = 0; i + 1 < size; i++) {
		if (s[i] != '\r' || s[i + 1] != '\n')
			continue;
		enum smtp_rp_status st = smtp_reply_parser_line(&p, s + start, i - start);
		if (st == SMTP_RP_DONE) {
			if (p.r.code < 200 || p.r.code > 599 || p.lines > SMTP_REPLY_MAX_LINES)
				abort();
			if (memchr(p.r.text, '\0', sizeof(p.r.text)) == NULL)
				abort();
			for (const char *t = p.r.text; *t; t++)
				if ((unsigned char)*t < 0x20 || *t == 0x7f)
					abort();
			smtp_reply_parser_init(&p);
		} else if (st == SMTP_RP_ERROR) {
			smtp_reply_parser_init(&p);
		}
		start = i + 2;
		i++;
	}
	return 0;
}
