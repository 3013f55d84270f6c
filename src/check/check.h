/*
 * check - `strictmx check` and `strictmx scan`: for a domain, what the
 * delivery engine would decide, found with the same code (policy/ for the
 * plan, outbound/session for the SMTP client, tls/client for verification),
 * plus what delivery does not need but a mail administrator wants to know:
 * the certificate chain, the PKIX result next to DANE, whether the MX
 * refuses plaintext mail (inbound enforcement), MTA-STS and TLS-RPT.
 *
 * The engine runs on the caller's event loop and checks many domains at
 * once (scan); connections to one address are limited (per_ip).
 * docs/checker.md documents the outputs and their JSON schema.
 */
#ifndef STRICTMX_CHECK_CHECK_H
#define STRICTMX_CHECK_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "dns/dns.h"
#include "policy/policy.h"

struct event_base;
struct config;

#define CHECK_MAX_CHAIN 8
#define CHECK_MAX_RUA   8

struct check_cert {
	char subject[256];
	char issuer[256];
	char san[512]; /* DNS names, ", "-separated */
	char not_after[32];
	long days_left; /* whole days until notAfter; negative once expired */
};

/* one TLS probe: the client session of delivery, ended after the EHLO inside TLS */
struct check_tls {
	bool ran;
	bool connected;
	int starttls; /* -1 unknown (the session ended before), 0 not offered, 1 offered */
	bool handshake;
	char protocol[16], cipher[64], group[32];
	struct check_cert chain[CHECK_MAX_CHAIN];
	size_t n_chain;
	int verify; /* -1 not run, 0 failed, 1 verified (DANE or PKIX, as set up) */
	char verify_error[400];
	char dane_match[128]; /* "3 1 1 matched the server certificate" */
	char error[600];      /* why the session failed ("" = it completed) */
	bool definite;        /* the outcome is the server's, not the moment's: may be shared */
};

enum check_enforce {
	CHECK_ENFORCE_NOT_RUN = 0,
	CHECK_ENFORCE_YES,     /* 530 (or 5xx naming STARTTLS) to a plaintext MAIL FROM */
	CHECK_ENFORCE_NO,      /* 2xx: the MX takes mail without TLS */
	CHECK_ENFORCE_UNCLEAR, /* another reply to MAIL FROM */
	CHECK_ENFORCE_ERROR,   /* no answer to MAIL FROM: connect, greeting, timeout */
};

struct check_addr {
	char ip[46];
	uint16_t port;
	struct check_tls tls;  /* verified as the plan demands (PKIX for skip/defer MXs) */
	struct check_tls pkix; /* DANE MXs only: a second handshake verified by PKIX */
	enum check_enforce enforce;
	char enforce_reply[420]; /* the reply to MAIL FROM:<> */
	char enforce_error[300];
	bool verified; /* filled by check_verdict */
};

struct check_mx {
	char host[256];
	char tlsa_base[256];
	uint16_t pref;
	enum policy_method method;
	char why[300];
	char **tlsa; /* "3 1 1 hex" */
	struct policy_tlsa *tlsa_rr;
	size_t n_tlsa;
	char rollover[300]; /* a warning, or "" */
	int sts_match;      /* -1 no valid MTA-STS policy, 0 not covered, 1 covered */
	struct check_addr *addrs;
	size_t n_addrs;
	/* check_verdict */
	bool verified;
	char verdict[700];
	char reason[600]; /* why not verified, "" when verified */
};

enum check_tlsrpt_status {
	CHECK_TLSRPT_OK,      /* one v=TLSRPTv1 record with at least one usable rua URI */
	CHECK_TLSRPT_NONE,    /* no record begins with v=TLSRPTv1 */
	CHECK_TLSRPT_INVALID, /* several records, or the one is malformed */
	CHECK_TLSRPT_ERROR,   /* the DNS lookup failed */
};

struct check_tlsrpt {
	enum check_tlsrpt_status status;
	char record[512];
	char rua[CHECK_MAX_RUA][256];
	size_t n_rua;
	char error[256];
};

struct check_result {
	char domain[256];
	enum policy_status status;
	char reason[300];
	enum dns_sec mx_sec;
	char *plan_json; /* policy_plan_json */
	bool sts_txt, sts_valid;
	char sts_id[64], sts_mode[16], sts_error[256];
	char **sts_mx;
	size_t n_sts_mx;
	struct check_mx *mx;
	size_t n_mx;
	struct check_tlsrpt tlsrpt;
	long elapsed_ms;
	/* check_verdict */
	bool would_deliver;
	char deliver[1200]; /* "yes, verified by DANE (mx1.example.org)", "no: ..." */
	bool all_verify, starttls_all, enforce_all, pkix_all, dane_all, sts_enforce, citable;
	char campaign[700];
	char **reasons; /* short failure classes, for the scan summary */
	size_t n_reasons;
	int exit_code; /* 0 every MX verifies, 1 some do not, 2 the check could not run */
};

/* ---- the engine ---- */

struct check_opts {
	uint16_t port;    /* 0: the plan's (config smtp_port) */
	unsigned timeout; /* seconds, each step (connect, each reply, handshake, DNS) */
	unsigned per_ip;  /* connections at once to one address */
	enum dns_transport dns_transport; /* --dns-transport; 0: auto (dns_new_scan) */
};

/* what the engine did: probes run, and probes answered by another domain's result */
struct check_stats {
	unsigned long tls_run, tls_shared;
	unsigned long enforce_run, enforce_shared;
};

struct check_engine;
typedef void (*check_cb)(void *arg, struct check_result *r); /* r: the callee's to free */

struct check_engine *check_engine_new(struct event_base *base, const struct config *c,
                                      const struct check_opts *o, char *err, size_t errlen);
void check_engine_free(struct check_engine **e);
void check_engine_stats(const struct check_engine *e, struct check_stats *out);
/* check_start - 0 when started (cb runs on the loop later), -1 for an invalid name */
int check_start(struct check_engine *e, const char *domain, check_cb cb, void *arg);

void check_result_free(struct check_result **r);

/* ---- pure parts ---- */

/* check_parent - the name after the first label ("a.example.com" -> "example.com"; a TLD -> "") */
const char *check_parent(const char *domain);

/* check_verdict - fill the verdict fields of r and of its MXs and addresses */
void check_verdict(struct check_result *r);

/* check_rollover - a warning when the usable TLSA set would break at the next key change */
void check_rollover(const struct policy_tlsa *t, size_t n, char *out, size_t outlen);

/* check_reason_class - "certificate has expired (notAfter ...)" -> "certificate has expired" */
void check_reason_class(const char *reason, char *out, size_t outlen);

/*
 * check_tlsrpt_parse - RFC 8460 §3: pick the v=TLSRPTv1 record among n TXT
 * records (txt[i] of len[i] bytes) and read its rua URIs into out.
 */
enum check_tlsrpt_status check_tlsrpt_parse(const char *const *txt, const size_t *len, size_t n,
                                            struct check_tlsrpt *out);
const char *check_tlsrpt_status_name(enum check_tlsrpt_status s);
const char *check_enforce_name(enum check_enforce e);

/* ---- output ---- */

/* check_result_json - one JSON object (compact, one line; caller frees) */
char *check_result_json(const struct check_result *r);
/* check_result_print - aligned text; colour with ANSI escapes when color */
void check_result_print(const struct check_result *r, FILE *f, bool color);

/* ---- the CLI (src/cmd/strictmx.c dispatches here) ---- */

int check_cli(const struct config *c, int argc, char **argv);
int scan_cli(const struct config *c, int argc, char **argv);

#endif
