/*
 * policy/mtasts - RFC 8461 parsers. Strict where the RFC gives a grammar
 * (a policy we cannot read with certainty is no policy: RFC 8461 §3.2 and
 * §5 say to proceed as if the domain had none, and strictmx then still
 * requires PKIX, so rejecting never lowers what is verified). Lenient only
 * where nothing depends on it: unknown keys are ignored (§3.2 "unknown
 * fields SHOULD be ignored"), trailing blanks on a policy line and blank
 * lines at the end of the file are tolerated.
 */
#include "policy/mtasts.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/xmalloc.h"

static bool is_alpha(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static bool is_alnum(unsigned char c)
{
	return is_alpha(c) || is_digit(c);
}

static bool is_wsp(unsigned char c)
{
	return c == ' ' || c == '\t';
}

static unsigned char lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

static void seterr(char *err, size_t errlen, const char *msg)
{
	if (err != NULL && errlen > 0)
		snprintf(err, errlen, "%s", msg);
}

/* sts-ext-name / sts-policy-ext-name: (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".") */
static bool ext_name_ok(const char *s, size_t n)
{
	if (n == 0 || n > 32 || !is_alnum((unsigned char)s[0]))
		return false;
	for (size_t i = 1; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (!is_alnum(c) && c != '_' && c != '-' && c != '.')
			return false;
	}
	return true;
}

/* ---- the TXT record, RFC 8461 §3.1 ---- */

#define STS_VERSION     "v=STSv1"
#define STS_VERSION_LEN (sizeof(STS_VERSION) - 1)

/* §3.1: "records that do not begin with "v=STSv1;" are discarded" (WSP may precede ';') */
static bool txt_is_sts(const char *t, size_t n)
{
	return n >= STS_VERSION_LEN && memcmp(t, STS_VERSION, STS_VERSION_LEN) == 0 &&
	       (n == STS_VERSION_LEN || t[STS_VERSION_LEN] == ';' ||
	        is_wsp((unsigned char)t[STS_VERSION_LEN]));
}

/*
 * sts-text-record = sts-version 1*(sts-field-delim sts-field) [sts-field-delim]
 * sts-field-delim = *WSP ";" *WSP
 * sts-field       = sts-id / sts-extension
 * sts-id          = %s"id=" 1*32(ALPHA / DIGIT)
 * sts-extension   = sts-ext-name "=" sts-ext-value
 * sts-ext-value   = 1*(%x21-3A / %x3C / %x3E-7E)
 */
static int txt_parse_one(const char *t, size_t n, char *id, char *err, size_t errlen)
{
	size_t i = STS_VERSION_LEN, fields = 0;
	bool have_id = false;

	for (;;) {
		while (i < n && is_wsp((unsigned char)t[i]))
			i++;
		if (i == n)
			break;
		if (t[i] != ';') {
			seterr(err, errlen, "TXT record: expected ';' between fields");
			return -1;
		}
		i++;
		while (i < n && is_wsp((unsigned char)t[i]))
			i++;
		if (i == n)
			break; /* one trailing delimiter is allowed */
		size_t ns = i;
		while (i < n && t[i] != '=' && t[i] != ';' && !is_wsp((unsigned char)t[i]))
			i++;
		if (i == n || t[i] != '=' || !ext_name_ok(t + ns, i - ns)) {
			seterr(err, errlen, "TXT record: malformed field name");
			return -1;
		}
		bool is_id = i - ns == 2 && memcmp(t + ns, "id", 2) == 0;
		size_t vs = ++i;
		while (i < n) {
			unsigned char c = (unsigned char)t[i];

			if (c < 0x21 || c > 0x7e || c == ';' || c == '=')
				break;
			i++;
		}
		size_t vn = i - vs;
		if (vn == 0 || (i < n && t[i] != ';' && !is_wsp((unsigned char)t[i]))) {
			seterr(err, errlen, "TXT record: malformed field value");
			return -1;
		}
		if (is_id) {
			if (have_id) {
				seterr(err, errlen, "TXT record: more than one id");
				return -1;
			}
			if (vn > MTASTS_ID_MAX) {
				seterr(err, errlen, "TXT record: id longer than 32 characters");
				return -1;
			}
			for (size_t k = 0; k < vn; k++)
				if (!is_alnum((unsigned char)t[vs + k])) {
					seterr(err, errlen, "TXT record: id is not alphanumeric");
					return -1;
				}
			memcpy(id, t + vs, vn);
			id[vn] = '\0';
			have_id = true;
		}
		fields++;
	}
	if (fields == 0 || !have_id) {
		seterr(err, errlen, "TXT record: no id");
		return -1;
	}
	return 0;
}

enum mtasts_txt_status mtasts_parse_txt(const char *const *txt, const size_t *len, size_t n,
                                        char *id, char *err, size_t errlen)
{
	size_t found = 0, which = 0;

	id[0] = '\0';
	for (size_t i = 0; i < n; i++)
		if (txt_is_sts(txt[i], len[i])) {
			found++;
			which = i;
		}
	if (found == 0) {
		seterr(err, errlen, "no v=STSv1 TXT record");
		return MTASTS_TXT_NONE;
	}
	/* §3.1: "If the number of resulting records is not one ... senders MUST assume the
	 * recipient domain does not have an available MTA-STS Policy" */
	if (found > 1) {
		seterr(err, errlen, "more than one v=STSv1 TXT record");
		return MTASTS_TXT_INVALID;
	}
	if (txt_parse_one(txt[which], len[which], id, err, errlen) < 0) {
		id[0] = '\0';
		return MTASTS_TXT_INVALID;
	}
	return MTASTS_TXT_OK;
}

/* ---- the policy file, RFC 8461 §3.2 ---- */

void mtasts_policy_free(struct mtasts_policy *p)
{
	for (size_t i = 0; i < p->n_mx; i++)
		free(p->mx[i]);
	free(p->mx);
	memset(p, 0, sizeof(*p));
}

/*
 * sts-policy-mx-value = ["*."] Domain   (Domain: RFC 5321 §4.1.2)
 * Let-dig labels with inner hyphens, 1..63 octets each, 253 in all. The
 * wildcard is only a whole left-most label (RFC 8461 §3.2, §4.1).
 */
static bool mx_pattern_ok(const char *v, size_t n)
{
	size_t i = 0, label = 0;

	if (n >= 2 && v[0] == '*' && v[1] == '.')
		i = 2;
	if (n - i == 0 || n - i > 253)
		return false;
	for (; i <= n; i++) {
		unsigned char c = i < n ? (unsigned char)v[i] : '.';

		if (c == '.') {
			if (label == 0 || label > 63 || v[i - 1] == '-')
				return false;
			label = 0;
		} else if (is_alnum(c) || (c == '-' && label > 0)) {
			label++;
		} else {
			return false;
		}
	}
	return true;
}

static int policy_fail(struct mtasts_policy *out, char *err, size_t errlen, size_t line,
                       const char *msg)
{
	if (err != NULL && errlen > 0)
		snprintf(err, errlen, "policy line %zu: %s", line, msg);
	mtasts_policy_free(out);
	return -1;
}

int mtasts_parse_policy(const char *body, size_t len, struct mtasts_policy *out, char *err,
                        size_t errlen)
{
	bool have_version = false, have_mode = false, have_max_age = false, ended = false;
	size_t pos = 0, lineno = 0;

	memset(out, 0, sizeof(*out));
	out->max_age = -1;
	if (len > MTASTS_MAX_POLICY)
		return policy_fail(out, err, errlen, 0, "larger than 64 KiB");
	while (pos < len) {
		const char *l = body + pos;
		const char *nl = memchr(l, '\n', len - pos);
		size_t n = nl != NULL ? (size_t)(nl - l) : len - pos;

		pos += n + (nl != NULL);
		lineno++;
		/* sts-policy-term = LF / CRLF */
		if (n > 0 && l[n - 1] == '\r')
			n--;
		for (size_t k = 0; k < n; k++) {
			unsigned char c = (unsigned char)l[k];

			if ((c < 0x20 && c != '\t') || c == 0x7f)
				return policy_fail(out, err, errlen, lineno, "control character");
		}
		while (n > 0 && is_wsp((unsigned char)l[n - 1]))
			n--;
		if (n == 0) {
			ended = true; /* blank lines only at the end */
			continue;
		}
		if (ended)
			return policy_fail(out, err, errlen, lineno - 1, "blank line");

		/* sts-policy-field = name ":" *WSP value */
		const char *colon = memchr(l, ':', n);
		if (colon == NULL || !ext_name_ok(l, (size_t)(colon - l)))
			return policy_fail(out, err, errlen, lineno, "expected key: value");
		size_t kn = (size_t)(colon - l);
		const char *v = colon + 1;
		size_t vn = n - kn - 1;
		while (vn > 0 && is_wsp((unsigned char)*v)) {
			v++;
			vn--;
		}
		if (vn == 0)
			return policy_fail(out, err, errlen, lineno, "empty value");

#define KEY(s) (kn == sizeof(s) - 1 && memcmp(l, s, kn) == 0)
		if (lineno == 1 && !KEY("version"))
			/* the version field comes first, as in every example of §3.2 */
			return policy_fail(out, err, errlen, lineno, "version must come first");
		if (KEY("version")) {
			if (have_version)
				return policy_fail(out, err, errlen, lineno, "version repeated");
			if (vn != 5 || memcmp(v, "STSv1", 5) != 0)
				return policy_fail(out, err, errlen, lineno,
				                   "version is not STSv1");
			have_version = true;
		} else if (KEY("mode")) {
			if (have_mode)
				return policy_fail(out, err, errlen, lineno, "mode repeated");
			if (!((vn == 7 && memcmp(v, "enforce", 7) == 0) ||
			      (vn == 7 && memcmp(v, "testing", 7) == 0) ||
			      (vn == 4 && memcmp(v, "none", 4) == 0)))
				return policy_fail(out, err, errlen, lineno,
				                   "mode is not enforce, testing or none");
			memcpy(out->mode, v, vn);
			out->mode[vn] = '\0';
			have_mode = true;
		} else if (KEY("max_age")) {
			long age = 0;

			if (have_max_age)
				return policy_fail(out, err, errlen, lineno, "max_age repeated");
			/* sts-policy-max-age-value = 1*10(DIGIT), at most 31557600 */
			if (vn > 10)
				return policy_fail(out, err, errlen, lineno, "max_age too large");
			for (size_t k = 0; k < vn; k++) {
				if (!is_digit((unsigned char)v[k]))
					return policy_fail(out, err, errlen, lineno,
					                   "max_age is not a number");
				age = age * 10 + (v[k] - '0');
			}
			if (age > MTASTS_MAX_AGE)
				return policy_fail(out, err, errlen, lineno,
				                   "max_age above 31557600");
			out->max_age = age;
			have_max_age = true;
		} else if (KEY("mx")) {
			if (!mx_pattern_ok(v, vn))
				return policy_fail(out, err, errlen, lineno,
				                   "mx is not a host name or *.domain pattern");
			if (out->n_mx >= MTASTS_MAX_PATTERNS)
				return policy_fail(out, err, errlen, lineno,
				                   "too many mx patterns");
			char *pat = xstrndup(v, vn);
			for (char *c = pat; *c != '\0'; c++)
				*c = (char)lower((unsigned char)*c);
			out->mx = xrealloc(out->mx, (out->n_mx + 1) * sizeof(*out->mx));
			out->mx[out->n_mx++] = pat;
		}
		/* any other well-formed key: an extension, ignored (§3.2) */
#undef KEY
	}
	if (!have_version)
		return policy_fail(out, err, errlen, lineno, "no version");
	if (!have_mode)
		return policy_fail(out, err, errlen, lineno, "no mode");
	if (!have_max_age)
		return policy_fail(out, err, errlen, lineno, "no max_age");
	if (out->n_mx == 0 && strcmp(out->mode, "none") != 0)
		return policy_fail(out, err, errlen, lineno, "no mx pattern");
	return 0;
}

/* ---- MX matching, RFC 8461 §4.1 ---- */

static bool name_eq(const char *a, size_t an, const char *b, size_t bn)
{
	if (an != bn)
		return false;
	for (size_t i = 0; i < an; i++)
		if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
			return false;
	return true;
}

bool mtasts_mx_match(const char *pattern, const char *host)
{
	size_t pn = strlen(pattern), hn = strlen(host);

	if (hn > 0 && host[hn - 1] == '.')
		hn--; /* "mx.example.org." is "mx.example.org" */
	if (hn == 0 || pn == 0)
		return false;
	if (pn >= 2 && pattern[0] == '*' && pattern[1] == '.') {
		/* "*.example.org": exactly one non-empty label, then ".example.org" */
		const char *dot = memchr(host, '.', hn);

		if (dot == NULL || dot == host)
			return false;
		return name_eq(dot + 1, hn - (size_t)(dot + 1 - host), pattern + 2, pn - 2);
	}
	return name_eq(pattern, pn, host, hn);
}

bool mtasts_policy_covers(const struct mtasts_policy *p, const char *host)
{
	for (size_t i = 0; i < p->n_mx; i++)
		if (mtasts_mx_match(p->mx[i], host))
			return true;
	return false;
}
