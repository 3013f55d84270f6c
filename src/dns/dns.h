/*
 * dns - a validating resolver (libunbound) on the daemon's libevent loop.
 *
 * Every answer carries its DNSSEC status. Failures are never softened: a
 * SERVFAIL, a timeout or a bogus answer is a temporary failure, and an MX
 * lookup that fails so never falls back to the domain's addresses
 * (RFC 5321 §5.1 applies the implicit MX only to an answer without MX
 * records; RFC 7672 §2.1.1 forbids downgrades on lookup failure).
 *
 * Callbacks run on the event loop, never from inside the call that started
 * the query (even when libunbound answers from local data at once). The
 * result passed to a callback is borrowed: valid only during the callback.
 * A callback may start new queries and cancel others; it must not call
 * dns_free. After dns_cancel(id), the callback of id is never called.
 * One dns_ctx and its event_base belong to one thread.
 */
#ifndef STRICTMX_DNS_DNS_H
#define STRICTMX_DNS_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "dns/wire.h"

struct event_base;
struct config;
struct dns_ctx;

enum dns_status {
	DNS_OK,       /* records of the asked type present */
	DNS_NODATA,   /* the name exists, no records of that type */
	DNS_NXDOMAIN, /* the name does not exist */
	DNS_TEMPFAIL, /* SERVFAIL, timeout, malformed answer, any resolver error */
	DNS_BOGUS,    /* DNSSEC validation failed: as temporary as TEMPFAIL */
};

enum dns_sec {
	DNS_SEC_INSECURE, /* not signed, or no trust anchor covers it */
	DNS_SEC_SECURE,   /* validated, including authenticated denial */
	DNS_SEC_BOGUS,
};

struct dns_result {
	enum dns_status status;
	enum dns_sec sec;
	const char *name; /* as queried */
	uint16_t qtype;
	const char *why_bogus;    /* libunbound's explanation, or NULL */
	const char *error;        /* what went wrong for TEMPFAIL, or NULL */
	struct dns_answer answer; /* records of qtype at answer.owner */
};

typedef void (*dns_cb)(void *arg, const struct dns_result *r);

/*
 * dns_new - a resolver on base, configured from [dns]: forward to the
 * nameservers of /etc/resolv.conf (validation stays in-process) or recurse;
 * trust anchor files; stub zones "zone@addr:port". NULL with err on a bad
 * setting (a missing trust anchor file is named).
 */
struct dns_ctx *dns_new(struct event_base *base, const struct config *c, char *err, size_t errlen);
/*
 * dns_new_scan - the resolver of strictmx check and scan: dns_new with
 * libunbound's caches sized for many names at once: cache_mb MB of RRsets, half as much for
 * messages, an eighth for DNSSEC keys (at least 4 MB each). With libunbound's defaults (4 MB) a
 * 1,000-domain scan evicts validated NSEC3 and RRsets that later answers carry again, and their
 * signatures are checked again (docs/checker.md). Also without QNAME minimisation (RFC 9156): a
 * scanner asks for the MX, TXT and TLSA names of each domain anyway, and minimised queries (an A
 * query for each label on the way, e.g. `_tls.example.org`) cost ~1.75 more queries per domain to
 * send, answer and validate (the delivery daemon, dns_new, keeps libunbound's defaults:
 * minimisation on, 4 MB caches).
 *
 * transport: how the queries reach the servers. DNS_TRANSPORT_AUTO is TCP when [dns] names
 * servers to ask (resolver = forward, or stub zones) and UDP when libunbound recurses itself.
 * Over TCP libunbound keeps a few streams to each server open and sends query after query on
 * them; over UDP it opens, binds, connects and closes a socket for every query (source-port
 * randomisation). For a scan's ~6 queries per domain to one resolver that, with the check
 * loops' epoll change list, is ~40 % fewer system calls and ~13 % less scanner CPU
 * (docs/checker.md, "Fourth round"); TCP answers cannot be spoofed
 * off-path either. The daemon (dns_new) keeps libunbound's UDP.
 */
enum dns_transport { DNS_TRANSPORT_AUTO, DNS_TRANSPORT_UDP, DNS_TRANSPORT_TCP };
struct dns_ctx *dns_new_scan(struct event_base *base, const struct config *c, unsigned cache_mb,
                             enum dns_transport transport, char *err, size_t errlen);
/* dns_transport_parse - "auto", "udp", "tcp" -> 0 and *out; -1 for anything else */
int dns_transport_parse(const char *s, enum dns_transport *out);
/* dns_transport_tcp - whether a dns_new_scan resolver for c with transport t uses TCP */
bool dns_transport_tcp(const struct config *c, enum dns_transport t);
/* dns_free - cancel every outstanding query (no callbacks) and free; *ctx = NULL */
void dns_free(struct dns_ctx **ctx);

/*
 * dns_set_timeout - bound every query (and each step of the MX and address
 * lookups) to ms milliseconds; 0 leaves it to libunbound. Default 30000.
 * A query that runs out of time ends as DNS_TEMPFAIL "timeout".
 */
void dns_set_timeout(struct dns_ctx *ctx, unsigned ms);

/*
 * dns_query - look up name (presentation format) / qtype, class IN.
 * 0 and *id (> 0) when started; -1 when it could not be started (bad name).
 */
int dns_query(struct dns_ctx *ctx, const char *name, uint16_t qtype, dns_cb cb, void *arg, int *id);

/* dns_cancel - forget a query or a dns_resolve_* lookup; unknown ids are ignored */
void dns_cancel(struct dns_ctx *ctx, int id);

/* MX hosts of a domain, RFC 5321 §5.1 */
enum dns_mx_status {
	DNS_MX_OK,
	DNS_MX_NULL,     /* RFC 7505 null MX: the domain accepts no mail (permanent) */
	DNS_MX_NXDOMAIN, /* no such domain, or no MX, A or AAAA record (permanent) */
	DNS_MX_TEMPFAIL, /* SERVFAIL, timeout, bogus: defer, never fall back to A */
};

struct dns_mx_host {
	char name[256];
	uint16_t pref;
	bool implicit; /* no MX records: the domain itself (RFC 5321 §5.1) */
};

struct dns_mx_result {
	enum dns_mx_status status;
	enum dns_sec sec; /* of the MX RRset (or of its denial, for an implicit MX) */
	const char *domain;
	struct dns_mx_host *hosts; /* by preference; random order among equals */
	size_t n_hosts;
	char reason[256]; /* e.g. "DNS lookup of MX for example.org failed: SERVFAIL" */
};

typedef void (*dns_mx_cb)(void *arg, const struct dns_mx_result *r);

int dns_resolve_mx(struct dns_ctx *ctx, const char *domain, dns_mx_cb cb, void *arg, int *id);

/* addresses of a host: AAAA and A */
enum dns_addr_status {
	DNS_ADDR_OK,
	DNS_ADDR_NXDOMAIN, /* no such host, or no A or AAAA record (permanent) */
	DNS_ADDR_TEMPFAIL, /* both lookups failed, or one failed and the other found nothing */
};

struct dns_addr_result {
	enum dns_addr_status status;
	enum dns_sec sec; /* SECURE only if every answered RRset (or denial) was secure */
	const char *host;
	struct sockaddr_storage *addrs; /* IPv6 first, then IPv4; port set */
	size_t n_addrs;
	bool partial; /* OK, but one of the two lookups failed (see reason) */
	char reason[256];
};

typedef void (*dns_addr_cb)(void *arg, const struct dns_addr_result *r);

int dns_resolve_addrs(struct dns_ctx *ctx, const char *host, uint16_t port, dns_addr_cb cb,
                      void *arg, int *id);

/* names for logs and JSON: "ok", "nodata", "secure", ... */
/*
 * dns_anchor_owner - the owner name of the first record of a trust anchor file
 * (". IN DS ..." gives "."); -1 when the file cannot be read or has no record.
 */
int dns_anchor_owner(const char *path, char *out, size_t outlen);

const char *dns_status_name(enum dns_status s);
const char *dns_sec_name(enum dns_sec s);
const char *dns_mx_status_name(enum dns_mx_status s);
const char *dns_addr_status_name(enum dns_addr_status s);

#endif
