/*
 * check/summary - figures over many domains' check results (the JSON lines
 * of `strictmx scan`, so that a resumed scan counts the earlier lines too),
 * the HTML report and Postfix smtp_tls_policy_maps lines. Pure: JSON in,
 * text out; unit-tested. A scan folds each domain into the summary and a
 * check_row as it finishes, and keeps no JSON.
 */
#ifndef STRICTMX_CHECK_SUMMARY_H
#define STRICTMX_CHECK_SUMMARY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

struct check_count {
	char *name;
	size_t n;
};

struct check_summary {
	size_t total;   /* domains */
	size_t not_run; /* exit 2: DNS failure, no such domain */
	size_t has_mx, starttls_all, enforce_all, pkix_all, dane_all, sts_enforce;
	size_t verify_all, would_deliver, citable;
	struct check_count *versions; /* domains per TLS version seen */
	size_t n_versions;
	struct check_count *reasons; /* domains per failure class */
	size_t n_reasons;
};

void check_summary_init(struct check_summary *s);
void check_summary_free(struct check_summary *s);
/* check_summary_add - count one domain (an object of check_result_json) */
void check_summary_add(struct check_summary *s, const json_t *dom);
/* check_summary_sort - counts in descending order (call before printing) */
void check_summary_sort(struct check_summary *s);
void check_summary_print(const struct check_summary *s, FILE *f);
/* check_summary_json - {"domains": N, "has_mx": N, ..., "tls_versions": {...}, "reasons": [...]} */
json_t *check_summary_json(const struct check_summary *s);

/*
 * check_row - what the HTML table and the Postfix lines need of one domain, so that
 * a scan keeps a few hundred bytes per domain instead of its whole JSON object (measured:
 * ~14 KB less per domain, docs/checker.md)
 */
struct check_row {
	char *domain;
	char *verdict; /* verdict.text */
	char *postfix; /* check_postfix_policy's line; NULL when the domain has none */
	size_t n_mx;
	bool starttls_all, enforce_all, pkix_all, dane_all, sts_enforce, would_deliver, citable;
};

/* check_row_set - r from a domain's object (check_result_json); free with check_row_free */
void check_row_set(struct check_row *r, const json_t *dom);
void check_row_free(struct check_row *r);

/* check_html_write - one self-contained HTML page: inline SVG charts, sortable table */
void check_html_write(FILE *f, const struct check_summary *s, const struct check_row *rows,
                      size_t n);

/*
 * check_postfix_policy - the smtp_tls_policy_maps line for a domain whose
 * every MX verified: "example.org dane-only" when every MX verified by DANE,
 * "example.org secure match=mx1.example.org:mx2.example.org" when every MX
 * is PKIX-valid. false (nothing written) otherwise.
 */
bool check_postfix_policy(const json_t *dom, char *buf, size_t len);

#endif
