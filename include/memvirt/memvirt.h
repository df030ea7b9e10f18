/* memvirt.h - umbrella header of libmemvirt, the memory overcommit manager for KVM VMMs. */
#ifndef MEMVIRT_MEMVIRT_H
#define MEMVIRT_MEMVIRT_H

#define MV_VERSION_MAJOR 0
#define MV_VERSION_MINOR 3
#define MV_VERSION_PATCH 0
#define MV_VERSION_STRING "0.3.0"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Conventions of the whole API:
 * - Functions returning int return 0 on success or a negative errno value; nothing
 *   is changed when they fail. mv_strerror() turns that value into text. A success
 *   with more to say is a positive value, documented where a function returns one.
 * - Functions returning a pointer return NULL on failure, as documented per function.
 * - The library never prints, exits or aborts on a recoverable error; it reports
 *   through the log callback of struct mv_host_config.
 */

/* Text for a value returned by a memvirt function (0 or -errno); never NULL. */
const char *mv_strerror(int err);

/* The version of the library actually linked, e.g. "0.1.0". */
const char *mv_version(void);

#ifdef __cplusplus
}
#endif

#include <memvirt/host.h>
#include <memvirt/vm.h>
#include <memvirt/policy.h>
#include <memvirt/vhost_user.h>
#include <memvirt/attach.h>

#endif
