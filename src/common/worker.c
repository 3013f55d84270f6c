/*
 * worker - a blocking-work thread for the event loop; see worker.h. Results
 * come back through a mailbox (common/mailbox.h).
 */
#include "common/worker.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/mailbox.h"
#include "common/xmalloc.h"

struct item {
	struct item *next;
	struct worker *w;
	worker_fn work, done;
	void *arg;
};

struct worker {
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv_todo; /* the thread waits for work */
	pthread_cond_t cv_done; /* drain waits for results */
	struct item *todo, **todo_tail;
	size_t pending;  /* submitted, done() not yet run */
	size_t finished; /* work() done, done() not yet run */
	bool stop;
	struct mailbox *mb;
};

/* item_done - on the loop (or in worker_drain): the caller's done() */
static void item_done(void *arg)
{
	struct item *it = arg;
	struct worker *w = it->w;
	if (it->done)
		it->done(it->arg);
	free(it);
	pthread_mutex_lock(&w->mu);
	w->pending--;
	w->finished--;
	pthread_mutex_unlock(&w->mu);
}

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
		mailbox_post(w->mb, item_done, NULL, it);

		pthread_mutex_lock(&w->mu);
		w->finished++;
		pthread_cond_broadcast(&w->cv_done);
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

struct worker *worker_new(struct event_base *base, const char *name, char *err, size_t errlen)
{
	struct worker *w = xcalloc(1, sizeof(*w));
	w->todo_tail = &w->todo;
	w->mb = mailbox_new(base, err, errlen);
	if (w->mb == NULL) {
		free(w);
		return NULL;
	}
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv_todo, NULL);
	pthread_cond_init(&w->cv_done, NULL);
	int rc = pthread_create(&w->thread, NULL, thread_main, w);
	if (rc != 0) {
		snprintf(err, errlen, "worker %s: pthread_create: %s", name, strerror(rc));
		mailbox_free(&w->mb);
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
	it->w = w;
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

void worker_drain(struct worker *w)
{
	for (;;) {
		pthread_mutex_lock(&w->mu);
		while (w->finished == 0 && w->pending > 0)
			pthread_cond_wait(&w->cv_done, &w->mu);
		bool idle = w->pending == 0;
		pthread_mutex_unlock(&w->mu);
		if (idle)
			return;
		/* a done() may submit more work: loop until nothing is left */
		mailbox_run(w->mb);
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
	mailbox_free(&w->mb);
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->cv_todo);
	pthread_cond_destroy(&w->cv_done);
	free(w);
	*wp = NULL;
}
