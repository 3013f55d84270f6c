/*
 * strictmx - the command-line tool.
 *
 *   strictmx [-c FILE] queue list [--json]
 *   strictmx [-c FILE] queue show ID [--json]
 *   strictmx [-c FILE] queue flush
 *   strictmx [-c FILE] queue delete ID
 *   strictmx [-c FILE] policy DOMAIN [--json]
 *   strictmx [-c FILE] check DOMAIN... [--json] [--no-color] [--port N] [--timeout S]
 *                                     [--dns-transport auto|udp|tcp]
 *   strictmx [-c FILE] scan [FILE|-] [options]
 *   strictmx --version | help
 *
 * -c names the daemon's configuration (for data_dir); without it the
 * embedded default (./var) is used, as for strictmxd.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "common/config.h"
#include "check/check.h"
#include "policy/policy.h"
#include "queue/admin.h"

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: strictmx [-c FILE] COMMAND [ARGS]\n"
	    "\n"
	    "commands:\n"
	    "  queue list [--json]       messages in the queue, with each recipient's state\n"
	    "  queue show ID [--json]    one message: envelope, per-recipient state and reasons\n"
	    "  queue flush               retry every queued recipient now\n"
	    "  queue delete ID           remove a message (no DSN is sent)\n"
	    "  policy DOMAIN [--json]    what delivery to DOMAIN must prove: each MX and the\n"
	    "                            method that must verify it (dane, mta-sts+pkix, pkix)\n"
	    "  check DOMAIN... [--json] [--no-color] [--port N] [--timeout S]\n"
	    "        [--dns-transport auto|udp|tcp]\n"
	    "                            would strictmx deliver? STARTTLS, certificates, DANE,\n"
	    "                            MTA-STS, TLS-RPT and inbound enforcement, per MX\n"
	    "  scan [FILE|-] [--concurrency N] [--per-ip N] [--jobs N] [--output FILE]\n"
	    "       [--resume] [--html FILE] [--postfix-policy FILE] [--port N] [--timeout S]\n"
	    "       [--dns-transport auto|udp|tcp]\n"
	    "                            check many domains: JSON lines and a summary\n"
	    "  help                      this text\n"
	    "  version                   the version (also --version)\n"
	    "\n"
	    "options:\n"
	    "  -c FILE   the strictmxd configuration (its data_dir holds the queue)\n");
}

static int cmd_queue(const struct config *cfg, int argc, char **argv)
{
	char err[512];
	bool json = false;
	const char *sub = argc > 0 ? argv[0] : NULL;
	const char *arg = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = true;
		else if (arg == NULL)
			arg = argv[i];
		else {
			fprintf(stderr, "strictmx: queue %s: unexpected argument '%s'\n", sub,
			        argv[i]);
			return 2;
		}
	}
	int rc;
	if (sub && !strcmp(sub, "list") && !arg)
		rc = queue_admin_list(cfg->data_dir, json, stdout, err, sizeof(err));
	else if (sub && !strcmp(sub, "show") && arg)
		rc = queue_admin_show(cfg->data_dir, arg, json, stdout, err, sizeof(err));
	else if (sub && !strcmp(sub, "flush") && !arg && !json)
		rc = queue_admin_flush(cfg->data_dir, stdout, err, sizeof(err));
	else if (sub && !strcmp(sub, "delete") && arg && !json)
		rc = queue_admin_delete(cfg->data_dir, arg, stdout, err, sizeof(err));
	else {
		fprintf(stderr, "strictmx: usage: strictmx queue list|show ID|flush|delete ID\n");
		return 2;
	}
	if (rc < 0) {
		fprintf(stderr, "strictmx: %s\n", err);
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *path = NULL;
	int opt;
	static const struct option longopts[] = {{"version", no_argument, NULL, 'V'},
	                                         {"help", no_argument, NULL, 'h'},
	                                         {NULL, 0, NULL, 0}};
	/* "+": stop at the first command word, its options are its own */
	while ((opt = getopt_long(argc, argv, "+c:Vh", longopts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			path = optarg;
			break;
		case 'V':
			printf("strictmx %s\n", STRICTMX_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[optind];
	if (!strcmp(cmd, "version")) {
		printf("strictmx %s\n", STRICTMX_VERSION);
		return 0;
	}
	if (!strcmp(cmd, "help")) {
		usage(stdout);
		return 0;
	}
	struct config cfg;
	char err[1024];
	config_defaults(&cfg);
	if ((path && config_load(&cfg, path, err, sizeof(err)) < 0) ||
	    config_finish(&cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "strictmx: %s\n", err);
		config_free(&cfg);
		return 2;
	}
	int rc;
	if (!strcmp(cmd, "queue")) {
		rc = cmd_queue(&cfg, argc - optind - 1, argv + optind + 1);
	} else if (!strcmp(cmd, "check")) {
		rc = check_cli(&cfg, argc - optind - 1, argv + optind + 1);
	} else if (!strcmp(cmd, "scan")) {
		rc = scan_cli(&cfg, argc - optind - 1, argv + optind + 1);
	} else if (!strcmp(cmd, "policy")) {
		rc = policy_cli(&cfg, argc - optind - 1, argv + optind + 1);
	} else {
		fprintf(stderr, "strictmx: unknown command '%s' (try: strictmx help)\n", cmd);
		rc = 2;
	}
	config_free(&cfg);
	return rc;
}
