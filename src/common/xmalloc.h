/*
 * xmalloc - allocation that never returns NULL.
 *
 * Out of memory kills the daemon (as Postfix's mymalloc and OpenSMTPD's
 * xmalloc do): real error paths are kept for peers, disks and DNS only.
 */
#ifndef STRICTMX_COMMON_XMALLOC_H
#define STRICTMX_COMMON_XMALLOC_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* xasprintf - allocate and format; never NULL */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* fatal - log and exit(1); for broken invariants and impossible states */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
