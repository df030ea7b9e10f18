/* vubridge.h - the hosted port's VMM side of a vhost-user balloon: a virtio-mmio register
 * file for the driver, each access translated to the vhost-user protocol. */
#ifndef MVG_VUBRIDGE_H
#define MVG_VUBRIDGE_H

#include <stdbool.h>
#include <stdint.h>

/*
 * What QEMU's vhost-user-device does for a guest, for the simulated guest: the driver
 * sees a virtio-mmio (version 2) balloon; the device is a vhost-user backend on the other
 * end of a unix socket, which maps the guest's RAM from its memory file.
 *
 * Translation: DeviceFeatures are the backend's GET_FEATURES (bit 30, protocol features,
 * left out); FEATURES_OK is SET_FEATURES then SET_MEM_TABLE; QueueNumMax is the bridge's
 * queue_max for the queues of the negotiated layout; QueueReady is SET_VRING_CALL, NUM,
 * BASE, ADDR (host addresses of the rings), KICK, ENABLE; QueueReady 0 is GET_VRING_BASE;
 * QueueNotify writes the ring's kick eventfd; config space is GET_CONFIG / SET_CONFIG;
 * Status 0 is RESET_DEVICE. Every request but the GETs asks for an ack (REPLY_ACK).
 *
 * Interrupts: a thread of the bridge waits on the rings' call eventfds (InterruptStatus
 * bit 0), on the backend channel (CONFIG_CHANGE: bit 1, ConfigGeneration moves) and on
 * the connection's end; it sets the bits and calls cfg->interrupt.
 *
 * Never blocking for long: every wait for the backend is bounded by timeout_ns. When the
 * connection ends or a wait runs out, the bridge is broken for good: the socket is shut
 * down, Status reads DEVICE_NEEDS_RESET (a config interrupt tells the driver), config
 * reads 0, and no access touches the socket any more.
 */
struct mvg__vub;

/* A stretch of guest RAM: guest-physical gpa, mapped at hva, at offset in the memfd. */
struct mvg__vub_region {
	uint64_t gpa, bytes, offset;
	void *hva;
};

#define MVG__VUB_MAX_REGIONS 8

struct mvg__vub_config {
	int sock;                 /* a connected unix stream socket to the backend: the bridge's
	                             from a successful mvg__vub_new, the caller's on failure */
	int memfd;                /* guest RAM's file; the caller's, open for the bridge's life */
	const struct mvg__vub_region *regions; /* copied; 1..MVG__VUB_MAX_REGIONS */
	unsigned nregions;
	unsigned queue_max;       /* QueueNumMax the driver sees (a power of 2) */
	uint64_t timeout_ns;      /* bound on each wait for the backend */
	void (*interrupt)(void *opaque); /* from the bridge's thread */
	void *opaque;
};

/* Connect to a listening vhost-user socket: a socket descriptor or -errno. */
int mvg__vub_connect(const char *path);

/* Handshake as virtio_uml (SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES with
 * REPLY_ACK, BACKEND_REQ, CONFIG and RESET_DEVICE when offered, SET_BACKEND_REQ_FD) and
 * start the interrupt thread. 0, -EPROTONOSUPPORT (a backend without protocol features,
 * REPLY_ACK or CONFIG), -ETIMEDOUT, -ECONNRESET, -EPROTO (a malformed reply), -errno. */
int mvg__vub_new(const struct mvg__vub_config *cfg, struct mvg__vub **out);
/* Stop the thread, close every descriptor of the bridge (the socket too). Sends nothing:
 * reset the device first (Status 0). NULL is a no-op. */
void mvg__vub_free(struct mvg__vub *v);

/* The driver's 32-bit accesses to the device window; any thread, serialised inside. */
uint32_t mvg__vub_read(struct mvg__vub *v, uint32_t off);
void mvg__vub_write(struct mvg__vub *v, uint32_t off, uint32_t val);

struct mvg__vub_info {
	int error;                /* 0 while the connection works; else why it ended */
	uint64_t requests;        /* sent on the connection */
	uint64_t refused;         /* of those, acked with an error */
	uint64_t ring_irqs;       /* call eventfd wake-ups taken */
	uint64_t config_irqs;     /* CONFIG_CHANGE messages taken */
	uint64_t protocol_features; /* negotiated */
};

void mvg__vub_info(struct mvg__vub *v, struct mvg__vub_info *out);

#endif
