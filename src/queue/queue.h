/*
 * queue - the durable queue: every accepted message goes through it.
 *
 * Design (docs/queue.md): message bodies are files in data_dir/queue/ (fsync,
 * rename, fsync of the directory); envelopes, per-recipient state and retry
 * times live in SQLite (data_dir/queue.db, WAL, synchronous=FULL, writes in
 * BEGIN IMMEDIATE transactions). Messages accepted close together share one
 * commit (group commit): submissions wait for the next turn of the event
 * loop, then the bodies and the directory are fsync'd while one transaction
 * inserts all their rows (recipients "arriving" until the next commit settles
 * them), and only when both are durable does each session hear "committed"
 * and answer 250.
 *
 * Delivery is a consumer: the queue calls the deliverer for due recipients
 * and takes back one result per recipient; it owns retries with backoff,
 * expiry, delay warnings and failure DSNs (queue/dsn.c).
 */
#ifndef STRICTMX_QUEUE_QUEUE_H
#define STRICTMX_QUEUE_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <event2/event.h>

#include "smtp/reply.h"

struct config;
struct maildir_msg;
struct queue;

struct queue_rcpt_in {
	const char *addr;       /* as given in RCPT TO, without <> */
	const char *domain;     /* lowercase; "" for <postmaster> */
	const char *local_user; /* lowercase mailbox name when local, else NULL */
};

struct queue_msg_in {
	const char *id;     /* queue id (unique, [A-Z0-9]) */
	const char *sender; /* "" = null reverse path */
	const char *client_ip;
	bool tls;
	uint64_t size;
	const struct queue_rcpt_in *rcpts;
	size_t n_rcpts;
};

/* called once the message is durable (ok) or could not be stored (!ok) */
typedef void (*queue_commit_fn)(void *arg, bool ok, const char *err);

/* What a deliverer gets: one message, the recipients of one domain. */
struct queue_job {
	uint64_t job_id;
	char msg_id[40];
	char *sender;
	char *body_path; /* data_dir/queue/<id> */
	char *domain;    /* lowercase; the recipients' domain */
	bool local;
	size_t n_rcpts;
	char **rcpts;       /* addresses */
	char **local_users; /* when local */
	uint64_t size;
	unsigned attempts; /* attempts made before this one */
};

enum queue_outcome { QUEUE_DELIVERED, QUEUE_DEFER, QUEUE_FAIL };

struct queue_rcpt_result {
	enum queue_outcome outcome;
	struct smtp_reply reply; /* what decided it (remote reply or our own) */
	char mx[256];            /* host that answered, "" if none */
	char detail[512];        /* human words: why, for logs and DSNs */
};

/* the deliverer starts work on job and later calls queue_job_done() */
typedef void (*queue_deliver_fn)(void *arg, struct queue *q, const struct queue_job *job);

struct queue *queue_open(struct event_base *base, const struct config *c, char *err, size_t errlen);
void queue_close(struct queue **q);

void queue_set_deliverer(struct queue *q, queue_deliver_fn fn, void *arg);

/*
 * queue_submit - take a spooled message (the spool handle is taken and
 * freed in every case). cb runs after the group commit.
 */
void queue_submit(struct queue *q, const struct queue_msg_in *m, struct maildir_msg **spool,
                  queue_commit_fn cb, void *arg);

/* queue_job_done - results, one per recipient of the job, in order */
void queue_job_done(struct queue *q, uint64_t job_id, const struct queue_rcpt_result *results);

/* queue_kick - look for due work now (after a flush, a restart) */
void queue_kick(struct queue *q);

/* queue_new_id - a fresh queue id ("A1B2C3..."), 20 chars + NUL */
void queue_new_id(char out[32]);

#endif
