/*
 * fuzz_common_config - libFuzzer target for the configuration parser: the
 * input is written to a file and read with config_load + config_finish; any
 * outcome is fine but a crash, a leak, or an error message without the
 * "FILE:" prefix.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char path[] = "/tmp/smx-fuzz-config-XXXXXX";
	int fd = mkstemp(path);
	if (fd < 0)
		return 0;
	if (write(fd, data, size) != (ssize_t)size) {
		close(fd);
		unlink(path);
		return 0;
	}
	close(fd);

	struct config c;
	char err[1024] = "";
	config_defaults(&c);
	if (config_load(&c, path, err, sizeof(err)) < 0) {
		if (strncmp(err, path, strlen(path)) != 0)
			abort(); /* every error names the file */
	} else {
		err[0] = '\0';
		(void)config_finish(&c, err, sizeof(err));
	}
	config_free(&c);
	unlink(path);
	return 0;
}
