/*
 * mailbox - hand a function call to the thread that runs an event loop.
 *
 * Any thread may mailbox_post(); the loop of the base given to mailbox_new()
 * runs the calls, in the order they were posted, through a pipe it watches.
 * A call still waiting when the mailbox is freed is dropped: its drop
 * function (if any) runs instead, to release what the call owned.
 */
#ifndef STRICTMX_COMMON_MAILBOX_H
#define STRICTMX_COMMON_MAILBOX_H

#include <stddef.h>
#include <event2/event.h>

struct mailbox;

typedef void (*mailbox_fn)(void *arg);

struct mailbox *mailbox_new(struct event_base *base, char *err, size_t errlen);

/* mailbox_post - fn(arg) on the mailbox's loop; drop(arg) if it never runs */
void mailbox_post(struct mailbox *mb, mailbox_fn fn, mailbox_fn drop, void *arg);

/* mailbox_run - run what is waiting now, here (for a drain without the loop) */
void mailbox_run(struct mailbox *mb);

/* mailbox_free - stop watching; drop what is still waiting */
void mailbox_free(struct mailbox **mb);

#endif
