/* pthread.h - the bare-metal guest has one CPU and no threads: a mutex is a no-op. */
#ifndef MVG_PVH_PTHREAD_H
#define MVG_PVH_PTHREAD_H
typedef struct { int unused; } pthread_mutex_t;
static inline int pthread_mutex_init(pthread_mutex_t *m, const void *a) { (void)m; (void)a; return 0; }
static inline int pthread_mutex_destroy(pthread_mutex_t *m) { (void)m; return 0; }
static inline int pthread_mutex_lock(pthread_mutex_t *m) { (void)m; return 0; }
static inline int pthread_mutex_unlock(pthread_mutex_t *m) { (void)m; return 0; }
#endif
