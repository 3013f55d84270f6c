/*
 * quarantine - find and move aside damaged queue entries; see quarantine.h.
 *
 * The rows are only ever written by queue.c from parsed SMTP input or a DSN,
 * and the body file's length is recorded in the row at commit (the Received:
 * header included), so anything else means the database or the file was
 * damaged or edited. Delivering from such an entry is never right: a
 * local_user of "../x" would be a path out of the Maildir base, a truncated
 * body would go out as if whole.
 */
#include "queue/quarantine.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fsyncpool.h"
#include "common/log.h"
#include "common/qid.h"
#include "common/xmalloc.h"
#include "delivery/maildir.h"

#define TEXT_MAX  1024 /* far above any path we accept (RFC 5321 §4.5.3.1.3: 256) */
#define STATE_MAX 2    /* queue.c: queued, delivered, failed (arriving rows are settled before) */

struct bad {
	char *id, *why;
};

static sqlite3_stmt *prepare(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		log_err("event=queue_db_error error=\"%s\"", sqlite3_errmsg(db));
	return st;
}

/* id_safe - an id we may use as a file name: what qid_new() makes */
static bool id_safe(const char *id)
{
	size_t n = strlen(id);
	if (n == 0 || n > (size_t)2 * QID_LEN)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isdigit((unsigned char)id[i]) && !isupper((unsigned char)id[i]))
			return false;
	return true;
}

/* text_ok - column c is text without NUL or control bytes, and bounded */
static bool text_ok(sqlite3_stmt *st, int c, bool may_be_null)
{
	int type = sqlite3_column_type(st, c);
	if (type == SQLITE_NULL)
		return may_be_null;
	if (type != SQLITE_TEXT)
		return false;
	const unsigned char *s = sqlite3_column_text(st, c);
	int n = sqlite3_column_bytes(st, c);
	if (s == NULL || n > TEXT_MAX)
		return false;
	for (int i = 0; i < n; i++)
		if (s[i] < 0x20 || s[i] == 0x7f)
			return false;
	return true;
}

static bool int_in(sqlite3_stmt *st, int c, sqlite3_int64 lo, sqlite3_int64 hi)
{
	if (sqlite3_column_type(st, c) != SQLITE_INTEGER)
		return false;
	sqlite3_int64 v = sqlite3_column_int64(st, c);
	return v >= lo && v <= hi;
}

/* envelope_problem - why the rows of message id cannot be right, or NULL */
static const char *envelope_problem(sqlite3_stmt *r, sqlite3_stmt *m, const char *id)
{
	if (!id_safe(id))
		return "bad queue id";
	if (!text_ok(m, 1, false)) /* "" is the null sender */
		return "bad sender";
	if (!int_in(m, 2, 1, INT64_MAX) || !int_in(m, 3, 0, INT64_MAX))
		return "bad created or size";
	sqlite3_reset(r);
	sqlite3_bind_text(r, 1, id, -1, SQLITE_TRANSIENT);
	const char *why = NULL;
	size_t n = 0;
	while (why == NULL && sqlite3_step(r) == SQLITE_ROW) {
		n++;
		if (!text_ok(r, 0, false) || !text_ok(r, 1, false) ||
		    sqlite3_column_bytes(r, 0) == 0 || sqlite3_column_bytes(r, 1) == 0 ||
		    strchr((const char *)sqlite3_column_text(r, 1), '/') != NULL)
			why = "bad recipient";
		else if (!text_ok(r, 2, true) ||
		         (sqlite3_column_type(r, 2) != SQLITE_NULL &&
		          !maildir_user_ok((const char *)sqlite3_column_text(r, 2))))
			why = "bad local user";
		else if (!int_in(r, 3, 0, STATE_MAX) || !int_in(r, 4, 0, INT32_MAX))
			why = "bad recipient state";
	}
	sqlite3_reset(r);
	if (why == NULL && n == 0)
		why = "no recipients";
	return why;
}

/*
 * body_problem - why the body file is not the message its row describes, or
 * NULL; ENOENT is queue.c's case (body missing), not a problem here. Cheap
 * enough for every start: open, fstat, one read.
 */
static const char *body_problem(const char *path, sqlite3_int64 size, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0) {
		if (errno == ENOENT)
			return NULL;
		snprintf(buf, len, "unreadable: %s", strerror(errno));
		return buf;
	}
	struct stat sb;
	char head[1024];
	ssize_t n = 0;
	const char *why = NULL;
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		why = "not a regular file";
	} else if ((sqlite3_int64)sb.st_size != size) {
		snprintf(buf, len, "size %lld, envelope says %lld", (long long)sb.st_size,
		         (long long)size);
		why = buf;
	} else if ((n = read(fd, head, sizeof(head))) <= 0) {
		snprintf(buf, len, "unreadable: %s", n < 0 ? strerror(errno) : "empty");
		why = buf;
	} else {
		/* every body we write starts with a header field: RFC 5322 §2.2,
		 * field-name = 1*(%d33-57 / %d59-126) ":" */
		ssize_t i = 0;
		while (i < n && head[i] > 32 && head[i] < 127 && head[i] != ':')
			i++;
		if (i == 0 || i >= n || head[i] != ':' || memchr(head, '\0', (size_t)n) != NULL)
			why = "not a message";
	}
	close(fd);
	return why;
}

const char *queue_body_check(const char *path, sqlite3_int64 size, char *buf, size_t len)
{
	struct stat sb;
	if (lstat(path, &sb) < 0 && errno == ENOENT)
		return "body file missing";
	return body_problem(path, size, buf, len);
}

/* put_escaped - bytes outside printable ASCII, and '\', as \xHH */
static void put_escaped(FILE *f, const unsigned char *v, int n)
{
	for (int i = 0; v != NULL && i < n; i++) {
		if (v[i] < 0x20 || v[i] >= 0x7f || v[i] == '\\')
			fprintf(f, "\\x%02x", v[i]);
		else
			fputc(v[i], f);
	}
}

static void put_rows(FILE *f, sqlite3 *db, const char *sql, const char *label, const char *id)
{
	sqlite3_stmt *st = prepare(db, sql);
	if (st == NULL)
		return;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
	while (sqlite3_step(st) == SQLITE_ROW) {
		fputs(label, f);
		for (int c = 0; c < sqlite3_column_count(st); c++) {
			fprintf(f, " %s=", sqlite3_column_name(st, c));
			put_escaped(f, sqlite3_column_text(st, c), sqlite3_column_bytes(st, c));
		}
		fputc('\n', f);
	}
	sqlite3_finalize(st);
}

/* write_envelope - the entry's rows as text, for its admin; appended, fsync'd */
static int write_envelope(sqlite3 *db, const char *id, const char *path, const char *why)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
	FILE *f = fd >= 0 ? fdopen(fd, "a") : NULL;
	if (f == NULL) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	fprintf(f, "reason: %s\n", why);
	put_rows(f, db, "SELECT * FROM message WHERE id = ?", "message:", id);
	put_rows(f, db, "SELECT * FROM rcpt WHERE msg_id = ?", "rcpt:", id);
	int rc = fflush(f) == 0 && fsync(fileno(f)) == 0 ? 0 : -1;
	return fclose(f) == 0 ? rc : -1;
}

static int delete_rows(sqlite3 *db, const char *id)
{
	static const char *const sql[] = {"DELETE FROM rcpt WHERE msg_id = ?",
	                                  "DELETE FROM message WHERE id = ?"};
	if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
		return -1;
	int rc = 0;
	for (size_t i = 0; i < 2 && rc == 0; i++) {
		sqlite3_stmt *st = prepare(db, sql[i]);
		if (st == NULL)
			rc = -1;
		else {
			sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
			rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
			sqlite3_finalize(st);
		}
	}
	if (rc == 0 && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK)
		return 0;
	sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	return -1;
}

/*
 * quarantine - move one entry aside. Files first, fsync'd, rows last: a
 * crash in between leaves rows whose body is already in quarantine/, and the
 * next start finishes the move (see queue_quarantine_scan). No DSN: nothing
 * in the entry can be trusted, its admin decides (Postfix's corrupt/ works
 * the same way).
 */
static bool quarantine(sqlite3 *db, const char *qdir, const char *queue_dir, const char *id,
                       const char *why)
{
	bool safe = id_safe(id);
	char name[2 * QID_LEN + 8];
	size_t k = safe ? 0 : (size_t)snprintf(name, sizeof(name), "bad-");
	for (const char *s = id; *s != '\0' && k < sizeof(name) - 1; s++)
		name[k++] = isalnum((unsigned char)*s) ? *s : '_';
	name[k] = '\0';
	char *body = safe ? xasprintf("%s/%s", queue_dir, id) : NULL;
	char *to = xasprintf("%s/%s", qdir, name);
	char *env = xasprintf("%s/%s.envelope", qdir, name);
	const char *step = NULL;
	if (mkdir(qdir, 0700) < 0 && errno != EEXIST)
		step = "mkdir";
	else if (write_envelope(db, id, env, why) < 0)
		step = "envelope";
	else if (body != NULL && rename(body, to) < 0 && errno != ENOENT)
		step = "rename";
	else if (fsync_dir(qdir) < 0 || fsync_dir(queue_dir) < 0)
		step = "fsync";
	else if (delete_rows(db, id) < 0)
		step = "database";
	bool ok = step == NULL;
	if (ok)
		log_err("event=queue_quarantine id=%s reason=\"%s\" path=%s", name, why, to);
	else /* left as it is; tried again at the next start */
		log_err("event=queue_error id=%s error=\"quarantine failed at %s: %s\"", name, step,
		        strerror(errno));
	free(body);
	free(to);
	free(env);
	return ok;
}

size_t queue_quarantine_scan(sqlite3 *db, const char *data_dir, const char *queue_dir)
{
	char *qdir = xasprintf("%s/quarantine", data_dir);
	sqlite3_stmt *m = prepare(db, "SELECT id, sender, created, size FROM message");
	sqlite3_stmt *r = prepare(db, "SELECT rcpt, domain, local_user, state, attempts FROM "
	                              "rcpt WHERE msg_id = ?");
	struct bad *bad = NULL;
	size_t n_bad = 0;
	char buf[256];
	while (m != NULL && r != NULL && sqlite3_step(m) == SQLITE_ROW) {
		const char *id = (const char *)sqlite3_column_text(m, 0);
		if (id == NULL)
			id = "";
		const char *why = envelope_problem(r, m, id);
		if (why == NULL) {
			char *path = xasprintf("%s/%s", queue_dir, id);
			char *moved = xasprintf("%s/%s", qdir, id);
			struct stat sb;
			if (stat(path, &sb) < 0 && errno == ENOENT && stat(moved, &sb) == 0)
				why = "finishing an interrupted quarantine";
			else
				why = body_problem(path, sqlite3_column_int64(m, 3), buf,
				                   sizeof(buf));
			free(path);
			free(moved);
		}
		if (why != NULL) {
			bad = xrealloc(bad, (n_bad + 1) * sizeof(*bad));
			bad[n_bad].id = xstrdup(id);
			bad[n_bad++].why = xstrdup(why);
		}
	}
	sqlite3_finalize(m);
	sqlite3_finalize(r);
	/* recipients whose message row is gone (foreign keys were off) */
	sqlite3_stmt *o = prepare(db, "SELECT DISTINCT msg_id FROM rcpt WHERE msg_id NOT IN "
	                              "(SELECT id FROM message)");
	while (o != NULL && sqlite3_step(o) == SQLITE_ROW) {
		const char *id = (const char *)sqlite3_column_text(o, 0);
		bad = xrealloc(bad, (n_bad + 1) * sizeof(*bad));
		bad[n_bad].id = xstrdup(id ? id : "");
		bad[n_bad++].why = xstrdup("recipients without a message");
	}
	sqlite3_finalize(o);

	size_t moved = 0;
	for (size_t i = 0; i < n_bad; i++) {
		if (quarantine(db, qdir, queue_dir, bad[i].id, bad[i].why))
			moved++;
		free(bad[i].id);
		free(bad[i].why);
	}
	free(bad);
	free(qdir);
	return moved;
}
