#!/usr/bin/env bash
# Root filesystems of the images critest pulls, made offline from Debian
# packages (busybox, nginx) and the host's util-linux/procps, plus two tiny
# static Go programs of this directory (images/pause, images/nnp).
#
# usage: rootfs.sh OUT DEBCACHE
#   OUT/base        Debian's dynamic busybox, its applets as hard links, libc,
#                   ipcs and pgrep with their libraries, busybox-image users
#   OUT/nginx       layer: nginx binary, libraries, config listening on :80
#   OUT/nginx-12003 layer: nginx config listening on :12003 (host network)
#   OUT/httpd       layer: httpd-foreground running busybox httpd on :80
#   OUT/nonewprivs  layer: setuid-root nnp printing its effective uid
#   OUT/group       layer: passwd/group with default-user in group 50000
#   OUT/pause       the pause program alone
# DEBCACHE keeps the downloaded .deb files between runs.
set -euo pipefail
out=${1:?usage: rootfs.sh OUT DEBCACHE}
debs=${2:?usage: rootfs.sh OUT DEBCACHE}
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$out"
mkdir -p "$out" "$debs"

# fetch PKG...: make sure DEBCACHE holds the packages' .deb files.
fetch() {
	local p missing=()
	for p in "$@"; do
		compgen -G "$debs/${p}_*.deb" >/dev/null || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	# apt-get download needs package lists; a fresh machine may have none.
	(cd "$debs" && apt-get download "${missing[@]}" >/dev/null 2>&1) ||
		(apt-get update -qq && cd "$debs" && apt-get download "${missing[@]}" >/dev/null)
}

# install ROOT SRC DEST: copy an executable and the shared objects the dynamic
# linker resolves for it into ROOT, at the same paths as on the host.
install_bin() {
	local root=$1 src=$2 dest=$3 lib
	mkdir -p "$root$(dirname "$dest")"
	cp -L "$src" "$root$dest"
	for lib in $(ldd "$src" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (.*/\1/p'); do
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
}

fetch busybox nginx nginx-common
x=$(mktemp -d)
trap 'rm -rf "$x"' EXIT
for d in "$debs"/busybox_*.deb "$debs"/nginx_*.deb "$debs"/nginx-common_*.deb; do
	dpkg-deb -x "$d" "$x"
done

# --- base: busybox, like registry.k8s.io/e2e-test-images/busybox.
# Debian's dynamic busybox, not busybox-static: the static build runs applets
# from sh without a PATH lookup, so masking /bin/ls (MaskedPaths spec) would
# not be seen. Applets are hard links: masking a symlink would mask its
# target, /bin/busybox, and with it every command.
b=$out/base
mkdir -p "$b"/{bin,sbin,etc,root,home,proc,sys,dev,tmp,run,var/run,var/www,usr/bin,usr/sbin,usr/local/bin}
chmod 1777 "$b/tmp"
install_bin "$b" "$x/bin/busybox" /bin/busybox
for a in $("$x/bin/busybox" --list); do
	[ "$a" = busybox ] || ln "$b/bin/busybox" "$b/bin/$a"
done
# The specs run `ipcs -m` and `pgrep`, which Debian's busybox lacks.
install_bin "$b" "$(command -v ipcs)" /usr/bin/ipcs
install_bin "$b" "$(command -v pgrep)" /usr/bin/pgrep
# Users and groups the specs name (www-data 33, nobody).
printf '%s\n' root:x:0:0:root:/root:/bin/sh daemon:x:1:1:daemon:/usr/sbin:/bin/false \
	bin:x:2:2:bin:/bin:/bin/false sys:x:3:3:sys:/dev:/bin/false \
	mail:x:8:8:mail:/var/spool/mail:/bin/false www-data:x:33:33:www-data:/var/www:/bin/false \
	nobody:x:65534:65534:nobody:/home:/bin/false >"$b/etc/passwd"
printf '%s\n' root:x:0: daemon:x:1: bin:x:2: sys:x:3: adm:x:4: tty:x:5: disk:x:6: \
	mail:x:8: wheel:x:10:root www-data:x:33: staff:x:50: users:x:100: nogroup:x:65534: >"$b/etc/group"
cut -d: -f1 "$b/etc/passwd" | sed 's/$/:*:10933:0:99999:7:::/' >"$b/etc/shadow"
chmod 640 "$b/etc/shadow"

# --- group: test-image-predefined-group (uid 1000 in group 50000).
g=$out/group
mkdir -p "$g/etc" "$g/home/default-user"
cp "$b/etc/passwd" "$b/etc/group" "$b/etc/shadow" "$g/etc/"
echo 'default-user:x:1000:1000::/home/default-user:/bin/sh' >>"$g/etc/passwd"
printf '%s\n' default-user:x:1000: group-defined-in-image:x:50000:default-user >>"$g/etc/group"
echo 'default-user:!:20000:0:99999:7:::' >>"$g/etc/shadow"
chown 1000:1000 "$g/home/default-user"

# --- nginx: the specs read /var/run/nginx.pid and look for "master process".
n=$out/nginx
install_bin "$n" "$x/usr/sbin/nginx" /usr/sbin/nginx
mkdir -p "$n/etc/nginx" "$n/usr/share/nginx/html" "$n/var/log/nginx" "$n/var/lib/nginx"
cp "$x/etc/nginx/mime.types" "$n/etc/nginx/"
cp "$x/usr/share/nginx/html/index.html" "$n/usr/share/nginx/html/"
nginx_conf() { # PORT
	printf '%s\n' 'user www-data;' 'worker_processes 1;' 'pid /var/run/nginx.pid;' \
		'error_log stderr notice;' 'events { worker_connections 64; }' 'http {' \
		'  include /etc/nginx/mime.types;' '  access_log /dev/stdout;' \
		"  server { listen $1; location / { root /usr/share/nginx/html; } }" '}'
}
nginx_conf 80 >"$n/etc/nginx/nginx.conf"
mkdir -p "$out/nginx-12003/etc/nginx"
nginx_conf 12003 >"$out/nginx-12003/etc/nginx/nginx.conf"

# --- httpd: the multi-container specs want a web server on :80 whose log
# says "httpd"; busybox httpd behind the image's usual entry point does.
h=$out/httpd
mkdir -p "$h/usr/local/bin" "$h/usr/local/apache2/htdocs"
echo '<html><body><h1>It works!</h1></body></html>' >"$h/usr/local/apache2/htdocs/index.html"
printf '%s\n' '#!/bin/sh' 'echo "httpd-foreground: busybox httpd on :80"' \
	'exec httpd -f -v -p 80 -h /usr/local/apache2/htdocs' >"$h/usr/local/bin/httpd-foreground"
chmod 755 "$h/usr/local/bin/httpd-foreground"

# --- nonewprivs and pause: static programs of this directory.
mkdir -p "$out/nonewprivs/usr/local/bin" "$out/pause"
(
	cd "$here"
	export CGO_ENABLED=0 GOFLAGS=-mod=vendor
	go build -trimpath -ldflags '-s -w' -o "$out/nonewprivs/usr/local/bin/nnp" ./images/nnp
	go build -trimpath -ldflags '-s -w' -o "$out/pause/pause" ./images/pause
)
chown 0:0 "$out/nonewprivs/usr/local/bin/nnp"
chmod 4755 "$out/nonewprivs/usr/local/bin/nnp"
