//! The whole image, from the lockfile to `<out>/<name>.raw` and `.qcow2`: the root
//! filesystem (init, etcd, e2fsprogs, their libraries, the kernel modules a node
//! needs, /etc), the initramfs (the init, its libraries, the drivers that reveal
//! the disk), and the disk assembly.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::assemble::{self, ImageInputs, ImageOutputs};
use crate::components::{self, BuildOptions, BuildReport, Cache, Lockfile};
use crate::cpio::CpioBuilder;
use crate::kmodules::ModuleTree;
use crate::oci::{self, ImageSpec};
use crate::rootfs::{LibResolver, Tree, install_libraries};

/// Where the systemd-boot-efi package keeps systemd-boot and systemd-stub.
pub const SYSTEMD_BOOT_EFI_DIR: &str = "usr/lib/systemd/boot/efi";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Components(#[from] components::Error),
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
    #[error(transparent)]
    Modules(#[from] crate::kmodules::ModulesError),
    #[error(transparent)]
    Cpio(#[from] crate::cpio::CpioError),
    #[error(transparent)]
    Assemble(#[from] assemble::AssembleError),
    #[error(transparent)]
    Oci(#[from] crate::oci::OciError),
    #[error(transparent)]
    StaticBuild(#[from] crate::static_bins::StaticBuildError),
    #[error("{0}")]
    Input(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The Debian packages whose files the image carries (besides the kernel): the
/// tools below and every library they (and the init) link against.
const USERLAND_DEBS: &[&str] = &[
    "libc6",
    "libgcc-s1",
    "e2fsprogs",
    "libext2fs2",
    "libcom-err2",
    "libss2",
    "libblkid1",
    "libuuid1",
    "nftables",
    "libnftables1",
    "libjansson4",
    "libmnl0",
    "libnftnl11",
    "libxtables12",
    "libgmp10",
    "libedit2",
    "libbsd0",
    "libmd0",
    "libtinfo6",
    "mount",
    "libmount1",
    "libselinux1",
    "libpcre2-8-0",
    "libsmartcols1",
    // cairn-gitops (git2: HTTPS through OpenSSL, zlib).
    "libssl3",
    "zlib1g",
];
/// Tools from those packages: (package, path in the package, path in the image).
/// e2fsprogs formats and grows STATE and DATA; `nft` is what kube-proxy's nftables
/// mode and the CNI plugins' nftables backend run; kubelet mounts tmpfs volumes
/// (secrets, projected service-account tokens) by running `mount`/`umount`.
const DEB_TOOLS: &[(&str, &str, &str)] = &[
    ("e2fsprogs", "sbin/mke2fs", "/usr/sbin/mke2fs"),
    ("e2fsprogs", "sbin/resize2fs", "/usr/sbin/resize2fs"),
    ("e2fsprogs", "sbin/e2fsck", "/usr/sbin/e2fsck"),
    ("nftables", "usr/sbin/nft", "/usr/sbin/nft"),
    ("mount", "bin/mount", "/usr/bin/mount"),
    ("mount", "bin/umount", "/usr/bin/umount"),
];
/// Upstream binaries in /usr/bin: (component, binary).
const UPSTREAM_BINARIES: &[(&str, &str)] = &[
    ("etcd", "etcd"),
    ("etcd", "etcdctl"),
    ("kubernetes", "kube-apiserver"),
    ("kubernetes", "kube-controller-manager"),
    ("kubernetes", "kube-scheduler"),
    ("kubernetes", "kubelet"),
    ("kubernetes", "kube-proxy"),
    ("containerd", "containerd"),
    ("containerd", "containerd-shim-runc-v2"),
    ("containerd", "ctr"),
    ("runc", "runc"),
];
/// CNI plugins, in [`CNI_BIN_DIR`]: containerd runs them for every pod sandbox.
const CNI_PLUGINS: &[&str] = &["bridge", "loopback", "host-local", "portmap"];
/// Where the CNI plugins are (`cairn_services::cni::BIN_DIR`).
const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// Where the pod images' OCI archives are; the init imports every `*.oci.tar` here
/// into containerd before kubelet starts.
pub const IMAGES_DIR: &str = "/usr/share/cairn/images";

/// Drivers the initramfs needs to find and mount the system slot.
const INITRAMFS_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "nvme",
    "ahci",
    "squashfs",
];
/// Modules the system image carries, by name ...
const SYSTEM_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "virtio_rng",
    "virtio_console",
    "virtio_balloon",
    "sd_mod",
    "nvme",
    "ahci",
    "ata_piix",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "r8169",
    "tg3",
    "squashfs",
    "ext4",
    "crc32c_generic",
    "crc32c_intel",
    "overlay",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "evdev",
    "button",
    "qemu_fw_cfg",
    "veth",
    "bridge",
    "br_netfilter",
    "vxlan",
    "dummy",
];
/// ... and by directory (netfilter for kube-proxy and CNI).
const SYSTEM_MODULE_DIRS: &[&str] = &[
    "kernel/net/netfilter/",
    "kernel/net/ipv4/netfilter/",
    "kernel/net/ipv6/netfilter/",
    "kernel/net/bridge/",
];

/// The dirs and merged-/usr links both trees share.
const MERGED_USR: &[(&str, &str)] = &[
    ("/bin", "usr/bin"),
    ("/sbin", "usr/sbin"),
    ("/lib", "usr/lib"),
    ("/lib64", "usr/lib64"),
];

#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// Base name of the outputs (`cairn`, or `cairn-bench` for the benchmark image).
    pub name: String,
    /// The `cairn-init` binary to install.
    pub init: PathBuf,
    /// The machine API server to install.
    pub apid: PathBuf,
    /// The GitOps reconciler to install.
    pub gitops: PathBuf,
    pub out_dir: PathBuf,
    pub offline: bool,
    /// Extra kernel command-line words.
    pub cmdline_extra: String,
}

/// What `build` produced, for the summary and the benchmarks.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub name: String,
    pub raw: PathBuf,
    pub qcow2: PathBuf,
    pub squashfs_bytes: u64,
    pub uki_bytes: u64,
    pub raw_virtual_bytes: u64,
    pub raw_allocated_bytes: u64,
    pub qcow2_bytes: u64,
    pub initramfs_bytes: u64,
    pub kernel_release: String,
    pub modules: usize,
    pub seconds: f64,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io { what, path, source }
}

pub fn build(lock: &Lockfile, cache: &Cache, opts: &ImageOptions) -> Result<Summary, ImageError> {
    let start = std::time::Instant::now();
    let kernel_pkg = lock
        .deb
        .iter()
        .find(|d| d.name.starts_with("linux-image-"))
        .ok_or_else(|| ImageError::Input("the lockfile pins no linux-image-* package".into()))?;
    let mut only: Vec<String> = UPSTREAM_BINARIES
        .iter()
        .map(|(c, _)| c.to_string())
        .collect();
    only.dedup();
    only.push("cni-plugins".into());
    only.push("coredns".into());
    only.extend(USERLAND_DEBS.iter().map(|s| s.to_string()));
    only.push(kernel_pkg.name.clone());
    only.push("systemd-boot-efi".into());
    let report = components::build_all(
        lock,
        cache,
        &BuildOptions {
            offline: opts.offline,
            only,
            ..BuildOptions::default()
        },
    )?;

    let kroot = report.deb_root(&kernel_pkg.name)?.to_path_buf();
    let release = kernel_release(&kroot)?;
    let modules = ModuleTree::scan(&kroot.join("lib/modules").join(&release))?;
    let roots: Vec<&Path> = USERLAND_DEBS
        .iter()
        .map(|d| report.deb_root(d))
        .collect::<Result<_, _>>()?;
    let resolver = LibResolver::new(&roots);

    let scratch = cache.scratch("image")?;
    let rootfs = Tree::new(&scratch.path().join("rootfs"))?;
    let module_count = system_tree(
        &rootfs,
        &report,
        &resolver,
        &modules,
        &release,
        opts,
        lock.build.source_date_epoch,
    )?;
    let initramfs = initramfs(
        lock.build.source_date_epoch,
        &opts.init,
        &resolver,
        &modules,
        &release,
    )?;

    let sdboot = report
        .deb_root("systemd-boot-efi")?
        .join(SYSTEMD_BOOT_EFI_DIR);
    let inputs = ImageInputs {
        kernel: kroot.join("boot").join(format!("vmlinuz-{release}")),
        initramfs: initramfs.clone(),
        cmdline: format!(
            "console=tty0 console=ttyS0,115200 loglevel=4 panic=10 cairn.slot=a {}",
            opts.cmdline_extra
        )
        .trim()
        .to_string(),
        os_release: os_release(),
        rootfs_dir: rootfs.root.clone(),
        systemd_boot: sdboot.join("systemd-bootx64.efi"),
        stub: sdboot.join("linuxx64.efi.stub"),
        source_date_epoch: lock.build.source_date_epoch,
        name: opts.name.clone(),
        slot_size_bytes: None,
    };
    std::fs::create_dir_all(&opts.out_dir).map_err(io("creating", &opts.out_dir))?;
    let out: ImageOutputs = assemble::assemble(&inputs, &opts.out_dir)?;
    let summary = Summary {
        name: opts.name.clone(),
        raw: out.raw.clone(),
        qcow2: out.qcow2.clone(),
        squashfs_bytes: out.sizes.squashfs,
        uki_bytes: out.sizes.uki,
        raw_virtual_bytes: out.sizes.raw_virtual,
        raw_allocated_bytes: out.sizes.raw_allocated,
        qcow2_bytes: out.sizes.qcow2,
        initramfs_bytes: initramfs.len() as u64,
        kernel_release: release,
        modules: module_count,
        seconds: start.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
    let path = opts.out_dir.join(format!("{}.json", opts.name));
    std::fs::write(&path, json).map_err(io("writing", &path))?;
    Ok(summary)
}

fn kernel_release(kroot: &Path) -> Result<String, ImageError> {
    let dir = kroot.join("lib/modules");
    let mut releases: Vec<String> = std::fs::read_dir(&dir)
        .map_err(io("listing", &dir))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    releases.sort();
    match releases.as_slice() {
        [one] => Ok(one.clone()),
        other => Err(ImageError::Input(format!(
            "expected one kernel release in {}, found {other:?}",
            dir.display()
        ))),
    }
}

fn os_release() -> String {
    let v = env!("CARGO_PKG_VERSION");
    format!(
        "NAME=cairn\nID=cairn\nVERSION_ID={v}\nPRETTY_NAME=\"cairn {v}\"\nHOME_URL=\"https://cairn.invalid/\"\n"
    )
}

/// The system image's tree; returns how many kernel modules it carries.
fn system_tree(
    t: &Tree,
    report: &BuildReport,
    resolver: &LibResolver,
    modules: &ModuleTree,
    release: &str,
    opts: &ImageOptions,
    epoch: u64,
) -> Result<usize, ImageError> {
    for d in [
        "/usr/bin",
        "/usr/sbin",
        "/usr/lib",
        "/usr/lib64",
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/var",
        "/state",
    ] {
        t.dir(d, 0o755)?;
    }
    t.dir("/tmp", 0o1777)?;
    for (link, target) in MERGED_USR {
        t.symlink(link, target)?;
    }
    let mut dynamic = vec![opts.init.clone(), opts.apid.clone(), opts.gitops.clone()];
    t.copy(&opts.init, "/usr/bin/cairn-init", 0o755)?;
    t.copy(&opts.apid, "/usr/bin/cairn-apid", 0o755)?;
    t.copy(&opts.gitops, "/usr/bin/cairn-gitops", 0o755)?;
    for (component, binary) in UPSTREAM_BINARIES {
        t.copy(
            &report.binary(component, binary)?,
            &format!("/usr/bin/{binary}"),
            0o755,
        )?;
    }
    t.dir(CNI_BIN_DIR, 0o755)?;
    for plugin in CNI_PLUGINS {
        t.copy(
            &report.binary("cni-plugins", plugin)?,
            &format!("{CNI_BIN_DIR}/{plugin}"),
            0o755,
        )?;
    }
    for (package, from, to) in DEB_TOOLS {
        let src = report.deb_root(package)?.join(from);
        t.copy(&src, to, 0o755)?;
        dynamic.push(src);
    }
    install_libraries(t, &resolver.closure(&dynamic)?)?;
    // The kernel runs `/usr/sbin/modprobe <alias>` to load netfilter modules on
    // demand; the init answers as modprobe when called by that name.
    t.symlink("/usr/sbin/modprobe", "../bin/cairn-init")?;

    t.dir("/usr/share/cairn", 0o755)?;
    t.dir(IMAGES_DIR, 0o755)?;
    for (name, spec) in pod_images(report, epoch)? {
        let dest = t
            .root
            .join(IMAGES_DIR.trim_start_matches('/'))
            .join(format!("{name}.oci.tar"));
        oci::write_archive(&spec, &dest)?;
    }

    let mut wanted: Vec<String> = SYSTEM_MODULES.iter().map(|s| s.to_string()).collect();
    wanted.extend(modules.under(SYSTEM_MODULE_DIRS));
    let set = modules.closure(&wanted)?;
    modules.install(&set, &t.root.join("usr/lib/modules").join(release))?;

    t.file("/etc/os-release", 0o644, os_release().as_bytes())?;
    t.file(
        "/etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/usr/sbin/nologin\n",
    )?;
    t.file("/etc/group", 0o644, b"root:x:0:\ntty:x:5:\n")?;
    t.file(
        "/etc/nsswitch.conf",
        0o644,
        b"passwd: files\ngroup: files\nhosts: files dns\n",
    )?;
    for f in ["machine-id", "hostname", "hosts", "resolv.conf"] {
        t.symlink(&format!("/etc/{f}"), &format!("/run/cairn/{f}"))?;
    }
    Ok(set.len())
}

/// The pod images the node imports at boot, by archive name: the pause image every
/// sandbox runs, CoreDNS, and the small web server used by tests and the demo. Our
/// two programs are built here as static binaries (the images have no libc).
fn pod_images(
    report: &BuildReport,
    epoch: u64,
) -> Result<Vec<(&'static str, ImageSpec)>, ImageError> {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let pause = crate::static_bins::build_static(&workspace, "cairn-pause", "cairn-pause")?;
    let webtest = crate::static_bins::build_static(&workspace, "cairn-webtest", "cairn-webtest")?;
    Ok(vec![
        ("pause", oci::pause_image(&pause, epoch)?),
        (
            "coredns",
            oci::coredns_image(&report.binary("coredns", "coredns")?, epoch)?,
        ),
        ("webtest", oci::webtest_image(&webtest, epoch)?),
    ])
}

/// Where a path lands in a merged-/usr tree (`/lib64/x` -> `/usr/lib64/x`).
fn usr_path(p: &str) -> String {
    for (link, target) in MERGED_USR {
        if let Some(rest) = p.strip_prefix(link).filter(|r| r.starts_with('/')) {
            return format!("/{target}{rest}");
        }
    }
    p.to_string()
}

/// The initramfs: just enough to find and mount the system slot.
fn initramfs(
    epoch: u64,
    init: &Path,
    resolver: &LibResolver,
    modules: &ModuleTree,
    release: &str,
) -> Result<Vec<u8>, ImageError> {
    let mut c = CpioBuilder::new(epoch);
    for d in [
        "/dev",
        "/proc",
        "/sys",
        "/run",
        "/sysroot",
        "/usr/lib",
        "/usr/lib64",
        "/usr/bin",
    ] {
        c.add_dir(d, 0o755)?;
    }
    c.add_char_device("/dev/console", 0o600, 5, 1)?;
    for (link, target) in MERGED_USR {
        c.add_symlink(link, target)?;
    }
    c.add_file(
        "/init",
        0o755,
        std::fs::read(init).map_err(io("reading", init))?,
    )?;
    for (name, file) in resolver.closure(&[init.to_path_buf()])? {
        let dest = if name.starts_with('/') {
            usr_path(&name)
        } else {
            format!("/usr/lib/x86_64-linux-gnu/{name}")
        };
        c.add_file(
            &dest,
            0o755,
            std::fs::read(&file).map_err(io("reading", &file))?,
        )?;
    }
    let wanted: Vec<String> = INITRAMFS_MODULES.iter().map(|s| s.to_string()).collect();
    let set = modules.closure(&wanted)?;
    let base = format!("/usr/lib/modules/{release}");
    for name in &set {
        let rel = &modules.modules[name].rel;
        let src = modules.dir.join(rel);
        c.add_file(
            &format!("{base}/{}", rel.display()),
            0o644,
            std::fs::read(&src).map_err(io("reading", &src))?,
        )?;
    }
    let (dep, alias) = modules.index(&set);
    c.add_file(&format!("{base}/modules.dep"), 0o644, dep)?;
    c.add_file(&format!("{base}/modules.alias"), 0o644, alias)?;
    let builtin = modules.dir.join("modules.builtin");
    if builtin.is_file() {
        c.add_file(
            &format!("{base}/modules.builtin"),
            0o644,
            std::fs::read(&builtin).map_err(io("reading", &builtin))?,
        )?;
    }
    Ok(c.finish_gzip()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_usr_paths() {
        assert_eq!(
            usr_path("/lib64/ld-linux-x86-64.so.2"),
            "/usr/lib64/ld-linux-x86-64.so.2"
        );
        assert_eq!(
            usr_path("/lib/x86_64-linux-gnu/libc.so.6"),
            "/usr/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert_eq!(usr_path("/library"), "/library");
        assert_eq!(usr_path("/usr/lib/x"), "/usr/lib/x");
    }
}
