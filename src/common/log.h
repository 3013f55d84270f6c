/*
 * log - one line per event, key=value, to stderr (foreground) or syslog.
 *
 * Callers write "event=NAME sid=ID key=value ..."; untrusted bytes (client
 * names, addresses, command text) go through log_escape() first so a log line
 * can never be split or forged by a peer.
 */
#ifndef STRICTMX_COMMON_LOG_H
#define STRICTMX_COMMON_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level { LOG_LVL_DEBUG, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERR };

void log_init(const char *ident, bool use_syslog, enum log_level min);
void log_set_level(enum log_level min);
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_LVL_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_err(...)   log_msg(LOG_LVL_ERR, __VA_ARGS__)

/*
 * log_escape - render untrusted bytes for a log value written inside double
 * quotes: printable ASCII and space, other than '"' and '\\', are kept;
 * everything else becomes \xNN; truncated (with "...") to fit outsz.
 * Returns out.
 */
const char *log_escape(const void *in, size_t len, char *out, size_t outsz);

#endif
