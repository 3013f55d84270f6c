/* queue/dsn - RFC 3464 delivery status notifications; see dsn.h */
#include "queue/dsn.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/xmalloc.h"

struct sbuf {
	struct buf b;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
	buf_append(&b->b, s, n);
}

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	char *s;
	va_start(ap, fmt);
	int n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		fatal("out of memory");
	sb_add(b, s, (size_t)n);
	free(s);
}

/* sb_text - untrusted text (remote replies) as printable ASCII on one line */
static void sb_text(struct sbuf *b, const char *s)
{
	for (; s && *s; s++) {
		char c = (*s >= 0x20 && *s < 0x7f) ? *s : ' ';
		sb_add(b, &c, 1);
	}
}

static void rfc5322_date(time_t t, char *buf, size_t len)
{
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(buf, len, "%a, %d %b %Y %H:%M:%S +0000", &tm);
}

const char *dsn_advice(const char *detail)
{
	if (detail == NULL)
		return NULL;
	if (strstr(detail, "does not offer STARTTLS"))
		return "The receiving mail server does not offer encryption (STARTTLS). This "
		       "server only sends mail over TLS with a verified certificate, so the "
		       "message "
		       "was not sent in the clear. The administrator of the recipient's domain can "
		       "fix this by enabling STARTTLS with a certificate that is valid for the MX "
		       "host name (or by publishing DANE TLSA records).";
	if (strstr(detail, "certificate") || strstr(detail, "TLSA"))
		return "The receiving mail server offered encryption, but its certificate could "
		       "not "
		       "be verified, so the message was not sent. The administrator of the "
		       "recipient's domain can fix this by installing a certificate from a public "
		       "certificate authority that names the MX host, that has not expired, and "
		       "that "
		       "comes with its full chain (or by publishing matching DANE TLSA records).";
	if (strstr(detail, "STARTTLS") || strstr(detail, "TLS"))
		return "The encrypted connection to the receiving mail server could not be "
		       "established, so the message was not sent. The administrator of the "
		       "recipient's domain can check the server's TLS set-up (TLS 1.2 or newer, "
		       "modern ciphers).";
	if (strstr(detail, "null MX"))
		return "The recipient's domain says (with a null MX record, RFC 7505) that it does "
		       "not accept mail.";
	if (strstr(detail, "does not exist") || strstr(detail, "no MX"))
		return "The recipient's domain does not exist or has no mail server. Check the "
		       "address for typing errors.";
	if (strstr(detail, "expired"))
		return "Delivery was retried until the message expired in the queue.";
	return NULL;
}

char *dsn_build(const struct dsn_input *in, size_t *len)
{
	struct sbuf b = {0};
	char date[64], arrival[64];
	rfc5322_date(in->now, date, sizeof(date));
	rfc5322_date(in->arrival, arrival, sizeof(arrival));

	sb_printf(&b, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", in->reporting_mta);
	sb_printf(&b, "To: <%s>\r\n", in->sender);
	sb_printf(&b, "Subject: %s\r\n",
	          in->delayed ? "Delayed Mail (still being retried)"
	                      : "Undelivered Mail Returned to Sender");
	sb_printf(&b, "Date: %s\r\n", date);
	sb_printf(&b, "Message-ID: <%s>\r\n", in->message_id);
	sb_printf(&b, "Auto-Submitted: auto-replied\r\n");
	sb_printf(&b, "MIME-Version: 1.0\r\n");
	sb_printf(&b,
	          "Content-Type: multipart/report; report-type=delivery-status;\r\n"
	          "\tboundary=\"%s\"\r\n\r\n",
	          in->boundary);
	sb_printf(&b, "This is a MIME-encapsulated message.\r\n\r\n");

	/* 1. the human part */
	sb_printf(&b, "--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n", in->boundary);
	sb_printf(&b, "This is the mail system at host %s.\r\n\r\n", in->reporting_mta);
	if (in->delayed)
		sb_printf(&b,
		          "Your message (queue id %s) could not be delivered yet to the "
		          "recipient(s) below.\r\nIt is still in the queue and delivery will be "
		          "retried; you do not need to send it again.\r\n\r\n",
		          in->queue_id);
	else
		sb_printf(&b,
		          "Your message (queue id %s) could not be delivered to the "
		          "recipient(s) below.\r\nIt has been returned; its headers are "
		          "attached.\r\n\r\n",
		          in->queue_id);
	const char *last_advice = NULL;
	for (size_t i = 0; i < in->n_rcpts; i++) {
		const struct dsn_rcpt *r = &in->rcpts[i];
		sb_printf(&b, "<%s>: ", r->addr);
		sb_text(&b, r->detail ? r->detail : r->diagnostic);
		sb_add(&b, "\r\n", 2);
		const char *adv = dsn_advice(r->detail);
		if (adv && adv != last_advice) {
			sb_printf(&b, "    %s\r\n", adv);
			last_advice = adv;
		}
	}
	if (in->info_url)
		sb_printf(&b, "\r\nMore about why this server requires verified TLS: %s\r\n",
		          in->info_url);
	sb_add(&b, "\r\n", 2);

	/* 2. the machine part (RFC 3464 §2.2, §2.3) */
	sb_printf(&b, "--%s\r\nContent-Type: message/delivery-status\r\n\r\n", in->boundary);
	sb_printf(&b, "Reporting-MTA: dns; %s\r\n", in->reporting_mta);
	sb_printf(&b, "X-Strictmx-Queue-ID: %s\r\n", in->queue_id);
	sb_printf(&b, "Arrival-Date: %s\r\n", arrival);
	for (size_t i = 0; i < in->n_rcpts; i++) {
		const struct dsn_rcpt *r = &in->rcpts[i];
		char last[64];
		rfc5322_date(r->last_attempt ? r->last_attempt : in->now, last, sizeof(last));
		sb_printf(&b, "\r\nFinal-Recipient: rfc822; %s\r\n", r->addr);
		sb_printf(&b, "Action: %s\r\n", in->delayed ? "delayed" : "failed");
		sb_printf(&b, "Status: %s\r\n",
		          r->status && *r->status ? r->status
		          : in->delayed           ? "4.0.0"
		                                  : "5.0.0");
		if (r->remote_mta && *r->remote_mta)
			sb_printf(&b, "Remote-MTA: dns; %s\r\n", r->remote_mta);
		if (r->diagnostic && *r->diagnostic) {
			sb_add(&b, "Diagnostic-Code: ", 17);
			sb_text(&b, r->diagnostic);
			sb_add(&b, "\r\n", 2);
		} else if (r->detail && *r->detail) {
			sb_add(&b, "Diagnostic-Code: X-strictmx; ", 29);
			sb_text(&b, r->detail);
			sb_add(&b, "\r\n", 2);
		}
		sb_printf(&b, "Last-Attempt-Date: %s\r\n", last);
	}
	sb_add(&b, "\r\n", 2);

	/* 3. the original headers */
	sb_printf(&b, "--%s\r\nContent-Type: text/rfc822-headers\r\n\r\n", in->boundary);
	if (in->orig_headers && in->orig_headers_len)
		sb_add(&b, in->orig_headers, in->orig_headers_len);
	if (b.b.len < 2 || memcmp(b.b.p + b.b.len - 2, "\r\n", 2) != 0)
		sb_add(&b, "\r\n", 2);
	sb_printf(&b, "\r\n--%s--\r\n", in->boundary);
	*len = b.b.len;
	return b.b.p;
}
