/*
 * policy/render - names, JSON and text for a plan (the CLI and the checker).
 */
#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/xmalloc.h"
#include "policy/policy.h"

const char *policy_method_name(enum policy_method m)
{
	switch (m) {
	case POLICY_DANE:
		return "dane";
	case POLICY_MTASTS_PKIX:
		return "mta-sts+pkix";
	case POLICY_PKIX:
		return "pkix";
	case POLICY_ENCRYPT_ONLY:
		return "encrypt-only";
	case POLICY_DEFER:
		return "defer";
	case POLICY_SKIP:
		return "skip";
	}
	return "?";
}

const char *policy_status_name(enum policy_status s)
{
	switch (s) {
	case POLICY_OK:
		return "ok";
	case POLICY_NULL_MX:
		return "null-mx";
	case POLICY_NXDOMAIN:
		return "nxdomain";
	case POLICY_TEMPFAIL:
		return "tempfail";
	}
	return "?";
}

static void addr_text(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	const void *a = ss->ss_family == AF_INET6
	                    ? (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr
	                    : (const void *)&((const struct sockaddr_in *)ss)->sin_addr;

	if (inet_ntop(ss->ss_family, a, buf, (socklen_t)len) == NULL)
		snprintf(buf, len, "?");
}

/* "3 1 1 abcd..." */
static char *tlsa_text(const struct policy_tlsa *t)
{
	char *s = xmalloc(16 + 2 * t->len);
	size_t o = (size_t)sprintf(s, "%u %u %u ", t->usage, t->selector, t->mtype);

	for (size_t i = 0; i < t->len; i++)
		o += (size_t)sprintf(s + o, "%02x", t->data[i]);
	return s;
}

/* json_string refuses invalid UTF-8: DNS names are escaped ASCII, but be sure */
static json_t *jstr(const char *s)
{
	json_t *j = json_string(s != NULL ? s : "");

	return j != NULL ? j : json_string("?");
}

char *policy_plan_json(const struct policy_plan *plan)
{
	json_t *o = json_object(), *sts = json_object(), *pats = json_array(), *mxs = json_array();
	char *out;

	json_object_set_new(o, "domain", jstr(plan->domain));
	json_object_set_new(o, "status", jstr(policy_status_name(plan->status)));
	json_object_set_new(o, "reason", jstr(plan->reason));
	json_object_set_new(o, "mx_sec", jstr(dns_sec_name(plan->mx_sec)));
	json_object_set_new(o, "dane_only", json_boolean(plan->dane_only));

	json_object_set_new(sts, "txt", json_boolean(plan->sts.txt_present));
	json_object_set_new(sts, "id", jstr(plan->sts.id));
	json_object_set_new(sts, "valid", json_boolean(plan->sts.policy_valid));
	json_object_set_new(sts, "mode", jstr(plan->sts.mode));
	for (size_t i = 0; i < plan->sts.n_mx_patterns; i++)
		json_array_append_new(pats, jstr(plan->sts.mx_patterns[i]));
	json_object_set_new(sts, "mx", pats);
	json_object_set_new(sts, "max_age", json_integer(plan->sts.max_age));
	json_object_set_new(sts, "from_cache", json_boolean(plan->sts.from_cache));
	json_object_set_new(sts, "error", jstr(plan->sts.error));
	json_object_set_new(o, "mta_sts", sts);

	for (size_t i = 0; i < plan->n_mx; i++) {
		const struct policy_mx *m = &plan->mx[i];
		json_t *jm = json_object(), *addrs = json_array(), *tlsa = json_array();
		char buf[64];

		json_object_set_new(jm, "host", jstr(m->host));
		json_object_set_new(jm, "pref", json_integer(m->pref));
		json_object_set_new(jm, "tlsa_base", jstr(m->tlsa_base));
		json_object_set_new(jm, "method", jstr(policy_method_name(m->method)));
		json_object_set_new(jm, "why", jstr(m->why));
		json_object_set_new(jm, "addr_sec", jstr(dns_sec_name(m->addr_sec)));
		for (size_t k = 0; k < m->n_addrs; k++) {
			addr_text(&m->addrs[k], buf, sizeof(buf));
			json_array_append_new(addrs, jstr(buf));
		}
		json_object_set_new(jm, "addrs", addrs);
		for (size_t k = 0; k < m->n_tlsa; k++) {
			char *t = tlsa_text(&m->tlsa[k]);

			json_array_append_new(tlsa, jstr(t));
			free(t);
		}
		json_object_set_new(jm, "tlsa", tlsa);
		json_array_append_new(mxs, jm);
	}
	json_object_set_new(o, "mx", mxs);
	out = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (out == NULL)
		fatal("policy: json_dumps failed");
	return out;
}

void policy_plan_print(const struct policy_plan *plan, FILE *out)
{
	fprintf(out, "domain %s: %s (%s), MX %s%s\n", plan->domain,
	        policy_status_name(plan->status), plan->reason, dns_sec_name(plan->mx_sec),
	        plan->dane_only ? ", dane-only" : "");
	if (plan->sts.policy_valid) {
		fprintf(out, "mta-sts: mode %s, id %s, max_age %ld%s, mx", plan->sts.mode,
		        plan->sts.id[0] ? plan->sts.id : "-", plan->sts.max_age,
		        plan->sts.from_cache ? ", cached" : "");
		for (size_t i = 0; i < plan->sts.n_mx_patterns; i++)
			fprintf(out, " %s", plan->sts.mx_patterns[i]);
		fputc('\n', out);
		if (plan->sts.error[0])
			fprintf(out, "mta-sts: note: %s\n", plan->sts.error);
	} else {
		fprintf(out, "mta-sts: none (%s)\n", plan->sts.error[0] ? plan->sts.error : "-");
	}
	for (size_t i = 0; i < plan->n_mx; i++) {
		const struct policy_mx *m = &plan->mx[i];
		char buf[64];

		fprintf(out, "mx %u %s: %s (%s)", m->pref, m->host, policy_method_name(m->method),
		        m->why);
		if (strcmp(m->tlsa_base, m->host) != 0)
			fprintf(out, " base=%s", m->tlsa_base);
		for (size_t k = 0; k < m->n_addrs; k++) {
			addr_text(&m->addrs[k], buf, sizeof(buf));
			fprintf(out, "%s%s", k ? "," : " addrs=", buf);
		}
		fputc('\n', out);
		for (size_t k = 0; k < m->n_tlsa; k++) {
			char *t = tlsa_text(&m->tlsa[k]);

			fprintf(out, "  tlsa %s\n", t);
			free(t);
		}
	}
}
