/* qid - queue ids; see qid.h */
#include "common/qid.h"

#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

void qid_new(char out[QID_LEN + 1])
{
	static const char alpha[] = "0123456789BCDFGHJKLMNPQRSTVWXYZ";
	static uint32_t counter;
	unsigned char rnd[6];
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
		memset(rnd, 0, sizeof(rnd));
	uint64_t t = (uint64_t)ts.tv_sec * 1000000ULL + (uint64_t)(ts.tv_nsec / 1000);
	char *o = out;
	for (int i = 0; i < 11; i++) { /* time, so ids sort by arrival */
		o[10 - i] = alpha[t % 31];
		t /= 31;
	}
	o += 11;
	uint32_t c = ++counter;
	for (int i = 0; i < 3; i++) {
		*o++ = alpha[c % 31];
		c /= 31;
	}
	for (size_t i = 0; i < sizeof(rnd); i++)
		*o++ = alpha[rnd[i] % 31];
	*o = '\0';
}
