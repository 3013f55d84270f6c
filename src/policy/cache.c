/*
 * policy/cache - MTA-STS cache in SQLite (see cache.h). Small synchronous
 * statements on the loop: one indexed row per domain; a busy timeout covers
 * the CLI and the daemon using the file at the same time.
 */
#include "policy/cache.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/xmalloc.h"

struct policy_cache {
	sqlite3 *db;
};

struct policy_cache *policy_cache_open(const char *data_dir, char *err, size_t errlen)
{
	struct policy_cache *c;
	char *path = xasprintf("%s/policy.db", data_dir != NULL ? data_dir : ".");
	sqlite3 *db = NULL;
	char *msg = NULL;

	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
	    SQLITE_OK) {
		snprintf(err, errlen, "%s: %s", path, db ? sqlite3_errmsg(db) : "out of memory");
		sqlite3_close(db);
		free(path);
		return NULL;
	}
	sqlite3_busy_timeout(db, 2000);
	if (sqlite3_exec(db,
	                 "CREATE TABLE IF NOT EXISTS sts(domain TEXT PRIMARY KEY, id TEXT NOT NULL,"
	                 " policy TEXT NOT NULL, fetched INTEGER NOT NULL,"
	                 " max_age INTEGER NOT NULL)",
	                 NULL, NULL, &msg) != SQLITE_OK) {
		snprintf(err, errlen, "%s: %s", path, msg ? msg : "cannot create table sts");
		sqlite3_free(msg);
		sqlite3_close(db);
		free(path);
		return NULL;
	}
	free(path);
	c = xcalloc(1, sizeof(*c));
	c->db = db;
	return c;
}

void policy_cache_close(struct policy_cache **pc)
{
	if (*pc == NULL)
		return;
	sqlite3_close((*pc)->db);
	free(*pc);
	*pc = NULL;
}

int policy_cache_get(struct policy_cache *c, const char *domain, struct policy_cache_entry *e)
{
	sqlite3_stmt *st = NULL;
	int rc;

	memset(e, 0, sizeof(*e));
	if (sqlite3_prepare_v2(c->db,
	                       "SELECT id, policy, fetched, max_age FROM sts WHERE domain = ?1", -1,
	                       &st, NULL) != SQLITE_OK) {
		log_warn("event=policy_cache_error error=\"%s\"", sqlite3_errmsg(c->db));
		return -1;
	}
	sqlite3_bind_text(st, 1, domain, -1, SQLITE_TRANSIENT);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		const unsigned char *id = sqlite3_column_text(st, 0);
		const unsigned char *pol = sqlite3_column_text(st, 1);
		int n = sqlite3_column_bytes(st, 1);

		snprintf(e->id, sizeof(e->id), "%s", id ? (const char *)id : "");
		e->policy = xmalloc((size_t)n + 1);
		if (n > 0 && pol != NULL)
			memcpy(e->policy, pol, (size_t)n);
		e->policy[n] = '\0';
		e->len = (size_t)n;
		e->fetched = sqlite3_column_int64(st, 2);
		e->max_age = (long)sqlite3_column_int64(st, 3);
		rc = 1;
	} else if (rc == SQLITE_DONE) {
		rc = 0;
	} else {
		log_warn("event=policy_cache_error error=\"%s\"", sqlite3_errmsg(c->db));
		rc = -1;
	}
	sqlite3_finalize(st);
	return rc;
}

int policy_cache_put(struct policy_cache *c, const char *domain, const char *id, const char *policy,
                     size_t len, long long fetched, long max_age)
{
	sqlite3_stmt *st = NULL;
	int rc;

	if (sqlite3_prepare_v2(c->db,
	                       "INSERT OR REPLACE INTO sts(domain, id, policy, fetched, max_age)"
	                       " VALUES (?1, ?2, ?3, ?4, ?5)",
	                       -1, &st, NULL) != SQLITE_OK) {
		log_warn("event=policy_cache_error error=\"%s\"", sqlite3_errmsg(c->db));
		return -1;
	}
	sqlite3_bind_text(st, 1, domain, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 2, id, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 3, policy, (int)len, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 4, fetched);
	sqlite3_bind_int64(st, 5, max_age);
	rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
	if (rc < 0)
		log_warn("event=policy_cache_error error=\"%s\"", sqlite3_errmsg(c->db));
	sqlite3_finalize(st);
	return rc;
}
