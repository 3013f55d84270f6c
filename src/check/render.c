/*
 * check/render - a check result as JSON (schema: docs/checker.md) and as
 * aligned text for people (colour only when asked: a terminal).
 */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check/check.h"
#include "common/xmalloc.h"

/* json_string refuses invalid UTF-8: every text here is printable ASCII, but be sure */
static json_t *jstr(const char *s)
{
	json_t *j = json_string(s != NULL ? s : "");

	return j != NULL ? j : json_string("?");
}

static json_t *jtri(int v)
{
	return v < 0 ? json_null() : json_boolean(v > 0);
}

static json_t *san_array(const char *san)
{
	json_t *a = json_array();
	const char *p = san;

	while (p && *p) {
		const char *e = strstr(p, ", ");
		size_t n = e ? (size_t)(e - p) : strlen(p);
		char *s = xstrndup(p, n);
		json_array_append_new(a, jstr(s));
		free(s);
		p = e ? e + 2 : NULL;
	}
	return a;
}

static json_t *chain_json(const struct check_tls *t)
{
	json_t *a = json_array();

	for (size_t i = 0; i < t->n_chain; i++) {
		const struct check_cert *c = &t->chain[i];
		json_array_append_new(
		    a, json_pack("{s:o,s:o,s:o,s:o,s:I}", "subject", jstr(c->subject), "issuer",
		                 jstr(c->issuer), "san", san_array(c->san), "not_after",
		                 jstr(c->not_after), "days_left", (json_int_t)c->days_left));
	}
	return a;
}

static json_t *addr_json(const struct check_mx *m, const struct check_addr *a)
{
	json_t *o = json_object();
	const struct check_tls *t = &a->tls;
	const struct check_tls *pk = m->method == POLICY_DANE ? &a->pkix : &a->tls;

	json_object_set_new(o, "ip", jstr(a->ip));
	json_object_set_new(o, "port", json_integer(a->port));
	json_object_set_new(o, "connect",
	                    json_pack("{s:b,s:o}", "ok", t->connected, "error",
	                              jstr(t->connected ? "" : t->error)));
	json_object_set_new(o, "starttls", jtri(t->starttls));
	if (t->handshake)
		json_object_set_new(o, "tls",
		                    json_pack("{s:o,s:o,s:o}", "protocol", jstr(t->protocol),
		                              "cipher", jstr(t->cipher), "group", jstr(t->group)));
	else
		json_object_set_new(o, "tls", json_null());
	json_object_set_new(o, "certificates", chain_json(t->handshake ? t : pk));
	if (pk->ran && pk->verify >= 0)
		json_object_set_new(
		    o, "pkix",
		    json_pack("{s:b,s:o}", "ok", pk->verify == 1, "error", jstr(pk->verify_error)));
	else
		json_object_set_new(o, "pkix", json_null());
	if (m->method == POLICY_DANE && t->verify >= 0)
		json_object_set_new(o, "dane",
		                    json_pack("{s:b,s:o,s:o}", "ok", t->verify == 1, "matched",
		                              jstr(t->dane_match), "error", jstr(t->verify_error)));
	else
		json_object_set_new(o, "dane", json_null());
	json_object_set_new(o, "verified", json_boolean(a->verified));
	json_object_set_new(o, "error", jstr(t->error));
	json_object_set_new(o, "inbound",
	                    json_pack("{s:o,s:s,s:o,s:o}", "enforces",
	                              a->enforce == CHECK_ENFORCE_YES  ? json_true()
	                              : a->enforce == CHECK_ENFORCE_NO ? json_false()
	                                                               : json_null(),
	                              "result", check_enforce_name(a->enforce), "reply",
	                              jstr(a->enforce_reply), "error", jstr(a->enforce_error)));
	return o;
}

static json_t *result_obj(const struct check_result *r)
{
	json_t *o = json_object(), *mxs = json_array(), *vers = json_array();

	json_object_set_new(o, "domain", jstr(r->domain));
	json_object_set_new(o, "status", jstr(policy_status_name(r->status)));
	json_object_set_new(o, "reason", jstr(r->reason));
	json_t *plan = r->plan_json ? json_loads(r->plan_json, 0, NULL) : NULL;
	json_object_set_new(o, "plan", plan ? plan : json_null());

	json_t *pats = json_array();
	for (size_t i = 0; i < r->n_sts_mx; i++)
		json_array_append_new(pats, jstr(r->sts_mx[i]));
	json_object_set_new(o, "mta_sts",
	                    json_pack("{s:b,s:o,s:b,s:o,s:o,s:o}", "txt", r->sts_txt, "id",
	                              jstr(r->sts_id), "valid", r->sts_valid, "mode",
	                              jstr(r->sts_mode), "mx", pats, "error", jstr(r->sts_error)));
	json_t *rua = json_array();
	for (size_t i = 0; i < r->tlsrpt.n_rua; i++)
		json_array_append_new(rua, jstr(r->tlsrpt.rua[i]));
	json_object_set_new(o, "tls_rpt",
	                    json_pack("{s:s,s:o,s:o,s:o}", "status",
	                              check_tlsrpt_status_name(r->tlsrpt.status), "record",
	                              jstr(r->tlsrpt.record), "rua", rua, "error",
	                              jstr(r->tlsrpt.error)));

	for (size_t i = 0; i < r->n_mx; i++) {
		const struct check_mx *m = &r->mx[i];
		json_t *mo = json_object(), *tl = json_array(), *addrs = json_array();
		json_object_set_new(mo, "host", jstr(m->host));
		json_object_set_new(mo, "pref", json_integer(m->pref));
		json_object_set_new(mo, "method", jstr(policy_method_name(m->method)));
		json_object_set_new(mo, "why", jstr(m->why));
		for (size_t k = 0; k < m->n_tlsa; k++)
			json_array_append_new(tl, jstr(m->tlsa[k]));
		json_object_set_new(mo, "tlsa", tl);
		json_object_set_new(mo, "tlsa_rollover_warning",
		                    m->rollover[0] ? jstr(m->rollover) : json_null());
		json_object_set_new(mo, "mta_sts_match", jtri(m->sts_match));
		for (size_t k = 0; k < m->n_addrs; k++) {
			const struct check_addr *a = &m->addrs[k];
			json_array_append_new(addrs, addr_json(m, a));
			if (a->tls.handshake) {
				bool seen = false;
				for (size_t v = 0; v < json_array_size(vers); v++)
					seen = seen ||
					       !strcmp(json_string_value(json_array_get(vers, v)),
					               a->tls.protocol);
				if (!seen)
					json_array_append_new(vers, jstr(a->tls.protocol));
			}
		}
		json_object_set_new(mo, "addresses", addrs);
		json_object_set_new(mo, "verified", json_boolean(m->verified));
		json_object_set_new(mo, "verdict", jstr(m->verdict));
		json_object_set_new(mo, "reason", jstr(m->reason));
		json_array_append_new(mxs, mo);
	}
	json_object_set_new(o, "mx", mxs);
	json_object_set_new(o, "tls_versions", vers);

	json_t *reasons = json_array();
	for (size_t i = 0; i < r->n_reasons; i++)
		json_array_append_new(reasons, jstr(r->reasons[i]));
	json_t *v = json_object();
	json_object_set_new(v, "would_deliver", json_boolean(r->would_deliver));
	json_object_set_new(v, "text", jstr(r->deliver));
	json_object_set_new(v, "has_mx", json_boolean(r->status == POLICY_OK && r->n_mx > 0));
	json_object_set_new(v, "all_mx_verify", json_boolean(r->all_verify));
	json_object_set_new(v, "starttls_all", json_boolean(r->starttls_all));
	json_object_set_new(v, "enforce_all", json_boolean(r->enforce_all));
	json_object_set_new(v, "pkix_all", json_boolean(r->pkix_all));
	json_object_set_new(v, "dane_all", json_boolean(r->dane_all));
	json_object_set_new(v, "mta_sts_enforce", json_boolean(r->sts_enforce));
	json_object_set_new(v, "citable", json_boolean(r->citable));
	json_object_set_new(v, "campaign", jstr(r->campaign));
	json_object_set_new(v, "reasons", reasons);
	json_object_set_new(o, "verdict", v);
	json_object_set_new(o, "exit", json_integer(r->exit_code));
	json_object_set_new(o, "elapsed_ms", json_integer(r->elapsed_ms));
	return o;
}

char *check_result_json(const struct check_result *r)
{
	json_t *o = result_obj(r);
	char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);

	json_decref(o);
	return s != NULL ? s : xstrdup("{}");
}

/* ---- text ---- */

#define GREEN  "\033[32m"
#define RED    "\033[31m"
#define YELLOW "\033[33m"
#define BOLD   "\033[1m"
#define RESET  "\033[0m"

struct out {
	FILE *f;
	bool color;
};

static const char *c(const struct out *o, const char *code)
{
	return o->color ? code : "";
}

/* row - "    label        value", the value in colour col */
static void row(const struct out *o, int indent, const char *label, const char *col,
                const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void row(const struct out *o, int indent, const char *label, const char *col,
                const char *fmt, ...)
{
	va_list ap;

	fprintf(o->f, "%*s%-*s ", indent, "", 14 - indent + 4, label);
	if (col)
		fputs(c(o, col), o->f);
	va_start(ap, fmt);
	vfprintf(o->f, fmt, ap);
	va_end(ap);
	if (col)
		fputs(c(o, RESET), o->f);
	fputc('\n', o->f);
}

static void print_tls(const struct out *o, const struct check_tls *t, const char *label,
                      bool print_chain)
{
	if (!t->ran)
		return;
	if (t->handshake && print_chain) {
		row(o, 6, "TLS", NULL, "%s, %s%s%s", t->protocol, t->cipher,
		    t->group[0] ? ", " : "", t->group);
		for (size_t i = 0; i < t->n_chain; i++) {
			const struct check_cert *ce = &t->chain[i];
			char lab[32];
			snprintf(lab, sizeof(lab), "cert %zu", i);
			row(o, 6, lab, NULL, "%s", ce->subject);
			row(o, 6, "", NULL, "issuer %s", ce->issuer);
			if (ce->san[0])
				row(o, 6, "", NULL, "names %s", ce->san);
			row(o, 6, "",
			    ce->days_left < 0    ? RED
			    : ce->days_left < 14 ? YELLOW
			                         : NULL,
			    "expires %s (%s%ld days)", ce->not_after,
			    ce->days_left < 0 ? "expired " : "in ",
			    ce->days_left < 0 ? -ce->days_left : ce->days_left);
		}
	}
	if (t->verify == 1)
		row(o, 6, label, GREEN, "ok%s%s", t->dane_match[0] ? ": " : "", t->dane_match);
	else if (t->verify == 0)
		row(o, 6, label, RED, "failed: %s", t->verify_error);
	else if (t->error[0] && t->starttls != 0)
		row(o, 6, label, RED, "not run: %s", t->error);
}

void check_result_print(const struct check_result *r, FILE *f, bool color)
{
	struct out o = {f, color};

	fprintf(f, "%s%s%s\n", c(&o, BOLD), r->domain, c(&o, RESET));
	if (r->status != POLICY_OK)
		row(&o, 2, "DNS", r->status == POLICY_NULL_MX ? NULL : RED, "%s: %s",
		    policy_status_name(r->status), r->reason);
	else
		row(&o, 2, "MX", NULL, "%zu host%s, MX RRset %s", r->n_mx, r->n_mx == 1 ? "" : "s",
		    dns_sec_name(r->mx_sec));
	if (r->sts_valid)
		row(&o, 2, "MTA-STS", r->sts_enforce ? GREEN : NULL, "mode %s, id %s", r->sts_mode,
		    r->sts_id);
	else if (r->sts_txt)
		row(&o, 2, "MTA-STS", YELLOW, "TXT id %s but no valid policy: %s", r->sts_id,
		    r->sts_error);
	else
		row(&o, 2, "MTA-STS", NULL, "none");
	if (r->tlsrpt.status == CHECK_TLSRPT_OK) {
		char rua[1200] = "";
		for (size_t i = 0; i < r->tlsrpt.n_rua; i++) {
			size_t n = strlen(rua);
			snprintf(rua + n, sizeof(rua) - n, "%s%s", i ? ", " : "", r->tlsrpt.rua[i]);
		}
		row(&o, 2, "TLS-RPT", GREEN, "v=TLSRPTv1, rua %s", rua);
	} else if (r->tlsrpt.status == CHECK_TLSRPT_NONE) {
		row(&o, 2, "TLS-RPT", NULL, "none");
	} else {
		row(&o, 2, "TLS-RPT", YELLOW, "%s: %s", check_tlsrpt_status_name(r->tlsrpt.status),
		    r->tlsrpt.error);
	}
	for (size_t i = 0; i < r->n_mx; i++) {
		const struct check_mx *m = &r->mx[i];
		fprintf(f, "  %s%s%s (preference %u)\n", c(&o, BOLD), m->host, c(&o, RESET),
		        (unsigned)m->pref);
		row(&o, 4, "plan", NULL, "%s: %s", policy_method_name(m->method), m->why);
		for (size_t k = 0; k < m->n_tlsa; k++)
			row(&o, 4, k ? "" : "TLSA", NULL, "%s", m->tlsa[k]);
		if (m->rollover[0])
			row(&o, 4, "warning", YELLOW, "%s", m->rollover);
		if (m->sts_match >= 0)
			row(&o, 4, "MTA-STS", NULL, "%s",
			    m->sts_match ? "this MX matches the policy"
			                 : "this MX does NOT match the policy");
		for (size_t k = 0; k < m->n_addrs; k++) {
			const struct check_addr *a = &m->addrs[k];
			const struct check_tls *t = &a->tls;
			fprintf(f, "    %s port %u\n", a->ip, (unsigned)a->port);
			if (!t->connected) {
				row(&o, 6, "connect", RED, "%s", t->error);
				continue;
			}
			row(&o, 6, "connect", GREEN, "ok");
			row(&o, 6, "STARTTLS", t->starttls == 1 ? GREEN : RED, "%s",
			    t->starttls == 1   ? "offered"
			    : t->starttls == 0 ? "NOT offered"
			                       : "unknown (the session ended before EHLO)");
			if (m->method == POLICY_DANE) {
				print_tls(&o, t, "DANE", true);
				print_tls(&o, &a->pkix, "PKIX", !t->handshake);
			} else {
				print_tls(&o, t, "PKIX", true);
			}
			if (t->error[0] && t->verify != 0)
				row(&o, 6, "session", RED, "%s", t->error);
			switch (a->enforce) {
			case CHECK_ENFORCE_YES:
				row(&o, 6, "inbound", GREEN, "enforces STARTTLS (%s)",
				    a->enforce_reply);
				break;
			case CHECK_ENFORCE_NO:
				row(&o, 6, "inbound", RED, "accepts mail without STARTTLS (%s)",
				    a->enforce_reply);
				break;
			case CHECK_ENFORCE_UNCLEAR:
				row(&o, 6, "inbound", YELLOW, "unclear: MAIL FROM answered %s",
				    a->enforce_reply);
				break;
			default:
				row(&o, 6, "inbound", YELLOW, "not known: %s", a->enforce_error);
				break;
			}
		}
		row(&o, 4, "verdict", m->verified ? GREEN : RED, "%s", m->verdict);
	}
	fprintf(f, "  strictmx would deliver: %s%s%s\n", c(&o, r->would_deliver ? GREEN : RED),
	        r->deliver, c(&o, RESET));
	fprintf(f, "  campaign: %s%s%s\n", c(&o, r->citable ? GREEN : YELLOW), r->campaign,
	        c(&o, RESET));
}
