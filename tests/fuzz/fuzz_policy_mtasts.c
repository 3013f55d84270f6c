/*
 * fuzz_policy_mtasts - libFuzzer target for policy/mtasts.h: the input is
 * parsed as an MTA-STS policy file (RFC 8461 §3.2) and, split at NUL-free
 * newlines, as a set of TXT records (§3.1); every accepted result is checked
 * against the contract (mode one of three, max_age in range, patterns
 * well-formed and matching themselves, id 1..32 alphanumerics).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy/mtasts.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
	do {                                                                                       \
		if (!(x))                                                                          \
			abort();                                                                   \
	} while (0)

static void check_policy(const uint8_t *data, size_t size)
{
	struct mtasts_policy p;
	char err[256];

	if (mtasts_parse_policy((const char *)data, size, &p, err, sizeof(err)) < 0) {
		CHECK(err[0] != '\0');
		CHECK(p.mx == NULL && p.n_mx == 0);
		return;
	}
	CHECK(size <= MTASTS_MAX_POLICY);
	CHECK(!strcmp(p.mode, "enforce") || !strcmp(p.mode, "testing") || !strcmp(p.mode, "none"));
	CHECK(p.max_age >= 0 && p.max_age <= MTASTS_MAX_AGE);
	CHECK(p.n_mx <= MTASTS_MAX_PATTERNS);
	CHECK(p.n_mx > 0 || !strcmp(p.mode, "none"));
	for (size_t i = 0; i < p.n_mx; i++) {
		const char *m = p.mx[i];
		size_t n = strlen(m);

		CHECK(n > 0 && n <= 255);
		CHECK(strchr(m + (m[0] == '*' ? 1 : 0), '*') == NULL);
		for (size_t k = 0; k < n; k++)
			CHECK(!(m[k] >= 'A' && m[k] <= 'Z') && (unsigned char)m[k] > 0x20);
		if (m[0] != '*')
			CHECK(mtasts_mx_match(m, m));
		else
			CHECK(!mtasts_mx_match(m, m + 2)); /* "*.x" never matches "x" */
	}
	mtasts_policy_free(&p);
}

static void check_txt(const uint8_t *data, size_t size)
{
	const char *t[16];
	size_t l[16], n = 0, start = 0;
	char id[MTASTS_ID_MAX + 1], err[256];

	for (size_t i = 0; i <= size && n < 16; i++)
		if (i == size || data[i] == '\n') {
			t[n] = (const char *)data + start;
			l[n++] = i - start;
			start = i + 1;
		}
	if (mtasts_parse_txt(t, l, n, id, err, sizeof(err)) == MTASTS_TXT_OK) {
		size_t k = strlen(id);

		CHECK(k >= 1 && k <= MTASTS_ID_MAX);
		for (size_t i = 0; i < k; i++)
			CHECK((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'z') ||
			      (id[i] >= 'A' && id[i] <= 'Z'));
	} else {
		CHECK(id[0] == '\0');
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_policy(data, size);
	check_txt(data, size);
	/* match the first line as a host against the rest as a pattern */
	if (size < 600) {
		char buf[600];
		char *nl;

		memcpy(buf, data, size);
		buf[size] = '\0';
		nl = strchr(buf, '\n');
		if (nl != NULL) {
			*nl = '\0';
			(void)mtasts_mx_match(nl + 1, buf);
		}
	}
	return 0;
}
