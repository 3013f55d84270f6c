/*
 * policy - the outbound plan for a domain (see policy.h).
 *
 * One plan is a small set of concurrent lookups on the loop:
 *   MX (dns_resolve_mx) -> per MX host: addresses -> [CNAME owner] -> TLSA
 *   MTA-STS: _mta-sts TXT -> [cache] -> mta-sts.<domain> addresses -> HTTPS
 * and when all of them have answered, the decision rules below turn the
 * answers into one method per MX, and the caller's callback gets the plan.
 */
#include "policy/policy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/config.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "policy/cache.h"
#include "policy/fetch.h"
#include "policy/mtasts.h"

#define POLICY_MAX_MX 32 /* MX hosts planned for at most (a hostile domain may list thousands) */
#define STS_PORT      443

struct plan_req;

struct mx_state {
	struct plan_req *r;
	size_t i;
	int qid;             /* the lookup in progress for this MX, 0 when none */
	char expanded[256];  /* CNAME expansion of the host, when secure; "" otherwise */
	const char *tlsa_at; /* the base domain of the TLSA lookup in progress */
};

struct plan_req {
	struct policy_ctx *p;
	int id;
	policy_cb cb;
	void *arg;
	struct policy_plan plan;
	enum config_domain_tls tls;
	struct mx_state *ms;
	int pending; /* parts not yet answered: the MX part and the MTA-STS part */
	int mx_qid;

	/* MTA-STS */
	int txt_qid, sts_addr_qid;
	struct policy_fetch *fetch;
	struct policy_cache_entry cached;
	bool have_cached, cached_fresh;
	struct mtasts_policy pol;
	bool have_pol;

	struct plan_req *prev, *next;
};

struct policy_ctx {
	struct event_base *base;
	const struct config *c;
	struct dns_ctx *dns;
	struct policy_fetcher *fetcher;
	struct policy_cache *cache;
	int next_id;
	struct plan_req *head;
};

/* ---- context ---- */

struct policy_ctx *policy_new(struct event_base *base, const struct config *c, struct dns_ctx *dns,
                              char *err, size_t errlen)
{
	struct policy_ctx *p = xcalloc(1, sizeof(*p));
	char cerr[512];

	p->base = base;
	p->c = c;
	p->dns = dns;
	p->fetcher = policy_fetcher_new(base, c->ca_file, err, errlen);
	if (p->fetcher == NULL) {
		free(p);
		return NULL;
	}
	p->cache = policy_cache_open(c->data_dir, cerr, sizeof(cerr));
	if (p->cache == NULL)
		log_warn("event=policy_cache_unavailable error=\"%s\" (MTA-STS policies are "
		         "fetched every time)",
		         cerr);
	return p;
}

static void req_free(struct plan_req *r)
{
	struct policy_plan *pl = &r->plan;

	for (size_t i = 0; i < pl->n_mx; i++) {
		for (size_t k = 0; k < pl->mx[i].n_tlsa; k++)
			free(pl->mx[i].tlsa[k].data);
		free(pl->mx[i].tlsa);
		free(pl->mx[i].addrs);
	}
	free(pl->mx);
	free(r->ms);
	/* plan.sts.mx_patterns borrows r->pol.mx */
	mtasts_policy_free(&r->pol);
	free(r->cached.policy);
	free(r);
}

static void req_unlink(struct plan_req *r)
{
	if (r->prev != NULL)
		r->prev->next = r->next;
	else
		r->p->head = r->next;
	if (r->next != NULL)
		r->next->prev = r->prev;
	r->prev = r->next = NULL;
}

/* stop everything r still waits for (no callbacks) */
static void req_stop(struct plan_req *r)
{
	struct dns_ctx *dns = r->p->dns;

	if (r->mx_qid)
		dns_cancel(dns, r->mx_qid);
	r->mx_qid = 0;
	for (size_t i = 0; r->ms != NULL && i < r->plan.n_mx; i++) {
		if (r->ms[i].qid)
			dns_cancel(dns, r->ms[i].qid);
		r->ms[i].qid = 0;
	}
	if (r->txt_qid)
		dns_cancel(dns, r->txt_qid);
	if (r->sts_addr_qid)
		dns_cancel(dns, r->sts_addr_qid);
	r->txt_qid = r->sts_addr_qid = 0;
	policy_fetch_cancel(r->fetch);
	r->fetch = NULL;
}

void policy_cancel(struct policy_ctx *p, int id)
{
	for (struct plan_req *r = p->head; r != NULL; r = r->next)
		if (r->id == id) {
			req_unlink(r);
			req_stop(r);
			req_free(r);
			return;
		}
}

void policy_free(struct policy_ctx **pp)
{
	struct policy_ctx *p = *pp;

	if (p == NULL)
		return;
	while (p->head != NULL)
		policy_cancel(p, p->head->id);
	policy_fetcher_free(&p->fetcher);
	policy_cache_close(&p->cache);
	free(p);
	*pp = NULL;
}

/* ---- the decision, once every lookup has answered ---- */

static void why_append(struct policy_mx *m, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void why_append(struct policy_mx *m, const char *fmt, ...)
{
	size_t n = strlen(m->why);
	va_list ap;

	if (n + 1 >= sizeof(m->why))
		return;
	va_start(ap, fmt);
	vsnprintf(m->why + n, sizeof(m->why) - n, fmt, ap);
	va_end(ap);
}

/*
 * Per MX, in this order:
 * 1. DANE decides where it applies (RFC 7672 §2.2; RFC 8461 §2: MTA-STS
 *    must not override DANE). A DANE MX stays DANE with every override.
 * 2. DEFER stays DEFER: a failed TLSA or address lookup is never turned into
 *    a weaker method by any policy (RFC 7672 §2.1.1).
 * 3. [domain] tls = dane-only: what is not DANE is skipped.
 * 4. [domain] tls = encrypt-only: the operator's explicit choice for this
 *    destination, applied to every non-DANE MX.
 * 5. MTA-STS enforce (RFC 8461 §4.1, §5): an MX that matches no mx:
 *    pattern is skipped; one that matches must pass PKIX against its name
 *    (the same check as plain PKIX here: strictmx requires PKIX anyway, the
 *    policy narrows the set of hosts and says the name is authorized).
 *    testing: only noted (RFC 8461 §5: deliver, report). none: nothing.
 */
static void apply(struct plan_req *r)
{
	struct policy_plan *pl = &r->plan;
	bool enforce = r->have_pol && strcmp(r->pol.mode, "enforce") == 0;
	bool testing = r->have_pol && strcmp(r->pol.mode, "testing") == 0;

	for (size_t i = 0; i < pl->n_mx; i++) {
		struct policy_mx *m = &pl->mx[i];
		bool covered = r->have_pol && mtasts_policy_covers(&r->pol, m->host);

		if (m->method == POLICY_DANE) {
			if ((enforce || testing) && !covered)
				why_append(m, "; %s",
				           "not in the MTA-STS policy, DANE takes precedence");
			continue;
		}
		if (m->method == POLICY_DEFER)
			continue;
		if (r->tls == CONFIG_TLS_DANE_ONLY) {
			m->method = POLICY_SKIP;
			why_append(m, "; %s", "dane-only: no usable TLSA");
		} else if (r->tls == CONFIG_TLS_ENCRYPT_ONLY) {
			m->method = POLICY_ENCRYPT_ONLY;
			why_append(m, "; %s",
			           "[domain] tls = encrypt-only: certificate not verified");
		} else if (enforce && !covered) {
			m->method = POLICY_SKIP;
			why_append(m, "; %s", "not in MTA-STS policy (enforce)");
		} else if (enforce) {
			m->method = POLICY_MTASTS_PKIX;
			why_append(m, "; %s", "MTA-STS policy (enforce) covers this MX");
		} else if (testing) {
			why_append(m, "; MTA-STS testing: %s",
			           covered ? "covered by the policy"
			                   : "not in the policy (would be skipped under enforce)");
		}
	}
}

static void req_finish(struct plan_req *r)
{
	struct policy_plan *pl = &r->plan;

	if (r->have_pol) {
		pl->sts.policy_valid = true;
		snprintf(pl->sts.mode, sizeof(pl->sts.mode), "%s", r->pol.mode);
		pl->sts.mx_patterns = r->pol.mx;
		pl->sts.n_mx_patterns = r->pol.n_mx;
		pl->sts.max_age = r->pol.max_age;
	}
	if (pl->status == POLICY_OK)
		apply(r);
	req_unlink(r);
	for (size_t i = 0; i < pl->n_mx; i++)
		log_debug("event=policy domain=%s mx=%s method=%s why=\"%s\"", pl->domain,
		          pl->mx[i].host, policy_method_name(pl->mx[i].method), pl->mx[i].why);
	r->cb(r->arg, pl);
	req_free(r);
}

static void part_done(struct plan_req *r)
{
	if (--r->pending == 0)
		req_finish(r);
}

/* ---- per MX host: addresses, CNAME, TLSA (RFC 7672 §2.2) ---- */

static void mx_done(struct mx_state *ms)
{
	ms->qid = 0;
	part_done(ms->r);
}

/* usage 2/3, selector 0/1, mtype 0/1/2 with the right length (RFC 7672 §3.1, RFC 6698 §2.1) */
static bool tlsa_usable(const struct dns_rr_tlsa *t)
{
	if (t->usage != 2 && t->usage != 3) /* RFC 7672 §3.1.3: 0 and 1 are unusable for SMTP */
		return false;
	if (t->selector > 1)
		return false;
	switch (t->mtype) {
	case 0:
		return t->len > 0;
	case 1:
		return t->len == 32; /* SHA2-256 */
	case 2:
		return t->len == 64; /* SHA2-512 */
	default:
		return false;
	}
}

static void tlsa_start(struct mx_state *ms, const char *base);

static void tlsa_cb(void *arg, const struct dns_result *res)
{
	struct mx_state *ms = arg;
	struct plan_req *r = ms->r;
	struct policy_mx *m = &r->plan.mx[ms->i];
	const char *at = ms->tlsa_at;
	size_t usable = 0, unusable = 0;

	ms->qid = 0;
	switch (res->status) {
	case DNS_BOGUS:
	case DNS_TEMPFAIL:
		/*
		 * RFC 7672 §2.1.1, §2.2: a TLSA lookup that fails (bogus, SERVFAIL,
		 * timeout) makes this MX unusable for now; it is never downgraded to
		 * PKIX, since an attacker who can break the lookup could otherwise
		 * strip DANE. Postfix: "TLSA lookup error", 4.7.5.
		 */
		m->method = POLICY_DEFER;
		snprintf(m->why, sizeof(m->why), "TLSA lookup %s for %s: defer (%s)",
		         res->status == DNS_BOGUS ? "bogus" : "failed", at,
		         res->status == DNS_BOGUS ? (res->why_bogus ? res->why_bogus : "bogus")
		                                  : (res->error ? res->error : "SERVFAIL"));
		mx_done(ms);
		return;
	case DNS_NXDOMAIN:
	case DNS_NODATA:
		/*
		 * RFC 7672 §2.2.2 / RFC 7671 §7: after a secure CNAME expansion,
		 * the expanded name is asked first; only a secure denial there
		 * sends us on to the original name.
		 */
		if (res->sec == DNS_SEC_SECURE && ms->expanded[0] != '\0' && at == ms->expanded) {
			tlsa_start(ms, m->host);
			return;
		}
		m->method = POLICY_PKIX;
		snprintf(m->why, sizeof(m->why), "%s",
		         res->sec == DNS_SEC_SECURE
		             ? "MX secure, A/AAAA secure, TLSA securely absent: no DANE"
		             : "MX secure, A/AAAA secure, TLSA denial insecure: no DANE");
		mx_done(ms);
		return;
	case DNS_OK:
		break;
	}
	if (res->sec != DNS_SEC_SECURE) {
		/* RFC 7672 §2.2: TLSA records without DNSSEC are ignored, as if absent */
		m->method = POLICY_PKIX;
		snprintf(m->why, sizeof(m->why), "TLSA records at %s insecure: ignored, no DANE",
		         at);
		mx_done(ms);
		return;
	}
	for (size_t k = 0; k < res->answer.n_rrs; k++) {
		if (res->answer.rrs[k].type != DNS_T_TLSA)
			continue;
		if (tlsa_usable(&res->answer.rrs[k].tlsa))
			usable++;
		else
			unusable++;
	}
	if (usable == 0) {
		/*
		 * RFC 7672 §2.2 allows unauthenticated TLS when every record is
		 * unusable. strictmx never sends to an unverified peer, so PKIX
		 * against the MX name is required instead: the stricter choice, and
		 * the only one that keeps the product's promise.
		 */
		m->method = POLICY_PKIX;
		snprintf(m->why, sizeof(m->why), "%s",
		         "TLSA records present but none usable: PKIX required");
		mx_done(ms);
		return;
	}
	m->method = POLICY_DANE;
	/* RFC 7672 §2.2.3: the TLSA base domain is the name where the records were found */
	snprintf(m->tlsa_base, sizeof(m->tlsa_base), "%s", at);
	m->tlsa = xcalloc(usable, sizeof(*m->tlsa));
	snprintf(m->why, sizeof(m->why), "MX secure, A/AAAA secure, TLSA");
	for (size_t k = 0; k < res->answer.n_rrs; k++) {
		const struct dns_rr_tlsa *t = &res->answer.rrs[k].tlsa;
		struct policy_tlsa *o;
		char triple[16];

		if (res->answer.rrs[k].type != DNS_T_TLSA || !tlsa_usable(t))
			continue;
		o = &m->tlsa[m->n_tlsa++];
		o->usage = t->usage;
		o->selector = t->selector;
		o->mtype = t->mtype;
		o->len = t->len;
		o->data = xmalloc(t->len ? t->len : 1);
		memcpy(o->data, t->data, t->len);
		snprintf(triple, sizeof(triple), " %u %u %u", t->usage, t->selector, t->mtype);
		if (strstr(m->why, triple) == NULL)
			why_append(m, "%s", triple);
	}
	why_append(m, " present at %s", at);
	if (unusable > 0)
		why_append(m, "%s", " (unusable records ignored)");
	mx_done(ms);
}

static void tlsa_start(struct mx_state *ms, const char *base)
{
	struct policy_mx *m = &ms->r->plan.mx[ms->i];
	char name[300];

	ms->tlsa_at = base;
	snprintf(name, sizeof(name), "_%u._tcp.%s", ms->r->p->c->smtp_port, base);
	if (dns_query(ms->r->p->dns, name, DNS_T_TLSA, tlsa_cb, ms, &ms->qid) < 0) {
		m->method = POLICY_DEFER;
		snprintf(m->why, sizeof(m->why), "TLSA lookup for %s could not be started: defer",
		         base);
		mx_done(ms);
	}
}

/* the A query again, for the owner name at the end of the CNAME chain */
static void owner_cb(void *arg, const struct dns_result *res)
{
	struct mx_state *ms = arg;
	struct policy_mx *m = &ms->r->plan.mx[ms->i];

	ms->qid = 0;
	if ((res->status == DNS_OK || res->status == DNS_NODATA) && res->sec == DNS_SEC_SECURE &&
	    res->answer.n_cname > 0 && res->answer.owner != NULL &&
	    strcmp(res->answer.owner, m->host) != 0 && strlen(res->answer.owner) < 256) {
		snprintf(ms->expanded, sizeof(ms->expanded), "%s", res->answer.owner);
		snprintf(m->tlsa_base, sizeof(m->tlsa_base), "%s", ms->expanded);
	}
	tlsa_start(ms, ms->expanded[0] != '\0' ? ms->expanded : m->host);
}

static void addrs_cb(void *arg, const struct dns_addr_result *ar)
{
	struct mx_state *ms = arg;
	struct plan_req *r = ms->r;
	struct policy_mx *m = &r->plan.mx[ms->i];

	ms->qid = 0;
	m->addr_sec = ar->sec;
	if (ar->n_addrs > 0) {
		m->addrs = xcalloc(ar->n_addrs, sizeof(*m->addrs));
		memcpy(m->addrs, ar->addrs, ar->n_addrs * sizeof(*m->addrs));
		m->n_addrs = ar->n_addrs;
	}
	if (ar->status != DNS_ADDR_OK) {
		/* no address to connect to: this MX cannot be used (now) */
		m->method = POLICY_DEFER;
		snprintf(m->why, sizeof(m->why), "%s", ar->reason);
		mx_done(ms);
		return;
	}
	if (r->plan.mx_sec != DNS_SEC_SECURE) {
		/*
		 * RFC 7672 §2.2.1: without a secure MX RRset the host name itself
		 * is unauthenticated; strictmx looks no further for DANE and
		 * requires PKIX.
		 */
		m->method = POLICY_PKIX;
		snprintf(m->why, sizeof(m->why), "%s", "MX insecure: no DANE");
		mx_done(ms);
		return;
	}
	if (ar->sec != DNS_SEC_SECURE) {
		/* RFC 7672 §2.2.2: no TLSA lookup for a host whose addresses are insecure */
		m->method = POLICY_PKIX;
		snprintf(m->why, sizeof(m->why), "%s", "MX secure, A/AAAA insecure: no DANE");
		mx_done(ms);
		return;
	}
	if (dns_query(r->p->dns, m->host, DNS_T_A, owner_cb, ms, &ms->qid) < 0)
		tlsa_start(ms, m->host);
}

static void mx_cb(void *arg, const struct dns_mx_result *mr)
{
	struct plan_req *r = arg;
	struct policy_plan *pl = &r->plan;

	r->mx_qid = 0;
	pl->mx_sec = mr->sec;
	snprintf(pl->reason, sizeof(pl->reason), "%s", mr->reason);
	switch (mr->status) {
	case DNS_MX_OK:
		break;
	case DNS_MX_NULL: /* RFC 7505 */
		pl->status = POLICY_NULL_MX;
		break;
	case DNS_MX_NXDOMAIN:
		pl->status = POLICY_NXDOMAIN;
		break;
	case DNS_MX_TEMPFAIL: /* RFC 5321 §5.1, RFC 7672 §2.1.1: defer, never fall back */
		pl->status = POLICY_TEMPFAIL;
		break;
	}
	if (pl->status != POLICY_OK || mr->n_hosts == 0) {
		if (pl->status == POLICY_OK) {
			pl->status = POLICY_TEMPFAIL;
			snprintf(pl->reason, sizeof(pl->reason), "no MX host for %s", pl->domain);
		}
		/* nothing to apply an MTA-STS policy to: stop looking for one */
		if (r->txt_qid || r->sts_addr_qid || r->fetch != NULL) {
			if (r->txt_qid)
				dns_cancel(r->p->dns, r->txt_qid);
			if (r->sts_addr_qid)
				dns_cancel(r->p->dns, r->sts_addr_qid);
			policy_fetch_cancel(r->fetch);
			r->txt_qid = r->sts_addr_qid = 0;
			r->fetch = NULL;
			snprintf(pl->sts.error, sizeof(pl->sts.error), "not looked up: no MX host");
			r->pending--;
		}
		part_done(r);
		return;
	}
	if (pl->reason[0] == '\0')
		snprintf(pl->reason, sizeof(pl->reason), "MX %s", dns_sec_name(mr->sec));
	pl->n_mx = mr->n_hosts < POLICY_MAX_MX ? mr->n_hosts : POLICY_MAX_MX;
	if (mr->n_hosts > POLICY_MAX_MX)
		log_warn("event=policy_mx_truncated domain=%s hosts=%zu planned=%d", pl->domain,
		         mr->n_hosts, POLICY_MAX_MX);
	pl->mx = xcalloc(pl->n_mx, sizeof(*pl->mx));
	r->ms = xcalloc(pl->n_mx, sizeof(*r->ms));
	r->pending += (int)pl->n_mx;
	for (size_t i = 0; i < pl->n_mx; i++) {
		struct policy_mx *m = &pl->mx[i];

		snprintf(m->host, sizeof(m->host), "%s", mr->hosts[i].name);
		snprintf(m->tlsa_base, sizeof(m->tlsa_base), "%s", m->host);
		m->pref = mr->hosts[i].pref;
		m->method = POLICY_DEFER;
		m->addr_sec = DNS_SEC_INSECURE;
		r->ms[i].r = r;
		r->ms[i].i = i;
	}
	for (size_t i = 0; i < pl->n_mx; i++) {
		struct mx_state *ms = &r->ms[i];

		if (dns_resolve_addrs(r->p->dns, pl->mx[i].host, (uint16_t)r->p->c->smtp_port,
		                      addrs_cb, ms, &ms->qid) < 0) {
			snprintf(pl->mx[i].why, sizeof(pl->mx[i].why),
			         "address lookup could not be started");
			ms->qid = 0;
			r->pending--;
		}
	}
	part_done(r); /* the MX lookup itself; the callbacks above come later */
}

/* ---- MTA-STS (RFC 8461 §3, §5) ---- */

static bool use_text(struct plan_req *r, const char *text, size_t len, char *err, size_t errlen)
{
	struct mtasts_policy pol;

	if (mtasts_parse_policy(text, len, &pol, err, errlen) < 0)
		return false;
	mtasts_policy_free(&r->pol);
	r->pol = pol;
	r->have_pol = true;
	return true;
}

static void use_cached(struct plan_req *r, const char *note)
{
	char err[200];

	if (use_text(r, r->cached.policy, r->cached.len, err, sizeof(err))) {
		r->plan.sts.from_cache = true;
		if (r->plan.sts.id[0] == '\0')
			snprintf(r->plan.sts.id, sizeof(r->plan.sts.id), "%s", r->cached.id);
		if (note != NULL)
			snprintf(r->plan.sts.error, sizeof(r->plan.sts.error), "%s", note);
	} else {
		snprintf(r->plan.sts.error, sizeof(r->plan.sts.error), "cached policy invalid: %s",
		         err);
	}
}

/*
 * RFC 8461 §5.1: a refresh that fails leaves the cached policy in force
 * until it expires; without one, delivery proceeds as if the domain had no
 * policy (for strictmx: PKIX, never less).
 */
static void sts_failed(struct plan_req *r, const char *what, const char *why)
{
	char msg[256];

	snprintf(msg, sizeof(msg), "%s: %s", what, why);
	log_info("event=mta_sts_fetch_failed domain=%s error=\"%s\"%s", r->plan.domain, msg,
	         r->cached_fresh ? " cached=yes" : "");
	if (r->cached_fresh) {
		char note[256];

		snprintf(note, sizeof(note), "refresh failed (%.180s): cached policy kept", msg);
		use_cached(r, note);
	} else {
		snprintf(r->plan.sts.error, sizeof(r->plan.sts.error), "%s", msg);
	}
}

static void fetch_cb(void *arg, const char *body, size_t len, const char *error)
{
	struct plan_req *r = arg;
	char err[200];

	r->fetch = NULL;
	if (error != NULL) {
		sts_failed(r, "policy fetch failed", error);
	} else if (!use_text(r, body, len, err, sizeof(err))) {
		sts_failed(r, "policy invalid", err);
	} else {
		log_info("event=mta_sts_policy domain=%s id=%s mode=%s max_age=%ld", r->plan.domain,
		         r->plan.sts.id, r->pol.mode, r->pol.max_age);
		if (r->p->cache != NULL)
			(void)policy_cache_put(r->p->cache, r->plan.domain, r->plan.sts.id, body,
			                       len, (long long)time(NULL), r->pol.max_age);
	}
	part_done(r);
}

static void sts_addrs_cb(void *arg, const struct dns_addr_result *ar)
{
	struct plan_req *r = arg;
	char host[300], err[256];
	char text[8][INET6_ADDRSTRLEN];
	const char *addrs[8];
	size_t n = 0;

	r->sts_addr_qid = 0;
	snprintf(host, sizeof(host), "mta-sts.%s", r->plan.domain);
	if (ar->status != DNS_ADDR_OK) {
		sts_failed(r, "policy host lookup failed", ar->reason);
		part_done(r);
		return;
	}
	for (size_t i = 0; i < ar->n_addrs && n < 8; i++) {
		const struct sockaddr_storage *ss = &ar->addrs[i];
		const void *a = ss->ss_family == AF_INET6
		                    ? (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr
		                    : (const void *)&((const struct sockaddr_in *)ss)->sin_addr;

		if (inet_ntop(ss->ss_family, a, text[n], sizeof(text[n])) != NULL) {
			addrs[n] = text[n];
			n++;
		}
	}
	r->fetch = policy_fetch_start(r->p->fetcher, host, STS_PORT, addrs, n, fetch_cb, r, err,
	                              sizeof(err));
	if (r->fetch == NULL) {
		sts_failed(r, "policy fetch failed", err);
		part_done(r);
	}
}

static void txt_cb(void *arg, const struct dns_result *res)
{
	struct plan_req *r = arg;
	struct policy_mtasts *s = &r->plan.sts;
	char err[200], host[300];

	r->txt_qid = 0;
	if (res->status == DNS_OK) {
		const char **t = xcalloc(res->answer.n_rrs + 1, sizeof(*t));
		size_t *l = xcalloc(res->answer.n_rrs + 1, sizeof(*l));
		size_t n = 0;
		char id[MTASTS_ID_MAX + 1];

		for (size_t i = 0; i < res->answer.n_rrs; i++)
			if (res->answer.rrs[i].type == DNS_T_TXT) {
				t[n] = res->answer.rrs[i].txt.text;
				l[n++] = res->answer.rrs[i].txt.len;
			}
		switch (mtasts_parse_txt(t, l, n, id, err, sizeof(err))) {
		case MTASTS_TXT_OK:
			s->txt_present = true;
			snprintf(s->id, sizeof(s->id), "%s", id);
			break;
		case MTASTS_TXT_NONE:
			snprintf(s->error, sizeof(s->error), "no MTA-STS TXT record");
			break;
		case MTASTS_TXT_INVALID:
			snprintf(s->error, sizeof(s->error), "MTA-STS TXT record invalid: %s", err);
			break;
		}
		free(t);
		free(l);
	} else if (res->status == DNS_NXDOMAIN || res->status == DNS_NODATA) {
		snprintf(s->error, sizeof(s->error), "no MTA-STS TXT record");
	} else {
		snprintf(s->error, sizeof(s->error), "MTA-STS TXT lookup failed: %s",
		         res->status == DNS_BOGUS ? "bogus"
		                                  : (res->error ? res->error : "SERVFAIL"));
	}

	/*
	 * RFC 8461 §5.1: a fresh cached policy is used as long as the TXT id is
	 * unchanged; a missing or failing TXT record does not end it (only
	 * expiry, or a new policy, does; §8.3 removes a policy with mode none).
	 */
	if (r->cached_fresh && (!s->txt_present || strcmp(s->id, r->cached.id) == 0)) {
		use_cached(r, s->txt_present ? NULL : s->error);
		part_done(r);
		return;
	}
	if (!s->txt_present) {
		part_done(r);
		return;
	}
	/* a new id, no cache, or an expired one: fetch (the name through our resolver) */
	snprintf(host, sizeof(host), "mta-sts.%s", r->plan.domain);
	if (dns_resolve_addrs(r->p->dns, host, STS_PORT, sts_addrs_cb, r, &r->sts_addr_qid) < 0) {
		sts_failed(r, "policy host lookup failed", "bad name");
		part_done(r);
	}
}

static void sts_start(struct plan_req *r)
{
	char name[300];

	if (!r->p->c->mta_sts) {
		snprintf(r->plan.sts.error, sizeof(r->plan.sts.error),
		         "MTA-STS disabled ([outbound] mta_sts = no)");
		return;
	}
	if (r->p->cache != NULL && policy_cache_get(r->p->cache, r->plan.domain, &r->cached) == 1) {
		r->have_cached = true;
		r->cached_fresh = r->cached.fetched + r->cached.max_age > (long long)time(NULL);
	}
	snprintf(name, sizeof(name), "_mta-sts.%s", r->plan.domain);
	r->pending++;
	if (dns_query(r->p->dns, name, DNS_T_TXT, txt_cb, r, &r->txt_qid) < 0) {
		r->pending--;
		snprintf(r->plan.sts.error, sizeof(r->plan.sts.error), "TXT lookup not started");
		if (r->cached_fresh)
			use_cached(r, NULL);
	}
}

/* ---- starting a plan ---- */

static bool domain_ok(const char *d, size_t n)
{
	if (n == 0 || n > 253 || d[n - 1] == '.')
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)d[i];

		if (c <= 0x20 || c >= 0x7f || c == '\\' || c == '"' || c == '/' || c == ':' ||
		    c == '@' || c == '[' || c == ']')
			return false;
		if (c == '.' && (i == 0 || d[i - 1] == '.'))
			return false;
	}
	return true;
}

bool policy_domain_ok(const char *domain)
{
	size_t n = domain != NULL ? strlen(domain) : 0;

	if (n > 0 && domain[n - 1] == '.')
		n--;
	return domain_ok(domain, n);
}

int policy_plan_domain(struct policy_ctx *p, const char *domain, policy_cb cb, void *arg, int *id)
{
	struct plan_req *r;
	size_t n = domain != NULL ? strlen(domain) : 0;
	const struct config_domain *d;

	if (n > 0 && domain[n - 1] == '.')
		n--;
	if (!domain_ok(domain, n))
		return -1;
	r = xcalloc(1, sizeof(*r));
	r->p = p;
	r->cb = cb;
	r->arg = arg;
	for (size_t i = 0; i < n; i++)
		r->plan.domain[i] =
		    (char)(domain[i] >= 'A' && domain[i] <= 'Z' ? domain[i] + 32 : domain[i]);
	r->plan.mx_sec = DNS_SEC_INSECURE;
	d = config_domain_find(p->c, r->plan.domain);
	r->tls = d != NULL ? d->tls : CONFIG_TLS_VERIFY;
	r->plan.dane_only = r->tls == CONFIG_TLS_DANE_ONLY;

	r->pending = 1; /* the MX part */
	if (dns_resolve_mx(p->dns, r->plan.domain, mx_cb, r, &r->mx_qid) < 0) {
		free(r);
		return -1;
	}
	sts_start(r);
	if (++p->next_id <= 0)
		p->next_id = 1;
	r->id = p->next_id;
	r->next = p->head;
	if (p->head != NULL)
		p->head->prev = r;
	p->head = r;
	if (id != NULL)
		*id = r->id;
	return 0;
}
