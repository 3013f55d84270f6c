/* smtp/replyparse - client-side reply parsing; see replyparse.h */
#include "smtp/replyparse.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

void smtp_reply_parser_init(struct smtp_reply_parser *p)
{
	memset(p, 0, sizeof(*p));
}

/* is_enhanced - "D.D{1,3}.D{1,3}" followed by SP or end (RFC 3463) */
static size_t enhanced_len(const char *s, size_t len)
{
	size_t i = 0;
	if (len < 5 || (s[0] < '2' || s[0] > '5') || s[1] != '.')
		return 0;
	i = 2;
	for (int part = 0; part < 2; part++) {
		size_t d = 0;
		while (i < len && isdigit((unsigned char)s[i]) && d < 3) {
			i++;
			d++;
		}
		if (d == 0)
			return 0;
		if (part == 0) {
			if (i >= len || s[i] != '.')
				return 0;
			i++;
		}
	}
	if (i < len && s[i] != ' ')
		return 0;
	return i;
}

enum smtp_rp_status smtp_reply_parser_line(struct smtp_reply_parser *p, const char *line,
                                           size_t len)
{
	if (len < 3 || !isdigit((unsigned char)line[0]) || !isdigit((unsigned char)line[1]) ||
	    !isdigit((unsigned char)line[2]) || line[0] < '2' || line[0] > '5')
		return SMTP_RP_ERROR;
	int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
	if (len > 3 && line[3] != ' ' && line[3] != '-')
		return SMTP_RP_ERROR;
	if (p->lines > 0 && code != p->r.code)
		return SMTP_RP_ERROR;
	if (++p->lines > SMTP_REPLY_MAX_LINES)
		return SMTP_RP_ERROR;
	p->r.code = code;
	const char *text = len > 4 ? line + 4 : "";
	size_t tlen = len > 4 ? len - 4 : 0;
	size_t el = enhanced_len(text, tlen);
	if (el > 0 && el < sizeof(p->r.enhanced)) {
		memcpy(p->r.enhanced, text, el);
		p->r.enhanced[el] = '\0';
		text += el;
		tlen -= el;
		while (tlen && *text == ' ') {
			text++;
			tlen--;
		}
	}
	if (p->lines > 1) {
		/* EHLO keywords, one per continuation line (RFC 5321 §4.1.1.1) */
		if (tlen >= 8 && !strncasecmp(text, "STARTTLS", 8) && (tlen == 8 || text[8] == ' '))
			p->starttls = true;
		if (tlen >= 10 && !strncasecmp(text, "PIPELINING", 10) &&
		    (tlen == 10 || text[10] == ' '))
			p->pipelining = true;
	}
	size_t n = tlen < sizeof(p->r.text) - 1 ? tlen : sizeof(p->r.text) - 1;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)text[i];
		p->r.text[i] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
	}
	p->r.text[n] = '\0';
	if (len == 3 || line[3] == ' ')
		return SMTP_RP_DONE;
	return SMTP_RP_MORE;
}
