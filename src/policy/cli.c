/*
 * policy/cli - `strictmx [-c FILE] policy DOMAIN [--json]`: make the plan
 * for DOMAIN on a private event loop and print it. Nothing connects to an
 * MX; only DNS and the MTA-STS cache or policy fetch.
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "policy/policy.h"

#define CLI_DNS_TIMEOUT_MS 15000 /* each DNS step */
#define CLI_DEADLINE_S     60    /* the whole plan: DNS steps and a 10 s policy fetch */

struct cli_state {
	struct event_base *base;
	bool json, done;
	int rc;
};

static void plan_cb(void *arg, const struct policy_plan *plan)
{
	struct cli_state *st = arg;

	if (st->json) {
		char *s = policy_plan_json(plan);

		printf("%s\n", s);
		free(s);
	} else {
		policy_plan_print(plan, stdout);
	}
	fflush(stdout);
	st->done = true;
	st->rc = plan->status == POLICY_TEMPFAIL ? 2 : 0;
	event_base_loopexit(st->base, NULL);
}

int policy_cli(const struct config *c, int argc, char **argv)
{
	struct cli_state st = {0};
	struct dns_ctx *dns;
	struct policy_ctx *p;
	struct timeval deadline = {CLI_DEADLINE_S, 0};
	const char *domain = NULL;
	char err[512];
	int id;

	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			st.json = true;
		else if (domain == NULL && argv[i][0] != '-')
			domain = argv[i];
		else {
			fprintf(stderr, "strictmx: policy: unexpected argument '%s'\n", argv[i]);
			return 2;
		}
	}
	if (domain == NULL) {
		fprintf(stderr, "strictmx: usage: strictmx [-c FILE] policy DOMAIN [--json]\n");
		return 2;
	}
	st.base = event_base_new();
	if (st.base == NULL) {
		fprintf(stderr, "strictmx: policy: event_base_new failed\n");
		return 2;
	}
	dns = dns_new(st.base, c, err, sizeof(err));
	if (dns == NULL) {
		fprintf(stderr, "strictmx: policy: %s\n", err);
		event_base_free(st.base);
		return 2;
	}
	dns_set_timeout(dns, CLI_DNS_TIMEOUT_MS);
	p = policy_new(st.base, c, dns, err, sizeof(err));
	if (p == NULL) {
		fprintf(stderr, "strictmx: policy: %s\n", err);
		dns_free(&dns);
		event_base_free(st.base);
		return 2;
	}
	st.rc = 2;
	if (policy_plan_domain(p, domain, plan_cb, &st, &id) < 0) {
		fprintf(stderr, "strictmx: policy: '%s' is not a valid domain name\n", domain);
	} else {
		event_base_loopexit(st.base, &deadline);
		event_base_dispatch(st.base);
		if (!st.done)
			fprintf(stderr, "strictmx: policy: no plan for %s within %d s\n", domain,
			        CLI_DEADLINE_S);
	}
	policy_free(&p);
	dns_free(&dns);
	event_base_free(st.base);
	return st.rc;
}
