//! GUID Partition Table encoding and decoding: the protective MBR, the primary
//! and backup GPT headers and their 128-entry partition arrays with CRC32s,
//! for 512-byte sectors. [`crate::disk`] decides the layout; this module only
//! turns it into bytes (and back, for checks and tests).

use uuid::{Uuid, uuid};

/// Logical sector size the image uses.
pub const SECTOR: u64 = 512;
/// Number of partition entries in each array (the UEFI minimum array size).
pub const ENTRY_COUNT: u32 = 128;
/// Size of one partition entry.
pub const ENTRY_SIZE: u32 = 128;
/// Sectors taken by one partition entry array (128 * 128 / 512).
pub const ENTRY_ARRAY_SECTORS: u64 = (ENTRY_COUNT as u64 * ENTRY_SIZE as u64) / SECTOR;
/// Longest partition name, in UTF-16 code units.
pub const NAME_UNITS: usize = 36;

/// EFI system partition.
pub const TYPE_ESP: Uuid = uuid!("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
/// Linux root (x86-64), used for the A/B system slots.
pub const TYPE_LINUX_ROOT_X86_64: Uuid = uuid!("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
/// Linux filesystem data, used for STATE and DATA.
pub const TYPE_LINUX_FS: Uuid = uuid!("0FC63DAF-8483-4772-8E79-3D69D8477DE4");

const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION: u32 = 0x0001_0000;
const HEADER_SIZE: u32 = 92;

/// A malformed or inconsistent table.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// A partition name is longer than 36 UTF-16 units.
    #[error("gpt: partition name {0:?} is longer than 36 UTF-16 units")]
    NameTooLong(String),
    /// More partitions than entries.
    #[error("gpt: {0} partitions do not fit 128 entries")]
    TooManyPartitions(usize),
    /// The image is too small to hold a GPT.
    #[error("gpt: disk of {0} sectors is too small")]
    DiskTooSmall(u64),
    /// A parsed structure failed a check.
    #[error("gpt: {which} {problem}")]
    Invalid {
        /// "primary header", "backup entries", "protective MBR", ...
        which: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// One partition as stored in an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    /// Partition type GUID.
    pub type_guid: Uuid,
    /// Unique partition GUID.
    pub unique_guid: Uuid,
    /// First sector (inclusive).
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// Partition name (the label the init looks for).
    pub name: String,
}

/// A decoded table (headers cross-checked, CRCs verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    /// Disk size in sectors.
    pub total_sectors: u64,
    /// Disk GUID.
    pub disk_guid: Uuid,
    /// First usable LBA.
    pub first_usable_lba: u64,
    /// Last usable LBA.
    pub last_usable_lba: u64,
    /// Used entries, in entry order.
    pub partitions: Vec<GptPartition>,
}

/// The bytes to place on the disk.
#[derive(Debug, Clone)]
pub struct GptTables {
    /// Sector 0.
    pub protective_mbr: [u8; 512],
    /// Sectors 1..=33: header then entry array.
    pub primary: Vec<u8>,
    /// Written at sector `backup_lba`: entry array then header (ends the disk).
    pub backup: Vec<u8>,
    /// Sector where `backup` starts.
    pub backup_lba: u64,
}

/// First usable LBA for a disk with our entry array size.
pub const fn first_usable_lba() -> u64 {
    2 + ENTRY_ARRAY_SECTORS
}

/// Last usable LBA on a disk of `total_sectors`.
pub const fn last_usable_lba(total_sectors: u64) -> u64 {
    total_sectors - 2 - ENTRY_ARRAY_SECTORS
}

/// Encodes the protective MBR and both GPT copies.
pub fn encode(
    total_sectors: u64,
    disk_guid: Uuid,
    parts: &[GptPartition],
) -> Result<GptTables, GptError> {
    if total_sectors < 2 * first_usable_lba() + 1 {
        return Err(GptError::DiskTooSmall(total_sectors));
    }
    if parts.len() > ENTRY_COUNT as usize {
        return Err(GptError::TooManyPartitions(parts.len()));
    }
    let mut entries = vec![0u8; (ENTRY_COUNT * ENTRY_SIZE) as usize];
    for (slot, p) in entries.chunks_exact_mut(ENTRY_SIZE as usize).zip(parts) {
        encode_entry(slot, p)?;
    }
    let entries_crc = crc32fast::hash(&entries);
    let last_lba = total_sectors - 1;
    let backup_entries_lba = last_lba - ENTRY_ARRAY_SECTORS;
    let fields = HeaderFields {
        disk_guid,
        first_usable: first_usable_lba(),
        last_usable: last_usable_lba(total_sectors),
        entries_crc,
    };
    let primary_header = encode_header(&fields, 1, last_lba, 2);
    let backup_header = encode_header(&fields, last_lba, 1, backup_entries_lba);

    let mut primary = primary_header.to_vec();
    primary.extend_from_slice(&entries);
    let mut backup = entries;
    backup.extend_from_slice(&backup_header);

    Ok(GptTables {
        protective_mbr: protective_mbr(total_sectors),
        primary,
        backup,
        backup_lba: backup_entries_lba,
    })
}

struct HeaderFields {
    disk_guid: Uuid,
    first_usable: u64,
    last_usable: u64,
    entries_crc: u32,
}

fn encode_header(f: &HeaderFields, my_lba: u64, alternate_lba: u64, entries_lba: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[0..8].copy_from_slice(SIGNATURE);
    h[8..12].copy_from_slice(&REVISION.to_le_bytes());
    h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
    h[40..48].copy_from_slice(&f.first_usable.to_le_bytes());
    h[48..56].copy_from_slice(&f.last_usable.to_le_bytes());
    h[56..72].copy_from_slice(&f.disk_guid.to_bytes_le());
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&ENTRY_COUNT.to_le_bytes());
    h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
    h[88..92].copy_from_slice(&f.entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..HEADER_SIZE as usize]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

fn encode_entry(slot: &mut [u8], p: &GptPartition) -> Result<(), GptError> {
    let units: Vec<u16> = p.name.encode_utf16().collect();
    if units.len() > NAME_UNITS {
        return Err(GptError::NameTooLong(p.name.clone()));
    }
    slot[0..16].copy_from_slice(&p.type_guid.to_bytes_le());
    slot[16..32].copy_from_slice(&p.unique_guid.to_bytes_le());
    slot[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
    slot[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
    slot[48..56].copy_from_slice(&p.attributes.to_le_bytes());
    for (i, unit) in units.iter().enumerate() {
        slot[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
    }
    Ok(())
}

/// A protective MBR: one 0xEE partition covering the disk (capped at 2^32-1).
fn protective_mbr(total_sectors: u64) -> [u8; 512] {
    let mut m = [0u8; 512];
    let e = &mut m[446..462];
    e[0] = 0x00; // not bootable
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(total_sectors - 1).unwrap_or(u32::MAX);
    e[12..16].copy_from_slice(&size.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

fn invalid(which: &'static str, problem: impl Into<String>) -> GptError {
    GptError::Invalid {
        which,
        problem: problem.into(),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn guid_at(b: &[u8], at: usize) -> Uuid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    Uuid::from_bytes_le(a)
}

/// Decodes a whole disk image held in memory, verifying the protective MBR,
/// both headers' CRCs, both arrays' CRCs and that the two copies agree.
pub fn decode(disk: &[u8]) -> Result<Gpt, GptError> {
    let len = disk.len() as u64;
    if !len.is_multiple_of(SECTOR) || len / SECTOR < 2 * first_usable_lba() + 1 {
        return Err(GptError::DiskTooSmall(len / SECTOR));
    }
    let total = len / SECTOR;
    let sector = |lba: u64| &disk[(lba * SECTOR) as usize..((lba + 1) * SECTOR) as usize];

    let mbr = sector(0);
    if mbr[510..512] != [0x55, 0xAA] || mbr[446 + 4] != 0xEE || u32_at(mbr, 446 + 8) != 1 {
        return Err(invalid(
            "protective MBR",
            "is missing or not a 0xEE entry at LBA 1",
        ));
    }

    let primary = decode_copy(disk, sector(1), 1, total, "primary")?;
    let backup = decode_copy(disk, sector(total - 1), total - 1, total, "backup")?;
    if primary != backup {
        return Err(invalid("backup header", "disagrees with the primary"));
    }
    Ok(primary)
}

fn decode_copy(
    disk: &[u8],
    h: &[u8],
    my_lba: u64,
    total: u64,
    which: &'static str,
) -> Result<Gpt, GptError> {
    let what = if which == "primary" {
        "primary header"
    } else {
        "backup header"
    };
    if &h[0..8] != SIGNATURE {
        return Err(invalid(what, "has no EFI PART signature"));
    }
    let size = u32_at(h, 12);
    if size != HEADER_SIZE {
        return Err(invalid(what, format!("has size {size}")));
    }
    let mut copy = h[..HEADER_SIZE as usize].to_vec();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != u32_at(h, 16) {
        return Err(invalid(what, "CRC32 mismatch"));
    }
    if u64_at(h, 24) != my_lba {
        return Err(invalid(
            what,
            format!("claims LBA {}, found at {my_lba}", u64_at(h, 24)),
        ));
    }
    let expected_alt = if my_lba == 1 { total - 1 } else { 1 };
    if u64_at(h, 32) != expected_alt {
        return Err(invalid(what, "has a wrong alternate LBA (image resized?)"));
    }
    let entries_lba = u64_at(h, 72);
    let count = u32_at(h, 80) as u64;
    let esize = u32_at(h, 84) as u64;
    if esize != ENTRY_SIZE as u64 {
        return Err(invalid(what, format!("has entry size {esize}")));
    }
    let Some(entries) = entries_lba
        .checked_mul(SECTOR)
        .zip(count.checked_mul(esize))
        .and_then(|(start, len)| Some(start..start.checked_add(len)?))
        .and_then(|range| disk.get(range.start as usize..range.end as usize))
    else {
        return Err(invalid(what, "points its entries past the disk end"));
    };
    if crc32fast::hash(entries) != u32_at(h, 88) {
        return Err(invalid(what, "entry array CRC32 mismatch"));
    }
    let mut partitions = Vec::new();
    for e in entries.chunks_exact(esize as usize) {
        let type_guid = guid_at(e, 0);
        if type_guid.is_nil() {
            continue;
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        partitions.push(GptPartition {
            type_guid,
            unique_guid: guid_at(e, 16),
            first_lba: u64_at(e, 32),
            last_lba: u64_at(e, 40),
            attributes: u64_at(e, 48),
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(Gpt {
        total_sectors: total,
        disk_guid: guid_at(h, 56),
        first_usable_lba: u64_at(h, 40),
        last_usable_lba: u64_at(h, 48),
        partitions,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn part(name: &str, first: u64, last: u64) -> GptPartition {
        GptPartition {
            type_guid: TYPE_LINUX_FS,
            unique_guid: Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes()),
            first_lba: first,
            last_lba: last,
            attributes: 0,
            name: name.to_string(),
        }
    }

    fn image(total: u64, parts: &[GptPartition]) -> Vec<u8> {
        let t = encode(total, Uuid::nil(), parts).unwrap();
        let mut disk = vec![0u8; (total * SECTOR) as usize];
        disk[..512].copy_from_slice(&t.protective_mbr);
        disk[512..512 + t.primary.len()].copy_from_slice(&t.primary);
        let b = (t.backup_lba * SECTOR) as usize;
        disk[b..b + t.backup.len()].copy_from_slice(&t.backup);
        disk
    }

    #[test]
    fn round_trips_and_checks_crcs() {
        let parts = [part("EFI", 2048, 4095), part("STATE", 4096, 6143)];
        let mut disk = image(8192, &parts);
        let gpt = decode(&disk).unwrap();
        assert_eq!(gpt.partitions, parts);
        assert_eq!(gpt.first_usable_lba, 34);
        assert_eq!(gpt.last_usable_lba, 8192 - 34);
        // The well-known mixed-endian encoding of the ESP type GUID.
        assert_eq!(TYPE_ESP.to_bytes_le()[..4], [0x28, 0x73, 0x2A, 0xC1]);
        // Corrupt one name byte in the backup array: its CRC must catch it.
        let at = ((8192 - 33) * SECTOR + 56) as usize;
        disk[at] ^= 1;
        assert!(matches!(
            decode(&disk),
            Err(GptError::Invalid {
                which: "backup header",
                ..
            })
        ));
    }

    #[test]
    fn rejects_long_names_and_tiny_disks() {
        let long = "x".repeat(37);
        assert!(matches!(
            encode(8192, Uuid::nil(), &[part(&long, 2048, 2048)]),
            Err(GptError::NameTooLong(_))
        ));
        assert!(matches!(
            encode(60, Uuid::nil(), &[]),
            Err(GptError::DiskTooSmall(60))
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

        /// Header fields set to anything (with the header CRC fixed up, so the
        /// fields themselves are judged) and bytes flipped anywhere: decoding ends
        /// in an error or in exactly the partitions that were written.
        #[test]
        fn hostile_tables_are_refused_or_read_exactly(
            fields in proptest::collection::vec((0usize..92, proptest::prelude::any::<u64>()), 0..4),
            flips in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), 1u8..=255), 0..4),
            fix_crc in proptest::prelude::any::<bool>(),
        ) {
            let parts = [part("EFI", 40, 59), part("STATE", 60, 79)];
            let mut disk = image(128, &parts);
            let header = SECTOR as usize;
            for (at, value) in fields {
                let at = at.min(92 - 8);
                if !(16..20).contains(&at) {
                    disk[header + at..header + at + 8].copy_from_slice(&value.to_le_bytes());
                }
            }
            if fix_crc {
                let size = (u32_at(&disk[header..], 12) as usize).min(SECTOR as usize);
                disk[header + 16..header + 20].fill(0);
                let crc = crc32fast::hash(&disk[header..header + size]);
                disk[header + 16..header + 20].copy_from_slice(&crc.to_le_bytes());
            }
            for (at, x) in flips {
                let i = at.index(disk.len());
                disk[i] ^= x;
            }
            if let Ok(gpt) = decode(&disk) {
                proptest::prop_assert_eq!(gpt.partitions, parts.to_vec());
            }
        }

        /// Any bytes at all, of any whole number of sectors.
        #[test]
        fn arbitrary_disks_never_panic(sectors in 0usize..80, byte in proptest::prelude::any::<u8>()) {
            let _ = decode(&vec![byte; sectors * SECTOR as usize]);
        }
    }
}
