/* log - key=value event logging; see log.h */
#include "common/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static const char *log_ident = "strictmx";
static bool log_syslog;
static enum log_level log_min = LOG_LVL_INFO;
/* getpid() once, not a system call per line (glibc does not cache it); a
 * forked child (strictmx check) learns its own at the fork */
static pthread_once_t pid_once = PTHREAD_ONCE_INIT;
static long log_pid;

static void pid_refresh(void)
{
	log_pid = (long)getpid();
}

static void pid_init(void)
{
	pid_refresh();
	pthread_atfork(NULL, NULL, pid_refresh);
}

static const char *const level_names[] = {"debug", "info", "warning", "error"};

void log_init(const char *ident, bool use_syslog, enum log_level min)
{
	log_ident = ident;
	log_syslog = use_syslog;
	log_min = min;
	if (use_syslog)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_MAIL);
}

void log_set_level(enum log_level min)
{
	log_min = min;
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
	char line[4096];
	va_list ap;

	if (lvl < log_min)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);

	if (log_syslog) {
		static const int prio[] = {LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR};
		syslog(prio[lvl], "%s %s", level_names[lvl], line);
		return;
	}
	struct timespec ts;
	struct tm tm;
	char when[32];
	pthread_once(&pid_once, pid_init);
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
	fprintf(stderr, "%s.%03ldZ %s[%ld]: %s %s\n", when, ts.tv_nsec / 1000000L, log_ident,
	        log_pid, level_names[lvl], line);
}

const char *log_escape(const void *in, size_t len, char *out, size_t outsz)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = in;
	size_t o = 0;

	if (outsz == 0)
		return out;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = p[i];
		size_t need = (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? 1 : 4;
		if (o + need + 4 > outsz) {
			if (o + 4 <= outsz) {
				memcpy(out + o, "...", 3);
				o += 3;
			}
			break;
		}
		if (need == 1) {
			out[o++] = (char)c;
		} else {
			out[o++] = '\\';
			out[o++] = 'x';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		}
	}
	out[o] = '\0';
	return out;
}
