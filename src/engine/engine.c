/*
 * engine - queue consumers; see engine.h.
 *
 * Local recipients: Maildir (synchronous, fsync'd) or the LMTP next hop.
 * Remote recipients: outbound delivery over verified TLS (outbound/).
 */
#include "engine/engine.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"
#include "common/fsyncpool.h"
#include "common/log.h"
#include "common/worker.h"
#include "common/xmalloc.h"
#include "delivery/lmtp.h"
#include "delivery/maildir.h"
#include "dns/dns.h"
#include "outbound/delivery.h"
#include "queue/queue.h"

struct lmtp_ctx {
	struct engine *e;
	struct lmtp_ctx *next;
	struct lmtp_job *job;
	uint64_t job_id;
	size_t n;
};

struct remote_ctx {
	struct engine *e;
	struct remote_ctx *next;
	struct outbound_delivery *d;
	uint64_t job_id;
};

struct engine {
	struct event_base *base;
	const struct config *cfg;
	struct queue *q;
	struct lmtp_ctx *lmtp_jobs;
	struct dns_ctx *dns;
	struct outbound_ctx *out;
	struct remote_ctx *remote_jobs;
	struct worker *mw; /* Maildir deliveries */
	struct md_job *md_pending, **md_tail, *md_inflight;
	bool anchors_checked; /* at the first remote delivery: check_anchors() */
};

static void result_set(struct queue_rcpt_result *r, enum queue_outcome o, int code, const char *enh,
                       const char *detail)
{
	memset(r, 0, sizeof(*r));
	r->outcome = o;
	if (code)
		smtp_reply_set(&r->reply, code, enh, "%s", detail);
	snprintf(r->detail, sizeof(r->detail), "%s", detail);
}

/*
 * Maildir deliveries run on the engine's worker thread, in batches: every
 * job that arrives while a batch is on the disk joins the next one. A batch
 * places each file (link into tmp/, rename into new/), then fsyncs every
 * new/ directory it touched at once (common/fsyncpool.h), and only then are
 * the results handed to the queue.
 */
struct md_job {
	struct md_job *next;
	uint64_t job_id;
	char *body_path, *domain;
	size_t n;
	char **users;
	struct queue_rcpt_result *res;
	char **placed; /* per recipient, the file in new/ until its dir is synced */
};

static void md_job_free(struct md_job *j)
{
	for (size_t i = 0; i < j->n; i++) {
		free(j->users[i]);
		free(j->placed[i]);
	}
	free(j->users);
	free(j->placed);
	free(j->res);
	free(j->body_path);
	free(j->domain);
	free(j);
}

static char *dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');
	return slash ? xstrndup(path, (size_t)(slash - path)) : xstrdup(".");
}

static void md_work(void *arg)
{
	struct engine *e = arg;
	char **dirs = NULL;
	size_t n_dirs = 0;
	for (struct md_job *j = e->md_inflight; j; j = j->next)
		for (size_t i = 0; i < j->n; i++) {
			char err[512];
			struct maildir_rcpt r = {.domain = j->domain, .user = j->users[i]};
			snprintf(j->res[i].mx, sizeof(j->res[i].mx), "maildir");
			if (!maildir_user_ok(r.user)) {
				result_set(&j->res[i], QUEUE_FAIL, 550, "5.1.1",
				           "no such local mailbox");
				continue;
			}
			if (maildir_place_file(j->body_path, e->cfg->maildir, &r, &j->placed[i],
			                       err, sizeof(err)) < 0) {
				/* disk full, permissions: an environment error, retried */
				result_set(&j->res[i], QUEUE_DEFER, 451, "4.3.0", err);
				continue;
			}
			char *d = dir_of(j->placed[i]);
			bool seen = false;
			for (size_t k = 0; k < n_dirs && !seen; k++)
				seen = strcmp(dirs[k], d) == 0;
			if (seen) {
				free(d);
				continue;
			}
			dirs = xrealloc(dirs, (n_dirs + 1) * sizeof(*dirs));
			dirs[n_dirs++] = d;
		}
	int *fds = xcalloc(n_dirs + 1, sizeof(int)), *errs = xcalloc(n_dirs + 1, sizeof(int));
	size_t n_fds = 0;
	char **fd_dir = xcalloc(n_dirs + 1, sizeof(char *));
	for (size_t k = 0; k < n_dirs; k++) {
		int fd = open(dirs[k], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0)
			continue; /* not synced: its deliveries are deferred below */
		fd_dir[n_fds] = dirs[k];
		fds[n_fds++] = fd;
	}
	fsync_all(fds, n_fds, errs);
	for (size_t k = 0; k < n_fds; k++)
		close(fds[k]);
	for (struct md_job *j = e->md_inflight; j; j = j->next)
		for (size_t i = 0; i < j->n; i++) {
			if (j->placed[i] == NULL)
				continue;
			char *d = dir_of(j->placed[i]);
			int err = ENOENT;
			for (size_t k = 0; k < n_fds; k++)
				if (strcmp(fd_dir[k], d) == 0)
					err = errs[k];
			free(d);
			if (err == 0) {
				result_set(&j->res[i], QUEUE_DELIVERED, 250, "2.0.0",
				           "delivered to maildir");
			} else {
				char msg[512];
				snprintf(msg, sizeof(msg), "fsync of the directory of %s: %s",
				         j->placed[i], strerror(err));
				unlink(j->placed[i]); /* not durable: retried, not doubled */
				result_set(&j->res[i], QUEUE_DEFER, 451, "4.3.0", msg);
			}
			snprintf(j->res[i].mx, sizeof(j->res[i].mx), "maildir");
		}
	for (size_t k = 0; k < n_dirs; k++)
		free(dirs[k]);
	free(dirs);
	free(fds);
	free(errs);
	free(fd_dir);
}

static void md_start(struct engine *e);

static void md_done(void *arg)
{
	struct engine *e = arg;
	struct md_job *list = e->md_inflight;
	e->md_inflight = NULL;
	while (list) {
		struct md_job *j = list;
		list = j->next;
		queue_job_done(e->q, j->job_id, j->res);
		md_job_free(j);
	}
	md_start(e);
}

static void md_start(struct engine *e)
{
	if (e->md_inflight || e->md_pending == NULL)
		return;
	e->md_inflight = e->md_pending;
	e->md_pending = NULL;
	e->md_tail = &e->md_pending;
	if (e->mw)
		worker_submit(e->mw, md_work, md_done, e);
	else {
		md_work(e);
		md_done(e);
	}
}

static void deliver_maildir(struct engine *e, const struct queue_job *job)
{
	struct md_job *j = xcalloc(1, sizeof(*j));
	j->job_id = job->job_id;
	j->body_path = xstrdup(job->body_path);
	j->domain = xstrdup(job->domain);
	j->n = job->n_rcpts;
	j->users = xcalloc(j->n + 1, sizeof(char *));
	j->placed = xcalloc(j->n + 1, sizeof(char *));
	j->res = xcalloc(j->n + 1, sizeof(*j->res));
	for (size_t i = 0; i < j->n; i++)
		j->users[i] = job->local_users[i] ? xstrdup(job->local_users[i]) : NULL;
	*e->md_tail = j;
	e->md_tail = &j->next;
	md_start(e);
}

static void lmtp_done(void *arg, const struct smtp_reply *replies, size_t n)
{
	struct lmtp_ctx *lc = arg;
	struct engine *e = lc->e;
	struct queue_rcpt_result *res = xcalloc(n ? n : 1, sizeof(*res));
	for (size_t i = 0; i < n; i++) {
		const struct smtp_reply *r = &replies[i];
		res[i].outcome = r->code >= 200 && r->code < 300 ? QUEUE_DELIVERED
		                 : r->code >= 500                ? QUEUE_FAIL
		                                                 : QUEUE_DEFER;
		res[i].reply = *r;
		snprintf(res[i].mx, sizeof(res[i].mx), "%s", e->cfg->lmtp);
		snprintf(res[i].detail, sizeof(res[i].detail), "lmtp: %d %s %s", r->code,
		         r->enhanced, r->text);
	}
	for (struct lmtp_ctx **pp = &e->lmtp_jobs; *pp; pp = &(*pp)->next)
		if (*pp == lc) {
			*pp = lc->next;
			break;
		}
	uint64_t job_id = lc->job_id;
	free(lc);
	queue_job_done(e->q, job_id, res);
	free(res);
}

static void deliver_lmtp(struct engine *e, const struct queue_job *job)
{
	struct lmtp_ctx *lc = xcalloc(1, sizeof(*lc));
	lc->e = e;
	lc->job_id = job->job_id;
	lc->n = job->n_rcpts;
	struct lmtp_request req = {
	    .hostport = e->cfg->lmtp,
	    .lhlo_name = e->cfg->hostname,
	    .spool_path = job->body_path,
	    .from = job->sender,
	    .rcpts = (const char *const *)job->rcpts,
	    .n_rcpts = job->n_rcpts,
	    .timeout = e->cfg->out_command_timeout,
	};
	lc->next = e->lmtp_jobs;
	e->lmtp_jobs = lc;
	lc->job = lmtp_deliver(e->base, &req, lmtp_done, lc);
	if (lc->job == NULL) {
		struct smtp_reply *r = xcalloc(job->n_rcpts, sizeof(*r));
		for (size_t i = 0; i < job->n_rcpts; i++)
			smtp_reply_set(&r[i], 451, "4.4.0", "cannot start LMTP delivery to %s",
			               e->cfg->lmtp);
		lmtp_done(lc, r, job->n_rcpts);
		free(r);
	}
}

static void remote_done(void *arg, const struct outbound_rcpt_outcome *o, size_t n)
{
	struct remote_ctx *rc = arg;
	struct engine *e = rc->e;
	struct queue_rcpt_result *res = xcalloc(n ? n : 1, sizeof(*res));
	for (size_t i = 0; i < n; i++) {
		res[i].outcome = o[i].outcome == OUT_DELIVERED ? QUEUE_DELIVERED
		                 : o[i].outcome == OUT_FAIL    ? QUEUE_FAIL
		                                               : QUEUE_DEFER;
		res[i].reply = o[i].reply;
		snprintf(res[i].mx, sizeof(res[i].mx), "%s", o[i].mx);
		snprintf(res[i].detail, sizeof(res[i].detail), "%s", o[i].detail);
	}
	for (struct remote_ctx **pp = &e->remote_jobs; *pp; pp = &(*pp)->next)
		if (*pp == rc) {
			*pp = rc->next;
			break;
		}
	uint64_t job_id = rc->job_id;
	free(rc);
	queue_job_done(e->q, job_id, res);
	free(res);
}

#define NO_DANE_EFFECT                                                                             \
	"DANE cannot be used: TLSA records are not trusted, DANE destinations are verified by "    \
	"PKIX, dane-only ones defer"

/* anchor_cb - the DNSKEY set of a trust anchor's zone: validated, or DANE is off */
static void anchor_cb(void *arg, const struct dns_result *r)
{
	(void)arg;
	if (r->status == DNS_OK && r->sec == DNS_SEC_SECURE) {
		log_info("event=dnssec_ready anchor=%s", r->name);
		return;
	}
	const char *why = r->why_bogus ? r->why_bogus : r->error ? r->error : "";
	char esc[512];
	log_err("event=dnssec_unvalidated anchor=%s status=%s sec=%s why=\"%s\" effect=\"%s\" "
	        "hint=\"check [dns] trust_anchor and that the resolver reaches the zone\"",
	        r->name, dns_status_name(r->status), dns_sec_name(r->sec),
	        log_escape(why, strlen(why), esc, sizeof(esc)), NO_DANE_EFFECT);
}

/*
 * check_anchors - a trust anchor that does not validate (wrong key, rolled
 * key, unreachable zone) leaves every answer insecure without an error
 * anywhere: DANE silently off. So the first remote delivery (the first time
 * the daemon resolves anyway, no query at startup) also asks for each
 * anchor's DNSKEY set and logs whether it validates.
 */
static void check_anchors(struct engine *e)
{
	const struct strlist *ta = &e->cfg->trust_anchors;
	if (ta->n == 0) {
		log_err(
		    "event=dnssec_unvalidated reason=\"no trust_anchor configured\" effect=\"%s\"",
		    NO_DANE_EFFECT);
		return;
	}
	for (size_t i = 0; i < ta->n; i++) {
		char owner[256];
		if (dns_anchor_owner(ta->v[i], owner, sizeof(owner)) < 0) {
			log_err("event=dnssec_unvalidated file=%s reason=\"no record in the trust "
			        "anchor "
			        "file\" effect=\"%s\"",
			        ta->v[i], NO_DANE_EFFECT);
			continue;
		}
		if (dns_query(e->dns, owner, DNS_T_DNSKEY, anchor_cb, e, NULL) < 0)
			log_err("event=dnssec_unvalidated anchor=%s reason=\"query failed\"",
			        owner);
	}
}

static void deliver_remote(struct engine *e, struct queue *q, const struct queue_job *job)
{
	if (!e->anchors_checked) {
		e->anchors_checked = true;
		check_anchors(e);
	}
	struct remote_ctx *rc = xcalloc(1, sizeof(*rc));
	rc->e = e;
	rc->job_id = job->job_id;
	rc->next = e->remote_jobs;
	e->remote_jobs = rc;
	struct outbound_request req = {
	    .msg_id = job->msg_id,
	    .domain = job->domain,
	    .sender = job->sender,
	    .rcpts = (const char *const *)job->rcpts,
	    .n_rcpts = job->n_rcpts,
	    .body_path = job->body_path,
	    .size = job->size,
	};
	/* the delivery may finish (and free rc) before it returns */
	struct outbound_delivery *d = outbound_deliver(e->out, &req, remote_done, rc);
	for (struct remote_ctx *r = e->remote_jobs; r; r = r->next)
		if (r == rc)
			rc->d = d;
}

/* deliver_discard - [local_delivery] discard = yes: Postfix's discard(8) */
static void deliver_discard(struct queue *q, const struct queue_job *job)
{
	struct queue_rcpt_result *res = xcalloc(job->n_rcpts + 1, sizeof(*res));
	for (size_t i = 0; i < job->n_rcpts; i++) {
		result_set(&res[i], QUEUE_DELIVERED, 250, "2.0.0",
		           "discarded ([local_delivery] discard = yes)");
		snprintf(res[i].mx, sizeof(res[i].mx), "discard");
	}
	queue_job_done(q, job->job_id, res);
	free(res);
}

static void deliver(void *arg, struct queue *q, const struct queue_job *job)
{
	struct engine *e = arg;
	if (job->local && e->cfg->local_discard)
		deliver_discard(q, job);
	else if (job->local && e->cfg->lmtp)
		deliver_lmtp(e, job);
	else if (job->local)
		deliver_maildir(e, job);
	else
		deliver_remote(e, q, job);
}

struct engine *engine_new(struct event_base *base, const struct config *c, struct queue *q,
                          char *err, size_t errlen)
{
	struct engine *e = xcalloc(1, sizeof(*e));
	e->base = base;
	e->cfg = c;
	e->q = q;
	e->dns = dns_new(base, c, err, errlen);
	if (e->dns == NULL) {
		free(e);
		return NULL;
	}
	e->out = outbound_ctx_new(base, c, e->dns, err, errlen);
	if (e->out == NULL) {
		dns_free(&e->dns);
		free(e);
		return NULL;
	}
	e->md_tail = &e->md_pending;
	e->mw = worker_new(base, "maildir", err, errlen);
	if (e->mw == NULL) {
		outbound_ctx_free(&e->out);
		dns_free(&e->dns);
		free(e);
		return NULL;
	}
	queue_set_deliverer(q, deliver, e);
	return e;
}

void engine_free(struct engine **ep)
{
	struct engine *e = *ep;
	if (e == NULL)
		return;
	/* Maildir batches on the disk finish and report to the queue; what
	 * has not started yet stays queued and is delivered after a restart */
	worker_free(&e->mw);
	while (e->md_pending) {
		struct md_job *j = e->md_pending;
		e->md_pending = j->next;
		md_job_free(j);
	}
	while (e->lmtp_jobs) {
		struct lmtp_ctx *lc = e->lmtp_jobs;
		e->lmtp_jobs = lc->next;
		lmtp_cancel(&lc->job);
		free(lc);
	}
	while (e->remote_jobs) {
		struct remote_ctx *rc = e->remote_jobs;
		e->remote_jobs = rc->next;
		outbound_cancel(&rc->d);
		free(rc);
	}
	outbound_ctx_free(&e->out);
	dns_free(&e->dns);
	free(e);
	*ep = NULL;
}
