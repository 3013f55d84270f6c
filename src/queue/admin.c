/* queue/admin - strictmx queue list/show/flush/delete; see admin.h */
#include "queue/admin.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/xmalloc.h"

/* rcpt.state (queue.c); "arriving": committed, its settlement not yet done */
static const char *const state_names[] = {"queued", "delivered", "failed", "arriving"};

char *queue_admin_pidfile(const char *data_dir)
{
	return xasprintf("%s/strictmxd.pid", data_dir);
}

static sqlite3 *open_db(const char *data_dir, bool write, char *err, size_t errlen)
{
	char *path = xasprintf("%s/queue.db", data_dir);
	sqlite3 *db = NULL;
	struct stat sb;
	if (stat(path, &sb) < 0) {
		snprintf(err, errlen,
		         "%s: %s (no queue yet: has strictmxd run with this data_dir?)", path,
		         strerror(errno));
		free(path);
		return NULL;
	}
	int flags = write ? SQLITE_OPEN_READWRITE : SQLITE_OPEN_READONLY;
	if (sqlite3_open_v2(path, &db, flags, NULL) != SQLITE_OK) {
		snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(db));
		sqlite3_close(db);
		free(path);
		return NULL;
	}
	free(path);
	sqlite3_busy_timeout(db, 5000);
	sqlite3_exec(db, "PRAGMA foreign_keys=ON", NULL, NULL, NULL);
	return db;
}

static void iso_time(time_t t, char *buf, size_t len)
{
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static const char *col(sqlite3_stmt *st, int i)
{
	const char *s = (const char *)sqlite3_column_text(st, i);
	return s ? s : "";
}

/* rcpts_json - the recipients of one message as a JSON array */
static json_t *rcpts_json(sqlite3 *db, const char *id)
{
	json_t *arr = json_array();
	sqlite3_stmt *st;
	sqlite3_prepare_v2(db,
	                   "SELECT rcpt, state, attempts, next_try, status, reply, mx, detail "
	                   "FROM rcpt WHERE msg_id = ? ORDER BY rcpt",
	                   -1, &st, NULL);
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	while (sqlite3_step(st) == SQLITE_ROW) {
		char next[32];
		int state = sqlite3_column_int(st, 1);
		iso_time((time_t)sqlite3_column_int64(st, 3), next, sizeof(next));
		json_array_append_new(
		    arr,
		    json_pack("{s:s, s:s, s:i, s:s, s:s, s:s, s:s, s:s}", "address", col(st, 0),
		              "state", state >= 0 && state <= 3 ? state_names[state] : "?",
		              "attempts", sqlite3_column_int(st, 2), "next_attempt", next, "status",
		              col(st, 4), "reply", col(st, 5), "mx", col(st, 6), "reason",
		              col(st, 7)));
	}
	sqlite3_finalize(st);
	return arr;
}

int queue_admin_list(const char *data_dir, bool json, FILE *out, char *err, size_t errlen)
{
	sqlite3 *db = open_db(data_dir, false, err, errlen);
	if (db == NULL)
		return -1;
	sqlite3_stmt *st;
	sqlite3_prepare_v2(db, "SELECT id, sender, created, size FROM message ORDER BY created, id",
	                   -1, &st, NULL);
	json_t *arr = json_array();
	size_t n = 0;
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *id = col(st, 0);
		char when[32];
		iso_time((time_t)sqlite3_column_int64(st, 2), when, sizeof(when));
		json_t *rc = rcpts_json(db, id);
		if (json) {
			json_array_append_new(
			    arr,
			    json_pack("{s:s, s:s, s:s, s:I, s:o}", "id", id, "sender", col(st, 1),
			              "arrival", when, "size",
			              (json_int_t)sqlite3_column_int64(st, 3), "recipients", rc));
		} else {
			if (n == 0)
				fprintf(out, "%-20s %10s %-20s %s\n", "ID", "SIZE", "ARRIVAL",
				        "SENDER / RECIPIENTS");
			fprintf(out, "%-20s %10" PRId64 " %-20s <%s>\n", id,
			        (int64_t)sqlite3_column_int64(st, 3), when, col(st, 1));
			size_t i;
			json_t *r;
			json_array_foreach(rc, i, r)
			{
				const char *state = json_string_value(json_object_get(r, "state"));
				const char *reason =
				    json_string_value(json_object_get(r, "reason"));
				fprintf(out, "%53s<%s> %s", "",
				        json_string_value(json_object_get(r, "address")), state);
				if (!strcmp(state, "queued") && reason && *reason)
					fprintf(out, " (%s)", reason);
				fputc('\n', out);
			}
			json_decref(rc);
		}
		n++;
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	if (json) {
		char *s = json_dumps(arr, JSON_INDENT(2));
		fprintf(out, "%s\n", s);
		free(s);
	} else if (n == 0) {
		fprintf(out, "queue is empty\n");
	} else {
		fprintf(out, "-- %zu message%s in the queue\n", n, n == 1 ? "" : "s");
	}
	json_decref(arr);
	return 0;
}

int queue_admin_show(const char *data_dir, const char *id, bool json, FILE *out, char *err,
                     size_t errlen)
{
	sqlite3 *db = open_db(data_dir, false, err, errlen);
	if (db == NULL)
		return -1;
	sqlite3_stmt *st;
	sqlite3_prepare_v2(db,
	                   "SELECT id, sender, created, size, client_ip, tls FROM message "
	                   "WHERE id = ?",
	                   -1, &st, NULL);
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	if (sqlite3_step(st) != SQLITE_ROW) {
		snprintf(err, errlen, "no message %s in the queue", id);
		sqlite3_finalize(st);
		sqlite3_close(db);
		return -1;
	}
	char when[32];
	iso_time((time_t)sqlite3_column_int64(st, 2), when, sizeof(when));
	json_t *obj = json_pack("{s:s, s:s, s:s, s:I, s:s, s:b, s:o}", "id", col(st, 0), "sender",
	                        col(st, 1), "arrival", when, "size",
	                        (json_int_t)sqlite3_column_int64(st, 3), "client", col(st, 4),
	                        "tls", sqlite3_column_int(st, 5), "recipients", rcpts_json(db, id));
	sqlite3_finalize(st);
	sqlite3_close(db);
	if (json) {
		char *s = json_dumps(obj, JSON_INDENT(2));
		fprintf(out, "%s\n", s);
		free(s);
	} else {
		fprintf(
		    out,
		    "id:       %s\nsender:   <%s>\narrival:  %s\nsize:     %" JSON_INTEGER_FORMAT
		    "\nclient:   %s (%s)\n",
		    json_string_value(json_object_get(obj, "id")),
		    json_string_value(json_object_get(obj, "sender")), when,
		    json_integer_value(json_object_get(obj, "size")),
		    json_string_value(json_object_get(obj, "client")),
		    json_is_true(json_object_get(obj, "tls")) ? "TLS" : "no TLS");
		size_t i;
		json_t *r;
		json_array_foreach(json_object_get(obj, "recipients"), i, r)
		{
			fprintf(out, "rcpt:     <%s> %s, %" JSON_INTEGER_FORMAT " attempt(s)",
			        json_string_value(json_object_get(r, "address")),
			        json_string_value(json_object_get(r, "state")),
			        json_integer_value(json_object_get(r, "attempts")));
			const char *reason = json_string_value(json_object_get(r, "reason"));
			if (reason && *reason)
				fprintf(out, "\n          %s", reason);
			if (!strcmp(json_string_value(json_object_get(r, "state")), "queued"))
				fprintf(out, "\n          next attempt %s",
				        json_string_value(json_object_get(r, "next_attempt")));
			fputc('\n', out);
		}
	}
	json_decref(obj);
	return 0;
}

/* poke - tell a running daemon to look at the queue now */
static void poke(const char *data_dir, FILE *out)
{
	char *pidfile = queue_admin_pidfile(data_dir);
	FILE *f = fopen(pidfile, "r");
	long pid = 0;
	if (f && fscanf(f, "%ld", &pid) == 1 && pid > 1 && kill((pid_t)pid, SIGUSR1) == 0)
		fprintf(out, "strictmxd (pid %ld) notified\n", pid);
	else
		fprintf(out, "strictmxd is not running: the change applies at its next start\n");
	if (f)
		fclose(f);
	free(pidfile);
}

static int exec_write(const char *data_dir, const char *sql, const char *id, int *changes,
                      char *err, size_t errlen)
{
	sqlite3 *db = open_db(data_dir, true, err, errlen);
	if (db == NULL)
		return -1;
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
		snprintf(err, errlen, "%s", sqlite3_errmsg(db));
		sqlite3_close(db);
		return -1;
	}
	if (id)
		sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
	if (rc < 0)
		snprintf(err, errlen, "%s", sqlite3_errmsg(db));
	*changes = sqlite3_changes(db);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return rc;
}

int queue_admin_flush(const char *data_dir, FILE *out, char *err, size_t errlen)
{
	int n;
	if (exec_write(data_dir, "UPDATE rcpt SET next_try = 0 WHERE state = 0", NULL, &n, err,
	               errlen) < 0)
		return -1;
	fprintf(out, "%d recipient%s due now\n", n, n == 1 ? "" : "s");
	poke(data_dir, out);
	return 0;
}

int queue_admin_delete(const char *data_dir, const char *id, FILE *out, char *err, size_t errlen)
{
	int n;
	if (strspn(id, "0123456789BCDFGHJKLMNPQRSTVWXYZ") != strlen(id) || !*id) {
		snprintf(err, errlen, "'%s' is not a queue id", id);
		return -1;
	}
	if (exec_write(data_dir, "DELETE FROM message WHERE id = ?", id, &n, err, errlen) < 0)
		return -1;
	if (n == 0) {
		snprintf(err, errlen, "no message %s in the queue", id);
		return -1;
	}
	char *path = xasprintf("%s/queue/%s", data_dir, id);
	if (unlink(path) < 0 && errno != ENOENT)
		fprintf(out, "warning: unlink %s: %s\n", path, strerror(errno));
	free(path);
	fprintf(out, "deleted %s (no DSN is sent)\n", id);
	poke(data_dir, out);
	return 0;
}
