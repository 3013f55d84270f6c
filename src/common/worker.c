/*
 * worker - a blocking-work thread for the event loop; see worker.h.
 */
#include "common/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/xmalloc.h"

struct item {
	struct item *next;
	worker_fn work, done;
	void *arg;
};

struct worker {
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv_todo; /* the thread waits for work */
	pthread_cond_t cv_done; /* drain waits for results */
	struct item *todo, **todo_tail;
	struct item *done, **done_tail;
	size_t pending; /* submitted, done() not yet run */
	bool stop;
	int pipe_rd, pipe_wr; /* the thread wakes the loop */
	struct event *ev;
	char name[32];
};

static void *thread_main(void *arg)
{
	struct worker *w = arg;
	pthread_mutex_lock(&w->mu);
	for (;;) {
		while (w->todo == NULL && !w->stop)
			pthread_cond_wait(&w->cv_todo, &w->mu);
		if (w->todo == NULL && w->stop)
			break;
		struct item *it = w->todo;
		w->todo = it->next;
		if (w->todo == NULL)
			w->todo_tail = &w->todo;
		pthread_mutex_unlock(&w->mu);

		it->work(it->arg);

		pthread_mutex_lock(&w->mu);
		it->next = NULL;
		bool was_empty = w->done == NULL;
		*w->done_tail = it;
		w->done_tail = &it->next;
		pthread_cond_broadcast(&w->cv_done);
		if (was_empty) {
			/* one byte per batch of results: the loop takes them all */
			char b = 1;
			while (write(w->pipe_wr, &b, 1) < 0 && errno == EINTR)
				;
		}
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

/* run_done - the done() callbacks of everything finished, in order */
static void run_done(struct worker *w)
{
	pthread_mutex_lock(&w->mu);
	struct item *list = w->done;
	w->done = NULL;
	w->done_tail = &w->done;
	pthread_mutex_unlock(&w->mu);
	while (list) {
		struct item *it = list;
		list = it->next;
		if (it->done)
			it->done(it->arg);
		free(it);
		pthread_mutex_lock(&w->mu);
		w->pending--;
		pthread_mutex_unlock(&w->mu);
	}
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	char buf[64];
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	run_done(arg);
}

struct worker *worker_new(struct event_base *base, const char *name, char *err, size_t errlen)
{
	struct worker *w = xcalloc(1, sizeof(*w));
	int p[2];
	snprintf(w->name, sizeof(w->name), "%s", name);
	w->todo_tail = &w->todo;
	w->done_tail = &w->done;
	if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) {
		snprintf(err, errlen, "worker %s: pipe: %s", name, strerror(errno));
		free(w);
		return NULL;
	}
	w->pipe_rd = p[0];
	w->pipe_wr = p[1];
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv_todo, NULL);
	pthread_cond_init(&w->cv_done, NULL);
	w->ev = event_new(base, w->pipe_rd, EV_READ | EV_PERSIST, wake_cb, w);
	event_add(w->ev, NULL);
	int rc = pthread_create(&w->thread, NULL, thread_main, w);
	if (rc != 0) {
		snprintf(err, errlen, "worker %s: pthread_create: %s", name, strerror(rc));
		event_free(w->ev);
		close(w->pipe_rd);
		close(w->pipe_wr);
		pthread_mutex_destroy(&w->mu);
		pthread_cond_destroy(&w->cv_todo);
		pthread_cond_destroy(&w->cv_done);
		free(w);
		return NULL;
	}
	return w;
}

void worker_submit(struct worker *w, worker_fn work, worker_fn done, void *arg)
{
	struct item *it = xcalloc(1, sizeof(*it));
	it->work = work;
	it->done = done;
	it->arg = arg;
	pthread_mutex_lock(&w->mu);
	*w->todo_tail = it;
	w->todo_tail = &it->next;
	w->pending++;
	pthread_cond_signal(&w->cv_todo);
	pthread_mutex_unlock(&w->mu);
}

size_t worker_pending(const struct worker *w)
{
	pthread_mutex_lock((pthread_mutex_t *)&w->mu);
	size_t n = w->pending;
	pthread_mutex_unlock((pthread_mutex_t *)&w->mu);
	return n;
}

void worker_drain(struct worker *w)
{
	for (;;) {
		pthread_mutex_lock(&w->mu);
		while (w->done == NULL && w->pending > 0)
			pthread_cond_wait(&w->cv_done, &w->mu);
		bool idle = w->pending == 0;
		pthread_mutex_unlock(&w->mu);
		if (idle)
			return;
		/* a done() may submit more work: loop until nothing is left */
		run_done(w);
	}
}

void worker_free(struct worker **wp)
{
	struct worker *w = *wp;
	if (w == NULL)
		return;
	worker_drain(w);
	pthread_mutex_lock(&w->mu);
	w->stop = true;
	pthread_cond_signal(&w->cv_todo);
	pthread_mutex_unlock(&w->mu);
	pthread_join(w->thread, NULL);
	event_free(w->ev);
	close(w->pipe_rd);
	close(w->pipe_wr);
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->cv_todo);
	pthread_cond_destroy(&w->cv_done);
	free(w);
	*wp = NULL;
}
