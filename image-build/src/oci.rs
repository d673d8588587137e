//! OCI image archives for images a cairn node imports at boot: there is no
//! container registry on a node, so the images pods need (the pause image,
//! CoreDNS and the webtest workload, each one static program) are built here as
//! OCI image-layout tars and imported into containerd's `k8s.io` namespace
//! (`ctr -n k8s.io images import`).
//!
//! The writer is deterministic: the same [`ImageSpec`] always gives the same
//! bytes (hence the same digests) for a given build of this crate and its
//! compressor (`flate2`'s backend is pinned by `Cargo.lock`). To that end every
//! tar entry has uid/gid 0, empty user/group names and `mtime = epoch`; entries
//! are sorted by path; parent directories are generated (mode 0755); the gzip
//! header has mtime 0, no file name and a fixed OS byte; JSON is written from
//! fixed structs; the image config's `created` is the epoch.
//!
//! One archive holds one single-platform (linux/amd64) image:
//!
//! ```text
//! blobs/sha256/<config> <layer> <manifest>
//! index.json   manifest descriptor annotated with
//!              io.containerd.image.name = "<name>:<tag>"  (what containerd names it)
//!              org.opencontainers.image.ref.name = "<tag>"
//! oci-layout
//! ```
//!
//! Not for: pulling or pushing images, multi-layer or multi-platform images.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// The pause image's repository and tag. Our own build of the pause program
/// (`image-build/pause`, package `cairn-pause`), NOT upstream's image: it only
/// borrows upstream's name so Kubernetes components recognise it as the sandbox
/// image. containerd's CRI `sandbox` image setting must name exactly
/// [`PAUSE_IMAGE`] or containerd would try to pull upstream's.
pub const PAUSE_REPOSITORY: &str = "registry.k8s.io/pause";
/// See [`PAUSE_REPOSITORY`].
pub const PAUSE_TAG: &str = "3.10.1";
/// `registry.k8s.io/pause:3.10.1` (containerd 2.2's default sandbox image name): the full name containerd gives the imported image.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10.1";

/// The CoreDNS image's repository: the pinned CoreDNS from the component cache,
/// our build, so under our own registry name.
pub const COREDNS_REPOSITORY: &str = "cairn.local/coredns";
/// The pinned CoreDNS version (a unit test keeps it equal to `components.toml`).
pub const COREDNS_TAG: &str = "v1.14.2";
/// `cairn.local/coredns:v1.14.2`: what containerd calls the imported CoreDNS image.
pub const COREDNS_IMAGE: &str = "cairn.local/coredns:v1.14.2";
/// The webtest image's repository: `image-build/webtest` (package `cairn-webtest`).
pub const WEBTEST_REPOSITORY: &str = "cairn.local/webtest";
/// See [`WEBTEST_REPOSITORY`].
pub const WEBTEST_TAG: &str = "v1";
/// `cairn.local/webtest:v1`: what containerd calls the imported webtest image.
pub const WEBTEST_IMAGE: &str = "cairn.local/webtest:v1";

/// Media types written.
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Annotation containerd reads for the full image name on import.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// OCI annotation for the reference (here: the tag).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Everything that can go wrong writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("layer file path {path:?}: {reason}")]
    Path { path: String, reason: &'static str },
    #[error("image name {name:?}: {reason}")]
    Name { name: String, reason: &'static str },
    #[error("gzip-compressing the layer: {0}")]
    Gzip(#[source] std::io::Error),
    #[error("serialising the image {what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("binary {path} for the image {image}: {reason}")]
    Binary {
        image: String,
        path: PathBuf,
        reason: String,
    },
}

/// One regular file in the image's single layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    /// Relative path inside the image, e.g. `pause` or `usr/bin/coredns`
    /// (a leading `/` is accepted and dropped).
    pub path: String,
    /// Permission bits, e.g. `0o755`.
    pub mode: u32,
    pub contents: Vec<u8>,
}

/// A single-layer linux/amd64 image to write as an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// Repository, e.g. `registry.k8s.io/pause`.
    pub name: String,
    /// Tag, e.g. `3.10`.
    pub tag: String,
    /// `config.Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `config.User` (e.g. `65535:65535`); `None` leaves it unset (root).
    pub user: Option<String>,
    pub files: Vec<LayerFile>,
    /// `SOURCE_DATE_EPOCH`: every mtime and the config's `created`.
    pub epoch: u64,
}

impl ImageSpec {
    /// `name:tag`, what containerd calls the image after import.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }
}

/// The digests (`sha256:<hex>`) and sizes of what was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub manifest: String,
    pub manifest_size: u64,
    pub config: String,
    pub config_size: u64,
    /// Of the gzip'd layer blob.
    pub layer: String,
    pub layer_size: u64,
    /// Of the uncompressed layer tar (`rootfs.diff_ids[0]`).
    pub diff_id: String,
    /// Of the whole archive file.
    pub archive: String,
    pub archive_size: u64,
}

/// The pause image: our static `cairn-pause` as `/pause`, entrypoint `["/pause"]`,
/// user 65535:65535 like upstream's, named [`PAUSE_IMAGE`].
pub fn pause_image(pause_binary: &Path, epoch: u64) -> Result<ImageSpec, OciError> {
    let mut spec = static_program_image(
        PAUSE_REPOSITORY,
        PAUSE_TAG,
        pause_binary,
        "/pause",
        vec!["/pause".into()],
        epoch,
    )?;
    spec.user = Some("65535:65535".into());
    Ok(spec)
}

/// The CoreDNS image: the (static, Go) `coredns` binary as `/coredns`,
/// entrypoint `["/coredns"]`, named [`COREDNS_IMAGE`]. The user is left unset
/// (root), so CoreDNS can bind port 53 with the runtime's default capabilities.
pub fn coredns_image(coredns_binary: &Path, epoch: u64) -> Result<ImageSpec, OciError> {
    static_program_image(
        COREDNS_REPOSITORY,
        COREDNS_TAG,
        coredns_binary,
        "/coredns",
        vec!["/coredns".into()],
        epoch,
    )
}

/// The webtest image: our static `cairn-webtest` as `/webtest`, entrypoint
/// `["/webtest"]` (pods pass `serve ...` or `get ...` as args), named
/// [`WEBTEST_IMAGE`].
pub fn webtest_image(webtest_binary: &Path, epoch: u64) -> Result<ImageSpec, OciError> {
    static_program_image(
        WEBTEST_REPOSITORY,
        WEBTEST_TAG,
        webtest_binary,
        "/webtest",
        vec!["/webtest".into()],
        epoch,
    )
}

/// A `FROM scratch`-style image of one static executable: a single layer with
/// `binary` at `install_as` (mode 0755, owner 0:0, mtime `epoch`), the given
/// entrypoint, user unset (root). Refuses a binary that is not a static ELF
/// executable (the image has no libc or loader) and an `install_as` that is
/// not a clean path.
pub fn static_program_image(
    repository: &str,
    tag: &str,
    binary: &Path,
    install_as: &str,
    entrypoint: Vec<String>,
    epoch: u64,
) -> Result<ImageSpec, OciError> {
    let binary_err = |reason: String| OciError::Binary {
        image: format!("{repository}:{tag}"),
        path: binary.to_path_buf(),
        reason,
    };
    let needs = crate::elf::needs(binary).map_err(|e| binary_err(e.to_string()))?;
    if !needs.is_static() {
        return Err(binary_err(format!(
            "not a static executable (interpreter {:?}, needs {:?}); build it with \
             RUSTFLAGS=\"-C target-feature=+crt-static\" --target x86_64-unknown-linux-gnu \
             (see static_bins::build_static)",
            needs.interpreter, needs.needed
        )));
    }
    let path = clean_path(install_as)?;
    let contents = std::fs::read(binary).map_err(|source| OciError::Io {
        what: "reading",
        path: binary.to_path_buf(),
        source,
    })?;
    let spec = ImageSpec {
        name: repository.into(),
        tag: tag.into(),
        entrypoint,
        user: None,
        files: vec![LayerFile {
            path,
            mode: 0o755,
            contents,
        }],
        epoch,
    };
    check_reference(&spec)?;
    Ok(spec)
}

/// Writes the archive of `spec` to `out` (through a temporary file beside it,
/// renamed into place) and returns its digests.
pub fn write_archive(spec: &ImageSpec, out: &Path) -> Result<Digests, OciError> {
    let (bytes, digests) = archive_bytes(spec)?;
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = out.with_file_name(format!(".{file_name}.tmp"));
    std::fs::write(&tmp, &bytes).map_err(|source| OciError::Io {
        what: "writing",
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, out).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        OciError::Io {
            what: "renaming into place",
            path: out.to_path_buf(),
            source,
        }
    })?;
    Ok(digests)
}

/// The archive of `spec` in memory, with its digests.
pub fn archive_bytes(spec: &ImageSpec) -> Result<(Vec<u8>, Digests), OciError> {
    check_reference(spec)?;
    let layer_tar = layer_tar(&spec.files, spec.epoch)?;
    let diff_id = sha256(&layer_tar);
    let layer = gzip(&layer_tar)?;
    let layer_digest = sha256(&layer);

    let created = crate::civil::rfc3339(spec.epoch);
    let config = ImageConfig {
        created: &created,
        architecture: "amd64",
        os: "linux",
        config: RunConfig {
            user: spec.user.as_deref(),
            entrypoint: &spec.entrypoint,
            working_dir: "/",
        },
        rootfs: RootFs {
            kind: "layers",
            diff_ids: vec![diff_id.clone()],
        },
        history: vec![History {
            created: &created,
            created_by: "cairn-image oci::write_archive",
            comment: "built by cairn, not pulled from a registry",
        }],
    };
    let config = to_json("config", &config)?;
    let config_digest = sha256(&config);

    let manifest = Manifest {
        schema_version: 2,
        media_type: MEDIA_MANIFEST,
        config: Descriptor::new(MEDIA_CONFIG, &config_digest, &config),
        layers: vec![Descriptor::new(MEDIA_LAYER_GZIP, &layer_digest, &layer)],
    };
    let manifest = to_json("manifest", &manifest)?;
    let manifest_digest = sha256(&manifest);

    let reference = spec.reference();
    let mut annotations = BTreeMap::new();
    annotations.insert(ANNOTATION_CONTAINERD_NAME, reference.as_str());
    annotations.insert(ANNOTATION_REF_NAME, spec.tag.as_str());
    let index = Index {
        schema_version: 2,
        media_type: MEDIA_INDEX,
        manifests: vec![IndexEntry {
            descriptor: Descriptor::new(MEDIA_MANIFEST, &manifest_digest, &manifest),
            annotations,
            platform: Platform {
                architecture: "amd64",
                os: "linux",
            },
        }],
    };
    let index = to_json("index", &index)?;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();

    let blob = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let mut entries = vec![
        Entry::file(blob(&config_digest), 0o644, config.clone()),
        Entry::file(blob(&layer_digest), 0o644, layer.clone()),
        Entry::file(blob(&manifest_digest), 0o644, manifest.clone()),
        Entry::file("index.json".into(), 0o644, index),
        Entry::file("oci-layout".into(), 0o644, layout),
    ];
    add_parents(&mut entries);
    let archive = write_tar(entries, spec.epoch)?;
    let digests = Digests {
        manifest: manifest_digest,
        manifest_size: manifest.len() as u64,
        config: config_digest,
        config_size: config.len() as u64,
        layer: layer_digest,
        layer_size: layer.len() as u64,
        diff_id,
        archive: sha256(&archive),
        archive_size: archive.len() as u64,
    };
    Ok((archive, digests))
}

/// The uncompressed layer tar: the files plus their parent directories, sorted.
pub fn layer_tar(files: &[LayerFile], epoch: u64) -> Result<Vec<u8>, OciError> {
    let mut entries = Vec::with_capacity(files.len());
    for f in files {
        let path = clean_path(&f.path)?;
        entries.push(Entry::file(path, f.mode & 0o7777, f.contents.clone()));
    }
    add_parents(&mut entries);
    write_tar(entries, epoch)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// gzip with a fixed header: mtime 0, no name, OS byte 255 ("unknown"), best
/// compression (XFL 2).
fn gzip(bytes: &[u8]) -> Result<Vec<u8>, OciError> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(
            Vec::with_capacity(bytes.len() / 2),
            flate2::Compression::best(),
        );
    enc.write_all(bytes).map_err(OciError::Gzip)?;
    enc.finish().map_err(OciError::Gzip)
}

fn to_json<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, OciError> {
    serde_json::to_vec(value).map_err(|source| OciError::Json { what, source })
}

/// Repository: lowercase `[a-z0-9._/-]` with an optional `host[:port]/` part,
/// as the distribution reference grammar allows. Tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_reference(spec: &ImageSpec) -> Result<(), OciError> {
    let bad = |name: &str, reason| {
        Err(OciError::Name {
            name: name.to_string(),
            reason,
        })
    };
    let name = spec.name.as_str();
    if name.is_empty() || name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        return bad(
            name,
            "repository must be non-empty path components separated by '/'",
        );
    }
    let (host, path) = match name.split_once('/') {
        Some((h, p)) if h.contains('.') || h.contains(':') || h == "localhost" => (Some(h), p),
        _ => (None, name),
    };
    if let Some(h) = host {
        let ok = h
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
        if !ok {
            return bad(
                name,
                "registry host has characters other than [A-Za-z0-9.-:]",
            );
        }
    }
    let path_ok = path.chars().all(|c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/')
    });
    if !path_ok {
        return bad(
            name,
            "repository path must be lowercase [a-z0-9._-] and '/'",
        );
    }
    let tag = spec.tag.as_str();
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !tag_ok {
        return bad(tag, "tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}");
    }
    Ok(())
}

/// A relative path with no empty, `.` or `..` components; a leading `/` dropped.
fn clean_path(path: &str) -> Result<String, OciError> {
    let bad = |reason| {
        Err(OciError::Path {
            path: path.to_string(),
            reason,
        })
    };
    let rel = path.strip_prefix('/').unwrap_or(path);
    if rel.is_empty() {
        return bad("empty");
    }
    if rel
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("has an empty, '.' or '..' component");
    }
    if rel.bytes().any(|b| b == 0) {
        return bad("contains NUL");
    }
    Ok(rel.to_string())
}

// ---- tar (POSIX ustar) ---------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    File(Vec<u8>),
    Dir,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// Relative, without a trailing `/` (added for directories when written).
    path: String,
    mode: u32,
    kind: Kind,
}

impl Entry {
    fn file(path: String, mode: u32, contents: Vec<u8>) -> Entry {
        Entry {
            path,
            mode,
            kind: Kind::File(contents),
        }
    }
}

/// Adds a 0755 directory entry for every missing parent of every entry.
fn add_parents(entries: &mut Vec<Entry>) {
    let mut dirs = std::collections::BTreeSet::new();
    for e in entries.iter() {
        let mut p = e.path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            dirs.insert(parent.to_string());
            p = parent;
        }
    }
    for d in dirs {
        if !entries.iter().any(|e| e.path == d) {
            entries.push(Entry {
                path: d,
                mode: 0o755,
                kind: Kind::Dir,
            });
        }
    }
}

/// Writes the entries sorted by path (so a directory precedes its contents) as
/// a ustar archive ending in two zero blocks. Duplicate paths are refused.
fn write_tar(mut entries: Vec<Entry>, epoch: u64) -> Result<Vec<u8>, OciError> {
    entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    if let Some(w) = entries.windows(2).find(|w| w[0].path == w[1].path) {
        return Err(OciError::Path {
            path: w[0].path.clone(),
            reason: "appears twice in the layer",
        });
    }
    let mut out = Vec::new();
    for e in &entries {
        let (path, size, typeflag) = match &e.kind {
            Kind::File(c) => (e.path.clone(), c.len() as u64, b'0'),
            Kind::Dir => (format!("{}/", e.path), 0, b'5'),
        };
        out.extend_from_slice(&ustar_header(&path, e.mode, size, epoch, typeflag)?);
        if let Kind::File(c) = &e.kind {
            out.extend_from_slice(c);
            let pad = (512 - c.len() % 512) % 512;
            out.resize(out.len() + pad, 0);
        }
    }
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

/// One 512-byte ustar header: uid/gid 0, empty user/group names, long paths
/// split into `prefix` + `name`.
fn ustar_header(
    path: &str,
    mode: u32,
    size: u64,
    mtime: u64,
    typeflag: u8,
) -> Result<[u8; 512], OciError> {
    let too_long = || OciError::Path {
        path: path.to_string(),
        reason: "too long for a ustar header (name 100, prefix 155 bytes)",
    };
    let (prefix, name) = if path.len() <= 100 {
        ("", path)
    } else {
        // Split at a '/' so that name <= 100 and prefix <= 155 bytes.
        let bytes = path.as_bytes();
        let split = (0..bytes.len())
            .rfind(|&i| {
                bytes[i] == b'/' && i <= 155 && bytes.len() - i - 1 <= 100 && i + 1 < bytes.len()
            })
            .ok_or_else(too_long)?;
        (&path[..split], &path[split + 1..])
    };
    if size >= 0o77777777777 || mtime >= 0o77777777777 {
        return Err(OciError::Path {
            path: path.to_string(),
            reason: "size or mtime too large for a ustar header",
        });
    }
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0); // uid
    octal(&mut h[116..124], 0); // gid
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0); // devmajor
    octal(&mut h[337..345], 0); // devminor
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    // Checksum: sum of all bytes with the checksum field read as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let field = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(field.as_bytes());
    Ok(h)
}

/// Zero-padded octal filling the field but its last byte, which is NUL.
fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let s = format!("{value:0width$o}");
    field[..width].copy_from_slice(s.as_bytes());
    field[width] = 0;
}

// ---- JSON documents ------------------------------------------------------------

#[derive(Serialize)]
struct Descriptor<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    digest: &'a str,
    size: u64,
}

impl<'a> Descriptor<'a> {
    fn new(media_type: &'a str, digest: &'a str, blob: &[u8]) -> Descriptor<'a> {
        Descriptor {
            media_type,
            digest,
            size: blob.len() as u64,
        }
    }
}

#[derive(Serialize)]
struct Platform<'a> {
    architecture: &'a str,
    os: &'a str,
}

#[derive(Serialize)]
struct IndexEntry<'a> {
    #[serde(flatten)]
    descriptor: Descriptor<'a>,
    annotations: BTreeMap<&'a str, &'a str>,
    platform: Platform<'a>,
}

#[derive(Serialize)]
struct Index<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    manifests: Vec<IndexEntry<'a>>,
}

#[derive(Serialize)]
struct Manifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
struct RunConfig<'a> {
    #[serde(rename = "User", skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(rename = "Entrypoint")]
    entrypoint: &'a [String],
    #[serde(rename = "WorkingDir")]
    working_dir: &'a str,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct History<'a> {
    created: &'a str,
    created_by: &'a str,
    comment: &'a str,
}

#[derive(Serialize)]
struct ImageConfig<'a> {
    created: &'a str,
    architecture: &'a str,
    os: &'a str,
    config: RunConfig<'a>,
    rootfs: RootFs,
    history: Vec<History<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    const EPOCH: u64 = 1_700_000_000;

    fn spec() -> ImageSpec {
        ImageSpec {
            name: "registry.example/cairn/test".into(),
            tag: "1.0".into(),
            entrypoint: vec!["/usr/bin/hello".into(), "--flag".into()],
            user: None,
            files: vec![
                LayerFile {
                    path: "usr/bin/hello".into(),
                    mode: 0o755,
                    contents: b"#!/bin/sh\necho hello\n".to_vec(),
                },
                LayerFile {
                    path: "/etc/hello.conf".into(),
                    mode: 0o644,
                    contents: vec![7u8; 1000],
                },
                LayerFile {
                    path: "a".into(),
                    mode: 0o600,
                    contents: Vec::new(),
                },
            ],
            epoch: EPOCH,
        }
    }

    /// One entry as read back by the minimal reader below.
    #[derive(Debug)]
    struct Read {
        path: String,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        typeflag: u8,
        data: Vec<u8>,
    }

    fn field_str(b: &[u8]) -> String {
        let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    }

    fn field_octal(b: &[u8]) -> u64 {
        let s = field_str(b);
        u64::from_str_radix(s.trim(), 8).unwrap_or_else(|e| panic!("octal field {s:?}: {e}"))
    }

    /// Reads a ustar archive back, checking each header's checksum.
    fn read_tar(bytes: &[u8]) -> Vec<Read> {
        let mut out = Vec::new();
        let mut off = 0;
        loop {
            let h = &bytes[off..off + 512];
            if h.iter().all(|b| *b == 0) {
                assert!(
                    bytes[off..].iter().all(|b| *b == 0),
                    "data after the end blocks"
                );
                assert_eq!(bytes.len() - off, 1024, "end is not two zero blocks");
                return out;
            }
            let mut copy = [0u8; 512];
            copy.copy_from_slice(h);
            copy[148..156].copy_from_slice(b"        ");
            let sum: u64 = copy.iter().map(|b| u64::from(*b)).sum();
            assert_eq!(
                field_octal(&h[148..156]),
                sum,
                "checksum of header at {off}"
            );
            assert_eq!(&h[257..265], b"ustar\x0000");
            let prefix = field_str(&h[345..500]);
            let name = field_str(&h[..100]);
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let size = field_octal(&h[124..136]) as usize;
            let data = bytes[off + 512..off + 512 + size].to_vec();
            out.push(Read {
                path,
                mode: field_octal(&h[100..108]) as u32,
                uid: field_octal(&h[108..116]),
                gid: field_octal(&h[116..124]),
                mtime: field_octal(&h[136..148]),
                typeflag: h[156],
                data,
            });
            off += 512 + size.div_ceil(512) * 512;
        }
    }

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("parsing JSON: {e}"))
    }

    fn hexsha(bytes: &[u8]) -> String {
        sha256(bytes)
    }

    fn blob<'a>(entries: &'a [Read], digest: &str) -> &'a [u8] {
        let path = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        &entries
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no blob {path}"))
            .data
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("gunzip: {e}"));
        out
    }

    #[test]
    fn oci_archive_is_byte_identical_across_writes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let a = dir.path().join("a.tar");
        let b = dir.path().join("b.tar");
        let da = write_archive(&spec(), &a).unwrap_or_else(|e| panic!("{e}"));
        let db = write_archive(&spec(), &b).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(da, db);
        let ba = std::fs::read(&a).unwrap_or_else(|e| panic!("{e}"));
        let bb = std::fs::read(&b).unwrap_or_else(|e| panic!("{e}"));
        assert!(ba == bb, "two writes of the same spec differ");
        assert_eq!(da.archive, hexsha(&ba));
        assert_eq!(da.archive_size, ba.len() as u64);
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|e| e.map(|e| e.file_name()).unwrap_or_default())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // A different epoch changes the bytes.
        let mut other = spec();
        other.epoch += 1;
        let (bo, _) = archive_bytes(&other).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(bo, ba);
    }

    #[test]
    fn oci_digests_match_blobs_and_diff_id_matches_uncompressed_layer() {
        let (bytes, d) = archive_bytes(&spec()).unwrap_or_else(|e| panic!("{e}"));
        let entries = read_tar(&bytes);

        // oci-layout
        let layout = entries
            .iter()
            .find(|e| e.path == "oci-layout")
            .unwrap_or_else(|| panic!("no oci-layout"));
        assert_eq!(json(&layout.data)["imageLayoutVersion"], "1.0.0");

        // Every blob is named by its sha256.
        for e in entries
            .iter()
            .filter(|e| e.path.starts_with("blobs/sha256/") && e.typeflag == b'0')
        {
            assert_eq!(format!("blobs/sha256/{}", &hexsha(&e.data)[7..]), e.path);
        }

        // index.json -> manifest
        let index_entry = entries
            .iter()
            .find(|e| e.path == "index.json")
            .unwrap_or_else(|| panic!("no index.json"));
        let index = json(&index_entry.data);
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["mediaType"], MEDIA_INDEX);
        let manifests = index["manifests"]
            .as_array()
            .unwrap_or_else(|| panic!("manifests"));
        assert_eq!(manifests.len(), 1);
        let m = &manifests[0];
        assert_eq!(m["mediaType"], MEDIA_MANIFEST);
        assert_eq!(m["digest"], d.manifest.as_str());
        assert_eq!(
            m["annotations"][ANNOTATION_CONTAINERD_NAME],
            "registry.example/cairn/test:1.0"
        );
        assert_eq!(m["annotations"][ANNOTATION_REF_NAME], "1.0");
        assert_eq!(m["platform"]["architecture"], "amd64");
        assert_eq!(m["platform"]["os"], "linux");
        let manifest_bytes = blob(&entries, &d.manifest);
        assert_eq!(hexsha(manifest_bytes), d.manifest);
        assert_eq!(m["size"], manifest_bytes.len() as u64);
        assert_eq!(d.manifest_size, manifest_bytes.len() as u64);

        // manifest -> config, layer
        let manifest = json(manifest_bytes);
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], MEDIA_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], MEDIA_CONFIG);
        assert_eq!(manifest["config"]["digest"], d.config.as_str());
        let config_bytes = blob(&entries, &d.config);
        assert_eq!(hexsha(config_bytes), d.config);
        assert_eq!(manifest["config"]["size"], config_bytes.len() as u64);
        let layers = manifest["layers"]
            .as_array()
            .unwrap_or_else(|| panic!("layers"));
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0]["mediaType"], MEDIA_LAYER_GZIP);
        assert_eq!(layers[0]["digest"], d.layer.as_str());
        let layer_gz = blob(&entries, &d.layer);
        assert_eq!(hexsha(layer_gz), d.layer);
        assert_eq!(layers[0]["size"], layer_gz.len() as u64);

        // Fixed gzip header: magic, deflate, no flags, mtime 0, XFL 2 (best), OS 255.
        assert_eq!(&layer_gz[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255]);

        // config: diff_id is the sha256 of the UNcompressed layer.
        let config = json(config_bytes);
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["created"], crate::civil::rfc3339(EPOCH));
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/usr/bin/hello", "--flag"])
        );
        assert!(config["config"].get("User").is_none());
        assert_eq!(config["rootfs"]["type"], "layers");
        let layer_tar = gunzip(layer_gz);
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!([hexsha(&layer_tar)])
        );
        assert_eq!(d.diff_id, hexsha(&layer_tar));
        assert_ne!(d.diff_id, d.layer);
        assert_eq!(layer_tar, layer_tar_of_spec());
    }

    fn layer_tar_of_spec() -> Vec<u8> {
        let s = spec();
        layer_tar(&s.files, s.epoch).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn oci_layer_entries_sorted_with_epoch_mtime_and_root_owner() {
        let entries = read_tar(&layer_tar_of_spec());
        let listing: Vec<(&str, u8, u32)> = entries
            .iter()
            .map(|e| (e.path.as_str(), e.typeflag, e.mode))
            .collect();
        assert_eq!(
            listing,
            vec![
                ("a", b'0', 0o600),
                ("etc/", b'5', 0o755),
                ("etc/hello.conf", b'0', 0o644),
                ("usr/", b'5', 0o755),
                ("usr/bin/", b'5', 0o755),
                ("usr/bin/hello", b'0', 0o755),
            ]
        );
        for e in &entries {
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, EPOCH), "{}", e.path);
        }
        let conf = entries
            .iter()
            .find(|e| e.path == "etc/hello.conf")
            .unwrap_or_else(|| panic!("conf"));
        assert_eq!(conf.data, vec![7u8; 1000]);

        // The outer archive is sorted the same way with the same mtime.
        let (bytes, _) = archive_bytes(&spec()).unwrap_or_else(|e| panic!("{e}"));
        let outer = read_tar(&bytes);
        let paths: Vec<&str> = outer.iter().map(|e| e.path.as_str()).collect();
        let mut sorted = paths.clone();
        sorted.sort_unstable();
        assert_eq!(paths, sorted);
        assert_eq!(&paths[..2], &["blobs/", "blobs/sha256/"]);
        assert_eq!(&paths[paths.len() - 2..], &["index.json", "oci-layout"]);
        assert!(
            outer
                .iter()
                .all(|e| e.mtime == EPOCH && e.uid == 0 && e.gid == 0)
        );
    }

    /// GNU tar, an independent reader, lists the layer the same way.
    #[test]
    fn oci_layer_readable_by_gnu_tar() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("layer.tar");
        std::fs::write(&path, layer_tar_of_spec()).unwrap_or_else(|e| panic!("{e}"));
        let out = std::process::Command::new("tar")
            .args(["--numeric-owner", "--full-time", "-tvf"])
            .arg(&path)
            .env("TZ", "UTC")
            .output()
            .unwrap_or_else(|e| panic!("running tar: {e}"));
        assert!(
            out.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            lines,
            vec![
                "-rw------- 0/0 0 2023-11-14 22:13:20 a",
                "drwxr-xr-x 0/0 0 2023-11-14 22:13:20 etc/",
                "-rw-r--r-- 0/0 1000 2023-11-14 22:13:20 etc/hello.conf",
                "drwxr-xr-x 0/0 0 2023-11-14 22:13:20 usr/",
                "drwxr-xr-x 0/0 0 2023-11-14 22:13:20 usr/bin/",
                "-rwxr-xr-x 0/0 21 2023-11-14 22:13:20 usr/bin/hello",
            ],
            "{text}"
        );
    }

    #[test]
    fn oci_long_paths_use_the_prefix_field() {
        let long = format!("{}/{}/{}", "d".repeat(60), "e".repeat(60), "f".repeat(90));
        let entries = read_tar(
            &layer_tar(
                &[LayerFile {
                    path: long.clone(),
                    mode: 0o644,
                    contents: b"x".to_vec(),
                }],
                EPOCH,
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        let d = "d".repeat(60);
        let de = format!("{d}/{}", "e".repeat(60));
        assert_eq!(paths, vec![format!("{d}/"), format!("{de}/"), long.clone()]);
        let too_long = "x".repeat(101);
        assert!(matches!(
            layer_tar(
                &[LayerFile {
                    path: too_long,
                    mode: 0o644,
                    contents: vec![]
                }],
                EPOCH
            ),
            Err(OciError::Path { .. })
        ));
    }

    #[test]
    fn oci_refuses_bad_paths_and_names() {
        for bad in ["", "/", "a/../b", "a//b", "./a", "a/"] {
            let mut s = spec();
            s.files[0].path = bad.into();
            assert!(
                matches!(archive_bytes(&s), Err(OciError::Path { .. })),
                "{bad:?}"
            );
        }
        let mut dup = spec();
        dup.files.push(dup.files[0].clone());
        assert!(matches!(archive_bytes(&dup), Err(OciError::Path { .. })));
        for (name, tag) in [
            ("Registry/Upper", "1"),
            ("", "1"),
            ("a/b", ""),
            ("a/b", "-x"),
            ("a/b", "a b"),
        ] {
            let mut s = spec();
            s.name = name.into();
            s.tag = tag.into();
            assert!(
                matches!(archive_bytes(&s), Err(OciError::Name { .. })),
                "{name}:{tag}"
            );
        }
        assert!(
            check_reference(&ImageSpec {
                name: "localhost:5000/x".into(),
                ..spec()
            })
            .is_ok()
        );
    }

    /// The smallest file `elf::needs` reads as a static executable: an ELF64
    /// header with no program or section headers.
    fn tiny_static_elf(dir: &Path) -> PathBuf {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2; // ELFCLASS64
        h[5] = 1; // little endian
        h[6] = 1; // EV_CURRENT
        h[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        h[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        h[20..24].copy_from_slice(&1u32.to_le_bytes());
        h[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        h[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        h[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        let path = dir.join("tiny");
        std::fs::write(&path, &h).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    #[test]
    fn oci_static_program_image_is_one_deterministic_layer() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let bin = tiny_static_elf(dir.path());
        let make = || {
            static_program_image(
                "cairn.local/tiny",
                "1",
                &bin,
                "/usr/bin/tiny",
                vec!["/usr/bin/tiny".into(), "-x".into()],
                EPOCH,
            )
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let s = make();
        assert_eq!(s.reference(), "cairn.local/tiny:1");
        assert_eq!(s.entrypoint, vec!["/usr/bin/tiny", "-x"]);
        assert_eq!(s.user, None);
        assert_eq!(s.files.len(), 1);
        assert_eq!(s.files[0].path, "usr/bin/tiny");
        assert_eq!(s.files[0].mode, 0o755);
        assert_eq!(
            s.files[0].contents,
            std::fs::read(&bin).unwrap_or_else(|e| panic!("{e}"))
        );
        let (a, _) = archive_bytes(&s).unwrap_or_else(|e| panic!("{e}"));
        let (b, _) = archive_bytes(&make()).unwrap_or_else(|e| panic!("{e}"));
        assert!(a == b, "two builds of the same image differ");
        let layer = read_tar(&layer_tar(&s.files, EPOCH).unwrap_or_else(|e| panic!("{e}")));
        let listing: Vec<(&str, u32, u64)> = layer
            .iter()
            .map(|e| (e.path.as_str(), e.mode, e.mtime))
            .collect();
        assert_eq!(
            listing,
            vec![
                ("usr/", 0o755, EPOCH),
                ("usr/bin/", 0o755, EPOCH),
                ("usr/bin/tiny", 0o755, EPOCH)
            ]
        );
    }

    #[test]
    fn oci_static_program_image_refuses_dynamic_binaries_and_bad_names() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let bin = tiny_static_elf(dir.path());
        let image = |binary: &Path, repository: &str, install_as: &str| {
            static_program_image(repository, "1", binary, install_as, vec![], EPOCH).map(|_| ())
        };
        // A dynamically linked executable is refused, naming the image and the file.
        let err = image(Path::new("/bin/sh"), "cairn.local/x", "/x");
        assert!(matches!(err, Err(OciError::Binary { .. })), "{err:?}");
        let text = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            text.contains("cairn.local/x:1") && text.contains("/bin/sh"),
            "{text}"
        );
        // Not an ELF file at all: refused too.
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not elf").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            image(&junk, "cairn.local/x", "/x"),
            Err(OciError::Binary { .. })
        ));
        assert!(matches!(
            image(&bin, "cairn.local/x", "../x"),
            Err(OciError::Path { .. })
        ));
        assert!(matches!(
            image(&bin, "cairn.local/X", "/x"),
            Err(OciError::Name { .. })
        ));
    }

    #[test]
    fn oci_pause_coredns_and_webtest_image_specs() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let bin = tiny_static_elf(dir.path());
        for (spec, reference, file, user) in [
            (
                pause_image(&bin, EPOCH),
                PAUSE_IMAGE,
                "pause",
                Some("65535:65535"),
            ),
            (coredns_image(&bin, EPOCH), COREDNS_IMAGE, "coredns", None),
            (webtest_image(&bin, EPOCH), WEBTEST_IMAGE, "webtest", None),
        ] {
            let spec = spec.unwrap_or_else(|e| panic!("{reference}: {e}"));
            assert_eq!(spec.reference(), reference);
            assert_eq!(spec.entrypoint, vec![format!("/{file}")], "{reference}");
            assert_eq!(spec.user.as_deref(), user, "{reference}");
            assert_eq!(spec.files.len(), 1, "{reference}");
            assert_eq!(spec.files[0].path, file, "{reference}");
            assert_eq!(spec.files[0].mode, 0o755, "{reference}");
            assert_eq!(spec.epoch, EPOCH);
        }
        assert!(matches!(
            pause_image(Path::new("/bin/sh"), EPOCH),
            Err(OciError::Binary { .. })
        ));
        assert_eq!(PAUSE_IMAGE, format!("{PAUSE_REPOSITORY}:{PAUSE_TAG}"));
        assert_eq!(COREDNS_IMAGE, format!("{COREDNS_REPOSITORY}:{COREDNS_TAG}"));
        assert_eq!(WEBTEST_IMAGE, format!("{WEBTEST_REPOSITORY}:{WEBTEST_TAG}"));
    }

    /// The CoreDNS image's tag names the version the lockfile pins.
    #[test]
    fn oci_coredns_tag_is_the_pinned_version() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("components.toml");
        let lock = crate::components::Lockfile::load(&path)
            .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
        let coredns = lock
            .go_component("coredns")
            .unwrap_or_else(|| panic!("{} pins no coredns", path.display()));
        assert_eq!(coredns.version, COREDNS_TAG);
    }
}
