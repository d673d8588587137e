#!/usr/bin/env bash
# Sourced by the README's two commands (image-build/demo and tests/run):
# installs the Debian packages a fresh machine lacks, checks the host tools, and
# builds the cairn-image tool; `cairn_components` then builds the pinned upstream
# components. Components are cached outside the
# repository ($CAIRN_CACHE, default ~/.cache/cairn) keyed by the lockfile, so only
# the first run on a machine builds them (~20 min on 2 cores); later runs take seconds.
set -euo pipefail

HOST_PACKAGES=(
  qemu-system-x86 qemu-utils ovmf          # booting images (always -accel tcg)
  squashfs-tools binutils e2fsprogs        # mksquashfs, objcopy (UKI), mke2fs
  fdisk gdisk cpio xz-utils zstd           # tests check images with the real tools
  gcc libc6-dev pkg-config                 # runc is built with cgo (libseccomp comes pinned)
  protobuf-compiler                        # etcd-client's gRPC code generation
  libssl-dev                               # cairn-gitops: git2's HTTPS (openssl-sys)
  dpkg-dev ca-certificates git
  curl openssl                             # tests reach HTTPS endpoints and read certificates
  openssh-server gnupg                     # the git server fixture's sshd; signed test commits
)

missing=()
for p in "${HOST_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
elif ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
  apt-get update -qq   # `apt-get download` of pinned .debs needs the package lists
fi

# What the suite runs from the host, each with the package that brings it: a
# missing one stops here, named, instead of failing a test an hour later.
HOST_TOOLS=(
  qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils
  /usr/share/OVMF/OVMF_CODE_4M.fd:ovmf /usr/share/OVMF/OVMF_VARS_4M.fd:ovmf
  mksquashfs:squashfs-tools unsquashfs:squashfs-tools objcopy:binutils
  mke2fs:e2fsprogs sfdisk:fdisk sgdisk:gdisk cpio:cpio xz:xz-utils zstd:zstd
  gcc:gcc pkg-config:pkg-config protoc:protobuf-compiler dpkg-deb:dpkg-dev
  git:git /usr/sbin/sshd:openssh-server ssh-keygen:openssh-client gpg:gnupg
  curl:curl openssl:openssl unshare:util-linux
)
for t in "${HOST_TOOLS[@]}"; do
  tool="${t%%:*}" package="${t#*:}"
  if [[ "$tool" == /* ]]; then [ -e "$tool" ]; else command -v "$tool" >/dev/null; fi ||
    { echo "setup: $tool is missing: install the Debian package $package" >&2; exit 1; }
done

export PATH="/usr/local/go/bin:$HOME/.cargo/bin:$PATH"
# Rust builds go to a target directory in the same cache, shared by every clone
# on the machine: a fresh clone (CI's) compiles only the workspace's own crates.
# Cargo's fingerprints (versions, features, flags, rustc, source mtimes) decide
# what is reused, so the cache can only save time, never change a result.
CAIRN_CACHE="${CAIRN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cairn}"
export CAIRN_CACHE
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CAIRN_CACHE/target}"
cargo build --release --locked -p cairn-image
CAIRN_IMAGE="$CARGO_TARGET_DIR/release/cairn-image"
export CAIRN_IMAGE
# The pinned upstream components, built or checked against the cache; a
# function, so tests/run can lint first and fail fast.
cairn_components() { "$CAIRN_IMAGE" components build; }
