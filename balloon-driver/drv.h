/* drv.h - the balloon driver's private types and internal functions (freestanding). */
#ifndef MVG_DRV_H
#define MVG_DRV_H

#include "mvg.h"
#include "virtio.h"

#define MVG_MAX_INFLIGHT 64
#define MVG_MAX_REQ_PAGES 16          /* buffer pages per request: pfns_per_req <= 16384 */
#define MVG_MAX_PFNS      (MVG_MAX_REQ_PAGES * MVG_PFNS_PER_PAGE)
#define MVG_PFNS_PER_PAGE (MVG_PAGE_SIZE / 4)
#define MVG_RUN_PAGES     (MVG_RUN_SIZE / MVG_PAGE_SIZE)
#define MVG_VQ_MAX        256         /* ring entries: descriptors fill one page */
#define MVG_REPORT_RUNS   32          /* runs per free page report, as Linux */
#define MVG_NONE          UINT64_MAX  /* no page */
#define MVG_MS            1000000ull

/* Logical queues; the transport numbers them compactly (vq[].index). */
enum { VQ_INFLATE, VQ_DEFLATE, VQ_STATS, VQ_HINT, VQ_REPORT, VQ_NR };

/* One segment of a buffer: guest-physical range, device-writable or not. */
struct mvg__seg {
	uint64_t gpa;
	uint32_t len;
	bool write;
};

/* Driver side of one split virtqueue. The free list and chain links live in driver
 * memory (next[]): nothing the device writes decides which descriptors are reused. */
struct mvg__vq {
	uint16_t num;                 /* ring size (power of 2), 0 = queue absent */
	uint16_t index;               /* queue number at the transport */
	uint16_t free_head, nr_free;  /* descriptor free list */
	uint16_t avail_idx;           /* next avail index (driver's copy) */
	uint16_t last_used;           /* next used index to read */
	bool broken;                  /* the device moved used->idx too far: queue abandoned */
	uint64_t ring_gpa[2];         /* page 0: descriptor table, page 1: avail then used */
	struct vring_desc *desc;
	uint16_t *avail;              /* flags, idx, ring[num] */
	uint16_t *used;               /* flags, idx, then the used elements */
	struct vring_used_elem *used_ring;
	uint16_t next[MVG_VQ_MAX];    /* free list / chain links */
	uint16_t chain[MVG_VQ_MAX];   /* descriptors in the chain headed here, 0 = not in flight */
	uint16_t token[MVG_VQ_MAX];   /* caller's cookie, per in-flight head */
	uint32_t wcap[MVG_VQ_MAX];    /* device-writable bytes of the chain, per head */
};

/* A stack of u32 entries (PFNs or run indexes) kept in bookkeeping pages the driver
 * allocated from the platform. Each page: u64 gpa of the page below, then entries. */
#define MVG_STACK_PER_PAGE ((MVG_PAGE_SIZE - 8) / 4)
struct mvg__stack {
	uint64_t top;                 /* gpa of the top page, MVG_NONE if empty */
	uint32_t *top_va;
	uint32_t top_n;               /* entries in the top page */
	uint64_t count;               /* entries in all pages */
	uint64_t spare;               /* chain of empty pages kept for reservations */
	uint64_t nr_spare, nr_pages;  /* spare pages; all bookkeeping pages held */
	uint64_t reserved;            /* entries promised to requests in flight */
};

enum { REQ_FREE, REQ_INFLIGHT };
enum { REQ_PAGES, REQ_RUNS };

/* One inflate or deflate request: its PFN array lives in guest pages. */
struct mvg__req {
	uint8_t state, kind;
	uint32_t npfns;               /* PFNs in the buffer */
	uint64_t buf[MVG_MAX_REQ_PAGES];     /* gpa of each buffer page */
	uint32_t *buf_va[MVG_MAX_REQ_PAGES];
};

enum { HINT_IDLE, HINT_RUNNING, HINT_STOPPING };
enum { HTOK_CMD, HTOK_PAGES, HTOK_STOP };

struct mvg_balloon {
	struct mvg_platform p;
	struct mvg_config cfg;
	uint64_t features;            /* negotiated */
	unsigned req_pages;           /* buffer pages per request */
	struct mvg__vq vq[VQ_NR];
	struct mvg__req req[2][MVG_MAX_INFLIGHT]; /* [VQ_INFLATE or VQ_DEFLATE][slot] */
	unsigned busy[2];             /* requests in flight per queue */
	uint32_t scratch[MVG_MAX_PFNS]; /* a request's PFNs, gathered and sorted here */
	uint64_t freed_on_ack;        /* pages freed by deflate acks (MUST_TELL_HOST) */

	/* The balloon: pages acked by the device, as 4 KiB PFNs and 2 MiB run indexes. */
	struct mvg__stack pages, runs;
	uint32_t target;              /* num_pages, last read */
	uint64_t acked;               /* pages in the balloon per the acks: `actual` */
	uint64_t pending_in, pending_out; /* pages in inflate / deflate requests in flight */
	uint32_t actual_written;
	bool actual_valid;
	bool at_floor;
	uint64_t floor_check_ns;      /* when to look at free memory again */
	bool oom_hold;                /* deflated on OOM: no inflate until the target changes */
	uint32_t oom_target;

	uint64_t now;                 /* platform clock at the start of the step */
	uint64_t config_check_ns;

	/* Statistics buffer: one guest page, out with the device or being refilled. */
	uint64_t stats_gpa;
	uint8_t *stats_va;
	bool stats_out;

	/* Free page reporting: runs isolated into the report in flight. */
	uint64_t report_gpa[MVG_REPORT_RUNS];
	unsigned report_n;
	uint64_t report_next_ns;

	/* Free page hinting. */
	int hint_state;
	uint32_t hint_cmd;            /* free_page_hint_cmd_id, last read */
	uint32_t hint_active;         /* the id being answered */
	uint64_t hint_page_gpa;       /* out buffers: active id @0, STOP @4 */
	uint32_t *hint_page_va;
	unsigned hint_out;            /* hint buffers the device holds */
	bool hint_cmd_out, hint_stop_out, hint_exhausted;
	struct mvg__stack hint_pages, hint_runs;

	struct mvg_status st;         /* counters; target, actual, etc. filled on demand */
	int error;
	bool stopped;                 /* device needs reset, or removed */
};

/* The core's internal functions, one section per file. */

/* transport.c */
uint32_t mvg__rd(struct mvg_balloon *d, uint32_t off);
void mvg__wr(struct mvg_balloon *d, uint32_t off, uint32_t val);
int mvg__transport_probe(struct mvg_balloon *d);
int mvg__transport_negotiate(struct mvg_balloon *d, uint64_t wanted);
int mvg__transport_queue(struct mvg_balloon *d, struct mvg__vq *q, unsigned index, unsigned want);
void mvg__transport_set_status(struct mvg_balloon *d, uint32_t bits);
void mvg__transport_reset(struct mvg_balloon *d);
uint32_t mvg__config_read(struct mvg_balloon *d, uint32_t off);
void mvg__config_write(struct mvg_balloon *d, uint32_t off, uint32_t val);
uint32_t mvg__interrupt_ack(struct mvg_balloon *d);
void mvg__notify(struct mvg_balloon *d, struct mvg__vq *q);

/* virtq.c */
int mvg__vq_init(struct mvg_balloon *d, struct mvg__vq *q, unsigned num);
void mvg__vq_release(struct mvg_balloon *d, struct mvg__vq *q);
int mvg__vq_add(struct mvg__vq *q, const struct mvg__seg *s, unsigned n, uint16_t token);
void mvg__vq_kick(struct mvg_balloon *d, struct mvg__vq *q);
int mvg__vq_get(struct mvg_balloon *d, struct mvg__vq *q, uint16_t *token, uint32_t *len);

/* pagelist.c */
void mvg__stack_init(struct mvg__stack *s);
int mvg__stack_reserve(struct mvg_balloon *d, struct mvg__stack *s, uint64_t n);
void mvg__stack_unreserve(struct mvg__stack *s, uint64_t n);
int mvg__stack_push(struct mvg_balloon *d, struct mvg__stack *s, uint32_t v);
int mvg__stack_pop(struct mvg_balloon *d, struct mvg__stack *s, uint32_t *v);
void mvg__stack_trim(struct mvg_balloon *d, struct mvg__stack *s);
void mvg__stack_release(struct mvg_balloon *d, struct mvg__stack *s);
void mvg__sort_u32(uint32_t *a, uint32_t n);

/* requests.c */
int mvg__req_alloc(struct mvg_balloon *d);
void mvg__req_release(struct mvg_balloon *d);
void mvg__balloon_collect(struct mvg_balloon *d, unsigned which);
void mvg__balloon_move(struct mvg_balloon *d);
void mvg__balloon_drop_all(struct mvg_balloon *d);

/* freepage.c */
void mvg__report_step(struct mvg_balloon *d);
void mvg__report_collect(struct mvg_balloon *d);
void mvg__hint_step(struct mvg_balloon *d);
void mvg__hint_collect(struct mvg_balloon *d);
uint64_t mvg__hint_give_back(struct mvg_balloon *d, uint64_t want);
void mvg__freepage_drop(struct mvg_balloon *d);

/* balloon.c */
void mvg__fail(struct mvg_balloon *d, int err, const char *why);
uint64_t mvg__free_budget(struct mvg_balloon *d);
void mvg__write_actual(struct mvg_balloon *d);
void mvg__page_init(struct mvg_balloon *d, uint64_t gpa, uint32_t pages);

static inline uint64_t mvg__min(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}


#endif
