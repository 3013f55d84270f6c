/*
 * smtp/data - DATA body decoder and BDAT literal scanner (RFC 5321
 * §4.1.1.4, §4.5.2; RFC 3030 §2). Pure, no I/O.
 *
 * A byte-level state machine whose output and flags do not depend on how
 * the input is split into calls: a CR or a line-leading "." at the end of
 * one call is held in the state and decided by the next byte. Runs of plain
 * bytes are found with memchr() and emitted in one call, so the common case
 * (text lines ending in CRLF) costs one emit per call, not one per byte.
 */
#include <string.h>

#include "smtp/data.h"

enum {
	ST_BOL = 0, /* at the start of a line (also the initial state) */
	ST_TEXT,    /* inside a line */
	ST_CR,      /* a CR was the last byte of the previous call, held back */
	ST_DOT,     /* a line-leading "." was read (DATA only), not emitted */
	ST_DOT_CR,  /* "." then CR at the end of the previous call, held back */
	ST_END,     /* CRLF "." CRLF seen: nothing more is decoded */
};

void smtp_data_init(struct smtp_data *d, size_t max_line, bool literal)
{
	memset(d, 0, sizeof(*d));
	d->state = ST_BOL;
	d->literal = literal;
	d->max_line = max_line;
}

static void out(struct smtp_data *d, const unsigned char *p, size_t n, smtp_data_emit_fn emit,
                void *ctx)
{
	if (n == 0)
		return;
	d->octets += n;
	emit(ctx, p, n);
}

/* RFC 5321 §4.5.3.1.6: the text line limit counts the CRLF; 0 = no limit */
static void add_line(struct smtp_data *d, size_t n)
{
	d->line_len += n;
	if (d->max_line != 0 && d->line_len > d->max_line)
		d->long_line = true;
}

static bool has_8bit(const unsigned char *p, size_t n)
{
	const unsigned char *end = p + n;

	while ((size_t)(end - p) >= 8) {
		uint64_t w;

		memcpy(&w, p, 8);
		if (w & UINT64_C(0x8080808080808080))
			return true;
		p += 8;
	}
	for (; p < end; p++)
		if (*p & 0x80)
			return true;
	return false;
}

/*
 * Positions of the next CR, LF and NUL at or after the current offset,
 * remembered across runs so a long stretch without one of them is scanned
 * once per call, not once per run (no quadratic blow-up on "\n\n\n...").
 */
struct scan {
	const unsigned char *p;
	size_t len;
	size_t next[3]; /* offset of the next '\r', '\n', '\0'; len = none */
};

static const unsigned char scan_chars[3] = {'\r', '\n', '\0'};

/* length of the run of bytes other than CR, LF, NUL starting at pos */
static size_t plain_run(struct scan *s, size_t pos)
{
	size_t stop = s->len;

	for (int k = 0; k < 3; k++) {
		if (s->next[k] < pos) {
			const unsigned char *q = memchr(s->p + pos, scan_chars[k], s->len - pos);

			s->next[k] = q != NULL ? (size_t)(q - s->p) : s->len;
		}
		if (s->next[k] < stop)
			stop = s->next[k];
	}
	return stop - pos;
}

size_t smtp_data_feed(struct smtp_data *d, const void *in, size_t len, smtp_data_emit_fn emit,
                      void *ctx, bool *done)
{
	static const unsigned char cr = '\r';
	const unsigned char *p = in;
	struct scan s = {.p = p, .len = len};
	size_t pos = 0, start = 0; /* [start, pos) is decoded content not yet emitted */

	if (done != NULL)
		*done = false;
	if (d->state == ST_END) {
		if (done != NULL)
			*done = true;
		return 0;
	}
	if (len == 0)
		return 0;
	for (int k = 0; k < 3; k++) {
		const unsigned char *q = memchr(p, scan_chars[k], len);

		s.next[k] = q != NULL ? (size_t)(q - p) : len;
	}

	while (pos < len) {
		unsigned char c = p[pos];
		size_t m;

		switch (d->state) {
		case ST_CR:
			/* the held CR is emitted on its own; the LF joins the span */
			out(d, &cr, 1, emit, ctx);
			if (c == '\n') {
				add_line(d, 1);
				d->line_len = 0;
				d->state = ST_BOL;
				pos++;
			} else {
				d->bare_cr = true;
				d->state = ST_TEXT;
			}
			continue;
		case ST_DOT_CR:
			if (c == '\n') {
				/* CRLF "." CRLF: the end (RFC 5321 §4.1.1.4) */
				d->line_len = 0;
				d->state = ST_END;
				if (done != NULL)
					*done = true;
				return pos + 1;
			}
			/* the dot was stuffing; the CR is bare content */
			out(d, &cr, 1, emit, ctx);
			d->bare_cr = true;
			d->state = ST_TEXT;
			continue;
		case ST_DOT:
			if (c != '\r') {
				/* RFC 5321 §4.5.2: the leading dot is deleted */
				d->state = ST_TEXT;
				continue;
			}
			if (pos + 1 == len) {
				add_line(d, 1);
				d->state = ST_DOT_CR;
				pos++;
				start = pos;
				continue;
			}
			if (p[pos + 1] == '\n') {
				d->line_len = 0;
				d->state = ST_END;
				if (done != NULL)
					*done = true;
				return pos + 2;
			}
			/* ".", bare CR: dot deleted, CR kept as content */
			add_line(d, 1);
			d->bare_cr = true;
			d->state = ST_TEXT;
			pos++;
			continue;
		case ST_BOL:
			if (c == '.' && !d->literal) {
				out(d, p + start, pos - start, emit, ctx);
				add_line(d, 1);
				d->state = ST_DOT;
				pos++;
				start = pos;
				continue;
			}
			d->state = ST_TEXT;
			/* fall through */
		case ST_TEXT:
		default:
			m = plain_run(&s, pos);
			if (m > 0) {
				if (!d->eight_bit && has_8bit(p + pos, m))
					d->eight_bit = true;
				add_line(d, m);
				pos += m;
				if (pos == len)
					break;
				c = p[pos];
			}
			if (c == '\r') {
				if (pos + 1 == len) {
					/* hold the CR: the next call decides */
					out(d, p + start, pos - start, emit, ctx);
					add_line(d, 1);
					d->state = ST_CR;
					pos++;
					start = pos;
				} else if (p[pos + 1] == '\n') {
					add_line(d, 2);
					d->line_len = 0;
					d->state = ST_BOL;
					pos += 2;
				} else {
					add_line(d, 1);
					d->bare_cr = true;
					pos++;
				}
			} else if (c == '\n') {
				add_line(d, 1);
				d->bare_lf = true;
				pos++;
			} else if (c == '\0') {
				add_line(d, 1);
				d->nul = true;
				pos++;
			}
			break;
		}
	}
	out(d, p + start, pos - start, emit, ctx);
	return len;
}

void smtp_data_flush(struct smtp_data *d, smtp_data_emit_fn emit, void *ctx)
{
	static const unsigned char cr = '\r';

	if (d->state == ST_CR || d->state == ST_DOT_CR) {
		out(d, &cr, 1, emit, ctx);
		d->bare_cr = true;
		d->state = ST_TEXT;
	} else if (d->state == ST_DOT) {
		/* a lone stuffed dot without its line end: the dot is dropped */
		d->state = ST_TEXT;
	}
}
