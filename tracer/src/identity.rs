//! The identity of files: stat and the ELF build-id, so that a restore can refuse files
//! that changed since the checkpoint; and the per-dump cache of it.

use crate::state::FileIdentity;
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Identity of files by path, computed once per dump.
#[derive(Default)]
pub struct IdentityCache {
    by_path: HashMap<String, FileIdentity>,
    /// (dev, ino) of the memfds and deleted files whose content is already stored.
    pub(crate) unlinked_stored: std::collections::HashSet<(u64, u64)>,
}

impl IdentityCache {
    pub fn identity(&mut self, path: &str) -> io::Result<FileIdentity> {
        if let Some(id) = self.by_path.get(path) {
            return Ok(id.clone());
        }
        let id = file_identity(Path::new(path), path)?;
        self.by_path.insert(path.to_string(), id.clone());
        Ok(id)
    }
}

/// stat() of `open_path` (which may be a /proc/PID/fd link), recorded under `path`.
pub fn file_identity(open_path: &Path, path: &str) -> io::Result<FileIdentity> {
    let md = std::fs::metadata(open_path)?;
    let build_id = if md.is_file() {
        elf_build_id(open_path).unwrap_or(None)
    } else {
        None
    };
    Ok(FileIdentity {
        path: path.to_string(),
        dev: md.dev(),
        ino: md.ino(),
        size: md.size(),
        mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
        mode: md.mode(),
        build_id,
    })
}

/// The GNU build-id note of an ELF file, None for other files. Reads only the ELF
/// header, the program headers and the PT_NOTE segments, not the whole file.
pub fn elf_build_id(path: &Path) -> io::Result<Option<Vec<u8>>> {
    use goblin::container::{Container, Ctx, Endian};
    use goblin::elf::program_header::ProgramHeader;
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let mut head = [0u8; 64];
    if f.read_exact_at(&mut head, 0).is_err() || &head[..4] != b"\x7fELF" {
        return Ok(None);
    }
    let Ok(h) = goblin::elf::Elf::parse_header(&head) else {
        return Ok(None);
    };
    let Ok(container) = h.container() else {
        return Ok(None);
    };
    let ctx = Ctx::new(container, h.endianness().unwrap_or(Endian::Little));
    let phsize = h.e_phentsize as usize * h.e_phnum as usize;
    if phsize == 0 || phsize > 1 << 20 || container != Container::Big {
        return Ok(None);
    }
    let mut ph = vec![0u8; phsize];
    f.read_exact_at(&mut ph, h.e_phoff)?;
    let Ok(phdrs) = ProgramHeader::parse(&ph, 0, h.e_phnum as usize, ctx) else {
        return Ok(None);
    };
    for p in phdrs
        .iter()
        .filter(|p| p.p_type == goblin::elf::program_header::PT_NOTE)
    {
        if p.p_filesz > 1 << 20 {
            continue;
        }
        let mut notes = vec![0u8; p.p_filesz as usize];
        f.read_exact_at(&mut notes, p.p_offset)?;
        let align = (p.p_align.max(4)) as usize;
        let mut i = 0;
        let word =
            |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        while i + 12 <= notes.len() {
            let (namesz, descsz, ntype) =
                (word(&notes, i), word(&notes, i + 4), word(&notes, i + 8));
            let name_at = i + 12;
            let desc_at = name_at + namesz.div_ceil(align) * align;
            let next = desc_at + descsz.div_ceil(align) * align;
            if desc_at + descsz > notes.len() {
                break;
            }
            if ntype == goblin::elf::note::NT_GNU_BUILD_ID as usize
                && &notes[name_at..name_at + namesz.min(4)] == b"GNU\0"[..namesz.min(4)].as_ref()
            {
                return Ok(Some(notes[desc_at..desc_at + descsz].to_vec()));
            }
            i = next;
        }
    }
    Ok(None)
}
