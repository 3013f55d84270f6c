/*
 * fsyncpool - concurrent fsync of a batch of files; see fsyncpool.h.
 *
 * A fixed set of threads, started on first use and kept for the life of the
 * process, takes tasks from one list. Each caller's batch has its own count
 * of outstanding tasks; the caller does one fsync itself and waits for the
 * rest.
 */
#include "common/fsyncpool.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/xmalloc.h"

#define POOL_THREADS 16

struct batch {
	size_t left;
	pthread_cond_t cv;
};

struct task {
	struct task *next;
	int fd;
	int *err;
	struct batch *b;
};

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cv = PTHREAD_COND_INITIALIZER;
static struct task *pool_head, **pool_tail = &pool_head;
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
static size_t pool_threads;

static void *pool_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&pool_mu);
	for (;;) {
		while (pool_head == NULL)
			pthread_cond_wait(&pool_cv, &pool_mu);
		struct task *t = pool_head;
		pool_head = t->next;
		if (pool_head == NULL)
			pool_tail = &pool_head;
		pthread_mutex_unlock(&pool_mu);
		int rc = fsync(t->fd) < 0 ? errno : 0;
		pthread_mutex_lock(&pool_mu);
		*t->err = rc;
		if (--t->b->left == 0)
			pthread_cond_signal(&t->b->cv);
	}
	return NULL;
}

static void pool_start(void)
{
	for (size_t i = 0; i < POOL_THREADS; i++) {
		pthread_t th;
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		pthread_attr_setstacksize(&attr, (size_t)64 * 1024);
		if (pthread_create(&th, &attr, pool_main, NULL) == 0)
			pool_threads++;
		pthread_attr_destroy(&attr);
	}
}

int fsync_all(const int *fds, size_t n, int *errs)
{
	if (n == 0)
		return 0;
	if (n > 1)
		pthread_once(&pool_once, pool_start);
	if (n == 1 || pool_threads == 0) {
		int rc = 0;
		for (size_t i = 0; i < n; i++) {
			errs[i] = fsync(fds[i]) < 0 ? errno : 0;
			rc |= errs[i] ? -1 : 0;
		}
		return rc;
	}
	struct batch b = {.left = n - 1};
	pthread_cond_init(&b.cv, NULL);
	struct task *tasks = xcalloc(n - 1, sizeof(*tasks));
	pthread_mutex_lock(&pool_mu);
	for (size_t i = 1; i < n; i++) {
		struct task *t = &tasks[i - 1];
		t->fd = fds[i];
		t->err = &errs[i];
		t->b = &b;
		*pool_tail = t;
		pool_tail = &t->next;
	}
	/* wake one thread per task, not the whole pool */
	for (size_t i = 1; i < n && i <= pool_threads; i++)
		pthread_cond_signal(&pool_cv);
	pthread_mutex_unlock(&pool_mu);

	errs[0] = fsync(fds[0]) < 0 ? errno : 0;

	pthread_mutex_lock(&pool_mu);
	while (b.left > 0)
		pthread_cond_wait(&b.cv, &pool_mu);
	pthread_mutex_unlock(&pool_mu);
	pthread_cond_destroy(&b.cv);
	free(tasks);
	int rc = 0;
	for (size_t i = 0; i < n; i++)
		if (errs[i])
			rc = -1;
	return rc;
}

int fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int rc = fsync(fd);
	int e = errno;
	close(fd);
	errno = e;
	return rc;
}
