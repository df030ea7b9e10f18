/* log.c - the library's only voice: the VMM's log callback; error strings. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void mv__log(struct mv_host *h, enum mv_log_level lvl, const char *fmt, ...)
{
	if (!h || !h->cfg.log)
		return;
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	h->cfg.log(h->cfg.log_opaque, lvl, msg);
}

MV_API const char *mv_strerror(int err)
{
	if (err == 0)
		return "success";
	if (err > 0)
		return "not a memvirt error code (expected 0 or -errno)";
	static __thread char buf[128];
	return strerror_r(-err, buf, sizeof(buf));
}

MV_API const char *mv_version(void)
{
	return MV_VERSION_STRING;
}
