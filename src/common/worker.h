/*
 * worker - one thread that runs blocking work (fsync, SQLite commits) off
 * the event loop.
 *
 * worker_submit() queues an item; the thread runs item->work(arg); then the
 * loop runs item->done(arg), in submission order, through a pipe watched by
 * the loop. The loop never waits for the disk; the thread never touches
 * loop-owned state except what the item's arg hands it. Items run one at a
 * time, in order, so work functions need no locking among themselves.
 */
#ifndef STRICTMX_COMMON_WORKER_H
#define STRICTMX_COMMON_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <event2/event.h>

struct worker;

typedef void (*worker_fn)(void *arg);

/* worker_new - start the thread; NULL (err set) when it cannot */
struct worker *worker_new(struct event_base *base, const char *name, char *err, size_t errlen);

/* worker_submit - work(arg) on the thread, then done(arg) on the loop */
void worker_submit(struct worker *w, worker_fn work, worker_fn done, void *arg);

/*
 * worker_drain - wait until every submitted item has run and run their
 * done() callbacks here (shutdown; blocks the caller)
 */
void worker_drain(struct worker *w);

/* worker_free - drain, stop the thread, free */
void worker_free(struct worker **w);

#endif
