/*
 * buf - a growable byte buffer (output queues of the session state machines,
 * texts being built). Grows by doubling; never fails (xmalloc).
 */
#ifndef STRICTMX_COMMON_BUF_H
#define STRICTMX_COMMON_BUF_H

#include <stddef.h>

struct buf {
	char *p;
	size_t len, cap;
};

void buf_append(struct buf *b, const void *p, size_t n);
void buf_free(struct buf *b);

#endif
