/*
 * check/summary - figures, HTML report and Postfix policy lines; see
 * summary.h. The HTML page has no external asset: CSS, SVG and the few
 * lines of table-sorting JavaScript are inline.
 */
#include "check/summary.h"

#include <stdlib.h>
#include <string.h>

#include "common/xmalloc.h"

void check_summary_init(struct check_summary *s)
{
	memset(s, 0, sizeof(*s));
}

static void counts_free(struct check_count *c, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(c[i].name);
	free(c);
}

void check_summary_free(struct check_summary *s)
{
	counts_free(s->versions, s->n_versions);
	counts_free(s->reasons, s->n_reasons);
	memset(s, 0, sizeof(*s));
}

static void count(struct check_count **c, size_t *n, const char *name)
{
	for (size_t i = 0; i < *n; i++)
		if (!strcmp((*c)[i].name, name)) {
			(*c)[i].n++;
			return;
		}
	*c = xrealloc(*c, (*n + 1) * sizeof(**c));
	(*c)[*n].name = xstrdup(name);
	(*c)[*n].n = 1;
	(*n)++;
}

static bool vbool(const json_t *v, const char *key)
{
	return json_is_true(json_object_get(v, key));
}

void check_summary_add(struct check_summary *s, const json_t *dom)
{
	const json_t *v = json_object_get(dom, "verdict");
	const json_t *a;
	size_t i;
	json_t *x;

	if (!json_is_object(dom))
		return;
	s->total++;
	if (json_integer_value(json_object_get(dom, "exit")) == 2)
		s->not_run++;
	s->has_mx += vbool(v, "has_mx");
	s->starttls_all += vbool(v, "starttls_all");
	s->enforce_all += vbool(v, "enforce_all");
	s->pkix_all += vbool(v, "pkix_all");
	s->dane_all += vbool(v, "dane_all");
	s->sts_enforce += vbool(v, "mta_sts_enforce");
	s->verify_all += vbool(v, "all_mx_verify");
	s->would_deliver += vbool(v, "would_deliver");
	s->citable += vbool(v, "citable");
	a = json_object_get(dom, "tls_versions");
	json_array_foreach(a, i, x)
	{
		if (json_is_string(x))
			count(&s->versions, &s->n_versions, json_string_value(x));
	}
	a = json_object_get(v, "reasons");
	json_array_foreach(a, i, x)
	{
		if (json_is_string(x))
			count(&s->reasons, &s->n_reasons, json_string_value(x));
	}
}

static int by_count(const void *a, const void *b)
{
	const struct check_count *x = a, *y = b;

	if (x->n != y->n)
		return x->n < y->n ? 1 : -1;
	return strcmp(x->name, y->name);
}

void check_summary_sort(struct check_summary *s)
{
	if (s->n_versions)
		qsort(s->versions, s->n_versions, sizeof(*s->versions), by_count);
	if (s->n_reasons)
		qsort(s->reasons, s->n_reasons, sizeof(*s->reasons), by_count);
}

static double pct(size_t n, size_t total)
{
	return total ? 100.0 * (double)n / (double)total : 0.0;
}

struct figure {
	const char *label;
	size_t n;
};

static size_t figures(const struct check_summary *s, struct figure *f)
{
	size_t k = 0;

	f[k++] = (struct figure){"with MX", s->has_mx};
	f[k++] = (struct figure){"STARTTLS on every MX", s->starttls_all};
	f[k++] = (struct figure){"enforcing STARTTLS inbound", s->enforce_all};
	f[k++] = (struct figure){"PKIX-valid (every MX)", s->pkix_all};
	f[k++] = (struct figure){"DANE-valid (every MX)", s->dane_all};
	f[k++] = (struct figure){"MTA-STS enforce", s->sts_enforce};
	f[k++] = (struct figure){"every MX verifies", s->verify_all};
	f[k++] = (struct figure){"strictmx would deliver", s->would_deliver};
	f[k++] = (struct figure){"citable (STARTTLS)", s->citable};
	return k;
}

void check_summary_print(const struct check_summary *s, FILE *f)
{
	struct figure fig[16];
	size_t n = figures(s, fig);

	fprintf(f, "summary: %zu domain%s (%zu could not be checked)\n", s->total,
	        s->total == 1 ? "" : "s", s->not_run);
	for (size_t i = 0; i < n; i++)
		fprintf(f, "  %-28s %6zu  %5.1f%%\n", fig[i].label, fig[i].n,
		        pct(fig[i].n, s->total));
	if (s->n_versions) {
		fprintf(f, "  TLS versions (domains):\n");
		for (size_t i = 0; i < s->n_versions; i++)
			fprintf(f, "    %-26s %6zu  %5.1f%%\n", s->versions[i].name,
			        s->versions[i].n, pct(s->versions[i].n, s->total));
	}
	if (s->n_reasons) {
		fprintf(f, "  most common failure reasons (domains):\n");
		for (size_t i = 0; i < s->n_reasons && i < 10; i++)
			fprintf(f, "    %6zu  %s\n", s->reasons[i].n, s->reasons[i].name);
	}
}

json_t *check_summary_json(const struct check_summary *s)
{
	json_t *o = json_object(), *v = json_object(), *r = json_array();

	json_object_set_new(o, "domains", json_integer((json_int_t)s->total));
	json_object_set_new(o, "not_checked", json_integer((json_int_t)s->not_run));
	json_object_set_new(o, "has_mx", json_integer((json_int_t)s->has_mx));
	json_object_set_new(o, "starttls_all", json_integer((json_int_t)s->starttls_all));
	json_object_set_new(o, "enforce_all", json_integer((json_int_t)s->enforce_all));
	json_object_set_new(o, "pkix_all", json_integer((json_int_t)s->pkix_all));
	json_object_set_new(o, "dane_all", json_integer((json_int_t)s->dane_all));
	json_object_set_new(o, "mta_sts_enforce", json_integer((json_int_t)s->sts_enforce));
	json_object_set_new(o, "all_mx_verify", json_integer((json_int_t)s->verify_all));
	json_object_set_new(o, "would_deliver", json_integer((json_int_t)s->would_deliver));
	json_object_set_new(o, "citable", json_integer((json_int_t)s->citable));
	for (size_t i = 0; i < s->n_versions; i++)
		json_object_set_new(v, s->versions[i].name,
		                    json_integer((json_int_t)s->versions[i].n));
	json_object_set_new(o, "tls_versions", v);
	for (size_t i = 0; i < s->n_reasons; i++)
		json_array_append_new(r, json_pack("{s:s,s:I}", "reason", s->reasons[i].name,
		                                   "domains", (json_int_t)s->reasons[i].n));
	json_object_set_new(o, "reasons", r);
	return o;
}

/* ---- HTML ---- */

static void esc(FILE *f, const char *s)
{
	for (; s && *s; s++) {
		switch (*s) {
		case '<':
			fputs("&lt;", f);
			break;
		case '>':
			fputs("&gt;", f);
			break;
		case '&':
			fputs("&amp;", f);
			break;
		case '"':
			fputs("&quot;", f);
			break;
		case '\'':
			fputs("&#39;", f);
			break;
		default:
			fputc(*s, f);
		}
	}
}

/*
 * bar_chart - horizontal bars, one per figure, as inline SVG. Long labels
 * (failure reasons) are shortened on the chart; the full text is the bar's
 * tooltip (<title>). color: the bars' fill (failures are drawn red).
 */
static void bar_chart(FILE *f, const char *title, const struct figure *fig, size_t n, size_t total,
                      const char *color)
{
	const int row = 26, label_w = 320, bar_w = 360;
	const size_t label_max = 44;
	int h = (int)n * row + 10;

	fprintf(f, "<h2>");
	esc(f, title);
	fprintf(f,
	        "</h2>\n<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" "
	        "width=\"%d\" height=\"%d\" role=\"img\">\n",
	        label_w + bar_w + 110, h);
	for (size_t i = 0; i < n; i++) {
		double p = pct(fig[i].n, total);
		int y = (int)i * row + 5;
		int w = (int)(p / 100.0 * bar_w + 0.5);
		char shortl[64];
		const char *label = fig[i].label ? fig[i].label : "";
		if (strlen(label) > label_max)
			snprintf(shortl, sizeof(shortl), "%.*s...", (int)(label_max - 3), label);
		else
			snprintf(shortl, sizeof(shortl), "%s", label);
		fprintf(f, "<g><title>");
		esc(f, label);
		fprintf(f, "</title><text x=\"0\" y=\"%d\" font-size=\"13\">", y + 15);
		esc(f, shortl);
		fprintf(f,
		        "</text><rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"18\" fill=\"#ddd\"/>"
		        "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"18\" fill=\"%s\"/>"
		        "<text x=\"%d\" y=\"%d\" font-size=\"13\">%zu (%.1f%%)</text></g>\n",
		        label_w, y, bar_w, label_w, y, w, color, label_w + bar_w + 6, y + 15,
		        fig[i].n, p);
	}
	fprintf(f, "</svg>\n");
}

static const char *str(const json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));
	return s ? s : "";
}

static void cell_bool(FILE *f, bool v)
{
	fprintf(f, "<td class=\"%s\">%s</td>", v ? "y" : "n", v ? "yes" : "no");
}

void check_row_set(struct check_row *r, const json_t *dom)
{
	const json_t *v = json_object_get(dom, "verdict");
	char line[4096];

	memset(r, 0, sizeof(*r));
	r->domain = xstrdup(str(dom, "domain"));
	r->verdict = xstrdup(str(v, "text"));
	if (check_postfix_policy(dom, line, sizeof(line)))
		r->postfix = xstrdup(line);
	r->n_mx = json_array_size(json_object_get(dom, "mx"));
	r->starttls_all = vbool(v, "starttls_all");
	r->enforce_all = vbool(v, "enforce_all");
	r->pkix_all = vbool(v, "pkix_all");
	r->dane_all = vbool(v, "dane_all");
	r->sts_enforce = vbool(v, "mta_sts_enforce");
	r->would_deliver = vbool(v, "would_deliver");
	r->citable = vbool(v, "citable");
}

void check_row_free(struct check_row *r)
{
	free(r->domain);
	free(r->verdict);
	free(r->postfix);
	memset(r, 0, sizeof(*r));
}

void check_html_write(FILE *f, const struct check_summary *s, const struct check_row *rows,
                      size_t n)
{
	struct figure fig[16];
	size_t nf = figures(s, fig);

	fprintf(f, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
	           "<title>strictmx scan report</title>\n<style>\n"
	           "body{font-family:sans-serif;margin:2em;color:#222}\n"
	           "table{border-collapse:collapse;font-size:13px}\n"
	           "th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}\n"
	           "th{background:#eee;cursor:pointer}\n"
	           "td.y{color:#176}td.n{color:#a22}\n"
	           "</style></head><body>\n<h1>strictmx scan report</h1>\n");
	fprintf(f, "<p>%zu domains; %zu could not be checked.</p>\n", s->total, s->not_run);
	bar_chart(f, "Domains", fig, nf, s->total, "#2a7");
	if (s->n_versions) {
		struct figure *v = xcalloc(s->n_versions, sizeof(*v));
		for (size_t i = 0; i < s->n_versions; i++)
			v[i] = (struct figure){s->versions[i].name, s->versions[i].n};
		bar_chart(f, "TLS versions", v, s->n_versions, s->total, "#37a");
		free(v);
	}
	if (s->n_reasons) {
		size_t k = s->n_reasons < 10 ? s->n_reasons : 10;
		struct figure *v = xcalloc(k, sizeof(*v));
		for (size_t i = 0; i < k; i++)
			v[i] = (struct figure){s->reasons[i].name, s->reasons[i].n};
		bar_chart(f, "Most common failure reasons", v, k, s->total, "#c44");
		free(v);
	}
	fprintf(f, "<h2>Domains</h2>\n<table id=\"domains\"><thead><tr>"
	           "<th>domain</th><th>MX</th><th>STARTTLS</th><th>enforces</th>"
	           "<th>PKIX</th><th>DANE</th><th>MTA-STS</th><th>would deliver</th>"
	           "<th>citable</th><th>verdict</th></tr></thead><tbody>\n");
	for (size_t i = 0; i < n; i++) {
		const struct check_row *r = &rows[i];
		fprintf(f, "<tr><td>");
		esc(f, r->domain);
		fprintf(f, "</td><td>%zu</td>", r->n_mx);
		cell_bool(f, r->starttls_all);
		cell_bool(f, r->enforce_all);
		cell_bool(f, r->pkix_all);
		cell_bool(f, r->dane_all);
		cell_bool(f, r->sts_enforce);
		cell_bool(f, r->would_deliver);
		cell_bool(f, r->citable);
		fprintf(f, "<td>");
		esc(f, r->verdict);
		fprintf(f, "</td></tr>\n");
	}
	fprintf(f, "</tbody></table>\n<script>\n"
	           "document.querySelectorAll('#domains th').forEach(function(th,col){\n"
	           " th.addEventListener('click',function(){\n"
	           "  var tb=th.closest('table').tBodies[0],rows=Array.from(tb.rows);\n"
	           "  var dir=th.dataset.dir==='asc'?-1:1;th.dataset.dir=dir>0?'asc':'desc';\n"
	           "  rows.sort(function(a,b){var x=a.cells[col].textContent,"
	           "y=b.cells[col].textContent;\n"
	           "   return (isNaN(x)||isNaN(y)?x.localeCompare(y):x-y)*dir;});\n"
	           "  rows.forEach(function(r){tb.appendChild(r);});});});\n"
	           "</script>\n</body></html>\n");
}

/* ---- Postfix ---- */

bool check_postfix_policy(const json_t *dom, char *buf, size_t len)
{
	const json_t *v = json_object_get(dom, "verdict");
	const json_t *mxs = json_object_get(dom, "mx");
	const char *d = str(dom, "domain");
	size_t i, n;
	json_t *m;

	if (len == 0)
		return false;
	buf[0] = '\0';
	if (!vbool(v, "all_mx_verify") || json_array_size(mxs) == 0 || !*d)
		return false;
	if (vbool(v, "dane_all")) {
		snprintf(buf, len, "%s dane-only", d);
		return true;
	}
	if (!vbool(v, "pkix_all"))
		return false;
	n = (size_t)snprintf(buf, len, "%s secure match=", d);
	json_array_foreach(mxs, i, m)
	{
		if (n >= len)
			break;
		n += (size_t)snprintf(buf + n, len - n, "%s%s", i ? ":" : "", str(m, "host"));
	}
	if (n >= len) {
		buf[0] = '\0';
		return false;
	}
	return true;
}
