/*
 * smtp/data - the DATA body decoder (RFC 5321 §4.1.1.4, §4.5.2), and the
 * literal scanner used for BDAT chunks (RFC 3030). Pure, no I/O.
 *
 * Only <CRLF>.<CRLF> ends DATA (the first CRLF may be the one ending the DATA
 * command line itself: a body "." alone is an empty message). Anything else
 * that looks like an end (LF.LF, CR.CR, LF.CRLF, CRLF.LF, NUL before or
 * after the dot, ...) is content, and the stray CR/LF/NUL it holds sets the
 * matching flag, so the caller can refuse the message (SMTP smuggling).
 * Dot-stuffing is removed: a line starting with "." loses that first ".".
 */
#ifndef STRICTMX_SMTP_DATA_H
#define STRICTMX_SMTP_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef void (*smtp_data_emit_fn)(void *ctx, const void *p, size_t n);

struct smtp_data {
	int state;       /* internal */
	bool literal;    /* BDAT: no dot handling, no end marker */
	size_t max_line; /* line limit with CRLF (RFC 5321 §4.5.3.1.6: 1000); 0 = none */
	size_t line_len; /* octets in the current line so far (before unstuffing) */
	uint64_t octets; /* content octets emitted so far */
	bool bare_cr;    /* a CR not followed by LF was seen */
	bool bare_lf;    /* an LF not preceded by CR was seen */
	bool nul;        /* a NUL byte was seen */
	bool long_line;  /* a line longer than max_line was seen */
	bool eight_bit;  /* a byte >= 0x80 was seen */
};

void smtp_data_init(struct smtp_data *d, size_t max_line, bool literal);

/*
 * smtp_data_feed - decode bytes. The decoded content (lines ending in CRLF,
 * dot-stuffing removed; bytes of bare CR/LF passed through as they are) is
 * given to emit in one or more pieces. Returns the bytes consumed: all of len,
 * unless the end of DATA was reached, then *done = true and the return value
 * is the offset just past the final ".\r\n"; the bytes after it belong to the
 * next command. In literal mode *done is never set. A CR as the last byte of
 * in is held back (the next call decides) and emitted later.
 */
size_t smtp_data_feed(struct smtp_data *d, const void *in, size_t len, smtp_data_emit_fn emit,
                      void *ctx, bool *done);

/*
 * smtp_data_flush - end of a literal (BDAT LAST): a held-back CR is emitted
 * and counts as bare. (In DATA mode, where it is not needed, a held-back
 * line-leading "." is dropped as stuffing.)
 */
void smtp_data_flush(struct smtp_data *d, smtp_data_emit_fn emit, void *ctx);

#endif
