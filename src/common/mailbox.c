/*
 * mailbox - cross-thread calls into an event loop; see mailbox.h.
 */
#include "common/mailbox.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/xmalloc.h"

struct call {
	struct call *next;
	mailbox_fn fn, drop;
	void *arg;
};

struct mailbox {
	pthread_mutex_t mu;
	struct call *head, **tail;
	int rd, wr;
	bool signalled; /* a byte is in the pipe */
	struct event *ev;
};

void mailbox_run(struct mailbox *mb)
{
	pthread_mutex_lock(&mb->mu);
	struct call *list = mb->head;
	mb->head = NULL;
	mb->tail = &mb->head;
	mb->signalled = false;
	pthread_mutex_unlock(&mb->mu);
	while (list) {
		struct call *c = list;
		list = c->next;
		c->fn(c->arg);
		free(c);
	}
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	/* mailbox_post writes one byte per wake-up (two at most, after a
	 * worker_drain ran the calls without reading): one read takes them,
	 * without a second read just to see EAGAIN */
	char buf[64];
	ssize_t n = read(fd, buf, sizeof(buf));
	(void)n; /* anything left wakes the (level-triggered) loop again */
	mailbox_run(arg);
}

struct mailbox *mailbox_new(struct event_base *base, char *err, size_t errlen)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) {
		snprintf(err, errlen, "mailbox: pipe: %s", strerror(errno));
		return NULL;
	}
	struct mailbox *mb = xcalloc(1, sizeof(*mb));
	pthread_mutex_init(&mb->mu, NULL);
	mb->tail = &mb->head;
	mb->rd = p[0];
	mb->wr = p[1];
	mb->ev = event_new(base, mb->rd, EV_READ | EV_PERSIST, wake_cb, mb);
	event_add(mb->ev, NULL);
	return mb;
}

void mailbox_post(struct mailbox *mb, mailbox_fn fn, mailbox_fn drop, void *arg)
{
	struct call *c = xcalloc(1, sizeof(*c));
	c->fn = fn;
	c->drop = drop;
	c->arg = arg;
	pthread_mutex_lock(&mb->mu);
	*mb->tail = c;
	mb->tail = &c->next;
	if (!mb->signalled) {
		/* one byte wakes the loop for everything posted until it runs */
		mb->signalled = true;
		char b = 1;
		while (write(mb->wr, &b, 1) < 0 && errno == EINTR)
			;
	}
	pthread_mutex_unlock(&mb->mu);
}

void mailbox_free(struct mailbox **mbp)
{
	struct mailbox *mb = *mbp;
	if (mb == NULL)
		return;
	event_free(mb->ev);
	while (mb->head) {
		struct call *c = mb->head;
		mb->head = c->next;
		if (c->drop)
			c->drop(c->arg);
		free(c);
	}
	close(mb->rd);
	close(mb->wr);
	pthread_mutex_destroy(&mb->mu);
	free(mb);
	*mbp = NULL;
}
