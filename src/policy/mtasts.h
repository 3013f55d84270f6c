/*
 * policy/mtasts - the MTA-STS (RFC 8461) parsers: the _mta-sts TXT record
 * (§3.1), the policy file (§3.2) and MX pattern matching (§4.1). Pure, no
 * I/O: both inputs come from the network (DNS, HTTPS), so every byte is
 * checked and the parsers are fuzzed (tests/fuzz/fuzz_policy_mtasts.c).
 */
#ifndef STRICTMX_POLICY_MTASTS_H
#define STRICTMX_POLICY_MTASTS_H

#include <stdbool.h>
#include <stddef.h>

#define MTASTS_MAX_POLICY   65536    /* bytes of a policy file we read at most */
#define MTASTS_MAX_AGE      31557600 /* RFC 8461 §3.2: max_age at most (about a year) */
#define MTASTS_MAX_PATTERNS 128      /* mx: lines in one policy */
#define MTASTS_ID_MAX       32       /* RFC 8461 §3.1: id = 1*32(ALPHA / DIGIT) */

struct mtasts_policy {
	char mode[16]; /* "enforce", "testing" or "none" */
	char **mx;     /* patterns, lowercase: "mx1.example.org", "*.example.org" */
	size_t n_mx;
	long max_age;
};

enum mtasts_txt_status {
	MTASTS_TXT_OK,      /* exactly one v=STSv1 record, valid; id filled */
	MTASTS_TXT_NONE,    /* no record begins with v=STSv1 */
	MTASTS_TXT_INVALID, /* several v=STSv1 records, or the one is malformed */
};

/*
 * mtasts_parse_txt - pick the MTA-STS record among the n TXT records
 * txt[i] (len[i] bytes each, the character-strings already concatenated) and
 * read its id into id[MTASTS_ID_MAX + 1]. err says why for INVALID.
 */
enum mtasts_txt_status mtasts_parse_txt(const char *const *txt, const size_t *len, size_t n,
                                        char *id, char *err, size_t errlen);

/*
 * mtasts_parse_policy - parse a policy file body[0..len). 0 and *out filled
 * (release with mtasts_policy_free), or -1 with err (and *out empty).
 */
int mtasts_parse_policy(const char *body, size_t len, struct mtasts_policy *out, char *err,
                        size_t errlen);
void mtasts_policy_free(struct mtasts_policy *p);

/*
 * mtasts_mx_match - RFC 8461 §4.1: does host (an MX name, any case, trailing
 * dot allowed) match pattern? "*.example.org" matches exactly one label in
 * place of the star: "mx.example.org", not "example.org" nor "a.b.example.org".
 */
bool mtasts_mx_match(const char *pattern, const char *host);
/* mtasts_policy_covers - does any mx: pattern of p match host? */
bool mtasts_policy_covers(const struct mtasts_policy *p, const char *host);

#endif
