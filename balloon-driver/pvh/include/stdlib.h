/* stdlib.h - the bare-metal guest's heap: a bump allocator below 2 MiB (pvh/lib.c). */
#ifndef MVG_PVH_STDLIB_H
#define MVG_PVH_STDLIB_H
#include <stddef.h>
void *calloc(size_t n, size_t size);
void *malloc(size_t size);
void free(void *p);
#endif
