#!/bin/sh
# mkroot.sh - build the UML guests' root directory: busybox and its applets, init, memtool, virtio_balloon.ko.
# usage: mkroot.sh ROOT MEMTOOL   (ROOT is replaced whole; the module is optional)
set -eu
root=$1 memtool=$2 here=$(dirname "$0")
busybox=$(command -v busybox) || { echo "mkroot: busybox is missing (busybox-static)" >&2; exit 1; }
if ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked' && ldd "$busybox" >/dev/null 2>&1; then
	echo "mkroot: $busybox is dynamically linked; install busybox-static" >&2
	exit 1
fi

new=$root.new
rm -rf "$new"
mkdir -p "$new/bin" "$new/sbin" "$new/usr/bin" "$new/usr/sbin" "$new/proc" "$new/sys" \
	"$new/dev" "$new/tmp" "$new/root" "$new/etc" "$new/lib/modules"
cp "$busybox" "$new/bin/busybox"
for a in $("$busybox" --list-full); do
	[ -e "$new/$a" ] || ln -s /bin/busybox "$new/$a"
done
cp "$here/init" "$new/init"
cp "$memtool" "$new/bin/memtool"

# The module of the kernel linux.uml reports, else the newest one there is.
ver=$(/usr/bin/linux.uml --version 2>/dev/null || true)
ko=$(find "/usr/lib/uml/modules/$ver" -name virtio_balloon.ko 2>/dev/null | head -n 1)
[ -n "$ko" ] || ko=$(find /usr/lib/uml/modules -name virtio_balloon.ko 2>/dev/null | sort -V | tail -n 1)
if [ -n "$ko" ]; then
	cp "$ko" "$new/lib/modules/virtio_balloon.ko"
else
	echo "mkroot: no virtio_balloon.ko under /usr/lib/uml/modules: guests will have no balloon" >&2
fi
rm -rf "$root"
mv "$new" "$root"
