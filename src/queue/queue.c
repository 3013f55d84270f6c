/*
 * queue - durable queue, group commit, retry schedule; see queue.h and
 * docs/queue.md for the why.
 */
#include "queue/queue.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <dirent.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/config.h"
#include "common/fsyncpool.h"
#include "common/log.h"
#include "common/qid.h"
#include "common/worker.h"
#include "common/xmalloc.h"
#include "delivery/maildir.h"
#include "queue/dsn.h"
#include "queue/quarantine.h"

#define MAX_JOBS    200 /* deliveries in flight */
#define SCAN_LIMIT  1000
#define RESCAN_SECS 30 /* wake up at least this often (CLI changes) */
#define HEADERS_MAX 65536
#define SYNC_USECS  100000 /* results wait at most this long for an fsync */

enum rcpt_state { RS_QUEUED = 0, RS_DELIVERED = 1, RS_FAILED = 2 };

#define STMT_CACHE 32

/*
 * settlement - what a committed batch leaves to do: its messages' recipients
 * to make queued (confirm), the rows of those whose body failed (drop)
 */
struct settlement {
	struct strlist confirm, drop;
};

struct stmt_cache {
	const char *sql;
	sqlite3_stmt *st;
	bool busy;
};

struct pending {
	struct pending *next;
	char id[40];
	char *sender, *client_ip;
	bool tls;
	uint64_t size;
	size_t n;
	char **addr, **domain, **user;
	struct maildir_msg *spool;
	queue_commit_fn cb;
	void *arg;
	bool file_ok; /* stage 1: the body is in the queue directory, fsync'd */
	bool ok;      /* both stages: the message is durable (set on the loop) */
	char err[256];
	char *body_path;
};

struct active_job {
	struct active_job *next;
	struct queue_job job;
	struct queue_rcpt_result *results; /* set when done, until committed */
	bool committing;                   /* its results are with the worker */
};

struct queue {
	struct event_base *base;
	const struct config *cfg;
	sqlite3 *db;
	char *dir;       /* data_dir/queue */
	char *spool_dir; /* data_dir/spool: delivered bodies are recycled there */
	struct pending *pending, **pending_tail;
	bool in_commit;    /* a batch is being committed (both stages) */
	struct worker *fw; /* the commit's first stage: bodies to disk */
	struct worker *w;  /* owns the database while the loop runs */
	bool scan_busy, scan_again;
	struct event *commit_ev;
	struct event *sched_ev;
	struct event *results_ev; /* commits finished jobs' results, grouped */
	struct event *sync_ev;    /* makes results durable when no commit does */
	struct event *settle_ev;  /* settles on its own when no batch comes */
	/* loop: committed batches' settlement, for the next batch to carry */
	struct settlement settle;
	char *wal_path; /* queue.db-wal */
	/* worker thread: messages whose rows' deletion is committed but not yet
	 * fsync'd; their bodies go once it is (flush_unsynced) */
	char **unsynced;
	size_t n_unsynced, cap_unsynced;
	struct stmt_cache stmts[STMT_CACHE];
	struct active_job *active;
	size_t n_active;
	uint64_t next_job;
	queue_deliver_fn deliver;
	void *deliver_arg;
	bool in_scan;
};

static const char SCHEMA[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA foreign_keys=ON;"
    "CREATE TABLE IF NOT EXISTS message ("
    " id TEXT PRIMARY KEY, sender TEXT NOT NULL, created INTEGER NOT NULL,"
    " size INTEGER NOT NULL, client_ip TEXT, tls INTEGER NOT NULL DEFAULT 0,"
    " warned INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS rcpt ("
    " msg_id TEXT NOT NULL REFERENCES message(id) ON DELETE CASCADE,"
    " rcpt TEXT NOT NULL, domain TEXT NOT NULL, local_user TEXT,"
    " state INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,"
    " next_try INTEGER NOT NULL, last_try INTEGER, status TEXT, reply TEXT, mx TEXT,"
    " detail TEXT, PRIMARY KEY (msg_id, rcpt));"
    "CREATE INDEX IF NOT EXISTS rcpt_due ON rcpt(state, next_try);";

/*
 * Recipient states (rcpt.state): 0 queued, 1 delivered, 2 failed, and
 * ARRIVING: written by the commit while its bodies are still on their way to
 * the disk (the two stages run at once); made 0 once both stages are done,
 * or by recovery when the body turns out whole (see recover_arriving).
 */
#define RCPT_ARRIVING_SQL "3"

static void schedule_commit(struct queue *q);
static void schedule_scan(struct queue *q, time_t when);
static void remove_body(struct queue *q, const char *msg_id);
static void run(struct queue *q, worker_fn work, worker_fn done, void *arg);

void queue_new_id(char out[32])
{
	qid_new(out);
}

static int db_exec(struct queue *q, const char *sql)
{
	char *msg = NULL;
	if (sqlite3_exec(q->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		log_err("event=queue_db_error sql=\"%.40s\" error=\"%s\"", sql, msg ? msg : "?");
		sqlite3_free(msg);
		return -1;
	}
	return 0;
}

/*
 * prep / unprep - prepared statements are kept and reused (compiling SQL was
 * about a tenth of the CPU per message). Keyed by the SQL text's address:
 * every statement here is a string literal. A statement already in use
 * (nested use of the same SQL) gets a fresh, uncached one.
 */
static sqlite3_stmt *prep(struct queue *q, const char *sql)
{
	struct stmt_cache *free_slot = NULL;
	for (size_t i = 0; i < STMT_CACHE; i++) {
		struct stmt_cache *c = &q->stmts[i];
		if (c->sql == sql && !c->busy) {
			sqlite3_reset(c->st);
			sqlite3_clear_bindings(c->st);
			c->busy = true;
			return c->st;
		}
		if (c->sql == NULL && free_slot == NULL)
			free_slot = c;
	}
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v3(q->db, sql, -1, free_slot ? SQLITE_PREPARE_PERSISTENT : 0, &st,
	                       NULL) != SQLITE_OK)
		fatal("queue: prepare \"%s\": %s", sql, sqlite3_errmsg(q->db));
	if (free_slot) {
		free_slot->sql = sql;
		free_slot->st = st;
		free_slot->busy = true;
	}
	return st;
}

static void unprep(struct queue *q, sqlite3_stmt *st)
{
	for (size_t i = 0; i < STMT_CACHE; i++)
		if (q->stmts[i].st == st) {
			sqlite3_reset(st);
			q->stmts[i].busy = false;
			return;
		}
	sqlite3_finalize(st);
}

static char *body_path(struct queue *q, const char *id)
{
	return xasprintf("%s/%s", q->dir, id);
}

/* ---- submission and group commit ---- */

static void pending_free(struct pending *p)
{
	for (size_t i = 0; i < p->n; i++) {
		free(p->addr[i]);
		free(p->domain[i]);
		free(p->user[i]);
	}
	free(p->addr);
	free(p->domain);
	free(p->user);
	free(p->sender);
	free(p->client_ip);
	free(p->body_path);
	maildir_abort(&p->spool);
	free(p);
}

void queue_submit(struct queue *q, const struct queue_msg_in *m, struct maildir_msg **spool,
                  queue_commit_fn cb, void *arg)
{
	struct pending *p = xcalloc(1, sizeof(*p));
	snprintf(p->id, sizeof(p->id), "%s", m->id);
	p->sender = xstrdup(m->sender);
	p->client_ip = xstrdup(m->client_ip ? m->client_ip : "");
	p->tls = m->tls;
	p->size = m->size;
	p->n = m->n_rcpts;
	p->addr = xcalloc(p->n, sizeof(char *));
	p->domain = xcalloc(p->n, sizeof(char *));
	p->user = xcalloc(p->n, sizeof(char *));
	for (size_t i = 0; i < p->n; i++) {
		p->addr[i] = xstrdup(m->rcpts[i].addr);
		p->domain[i] = xstrdup(m->rcpts[i].domain);
		p->user[i] = m->rcpts[i].local_user ? xstrdup(m->rcpts[i].local_user) : NULL;
	}
	p->spool = *spool;
	*spool = NULL;
	p->cb = cb;
	p->arg = arg;
	*q->pending_tail = p;
	q->pending_tail = &p->next;
	schedule_commit(q);
}

/*
 * insert_message - rows for one message inside the open transaction; its
 * recipients ARRIVING (a commit whose bodies may still be on their way) or
 * queued (a DSN, whose body is already durable)
 */
static int insert_message(struct queue *q, const struct pending *p, time_t now, bool arriving)
{
	sqlite3_stmt *m = prep(q, "INSERT INTO message (id, sender, created, size, client_ip, "
	                          "tls) VALUES (?,?,?,?,?,?)");
	sqlite3_bind_text(m, 1, p->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(m, 2, p->sender, -1, SQLITE_STATIC);
	sqlite3_bind_int64(m, 3, now);
	sqlite3_bind_int64(m, 4, (sqlite3_int64)p->size);
	sqlite3_bind_text(m, 5, p->client_ip, -1, SQLITE_STATIC);
	sqlite3_bind_int(m, 6, p->tls);
	int rc = sqlite3_step(m) == SQLITE_DONE ? 0 : -1;
	unprep(q, m);
	if (rc < 0)
		return -1;
	sqlite3_stmt *r =
	    arriving ? prep(q, "INSERT OR IGNORE INTO rcpt (msg_id, rcpt, domain, local_user, "
	                       "next_try, state) VALUES (?,?,?,?,?," RCPT_ARRIVING_SQL ")")
	             : prep(q, "INSERT OR IGNORE INTO rcpt (msg_id, rcpt, domain, local_user, "
	                       "next_try, state) VALUES (?,?,?,?,?,0)");
	for (size_t i = 0; i < p->n && rc == 0; i++) {
		sqlite3_reset(r);
		sqlite3_bind_text(r, 1, p->id, -1, SQLITE_STATIC);
		sqlite3_bind_text(r, 2, p->addr[i], -1, SQLITE_STATIC);
		sqlite3_bind_text(r, 3, p->domain[i], -1, SQLITE_STATIC);
		if (p->user[i])
			sqlite3_bind_text(r, 4, p->user[i], -1, SQLITE_STATIC);
		else
			sqlite3_bind_null(r, 4);
		sqlite3_bind_int64(r, 5, now);
		if (sqlite3_step(r) != SQLITE_DONE)
			rc = -1;
	}
	unprep(q, r);
	return rc;
}

/*
 * The group commit, in two stages that run at the same time. Stage 1, on the
 * file worker: every body of the batch renamed into the queue directory,
 * then the bodies and the directory fsync'd at once (concurrent fsyncs share
 * device flushes, common/fsyncpool.h). Stage 2, on the database worker: one
 * transaction inserts every envelope of the batch, its recipients ARRIVING
 * (the body may not be on the disk yet, so nothing delivers them). When both
 * are done, on the loop, every waiting session hears the verdict: 250 only
 * for a message whose body and rows are both durable. The settlement - those
 * recipients made queued, the rows of messages whose body failed removed -
 * rides in the next batch's transaction, or, when no batch comes within
 * SETTLE_MS, in one of its own without an fsync (settle_work). A crash before
 * it is durable leaves ARRIVING rows: recovery keeps the ones whose body is
 * whole (the 250 may have been sent) and drops the others (it was not).
 * One batch at a time: what arrives meanwhile forms the next. docs/queue.md.
 */
struct batch {
	struct queue *q;
	struct pending *list;
	bool db_ok;               /* stage 2 committed */
	int stages;               /* stages still running */
	struct settlement settle; /* earlier batches', carried by this one's transaction */
};

static void files_work(void *arg)
{
	struct batch *b = arg;
	struct queue *q = b->q;

	size_t n = 0;
	for (struct pending *p = b->list; p; p = p->next)
		n++;
	int *fds = xcalloc(n + 1, sizeof(int));
	int *errs = xcalloc(n + 1, sizeof(int));
	struct pending **who = xcalloc(n + 1, sizeof(*who));
	size_t nf = 0;
	for (struct pending *p = b->list; p; p = p->next) {
		int fd = maildir_spool_fd(p->spool);
		if (fd < 0) {
			char err[256];
			maildir_spool_finish(p->spool, err, sizeof(err));
			snprintf(p->err, sizeof(p->err), "%s", err);
			continue;
		}
		p->body_path = body_path(q, p->id);
		if (rename(maildir_spool_path(p->spool), p->body_path) < 0) {
			snprintf(p->err, sizeof(p->err), "rename %s: %s", p->body_path,
			         strerror(errno));
			free(p->body_path);
			p->body_path = NULL;
			continue;
		}
		maildir_spool_moved(p->spool); /* unlinked below if it fails */
		who[nf] = p;
		fds[nf++] = fd;
	}
	bool dir_ok = true;
	int dirfd = -1;
	if (nf) {
		dirfd = open(q->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dirfd < 0) {
			log_err("event=queue_error error=\"open %s: %s\"", q->dir, strerror(errno));
			dir_ok = false;
		} else {
			fds[nf] = dirfd;
		}
		fsync_all(fds, dirfd >= 0 ? nf + 1 : nf, errs);
		if (dirfd >= 0 && errs[nf]) {
			log_err("event=queue_error error=\"fsync %s: %s\"", q->dir,
			        strerror(errs[nf]));
			dir_ok = false;
		}
		if (dirfd >= 0)
			close(dirfd);
	}
	for (size_t i = 0; i < nf; i++) {
		struct pending *p = who[i];
		char err[256];
		if (maildir_spool_close(p->spool, errs[i], err, sizeof(err)) < 0) {
			snprintf(p->err, sizeof(p->err), "%s", err);
			unlink(p->body_path);
			continue;
		}
		if (!dir_ok) {
			/* its name in the queue directory is not durable */
			snprintf(p->err, sizeof(p->err), "fsync of the queue directory failed");
			unlink(p->body_path);
			continue;
		}
		p->file_ok = true;
	}
	free(fds);
	free(errs);
	free(who);
}

/*
 * Results (deliveries, deferrals, failures) are committed without an fsync
 * of their own (synchronous=NORMAL): the next message commit's fsync of the
 * WAL, or sync_work's when none comes, makes them durable. Until then a body
 * whose rows were deleted stays in the queue directory, so a power loss can
 * bring a delivered message back, to be delivered again (Postfix, which
 * unlinks its queue files without an fsync, has the same window), but never
 * a row without its body.
 */
static void flush_unsynced(struct queue *q)
{
	for (size_t i = 0; i < q->n_unsynced; i++) {
		remove_body(q, q->unsynced[i]);
		free(q->unsynced[i]);
	}
	q->n_unsynced = 0;
}

/* sync_work - on the worker: fsync the WAL, then remove what waited for it */
static void sync_work(void *arg)
{
	struct queue *q = arg;
	if (q->n_unsynced == 0)
		return;
	int fd = open(q->wal_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fdatasync(fd) < 0) {
		/* the bodies stay; the next message commit or sync tries again */
		log_err("event=queue_error error=\"fsync %s: %s\"", q->wal_path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	close(fd);
	flush_unsynced(q);
}

static void sync_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct queue *q = arg;
	run(q, sync_work, NULL, q);
}

/* settle_rows - inside an open transaction: confirm queued, drop gone */
static bool settle_rows(struct queue *q, const struct settlement *set)
{
	bool ok = true;
	if (set->confirm.n) {
		sqlite3_stmt *c = prep(
		    q, "UPDATE rcpt SET state = 0 WHERE msg_id = ? AND state = " RCPT_ARRIVING_SQL);
		for (size_t i = 0; ok && i < set->confirm.n; i++) {
			sqlite3_reset(c);
			sqlite3_bind_text(c, 1, set->confirm.v[i], -1, SQLITE_STATIC);
			ok = sqlite3_step(c) == SQLITE_DONE;
		}
		unprep(q, c);
	}
	if (ok && set->drop.n) {
		sqlite3_stmt *d = prep(q, "DELETE FROM message WHERE id = ?");
		for (size_t i = 0; ok && i < set->drop.n; i++) {
			sqlite3_reset(d);
			sqlite3_bind_text(d, 1, set->drop.v[i], -1, SQLITE_STATIC);
			ok = sqlite3_step(d) == SQLITE_DONE;
		}
		unprep(q, d);
	}
	return ok;
}

/*
 * db_work - stage 2, beside stage 1: the rows of every message of the batch,
 * ARRIVING, and the settlement of the batches before. It reads only what
 * queue_submit() and commit_cb set and writes only db_ok, so it shares
 * nothing with files_work.
 */
static void db_work(void *arg)
{
	struct batch *b = arg;
	struct queue *q = b->q;
	time_t now = time(NULL);
	bool ok = db_exec(q, "BEGIN IMMEDIATE") == 0;
	if (ok && !settle_rows(q, &b->settle)) {
		log_err("event=queue_db_error error=\"settling: %s\"", sqlite3_errmsg(q->db));
		ok = false;
	}
	for (struct pending *p = b->list; ok && p; p = p->next)
		if (insert_message(q, p, now, true) < 0) {
			log_err("event=queue_db_error id=%s error=\"%s\"", p->id,
			        sqlite3_errmsg(q->db));
			ok = false;
		}
	if (ok)
		ok = db_exec(q, "COMMIT") == 0;
	if (!ok)
		db_exec(q, "ROLLBACK");
	else
		flush_unsynced(q); /* that COMMIT's fsync made them durable */
	b->db_ok = ok;
}

/* ---- the settlement when no batch carries it ---- */

#define SETTLE_MS       10   /* how long a settlement waits for a batch to carry it */
#define SETTLE_RETRY_MS 1000 /* after a settlement failed */

struct settle {
	struct queue *q;
	struct settlement set;
	bool ok;
};

/* settle_take - the loop's waiting settlement, moved out (nothing waits after it) */
static struct settlement settle_take(struct queue *q)
{
	struct settlement set = q->settle;
	memset(&q->settle, 0, sizeof(q->settle));
	if (q->settle_ev)
		event_del(q->settle_ev);
	return set;
}

/* settle_arm - settle_cb in ms, if a settlement waits and no timer is set */
static void settle_arm(struct queue *q, int ms)
{
	if ((q->settle.confirm.n || q->settle.drop.n) &&
	    !event_pending(q->settle_ev, EV_TIMEOUT, NULL)) {
		struct timeval tv = {ms / 1000, (suseconds_t)(ms % 1000) * 1000};
		event_add(q->settle_ev, &tv);
	}
}

static void settlement_free(struct settlement *set)
{
	strlist_free(&set->confirm);
	strlist_free(&set->drop);
}

/*
 * settled - a transaction that carried set is over: committed, the confirmed
 * recipients can be delivered; if not, set waits again for a batch to carry
 * it, or retry_ms for settle_cb. set is emptied either way.
 */
static void settled(struct queue *q, bool committed, struct settlement *set, int retry_ms)
{
	if (committed && set->confirm.n)
		schedule_scan(q, 0);
	if (!committed) {
		for (size_t i = 0; i < set->confirm.n; i++)
			strlist_add(&q->settle.confirm, set->confirm.v[i]);
		for (size_t i = 0; i < set->drop.n; i++)
			strlist_add(&q->settle.drop, set->drop.v[i]);
	}
	settlement_free(set);
	settle_arm(q, retry_ms);
}

static void settle_work(void *arg)
{
	struct settle *st = arg;
	struct queue *q = st->q;
	/* no fsync of its own, like the results: recovery settles what is lost */
	bool ok =
	    db_exec(q, "PRAGMA synchronous=NORMAL") == 0 && db_exec(q, "BEGIN IMMEDIATE") == 0;
	if (ok)
		ok = settle_rows(q, &st->set);
	if (ok && db_exec(q, "COMMIT") < 0)
		ok = false;
	if (!ok) {
		log_err("event=queue_db_error error=\"settling: %s\"", sqlite3_errmsg(q->db));
		db_exec(q, "ROLLBACK");
	}
	if (db_exec(q, "PRAGMA synchronous=FULL") < 0)
		log_err("event=queue_db_error error=\"%s\"", sqlite3_errmsg(q->db));
	st->ok = ok;
}

static void settle_done(void *arg)
{
	struct settle *st = arg;
	settled(st->q, st->ok, &st->set, SETTLE_RETRY_MS);
	free(st);
}

static void settle_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct queue *q = arg;
	if (q->in_commit)
		return; /* the batch in flight ends in commit_done, which hands it on */
	if (q->settle.confirm.n + q->settle.drop.n == 0)
		return;
	struct settle *st = xcalloc(1, sizeof(*st));
	st->q = q;
	st->set = settle_take(q);
	run(q, settle_work, settle_done, st);
}

/*
 * commit_done - on the loop, once both stages of the batch are done: the
 * verdicts; the settlement goes with the next batch (or after SETTLE_MS)
 */
static void commit_done(struct batch *b)
{
	struct queue *q = b->q;
	size_t n = 0;
	for (struct pending *p = b->list; p; p = p->next)
		n++;
	/* what this batch carried is done, or still to do */
	settled(q, b->db_ok, &b->settle, SETTLE_MS);
	for (struct pending *p = b->list; p; p = p->next) {
		p->ok = p->file_ok && b->db_ok;
		if (p->ok) {
			strlist_add(&q->settle.confirm, p->id);
			log_info("event=queued id=%s from=<%s> rcpts=%zu size=%" PRIu64
			         " batch=%zu",
			         p->id, p->sender, p->n, p->size, n);
		} else {
			if (b->db_ok) /* its rows are in, its body is not */
				strlist_add(&q->settle.drop, p->id);
			if (p->file_ok) {
				snprintf(p->err, sizeof(p->err), "queue database write failed");
				unlink(p->body_path);
			}
			log_err("event=queue_failed id=%s error=\"%s\"", p->id, p->err);
		}
	}
	for (struct pending *p = b->list; p;) {
		struct pending *next = p->next;
		if (p->cb)
			p->cb(p->arg, p->ok, p->err);
		pending_free(p);
		p = next;
	}
	free(b);
	q->in_commit = false;
	if (q->pending)
		schedule_commit(q); /* that batch carries the settlement */
	else
		settle_arm(q, SETTLE_MS);
}

static void stage_done(void *arg)
{
	struct batch *b = arg;
	if (--b->stages == 0)
		commit_done(b);
}

static void commit_cb(evutil_socket_t fd, short what, void *arg)
{
	struct queue *q = arg;
	(void)fd;
	(void)what;
	if (q->pending == NULL || q->in_commit)
		return; /* commit_done starts the next batch */
	struct batch *b = xcalloc(1, sizeof(*b));
	b->q = q;
	b->list = q->pending;
	q->pending = NULL;
	q->pending_tail = &q->pending;
	q->in_commit = true;
	b->settle = settle_take(q);
	b->stages = 2;
	if (q->fw && q->w) {
		worker_submit(q->fw, files_work, stage_done, b);
		worker_submit(q->w, db_work, stage_done, b);
	} else {
		/* no workers (shutdown): one after the other, here */
		files_work(b);
		db_work(b);
		b->stages = 1;
		stage_done(b);
	}
}

/* run - blocking work on the database worker, or here when there is none;
 * done (may be NULL) then runs on the loop */
static void run(struct queue *q, worker_fn work, worker_fn done, void *arg)
{
	if (q->w)
		worker_submit(q->w, work, done, arg);
	else {
		work(arg);
		if (done)
			done(arg);
	}
}

static void schedule_commit(struct queue *q)
{
	if (!event_pending(q->commit_ev, EV_TIMEOUT, NULL)) {
		/* after this turn of the loop: whatever else completes in it shares
		 * the commit */
		struct timeval tv = {0, 0};
		event_add(q->commit_ev, &tv);
	}
}

/* ---- scheduling ---- */

static bool rcpt_active(struct queue *q, const char *msg_id, const char *rcpt)
{
	for (struct active_job *a = q->active; a; a = a->next) {
		if (strcmp(a->job.msg_id, msg_id) != 0)
			continue;
		for (size_t i = 0; i < a->job.n_rcpts; i++)
			if (strcmp(a->job.rcpts[i], rcpt) == 0)
				return true;
	}
	return false;
}

/* domain_active - remote jobs for domain in flight, and being started by this
 * scan (building): max_connections_per_domain counts both */
static size_t domain_active(struct queue *q, const struct active_job *building, const char *domain)
{
	size_t n = 0;
	for (struct active_job *a = q->active; a; a = a->next)
		if (!a->job.local && strcmp(a->job.domain, domain) == 0)
			n++;
	for (const struct active_job *a = building; a; a = a->next)
		if (!a->job.local && strcmp(a->job.domain, domain) == 0)
			n++;
	return n;
}

static void job_free(struct active_job *a)
{
	for (size_t i = 0; i < a->job.n_rcpts; i++) {
		free(a->job.rcpts[i]);
		free(a->job.local_users[i]);
	}
	free(a->job.rcpts);
	free(a->job.local_users);
	free(a->job.sender);
	free(a->job.body_path);
	free(a->job.domain);
	free(a->results);
	free(a);
}

static struct active_job *find_building(struct active_job *list, const char *msg_id,
                                        const char *domain)
{
	for (struct active_job *a = list; a; a = a->next)
		if (!strcmp(a->job.msg_id, msg_id) && !strcmp(a->job.domain, domain))
			return a;
	return NULL;
}

/*
 * The scan, in two halves: scan_work reads due rows on the worker thread
 * (the database is the worker's); scan_done, on the loop, skips what is in
 * flight, groups the rest into jobs and starts them. Work items run in
 * order, so a scan never sees a row as due whose result is still being
 * committed without that job still being in the active list.
 */
struct scan_row {
	char *msg_id, *rcpt, *domain, *user, *sender;
	unsigned attempts;
	uint64_t size;
};

struct scan_req {
	struct queue *q;
	time_t now;
	struct scan_row *rows;
	size_t n;
	bool have_min;
	time_t min_next;
};

static char *col_dup(sqlite3_stmt *st, int c)
{
	const char *v = (const char *)sqlite3_column_text(st, c);
	return v ? xstrdup(v) : NULL;
}

static void scan_work(void *arg)
{
	struct scan_req *r = arg;
	struct queue *q = r->q;
	sqlite3_stmt *st = prep(q, "SELECT r.msg_id, r.rcpt, r.domain, r.local_user, r.attempts, "
	                           "m.sender, m.size FROM rcpt r JOIN message m ON m.id = r.msg_id "
	                           "WHERE r.state = 0 AND r.next_try <= ? ORDER BY r.next_try, "
	                           "r.msg_id LIMIT ?");
	sqlite3_bind_int64(st, 1, r->now);
	sqlite3_bind_int(st, 2, SCAN_LIMIT);
	while (sqlite3_step(st) == SQLITE_ROW) {
		r->rows = xrealloc(r->rows, (r->n + 1) * sizeof(*r->rows));
		struct scan_row *row = &r->rows[r->n++];
		row->msg_id = col_dup(st, 0);
		row->rcpt = col_dup(st, 1);
		row->domain = col_dup(st, 2);
		row->user = col_dup(st, 3);
		row->attempts = (unsigned)sqlite3_column_int(st, 4);
		row->sender = col_dup(st, 5);
		row->size = (uint64_t)sqlite3_column_int64(st, 6);
		if (!row->msg_id || !row->rcpt || !row->domain || !row->sender) {
			/* NOT NULL columns: only a damaged database gets here */
			free(row->msg_id);
			free(row->rcpt);
			free(row->domain);
			free(row->user);
			free(row->sender);
			r->n--;
		}
	}
	unprep(q, st);
	st = prep(q, "SELECT MIN(next_try) FROM rcpt WHERE state = 0");
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
		r->have_min = true;
		r->min_next = (time_t)sqlite3_column_int64(st, 0);
	}
	unprep(q, st);
}

static void scan_done(void *arg)
{
	struct scan_req *r = arg;
	struct queue *q = r->q;
	time_t now = r->now;
	struct active_job *building = NULL;
	size_t n_new = 0;
	for (size_t i = 0; i < r->n; i++) {
		struct scan_row *row = &r->rows[i];
		if (q->deliver == NULL || rcpt_active(q, row->msg_id, row->rcpt))
			continue;
		struct active_job *a = find_building(building, row->msg_id, row->domain);
		if (a == NULL) {
			if (q->n_active + n_new >= MAX_JOBS)
				continue;
			if (row->user == NULL && domain_active(q, building, row->domain) >=
			                             q->cfg->max_connections_per_domain)
				continue;
			a = xcalloc(1, sizeof(*a));
			a->job.job_id = ++q->next_job;
			snprintf(a->job.msg_id, sizeof(a->job.msg_id), "%s", row->msg_id);
			a->job.sender = xstrdup(row->sender);
			a->job.size = row->size;
			a->job.body_path = body_path(q, row->msg_id);
			a->job.domain = xstrdup(row->domain);
			a->job.local = row->user != NULL;
			a->job.attempts = row->attempts;
			a->next = building;
			building = a;
			n_new++;
		}
		a->job.rcpts = xrealloc(a->job.rcpts, (a->job.n_rcpts + 1) * sizeof(char *));
		a->job.local_users =
		    xrealloc(a->job.local_users, (a->job.n_rcpts + 1) * sizeof(char *));
		a->job.rcpts[a->job.n_rcpts] = xstrdup(row->rcpt);
		a->job.local_users[a->job.n_rcpts] = row->user ? xstrdup(row->user) : NULL;
		a->job.n_rcpts++;
	}
	for (size_t i = 0; i < r->n; i++) {
		free(r->rows[i].msg_id);
		free(r->rows[i].rcpt);
		free(r->rows[i].domain);
		free(r->rows[i].user);
		free(r->rows[i].sender);
	}
	free(r->rows);

	/* move to the active list first: a deliverer may finish synchronously */
	while (building) {
		struct active_job *a = building;
		building = a->next;
		a->next = q->active;
		q->active = a;
		q->n_active++;
		log_info("event=attempt id=%s job=%" PRIu64 " domain=%s rcpts=%zu attempt=%u",
		         a->job.msg_id, a->job.job_id, a->job.domain, a->job.n_rcpts,
		         a->job.attempts + 1);
		q->deliver(q->deliver_arg, q, &a->job);
	}

	/* next wake-up: the earliest retry, at most RESCAN_SECS away */
	time_t next = now + RESCAN_SECS;
	if (r->have_min) {
		time_t t = r->min_next;
		if (t > now && t < next)
			next = t;
		else if (t <= now)
			/* due rows remain (more than one scan's worth, new DSNs, or
			 * throttled per domain): look again at once, or in a second
			 * when this scan could start nothing */
			next = n_new ? now : now + 1;
	}
	free(r);
	q->scan_busy = false;
	if (q->scan_again) {
		q->scan_again = false;
		next = now;
	}
	schedule_scan(q, next);
}

static void scan_cb(evutil_socket_t fd, short what, void *arg)
{
	struct queue *q = arg;
	if (q->deliver == NULL)
		return;
	if (q->scan_busy) {
		q->scan_again = true; /* scan_done looks again at once */
		return;
	}
	q->scan_busy = true;
	struct scan_req *r = xcalloc(1, sizeof(*r));
	r->q = q;
	r->now = time(NULL);
	run(q, scan_work, scan_done, r);
}

static void schedule_scan(struct queue *q, time_t when)
{
	time_t now = time(NULL);
	struct timeval tv = {.tv_sec = when > now ? when - now : 0};
	event_del(q->sched_ev);
	event_add(q->sched_ev, &tv);
}

void queue_kick(struct queue *q)
{
	schedule_scan(q, 0);
}

/* ---- results, retries, DSNs ---- */

static unsigned backoff(const struct config *c, unsigned attempts)
{
	/* retry_min, doubling, at most retry_max apart */
	uint64_t d = c->retry_min;
	for (unsigned i = 1; i < attempts && d < c->retry_max; i++)
		d *= 2;
	return (unsigned)(d > c->retry_max ? c->retry_max : d);
}

/* read_headers - the header block of a body file (for the DSN), bounded */
static char *read_headers(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	*len = 0;
	if (fd < 0)
		return NULL;
	char *buf = xmalloc(HEADERS_MAX + 1);
	ssize_t n = read(fd, buf, HEADERS_MAX);
	close(fd);
	if (n <= 0) {
		free(buf);
		return NULL;
	}
	buf[n] = '\0';
	char *end = strstr(buf, "\r\n\r\n");
	*len = end ? (size_t)(end - buf) + 2 : (size_t)n;
	return buf;
}

/* write_body - a new queue file (DSN), durable before its row is committed */
static int write_body(struct queue *q, const char *id, const char *data, size_t len)
{
	char *tmp = xasprintf("%s/.tmp.%s", q->dir, id), *path = body_path(q, id);
	int rc = -1;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd >= 0) {
		size_t off = 0;
		while (off < len) {
			ssize_t w = write(fd, data + off, len - off);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				break;
			off += (size_t)w;
		}
		if (off == len && fsync(fd) == 0 && close(fd) == 0) {
			fd = -1;
			if (rename(tmp, path) == 0 && fsync_dir(q->dir) == 0)
				rc = 0;
		}
		if (fd >= 0)
			close(fd);
	}
	if (rc < 0) {
		log_err("event=queue_error error=\"writing %s: %s\"", path, strerror(errno));
		unlink(tmp);
	}
	free(tmp);
	free(path);
	return rc;
}

/*
 * send_dsn - queue a DSN to sender for the given recipients. Never for the
 * null sender (RFC 5321 §6.1: no bounce loops). Runs inside the caller's
 * transaction.
 */
static void send_dsn(struct queue *q, const char *msg_id, const char *sender, time_t created,
                     bool delayed, const struct dsn_rcpt *rcpts, size_t n)
{
	if (sender == NULL || *sender == '\0' || n == 0)
		return;
	char id[32], boundary[64], msgid[128];
	queue_new_id(id);
	snprintf(boundary, sizeof(boundary), "%s/%s", id, q->cfg->hostname);
	snprintf(msgid, sizeof(msgid), "%s@%s", id, q->cfg->hostname);
	char *orig_path = body_path(q, msg_id);
	size_t hlen;
	char *headers = read_headers(orig_path, &hlen);
	free(orig_path);
	struct dsn_input in = {
	    .delayed = delayed,
	    .reporting_mta = q->cfg->hostname,
	    .queue_id = msg_id,
	    .sender = sender,
	    .info_url = q->cfg->info_url,
	    .arrival = created,
	    .rcpts = rcpts,
	    .n_rcpts = n,
	    .orig_headers = headers,
	    .orig_headers_len = hlen,
	    .message_id = msgid,
	    .boundary = boundary,
	    .now = time(NULL),
	};
	size_t len;
	char *text = dsn_build(&in, &len);
	free(headers);
	if (write_body(q, id, text, len) < 0) {
		free(text);
		return;
	}
	free(text);

	/* the DSN's recipient: local when the sender's domain is ours */
	const char *at = strrchr(sender, '@');
	char domain[256] = "", user[130] = "";
	if (at) {
		snprintf(domain, sizeof(domain), "%s", at + 1);
		for (char *c = domain; *c; c++)
			*c = (char)tolower((unsigned char)*c);
		size_t ul = (size_t)(at - sender) < sizeof(user) - 1 ? (size_t)(at - sender)
		                                                     : sizeof(user) - 1;
		for (size_t i = 0; i < ul; i++)
			user[i] = (char)tolower((unsigned char)sender[i]);
		user[ul] = '\0';
	}
	bool local = strlist_contains_ci(&q->cfg->local_domains, domain);
	struct pending p = {.sender = "", .client_ip = "", .size = len, .n = 1};
	snprintf(p.id, sizeof(p.id), "%s", id);
	char *addr = xstrdup(sender), *dom = xstrdup(domain), *usr = local ? xstrdup(user) : NULL;
	p.addr = &addr;
	p.domain = &dom;
	p.user = &usr;
	if (insert_message(q, &p, time(NULL), false) < 0)
		log_err("event=queue_db_error id=%s error=\"%s\"", id, sqlite3_errmsg(q->db));
	else
		log_info("event=dsn id=%s orig=%s to=<%s> action=%s rcpts=%zu", id, msg_id, sender,
		         delayed ? "delayed" : "failed", n);
	free(addr);
	free(dom);
	free(usr);
}

/* finish_message - all recipients final: failure DSN, then forget it */
/*
 * finish_message - inside the caller's transaction. Returns true when the
 * message's rows were deleted: the caller removes the body file only AFTER
 * its COMMIT (remove_body), so a crash in between never leaves a row whose
 * body is gone.
 */
static bool finish_message(struct queue *q, const char *msg_id)
{
	sqlite3_stmt *st = prep(q, "SELECT COUNT(*) FROM rcpt WHERE msg_id = ? AND state = 0");
	sqlite3_bind_text(st, 1, msg_id, -1, SQLITE_STATIC);
	int left = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : 1;
	unprep(q, st);
	if (left > 0)
		return false;

	st = prep(q, "SELECT m.sender, m.created, r.rcpt, r.status, r.reply, r.mx, r.detail, "
	             "r.last_try FROM rcpt r JOIN message m ON m.id = r.msg_id WHERE r.msg_id = ? "
	             "AND r.state = 2");
	sqlite3_bind_text(st, 1, msg_id, -1, SQLITE_STATIC);
	struct dsn_rcpt *rs = NULL;
	size_t n = 0;
	char *sender = NULL;
	time_t created = 0;
	while (sqlite3_step(st) == SQLITE_ROW) {
		if (sender == NULL) {
			sender = xstrdup((const char *)sqlite3_column_text(st, 0));
			created = (time_t)sqlite3_column_int64(st, 1);
		}
		rs = xrealloc(rs, (n + 1) * sizeof(*rs));
		struct dsn_rcpt *r = &rs[n++];
		memset(r, 0, sizeof(*r));
		r->addr = xstrdup((const char *)sqlite3_column_text(st, 2));
		for (int c = 3; c <= 6; c++) {
			const char *v = (const char *)sqlite3_column_text(st, c);
			char *copy = v ? xstrdup(v) : NULL;
			if (c == 3)
				r->status = copy;
			else if (c == 4)
				r->diagnostic = copy;
			else if (c == 5)
				r->remote_mta = copy;
			else
				r->detail = copy;
		}
		r->last_attempt = (time_t)sqlite3_column_int64(st, 7);
	}
	unprep(q, st);
	if (n)
		send_dsn(q, msg_id, sender, created, false, rs, n);
	for (size_t i = 0; i < n; i++) {
		free((char *)rs[i].addr);
		free((char *)rs[i].status);
		free((char *)rs[i].diagnostic);
		free((char *)rs[i].remote_mta);
		free((char *)rs[i].detail);
	}
	free(rs);
	free(sender);

	st = prep(q, "DELETE FROM message WHERE id = ?");
	sqlite3_bind_text(st, 1, msg_id, -1, SQLITE_STATIC);
	sqlite3_step(st);
	unprep(q, st);
	return true;
}

/* remove_body - after the COMMIT that deleted the message's rows */
static void remove_body(struct queue *q, const char *msg_id)
{
	char *path = body_path(q, msg_id);
	/* kept as the spool file of a later message (maildir_recycle), or gone */
	if (maildir_recycle(path, q->spool_dir) < 0 && unlink(path) < 0 && errno != ENOENT)
		log_warn("event=queue_error error=\"unlink %s: %s\"", path, strerror(errno));
	free(path);
	log_info("event=removed id=%s", msg_id);
}

/*
 * apply_results - one job's results, inside the caller's open transaction.
 * Returns true when the message is finished and its rows were deleted (the
 * caller removes the body after COMMIT).
 */
static bool apply_results(struct queue *q, struct active_job *a,
                          const struct queue_rcpt_result *res)
{
	time_t now = time(NULL);
	const struct queue_job *job = &a->job;

	sqlite3_stmt *mst = prep(q, "SELECT created, warned, sender FROM message WHERE id = ?");
	sqlite3_bind_text(mst, 1, job->msg_id, -1, SQLITE_STATIC);
	if (sqlite3_step(mst) != SQLITE_ROW) {
		/* deleted meanwhile (strictmx queue delete) */
		unprep(q, mst);
		return false;
	}
	time_t created = (time_t)sqlite3_column_int64(mst, 0);
	bool warned = sqlite3_column_int(mst, 1) != 0;
	unprep(q, mst);

	sqlite3_stmt *up = prep(q, "UPDATE rcpt SET state = ?, attempts = attempts + 1, "
	                           "next_try = ?, last_try = ?, status = ?, reply = ?, mx = ?, "
	                           "detail = ? WHERE msg_id = ? AND rcpt = ?");
	struct dsn_rcpt *delayed = NULL;
	size_t n_delayed = 0;
	for (size_t i = 0; i < job->n_rcpts; i++) {
		const struct queue_rcpt_result *r = &res[i];
		enum rcpt_state state = RS_QUEUED;
		time_t next = now;
		char detail[700];
		snprintf(detail, sizeof(detail), "%s", r->detail);
		const char *status = r->reply.enhanced[0] ? r->reply.enhanced : NULL;
		char statbuf[16];
		if (r->outcome == QUEUE_DELIVERED) {
			state = RS_DELIVERED;
		} else if (r->outcome == QUEUE_FAIL) {
			state = RS_FAILED;
		} else {
			next = now + backoff(q->cfg, job->attempts + 1);
			if (now - created >= (time_t)q->cfg->max_queue_lifetime) {
				state = RS_FAILED;
				char age[32];
				unsigned life = q->cfg->max_queue_lifetime;
				if (life >= 86400)
					snprintf(age, sizeof(age), "%u day%s", life / 86400,
					         life >= 2 * 86400 ? "s" : "");
				else if (life >= 3600)
					snprintf(age, sizeof(age), "%u hour%s", life / 3600,
					         life >= 7200 ? "s" : "");
				else
					snprintf(age, sizeof(age), "%u seconds", life);
				snprintf(detail, sizeof(detail),
				         "message expired after %s in the queue; last error: %s",
				         age, r->detail);
				if (status && status[0] == '4') {
					snprintf(statbuf, sizeof(statbuf), "5%s", status + 1);
					status = statbuf;
				}
			}
		}
		char reply[SMTP_REPLY_TEXT_MAX + 32] = "";
		if (r->reply.code)
			snprintf(reply, sizeof(reply), "smtp; %d %s %s", r->reply.code,
			         r->reply.enhanced, r->reply.text);
		sqlite3_reset(up);
		sqlite3_bind_int(up, 1, state);
		sqlite3_bind_int64(up, 2, next);
		sqlite3_bind_int64(up, 3, now);
		if (status)
			sqlite3_bind_text(up, 4, status, -1, SQLITE_TRANSIENT);
		else
			sqlite3_bind_text(up, 4,
			                  r->outcome == QUEUE_DELIVERED ? "2.0.0"
			                  : state == RS_FAILED          ? "5.0.0"
			                                                : "4.0.0",
			                  -1, SQLITE_STATIC);
		sqlite3_bind_text(up, 5, reply, -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(up, 6, r->mx, -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(up, 7, detail, -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(up, 8, job->msg_id, -1, SQLITE_STATIC);
		sqlite3_bind_text(up, 9, job->rcpts[i], -1, SQLITE_STATIC);
		sqlite3_step(up);
		log_info("event=result id=%s rcpt=<%s> mx=%s result=%s status=%s detail=\"%s\"",
		         job->msg_id, job->rcpts[i], r->mx[0] ? r->mx : "-",
		         state == RS_DELIVERED ? "delivered"
		         : state == RS_FAILED  ? "failed"
		                               : "deferred",
		         status ? status : "-", detail);
		if (state == RS_QUEUED && !warned && q->cfg->delay_warning_time &&
		    now - created >= (time_t)q->cfg->delay_warning_time) {
			delayed = xrealloc(delayed, (n_delayed + 1) * sizeof(*delayed));
			delayed[n_delayed++] = (struct dsn_rcpt){
			    .addr = job->rcpts[i],
			    .status = status,
			    .diagnostic = r->reply.code ? xstrdup(reply) : NULL,
			    .remote_mta = r->mx[0] ? r->mx : NULL,
			    .detail = xstrdup(detail),
			    .last_attempt = now,
			};
		}
	}
	unprep(q, up);
	if (n_delayed) {
		send_dsn(q, job->msg_id, job->sender, created, true, delayed, n_delayed);
		sqlite3_stmt *w = prep(q, "UPDATE message SET warned = 1 WHERE id = ?");
		sqlite3_bind_text(w, 1, job->msg_id, -1, SQLITE_STATIC);
		sqlite3_step(w);
		unprep(q, w);
		for (size_t i = 0; i < n_delayed; i++) {
			free((char *)delayed[i].diagnostic);
			free((char *)delayed[i].detail);
		}
	}
	free(delayed);
	return finish_message(q, job->msg_id);
}

void queue_job_done(struct queue *q, uint64_t job_id, const struct queue_rcpt_result *res)
{
	struct active_job *a = NULL;
	for (struct active_job *it = q->active; it; it = it->next)
		if (it->job.job_id == job_id && it->results == NULL)
			a = it;
	if (a == NULL)
		return;
	/* The job stays in the active list (its recipients are not picked up
	 * again) until the results are committed, together with those of every
	 * other job that finishes in this turn of the loop: one transaction,
	 * one fsync for all of them. */
	size_t n = a->job.n_rcpts ? a->job.n_rcpts : 1;
	a->results = xcalloc(n, sizeof(*a->results));
	memcpy(a->results, res, a->job.n_rcpts * sizeof(*res));
	if (!event_pending(q->results_ev, EV_TIMEOUT, NULL)) {
		struct timeval tv = {0, 0};
		event_add(q->results_ev, &tv);
	}
}

/*
 * Results of every job finished since the last commit, in one transaction
 * on the worker thread (results_work); the jobs leave the active list on
 * the loop once that commit is done (results_done).
 */
struct results_req {
	struct queue *q;
	struct active_job **jobs;
	size_t n;
	bool ok;
	bool unsynced; /* bodies wait for an fsync of the WAL */
};

static void results_work(void *arg)
{
	struct results_req *r = arg;
	struct queue *q = r->q;
	char **removed = xcalloc(r->n, sizeof(*removed));
	size_t n_removed = 0;
	/* no fsync of its own: see flush_unsynced */
	bool ok =
	    db_exec(q, "PRAGMA synchronous=NORMAL") == 0 && db_exec(q, "BEGIN IMMEDIATE") == 0;
	for (size_t i = 0; ok && i < r->n; i++)
		if (apply_results(q, r->jobs[i], r->jobs[i]->results))
			removed[n_removed++] = xstrdup(r->jobs[i]->job.msg_id);
	if (ok && db_exec(q, "COMMIT") < 0)
		ok = false;
	if (!ok)
		db_exec(q, "ROLLBACK");
	if (db_exec(q, "PRAGMA synchronous=FULL") < 0)
		log_err("event=queue_db_error error=\"%s\"", sqlite3_errmsg(q->db));
	r->ok = ok;
	/* bodies go only once the COMMIT that deleted their rows is durable */
	for (size_t i = 0; i < n_removed; i++) {
		if (ok) {
			if (q->n_unsynced == q->cap_unsynced) {
				q->cap_unsynced = q->cap_unsynced ? 2 * q->cap_unsynced : 64;
				q->unsynced =
				    xrealloc(q->unsynced, q->cap_unsynced * sizeof(*q->unsynced));
			}
			q->unsynced[q->n_unsynced++] = removed[i];
		} else {
			free(removed[i]);
		}
	}
	r->unsynced = q->n_unsynced > 0;
	free(removed);
}

static void results_done(void *arg)
{
	struct results_req *r = arg;
	struct queue *q = r->q;
	if (!r->ok) {
		/* Not recorded (disk full, I/O error): the jobs stay in the active
		 * list with their results, so no scan delivers them again, and only
		 * the commit is retried, a second later. Dropping them would have
		 * the next scan deliver the same message again and again. */
		for (size_t i = 0; i < r->n; i++)
			r->jobs[i]->committing = false;
		free(r->jobs);
		free(r);
		log_warn("event=queue_results_retry in=1s");
		struct timeval tv = {.tv_sec = 1};
		event_del(q->results_ev);
		event_add(q->results_ev, &tv);
		return;
	}
	/* finished jobs leave the active list */
	for (size_t i = 0; i < r->n; i++)
		for (struct active_job **pp = &q->active; *pp; pp = &(*pp)->next)
			if (*pp == r->jobs[i]) {
				*pp = r->jobs[i]->next;
				q->n_active--;
				job_free(r->jobs[i]);
				break;
			}
	if (r->unsynced && !event_pending(q->sync_ev, EV_TIMEOUT, NULL)) {
		/* a message commit would do it sooner; this is when none comes */
		struct timeval tv = {0, SYNC_USECS};
		event_add(q->sync_ev, &tv);
	}
	free(r->jobs);
	free(r);
	schedule_scan(q, 0);
}

static void results_cb(evutil_socket_t fd, short what, void *arg)
{
	struct queue *q = arg;
	size_t n_done = 0;
	for (struct active_job *a = q->active; a; a = a->next)
		n_done += a->results != NULL && !a->committing;
	if (n_done == 0)
		return;
	struct results_req *r = xcalloc(1, sizeof(*r));
	r->q = q;
	r->jobs = xcalloc(n_done, sizeof(*r->jobs));
	for (struct active_job *a = q->active; a; a = a->next)
		if (a->results != NULL && !a->committing) {
			a->committing = true;
			r->jobs[r->n++] = a;
		}
	run(q, results_work, results_done, r);
}

void queue_set_deliverer(struct queue *q, queue_deliver_fn fn, void *arg)
{
	q->deliver = fn;
	q->deliver_arg = arg;
	schedule_scan(q, 0);
}

/*
 * recover_arriving - messages a crash caught between their commit and its
 * settlement (RCPT_ARRIVING). If the body is whole, both stages may have
 * been done and the 250 sent: the recipients are queued. If it is not,
 * stage 1 never finished, so the client never got a 250 (it sends again):
 * the rows go. Returns how many were dropped; *kept counts the others.
 */
static size_t recover_arriving(struct queue *q, size_t *kept)
{
	struct strlist ids = {0};
	sqlite3_int64 *sizes = NULL;
	size_t dropped = 0;
	sqlite3_stmt *st = prep(q, "SELECT DISTINCT m.id, m.size FROM message m JOIN rcpt r ON "
	                           "r.msg_id = m.id WHERE r.state = " RCPT_ARRIVING_SQL);
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *id = (const char *)sqlite3_column_text(st, 0);
		sizes = xrealloc(sizes, (ids.n + 1) * sizeof(*sizes));
		sizes[ids.n] = sqlite3_column_int64(st, 1);
		strlist_add(&ids, id ? id : "");
	}
	unprep(q, st);
	*kept = 0;
	for (size_t i = 0; i < ids.n; i++) {
		char *path = body_path(q, ids.v[i]);
		char buf[256];
		const char *why = queue_body_check(path, sizes[i], buf, sizeof(buf));
		sqlite3_stmt *u = prep(q, why ? "DELETE FROM message WHERE id = ?"
		                              : "UPDATE rcpt SET state = 0 WHERE msg_id = ? AND "
		                                "state = " RCPT_ARRIVING_SQL);
		sqlite3_bind_text(u, 1, ids.v[i], -1, SQLITE_STATIC);
		bool ok = sqlite3_step(u) == SQLITE_DONE;
		unprep(q, u);
		if (!ok)
			log_err("event=queue_db_error id=%s error=\"%s\"", ids.v[i],
			        sqlite3_errmsg(q->db));
		else if (why) {
			/* never acknowledged: not a loss, not damage */
			log_info("event=queue_unacknowledged id=%s action=dropped reason=\"%s\"",
			         ids.v[i], why);
			dropped++; /* a file left without a row goes with the orphans below */
		} else {
			log_info("event=queue_unacknowledged id=%s action=kept", ids.v[i]);
			(*kept)++;
		}
		free(path);
	}
	strlist_free(&ids);
	free(sizes);
	return dropped;
}

/* recover - reconcile rows and files after a restart or a crash */
static void recover(struct queue *q)
{
	/* commits a crash left unsettled first: they then are queued or gone */
	size_t kept = 0, dropped = recover_arriving(q, &kept);
	/* damaged entries next: what is left below has sound rows */
	size_t quarantined = queue_quarantine_scan(q->db, q->cfg->data_dir, q->dir);
	sqlite3_stmt *st = prep(q, "SELECT id FROM message");
	size_t missing = 0, total = 0;
	char **lost = NULL;
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *id = (const char *)sqlite3_column_text(st, 0);
		char *path = body_path(q, id);
		struct stat sb;
		total++;
		if (stat(path, &sb) < 0) {
			lost = xrealloc(lost, (missing + 1) * sizeof(*lost));
			lost[missing++] = xstrdup(id);
		}
		free(path);
	}
	unprep(q, st);
	for (size_t i = 0; i < missing; i++) {
		/* never silently: say so, fail what was still queued (the sender
		 * gets a DSN), and finish the message so the queue flows on */
		log_err("event=queue_corrupt id=%s error=\"body file missing\"", lost[i]);
		if (db_exec(q, "BEGIN IMMEDIATE") == 0) {
			sqlite3_stmt *u = prep(q, "UPDATE rcpt SET state = 2, status = '4.3.0', "
			                          "detail = 'queue file lost' WHERE msg_id = ? AND "
			                          "state = 0");
			sqlite3_bind_text(u, 1, lost[i], -1, SQLITE_STATIC);
			sqlite3_step(u);
			unprep(q, u);
			bool removed = finish_message(q, lost[i]);
			if (db_exec(q, "COMMIT") < 0)
				db_exec(q, "ROLLBACK");
			else if (removed)
				log_info("event=removed id=%s reason=body_missing", lost[i]);
		}
		free(lost[i]);
	}
	free(lost);

	/* Files without a row: a body whose commit never happened (the client
	 * got no 250 and sends again) or whose message was finished just before
	 * a crash. At start nothing is in flight, so they can go. */
	size_t orphans = 0;
	DIR *dir = opendir(q->dir);
	struct dirent *de;
	sqlite3_stmt *has = prep(q, "SELECT 1 FROM message WHERE id = ?");
	while (dir && (de = readdir(dir)) != NULL) {
		if (de->d_name[0] == '.' && (de->d_name[1] == '\0' || de->d_name[1] == '.'))
			continue;
		sqlite3_reset(has);
		sqlite3_bind_text(has, 1, de->d_name, -1, SQLITE_TRANSIENT);
		if (sqlite3_step(has) == SQLITE_ROW)
			continue;
		char *path = xasprintf("%s/%s", q->dir, de->d_name);
		if (unlink(path) == 0)
			orphans++;
		free(path);
	}
	unprep(q, has);
	if (dir)
		closedir(dir);
	/* the spool holds only messages still arriving: none at start */
	char *spool = xasprintf("%s/spool", q->cfg->data_dir);
	dir = opendir(spool);
	size_t partial = 0;
	while (dir && (de = readdir(dir)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		char *path = xasprintf("%s/%s", spool, de->d_name);
		/* recycled files are not messages */
		bool recycled = strncmp(de->d_name, MAILDIR_RECYCLED_PREFIX,
		                        strlen(MAILDIR_RECYCLED_PREFIX)) == 0;
		if (unlink(path) == 0 && !recycled)
			partial++;
		free(path);
	}
	if (dir)
		closedir(dir);
	free(spool);
	log_info("event=queue_recovered messages=%zu missing_bodies=%zu orphan_files=%zu "
	         "partial_spool=%zu quarantined=%zu unacknowledged_kept=%zu "
	         "unacknowledged_dropped=%zu",
	         total, missing, orphans, partial, quarantined, kept, dropped);
}

struct queue *queue_open(struct event_base *base, const struct config *c, char *err, size_t errlen)
{
	struct queue *q = xcalloc(1, sizeof(*q));
	q->base = base;
	q->cfg = c;
	q->pending_tail = &q->pending;
	q->dir = xasprintf("%s/queue", c->data_dir);
	q->spool_dir = xasprintf("%s/spool", c->data_dir);
	if (mkdir(q->dir, 0700) < 0 && errno != EEXIST) {
		snprintf(err, errlen, "mkdir %s: %s", q->dir, strerror(errno));
		queue_close(&q);
		return NULL;
	}
	char *dbpath = xasprintf("%s/queue.db", c->data_dir);
	if (sqlite3_open_v2(dbpath, &q->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
	    SQLITE_OK) {
		snprintf(err, errlen, "%s: %s", dbpath, sqlite3_errmsg(q->db));
		free(dbpath);
		queue_close(&q);
		return NULL;
	}
	q->wal_path = xasprintf("%s-wal", dbpath);
	free(dbpath);
	sqlite3_busy_timeout(q->db, 5000);
	/* FULL: a committed transaction survives power loss (docs/queue.md) */
	if (db_exec(q, SCHEMA) < 0 || db_exec(q, "PRAGMA synchronous=FULL") < 0) {
		snprintf(err, errlen, "queue database: %s", sqlite3_errmsg(q->db));
		queue_close(&q);
		return NULL;
	}
	q->commit_ev = evtimer_new(base, commit_cb, q);
	q->sched_ev = evtimer_new(base, scan_cb, q);
	q->results_ev = evtimer_new(base, results_cb, q);
	q->sync_ev = evtimer_new(base, sync_cb, q);
	q->settle_ev = evtimer_new(base, settle_cb, q);
	recover(q);
	/* from here on the database belongs to the worker thread */
	q->w = worker_new(base, "queue", err, errlen);
	if (q->w)
		q->fw = worker_new(base, "queue-files", err, errlen);
	if (q->w == NULL || q->fw == NULL) {
		queue_close(&q);
		return NULL;
	}
	return q;
}

void queue_close(struct queue **qp)
{
	struct queue *q = *qp;
	if (q == NULL)
		return;
	q->deliver = NULL; /* a scan finishing now starts nothing */
	/* what is in flight finishes; then, on this thread, what was accepted
	 * is committed before we stop, and what was delivered is recorded */
	worker_free(&q->fw); /* its last batch goes on to the database worker */
	worker_free(&q->w);
	if (q->commit_ev && q->pending)
		commit_cb(-1, 0, q);
	if (q->settle_ev)
		settle_cb(-1, 0, q); /* so that a clean stop leaves nothing ARRIVING */
	if (q->results_ev)
		results_cb(-1, 0, q);
	if (q->db)
		sync_work(q); /* the last results made durable, their bodies removed */
	maildir_recycle_clear();
	while (q->active) {
		struct active_job *a = q->active;
		q->active = a->next;
		job_free(a);
	}
	if (q->commit_ev)
		event_free(q->commit_ev);
	if (q->sched_ev)
		event_free(q->sched_ev);
	if (q->results_ev)
		event_free(q->results_ev);
	if (q->sync_ev)
		event_free(q->sync_ev);
	if (q->settle_ev)
		event_free(q->settle_ev);
	settlement_free(&q->settle);
	for (size_t i = 0; i < STMT_CACHE; i++)
		if (q->stmts[i].st)
			sqlite3_finalize(q->stmts[i].st);
	if (q->db)
		sqlite3_close(q->db);
	for (size_t i = 0; i < q->n_unsynced; i++)
		free(q->unsynced[i]);
	free(q->unsynced);
	free(q->wal_path);
	free(q->dir);
	free(q->spool_dir);
	free(q);
	*qp = NULL;
}
