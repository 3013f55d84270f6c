/*
 * dns_probe - drive src/dns on a real event loop and print each result as
 * one JSON line, for tests/integration/test_dns.py.
 *
 *   dns_probe [--stub ZONE@ADDR:PORT]... [--ta FILE]... [--forward]
 *             [--timeout MS] [--deadline S] [-v] COMMAND...
 *   COMMAND:  mx DOMAIN | addrs HOST [PORT] | query NAME TYPE | cancel-mx DOMAIN
 *
 * All commands start at once and run concurrently; the program ends when
 * every one has answered (exit 0) or after the deadline (exit 2). cancel-mx
 * starts an MX lookup and cancels it at once: its callback must never run.
 */
#include <event2/event.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/config.h"
#include "common/log.h"
#include "dns/dns.h"

static struct event_base *base;
static int pending;

static void json_str(const char *s)
{
	putchar('"');
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static void json_kv(const char *k, const char *v, int comma)
{
	if (comma)
		putchar(',');
	json_str(k);
	putchar(':');
	if (v == NULL)
		fputs("null", stdout);
	else
		json_str(v);
}

static void one_done(void)
{
	putchar('\n');
	fflush(stdout);
	if (--pending == 0)
		event_base_loopexit(base, NULL);
}

static void sa_text(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	char a[64];

	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;

		inet_ntop(AF_INET6, &s6->sin6_addr, a, sizeof(a));
		snprintf(buf, len, "[%s]:%u", a, ntohs(s6->sin6_port));
	} else {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;

		inet_ntop(AF_INET, &s4->sin_addr, a, sizeof(a));
		snprintf(buf, len, "%s:%u", a, ntohs(s4->sin_port));
	}
}

static void mx_cb(void *arg, const struct dns_mx_result *r)
{
	printf("{\"cmd\":\"mx\"");
	json_kv("domain", r->domain, 1);
	json_kv("status", dns_mx_status_name(r->status), 1);
	json_kv("sec", dns_sec_name(r->sec), 1);
	json_kv("reason", r->reason, 1);
	printf(",\"hosts\":[");
	for (size_t i = 0; i < r->n_hosts; i++) {
		printf("%s{", i ? "," : "");
		json_kv("name", r->hosts[i].name, 0);
		printf(",\"pref\":%u,\"implicit\":%s}", r->hosts[i].pref,
		       r->hosts[i].implicit ? "true" : "false");
	}
	printf("]}");
	one_done();
}

static void never_cb(void *arg, const struct dns_mx_result *r)
{
	printf("{\"cmd\":\"cancel-mx\",\"error\":\"callback after cancel\"}\n");
	fflush(stdout);
	exit(3);
}

static void addr_cb(void *arg, const struct dns_addr_result *r)
{
	char buf[80];

	printf("{\"cmd\":\"addrs\"");
	json_kv("host", r->host, 1);
	json_kv("status", dns_addr_status_name(r->status), 1);
	json_kv("sec", dns_sec_name(r->sec), 1);
	printf(",\"partial\":%s", r->partial ? "true" : "false");
	json_kv("reason", r->reason, 1);
	printf(",\"addrs\":[");
	for (size_t i = 0; i < r->n_addrs; i++) {
		sa_text(&r->addrs[i], buf, sizeof(buf));
		printf("%s", i ? "," : "");
		json_str(buf);
	}
	printf("]}");
	one_done();
}

/* one record in presentation format */
static void rr_text(const struct dns_rr *rr, char *buf, size_t len)
{
	size_t o;

	switch (rr->type) {
	case DNS_T_A:
	case DNS_T_AAAA:
		snprintf(buf, len, "%s", rr->addr.text);
		break;
	case DNS_T_MX:
		snprintf(buf, len, "%u %s", rr->mx.pref, rr->mx.exchange);
		break;
	case DNS_T_CNAME:
		snprintf(buf, len, "%s", rr->cname);
		break;
	case DNS_T_TXT:
		snprintf(buf, len, "%s", rr->txt.text);
		break;
	case DNS_T_TLSA:
		o = (size_t)snprintf(buf, len, "%u %u %u ", rr->tlsa.usage, rr->tlsa.selector,
		                     rr->tlsa.mtype);
		for (size_t i = 0; i < rr->tlsa.len && o + 3 < len; i++)
			o += (size_t)snprintf(buf + o, len - o, "%02x", rr->tlsa.data[i]);
		break;
	default:
		snprintf(buf, len, "TYPE%u", rr->type);
		break;
	}
}

static void query_cb(void *arg, const struct dns_result *r)
{
	char tb[16], buf[1200];

	printf("{\"cmd\":\"query\"");
	json_kv("name", r->name, 1);
	json_kv("type", dns_type_name(r->qtype, tb, sizeof(tb)), 1);
	json_kv("status", dns_status_name(r->status), 1);
	json_kv("sec", dns_sec_name(r->sec), 1);
	json_kv("why_bogus", r->why_bogus, 1);
	json_kv("error", r->error, 1);
	json_kv("owner", r->answer.owner, 1);
	printf(",\"rcode\":%d,\"cnames\":%u,\"rrs\":[", r->answer.rcode, r->answer.n_cname);
	for (size_t i = 0; i < r->answer.n_rrs; i++) {
		rr_text(&r->answer.rrs[i], buf, sizeof(buf));
		printf("%s", i ? "," : "");
		json_str(buf);
	}
	printf("]}");
	one_done();
}

static int type_of(const char *s)
{
	static const struct {
		const char *name;
		uint16_t type;
	} t[] = {{"A", DNS_T_A},     {"AAAA", DNS_T_AAAA}, {"MX", DNS_T_MX},
	         {"TXT", DNS_T_TXT}, {"TLSA", DNS_T_TLSA}, {"CNAME", DNS_T_CNAME},
	         {"NS", DNS_T_NS},   {"SOA", DNS_T_SOA}};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (strcasecmp(s, t[i].name) == 0)
			return t[i].type;
	return atoi(s);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	printf("{\"error\":\"deadline\",\"pending\":%d}\n", pending);
	fflush(stdout);
	event_base_loopexit(base, NULL);
}

static void usage(void) __attribute__((noreturn));

static void usage(void)
{
	fprintf(stderr, "usage: dns_probe [--stub ZONE@ADDR:PORT]... [--ta FILE]... [--forward] "
	                "[--timeout MS] [--deadline S] [-v] mx DOMAIN | addrs HOST [PORT] | "
	                "query NAME TYPE | cancel-mx DOMAIN ...\n");
	exit(64);
}

int main(int argc, char **argv)
{
	struct config c;
	struct dns_ctx *dns;
	struct event *deadline;
	struct timeval tv = {20, 0};
	char err[512];
	unsigned timeout_ms = 0;
	bool timeout_set = false, verbose = false;
	int i, rc;

	memset(&c, 0, sizeof(c));
	for (i = 1; i < argc && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "--stub") == 0 && i + 1 < argc)
			strlist_add(&c.stubs, argv[++i]);
		else if (strcmp(argv[i], "--ta") == 0 && i + 1 < argc)
			strlist_add(&c.trust_anchors, argv[++i]);
		else if (strcmp(argv[i], "--forward") == 0)
			c.dns_forward = true;
		else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
			timeout_ms = (unsigned)atoi(argv[++i]);
			timeout_set = true;
		} else if (strcmp(argv[i], "--deadline") == 0 && i + 1 < argc)
			tv.tv_sec = atoi(argv[++i]);
		else if (strcmp(argv[i], "-v") == 0)
			verbose = true;
		else
			usage();
	}
	if (i >= argc)
		usage();
	log_init("dns_probe", false, verbose ? LOG_LVL_DEBUG : LOG_LVL_WARN);

	base = event_base_new();
	dns = dns_new(base, &c, err, sizeof(err));
	if (dns == NULL) {
		printf("{\"error\":");
		json_str(err);
		printf("}\n");
		event_base_free(base);
		strlist_free(&c.stubs);
		strlist_free(&c.trust_anchors);
		return 1;
	}
	if (timeout_set)
		dns_set_timeout(dns, timeout_ms);

	pending = 1; /* held until every command is started */
	for (; i < argc; i++) {
		const char *cmd = argv[i];
		int id;

		if (strcmp(cmd, "mx") == 0 && i + 1 < argc) {
			rc = dns_resolve_mx(dns, argv[++i], mx_cb, NULL, &id);
		} else if (strcmp(cmd, "cancel-mx") == 0 && i + 1 < argc) {
			rc = dns_resolve_mx(dns, argv[++i], never_cb, NULL, &id);
			if (rc == 0) {
				dns_cancel(dns, id);
				printf("{\"cmd\":\"cancel-mx\",\"id\":%d}\n", id);
			}
			continue;
		} else if (strcmp(cmd, "addrs") == 0 && i + 1 < argc) {
			const char *host = argv[++i];
			uint16_t port = 25;

			if (i + 1 < argc && argv[i + 1][0] >= '0' && argv[i + 1][0] <= '9')
				port = (uint16_t)atoi(argv[++i]);
			rc = dns_resolve_addrs(dns, host, port, addr_cb, NULL, &id);
		} else if (strcmp(cmd, "query") == 0 && i + 2 < argc) {
			const char *name = argv[++i];

			rc =
			    dns_query(dns, name, (uint16_t)type_of(argv[++i]), query_cb, NULL, &id);
		} else {
			usage();
		}
		if (rc < 0) {
			printf("{\"cmd\":");
			json_str(cmd);
			printf(",\"error\":\"not started\"}\n");
		} else {
			pending++;
		}
	}
	if (--pending > 0) {
		deadline = evtimer_new(base, deadline_cb, NULL);
		evtimer_add(deadline, &tv);
		event_base_dispatch(base);
		event_free(deadline);
	}
	rc = pending > 0 ? 2 : 0;
	dns_free(&dns);
	event_base_free(base);
	strlist_free(&c.stubs);
	strlist_free(&c.trust_anchors);
	return rc;
}
