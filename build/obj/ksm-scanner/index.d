build/obj/ksm-scanner/index.o: ksm-scanner/index.c ksm-scanner/ksm.h \
 libmemvirt/internal.h include/memvirt/memvirt.h include/memvirt/host.h \
 include/memvirt/vm.h libmemvirt/prim.h
ksm-scanner/ksm.h:
libmemvirt/internal.h:
include/memvirt/memvirt.h:
include/memvirt/host.h:
include/memvirt/vm.h:
libmemvirt/prim.h:
