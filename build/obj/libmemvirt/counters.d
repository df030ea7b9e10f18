build/obj/libmemvirt/counters.o: libmemvirt/counters.c \
 libmemvirt/internal.h include/memvirt/memvirt.h include/memvirt/host.h \
 include/memvirt/vm.h libmemvirt/prim.h
libmemvirt/internal.h:
include/memvirt/memvirt.h:
include/memvirt/host.h:
include/memvirt/vm.h:
libmemvirt/prim.h:
