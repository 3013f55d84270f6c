/*
 * fuzz_check_tlsrpt - libFuzzer target for the TLS-RPT record parser
 * (check/tlsrpt.c, RFC 8460 §3): the input, split at newlines, is a set of
 * TXT records. Every result is checked against the contract: OK has 1..MAX
 * rua URIs, each mailto: or https: of printable ASCII; the stored record is
 * printable ASCII and NUL-terminated; NONE and INVALID carry a reason.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "check/check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
	do {                                                                                       \
		if (!(x))                                                                          \
			abort();                                                                   \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *t[16];
	size_t l[16], n = 0, start = 0;
	struct check_tlsrpt r;

	for (size_t i = 0; i <= size && n < 16; i++) {
		if (i == size || data[i] == '\n') {
			t[n] = (const char *)data + start;
			l[n] = i - start;
			n++;
			start = i + 1;
		}
	}
	enum check_tlsrpt_status st = check_tlsrpt_parse(t, l, n, &r);
	CHECK(st == r.status);
	CHECK(memchr(r.record, '\0', sizeof(r.record)) != NULL);
	for (size_t i = 0; r.record[i]; i++)
		CHECK(r.record[i] >= 0x20 && r.record[i] < 0x7f);
	switch (st) {
	case CHECK_TLSRPT_OK:
		CHECK(r.n_rua >= 1 && r.n_rua <= CHECK_MAX_RUA);
		for (size_t i = 0; i < r.n_rua; i++) {
			const char *u = r.rua[i];
			CHECK(!strncasecmp(u, "mailto:", 7) || !strncasecmp(u, "https://", 8));
			for (size_t k = 0; u[k]; k++)
				CHECK(u[k] > 0x20 && u[k] < 0x7f && u[k] != ',' && u[k] != ';');
		}
		CHECK(strncmp(r.record, "v=TLSRPTv1", 10) == 0);
		break;
	case CHECK_TLSRPT_NONE:
	case CHECK_TLSRPT_INVALID:
		CHECK(r.error[0] != '\0');
		CHECK(r.n_rua == 0 || st == CHECK_TLSRPT_NONE);
		break;
	case CHECK_TLSRPT_ERROR:
		abort(); /* only the DNS layer sets it */
	}
	return 0;
}
