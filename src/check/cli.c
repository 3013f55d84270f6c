/*
 * check/cli - `strictmx check DOMAIN...` and `strictmx scan [FILE|-]`;
 * see docs/checker.md.
 */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "check/check.h"
#include "check/summary.h"
#include "common/config.h"
#include "common/log.h"
#include "common/xmalloc.h"

#define CHECK_USAGE                                                                                \
	"usage: strictmx [-c FILE] check DOMAIN... [--json] [--no-color] [--port N] "              \
	"[--timeout S]\n"
#define SCAN_USAGE                                                                                 \
	"usage: strictmx [-c FILE] scan [FILE|-] [--concurrency N] [--per-ip N] [--jobs N] "       \
	"[--output FILE] [--resume] [--html FILE] [--postfix-policy FILE] [--port N] "             \
	"[--timeout S]\n"

#define MAX_JOBS 64

static int num_arg(const char *cmd, const char *opt, const char *v, long min, long max, long *out)
{
	char *end;
	long n;

	if (v == NULL) {
		fprintf(stderr, "strictmx: %s: %s needs a value\n", cmd, opt);
		return -1;
	}
	errno = 0;
	n = strtol(v, &end, 10);
	if (errno || *end || end == v || n < min || n > max) {
		fprintf(stderr, "strictmx: %s: %s: '%s' is not a number from %ld to %ld\n", cmd,
		        opt, v, min, max);
		return -1;
	}
	*out = n;
	return 0;
}

static int transport_arg(const char *cmd, const char *opt, const char *v, enum dns_transport *out)
{
	if (dns_transport_parse(v, out) < 0) {
		fprintf(stderr, "strictmx: %s: %s: expected auto, udp or tcp, got '%s'\n", cmd, opt,
		        v != NULL ? v : "nothing");
		return -1;
	}
	return 0;
}

/*
 * loop_new - the event loop of check, of scan and of each scan worker: with libevent's
 * epoll change list, so the adds and deletes of one loop turn reach the kernel as one
 * epoll_ctl per descriptor (a probe's connection turns reading and writing on and off at
 * every step of the SMTP dialogue and the handshake): ~10 % fewer system calls in a scan
 * (docs/checker.md). Its one caveat, descriptors shared through dup(), does not apply:
 * nothing here dups a socket.
 */
static struct event_base *loop_new(void)
{
	struct event_config *cfg = event_config_new();
	struct event_base *base;

	if (cfg == NULL)
		return NULL;
	event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
	base = event_base_new_with_config(cfg);
	event_config_free(cfg);
	return base;
}

/* a generous bound on the whole run: every step is bounded, this is the belt */
static struct timeval run_deadline(unsigned timeout, size_t n_domains, unsigned concurrency)
{
	size_t rounds = concurrency ? (n_domains + concurrency - 1) / concurrency : n_domains;
	struct timeval tv = {.tv_sec = (time_t)(60 + (size_t)timeout * 40 * (rounds ? rounds : 1))};
	return tv;
}

/* ---- check ---- */

struct check_slot {
	struct check_run *run;
	struct check_result *r;
};

struct check_run {
	struct event_base *base;
	size_t pending;
};

static void check_done(void *arg, struct check_result *r)
{
	struct check_slot *slot = arg;

	slot->r = r;
	if (--slot->run->pending == 0)
		event_base_loopexit(slot->run->base, NULL);
}

int check_cli(const struct config *c, int argc, char **argv)
{
	struct check_opts o = {.timeout = 10, .per_ip = 2};
	bool json = false, color = isatty(STDOUT_FILENO);
	const char **domains = xcalloc((size_t)argc + 1, sizeof(char *));
	size_t n = 0;
	char err[512];
	long v;
	int rc = 0;

	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--json")) {
			json = true;
		} else if (!strcmp(a, "--no-color")) {
			color = false;
		} else if (!strcmp(a, "--port")) {
			if (num_arg("check", a, i + 1 < argc ? argv[i + 1] : NULL, 1, 65535, &v) <
			    0)
				goto bad;
			o.port = (uint16_t)v;
			i++;
		} else if (!strcmp(a, "--timeout")) {
			if (num_arg("check", a, i + 1 < argc ? argv[i + 1] : NULL, 1, 3600, &v) < 0)
				goto bad;
			o.timeout = (unsigned)v;
			i++;
		} else if (!strcmp(a, "--dns-transport")) {
			if (transport_arg("check", a, i + 1 < argc ? argv[i + 1] : NULL,
			                  &o.dns_transport) < 0)
				goto bad;
			i++;
		} else if (a[0] == '-') {
			fprintf(stderr, "strictmx: check: unknown option '%s'\n", a);
			goto bad;
		} else {
			domains[n++] = a;
		}
	}
	if (n == 0) {
		fprintf(stderr, "strictmx: check: no domain given\n");
		goto bad;
	}
	if (json)
		color = false;
	log_set_level(LOG_LVL_ERR);
	signal(SIGPIPE, SIG_IGN); /* a peer that closes early is reported, not fatal */

	struct event_base *base = loop_new();
	if (base == NULL) {
		fprintf(stderr, "strictmx: check: cannot create the event loop\n");
		free(domains);
		return 2;
	}
	struct check_engine *e = check_engine_new(base, c, &o, err, sizeof(err));
	if (e == NULL) {
		fprintf(stderr, "strictmx: check: %s\n", err);
		event_base_free(base);
		free(domains);
		return 2;
	}
	struct check_run run = {.base = base};
	struct check_slot *slots = xcalloc(n, sizeof(*slots));
	bool *started = xcalloc(n, sizeof(*started));
	for (size_t i = 0; i < n; i++) {
		slots[i].run = &run;
		if (check_start(e, domains[i], check_done, &slots[i]) < 0) {
			fprintf(stderr, "strictmx: check: '%s' is not a valid domain name\n",
			        domains[i]);
		} else {
			started[i] = true;
			run.pending++;
		}
	}
	struct timeval deadline = run_deadline(o.timeout, n, (unsigned)n);
	if (run.pending > 0) {
		event_base_loopexit(base, &deadline);
		event_base_dispatch(base);
	}
	for (size_t i = 0; i < n; i++) {
		struct check_result **res = &slots[i].r;
		if (!started[i]) {
			rc = 2;
			continue;
		}
		if (*res == NULL) {
			fprintf(stderr, "strictmx: check: %s: no result within %ld s\n", domains[i],
			        (long)deadline.tv_sec);
			rc = 2;
			continue;
		}
		if (json) {
			char *s = check_result_json(*res);
			printf("%s\n", s);
			free(s);
		} else {
			if (i > 0)
				printf("\n");
			check_result_print(*res, stdout, color);
		}
		if ((*res)->exit_code == 2)
			fprintf(stderr, "strictmx: check: %s: the check could not run: %s\n",
			        (*res)->domain, (*res)->reason);
		if ((*res)->exit_code > rc)
			rc = (*res)->exit_code;
		check_result_free(res);
	}
	fflush(stdout);
	check_engine_free(&e);
	event_base_free(base);
	free(slots);
	free(started);
	free(domains);
	return rc;
bad:
	fputs(CHECK_USAGE, stderr);
	free(domains);
	return 2;
}

/* ---- scan ---- */

struct scan {
	struct event_base *base;
	struct check_engine *e;
	char **todo;
	size_t n_todo, next, running, done;
	unsigned concurrency;
	FILE *out;
	/* every domain, earlier lines (resume) and new ones: counted, and a row each */
	struct check_summary sum;
	struct check_row *rows;
	size_t n_rows, cap_rows;
	bool progress;
	struct timespec t0;
	bool io_error;
	struct check_stats stats;
	/* --jobs: worker processes */
	struct scan_worker *workers;
	unsigned n_workers, workers_open;
	size_t per_worker; /* domains in progress in one worker */
};

/* keep - a finished domain's object: into the summary and a row; o is freed */
static void keep(struct scan *s, json_t *o)
{
	if (s->n_rows == s->cap_rows) {
		s->cap_rows = s->cap_rows ? 2 * s->cap_rows : 256;
		s->rows = xrealloc(s->rows, s->cap_rows * sizeof(*s->rows));
	}
	check_summary_add(&s->sum, o);
	check_row_set(&s->rows[s->n_rows++], o);
	json_decref(o);
}

static void scan_fill(struct scan *s);

static void show_progress(struct scan *s, bool last)
{
	struct timespec now;
	double secs, rate, eta;

	if (!s->progress)
		return;
	clock_gettime(CLOCK_MONOTONIC, &now);
	secs = (double)(now.tv_sec - s->t0.tv_sec) + (double)(now.tv_nsec - s->t0.tv_nsec) / 1e9;
	rate = secs > 0 ? (double)s->done / secs : 0;
	eta = rate > 0 ? (double)(s->n_todo - s->done) / rate : 0;
	fprintf(stderr, "\r%zu/%zu domains  %.1f/s  ETA %02d:%02d   ", s->done, s->n_todo, rate,
	        (int)eta / 60, (int)eta % 60);
	if (last)
		fputc('\n', stderr);
	fflush(stderr);
}

/* invalid_line - the line for an input that is not a domain name (caller frees) */
static char *invalid_line(const char *d)
{
	json_t *o = json_pack("{s:s,s:s,s:s,s:[],s:{s:b,s:s,s:b,s:[s]},s:i}", "domain", d, "status",
	                      "invalid", "reason", "not a valid domain name", "mx", "verdict",
	                      "would_deliver", 0, "text", "not a valid domain name", "has_mx", 0,
	                      "reasons", "invalid domain name", "exit", 2);
	char *line = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;

	json_decref(o);
	return line;
}

/* emit - one finished domain: its line to the output, its object kept for the summary */
static void emit(struct scan *s, const char *line)
{
	if (fprintf(s->out, "%s\n", line) < 0 || fflush(s->out) != 0)
		s->io_error = true;
	json_t *o = json_loads(line, 0, NULL);
	if (o)
		keep(s, o);
	s->done++;
	show_progress(s, false);
}

static void scan_done(void *arg, struct check_result *r)
{
	struct scan *s = arg;
	char *line = check_result_json(r);

	check_result_free(&r);
	emit(s, line);
	free(line);
	s->running--;
	scan_fill(s);
}

static void scan_fill(struct scan *s)
{
	while (s->running < s->concurrency && s->next < s->n_todo) {
		const char *d = s->todo[s->next++];
		if (check_start(s->e, d, scan_done, s) < 0) {
			/* not a domain name: a line that says so, like any other result */
			char *line = invalid_line(d);
			if (line != NULL)
				emit(s, line);
			else
				s->done++;
			free(line);
			continue;
		}
		s->running++;
	}
	if (s->running == 0 && s->next >= s->n_todo)
		event_base_loopexit(s->base, NULL);
}

/*
 * ---- --jobs: the domains spread over worker processes ----
 *
 * Each worker is a fork with its own event loop, resolver and check engine;
 * the parent hands out domain names one line at a time over a socketpair
 * (at most per_worker in progress in each worker, so a slow worker gets
 * fewer), and gets back one JSON line per domain. Only the parent writes the
 * output, so it stays one file with one line per domain (in the order the
 * domains finish, as with one loop), and --resume, the summary, --html and
 * --postfix-policy work as before. An empty line from the parent means "no
 * more"; a worker's last line is "#stats ..." (its probe counters).
 *
 * Domains under one parent zone go to one worker (the hash of the name after
 * the first label), as far as the load allows: each worker validates its
 * zones' keys and NSEC3 records once instead of every worker doing it for
 * every zone (docs/checker.md). A worker whose share is done takes the rest
 * of the largest other share from its end, so no worker idles while
 * another has work; a worker that dies leaves its share to the others.
 */

struct scan_worker {
	struct scan *s;
	pid_t pid;
	struct bufferevent *bev;
	size_t inflight;
	bool end_sent, closed;
	size_t *q, q_head, q_end; /* its share: indexes into todo, q[q_head..q_end) left */
};

struct worker_run {
	struct event_base *base;
	struct check_engine *e;
	struct bufferevent *bev;
	size_t running;
	bool ended, closing;
};

static void wk_maybe_end(struct worker_run *w)
{
	struct check_stats st;
	char buf[160];

	if (!w->ended || w->running > 0 || w->closing)
		return;
	w->closing = true;
	check_engine_stats(w->e, &st);
	snprintf(buf, sizeof(buf), "#stats %lu %lu %lu %lu\n", st.tls_run, st.tls_shared,
	         st.enforce_run, st.enforce_shared);
	bufferevent_write(w->bev, buf, strlen(buf));
	/* wk_write ends the loop once the output has left */
}

static void wk_result(void *arg, struct check_result *r)
{
	struct worker_run *w = arg;
	char *line = check_result_json(r);

	check_result_free(&r);
	bufferevent_write(w->bev, line, strlen(line));
	bufferevent_write(w->bev, "\n", 1);
	free(line);
	w->running--;
	wk_maybe_end(w);
}

static void wk_read(struct bufferevent *bev, void *arg)
{
	struct worker_run *w = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	size_t n;
	char *d;

	while (!w->ended && (d = evbuffer_readln(in, &n, EVBUFFER_EOL_LF)) != NULL) {
		if (n == 0) {
			w->ended = true;
		} else if (check_start(w->e, d, wk_result, w) < 0) {
			char *line = invalid_line(d);
			if (line != NULL) {
				bufferevent_write(w->bev, line, strlen(line));
				bufferevent_write(w->bev, "\n", 1);
			}
			free(line);
		} else {
			w->running++;
		}
		free(d);
	}
	wk_maybe_end(w);
}

static void wk_write(struct bufferevent *bev, void *arg)
{
	struct worker_run *w = arg;

	if (w->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		event_base_loopexit(w->base, NULL);
}

static void wk_event(struct bufferevent *bev, short what, void *arg)
{
	struct worker_run *w = arg;

	(void)bev;
	(void)what;
	event_base_loopexit(w->base, NULL); /* the parent is gone */
}

/* worker_main - the child's scan: domains from fd, results to fd; the exit status */
static int worker_main(int fd, const struct config *c, const struct check_opts *o)
{
	struct worker_run w = {0};
	char err[512];
	int rc = 0;

	w.base = loop_new();
	if (w.base == NULL)
		return 2;
	w.e = check_engine_new(w.base, c, o, err, sizeof(err));
	if (w.e == NULL) {
		fprintf(stderr, "strictmx: scan: worker: %s\n", err);
		event_base_free(w.base);
		return 2;
	}
	w.bev = bufferevent_socket_new(w.base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (w.bev == NULL) {
		rc = 2;
		goto out;
	}
	bufferevent_setcb(w.bev, wk_read, wk_write, wk_event, &w);
	bufferevent_enable(w.bev, EV_READ | EV_WRITE);
	event_base_dispatch(w.base);
	if (!w.closing)
		rc = 2;
	bufferevent_free(w.bev);
out:
	check_engine_free(&w.e);
	event_base_free(w.base);
	return rc;
}

/* par_take - the next domain for w: its own share first, else the end of the largest */
static const char *par_take(struct scan_worker *w)
{
	struct scan *s = w->s;
	struct scan_worker *from = NULL;

	if (w->q_head < w->q_end)
		return s->todo[w->q[w->q_head++]];
	for (unsigned i = 0; i < s->n_workers; i++) {
		struct scan_worker *o = &s->workers[i];
		if (o->q_end > o->q_head &&
		    (from == NULL || o->q_end - o->q_head > from->q_end - from->q_head))
			from = o;
	}
	return from != NULL ? s->todo[from->q[--from->q_end]] : NULL;
}

static void par_feed(struct scan_worker *w)
{
	struct scan *s = w->s;

	while (w->inflight < s->per_worker && s->next < s->n_todo) {
		const char *d = par_take(w);
		if (d == NULL)
			break;
		s->next++;
		bufferevent_write(w->bev, d, strlen(d));
		bufferevent_write(w->bev, "\n", 1);
		w->inflight++;
	}
	if (s->next >= s->n_todo && !w->end_sent) {
		bufferevent_write(w->bev, "\n", 1);
		w->end_sent = true;
	}
}

static void par_close(struct scan_worker *w)
{
	struct scan *s = w->s;

	if (w->closed)
		return;
	w->closed = true;
	bufferevent_free(w->bev);
	w->bev = NULL;
	if (--s->workers_open == 0)
		event_base_loopexit(s->base, NULL);
}

static void par_read(struct bufferevent *bev, void *arg)
{
	struct scan_worker *w = arg;
	struct scan *s = w->s;
	struct evbuffer *in = bufferevent_get_input(bev);
	size_t n;
	char *line;

	while ((line = evbuffer_readln(in, &n, EVBUFFER_EOL_LF)) != NULL) {
		struct check_stats st = {0};
		if (sscanf(line, "#stats %lu %lu %lu %lu", &st.tls_run, &st.tls_shared,
		           &st.enforce_run, &st.enforce_shared) == 4) {
			s->stats.tls_run += st.tls_run;
			s->stats.tls_shared += st.tls_shared;
			s->stats.enforce_run += st.enforce_run;
			s->stats.enforce_shared += st.enforce_shared;
		} else if (n > 0) {
			emit(s, line);
			if (w->inflight > 0)
				w->inflight--;
		}
		free(line);
	}
	par_feed(w);
}

static void par_event(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		par_close(arg);
}

/* parent_hash - a hash of the domain's parent zone (check_parent: the pilots' notion too) */
static unsigned parent_hash(const char *domain)
{
	unsigned h = 2166136261u;

	for (const char *p = check_parent(domain); *p; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	return h;
}

/* par_share - each worker's share of the todo list, by parent zone, in input order */
static void par_share(struct scan *s)
{
	for (unsigned i = 0; i < s->n_workers; i++)
		s->workers[i].q = xcalloc(s->n_todo + 1, sizeof(size_t));
	for (size_t i = 0; i < s->n_todo; i++) {
		struct scan_worker *w = &s->workers[parent_hash(s->todo[i]) % s->n_workers];
		w->q[w->q_end++] = i;
	}
}

/*
 * scan_parallel - run the scan in n worker processes; false when they could
 * not be started (the caller says why and scans on its own loop)
 */
static bool scan_parallel(struct scan *s, const struct config *c, const struct check_opts *o,
                          unsigned n, struct timeval deadline)
{
	int fds[MAX_JOBS][2];
	unsigned started = 0;

	fflush(NULL); /* the children must not write what the parent buffered */
	s->workers = xcalloc(n, sizeof(*s->workers));
	for (unsigned i = 0; i < n; i++) {
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds[i]) < 0)
			break;
		pid_t pid = fork();
		if (pid < 0) {
			close(fds[i][0]);
			close(fds[i][1]);
			break;
		}
		if (pid == 0) {
			for (unsigned k = 0; k < i; k++)
				close(fds[k][0]);
			close(fds[i][0]);
			/* exit, not _exit: the sanitizer builds check the worker for leaks too */
			exit(worker_main(fds[i][1], c, o));
		}
		close(fds[i][1]);
		s->workers[i].pid = pid;
		s->workers[i].s = s;
		started++;
	}
	if (started == 0) {
		free(s->workers);
		s->workers = NULL;
		return false;
	}
	s->per_worker = (s->concurrency + started - 1) / started;
	s->n_workers = started;
	par_share(s);
	s->base = loop_new();
	for (unsigned i = 0; i < started; i++) {
		struct scan_worker *w = &s->workers[i];
		w->bev = s->base ? bufferevent_socket_new(s->base, fds[i][0], BEV_OPT_CLOSE_ON_FREE)
		                 : NULL;
		if (w->bev == NULL) {
			close(fds[i][0]);
			w->closed = true;
			continue;
		}
		s->workers_open++;
		bufferevent_setcb(w->bev, par_read, NULL, par_event, w);
		bufferevent_enable(w->bev, EV_READ | EV_WRITE);
		par_feed(w);
	}
	if (s->workers_open > 0) {
		event_base_loopexit(s->base, &deadline);
		event_base_dispatch(s->base);
	}
	for (unsigned i = 0; i < started; i++) {
		struct scan_worker *w = &s->workers[i];
		int st;
		if (!w->closed) {
			/* past the deadline: stop the workers this scan started */
			kill(w->pid, SIGTERM);
			par_close(w);
		}
		/* a worker that failed leaves domains unfinished: reported by the caller */
		while (waitpid(w->pid, &st, 0) < 0 && errno == EINTR)
			;
	}
	for (unsigned i = 0; i < started; i++)
		free(s->workers[i].q);
	free(s->workers);
	s->workers = NULL;
	s->n_workers = 0;
	return true;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

struct named {
	const char *name;
	size_t at;
};

static int cmp_named(const void *a, const void *b)
{
	const struct named *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	return c != 0 ? c : x->at < y->at ? -1 : x->at > y->at;
}

/* dedupe - drop later copies of a name, in input order: O(n log n) for millions of lines */
static size_t dedupe(char **d, size_t n)
{
	struct named *v = xcalloc(n + 1, sizeof(*v));
	bool *drop = xcalloc(n + 1, sizeof(*drop));
	size_t k = 0;

	for (size_t i = 0; i < n; i++)
		v[i] = (struct named){d[i], i};
	qsort(v, n, sizeof(*v), cmp_named);
	for (size_t i = 1; i < n; i++)
		if (!strcmp(v[i].name, v[i - 1].name))
			drop[v[i].at] = true;
	for (size_t i = 0; i < n; i++) {
		if (drop[i])
			free(d[i]);
		else
			d[k++] = d[i];
	}
	free(v);
	free(drop);
	return k;
}

/* read_domains - one per line, '#' starts a comment, lowercase, no duplicates */
static char **read_domains(FILE *f, size_t *n)
{
	char *line = NULL;
	size_t cap = 0, nd = 0, cd = 0;
	char **d = NULL;

	while (getline(&line, &cap, f) >= 0) {
		char *h = strchr(line, '#');
		if (h)
			*h = '\0';
		char *p = line;
		while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
			p++;
		char *e = p + strlen(p);
		while (e > p && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
			e--;
		*e = '\0';
		if (*p == '\0')
			continue;
		for (char *q = p; *q; q++)
			if (*q >= 'A' && *q <= 'Z')
				*q = (char)(*q - 'A' + 'a');
		if (e > p && e[-1] == '.')
			e[-1] = '\0';
		if (nd == cd) {
			cd = cd ? 2 * cd : 64;
			d = xrealloc(d, cd * sizeof(*d));
		}
		d[nd++] = xstrdup(p);
	}
	free(line);
	*n = dedupe(d, nd);
	return d;
}

static int write_file(const char *path, const char *what, struct scan *s,
                      const struct check_summary *sum)
{
	FILE *f = fopen(path, "w");
	if (f == NULL) {
		fprintf(stderr, "strictmx: scan: %s %s: %s\n", what, path, strerror(errno));
		return -1;
	}
	if (!strcmp(what, "--html")) {
		check_html_write(f, sum, s->rows, s->n_rows);
	} else {
		for (size_t i = 0; i < s->n_rows; i++)
			if (s->rows[i].postfix != NULL)
				fprintf(f, "%s\n", s->rows[i].postfix);
	}
	if (fclose(f) != 0) {
		fprintf(stderr, "strictmx: scan: %s %s: %s\n", what, path, strerror(errno));
		return -1;
	}
	return 0;
}

int scan_cli(const struct config *c, int argc, char **argv)
{
	struct check_opts o = {.timeout = 10, .per_ip = 4};
	struct scan s = {.concurrency = 200}; /* s.sum zeroed, as check_summary_init does */
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned jobs = ncpu < 1 ? 1 : ncpu > MAX_JOBS ? MAX_JOBS : (unsigned)ncpu;
	const char *input = NULL, *output = NULL, *html = NULL, *pf = NULL;
	bool resume = false;
	char err[512];
	int rc = 0;
	long v;

	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		const char *val = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--resume")) {
			resume = true;
		} else if (!strcmp(a, "--concurrency")) {
			if (num_arg("scan", a, val, 1, 100000, &v) < 0)
				goto bad;
			s.concurrency = (unsigned)v;
			i++;
		} else if (!strcmp(a, "--per-ip")) {
			if (num_arg("scan", a, val, 1, 1000, &v) < 0)
				goto bad;
			o.per_ip = (unsigned)v;
			i++;
		} else if (!strcmp(a, "--jobs")) {
			if (num_arg("scan", a, val, 1, MAX_JOBS, &v) < 0)
				goto bad;
			jobs = (unsigned)v;
			i++;
		} else if (!strcmp(a, "--port")) {
			if (num_arg("scan", a, val, 1, 65535, &v) < 0)
				goto bad;
			o.port = (uint16_t)v;
			i++;
		} else if (!strcmp(a, "--timeout")) {
			if (num_arg("scan", a, val, 1, 3600, &v) < 0)
				goto bad;
			o.timeout = (unsigned)v;
			i++;
		} else if (!strcmp(a, "--dns-transport")) {
			if (transport_arg("scan", a, val, &o.dns_transport) < 0)
				goto bad;
			i++;
		} else if (!strcmp(a, "--output") || !strcmp(a, "--html") ||
		           !strcmp(a, "--postfix-policy")) {
			if (val == NULL) {
				fprintf(stderr, "strictmx: scan: %s needs a file name\n", a);
				goto bad;
			}
			if (!strcmp(a, "--output"))
				output = val;
			else if (!strcmp(a, "--html"))
				html = val;
			else
				pf = val;
			i++;
		} else if (a[0] == '-' && a[1] != '\0') {
			fprintf(stderr, "strictmx: scan: unknown option '%s'\n", a);
			goto bad;
		} else if (input == NULL) {
			input = a;
		} else {
			fprintf(stderr, "strictmx: scan: unexpected argument '%s'\n", a);
			goto bad;
		}
	}
	if (resume && output == NULL) {
		fprintf(stderr, "strictmx: scan: --resume needs --output FILE\n");
		goto bad;
	}

	FILE *in = stdin;
	if (input != NULL && strcmp(input, "-") != 0) {
		in = fopen(input, "r");
		if (in == NULL) {
			fprintf(stderr, "strictmx: scan: %s: %s\n", input, strerror(errno));
			return 2;
		}
	}
	size_t n_dom = 0;
	char **doms = read_domains(in, &n_dom);
	if (in != stdin)
		fclose(in);

	/* --resume: the domains already in the output are done */
	bool need_nl = false;
	if (resume) {
		FILE *prev = fopen(output, "r");
		if (prev != NULL) {
			char *line = NULL;
			size_t cap = 0;
			ssize_t len;
			while ((len = getline(&line, &cap, prev)) >= 0) {
				need_nl = len > 0 && line[len - 1] != '\n';
				json_t *jo = json_loads(line, 0, NULL);
				const char *d = json_string_value(json_object_get(jo, "domain"));
				if (jo == NULL || d == NULL) {
					json_decref(jo);
					continue; /* a line cut short by an interrupted scan */
				}
				keep(&s, jo);
			}
			free(line);
			fclose(prev);
		}
		/* sorted names and a binary search: a resumed scan of millions stays quick */
		const char **seen = xcalloc(s.n_rows + 1, sizeof(*seen));
		size_t k = 0;
		for (size_t j = 0; j < s.n_rows; j++)
			seen[j] = s.rows[j].domain;
		qsort(seen, s.n_rows, sizeof(*seen), cmp_str);
		for (size_t i = 0; i < n_dom; i++) {
			const char *key = doms[i];
			if (s.n_rows > 0 && bsearch(&key, seen, s.n_rows, sizeof(*seen), cmp_str))
				free(doms[i]);
			else
				doms[k++] = doms[i];
		}
		free(seen);
		n_dom = k;
	}
	s.todo = doms;
	s.n_todo = n_dom;
	s.out = stdout;
	if (output != NULL) {
		s.out = fopen(output, resume ? "a" : "w");
		if (s.out == NULL) {
			fprintf(stderr, "strictmx: scan: --output %s: %s\n", output,
			        strerror(errno));
			rc = 2;
			goto out;
		}
		if (need_nl)
			fputc('\n', s.out);
	}
	s.progress = isatty(STDERR_FILENO);
	log_set_level(LOG_LVL_ERR);
	/* a peer (or a worker) that closes early is an error to report, not a reason to die */
	signal(SIGPIPE, SIG_IGN);

	/* many connections at once: allow as many descriptors as we may */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	/*
	 * --jobs: each worker gets its share of --concurrency and of --per-ip,
	 * so that the scan as a whole keeps both limits (no more jobs than
	 * --per-ip allows, nor than there are domains).
	 */
	if (jobs > o.per_ip)
		jobs = o.per_ip;
	if (jobs > s.n_todo)
		jobs = s.n_todo > 0 ? (unsigned)s.n_todo : 1;
	if (jobs > s.concurrency)
		jobs = s.concurrency;
	if (jobs == 0) /* the option parsers allow no 0; said for the analyzer */
		jobs = 1;
	struct timeval deadline = run_deadline(o.timeout, s.n_todo, s.concurrency);
	struct check_opts wo = o;
	wo.per_ip = o.per_ip / jobs;

	/* the engine is set up once here, so that a bad setting is reported once */
	s.base = loop_new();
	if (s.base == NULL) {
		fprintf(stderr, "strictmx: scan: cannot create the event loop\n");
		rc = 2;
		goto out;
	}
	s.e = check_engine_new(s.base, c, jobs > 1 ? &wo : &o, err, sizeof(err));
	if (s.e == NULL) {
		fprintf(stderr, "strictmx: scan: %s\n", err);
		rc = 2;
		goto out;
	}
	clock_gettime(CLOCK_MONOTONIC, &s.t0);
	if (s.n_todo > 0 && jobs > 1) {
		/* the workers build their own (after fork: nothing shared with the parent's) */
		check_engine_free(&s.e);
		event_base_free(s.base);
		s.base = NULL;
		if (!scan_parallel(&s, c, &wo, jobs, deadline)) {
			fprintf(stderr, "strictmx: scan: cannot start %u jobs (%s); one loop\n",
			        jobs, strerror(errno));
			jobs = 1;
			if (s.base == NULL)
				s.base = loop_new();
			s.e = s.base ? check_engine_new(s.base, c, &o, err, sizeof(err)) : NULL;
			if (s.e == NULL) {
				fprintf(stderr, "strictmx: scan: %s\n", err);
				rc = 2;
				goto out;
			}
		}
	}
	if (s.n_todo > 0 && jobs <= 1) {
		scan_fill(&s);
		if (s.running > 0) {
			event_base_loopexit(s.base, &deadline);
			event_base_dispatch(s.base);
		}
		check_engine_stats(s.e, &s.stats);
	}
	if (s.n_todo > 0) {
		show_progress(&s, true);
		if (s.done < s.n_todo) {
			fprintf(stderr, "strictmx: scan: %zu domains not finished within %ld s\n",
			        s.n_todo - s.done, (long)deadline.tv_sec);
			rc = 2;
		}
	}
	if (s.io_error) {
		fprintf(stderr, "strictmx: scan: writing the results failed\n");
		rc = 2;
	}

	struct check_summary *sum = &s.sum;
	check_summary_sort(sum);
	/* the JSON lines own stdout unless they go to a file */
	check_summary_print(sum, output != NULL ? stdout : stderr);
	if (s.n_todo > 0)
		fprintf(output != NULL ? stdout : stderr,
		        "  probes: %lu TLS (+%lu answered by a shared result), %lu enforcement "
		        "(+%lu shared); %u job%s\n",
		        s.stats.tls_run, s.stats.tls_shared, s.stats.enforce_run,
		        s.stats.enforce_shared, jobs, jobs == 1 ? "" : "s");
	if (html && write_file(html, "--html", &s, sum) < 0)
		rc = 2;
	if (pf && write_file(pf, "--postfix-policy", &s, sum) < 0)
		rc = 2;
out:
	check_engine_free(&s.e);
	if (s.base)
		event_base_free(s.base);
	if (s.out != NULL && s.out != stdout)
		fclose(s.out);
	for (size_t i = 0; i < s.n_todo; i++)
		free(s.todo[i]);
	free(s.todo);
	for (size_t i = 0; i < s.n_rows; i++)
		check_row_free(&s.rows[i]);
	free(s.rows);
	check_summary_free(&s.sum);
	return rc;
bad:
	fputs(SCAN_USAGE, stderr);
	return 2;
}
