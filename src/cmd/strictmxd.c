/*
 * strictmxd - the strictmx daemon: an MX that requires STARTTLS.
 *
 *   strictmxd [-c FILE]      run in the foreground (no FILE: embedded default)
 *   strictmxd -t [-c FILE]   check the configuration and exit (0 = valid)
 *   strictmxd -V             print the version
 *
 * Start-up order matters: read config, load or create the TLS key (as root),
 * bind the ports (as root), then switch to [server] user before the event
 * loop reads any byte from the network.
 */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/ssl.h>

#include "common/config.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "engine/engine.h"
#include "inbound/server.h"
#include "queue/admin.h"
#include "queue/queue.h"
#include "tls/server.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: strictmxd [-t] [-c FILE] [-V]\n"
	           "  -c FILE  configuration file (INI; see docs/configuration.md)\n"
	           "  -t       check the configuration and exit\n"
	           "  -V       print the version and exit\n");
}

/* mkdir_p - create dir and its parents (mode for the ones created) */
static int mkdir_p(const char *path, mode_t mode)
{
	char *p = xstrdup(path);
	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, 0755) < 0 && errno != EEXIST) {
			free(p);
			return -1;
		}
		*s = '/';
	}
	int rc = mkdir(p, mode);
	free(p);
	return rc < 0 && errno != EEXIST ? -1 : 0;
}

/* prepare_dirs - data_dir and the directories the unprivileged user writes */
static int prepare_dirs(const struct config *c, const struct passwd *pw)
{
	const char *dirs[4];
	char *spool = xasprintf("%s/spool", c->data_dir);
	char *queue = xasprintf("%s/queue", c->data_dir);
	dirs[0] = c->data_dir;
	dirs[1] = spool;
	dirs[2] = c->maildir;
	dirs[3] = queue;
	for (size_t i = 0; i < 4; i++) {
		if (mkdir_p(dirs[i], 0700) < 0) {
			log_err("event=startup_error error=\"mkdir %s: %s\"", dirs[i],
			        strerror(errno));
			free(spool);
			free(queue);
			return -1;
		}
		if (pw && chown(dirs[i], pw->pw_uid, pw->pw_gid) < 0) {
			log_err("event=startup_error error=\"chown %s: %s\"", dirs[i],
			        strerror(errno));
			free(spool);
			free(queue);
			return -1;
		}
	}
	/* the queue database, if an earlier run created it as another user */
	static const char *const dbfiles[] = {"queue.db", "queue.db-wal", "queue.db-shm"};
	for (size_t i = 0; pw && i < 3; i++) {
		char *f = xasprintf("%s/%s", c->data_dir, dbfiles[i]);
		if (chown(f, pw->pw_uid, pw->pw_gid) < 0 && errno != ENOENT)
			log_warn("event=startup_warning error=\"chown %s: %s\"", f,
			         strerror(errno));
		free(f);
	}
	free(spool);
	free(queue);
	return 0;
}

static int drop_privileges(const struct passwd *pw)
{
	if (setgroups(0, NULL) < 0 || setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0) {
		log_err("event=startup_error error=\"cannot switch to user %s: %s\"", pw->pw_name,
		        strerror(errno));
		return -1;
	}
	if (pw->pw_uid != 0 && setuid(0) == 0) {
		log_err("event=startup_error error=\"privileges could be regained\"");
		return -1;
	}
	log_info("event=privileges user=%s uid=%ld", pw->pw_name, (long)pw->pw_uid);
	return 0;
}

static void on_usr1(evutil_socket_t sig, short what, void *arg)
{
	log_info("event=queue_kick reason=signal");
	queue_kick(arg);
}

/* write_pidfile - for `strictmx queue flush` to find us (data_dir/strictmxd.pid) */
static void write_pidfile(const struct config *c)
{
	char *path = queue_admin_pidfile(c->data_dir);
	FILE *f = fopen(path, "w");
	if (f == NULL || fprintf(f, "%ld\n", (long)getpid()) < 0 || fclose(f) != 0)
		log_warn("event=startup_warning error=\"pid file %s: %s\"", path, strerror(errno));
	free(path);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct event_base *base = arg;
	log_info("event=shutdown signal=%d", (int)sig);
	event_base_loopexit(base, NULL);
}

int main(int argc, char **argv)
{
	const char *path = NULL;
	bool check_only = false;
	int opt;
	char err[1024];
	struct config cfg;

	static const struct option longopts[] = {{"version", no_argument, NULL, 'V'},
	                                         {"help", no_argument, NULL, 'h'},
	                                         {NULL, 0, NULL, 0}};
	while ((opt = getopt_long(argc, argv, "c:tVh", longopts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			path = optarg;
			break;
		case 't':
			check_only = true;
			break;
		case 'V':
			printf("strictmxd %s\n", STRICTMX_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}

	config_defaults(&cfg);
	if (path && config_load(&cfg, path, err, sizeof(err)) < 0) {
		fprintf(stderr, "strictmxd: %s\n", err);
		config_free(&cfg);
		return 1;
	}
	if (config_finish(&cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "strictmxd: %s\n", err);
		config_free(&cfg);
		return 1;
	}
	if (check_only) {
		printf("strictmxd: %s: configuration OK\n", path ? path : "(embedded default)");
		config_free(&cfg);
		return 0;
	}

	enum log_level lvl = LOG_LVL_INFO;
	if (cfg.log_level) {
		lvl = !strcmp(cfg.log_level, "debug")     ? LOG_LVL_DEBUG
		      : !strcmp(cfg.log_level, "warning") ? LOG_LVL_WARN
		      : !strcmp(cfg.log_level, "error")   ? LOG_LVL_ERR
		                                          : LOG_LVL_INFO;
	}
	log_init("strictmxd", cfg.syslog, lvl);
	signal(SIGPIPE, SIG_IGN);

	struct passwd *pw = NULL;
	if (geteuid() == 0) {
		pw = getpwnam(cfg.user);
		if (pw == NULL) {
			log_err("event=startup_error error=\"user %s: no such user\"", cfg.user);
			config_free(&cfg);
			return 1;
		}
		if (pw->pw_uid == 0)
			log_warn(
			    "event=startup_warning msg=\"running as root: set [server] user\"");
	}
	if (prepare_dirs(&cfg, pw) < 0) {
		config_free(&cfg);
		return 1;
	}
	write_pidfile(&cfg);

	SSL_CTX *tls = tls_server_ctx_new(&cfg, err, sizeof(err));
	if (tls == NULL) {
		log_err("event=startup_error error=\"%s\"", err);
		config_free(&cfg);
		return 1;
	}

	struct event_base *base = event_base_new();
	if (base == NULL)
		fatal("event_base_new failed");
	/* signals first: a SIGTERM during start-up still ends cleanly */
	struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, base);
	struct event *sigint = evsignal_new(base, SIGINT, on_signal, base);
	event_add(sigterm, NULL);
	event_add(sigint, NULL);

	struct inbound_server *srv = inbound_server_new(base, &cfg, tls, NULL, err, sizeof(err));
	struct queue *queue = NULL;
	struct engine *engine = NULL;
	struct event *sigusr1 = NULL;
	int rc = 1;

	if (srv == NULL) {
		log_err("event=startup_error error=\"%s\"", err);
		goto out;
	}
	if (pw && drop_privileges(pw) < 0)
		goto out;
	/* The queue is opened as the unprivileged user: its files are that user's. */
	queue = queue_open(base, &cfg, err, sizeof(err));
	if (queue == NULL) {
		log_err("event=startup_error error=\"%s\"", err);
		goto out;
	}
	inbound_server_set_queue(srv, queue);
	if (inbound_server_start(srv, err, sizeof(err)) < 0) {
		log_err("event=startup_error error=\"%s\"", err);
		goto out;
	}
	sigusr1 = evsignal_new(base, SIGUSR1, on_usr1, queue);
	event_add(sigusr1, NULL);
	engine = engine_new(base, &cfg, queue, err, sizeof(err));
	if (engine == NULL) {
		log_err("event=startup_error error=\"%s\"", err);
		goto out;
	}

	log_info("event=started version=%s hostname=%s config=%s", STRICTMX_VERSION, cfg.hostname,
	         path ? path : "embedded");

	event_base_dispatch(base);
	rc = 0;

out:
	/* a start-up error frees what was made too (the sanitizer builds check for leaks) */
	if (srv != NULL)
		inbound_server_stop(srv);
	engine_free(&engine);
	queue_close(&queue);
	inbound_server_free(&srv);
	event_free(sigterm);
	event_free(sigint);
	if (sigusr1 != NULL)
		event_free(sigusr1);
	event_base_free(base);
	SSL_CTX_free(tls);
	config_free(&cfg);
	if (rc != 0)
		return rc;
	log_info("event=stopped");
	return 0;
}
