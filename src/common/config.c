/*
 * config - embedded defaults and the INI file (libinih).
 *
 * The file is read with ini_parse_stream() through our own line reader so
 * every error names FILE:LINE, including unknown keys (which are errors, not
 * warnings: a typo in a security setting must not silently fall back).
 */
#include "common/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/xmalloc.h"

void strlist_add(struct strlist *l, const char *s)
{
	l->v = xrealloc(l->v, (l->n + 1) * sizeof(*l->v));
	l->v[l->n++] = xstrdup(s);
}

void strlist_free(struct strlist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

bool strlist_contains_ci(const struct strlist *l, const char *s)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcasecmp(l->v[i], s) == 0)
			return true;
	return false;
}

static void set_str(char **dst, const char *v)
{
	free(*dst);
	*dst = xstrdup(v);
}

void config_defaults(struct config *c)
{
	memset(c, 0, sizeof(*c));
	c->require_tls = true;
	c->threads = 0; /* config_finish: one inbound loop per CPU, at most 8 */
	c->line_length = 512;
	c->text_line_length = 1000;
	c->message_size = 36700160; /* 35 MiB, advertised in SIZE */
	c->recipients = 1000;
	c->connections = 1000;
	c->connections_per_ip = 50;
	c->timeout_command = 300; /* RFC 5321 §4.5.3.2.7: at least 5 minutes */
	c->timeout_data = 600;    /* §4.5.3.2.6 (client side 10 min) */
	c->timeout_tls = 60;
	c->errors = 20;
	c->min_data_rate = 500;   /* Postfix smtpd_min_data_rate */
	c->error_delay = 1;       /* Postfix smtpd_error_sleep_time */
	c->header_size = 1048576; /* refused, not truncated: see docs/configuration.md */
	c->smtp_port = 25;
	c->mta_sts = true;
	c->max_connections_per_domain = 20;
	c->connect_timeout = 30;
	c->out_command_timeout = 300;
	c->max_queue_lifetime = 5 * 86400;
	c->delay_warning_time = 4 * 3600;
	c->retry_min = 300;
	c->retry_max = 3600;
}

void config_free(struct config *c)
{
	char **strs[] = {&c->path,          &c->hostname,    &c->data_dir,         &c->info_url,
	                 &c->user,          &c->log_level,   &c->maildir,          &c->lmtp,
	                 &c->tls_protocols, &c->tls_ciphers, &c->tls_ciphersuites, &c->tls_groups,
	                 &c->out_protocols, &c->out_ciphers, &c->out_ciphersuites, &c->out_groups,
	                 &c->ca_file,       &c->helo_name};
	for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
		free(*strs[i]);
		*strs[i] = NULL;
	}
	for (size_t i = 0; i < CONFIG_MAX_CERTS; i++) {
		free(c->tls_cert[i]);
		free(c->tls_key[i]);
	}
	free(c->listeners);
	strlist_free(&c->local_domains);
	strlist_free(&c->relay_networks);
	strlist_free(&c->trust_anchors);
	strlist_free(&c->stubs);
	for (size_t i = 0; i < c->n_domains; i++) {
		free(c->domains[i].name);
		free(c->domains[i].route);
		strlist_free(&c->domains[i].match);
	}
	free(c->domains);
	memset(c, 0, sizeof(*c));
}

int config_parse_bool(const char *v, bool *out)
{
	if (!strcasecmp(v, "yes") || !strcasecmp(v, "true") || !strcmp(v, "1") ||
	    !strcasecmp(v, "on")) {
		*out = true;
		return 0;
	}
	if (!strcasecmp(v, "no") || !strcasecmp(v, "false") || !strcmp(v, "0") ||
	    !strcasecmp(v, "off")) {
		*out = false;
		return 0;
	}
	return -1;
}

static int parse_number(const char *v, const char *suffixes, const uint64_t *mults, uint64_t *out)
{
	char *end;
	if (!isdigit((unsigned char)*v))
		return -1;
	errno = 0;
	unsigned long long n = strtoull(v, &end, 10);
	if (errno)
		return -1;
	uint64_t mult = 1;
	if (*end) {
		const char *s = strchr(suffixes, tolower((unsigned char)*end));
		if (s == NULL || end[1] != '\0')
			return -1;
		mult = mults[s - suffixes];
	}
	if (n > UINT64_MAX / mult)
		return -1;
	*out = (uint64_t)n * mult;
	return 0;
}

int config_parse_size(const char *v, uint64_t *out)
{
	static const uint64_t m[] = {1024ULL, 1024ULL * 1024, 1024ULL * 1024 * 1024};
	return parse_number(v, "kmg", m, out);
}

int config_parse_duration(const char *v, unsigned *out)
{
	static const uint64_t m[] = {1, 60, 3600, 86400};
	uint64_t n;
	if (parse_number(v, "smhd", m, &n) < 0 || n == 0 || n > (uint64_t)30 * 86400)
		return -1;
	*out = (unsigned)n;
	return 0;
}

int config_parse_hostport(const char *v, char *host, size_t hostlen, char *port, size_t portlen)
{
	const char *colon;
	size_t hl;
	if (v[0] == '[') { /* [::1]:25 */
		const char *rb = strchr(v, ']');
		if (rb == NULL || rb[1] != ':')
			return -1;
		hl = (size_t)(rb - v - 1);
		v++;
		colon = rb + 1;
	} else {
		colon = strrchr(v, ':');
		if (colon == NULL)
			return -1;
		hl = (size_t)(colon - v);
	}
	if (hl == 0 || hl >= hostlen)
		return -1;
	memcpy(host, v, hl);
	host[hl] = '\0';
	const char *p = colon + 1;
	size_t pl = strlen(p);
	if (pl == 0 || pl >= portlen || strspn(p, "0123456789") != pl)
		return -1;
	long pn = strtol(p, NULL, 10);
	if (pn < 1 || pn > 65535)
		return -1;
	memcpy(port, p, pl + 1);
	unsigned char buf[16];
	if (inet_pton(AF_INET, host, buf) != 1 && inet_pton(AF_INET6, host, buf) != 1)
		return -1;
	return 0;
}

int config_parse_cidr(const char *v)
{
	char addr[64];
	const char *slash = strchr(v, '/');
	size_t al = slash ? (size_t)(slash - v) : strlen(v);
	if (al == 0 || al >= sizeof(addr))
		return -1;
	memcpy(addr, v, al);
	addr[al] = '\0';
	unsigned char buf[16];
	int maxbits;
	if (inet_pton(AF_INET, addr, buf) == 1)
		maxbits = 32;
	else if (inet_pton(AF_INET6, addr, buf) == 1)
		maxbits = 128;
	else
		return -1;
	if (slash) {
		const char *b = slash + 1;
		if (*b == '\0' || strspn(b, "0123456789") != strlen(b) || strlen(b) > 3)
			return -1;
		if (atoi(b) > maxbits)
			return -1;
	}
	return 0;
}

/* Parser state: our reader counts lines so every message can name one. */
struct parse_ctx {
	struct config *c;
	FILE *fp;
	int line;
	int err_line; /* where our first error was */
	char *err;
	size_t errlen;
	bool failed;
	size_t cur_listener; /* index, inside [listener "..."] */
	char cur_section[160];
	size_t cur_domain;
	char cur_domain_section[300];
};

static int perr(struct parse_ctx *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int perr(struct parse_ctx *p, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (!p->failed) {
		snprintf(p->err, p->errlen, "%s:%d: %s", p->c->path, p->line, msg);
		p->err_line = p->line;
	}
	p->failed = true;
	return 0;
}

static const char *const known_sections[] = {"server", "local_delivery", "tls",  "limits",
                                             "dns",    "outbound",       "queue"};

/* check_section - a "[name]" line: known, or an error at this line (inih
 * calls no handler for a section without keys, so check here) */
static void check_section(struct parse_ctx *p, const char *line)
{
	const char *s = line + strspn(line, " \t");
	if (*s != '[')
		return;
	const char *e = strchr(s, ']');
	if (e == NULL) {
		perr(p, "syntax error: section header without ']'");
		return;
	}
	size_t n = (size_t)(e - s - 1);
	for (size_t i = 0; i < sizeof(known_sections) / sizeof(known_sections[0]); i++)
		if (strlen(known_sections[i]) == n && !strncmp(s + 1, known_sections[i], n))
			return;
	if ((n > 9 && !strncmp(s + 1, "listener ", 9)) || (n > 7 && !strncmp(s + 1, "domain ", 7)))
		return;
	perr(p, "unknown section [%.*s]", (int)(n > 60 ? 60 : n), s + 1);
}

static char *reader(char *str, int num, void *stream)
{
	struct parse_ctx *p = stream;
	char *r = fgets(str, num, p->fp);
	if (r != NULL && (strchr(str, '\n') != NULL || feof(p->fp))) {
		p->line++;
		if (!p->failed)
			check_section(p, str);
	}
	return r;
}

static struct config_listener *add_listener(struct config *c, const char *host, const char *port)
{
	for (size_t i = 0; i < c->n_listeners; i++)
		if (!strcmp(c->listeners[i].host, host) && !strcmp(c->listeners[i].port, port))
			return &c->listeners[i];
	c->listeners = xrealloc(c->listeners, (c->n_listeners + 1) * sizeof(*c->listeners));
	struct config_listener *l = &c->listeners[c->n_listeners++];
	memset(l, 0, sizeof(*l));
	snprintf(l->host, sizeof(l->host), "%s", host);
	snprintf(l->port, sizeof(l->port), "%s", port);
	return l;
}

/* split a comma/space separated value; calls fn for each non-empty item */
static int each_item(struct parse_ctx *p, const char *v, const char *key,
                     int (*fn)(struct parse_ctx *, const char *, const char *))
{
	char *copy = xstrdup(v), *save = NULL;
	int ok = 1;
	for (char *t = strtok_r(copy, ", \t", &save); t; t = strtok_r(NULL, ", \t", &save))
		if (!fn(p, key, t)) {
			ok = 0;
			break;
		}
	free(copy);
	return ok;
}

static int item_listen(struct parse_ctx *p, const char *key, const char *t)
{
	char host[64], port[8];
	if (config_parse_hostport(t, host, sizeof(host), port, sizeof(port)) < 0)
		return perr(p,
		            "%s: bad address '%s' (expected ADDR:PORT, e.g. 0.0.0.0:25 or "
		            "[::]:25)",
		            key, t);
	add_listener(p->c, host, port);
	return 1;
}

static int valid_domain(const char *d)
{
	size_t n = strlen(d), label = 0;
	if (n == 0 || n > 253)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)d[i];
		if (ch == '.') {
			if (label == 0)
				return 0;
			label = 0;
		} else if (isalnum(ch) || ch == '-') {
			if (++label > 63)
				return 0;
		} else {
			return 0;
		}
	}
	return label > 0;
}

static int item_domain(struct parse_ctx *p, const char *key, const char *t)
{
	if (!valid_domain(t))
		return perr(p, "%s: bad domain '%s'", key, t);
	char *low = xstrdup(t);
	for (char *q = low; *q; q++)
		*q = (char)tolower((unsigned char)*q);
	strlist_add(&p->c->local_domains, low);
	free(low);
	return 1;
}

static int item_cidr(struct parse_ctx *p, const char *key, const char *t)
{
	if (config_parse_cidr(t) < 0)
		return perr(p, "%s: bad network '%s' (expected ADDR or ADDR/BITS)", key, t);
	strlist_add(&p->c->relay_networks, t);
	return 1;
}

static int set_bool(struct parse_ctx *p, const char *key, const char *v, bool *out)
{
	if (config_parse_bool(v, out) < 0)
		return perr(p, "%s: expected yes or no, got '%s'", key, v);
	return 1;
}

static int set_count(struct parse_ctx *p, const char *key, const char *v, size_t lo, size_t hi,
                     size_t *out)
{
	uint64_t n;
	if (config_parse_size(v, &n) < 0 || n < lo || n > hi)
		return perr(p, "%s: expected a number from %zu to %zu, got '%s'", key, lo, hi, v);
	*out = (size_t)n;
	return 1;
}

static int set_duration(struct parse_ctx *p, const char *key, const char *v, unsigned *out)
{
	if (config_parse_duration(v, out) < 0)
		return perr(p, "%s: expected a duration such as 300, 5m or 1h, got '%s'", key, v);
	return 1;
}

static int handle_server(struct parse_ctx *p, const char *k, const char *v)
{
	struct config *c = p->c;
	if (!strcmp(k, "hostname")) {
		if (!valid_domain(v))
			return perr(p, "hostname: '%s' is not a valid host name", v);
		set_str(&c->hostname, v);
	} else if (!strcmp(k, "listen")) {
		return each_item(p, v, k, item_listen);
	} else if (!strcmp(k, "data_dir")) {
		if (*v == '\0')
			return perr(p, "data_dir: empty");
		set_str(&c->data_dir, v);
	} else if (!strcmp(k, "tls_cert")) {
		if (c->n_cert >= CONFIG_MAX_CERTS)
			return perr(p, "tls_cert: at most %d certificates", CONFIG_MAX_CERTS);
		c->tls_cert[c->n_cert++] = xstrdup(v);
	} else if (!strcmp(k, "tls_key")) {
		if (c->n_key >= CONFIG_MAX_CERTS)
			return perr(p, "tls_key: at most %d keys", CONFIG_MAX_CERTS);
		c->tls_key[c->n_key++] = xstrdup(v);
	} else if (!strcmp(k, "local_domains")) {
		return each_item(p, v, k, item_domain);
	} else if (!strcmp(k, "relay_networks")) {
		return each_item(p, v, k, item_cidr);
	} else if (!strcmp(k, "info_url")) {
		if (strncmp(v, "https://", 8) && strncmp(v, "http://", 7))
			return perr(p, "info_url: expected an http(s):// URL, got '%s'", v);
		if (strpbrk(v, " \t\r\n<>") != NULL || strlen(v) > 200)
			return perr(p, "info_url: must be a URL without spaces, under 200 chars");
		set_str(&c->info_url, v);
	} else if (!strcmp(k, "require_tls")) {
		return set_bool(p, k, v, &c->require_tls);
	} else if (!strcmp(k, "greet_wait")) {
		if (!strcmp(v, "0")) {
			c->greet_wait = 0;
			return 1;
		}
		if (config_parse_duration(v, &c->greet_wait) < 0 || c->greet_wait > 30)
			return perr(p, "greet_wait: expected 0 or a duration up to 30 s, got '%s'",
			            v);
		return 1;
	} else if (!strcmp(k, "threads")) {
		return set_count(p, k, v, 1, 64, &c->threads);
	} else if (!strcmp(k, "user")) {
		set_str(&c->user, v);
	} else if (!strcmp(k, "syslog")) {
		return set_bool(p, k, v, &c->syslog);
	} else if (!strcmp(k, "log_level")) {
		if (strcmp(v, "debug") && strcmp(v, "info") && strcmp(v, "warning") &&
		    strcmp(v, "error"))
			return perr(p, "log_level: expected debug, info, warning or error");
		set_str(&c->log_level, v);
	} else {
		return perr(p, "unknown key '%s' in [server]", k);
	}
	return 1;
}

static int handle_local_delivery(struct parse_ctx *p, const char *k, const char *v)
{
	char host[64], port[8];
	if (!strcmp(k, "maildir")) {
		if (*v != '/')
			return perr(p, "maildir: expected an absolute directory, got '%s'", v);
		set_str(&p->c->maildir, v);
	} else if (!strcmp(k, "lmtp")) {
		if (config_parse_hostport(v, host, sizeof(host), port, sizeof(port)) < 0)
			return perr(p, "lmtp: bad address '%s' (expected ADDR:PORT)", v);
		set_str(&p->c->lmtp, v);
	} else if (!strcmp(k, "discard")) {
		return set_bool(p, k, v, &p->c->local_discard);
	} else {
		return perr(p, "unknown key '%s' in [local_delivery]", k);
	}
	return 1;
}

static int handle_tls(struct parse_ctx *p, const char *k, const char *v)
{
	struct config *c = p->c;
	if (!strcmp(k, "protocols")) {
		char *copy = xstrdup(v), *save = NULL;
		for (char *t = strtok_r(copy, ", \t", &save); t; t = strtok_r(NULL, ", \t", &save))
			if (strcmp(t, "TLSv1.2") && strcmp(t, "TLSv1.3")) {
				perr(p, "protocols: '%s' is not allowed (TLSv1.2, TLSv1.3)", t);
				free(copy);
				return 0;
			}
		free(copy);
		set_str(&c->tls_protocols, v);
	} else if (!strcmp(k, "ciphers")) {
		set_str(&c->tls_ciphers, v);
	} else if (!strcmp(k, "ciphersuites")) {
		set_str(&c->tls_ciphersuites, v);
	} else if (!strcmp(k, "groups")) {
		set_str(&c->tls_groups, v);
	} else {
		return perr(p, "unknown key '%s' in [tls]", k);
	}
	return 1;
}

static int handle_limits(struct parse_ctx *p, const char *k, const char *v)
{
	struct config *c = p->c;
	if (!strcmp(k, "line_length"))
		return set_count(p, k, v, 512, 65536, &c->line_length);
	if (!strcmp(k, "text_line_length"))
		return set_count(p, k, v, 1000, 1048576, &c->text_line_length);
	if (!strcmp(k, "message_size")) {
		uint64_t n;
		if (config_parse_size(v, &n) < 0 || n < 1024 || n > (1ULL << 40))
			return perr(p, "message_size: expected a size from 1K to 1T, got '%s'", v);
		c->message_size = n;
		return 1;
	}
	if (!strcmp(k, "recipients"))
		return set_count(p, k, v, 1, 100000, &c->recipients);
	if (!strcmp(k, "connections"))
		return set_count(p, k, v, 1, 1000000, &c->connections);
	if (!strcmp(k, "connections_per_ip"))
		return set_count(p, k, v, 1, 1000000, &c->connections_per_ip);
	if (!strcmp(k, "errors"))
		return set_count(p, k, v, 1, 1000, &c->errors);
	if (!strcmp(k, "min_data_rate")) {
		uint64_t n;
		if (config_parse_size(v, &n) < 0 || n > (1ULL << 30))
			return perr(
			    p, "min_data_rate: expected octets per second from 0 to 1G, got '%s'",
			    v);
		c->min_data_rate = n;
		return 1;
	}
	if (!strcmp(k, "error_delay")) {
		if (!strcmp(v, "0")) {
			c->error_delay = 0;
			return 1;
		}
		if (config_parse_duration(v, &c->error_delay) < 0 || c->error_delay > 60)
			return perr(p, "error_delay: expected 0 or a duration up to 60 s, got '%s'",
			            v);
		return 1;
	}
	if (!strcmp(k, "queue_minfree")) {
		uint64_t n;
		if (config_parse_size(v, &n) < 0 || n > (1ULL << 50))
			return perr(
			    p, "queue_minfree: expected a size such as 0, 100M or 2G, got '%s'", v);
		c->queue_minfree = n;
		return 1;
	}
	if (!strcmp(k, "header_size")) {
		uint64_t n;
		if (config_parse_size(v, &n) < 0 || (n != 0 && n < 1024) || n > (1ULL << 30))
			return perr(p, "header_size: expected 0 or a size from 1K to 1G, got '%s'",
			            v);
		c->header_size = n;
		return 1;
	}
	if (!strcmp(k, "timeout_command"))
		return set_duration(p, k, v, &c->timeout_command);
	if (!strcmp(k, "timeout_data"))
		return set_duration(p, k, v, &c->timeout_data);
	if (!strcmp(k, "timeout_tls"))
		return set_duration(p, k, v, &c->timeout_tls);
	return perr(p, "unknown key '%s' in [limits]", k);
}

static int protocols_ok(struct parse_ctx *p, const char *k, const char *v)
{
	char *copy = xstrdup(v), *save = NULL;
	for (char *t = strtok_r(copy, ", \t", &save); t; t = strtok_r(NULL, ", \t", &save))
		if (strcmp(t, "TLSv1.2") && strcmp(t, "TLSv1.3")) {
			perr(p, "%s: '%s' is not allowed (TLSv1.2, TLSv1.3)", k, t);
			free(copy);
			return 0;
		}
	free(copy);
	return 1;
}

static int item_stub(struct parse_ctx *p, const char *key, const char *t)
{
	char host[64], port[8];
	const char *at = strchr(t, '@');
	if (at == NULL || at == t ||
	    config_parse_hostport(at + 1, host, sizeof(host), port, sizeof(port)) < 0)
		return perr(p, "%s: expected ZONE@ADDR:PORT, got '%s'", key, t);
	strlist_add(&p->c->stubs, t);
	return 1;
}

static int handle_dns(struct parse_ctx *p, const char *k, const char *v)
{
	struct config *c = p->c;
	if (!strcmp(k, "resolver")) {
		if (!strcmp(v, "recursive"))
			c->dns_forward = false;
		else if (!strcmp(v, "forward"))
			c->dns_forward = true;
		else
			return perr(p, "resolver: expected recursive or forward, got '%s'", v);
		return 1;
	}
	if (!strcmp(k, "trust_anchor")) {
		if (*v != '/')
			return perr(p, "trust_anchor: expected an absolute file name, got '%s'", v);
		strlist_add(&c->trust_anchors, v);
		return 1;
	}
	if (!strcmp(k, "stub"))
		return each_item(p, v, k, item_stub);
	return perr(p, "unknown key '%s' in [dns]", k);
}

static int handle_outbound(struct parse_ctx *p, const char *k, const char *v)
{
	struct config *c = p->c;
	size_t n = 0;
	if (!strcmp(k, "smtp_port")) {
		if (!set_count(p, k, v, 1, 65535, &n))
			return 0;
		c->smtp_port = (unsigned)n;
	} else if (!strcmp(k, "protocols")) {
		if (!protocols_ok(p, k, v))
			return 0;
		set_str(&c->out_protocols, v);
	} else if (!strcmp(k, "ciphers")) {
		set_str(&c->out_ciphers, v);
	} else if (!strcmp(k, "ciphersuites")) {
		set_str(&c->out_ciphersuites, v);
	} else if (!strcmp(k, "groups")) {
		set_str(&c->out_groups, v);
	} else if (!strcmp(k, "ca_file")) {
		if (*v != '/')
			return perr(p, "ca_file: expected an absolute file name, got '%s'", v);
		set_str(&c->ca_file, v);
	} else if (!strcmp(k, "tls_failure")) {
		if (!strcmp(v, "defer"))
			c->tls_failure_bounce = false;
		else if (!strcmp(v, "bounce"))
			c->tls_failure_bounce = true;
		else
			return perr(p, "tls_failure: expected defer or bounce, got '%s'", v);
	} else if (!strcmp(k, "max_connections_per_domain")) {
		return set_count(p, k, v, 1, 1000, &c->max_connections_per_domain);
	} else if (!strcmp(k, "connect_timeout")) {
		return set_duration(p, k, v, &c->connect_timeout);
	} else if (!strcmp(k, "command_timeout")) {
		return set_duration(p, k, v, &c->out_command_timeout);
	} else if (!strcmp(k, "mta_sts")) {
		return set_bool(p, k, v, &c->mta_sts);
	} else if (!strcmp(k, "helo_name")) {
		if (!valid_domain(v))
			return perr(p, "helo_name: '%s' is not a valid host name", v);
		set_str(&c->helo_name, v);
	} else {
		return perr(p, "unknown key '%s' in [outbound]", k);
	}
	return 1;
}

static int handle_queue(struct parse_ctx *p, const char *k, const char *v)
{
	struct config *c = p->c;
	if (!strcmp(k, "max_queue_lifetime"))
		return set_duration(p, k, v, &c->max_queue_lifetime);
	if (!strcmp(k, "delay_warning_time"))
		return set_duration(p, k, v, &c->delay_warning_time);
	if (!strcmp(k, "retry_min"))
		return set_duration(p, k, v, &c->retry_min);
	if (!strcmp(k, "retry_max"))
		return set_duration(p, k, v, &c->retry_max);
	return perr(p, "unknown key '%s' in [queue]", k);
}

/* [domain "example.org"] */
static int enter_domain(struct parse_ctx *p, const char *section)
{
	char name[300];
	size_t n = strlen(section);
	if (n < 10 || n - 8 >= sizeof(name) || section[7] != '"' || section[n - 1] != '"')
		return perr(p, "bad section [%s] (expected [domain \"example.org\"])", section);
	memcpy(name, section + 8, n - 9);
	name[n - 9] = '\0';
	for (char *q = name; *q; q++)
		*q = (char)tolower((unsigned char)*q);
	if (!valid_domain(name))
		return perr(p, "domain: '%s' is not a valid domain", name);
	for (size_t i = 0; i < p->c->n_domains; i++)
		if (!strcmp(p->c->domains[i].name, name))
			return perr(p, "[domain \"%s\"] given twice (first at line %d)", name,
			            p->c->domains[i].line);
	p->c->domains = xrealloc(p->c->domains, (p->c->n_domains + 1) * sizeof(*p->c->domains));
	struct config_domain *d = &p->c->domains[p->c->n_domains];
	memset(d, 0, sizeof(*d));
	d->name = xstrdup(name);
	d->line = p->line;
	p->cur_domain = p->c->n_domains++;
	return 1;
}

static int item_match(struct parse_ctx *p, const char *key, const char *t)
{
	if (!valid_domain(t) && !(t[0] == '.' && valid_domain(t + 1)))
		return perr(p, "%s: bad name '%s'", key, t);
	strlist_add(&p->c->domains[p->cur_domain].match, t);
	return 1;
}

static int handle_domain(struct parse_ctx *p, const char *k, const char *v)
{
	struct config_domain *d = &p->c->domains[p->cur_domain];
	char host[256], port[8];
	if (!strcmp(k, "route")) {
		/* host:port; the host may be a name (verified against it) or an address */
		const char *colon = strrchr(v, ':');
		size_t hl = colon ? (size_t)(colon - v) : 0;
		if (colon == NULL || hl == 0 || hl >= sizeof(host) ||
		    strspn(colon + 1, "0123456789") != strlen(colon + 1) || !colon[1] ||
		    strlen(colon + 1) >= sizeof(port) || atoi(colon + 1) < 1 ||
		    atoi(colon + 1) > 65535)
			return perr(p, "route: expected HOST:PORT, got '%s'", v);
		memcpy(host, v, hl);
		host[hl] = '\0';
		if (host[0] == '[') {
			if (host[hl - 1] != ']')
				return perr(p, "route: expected HOST:PORT, got '%s'", v);
		} else if (!valid_domain(host)) {
			unsigned char buf[16];
			if (inet_pton(AF_INET, host, buf) != 1)
				return perr(p, "route: bad host '%s'", host);
		}
		free(d->route);
		d->route = xstrdup(v);
		return 1;
	}
	if (!strcmp(k, "tls")) {
		if (!strcmp(v, "verify"))
			d->tls = CONFIG_TLS_VERIFY;
		else if (!strcmp(v, "dane-only"))
			d->tls = CONFIG_TLS_DANE_ONLY;
		else if (!strcmp(v, "encrypt-only"))
			d->tls = CONFIG_TLS_ENCRYPT_ONLY;
		else
			return perr(p, "tls: expected verify, dane-only or encrypt-only, got '%s'",
			            v);
		return 1;
	}
	if (!strcmp(k, "match"))
		return each_item(p, v, k, item_match);
	return perr(p, "unknown key '%s' in [domain]", k);
}

static int handle_listener(struct parse_ctx *p, const char *k, const char *v)
{
	if (!strcmp(k, "require_tls")) {
		struct config_listener *l = &p->c->listeners[p->cur_listener];
		l->require_tls_set = true;
		return set_bool(p, k, v, &l->require_tls);
	}
	return perr(p, "unknown key '%s' in [listener]", k);
}

/* [listener "ADDR:PORT"]: inih hands us the section name with its quotes */
static int enter_listener(struct parse_ctx *p, const char *section)
{
	char name[128], host[64], port[8];
	size_t n = strlen(section);
	if (n < 12 || n - 10 >= sizeof(name) || section[9] != '"' || section[n - 1] != '"')
		return perr(p, "bad section [%s] (expected [listener \"ADDR:PORT\"])", section);
	memcpy(name, section + 10, n - 11);
	name[n - 11] = '\0';
	if (config_parse_hostport(name, host, sizeof(host), port, sizeof(port)) < 0)
		return perr(p, "listener: bad address '%s'", name);
	p->cur_listener = (size_t)(add_listener(p->c, host, port) - p->c->listeners);
	return 1;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
	struct parse_ctx *p = user;
	if (p->failed)
		return 0;
	if (name == NULL) /* new section (INI_CALL_HANDLER_ON_NEW_SECTION builds) */
		return 1;
	if (strncmp(section, "listener ", 9) != 0)
		p->cur_section[0] = '\0';
	if (strncmp(section, "domain ", 7) != 0)
		p->cur_domain_section[0] = '\0';
	if (!strcmp(section, "server"))
		return handle_server(p, name, value);
	if (!strcmp(section, "local_delivery"))
		return handle_local_delivery(p, name, value);
	if (!strcmp(section, "tls"))
		return handle_tls(p, name, value);
	if (!strcmp(section, "limits"))
		return handle_limits(p, name, value);
	if (!strcmp(section, "dns"))
		return handle_dns(p, name, value);
	if (!strcmp(section, "outbound"))
		return handle_outbound(p, name, value);
	if (!strcmp(section, "queue"))
		return handle_queue(p, name, value);
	if (!strncmp(section, "domain ", 7)) {
		if (strcmp(p->cur_domain_section, section) != 0) {
			snprintf(p->cur_domain_section, sizeof(p->cur_domain_section), "%s",
			         section);
			if (!enter_domain(p, section))
				return 0;
		}
		return handle_domain(p, name, value);
	}
	if (!strncmp(section, "listener ", 9)) {
		/* listeners are indexed by position: find it again on a new section */
		if (strcmp(p->cur_section, section) != 0) {
			snprintf(p->cur_section, sizeof(p->cur_section), "%s", section);
			if (!enter_listener(p, section))
				return 0;
		}
		return handle_listener(p, name, value);
	}
	if (*section == '\0')
		return perr(p, "key '%s' outside of any section", name);
	return perr(p, "unknown section [%s]", section);
}

int config_load(struct config *c, const char *path, char *err, size_t errlen)
{
	struct parse_ctx p = {.c = c, .err = err, .errlen = errlen};
	set_str(&c->path, path);
	p.fp = fopen(path, "r");
	if (p.fp == NULL) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	int rc = ini_parse_stream(reader, &p, handler, &p);
	fclose(p.fp);
	if (p.failed && !(rc > 0 && rc < p.err_line))
		return -1;
	if (rc != 0) {
		snprintf(err, errlen, "%s:%d: syntax error (expected [section] or key = value)",
		         path, rc > 0 ? rc : p.line);
		return -1;
	}
	return 0;
}

int config_finish(struct config *c, char *err, size_t errlen)
{
	if (c->hostname == NULL) {
		char h[256];
		if (gethostname(h, sizeof(h)) < 0 || !valid_domain(h))
			snprintf(h, sizeof(h), "localhost");
		h[sizeof(h) - 1] = '\0';
		c->hostname = xstrdup(h);
	}
	if (c->n_listeners == 0)
		add_listener(c, "127.0.0.1", "2525");
	if (c->threads == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		c->threads = n < 1 ? 1 : n > 8 ? 8 : (size_t)n;
	}
	for (size_t i = 0; i < c->n_listeners; i++)
		if (!c->listeners[i].require_tls_set)
			c->listeners[i].require_tls = c->require_tls;
	if (c->data_dir == NULL)
		c->data_dir = xstrdup("./var");
	if (c->local_domains.n == 0)
		strlist_add(&c->local_domains, "localhost");
	if (c->maildir == NULL)
		c->maildir = xasprintf("%s/mail", c->data_dir);
	if (c->user == NULL)
		c->user = xstrdup("nobody");
	if (c->helo_name == NULL)
		c->helo_name = xstrdup(c->hostname);
	if (!c->dns_forward && c->trust_anchors.n == 0 && c->stubs.n == 0)
		strlist_add(&c->trust_anchors, "/usr/share/dns/root.key");
	if (c->n_cert != c->n_key) {
		snprintf(err, errlen,
		         "%s: tls_cert and tls_key must come in pairs (%zu certs, %zu "
		         "keys)",
		         c->path ? c->path : "config", c->n_cert, c->n_key);
		return -1;
	}
	return 0;
}

const struct config_domain *config_domain_find(const struct config *c, const char *domain)
{
	for (size_t i = 0; i < c->n_domains; i++)
		if (strcasecmp(c->domains[i].name, domain) == 0)
			return &c->domains[i];
	return NULL;
}

bool config_net_match(const struct strlist *nets, const char *addr)
{
	unsigned char a[16], n[16];
	int fam = AF_INET, alen = 4;
	if (inet_pton(AF_INET, addr, a) != 1) {
		if (inet_pton(AF_INET6, addr, a) != 1)
			return false;
		fam = AF_INET6;
		alen = 16;
	}
	for (size_t i = 0; i < nets->n; i++) {
		char buf[64];
		const char *slash = strchr(nets->v[i], '/');
		size_t l = slash ? (size_t)(slash - nets->v[i]) : strlen(nets->v[i]);
		if (l >= sizeof(buf))
			continue;
		memcpy(buf, nets->v[i], l);
		buf[l] = '\0';
		if (inet_pton(fam, buf, n) != 1)
			continue;
		int bits = slash ? atoi(slash + 1) : alen * 8;
		int full = bits / 8, rest = bits % 8;
		if (memcmp(a, n, (size_t)full) != 0)
			continue;
		if (rest && ((a[full] ^ n[full]) & (0xff << (8 - rest))) != 0)
			continue;
		return true;
	}
	return false;
}
