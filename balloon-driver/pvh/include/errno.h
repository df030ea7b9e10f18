/* errno.h - the bare-metal guest's: the codes balloon-driver/hosted/galloc.c returns. */
#ifndef MVG_PVH_ERRNO_H
#define MVG_PVH_ERRNO_H
#define ENOMEM 12
#define EINVAL 22
#endif
