#!/bin/sh
# mkrootfs.sh DIR: make a minimal root filesystem in DIR from Debian's
# busybox-static (a static busybox and its applet links), no image pull.
set -eu
dir=${1:?usage: mkrootfs.sh DIR}
bb=$(command -v busybox) || { echo "mkrootfs: busybox not installed (apt-get install busybox-static)" >&2; exit 1; }
if [ -x "$dir/bin/sh" ]; then exit 0; fi
mkdir -p "$dir"
for d in bin sbin usr/bin usr/sbin etc proc sys dev tmp root var/log run; do mkdir -p "$dir/$d"; done
chmod 1777 "$dir/tmp"
cp "$bb" "$dir/bin/busybox"
chmod 755 "$dir/bin/busybox"
"$dir/bin/busybox" --list-full | while read -r app; do
	[ -e "$dir/$app" ] || [ -L "$dir/$app" ] || ln -s /bin/busybox "$dir/$app"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$dir/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$dir/etc/group"
printf '127.0.0.1 localhost\n' >"$dir/etc/hosts"
: >"$dir/etc/resolv.conf"
