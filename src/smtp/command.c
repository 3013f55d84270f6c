/*
 * smtp/command - SMTP command line parsing: verb split (RFC 5321 §4.1.1),
 * MAIL/RCPT paths and ESMTP parameters (§4.1.2, RFC 1870, RFC 6152,
 * RFC 6531), BDAT chunk sizes (RFC 3030 §3) and the HELO/EHLO domain.
 * Pure, no I/O: addresses are data and are checked against the grammar,
 * never interpreted.
 */
#include <arpa/inet.h>
#include <string.h>

#include "smtp/command.h"

/* ASCII-only helpers: the locale must never change how a command parses */
static int lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static bool is_alpha(int c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool is_digit(int c)
{
	return c >= '0' && c <= '9';
}

/* s[0..n) equals the NUL-terminated word w, ignoring ASCII case */
static bool eq_nocase(const char *s, size_t n, const char *w)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (w[i] == '\0' || lower((unsigned char)s[i]) != lower((unsigned char)w[i]))
			return false;
	return w[i] == '\0';
}

static bool prefix_nocase(const char *s, size_t n, const char *w)
{
	size_t wl = strlen(w);

	return n >= wl && eq_nocase(s, wl, w);
}

static size_t trim_trailing_sp(const char *s, size_t n)
{
	while (n > 0 && s[n - 1] == ' ')
		n--;
	return n;
}

/* ------------------------------------------------------------------ */
/* Verbs */

static const struct {
	const char *name;
	enum smtp_verb verb;
} verbs[] = {
    {"HELO", SMTP_V_HELO},         {"EHLO", SMTP_V_EHLO}, {"MAIL", SMTP_V_MAIL},
    {"RCPT", SMTP_V_RCPT},         {"DATA", SMTP_V_DATA}, {"BDAT", SMTP_V_BDAT},
    {"RSET", SMTP_V_RSET},         {"NOOP", SMTP_V_NOOP}, {"QUIT", SMTP_V_QUIT},
    {"HELP", SMTP_V_HELP},         {"VRFY", SMTP_V_VRFY}, {"EXPN", SMTP_V_EXPN},
    {"STARTTLS", SMTP_V_STARTTLS}, {"AUTH", SMTP_V_AUTH},
};

/* An HTTP client talking to port 25 (cross-protocol attacks): hang up */
static const char *const nonsmtp_prefixes[] = {
    "GET ", "POST ", "HEAD ", "PUT ", "CONNECT ", "OPTIONS ", "Host:", "User-Agent:",
};

void smtp_cmd_parse(const char *line, size_t len, struct smtp_cmd *cmd)
{
	size_t vlen = 0, i;

	if (line == NULL) /* only with len 0 */
		line = "";
	cmd->verb = SMTP_V_UNKNOWN;
	for (i = 0; i < sizeof(nonsmtp_prefixes) / sizeof(nonsmtp_prefixes[0]); i++) {
		if (prefix_nocase(line, len, nonsmtp_prefixes[i])) {
			cmd->verb = SMTP_V_NONSMTP;
			vlen = strlen(nonsmtp_prefixes[i]);
			break;
		}
	}
	if (cmd->verb == SMTP_V_UNKNOWN) {
		while (vlen < len && line[vlen] != ' ')
			vlen++;
		for (i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
			if (eq_nocase(line, vlen, verbs[i].name)) {
				cmd->verb = verbs[i].verb;
				break;
			}
		}
	}
	/* RFC 5321 §4.1.1: verb SP argument; extra spaces are tolerated */
	while (vlen < len && line[vlen] == ' ')
		vlen++;
	cmd->arg = line + vlen;
	cmd->arg_len = trim_trailing_sp(line + vlen, len - vlen);
}

const char *smtp_verb_name(enum smtp_verb v)
{
	size_t i;

	for (i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		if (verbs[i].verb == v)
			return verbs[i].name;
	return v == SMTP_V_NONSMTP ? "NONSMTP" : "UNKNOWN";
}

/* ------------------------------------------------------------------ */
/* Grammar pieces of RFC 5321 §4.1.2 and §4.1.3 */

/*
 * Length of the well-formed UTF-8 sequence of a non-ASCII character at s
 * (RFC 3629 §4: no overlongs, no surrogates, nothing above U+10FFFF), or 0.
 */
static size_t utf8_char(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t need, i;
	unsigned char lo = 0x80, hi = 0xBF;

	if (c >= 0xC2 && c <= 0xDF) {
		need = 2;
	} else if (c >= 0xE0 && c <= 0xEF) {
		need = 3;
		if (c == 0xE0)
			lo = 0xA0;
		else if (c == 0xED)
			hi = 0x9F;
	} else if (c >= 0xF0 && c <= 0xF4) {
		need = 4;
		if (c == 0xF0)
			lo = 0x90;
		else if (c == 0xF4)
			hi = 0x8F;
	} else {
		return 0;
	}
	if (n < need || s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < need; i++)
		if (s[i] < 0x80 || s[i] > 0xBF)
			return 0;
	return need;
}

/* atext of RFC 5322 §3.2.3, as used by RFC 5321 §4.1.2 Atom */
static bool is_atext(int c)
{
	return is_alpha(c) || is_digit(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

/*
 * Domain = sub-domain *("." sub-domain), sub-domain = Let-dig [Ldh-str]
 * (RFC 5321 §4.1.2); labels 1..63 octets (RFC 1035 §2.3.4). With utf8,
 * U-label characters are accepted too (RFC 6531 §3.3) and *non_ascii set.
 */
static bool check_domain(const char *s, size_t n, bool utf8, bool *non_ascii)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, label = 0;
	int prev = '.';

	if (n == 0 || n > SMTP_DOMAIN_MAX)
		return false;
	while (i < n) {
		int c = p[i];

		if (c == '.') {
			if (prev == '.' || prev == '-')
				return false;
			label = 0;
			prev = c;
			i++;
			continue;
		}
		if (c == '-') {
			if (prev == '.')
				return false;
			i++;
			label++;
		} else if (is_alpha(c) || is_digit(c)) {
			i++;
			label++;
		} else if (c >= 0x80 && utf8) {
			size_t l = utf8_char(p + i, n - i);

			if (l == 0)
				return false;
			*non_ascii = true;
			i += l;
			label += l;
		} else {
			return false;
		}
		if (label > 63)
			return false;
		prev = c;
	}
	return prev != '.' && prev != '-';
}

/*
 * address-literal = "[" ( IPv4-address-literal / IPv6-address-literal ) "]"
 * (RFC 5321 §4.1.3); General-address-literal is not accepted.
 */
static bool check_addr_literal(const char *s, size_t n)
{
	char buf[64];
	unsigned char bin[16];
	int af = AF_INET;

	if (n < 3 || s[0] != '[' || s[n - 1] != ']')
		return false;
	s++;
	n -= 2;
	if (n > 5 && eq_nocase(s, 5, "IPv6:")) {
		af = AF_INET6;
		s += 5;
		n -= 5;
	}
	if (n == 0 || n >= sizeof(buf) || memchr(s, '\0', n) != NULL)
		return false;
	memcpy(buf, s, n);
	buf[n] = '\0';
	return inet_pton(af, buf, bin) == 1;
}

/*
 * Local-part = Dot-string / Quoted-string (RFC 5321 §4.1.2, extended by
 * RFC 6531 §3.3). Parses from s and returns the octets used (0 = bad);
 * *decoded is the length without quotes and backslashes.
 */
static size_t parse_local(const char *s, size_t n, size_t *decoded, bool *non_ascii)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, l;

	*decoded = 0;
	if (n == 0)
		return 0;
	if (p[0] == '"') {
		for (i = 1; i < n; i++) {
			int c = p[i];

			if (c == '"')
				return i + 1;
			if (c == '\\') {
				/* quoted-pairSMTP = %d92 %d32-126 */
				if (i + 1 >= n || p[i + 1] < 32 || p[i + 1] > 126)
					return 0;
				i++;
			} else if (c >= 0x80) {
				if ((l = utf8_char(p + i, n - i)) == 0)
					return 0;
				*non_ascii = true;
				i += l - 1;
				*decoded += l - 1;
			} else if (c < 32 || c > 126) {
				/* qtextSMTP excludes CR, LF, NUL and all controls */
				return 0;
			}
			(*decoded)++;
		}
		return 0; /* no closing quote */
	}
	/* Dot-string = Atom *("."  Atom) */
	for (;;) {
		size_t atom = 0;

		while (i < n) {
			if (is_atext(p[i])) {
				i++;
				atom++;
			} else if (p[i] >= 0x80 && (l = utf8_char(p + i, n - i)) != 0) {
				*non_ascii = true;
				i += l;
				atom += l;
			} else {
				break;
			}
		}
		if (atom == 0)
			return 0;
		*decoded += atom;
		if (i < n && p[i] == '.' && i + 1 < n) {
			i++;
			(*decoded)++;
			continue;
		}
		return i;
	}
}

enum path_err {
	PATH_OK = 0,
	PATH_SYNTAX,   /* no "<...>": 501 5.5.4 */
	PATH_TOO_LONG, /* 501 5.5.2 */
	PATH_BAD,      /* grammar inside the brackets: 553 */
	PATH_LOCAL_LONG,
	PATH_DOMAIN_LONG,
};

/*
 * Path = "<" [ A-d-l ":" ] Mailbox ">" (RFC 5321 §4.1.2). s starts at "<";
 * *used is set to the octets up to and including ">". The source route
 * (A-d-l) is checked and dropped (RFC 5321 §4.1.1.3, Appendix C).
 */
static enum path_err parse_path(const char *s, size_t n, bool null_ok, bool postmaster_ok,
                                struct smtp_path *path, bool *non_ascii, size_t *used)
{
	size_t end, i, l, dec;
	bool inq = false;
	const char *in;
	size_t inlen;

	/* find the closing ">": outside a quoted string, quoted pairs skipped */
	for (end = 1; end < n; end++) {
		if (inq && s[end] == '\\' && end + 1 < n)
			end++;
		else if (s[end] == '"')
			inq = !inq;
		else if (!inq && s[end] == '>')
			break;
	}
	if (end >= n)
		return PATH_SYNTAX;
	*used = end + 1;
	/* RFC 5321 §4.5.3.1.3: 256 octets, "including the punctuation" */
	if (end + 1 > SMTP_PATH_MAX)
		return PATH_TOO_LONG;
	in = s + 1;
	inlen = end - 1;

	if (inlen == 0) {
		if (!null_ok)
			return PATH_BAD;
		path->null_path = true;
		return PATH_OK;
	}
	/* RFC 5321 §4.1.1.3: "<Postmaster>" without domain, any case */
	if (postmaster_ok && eq_nocase(in, inlen, "postmaster")) {
		memcpy(path->local, in, inlen);
		path->local[inlen] = '\0';
		memcpy(path->addr, "postmaster", sizeof("postmaster"));
		return PATH_OK;
	}

	i = 0;
	if (in[0] == '@') {
		/* A-d-l = At-domain *( "," At-domain ), At-domain = "@" Domain */
		for (;;) {
			size_t d = ++i;

			while (i < inlen && in[i] != ',' && in[i] != ':')
				i++;
			if (i >= inlen || !check_domain(in + d, i - d, true, non_ascii))
				return PATH_BAD;
			if (in[i] == ':') {
				i++;
				break;
			}
			i++; /* "," */
			if (i >= inlen || in[i] != '@')
				return PATH_BAD;
		}
	}

	l = parse_local(in + i, inlen - i, &dec, non_ascii);
	if (l == 0 || i + l >= inlen || in[i + l] != '@')
		return PATH_BAD;
	if (dec > SMTP_LOCAL_MAX)
		return PATH_LOCAL_LONG;
	memcpy(path->local, in + i, l);
	path->local[l] = '\0';
	i += l + 1;

	/* Mailbox domain: Domain / address-literal */
	l = inlen - i;
	if (l == 0)
		return PATH_BAD;
	if (l > SMTP_DOMAIN_MAX)
		return PATH_DOMAIN_LONG;
	if (in[i] == '[' ? !check_addr_literal(in + i, l)
	                 : !check_domain(in + i, l, true, non_ascii))
		return PATH_BAD;
	memcpy(path->domain, in + i, l);
	path->domain[l] = '\0';
	/* local@domain fits: the whole path is at most 256 octets with "<>" */
	memcpy(path->addr, path->local, strlen(path->local));
	path->addr[strlen(path->local)] = '@';
	memcpy(path->addr + strlen(path->local) + 1, path->domain, l + 1);
	return PATH_OK;
}

/* Report a path error in the words of the command it came from */
static void path_error(enum path_err e, bool rcpt, struct smtp_reply *err)
{
	const char *enh = rcpt ? "5.1.3" : "5.1.7";

	switch (e) {
	case PATH_SYNTAX:
		smtp_reply_set(err, 501, "5.5.4",
		               rcpt ? "Syntax: RCPT TO:<address>" : "Syntax: MAIL FROM:<address>");
		break;
	case PATH_TOO_LONG:
		smtp_reply_set(err, 501, "5.5.2", "Path too long");
		break;
	case PATH_LOCAL_LONG:
		smtp_reply_set(err, 553, enh, "Local part too long");
		break;
	case PATH_DOMAIN_LONG:
		smtp_reply_set(err, 553, enh, "Domain too long");
		break;
	case PATH_BAD:
	default:
		smtp_reply_set(err, 553, enh,
		               rcpt ? "Bad recipient address syntax" : "Bad sender address syntax");
		break;
	}
}

/*
 * Parameters after the path: Mail-parameters = esmtp-param *(SP esmtp-param),
 * esmtp-param = esmtp-keyword ["=" esmtp-value] (RFC 5321 §4.1.2).
 * Splits the next one off s[*pos..n); returns false on a syntax error.
 */
struct param {
	const char *kw;
	size_t kwlen;
	const char *val; /* NULL when no "=" */
	size_t vallen;
};

static bool next_param(const char *s, size_t n, size_t *pos, struct param *pr)
{
	size_t i = *pos, k;

	while (i < n && s[i] == ' ')
		i++;
	pr->kw = s + i;
	pr->val = NULL;
	pr->vallen = 0;
	/* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
	for (k = i; k < n && (is_alpha(s[k]) || is_digit(s[k]) || (k > i && s[k] == '-')); k++)
		;
	pr->kwlen = k - i;
	if (pr->kwlen == 0)
		return false;
	if (k < n && s[k] == '=') {
		size_t v = ++k;

		/* esmtp-value = 1*(%d33-60 / %d62-126) */
		while (k < n && (unsigned char)s[k] >= 33 && (unsigned char)s[k] <= 126 &&
		       s[k] != '=')
			k++;
		pr->val = s + v;
		pr->vallen = k - v;
		if (pr->vallen == 0)
			return false;
	}
	if (k < n && s[k] != ' ')
		return false;
	*pos = k;
	return true;
}

/* keyword text for an error reply: already checked to be [A-Za-z0-9-] */
#define KW_SHOW 40

int smtp_parse_mail(const char *arg, size_t len, uint64_t max_size, struct smtp_path *path,
                    struct smtp_mail_params *params, struct smtp_reply *err)
{
	struct smtp_path pa;
	struct smtp_mail_params pm;
	bool non_ascii = false, too_big = false, seen_body = false;
	size_t i, used = 0;
	enum path_err e;
	struct param pr;

	memset(&pa, 0, sizeof(pa));
	memset(&pm, 0, sizeof(pm));
	len = trim_trailing_sp(arg, len);
	if (!prefix_nocase(arg, len, "FROM:")) {
		path_error(PATH_SYNTAX, false, err);
		return -1;
	}
	/* a space after the colon is common; tolerated (not in RFC 5321) */
	for (i = 5; i < len && arg[i] == ' '; i++)
		;
	if (i >= len || arg[i] != '<') {
		path_error(PATH_SYNTAX, false, err);
		return -1;
	}
	e = parse_path(arg + i, len - i, true, false, &pa, &non_ascii, &used);
	if (e != PATH_OK) {
		path_error(e, false, err);
		return -1;
	}
	i += used;
	if (i < len && arg[i] != ' ') {
		path_error(PATH_SYNTAX, false, err);
		return -1;
	}
	while (i < len) {
		if (!next_param(arg, len, &i, &pr)) {
			smtp_reply_set(err, 501, "5.5.4", "Bad parameter syntax");
			return -1;
		}
		if (eq_nocase(pr.kw, pr.kwlen, "SIZE")) {
			/* RFC 1870 §3: size-value = 1*20DIGIT */
			size_t k;

			if (pm.size_set)
				goto duplicate;
			if (pr.val == NULL || pr.vallen > 20)
				goto bad_value;
			for (k = 0; k < pr.vallen; k++) {
				unsigned d = (unsigned)(pr.val[k] - '0');

				if (!is_digit(pr.val[k]))
					goto bad_value;
				if (pm.size > (UINT64_MAX - d) / 10)
					too_big = true;
				else
					pm.size = pm.size * 10 + d;
			}
			pm.size_set = true;
		} else if (eq_nocase(pr.kw, pr.kwlen, "BODY")) {
			/* RFC 6152 §2 */
			if (seen_body)
				goto duplicate;
			seen_body = true;
			if (pr.val != NULL && eq_nocase(pr.val, pr.vallen, "7BIT"))
				pm.body = SMTP_BODY_7BIT;
			else if (pr.val != NULL && eq_nocase(pr.val, pr.vallen, "8BITMIME"))
				pm.body = SMTP_BODY_8BITMIME;
			else
				goto bad_value;
		} else if (eq_nocase(pr.kw, pr.kwlen, "SMTPUTF8")) {
			/* RFC 6531 §3.4: no value */
			if (pm.smtputf8)
				goto duplicate;
			if (pr.val != NULL)
				goto bad_value;
			pm.smtputf8 = true;
		} else {
			smtp_reply_set(err, 555, "5.5.4", "Unsupported parameter: %.*s",
			               (int)(pr.kwlen > KW_SHOW ? KW_SHOW : pr.kwlen), pr.kw);
			return -1;
		}
	}
	/* RFC 6531 §3.4: a non-ASCII address needs SMTPUTF8 */
	if (non_ascii && !pm.smtputf8) {
		smtp_reply_set(err, 553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
		return -1;
	}
	if (too_big && max_size == 0) {
		smtp_reply_set(err, 501, "5.5.4", "Bad SIZE value");
		return -1;
	}
	/* RFC 1870 §6.1 */
	if (max_size != 0 && pm.size_set && (too_big || pm.size > max_size)) {
		smtp_reply_set(err, 552, "5.3.4",
		               "Message size exceeds fixed maximum message size");
		return -1;
	}
	pa.utf8 = non_ascii;
	*path = pa;
	*params = pm;
	return 0;

duplicate:
	smtp_reply_set(err, 555, "5.5.4", "Duplicate parameter: %.*s",
	               (int)(pr.kwlen > KW_SHOW ? KW_SHOW : pr.kwlen), pr.kw);
	return -1;
bad_value:
	smtp_reply_set(err, 501, "5.5.4", "Bad value for parameter %.*s",
	               (int)(pr.kwlen > KW_SHOW ? KW_SHOW : pr.kwlen), pr.kw);
	return -1;
}

int smtp_parse_rcpt(const char *arg, size_t len, bool smtputf8, struct smtp_path *path,
                    struct smtp_reply *err)
{
	struct smtp_path pa;
	bool non_ascii = false;
	size_t i, used = 0;
	enum path_err e;
	struct param pr;

	memset(&pa, 0, sizeof(pa));
	len = trim_trailing_sp(arg, len);
	if (!prefix_nocase(arg, len, "TO:")) {
		path_error(PATH_SYNTAX, true, err);
		return -1;
	}
	for (i = 3; i < len && arg[i] == ' '; i++)
		;
	if (i >= len || arg[i] != '<') {
		path_error(PATH_SYNTAX, true, err);
		return -1;
	}
	e = parse_path(arg + i, len - i, false, true, &pa, &non_ascii, &used);
	if (e != PATH_OK) {
		path_error(e, true, err);
		return -1;
	}
	i += used;
	if (i < len && arg[i] != ' ') {
		path_error(PATH_SYNTAX, true, err);
		return -1;
	}
	if (i < len) {
		/* no RCPT parameter is supported (DSN's NOTIFY/ORCPT are not offered) */
		if (!next_param(arg, len, &i, &pr)) {
			smtp_reply_set(err, 501, "5.5.4", "Bad parameter syntax");
			return -1;
		}
		smtp_reply_set(err, 555, "5.5.4", "Unsupported parameter: %.*s",
		               (int)(pr.kwlen > KW_SHOW ? KW_SHOW : pr.kwlen), pr.kw);
		return -1;
	}
	if (non_ascii && !smtputf8) {
		smtp_reply_set(err, 553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
		return -1;
	}
	pa.utf8 = non_ascii;
	*path = pa;
	return 0;
}

int smtp_parse_bdat(const char *arg, size_t len, uint64_t *size, bool *last, struct smtp_reply *err)
{
	size_t i = 0, j;
	uint64_t v = 0;

	len = trim_trailing_sp(arg, len);
	/* chunk-size = 1*DIGIT; 18 digits cannot overflow a uint64_t */
	while (i < len && is_digit(arg[i]) && i < 18)
		v = v * 10 + (uint64_t)(arg[i++] - '0');
	if (i == 0 || (i < len && arg[i] != ' '))
		goto bad;
	for (j = i; j < len && arg[j] == ' '; j++)
		;
	if (j < len && !eq_nocase(arg + j, len - j, "LAST"))
		goto bad;
	*size = v;
	*last = j < len;
	return 0;
bad:
	smtp_reply_set(err, 501, "5.5.4", "Syntax: BDAT chunk-size [LAST]");
	return -1;
}

int smtp_parse_helo(const char *arg, size_t len, struct smtp_reply *err)
{
	bool non_ascii = false;

	len = trim_trailing_sp(arg, len);
	if (len == 0) {
		smtp_reply_set(err, 501, "5.5.4", "Syntax: EHLO hostname");
		return -1;
	}
	/* RFC 5321 §4.1.1.1: Domain / address-literal, nothing after it */
	if (arg[0] == '[' ? check_addr_literal(arg, len)
	                  : check_domain(arg, len, false, &non_ascii))
		return 0;
	smtp_reply_set(err, 501, "5.5.4", "Bad EHLO/HELO hostname syntax");
	return -1;
}
