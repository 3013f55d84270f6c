/*
 * check/tlsrpt - the TLS-RPT record (RFC 8460 §3) at _smtp._tls.<domain>:
 *
 *   tlsrpt-record = tlsrpt-version 1*(field-delim tlsrpt-field) [field-delim]
 *   tlsrpt-version = %s"v=TLSRPTv1"
 *   field-delim    = *WSP ";" *WSP
 *   tlsrpt-rua     = %s"rua=" tlsrpt-uri *(*WSP "," *WSP tlsrpt-uri)
 *   tlsrpt-uri     = mailto: or https: URI (RFC 8460 §3)
 *
 * Records that do not begin with "v=TLSRPTv1" are not TLS-RPT records and
 * are ignored; more than one TLS-RPT record is an error ("MUST NOT"). Pure,
 * no I/O: the input comes from DNS, so it is fuzzed
 * (tests/fuzz/fuzz_check_tlsrpt.c).
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "check/check.h"

#define VERSION "v=TLSRPTv1"

const char *check_tlsrpt_status_name(enum check_tlsrpt_status s)
{
	switch (s) {
	case CHECK_TLSRPT_OK:
		return "ok";
	case CHECK_TLSRPT_NONE:
		return "none";
	case CHECK_TLSRPT_INVALID:
		return "invalid";
	case CHECK_TLSRPT_ERROR:
		return "error";
	}
	return "?";
}

static bool is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

/* starts_version - the record begins with v=TLSRPTv1 followed by a delimiter or its end */
static bool starts_version(const char *t, size_t n)
{
	size_t k = sizeof(VERSION) - 1;

	if (n < k || memcmp(t, VERSION, k) != 0)
		return false;
	if (n == k)
		return true;
	return t[k] == ';' || is_wsp(t[k]);
}

/* uri_ok - a mailto: or https: URI of printable ASCII without delimiters */
static bool uri_ok(const char *u, size_t n)
{
	if (n > 7 && strncasecmp(u, "mailto:", 7) == 0) {
		if (memchr(u + 7, '@', n - 7) == NULL)
			return false;
	} else if (n > 8 && strncasecmp(u, "https://", 8) == 0) {
		/* a host must follow */
	} else {
		return false;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)u[i];
		if (c <= 0x20 || c >= 0x7f || c == ',' || c == ';')
			return false;
	}
	return true;
}

static enum check_tlsrpt_status invalid(struct check_tlsrpt *out, const char *why)
{
	snprintf(out->error, sizeof(out->error), "%s", why);
	out->n_rua = 0;
	return out->status = CHECK_TLSRPT_INVALID;
}

/* parse_rua - the value of rua=: URIs separated by "," with optional blanks */
static enum check_tlsrpt_status parse_rua(const char *v, size_t n, struct check_tlsrpt *out)
{
	size_t i = 0;

	while (i <= n) {
		while (i < n && is_wsp(v[i]))
			i++;
		size_t s = i;
		while (i < n && v[i] != ',' && !is_wsp(v[i]))
			i++;
		size_t e = i;
		while (i < n && is_wsp(v[i]))
			i++;
		if (e == s)
			return invalid(out, "empty URI in rua=");
		if (!uri_ok(v + s, e - s)) {
			char msg[200];
			snprintf(msg, sizeof(msg), "rua= URI is not mailto: or https: (%.*s)",
			         (int)(e - s > 100 ? 100 : e - s), v + s);
			for (char *p = msg; *p; p++)
				if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
					*p = '?';
			return invalid(out, msg);
		}
		if (e - s >= sizeof(out->rua[0]))
			return invalid(out, "rua= URI longer than 255 characters");
		if (out->n_rua < CHECK_MAX_RUA) {
			memcpy(out->rua[out->n_rua], v + s, e - s);
			out->rua[out->n_rua][e - s] = '\0';
			out->n_rua++;
		}
		if (i >= n)
			break;
		if (v[i] != ',')
			return invalid(out, "rua= URIs must be separated by commas");
		i++;
	}
	return CHECK_TLSRPT_OK;
}

static enum check_tlsrpt_status parse_record(const char *t, size_t n, struct check_tlsrpt *out)
{
	size_t i = sizeof(VERSION) - 1;
	bool have_rua = false, have_field = false;

	for (size_t k = 0; k < n; k++) {
		unsigned char c = (unsigned char)t[k];
		if (c < 0x20 || c >= 0x7f) {
			if (c != '\t')
				return invalid(out, "record holds a control or non-ASCII byte");
		}
	}
	while (i < n) {
		/* field-delim */
		while (i < n && is_wsp(t[i]))
			i++;
		if (i >= n)
			break;
		if (t[i] != ';')
			return invalid(out, "fields must be separated by ';'");
		i++;
		while (i < n && is_wsp(t[i]))
			i++;
		if (i >= n)
			break; /* a trailing delimiter is allowed */
		size_t s = i;
		while (i < n && t[i] != ';')
			i++;
		size_t e = i;
		while (e > s && is_wsp(t[e - 1]))
			e--;
		const char *eq = memchr(t + s, '=', e - s);
		if (eq == NULL || eq == t + s)
			return invalid(out, "a field is not name=value");
		size_t nl = (size_t)(eq - (t + s));
		for (size_t k = 0; k < nl; k++) {
			char c = t[s + k];
			if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			      (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.'))
				return invalid(out, "a field name is malformed");
		}
		have_field = true;
		if (nl == 3 && memcmp(t + s, "rua", 3) == 0) {
			if (have_rua)
				return invalid(out, "rua= appears twice");
			have_rua = true;
			if (parse_rua(eq + 1, (size_t)(t + e - (eq + 1)), out) != CHECK_TLSRPT_OK)
				return out->status;
		}
		/* other fields are extensions: ignored (RFC 8460 §3) */
	}
	if (!have_field || !have_rua)
		return invalid(out, "no rua= field");
	out->error[0] = '\0';
	return out->status = CHECK_TLSRPT_OK;
}

enum check_tlsrpt_status check_tlsrpt_parse(const char *const *txt, const size_t *len, size_t n,
                                            struct check_tlsrpt *out)
{
	size_t found = 0, which = 0;

	memset(out, 0, sizeof(*out));
	for (size_t i = 0; i < n; i++) {
		if (txt[i] != NULL && starts_version(txt[i], len[i])) {
			if (found++ == 0)
				which = i;
		}
	}
	if (found == 0) {
		snprintf(out->error, sizeof(out->error), "no v=TLSRPTv1 record");
		return out->status = CHECK_TLSRPT_NONE;
	}
	/* the record as published, printable ASCII only, for reports */
	size_t m = len[which] < sizeof(out->record) - 1 ? len[which] : sizeof(out->record) - 1;
	for (size_t k = 0; k < m; k++) {
		unsigned char c = (unsigned char)txt[which][k];
		out->record[k] = c >= 0x20 && c < 0x7f ? (char)c : '?';
	}
	out->record[m] = '\0';
	if (found > 1)
		return invalid(out, "more than one v=TLSRPTv1 record");
	return parse_record(txt[which], len[which], out);
}
