/*
 * check/check - the checker's engine: for each domain the policy plan
 * (policy_plan_domain, the very plan delivery follows), the TLS-RPT record,
 * then for every MX address three probes in turn: the TLS probe verified as
 * the plan demands, a PKIX-verified second handshake for DANE MXs (for
 * information), and the plaintext enforcement probe. Probes of one address
 * wait for a free slot (opts.per_ip), so a scan does not hammer one host.
 *
 * Results shared between domains (docs/checker.md, "Shared results"): a
 * probe's outcome is a function of what the probe sends and checks, so a
 * probe with exactly the same inputs is run once and its result copied:
 *  - the enforcement probe sends the same bytes to an address whatever the
 *    domain (no SNI, no name: EHLO with our name, MAIL FROM:<>): keyed by
 *    address and port;
 *  - a TLS probe depends on the address, the SNI, the reference names, the
 *    TLSA records and whether verification is required: keyed by all of them.
 * Only answers that are the server's, not the moment's, are shared (a
 * completed session, no STARTTLS, a certificate that fails verification; a
 * 530 or 2xx to MAIL FROM): a connect failure, a timeout, a refusal or a
 * closed connection is tried again by the next domain. Entries live
 * SHARE_TTL seconds; at most SHARE_MAX finished entries are kept (LRU).
 *
 * A pilot per parent zone (docs/checker.md, "Fourth round"): libunbound
 * validates a zone's DNSKEY set once per query that waits for it, so 200
 * domains started at once under one parent (com, pop1.lab) had it validated
 * 600 times, with the trust anchor's. The first domain under a parent starts
 * alone; the others wait until its first DNS answer is in (the keys are then
 * in the cache), or PILOT_WAIT_MS at most (a pilot whose own servers do not
 * answer holds up its parent's domains no longer), then all start.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "check/check.h"
#include "check/probe.h"
#include "common/config.h"
#include "common/xmalloc.h"
#include "dns/dns.h"
#include "policy/mtasts.h"
#include "tls/client.h"

#define IP_BUCKETS         1024
#define SHARE_BUCKETS      4096
#define SHARE_MAX          4096 /* finished entries kept */
#define SHARE_TTL          300  /* seconds a finished entry is used */
#define CHECK_DNS_CACHE_MB 64
#define PILOT_BUCKETS      1024
#define PILOT_MAX          8192 /* parents remembered; beyond, domains start at once */
#define PILOT_WAIT_MS      1000 /* the longest a domain waits for its parent's pilot */

enum step { STEP_TLS, STEP_PKIX, STEP_ENFORCE, STEP_DONE };

struct dom;

struct share;

struct job {
	struct dom *dom;
	size_t mx_i, addr_i;
	enum step step;
	struct check_probe *probe;
	struct ipslot *slot;
	struct job *wait_next; /* in the slot's queue */
	bool waiting, running;
	struct tls_tlsa *tlsa;
	struct share *owner;      /* the entry this job's probe fills */
	struct share *share_wait; /* the entry whose probe this job waits for */
	struct job *share_next;   /* in that entry's waiters */
	struct job *ready_next;   /* in the engine's ready list */
	bool ready;
};

enum share_state {
	SHARE_RUNNING,  /* a probe is under way; others wait for it */
	SHARE_DONE,     /* the result, copied to whoever asks */
	SHARE_UNSHARED, /* the last probe got no answer: each job probes itself */
};

struct shared_enforce {
	enum check_enforce enforce;
	char reply[420];
	char error[300];
};

struct share {
	struct share *hnext;         /* hash chain */
	struct share *lprev, *lnext; /* LRU: entries neither RUNNING nor owned */
	char *key;
	unsigned h;
	enum share_state state;
	unsigned owners; /* jobs whose probe will fill this entry */
	time_t done_at;
	struct job *waiters;
	struct check_tls *tls;      /* TLS probes */
	struct check_tls *pkix;     /* DANE TLS probes: the PKIX verdict of the same handshake */
	struct shared_enforce *enf; /* enforcement probes */
};

struct ipslot {
	struct ipslot *next;
	char key[64];
	unsigned active;
	struct job *head, *tail;
};

/* domains not started yet: waiting for a pilot, or released and to start from the loop */
struct domq {
	struct dom *head, *tail;
};

/* a parent zone: the domain whose DNS answers bring its keys, and who waits for them */
struct pilot {
	struct pilot *next; /* in the bucket */
	struct check_engine *e;
	struct dom *flying;  /* the pilot domain until its first answer; NULL after */
	struct event *timer; /* PILOT_WAIT_MS after take-off: land anyway */
	struct domq wait;
	char parent[256];
};

struct dom {
	struct check_engine *e;
	struct dom *prev, *next;
	struct pilot *gate;        /* the pilot d flies (until it lands) */
	struct domq *queue;        /* not started yet: the queue d is in */
	struct dom *qnext, *qprev; /* in that queue */
	struct check_result *r;
	check_cb cb;
	void *arg;
	int policy_id, dns_id;
	bool policy_pending, dns_pending;
	struct job *jobs;
	size_t n_jobs, jobs_left;
	struct timespec start;
	const struct config_domain *cfgdom;
};

struct check_engine {
	struct event_base *base;
	const struct config *cfg;
	struct check_opts o;
	struct dns_ctx *dns;
	struct policy_ctx *policy;
	SSL_CTX *tls;
	struct ipslot *ips[IP_BUCKETS];
	struct dom *all;
	struct share *shares[SHARE_BUCKETS];
	struct share *lru_head, *lru_tail; /* oldest first */
	size_t n_lru;
	struct job *ready_head, *ready_tail; /* steps answered from shared results */
	struct event *ready_ev;
	struct pilot *pilots[PILOT_BUCKETS];
	size_t n_pilots;
	struct domq launch; /* released by their pilot, started by launch_ev */
	struct event *launch_ev;
	bool closing;
	struct check_stats stats;
};

/* ---- results ---- */

void check_result_free(struct check_result **rp)
{
	struct check_result *r = *rp;

	if (r == NULL)
		return;
	free(r->plan_json);
	for (size_t i = 0; i < r->n_sts_mx; i++)
		free(r->sts_mx[i]);
	free(r->sts_mx);
	for (size_t i = 0; i < r->n_mx; i++) {
		struct check_mx *m = &r->mx[i];
		for (size_t k = 0; k < m->n_tlsa; k++) {
			free(m->tlsa[k]);
			free(m->tlsa_rr[k].data);
		}
		free(m->tlsa);
		free(m->tlsa_rr);
		free(m->addrs);
	}
	free(r->mx);
	for (size_t i = 0; i < r->n_reasons; i++)
		free(r->reasons[i]);
	free(r->reasons);
	free(r);
	*rp = NULL;
}

/* ---- per-IP slots ---- */

static unsigned hash(const char *s)
{
	unsigned h = 5381;
	for (; *s; s++)
		h = h * 33 + (unsigned char)*s;
	return h;
}

static struct ipslot *slot_get(struct check_engine *e, const char *ip, uint16_t port)
{
	char key[64];
	snprintf(key, sizeof(key), "%s:%u", ip, (unsigned)port);
	unsigned h = hash(key) % IP_BUCKETS;
	for (struct ipslot *s = e->ips[h]; s; s = s->next)
		if (!strcmp(s->key, key))
			return s;
	struct ipslot *s = xcalloc(1, sizeof(*s));
	snprintf(s->key, sizeof(s->key), "%s", key);
	s->next = e->ips[h];
	e->ips[h] = s;
	return s;
}

static void job_run(struct job *j);
static void job_step(struct job *j);
static void job_next(struct job *j);

/* slot_release - the probe of j is over: its slot goes to the next waiting job */
static void slot_release(struct check_engine *e, struct job *j)
{
	struct ipslot *s = j->slot;

	if (s == NULL)
		return;
	j->slot = NULL;
	if (s->active > 0)
		s->active--;
	while (!e->closing && s->head != NULL && s->active < e->o.per_ip) {
		struct job *w = s->head;
		s->head = w->wait_next;
		if (s->head == NULL)
			s->tail = NULL;
		w->wait_next = NULL;
		w->waiting = false;
		w->slot = s;
		s->active++;
		job_run(w);
	}
}

/*
 * slot_take - run the probe of j now if its address has a free slot, else
 * queue it; first: ahead of the queue (a later step of an address already
 * started, so that a started domain finishes before new ones begin)
 */
static void slot_take(struct job *j, bool first)
{
	struct check_engine *e = j->dom->e;
	struct check_addr *a = &j->dom->r->mx[j->mx_i].addrs[j->addr_i];
	struct ipslot *s = slot_get(e, a->ip, a->port);

	j->slot = s;
	if (s->active < e->o.per_ip) {
		s->active++;
		job_run(j);
		return;
	}
	j->waiting = true;
	if (first) {
		j->wait_next = s->head;
		s->head = j;
		if (s->tail == NULL)
			s->tail = j;
	} else {
		if (s->tail)
			s->tail->wait_next = j;
		else
			s->head = j;
		s->tail = j;
	}
}

static void slot_unwait(struct job *j)
{
	struct ipslot *s = j->slot;
	struct job **pp;

	if (!j->waiting || s == NULL)
		return;
	for (pp = &s->head; *pp; pp = &(*pp)->wait_next)
		if (*pp == j) {
			*pp = j->wait_next;
			break;
		}
	s->tail = NULL;
	for (struct job *w = s->head; w; w = w->wait_next)
		s->tail = w;
	j->waiting = false;
	j->slot = NULL;
}

/* ---- shared results ---- */

struct keybuf {
	char *p;
	size_t len, cap;
};

static void key_add(struct keybuf *k, const char *s, size_t n)
{
	if (k->len + n + 2 > k->cap) {
		k->cap = (k->len + n + 2) * 2;
		k->p = xrealloc(k->p, k->cap);
	}
	memcpy(k->p + k->len, s, n);
	k->len += n;
	k->p[k->len++] = '|'; /* '|' occurs in no host name, address or hex */
	k->p[k->len] = '\0';
}

static void key_str(struct keybuf *k, const char *s)
{
	key_add(k, s, strlen(s));
}

static void key_num(struct keybuf *k, unsigned long v)
{
	char b[32];
	key_add(k, b, (size_t)snprintf(b, sizeof(b), "%lu", v));
}

static time_t now_sec(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec;
}

/*
 * step_key - everything the probe of this step depends on, as text: what it
 * sends (address, port, SNI) and what it checks (method, reference names,
 * TLSA records). The HELO name and the timeout are the engine's, the same
 * for every probe.
 */
static char *step_key(const struct job *j)
{
	const struct dom *d = j->dom;
	const struct check_mx *m = &d->r->mx[j->mx_i];
	const struct check_addr *a = &m->addrs[j->addr_i];
	struct keybuf k = {0};
	bool dane = j->step == STEP_TLS && m->method == POLICY_DANE && m->n_tlsa > 0;

	key_str(&k, j->step == STEP_ENFORCE ? "enforce" : dane ? "dane" : "pkix");
	key_str(&k, a->ip);
	key_num(&k, a->port);
	if (j->step == STEP_ENFORCE)
		return k.p;
	key_str(&k, m->host);
	key_num(&k, m->method != POLICY_ENCRYPT_ONLY);
	if (dane) {
		key_str(&k, m->tlsa_base);
		for (size_t t = 0; t < m->n_tlsa; t++)
			key_str(&k, m->tlsa[t]);
	}
	if (d->cfgdom)
		for (size_t i = 0; i < d->cfgdom->match.n; i++)
			key_str(&k, d->cfgdom->match.v[i]);
	return k.p;
}

static void lru_unlink(struct check_engine *e, struct share *s)
{
	if (s->lprev)
		s->lprev->lnext = s->lnext;
	else if (e->lru_head == s)
		e->lru_head = s->lnext;
	else
		return; /* not in the list */
	if (s->lnext)
		s->lnext->lprev = s->lprev;
	else
		e->lru_tail = s->lprev;
	s->lprev = s->lnext = NULL;
	e->n_lru--;
}

static void lru_push(struct check_engine *e, struct share *s)
{
	s->lnext = NULL;
	s->lprev = e->lru_tail;
	if (e->lru_tail)
		e->lru_tail->lnext = s;
	else
		e->lru_head = s;
	e->lru_tail = s;
	e->n_lru++;
}

static void share_free(struct share *s)
{
	free(s->key);
	free(s->tls);
	free(s->pkix);
	free(s->enf);
	free(s);
}

/* share_drop - remove a finished entry (no waiters) */
static void share_drop(struct check_engine *e, struct share *s)
{
	struct share **pp;

	for (pp = &e->shares[s->h % SHARE_BUCKETS]; *pp; pp = &(*pp)->hnext)
		if (*pp == s) {
			*pp = s->hnext;
			break;
		}
	lru_unlink(e, s);
	share_free(s);
}

static struct share *share_find(struct check_engine *e, const char *key, unsigned h)
{
	for (struct share *s = e->shares[h % SHARE_BUCKETS]; s; s = s->hnext) {
		if (s->h != h || strcmp(s->key, key) != 0)
			continue;
		if (s->state != SHARE_RUNNING && now_sec() - s->done_at > SHARE_TTL) {
			if (s->owners == 0) {
				share_drop(e, s);
				return NULL;
			}
			s->state = SHARE_UNSHARED; /* too old: probe again */
		}
		return s;
	}
	return NULL;
}

/* share_copy - the step of j answered by s (DONE) */
static void share_copy(struct job *j, const struct share *s)
{
	struct check_addr *a = &j->dom->r->mx[j->mx_i].addrs[j->addr_i];

	if (j->step == STEP_ENFORCE) {
		a->enforce = s->enf->enforce;
		snprintf(a->enforce_reply, sizeof(a->enforce_reply), "%s", s->enf->reply);
		snprintf(a->enforce_error, sizeof(a->enforce_error), "%s", s->enf->error);
		j->dom->e->stats.enforce_shared++;
	} else {
		*(j->step == STEP_PKIX ? &a->pkix : &a->tls) = *s->tls;
		if (j->step == STEP_TLS && s->pkix != NULL)
			a->pkix = *s->pkix;
		j->dom->e->stats.tls_shared++;
	}
}

static void ready_cb(evutil_socket_t fd, short what, void *arg)
{
	struct check_engine *e = arg;

	(void)fd;
	(void)what;
	while (e->ready_head != NULL) {
		struct job *j = e->ready_head;
		e->ready_head = j->ready_next;
		if (e->ready_head == NULL)
			e->ready_tail = NULL;
		j->ready_next = NULL;
		j->ready = false;
		job_next(j); /* may finish the domain and free j */
	}
}

/* ready_push - the step of j is answered; go on from the loop, never from here */
static void ready_push(struct job *j)
{
	struct check_engine *e = j->dom->e;

	j->ready = true;
	j->ready_next = NULL;
	if (e->ready_tail)
		e->ready_tail->ready_next = j;
	else
		e->ready_head = j;
	e->ready_tail = j;
	event_active(e->ready_ev, EV_TIMEOUT, 0);
}

static void ready_unlink(struct check_engine *e, struct job *j)
{
	struct job **pp;

	if (!j->ready)
		return;
	for (pp = &e->ready_head; *pp; pp = &(*pp)->ready_next)
		if (*pp == j) {
			*pp = j->ready_next;
			break;
		}
	e->ready_tail = NULL;
	for (struct job *w = e->ready_head; w; w = w->ready_next)
		e->ready_tail = w;
	j->ready = false;
}

/* share_unwait - j no longer waits for s */
static void share_unwait(struct job *j)
{
	struct share *s = j->share_wait;

	if (s == NULL)
		return;
	for (struct job **pp = &s->waiters; *pp; pp = &(*pp)->share_next)
		if (*pp == j) {
			*pp = j->share_next;
			break;
		}
	j->share_wait = NULL;
	j->share_next = NULL;
}

/*
 * share_finish - the probe of j (the owner of s) is over: keep an answer for
 * the waiters and later jobs, or let each of them probe for itself
 */
static void share_finish(struct check_engine *e, struct job *j)
{
	struct share *s = j->owner;
	struct check_addr *a = &j->dom->r->mx[j->mx_i].addrs[j->addr_i];
	bool answer;

	j->owner = NULL;
	if (s == NULL)
		return;
	s->owners--;
	if (s->state == SHARE_DONE) {
		/* an UNSHARED entry answered meanwhile by another job */
		if (s->owners == 0)
			lru_push(e, s);
		return;
	}
	if (j->step == STEP_ENFORCE) {
		/* not UNCLEAR: a 4xx to MAIL FROM may be the load of the moment */
		answer = a->enforce == CHECK_ENFORCE_YES || a->enforce == CHECK_ENFORCE_NO;
		if (answer) {
			if (s->enf == NULL)
				s->enf = xcalloc(1, sizeof(*s->enf));
			s->enf->enforce = a->enforce;
			snprintf(s->enf->reply, sizeof(s->enf->reply), "%s", a->enforce_reply);
			snprintf(s->enf->error, sizeof(s->enf->error), "%s", a->enforce_error);
		}
	} else {
		const struct check_tls *t = j->step == STEP_PKIX ? &a->pkix : &a->tls;
		answer = t->definite;
		if (answer) {
			if (s->tls == NULL)
				s->tls = xmalloc(sizeof(*s->tls));
			*s->tls = *t;
			if (j->step == STEP_TLS && a->pkix.ran) {
				if (s->pkix == NULL)
					s->pkix = xmalloc(sizeof(*s->pkix));
				*s->pkix = a->pkix;
			}
		}
	}
	s->state = answer ? SHARE_DONE : SHARE_UNSHARED;
	s->done_at = now_sec();
	if (s->owners == 0) {
		lru_push(e, s);
		while (e->n_lru > SHARE_MAX && e->lru_head != s)
			share_drop(e, e->lru_head);
	}
	while (s->waiters != NULL) {
		struct job *w = s->waiters;
		s->waiters = w->share_next;
		w->share_next = NULL;
		w->share_wait = NULL;
		if (answer) {
			share_copy(w, s);
			ready_push(w);
		} else {
			job_step(w); /* probes by itself; never finishes from here */
		}
	}
}

/*
 * job_step - do the current step of j: copy a shared result, wait for the
 * probe another domain runs with the same inputs, or probe (in a slot)
 */
static void job_step(struct job *j)
{
	struct check_engine *e = j->dom->e;
	char *key = step_key(j);
	unsigned h = hash(key);
	struct share *s = share_find(e, key, h);
	bool later_step = j->step != STEP_TLS;

	if (s != NULL && s->state == SHARE_DONE) {
		free(key);
		if (s->owners == 0) { /* most recently used */
			lru_unlink(e, s);
			lru_push(e, s);
		}
		share_copy(j, s);
		ready_push(j);
		return;
	}
	if (s != NULL && s->state == SHARE_RUNNING) {
		free(key);
		j->share_wait = s;
		j->share_next = s->waiters;
		s->waiters = j;
		return;
	}
	if (s == NULL) {
		s = xcalloc(1, sizeof(*s));
		s->key = key;
		s->h = h;
		s->state = SHARE_RUNNING;
		s->hnext = e->shares[h % SHARE_BUCKETS];
		e->shares[h % SHARE_BUCKETS] = s;
	} else {
		free(key); /* UNSHARED: this job probes and may answer for the next ones */
		lru_unlink(e, s);
	}
	s->owners++;
	j->owner = s;
	slot_take(j, later_step);
}

static void domq_add(struct domq *q, struct dom *d)
{
	d->queue = q;
	d->qnext = NULL;
	d->qprev = q->tail;
	if (q->tail)
		q->tail->qnext = d;
	else
		q->head = d;
	q->tail = d;
}

static void domq_remove(struct dom *d)
{
	struct domq *q = d->queue;

	if (d->qprev)
		d->qprev->qnext = d->qnext;
	else
		q->head = d->qnext;
	if (d->qnext)
		d->qnext->qprev = d->qprev;
	else
		q->tail = d->qprev;
	d->queue = NULL;
	d->qnext = d->qprev = NULL;
}

static void dom_free(struct dom *d)
{
	struct check_engine *e = d->e;

	for (size_t i = 0; i < d->n_jobs; i++) {
		struct job *j = &d->jobs[i];
		check_probe_free(&j->probe);
		if (j->waiting)
			slot_unwait(j);
		else if (j->slot && j->running)
			slot_release(e, j);
		share_unwait(j);
		ready_unlink(e, j);
		if (j->owner != NULL) {
			/* only when the engine is freed: the entries go with it */
			j->owner->owners--;
			j->owner = NULL;
		}
		free(j->tlsa);
	}
	free(d->jobs);
	if (d->gate != NULL)
		d->gate->flying = NULL; /* only when the engine is freed: no landing then */
	if (d->queue != NULL)
		domq_remove(d);
	if (d->policy_pending)
		policy_cancel(e->policy, d->policy_id);
	if (d->dns_pending)
		dns_cancel(e->dns, d->dns_id);
	if (d->prev)
		d->prev->next = d->next;
	else if (e->all == d)
		e->all = d->next;
	if (d->next)
		d->next->prev = d->prev;
	check_result_free(&d->r);
	free(d);
}

static void dom_maybe_done(struct dom *d)
{
	struct timespec now;

	if (d->policy_pending || d->dns_pending || d->jobs_left > 0)
		return;
	clock_gettime(CLOCK_MONOTONIC, &now);
	d->r->elapsed_ms =
	    (now.tv_sec - d->start.tv_sec) * 1000 + (now.tv_nsec - d->start.tv_nsec) / 1000000;
	check_verdict(d->r);
	struct check_result *r = d->r;
	check_cb cb = d->cb;
	void *arg = d->arg;
	d->r = NULL;
	dom_free(d);
	cb(arg, r);
}

static void probe_done(void *arg)
{
	struct job *j = arg;
	struct check_engine *e = j->dom->e;

	check_probe_free(&j->probe);
	j->running = false;
	slot_release(e, j);
	share_finish(e, j);
	job_next(j);
}

/* job_next - the step after the one that finished */
static void job_next(struct job *j)
{
	struct dom *d = j->dom;
	struct check_mx *m = &d->r->mx[j->mx_i];
	struct check_addr *a = &m->addrs[j->addr_i];

	switch (j->step) {
	case STEP_TLS:
		if (!a->tls.connected) {
			/* nothing listens: the other probes would only wait as long */
			a->enforce = CHECK_ENFORCE_ERROR;
			snprintf(a->enforce_error, sizeof(a->enforce_error), "not run: %.280s",
			         a->tls.error[0] ? a->tls.error : "no connection");
			j->step = STEP_DONE;
		} else {
			/* a DANE probe may have given the PKIX verdict too (same SNI) */
			j->step = m->method == POLICY_DANE && m->n_tlsa && !a->pkix.ran
			              ? STEP_PKIX
			              : STEP_ENFORCE;
		}
		break;
	case STEP_PKIX:
		j->step = STEP_ENFORCE;
		break;
	case STEP_ENFORCE:
	case STEP_DONE:
		j->step = STEP_DONE;
		break;
	}
	if (j->step != STEP_DONE) {
		job_step(j);
		return;
	}
	d->jobs_left--;
	dom_maybe_done(d);
}

/* job_run - start the probe of the current step (j holds a slot) */
static void job_run(struct job *j)
{
	struct dom *d = j->dom;
	struct check_engine *e = d->e;
	struct check_mx *m = &d->r->mx[j->mx_i];
	struct check_addr *a = &m->addrs[j->addr_i];
	struct sockaddr_storage ss;
	struct check_probe_params pp = {
	    .base = e->base,
	    .tls = e->tls,
	    .helo = e->cfg->helo_name ? e->cfg->helo_name : "localhost",
	    .host = m->host,
	    .tlsa_base = m->tlsa_base,
	    .verify_required = m->method != POLICY_ENCRYPT_ONLY,
	    .addr = &ss,
	    .timeout = e->o.timeout,
	};

	j->running = true;
	memset(&ss, 0, sizeof(ss));
	if (inet_pton(AF_INET6, a->ip, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
		ss.ss_family = AF_INET6;
		((struct sockaddr_in6 *)&ss)->sin6_port = htons(a->port);
	} else {
		inet_pton(AF_INET, a->ip, &((struct sockaddr_in *)&ss)->sin_addr);
		ss.ss_family = AF_INET;
		((struct sockaddr_in *)&ss)->sin_port = htons(a->port);
	}
	if (d->cfgdom && d->cfgdom->match.n) {
		pp.extra_names = (const char *const *)d->cfgdom->match.v;
		pp.n_extra = d->cfgdom->match.n;
	}
	switch (j->step) {
	case STEP_TLS:
		pp.dane = m->method == POLICY_DANE && m->n_tlsa > 0;
		pp.tlsa = j->tlsa;
		pp.n_tlsa = m->n_tlsa;
		pp.pkix_out = pp.dane ? &a->pkix : NULL;
		e->stats.tls_run++;
		j->probe = check_probe_tls(&pp, &a->tls, probe_done, j);
		break;
	case STEP_PKIX:
		e->stats.tls_run++;
		j->probe = check_probe_tls(&pp, &a->pkix, probe_done, j);
		break;
	case STEP_ENFORCE:
		e->stats.enforce_run++;
		j->probe = check_probe_enforce(&pp, a, probe_done, j);
		break;
	case STEP_DONE:
		break;
	}
}

static void addr_text(const struct sockaddr_storage *ss, char *buf, size_t len, uint16_t *port)
{
	const void *a = ss->ss_family == AF_INET6
	                    ? (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr
	                    : (const void *)&((const struct sockaddr_in *)ss)->sin_addr;
	*port = ntohs(ss->ss_family == AF_INET6 ? ((const struct sockaddr_in6 *)ss)->sin6_port
	                                        : ((const struct sockaddr_in *)ss)->sin_port);
	if (inet_ntop(ss->ss_family, a, buf, (socklen_t)len) == NULL)
		snprintf(buf, len, "?");
}

static char *tlsa_text(const struct policy_tlsa *t)
{
	char *s = xmalloc(16 + 2 * t->len);
	size_t o = (size_t)sprintf(s, "%u %u %u ", t->usage, t->selector, t->mtype);

	for (size_t i = 0; i < t->len; i++)
		o += (size_t)sprintf(s + o, "%02x", t->data[i]);
	return s;
}

static void pilot_land(struct dom *d);

static void plan_cb(void *arg, const struct policy_plan *plan)
{
	struct dom *d = arg;
	struct check_result *r = d->r;
	struct check_engine *e = d->e;

	d->policy_pending = false;
	pilot_land(d);
	r->status = plan->status;
	snprintf(r->reason, sizeof(r->reason), "%s", plan->reason);
	r->mx_sec = plan->mx_sec;
	r->plan_json = policy_plan_json(plan);
	r->sts_txt = plan->sts.txt_present;
	r->sts_valid = plan->sts.policy_valid;
	snprintf(r->sts_id, sizeof(r->sts_id), "%s", plan->sts.id);
	snprintf(r->sts_mode, sizeof(r->sts_mode), "%s", plan->sts.mode);
	snprintf(r->sts_error, sizeof(r->sts_error), "%s", plan->sts.error);
	if (plan->sts.n_mx_patterns) {
		r->sts_mx = xcalloc(plan->sts.n_mx_patterns, sizeof(char *));
		for (size_t i = 0; i < plan->sts.n_mx_patterns; i++)
			r->sts_mx[i] = xstrdup(plan->sts.mx_patterns[i]);
		r->n_sts_mx = plan->sts.n_mx_patterns;
	}
	size_t n_jobs = 0;
	if (plan->status == POLICY_OK && plan->n_mx > 0) {
		r->mx = xcalloc(plan->n_mx, sizeof(*r->mx));
		r->n_mx = plan->n_mx;
	}
	for (size_t i = 0; i < r->n_mx; i++) {
		const struct policy_mx *pm = &plan->mx[i];
		struct check_mx *m = &r->mx[i];
		snprintf(m->host, sizeof(m->host), "%s", pm->host);
		snprintf(m->tlsa_base, sizeof(m->tlsa_base), "%s",
		         pm->tlsa_base[0] ? pm->tlsa_base : pm->host);
		m->pref = pm->pref;
		m->method = pm->method;
		snprintf(m->why, sizeof(m->why), "%s", pm->why);
		m->n_tlsa = pm->n_tlsa;
		m->tlsa = xcalloc(pm->n_tlsa + 1, sizeof(char *));
		m->tlsa_rr = xcalloc(pm->n_tlsa + 1, sizeof(*m->tlsa_rr));
		for (size_t k = 0; k < pm->n_tlsa; k++) {
			m->tlsa_rr[k] = pm->tlsa[k];
			m->tlsa_rr[k].data = xmalloc(pm->tlsa[k].len + 1);
			memcpy(m->tlsa_rr[k].data, pm->tlsa[k].data, pm->tlsa[k].len);
			m->tlsa[k] = tlsa_text(&pm->tlsa[k]);
		}
		if (m->method == POLICY_DANE)
			check_rollover(m->tlsa_rr, m->n_tlsa, m->rollover, sizeof(m->rollover));
		m->sts_match = -1;
		if (plan->sts.policy_valid) {
			m->sts_match = 0;
			for (size_t k = 0; k < plan->sts.n_mx_patterns; k++)
				if (mtasts_mx_match(plan->sts.mx_patterns[k], m->host))
					m->sts_match = 1;
		}
		m->n_addrs = pm->n_addrs;
		m->addrs = xcalloc(pm->n_addrs + 1, sizeof(*m->addrs));
		for (size_t k = 0; k < pm->n_addrs; k++) {
			struct check_addr *a = &m->addrs[k];
			addr_text(&pm->addrs[k], a->ip, sizeof(a->ip), &a->port);
			if (e->o.port)
				a->port = e->o.port;
			a->tls.starttls = a->pkix.starttls = -1;
			a->tls.verify = a->pkix.verify = -1;
		}
		n_jobs += pm->n_addrs;
	}
	d->jobs = xcalloc(n_jobs + 1, sizeof(*d->jobs));
	d->n_jobs = d->jobs_left = n_jobs;
	size_t ji = 0;
	for (size_t i = 0; i < r->n_mx; i++) {
		struct check_mx *m = &r->mx[i];
		for (size_t k = 0; k < m->n_addrs; k++) {
			struct job *j = &d->jobs[ji++];
			j->dom = d;
			j->mx_i = i;
			j->addr_i = k;
			j->step = STEP_TLS;
			j->tlsa = xcalloc(m->n_tlsa + 1, sizeof(*j->tlsa));
			for (size_t t = 0; t < m->n_tlsa; t++)
				j->tlsa[t] = (struct tls_tlsa){.usage = m->tlsa_rr[t].usage,
				                               .selector = m->tlsa_rr[t].selector,
				                               .mtype = m->tlsa_rr[t].mtype,
				                               .data = m->tlsa_rr[t].data,
				                               .len = m->tlsa_rr[t].len};
		}
	}
	for (size_t i = 0; i < n_jobs; i++)
		job_step(&d->jobs[i]);
	dom_maybe_done(d);
}

static void tlsrpt_cb(void *arg, const struct dns_result *res)
{
	struct dom *d = arg;
	struct check_tlsrpt *t = &d->r->tlsrpt;

	d->dns_pending = false;
	pilot_land(d);
	if (res->status == DNS_OK) {
		size_t n = res->answer.n_rrs;
		const char **txt = xcalloc(n + 1, sizeof(char *));
		size_t *len = xcalloc(n + 1, sizeof(size_t));
		size_t m = 0;
		for (size_t i = 0; i < n; i++) {
			if (res->answer.rrs[i].type != DNS_T_TXT)
				continue;
			txt[m] = res->answer.rrs[i].txt.text;
			len[m++] = res->answer.rrs[i].txt.len;
		}
		check_tlsrpt_parse(txt, len, m, t);
		free(txt);
		free(len);
	} else if (res->status == DNS_NODATA || res->status == DNS_NXDOMAIN) {
		memset(t, 0, sizeof(*t));
		t->status = CHECK_TLSRPT_NONE;
		snprintf(t->error, sizeof(t->error), "no TXT record at %s", res->name);
	} else {
		memset(t, 0, sizeof(*t));
		t->status = CHECK_TLSRPT_ERROR;
		snprintf(t->error, sizeof(t->error), "DNS lookup of %s TXT failed: %s", res->name,
		         res->status == DNS_BOGUS ? "bogus (DNSSEC validation failed)"
		         : res->error             ? res->error
		                                  : dns_status_name(res->status));
	}
	dom_maybe_done(d);
}

/* ---- pilots ---- */

const char *check_parent(const char *domain)
{
	const char *dot = strchr(domain, '.');

	return dot != NULL ? dot + 1 : "";
}

/* pilot_get - the parent's entry, made (*created) when new; NULL when the table is full */
static struct pilot *pilot_get(struct check_engine *e, const char *parent, bool *created)
{
	unsigned h = hash(parent) % PILOT_BUCKETS;
	struct pilot *p;

	*created = false;
	for (p = e->pilots[h]; p != NULL; p = p->next)
		if (!strcmp(p->parent, parent))
			return p;
	if (e->n_pilots >= PILOT_MAX)
		return NULL;
	p = xcalloc(1, sizeof(*p));
	p->e = e;
	snprintf(p->parent, sizeof(p->parent), "%s", parent);
	p->next = e->pilots[h];
	e->pilots[h] = p;
	e->n_pilots++;
	*created = true;
	return p;
}

/* dom_launch - the domain's DNS work: the policy plan and the TLS-RPT record */
static int dom_launch(struct dom *d)
{
	struct check_engine *e = d->e;
	char name[300];

	d->policy_pending = true;
	if (policy_plan_domain(e->policy, d->r->domain, plan_cb, d, &d->policy_id) < 0) {
		d->policy_pending = false;
		return -1;
	}
	snprintf(name, sizeof(name), "_smtp._tls.%s", d->r->domain);
	d->dns_pending = true;
	if (dns_query(e->dns, name, DNS_T_TXT, tlsrpt_cb, d, &d->dns_id) < 0) {
		d->dns_pending = false;
		d->r->tlsrpt.status = CHECK_TLSRPT_ERROR;
		snprintf(d->r->tlsrpt.error, sizeof(d->r->tlsrpt.error), "cannot look up %.200s",
		         name);
	}
	return 0;
}

/*
 * pilot_release - the parent's keys are in the cache (or the pilot is late):
 * every domain that waited starts, from the loop (launch_cb). Never here:
 * starting a lookup can make libunbound deliver other answers at once, the
 * pilot's own among them, and the callback that landed it still uses it.
 */
static void pilot_release(struct pilot *p)
{
	struct check_engine *e = p->e;

	if (p->flying != NULL)
		p->flying->gate = NULL;
	p->flying = NULL;
	if (p->timer != NULL)
		event_free(p->timer);
	p->timer = NULL;
	while (p->wait.head != NULL) {
		struct dom *w = p->wait.head;
		domq_remove(w);
		domq_add(&e->launch, w);
	}
	if (e->launch.head != NULL)
		event_active(e->launch_ev, EV_TIMEOUT, 0);
}

/* pilot_land - d's first DNS answer is in; if d flies for its parent, release the parent */
static void pilot_land(struct dom *d)
{
	if (d->gate != NULL)
		pilot_release(d->gate);
}

/* pilot_timer_cb - the pilot's first answer is late: its parent's domains go anyway */
static void pilot_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	pilot_release(arg);
}

/* launch_cb - start the domains that pilot_land released */
static void launch_cb(evutil_socket_t fd, short what, void *arg)
{
	struct check_engine *e = arg;

	struct dom *failed = NULL; /* not started: finished after the loop */

	(void)fd;
	(void)what;
	while (e->launch.head != NULL) {
		struct dom *w = e->launch.head;
		domq_remove(w);
		if (dom_launch(w) < 0) {
			w->qnext = failed;
			failed = w;
		}
	}
	while (failed != NULL) {
		struct dom *w = failed;
		failed = w->qnext;
		w->qnext = NULL;
		/* the resolver refused the lookups (out of memory): not checked */
		w->r->status = POLICY_TEMPFAIL;
		snprintf(w->r->reason, sizeof(w->r->reason),
		         "the DNS lookups for %s could not be started", w->r->domain);
		dom_maybe_done(w); /* may start other domains; they do not touch this list */
	}
}

int check_start(struct check_engine *e, const char *domain, check_cb cb, void *arg)
{
	size_t n = strlen(domain);
	struct pilot *p;
	bool created;

	if (n == 0 || n > 253 || !policy_domain_ok(domain))
		return -1;
	struct dom *d = xcalloc(1, sizeof(*d));
	d->e = e;
	d->cb = cb;
	d->arg = arg;
	d->r = xcalloc(1, sizeof(*d->r));
	snprintf(d->r->domain, sizeof(d->r->domain), "%s", domain);
	if (d->r->domain[n - 1] == '.')
		d->r->domain[n - 1] = '\0';
	for (char *c = d->r->domain; *c; c++)
		if (*c >= 'A' && *c <= 'Z')
			*c = (char)(*c - 'A' + 'a');
	d->cfgdom = config_domain_find(e->cfg, d->r->domain);
	clock_gettime(CLOCK_MONOTONIC, &d->start);
	p = pilot_get(e, check_parent(d->r->domain), &created);
	if (p != NULL && !created && p->flying != NULL) {
		domq_add(&p->wait, d); /* until the pilot's first answer (pilot_land) */
	} else {
		if (dom_launch(d) < 0) {
			check_result_free(&d->r);
			free(d);
			return -1;
		}
		if (created && p != NULL) {
			struct timeval tv = {PILOT_WAIT_MS / 1000,
			                     (suseconds_t)(PILOT_WAIT_MS % 1000) * 1000};

			p->flying = d;
			d->gate = p;
			p->timer = evtimer_new(e->base, pilot_timer_cb, p);
			if (p->timer != NULL)
				evtimer_add(p->timer, &tv);
		}
	}
	d->next = e->all;
	if (e->all)
		e->all->prev = d;
	e->all = d;
	return 0;
}

struct check_engine *check_engine_new(struct event_base *base, const struct config *c,
                                      const struct check_opts *o, char *err, size_t errlen)
{
	struct check_engine *e = xcalloc(1, sizeof(*e));

	e->base = base;
	e->cfg = c;
	e->o = *o;
	if (e->o.timeout == 0)
		e->o.timeout = 10;
	if (e->o.per_ip == 0)
		e->o.per_ip = 1;
	e->ready_ev = event_new(base, -1, 0, ready_cb, e);
	e->launch_ev = event_new(base, -1, 0, launch_cb, e);
	if (e->ready_ev == NULL || e->launch_ev == NULL) {
		snprintf(err, errlen, "cannot create an event");
		goto fail;
	}
	e->tls = tls_client_ctx_new(c, err, errlen);
	if (e->tls == NULL)
		goto fail;
	/* every name of a scan is new: room for all the validated RRsets (docs/checker.md) */
	e->dns = dns_new_scan(base, c, CHECK_DNS_CACHE_MB, e->o.dns_transport, err, errlen);
	if (e->dns == NULL)
		goto fail;
	dns_set_timeout(e->dns, e->o.timeout * 1000);
	e->policy = policy_new(base, c, e->dns, err, errlen);
	if (e->policy == NULL)
		goto fail;
	return e;
fail:
	check_engine_free(&e);
	return NULL;
}

void check_engine_free(struct check_engine **ep)
{
	struct check_engine *e = *ep;

	if (e == NULL)
		return;
	e->closing = true;
	while (e->all)
		/* the callee unlinks the head: no use after free */
		dom_free(e->all); // NOLINT(clang-analyzer-unix.Malloc)
	policy_free(&e->policy);
	dns_free(&e->dns);
	if (e->tls)
		SSL_CTX_free(e->tls);
	for (size_t i = 0; i < IP_BUCKETS; i++)
		while (e->ips[i]) {
			struct ipslot *s = e->ips[i];
			e->ips[i] = s->next;
			free(s);
		}
	for (size_t i = 0; i < SHARE_BUCKETS; i++)
		while (e->shares[i]) {
			struct share *s = e->shares[i];
			e->shares[i] = s->hnext;
			share_free(s);
		}
	for (size_t i = 0; i < PILOT_BUCKETS; i++)
		while (e->pilots[i]) {
			struct pilot *p = e->pilots[i];
			e->pilots[i] = p->next;
			if (p->timer != NULL)
				event_free(p->timer);
			free(p);
		}
	if (e->ready_ev)
		event_free(e->ready_ev);
	if (e->launch_ev)
		event_free(e->launch_ev);
	free(e);
	*ep = NULL;
}

void check_engine_stats(const struct check_engine *e, struct check_stats *out)
{
	*out = e->stats;
}
