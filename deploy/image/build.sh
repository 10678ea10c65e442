#!/usr/bin/env bash
# Build Damselfly's container image as an OCI image layout in DIR, without
# pulling any base image: a minimal Debian rootfs made by mmdebstrap from
# Debian's packages, the project's wheel and its dependencies' wheels in a venv
# at /opt/damselfly, packed as one layer with umoci. See README.md beside this.
#
#   deploy/image/build.sh DIR          # then: skopeo copy oci:DIR:TAG docker://...
#
# Environment (all optional):
#   IMAGE_TAG               the tag in the layout (default: the project's version)
#   SUITE                   Debian suite (default: bookworm); PYTHON_VERSION must match its python3
#   PYTHON_VERSION          the suite's python3 as X.Y (default: 3.11, bookworm's)
#   DEBIAN_MIRROR           default http://deb.debian.org/debian
#   DEBIAN_SECURITY_MIRROR  default http://deb.debian.org/debian-security
#   IMAGE_SOURCE            org.opencontainers.image.source (default: the git remote "origin", if any)
#   SOURCE_DATE_EPOCH       timestamps in the image (default: the last commit's time)
#   PYTHON                  the host's Python with pip, to build the wheel (default: python3)
set -euo pipefail

die() { echo "build.sh: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 DIR (DIR: where to write the OCI image layout; must not exist or be empty)"
OUT=$1
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  die "$OUT exists and is not empty; give a new directory"
fi
[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap --mode=root chroots, umoci keeps file owners)"
for tool in mmdebstrap umoci tar chroot; do
  command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install mmdebstrap umoci)"
done

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
PYTHON=${PYTHON:-python3}
SUITE=${SUITE:-bookworm}
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip (apt-get install python3-pip)"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$SRC" log -1 --format=%ct 2>/dev/null || date +%s)
fi
[[ $SOURCE_DATE_EPOCH =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH must be seconds since 1970, not '$SOURCE_DATE_EPOCH'"
export SOURCE_DATE_EPOCH
CREATED=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
REVISION=$(git -C "$SRC" rev-parse HEAD 2>/dev/null || true)
IMAGE_SOURCE=${IMAGE_SOURCE:-$(git -C "$SRC" remote get-url origin 2>/dev/null || true)}
IMAGE_SOURCE=$(printf '%s' "$IMAGE_SOURCE" | sed -E 's#^([a-z+]+://)[^/@]*@#\1#')  # no credentials in a label

DEB_ARCH=$(dpkg --print-architecture)
case "$DEB_ARCH" in
  amd64) PY_ARCH=x86_64 ;;
  arm64) PY_ARCH=aarch64 ;;
  *) die "no wheel platform known for Debian architecture $DEB_ARCH" ;;
esac

WORK=$(mktemp -d "${TMPDIR:-/tmp}/damselfly-image.XXXXXX")
cleanup() {
  # Never delete through a mount left behind by an interrupted mmdebstrap.
  if grep -q " $WORK/" /proc/self/mounts; then
    echo "build.sh: something is still mounted under $WORK; unmount it, then remove $WORK" >&2
    return
  fi
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
trap "exit 130" INT TERM HUP
started=$(date +%s)
step() { echo "== [$(( $(date +%s) - started ))s] $*" >&2; }

# 1. Wheels: the project's, then every dependency's as a binary wheel for the
#    image's Python (not the host's), and pip itself to install them with.
step "wheels for python $PYTHON_VERSION ($PY_ARCH)"
WHEELS=$WORK/wheels
# From a copy of the tree (uncommitted changes included), so the build leaves
# no build/ or *.egg-info behind in it.
mkdir "$WORK/src"
tar -C "$SRC" --exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml README.md src |
  tar -C "$WORK/src" -xf -
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WHEELS" "$WORK/src"
WHEEL=$(ls "$WHEELS"/damselfly-*.whl)
# The version and licence labels come from the wheel's own metadata.
read -r VERSION LICENSES < <("$PYTHON" - "$WHEEL" <<'PY'
import sys, zipfile
from email.parser import HeaderParser
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    meta = HeaderParser().parsestr(z.read(name).decode())
print(meta["Version"], meta.get("License-Expression") or meta.get("License") or "NOASSERTION")
PY
)
TAG=${IMAGE_TAG:-$VERSION}
platforms=()
for minor in $(seq 40 -1 17); do platforms+=(--platform "manylinux_2_${minor}_${PY_ARCH}"); done
platforms+=(--platform "manylinux2014_${PY_ARCH}")
if [ "$PY_ARCH" = x86_64 ]; then
  platforms+=(--platform manylinux2010_x86_64 --platform manylinux1_x86_64)
fi
# pip evaluates the dependencies' markers with the host's Python: a dependency that only an
# older patch release needs is named here (redis wants async-timeout below 3.11.3; bookworm's
# python3 is 3.11.2).
FOR_THE_IMAGE=("async-timeout>=4.0.3")
if ! "$PYTHON" -m pip download --quiet --dest "$WHEELS" --only-binary=:all: \
  --implementation cp --python-version "$PYTHON_VERSION" --abi "cp${PYTHON_VERSION/./}" \
  "${platforms[@]}" "$WHEEL" pip "${FOR_THE_IMAGE[@]}" >"$WORK/pip.log" 2>&1; then
  grep -v "is ignored: it is neither" "$WORK/pip.log" >&2
  die "could not get binary wheels of the dependencies for python $PYTHON_VERSION ($PY_ARCH); see above"
fi

# 2. The rootfs: Essential packages plus python3, CA certificates and the C++
#    runtime (grpcio's wheel links it), merged /usr, no recommends, no docs,
#    man pages or locales (copyright files stay).
step "rootfs ($SUITE) with mmdebstrap"
ROOTFS=$WORK/rootfs
mmdebstrap --quiet --mode=root --variant=essential --format=directory \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --include=python3,ca-certificates,libstdc++6 \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --customize-hook="\"$HERE/customize.sh\" \"\$1\" \"$WHEELS\" \"$VERSION\"" \
  "$SUITE" "$ROOTFS" \
  "deb $DEBIAN_MIRROR $SUITE main" \
  "deb $DEBIAN_MIRROR $SUITE-updates main" \
  "deb $DEBIAN_SECURITY_MIRROR $SUITE-security main"

# apt is not in the image (variant essential), so its state from the build goes too.
rm -rf "$ROOTFS/etc/apt" "$ROOTFS/var/lib/apt" "$ROOTFS/var/cache/apt" "$ROOTFS/var/log/apt"
# dpkg's and debconf's backups of their databases.
find "$ROOTFS/var" -xdev -name '*-old' -type f -delete

# 3. One layer: a reproducible tar of the rootfs (sorted, owners as numbers,
#    times clamped to SOURCE_DATE_EPOCH); /dev, /proc, /sys, /run, /tmp empty.
step "layer"
tar --create --file "$WORK/layer.tar" --directory "$ROOTFS" \
  --sort=name --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' --exclude='./tmp/*' \
  .

# 4. The OCI layout: the layer, then the config (entrypoint, user, labels).
# Written in the work directory and moved to DIR once whole: a failed build
# leaves nothing at DIR.
step "OCI layout"
LAYOUT=$WORK/layout
umoci init --layout "$LAYOUT"
umoci new --image "$LAYOUT:$TAG"
history=(--history.created "$CREATED" --history.author "Damselfly")
umoci raw add-layer --image "$LAYOUT:$TAG" "${history[@]}" \
  --history.created_by "deploy/image/build.sh: mmdebstrap $SUITE + damselfly $VERSION" "$WORK/layer.tar"
labels=(
  "org.opencontainers.image.title=damselfly"
  "org.opencontainers.image.description=P2P file and container-image distribution, speaking Dragonfly's v2 API"
  "org.opencontainers.image.version=$VERSION"
  "org.opencontainers.image.licenses=$LICENSES"
  "org.opencontainers.image.created=$CREATED"
  "org.opencontainers.image.base.name=debian:$SUITE (mmdebstrap, essential + python3)"
)
[ -n "$REVISION" ] && labels+=("org.opencontainers.image.revision=$REVISION")
[ -n "$IMAGE_SOURCE" ] && labels+=("org.opencontainers.image.source=$IMAGE_SOURCE")
config=(
  --created "$CREATED" --author "Damselfly" --os linux --architecture "$DEB_ARCH"
  --config.user 65532:65532
  --config.entrypoint /usr/local/bin/damselfly --config.cmd --help
  --config.workingdir /var/lib/damselfly
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  --config.env LANG=C.UTF-8
  --config.env PYTHONUNBUFFERED=1
  --config.volume /var/lib/damselfly
  --config.exposedports 4000/tcp --config.exposedports 4001/tcp --config.exposedports 4002/tcp
  --config.exposedports 4005/tcp --config.exposedports 8002/tcp
)
for l in "${labels[@]}"; do config+=(--config.label "$l" --manifest.annotation "$l"); done
umoci config --image "$LAYOUT:$TAG" "${config[@]}" --no-history
umoci gc --layout "$LAYOUT"
size=$(du -sb "$LAYOUT/blobs" | cut -f1)

mkdir -p "$OUT"
rmdir "$OUT"
mv "$LAYOUT" "$OUT"
step "done: $OUT:$TAG (damselfly $VERSION, $(( size / 1024 / 1024 )) MiB compressed)"
echo "$OUT:$TAG"
