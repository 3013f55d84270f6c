/*
 * check/cli - `strictmx check DOMAIN...` and `strictmx scan [FILE|-]`;
 * see docs/checker.md.
 */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

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
	"usage: strictmx [-c FILE] scan [FILE|-] [--concurrency N] [--per-ip N] "                  \
	"[--output FILE] [--resume] [--html FILE] [--postfix-policy FILE] [--port N] "             \
	"[--timeout S]\n"

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

	struct event_base *base = event_base_new();
	if (base == NULL) {
		fprintf(stderr, "strictmx: check: event_base_new failed\n");
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
	json_t **all; /* every domain's object: earlier lines (resume) and new ones */
	size_t n_all, cap_all;
	bool progress;
	struct timespec t0;
	bool io_error;
};

static void keep(struct scan *s, json_t *o)
{
	if (s->n_all == s->cap_all) {
		s->cap_all = s->cap_all ? 2 * s->cap_all : 256;
		s->all = xrealloc(s->all, s->cap_all * sizeof(*s->all));
	}
	s->all[s->n_all++] = o;
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

static void scan_done(void *arg, struct check_result *r)
{
	struct scan *s = arg;
	char *line = check_result_json(r);

	if (fprintf(s->out, "%s\n", line) < 0 || fflush(s->out) != 0)
		s->io_error = true;
	json_t *o = json_loads(line, 0, NULL);
	if (o)
		keep(s, o);
	free(line);
	check_result_free(&r);
	s->running--;
	s->done++;
	show_progress(s, false);
	scan_fill(s);
}

static void scan_fill(struct scan *s)
{
	while (s->running < s->concurrency && s->next < s->n_todo) {
		const char *d = s->todo[s->next++];
		if (check_start(s->e, d, scan_done, s) < 0) {
			/* not a domain name: a line that says so, like any other result */
			json_t *o = json_pack(
			    "{s:s,s:s,s:s,s:[],s:{s:b,s:s,s:b,s:[s]},s:i}", "domain", d, "status",
			    "invalid", "reason", "not a valid domain name", "mx", "verdict",
			    "would_deliver", 0, "text", "not a valid domain name", "has_mx", 0,
			    "reasons", "invalid domain name", "exit", 2);
			char *line = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
			if (line && (fprintf(s->out, "%s\n", line) < 0 || fflush(s->out) != 0))
				s->io_error = true;
			free(line);
			if (o)
				keep(s, o);
			s->done++;
			continue;
		}
		s->running++;
	}
	if (s->running == 0 && s->next >= s->n_todo)
		event_base_loopexit(s->base, NULL);
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
		bool dup = false;
		for (size_t i = 0; i < nd && !dup; i++)
			dup = !strcmp(d[i], p);
		if (dup)
			continue;
		if (nd == cd) {
			cd = cd ? 2 * cd : 64;
			d = xrealloc(d, cd * sizeof(*d));
		}
		d[nd++] = xstrdup(p);
	}
	free(line);
	*n = nd;
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
		check_html_write(f, sum, s->all, s->n_all);
	} else {
		char line[4096];
		for (size_t i = 0; i < s->n_all; i++)
			if (check_postfix_policy(s->all[i], line, sizeof(line)))
				fprintf(f, "%s\n", line);
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
	struct scan s = {.concurrency = 200};
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
		size_t k = 0;
		for (size_t i = 0; i < n_dom; i++) {
			bool done = false;
			for (size_t j = 0; j < s.n_all && !done; j++)
				done =
				    !strcmp(json_string_value(json_object_get(s.all[j], "domain")),
				            doms[i]);
			if (done)
				free(doms[i]);
			else
				doms[k++] = doms[i];
		}
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

	/* many connections at once: allow as many descriptors as we may */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	s.base = event_base_new();
	if (s.base == NULL) {
		fprintf(stderr, "strictmx: scan: event_base_new failed\n");
		rc = 2;
		goto out;
	}
	s.e = check_engine_new(s.base, c, &o, err, sizeof(err));
	if (s.e == NULL) {
		fprintf(stderr, "strictmx: scan: %s\n", err);
		rc = 2;
		goto out;
	}
	clock_gettime(CLOCK_MONOTONIC, &s.t0);
	if (s.n_todo > 0) {
		struct timeval deadline = run_deadline(o.timeout, s.n_todo, s.concurrency);
		scan_fill(&s);
		if (s.running > 0) {
			event_base_loopexit(s.base, &deadline);
			event_base_dispatch(s.base);
		}
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

	struct check_summary sum;
	check_summary_init(&sum);
	for (size_t i = 0; i < s.n_all; i++)
		check_summary_add(&sum, s.all[i]);
	check_summary_sort(&sum);
	/* the JSON lines own stdout unless they go to a file */
	check_summary_print(&sum, output != NULL ? stdout : stderr);
	if (html && write_file(html, "--html", &s, &sum) < 0)
		rc = 2;
	if (pf && write_file(pf, "--postfix-policy", &s, &sum) < 0)
		rc = 2;
	check_summary_free(&sum);
out:
	check_engine_free(&s.e);
	if (s.base)
		event_base_free(s.base);
	if (s.out != NULL && s.out != stdout)
		fclose(s.out);
	for (size_t i = 0; i < s.n_todo; i++)
		free(s.todo[i]);
	free(s.todo);
	for (size_t i = 0; i < s.n_all; i++)
		json_decref(s.all[i]);
	free(s.all);
	return rc;
bad:
	fputs(SCAN_USAGE, stderr);
	return 2;
}
