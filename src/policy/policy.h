/*
 * policy - the outbound decision for a recipient domain: which MX hosts, in
 * which order, and what must be proven about each before a byte of mail is
 * sent. DANE where the MX publishes usable DNSSEC-signed TLSA records
 * (RFC 7672); otherwise PKIX against the MX name, narrowed by a valid
 * MTA-STS policy (RFC 8461); never plaintext, never unverified (except where
 * [domain] tls = encrypt-only says so).
 *
 * Everything runs on the caller's libevent loop: DNS through src/dns, the
 * MTA-STS policy fetch through libcurl's multi interface driven by the same
 * loop, the cache in SQLite (data_dir/policy.db).
 *
 * The callback runs on the event loop, never inside policy_plan_domain. The
 * plan passed to it is borrowed: valid only during the call (copy what you
 * keep). A callback may start and cancel plans; it must not call
 * policy_free. After policy_cancel(id), the callback of id is never called.
 */
#ifndef STRICTMX_POLICY_POLICY_H
#define STRICTMX_POLICY_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "dns/dns.h"

struct event_base;
struct config;

enum policy_method {
	POLICY_DANE,         /* usable TLSA (2/3) in a secure zone: DANE must verify */
	POLICY_MTASTS_PKIX,  /* MTA-STS enforce policy covers this MX: PKIX against the MX name */
	POLICY_PKIX,         /* PKIX against the MX name */
	POLICY_ENCRYPT_ONLY, /* [domain] tls = encrypt-only */
	POLICY_DEFER, /* this MX cannot be used now: TLSA lookup bogus/failed (never downgrade) */
	POLICY_SKIP,  /* MTA-STS enforce and no mx: pattern matches; or dane-only without DANE */
};

struct policy_tlsa {
	uint8_t usage, selector, mtype;
	unsigned char *data;
	size_t len;
};

struct policy_mx {
	char host[256];      /* the MX host name as published */
	char tlsa_base[256]; /* TLSA base domain: CNAME-expanded host when the expansion is secure,
	                        else host; for DANE the name at which the TLSA records were found */
	uint16_t pref;
	enum policy_method method;
	char why[300]; /* "MX secure, A secure, TLSA 3 1 1 present", "MX insecure: no DANE", ... */
	struct policy_tlsa *tlsa; /* usable records only (usage 2 and 3), for POLICY_DANE */
	size_t n_tlsa;
	struct sockaddr_storage *addrs; /* addresses (port set to smtp_port) */
	size_t n_addrs;
	enum dns_sec addr_sec;
};

enum policy_status { POLICY_OK, POLICY_NULL_MX, POLICY_NXDOMAIN, POLICY_TEMPFAIL };

struct policy_mtasts {
	bool txt_present; /* _mta-sts.<domain> TXT v=STSv1 (exactly one, valid) */
	char id[64];
	bool policy_valid;
	char mode[16]; /* "enforce", "testing", "none", "" */
	char **mx_patterns;
	size_t n_mx_patterns;
	long max_age;
	bool from_cache;
	char error[256]; /* why there is no usable policy, or why a refresh failed */
};

struct policy_plan {
	char domain[256];
	enum policy_status status;
	char reason[300];
	enum dns_sec mx_sec;
	bool dane_only; /* [domain] tls = dane-only */
	struct policy_mtasts sts;
	struct policy_mx *mx;
	size_t n_mx;
};

typedef void (*policy_cb)(void *arg, const struct policy_plan *plan);

/*
 * policy_new - a planner on base using dns (which the caller keeps and frees
 * after policy_free). Opens data_dir/policy.db for the MTA-STS cache (a cache
 * that cannot be opened is logged and the planner works without it). NULL
 * with err when libcurl cannot be set up.
 */
struct policy_ctx *policy_new(struct event_base *base, const struct config *c, struct dns_ctx *dns,
                              char *err, size_t errlen);
/* policy_free - cancel every plan in progress (no callbacks) and free; *p = NULL */
void policy_free(struct policy_ctx **p);

/*
 * policy_plan_domain - start planning for domain. 0 and *id (> 0) when
 * started, -1 when it could not be (an invalid domain name).
 */
int policy_plan_domain(struct policy_ctx *p, const char *domain, policy_cb cb, void *arg, int *id);
/* policy_domain_ok - whether policy_plan_domain takes domain as a name (one trailing dot) */
bool policy_domain_ok(const char *domain);
/* policy_cancel - forget a plan in progress; unknown ids are ignored */
void policy_cancel(struct policy_ctx *p, int id);

/* "dane", "mta-sts+pkix", "pkix", "encrypt-only", "defer", "skip" */
const char *policy_method_name(enum policy_method m);
/* "ok", "null-mx", "nxdomain", "tempfail" */
const char *policy_status_name(enum policy_status s);

/*
 * policy_plan_json - the plan as one JSON object (caller frees):
 *   {"domain": "example.org", "status": "ok"|"null-mx"|"nxdomain"|"tempfail",
 *    "reason": "...", "mx_sec": "secure"|"insecure"|"bogus", "dane_only": false,
 *    "mta_sts": {"txt": true, "id": "...", "valid": true, "mode": "enforce",
 *                "mx": ["mx1.example.org", "*.example.net"], "max_age": 86400,
 *                "from_cache": false, "error": ""},
 *    "mx": [{"host": "mx1.example.org", "pref": 10, "tlsa_base": "mx1.example.org",
 *            "method": "dane", "why": "...", "addr_sec": "secure",
 *            "addrs": ["192.0.2.1", "2001:db8::1"],
 *            "tlsa": ["3 1 1 <hex>"]}]}
 */
char *policy_plan_json(const struct policy_plan *plan);
/* policy_plan_print - the plan for people, one MX per line */
void policy_plan_print(const struct policy_plan *plan, FILE *out);

/*
 * policy_cli - `strictmx [-c FILE] policy DOMAIN [--json]`: argv holds the
 * arguments after "policy". Prints the plan without connecting to any MX
 * (DNS, and the MTA-STS cache or policy fetch). Exit status: 0 when a plan was
 * made, 2 on a DNS failure (plan status tempfail) or bad arguments.
 */
int policy_cli(const struct config *c, int argc, char **argv);

#endif
