/*
 * testbuf.h - a growable, always NUL-terminated byte buffer for unit tests
 * that simulate an I/O layer (included by the inbound session tests; needs
 * cmocka.h first).
 */
#ifndef STRICTMX_TESTS_TESTBUF_H
#define STRICTMX_TESTS_TESTBUF_H

#include <stdlib.h>
#include <string.h>

struct buf {
	char *p;
	size_t len, cap;
};

static inline void buf_add(struct buf *b, const void *p, size_t n)
{
	if (b->p == NULL || b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		b->p = realloc(b->p, cap);
		assert_non_null(b->p);
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static inline void buf_adds(struct buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

static inline void buf_clear(struct buf *b)
{
	buf_add(b, "", 0);
	b->len = 0;
	b->p[0] = '\0';
}

static inline void buf_drop(struct buf *b, size_t n)
{
	assert_true(n <= b->len);
	memmove(b->p, b->p + n, b->len - n);
	b->len -= n;
	b->p[b->len] = '\0';
}

static inline void buf_free(struct buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

#endif
