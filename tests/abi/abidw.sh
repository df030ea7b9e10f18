#!/bin/sh
# abidw.sh SRC LIB - the public ABI of LIB as abidw XML on stdout: the types of the public
# headers only, no build paths (so the file depends on the ABI, not on where it was built).
exec abidw --no-corpus-path --no-comp-dir-path --headers-dir "$1/include/memvirt" --drop-private-types "$2"
