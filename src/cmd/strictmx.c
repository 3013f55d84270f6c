/*
 * strictmx - the command-line tool. For now: version and help; queue,
 * policy, check and scan commands come with their issues.
 */
#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
	fprintf(f, "usage: strictmx COMMAND [ARGS]\n"
	           "\n"
	           "commands:\n"
	           "  help        show this text\n"
	           "  version     print the version (also: --version)\n"
	           "\n"
	           "The daemon is strictmxd; see README.md.\n");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[1];
	if (!strcmp(cmd, "--version") || !strcmp(cmd, "version") || !strcmp(cmd, "-V")) {
		printf("strictmx %s\n", STRICTMX_VERSION);
		return 0;
	}
	if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "strictmx: unknown command '%s' (try: strictmx help)\n", cmd);
	return 2;
}
