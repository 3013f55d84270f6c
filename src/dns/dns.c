/* dns - validating resolver on the event loop; see dns.h */
#include "dns/dns.h"

#include <errno.h>
#include <stdarg.h>
#include <event2/event.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unbound-event.h>
#include <unbound.h>
#include <unistd.h>

#include "common/config.h"
#include "common/log.h"
#include "common/xmalloc.h"

#define DEFAULT_TIMEOUT_MS 30000u
#define CLASS_IN           1

/*
 * Every query and every compound lookup is a job in a table keyed by its id:
 * the caller holds only the id, so a cancelled or finished job can never be
 * reached through a stale pointer.
 */
enum job_kind { JOB_QUERY, JOB_MX, JOB_ADDRS };

struct job {
	int id;
	enum job_kind kind;
	struct job *hnext;
};

struct dns_ctx {
	struct event_base *base;
	struct ub_ctx *ub;
	unsigned timeout_ms;
	struct job **buckets;
	size_t n_buckets, n_jobs;
	int last_id;
};

/* one ub_resolve_event */
struct query {
	struct job job; /* first: a struct job * is a struct query * */
	struct dns_ctx *ctx;
	char *name;
	uint16_t qtype;
	dns_cb cb;
	void *arg;
	int ub_id;
	bool starting; /* inside ub_resolve_event */
	bool ub_done;  /* libunbound has called back, or forgot the query */
	struct event *timer;
	/* an answer given before ub_resolve_event returned, kept for later */
	bool have_early;
	int e_rcode, e_sec, e_len;
	uint8_t *e_pkt;
	char *e_why;
};

struct addrs_op {
	struct job job;
	struct dns_ctx *ctx;
	char *host;
	uint16_t port;
	dns_addr_cb cb;
	void *arg;
	int qid[2]; /* [0] AAAA, [1] A; 0 when done */
	enum dns_status st[2];
	enum dns_sec sec[2];
	char err[2][160];
	struct sockaddr_storage *addrs[2];
	size_t n[2];
};

struct mx_op {
	struct job job;
	struct dns_ctx *ctx;
	char *domain;
	dns_mx_cb cb;
	void *arg;
	int sub; /* the MX query, then the address lookup of an implicit MX */
	enum dns_sec mx_sec;
};

/* ---- the job table ---- */

static size_t bucket_of(const struct dns_ctx *ctx, int id)
{
	return ((size_t)(unsigned)id * 2654435761u) & (ctx->n_buckets - 1);
}

static struct job *job_find(struct dns_ctx *ctx, int id)
{
	struct job *j;

	if (id <= 0)
		return NULL;
	for (j = ctx->buckets[bucket_of(ctx, id)]; j != NULL; j = j->hnext)
		if (j->id == id)
			return j;
	return NULL;
}

static void job_insert(struct dns_ctx *ctx, struct job *j, enum job_kind kind)
{
	size_t b;

	if (ctx->n_jobs >= ctx->n_buckets * 2) {
		struct job **old = ctx->buckets;
		size_t n_old = ctx->n_buckets;

		ctx->n_buckets *= 2;
		ctx->buckets = xcalloc(ctx->n_buckets, sizeof(*ctx->buckets));
		for (size_t i = 0; i < n_old; i++) {
			struct job *k, *next;

			for (k = old[i]; k != NULL; k = next) {
				next = k->hnext;
				b = bucket_of(ctx, k->id);
				k->hnext = ctx->buckets[b];
				ctx->buckets[b] = k;
			}
		}
		free(old);
	}
	do {
		ctx->last_id = ctx->last_id == INT_MAX ? 1 : ctx->last_id + 1;
	} while (job_find(ctx, ctx->last_id) != NULL);
	j->id = ctx->last_id;
	j->kind = kind;
	b = bucket_of(ctx, j->id);
	j->hnext = ctx->buckets[b];
	ctx->buckets[b] = j;
	ctx->n_jobs++;
}

static void job_remove(struct dns_ctx *ctx, struct job *j)
{
	struct job **pp;

	for (pp = &ctx->buckets[bucket_of(ctx, j->id)]; *pp != NULL; pp = &(*pp)->hnext)
		if (*pp == j) {
			*pp = j->hnext;
			ctx->n_jobs--;
			return;
		}
}

/* ---- names ---- */

const char *dns_status_name(enum dns_status s)
{
	switch (s) {
	case DNS_OK:
		return "ok";
	case DNS_NODATA:
		return "nodata";
	case DNS_NXDOMAIN:
		return "nxdomain";
	case DNS_TEMPFAIL:
		return "tempfail";
	case DNS_BOGUS:
		return "bogus";
	}
	return "?";
}

const char *dns_sec_name(enum dns_sec s)
{
	switch (s) {
	case DNS_SEC_INSECURE:
		return "insecure";
	case DNS_SEC_SECURE:
		return "secure";
	case DNS_SEC_BOGUS:
		return "bogus";
	}
	return "?";
}

const char *dns_mx_status_name(enum dns_mx_status s)
{
	switch (s) {
	case DNS_MX_OK:
		return "ok";
	case DNS_MX_NULL:
		return "null";
	case DNS_MX_NXDOMAIN:
		return "nxdomain";
	case DNS_MX_TEMPFAIL:
		return "tempfail";
	}
	return "?";
}

const char *dns_addr_status_name(enum dns_addr_status s)
{
	switch (s) {
	case DNS_ADDR_OK:
		return "ok";
	case DNS_ADDR_NXDOMAIN:
		return "nxdomain";
	case DNS_ADDR_TEMPFAIL:
		return "tempfail";
	}
	return "?";
}

static const char *rcode_name(int rcode, char *buf, size_t len)
{
	static const char *const names[] = {"NOERROR",  "FORMERR", "SERVFAIL",
	                                    "NXDOMAIN", "NOTIMP",  "REFUSED"};

	if (rcode >= 0 && rcode < (int)(sizeof(names) / sizeof(names[0])))
		return names[rcode];
	snprintf(buf, len, "RCODE%d", rcode);
	return buf;
}

/* ---- libunbound's own log lines go to ours ---- */

/*
 * libunbound keeps one process-wide log stream (ub_ctx_debugout sets it for
 * every context, ub_ctx_delete resets it to stderr), so the stream is one
 * static FILE that lives as long as the process and is set again by every
 * dns_new.
 */
static FILE *ub_log_stream;
static pthread_once_t ub_log_once = PTHREAD_ONCE_INIT;

static ssize_t ub_log_write(void *cookie, const char *buf, size_t size)
{
	size_t p = 0;

	while (p < size) {
		const char *nl = memchr(buf + p, '\n', size - p);
		size_t n = nl ? (size_t)(nl - (buf + p)) : size - p;
		const char *line = buf + p, *m;
		char esc[600];
		bool err;

		p += n + (nl != NULL);
		/* "[1700000000] libunbound[123:0] error: text" */
		m = memchr(line, ']', n);
		if (m != NULL && (m = memchr(m + 1, ']', n - (size_t)(m + 1 - line))) != NULL &&
		    (size_t)(m + 2 - line) <= n) {
			n -= (size_t)(m + 2 - line);
			line = m + 2;
		}
		if (n == 0)
			continue;
		err = (n >= 6 && memcmp(line, "error:", 6) == 0) ||
		      (n >= 8 && memcmp(line, "warning:", 8) == 0);
		/* a log value: printable ASCII, no quote or backslash */
		if (n > sizeof(esc) - 1)
			n = sizeof(esc) - 1;
		for (size_t i = 0; i < n; i++) {
			unsigned char ch = (unsigned char)line[i];

			esc[i] = (ch < 0x20 || ch > 0x7e) ? '?'
			         : ch == '"'              ? '\''
			         : ch == '\\'             ? '/'
			                                  : (char)ch;
		}
		esc[n] = '\0';
		if (err)
			log_warn("event=dns_resolver msg=\"%s\"", esc);
		else
			log_debug("event=dns_resolver msg=\"%s\"", esc);
	}
	return (ssize_t)size;
}

static void ub_log_open(void)
{
	cookie_io_functions_t io = {.write = ub_log_write};

	ub_log_stream = fopencookie(NULL, "w", io);
	if (ub_log_stream != NULL)
		setvbuf(ub_log_stream, NULL, _IOLBF, 0);
}

/* ---- trust anchors ---- */

int dns_anchor_owner(const char *path, char *out, size_t outlen)
{
	FILE *f = fopen(path, "r");
	char line[1024];
	int rc = -1;

	if (f == NULL)
		return -1;
	while (rc < 0 && fgets(line, sizeof(line), f) != NULL) {
		size_t n = strcspn(line, " \t\r\n;");
		/* comments, blank lines, $ORIGIN/$TTL, continuation lines */
		if (n == 0 || line[0] == '$' || n >= outlen)
			continue;
		memcpy(out, line, n);
		out[n] = '\0';
		rc = 0;
	}
	fclose(f);
	return rc;
}

/* ---- setup ---- */

/* bounded formatting into err and reason buffers (truncation is fine there) */
static int textf(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int textf(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, len, fmt, ap);
	va_end(ap);
	return -1;
}

static int add_stub(struct ub_ctx *ub, const char *spec, char *err, size_t errlen)
{
	char zone[256], host[64], port[8], addr[80];
	const char *at = strchr(spec, '@');
	int rc;

	if (at == NULL || at == spec || (size_t)(at - spec) >= sizeof(zone) ||
	    config_parse_hostport(at + 1, host, sizeof(host), port, sizeof(port)) < 0)
		return textf(err, errlen, "dns stub: expected ZONE@ADDR:PORT, got '%s'", spec);
	memcpy(zone, spec, (size_t)(at - spec));
	zone[at - spec] = '\0';
	snprintf(addr, sizeof(addr), "%s@%s", host, port);
	rc = ub_ctx_set_stub(ub, zone, addr, 0);
	if (rc != 0)
		return textf(err, errlen, "dns stub '%s': %s", spec, ub_strerror(rc));
	return 0;
}

static void noop_cb(void *mydata, int rcode, void *packet, int packet_len, int sec, char *why_bogus,
                    int was_ratelimited)
{
}

/* set_cache - RRset cache of mb MB, message cache mb/2, key cache mb/8 (at least 4) */
static int set_cache(struct ub_ctx *ub, unsigned mb, char *err, size_t errlen)
{
	const struct {
		const char *opt;
		unsigned mb;
	} set[] = {
	    {"rrset-cache-size:", mb}, {"msg-cache-size:", mb / 2}, {"key-cache-size:", mb / 8}};

	for (size_t i = 0; i < sizeof(set) / sizeof(set[0]); i++) {
		char v[32];
		int rc;

		snprintf(v, sizeof(v), "%um", set[i].mb < 4 ? 4 : set[i].mb);
		rc = ub_ctx_set_option(ub, set[i].opt, v);
		if (rc != 0)
			return textf(err, errlen, "dns: %s %s: %s", set[i].opt, v, ub_strerror(rc));
	}
	return 0;
}

static struct dns_ctx *dns_create(struct event_base *base, const struct config *c,
                                  unsigned cache_mb, bool tcp, char *err, size_t errlen);

struct dns_ctx *dns_new(struct event_base *base, const struct config *c, char *err, size_t errlen)
{
	return dns_create(base, c, 0, false, err, errlen);
}

int dns_transport_parse(const char *s, enum dns_transport *out)
{
	static const struct {
		const char *name;
		enum dns_transport t;
	} names[] = {
	    {"auto", DNS_TRANSPORT_AUTO}, {"udp", DNS_TRANSPORT_UDP}, {"tcp", DNS_TRANSPORT_TCP}};

	for (size_t i = 0; s != NULL && i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcmp(s, names[i].name)) {
			*out = names[i].t;
			return 0;
		}
	return -1;
}

bool dns_transport_tcp(const struct config *c, enum dns_transport t)
{
	if (t != DNS_TRANSPORT_AUTO)
		return t == DNS_TRANSPORT_TCP;
	return c != NULL && (c->dns_forward || c->stubs.n > 0);
}

struct dns_ctx *dns_new_scan(struct event_base *base, const struct config *c, unsigned cache_mb,
                             enum dns_transport transport, char *err, size_t errlen)
{
	return dns_create(base, c, cache_mb > 0 ? cache_mb : 1, dns_transport_tcp(c, transport),
	                  err, errlen);
}

/*
 * dns_create - cache_mb 0: the daemon's resolver (libunbound's defaults); else a scan's;
 * tcp: queries over TCP streams (dns_new_scan)
 */
static struct dns_ctx *dns_create(struct event_base *base, const struct config *c,
                                  unsigned cache_mb, bool tcp, char *err, size_t errlen)
{
	struct dns_ctx *ctx;
	struct ub_ctx *ub;
	int rc, probe_id = 0;

	ub = ub_ctx_create_event(base);
	if (ub == NULL) {
		snprintf(err, errlen, "dns: cannot create the resolver context");
		return NULL;
	}
	pthread_once(&ub_log_once, ub_log_open);
	if (ub_log_stream != NULL)
		ub_ctx_debugout(ub, ub_log_stream);
	ub_ctx_debuglevel(ub, 0); /* errors only */

	if (c != NULL && c->dns_forward) {
		/* only the nameservers are taken; validation stays here */
		rc = ub_ctx_resolvconf(ub, NULL);
		if (rc != 0) {
			textf(err, errlen, "dns: cannot use /etc/resolv.conf: %s",
			      rc == UB_READFILE ? strerror(errno) : ub_strerror(rc));
			goto fail;
		}
	}
	for (size_t i = 0; c != NULL && i < c->trust_anchors.n; i++) {
		const char *f = c->trust_anchors.v[i];

		if (access(f, R_OK) != 0) {
			textf(err, errlen, "dns: trust anchor file %s: %s", f, strerror(errno));
			goto fail;
		}
		rc = ub_ctx_add_ta_file(ub, f);
		if (rc != 0) {
			textf(err, errlen, "dns: trust anchor file %s: %s", f, ub_strerror(rc));
			goto fail;
		}
	}
	for (size_t i = 0; c != NULL && i < c->stubs.n; i++)
		if (add_stub(ub, c->stubs.v[i], err, errlen) < 0)
			goto fail;
	if (c != NULL && c->stubs.n > 0) {
		/* stub servers on 127.0.0.0/8 (test beds, a local authoritative server) */
		rc = ub_ctx_set_option(ub, "do-not-query-localhost:", "no");
		if (rc != 0) {
			textf(err, errlen, "dns: do-not-query-localhost: %s", ub_strerror(rc));
			goto fail;
		}
	}

	if (cache_mb > 0 && set_cache(ub, cache_mb, err, errlen) < 0)
		goto fail;
	if (cache_mb > 0) {
		/*
		 * libunbound's library defaults are 16 UDP ports and 2 TCP streams
		 * in use at once. A scan has hundreds of queries in flight: with
		 * 2 streams libunbound closed the oldest, queries and all, to open
		 * another, and after a few such "tcp error"s it took the server for
		 * dead and answered SERVFAIL (70 % of a 1,000-domain scan with one
		 * job, docs/checker.md); with 16 ports the rest of the UDP queries
		 * wait for a free one.
		 */
		const struct {
			const char *opt, *val;
		} set[] = {{"outgoing-range:", "256"},
		           {"outgoing-num-tcp:", "32"},
		           {"tcp-upstream:", tcp ? "yes" : "no"}};

		for (size_t i = 0; i < sizeof(set) / sizeof(set[0]); i++) {
			rc = ub_ctx_set_option(ub, set[i].opt, set[i].val);
			if (rc != 0) {
				textf(err, errlen, "dns: %s %s: %s", set[i].opt, set[i].val,
				      ub_strerror(rc));
				goto fail;
			}
		}
	}
	if (cache_mb > 0) {
		/* a scan asks for every name it needs anyway (dns.h, docs/checker.md) */
		rc = ub_ctx_set_option(ub, "qname-minimisation:", "no");
		if (rc != 0) {
			textf(err, errlen, "dns: qname-minimisation: %s", ub_strerror(rc));
			goto fail;
		}
	}

	/*
	 * Settings are applied at the first resolve; a trust anchor file that
	 * does not parse fails there. Do it now, with a name from libunbound's
	 * built-in local data, so that a bad setting is reported at startup.
	 */
	rc = ub_resolve_event(ub, "localhost.", 1, CLASS_IN, NULL, noop_cb, &probe_id);
	if (rc != 0) {
		textf(err, errlen, "dns: resolver setup failed: %s%s", ub_strerror(rc),
		      c != NULL && c->trust_anchors.n > 0 ? " (check the trust anchor files)" : "");
		goto fail;
	}
	if (probe_id != 0)
		ub_cancel(ub, probe_id);

	ctx = xcalloc(1, sizeof(*ctx));
	ctx->base = base;
	ctx->ub = ub;
	ctx->timeout_ms = DEFAULT_TIMEOUT_MS;
	ctx->n_buckets = 64;
	ctx->buckets = xcalloc(ctx->n_buckets, sizeof(*ctx->buckets));
	return ctx;
fail:
	ub_ctx_delete(ub);
	if (ub_log_stream != NULL)
		fflush(ub_log_stream);
	return NULL;
}

void dns_set_timeout(struct dns_ctx *ctx, unsigned ms)
{
	ctx->timeout_ms = ms;
}

void dns_free(struct dns_ctx **pctx)
{
	struct dns_ctx *ctx = *pctx;

	if (ctx == NULL)
		return;
	/* compound jobs cancel their queries too: take one at a time */
	while (ctx->n_jobs > 0) {
		for (size_t i = 0; i < ctx->n_buckets; i++)
			if (ctx->buckets[i] != NULL) {
				dns_cancel(ctx, ctx->buckets[i]->id);
				break;
			}
	}
	ub_ctx_delete(ctx->ub);
	free(ctx->buckets);
	free(ctx);
	*pctx = NULL;
}

/* ---- single queries ---- */

static void query_free(struct query *q)
{
	if (q->timer != NULL)
		event_free(q->timer);
	free(q->e_pkt);
	free(q->e_why);
	free(q->name);
	free(q);
}

/* classify libunbound's answer, hand it to the caller, forget the query */
static void query_finish(struct query *q, int rcode, const void *pkt, int len, int sec,
                         const char *why_bogus, const char *error)
{
	struct dns_result r;
	char rbuf[16], ebuf[200];

	memset(&r, 0, sizeof(r));
	r.name = q->name;
	r.qtype = q->qtype;
	r.sec = sec == 2 ? DNS_SEC_SECURE : DNS_SEC_INSECURE;
	if (error != NULL) {
		r.status = DNS_TEMPFAIL;
		r.error = error;
	} else if (sec == 1) {
		/* RFC 7672 §2.1.1: bogus is a lookup failure, never "no records" */
		r.status = DNS_BOGUS;
		r.sec = DNS_SEC_BOGUS;
		r.why_bogus = why_bogus != NULL ? why_bogus : "validation failure";
		r.error = "DNSSEC validation failed";
		if (pkt != NULL && len > 0)
			(void)dns_wire_parse(pkt, (size_t)len, q->qtype, &r.answer);
	} else if (rcode == DNS_RCODE_NXDOMAIN) { // NOLINT(bugprone-branch-clone)
		r.status = DNS_NXDOMAIN;
	} else if (rcode != 0) {
		/* the packet is stale here: libunbound says not to read it */
		r.status = DNS_TEMPFAIL;
		r.error = rcode_name(rcode, rbuf, sizeof(rbuf));
	} else if (pkt == NULL || len <= 0) {
		r.status = DNS_TEMPFAIL;
		r.error = "no answer";
	} else if (dns_wire_parse(pkt, (size_t)len, q->qtype, &r.answer) < 0) {
		r.status = DNS_TEMPFAIL;
		snprintf(ebuf, sizeof(ebuf), "malformed answer: %s", r.answer.error);
		r.error = ebuf;
	} else if (r.answer.rcode == DNS_RCODE_NOERROR) {
		/* the callback's rcode stays 0 for NXDOMAIN: the header tells */
		r.status = r.answer.n_rrs > 0 ? DNS_OK : DNS_NODATA;
		/* the header's NXDOMAIN (the callback's rcode said 0) */
	} else if (r.answer.rcode == DNS_RCODE_NXDOMAIN) { // NOLINT(bugprone-branch-clone)
		r.status = DNS_NXDOMAIN;
	} else {
		r.status = DNS_TEMPFAIL;
		r.error = rcode_name(r.answer.rcode, rbuf, sizeof(rbuf));
	}

	job_remove(q->ctx, &q->job);
	q->cb(q->arg, &r);
	dns_answer_free(&r.answer);
	query_free(q);
}

static void ub_done_cb(void *mydata, int rcode, void *packet, int packet_len, int sec,
                       char *why_bogus, int was_ratelimited)
{
	struct query *q = mydata;

	q->ub_done = true;
	if (q->starting) {
		/* called from inside ub_resolve_event: answer from the loop later */
		q->have_early = true;
		q->e_rcode = rcode;
		q->e_sec = sec;
		if (packet != NULL && packet_len > 0) {
			q->e_pkt = xmalloc((size_t)packet_len);
			memcpy(q->e_pkt, packet, (size_t)packet_len);
			q->e_len = packet_len;
		}
		if (why_bogus != NULL)
			q->e_why = xstrdup(why_bogus);
		return;
	}
	query_finish(q, rcode, packet, packet_len, sec, why_bogus, NULL);
}

/* the query's timer: an early answer to deliver, or the time is up */
static void query_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct query *q = arg;

	if (q->have_early) {
		query_finish(q, q->e_rcode, q->e_pkt, q->e_len, q->e_sec, q->e_why, NULL);
		return;
	}
	if (!q->ub_done) {
		ub_cancel(q->ctx->ub, q->ub_id);
		q->ub_done = true;
	}
	query_finish(q, 0, NULL, 0, 0, NULL, "timeout");
}

int dns_query(struct dns_ctx *ctx, const char *name, uint16_t qtype, dns_cb cb, void *arg, int *id)
{
	struct query *q;
	int rc;

	if (name == NULL || name[0] == '\0' || strlen(name) >= DNS_NAME_TEXT_MAX)
		return -1;
	q = xcalloc(1, sizeof(*q));
	q->ctx = ctx;
	q->name = xstrdup(name);
	q->qtype = qtype;
	q->cb = cb;
	q->arg = arg;
	q->timer = evtimer_new(ctx->base, query_timer_cb, q);
	if (q->timer == NULL)
		fatal("dns: evtimer_new failed");
	job_insert(ctx, &q->job, JOB_QUERY);

	q->starting = true;
	rc = ub_resolve_event(ctx->ub, name, qtype, CLASS_IN, q, ub_done_cb, &q->ub_id);
	q->starting = false;
	if (rc != 0) {
		char esc[200];

		log_escape(name, strlen(name), esc, sizeof(esc));
		log_warn("event=dns_query_failed name=\"%s\" error=\"%s\"", esc, ub_strerror(rc));
		if (!q->ub_done && q->ub_id != 0)
			ub_cancel(ctx->ub, q->ub_id);
		job_remove(ctx, &q->job);
		query_free(q);
		return -1;
	}
	if (q->have_early) {
		struct timeval now = {0, 0};

		evtimer_add(q->timer, &now);
	} else if (ctx->timeout_ms > 0) {
		struct timeval tv = {(time_t)(ctx->timeout_ms / 1000),
		                     (suseconds_t)(ctx->timeout_ms % 1000) * 1000};

		evtimer_add(q->timer, &tv);
	}
	if (id != NULL)
		*id = q->job.id;
	return 0;
}

static void query_cancel(struct dns_ctx *ctx, struct query *q)
{
	if (!q->ub_done && q->ub_id != 0)
		ub_cancel(ctx->ub, q->ub_id);
	job_remove(ctx, &q->job);
	query_free(q);
}

/* ---- addresses: AAAA and A ---- */

static void addrs_free(struct addrs_op *op)
{
	free(op->addrs[0]);
	free(op->addrs[1]);
	free(op->host);
	free(op);
}

static void addrs_cancel(struct dns_ctx *ctx, struct addrs_op *op)
{
	dns_cancel(ctx, op->qid[0]);
	dns_cancel(ctx, op->qid[1]);
	job_remove(ctx, &op->job);
	addrs_free(op);
}

static bool failed(enum dns_status s)
{
	return s == DNS_TEMPFAIL || s == DNS_BOGUS;
}

static void addrs_finish(struct addrs_op *op)
{
	struct dns_addr_result r;
	bool any_failed = failed(op->st[0]) || failed(op->st[1]);
	bool answered = false, all_secure = true, any_bogus = false;
	const char *fail_err = failed(op->st[0]) ? op->err[0] : op->err[1];
	const char *fail_type = failed(op->st[0]) ? "AAAA" : "A";

	memset(&r, 0, sizeof(r));
	r.host = op->host;
	r.n_addrs = op->n[0] + op->n[1];
	r.addrs = xcalloc(r.n_addrs ? r.n_addrs : 1, sizeof(*r.addrs));
	for (size_t i = 0; i < op->n[0]; i++)
		r.addrs[i] = op->addrs[0][i];
	for (size_t i = 0; i < op->n[1]; i++)
		r.addrs[op->n[0] + i] = op->addrs[1][i];
	for (int f = 0; f < 2; f++) {
		if (op->st[f] == DNS_BOGUS)
			any_bogus = true;
		if (failed(op->st[f]))
			continue;
		answered = true;
		if (op->sec[f] != DNS_SEC_SECURE)
			all_secure = false;
	}
	r.sec = answered ? (all_secure ? DNS_SEC_SECURE : DNS_SEC_INSECURE)
	                 : (any_bogus ? DNS_SEC_BOGUS : DNS_SEC_INSECURE);

	if (r.n_addrs > 0) {
		r.status = DNS_ADDR_OK;
		r.partial = any_failed;
		if (any_failed)
			textf(r.reason, sizeof(r.reason),
			      "DNS lookup of %s for %s failed: %s (using the other family)",
			      fail_type, op->host, fail_err);
	} else if (any_failed) {
		r.status = DNS_ADDR_TEMPFAIL;
		textf(r.reason, sizeof(r.reason), "DNS lookup of %s for %s failed: %s", fail_type,
		      op->host, fail_err);
	} else {
		r.status = DNS_ADDR_NXDOMAIN;
		if (op->st[0] == DNS_NXDOMAIN || op->st[1] == DNS_NXDOMAIN)
			textf(r.reason, sizeof(r.reason), "host %s does not exist (NXDOMAIN)",
			      op->host);
		else
			textf(r.reason, sizeof(r.reason), "host %s has no A or AAAA record",
			      op->host);
	}

	job_remove(op->ctx, &op->job);
	op->cb(op->arg, &r);
	free(r.addrs);
	addrs_free(op);
}

static void addrs_one_done(struct addrs_op *op, int f, const struct dns_result *r)
{
	op->qid[f] = 0;
	op->st[f] = r->status;
	op->sec[f] = r->sec;
	if (r->status == DNS_BOGUS)
		snprintf(op->err[f], sizeof(op->err[f]), "DNSSEC validation failed (%s)",
		         r->why_bogus);
	else if (r->status == DNS_TEMPFAIL)
		snprintf(op->err[f], sizeof(op->err[f]), "%s", r->error ? r->error : "SERVFAIL");
	if (r->status == DNS_OK) {
		op->addrs[f] = xcalloc(r->answer.n_rrs, sizeof(struct sockaddr_storage));
		for (size_t i = 0; i < r->answer.n_rrs; i++) {
			struct sockaddr_storage *ss = &op->addrs[f][op->n[f]];

			*ss = r->answer.rrs[i].addr.ss;
			if (ss->ss_family == AF_INET6)
				((struct sockaddr_in6 *)ss)->sin6_port = htons(op->port);
			else
				((struct sockaddr_in *)ss)->sin_port = htons(op->port);
			op->n[f]++;
		}
	}
	if (op->qid[0] == 0 && op->qid[1] == 0)
		addrs_finish(op);
}

static void addrs_aaaa_cb(void *arg, const struct dns_result *r)
{
	addrs_one_done(arg, 0, r);
}

static void addrs_a_cb(void *arg, const struct dns_result *r)
{
	addrs_one_done(arg, 1, r);
}

int dns_resolve_addrs(struct dns_ctx *ctx, const char *host, uint16_t port, dns_addr_cb cb,
                      void *arg, int *id)
{
	struct addrs_op *op = xcalloc(1, sizeof(*op));

	op->ctx = ctx;
	op->host = xstrdup(host);
	op->port = port;
	op->cb = cb;
	op->arg = arg;
	job_insert(ctx, &op->job, JOB_ADDRS);
	/* callbacks never run inside dns_query, so both ids are set first */
	if (dns_query(ctx, host, DNS_T_AAAA, addrs_aaaa_cb, op, &op->qid[0]) < 0 ||
	    dns_query(ctx, host, DNS_T_A, addrs_a_cb, op, &op->qid[1]) < 0) {
		addrs_cancel(ctx, op);
		return -1;
	}
	if (id != NULL)
		*id = op->job.id;
	return 0;
}

/* ---- MX, RFC 5321 §5.1 ---- */

static void mx_free(struct mx_op *op)
{
	free(op->domain);
	free(op);
}

static void mx_cancel(struct dns_ctx *ctx, struct mx_op *op)
{
	dns_cancel(ctx, op->sub);
	job_remove(ctx, &op->job);
	mx_free(op);
}

static void mx_deliver(struct mx_op *op, struct dns_mx_result *r)
{
	r->domain = op->domain;
	job_remove(op->ctx, &op->job);
	op->cb(op->arg, r);
	mx_free(op);
}

struct mx_sort {
	struct dns_mx_host h;
	uint32_t key; /* random: shuffles hosts of equal preference */
};

static int mx_cmp(const void *a, const void *b)
{
	const struct mx_sort *x = a, *y = b;

	if (x->h.pref != y->h.pref)
		return x->h.pref < y->h.pref ? -1 : 1;
	return x->key < y->key ? -1 : x->key > y->key;
}

/* the host list of an MX RRset: no null MX, no duplicates, sorted */
static void mx_hosts(const struct dns_answer *a, struct dns_mx_result *r)
{
	struct mx_sort *s = xcalloc(a->n_rrs, sizeof(*s));
	size_t n = 0;

	for (size_t i = 0; i < a->n_rrs; i++) {
		const struct dns_rr_mx *mx = &a->rrs[i].mx;
		size_t j;

		/* RFC 7505 §3: a "." next to real hosts is not a host */
		if (strcmp(mx->exchange, ".") == 0)
			continue;
		if (strlen(mx->exchange) >= sizeof(s[0].h.name)) {
			char esc[300];

			log_escape(mx->exchange, strlen(mx->exchange), esc, sizeof(esc));
			log_warn("event=dns_mx_skipped name=\"%s\" reason=too_long", esc);
			continue;
		}
		for (j = 0; j < n; j++)
			if (strcmp(s[j].h.name, mx->exchange) == 0)
				break;
		if (j < n) {
			if (mx->pref < s[j].h.pref)
				s[j].h.pref = mx->pref;
			continue;
		}
		snprintf(s[n].h.name, sizeof(s[n].h.name), "%s", mx->exchange);
		s[n].h.pref = mx->pref;
		s[n].key = arc4random();
		n++;
	}
	qsort(s, n, sizeof(*s), mx_cmp);
	r->hosts = xcalloc(n ? n : 1, sizeof(*r->hosts));
	for (size_t i = 0; i < n; i++)
		r->hosts[i] = s[i].h;
	r->n_hosts = n;
	free(s);
}

static void mx_addrs_cb(void *arg, const struct dns_addr_result *ar)
{
	struct mx_op *op = arg;
	struct dns_mx_result r;
	struct dns_mx_host h;

	op->sub = 0;
	memset(&r, 0, sizeof(r));
	r.sec = op->mx_sec;
	switch (ar->status) {
	case DNS_ADDR_OK:
		memset(&h, 0, sizeof(h));
		snprintf(h.name, sizeof(h.name), "%s", op->domain);
		/* the form dns_wire_parse gives MX names: lowercase, no trailing dot */
		for (char *p = h.name; *p != '\0'; p++)
			if (*p >= 'A' && *p <= 'Z')
				*p = (char)(*p - 'A' + 'a');
		if (strlen(h.name) > 1 && h.name[strlen(h.name) - 1] == '.')
			h.name[strlen(h.name) - 1] = '\0';
		h.implicit = true;
		r.status = DNS_MX_OK;
		r.hosts = &h;
		r.n_hosts = 1;
		textf(r.reason, sizeof(r.reason), "no MX records for %s: implicit MX", op->domain);
		break;
	case DNS_ADDR_NXDOMAIN:
		r.status = DNS_MX_NXDOMAIN;
		textf(r.reason, sizeof(r.reason), "domain %s has no MX, A or AAAA record",
		      op->domain);
		break;
	case DNS_ADDR_TEMPFAIL:
		r.status = DNS_MX_TEMPFAIL;
		textf(r.reason, sizeof(r.reason), "no MX records for %s, and %s", op->domain,
		      ar->reason);
		break;
	}
	mx_deliver(op, &r);
}

static void mx_query_cb(void *arg, const struct dns_result *q)
{
	struct mx_op *op = arg;
	struct dns_mx_result r;

	op->sub = 0;
	memset(&r, 0, sizeof(r));
	r.sec = q->sec;
	switch (q->status) {
	case DNS_TEMPFAIL:
		r.status = DNS_MX_TEMPFAIL;
		textf(r.reason, sizeof(r.reason), "DNS lookup of MX for %s failed: %s", op->domain,
		      q->error ? q->error : "SERVFAIL");
		break;
	case DNS_BOGUS:
		r.status = DNS_MX_TEMPFAIL;
		textf(r.reason, sizeof(r.reason),
		      "DNS lookup of MX for %s failed: DNSSEC validation failed (%s)", op->domain,
		      q->why_bogus);
		break;
	case DNS_NXDOMAIN:
		r.status = DNS_MX_NXDOMAIN;
		textf(r.reason, sizeof(r.reason), "domain %s does not exist (NXDOMAIN)",
		      op->domain);
		break;
	case DNS_NODATA:
		/* RFC 5321 §5.1: no MX records, the domain is its own MX host */
		op->mx_sec = q->sec;
		if (dns_resolve_addrs(op->ctx, op->domain, 0, mx_addrs_cb, op, &op->sub) == 0)
			return;
		r.status = DNS_MX_TEMPFAIL;
		textf(r.reason, sizeof(r.reason), "DNS lookup of A/AAAA for %s failed", op->domain);
		break;
	case DNS_OK:
		mx_hosts(&q->answer, &r);
		if (r.n_hosts > 0) {
			r.status = DNS_MX_OK;
			textf(r.reason, sizeof(r.reason), "%zu MX host%s for %s", r.n_hosts,
			      r.n_hosts == 1 ? "" : "s", op->domain);
		} else {
			/* RFC 7505 §3: only "." (one null MX, or nothing usable) */
			r.status = DNS_MX_NULL;
			textf(r.reason, sizeof(r.reason),
			      "domain %s does not accept mail (null MX)", op->domain);
		}
		break;
	}
	{
		struct dns_mx_host *hosts = r.hosts;

		mx_deliver(op, &r);
		free(hosts);
	}
}

int dns_resolve_mx(struct dns_ctx *ctx, const char *domain, dns_mx_cb cb, void *arg, int *id)
{
	struct mx_op *op = xcalloc(1, sizeof(*op));

	op->ctx = ctx;
	op->domain = xstrdup(domain);
	op->cb = cb;
	op->arg = arg;
	job_insert(ctx, &op->job, JOB_MX);
	if (dns_query(ctx, domain, DNS_T_MX, mx_query_cb, op, &op->sub) < 0) {
		job_remove(ctx, &op->job);
		mx_free(op);
		return -1;
	}
	if (id != NULL)
		*id = op->job.id;
	return 0;
}

void dns_cancel(struct dns_ctx *ctx, int id)
{
	struct job *j = job_find(ctx, id);

	if (j == NULL)
		return;
	switch (j->kind) {
	case JOB_QUERY:
		query_cancel(ctx, (struct query *)j);
		break;
	case JOB_ADDRS:
		addrs_cancel(ctx, (struct addrs_op *)j);
		break;
	case JOB_MX:
		mx_cancel(ctx, (struct mx_op *)j);
		break;
	}
}
