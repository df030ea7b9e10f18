/* lib.c - what the bare-metal guest has of a C library: mem*, a bump heap, the serial
 * console (COM1) and a small printf. */
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pvh.h"

void *memcpy(void *d, const void *s, size_t n)
{
	uint8_t *dp = d;
	const uint8_t *sp = s;
	while (n--)
		*dp++ = *sp++;
	return d;
}

void *memset(void *d, int c, size_t n)
{
	uint8_t *dp = d;
	while (n--)
		*dp++ = (uint8_t)c;
	return d;
}

void *memmove(void *d, const void *s, size_t n)
{
	uint8_t *dp = d;
	const uint8_t *sp = s;
	if (dp < sp)
		return memcpy(d, s, n);
	while (n--)
		dp[n] = sp[n];
	return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const uint8_t *x = a, *y = b;
	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x < *y ? -1 : 1;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

/* ---- heap: the allocator's run table and the driver's state; never given back ---- */

#define HEAP_SIZE (512u << 10)
static uint8_t heap[HEAP_SIZE] __attribute__((aligned(64)));
static size_t heap_used;

void *malloc(size_t size)
{
	size = (size + 63) & ~(size_t)63;
	if (size > HEAP_SIZE - heap_used)
		return NULL;
	void *p = heap + heap_used;
	heap_used += size;
	return p;
}

void *calloc(size_t n, size_t size)
{
	if (size && n > HEAP_SIZE / size)
		return NULL;
	void *p = malloc(n * size);
	if (p)
		memset(p, 0, n * size);
	return p;
}

void free(void *p)
{
	(void)p;
}

/* ---- serial console ---- */

#define COM1 0x3f8

static void putc_serial(char c)
{
	__asm__ volatile("outb %0, %1" : : "a"(c), "Nd"((uint16_t)COM1));
}

static void put_num(uint64_t v, unsigned base, int width, char pad)
{
	char buf[24];
	int n = 0;
	do {
		buf[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	while (width-- > n)
		putc_serial(pad);
	while (n)
		putc_serial(buf[--n]);
}

void kprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	for (const char *f = fmt; *f; f++) {
		if (*f != '%') {
			putc_serial(*f);
			continue;
		}
		char pad = ' ';
		int width = 0, lng = 0;
		f++;
		if (*f == '0')
			pad = '0', f++;
		while (*f >= '0' && *f <= '9')
			width = width * 10 + (*f++ - '0');
		while (*f == 'l')
			lng++, f++;
		switch (*f) {
		case 's': {
			const char *s = va_arg(ap, const char *);
			while (*s)
				putc_serial(*s++);
			break;
		}
		case 'u': case 'x': {
			uint64_t v = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
			put_num(v, *f == 'x' ? 16 : 10, width, pad);
			break;
		}
		case 'd': {
			int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
			if (v < 0)
				putc_serial('-'), v = -v;
			put_num((uint64_t)v, 10, width, pad);
			break;
		}
		default:
			putc_serial(*f);
		}
	}
	va_end(ap);
}
