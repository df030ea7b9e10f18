build/obj/libmemvirt/prim.o: libmemvirt/prim.c libmemvirt/prim.h
libmemvirt/prim.h:
