/*
 * policy/cache - the MTA-STS policy cache (RFC 8461 §5.1) in SQLite at
 * data_dir/policy.db: table sts(domain PRIMARY KEY, id, policy, fetched,
 * max_age). The policy text is kept as fetched and parsed again on use.
 */
#ifndef STRICTMX_POLICY_CACHE_H
#define STRICTMX_POLICY_CACHE_H

#include <stddef.h>

struct policy_cache;

struct policy_cache_entry {
	char id[64];
	char *policy; /* NUL-terminated, caller frees */
	size_t len;
	long long fetched; /* unix seconds */
	long max_age;
};

/* NULL with err when the database cannot be opened or created */
struct policy_cache *policy_cache_open(const char *data_dir, char *err, size_t errlen);
void policy_cache_close(struct policy_cache **c);
/* 1 and *e filled, 0 when there is no entry, -1 on a database error */
int policy_cache_get(struct policy_cache *c, const char *domain, struct policy_cache_entry *e);
/* 0, or -1 on a database error (logged) */
int policy_cache_put(struct policy_cache *c, const char *domain, const char *id, const char *policy,
                     size_t len, long long fetched, long max_age);

#endif
