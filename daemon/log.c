/* log.c - memvirtd's clock and log lines (stderr: the journal under systemd). */
#include "daemon.h"

#include <stdarg.h>
#include <time.h>

uint64_t md_now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

void md_log(struct md *d, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(d->o.log, fmt, ap);
	va_end(ap);
	fputc('\n', d->o.log);
	fflush(d->o.log);
}
