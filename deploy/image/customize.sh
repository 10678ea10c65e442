#!/bin/sh
# mmdebstrap customize hook for build.sh: ROOTFS WHEELHOUSE VERSION.
# Installs damselfly and its dependencies from the wheelhouse into a venv at
# /opt/damselfly with the image's own python3 (offline, no pip left behind),
# links the commands into /usr/local/bin, adds the "damselfly" user (uid 65532)
# and its data directory, then checks that the command runs.
set -eu
root=$1
wheels=$2
version=$3

# A clean environment inside the chroot: the host's PIP_* settings, proxies
# and paths must not leak into the image's build.
run() {
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-0}" chroot "$root" "$@"
}

mkdir "$root/tmp/wheels"
cp "$wheels"/*.whl "$root/tmp/wheels/"
pip_wheel=$(cd "$root/tmp/wheels" && ls pip-*.whl)

run python3 -m venv --without-pip /opt/damselfly
# pip runs from its wheel (a zip on sys.path), so the venv never holds pip.
# SOURCE_DATE_EPOCH makes the compiled .pyc files hash-checked: reproducible.
run /opt/damselfly/bin/python "/tmp/wheels/$pip_wheel/pip" install --isolated --quiet \
  --no-index --no-cache-dir --disable-pip-version-check --find-links /tmp/wheels \
  "damselfly==$version"
rm -rf "$root/tmp/wheels"

for cmd in damselfly dfget; do
  ln -s "/opt/damselfly/bin/$cmd" "$root/usr/local/bin/$cmd"
done

echo "damselfly:x:65532:65532:Damselfly:/var/lib/damselfly:/usr/sbin/nologin" >>"$root/etc/passwd"
echo "damselfly:x:65532:" >>"$root/etc/group"
if [ -f "$root/etc/shadow" ]; then echo "damselfly:!:1::::::" >>"$root/etc/shadow"; fi
install -d -o 65532 -g 65532 -m 0750 "$root/var/lib/damselfly"

# Files that differ from host to host (mmdebstrap copies these in).
: >"$root/etc/resolv.conf"
echo damselfly >"$root/etc/hostname"

# Every shared library the wheels link must be in the image, and the servers must import.
missing=$(run sh -c 'find /opt/damselfly -name "*.so*" -type f -exec ldd {} + | grep "not found" || true')
if [ -n "$missing" ]; then
  echo "customize.sh: libraries the wheels need are missing from the image:" >&2
  echo "$missing" >&2
  exit 1
fi
run /opt/damselfly/bin/python -c 'import damselfly.daemon.app, damselfly.scheduler.app, damselfly.cli.main'
run /usr/local/bin/damselfly --version
