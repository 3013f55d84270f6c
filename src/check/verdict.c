/*
 * check/verdict - from the plan's method and what the probes saw, what
 * strictmx would do (per MX and for the domain) and whether the domain may
 * be cited as one that enforces STARTTLS. Pure, no I/O: unit-tested.
 *
 * The rules follow delivery (src/outbound/delivery.c): MXs in plan order,
 * "skip" and "defer" MXs are never used, an address is used only when the
 * session reached the EHLO inside TLS after the certificate verified as the
 * plan demands. Delivery would succeed through the first such MX; the exit
 * status and the campaign verdict ask more: EVERY MX and address verifies.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check/check.h"
#include "common/xmalloc.h"

const char *check_enforce_name(enum check_enforce e)
{
	switch (e) {
	case CHECK_ENFORCE_NOT_RUN:
		return "not-run";
	case CHECK_ENFORCE_YES:
		return "enforced";
	case CHECK_ENFORCE_NO:
		return "accepted";
	case CHECK_ENFORCE_UNCLEAR:
		return "unclear";
	case CHECK_ENFORCE_ERROR:
		return "error";
	}
	return "?";
}

void check_rollover(const struct policy_tlsa *t, size_t n, char *out, size_t outlen)
{
	if (outlen > 0)
		out[0] = '\0';
	if (n != 1)
		return;
	/*
	 * RFC 7671 §8.1, RFC 7672 §3.1: a key or certificate change needs the
	 * new record published first; with one record alone the next change
	 * breaks DANE until DNS catches up (Internet.nl "DANE rollover").
	 */
	if (t[0].usage == 3)
		snprintf(out, outlen,
		         "a single TLSA record (%u %u %u): the next key change breaks DANE "
		         "unless a record for the new key is published first (add a second "
		         "3 1 1 for the next key, or a 2 x x record for the issuer)",
		         t[0].usage, t[0].selector, t[0].mtype);
	else
		snprintf(out, outlen,
		         "a single TLSA record (%u %u %u): a change of the trust anchor breaks "
		         "DANE unless a second record is published first",
		         t[0].usage, t[0].selector, t[0].mtype);
}

void check_reason_class(const char *reason, char *out, size_t outlen)
{
	static const char *const keep_prefix[] = {
	    "certificate name does not match",
	    "TLSA records do not match",
	    "Recipient's Mail eXchanger does not offer STARTTLS capability",
	    "STARTTLS refused by MX",
	    "TLS handshake failed",
	    "MX closed the connection",
	    "MX refused the session",
	    "timeout while waiting for",
	    "connection timed out",
	    "connect:",
	    "skipped",
	    "TLSA lookup",
	};
	const char *p;
	size_t n;

	if (outlen == 0)
		return;
	for (size_t i = 0; i < sizeof(keep_prefix) / sizeof(keep_prefix[0]); i++) {
		size_t k = strlen(keep_prefix[i]);
		if (strncmp(reason, keep_prefix[i], k) == 0) {
			if (!strcmp(keep_prefix[i], "connect:") ||
			    !strcmp(keep_prefix[i], "timeout while waiting for")) {
				/* "connect: Connection refused": the error is the class */
				p = strstr(reason, " (");
				n = p ? (size_t)(p - reason) : strlen(reason);
			} else {
				n = k;
			}
			snprintf(out, outlen, "%.*s", (int)n, reason);
			return;
		}
	}
	p = strstr(reason, " (");
	n = p ? (size_t)(p - reason) : strlen(reason);
	snprintf(out, outlen, "%.*s", (int)n, reason);
}

static const char *method_words(enum policy_method m)
{
	switch (m) {
	case POLICY_DANE:
		return "DANE";
	case POLICY_MTASTS_PKIX:
		return "PKIX (MTA-STS enforce)";
	case POLICY_PKIX:
		return "PKIX";
	case POLICY_ENCRYPT_ONLY:
		return "nothing (encrypt-only)";
	case POLICY_DEFER:
	case POLICY_SKIP:
		break;
	}
	return "?";
}

/* addr_ok - delivery would get past the EHLO inside TLS at this address */
static bool addr_ok(const struct check_addr *a, enum policy_method m)
{
	if (!a->tls.ran || a->tls.error[0] != '\0')
		return false;
	if (m == POLICY_ENCRYPT_ONLY)
		return a->tls.handshake;
	return a->tls.verify == 1;
}

static bool addr_pkix_ok(const struct check_addr *a, enum policy_method m)
{
	const struct check_tls *t = m == POLICY_DANE ? &a->pkix : &a->tls;
	return t->ran && t->verify == 1;
}

static void add_reason(struct check_result *r, const char *reason)
{
	char cls[200];

	check_reason_class(reason, cls, sizeof(cls));
	for (size_t i = 0; i < r->n_reasons; i++)
		if (!strcmp(r->reasons[i], cls))
			return;
	r->reasons = xrealloc(r->reasons, (r->n_reasons + 1) * sizeof(*r->reasons));
	r->reasons[r->n_reasons++] = xstrdup(cls);
}

/* append - "...; reason (host)" into buf */
static void append(char *buf, size_t len, const char *reason, const char *host)
{
	size_t n = strlen(buf);
	if (n + 2 >= len)
		return;
	snprintf(buf + n, len - n, "%s%s (%s)", n ? "; " : "", reason, host);
}

static void mx_verdict(struct check_result *r, struct check_mx *m)
{
	m->verified = false;
	m->reason[0] = '\0';
	for (size_t k = 0; k < m->n_addrs; k++)
		m->addrs[k].verified = addr_ok(&m->addrs[k], m->method);
	switch (m->method) {
	case POLICY_SKIP:
		snprintf(m->reason, sizeof(m->reason), "skipped: %s", m->why);
		break;
	case POLICY_DEFER:
		snprintf(m->reason, sizeof(m->reason), "%s", m->why);
		break;
	default:
		if (m->n_addrs == 0) {
			snprintf(m->reason, sizeof(m->reason), "%s", m->why);
			break;
		}
		for (size_t k = 0; k < m->n_addrs; k++) {
			const struct check_addr *a = &m->addrs[k];
			if (a->verified)
				continue;
			const char *why = a->tls.error[0]          ? a->tls.error
			                  : a->tls.verify_error[0] ? a->tls.verify_error
			                                           : "not verified";
			if (m->n_addrs > 1)
				snprintf(m->reason, sizeof(m->reason), "%.500s [%s]", why, a->ip);
			else
				snprintf(m->reason, sizeof(m->reason), "%.500s", why);
			break;
		}
		if (m->reason[0] == '\0')
			m->verified = m->method != POLICY_ENCRYPT_ONLY;
		if (m->method == POLICY_ENCRYPT_ONLY && m->reason[0] == '\0')
			snprintf(m->reason, sizeof(m->reason),
			         "[domain] tls = encrypt-only: the certificate is not verified");
		break;
	}
	if (m->verified)
		snprintf(m->verdict, sizeof(m->verdict), "yes, verified by %s",
		         method_words(m->method));
	else
		snprintf(m->verdict, sizeof(m->verdict), "no: %s", m->reason);
	if (!m->verified)
		add_reason(r, m->reason);
}

void check_verdict(struct check_result *r)
{
	const struct check_mx *via = NULL;
	char no[sizeof(r->deliver)] = "";

	for (size_t i = 0; i < r->n_reasons; i++)
		free(r->reasons[i]);
	free(r->reasons);
	r->reasons = NULL;
	r->n_reasons = 0;
	r->would_deliver = r->all_verify = r->starttls_all = r->enforce_all = false;
	r->pkix_all = r->dane_all = r->citable = false;
	r->sts_enforce = r->sts_valid && !strcmp(r->sts_mode, "enforce");
	r->campaign[0] = '\0';

	switch (r->status) {
	case POLICY_TEMPFAIL:
		snprintf(r->deliver, sizeof(r->deliver), "unknown: the check could not run: %s",
		         r->reason);
		snprintf(r->campaign, sizeof(r->campaign), "not citable: the check could not run");
		add_reason(r, "DNS lookup failed");
		r->exit_code = 2;
		return;
	case POLICY_NXDOMAIN:
		snprintf(r->deliver, sizeof(r->deliver), "no: %s", r->reason);
		snprintf(r->campaign, sizeof(r->campaign), "not citable: no such domain");
		add_reason(r, "no such domain");
		r->exit_code = 2;
		return;
	case POLICY_NULL_MX:
		snprintf(r->deliver, sizeof(r->deliver),
		         "no: the domain publishes a null MX (it accepts no mail)");
		snprintf(r->campaign, sizeof(r->campaign),
		         "not citable: the domain accepts no mail");
		add_reason(r, "null MX");
		r->exit_code = 1;
		return;
	case POLICY_OK:
		break;
	}

	bool all = r->n_mx > 0, st = r->n_mx > 0, enf = r->n_mx > 0, pk = r->n_mx > 0,
	     dn = r->n_mx > 0;
	bool any_accepts = false;
	const char *not_enforcing = NULL, *not_enf_ip = NULL;
	char enf_why[300] = "";
	for (size_t i = 0; i < r->n_mx; i++) {
		struct check_mx *m = &r->mx[i];
		mx_verdict(r, m);
		all = all && m->verified;
		dn = dn && m->method == POLICY_DANE && m->verified;
		if (m->n_addrs == 0)
			st = enf = pk = false;
		for (size_t k = 0; k < m->n_addrs; k++) {
			const struct check_addr *a = &m->addrs[k];
			st = st && a->tls.starttls == 1;
			pk = pk && addr_pkix_ok(a, m->method);
			any_accepts = any_accepts || a->enforce == CHECK_ENFORCE_NO;
			if (a->enforce != CHECK_ENFORCE_YES) {
				if (enf) {
					not_enforcing = m->host;
					not_enf_ip = a->ip;
					if (a->enforce == CHECK_ENFORCE_NO)
						snprintf(enf_why, sizeof(enf_why),
						         "accepts mail without STARTTLS (%.200s)",
						         a->enforce_reply);
					else if (a->enforce == CHECK_ENFORCE_UNCLEAR)
						snprintf(
						    enf_why, sizeof(enf_why),
						    "answered MAIL FROM without TLS with %.200s",
						    a->enforce_reply);
					else
						snprintf(enf_why, sizeof(enf_why),
						         "enforcement probe failed: %.200s",
						         a->enforce_error[0] ? a->enforce_error
						                             : "not run");
				}
				enf = false;
			}
		}
		if (via == NULL && m->method != POLICY_SKIP && m->method != POLICY_DEFER) {
			for (size_t k = 0; k < m->n_addrs; k++)
				if (m->addrs[k].verified || (m->method == POLICY_ENCRYPT_ONLY &&
				                             addr_ok(&m->addrs[k], m->method)))
					via = m;
		}
		if (!m->verified)
			append(no, sizeof(no), m->reason, m->host);
	}
	r->all_verify = all;
	r->starttls_all = st;
	r->enforce_all = enf;
	r->pkix_all = pk;
	r->dane_all = dn;
	r->would_deliver = via != NULL;
	if (r->n_mx == 0) {
		snprintf(r->deliver, sizeof(r->deliver), "no: no MX host");
	} else if (via != NULL) {
		snprintf(r->deliver, sizeof(r->deliver), "yes, %s %s (%s)",
		         via->method == POLICY_ENCRYPT_ONLY ? "encrypted, verified by"
		                                            : "verified by",
		         method_words(via->method), via->host);
	} else {
		snprintf(r->deliver, sizeof(r->deliver), "no: %.1190s", no);
	}
	r->citable = all && enf;
	if (r->citable)
		snprintf(r->campaign, sizeof(r->campaign),
		         "may be cited as user@%s (STARTTLS): every MX enforces STARTTLS inbound "
		         "and verifies",
		         r->domain);
	else if (!all)
		snprintf(r->campaign, sizeof(r->campaign), "not citable: not every MX verifies");
	else
		snprintf(r->campaign, sizeof(r->campaign), "not citable: %s [%s] %s",
		         not_enforcing ? not_enforcing : "?", not_enf_ip ? not_enf_ip : "?",
		         enf_why);
	if (any_accepts)
		add_reason(r, "accepts mail without STARTTLS");
	r->exit_code = all ? 0 : 1;
}
