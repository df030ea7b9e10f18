/* memtool.c - a guest's memory workload for tests: seeded memory and files, held, checked, summed. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/*
 * Every 8-byte word i of a seeded buffer is splitmix64(seed, i): the content does not depend
 * on how it is written or read, so `fill`, `file` and `sum` agree on one checksum for one
 * (MiB, seed), on the host as in the guest.
 */
#define MIB (1ul << 20)

static uint64_t word(uint64_t seed, uint64_t i)
{
	uint64_t z = seed * 0x9e3779b97f4a7c15ull + (i + 1) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

struct csum { uint64_t h, n; };       /* running checksum; n counts bytes */

static void csum_add(struct csum *c, const void *buf, size_t len)   /* len: multiple of 8 */
{
	const uint64_t *w = buf;
	for (size_t i = 0; i < len / 8; i++)
		c->h = (c->h ^ w[i]) * 0x100000001b3ull + (c->h >> 29);
	c->n += len;
}

static uint64_t csum_end(const struct csum *c)
{
	return c->h ^ c->n;
}

static void pattern(uint64_t *w, size_t words, uint64_t seed, uint64_t first)
{
	for (size_t i = 0; i < words; i++)
		w[i] = word(seed, first + i);
}

/* Map and fill mib MiB; the checksum goes to *sum. NULL when out of memory. Not reserved:
 * more than the guest has can be asked for, and touching it is what presses the guest
 * (reclaim, a balloon's deflate-on-OOM, or the OOM killer). */
static uint64_t *fill(size_t mib, uint64_t seed, uint64_t *sum)
{
	struct csum c = { 0xcbf29ce484222325ull, 0 };
	uint64_t *m = mmap(NULL, mib * MIB, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (m == MAP_FAILED)
		return NULL;
	pattern(m, mib * MIB / 8, seed, 0);
	csum_add(&c, m, mib * MIB);
	*sum = csum_end(&c);
	return m;
}

/* First 4 KiB page of m that differs from the pattern, or -1. */
static long first_bad_page(const uint64_t *m, size_t mib, uint64_t seed)
{
	for (size_t i = 0; i < mib * MIB / 8; i++)
		if (m[i] != word(seed, i))
			return (long)(i * 8 / 4096);
	return -1;
}

static int cmd_fill(size_t mib, uint64_t seed)
{
	uint64_t sum;
	if (!fill(mib, seed, &sum))
		return perror("mmap"), 1;
	printf("csum %016llx\n", (unsigned long long)sum);
	return 0;
}

/* The holder: waits for SIGUSR1/SIGTERM or secs, then checks its memory into report. */
static int holder(uint64_t *m, size_t mib, uint64_t seed, unsigned secs, const char *report)
{
	sigset_t set;
	struct timespec t = { .tv_sec = secs };
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGTERM);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sigtimedwait(&set, NULL, &t);
	long bad = first_bad_page(m, mib, seed);
	FILE *f = fopen(report, "w");
	if (!f)
		return 1;
	if (bad < 0)
		fprintf(f, "intact\n");
	else
		fprintf(f, "corrupt page %ld\n", bad);
	fclose(f);
	return bad >= 0;
}

/* Fill in a child that holds the memory; print "held PID csum X" once it is filled. */
static int cmd_hold(size_t mib, uint64_t seed, unsigned secs, const char *report)
{
	int p[2];
	uint64_t sum = 0;
	char path[64];
	if (pipe(p))
		return perror("pipe"), 1;
	pid_t pid = fork();
	if (pid < 0)
		return perror("fork"), 1;
	if (pid == 0) {
		close(p[0]);
		setsid();
		uint64_t *m = fill(mib, seed, &sum);
		if (!m || write(p[1], &sum, sizeof(sum)) != sizeof(sum))
			_exit(1);
		close(p[1]);
		freopen("/dev/null", "w", stdout);
		freopen("/dev/null", "w", stderr);
		if (!report)
			snprintf(path, sizeof(path), "/tmp/memtool.%d", (int)getpid());
		_exit(holder(m, mib, seed, secs, report ? report : path));
	}
	close(p[1]);
	if (read(p[0], &sum, sizeof(sum)) != sizeof(sum))
		return fprintf(stderr, "memtool: the holder died filling %zu MiB\n", mib), 1;
	printf("held %d csum %016llx\n", (int)pid, (unsigned long long)sum);
	return 0;
}

static int cmd_file(const char *path, size_t mib, uint64_t seed)
{
	static uint64_t buf[MIB / 8];
	struct csum c = { 0xcbf29ce484222325ull, 0 };
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return perror(path), 1;
	for (size_t i = 0; i < mib; i++) {
		pattern(buf, MIB / 8, seed, i * MIB / 8);
		csum_add(&c, buf, MIB);
		if (write(fd, buf, MIB) != (ssize_t)MIB)
			return perror(path), 1;
	}
	if (close(fd))
		return perror(path), 1;
	printf("csum %016llx\n", (unsigned long long)csum_end(&c));
	return 0;
}

/* Read up to len bytes, short only at the end of the file: bytes read or -1. */
static ssize_t read_full(int fd, char *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = read(fd, buf + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

/* Checksum of a file; a tail shorter than 8 bytes is zero-padded. */
static int cmd_sum(const char *path)
{
	static uint64_t buf[MIB / 8];
	struct csum c = { 0xcbf29ce484222325ull, 0 };
	ssize_t n;
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return perror(path), 1;
	while ((n = read_full(fd, (char *)buf, MIB)) > 0) {
		size_t pad = (size_t)(-n & 7);
		memset((char *)buf + n, 0, pad);
		csum_add(&c, buf, (size_t)n + pad);
		c.n -= pad;
	}
	close(fd);
	if (n < 0)
		return perror(path), 1;
	printf("csum %016llx\n", (unsigned long long)csum_end(&c));
	return 0;
}

static int usage(void)
{
	fprintf(stderr,
		"usage: memtool fill MIB SEED              fill MIB MiB, print its checksum, free\n"
		"       memtool hold MIB SEED SECS [REPORT] fill in a child that holds it SECS s or\n"
		"                                          until SIGUSR1/SIGTERM, then writes \"intact\"\n"
		"                                          or \"corrupt page N\" to REPORT\n"
		"                                          (/tmp/memtool.PID); prints \"held PID csum X\"\n"
		"       memtool file PATH MIB SEED         write the same content to a file\n"
		"       memtool sum PATH                   checksum a file\n");
	return 2;
}

int main(int argc, char **argv)
{
	const char *c = argc > 1 ? argv[1] : "";
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(c, "fill") && argc == 4)
		return cmd_fill(strtoul(argv[2], NULL, 0), strtoull(argv[3], NULL, 0));
	if (!strcmp(c, "hold") && (argc == 5 || argc == 6))
		return cmd_hold(strtoul(argv[2], NULL, 0), strtoull(argv[3], NULL, 0),
				(unsigned)strtoul(argv[4], NULL, 0), argc == 6 ? argv[5] : NULL);
	if (!strcmp(c, "file") && argc == 5)
		return cmd_file(argv[2], strtoul(argv[3], NULL, 0), strtoull(argv[4], NULL, 0));
	if (!strcmp(c, "sum") && argc == 3)
		return cmd_sum(argv[2]);
	return usage();
}
