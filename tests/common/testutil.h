/* testutil.h - helpers shared by the cmocka tests: guest memory, PFNs, content. */
#ifndef MV_TESTUTIL_H
#define MV_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TPAGE 4096ul

/* Private anonymous "guest RAM" of n pages, 2 MiB aligned, every page touched. */
uint8_t *tu_guest_alloc(size_t pages);
void tu_guest_free(uint8_t *mem, size_t pages);

/* Physical frame of the page at addr (via /proc/self/pagemap; needs root), 0 if absent. */
uint64_t tu_pfn(const void *addr);
/* True if the page is mapped to the kernel's shared zero page or not populated. */
bool tu_is_zero_pfn(const void *addr);

/* Number of mappings (VMAs) overlapping [addr, addr+len), from /proc/self/maps. */
long tu_vmas_in(const void *addr, size_t len);

/* Descriptors open in this process; its mappings of memfds (guest memory a vhost-user
 * backend maps), or its shared mappings of any file. -1 if /proc cannot be read. */
long tu_open_fds(void);
long tu_memfd_mappings(void);
long tu_shared_mappings(void);

/* Fill a page with bytes derived from seed (seed 0 = zero page). */
void tu_fill(void *page, uint64_t seed);

/* Deterministic PRNG (splitmix64). */
uint64_t tu_rand(uint64_t *state);

/* A host with a quiet config suitable for tests; asserts success. */
struct mv_host;
struct mv_host *tu_host(void);

/* Skip the calling cmocka test with a reason printed. */
#define TU_SKIP(...) do { printf("[  SKIP    ] " __VA_ARGS__); printf("\n"); skip(); } while (0)

/* The member at a dotted path ("host.savings.zero_bytes") of a JSON object, or NULL. */
struct json_object;
struct json_object *tu_json_at(struct json_object *o, const char *path);

#endif
