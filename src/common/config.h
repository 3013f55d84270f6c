/*
 * config - the strictmx configuration: embedded defaults, INI file (libinih).
 *
 * Every key is documented in docs/configuration.md. Unknown sections and keys
 * are errors, reported as "FILE:LINE: message".
 */
#ifndef STRICTMX_COMMON_CONFIG_H
#define STRICTMX_COMMON_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct strlist {
	char **v;
	size_t n;
};

void strlist_add(struct strlist *l, const char *s);
void strlist_free(struct strlist *l);
bool strlist_contains_ci(const struct strlist *l, const char *s);

#define CONFIG_MAX_CERTS 4

struct config_listener {
	char host[64]; /* numeric address */
	char port[8];
	bool require_tls;     /* resolved by config_finish */
	bool require_tls_set; /* set in [listener "..."], else [server] require_tls */
};

/* [domain "NAME"]: per-destination overrides of the outbound policy */
enum config_domain_tls {
	CONFIG_TLS_VERIFY = 0,   /* default: DANE, else PKIX (+MTA-STS) */
	CONFIG_TLS_DANE_ONLY,    /* only DANE may verify */
	CONFIG_TLS_ENCRYPT_ONLY, /* TLS without verification: logged on every use */
};

struct config_domain {
	char *name;  /* lowercase */
	char *route; /* "host:port" next hop instead of the MX, or NULL */
	enum config_domain_tls tls;
	struct strlist match; /* names the certificate must carry (PKIX) */
	int line;             /* where it was defined, for messages */
};

struct config {
	char *path; /* NULL: embedded default */

	/* [server] */
	char *hostname;
	struct config_listener *listeners;
	size_t n_listeners;
	char *data_dir;
	char *tls_cert[CONFIG_MAX_CERTS];
	char *tls_key[CONFIG_MAX_CERTS];
	size_t n_cert, n_key;
	struct strlist local_domains;
	struct strlist relay_networks; /* validated CIDR strings */
	char *info_url;
	bool require_tls;
	char *user;
	bool syslog;
	char *log_level;

	/* [local_delivery] */
	char *maildir;      /* base directory; default data_dir/mail */
	char *lmtp;         /* host:port, or NULL */
	bool local_discard; /* [local_delivery] discard: accept, queue, drop */

	/* [tls] */
	char *tls_protocols;    /* e.g. "TLSv1.2 TLSv1.3" */
	char *tls_ciphers;      /* TLS 1.2 cipher list */
	char *tls_ciphersuites; /* TLS 1.3 suites */
	char *tls_groups;

	/* [limits] */
	size_t line_length;      /* command line, with CRLF */
	size_t text_line_length; /* DATA line, with CRLF */
	uint64_t message_size;
	size_t recipients;
	size_t connections;
	size_t connections_per_ip;
	size_t threads;           /* [server] threads: inbound event loops */
	unsigned greet_wait;      /* [server] greet_wait: seconds before the 220; 0 = at once */
	unsigned timeout_command; /* seconds */
	unsigned timeout_data;
	unsigned timeout_tls;
	size_t errors;
	uint64_t min_data_rate; /* octets/s inside DATA/BDAT content; 0 = no minimum */
	unsigned error_delay;   /* seconds before each error reply past the 10th; 0 = none */
	uint64_t queue_minfree; /* free octets data_dir must keep, checked at MAIL */
	uint64_t header_size;   /* the client's header block; 0 = no limit of its own */

	/* [dns] */
	bool dns_forward;             /* resolver = forward (/etc/resolv.conf), else recursive */
	struct strlist trust_anchors; /* files; default /usr/share/dns/root.key when recursive */
	struct strlist stubs;         /* "zone@addr:port" */

	/* [outbound] */
	unsigned smtp_port;
	char *out_protocols, *out_ciphers, *out_ciphersuites, *out_groups;
	char *ca_file;           /* PKIX trust anchors; default: the system store */
	bool tls_failure_bounce; /* tls_failure = bounce: no retries when no MX verifies */
	size_t max_connections_per_domain;
	unsigned connect_timeout;
	unsigned out_command_timeout;
	char *helo_name; /* default: hostname */
	bool mta_sts;    /* apply MTA-STS policies (RFC 8461); default yes */

	/* [queue] */
	unsigned max_queue_lifetime; /* seconds */
	unsigned delay_warning_time;
	unsigned retry_min;
	unsigned retry_max;

	/* [domain "..."] */
	struct config_domain *domains;
	size_t n_domains;
};

/* config_domain_find - the [domain] section for a domain (case-insensitive) */
const struct config_domain *config_domain_find(const struct config *c, const char *domain);
/* config_net_match - is the address (numeric) inside one of the CIDR strings? */
bool config_net_match(const struct strlist *nets, const char *addr);

/* config_defaults - fill the embedded default (no file) */
void config_defaults(struct config *c);
/* config_load - read FILE over the defaults; -1 with "FILE:LINE: message" */
int config_load(struct config *c, const char *path, char *err, size_t errlen);
/* config_finish - derive what was not set (hostname, listeners, paths) */
int config_finish(struct config *c, char *err, size_t errlen);
void config_free(struct config *c);

/* parse helpers, also used by the CLI; 0 ok, -1 bad */
int config_parse_bool(const char *v, bool *out);
int config_parse_size(const char *v, uint64_t *out);     /* 35M, 512, 1G */
int config_parse_duration(const char *v, unsigned *out); /* 300, 5m, 1h */
int config_parse_hostport(const char *v, char *host, size_t hostlen, char *port, size_t portlen);
int config_parse_cidr(const char *v);

#endif
